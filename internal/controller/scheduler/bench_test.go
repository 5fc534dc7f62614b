package scheduler

import (
	"fmt"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// benchCluster builds a scheduler whose caches hold nodes fake Node objects (Ready, fresh
// heartbeat, 64 cores, 256 GiB; one in ten labelled for another group, one in twenty tainted)
// and returns it with vms VMs of a class that selects the worker group and tolerates the
// taint. Every third VM has 2 cores, every fifth dedicated cores.
func benchCluster(nodes, vms int, now time.Time) (*Scheduler, []*v1alpha1.VirtualMachine, *v1alpha1.VirtualMachineClass) {
	s := &Scheduler{assumed: map[runtime.Key]assumption{}, nodeCache: map[string]*nodeState{},
		bound: map[runtime.Key]boundVM{}, usage: map[string]*usageSum{}, pending: map[runtime.Key]bool{}}
	hb := v1alpha1.NewTime(now)
	for i := 0; i < nodes; i++ {
		group := "worker"
		if i%10 == 9 {
			group = "system"
		}
		n := &v1alpha1.Node{ObjectMeta: v1alpha1.ObjectMeta{Name: fmt.Sprintf("node-%04d", i),
			Labels: map[string]string{"node.deckhouse.io/group": group, "kubernetes.io/hostname": fmt.Sprintf("node-%04d", i)}}}
		if i%20 == 3 {
			n.Spec.Taints = []v1alpha1.Taint{{Key: "dedicated", Value: "db", Effect: v1alpha1.TaintEffectNoSchedule}}
		}
		n.Status.Phase = v1alpha1.NodePhaseReady
		n.Status.LastHeartbeatTime = &hb
		n.Status.Capacity = &v1alpha1.NodeResources{CPU: 64, Memory: "256Gi"}
		s.nodeCache[n.Name] = newNodeState(n)
	}
	class := &v1alpha1.VirtualMachineClass{ObjectMeta: v1alpha1.ObjectMeta{Name: "workers"},
		Spec: v1alpha1.VirtualMachineClassSpec{
			CPU: v1alpha1.VirtualMachineClassCPU{Type: v1alpha1.CPUTypeModel, Model: "Nehalem"},
			NodeSelector: &v1alpha1.VirtualMachineClassNodeSelector{MatchExpressions: []v1alpha1.NodeSelectorRequirement{
				{Key: "node.deckhouse.io/group", Operator: v1alpha1.SelectorOpIn, Values: []string{"worker"}}}},
			Tolerations: []v1alpha1.Toleration{{Key: "dedicated", Operator: v1alpha1.TolerationOpEqual, Value: "db", Effect: v1alpha1.TaintEffectNoSchedule}},
		}}
	out := make([]*v1alpha1.VirtualMachine, vms)
	for i := range out {
		vm := &v1alpha1.VirtualMachine{ObjectMeta: v1alpha1.ObjectMeta{Namespace: "bench", Name: fmt.Sprintf("vm-%05d", i), UID: fmt.Sprint(i)}}
		vm.Spec.VirtualMachineClassName = class.Name
		vm.Spec.RunPolicy = v1alpha1.RunPolicyAlwaysOff
		vm.Spec.CPU = v1alpha1.VirtualMachineCPU{Cores: 1 + i%3/2, CoreFraction: "50%", DedicatedCores: i%5 == 0}
		vm.Spec.Memory.Size = "2Gi"
		out[i] = vm
	}
	return s, out, class
}

// placeAll places every VM in turn (a dry run: the binding goes to the caches, not the API)
// and returns how many found a node.
func placeAll(s *Scheduler, vms []*v1alpha1.VirtualMachine, class *v1alpha1.VirtualMachineClass, now time.Time) int {
	placed := 0
	for _, vm := range vms {
		node, _ := pick(vm, class, s.nodeStates(), now, time.Minute, "")
		if node == "" {
			continue
		}
		placed++
		b := *vm
		b.Status.NodeName = node
		s.mu.Lock()
		s.setBoundLocked(runtime.KeyOf(vm), &b)
		s.mu.Unlock()
	}
	return placed
}

// BenchmarkSchedulerPlacement measures placements per second with 1,000 nodes and 10,000
// VMs: each placement is what the scheduler does per VM (node states from the caches, every
// node's fit and score, the binding recorded), without the API round trip of the binding.
func BenchmarkSchedulerPlacement(b *testing.B) {
	now := time.Now()
	var total int
	var elapsed time.Duration
	for i := 0; i < b.N; i++ {
		s, vms, class := benchCluster(benchNodes, benchVMs, now)
		start := time.Now()
		placed := placeAll(s, vms, class, now)
		elapsed += time.Since(start)
		if placed != len(vms) {
			b.Fatalf("placed %d of %d VMs", placed, len(vms))
		}
		total += placed
	}
	b.ReportMetric(float64(total)/elapsed.Seconds(), "placements/s")
}

// TestPlacementSpreadsAndHonoursClass: the dry-run placement used by the benchmark puts
// every VM on a worker node, keeps dedicated cores within physical cores, and spreads load.
func TestPlacementSpreadsAndHonoursClass(t *testing.T) {
	now := time.Now()
	s, vms, class := benchCluster(20, 400, now)
	if placed := placeAll(s, vms, class, now); placed != 400 {
		t.Fatalf("placed %d of 400", placed)
	}
	perNode := map[string]int{}
	for k, b := range s.bound {
		if b.node == "" {
			t.Fatalf("%s has no node", k)
		}
		if n := s.nodeCache[b.node].node; n.Labels["node.deckhouse.io/group"] != "worker" {
			t.Fatalf("%s placed on %s of group %s", k, b.node, n.Labels["node.deckhouse.io/group"])
		}
		perNode[b.node]++
	}
	for _, st := range s.nodeStates() {
		if st.usedDedicated > st.physCPU {
			t.Errorf("%s: %d dedicated cores on %d physical", st.node.Name, st.usedDedicated, st.physCPU)
		}
		if st.usedCPU > st.allocCPU || st.usedMem > st.allocMem {
			t.Errorf("%s overcommitted beyond its ratios: cpu %d/%d mem %d/%d", st.node.Name, st.usedCPU, st.allocCPU, st.usedMem, st.allocMem)
		}
	}
	if len(perNode) != 18 {
		t.Errorf("VMs on %d nodes, want all 18 worker nodes used", len(perNode))
	}
}

// The benchmark's cluster size.
var benchNodes, benchVMs = 1000, 10000
