package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/qemu/qmp"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// fakeMonitor is a QMP connection to a QEMU that is not there: query-status answers with
// status (or statusErr), and every command is recorded by its QMP name.
type fakeMonitor struct {
	mu        sync.Mutex
	status    string
	statusErr error
	calls     []string
	done      chan struct{}
}

func newFakeMonitor(status string) *fakeMonitor {
	return &fakeMonitor{status: status, done: make(chan struct{})}
}

func (f *fakeMonitor) call(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, name)
}

func (f *fakeMonitor) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *fakeMonitor) QueryStatus(context.Context) (qmp.StatusInfo, error) {
	f.call("query-status")
	f.mu.Lock()
	defer f.mu.Unlock()
	return qmp.StatusInfo{Status: f.status, Running: f.status == qmp.StatusRunning}, f.statusErr
}

func (f *fakeMonitor) Cont(context.Context) error { return f.setStatus("cont", qmp.StatusRunning) }
func (f *fakeMonitor) Stop(context.Context) error { return f.setStatus("stop", qmp.StatusPaused) }

// setStatus records the command call that puts the VM in status.
func (f *fakeMonitor) setStatus(call, status string) error {
	f.call(call)
	f.mu.Lock()
	f.status = status
	f.mu.Unlock()
	return nil
}

func (f *fakeMonitor) SystemPowerdown(context.Context) error { f.call("system_powerdown"); return nil }
func (f *fakeMonitor) SystemReset(context.Context) error     { f.call("system_reset"); return nil }
func (f *fakeMonitor) Quit(context.Context) error            { f.call("quit"); return nil }
func (f *fakeMonitor) Subscribe(int) (<-chan qmp.Event, func()) {
	ch := make(chan qmp.Event)
	return ch, func() {}
}
func (f *fakeMonitor) Done() <-chan struct{} { return f.done }
func (f *fakeMonitor) Close() error          { return nil }

// TestReconcileWithFakeMonitor runs the reconcile of a VM whose QEMU runs (as far as the
// agent can tell: its instance has a QMP connection, the fake) and checks the QMP commands
// sent, what is requeued, and what is recorded.
func TestReconcileWithFakeMonitor(t *testing.T) {
	e := newInternalEnv(t)
	grace := int64(30)
	cases := []struct {
		name      string
		qemu      string // QEMU's run state
		statusErr error
		status    string // the VM's status
		deleting  bool
		want      []string
		requeue   time.Duration
		wantErr   bool
		exit      string // the reason in exit.json, "" for none
		phase     v1alpha1.VirtualMachinePhase
	}{
		{name: "resume an unfinished start", qemu: qmp.StatusPrelaunch, status: `"phase":"Starting","powerRequest":{"state":"Running"}`,
			want: []string{"query-status", "cont"}, phase: v1alpha1.VMPhaseRunning},
		{name: "pause", qemu: qmp.StatusRunning, status: `"phase":"Running","powerRequest":{"state":"Paused"}`,
			want: []string{"query-status", "stop"}, phase: v1alpha1.VMPhasePause},
		{name: "runs as asked", qemu: qmp.StatusRunning, status: `"phase":"Running","powerRequest":{"state":"Running"}`,
			want: []string{"query-status"}, phase: v1alpha1.VMPhaseRunning},
		{name: "graceful stop presses the power button", qemu: qmp.StatusRunning, status: `"phase":"Running","powerRequest":{"state":"Stopped"}`,
			want: []string{"query-status", "query-status", "system_powerdown"}, requeue: 30 * time.Second, phase: v1alpha1.VMPhaseStopping},
		{name: "forced stop quits", qemu: qmp.StatusRunning, status: `"phase":"Running","powerRequest":{"state":"Stopped","force":true}`,
			want: []string{"query-status", "quit"}, requeue: 250 * time.Millisecond, exit: v1alpha1.ExitStopped, phase: v1alpha1.VMPhaseRunning},
		{name: "guest powered off", qemu: qmp.StatusShutdown, status: `"phase":"Running","powerRequest":{"state":"Running"}`,
			want: []string{"query-status", "quit"}, requeue: 250 * time.Millisecond, exit: v1alpha1.ExitGuestShutdown, phase: v1alpha1.VMPhaseRunning},
		{name: "guest panicked", qemu: qmp.StatusGuestPanicked, status: `"phase":"Running","powerRequest":{"state":"Running"}`,
			want: []string{"query-status", "quit"}, requeue: 250 * time.Millisecond, exit: v1alpha1.ExitCrashed, phase: v1alpha1.VMPhaseRunning},
		{name: "forced restart resets", qemu: qmp.StatusRunning, status: `"phase":"Running","powerRequest":{"state":"Running","force":true,"restartID":"r1"}`,
			want: []string{"query-status", "system_reset"}, requeue: 10 * time.Millisecond, phase: v1alpha1.VMPhaseRunning},
		{name: "graceful restart presses the power button", qemu: qmp.StatusRunning, status: `"phase":"Running","powerRequest":{"state":"Running","restartID":"r1"}`,
			want: []string{"query-status", "query-status", "system_powerdown"}, requeue: 30 * time.Second, phase: v1alpha1.VMPhaseStopping},
		{name: "deletion terminates gracefully without asking the run state first", qemu: qmp.StatusRunning, deleting: true,
			status: `"phase":"Running","powerRequest":{"state":"Running"}`, want: []string{"query-status", "system_powerdown"}, requeue: 30 * time.Second},
		{name: "broken connection is looked at again", qemu: qmp.StatusRunning, statusErr: fmt.Errorf("read: %w", qmp.ErrDisconnected),
			status: `"phase":"Running","powerRequest":{"state":"Running"}`, want: []string{"query-status"}, requeue: 250 * time.Millisecond, phase: v1alpha1.VMPhaseRunning},
		{name: "failed query-status is an error", qemu: qmp.StatusRunning, statusErr: errors.New("boom"),
			status: `"phase":"Running","powerRequest":{"state":"Running"}`, want: []string{"query-status"}, wantErr: true, phase: v1alpha1.VMPhaseRunning},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			name := fmt.Sprintf("fake%d", i)
			vm := e.createVM(name, func(vm *v1alpha1.VirtualMachine) {
				vm.Spec.TerminationGracePeriodSeconds = &grace
				vm.Finalizers = []string{v1alpha1.VMCleanupFinalizer}
			}, `{"status":{"nodeName":"node1",`+c.status+`}}`)
			if c.deleting {
				if err := e.c.Delete(e.ctx, "virtualmachines", "default", name); err != nil {
					t.Fatal(err)
				}
				vm = e.getVM(name)
			}
			runDir := e.a.runDir(vm.UID)
			if err := os.MkdirAll(runDir, 0o700); err != nil {
				t.Fatal(err)
			}
			mon := newFakeMonitor(c.qemu)
			mon.statusErr = c.statusErr
			// pid 0: no process, so no signal reaches anything.
			in := &instance{uid: vm.UID, key: runtime.KeyOf(vm), runDir: runDir, exited: make(chan struct{}), mon: mon}
			e.a.mu.Lock()
			e.a.insts[vm.UID] = in
			e.a.mu.Unlock()

			res, err := e.a.reconcileVM(e.ctx, vm, in)
			if (err != nil) != c.wantErr {
				t.Fatalf("reconcile: err %v, want an error: %t", err, c.wantErr)
			}
			if got := mon.Calls(); !slices.Equal(got, c.want) {
				t.Errorf("QMP commands %v, want %v", got, c.want)
			}
			if res.RequeueAfter != c.requeue {
				t.Errorf("requeued after %v, want %v", res.RequeueAfter, c.requeue)
			}
			rec := readExitRecord(runDir)
			switch {
			case c.exit == "" && rec != nil:
				t.Errorf("exit.json says %+v, want none", rec)
			case c.exit != "" && (rec == nil || rec.Reason != c.exit):
				t.Errorf("exit.json says %+v, want reason %s", rec, c.exit)
			}
			got := e.getVM(name)
			if c.deleting {
				if lastTransition(got, v1alpha1.VMPhaseTerminating).IsZero() {
					t.Errorf("a deleted VM never was Terminating (phase %s)", got.Status.Phase)
				}
			} else if got.Status.Phase != c.phase {
				t.Errorf("phase %s, want %s", got.Status.Phase, c.phase)
			}
		})
	}
}
