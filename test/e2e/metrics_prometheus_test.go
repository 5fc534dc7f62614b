package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/apiserver"
)

// promSample is one series of a Prometheus instant query's answer.
type promSample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

func (p promSample) value(t *testing.T) float64 {
	s, _ := p.Value[1].(string)
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		t.Fatalf("sample value %v: %v", p.Value, err)
	}
	return v
}

// promQuery runs an instant query through Prometheus' HTTP API.
func promQuery(t *testing.T, base, q string) []promSample {
	t.Helper()
	resp, err := http.Get(base + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		t.Fatalf("query %s: %v", q, err)
	}
	defer resp.Body.Close()
	var out struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []promSample `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("query %s: %v", q, err)
	}
	if out.Status != "success" {
		t.Fatalf("query %s: %s", q, out.Error)
	}
	return out.Data.Result
}

// promWait polls a query until ok accepts its answer.
func promWait(t *testing.T, base, q string, timeout time.Duration, what string, ok func([]promSample) bool) []promSample {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last []promSample
	for time.Now().Before(deadline) {
		last = promQuery(t, base, q)
		if ok(last) {
			return last
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("%s: query %s not satisfied within %s; last answer: %+v", what, q, timeout, last)
	return nil
}

// startPrometheus runs Debian's prometheus on loopback with a config that discovers its
// targets through sdURL (with the token in tokenFile) and scrapes them every second.
func startPrometheus(t *testing.T, sdURL, tokenFile string) string {
	t.Helper()
	return startPrometheusAt(t, freeAddr(t), sdURL, tokenFile)
}

// startPrometheusAt is startPrometheus listening on addr (host:port on loopback).
func startPrometheusAt(t *testing.T, addr, sdURL, tokenFile string) string {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		skipOrFail(t, "prometheus missing: apt-get install prometheus (scripts/install-deps.sh)")
	}
	dir := t.TempDir()
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
- job_name: rakhsh
  authorization: {type: Bearer, credentials_file: %q}
  http_sd_configs:
  - url: %q
    refresh_interval: 1s
    # Prometheus 2.42 sends the credentials of an HTTP SD without the Bearer type unless told.
    authorization: {type: Bearer, credentials_file: %q}
`, tokenFile, sdURL, tokenFile)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &lockedBuffer{}
	cmd := exec.Command(bin, "--config.file="+filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	cmd.Stdout, cmd.Stderr = logs, logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting prometheus: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("prometheus log:\n%s", logs.String())
		}
	})
	base := "http://" + addr
	deadline := time.Now().Add(30 * time.Second)
	for {
		if resp, err := http.Get(base + "/-/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return base
			}
		}
		select {
		case <-done:
			t.Fatalf("prometheus exited:\n%s", logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready within 30s:\n%s", logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// getWithToken GETs url with a bearer token (none when empty) and returns the status and body.
func getWithToken(t *testing.T, u, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", u, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestMetricsPrometheus: a real Prometheus finds a real serve through /sd/prometheus with the
// read-only metrics token and scrapes its node and VM series: the running VM's CPU seconds
// carry its project, name and node and grow, its vCPU wait (steal) series exists, the
// create → Running histogram counted it, and once the VM is deleted its series are gone at
// the next scrape.
func TestMetricsPrometheus(t *testing.T) {
	sideBySide(t)
	vmGuestDir(t)
	token := "metrics-" + strconv.FormatInt(time.Now().UnixNano(), 36) + "-read-only"
	tokenFile := filepath.Join(t.TempDir(), "metrics.token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	maddr, paddr := freeAddr(t), freeAddr(t)
	s := vmServe(t, "--metrics-listen", maddr, "--metrics-token-file", tokenFile, "--prometheus-url", "http://"+paddr)
	base := "http://" + maddr

	// Access: the metrics token reads /metrics (Prometheus text, or OpenMetrics when asked)
	// and the discovery, nothing else; no token reads nothing.
	if code, body := getWithToken(t, base+"/metrics", ""); code != http.StatusUnauthorized {
		t.Fatalf("/metrics without a token: %d %s", code, body)
	}
	if code, body := getWithToken(t, base+"/apis", token); code != http.StatusNotFound {
		t.Fatalf("/apis on the metrics listener: %d %s", code, body)
	}
	req, _ := http.NewRequest("GET", base+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "application/openmetrics-text;version=1.0.0")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || !strings.HasPrefix(ct, "application/openmetrics-text") || !strings.HasSuffix(strings.TrimSpace(string(body)), "# EOF") {
		t.Fatalf("OpenMetrics /metrics: %s %q:\n%.500s", resp.Status, ct, body)
	}

	vmSetupGuest(t, s, "root")
	s.MustCLI(vmManifest("vm1", "root", "AlwaysOnUnlessStoppedManually", "256Mi"), "apply", "-f", "-")
	vm := vmWait(t, s, "vm1", 2*time.Minute, "Running", vmPhase(v1alpha1.VMPhaseRunning))
	node := vm.Status.NodeName

	// The discovery lists the node's metrics URL (this serve's listener) with its name.
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body := getWithToken(t, base+"/sd/prometheus", token)
		var groups []struct {
			Targets []string          `json:"targets"`
			Labels  map[string]string `json:"labels"`
		}
		if code == 200 && json.Unmarshal([]byte(body), &groups) == nil && len(groups) == 1 &&
			groups[0].Labels["rakhsh_node"] == node && len(groups[0].Targets) == 1 && groups[0].Targets[0] == maddr {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/sd/prometheus does not list node %s at %s: %d %s", node, maddr, code, body)
		}
		time.Sleep(200 * time.Millisecond)
	}

	prom := startPrometheusAt(t, paddr, base+"/sd/prometheus", tokenFile)
	cpuQ := `rakhsh_vm_cpu_seconds_total{project="default",name="vm1",mode="user"}`
	first := promWait(t, prom, cpuQ, time.Minute, "the VM's CPU seconds", func(r []promSample) bool { return len(r) == 1 })[0]
	if first.Metric["node"] != node || first.Metric["job"] != "rakhsh" || first.Metric["rakhsh_node"] != node || first.Metric["exported_node"] != "" {
		t.Fatalf("CPU series labels %v: want node and rakhsh_node %q, job rakhsh, no exported_node", first.Metric, node)
	}
	v0 := first.value(t)
	promWait(t, prom, cpuQ, time.Minute, "the VM's CPU seconds grow", func(r []promSample) bool {
		return len(r) == 1 && r[0].value(t) > v0
	})
	promWait(t, prom, `rakhsh_vm_vcpu_wait_seconds_total{project="default",name="vm1"}`, 30*time.Second, "the VM's vCPU wait (steal)",
		func(r []promSample) bool {
			return len(r) >= 1 && r[0].Metric["vcpu"] != "" && r[0].Metric["node"] == node
		})
	promWait(t, prom, `rakhsh_vm_create_to_running_seconds_count{node="`+node+`"}`, 30*time.Second, "the create → Running histogram",
		func(r []promSample) bool { return len(r) == 1 && r[0].value(t) >= 1 })
	promWait(t, prom, `rakhsh_vm_phase{name="vm1",phase="Running"}`, 30*time.Second, "the VM's phase", func(r []promSample) bool { return len(r) == 1 })
	promWait(t, prom, `rakhsh_node_vms{node="`+node+`",phase="Running"}`, 30*time.Second, "the node's VMs by phase",
		func(r []promSample) bool { return len(r) == 1 && r[0].value(t) == 1 })
	promWait(t, prom, `rakhsh_vm_disk_read_bytes_total{name="vm1"}`, 30*time.Second, "the VM's disk reads",
		func(r []promSample) bool { return len(r) >= 1 && r[0].value(t) > 0 })

	// The VM's metrics subresource (the web UI's charts) reads the same series through the
	// API: CPU and memory have points, the memory ones QEMU's resident size.
	var m apiserver.VMMetrics
	deadline = time.Now().Add(time.Minute)
	for {
		err := s.Client().Do(ctxT(t), "GET", client.Path("virtualmachines", "default", "vm1", apiserver.SubMetrics), url.Values{"range": {"5m"}}, "", nil, &m)
		if err != nil {
			t.Fatalf("the VM's metrics subresource: %v", err)
		}
		pts := map[string]int{}
		var mem float64
		for _, sr := range m.Series {
			pts[sr.Name] = len(sr.Points)
			if sr.Name == "memory" && len(sr.Points) > 0 {
				mem = sr.Points[len(sr.Points)-1][1]
			}
		}
		if pts["cpu"] > 0 && pts["memory"] > 0 && pts["diskRead"] > 0 && mem > 64<<20 {
			t.Logf("the metrics subresource: %v points, memory %.0f MiB, step %d s", pts, mem/(1<<20), m.StepSeconds)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the VM's metrics subresource has no CPU, memory or disk points: %+v", m)
		}
		time.Sleep(time.Second)
	}

	s.MustCLI("", "delete", "vm", "vm1", "--wait", "--timeout", "90s")
	promWait(t, prom, `{name="vm1"}`, 30*time.Second, "the deleted VM's series gone", func(r []promSample) bool { return len(r) == 0 })
	// The node is still scraped: its series remain.
	if r := promQuery(t, prom, `rakhsh_node_vms{node="`+node+`",phase="Running"}`); len(r) != 1 || r[0].value(t) != 0 {
		t.Fatalf("after the delete the node's Running VMs are %+v, want one series of 0", r)
	}
}
