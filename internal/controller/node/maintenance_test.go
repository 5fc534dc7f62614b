package node

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/runtime/fake"
	"github.com/rakhsh/rakhsh/internal/testutil/apitest"
)

func testVM(name, node string, phase v1alpha1.VirtualMachinePhase) *v1alpha1.VirtualMachine {
	vm := &v1alpha1.VirtualMachine{ObjectMeta: v1alpha1.ObjectMeta{Name: name, Namespace: "p"}}
	vm.Spec.CPU.Cores = 1
	vm.Spec.Memory.Size = "256Mi"
	vm.Status.NodeName, vm.Status.Phase = node, phase
	return vm
}

func testNode(name string, maintenance bool) *v1alpha1.Node {
	n := &v1alpha1.Node{ObjectMeta: v1alpha1.ObjectMeta{Name: name}}
	n.Spec.Maintenance = maintenance
	n.Status.Phase = v1alpha1.NodePhaseReady
	return n
}

// evictOps returns the Evict operations of the fake by VM name.
func evictOps(t *testing.T, fc *fake.Client) map[string][]v1alpha1.VirtualMachineOperation {
	t.Helper()
	l, err := fc.ListAll(context.Background(), "virtualmachineoperations", "", client.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return apitest.EvictOps(t, l)
}

func activeCount(ops map[string][]v1alpha1.VirtualMachineOperation) int {
	n := 0
	for _, l := range ops {
		for i := range l {
			if opActive(&l[i]) {
				n++
			}
		}
	}
	return n
}

// finishOp writes what the migration side writes when an operation ends.
func finishOp(t *testing.T, fc *fake.Client, name string, phase v1alpha1.VMOPPhase, reason, msg string) {
	t.Helper()
	st := "True"
	body := fmt.Sprintf(`{"status":{"phase":%q,"conditions":[{"type":"Completed","status":%q,"reason":%q,"message":%q,"lastTransitionTime":%q}]}}`,
		phase, st, reason, msg, time.Now().UTC().Format(time.RFC3339))
	if err := fc.PatchStatus(context.Background(), "virtualmachineoperations", "p", name, []byte(body), nil); err != nil {
		t.Fatal(err)
	}
}

func moveVM(t *testing.T, fc *fake.Client, name, node string, phase v1alpha1.VirtualMachinePhase) {
	t.Helper()
	body := fmt.Sprintf(`{"status":{"nodeName":%q,"phase":%q}}`, node, phase)
	if err := fc.PatchStatus(context.Background(), "virtualmachines", "p", name, []byte(body), nil); err != nil {
		t.Fatal(err)
	}
}

// TestMaintenanceEvicts drives the maintenance controller against the fake client: it evicts
// the running VMs of a node in maintenance at most two at a time, counts an Evict someone
// else made and creates none beside it, never evicts a stopped VM or one of another node,
// writes Maintenance=True Draining (naming a VM that cannot leave) and then Drained, and
// removes the condition when maintenance is turned off.
func TestMaintenanceEvicts(t *testing.T) {
	fc := fake.New()
	objs := []v1alpha1.Object{testNode("h1", false), testNode("h2", true),
		testVM("a", "h2", v1alpha1.VMPhaseRunning), testVM("b", "h2", v1alpha1.VMPhaseRunning),
		testVM("c", "h2", v1alpha1.VMPhaseRunning), testVM("d", "h2", v1alpha1.VMPhaseRunning),
		testVM("e", "h1", v1alpha1.VMPhaseRunning), testVM("s", "h2", v1alpha1.VMPhaseStopped)}
	if err := fc.Add(objs...); err != nil {
		t.Fatal(err)
	}
	// An Evict of d that an operator made before, under way.
	manual := NewEvictOp("p", "d", "h2", "someone")
	manual.GenerateName, manual.Name = "", "d-by-hand"
	if err := fc.Create(context.Background(), "virtualmachineoperations", "p", manual, nil); err != nil {
		t.Fatal(err)
	}
	finishOp(t, fc, "d-by-hand", v1alpha1.VMOPPhaseInProgress, "", "")

	_, ctx := fake.Start(t, fc, nil, func(f *runtime.Factory) (*Maintenance, error) {
		return NewMaintenance(MaintenanceConfig{Deps: runtime.Deps{Client: fc, Informers: f}, Resync: 20 * time.Millisecond, RetryAfter: 50 * time.Millisecond})
	})

	var n v1alpha1.Node
	cond := func() *v1alpha1.Condition {
		return v1alpha1.FindCondition(n.Status.Conditions, v1alpha1.NodeConditionMaintenance)
	}
	fc.WaitFor(t, 10*time.Second, "nodes", "", "h2", &n, func() bool {
		c := cond()
		return c != nil && c.Status == v1alpha1.ConditionTrue && c.Reason == v1alpha1.NodeReasonDraining &&
			strings.Contains(c.Message, "p/a (evicting") && strings.Contains(c.Message, "p/d (evicting: operation d-by-hand InProgress")
	})
	ops := evictOps(t, fc)
	if len(ops["a"]) != 1 || len(ops["d"]) != 1 || len(ops["b"])+len(ops["c"])+len(ops["e"])+len(ops["s"]) != 0 {
		t.Fatalf("with d's Evict under way and a limit of 2, want one new Evict, for a: %v", ops)
	}
	opA := ops["a"][0]
	if opA.Labels[LabelEvictNode] != "h2" || opA.Labels[LabelEvictBy] != EvictByMaintenance || !strings.HasPrefix(opA.Name, "a-evict-") {
		t.Fatalf("a's Evict: %+v", opA.ObjectMeta)
	}

	// d leaves: b's turn. a's eviction fails for good: c's turn; a is named as stuck.
	finishOp(t, fc, "d-by-hand", v1alpha1.VMOPPhaseCompleted, v1alpha1.VMOPReasonOperationCompleted, "migrated to h1")
	moveVM(t, fc, "d", "h1", v1alpha1.VMPhaseRunning)
	waitOps := func(what string, ok func(map[string][]v1alpha1.VirtualMachineOperation) bool) map[string][]v1alpha1.VirtualMachineOperation {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			ops := evictOps(t, fc)
			if activeCount(ops) > 2 {
				t.Fatalf("%d evictions under way, limit 2: %v", activeCount(ops), ops)
			}
			if ok(ops) {
				return ops
			}
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s: %v", what, ops)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	ops = waitOps("b's Evict", func(o map[string][]v1alpha1.VirtualMachineOperation) bool { return len(o["b"]) == 1 })
	if len(ops["c"]) != 0 {
		t.Fatalf("c evicted while a and b are under way: %v", ops)
	}
	finishOp(t, fc, opA.Name, v1alpha1.VMOPPhaseFailed, v1alpha1.VMOPReasonNotApplicableForLiveMigrationPolicy, "local disks and policy Never")
	ops = waitOps("c's Evict", func(o map[string][]v1alpha1.VirtualMachineOperation) bool { return len(o["c"]) == 1 })
	fc.WaitFor(t, 10*time.Second, "nodes", "", "h2", &n, func() bool {
		c := cond()
		return c != nil && c.Reason == v1alpha1.NodeReasonDraining && strings.Contains(c.Message, "p/a (cannot leave: operation "+opA.Name+" Failed (NotApplicableForLiveMigrationPolicy): local disks and policy Never)")
	})
	moveVM(t, fc, "b", "h1", v1alpha1.VMPhaseRunning)
	finishOp(t, fc, ops["b"][0].Name, v1alpha1.VMOPPhaseCompleted, v1alpha1.VMOPReasonOperationCompleted, "")
	moveVM(t, fc, "c", "", v1alpha1.VMPhaseStopped)
	finishOp(t, fc, ops["c"][0].Name, v1alpha1.VMOPPhaseCompleted, v1alpha1.VMOPReasonOperationCompleted, "stopped")
	fc.WaitFor(t, 10*time.Second, "nodes", "", "h2", &n, func() bool {
		c := cond()
		return c != nil && c.Reason == v1alpha1.NodeReasonDraining && strings.HasPrefix(c.Message, "the node is in maintenance: it takes no new VMs; 1 VM(s) still run on the node: p/a (cannot leave")
	})
	// A failed eviction is not retried: one Evict per VM in all.
	for _, vm := range []string{"a", "b", "c", "d"} {
		if got := len(evictOps(t, fc)[vm]); got != 1 {
			t.Fatalf("%d Evict operations of %s, want 1", got, vm)
		}
	}

	// The operator stops a: the node is drained.
	moveVM(t, fc, "a", "", v1alpha1.VMPhaseStopped)
	fc.WaitFor(t, 10*time.Second, "nodes", "", "h2", &n, func() bool {
		c := cond()
		return c != nil && c.Status == v1alpha1.ConditionTrue && c.Reason == v1alpha1.NodeReasonDrained
	})
	// Maintenance off: the condition goes; nothing else is written.
	if err := fc.Patch(ctx, "nodes", "", "h2", []byte(`{"spec":{"maintenance":null}}`), nil); err != nil {
		t.Fatal(err)
	}
	fc.WaitFor(t, 10*time.Second, "nodes", "", "h2", &n, func() bool { return cond() == nil })
	var h1 v1alpha1.Node
	fc.WaitFor(t, time.Second, "nodes", "", "h1", &h1, func() bool { return true })
	if c := v1alpha1.FindCondition(h1.Status.Conditions, v1alpha1.NodeConditionMaintenance); c != nil {
		t.Fatalf("h1, never in maintenance, got the condition %+v", c)
	}
}

// TestMaintenanceRetriesTransient: an Evict that failed because another operation of the VM
// was active is tried again after the back-off; one that failed in the migration itself is
// tried again up to the attempt limit, then the VM is given up on.
func TestMaintenanceRetriesTransient(t *testing.T) {
	fc := fake.New()
	if err := fc.Add(testNode("h2", true), testVM("a", "h2", v1alpha1.VMPhaseRunning)); err != nil {
		t.Fatal(err)
	}
	f := runtime.NewFactory(fc, nil)
	m, err := NewMaintenance(MaintenanceConfig{Deps: runtime.Deps{Client: fc, Informers: f}, Resync: 20 * time.Millisecond, RetryAfter: 50 * time.Millisecond, Attempts: 2})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f.Start(ctx)
	go func() { _ = m.Run(ctx) }()
	waitN := func(n int) []v1alpha1.VirtualMachineOperation {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			ops := evictOps(t, fc)["a"]
			if len(ops) > n {
				t.Fatalf("%d Evict operations of a, want %d", len(ops), n)
			}
			if len(ops) == n {
				for _, op := range ops {
					if opActive(&op) {
						return ops
					}
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for Evict number %d of a: %v", n, ops)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	active := func(ops []v1alpha1.VirtualMachineOperation) string {
		for _, op := range ops {
			if opActive(&op) {
				return op.Name
			}
		}
		return ""
	}
	ops := waitN(1)
	finishOp(t, fc, active(ops), v1alpha1.VMOPPhaseFailed, v1alpha1.VMOPReasonOtherOperationInProgress, "a Stop is under way")
	ops = waitN(2)
	finishOp(t, fc, active(ops), v1alpha1.VMOPPhaseFailed, v1alpha1.VMOPReasonOperationFailed, "target QEMU died")
	ops = waitN(3)
	last := active(ops)
	finishOp(t, fc, last, v1alpha1.VMOPPhaseFailed, v1alpha1.VMOPReasonOperationFailed, "link down")
	var n v1alpha1.Node
	fc.WaitFor(t, 10*time.Second, "nodes", "", "h2", &n, func() bool {
		c := v1alpha1.FindCondition(n.Status.Conditions, v1alpha1.NodeConditionMaintenance)
		return c != nil && strings.Contains(c.Message, "p/a (cannot leave: operation "+last+" Failed (OperationFailed): link down (2 attempts))")
	})
	if got := len(evictOps(t, fc)["a"]); got != 3 {
		t.Fatalf("%d Evict operations of a after giving up, want 3", got)
	}
}
