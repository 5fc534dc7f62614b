package scheduler

import (
	"sort"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// MatchClassSelector says whether node matches a class's nodeSelector (matchLabels and
// matchExpressions, all ANDed); a nil selector matches every node.
func MatchClassSelector(sel *v1alpha1.VirtualMachineClassNodeSelector, node *v1alpha1.Node) bool {
	if sel == nil {
		return true
	}
	for k, v := range sel.MatchLabels {
		if got, ok := node.Labels[k]; !ok || got != v {
			return false
		}
	}
	for _, r := range sel.MatchExpressions {
		v, has := node.Labels[r.Key]
		if !matchReq(r, v, has) {
			return false
		}
	}
	return true
}

// MatchLabelSelector evaluates a label selector (In, NotIn, Exists, DoesNotExist) on node
// labels; an empty selector matches every node.
func MatchLabelSelector(sel v1alpha1.LabelSelector, node *v1alpha1.Node) bool {
	for k, v := range sel.MatchLabels {
		if got, ok := node.Labels[k]; !ok || got != v {
			return false
		}
	}
	for _, r := range sel.MatchExpressions {
		v, has := node.Labels[r.Key]
		if !matchReq(v1alpha1.NodeSelectorRequirement{Key: r.Key, Operator: r.Operator, Values: r.Values}, v, has) {
			return false
		}
	}
	return true
}

// ToleratesNode says whether the tolerations let a VM onto the node (PreferNoSchedule taints
// never keep a VM off).
func ToleratesNode(node *v1alpha1.Node, tols []v1alpha1.Toleration) bool {
	for _, t := range node.Spec.Taints {
		if t.Effect != v1alpha1.TaintEffectPreferNoSchedule && !tolerated(t, tols) {
			return false
		}
	}
	return true
}

// NodeAllocatable is capacity × allocation ratio of a node (cpu in virtual cores, memory in
// bytes) and its physical cores, which bound dedicated cores.
func NodeAllocatable(n *v1alpha1.Node) (cpu, mem, physical int64) {
	s := newNodeState(n)
	return s.allocCPU, s.allocMem, s.physCPU
}

// HasFeatures says whether the node reports every CPU feature in want.
func HasFeatures(node *v1alpha1.Node, want []string) bool {
	have := node.Status.CPUFeatures
	for _, f := range want {
		i := sort.SearchStrings(have, f)
		if i >= len(have) || have[i] != f {
			// The list is sorted by the agent; fall back to a scan when it is not.
			found := false
			for _, h := range have {
				if h == f {
					found = true
					break
				}
			}
			if !found {
				return false
			}
		}
	}
	return true
}

// classTolerations merges the class's tolerations with the VM's (the VM's first).
func classTolerations(vm *v1alpha1.VirtualMachine, c *v1alpha1.VirtualMachineClass) []v1alpha1.Toleration {
	if c == nil || len(c.Spec.Tolerations) == 0 {
		return vm.Spec.Tolerations
	}
	return append(append([]v1alpha1.Toleration(nil), vm.Spec.Tolerations...), c.Spec.Tolerations...)
}
