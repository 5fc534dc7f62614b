package e2e

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/apiserver"
	"github.com/rakhsh/rakhsh/internal/oidctest"
)

// identityTenants is the setup of TestIdentity: two projects and four users.
const identityTenants = `apiVersion: virtualization.rakhsh.io/v1alpha1
kind: Project
metadata: {name: p1}
spec:
  members:
  - {name: "user:alice", role: User}
  - {name: bob, role: Viewer}
  - {name: "group:auditors", role: Viewer}
---
apiVersion: virtualization.rakhsh.io/v1alpha1
kind: Project
metadata: {name: p2}
spec:
  members:
  - {name: carol, role: Admin}
---
apiVersion: virtualization.rakhsh.io/v1alpha1
kind: User
metadata: {name: alice}
spec: {displayName: Alice}
---
apiVersion: virtualization.rakhsh.io/v1alpha1
kind: User
metadata: {name: bob}
spec: {}
---
apiVersion: virtualization.rakhsh.io/v1alpha1
kind: User
metadata: {name: carol}
spec: {}
---
apiVersion: virtualization.rakhsh.io/v1alpha1
kind: User
metadata: {name: dave}
spec: {groups: [auditors]}
---
apiVersion: v1
kind: Secret
metadata: {name: s1, namespace: p1}
stringData: {userData: "SECRET-VALUE-P1"}
`

// TestIdentity runs one real serve over TLS: alice (User in p1) logs in with a password and
// creates a VM in p1 but cannot see or touch p2; bob (Viewer in p1) reads p1 but cannot
// create, delete or open a console; dave reads p1 through a group; revoked, expired and
// disabled users' tokens are refused with 401; the audit log has the mutating calls and no
// secret.
// startIssuer starts an OpenID Connect issuer of the test's own (a real signing key, over TLS
// on loopback) and writes its CA for serve's --oidc-ca-file; it stops with the test.
func startIssuer(t *testing.T) (*oidctest.Issuer, string) {
	t.Helper()
	issuer, err := oidctest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(issuer.Close)
	ca := filepath.Join(t.TempDir(), "issuer-ca.pem")
	if err := os.WriteFile(ca, issuer.CAPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return issuer, ca
}

func TestIdentity(t *testing.T) {
	sideBySide(t)
	addr := freeAddr(t)
	issuer, issuerCA := startIssuer(t)
	s := StartServe(t, "--no-agent", "--listen", addr, "--oidc-issuer", issuer.URL, "--oidc-client-id", "rakhsh", "--oidc-ca-file", issuerCA)
	server := "https://" + addr
	ca := filepath.Join(s.DataDir, "tls.crt")
	ctx := ctxT(t)
	s.MustCLI(identityTenants, "apply", "-f", "-")
	const alicePW = "alice-Pa55word!"
	s.MustCLI(alicePW+"\n", "user", "set-password", "alice", "--password-stdin")

	// alice logs in; the CLI keeps the token in her config file and uses it.
	cfgFile := filepath.Join(t.TempDir(), "config.yaml")
	aliceEnv := []string{"RAKHSH_CONFIG=" + cfgFile, "RAKHSH_SERVER=", "RAKHSH_TOKEN=", "RAKHSH_TOKEN_FILE="}
	r := runCLIWith(t, nil, aliceEnv, "wrong-password\n", "login", "--server", server, "--ca-file", ca, "-u", "alice", "--password-stdin")
	if r.Code == 0 || !strings.Contains(r.Stderr, "wrong user name or password") {
		t.Fatalf("login with a wrong password: code %d, stderr %q", r.Code, r.Stderr)
	}
	r = runCLIWith(t, nil, aliceEnv, alicePW+"\n", "login", "--server", server, "--ca-file", ca, "-u", "alice", "--password-stdin")
	if r.Code != 0 {
		t.Fatalf("login: code %d, stdout %q, stderr %q", r.Code, r.Stdout, r.Stderr)
	}
	if st, err := os.Stat(cfgFile); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("config file: %v %v, want mode 0600", st, err)
	}
	alice := func(stdin string, args ...string) CLIResult { return runCLIWith(t, nil, aliceEnv, stdin, args...) }
	if r := alice("", "whoami"); r.Code != 0 || !strings.Contains(r.Stdout, "user:         alice") || !strings.Contains(r.Stdout, "p1=User") {
		t.Fatalf("whoami: code %d, stdout %q, stderr %q", r.Code, r.Stdout, r.Stderr)
	}
	if r := alice("", "config", "get-contexts"); r.Code != 0 || !strings.Contains(r.Stdout, "* ") || !strings.Contains(r.Stdout, "alice@"+addr) {
		t.Fatalf("config get-contexts: %q %q", r.Stdout, r.Stderr)
	}
	// dave's colleague olga has no User object: her ID token's group (auditors, a Viewer of p1)
	// is what she may do. A token for another audience is refused at login.
	olgaEnv := []string{"RAKHSH_CONFIG=" + filepath.Join(t.TempDir(), "config.yaml"), "RAKHSH_SERVER=", "RAKHSH_TOKEN=", "RAKHSH_TOKEN_FILE="}
	wrongAud, err := issuer.Token("another-app", time.Hour, map[string]any{"preferred_username": "olga", "groups": []string{"auditors"}})
	if err != nil {
		t.Fatal(err)
	}
	if r := runCLIWith(t, nil, olgaEnv, wrongAud+"\n", "login", "--server", server, "--ca-file", ca, "--oidc-id-token-stdin"); r.Code == 0 || !strings.Contains(r.Stderr, "audience") {
		t.Errorf("login with an ID token for another audience: code %d, stderr %q", r.Code, r.Stderr)
	}
	idt, err := issuer.Token("rakhsh", time.Hour, map[string]any{"preferred_username": "olga", "groups": []string{"auditors"}})
	if err != nil {
		t.Fatal(err)
	}
	if r := runCLIWith(t, nil, olgaEnv, idt+"\n", "login", "--server", server, "--ca-file", ca, "--oidc-id-token-stdin"); r.Code != 0 || !strings.Contains(r.Stdout, "logged in as olga") {
		t.Fatalf("login with an ID token: code %d, stdout %q, stderr %q", r.Code, r.Stdout, r.Stderr)
	}
	olga := func(stdin string, args ...string) CLIResult { return runCLIWith(t, nil, olgaEnv, stdin, args...) }
	identityDeviceLogin(t, issuer, server, ca, issuerCA)
	if r := olga("", "whoami"); r.Code != 0 || !strings.Contains(r.Stdout, "olga") || !strings.Contains(r.Stdout, "p1=Viewer") {
		t.Errorf("olga's whoami: code %d, stdout %q, stderr %q", r.Code, r.Stdout, r.Stderr)
	}
	if r := olga("", "get", "vm", "-n", "p1"); r.Code != 0 {
		t.Errorf("olga (group auditors, Viewer of p1) lists p1's VMs: code %d, stderr %q", r.Code, r.Stderr)
	}
	if r := olga("", "get", "vm", "-n", "p2"); r.Code == 0 || !strings.Contains(r.Stderr, "Forbidden") {
		t.Errorf("olga lists p2's VMs: code %d, stderr %q", r.Code, r.Stderr)
	}

	vm := classVM("vm1", "", "1", "", "128Mi", "AlwaysOff")
	if r := alice(vm, "apply", "-n", "p1", "-f", "-"); r.Code != 0 {
		t.Fatalf("alice creates a VM in p1: code %d, stderr %q", r.Code, r.Stderr)
	}
	s.MustCLI(strings.Replace(vm, "vm1", "vm2", 1), "apply", "-n", "p2", "-f", "-")
	if r := alice(strings.Replace(vm, "vm1", "vm3", 1), "apply", "-n", "p2", "-f", "-"); r.Code == 0 || !strings.Contains(r.Stderr, "no role in project \"p2\"") {
		t.Errorf("alice creates a VM in p2: code %d, stderr %q", r.Code, r.Stderr)
	}
	// The audit log over the API: the admin reads alice's lines of p1, newest first (her
	// create of vm1, with its name); alice may not read it.
	var audit apiserver.AuditList
	if err := json.Unmarshal([]byte(s.MustCLI("", "audit", "get", "--user", "alice", "--project", "p1", "-o", "json")), &audit); err != nil {
		t.Fatal(err)
	}
	if len(audit.Items) == 0 || audit.Items[0].Resource != "virtualmachines" || audit.Items[0].Name != "vm1" || audit.Items[0].Verb != "create" ||
		audit.Items[0].Code != 201 || audit.Items[0].User != "alice" {
		t.Errorf("the audit log over the API, alice in p1: %+v", audit.Items)
	}
	for _, e := range audit.Items {
		if e.User != "alice" || e.Namespace != "p1" {
			t.Errorf("a line of another user or project: %+v", e)
		}
	}
	if r := s.CLI("", "audit", "get", "--user", "alice", "--limit", "5"); r.Code != 0 || !strings.Contains(r.Stdout, "virtualmachines p1/vm1") || !strings.Contains(r.Stdout, "login") {
		t.Errorf("audit get, table: code %d, stdout %q, stderr %q", r.Code, r.Stdout, r.Stderr)
	}
	if r := alice("", "audit", "get"); r.Code == 0 || !strings.Contains(r.Stderr, "only a ClusterAdmin") {
		t.Errorf("alice reads the audit log: code %d, stderr %q", r.Code, r.Stderr)
	}
	if r := alice("", "get", "vm", "-A", "-o", "name"); r.Code != 0 || !strings.Contains(r.Stdout, "vm1") || strings.Contains(r.Stdout, "vm2") {
		t.Errorf("alice lists VMs of all projects: code %d, stdout %q, stderr %q", r.Code, r.Stdout, r.Stderr)
	}
	if r := alice("", "get", "vm", "-n", "p2"); r.Code == 0 || !strings.Contains(r.Stderr, "Forbidden") {
		t.Errorf("alice lists p2's VMs: code %d, stderr %q", r.Code, r.Stderr)
	}
	if r := alice("", "get", "secret", "s1", "-n", "p1"); r.Code == 0 || !strings.Contains(r.Stderr, "project's Admins") {
		t.Errorf("alice (User) reads a secret: code %d, stderr %q", r.Code, r.Stderr)
	}
	if r := alice("", "get", "proj", "-o", "name"); r.Code != 0 || !strings.Contains(r.Stdout, "p1") || strings.Contains(r.Stdout, "p2") {
		t.Errorf("alice lists projects: code %d, stdout %q, stderr %q", r.Code, r.Stdout, r.Stderr)
	}
	if r := alice("", "get", "virtualmachineclasses"); r.Code != 0 {
		t.Errorf("alice reads classes: code %d, stderr %q", r.Code, r.Stderr)
	}
	if r := alice("", "patch", "proj", "p1", "--type", "merge", "-p", `{"spec":{"members":[{"name":"alice","role":"Admin"}]}}`); r.Code == 0 {
		t.Errorf("alice raised her own role: %q", r.Stdout)
	}

	// bob: an API token made by the admin (over the socket, which is cluster admin).
	newToken := func(args ...string) string {
		out := strings.TrimSpace(s.MustCLI("", append([]string{"token", "create"}, args...)...))
		if !strings.HasPrefix(out, "rakhsh-user.") {
			t.Fatalf("token create printed %q", out)
		}
		return out
	}
	clientFor := func(tok string) *client.Client {
		c, err := client.New(client.Config{Server: server, CAFile: ca, Token: tok})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	bobTok := newToken("--user", "bob", "--description", "bob's script")
	bob := clientFor(bobTok)
	var got v1alpha1.VirtualMachine
	if err := bob.Get(ctx, "virtualmachines", "p1", "vm1", &got); err != nil {
		t.Errorf("bob reads p1's VM: %v", err)
	}
	if err := bob.Create(ctx, "virtualmachines", "p1", map[string]any{"apiVersion": v1alpha1.APIVersion, "kind": "VirtualMachine",
		"metadata": map[string]any{"name": "bobs"}, "spec": map[string]any{"runPolicy": "AlwaysOff", "cpu": map[string]any{"cores": 1}, "memory": map[string]any{"size": "128Mi"}}}, nil); !client.IsForbidden(err) {
		t.Errorf("bob (Viewer) creates a VM: %v, want Forbidden", err)
	}
	if err := bob.Delete(ctx, "virtualmachines", "p1", "vm1"); !client.IsForbidden(err) {
		t.Errorf("bob (Viewer) deletes a VM: %v, want Forbidden", err)
	}
	if err := bob.Get(ctx, "virtualmachines", "p2", "vm2", &got); !client.IsForbidden(err) {
		t.Errorf("bob reads p2's VM: %v, want Forbidden", err)
	}
	if err := bob.Get(ctx, "virtualmachines", "p2", "does-not-exist", &got); !client.IsForbidden(err) {
		t.Errorf("bob reads a missing VM of p2: %v, want Forbidden (existence must not leak)", err)
	}
	// A console: refused before anything is looked up.
	pool := x509.NewCertPool()
	pem, err := os.ReadFile(ca)
	if err != nil {
		t.Fatal(err)
	}
	pool.AppendCertsFromPEM(pem)
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	for _, sub := range []string{"console", "vnc", "log"} {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, server+client.Path("virtualmachines", "p1", "vm1", sub), nil)
		req.Header.Set("Authorization", "Bearer "+bobTok)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("bob (Viewer) opens the %s: %d, want 403", sub, resp.StatusCode)
		}
	}
	// bob's watch across projects sees p1's VM and never p2's, also when p2 changes.
	w, err := bob.Watch(ctx, "virtualmachines", "", client.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.MustCLI(strings.Replace(vm, "vm1", "vm4", 1), "apply", "-n", "p2", "-f", "-")
	s.MustCLI(strings.Replace(vm, "vm1", "vm5", 1), "apply", "-n", "p1", "-f", "-")
	seen := map[string]bool{}
	deadline := time.After(20 * time.Second)
	for !seen["p1/vm5"] {
		select {
		case ev, ok := <-w.Events():
			if !ok {
				t.Fatalf("bob's watch ended: %v", w.Err())
			}
			var m struct {
				Metadata v1alpha1.ObjectMeta `json:"metadata"`
			}
			_ = json.Unmarshal(ev.Object, &m)
			if m.Metadata.Name != "" {
				seen[m.Metadata.Namespace+"/"+m.Metadata.Name] = true
			}
		case <-deadline:
			t.Fatalf("bob's watch did not show p1/vm5; saw %v", seen)
		}
	}
	w.Stop()
	if !seen["p1/vm1"] || seen["p2/vm2"] || seen["p2/vm4"] {
		t.Errorf("bob's watch across projects saw %v: want p1's VMs only", seen)
	}

	// dave is a Viewer of p1 through group auditors.
	dave := clientFor(newToken("--user", "dave"))
	if err := dave.Get(ctx, "virtualmachines", "p1", "vm1", &got); err != nil {
		t.Errorf("dave (group auditors) reads p1's VM: %v", err)
	}

	// A token limited to p1 as Viewer: alice's rights there are capped.
	capped := clientFor(newToken("--user", "alice", "--project", "p1", "--role", "Viewer"))
	if err := capped.Delete(ctx, "virtualmachines", "p1", "vm5"); !client.IsForbidden(err) {
		t.Errorf("a Viewer-capped token of alice deletes a VM: %v, want Forbidden", err)
	}

	// Revoked, expired, disabled: 401 with the reason.
	unauthorized := func(what string, c *client.Client, want string) {
		t.Helper()
		err := c.Get(ctx, "virtualmachines", "p1", "vm1", &got)
		if client.Reason(err) != v1alpha1.ReasonUnauthorized || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want Unauthorized saying %q", what, err, want)
		}
	}
	revTok := newToken("--user", "bob")
	rev := clientFor(revTok)
	if err := rev.Get(ctx, "virtualmachines", "p1", "vm1", &got); err != nil {
		t.Fatalf("a fresh token: %v", err)
	}
	id := strings.Split(revTok, ".")[1]
	// Several IDs, one unknown: it is reported, and the others are still revoked.
	if r := s.CLI("", "token", "revoke", "000000000000", id); r.Code != 1 || !strings.Contains(r.Stderr, "token 000000000000 not found") || r.Stdout != "token "+id+" revoked\n" {
		t.Errorf("token revoke of an unknown and a known ID: code %d, stdout %q, stderr %q", r.Code, r.Stdout, r.Stderr)
	}
	unauthorized("a revoked token", rev, "was revoked")
	if out := s.MustCLI("", "token", "list"); !strings.Contains(out, id) || !strings.Contains(out, "revoked") || strings.Contains(out, strings.Split(revTok, ".")[2]) {
		t.Errorf("token list:\n%s", out)
	}
	short := clientFor(newToken("--user", "bob", "--ttl", "1s"))
	time.Sleep(1500 * time.Millisecond)
	unauthorized("an expired token", short, "expired at")
	carol := clientFor(newToken("--user", "carol"))
	if err := carol.Get(ctx, "virtualmachines", "p2", "vm2", &got); err != nil {
		t.Fatalf("carol reads p2: %v", err)
	}
	// carol, an Admin of p2, manages its members: adds bob as a Viewer; she may not change
	// the quota, nor her own entry.
	members := func(m string) []byte { return []byte(`{"spec":{"members":` + m + `}}`) }
	if err := carol.Patch(ctx, "projects", "", "p2", members(`[{"name":"carol","role":"Admin"},{"name":"user:bob","role":"Viewer"}]`), nil); err != nil {
		t.Errorf("carol (Admin of p2) adds a member: %v", err)
	}
	if err := bob.Get(ctx, "virtualmachines", "p2", "vm2", &got); err != nil {
		t.Errorf("bob, added to p2 by carol, reads p2's VM: %v", err)
	}
	if err := carol.Patch(ctx, "projects", "", "p2", []byte(`{"spec":{"quota":{"cores":1000}}}`), nil); !client.IsForbidden(err) || !strings.Contains(err.Error(), "only spec.members") {
		t.Errorf("carol changes p2's quota: %v, want Forbidden", err)
	}
	if err := carol.Patch(ctx, "projects", "", "p2", members(`[{"name":"user:bob","role":"Viewer"}]`), nil); !client.IsForbidden(err) || !strings.Contains(err.Error(), "name them") {
		t.Errorf("carol removes her own entry: %v, want Forbidden", err)
	}
	// user list takes get's -o, -l and --no-headers, and refuses an unknown -o before it asks.
	s.MustCLI("", "label", "user", "carol", "team=physics")
	if r := s.CLI("", "user", "list", "--no-headers", "-l", "team=physics"); r.Code != 0 || !strings.HasPrefix(r.Stdout, "carol ") || strings.Count(r.Stdout, "\n") != 1 {
		t.Errorf("user list --no-headers -l team=physics: code %d, stdout %q, stderr %q", r.Code, r.Stdout, r.Stderr)
	}
	if r := s.CLI("", "user", "list", "-o", "xml"); r.Code != 1 || !strings.Contains(r.Stderr, `unknown output format "xml"`) {
		t.Errorf("user list -o xml: code %d, stderr %q", r.Code, r.Stderr)
	}
	s.MustCLI("", "user", "disable", "carol")
	unauthorized("a disabled user's token", carol, "is disabled")
	if r := alice("", "get", "vm", "-n", "p1", "--server", server, "--ca-file", ca, "--token", "rakhsh-user.000000000000.forged"); r.Code == 0 || !strings.Contains(r.Stderr, "Unauthorized") {
		t.Errorf("a forged token: code %d, stderr %q", r.Code, r.Stderr)
	}

	// The audit log: every mutating call above, and no secret.
	data, err := os.ReadFile(filepath.Join(s.DataDir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	for _, secret := range []string{alicePW, "wrong-password", "SECRET-VALUE-P1", strings.Split(bobTok, ".")[2], strings.Split(revTok, ".")[2]} {
		if strings.Contains(text, secret) {
			t.Errorf("the audit log holds a secret %q", secret)
		}
	}
	type line struct {
		Identity, User, Verb, Resource, Project, Name, Subresource, Source, RequestID string
		Code                                                                          int
	}
	var lines []line
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		var l line
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		lines = append(lines, l)
	}
	has := func(what string, match func(l line) bool) {
		t.Helper()
		for _, l := range lines {
			if match(l) {
				return
			}
		}
		t.Errorf("the audit log lacks %s:\n%s", what, text)
	}
	has("alice's failed login", func(l line) bool { return l.Verb == "login" && l.Name == "alice" && l.Code == 401 })
	has("alice's login", func(l line) bool { return l.Verb == "login" && l.User == "alice" && l.Code == 201 })
	has("alice's VM create", func(l line) bool {
		return l.User == "alice" && l.Verb == "create" && l.Resource == "virtualmachines" && l.Project == "p1" && l.Code == 201 && l.RequestID != "" && strings.HasPrefix(l.Source, "127.0.0.1:")
	})
	has("alice's refused project patch", func(l line) bool {
		return l.User == "alice" && l.Resource == "projects" && l.Verb == "patch" && l.Code == 403
	})
	has("bob's refused create", func(l line) bool {
		return l.User == "bob" && l.Verb == "create" && l.Resource == "virtualmachines" && l.Code == 403
	})
	has("bob's refused delete", func(l line) bool { return l.User == "bob" && l.Verb == "delete" && l.Name == "vm1" && l.Code == 403 })
	has("bob's refused console", func(l line) bool { return l.User == "bob" && l.Subresource == "console" && l.Code == 403 })
	has("the set-password", func(l line) bool { return l.Subresource == "password" && l.Name == "alice" && l.Code == 200 })
	has("the revoke", func(l line) bool { return l.Resource == "tokens" && l.Verb == "delete" && l.Name == id })
	has("the disable", func(l line) bool { return l.Resource == "users" && l.Verb == "patch" && l.Name == "carol" })
	if out := s.MustCLI("", "audit", "tail", "--data-dir", s.DataDir, "--lines", "2"); strings.Count(out, "\n") != 2 || !strings.Contains(out, `"user":"carol"`) && !strings.Contains(out, `"name":"carol"`) {
		t.Errorf("audit tail --lines 2:\n%s", out)
	}
	for _, l := range lines {
		if l.Verb == "get" && l.Subresource == "" || l.Verb == "list" || l.Verb == "watch" {
			t.Errorf("the audit log has a read: %+v", l)
		}
	}
}

// identityDeviceLogin: pia (no User object; group auditors) logs in with `rakhsh login --oidc`
// the way a person would: the CLI prints the issuer's verification URL and a code, the person
// (the test issuer's Approve) enters it and logs in there, and the CLI, polling the issuer,
// gets her ID token and keeps it in a context.
func identityDeviceLogin(t *testing.T, issuer *oidctest.Issuer, server, ca, issuerCA string) {
	t.Helper()
	env := []string{"RAKHSH_CONFIG=" + filepath.Join(t.TempDir(), "config.yaml"), "RAKHSH_SERVER=", "RAKHSH_TOKEN=", "RAKHSH_TOKEN_FILE="}
	cmd := exec.Command(rakhshBin(t), "login", "--server", server, "--ca-file", ca, "--oidc", "--oidc-ca-file", issuerCA)
	cmd.Env = append(os.Environ(), env...)
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill() }()
	prompt := regexp.MustCompile(`open (https://\S+) in a browser and enter the code (\S+)`)
	sc := bufio.NewScanner(stderr)
	var code string
	var said []string
	for code == "" && sc.Scan() {
		said = append(said, sc.Text())
		if m := prompt.FindStringSubmatch(sc.Text()); m != nil {
			if !strings.HasPrefix(m[1], issuer.URL) {
				t.Errorf("the verification URL %s is not the issuer's", m[1])
			}
			code = m[2]
		}
	}
	if code == "" {
		t.Fatalf("rakhsh login --oidc printed no code: %q", said)
	}
	copied := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, stderr); close(copied) }()
	time.Sleep(1500 * time.Millisecond) // the CLI polls and is told to wait meanwhile
	if err := issuer.Approve(code, map[string]any{"preferred_username": "pia", "groups": []string{"auditors"}}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { <-copied; done <- cmd.Wait() }() // the pipe is read to its end before Wait
	select {
	case err := <-done:
		if err != nil || !strings.Contains(stdout.String(), "logged in as pia") {
			t.Fatalf("rakhsh login --oidc: %v, stdout %q", err, stdout.String())
		}
	case <-time.After(time.Minute):
		t.Fatalf("rakhsh login --oidc did not end a minute after the login was approved; stdout %q", stdout.String())
	}
	if r := runCLIWith(t, nil, env, "", "whoami"); r.Code != 0 || !strings.Contains(r.Stdout, "pia") || !strings.Contains(r.Stdout, "p1=Viewer") {
		t.Errorf("pia's whoami after the device login: code %d, stdout %q, stderr %q", r.Code, r.Stdout, r.Stderr)
	}
}
