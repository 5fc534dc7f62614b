package placement

import (
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

func TestMatchRequirement(t *testing.T) {
	req := func(op v1alpha1.SelectorOperator, vals ...string) v1alpha1.NodeSelectorRequirement {
		return v1alpha1.NodeSelectorRequirement{Key: "k", Operator: op, Values: vals}
	}
	cases := []struct {
		name string
		r    v1alpha1.NodeSelectorRequirement
		v    string
		has  bool
		want bool
	}{
		{"in", req(v1alpha1.SelectorOpIn, "a", "b"), "b", true, true},
		{"in unset", req(v1alpha1.SelectorOpIn, "a"), "", false, false},
		{"not in unset", req(v1alpha1.SelectorOpNotIn, "a"), "", false, true},
		{"not in", req(v1alpha1.SelectorOpNotIn, "a"), "a", true, false},
		{"exists", req(v1alpha1.SelectorOpExists), "", true, true},
		{"does not exist", req(v1alpha1.SelectorOpDoesNotExist), "x", true, false},
		{"gt", req(v1alpha1.SelectorOpGt, "4"), "5", true, true},
		{"gt equal", req(v1alpha1.SelectorOpGt, "5"), "5", true, false},
		{"lt", req(v1alpha1.SelectorOpLt, "5"), "4", true, true},
		{"gt not a number", req(v1alpha1.SelectorOpGt, "4"), "five", true, false},
		{"gt two values", req(v1alpha1.SelectorOpGt, "4", "6"), "5", true, false},
		{"unknown operator", req("Near", "a"), "a", true, false},
	}
	for _, tc := range cases {
		if got := MatchRequirement(tc.r, tc.v, tc.has); got != tc.want {
			t.Errorf("%s: MatchRequirement = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestAllocatable(t *testing.T) {
	n := &v1alpha1.Node{}
	if cpu, mem, phys, ratio := Allocatable(n); cpu != 0 || mem != 0 || phys != 0 || ratio != 0 {
		t.Fatalf("a node without capacity: %d %d %d %v", cpu, mem, phys, ratio)
	}
	n.Status.Capacity = &v1alpha1.NodeResources{CPU: 4, Memory: "8Gi"}
	cpu, mem, phys, ratio := Allocatable(n)
	if phys != 4 || ratio != v1alpha1.DefaultCPUAllocationRatio || cpu != int64(4*v1alpha1.DefaultCPUAllocationRatio) ||
		mem != int64(float64(8<<30)*v1alpha1.DefaultMemoryAllocationRatio) {
		t.Fatalf("defaults: cpu %d mem %d phys %d ratio %v", cpu, mem, phys, ratio)
	}
	n.Spec.AllocationRatios.CPU, n.Spec.AllocationRatios.Memory = 2, 1
	if cpu, mem, _, _ := Allocatable(n); cpu != 8 || mem != 8<<30 {
		t.Fatalf("ratios 2 and 1: cpu %d mem %d", cpu, mem)
	}
}

func TestTolerated(t *testing.T) {
	taint := v1alpha1.Taint{Key: "gpu", Value: "yes", Effect: v1alpha1.TaintEffectNoSchedule}
	if Tolerated(taint, nil) {
		t.Error("no tolerations tolerate a taint")
	}
	if !Tolerated(taint, []v1alpha1.Toleration{{Key: "gpu", Value: "yes"}}) {
		t.Error("an equal toleration without effect must tolerate")
	}
	if Tolerated(taint, []v1alpha1.Toleration{{Key: "gpu", Value: "yes", Effect: v1alpha1.TaintEffectNoExecute}}) {
		t.Error("a toleration of another effect must not tolerate")
	}
	if !Tolerated(taint, []v1alpha1.Toleration{{Operator: v1alpha1.TolerationOpExists}}) {
		t.Error("Exists without a key tolerates every taint")
	}
	n := &v1alpha1.Node{}
	n.Spec.Taints = []v1alpha1.Taint{{Key: "soft", Effect: v1alpha1.TaintEffectPreferNoSchedule}}
	if !ToleratesNode(n, nil) {
		t.Error("PreferNoSchedule taints never keep a VM off")
	}
}
