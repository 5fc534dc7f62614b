package node

import (
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

func planOp(vm, name string, typ v1alpha1.VMOPType, phase v1alpha1.VMOPPhase, reason string, finished time.Time) *v1alpha1.VirtualMachineOperation {
	created := v1alpha1.NewTime(finished.Add(-time.Minute))
	op := &v1alpha1.VirtualMachineOperation{ObjectMeta: v1alpha1.ObjectMeta{Name: name, Namespace: "p", CreationTimestamp: &created},
		Spec: v1alpha1.VirtualMachineOperationSpec{Type: typ, VirtualMachineName: vm}}
	op.Status.Phase = phase
	if reason != "" {
		t := v1alpha1.NewTime(finished)
		op.Status.Conditions = []v1alpha1.Condition{{Type: v1alpha1.VMOPConditionCompleted, Status: v1alpha1.ConditionTrue, Reason: reason, Message: "msg", LastTransitionTime: &t}}
	}
	return op
}

// TestPlanEviction: which VMs count as running on the node, and what the plan does about
// each: wait for a phase, another operation, a back-off or a status that lags; retry what
// may succeed; give up on what cannot; keep to the parallel limit.
func TestPlanEviction(t *testing.T) {
	now := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	all := func(*v1alpha1.VirtualMachineOperation) bool { return true }
	deleting := testVM("deleting", "h2", v1alpha1.VMPhaseRunning)
	dt := v1alpha1.NewTime(now)
	deleting.DeletionTimestamp = &dt
	cases := []struct {
		name   string
		vms    []*v1alpha1.VirtualMachine
		ops    []*v1alpha1.VirtualMachineOperation
		counts func(*v1alpha1.VirtualMachineOperation) bool
		want   map[string]EvictAction
		reason map[string]string
	}{
		{name: "stopped and other nodes' VMs are not in the plan",
			vms:  []*v1alpha1.VirtualMachine{testVM("s", "h2", v1alpha1.VMPhaseStopped), testVM("o", "h1", v1alpha1.VMPhaseRunning), testVM("r", "h2", v1alpha1.VMPhaseRunning)},
			want: map[string]EvictAction{"r": EvictCreate}},
		{name: "phases in between wait",
			vms: []*v1alpha1.VirtualMachine{testVM("st", "h2", v1alpha1.VMPhaseStarting), testVM("pe", "h2", ""), deleting,
				testVM("dg", "h2", v1alpha1.VMPhaseDegraded), testVM("pa", "h2", v1alpha1.VMPhasePause)},
			want:   map[string]EvictAction{"st": EvictWait, "pe": EvictWait, "deleting": EvictWait, "dg": EvictWait, "pa": EvictCreate},
			reason: map[string]string{"st": "the VM is Starting", "pe": "the VM is Pending", "deleting": "being deleted", "dg": "the VM is Degraded"}},
		{name: "another operation of the VM is waited for",
			vms:    []*v1alpha1.VirtualMachine{testVM("a", "h2", v1alpha1.VMPhaseRunning)},
			ops:    []*v1alpha1.VirtualMachineOperation{planOp("a", "a-stop", v1alpha1.VMOPTypeStop, v1alpha1.VMOPPhaseInProgress, "", now)},
			want:   map[string]EvictAction{"a": EvictWait},
			reason: map[string]string{"a": "operation a-stop (Stop) of the VM is InProgress"}},
		{name: "a Migrate under way counts as the eviction",
			vms:  []*v1alpha1.VirtualMachine{testVM("a", "h2", v1alpha1.VMPhaseMigrating)},
			ops:  []*v1alpha1.VirtualMachineOperation{planOp("a", "a-mig", v1alpha1.VMOPTypeMigrate, "", "", now)},
			want: map[string]EvictAction{"a": EvictInFlight}},
		{name: "transient failures back off, then retry",
			vms: []*v1alpha1.VirtualMachine{testVM("fresh", "h2", v1alpha1.VMPhaseRunning), testVM("old", "h2", v1alpha1.VMPhaseRunning)},
			ops: []*v1alpha1.VirtualMachineOperation{
				planOp("fresh", "f1", v1alpha1.VMOPTypeEvict, v1alpha1.VMOPPhaseFailed, v1alpha1.VMOPReasonOtherOperationInProgress, now.Add(-time.Second)),
				planOp("old", "o1", v1alpha1.VMOPTypeEvict, v1alpha1.VMOPPhaseSuperseded, v1alpha1.VMOPReasonSuperseded, now.Add(-time.Minute))},
			counts: all,
			want:   map[string]EvictAction{"fresh": EvictWait, "old": EvictCreate},
			reason: map[string]string{"fresh": "trying again at"}},
		{name: "broken migrations retry up to the attempt limit",
			vms: []*v1alpha1.VirtualMachine{testVM("once", "h2", v1alpha1.VMPhaseRunning), testVM("thrice", "h2", v1alpha1.VMPhaseRunning)},
			ops: []*v1alpha1.VirtualMachineOperation{
				planOp("once", "o1", v1alpha1.VMOPTypeEvict, v1alpha1.VMOPPhaseFailed, v1alpha1.VMOPReasonOperationFailed, now.Add(-time.Hour)),
				planOp("thrice", "t1", v1alpha1.VMOPTypeEvict, v1alpha1.VMOPPhaseFailed, v1alpha1.VMOPReasonOperationFailed, now.Add(-3*time.Hour)),
				planOp("thrice", "t2", v1alpha1.VMOPTypeEvict, v1alpha1.VMOPPhaseFailed, v1alpha1.VMOPReasonOperationFailed, now.Add(-2*time.Hour)),
				planOp("thrice", "t3", v1alpha1.VMOPTypeEvict, v1alpha1.VMOPPhaseFailed, v1alpha1.VMOPReasonOperationFailed, now.Add(-time.Hour))},
			counts: all,
			want:   map[string]EvictAction{"once": EvictCreate, "thrice": EvictStuck},
			reason: map[string]string{"thrice": "operation t3 Failed (OperationFailed): msg (3 attempts)"}},
		{name: "a failure that cannot change is final, unless it is not counted",
			vms: []*v1alpha1.VirtualMachine{testVM("pol", "h2", v1alpha1.VMPhaseRunning), testVM("earlier", "h2", v1alpha1.VMPhaseRunning)},
			ops: []*v1alpha1.VirtualMachineOperation{
				planOp("pol", "p1", v1alpha1.VMOPTypeEvict, v1alpha1.VMOPPhaseFailed, v1alpha1.VMOPReasonNotApplicableForLiveMigrationPolicy, now.Add(-time.Hour)),
				planOp("earlier", "e1", v1alpha1.VMOPTypeEvict, v1alpha1.VMOPPhaseFailed, v1alpha1.VMOPReasonNotImplemented, now.Add(-time.Hour))},
			counts: func(op *v1alpha1.VirtualMachineOperation) bool { return op.Name != "e1" },
			want:   map[string]EvictAction{"pol": EvictStuck, "earlier": EvictCreate},
			reason: map[string]string{"pol": "operation p1 Failed (NotApplicableForLiveMigrationPolicy): msg"}},
		{name: "a completed Evict whose VM status lags is waited for, then not trusted",
			vms: []*v1alpha1.VirtualMachine{testVM("lag", "h2", v1alpha1.VMPhaseRunning), testVM("back", "h2", v1alpha1.VMPhaseRunning)},
			ops: []*v1alpha1.VirtualMachineOperation{
				planOp("lag", "l1", v1alpha1.VMOPTypeEvict, v1alpha1.VMOPPhaseCompleted, v1alpha1.VMOPReasonOperationCompleted, now.Add(-time.Second)),
				planOp("back", "b1", v1alpha1.VMOPTypeEvict, v1alpha1.VMOPPhaseCompleted, v1alpha1.VMOPReasonOperationCompleted, now.Add(-time.Hour))},
			want:   map[string]EvictAction{"lag": EvictWait, "back": EvictCreate},
			reason: map[string]string{"lag": "operation l1 Completed"}},
		{name: "the parallel limit counts evictions under way",
			vms: []*v1alpha1.VirtualMachine{testVM("a", "h2", v1alpha1.VMPhaseRunning), testVM("b", "h2", v1alpha1.VMPhaseRunning),
				testVM("c", "h2", v1alpha1.VMPhaseRunning), testVM("d", "h2", v1alpha1.VMPhaseRunning)},
			ops:    []*v1alpha1.VirtualMachineOperation{planOp("c", "c1", v1alpha1.VMOPTypeEvict, v1alpha1.VMOPPhaseInProgress, "", now)},
			want:   map[string]EvictAction{"a": EvictCreate, "b": EvictQueued, "c": EvictInFlight, "d": EvictQueued},
			reason: map[string]string{"b": "at most 2 evictions at a time"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := PlanEviction(EvictInput{Node: "h2", VMs: tc.vms, Ops: tc.ops, Counts: tc.counts, Now: now})
			got := map[string]EvictAction{}
			for _, e := range p.Entries {
				got[e.Name] = e.Action
				if r := tc.reason[e.Name]; r != "" && !strings.Contains(e.Reason, r) {
					t.Errorf("%s: reason %q, want it to contain %q", e.Name, e.Reason, r)
				}
			}
			if len(got) != len(tc.want) {
				t.Fatalf("plan %v, want %v", got, tc.want)
			}
			for k, v := range tc.want {
				if got[k] != v {
					t.Errorf("%s: %s, want %s (plan %v)", k, got[k], v, got)
				}
			}
		})
	}
	if p := PlanEviction(EvictInput{Node: "h2", Now: now}); !p.Drained() || p.Summary() != "no VM runs on the node" {
		t.Fatalf("empty plan: %+v %q", p, p.Summary())
	}
}
