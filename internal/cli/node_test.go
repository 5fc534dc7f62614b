package cli

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/apiserver"
	"github.com/rakhsh/rakhsh/internal/testutil/apiservertest"
)

// apiServerSocket runs a real API server (bolt store) on a unix socket and returns its
// address and an admin client.
func apiServerSocket(t *testing.T) (string, *client.Client) {
	t.Helper()
	l := apiservertest.Start(t, "rk-cli")
	if err := l.Server.EnsureProject(context.Background(), apiserver.DefaultProject); err != nil {
		t.Fatal(err)
	}
	return "unix://" + l.Sock, l.Client
}

// apiEnv is a real API server (apiServerSocket) with its client and the context of a test.
type apiEnv struct {
	t      *testing.T
	ctx    context.Context
	server string
	c      *client.Client
}

// newAPIEnv starts an API server that has the given nodes; the test's context ends after
// timeout.
func newAPIEnv(t *testing.T, timeout time.Duration, nodes ...string) *apiEnv {
	server, c := apiServerSocket(t)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	e := &apiEnv{t: t, ctx: ctx, server: server, c: c}
	e.createNodes(nodes...)
	return e
}

// createNodes makes Nodes of the given names.
func (e *apiEnv) createNodes(names ...string) {
	e.t.Helper()
	for _, n := range names {
		e.must(e.c.Create(e.ctx, "nodes", "", &v1alpha1.Node{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "Node"}, ObjectMeta: v1alpha1.ObjectMeta{Name: n}}, nil))
	}
}

func (e *apiEnv) must(err error) {
	e.t.Helper()
	if err != nil {
		e.t.Fatal(err)
	}
}

// run runs the CLI against the server.
func (e *apiEnv) run(args ...string) (string, string, int) {
	return runCLI(e.t, e.ctx, e.server, "", args...)
}

// patchStatus sets the status of an object of the default project (a JSON status object).
func (e *apiEnv) patchStatus(resource, name, status string) {
	e.t.Helper()
	e.must(e.c.PatchStatus(e.ctx, resource, "default", name, []byte(`{"status":`+status+`}`), nil))
}

// TestNodeCommands drives `rakhsh node` against a real API server: join tokens, list,
// describe, cordon, uncordon and remove (refused while a VM is bound, unless --force).
func TestNodeCommands(t *testing.T) {
	e := newAPIEnv(t, 30*time.Second)
	ctx, c, run := e.ctx, e.c, e.run

	out, errOut, code := run("node", "token", "create", "--ttl", "30m", "--uses", "2", "--description", "rack a")
	if code != 0 || !strings.HasPrefix(out, "rakhsh-join.") || !strings.Contains(errOut, "for 2 join(s)") {
		t.Fatalf("token create: %d %q %q", code, out, errOut)
	}
	id := strings.Split(strings.TrimSpace(out), ".")[1]
	out, _, code = run("node", "token", "list")
	if code != 0 || !strings.Contains(out, id) || !strings.Contains(out, "rack a") || strings.Contains(out, "rakhsh-join.") {
		t.Fatalf("token list: %d %q", code, out)
	}
	if _, errOut, code := run("node", "token", "create", "--ttl", "0s"); code == 0 || !strings.Contains(errOut, "--ttl") {
		t.Fatalf("token create --ttl 0s: %d %q", code, errOut)
	}
	if out, _, code := run("node", "token", "delete", id); code != 0 || !strings.Contains(out, "deleted") {
		t.Fatalf("token delete: %d %q", code, out)
	}
	if _, errOut, code := run("node", "token", "delete", id); code == 0 || !strings.Contains(errOut, "not found") {
		t.Fatalf("token delete twice: %d %q", code, errOut)
	}

	e.createNodes("h1", "h2")
	out, _, code = run("node", "list")
	if code != 0 || !strings.Contains(out, "h1") || !strings.Contains(out, "h2") {
		t.Fatalf("node list: %d %q", code, out)
	}
	out, _, code = run("node", "list", "-l", "kubernetes.io/hostname=h2", "-o", "name")
	if code != 0 || strings.Contains(out, "h1") || !strings.Contains(out, "h2") {
		t.Fatalf("node list -l hostname=h2: %d %q", code, out)
	}
	if out, _, code := run("node", "cordon", "h1"); code != 0 || !strings.Contains(out, "node/h1 cordoned") {
		t.Fatalf("cordon: %d %q", code, out)
	}
	var n v1alpha1.Node
	if err := c.Get(ctx, "nodes", "", "h1", &n); err != nil || !n.Spec.Unschedulable {
		t.Fatalf("h1 after cordon: %+v %v", n.Spec, err)
	}
	out, _, code = run("node", "describe", "h1")
	if code != 0 || !strings.Contains(out, "h1") || !strings.Contains(strings.ToLower(out), "unschedulable") {
		t.Fatalf("describe: %d %q", code, out)
	}
	if out, _, code := run("node", "uncordon", "h1"); code != 0 || !strings.Contains(out, "uncordoned") {
		t.Fatalf("uncordon: %d %q", code, out)
	}
	n = v1alpha1.Node{}
	if err := c.Get(ctx, "nodes", "", "h1", &n); err != nil || n.Spec.Unschedulable {
		t.Fatalf("h1 after uncordon: %+v %v", n.Spec, err)
	}
	if _, errOut, code := run("node", "cordon", "nope"); code == 0 || !strings.Contains(errOut, "not found") {
		t.Fatalf("cordon of a missing node: %d %q", code, errOut)
	}

	if err := c.Create(ctx, "virtualmachines", "default", map[string]any{"kind": "VirtualMachine", "metadata": map[string]any{"name": "vm1"},
		"spec": map[string]any{"runPolicy": "AlwaysOff", "cpu": map[string]any{"cores": 1}, "memory": map[string]any{"size": "128Mi"}}}, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Bind(ctx, "default", "vm1", &v1alpha1.VirtualMachineBinding{NodeName: "h1"}, nil); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := run("node", "remove", "h1"); code == 0 || !strings.Contains(errOut, "default/vm1") || !strings.Contains(errOut, "--force") {
		t.Fatalf("remove of a node with a VM: %d %q", code, errOut)
	}
	if out, _, code := run("node", "remove", "h2"); code != 0 || !strings.Contains(out, "credential is revoked") {
		t.Fatalf("remove h2: %d %q", code, out)
	}
	if out, _, code := run("node", "remove", "--force", "h1"); code != 0 || !strings.Contains(out, "node/h1 removed") {
		t.Fatalf("remove --force h1: %d %q", code, out)
	}
	if err := c.Get(ctx, "nodes", "", "h1", nil); !client.IsNotFound(err) {
		t.Fatalf("h1 after remove: %v", err)
	}
}
