package agent_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/agent"
	"github.com/rakhsh/rakhsh/internal/apiserver"
	"github.com/rakhsh/rakhsh/internal/controller/scheduler"
	"github.com/rakhsh/rakhsh/internal/controller/vm"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/storage"
	"github.com/rakhsh/rakhsh/internal/store/bolt"
	"github.com/rakhsh/rakhsh/internal/testutil"
)

// env is an in-process control plane (API server on a unix socket over a bolt store) with
// the scheduler, the VM controller and one node agent, all on one data dir.
type env struct {
	t       *testing.T
	dir     string
	c       *client.Client
	log     *slog.Logger
	node    string
	agentMu sync.Mutex
	agentCa context.CancelFunc
	agentDn chan struct{}
}

func guestImage(t *testing.T) string {
	t.Helper()
	p := os.Getenv("RAKHSH_GUEST_DIR")
	if p == "" {
		wd, _ := os.Getwd()
		p = filepath.Join(wd, "..", "..", "test", "guest", "out")
	}
	img := filepath.Join(p, "guest.qcow2")
	if _, err := os.Stat(img); err != nil {
		skipOrFail(t, "test guest missing (%v): build it with test/guest/build.sh %s", err, p)
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		skipOrFail(t, "qemu-system-x86_64 missing: apt-get install qemu-system-x86")
	}
	return img
}

type testWriter struct {
	t  *testing.T
	mu sync.Mutex
	on bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.on {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func newEnv(t *testing.T) *env { return newEnvOpts(t, true, 1) }

// newEnvOpts starts the control plane with the given number of schedulers and, optionally,
// the node agent.
func newEnvOpts(t *testing.T, withAgent bool, schedulers int) *env {
	t.Helper()
	dir, err := os.MkdirTemp("", "rk")
	if err != nil {
		t.Fatal(err)
	}
	tw := &testWriter{t: t, on: true}
	log := slog.New(slog.NewTextHandler(tw, &slog.HandlerOptions{Level: slog.LevelInfo}))
	e := &env{t: t, dir: dir, log: log, node: "node1"}
	ctx, cancel := context.WithCancel(context.Background())
	st, err := bolt.Open(filepath.Join(dir, "rakhsh.db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	api := apiserver.New(apiserver.Config{Store: st, Log: log, DataDir: dir, NodeName: e.node})
	if err := api.EnsureProject(ctx, apiserver.DefaultProject); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "rakhsh.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: api.LocalHandler()}
	go func() { _ = srv.Serve(l) }()
	e.c, err = client.New(client.Config{Server: "unix://" + sock})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range schedulers {
		sch, err := scheduler.New(scheduler.Config{Deps: runtime.Deps{Client: e.c, Log: log}})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); _ = sch.Run(ctx) }()
	}
	ctl, err := vm.New(vm.Config{Deps: runtime.Deps{Client: e.c, Log: log}})
	if err != nil {
		t.Fatal(err)
	}
	wg.Add(1)
	go func() { defer wg.Done(); _ = ctl.Run(ctx) }()
	if withAgent {
		e.startAgent()
	}
	t.Cleanup(func() {
		e.stopAgent()
		cancel()
		wg.Wait()
		api.Shutdown()
		_ = srv.Close()
		st.Close()
		killAll(t, dir)
		tw.mu.Lock()
		tw.on = false
		tw.mu.Unlock()
		if !t.Failed() {
			os.RemoveAll(dir)
		} else {
			t.Logf("data dir kept: %s", dir)
		}
	})
	return e
}

func (e *env) startAgent() {
	e.agentMu.Lock()
	defer e.agentMu.Unlock()
	a, err := agent.New(agent.Config{Client: e.c, NodeName: e.node, DataDir: e.dir, Log: e.log,
		HeartbeatInterval: time.Second, GCInterval: time.Second})
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(ctx) }()
	e.agentCa, e.agentDn = cancel, done
}

// stopAgent ends the agent as a crash would look to QEMU: nothing is stopped.
func (e *env) stopAgent() {
	e.agentMu.Lock()
	defer e.agentMu.Unlock()
	if e.agentCa == nil {
		return
	}
	e.agentCa()
	<-e.agentDn
	e.agentCa = nil
}

// killAll kills, by pid, every QEMU still running from a run dir of dir.
func killAll(t *testing.T, dir string) {
	for _, pid := range testutil.QEMUPIDs(dir) {
		t.Logf("killing left-over QEMU %d", pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

func (e *env) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	e.t.Cleanup(cancel)
	return ctx
}

// readyDisk creates a VirtualDisk and makes it Ready with a copy of the guest image, as
// the disk controller would.
func (e *env) readyDisk(name, image string) *v1alpha1.VirtualDisk {
	e.t.Helper()
	d := &v1alpha1.VirtualDisk{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualDisk"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: name, Namespace: "default"},
		Spec:       v1alpha1.VirtualDiskSpec{PersistentVolumeClaim: v1alpha1.VirtualDiskPersistentVolumeClaim{Size: "1Gi"}}}
	var out v1alpha1.VirtualDisk
	if err := e.c.Create(e.ctx(), "virtualdisks", "default", d, &out); err != nil {
		e.t.Fatal(err)
	}
	path := storage.DiskPath(e.dir, storage.DefaultPool, out.UID)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		e.t.Fatal(err)
	}
	if image != "" {
		testutil.CopyFile(e.t, image, path, 0o666)
	}
	body, _ := json.Marshal(map[string]any{"status": map[string]any{"phase": "Ready", "capacity": "1Gi", "format": "qcow2"}})
	if err := e.c.PatchStatus(e.ctx(), "virtualdisks", "default", name, body, nil); err != nil {
		e.t.Fatal(err)
	}
	return &out
}

// runGuest makes the guest image img the disk root of VM vm1 (AlwaysOnUnlessStoppedManually)
// and returns the VM once it runs.
func (e *env) runGuest(img string) *v1alpha1.VirtualMachine {
	e.t.Helper()
	e.readyDisk("root", img)
	e.createVM("vm1", v1alpha1.RunPolicyAlwaysOnUnlessStoppedManually, "root")
	return e.waitVM("vm1", 30*time.Second, "Running", phaseIs(v1alpha1.VMPhaseRunning))
}

func (e *env) createVM(name string, policy v1alpha1.RunPolicy, disks ...string) *v1alpha1.VirtualMachine {
	e.t.Helper()
	return e.createVMWith(name, policy, nil, disks...)
}

func (e *env) createVMWith(name string, policy v1alpha1.RunPolicy, mod func(*v1alpha1.VirtualMachine), disks ...string) *v1alpha1.VirtualMachine {
	e.t.Helper()
	grace := int64(30)
	v := &v1alpha1.VirtualMachine{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachine"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: v1alpha1.VirtualMachineSpec{RunPolicy: policy, CPU: v1alpha1.VirtualMachineCPU{Cores: 1},
			Memory: v1alpha1.VirtualMachineMemory{Size: "256Mi"}, TerminationGracePeriodSeconds: &grace}}
	for _, d := range disks {
		v.Spec.BlockDeviceRefs = append(v.Spec.BlockDeviceRefs, v1alpha1.BlockDeviceSpecRef{Kind: v1alpha1.BlockDeviceKindVirtualDisk, Name: d})
	}
	if mod != nil {
		mod(v)
	}
	var out v1alpha1.VirtualMachine
	if err := e.c.Create(e.ctx(), "virtualmachines", "default", v, &out); err != nil {
		e.t.Fatal(err)
	}
	return &out
}

func (e *env) getVM(name string) *v1alpha1.VirtualMachine {
	var v v1alpha1.VirtualMachine
	if err := e.c.Get(e.ctx(), "virtualmachines", "default", name, &v); err != nil {
		if client.IsNotFound(err) {
			return nil
		}
		e.t.Fatal(err)
	}
	return &v
}

// waitVM polls until cond holds for the VM (nil when it is gone).
func (e *env) waitVM(name string, timeout time.Duration, what string, cond func(v *v1alpha1.VirtualMachine) bool) *v1alpha1.VirtualMachine {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	var v *v1alpha1.VirtualMachine
	for time.Now().Before(deadline) {
		v = e.getVM(name)
		if cond(v) {
			return v
		}
		time.Sleep(100 * time.Millisecond)
	}
	b, _ := json.MarshalIndent(v, "", "  ")
	e.t.Fatalf("VM %s: timed out after %s waiting for %s; last seen:\n%s", name, timeout, what, b)
	return nil
}

func phaseIs(p v1alpha1.VirtualMachinePhase) func(v *v1alpha1.VirtualMachine) bool {
	return func(v *v1alpha1.VirtualMachine) bool { return v != nil && v.Status.Phase == p }
}

func (e *env) serialLog(uid string) string {
	var out []byte
	for _, n := range []string{"serial.log.1", "serial.log"} {
		b, _ := os.ReadFile(filepath.Join(storage.VMRunDir(e.dir, uid), n))
		out = append(out, b...)
	}
	return string(out)
}

// waitSerial waits until marker appears at least n times in the VM's serial log.
func (e *env) waitSerial(uid, marker string, n int, timeout time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if strings.Count(e.serialLog(uid), marker) >= n {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	e.t.Fatalf("serial log of %s: %q did not appear %d times in %s; log:\n%s", uid, marker, n, timeout, e.serialLog(uid))
}

func (e *env) op(vmName string, typ v1alpha1.VMOPType, force bool) string {
	e.t.Helper()
	op := &v1alpha1.VirtualMachineOperation{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachineOperation"},
		ObjectMeta: v1alpha1.ObjectMeta{GenerateName: vmName + "-" + strings.ToLower(string(typ)) + "-", Namespace: "default"},
		Spec:       v1alpha1.VirtualMachineOperationSpec{Type: typ, VirtualMachineName: vmName}}
	if force {
		op.Spec.Force = &force
	}
	var out v1alpha1.VirtualMachineOperation
	if err := e.c.Create(e.ctx(), "virtualmachineoperations", "default", op, &out); err != nil {
		e.t.Fatal(err)
	}
	return out.Name
}

func (e *env) waitOp(name string, phase v1alpha1.VMOPPhase, timeout time.Duration) *v1alpha1.VirtualMachineOperation {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	var op v1alpha1.VirtualMachineOperation
	for time.Now().Before(deadline) {
		if err := e.c.Get(e.ctx(), "virtualmachineoperations", "default", name, &op); err != nil {
			e.t.Fatal(err)
		}
		if op.Status.Phase == phase {
			return &op
		}
		if op.Status.Phase == v1alpha1.VMOPPhaseFailed || op.Status.Phase == v1alpha1.VMOPPhaseSuperseded || op.Status.Phase == v1alpha1.VMOPPhaseCompleted {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	b, _ := json.MarshalIndent(op, "", "  ")
	e.t.Fatalf("operation %s: wanted phase %s; last seen:\n%s", name, phase, b)
	return nil
}

// typeOnConsole writes a line to the guest's serial console through the agent's console
// socket.
func (e *env) typeOnConsole(uid, line string) {
	e.t.Helper()
	c, err := net.Dial("unix", filepath.Join(storage.VMRunDir(e.dir, uid), "console.sock"))
	if err != nil {
		e.t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(line + "\n")); err != nil {
		e.t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
}

func isGone(err error) bool { return errors.Is(err, os.ErrNotExist) }

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// skipOrFail skips a test whose tool or file is missing, except in CI (CI set), where
// everything is installed and a missing piece is a failure.
func skipOrFail(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}
