package agent

import (
	"context"
	"net/netip"
	"strings"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/network"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// Networks across hosts (docs/networking.md): a NAT network spans the nodes through a VXLAN
// overlay once the cluster has more than one node with an underlay address. Each node keeps
// the network's bridge (same gateway address and MAC everywhere), a VXLAN device with the
// network's VNI on it, and a forwarding table written from the store: a flood entry per
// other Ready node and an entry per VM NIC of the network on another node. The decisions are
// the pure functions below; the agent feeds them its Node and VM caches.

// overlayView is what the overlay decisions are made from.
type overlayView struct {
	self  string     // this node's name
	local netip.Addr // this node's underlay address
	nodes []*v1alpha1.Node
	vms   []*v1alpha1.VirtualMachine
}

// nodeUnderlay returns a node's InternalIP when it is an IPv4 address.
func nodeUnderlay(n *v1alpha1.Node) (netip.Addr, bool) {
	a, err := netip.ParseAddr(n.Status.InternalIP())
	if err != nil || !a.Unmap().Is4() || a.Unmap().IsUnspecified() || a.Unmap().IsLoopback() {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

func nodeReady(n *v1alpha1.Node) bool {
	c := v1alpha1.FindCondition(n.Status.Conditions, v1alpha1.NodeConditionReady)
	return n.DeletionTimestamp == nil && c != nil && c.Status == v1alpha1.ConditionTrue
}

// spansHosts says whether NAT networks span hosts here: this node has an underlay address
// and another node publishes one. (Whether the other nodes are Ready does not matter: the
// VXLAN device and the smaller MTU stay while a node is down, so guests see no MTU change.)
func (v *overlayView) spansHosts() bool {
	if !v.local.IsValid() {
		return false
	}
	for _, n := range v.nodes {
		if n.Name == v.self || n.DeletionTimestamp != nil {
			continue
		}
		if a, ok := nodeUnderlay(n); ok && a != v.local {
			return true
		}
	}
	return false
}

// overlay returns the overlay of the network named name, or nil when it has none here: not
// a NAT network, no VNI yet, or the cluster does not span hosts.
func (v *overlayView) overlay(name string, n *v1alpha1.ClusterNetwork) *network.Overlay {
	if n.Spec.Type != v1alpha1.ClusterNetworkTypeNAT || n.Status.VNI < 1 || n.Status.VNI > v1alpha1.MaxVNI || !v.spansHosts() {
		return nil
	}
	o := &network.Overlay{VNI: n.Status.VNI, Local: v.local}
	peers := map[string]netip.Addr{} // Ready nodes by name
	for _, nd := range v.nodes {
		if nd.Name == v.self || !nodeReady(nd) {
			continue
		}
		if a, ok := nodeUnderlay(nd); ok && a != v.local {
			peers[nd.Name] = a
			o.Peers = append(o.Peers, a)
		}
	}
	for _, vm := range v.vms {
		node, ok := peers[vm.Status.NodeName]
		if !ok || vm.Status.NodeName == v.self {
			continue
		}
		for _, st := range vm.Status.Networks {
			if statusNetworkName(st) == name && st.MACAddress != "" {
				o.Remote = append(o.Remote, network.RemoteMAC{MAC: st.MACAddress, Node: node})
			}
		}
	}
	return o
}

// statusNetworkName is the ClusterNetwork of an interface in a VM's status.
func statusNetworkName(st v1alpha1.NetworkStatus) string {
	if st.Type == v1alpha1.NetworkTypeMain {
		return v1alpha1.DefaultClusterNetworkName
	}
	return st.Name
}

// overlayMTU is the MTU of network n here: its own when it stays on this host, else at most
// the underlay's less the VXLAN overhead.
func (v *overlayView) overlayMTU(n *v1alpha1.ClusterNetwork) int {
	if n.Spec.Type != v1alpha1.ClusterNetworkTypeNAT || n.Status.VNI < 1 || !v.spansHosts() {
		return n.Spec.MTU
	}
	return network.OverlayMTU(n.Spec.MTU, network.UnderlayMTU(v.local))
}

// overlayCaches are the caches the overlay needs beyond the agent's own: every Node and
// every VM (the agent's VM cache holds only its own node's).
type overlayCaches struct {
	nodes  *runtime.TypedInformer[v1alpha1.Node]
	allVMs *runtime.TypedInformer[v1alpha1.VirtualMachine]
	// spans is spansHosts at the last full resync: a change needs one (VXLAN devices and
	// MTUs), other changes only rewrite forwarding tables.
	spans bool
}

// startOverlay starts the caches of the overlay when this node has an underlay address, and
// waits for them. Without one nothing runs: a single host is as it always was.
func (a *Agent) startOverlay(ctx context.Context) *overlayCaches {
	if !a.cfg.UnderlayAddress.IsValid() {
		a.log.Info("no underlay address: NAT networks stay on this host")
		return nil
	}
	oc := &overlayCaches{
		nodes:  runtime.NewTypedInformer[v1alpha1.Node](a.c, "nodes", client.ListOptions{}, a.log),
		allVMs: runtime.NewTypedInformer[v1alpha1.VirtualMachine](a.c, "virtualmachines", client.ListOptions{}, a.log),
	}
	go oc.nodes.Run(ctx)
	go oc.allVMs.Run(ctx)
	for _, s := range []<-chan struct{}{oc.nodes.Synced(), oc.allVMs.Synced()} {
		select {
		case <-ctx.Done():
			return oc
		case <-s:
		}
	}
	a.log.Info("networks across hosts: VXLAN from this node's underlay address", "underlay", a.cfg.UnderlayAddress.String())
	return oc
}

// view returns the current overlay view (empty of other nodes without the caches).
func (a *Agent) view() *overlayView {
	v := a.nodeView()
	if v.local.IsValid() {
		v.vms = a.net.overlay.allVMs.List()
	}
	return v
}

// nodeView is view without the VMs: enough for spansHosts and overlayMTU.
func (a *Agent) nodeView() *overlayView {
	v := &overlayView{self: a.cfg.NodeName, local: a.cfg.UnderlayAddress}
	if a.net == nil || a.net.overlay == nil {
		v.local = netip.Addr{}
		return v
	}
	v.nodes = a.net.overlay.nodes.List()
	return v
}

// syncOverlays follows changes of nodes and VMs elsewhere: when whether the cluster spans
// hosts changed, a full resync; else only the forwarding tables of the networks this host
// has.
func (a *Agent) syncOverlays(ctx context.Context) {
	ns := a.net
	if ns == nil || ns.overlay == nil || ctx.Err() != nil {
		return
	}
	v := a.view()
	ns.mu.Lock()
	spans := ns.overlay.spans
	ns.mu.Unlock()
	if v.spansHosts() != spans {
		a.resyncNetworks(ctx)
		return
	}
	ns.mu.Lock()
	defer ns.mu.Unlock()
	for _, name := range ns.m.Networks() {
		var n v1alpha1.ClusterNetwork
		if ok, err := ns.cnets.Get(runtime.NewKey("", name), &n); err != nil || !ok {
			continue
		}
		o := v.overlay(name, &n)
		if o == nil {
			continue
		}
		changed, err := ns.m.SyncOverlay(o)
		if err != nil {
			a.log.Warn("updating the VXLAN forwarding table", "network", name, "err", err)
		} else if len(changed) > 0 {
			a.log.Info("VXLAN forwarding table brought in line", "network", name, "changes", strings.Join(changed, "; "))
		}
	}
}
