package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

// PID is the process id of the running `rakhsh serve`.
func (s *Serve) PID() int {
	s.t.Helper()
	if s.cmd == nil || s.cmd.Process == nil {
		s.t.Fatal("rakhsh serve is not running")
	}
	return s.cmd.Process.Pid
}

// procStatusKB reads a kB field (VmRSS, VmHWM) of /proc/PID/status.
func procStatusKB(t *testing.T, pid int, field string) int64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("/proc/%d/status %s: %q", pid, field, line)
			}
			return n
		}
	}
	t.Fatalf("/proc/%d/status has no %s", pid, field)
	return 0
}

// yamlAliasBomb is a YAML Secret of about size bytes: one anchored scalar filling most of it,
// and n keys whose value is an alias of it. Expanded, it is n times the body.
func yamlAliasBomb(size, n int) []byte {
	var b bytes.Buffer
	b.WriteString("apiVersion: virtualization.rakhsh.io/v1alpha1\nkind: Secret\nmetadata:\n  name: bomb\n  annotations:\n    a: &a ")
	b.WriteString(strings.Repeat("x", size-600-12*n))
	b.WriteString("\nstringData:\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "  k%03d: *a\n", i)
	}
	return b.Bytes()
}

// TestYAMLAliasBomb: a 2 MiB YAML body whose 120 aliases repeat a 2 MiB scalar (254 MB
// expanded) is refused with a 400 that names the aliases, and serve's memory stays small
// (it grew to 1.4 GB when the aliases were expanded). Plain YAML still works.
func TestYAMLAliasBomb(t *testing.T) {
	s := StartServe(t)
	ctx := ctxT(t)
	c := s.Client()
	pid := s.PID()
	bomb := yamlAliasBomb(2<<20, 120)
	path := client.Path("secrets", "default", "")
	for i := 0; i < 3; i++ {
		err := c.Do(ctx, "POST", path, nil, "application/yaml", bomb, nil)
		var ce *client.Error
		if !errors.As(err, &ce) || ce.Status.Code != 400 || ce.Status.Reason != v1alpha1.ReasonBadRequest ||
			!strings.Contains(ce.Status.Message, "YAML aliases are not accepted") {
			t.Fatalf("POST of the alias bomb: %v, want 400 BadRequest about YAML aliases", err)
		}
	}
	rss, hwm := procStatusKB(t, pid, "VmRSS"), procStatusKB(t, pid, "VmHWM")
	t.Logf("serve after 3 alias bombs of %d bytes: VmRSS %d MiB, VmHWM (peak) %d MiB", len(bomb), rss>>10, hwm>>10)
	if rss > 100<<10 || hwm > 100<<10 {
		t.Errorf("serve's memory after the alias bomb: VmRSS %d MiB, peak VmHWM %d MiB; want both under 100 MiB", rss>>10, hwm>>10)
	}
	// YAML without aliases is still accepted.
	ok := []byte("apiVersion: virtualization.rakhsh.io/v1alpha1\nkind: Secret\nmetadata: {name: plain}\nstringData: {a: 'x * y'}\n")
	if err := c.Do(ctx, "POST", path, nil, "application/yaml", ok, nil); err != nil {
		t.Fatalf("POST of plain YAML: %v", err)
	}
}

// TestTokenFileOverTCP: the CLI reads the admin token from --token-file or
// RAKHSH_TOKEN_FILE over TLS, and refuses to send a token to a plain http address.
func TestTokenFileOverTCP(t *testing.T) {
	addr := freeAddr(t)
	s := StartServe(t, "--listen", addr)
	tokenFile := filepath.Join(s.DataDir, "admin.token")
	ca := filepath.Join(s.DataDir, "ca.crt") // the self-signed CA; tls.crt is the 90-day serving certificate
	r := runCLI(t, "https://"+addr, "", "", "get", "proj", "--ca-file", ca, "--token-file", tokenFile)
	if r.Code != 0 || !strings.Contains(r.Stdout, "default") {
		t.Fatalf("CLI with --token-file: code %d, stdout %q, stderr %q", r.Code, r.Stdout, r.Stderr)
	}
	cmd := exec.Command(rakhshBin(t), "get", "proj", "--ca-file", ca)
	cmd.Env = append(os.Environ(), "RAKHSH_SERVER=https://"+addr, "RAKHSH_TOKEN=", "RAKHSH_TOKEN_FILE="+tokenFile)
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "default") {
		t.Fatalf("CLI with RAKHSH_TOKEN_FILE: %v\n%s", err, out)
	}
	r = runCLI(t, "http://"+addr, "", "", "get", "proj", "--token-file", tokenFile)
	if r.Code == 0 || !strings.Contains(r.Stderr, "refusing to send the bearer token over plain http") {
		t.Fatalf("CLI with a token to http://: code %d, stderr %q", r.Code, r.Stderr)
	}
}
