package e2e

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/store"
	"github.com/rakhsh/rakhsh/internal/store/etcd"
	"github.com/rakhsh/rakhsh/internal/store/etcd/etcdtest"
)

const etcdTLSObjects = `apiVersion: virtualization.rakhsh.io/v1alpha1
kind: Project
metadata:
  name: tls-research
spec:
  description: kept in etcd over TLS
---
apiVersion: virtualization.rakhsh.io/v1alpha1
kind: VirtualMachineClass
metadata:
  name: tls-small
spec:
  cpu:
    type: Model
    model: Nehalem
  sizingPolicies:
    - cores: {min: 1, max: 4}
      memory: {min: 512Mi, max: 8Gi}
      coreFractions: [10, 20, 50, 100]
`

// etcdTLSFlags are the serve flags for a StartTLS etcd.
func etcdTLSFlags(e *etcdtest.Server, ca, cert, key string) []string {
	args := []string{"--store", "etcd+https://" + e.Addr}
	if ca != "" {
		args = append(args, "--etcd-ca", ca)
	}
	if cert != "" {
		args = append(args, "--etcd-cert", cert, "--etcd-key", key)
	}
	return args
}

// TestEtcdTLS runs `rakhsh serve --store etcd+https://...` against a real etcd that serves
// clients only over TLS and requires a client certificate: objects applied through serve are
// in etcd (under /rakhsh, read back over TLS directly), not in a bolt file, and are there
// after a restart.
func TestEtcdTLS(t *testing.T) {
	e := etcdtest.StartTLS(t)
	s := StartServe(t, etcdTLSFlags(e, e.Certs.CA, e.Certs.ClientCert, e.Certs.ClientKey)...)
	out := s.MustCLI(etcdTLSObjects, "apply", "-f", "-")
	if strings.Count(out, " created") != 2 {
		t.Fatalf("apply over etcd+https:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(s.DataDir, "rakhsh.db")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("serve with an etcd store made a bolt file (stat: %v)", err)
	}

	ctx := ctxT(t)
	raw, err := etcd.New(ctx, etcd.Config{Endpoints: e.Endpoints, TLS: e.TLS, Prefix: "/rakhsh"})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	res, err := raw.List(ctx, "", store.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, kv := range res.KVs {
		keys = append(keys, kv.Key)
	}
	all := strings.Join(keys, "\n")
	for _, name := range []string{"tls-research", "tls-small"} {
		if !strings.Contains(all, name) {
			t.Errorf("no etcd key under /rakhsh names %s; keys:\n%s", name, all)
		}
	}

	s.Stop()
	s.Start()
	var p v1alpha1.Project
	if err := s.Client().Get(ctx, "projects", "", "tls-research", &p); err != nil {
		t.Fatalf("project after restart on etcd over TLS: %v", err)
	}
	if p.Spec.Description != "kept in etcd over TLS" {
		t.Errorf("project after restart: description %q", p.Spec.Description)
	}
	var c v1alpha1.VirtualMachineClass
	if err := s.Client().Get(ctx, "virtualmachineclasses", "", "tls-small", &c); err != nil {
		t.Fatalf("class after restart on etcd over TLS: %v", err)
	}
	if len(c.Spec.SizingPolicies) != 1 {
		t.Errorf("class after restart: %+v", c.Spec)
	}
}

// serveMustFail runs `rakhsh serve` expecting it to exit non-zero soon, and returns its output.
func serveMustFail(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	full := append([]string{"serve", "--data-dir", t.TempDir(), "--vm-networking", "user"}, args...)
	t0 := time.Now()
	out, err := exec.CommandContext(ctx, rakhshBin(t), full...).CombinedOutput()
	d := time.Since(t0)
	t.Logf("rakhsh %s\n-> %v after %v:\n%s", strings.Join(full, " "), err, d.Round(time.Millisecond), out)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 {
		t.Fatalf("serve did not fail: %v", err)
	}
	if ctx.Err() != nil {
		t.Fatalf("serve was still running after 30s")
	}
	// etcd's dial timeout is 5s; a refused or unverifiable TLS handshake is reported at
	// once, so start-up ends well before it (with slack for a loaded machine).
	if d > 10*time.Second {
		t.Errorf("serve took %v to fail", d)
	}
	return string(out)
}

func wantAll(t *testing.T, out string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("serve's error does not say %q", w)
		}
	}
}

// TestEtcdTLSRefused shows what an operator sees when serve cannot use the etcd store: the
// process exits non-zero, soon, naming the endpoint and the reason.
func TestEtcdTLSRefused(t *testing.T) {
	e := etcdtest.StartTLS(t)
	other, err := etcdtest.GenerateCerts(filepath.Join(t.TempDir(), "other"))
	if err != nil {
		t.Fatal(err)
	}
	endpoint := "https://" + e.Addr
	t.Run("no client certificate", func(t *testing.T) {
		out := serveMustFail(t, etcdTLSFlags(e, e.Certs.CA, "", "")...)
		wantAll(t, out, endpoint, "etcd refused the TLS handshake", "requires a client certificate and none is configured")
	})
	t.Run("client certificate of another CA", func(t *testing.T) {
		out := serveMustFail(t, etcdTLSFlags(e, e.Certs.CA, other.ClientCert, other.ClientKey)...)
		wantAll(t, out, endpoint, "etcd refused the TLS handshake", "did not accept the client certificate")
	})
	t.Run("wrong CA", func(t *testing.T) {
		out := serveMustFail(t, etcdTLSFlags(e, other.CA, e.Certs.ClientCert, e.Certs.ClientKey)...)
		wantAll(t, out, endpoint, "server certificate did not verify", "certificate signed by unknown authority")
	})
	t.Run("plain http off loopback", func(t *testing.T) {
		// Refused before any connection: 192.0.2.1 (TEST-NET-1) is never dialled.
		out := serveMustFail(t, "--store", "etcd://192.0.2.1:2379")
		wantAll(t, out, "192.0.2.1:2379", "plain http", "--insecure-etcd")
	})
	// The same etcd and files with the right pairing work, so the failures above are the
	// flags' fault, not the server's.
	s := StartServe(t, etcdTLSFlags(e, e.Certs.CA, e.Certs.ClientCert, e.Certs.ClientKey)...)
	s.MustCLI("", "get", "projects")
}
