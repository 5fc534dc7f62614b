package scheduler

import (
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

var now = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func node(name string, cpu int64, mem string, mod ...func(*v1alpha1.Node)) *nodeState {
	hb := v1alpha1.NewTime(now.Add(-5 * time.Second))
	n := &v1alpha1.Node{ObjectMeta: v1alpha1.ObjectMeta{Name: name, Labels: map[string]string{}},
		Status: v1alpha1.NodeStatus{Phase: v1alpha1.NodePhaseReady, LastHeartbeatTime: &hb,
			Capacity: &v1alpha1.NodeResources{CPU: cpu, Memory: v1alpha1.Quantity(mem)}}}
	for _, m := range mod {
		m(n)
	}
	return newNodeState(n)
}

func vmOf(cores int, mem string, mod ...func(*v1alpha1.VirtualMachine)) *v1alpha1.VirtualMachine {
	vm := &v1alpha1.VirtualMachine{ObjectMeta: v1alpha1.ObjectMeta{Name: "vm", Namespace: "p"},
		Spec: v1alpha1.VirtualMachineSpec{CPU: v1alpha1.VirtualMachineCPU{Cores: cores}, Memory: v1alpha1.VirtualMachineMemory{Size: v1alpha1.Quantity(mem)}}}
	for _, m := range mod {
		m(vm)
	}
	return vm
}

func TestAllocatable(t *testing.T) {
	n := node("a", 4, "8Gi")
	if n.allocCPU != 16 || n.allocMem != 8<<30 {
		t.Fatalf("default ratios: cpu %d mem %d", n.allocCPU, n.allocMem)
	}
	n = node("a", 4, "8Gi", func(n *v1alpha1.Node) { n.Spec.AllocationRatios = v1alpha1.AllocationRatios{CPU: 1, Memory: 1.5} })
	if n.allocCPU != 4 || n.allocMem != 12<<30 {
		t.Fatalf("ratios 1/1.5: cpu %d mem %d", n.allocCPU, n.allocMem)
	}
}

func TestFits(t *testing.T) {
	cases := []struct {
		name string
		vm   *v1alpha1.VirtualMachine
		n    *nodeState
		why  string
	}{
		{"fits", vmOf(2, "1Gi"), node("a", 2, "4Gi"), ""},
		{"cpu overcommit within ratio", vmOf(8, "1Gi"), node("a", 2, "4Gi"), ""},
		{"too many cores", vmOf(9, "1Gi"), node("a", 2, "4Gi"), whyCPU},
		{"too much memory", vmOf(1, "5Gi"), node("a", 2, "4Gi"), whyMemory},
		{"not ready", vmOf(1, "1Gi"), node("a", 2, "4Gi", func(n *v1alpha1.Node) { n.Status.Phase = v1alpha1.NodePhaseNotReady }), whyNotReady},
		{"stale", vmOf(1, "1Gi"), node("a", 2, "4Gi", func(n *v1alpha1.Node) { hb := v1alpha1.NewTime(now.Add(-time.Hour)); n.Status.LastHeartbeatTime = &hb }), whyStale},
		{"unschedulable", vmOf(1, "1Gi"), node("a", 2, "4Gi", func(n *v1alpha1.Node) { n.Spec.Unschedulable = true }), whyUnschedulable},
		{"taint", vmOf(1, "1Gi"), node("a", 2, "4Gi", func(n *v1alpha1.Node) {
			n.Spec.Taints = []v1alpha1.Taint{{Key: "gpu", Value: "yes", Effect: v1alpha1.TaintEffectNoSchedule}}
		}), whyTaint},
		{"taint tolerated", vmOf(1, "1Gi", func(v *v1alpha1.VirtualMachine) {
			v.Spec.Tolerations = []v1alpha1.Toleration{{Key: "gpu", Value: "yes"}}
		}), node("a", 2, "4Gi", func(n *v1alpha1.Node) {
			n.Spec.Taints = []v1alpha1.Taint{{Key: "gpu", Value: "yes", Effect: v1alpha1.TaintEffectNoSchedule}}
		}), ""},
		{"taint tolerated by Exists", vmOf(1, "1Gi", func(v *v1alpha1.VirtualMachine) {
			v.Spec.Tolerations = []v1alpha1.Toleration{{Operator: v1alpha1.TolerationOpExists}}
		}), node("a", 2, "4Gi", func(n *v1alpha1.Node) {
			n.Spec.Taints = []v1alpha1.Taint{{Key: "x", Effect: v1alpha1.TaintEffectNoExecute}}
		}), ""},
		{"prefer-no-schedule never blocks", vmOf(1, "1Gi"), node("a", 2, "4Gi", func(n *v1alpha1.Node) {
			n.Spec.Taints = []v1alpha1.Taint{{Key: "x", Effect: v1alpha1.TaintEffectPreferNoSchedule}}
		}), ""},
		{"selector", vmOf(1, "1Gi", func(v *v1alpha1.VirtualMachine) { v.Spec.NodeSelector = map[string]string{"zone": "b"} }),
			node("a", 2, "4Gi", func(n *v1alpha1.Node) { n.Labels["zone"] = "a" }), whySelector},
		{"affinity", vmOf(1, "1Gi", func(v *v1alpha1.VirtualMachine) {
			v.Spec.Affinity = &v1alpha1.VMAffinity{NodeAffinity: &v1alpha1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &v1alpha1.NodeSelectorTerms{
				NodeSelectorTerms: []v1alpha1.NodeSelectorTerm{{MatchExpressions: []v1alpha1.NodeSelectorRequirement{{Key: "cores", Operator: v1alpha1.SelectorOpGt, Values: []string{"8"}}}}}}}}
		}), node("a", 2, "4Gi", func(n *v1alpha1.Node) { n.Labels["cores"] = "4" }), whyAffinity},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := fits(c.vm, nil, c.n, now, 40*time.Second, ""); got != c.why {
				t.Fatalf("fits = %q, want %q", got, c.why)
			}
		})
	}
}

func TestUsedCounts(t *testing.T) {
	n := node("a", 1, "2Gi")
	n.usedCPU, n.usedMem = 3, 1<<30
	if why := fits(vmOf(1, "1Gi"), nil, n, now, time.Minute, ""); why != "" {
		t.Fatalf("exact fit refused: %s", why)
	}
	if why := fits(vmOf(2, "512Mi"), nil, n, now, time.Minute, ""); why != whyCPU {
		t.Fatalf("cpu over allocatable: %q", why)
	}
}

func TestPickLeastAllocated(t *testing.T) {
	busy := node("a", 4, "8Gi")
	busy.usedCPU, busy.usedMem = 8, 6<<30
	idle := node("b", 4, "8Gi")
	small := node("c", 1, "1Gi")
	got, why := pick(vmOf(1, "512Mi"), nil, []*nodeState{busy, idle, small}, now, time.Minute, "")
	if got != "b" {
		t.Fatalf("picked %q (%s), want the least allocated b", got, why)
	}
	// Equal scores: the name decides, so the choice is stable.
	got, _ = pick(vmOf(1, "512Mi"), nil, []*nodeState{node("y", 2, "2Gi"), node("x", 2, "2Gi")}, now, time.Minute, "")
	if got != "x" {
		t.Fatalf("tie broken to %q", got)
	}
	// Local disks pin the VM to their node.
	got, _ = pick(vmOf(1, "512Mi"), nil, []*nodeState{busy, idle}, now, time.Minute, "a")
	if got != "a" {
		t.Fatalf("disk node ignored: %q", got)
	}
}

// A stopped VM goes back to the node that keeps its UEFI variables and TPM state, even a busier
// one with a PreferNoSchedule taint; when that node cannot take it, it goes elsewhere.
func TestPickStateNode(t *testing.T) {
	busy := node("a", 4, "8Gi", func(n *v1alpha1.Node) {
		n.Spec.Taints = []v1alpha1.Taint{{Key: "x", Effect: v1alpha1.TaintEffectPreferNoSchedule}}
	})
	busy.usedCPU, busy.usedMem = 8, 6<<30
	idle := node("b", 4, "8Gi")
	held := func(v *v1alpha1.VirtualMachine) { v.Status.StateNodeName = "a" }
	if got, why := pick(vmOf(1, "512Mi", held), nil, []*nodeState{busy, idle}, now, time.Minute, ""); got != "a" {
		t.Fatalf("picked %q (%s), want the state node a", got, why)
	}
	if got, _ := pick(vmOf(1, "512Mi"), nil, []*nodeState{busy, idle}, now, time.Minute, ""); got != "b" {
		t.Fatalf("without a state node picked %q, want b", got)
	}
	busy.node.Spec.Unschedulable = true
	if got, why := pick(vmOf(1, "512Mi", held), nil, []*nodeState{busy, idle}, now, time.Minute, ""); got != "b" {
		t.Fatalf("state node cordoned: picked %q (%s), want b", got, why)
	}
}

func TestWhyNot(t *testing.T) {
	nodes := []*nodeState{
		node("a", 2, "1Gi"), node("b", 2, "1Gi"),
		node("c", 64, "64Gi", func(n *v1alpha1.Node) { n.Labels["zone"] = "z2" }),
	}
	vm := vmOf(1, "4Gi", func(v *v1alpha1.VirtualMachine) { v.Spec.NodeSelector = map[string]string{"zone": "z1"} })
	got, why := pick(vm, nil, nodes, now, time.Minute, "")
	if got != "" {
		t.Fatalf("picked %s", got)
	}
	// a and b lack the label too, so all three fail on the selector before resources.
	if why != "0/3 nodes are available: 3 not matching nodeSelector" {
		t.Fatalf("why = %q", why)
	}
	nodes[0].node.Labels["zone"], nodes[1].node.Labels["zone"] = "z1", "z1"
	_, why = pick(vm, nil, nodes, now, time.Minute, "")
	if why != "0/3 nodes are available: 2 insufficient memory, 1 not matching nodeSelector" {
		t.Fatalf("why = %q", why)
	}
	if _, why := pick(vm, nil, nil, now, time.Minute, ""); !strings.Contains(why, "no node is registered") {
		t.Fatalf("no nodes: %q", why)
	}
}

func TestWantsNode(t *testing.T) {
	ready := []v1alpha1.Condition{{Type: v1alpha1.VMConditionBlockDevicesReady, Status: "True"}}
	vm := vmOf(1, "1Gi")
	vm.Status.Conditions = ready
	vm.Status.PowerRequest = &v1alpha1.VMPowerRequest{State: v1alpha1.PowerStateRunning}
	if ok, _ := wantsNode(vm); ok {
		t.Fatal("a VM without the VM controller's cleanup finalizer is placed")
	}
	vm.Finalizers = []string{v1alpha1.VMCleanupFinalizer}
	if ok, _ := wantsNode(vm); !ok {
		t.Fatal("a VM to run is not placed")
	}
	vm.Status.PowerRequest.State = v1alpha1.PowerStateStopped
	if ok, _ := wantsNode(vm); ok {
		t.Fatal("a stopped VM is placed")
	}
	vm.Status.PowerRequest.State = v1alpha1.PowerStatePaused
	vm.Status.Conditions = nil
	if ok, _ := wantsNode(vm); ok {
		t.Fatal("a VM without ready block devices is placed")
	}
	vm.Status.Conditions = ready
	vm.Status.NodeName = "a"
	if ok, _ := wantsNode(vm); ok {
		t.Fatal("a bound VM is placed again")
	}
}
