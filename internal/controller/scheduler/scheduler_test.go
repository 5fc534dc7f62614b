package scheduler

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/runtime/fake"
)

func readyNode(name string, cpu int64) *v1alpha1.Node {
	hb := v1alpha1.Now()
	n := &v1alpha1.Node{ObjectMeta: v1alpha1.ObjectMeta{Name: name}}
	n.Status.Phase = v1alpha1.NodePhaseReady
	n.Status.LastHeartbeatTime = &hb
	n.Status.Capacity = &v1alpha1.NodeResources{CPU: cpu, Memory: "8Gi"}
	n.Status.Conditions = []v1alpha1.Condition{{Type: v1alpha1.NodeConditionReady, Status: v1alpha1.ConditionTrue}}
	return n
}

func pendingVM(name string, cores int) *v1alpha1.VirtualMachine {
	vm := &v1alpha1.VirtualMachine{ObjectMeta: v1alpha1.ObjectMeta{Name: name, Namespace: "p1",
		Finalizers: []string{v1alpha1.VMCleanupFinalizer}}}
	vm.Spec.CPU.Cores = cores
	vm.Spec.Memory.Size = "1Gi"
	vm.Status.PowerRequest = &v1alpha1.VMPowerRequest{State: v1alpha1.PowerStateRunning}
	vm.Status.Conditions = []v1alpha1.Condition{{Type: v1alpha1.VMConditionBlockDevicesReady, Status: v1alpha1.ConditionTrue}}
	return vm
}

// TestRunsAgainstFake binds a VM that fits through the fake's binding subresource, and marks
// one that fits nowhere Unschedulable.
func TestRunsAgainstFake(t *testing.T) {
	fc := fake.New()
	if err := fc.Add(readyNode("n1", 4), pendingVM("small", 2), pendingVM("huge", 64)); err != nil {
		t.Fatal(err)
	}
	runScheduler(t, fc)
	var vm v1alpha1.VirtualMachine
	fc.WaitFor(t, 10*time.Second, "virtualmachines", "p1", "small", &vm, func() bool { return vm.Status.NodeName == "n1" })
	if c := v1alpha1.FindCondition(vm.Status.Conditions, ConditionScheduled); c == nil || c.Status != v1alpha1.ConditionTrue {
		t.Errorf("Scheduled %+v", c)
	}
	fc.WaitFor(t, 10*time.Second, "virtualmachines", "p1", "huge", &vm, func() bool {
		c := v1alpha1.FindCondition(vm.Status.Conditions, ConditionScheduled)
		return c != nil && c.Reason == ReasonUnschedulable
	})
	if vm.Status.NodeName != "" {
		t.Errorf("a VM of 64 cores was bound to a node of 4")
	}
	binds := 0
	for _, a := range fc.Actions() {
		if a.Verb == "bind" {
			binds++
		}
	}
	if binds != 1 {
		t.Errorf("%d bindings, want 1", binds)
	}
}

func diskOn(name, class, node string) *v1alpha1.VirtualDisk {
	d := &v1alpha1.VirtualDisk{ObjectMeta: v1alpha1.ObjectMeta{Name: name, Namespace: "p1"}}
	d.Status.Phase = v1alpha1.DiskPhaseReady
	d.Status.StorageClassName, d.Status.NodeName = class, node
	return d
}

func withDisks(vm *v1alpha1.VirtualMachine, disks ...string) *v1alpha1.VirtualMachine {
	for _, d := range disks {
		vm.Spec.BlockDeviceRefs = append(vm.Spec.BlockDeviceRefs, v1alpha1.BlockDeviceSpecRef{Kind: v1alpha1.BlockDeviceKindVirtualDisk, Name: d})
	}
	return vm
}

// TestLocalDisksPinVMs: a VM whose disk is on a node's Local storage is bound to that node
// even when another has more room; a VM whose disks are on two nodes, or whose disk's node
// cannot take it, stays unbound with a Scheduled condition naming the disks and nodes; a VM
// whose disk is on Shared storage goes to the least loaded node.
func TestLocalDisksPinVMs(t *testing.T) {
	fc := fake.New()
	cordoned := readyNode("n3", 64)
	cordoned.Spec.Unschedulable = true
	if err := fc.Add(readyNode("n1", 2), readyNode("n2", 64), cordoned,
		diskOn("d1", "local", "n1"), diskOn("d2", "local", "n2"), diskOn("d3", "local", "n3"), diskOn("sh", "nfs", ""),
		withDisks(pendingVM("pinned", 1), "d1", "sh"), withDisks(pendingVM("split", 1), "d1", "d2"),
		withDisks(pendingVM("oncordoned", 1), "d3"), withDisks(pendingVM("shared", 1), "sh")); err != nil {
		t.Fatal(err)
	}
	runScheduler(t, fc)
	if n := waitBound(t, fc, "pinned"); n != "n1" {
		t.Errorf("the VM with a disk on n1 was bound to %s", n)
	}
	if n := waitBound(t, fc, "shared"); n != "n2" {
		t.Errorf("the VM with a Shared disk was bound to %s, want the roomiest node n2", n)
	}
	var vm v1alpha1.VirtualMachine
	unschedulable := func(name string, want ...string) {
		t.Helper()
		fc.WaitFor(t, 10*time.Second, "virtualmachines", "p1", name, &vm, func() bool {
			c := v1alpha1.FindCondition(vm.Status.Conditions, ConditionScheduled)
			return c != nil && c.Reason == ReasonUnschedulable
		})
		if vm.Status.NodeName != "" {
			t.Errorf("%s was bound to %s", name, vm.Status.NodeName)
		}
		msg := v1alpha1.FindCondition(vm.Status.Conditions, ConditionScheduled).Message
		for _, w := range want {
			if !strings.Contains(msg, w) {
				t.Errorf("%s: Scheduled message %q lacks %q", name, msg, w)
			}
		}
	}
	unschedulable("split", `VirtualDisk "d1" (StorageClass "local") on node n1`, `VirtualDisk "d2" (StorageClass "local") on node n2`, "different nodes")
	unschedulable("oncordoned", `VirtualDisk "d3" (StorageClass "local") is on node n3's local storage`, "node n3 cannot take it (unschedulable)")
}

// TestHibernatedVMResumesWhereSaved: a hibernated VM is bound to the node that holds its saved
// RAM (status.stateNodeName), not the roomiest one; while that node is gone it is not bound
// at all, but a forced start (a boot from the disks) goes elsewhere; a saved state and a local
// disk on different nodes are named.
func TestHibernatedVMResumesWhereSaved(t *testing.T) {
	hibernated := func(name, node string) *v1alpha1.VirtualMachine {
		vm := pendingVM(name, 1)
		vm.Status.StateNodeName = node
		vm.Status.Conditions = append(vm.Status.Conditions, v1alpha1.Condition{Type: v1alpha1.VMConditionHibernated, Status: v1alpha1.ConditionTrue, Reason: "Saved"})
		return vm
	}
	forced := hibernated("forced", "gone")
	forced.Status.PowerRequest.Force = true
	fc := fake.New()
	if err := fc.Add(readyNode("n1", 2), readyNode("n2", 64), diskOn("d2", "local", "n2"),
		hibernated("resumes", "n1"), hibernated("stuck", "gone"), forced, withDisks(hibernated("split", "n1"), "d2")); err != nil {
		t.Fatal(err)
	}
	runScheduler(t, fc)
	if n := waitBound(t, fc, "resumes"); n != "n1" {
		t.Errorf("the hibernated VM was bound to %s, not to n1 where its RAM is saved", n)
	}
	waitBound(t, fc, "forced")
	var vm v1alpha1.VirtualMachine
	for name, want := range map[string]string{"stuck": "the saved RAM state of the hibernated VM is on node gone's local storage, so the VM runs only there, and node gone is not registered",
		"split": "the saved RAM state of the hibernated VM on node n1"} {
		fc.WaitFor(t, 10*time.Second, "virtualmachines", "p1", name, &vm, func() bool {
			c := v1alpha1.FindCondition(vm.Status.Conditions, ConditionScheduled)
			return c != nil && c.Reason == ReasonUnschedulable
		})
		if c := v1alpha1.FindCondition(vm.Status.Conditions, ConditionScheduled); !strings.Contains(c.Message, want) || vm.Status.NodeName != "" {
			t.Errorf("%s: Scheduled: %s (bound to %q)", name, c.Message, vm.Status.NodeName)
		}
	}
}

// waitBound waits until the VM p1/name has a node, and returns the node.
func waitBound(t *testing.T, fc *fake.Client, name string) string {
	t.Helper()
	var vm v1alpha1.VirtualMachine
	fc.WaitFor(t, 10*time.Second, "virtualmachines", "p1", name, &vm, func() bool { return vm.Status.NodeName != "" })
	return vm.Status.NodeName
}

// runScheduler runs a scheduler on fc until the test ends.
func runScheduler(t *testing.T, fc *fake.Client) {
	t.Helper()
	s, err := New(Config{Deps: runtime.Deps{Client: fc, Log: fake.Logger(t, slog.LevelInfo)}, RetryInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() { _ = s.Run(ctx) }()
}
