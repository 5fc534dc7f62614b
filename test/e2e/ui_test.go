package e2e

import (
	"context"
	cryptorand "crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

// uiArtifactsDir is where the browser tests save their screenshots: $RAKHSH_TEST_ARTIFACTS/ui
// when set, else a directory that is kept and logged.
func uiArtifactsDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("RAKHSH_TEST_ARTIFACTS")
	if dir != "" {
		dir = filepath.Join(dir, "ui")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	} else {
		var err error
		if dir, err = os.MkdirTemp("", "rakhsh-ui-shots-"); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("screenshots go to %s", dir)
	return dir
}

// uiBrowser starts Debian's chromium, headless with its own temporary profile, and returns a
// tab's context; the allocator's cancel (at cleanup) ends the browser it started.
func uiBrowser(t *testing.T) context.Context {
	t.Helper()
	bin, err := exec.LookPath("chromium")
	if err != nil {
		skipOrFail(t, "chromium missing: apt-get install chromium (scripts/install-deps.sh installs it)")
	}
	profile, err := os.MkdirTemp("", "rakhsh-ui-profile-")
	if err != nil {
		t.Fatal(err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(bin),
		chromedp.UserDataDir(profile),
		chromedp.WindowSize(1280, 800),
		chromedp.NoSandbox, // tests run as root, where chromium's sandbox cannot start
		chromedp.Flag("ignore-certificate-errors", true),
		chromedp.Flag("disable-gpu", true),
	)
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	t.Cleanup(func() {
		cancel()
		acancel()
		// The browser's helpers may still be finishing their writes to the profile.
		for i := 0; i < 50 && os.RemoveAll(profile) != nil; i++ {
			time.Sleep(100 * time.Millisecond)
		}
	})
	if err := chromedp.Run(ctx); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	return ctx
}

// uiRun runs browser actions under a deadline, failing the test with what was being done.
func uiRun(t *testing.T, ctx context.Context, timeout time.Duration, what string, actions ...chromedp.Action) {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := chromedp.Run(c, actions...); err != nil {
		var text string
		_ = chromedp.Run(ctx, chromedp.Text("body", &text, chromedp.ByQuery))
		t.Fatalf("%s: %v\npage text:\n%s", what, err, text)
	}
}

func uiShot(t *testing.T, ctx context.Context, dir, name string) {
	t.Helper()
	var png []byte
	uiRun(t, ctx, 20*time.Second, "screenshot "+name, chromedp.CaptureScreenshot(&png))
	if len(png) < 8 || string(png[1:4]) != "PNG" {
		t.Fatalf("screenshot %s is not a PNG (%d bytes)", name, len(png))
	}
	if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
}

// uiCheck is uiPoll that records a failure and lets the test go on, for checks the rest of
// the test does not depend on.
func uiCheck(t *testing.T, ctx context.Context, timeout time.Duration, what, expr string) bool {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := chromedp.Run(c, chromedp.Poll(expr, nil, chromedp.WithPollingInterval(200*time.Millisecond), chromedp.WithPollingTimeout(timeout))); err != nil {
		var text string
		_ = chromedp.Run(ctx, chromedp.Text("main", &text, chromedp.ByQuery))
		t.Errorf("%s: %v\npage text:\n%s", what, err, text)
		return false
	}
	return true
}

// uiSetValue sets an input's value as typing would (input and change events).
func uiSetValue(sel, value string) chromedp.Action {
	js, _ := json.Marshal(value)
	q, _ := json.Marshal(sel)
	return chromedp.Evaluate(fmt.Sprintf(`(() => { const e = document.querySelector(%s); e.value = %s; e.dispatchEvent(new Event('input')); e.dispatchEvent(new Event('change')); return true })()`, q, js), nil)
}

// uiPoll evaluates expr until it is true, with a deadline.
func uiPoll(t *testing.T, ctx context.Context, timeout time.Duration, what, expr string) {
	t.Helper()
	uiRun(t, ctx, timeout, what, chromedp.Poll(expr, nil, chromedp.WithPollingInterval(200*time.Millisecond), chromedp.WithPollingTimeout(timeout)))
}

// TestUIBrowser drives the web UI of a real serve in Debian's chromium: token login (a wrong
// token's error is shown), the create wizard with a class's sizing policy, the VM reaching
// Running in the list without a reload, the serial console showing the guest's boot marker,
// an annotation carrying HTML shown as text, stopping the VM, and cross-site requests
// refused. Screenshots of every page are saved.
func TestUIBrowser(t *testing.T) {
	sideBySide(t)
	vmGuestDir(t)
	addr := freeAddr(t)
	// The organisation's OpenID Connect issuer: the login page offers its single sign-on.
	issuer, issuerCA := startIssuer(t)
	// A Prometheus scrapes this serve: the VM page charts its metrics.
	metricsToken := filepath.Join(t.TempDir(), "metrics.token")
	if err := os.WriteFile(metricsToken, []byte("metrics-ui-test-read-only\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	maddr, paddr := freeAddr(t), freeAddr(t)
	s := vmServe(t, "--listen", addr, "--oidc-issuer", issuer.URL, "--oidc-client-id", "rakhsh-ui", "--oidc-ca-file", issuerCA,
		"--metrics-listen", maddr, "--metrics-token-file", metricsToken, "--prometheus-url", "http://"+paddr)
	startPrometheusAt(t, paddr, "http://"+maddr+"/sd/prometheus", metricsToken)
	vmSetupGuest(t, s)
	s.MustCLI(`apiVersion: virtualization.rakhsh.io/v1alpha1
kind: VirtualMachineClass
metadata: {name: small}
spec:
  cpu: {type: Model, model: Nehalem}
  sizingPolicies:
  - cores: {min: 1, max: 2}
    memory: {min: 128Mi, max: 1Gi}
    coreFractions: [10, 50, 100]
    defaultCoreFraction: "50%"
`, "apply", "-f", "-")
	s.MustCLI("", "wait", "cvi", "guest", "--for", "phase=Ready", "--timeout", "2m")
	token := adminToken(t, s)
	base := "https://" + addr
	shots := uiArtifactsDir(t)
	ctx := uiBrowser(t)
	c := s.Client()

	// Login: a wrong token is refused with the server's message, the admin token logs in.
	uiRun(t, ctx, 30*time.Second, "open the login page",
		chromedp.Navigate(base+"/ui/"),
		chromedp.WaitVisible("#token", chromedp.ByID),
		chromedp.SendKeys("#token", "not-a-token", chromedp.ByID),
		chromedp.Click("#login", chromedp.ByID),
		chromedp.WaitVisible("#login-error .error", chromedp.ByQuery))
	var loginErr string
	uiRun(t, ctx, 5*time.Second, "read the login error", chromedp.Text("#login-error", &loginErr, chromedp.ByQuery))
	if !strings.Contains(loginErr, "does not accept this token") {
		t.Errorf("login error shown: %q", loginErr)
	}
	uiShot(t, ctx, shots, "login")
	uiRun(t, ctx, 30*time.Second, "log in with the admin token",
		uiSetValue("#token", ""),
		chromedp.SendKeys("#token", token, chromedp.ByID),
		chromedp.Click("#login", chromedp.ByID),
		chromedp.WaitVisible("#vm-list", chromedp.ByID))
	var cookies string
	uiRun(t, ctx, 5*time.Second, "read document.cookie", chromedp.Evaluate(`document.cookie`, &cookies))
	if strings.Contains(cookies, "rakhsh-session") {
		t.Errorf("the session cookie is readable from script: %q", cookies)
	}
	// A marker on the window: if the page were reloaded it would be gone.
	uiRun(t, ctx, 5*time.Second, "mark the page", chromedp.Evaluate(`window.__noReload = 1`, nil))

	// The project has a quota: the list's overview and the wizard show usage against it.
	if err := c.Patch(ctxT(t), "projects", "", "default", []byte(`{"spec":{"quota":{"cores":4,"memory":"2Gi","disk":"20Gi","virtualMachines":6}}}`), nil); err != nil {
		t.Fatal(err)
	}
	uiA11y(t, ctx, "the VM list")
	// Keyboard only: Tab reaches the Create VM button, Enter opens the wizard.
	uiRun(t, ctx, 20*time.Second, "tab to Create VM", chromedp.WaitVisible(`main a[href="#/create"]`, chromedp.ByQuery))
	reached := false
	for i := 0; i < 40 && !reached; i++ {
		uiRun(t, ctx, 5*time.Second, "press Tab",
			chromedp.KeyEvent("\t"),
			chromedp.Evaluate(`document.activeElement && document.activeElement.matches('main a[href="#/create"]')`, &reached))
	}
	if !reached {
		t.Fatalf("40 Tab presses never reached the Create VM button")
	}
	// The wizard offers only what the class's sizing policy allows.
	uiRun(t, ctx, 30*time.Second, "open the wizard with Enter",
		chromedp.KeyEvent("\r"),
		chromedp.WaitVisible("#c-name", chromedp.ByID))
	uiPoll(t, ctx, 20*time.Second, "the wizard lists the image and the class",
		`document.querySelector('#c-image option[value="ClusterVirtualImage/guest"]') !== null && document.querySelector('#c-class option[value="small"]') !== null`)
	uiRun(t, ctx, 5*time.Second, "pick the class", uiSetValue("#c-class", "small"))
	var fractions, coreOpts, policy string
	uiRun(t, ctx, 5*time.Second, "read the sizing choices",
		chromedp.Evaluate(`[...document.querySelectorAll('#c-fraction option')].map(o => o.value).join(',')`, &fractions),
		chromedp.Evaluate(`[...document.querySelectorAll('#c-cores option')].map(o => o.value).join(',')`, &coreOpts),
		chromedp.Text("#c-policy", &policy, chromedp.ByID))
	if fractions != "10%,50%,100%" || coreOpts != "1,2" || !strings.Contains(policy, "memory 128Mi–1Gi") {
		t.Errorf("wizard choices: core fractions %q, cores %q, policy %q", fractions, coreOpts, policy)
	}
	uiRun(t, ctx, 30*time.Second, "fill in the wizard",
		chromedp.SendKeys("#c-name", "web1", chromedp.ByID),
		uiSetValue("#c-memory", "256"),
		uiSetValue("#c-disk", "50"))
	// 50 GiB is over the project's 20 GiB of disk: the wizard says so before the server would.
	uiPoll(t, ctx, 10*time.Second, "the wizard shows the disk over the quota",
		`document.querySelector('#c-quota-over') !== null && document.querySelector('#c-quota li[data-quota="disk"].over') !== null`)
	uiRun(t, ctx, 10*time.Second, "a disk within the quota", uiSetValue("#c-disk", "1"))
	uiPoll(t, ctx, 10*time.Second, "the wizard shows the VM within the quota",
		`document.querySelector('#c-quota-over') === null && /Cores: 1 with this VM, of 4/.test(document.querySelector('#c-quota li[data-quota="cores"]')?.textContent || "")`)
	// Windows: a sysprep answer file from a Secret instead of cloud-init, UEFI with Secure Boot.
	uiRun(t, ctx, 10*time.Second, "choose Windows", uiSetValue("#c-os", "Windows"), chromedp.WaitVisible("#c-sysprep", chromedp.ByID),
		chromedp.SendKeys("#c-sysprep", "win-unattend", chromedp.ByID))
	var winYAML string
	uiRun(t, ctx, 10*time.Second, "read the Windows manifest", chromedp.Text("#c-yaml", &winYAML, chromedp.ByID))
	for _, want := range []string{`osType: "Windows"`, `bootloader: "EFIWithSecureBoot"`, `type: "SysprepRef"`, `name: "win-unattend"`} {
		if !strings.Contains(winYAML, want) {
			t.Errorf("the wizard's Windows manifest lacks %s:\n%s", want, winYAML)
		}
	}
	uiRun(t, ctx, 10*time.Second, "back to Linux", uiSetValue("#c-os", "Linux"), chromedp.WaitVisible("#c-sshkey", chromedp.ByID),
		chromedp.SendKeys("#c-sshkey", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIUiTestKey ui@test", chromedp.ByID))
	uiA11y(t, ctx, "the create wizard")
	uiShot(t, ctx, shots, "create")
	uiRun(t, ctx, 30*time.Second, "create the VM", chromedp.Click("#c-create", chromedp.ByID), chromedp.WaitVisible("#vm-name", chromedp.ByID))
	var vm v1alpha1.VirtualMachine
	if err := c.Get(ctxT(t), "virtualmachines", "default", "web1", &vm); err != nil {
		t.Fatalf("the wizard's VM: %v", err)
	}
	if vm.Spec.VirtualMachineClassName != "small" || vm.Spec.CPU.Cores != 1 || vm.Spec.CPU.CoreFraction != "50%" || vm.Spec.Memory.Size != "256Mi" ||
		vm.Spec.Provisioning == nil || !strings.Contains(vm.Spec.Provisioning.UserData, "ssh_authorized_keys") || vm.Spec.OSType == "Windows" || (vm.Spec.Bootloader != "" && vm.Spec.Bootloader != "BIOS") {
		t.Errorf("the wizard's VM spec: %+v", vm.Spec)
	}

	// The list shows the VM reach Running, with its node, without a reload.
	uiRun(t, ctx, vmBootTimeout, "the VM Running in the list",
		chromedp.Click(`header a[href="#/vms"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`tr[data-vm="web1"] [data-phase="Running"]`, chromedp.ByQuery))
	// The row is drawn again at every watch event: wait for one that shows the node.
	uiPoll(t, ctx, 30*time.Second, "the row shows the VM's node",
		`(document.querySelector('tr[data-vm="web1"] td.node') || {}).textContent > ''`)
	// The row is redrawn at every watch event, which may replace it between the query and
	// the read ("No node with given id found") or show it half drawn: read it again, for a
	// few seconds, until it shows a node.
	var node string
	var still bool
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := chromedp.Run(rctx,
			chromedp.Text(`tr[data-vm="web1"] td.node`, &node, chromedp.ByQuery),
			chromedp.Evaluate(`window.__noReload === 1`, &still))
		cancel()
		if err == nil && node != "" {
			break
		}
		if time.Now().After(deadline) {
			if err != nil {
				t.Fatalf("read the row: %v", err)
			}
			break
		}
	}
	if node == "" || !still {
		t.Errorf("list row: node %q, page kept (no reload): %v", node, still)
	}
	// The overview: VMs by phase, and the project's usage against its quota, live.
	uiCheck(t, ctx, time.Minute, "the overview counts web1 Running and 1 of 6 VMs of the quota",
		`(document.querySelector('#vm-phases li[data-phase="Running"] strong')?.textContent === "1") && /^1 of 6$/.test(document.querySelector('#quota tr[data-quota="virtualMachines"] td')?.textContent || "") && /^1 of 4$/.test(document.querySelector('#quota tr[data-quota="cores"] td')?.textContent || "")`)
	uiShot(t, ctx, shots, "vms")
	// A phone-width screen: nothing sticks out sideways, the VM is still there to tap.
	uiRun(t, ctx, 10*time.Second, "a phone-width screen", chromedp.EmulateViewport(390, 844))
	uiCheck(t, ctx, 10*time.Second, "the VM list fits a phone's width",
		`document.documentElement.scrollWidth <= window.innerWidth + 1 && document.querySelector('tr[data-vm="web1"] a').getBoundingClientRect().right <= window.innerWidth`)
	uiShot(t, ctx, shots, "vms-phone")
	uiRun(t, ctx, 10*time.Second, "open the VM on the phone",
		chromedp.Click(`tr[data-vm="web1"] a`, chromedp.ByQuery),
		chromedp.WaitVisible("#vm-name", chromedp.ByID))
	uiCheck(t, ctx, 10*time.Second, "the VM page fits a phone's width", `document.documentElement.scrollWidth <= window.innerWidth + 1`)
	uiShot(t, ctx, shots, "vm-phone")
	uiA11y(t, ctx, "the VM page")
	uiRun(t, ctx, 10*time.Second, "back to 1280x800",
		chromedp.EmulateViewport(1280, 800),
		chromedp.Click(`header a[href="#/vms"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`tr[data-vm="web1"]`, chromedp.ByQuery))

	// The serial console shows the guest's boot marker (from the kept log and live).
	uiRun(t, ctx, 30*time.Second, "open the console",
		chromedp.Click(`tr[data-vm="web1"] a`, chromedp.ByQuery),
		chromedp.WaitVisible("#vm-console", chromedp.ByID),
		chromedp.Click("#vm-console", chromedp.ByID),
		chromedp.WaitVisible("#console .xterm", chromedp.ByQuery))
	uiCheck(t, ctx, vmBootTimeout, "the guest's boot marker in the terminal",
		`document.querySelector('#console').rakhshText().includes('RAKHSH-GUEST: ready')`)
	uiShot(t, ctx, shots, "console")

	// The graphical console (noVNC over the vnc websocket) draws the VM's display.
	uiRun(t, ctx, 30*time.Second, "open the graphical console",
		chromedp.Navigate(base+"/ui/#/vms/web1/vnc"),
		chromedp.WaitVisible("#vnc-cad", chromedp.ByID))
	uiCheck(t, ctx, time.Minute, "a non-blank VNC canvas", `(() => {
		const c = document.querySelector('#vnc canvas');
		if (!c || c.width < 16 || c.height < 16) return false;
		const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
		for (let i = 0; i < d.length; i += 4) if (d[i] || d[i+1] || d[i+2]) return true;
		return false;
	})()`)
	var vncStatus string
	uiRun(t, ctx, 5*time.Second, "read the VNC status", chromedp.Text("#vnc-status", &vncStatus, chromedp.ByID))
	if vncStatus != "Connected." {
		t.Errorf("VNC status %q", vncStatus)
	}
	uiShot(t, ctx, shots, "vnc")
	uiRun(t, ctx, 30*time.Second, "back to the list", chromedp.Navigate(base+"/ui/#/vms"), chromedp.WaitVisible(`tr[data-vm="web1"]`, chromedp.ByQuery))

	// XSS: an annotation with HTML is shown as text; no element is made of it, nothing runs.
	payload := `<img src=x onerror="window.__xss=1">`
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{"note": payload}}})
	if err := c.Patch(ctxT(t), "virtualmachines", "default", "web1", patch, nil); err != nil {
		t.Fatal(err)
	}
	uiRun(t, ctx, 30*time.Second, "open the VM's page",
		chromedp.Click(`tr[data-vm="web1"] a`, chromedp.ByQuery),
		chromedp.WaitVisible("#annotations", chromedp.ByID))
	var ann string
	var imgs int
	var xss bool
	uiRun(t, ctx, 10*time.Second, "read the annotations",
		chromedp.Text("#annotations", &ann, chromedp.ByID),
		chromedp.Evaluate(`document.querySelectorAll('main img').length`, &imgs),
		chromedp.Evaluate(`window.__xss === 1`, &xss))
	if !strings.Contains(ann, payload) || imgs != 0 || xss {
		t.Errorf("annotation %q shown as %q; <img> elements %d; script ran: %v", payload, ann, imgs, xss)
	}
	// The charts: CPU and memory from Prometheus, drawn without a reload.
	uiPoll(t, ctx, time.Minute, "the VM page charts its CPU and memory",
		`['cpu', 'memory'].every(n => { const f = document.querySelector('#vm-charts figure[data-series="' + n + '"]'); return f && f.querySelector('polyline') && !/no data/.test(f.querySelector('.chart-now').textContent) })`)
	var memLabel string
	uiRun(t, ctx, 5*time.Second, "read the memory chart", chromedp.Evaluate(`document.querySelector('#vm-charts figure[data-series="memory"] svg').getAttribute('aria-label')`, &memLabel))
	if !strings.Contains(memLabel, "MiB") {
		t.Errorf("the memory chart's label: %q", memLabel)
	}
	uiShot(t, ctx, shots, "vm")
	uiRun(t, ctx, 5*time.Second, "scroll to the charts", chromedp.Evaluate(`document.querySelector('#vm-charts').scrollIntoView()`, nil))
	uiShot(t, ctx, shots, "vm-metrics")
	uiRun(t, ctx, 5*time.Second, "scroll back", chromedp.Evaluate(`window.scrollTo(0, 0)`, nil))

	// The audit log page (the admin is a ClusterAdmin): the wizard's create of web1 is there,
	// and a filter by another project leaves it out.
	uiRun(t, ctx, 30*time.Second, "open the audit log",
		chromedp.Click(`header a[href="#/audit"]`, chromedp.ByQuery),
		chromedp.WaitVisible("#audit-filters", chromedp.ByID))
	uiPoll(t, ctx, 30*time.Second, "the audit log lists the wizard's create of web1",
		`[...document.querySelectorAll('#audit tbody tr')].some(tr => /create/.test(tr.children[3].textContent) && tr.children[4].textContent === 'virtualmachines default/web1' && tr.children[5].textContent === '201')`)
	uiShot(t, ctx, shots, "audit")
	uiRun(t, ctx, 30*time.Second, "filter by another project",
		chromedp.SendKeys("#audit-project", "p-none", chromedp.ByID),
		chromedp.Click("#audit-load", chromedp.ByID))
	uiPoll(t, ctx, 30*time.Second, "no line of project default", `document.querySelectorAll('#audit tbody tr').length === 0 && /0 lines/.test(document.querySelector('#audit-result').textContent)`)

	// CSRF: a page on another site posts a form (text/plain, shaped as JSON) to the API.
	// The browser sends no session cookie cross-site (SameSite=Strict) and the API refuses.
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `<!doctype html><form id="f" method="POST" enctype="text/plain" action="%s/apis/virtualization.rakhsh.io/v1alpha1/namespaces/default/virtualmachineoperations">`+
			`<input name='{"apiVersion":"virtualization.rakhsh.io/v1alpha1","kind":"VirtualMachineOperation","metadata":{"name":"csrf-stop"},"spec":{"type":"Stop","virtualMachineName":"web1","force":true},"x":"' value='"}'>`+
			`<button id="go" type="submit">win a prize</button></form>`, base)
	}))
	defer evil.Close()
	evilURL := strings.Replace(evil.URL, "127.0.0.1", "localhost", 1) // another site than 127.0.0.1
	uiRun(t, ctx, 30*time.Second, "the cross-site form post",
		chromedp.Navigate(evilURL),
		chromedp.WaitVisible("#go", chromedp.ByID),
		chromedp.Click("#go", chromedp.ByID, chromedp.NodeVisible))
	// The click navigates to the API's answer; read it once it is there.
	var refused string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		c, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := chromedp.Run(c, chromedp.Text("body", &refused, chromedp.ByQuery))
		cancel()
		if err == nil && strings.Contains(refused, `"status":"Failure"`) {
			break
		}
	}
	if !strings.Contains(refused, "Unauthorized") && !strings.Contains(refused, "Forbidden") {
		t.Errorf("the cross-site post was answered: %s", refused)
	}
	if err := c.Get(ctxT(t), "virtualmachineoperations", "default", "csrf-stop", &map[string]any{}); !client.IsNotFound(err) {
		t.Fatalf("the cross-site post made an operation (err %v)", err)
	}
	// A same-origin write without the session's CSRF header is refused too.
	uiRun(t, ctx, 30*time.Second, "back to the UI", chromedp.Navigate(base+"/ui/#/vms"), chromedp.WaitVisible("#vm-list", chromedp.ByID))
	var noCSRF string
	uiRun(t, ctx, 10*time.Second, "a write without the CSRF header",
		chromedp.Evaluate(`fetch('/apis/virtualization.rakhsh.io/v1alpha1/namespaces/default/virtualmachines/web1', {method: 'DELETE', credentials: 'same-origin'}).then(r => r.status + ' ' + r.statusText)`, &noCSRF, func(p *runtime.EvaluateParams) *runtime.EvaluateParams { return p.WithAwaitPromise(true) }))
	if !strings.HasPrefix(noCSRF, "403") {
		t.Errorf("DELETE without the CSRF header: %s", noCSRF)
	}

	// Pause and resume from the VM's page; the list follows.
	for _, step := range []struct{ button, phase string }{{"#vm-pause", "Pause"}, {"#vm-resume", "Running"}} {
		uiRun(t, ctx, time.Minute, "the VM's "+step.button+" button",
			chromedp.Navigate(base+"/ui/#/vms/web1"),
			chromedp.WaitVisible(step.button, chromedp.ByID),
			chromedp.Click(step.button, chromedp.ByID),
			chromedp.WaitVisible("#action-result .notice", chromedp.ByQuery),
			chromedp.Click(`header a[href="#/vms"]`, chromedp.ByQuery),
			chromedp.WaitVisible(fmt.Sprintf(`tr[data-vm="web1"] [data-phase=%q]`, step.phase), chromedp.ByQuery))
	}

	// Stop from the VM's page; the list follows to Stopped.
	uiRun(t, ctx, 2*time.Minute, "stop the VM",
		chromedp.Navigate(base+"/ui/#/vms/web1"),
		chromedp.WaitVisible("#vm-stop", chromedp.ByID),
		chromedp.Click("#vm-stop", chromedp.ByID),
		chromedp.WaitVisible("#action-result .notice", chromedp.ByQuery),
		chromedp.Click(`header a[href="#/vms"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`tr[data-vm="web1"] [data-phase="Stopped"]`, chromedp.ByQuery))
	uiShot(t, ctx, shots, "vms-stopped")

	// Snapshot and clone the stopped VM from its page: the snapshot becomes Ready, the clone
	// web1-copy exists with its own copy of the disk.
	uiRun(t, ctx, time.Minute, "snapshot the VM",
		chromedp.Navigate(base+"/ui/#/vms/web1"),
		chromedp.WaitVisible("#vm-snapshot", chromedp.ByID),
		chromedp.Click("#vm-snapshot", chromedp.ByID),
		chromedp.WaitVisible("#action-result .notice", chromedp.ByQuery))
	uiRun(t, ctx, time.Minute, "clone the VM",
		chromedp.Click("#vm-clone", chromedp.ByID),
		chromedp.WaitVisible("#clone-name", chromedp.ByID),
		chromedp.SendKeys("#clone-name", "web1-copy", chromedp.ByID),
		chromedp.Click("#clone-yes", chromedp.ByID),
		chromedp.WaitVisible("#action-result .notice", chromedp.ByQuery))
	uiUntil(t, 3*time.Minute, "the snapshot Ready and the clone made", func() bool {
		l, err := c.List(context.Background(), "virtualmachinesnapshots", "default", client.ListOptions{})
		ready := false
		for _, raw := range l.Items {
			var vs v1alpha1.VirtualMachineSnapshot
			if json.Unmarshal(raw, &vs) == nil && vs.Spec.VirtualMachineName == "web1" && vs.Status.Phase == v1alpha1.SnapshotPhaseReady {
				ready = true
			}
		}
		var clone v1alpha1.VirtualMachine
		return err == nil && ready && c.Get(context.Background(), "virtualmachines", "default", "web1-copy", &clone) == nil
	})
	s.MustCLI("", "delete", "vm", "web1-copy", "--wait", "--timeout", "2m")

	// The operator's nodes page: the host, live; cordoned and uncordoned with a click.
	var first v1alpha1.Node
	if l, err := c.List(context.Background(), "nodes", "", client.ListOptions{}); err != nil || len(l.Items) != 1 || json.Unmarshal(l.Items[0], &first) != nil {
		t.Fatalf("the all-in-one host's node: %v %v", err, l)
	}
	nodeName := first.Name
	row := fmt.Sprintf(`tr[data-node=%q]`, nodeName)
	uiRun(t, ctx, 30*time.Second, "the nodes page",
		chromedp.Click(`header a[href="#/nodes"]`, chromedp.ByQuery),
		chromedp.WaitVisible(row+` [data-phase="Ready"]`, chromedp.ByQuery),
		chromedp.WaitVisible(row+` [data-scheduling="schedulable"]`, chromedp.ByQuery),
		chromedp.Click(fmt.Sprintf(`[id=%q]`, "node-cordon-"+nodeName), chromedp.ByQuery),
		chromedp.WaitVisible(row+` [data-scheduling="cordoned"]`, chromedp.ByQuery))
	var cordoned v1alpha1.Node
	if err := c.Get(context.Background(), "nodes", "", nodeName, &cordoned); err != nil || !cordoned.Spec.Unschedulable {
		t.Errorf("after Cordon in the UI the node's spec.unschedulable is %v (%v)", cordoned.Spec.Unschedulable, err)
	}
	uiShot(t, ctx, shots, "nodes")
	uiRun(t, ctx, 30*time.Second, "uncordon",
		chromedp.Click(fmt.Sprintf(`[id=%q]`, "node-uncordon-"+nodeName), chromedp.ByQuery),
		chromedp.WaitVisible(row+` [data-scheduling="schedulable"]`, chromedp.ByQuery))
	// The other operator pages: classes with their sizing policies, images, projects.
	var classRow, imageRow string
	uiRun(t, ctx, 30*time.Second, "the classes and cluster images pages",
		chromedp.Click(`header a[href="#/classes"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`#classes-list tr[data-name="small"]`, chromedp.ByQuery),
		chromedp.Text(`#classes-list tr[data-name="small"]`, &classRow, chromedp.ByQuery),
		chromedp.Click(`header a[href="#/images"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`#images-list tr[data-name="guest"]`, chromedp.ByQuery),
		chromedp.Text(`#images-list tr[data-name="guest"]`, &imageRow, chromedp.ByQuery),
		chromedp.Click(`header a[href="#/projects"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`#projects-list tr[data-name="default"]`, chromedp.ByQuery))
	if !strings.Contains(classRow, "cores 1–2") || !strings.Contains(imageRow, "Ready") {
		t.Errorf("operator pages: class row %q, image row %q", classRow, imageRow)
	}
	// A ClusterAdmin edits a cluster object as JSON: a change the server refuses shows its
	// message in the dialog (which stays open); a good one is saved.
	edit := func(js string) chromedp.Action {
		return chromedp.Evaluate(`(() => { const t = document.querySelector('#edit-json'); const v = JSON.parse(t.value); `+js+`; t.value = JSON.stringify(v, null, 2); })()`, nil)
	}
	uiRun(t, ctx, 30*time.Second, "open the class editor",
		chromedp.Click(`header a[href="#/classes"]`, chromedp.ByQuery),
		chromedp.Click(`#classes-list tr[data-name="small"] button.edit`, chromedp.ByQuery),
		chromedp.WaitVisible("#edit-json", chromedp.ByID))
	var editErr string
	uiRun(t, ctx, 30*time.Second, "save a bad change",
		edit(`v.spec.cpu.type = 'Bogus'`),
		chromedp.Click("#edit-save", chromedp.ByID),
		chromedp.WaitVisible("#edit-error .error", chromedp.ByQuery),
		chromedp.Text("#edit-error", &editErr, chromedp.ByQuery))
	if !strings.Contains(editErr, "Bogus") {
		t.Errorf("the editor's error: %q, want the server's message naming the value", editErr)
	}
	uiShot(t, ctx, shots, "edit")
	// The class controller keeps rewriting the class's status (its free resources): a status
	// written since the editor opened it is not a conflict with the edit. Make sure one is.
	if err := c.PatchStatus(ctxT(t), "virtualmachineclasses", "", "small", []byte(`{"status":{"maxAllocatableResources":{"cpu":"1"}}}`), nil); err != nil {
		t.Fatal(err)
	}
	uiRun(t, ctx, 30*time.Second, "save a good change",
		edit(`v.spec.cpu.type = 'Model'; v.metadata.annotations['ui-edited'] = 'yes'`),
		chromedp.Click("#edit-save", chromedp.ByID),
		chromedp.WaitNotPresent("#edit-dialog", chromedp.ByID))
	// Someone else changes the class while the editor is open: the save is refused, saying
	// so, and their change stays.
	uiRun(t, ctx, 30*time.Second, "open the editor again",
		chromedp.Click(`#classes-list tr[data-name="small"] button.edit`, chromedp.ByQuery),
		chromedp.WaitVisible("#edit-json", chromedp.ByID))
	if err := c.Patch(ctxT(t), "virtualmachineclasses", "", "small", []byte(`{"metadata":{"annotations":{"other-admin":"was here"}}}`), nil); err != nil {
		t.Fatal(err)
	}
	var conflict string
	uiRun(t, ctx, 30*time.Second, "save over another's change",
		edit(`v.metadata.annotations['ui-edited'] = 'again'`),
		chromedp.Click("#edit-save", chromedp.ByID),
		chromedp.WaitVisible("#edit-error .error", chromedp.ByQuery),
		chromedp.Text("#edit-error", &conflict, chromedp.ByQuery),
		chromedp.Click("#edit-cancel", chromedp.ByID),
		chromedp.WaitNotPresent("#edit-dialog", chromedp.ByID))
	if !strings.Contains(conflict, "changed by someone else") {
		t.Errorf("the editor's conflict message: %q", conflict)
	}
	var cls v1alpha1.VirtualMachineClass
	if err := c.Get(ctxT(t), "virtualmachineclasses", "", "small", &cls); err != nil || cls.Annotations["ui-edited"] != "yes" || cls.Annotations["other-admin"] != "was here" || cls.Spec.CPU.Type != "Model" {
		t.Errorf("the class after the edit: annotations %v, cpu %+v, %v", cls.Annotations, cls.Spec.CPU, err)
	}

	// A ClusterAdmin makes a new cluster object from the kind's example: unnamed, the server's
	// refusal shows in the dialog (which stays open); named, it is created and the live table
	// shows it.
	create := func(js string) chromedp.Action {
		return chromedp.Evaluate(`(() => { const t = document.querySelector('#create-json'); const v = JSON.parse(t.value); `+js+`; t.value = JSON.stringify(v, null, 2); })()`, nil)
	}
	var createErr string
	uiRun(t, ctx, 30*time.Second, "create a class without a name",
		chromedp.Click("#classes-new", chromedp.ByID),
		chromedp.WaitVisible("#create-json", chromedp.ByID),
		chromedp.Click("#create-save", chromedp.ByID),
		chromedp.WaitVisible("#create-error .error", chromedp.ByQuery),
		chromedp.Text("#create-error", &createErr, chromedp.ByQuery))
	if !strings.Contains(createErr, "name") {
		t.Errorf("the new-object dialog's error for a class without a name: %q, want the server's message", createErr)
	}
	uiRun(t, ctx, 30*time.Second, "create a class",
		create(`v.metadata.name = 'ui-made'; v.metadata.labels = {made: 'ui'}; v.spec.cpu = {type: 'Model', model: 'Nehalem'}`),
		chromedp.Click("#create-save", chromedp.ByID),
		chromedp.WaitNotPresent("#create-dialog", chromedp.ByID),
		chromedp.WaitVisible(`#classes-list tr[data-name="ui-made"]`, chromedp.ByQuery))
	var made v1alpha1.VirtualMachineClass
	if err := c.Get(ctxT(t), "virtualmachineclasses", "", "ui-made", &made); err != nil || made.Spec.CPU.Model != "Nehalem" || made.Labels["made"] != "ui" || len(made.Spec.SizingPolicies) != 1 {
		t.Errorf("the class made in the UI: labels %v, spec %+v (%v)", made.Labels, made.Spec, err)
	}
	targetDir := t.TempDir()
	uiRun(t, ctx, 30*time.Second, "create a backup target",
		chromedp.Click(`header a[href="#/backuptargets"]`, chromedp.ByQuery),
		chromedp.Click("#backuptargets-new", chromedp.ByID),
		chromedp.WaitVisible("#create-json", chromedp.ByID),
		create(`v.metadata.name = 'ui-target'; v.spec.directory.path = `+strconvQuote(targetDir)),
		chromedp.Click("#create-save", chromedp.ByID),
		chromedp.WaitNotPresent("#create-dialog", chromedp.ByID),
		chromedp.WaitVisible(`#backuptargets-list tr[data-name="ui-target"]`, chromedp.ByQuery))
	uiShot(t, ctx, shots, "backup-targets")
	var bt v1alpha1.BackupTarget
	if err := c.Get(ctxT(t), "backuptargets", "", "ui-target", &bt); err != nil || bt.Spec.Directory == nil || bt.Spec.Directory.Path != targetDir {
		t.Errorf("the backup target made in the UI: %+v (%v)", bt.Spec, err)
	}

	// An image uploaded from the browser: the progress reaches 100 % and the image Ready.
	upload := filepath.Join(t.TempDir(), "small.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", upload, "32M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v %s", err, out)
	}
	uiRun(t, ctx, 30*time.Second, "open the images page",
		chromedp.Click(`header a[href="#/project-images"]`, chromedp.ByQuery),
		chromedp.WaitVisible("#img-file", chromedp.ByID))
	uiA11y(t, ctx, "the images page")
	if pct := uiUpload(t, ctx, 90*time.Second, "up-ui", upload); pct != "100 %" {
		t.Errorf("the upload's progress shows %q at the end", pct)
	}
	uiShot(t, ctx, shots, "images")

	// An upload whose connection breaks resumes: a second tab reaches this serve through a
	// proxy that cuts the connection carrying the upload after 3 MiB; the page asks the server
	// how much arrived (HEAD) and sends the rest with a Content-Range.
	uiUploadResume(t, ctx, c, addr, shots)

	// An image imported from a URL: the server fetches it, the table follows it to Ready.
	importURL := vmImageServer(t, vmGuestDir(t)) + "/guest.qcow2"
	uiRun(t, ctx, 2*time.Minute, "import an image from a URL",
		chromedp.SendKeys("#imp-name", "imp-ui", chromedp.ByID),
		chromedp.SendKeys("#imp-url", importURL, chromedp.ByID),
		chromedp.Click("#imp-start", chromedp.ByID),
		chromedp.WaitVisible(`tr[data-image="imp-ui"] [data-phase="Ready"]`, chromedp.ByQuery))
	var imported v1alpha1.VirtualImage
	if err := c.Get(context.Background(), "virtualimages", "default", "imp-ui", &imported); err != nil || imported.Spec.DataSource.HTTP == nil || imported.Spec.DataSource.HTTP.URL != importURL {
		t.Errorf("the image imported in the UI: %+v (%v)", imported.Spec.DataSource, err)
	}

	// The disks page: a blank disk grown from 64 MiB to 128 MiB, attached to web1 and detached.
	s.MustCLI(`apiVersion: virtualization.rakhsh.io/v1alpha1
kind: VirtualDisk
metadata: {name: data-ui}
spec:
  persistentVolumeClaim: {size: 64Mi}
`, "apply", "-f", "-")
	diskRow := `tr[data-disk="data-ui"]`
	uiRun(t, ctx, time.Minute, "grow a disk",
		chromedp.Click(`header a[href="#/disks"]`, chromedp.ByQuery),
		chromedp.WaitVisible(diskRow+` [data-phase="Ready"]`, chromedp.ByQuery),
		chromedp.Click("#disk-resize-data-ui", chromedp.ByID),
		chromedp.WaitVisible("#prompt-value", chromedp.ByID),
		uiSetValue("#prompt-value", "128Mi"),
		chromedp.Click("#prompt-ok", chromedp.ByID),
		chromedp.WaitVisible("#disk-result .notice", chromedp.ByQuery))
	uiPoll(t, ctx, time.Minute, "the disk's size shown as 128 MiB",
		`(document.querySelector('tr[data-disk="data-ui"] td[data-size]')?.textContent || "") === "128 MiB"`)
	var grown v1alpha1.VirtualDisk
	if err := c.Get(context.Background(), "virtualdisks", "default", "data-ui", &grown); err != nil || grown.Spec.PersistentVolumeClaim.Size != "128Mi" {
		t.Errorf("after Resize in the UI the disk's spec size is %q (%v)", grown.Spec.PersistentVolumeClaim.Size, err)
	}
	uiRun(t, ctx, 30*time.Second, "attach the disk",
		chromedp.Click("#disk-attach-data-ui", chromedp.ByID),
		chromedp.WaitVisible("#prompt-value", chromedp.ByID),
		uiSetValue("#prompt-value", "web1"),
		chromedp.Click("#prompt-ok", chromedp.ByID),
		chromedp.WaitVisible(diskRow+` td[data-attached="web1"]`, chromedp.ByQuery),
		chromedp.WaitVisible("#disk-detach-data-ui", chromedp.ByID))
	uiShot(t, ctx, shots, "disks")
	l, err := c.List(context.Background(), "virtualmachineblockdeviceattachments", "default", client.ListOptions{})
	var bda v1alpha1.VirtualMachineBlockDeviceAttachment
	if err != nil || len(l.Items) != 1 || json.Unmarshal(l.Items[0], &bda) != nil || bda.Spec.VirtualMachineName != "web1" || bda.Spec.BlockDeviceRef.Name != "data-ui" {
		t.Fatalf("after Attach in the UI: %v %+v", err, bda.Spec)
	}
	uiRun(t, ctx, time.Minute, "detach the disk",
		chromedp.Click("#disk-detach-data-ui", chromedp.ByID),
		chromedp.WaitVisible("#confirm-yes", chromedp.ByID),
		chromedp.Click("#confirm-yes", chromedp.ByID),
		chromedp.WaitVisible(diskRow+` td[data-attached=""]`, chromedp.ByQuery),
		chromedp.WaitVisible("#disk-attach-data-ui", chromedp.ByID))

	// A user with a local password: log out, a wrong password is refused, the right one logs in
	// as that user, who sees the VMs of the project they are a Viewer of.
	s.MustCLI(`apiVersion: virtualization.rakhsh.io/v1alpha1
kind: User
metadata: {name: ulla}
spec: {displayName: Ulla}
`, "apply", "-f", "-")
	s.MustCLI("ulla-Pa55word!\n", "user", "set-password", "ulla", "--password-stdin")
	s.MustCLI("", "patch", "project", "default", "--type", "merge", "-p", `{"spec":{"members":[{"name":"user:ulla","role":"Viewer"}]}}`)
	uiRun(t, ctx, 30*time.Second, "log out",
		chromedp.Click("#logout", chromedp.ByID),
		chromedp.WaitVisible("#username", chromedp.ByID),
		chromedp.SendKeys("#username", "ulla", chromedp.ByID),
		chromedp.SendKeys("#password", "not-her-password", chromedp.ByID),
		chromedp.Click("#login-password", chromedp.ByID),
		chromedp.WaitVisible("#login-error .error", chromedp.ByQuery))
	uiRun(t, ctx, 5*time.Second, "read the password login error", chromedp.Text("#login-error", &loginErr, chromedp.ByQuery))
	if !strings.Contains(loginErr, "wrong user name or password") {
		t.Errorf("password login error shown: %q", loginErr)
	}
	uiShot(t, ctx, shots, "login-password")
	var who string
	uiRun(t, ctx, 30*time.Second, "log in with the password",
		uiSetValue("#password", ""),
		chromedp.SendKeys("#password", "ulla-Pa55word!", chromedp.ByID),
		chromedp.Click("#login-password", chromedp.ByID),
		chromedp.WaitVisible(`tr[data-vm="web1"]`, chromedp.ByQuery),
		chromedp.Text("#user", &who, chromedp.ByID))
	if who != "ulla" {
		t.Errorf("the header names %q after ulla's password login", who)
	}
	// A Viewer is offered no create, actions or consoles (the API would refuse them).
	var createLinks, stopButtons int
	uiRun(t, ctx, 30*time.Second, "the Viewer's pages",
		chromedp.WaitVisible("#read-only", chromedp.ByID),
		chromedp.Evaluate(`document.querySelectorAll('a[href="#/create"]').length`, &createLinks),
		chromedp.Navigate(base+"/ui/#/vms/web1"),
		chromedp.WaitVisible("#vm-name", chromedp.ByID),
		chromedp.WaitVisible("#read-only", chromedp.ByID),
		chromedp.Evaluate(`document.querySelectorAll('#vm-stop, #vm-console').length`, &stopButtons))
	if createLinks != 0 || stopButtons != 0 {
		t.Errorf("a Viewer is offered %d create links and %d action or console buttons", createLinks, stopButtons)
	}
	uiShot(t, ctx, shots, "viewer-vm")

	// Single sign-on: olga, known only to the issuer, in group "staff", which is a User of the
	// project; the browser goes to the issuer and comes back logged in as her.
	s.MustCLI("", "patch", "project", "default", "--type", "merge", "-p", `{"spec":{"members":[{"name":"user:ulla","role":"Viewer"},{"name":"group:staff","role":"User"}]}}`)
	issuer.SetLogin(map[string]any{"preferred_username": "olga", "groups": []string{"staff"}})
	var landed string
	uiRun(t, ctx, 30*time.Second, "log in with single sign-on",
		chromedp.Click("#logout", chromedp.ByID),
		chromedp.WaitVisible("#login-oidc", chromedp.ByID),
		chromedp.Click("#login-oidc", chromedp.ByID),
		chromedp.WaitVisible(`tr[data-vm="web1"]`, chromedp.ByQuery),
		chromedp.Text("#user", &who, chromedp.ByID),
		chromedp.Location(&landed))
	if who != "olga" || !strings.HasPrefix(landed, base+"/ui/") {
		t.Errorf("after the single sign-on the header names %q at %s", who, landed)
	}
	uiRun(t, ctx, 30*time.Second, "olga is a project User",
		chromedp.Navigate(base+"/ui/#/vms/web1"),
		chromedp.WaitVisible("#vm-name", chromedp.ByID),
		chromedp.WaitVisible("#vm-console", chromedp.ByID))
	uiShot(t, ctx, shots, "oidc-user-vm")
	// Nobody logged in at the issuer: the browser comes back to a page that says so.
	issuer.SetLogin(nil)
	var ssoRefused string
	uiRun(t, ctx, 30*time.Second, "a refused single sign-on",
		chromedp.Navigate(base+"/ui/oidc/login"),
		chromedp.WaitVisible("#login-error", chromedp.ByID),
		chromedp.Text("#login-error", &ssoRefused, chromedp.ByID))
	if !strings.Contains(ssoRefused, "access_denied") {
		t.Errorf("a refused single sign-on shows %q", ssoRefused)
	}
}

// uiUntil polls cond every 250 ms until it holds, failing the test after limit.
func uiUntil(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", limit, what)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// uiUpload uploads file as the project image name from the images page the browser shows,
// waits for the page's notice and the image Ready, and returns the progress text shown.
func uiUpload(t *testing.T, ctx context.Context, timeout time.Duration, name, file string) string {
	t.Helper()
	var pct string
	uiRun(t, ctx, timeout, "upload "+name+" from the browser",
		chromedp.SendKeys("#img-name", name, chromedp.ByID),
		chromedp.SetUploadFiles("#img-file", []string{file}, chromedp.ByID),
		chromedp.Click("#img-upload", chromedp.ByID),
		chromedp.WaitVisible(`#image-result .notice`, chromedp.ByQuery),
		chromedp.Text("#img-progress-text", &pct, chromedp.ByID),
		chromedp.WaitVisible(`tr[data-image="`+name+`"] [data-phase="Ready"]`, chromedp.ByQuery))
	return pct
}

// strconvQuote is a Go string as a JavaScript string literal.
func strconvQuote(v string) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// uiUploadResume uploads 12 MiB from a second tab that reaches the serve at addr through a
// cutProxy armed to cut after 3 MiB, and checks that the page resumed the upload (a PUT with a
// Content-Range from a byte after 0) and that the image arrived whole.
func uiUploadResume(t *testing.T, ctx context.Context, c *client.Client, addr, shots string) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "resume.raw")
	data := make([]byte, 12<<20)
	if _, err := cryptorand.Read(data); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, data, 0o644); err != nil {
		t.Fatal(err)
	}
	px := startCutProxy(t, addr)
	tab, cancel := chromedp.NewContext(ctx)
	defer cancel()
	// The tab's first Run opens it for good; under uiRun's deadline it would close with it.
	if err := chromedp.Run(tab); err != nil {
		t.Fatalf("opening a second tab: %v", err)
	}
	var mu sync.Mutex
	var ranges []string
	chromedp.ListenTarget(tab, func(ev any) {
		e, ok := ev.(*network.EventRequestWillBeSent)
		if !ok || e.Request.Method != http.MethodPut {
			return
		}
		for k, v := range e.Request.Headers {
			if strings.EqualFold(k, "Content-Range") {
				mu.Lock()
				ranges = append(ranges, fmt.Sprint(v))
				mu.Unlock()
			}
		}
	})
	// The session cookie is the host's, so the tab on the proxy's port is logged in too.
	uiRun(t, tab, 30*time.Second, "open the images page through the cutting proxy",
		chromedp.Navigate("https://"+px.Addr()+"/ui/"),
		chromedp.WaitVisible(`header a[href="#/project-images"]`, chromedp.ByQuery),
		chromedp.Click(`header a[href="#/project-images"]`, chromedp.ByQuery),
		chromedp.WaitVisible("#img-file", chromedp.ByID))
	px.Arm(3 << 20)
	pct := uiUpload(t, tab, 3*time.Minute, "up-resume-ui", file)
	uiShot(t, tab, shots, "images-resumed")
	if n := px.Cuts(); n != 1 {
		t.Errorf("the proxy cut %d connections, want 1", n)
	}
	if pct != "100 %" {
		t.Errorf("the resumed upload's progress shows %q at the end", pct)
	}
	mu.Lock()
	got := append([]string(nil), ranges...)
	mu.Unlock()
	resumed := false
	for _, r := range got {
		var start, end, total int64
		if _, err := fmt.Sscanf(r, "bytes %d-%d/%d", &start, &end, &total); err == nil && start > 0 && end == int64(len(data))-1 && total == int64(len(data)) {
			resumed = true
		}
	}
	if !resumed {
		t.Errorf("no PUT of the page resumed the upload after the cut: Content-Range headers sent %q", got)
	}
	var img v1alpha1.VirtualImage
	if err := c.Get(ctxT(t), "virtualimages", "default", "up-resume-ui", &img); err != nil || img.Status.Size == nil || img.Status.Size.UnpackedBytes != int64(len(data)) {
		t.Errorf("the resumed image: %+v (%v), want %d bytes unpacked", img.Status, err, len(data))
	}
}

// cutProxy forwards TCP connections from a loopback port to a target, bytes unchanged (TLS
// passes through). Armed with n, it cuts the first connection whose client sends the n-th
// byte counted from the arming, once: both sides are closed at once.
type cutProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	left   int64 // bytes until the cut; 0: not armed
	cuts   int
	conns  []net.Conn
	closed bool
}

func startCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target}
	go p.serve()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		p.closed = true
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
	})
	return p
}

func (p *cutProxy) Addr() string { return p.ln.Addr().String() }

func (p *cutProxy) Arm(n int64) {
	p.mu.Lock()
	p.left = n
	p.mu.Unlock()
}

func (p *cutProxy) Cuts() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cuts
}

func (p *cutProxy) serve() {
	for {
		cc, err := p.ln.Accept()
		if err != nil {
			return
		}
		sc, err := net.Dial("tcp", p.target)
		if err != nil {
			cc.Close()
			continue
		}
		p.mu.Lock()
		if p.closed { // the test ended while this connection was dialled
			p.mu.Unlock()
			cc.Close()
			sc.Close()
			return
		}
		p.conns = append(p.conns, cc, sc)
		p.mu.Unlock()
		go func() {
			_, _ = io.Copy(cc, sc)
			cc.Close()
		}()
		go p.upstream(cc, sc)
	}
}

// upstream copies what the client sends, counting it against an armed cut.
func (p *cutProxy) upstream(cc, sc net.Conn) {
	defer sc.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := cc.Read(buf)
		if n > 0 {
			p.mu.Lock()
			cut := false
			if p.left > 0 {
				if int64(n) >= p.left {
					n, cut = int(p.left), true
					p.left = 0
					p.cuts++
				} else {
					p.left -= int64(n)
				}
			}
			p.mu.Unlock()
			if _, werr := sc.Write(buf[:n]); werr != nil {
				cc.Close()
				return
			}
			if cut {
				cc.Close()
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// uiA11y fails the test for each visible control of the page without an accessible name
// (a label, aria-label or aria-labelledby, a title, or the text of a button or link), for
// images without alt text, and for a document without a language.
func uiA11y(t *testing.T, ctx context.Context, page string) {
	t.Helper()
	var bad []string
	uiRun(t, ctx, 10*time.Second, "accessibility check of "+page, chromedp.Evaluate(`(() => {
  const out = [];
  if (!document.documentElement.lang) out.push('html without lang');
  const describe = (el) => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') + (el.className && typeof el.className === 'string' ? '.' + el.className.split(' ').join('.') : '');
  const labelledBy = (el) => (el.getAttribute('aria-labelledby') || '').split(/\s+/).filter(Boolean).map((id) => (document.getElementById(id)?.textContent || '').trim()).join(' ').trim();
  for (const el of document.querySelectorAll('input, select, textarea, button, a[href], meter, progress, img, [role=button]')) {
    if (el.type === 'hidden' || el.closest('[hidden], [aria-hidden=true], [inert], .xterm, .vnc') || el.getClientRects().length === 0) continue;
    if (el.tagName === 'IMG') { if (!el.hasAttribute('alt')) out.push(describe(el) + ' without alt'); continue; }
    if ((el.getAttribute('aria-label') || '').trim() || labelledBy(el) || (el.getAttribute('title') || '').trim()) continue;
    if (el.tagName === 'INPUT' && ['submit', 'button', 'reset'].includes(el.type) && (el.value || '').trim()) continue;
    if (el.labels && el.labels.length > 0 && [...el.labels].some((l) => l.textContent.trim())) continue;
    if (['BUTTON', 'A'].includes(el.tagName) || el.getAttribute('role') === 'button') {
      if (el.textContent.trim() || [...el.querySelectorAll('img[alt]')].some((i) => i.alt.trim())) continue;
    }
    out.push(describe(el));
  }
  return out;
})()`, &bad))
	if len(bad) > 0 {
		t.Errorf("%s: controls without an accessible name: %q", page, bad)
	}
}
