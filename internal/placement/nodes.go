// Package placement holds what decides where a VM may run and what it may be: node
// selection (class and VM node selectors, affinity terms, taints and tolerations, CPU
// features, allocatable capacity), the sizing policies of classes, and project quota usage.
// The scheduler, the class controller and API admission all decide with these functions, so
// they cannot disagree.
package placement

import (
	"sort"
	"strconv"

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
		if !MatchRequirement(r, v, has) {
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
		if !MatchRequirement(v1alpha1.NodeSelectorRequirement{Key: r.Key, Operator: r.Operator, Values: r.Values}, v, has) {
			return false
		}
	}
	return true
}

// ToleratesNode says whether the tolerations let a VM onto the node (PreferNoSchedule taints
// never keep a VM off).
func ToleratesNode(node *v1alpha1.Node, tols []v1alpha1.Toleration) bool {
	for _, t := range node.Spec.Taints {
		if t.Effect != v1alpha1.TaintEffectPreferNoSchedule && !Tolerated(t, tols) {
			return false
		}
	}
	return true
}

// NodeAllocatable is capacity × allocation ratio of a node (cpu in virtual cores, memory in
// bytes) and its physical cores, which bound dedicated cores.
func NodeAllocatable(n *v1alpha1.Node) (cpu, mem, physical int64) {
	cpu, mem, physical, _ = Allocatable(n)
	return cpu, mem, physical
}

// Allocatable is NodeAllocatable with the node's cpu allocation ratio (the default where the
// node sets none); all zero for a node that has not reported its capacity.
func Allocatable(n *v1alpha1.Node) (cpu, mem, physical int64, cpuRatio float64) {
	c := n.Status.Capacity
	if c == nil {
		return 0, 0, 0, 0
	}
	cr, mr := n.Spec.AllocationRatios.CPU, n.Spec.AllocationRatios.Memory
	if cr <= 0 {
		cr = v1alpha1.DefaultCPUAllocationRatio
	}
	if mr <= 0 {
		mr = v1alpha1.DefaultMemoryAllocationRatio
	}
	cpu = int64(float64(c.CPU) * cr)
	if m, err := c.Memory.Value(); err == nil {
		mem = int64(float64(m) * mr)
	}
	return cpu, mem, c.CPU, cr
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

// ClassTolerations merges the class's tolerations with the VM's (the VM's first).
func ClassTolerations(vm *v1alpha1.VirtualMachine, c *v1alpha1.VirtualMachineClass) []v1alpha1.Toleration {
	if c == nil || len(c.Spec.Tolerations) == 0 {
		return vm.Spec.Tolerations
	}
	return append(append([]v1alpha1.Toleration(nil), vm.Spec.Tolerations...), c.Spec.Tolerations...)
}

// Tolerated says whether one of the tolerations matches the taint.
func Tolerated(t v1alpha1.Taint, tols []v1alpha1.Toleration) bool {
	for _, tol := range tols {
		if tol.Effect != "" && tol.Effect != t.Effect {
			continue
		}
		switch tol.Operator {
		case v1alpha1.TolerationOpExists:
			if tol.Key == "" || tol.Key == t.Key {
				return true
			}
		default:
			if tol.Key == t.Key && tol.Value == t.Value {
				return true
			}
		}
	}
	return false
}

// MatchTerm evaluates a node selector term (all requirements ANDed).
func MatchTerm(t v1alpha1.NodeSelectorTerm, node *v1alpha1.Node) bool {
	for _, r := range t.MatchExpressions {
		v, has := node.Labels[r.Key]
		if !MatchRequirement(r, v, has) {
			return false
		}
	}
	for _, r := range t.MatchFields {
		if r.Key != "metadata.name" || !MatchRequirement(r, node.Name, true) {
			return false
		}
	}
	return true
}

// MatchRequirement evaluates one requirement on a label's value v (has: the label is set).
func MatchRequirement(r v1alpha1.NodeSelectorRequirement, v string, has bool) bool {
	in := func() bool {
		for _, x := range r.Values {
			if x == v {
				return true
			}
		}
		return false
	}
	switch r.Operator {
	case v1alpha1.SelectorOpIn:
		return has && in()
	case v1alpha1.SelectorOpNotIn:
		return !has || !in()
	case v1alpha1.SelectorOpExists:
		return has
	case v1alpha1.SelectorOpDoesNotExist:
		return !has
	case v1alpha1.SelectorOpGt, v1alpha1.SelectorOpLt:
		if !has || len(r.Values) != 1 {
			return false
		}
		a, err1 := strconv.ParseInt(v, 10, 64)
		b, err2 := strconv.ParseInt(r.Values[0], 10, 64)
		if err1 != nil || err2 != nil {
			return false
		}
		if r.Operator == v1alpha1.SelectorOpGt {
			return a > b
		}
		return a < b
	}
	return false
}

// ClassFeatures are the CPU features a node needs for the class's CPU: the listed ones for
// type Features, the discovered common ones for Discovery.
func ClassFeatures(c *v1alpha1.VirtualMachineClass) []string {
	switch c.Spec.CPU.Type {
	case v1alpha1.CPUTypeFeatures:
		return c.Spec.CPU.Features
	case v1alpha1.CPUTypeDiscovery:
		if c.Status.CPUFeatures != nil {
			return c.Status.CPUFeatures.Enabled
		}
	}
	return nil
}
