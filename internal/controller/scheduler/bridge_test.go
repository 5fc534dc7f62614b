package scheduler

import (
	"strings"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

func TestFilterBridgeNodes(t *testing.T) {
	node := func(name string, labels map[string]string) *nodeState {
		return &nodeState{node: &v1alpha1.Node{ObjectMeta: v1alpha1.ObjectMeta{Name: name, Labels: labels}}}
	}
	nodes := []*nodeState{node("h1", map[string]string{"br-public": "yes"}), node("h2", nil), node("h3", map[string]string{"br-public": "yes", "br-dmz": "yes"})}
	nets := map[string]*v1alpha1.ClusterNetwork{
		"public": {Spec: v1alpha1.ClusterNetworkSpec{Type: v1alpha1.ClusterNetworkTypeBridge, NodeSelector: map[string]string{"br-public": "yes"}}},
		"dmz":    {Spec: v1alpha1.ClusterNetworkSpec{Type: v1alpha1.ClusterNetworkTypeBridge, NodeSelector: map[string]string{"br-dmz": "yes"}}},
		"lab":    {Spec: v1alpha1.ClusterNetworkSpec{Type: v1alpha1.ClusterNetworkTypeBridge, NodeSelector: map[string]string{"br-lab": "yes"}}},
		"any":    {Spec: v1alpha1.ClusterNetworkSpec{Type: v1alpha1.ClusterNetworkTypeBridge}},
		"nat":    {Spec: v1alpha1.ClusterNetworkSpec{Type: v1alpha1.ClusterNetworkTypeNAT}},
	}
	get := func(n string) (*v1alpha1.ClusterNetwork, bool) { c, ok := nets[n]; return c, ok }
	vm := func(names ...string) *v1alpha1.VirtualMachine {
		v := &v1alpha1.VirtualMachine{}
		v.Spec.Networks = []v1alpha1.NetworkSpec{{Type: v1alpha1.NetworkTypeMain}}
		for _, n := range names {
			v.Spec.Networks = append(v.Spec.Networks, v1alpha1.NetworkSpec{Type: v1alpha1.NetworkTypeClusterNetwork, Name: n})
		}
		return v
	}
	names := func(ns []*nodeState) string {
		var s []string
		for _, n := range ns {
			s = append(s, n.node.Name)
		}
		return strings.Join(s, ",")
	}
	for _, c := range []struct {
		vm   *v1alpha1.VirtualMachine
		want string
		why  string
	}{
		{vm(), "h1,h2,h3", ""},
		{vm("any", "nat", "missing"), "h1,h2,h3", ""},
		{vm("public"), "h1,h3", ""},
		{vm("public", "dmz"), "h3", ""},
		{vm("public", "lab"), "", `0/3 nodes are available: none has the bridge of ClusterNetwork "lab" (its spec.nodeSelector br-lab=yes matches no node)`},
	} {
		got, why := filterBridgeNodes(c.vm, get, nodes)
		if names(got) != c.want || why != c.why {
			t.Errorf("networks %+v: nodes %q why %q, want %q %q", c.vm.Spec.Networks, names(got), why, c.want, c.why)
		}
	}
}
