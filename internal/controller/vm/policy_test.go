package vm

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func testPolicy(now time.Time) policy {
	n := 0
	return policy{now: now, baseBackoff: time.Second, maxBackoff: 5 * time.Minute,
		newID: func() string { n++; return fmt.Sprintf("new%d", n) }}
}

func tm(t time.Time) *v1alpha1.Time { x := v1alpha1.NewTime(t); return &x }

func newVM(rp v1alpha1.RunPolicy) *v1alpha1.VirtualMachine {
	return &v1alpha1.VirtualMachine{ObjectMeta: v1alpha1.ObjectMeta{Name: "vm", Namespace: "p", UID: "u"},
		Spec: v1alpha1.VirtualMachineSpec{RunPolicy: rp}}
}

// exited is a VM whose QEMU ended for reason while the power request said run.
func exited(rp v1alpha1.RunPolicy, reason string, count int, at time.Time) *v1alpha1.VirtualMachine {
	vm := newVM(rp)
	vm.Status.PowerRequest = &v1alpha1.VMPowerRequest{State: v1alpha1.PowerStateRunning, RestartID: "r1"}
	vm.Status.ObservedRestartID = "r1"
	vm.Status.Phase = v1alpha1.VMPhaseStopped
	vm.Status.NodeName = "n1"
	vm.Status.LastExit = &v1alpha1.VMExit{Reason: reason, Time: tm(at), Count: count}
	return vm
}

func TestInitialPowerRequest(t *testing.T) {
	for rp, want := range map[v1alpha1.RunPolicy]string{
		"": v1alpha1.PowerStateRunning, v1alpha1.RunPolicyAlwaysOn: v1alpha1.PowerStateRunning,
		v1alpha1.RunPolicyAlwaysOnUnlessStoppedManually: v1alpha1.PowerStateRunning,
		v1alpha1.RunPolicyAlwaysOff:                     v1alpha1.PowerStateStopped, v1alpha1.RunPolicyManual: v1alpha1.PowerStateStopped,
	} {
		d := testPolicy(t0).decide(newVM(rp), nil)
		if d.power.State != want {
			t.Errorf("%q: initial state %s, want %s", rp, d.power.State, want)
		}
	}
}

// TestExitPolicy is the runPolicy × exit reason table.
func TestExitPolicy(t *testing.T) {
	const restart, stay, wait = "restart", "stay stopped", "wait"
	cases := []struct {
		rp     v1alpha1.RunPolicy
		reason string
		want   string
	}{
		{v1alpha1.RunPolicyAlwaysOn, v1alpha1.ExitGuestShutdown, restart},
		{v1alpha1.RunPolicyAlwaysOnUnlessStoppedManually, v1alpha1.ExitGuestShutdown, stay},
		{v1alpha1.RunPolicyManual, v1alpha1.ExitGuestShutdown, stay},
		{v1alpha1.RunPolicyAlwaysOn, v1alpha1.ExitCrashed, restart},
		{v1alpha1.RunPolicyAlwaysOnUnlessStoppedManually, v1alpha1.ExitCrashed, restart},
		{v1alpha1.RunPolicyManual, v1alpha1.ExitCrashed, stay},
		{v1alpha1.RunPolicyAlwaysOn, v1alpha1.ExitStartFailed, restart},
		{v1alpha1.RunPolicyAlwaysOnUnlessStoppedManually, v1alpha1.ExitStartFailed, restart},
		{v1alpha1.RunPolicyManual, v1alpha1.ExitStartFailed, stay},
		{v1alpha1.RunPolicyAlwaysOff, v1alpha1.ExitCrashed, stay},
		{v1alpha1.RunPolicyAlwaysOff, v1alpha1.ExitGuestShutdown, stay},
	}
	for _, c := range cases {
		t.Run(string(c.rp)+"/"+c.reason, func(t *testing.T) {
			// One second after the exit: the first backoff step has passed.
			d := testPolicy(t0.Add(time.Second)).decide(exited(c.rp, c.reason, 1, t0), nil)
			got := wait
			switch {
			case d.power.State == v1alpha1.PowerStateStopped:
				got = stay
			case d.power.RestartID != "r1":
				got = restart
			}
			if got != c.want {
				t.Fatalf("got %s (%+v), want %s", got, d.power, c.want)
			}
		})
	}
}

func TestCrashBackoff(t *testing.T) {
	for _, c := range []struct {
		count int
		after time.Duration
		wait  time.Duration // 0: restart now
	}{
		{1, 0, time.Second},
		{1, time.Second, 0},
		{2, time.Second, time.Second},
		{3, 3 * time.Second, time.Second},
		{4, 8 * time.Second, 0},
		{20, 4 * time.Minute, time.Minute},
		{20, 5 * time.Minute, 0},
	} {
		vm := exited(v1alpha1.RunPolicyAlwaysOnUnlessStoppedManually, v1alpha1.ExitCrashed, c.count, t0)
		d := testPolicy(t0.Add(c.after)).decide(vm, nil)
		if c.wait == 0 {
			if d.power.RestartID == "r1" || d.requeue != 0 {
				t.Errorf("count %d after %s: no restart (%+v, requeue %s)", c.count, c.after, d.power, d.requeue)
			}
			continue
		}
		if d.power.RestartID != "r1" || d.requeue != c.wait {
			t.Errorf("count %d after %s: %+v requeue %s, want wait %s", c.count, c.after, d.power, d.requeue, c.wait)
		}
	}
}

// An exit the policy already answered (a new RestartID the agent has not carried out, or a
// VM still running) is not answered twice.
func TestExitAnsweredOnce(t *testing.T) {
	vm := exited(v1alpha1.RunPolicyAlwaysOn, v1alpha1.ExitCrashed, 1, t0)
	vm.Status.PowerRequest.RestartID = "r2"
	if d := testPolicy(t0.Add(time.Hour)).decide(vm, nil); d.power.RestartID != "r2" {
		t.Fatalf("restart asked twice: %+v", d.power)
	}
	vm = exited(v1alpha1.RunPolicyAlwaysOn, v1alpha1.ExitCrashed, 1, t0)
	vm.Status.Phase = v1alpha1.VMPhaseRunning // restarted since
	if d := testPolicy(t0.Add(time.Hour)).decide(vm, nil); d.power.RestartID != "r1" {
		t.Fatalf("a running VM was restarted for an old exit: %+v", d.power)
	}
}

func TestRunPolicyChanges(t *testing.T) {
	vm := newVM(v1alpha1.RunPolicyAlwaysOff)
	vm.Status.PowerRequest = &v1alpha1.VMPowerRequest{State: v1alpha1.PowerStateRunning}
	if d := testPolicy(t0).decide(vm, nil); d.power.State != v1alpha1.PowerStateStopped {
		t.Errorf("AlwaysOff: %+v", d.power)
	}
	vm = newVM(v1alpha1.RunPolicyAlwaysOn)
	vm.Status.PowerRequest = &v1alpha1.VMPowerRequest{State: v1alpha1.PowerStateStopped, RestartID: "r1"}
	vm.Status.ObservedRestartID = "r1"
	if d := testPolicy(t0).decide(vm, nil); d.power.State != v1alpha1.PowerStateRunning || d.power.RestartID == "r1" {
		t.Errorf("AlwaysOn from stopped: %+v", d.power)
	}
}

func newOp(name string, typ v1alpha1.VMOPType, created time.Time, phase v1alpha1.VMOPPhase) *v1alpha1.VirtualMachineOperation {
	return &v1alpha1.VirtualMachineOperation{
		ObjectMeta: v1alpha1.ObjectMeta{Name: name, Namespace: "p", UID: "uid-" + name, CreationTimestamp: tm(created)},
		Spec:       v1alpha1.VirtualMachineOperationSpec{Type: typ, VirtualMachineName: "vm"},
		Status:     v1alpha1.VirtualMachineOperationStatus{Phase: phase},
	}
}

func running(rp v1alpha1.RunPolicy) *v1alpha1.VirtualMachine {
	vm := newVM(rp)
	vm.Status.PowerRequest = &v1alpha1.VMPowerRequest{State: v1alpha1.PowerStateRunning, RestartID: "r1"}
	vm.Status.ObservedRestartID = "r1"
	vm.Status.Phase = v1alpha1.VMPhaseRunning
	vm.Status.NodeName = "n1"
	return vm
}

func findUpdate(d decision, name string) *opUpdate {
	for i := range d.ops {
		if d.ops[i].name == name {
			return &d.ops[i]
		}
	}
	return nil
}

func TestOperations(t *testing.T) {
	yes := true
	cases := []struct {
		name      string
		vm        *v1alpha1.VirtualMachine
		op        *v1alpha1.VirtualMachineOperation
		force     bool
		wantPhase v1alpha1.VMOPPhase
		wantState string
		wantID    string
		reason    string
	}{
		{name: "stop running", vm: running(v1alpha1.RunPolicyAlwaysOnUnlessStoppedManually), op: newOp("o", v1alpha1.VMOPTypeStop, t0, ""),
			wantPhase: v1alpha1.VMOPPhaseInProgress, wantState: v1alpha1.PowerStateStopped},
		{name: "force stop", vm: running(v1alpha1.RunPolicyManual), op: newOp("o", v1alpha1.VMOPTypeStop, t0, ""), force: true,
			wantPhase: v1alpha1.VMOPPhaseInProgress, wantState: v1alpha1.PowerStateStopped},
		{name: "stop AlwaysOn refused", vm: running(v1alpha1.RunPolicyAlwaysOn), op: newOp("o", v1alpha1.VMOPTypeStop, t0, ""),
			wantPhase: v1alpha1.VMOPPhaseFailed, wantState: v1alpha1.PowerStateRunning, wantID: "r1", reason: v1alpha1.VMOPReasonNotApplicableForPolicy},
		{name: "start AlwaysOff refused", vm: newVM(v1alpha1.RunPolicyAlwaysOff), op: newOp("o", v1alpha1.VMOPTypeStart, t0, ""),
			wantPhase: v1alpha1.VMOPPhaseFailed, wantState: v1alpha1.PowerStateStopped, reason: v1alpha1.VMOPReasonNotApplicableForPolicy},
		{name: "start running completes at once", vm: running(v1alpha1.RunPolicyManual), op: newOp("o", v1alpha1.VMOPTypeStart, t0, ""),
			wantPhase: v1alpha1.VMOPPhaseCompleted, wantState: v1alpha1.PowerStateRunning, wantID: "r1", reason: v1alpha1.VMOPReasonOperationCompleted},
		{name: "start manual", vm: newVM(v1alpha1.RunPolicyManual), op: newOp("o", v1alpha1.VMOPTypeStart, t0, ""),
			wantPhase: v1alpha1.VMOPPhaseInProgress, wantState: v1alpha1.PowerStateRunning, wantID: "op-uid-o"},
		{name: "restart running", vm: running(v1alpha1.RunPolicyAlwaysOn), op: newOp("o", v1alpha1.VMOPTypeRestart, t0, ""),
			wantPhase: v1alpha1.VMOPPhaseInProgress, wantState: v1alpha1.PowerStateRunning, wantID: "op-uid-o"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.force {
				c.op.Spec.Force = &yes
			}
			d := testPolicy(t0).decide(c.vm, []*v1alpha1.VirtualMachineOperation{c.op})
			u := findUpdate(d, "o")
			if u == nil || u.phase != c.wantPhase || (c.reason != "" && u.reason != c.reason) {
				t.Fatalf("op update %+v, want phase %s reason %s", u, c.wantPhase, c.reason)
			}
			if d.power.State != c.wantState || (c.wantID != "" && d.power.RestartID != c.wantID) {
				t.Fatalf("power %+v, want %s %s", d.power, c.wantState, c.wantID)
			}
			if c.wantPhase == v1alpha1.VMOPPhaseInProgress && (d.power.Operation != "o" || d.power.Force != c.force) {
				t.Fatalf("power %+v does not name the operation (force %t)", d.power, c.force)
			}
		})
	}
}

func TestOperationProgress(t *testing.T) {
	op := newOp("o", v1alpha1.VMOPTypeStart, t0, v1alpha1.VMOPPhaseInProgress)
	op.Status.Conditions = []v1alpha1.Condition{{Type: v1alpha1.VMOPConditionSignalSent, Status: "True", LastTransitionTime: tm(t0)}}
	vm := newVM(v1alpha1.RunPolicyManual)
	vm.Status.PowerRequest = &v1alpha1.VMPowerRequest{State: v1alpha1.PowerStateRunning, RestartID: "op-uid-o", Operation: "o"}
	vm.Status.Phase = v1alpha1.VMPhasePending
	ops := []*v1alpha1.VirtualMachineOperation{op}
	if d := testPolicy(t0).decide(vm, ops); findUpdate(d, "o") != nil {
		t.Fatalf("completed before the agent started the VM: %+v", d.ops)
	}
	vm.Status.ObservedRestartID = "op-uid-o"
	vm.Status.Phase = v1alpha1.VMPhaseRunning
	if u := findUpdate(testPolicy(t0).decide(vm, ops), "o"); u == nil || u.phase != v1alpha1.VMOPPhaseCompleted {
		t.Fatalf("not completed when running: %+v", u)
	}
	// A failed start fails the operation with the agent's message.
	vm.Status.Phase = v1alpha1.VMPhaseStopped
	vm.Status.LastExit = &v1alpha1.VMExit{Reason: v1alpha1.ExitStartFailed, Message: "qemu: boom", Time: tm(t0.Add(time.Second)), Count: 1}
	u := findUpdate(testPolicy(t0.Add(2*time.Second)).decide(vm, ops), "o")
	if u == nil || u.phase != v1alpha1.VMOPPhaseFailed || u.message != "QEMU failed to start: qemu: boom" {
		t.Fatalf("failed start: %+v", u)
	}
	// A stop completes when the VM is stopped.
	stop := newOp("s", v1alpha1.VMOPTypeStop, t0, v1alpha1.VMOPPhaseInProgress)
	vm = newVM(v1alpha1.RunPolicyManual)
	vm.Status.PowerRequest = &v1alpha1.VMPowerRequest{State: v1alpha1.PowerStateStopped, Operation: "s"}
	vm.Status.Phase = v1alpha1.VMPhaseStopping
	vm.Status.NodeName = "n1"
	if d := testPolicy(t0).decide(vm, []*v1alpha1.VirtualMachineOperation{stop}); findUpdate(d, "s") != nil {
		t.Fatalf("stop completed while stopping")
	}
	vm.Status.Phase = v1alpha1.VMPhaseStopped
	if u := findUpdate(testPolicy(t0).decide(vm, []*v1alpha1.VirtualMachineOperation{stop}), "s"); u == nil || u.phase != v1alpha1.VMOPPhaseCompleted {
		t.Fatalf("stop not completed: %+v", u)
	}
}

func TestSupersede(t *testing.T) {
	vm := running(v1alpha1.RunPolicyAlwaysOnUnlessStoppedManually)
	older := newOp("a-stop", v1alpha1.VMOPTypeStop, t0, v1alpha1.VMOPPhaseInProgress)
	vm.Status.PowerRequest = &v1alpha1.VMPowerRequest{State: v1alpha1.PowerStateStopped, Operation: "a-stop"}
	vm.Status.Phase = v1alpha1.VMPhaseStopping
	mid := newOp("b-stop", v1alpha1.VMOPTypeStop, t0.Add(time.Second), v1alpha1.VMOPPhasePending)
	newest := newOp("c-start", v1alpha1.VMOPTypeStart, t0.Add(2*time.Second), "")
	other := newOp("d-migrate", v1alpha1.VMOPTypeMigrate, t0.Add(3*time.Second), "")
	done := newOp("e-old", v1alpha1.VMOPTypeStop, t0.Add(-time.Hour), v1alpha1.VMOPPhaseCompleted)
	d := testPolicy(t0).decide(vm, []*v1alpha1.VirtualMachineOperation{newest, other, mid, done, older})
	for _, n := range []string{"a-stop", "b-stop"} {
		if u := findUpdate(d, n); u == nil || u.phase != v1alpha1.VMOPPhaseSuperseded || u.reason != v1alpha1.VMOPReasonSuperseded {
			t.Errorf("%s: %+v, want Superseded", n, u)
		}
	}
	if u := findUpdate(d, "c-start"); u == nil || u.phase != v1alpha1.VMOPPhaseInProgress {
		t.Errorf("newest: %+v", u)
	}
	if findUpdate(d, "d-migrate") != nil || findUpdate(d, "e-old") != nil {
		t.Errorf("touched operations that are not active power operations: %+v", d.ops)
	}
	if d.power.State != v1alpha1.PowerStateRunning || d.power.Operation != "c-start" {
		t.Errorf("power %+v", d.power)
	}
}

func TestPauseAnnotation(t *testing.T) {
	vm := running(v1alpha1.RunPolicyAlwaysOn)
	vm.Annotations = map[string]string{PausedAnnotation: "true"}
	d := testPolicy(t0).decide(vm, nil)
	if d.power.State != v1alpha1.PowerStatePaused || d.power.RestartID != "r1" {
		t.Fatalf("paused: %+v", d.power)
	}
	vm.Status.PowerRequest = d.power
	vm.Annotations = nil
	if d := testPolicy(t0).decide(vm, nil); d.power.State != v1alpha1.PowerStateRunning || d.power.RestartID != "r1" {
		t.Fatalf("resumed: %+v", d.power)
	}
	// A stopped VM stays stopped when paused.
	vm = newVM(v1alpha1.RunPolicyManual)
	vm.Annotations = map[string]string{PausedAnnotation: "true"}
	if d := testPolicy(t0).decide(vm, nil); d.power.State != v1alpha1.PowerStateStopped {
		t.Fatalf("paused stopped VM: %+v", d.power)
	}
}

// TestSupersedeByCreationRevision: operations made within one second have equal timestamps,
// and their names sort the other way ("o-stop" after "o-start"); the creation revision the
// store assigned decides which is newer.
func TestSupersedeByCreationRevision(t *testing.T) {
	for _, c := range []struct {
		first, second v1alpha1.VMOPType
		wantState     string
	}{
		{v1alpha1.VMOPTypeStop, v1alpha1.VMOPTypeStart, v1alpha1.PowerStateRunning},
		{v1alpha1.VMOPTypeStart, v1alpha1.VMOPTypeStop, v1alpha1.PowerStateStopped},
		{v1alpha1.VMOPTypeRestart, v1alpha1.VMOPTypeStop, v1alpha1.PowerStateStopped},
	} {
		name := func(typ v1alpha1.VMOPType, suffix string) string {
			// Names that sort against creation order.
			if typ == c.first {
				return "o-z-" + string(typ) + suffix
			}
			return "o-a-" + string(typ) + suffix
		}
		vm := running(v1alpha1.RunPolicyAlwaysOnUnlessStoppedManually)
		first := newOp(name(c.first, "-1"), c.first, t0, "")
		first.CreationRevision = "99"
		second := newOp(name(c.second, "-2"), c.second, t0, "")
		second.CreationRevision = "100"
		d := testPolicy(t0).decide(vm, []*v1alpha1.VirtualMachineOperation{second, first})
		u := findUpdate(d, first.Name)
		if u == nil || u.phase != v1alpha1.VMOPPhaseSuperseded || !strings.Contains(u.message, second.Name) ||
			!strings.Contains(u.message, "creation revision 100, after this one's 99") {
			t.Errorf("%s then %s: the first: %+v, want Superseded by %s", c.first, c.second, u, second.Name)
		}
		if u := findUpdate(d, second.Name); u == nil || u.phase == v1alpha1.VMOPPhaseSuperseded {
			t.Errorf("%s then %s: the second: %+v", c.first, c.second, u)
		}
		if d.power.State != c.wantState {
			t.Errorf("%s then %s: power request %+v, want %s", c.first, c.second, d.power, c.wantState)
		}
	}
}

func TestCreatedBefore(t *testing.T) {
	at := v1alpha1.NewTime(t0)
	later := v1alpha1.NewTime(t0.Add(time.Second))
	m := func(name, rev string, ts *v1alpha1.Time) *v1alpha1.ObjectMeta {
		return &v1alpha1.ObjectMeta{Name: name, CreationRevision: rev, CreationTimestamp: ts}
	}
	for _, c := range []struct {
		a, b *v1alpha1.ObjectMeta
		want bool
	}{
		{m("z", "5", &at), m("a", "6", &at), true},     // revision beats name
		{m("a", "6", &at), m("z", "5", &at), false},    // and both ways
		{m("z", "9", &at), m("a", "2", &later), false}, // revision beats timestamp
		{m("z", "", &at), m("a", "", &later), true},    // no revision: timestamp
		{m("a", "", &at), m("b", "", &at), true},       // then name
	} {
		if got := c.a.CreatedBefore(c.b); got != c.want {
			t.Errorf("%+v before %+v = %t, want %t", c.a, c.b, got, c.want)
		}
	}
}

// TestEvictionStopUnderAlwaysOn: a Stop operation that carries out an eviction (labelled
// evict-of) stops an AlwaysOn VM and holds while it runs; an unlabelled Stop is refused, and
// once the eviction's stop is over AlwaysOn starts the VM again (a new restartID: the
// scheduler places it anew).
func TestEvictionStopUnderAlwaysOn(t *testing.T) {
	running := func() *v1alpha1.VirtualMachine {
		vm := newVM(v1alpha1.RunPolicyAlwaysOn)
		vm.Status.PowerRequest = &v1alpha1.VMPowerRequest{State: v1alpha1.PowerStateRunning, RestartID: "r1"}
		vm.Status.ObservedRestartID, vm.Status.Phase, vm.Status.NodeName = "r1", v1alpha1.VMPhaseRunning, "n1"
		return vm
	}
	stopOp := func(name string, labels map[string]string) *v1alpha1.VirtualMachineOperation {
		return &v1alpha1.VirtualMachineOperation{ObjectMeta: v1alpha1.ObjectMeta{Name: name, Namespace: "p", Labels: labels, CreationRevision: "5"},
			Spec: v1alpha1.VirtualMachineOperationSpec{Type: v1alpha1.VMOPTypeStop, VirtualMachineName: "vm"}}
	}
	// Unlabelled: refused.
	d := testPolicy(t0).decide(running(), []*v1alpha1.VirtualMachineOperation{stopOp("s", nil)})
	if len(d.ops) != 1 || d.ops[0].phase != v1alpha1.VMOPPhaseFailed || d.power.State != v1alpha1.PowerStateRunning {
		t.Fatalf("unlabelled stop of an AlwaysOn VM: ops %+v power %+v", d.ops, d.power)
	}
	// Labelled: begun, and the stop request is written.
	op := stopOp("e-stop", map[string]string{v1alpha1.LabelEvictOf: "e"})
	d = testPolicy(t0).decide(running(), []*v1alpha1.VirtualMachineOperation{op})
	if len(d.ops) != 1 || d.ops[0].phase != v1alpha1.VMOPPhaseInProgress || d.power.State != v1alpha1.PowerStateStopped || d.power.Operation != "e-stop" {
		t.Fatalf("eviction stop of an AlwaysOn VM: ops %+v power %+v", d.ops, d.power)
	}
	// While it runs, AlwaysOn does not undo it.
	vm := running()
	vm.Status.PowerRequest = d.power
	vm.Status.Phase = v1alpha1.VMPhaseStopping
	op.Status.Phase = v1alpha1.VMOPPhaseInProgress
	d = testPolicy(t0).decide(vm, []*v1alpha1.VirtualMachineOperation{op})
	if d.power.State != v1alpha1.PowerStateStopped {
		t.Fatalf("AlwaysOn undid an eviction's stop under way: %+v", d.power)
	}
	// Stopped and released: the operation completes and AlwaysOn asks for a new start.
	vm.Status.Phase, vm.Status.NodeName = v1alpha1.VMPhaseStopped, ""
	d = testPolicy(t0).decide(vm, []*v1alpha1.VirtualMachineOperation{op})
	if len(d.ops) != 1 || d.ops[0].phase != v1alpha1.VMOPPhaseCompleted || d.power.State != v1alpha1.PowerStateRunning || d.power.RestartID == "r1" {
		t.Fatalf("after the eviction's stop: ops %+v power %+v", d.ops, d.power)
	}
}

// TestTemplateNeverRuns: a VM labelled as a template gets a stop request under every run
// policy, its Start and Restart operations fail with reason VirtualMachineIsTemplate, and a
// Stop still completes as usual.
func TestTemplateNeverRuns(t *testing.T) {
	for _, rp := range []v1alpha1.RunPolicy{"", v1alpha1.RunPolicyAlwaysOn, v1alpha1.RunPolicyManual} {
		vm := newVM(rp)
		vm.Labels = map[string]string{v1alpha1.LabelTemplate: "true"}
		if d := testPolicy(t0).decide(vm, nil); d.power.State != v1alpha1.PowerStateStopped {
			t.Errorf("%q: template power %s", rp, d.power.State)
		}
	}
	for _, typ := range []v1alpha1.VMOPType{v1alpha1.VMOPTypeStart, v1alpha1.VMOPTypeRestart} {
		vm := newVM(v1alpha1.RunPolicyManual)
		vm.Labels = map[string]string{v1alpha1.LabelTemplate: "true"}
		d := testPolicy(t0).decide(vm, []*v1alpha1.VirtualMachineOperation{newOp("o", typ, t0, "")})
		if d.power.State != v1alpha1.PowerStateStopped || len(d.ops) != 1 || d.ops[0].phase != v1alpha1.VMOPPhaseFailed ||
			d.ops[0].reason != v1alpha1.VMOPReasonVirtualMachineIsTemplate || !strings.Contains(d.ops[0].message, "template") {
			t.Errorf("%s of a template: power %s, ops %+v", typ, d.power.State, d.ops)
		}
	}
	// Without the label the same start runs.
	d := testPolicy(t0).decide(newVM(v1alpha1.RunPolicyManual), []*v1alpha1.VirtualMachineOperation{newOp("o", v1alpha1.VMOPTypeStart, t0, "")})
	if d.power.State != v1alpha1.PowerStateRunning {
		t.Errorf("start of an ordinary VM: %s", d.power.State)
	}
}

// TestHibernateOperation: a Hibernate asks for a stop that saves the RAM, only of a running VM
// that can resume what it saved; it completes when the agent reports the state saved, fails
// with the agent's message when it could not save it (the guest runs on, so the request goes
// back to Running without a restart), and a forced Start boots from the disks.
func TestHibernateOperation(t *testing.T) {
	rp := v1alpha1.RunPolicyAlwaysOnUnlessStoppedManually
	begin := func(vm *v1alpha1.VirtualMachine) (*opUpdate, *v1alpha1.VMPowerRequest) {
		d := testPolicy(t0).decide(vm, []*v1alpha1.VirtualMachineOperation{newOp("h", v1alpha1.VMOPTypeHibernate, t0, "")})
		return findUpdate(d, "h"), d.power
	}
	u, pr := begin(running(rp))
	if u == nil || u.phase != v1alpha1.VMOPPhaseInProgress || pr.State != v1alpha1.PowerStateStopped || !pr.Hibernate || pr.Operation != "h" || pr.RestartID != "r1" {
		t.Fatalf("hibernate of a running VM: %+v, power %+v", u, pr)
	}
	refusals := map[string]*v1alpha1.VirtualMachine{}
	refusals["AlwaysOn"] = running(v1alpha1.RunPolicyAlwaysOn)
	stopped := newVM(rp)
	stopped.Status.PowerRequest = &v1alpha1.VMPowerRequest{State: v1alpha1.PowerStateStopped}
	stopped.Status.Phase = v1alpha1.VMPhaseStopped
	refusals["stopped"] = stopped
	hot := running(rp)
	hot.Status.BlockDeviceRefs = []v1alpha1.BlockDeviceStatusRef{{Kind: v1alpha1.BlockDeviceKindVirtualDisk, Name: "data", Hotplugged: true}}
	refusals["hot-plugged disk"] = hot
	nic := running(rp)
	nic.Status.Networks = []v1alpha1.NetworkStatus{{MACAddress: "02:00:00:00:00:01", Slot: "hotplug1"}}
	refusals["hot-plugged NIC"] = nic
	pending := running(rp)
	pending.Status.Conditions = []v1alpha1.Condition{{Type: v1alpha1.VMConditionAwaitingRestartToApplyConfiguration, Status: v1alpha1.ConditionTrue, Message: "spec.osType"}}
	refusals["pending changes"] = pending
	want := map[string]string{"AlwaysOn": v1alpha1.VMOPReasonNotApplicableForPolicy, "stopped": v1alpha1.VMOPReasonNotApplicableForPhase,
		"hot-plugged disk": v1alpha1.VMOPReasonNotHibernatable, "hot-plugged NIC": v1alpha1.VMOPReasonNotHibernatable, "pending changes": v1alpha1.VMOPReasonNotHibernatable}
	for name, vm := range refusals {
		u, pr := begin(vm)
		if u == nil || u.phase != v1alpha1.VMOPPhaseFailed || u.reason != want[name] || pr.Hibernate {
			t.Errorf("%s: %+v, power %+v; want failed with %s", name, u, pr, want[name])
		}
	}
	if u, _ := begin(hot); !strings.Contains(u.message, `VirtualDisk "data"`) {
		t.Errorf("the refusal does not name the hot-plugged disk: %s", u.message)
	}

	// In progress.
	op := newOp("h", v1alpha1.VMOPTypeHibernate, t0, v1alpha1.VMOPPhaseInProgress)
	op.Status.Conditions = []v1alpha1.Condition{{Type: v1alpha1.VMOPConditionSignalSent, Status: "True", LastTransitionTime: tm(t0)}}
	vm := running(rp)
	vm.Status.PowerRequest = &v1alpha1.VMPowerRequest{State: v1alpha1.PowerStateStopped, Hibernate: true, RestartID: "r1", Operation: "h"}
	vm.Status.Phase = v1alpha1.VMPhaseStopping
	ops := []*v1alpha1.VirtualMachineOperation{op}
	if d := testPolicy(t0).decide(vm, ops); findUpdate(d, "h") != nil || !d.power.Hibernate {
		t.Fatalf("hibernation ended while saving: %+v, power %+v", d.ops, d.power)
	}
	// Could not save: failed, and the VM is to run on (same RestartID).
	vm.Status.Phase = v1alpha1.VMPhaseRunning
	vm.Status.Conditions = []v1alpha1.Condition{{Type: v1alpha1.VMConditionHibernated, Status: v1alpha1.ConditionFalse, Reason: "SaveFailed",
		Message: "no space left", LastTransitionTime: tm(t0.Add(time.Second))}}
	d := testPolicy(t0.Add(2*time.Second)).decide(vm, ops)
	if u := findUpdate(d, "h"); u == nil || u.phase != v1alpha1.VMOPPhaseFailed || u.message != "no space left" {
		t.Fatalf("failed save: %+v", u)
	}
	if d.power.State != v1alpha1.PowerStateRunning || d.power.RestartID != "r1" || d.power.Hibernate {
		t.Fatalf("after a failed save the power request is %+v, want Running r1", d.power)
	}
	// Saved: completed.
	vm.Status.Phase = v1alpha1.VMPhaseStopped
	vm.Status.Conditions = []v1alpha1.Condition{{Type: v1alpha1.VMConditionHibernated, Status: v1alpha1.ConditionTrue, Reason: "Saved",
		Message: "saved", LastTransitionTime: tm(t0.Add(time.Second))}}
	d = testPolicy(t0.Add(2*time.Second)).decide(vm, ops)
	if u := findUpdate(d, "h"); u == nil || u.phase != v1alpha1.VMOPPhaseCompleted || d.power.State != v1alpha1.PowerStateStopped {
		t.Fatalf("saved: %+v, power %+v", u, d.power)
	}

	// A forced start of the hibernated VM asks for a boot from the disks.
	yes := true
	start := newOp("s", v1alpha1.VMOPTypeStart, t0.Add(time.Minute), "")
	start.Spec.Force = &yes
	vm.Status.PowerRequest = &v1alpha1.VMPowerRequest{State: v1alpha1.PowerStateStopped, Hibernate: true, RestartID: "r1"}
	vm.Status.NodeName = ""
	d = testPolicy(t0.Add(2*time.Minute)).decide(vm, []*v1alpha1.VirtualMachineOperation{start})
	if d.power.State != v1alpha1.PowerStateRunning || !d.power.Force || d.power.Hibernate {
		t.Fatalf("forced start: power %+v", d.power)
	}
	// ... and is refused on a running VM.
	start.Status = v1alpha1.VirtualMachineOperationStatus{}
	if u := findUpdate(testPolicy(t0).decide(running(rp), []*v1alpha1.VirtualMachineOperation{start}), "s"); u == nil || u.phase != v1alpha1.VMOPPhaseFailed {
		t.Fatalf("forced start of a running VM: %+v", u)
	}
}
