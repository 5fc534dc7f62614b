package agent

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/network"
)

func ovNode(name, ip string, ready bool) *v1alpha1.Node {
	n := &v1alpha1.Node{ObjectMeta: v1alpha1.ObjectMeta{Name: name}}
	if ip != "" {
		n.Status.Addresses = []v1alpha1.NodeAddress{{Type: v1alpha1.NodeAddressInternalIP, Address: ip}}
	}
	st := v1alpha1.ConditionFalse
	if ready {
		st = v1alpha1.ConditionTrue
	}
	n.Status.Conditions = []v1alpha1.Condition{{Type: v1alpha1.NodeConditionReady, Status: st}}
	return n
}

func ovVM(name, node string, nets ...v1alpha1.NetworkStatus) *v1alpha1.VirtualMachine {
	vm := &v1alpha1.VirtualMachine{ObjectMeta: v1alpha1.ObjectMeta{Name: name, Namespace: "default"}}
	vm.Status.NodeName = node
	vm.Status.Networks = nets
	return vm
}

func mainNIC(mac string) v1alpha1.NetworkStatus {
	return v1alpha1.NetworkStatus{Type: v1alpha1.NetworkTypeMain, MACAddress: mac}
}

func natNet(vni int) *v1alpha1.ClusterNetwork {
	return &v1alpha1.ClusterNetwork{ObjectMeta: v1alpha1.ObjectMeta{Name: "main"},
		Spec:   v1alpha1.ClusterNetworkSpec{Type: v1alpha1.ClusterNetworkTypeNAT, Subnet: "10.66.0.0/24"},
		Status: v1alpha1.ClusterNetworkStatus{VNI: vni}}
}

func fdbString(o *network.Overlay) string {
	if o == nil {
		return "none"
	}
	var s []string
	for _, p := range o.Peers {
		s = append(s, "flood>"+p.String())
	}
	for _, r := range o.Remote {
		s = append(s, r.MAC+">"+r.Node.String())
	}
	return strings.Join(s, " ")
}

func TestOverlayDecisions(t *testing.T) {
	local := netip.MustParseAddr("10.232.0.1")
	h1, h2, h3 := ovNode("h1", "10.232.0.1", true), ovNode("h2", "10.232.0.2", true), ovNode("h3", "10.232.0.3", true)
	lab := v1alpha1.NetworkStatus{Type: v1alpha1.NetworkTypeClusterNetwork, Name: "lab", MACAddress: "02:72:6b:00:00:99"}
	vms := []*v1alpha1.VirtualMachine{
		ovVM("a", "h1", mainNIC("02:72:6b:00:00:01")),                           // this node's: the bridge learns it
		ovVM("b", "h2", mainNIC("02:72:6b:00:00:02"), lab),                      // main toward h2; lab is another network
		ovVM("c", "h3", mainNIC("02:72:6b:00:00:03")),                           // toward h3
		ovVM("d", "", mainNIC("02:72:6b:00:00:04")),                             // not bound: nowhere
		ovVM("e", "h4", mainNIC("02:72:6b:00:00:05")),                           // a node without an address
		ovVM("f", "h2", v1alpha1.NetworkStatus{Type: v1alpha1.NetworkTypeMain}), // no MAC yet
	}
	h4 := ovNode("h4", "", true)
	cases := []struct {
		name  string
		view  overlayView
		net   *v1alpha1.ClusterNetwork
		want  string
		spans bool
	}{
		{"three nodes", overlayView{self: "h1", local: local, nodes: []*v1alpha1.Node{h1, h2, h3, h4}, vms: vms}, natNet(5),
			"flood>10.232.0.2 flood>10.232.0.3 02:72:6b:00:00:02>10.232.0.2 02:72:6b:00:00:03>10.232.0.3", true},
		{"a node that is not Ready gets no frames, the overlay stays", overlayView{self: "h1", local: local,
			nodes: []*v1alpha1.Node{h1, h2, ovNode("h3", "10.232.0.3", false)}, vms: vms}, natNet(5),
			"flood>10.232.0.2 02:72:6b:00:00:02>10.232.0.2", true},
		{"the only node with an address: no overlay", overlayView{self: "h1", local: local, nodes: []*v1alpha1.Node{h1, h4}, vms: vms}, natNet(5), "none", false},
		{"no underlay address here: no overlay", overlayView{self: "h1", nodes: []*v1alpha1.Node{h1, h2}, vms: vms}, natNet(5), "none", false},
		{"no VNI yet: no overlay", overlayView{self: "h1", local: local, nodes: []*v1alpha1.Node{h1, h2}, vms: vms}, natNet(0), "none", true},
		{"a Bridge network never has one", overlayView{self: "h1", local: local, nodes: []*v1alpha1.Node{h1, h2}, vms: vms},
			&v1alpha1.ClusterNetwork{ObjectMeta: v1alpha1.ObjectMeta{Name: "main"}, Spec: v1alpha1.ClusterNetworkSpec{Type: v1alpha1.ClusterNetworkTypeBridge}, Status: v1alpha1.ClusterNetworkStatus{VNI: 3}},
			"none", true},
		{"a moved VM's entry points at its new node", overlayView{self: "h1", local: local, nodes: []*v1alpha1.Node{h1, h2, h3},
			vms: []*v1alpha1.VirtualMachine{ovVM("b", "h3", mainNIC("02:72:6b:00:00:02"))}}, natNet(5),
			"flood>10.232.0.2 flood>10.232.0.3 02:72:6b:00:00:02>10.232.0.3", true},
		{"a VM moved here has no entry", overlayView{self: "h1", local: local, nodes: []*v1alpha1.Node{h1, h2},
			vms: []*v1alpha1.VirtualMachine{ovVM("b", "h1", mainNIC("02:72:6b:00:00:02"))}}, natNet(5),
			"flood>10.232.0.2", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := c.view.spansHosts(); got != c.spans {
				t.Errorf("spansHosts %v, want %v", got, c.spans)
			}
			if got := fdbString(c.view.overlay("main", c.net)); got != c.want {
				t.Errorf("overlay\n got %s\nwant %s", got, c.want)
			}
		})
	}
	// The lab network's entries are its own.
	v := overlayView{self: "h1", local: local, nodes: []*v1alpha1.Node{h1, h2}, vms: vms}
	labNet := natNet(6)
	labNet.Name = "lab"
	if got := fdbString(v.overlay("lab", labNet)); got != "flood>10.232.0.2 02:72:6b:00:00:99>10.232.0.2" {
		t.Errorf("lab: %s", got)
	}
}

func TestOverlayMTUDecision(t *testing.T) {
	n := natNet(5)
	n.Spec.MTU = 1400
	single := overlayView{self: "h1", local: netip.MustParseAddr("10.232.0.1"), nodes: []*v1alpha1.Node{ovNode("h1", "10.232.0.1", true)}}
	if got := single.overlayMTU(n); got != 1400 {
		t.Errorf("one host: MTU %d, want the network's 1400", got)
	}
	n.Spec.MTU = 0
	if got := single.overlayMTU(n); got != 0 {
		t.Errorf("one host, no MTU set: %d, want 0 (as before)", got)
	}
}
