package scheduler

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/placement"
)

// Reasons a node does not fit a VM, as counted in the Scheduled condition's message.
const (
	whyNotReady       = "not ready"
	whyStale          = "not heartbeating"
	whyUnschedulable  = "unschedulable"
	whyMaintenance    = "in maintenance"
	whyTaint          = "with an untolerated taint"
	whySelector       = "not matching nodeSelector"
	whyAffinity       = "not matching node affinity"
	whyCPU            = "insufficient cpu"
	whyMemory         = "insufficient memory"
	whyNoCapacity     = "without reported capacity"
	whyDiskOnAnotherN = "not holding the VM's disks"
	whyClassSelector  = "not matching the class's nodeSelector"
	whyCPUFeatures    = "lacking the class's CPU features"
	whyDedicated      = "insufficient free cores for dedicated cores"
)

// nodeState is a node with what is allocated on it.
type nodeState struct {
	node     *v1alpha1.Node
	usedCPU  int64
	usedMem  int64
	allocCPU int64
	allocMem int64
	// physCPU is the host's cores (threads); usedDedicated the ones dedicated VMs hold.
	physCPU       int64
	usedDedicated int64
	cpuRatio      float64
}

// newNodeState computes allocatable = capacity × allocation ratio.
func newNodeState(n *v1alpha1.Node) *nodeState {
	s := &nodeState{node: n}
	s.allocCPU, s.allocMem, s.physCPU, s.cpuRatio = placement.Allocatable(n)
	return s
}

// vmRequest is what a VM needs of a node: virtual cores and memory. Scheduling counts whole
// cores whatever the core fraction: the fraction caps a VM's CPU time, and overcommit is
// what the node's cpu allocation ratio is for.
func vmRequest(vm *v1alpha1.VirtualMachine) (cpu, mem int64) {
	mem, _ = vm.Spec.Memory.Size.Value()
	return int64(vm.Spec.CPU.Cores), mem
}

// nodeCPURequest is the share of the node's virtual cores a VM takes: its cores, or for
// dedicated cores the virtual cores those physical cores stand for (cores × ratio), since a
// dedicated core is never shared.
func (n *nodeState) cpuRequest(r request) int64 {
	if r.dedicated && n.cpuRatio > 1 {
		return int64(float64(r.cores) * n.cpuRatio)
	}
	return r.cores
}

// take adds a VM bound to the node to what is used.
func (n *nodeState) take(vm *v1alpha1.VirtualMachine) {
	n.takeRequest(requestOf(vm))
}

// request is what a bound VM holds of its node.
type request struct {
	cores     int64
	mem       int64
	dedicated bool
}

func requestOf(vm *v1alpha1.VirtualMachine) request {
	cpu, mem := vmRequest(vm)
	return request{cores: cpu, mem: mem, dedicated: vm.Spec.CPU.DedicatedCores}
}

func (n *nodeState) takeRequest(r request) {
	var u usageSum
	u.add(r, 1)
	n.takeSum(u)
}

// usageSum is what the VMs bound to one node hold: shared cores, dedicated cores, memory.
type usageSum struct {
	shared, dedicated, mem int64
}

func (u *usageSum) add(r request, sign int64) {
	if r.dedicated {
		u.dedicated += sign * r.cores
	} else {
		u.shared += sign * r.cores
	}
	u.mem += sign * r.mem
}

// takeSum adds what bound VMs hold; a dedicated core stands for ratio virtual cores.
func (n *nodeState) takeSum(u usageSum) {
	ded := u.dedicated
	if n.cpuRatio > 1 {
		ded = int64(float64(u.dedicated) * n.cpuRatio)
	}
	n.usedCPU += u.shared + ded
	n.usedDedicated += u.dedicated
	n.usedMem += u.mem
}

// fits says why n cannot take vm ("" when it can). diskNode, when set, is the node that
// holds the VM's local disks.
func fits(vm *v1alpha1.VirtualMachine, class *v1alpha1.VirtualMachineClass, n *nodeState, now time.Time, staleAfter time.Duration, diskNode string) string {
	return fitsReq(vm, requestOf(vm), placement.ClassTolerations(vm, class), class, n, now, staleAfter, diskNode)
}

// fitsReq is fits with the VM's request and tolerations worked out once per placement.
func fitsReq(vm *v1alpha1.VirtualMachine, req request, tols []v1alpha1.Toleration, class *v1alpha1.VirtualMachineClass, n *nodeState, now time.Time, staleAfter time.Duration, diskNode string) string {
	node := n.node
	if node.Status.Phase != v1alpha1.NodePhaseReady {
		return whyNotReady
	}
	if hb := node.Status.LastHeartbeatTime; hb == nil || now.Sub(hb.Time) > staleAfter {
		return whyStale
	}
	if node.Spec.Maintenance {
		return whyMaintenance
	}
	if node.Spec.Unschedulable {
		return whyUnschedulable
	}
	if diskNode != "" && diskNode != node.Name {
		return whyDiskOnAnotherN
	}
	for _, t := range node.Spec.Taints {
		if t.Effect == v1alpha1.TaintEffectPreferNoSchedule {
			continue
		}
		if !placement.Tolerated(t, tols) {
			return whyTaint
		}
	}
	if class != nil {
		if !placement.MatchClassSelector(class.Spec.NodeSelector, node) {
			return whyClassSelector
		}
		if want := placement.ClassFeatures(class); len(want) > 0 && !placement.HasFeatures(node, want) {
			return whyCPUFeatures
		}
	}
	for k, v := range vm.Spec.NodeSelector {
		if node.Labels[k] != v {
			return whySelector
		}
	}
	if a := vm.Spec.Affinity; a != nil && a.NodeAffinity != nil && a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution != nil {
		terms := a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms
		ok := len(terms) == 0
		for _, t := range terms {
			if placement.MatchTerm(t, node) {
				ok = true
				break
			}
		}
		if !ok {
			return whyAffinity
		}
	}
	if node.Status.Capacity == nil {
		return whyNoCapacity
	}
	if req.dedicated && n.usedDedicated+req.cores > n.physCPU {
		return whyDedicated
	}
	if n.usedCPU+n.cpuRequest(req) > n.allocCPU {
		return whyCPU
	}
	mem := req.mem
	if n.usedMem+mem > n.allocMem {
		return whyMemory
	}
	return ""
}

// score ranks a fitting node: least allocated after placing the VM (the mean free share of
// cpu and memory, 0..100), plus preferred node affinity weights, minus a penalty for
// PreferNoSchedule taints not tolerated.
func score(vm *v1alpha1.VirtualMachine, req request, tols []v1alpha1.Toleration, n *nodeState) float64 {
	mem, cpu := req.mem, n.cpuRequest(req)
	free := func(used, req, alloc int64) float64 {
		if alloc <= 0 {
			return 0
		}
		return float64(alloc-used-req) / float64(alloc)
	}
	s := 50 * (free(n.usedCPU, cpu, n.allocCPU) + free(n.usedMem, mem, n.allocMem))
	if a := vm.Spec.Affinity; a != nil && a.NodeAffinity != nil {
		for _, p := range a.NodeAffinity.PreferredDuringSchedulingIgnoredDuringExecution {
			if placement.MatchTerm(p.Preference, n.node) {
				s += float64(p.Weight)
			}
		}
	}
	if vm.Status.StateNodeName == n.node.Name {
		// The node that keeps the VM's UEFI variables and TPM state: elsewhere the VM starts
		// with fresh ones (BitLocker then asks for its recovery key). Outweighs preferences
		// and PreferNoSchedule taints; a node that does not fit is still skipped.
		s += stateNodeWeight
	}
	for _, t := range n.node.Spec.Taints {
		if t.Effect == v1alpha1.TaintEffectPreferNoSchedule && !placement.Tolerated(t, tols) {
			s -= 100
		}
	}
	return s
}

// stateNodeWeight is the score a VM's state node (status.stateNodeName) gets on top.
const stateNodeWeight = 1000

// pick returns the best node for vm, or "" and the reason nothing fits.
func pick(vm *v1alpha1.VirtualMachine, class *v1alpha1.VirtualMachineClass, nodes []*nodeState, now time.Time, staleAfter time.Duration, diskNode string) (string, string) {
	if len(nodes) == 0 {
		return "", "0/0 nodes are available: no node is registered"
	}
	counts := map[string]int{}
	best, bestScore := "", 0.0
	req, tols := requestOf(vm), placement.ClassTolerations(vm, class)
	for _, n := range nodes {
		if why := fitsReq(vm, req, tols, class, n, now, staleAfter, diskNode); why != "" {
			counts[why]++
			continue
		}
		s := score(vm, req, tols, n)
		if best == "" || s > bestScore || (s == bestScore && n.node.Name < best) {
			best, bestScore = n.node.Name, s
		}
	}
	if best != "" {
		return best, ""
	}
	whys := make([]string, 0, len(counts))
	for w := range counts {
		whys = append(whys, w)
	}
	sort.Slice(whys, func(i, j int) bool {
		if counts[whys[i]] != counts[whys[j]] {
			return counts[whys[i]] > counts[whys[j]]
		}
		return whys[i] < whys[j]
	})
	parts := make([]string, len(whys))
	for i, w := range whys {
		parts[i] = fmt.Sprintf("%d %s", counts[w], w)
	}
	return "", fmt.Sprintf("0/%d nodes are available: %s", len(nodes), strings.Join(parts, ", "))
}

// pinnedWhy says why the node a VM's local disks pin it to cannot take it.
func pinnedWhy(vm *v1alpha1.VirtualMachine, class *v1alpha1.VirtualMachineClass, nodes []*nodeState, now time.Time, staleAfter time.Duration, pin diskPin) string {
	disks := strings.Join(pin.disks, ", ")
	for _, n := range nodes {
		if n.node.Name != pin.node {
			continue
		}
		why := fits(vm, class, n, now, staleAfter, pin.node)
		if why == "" {
			why = "it fits now"
		}
		return fmt.Sprintf("%s is on node %s's local storage, so the VM runs only there, and node %s cannot take it (%s)", disks, pin.node, pin.node, why)
	}
	return fmt.Sprintf("%s is on node %s's local storage, so the VM runs only there, and node %s is not registered", disks, pin.node, pin.node)
}
