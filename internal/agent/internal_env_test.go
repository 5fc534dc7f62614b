package agent

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/apiserver"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/store/bolt"
)

// internalEnv is an API server on a bolt store and an agent that is not running: tests call
// its reconcile steps themselves.
type internalEnv struct {
	t   *testing.T
	ctx context.Context
	c   *client.Client
	a   *Agent
}

func newInternalEnv(t *testing.T) *internalEnv {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := bolt.Open(filepath.Join(dir, "rakhsh.db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	api := apiserver.New(apiserver.Config{Store: st, Log: log, DataDir: dir, NodeName: "node1"})
	t.Cleanup(api.Shutdown)
	if err := api.EnsureProject(ctx, apiserver.DefaultProject); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(dir, "rakhsh.sock"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: api.LocalHandler()}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	c, err := client.New(client.Config{Server: "unix://" + filepath.Join(dir, "rakhsh.sock")})
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(Config{Client: c, NodeName: "node1", DataDir: dir, Log: log, Accelerator: "tcg"})
	if err != nil {
		t.Fatal(err)
	}
	a.runCtx = ctx
	a.queue = runtime.NewQueue("agent", log)
	return &internalEnv{t: t, ctx: ctx, c: c, a: a}
}

// withQEMU readies the agent to start QEMU as Run does (host facts, users, accelerator).
func (e *internalEnv) withQEMU() {
	e.t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		e.t.Skip("qemu-system-x86_64 missing: apt-get install qemu-system-x86")
	}
	e.a.facts = probeHost(e.ctx, e.a.cfg.QEMUBinary)
	if e.a.facts.qemuErr != nil {
		e.t.Fatalf("QEMU is not usable: %v", e.a.facts.qemuErr)
	}
	if err := e.a.resolveUsers(e.ctx); err != nil {
		e.t.Fatal(err)
	}
	e.a.chooseAccelerator(e.ctx)
}

// createVM creates a VM bound to node1 with the given status patch applied.
func (e *internalEnv) createVM(name string, mod func(*v1alpha1.VirtualMachine), status string) *v1alpha1.VirtualMachine {
	e.t.Helper()
	vm := &v1alpha1.VirtualMachine{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachine"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: v1alpha1.VirtualMachineSpec{RunPolicy: v1alpha1.RunPolicyManual, CPU: v1alpha1.VirtualMachineCPU{Cores: 1},
			Memory: v1alpha1.VirtualMachineMemory{Size: "128Mi"}}}
	if mod != nil {
		mod(vm)
	}
	if err := e.c.Create(e.ctx, "virtualmachines", "default", vm, vm); err != nil {
		e.t.Fatal(err)
	}
	if err := e.c.PatchStatus(e.ctx, "virtualmachines", "default", name, []byte(status), nil); err != nil {
		e.t.Fatal(err)
	}
	return e.getVM(name)
}

func (e *internalEnv) getVM(name string) *v1alpha1.VirtualMachine {
	e.t.Helper()
	vm := &v1alpha1.VirtualMachine{}
	if err := e.c.Get(e.ctx, "virtualmachines", "default", name, vm); err != nil {
		e.t.Fatal(err)
	}
	return vm
}
