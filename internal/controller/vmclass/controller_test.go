package vmclass

import (
	"reflect"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

func testNode(name string, labels map[string]string, feats []string, now time.Time) v1alpha1.Node {
	hb := v1alpha1.NewTime(now)
	n := v1alpha1.Node{ObjectMeta: v1alpha1.ObjectMeta{Name: name, Labels: labels}}
	n.Status.Phase = v1alpha1.NodePhaseReady
	n.Status.LastHeartbeatTime = &hb
	n.Status.Capacity = &v1alpha1.NodeResources{CPU: 4, Memory: "8Gi"}
	n.Status.CPUFeatures = feats
	return n
}

func TestClassStatusDiscovery(t *testing.T) {
	now := time.Now()
	nodes := []v1alpha1.Node{
		testNode("cp", map[string]string{"node-role.kubernetes.io/control-plane": "", "group": "worker"}, []string{"aes", "sse4.2"}, now),
		testNode("w1", map[string]string{"group": "worker"}, []string{"aes", "avx", "sse4.2"}, now),
		testNode("w2", map[string]string{"group": "worker"}, []string{"aes", "avx", "avx2", "sse4.2"}, now),
		testNode("other", map[string]string{"group": "db"}, []string{"aes", "avx"}, now),
	}
	nodes[2].Spec.Taints = []v1alpha1.Taint{{Key: "k", Effect: v1alpha1.TaintEffectNoSchedule}}
	cl := &v1alpha1.VirtualMachineClass{ObjectMeta: v1alpha1.ObjectMeta{Name: "d"}}
	cl.Spec.CPU = v1alpha1.VirtualMachineClassCPU{Type: v1alpha1.CPUTypeDiscovery, Discovery: &v1alpha1.CPUDiscovery{
		MatchExpressions: []v1alpha1.LabelSelectorRequirement{{Key: "node-role.kubernetes.io/control-plane", Operator: v1alpha1.SelectorOpDoesNotExist}}}}
	cl.Spec.NodeSelector = &v1alpha1.VirtualMachineClassNodeSelector{MatchLabels: map[string]string{"group": "worker"}}
	vm := v1alpha1.VirtualMachine{}
	vm.Status.NodeName = "w1"
	vm.Spec.CPU.Cores = 3
	vm.Spec.Memory.Size = "2Gi"
	st := ClassStatus(cl, nodes, []v1alpha1.VirtualMachine{vm}, now, time.Minute)
	// Discovery nodes: w1, w2, other (not cp): common aes, avx.
	if st.CPUFeatures == nil || !reflect.DeepEqual(st.CPUFeatures.Enabled, []string{"aes", "avx"}) {
		t.Fatalf("cpuFeatures %+v", st.CPUFeatures)
	}
	// Available: worker group, taint tolerated, features present: w1 only (cp lacks avx, w2 tainted).
	if !reflect.DeepEqual(st.AvailableNodes, []string{"w1"}) || st.Phase != v1alpha1.VMClassPhaseReady {
		t.Fatalf("available %v phase %s", st.AvailableNodes, st.Phase)
	}
	// w1: 4 cores × 4.0 − 3 = 13 cores, 8Gi − 2Gi.
	if st.MaxAllocatableResources["cpu"] != "13" || st.MaxAllocatableResources["memory"] != "6Gi" {
		t.Fatalf("maxAllocatableResources %v", st.MaxAllocatableResources)
	}
	cl.Spec.Tolerations = []v1alpha1.Toleration{{Key: "k", Operator: v1alpha1.TolerationOpExists}}
	if st := ClassStatus(cl, nodes, nil, now, time.Minute); !reflect.DeepEqual(st.AvailableNodes, []string{"w1", "w2"}) {
		t.Fatalf("with toleration: %v", st.AvailableNodes)
	}
	// Stale heartbeats: nothing available, Pending.
	if st := ClassStatus(cl, nodes, nil, now.Add(time.Hour), time.Minute); len(st.AvailableNodes) != 0 || st.Phase != v1alpha1.VMClassPhasePending {
		t.Fatalf("stale: %v %s", st.AvailableNodes, st.Phase)
	}
}
