package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/network"
	"github.com/rakhsh/rakhsh/internal/qemu"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// NetworkResyncInterval is how often the host side of the networks is checked and repaired.
const NetworkResyncInterval = 15 * time.Second

// netState is the agent's host networking: the ClusterNetworks it watches and the manager
// of bridges, taps, nftables and dnsmasq.
type netState struct {
	m     *network.Manager
	cnets *runtime.Informer
	tools error // missing programs, reported when a VM starts
	// overlay holds the caches of networks across hosts (overlay.go); nil without an
	// underlay address.
	overlay *overlayCaches
	// mu serializes changes of the host's networking (a start and a resync never
	// interleave).
	mu sync.Mutex
}

// errNetNotReady says a VM's addresses are not allocated yet: its start waits.
var errNetNotReady = errors.New("network addresses are not ready")

// startNetworking starts host networking (with Config.HostNetworking): it watches the
// ClusterNetworks, brings the host in line with the running VMs at once (re-adopting
// dnsmasq and leaving taps and rules of running VMs as they are, so a restart of the agent
// does not interrupt them), then repairs drift every NetworkResyncInterval.
func (a *Agent) startNetworking(ctx context.Context) {
	if !a.cfg.HostNetworking {
		return
	}
	ns := &netState{m: network.NewManager(network.Config{DataDir: a.cfg.DataDir, Log: a.log, NoUpstreamDNS: a.cfg.NoUpstreamDNS, DnsmasqUser: a.cfg.DnsmasqUser}),
		cnets: runtime.NewInformer(a.c, "clusternetworks", "", a.log)}
	ns.tools = ns.m.CheckTools()
	if ns.tools != nil {
		a.log.Error("host networking is not usable: VMs will not start", "err", ns.tools)
	}
	a.net = ns
	go ns.cnets.Run(ctx)
	select {
	case <-ctx.Done():
		return
	case <-ns.cnets.Synced():
	}
	ns.overlay = a.startOverlay(ctx)
	// A handler added now is called at once for every cached network; coalesced, that is
	// one resync, not one a network.
	ns.cnets.OnChange(coalesced(ctx, func() { a.resyncNetworks(ctx) }))
	if ns.overlay != nil {
		// Changes of nodes and VMs elsewhere.
		poke := coalesced(ctx, func() { a.syncOverlays(ctx) })
		ns.overlay.nodes.OnChange(poke)
		ns.overlay.allVMs.OnChange(poke)
	}
	a.resyncNetworks(ctx)
	go runtime.Ticks(ctx, NetworkResyncInterval, func() { a.resyncNetworks(ctx) })
}

// coalesced returns an informer handler that makes f run, on a goroutine of its own until ctx
// ends: one run at a time, and a burst of changes during a run makes one more.
func coalesced(ctx context.Context, f func()) func(runtime.Key) {
	kick := make(chan struct{}, 1)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-kick:
				f()
			}
		}
	}()
	return func(runtime.Key) {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
}

// plannedNIC is one NIC of a VM on this host.
type plannedNIC struct {
	index    int
	netName  string
	net      *v1alpha1.ClusterNetwork
	tap, mac string
	ip       netip.Addr
	forwards []v1alpha1.PortForward
	inbound  *v1alpha1.InboundPolicy
}

// planNICs resolves a VM's interfaces from its status (written by the network controller)
// and the ClusterNetworks. errNetNotReady (wrapped) means the addresses are still being
// allocated.
func (a *Agent) planNICs(vm *v1alpha1.VirtualMachine) ([]plannedNIC, error) {
	specs := vm.Spec.Networks
	if len(specs) == 0 {
		specs = []v1alpha1.NetworkSpec{{Type: v1alpha1.NetworkTypeMain}}
	}
	if len(vm.Status.Networks) != len(specs) {
		return nil, fmt.Errorf("%w: %d of %d interfaces have addresses", errNetNotReady, len(vm.Status.Networks), len(specs))
	}
	var out []plannedNIC
	for i, s := range specs {
		st := vm.Status.Networks[i]
		name := v1alpha1.DefaultClusterNetworkName
		if s.Type != v1alpha1.NetworkTypeMain {
			name = s.Name
		}
		if st.Type != s.Type || (s.Type != v1alpha1.NetworkTypeMain && st.Name != s.Name) {
			return nil, fmt.Errorf("%w: interface %d is being reconfigured", errNetNotReady, i)
		}
		var n v1alpha1.ClusterNetwork
		if ok, err := a.net.cnets.Get(runtime.NewKey("", name), &n); err != nil || !ok {
			return nil, fmt.Errorf("%w: ClusterNetwork %q does not exist", errNetNotReady, name)
		}
		if st.MACAddress == "" {
			return nil, fmt.Errorf("%w: interface %d has no MAC address yet", errNetNotReady, i)
		}
		// A network that spans hosts: its bridge, taps and guests get the MTU that fits in
		// VXLAN over the underlay.
		n.Spec.MTU = a.nodeView().overlayMTU(&n)
		p := plannedNIC{index: i, netName: name, net: &n, tap: network.TapName(vm.UID, i), mac: st.MACAddress, forwards: s.PortForwards, inbound: s.Inbound}
		if n.Spec.Subnet != "" {
			ip, err := netip.ParseAddr(st.IPAddress)
			if err != nil {
				return nil, fmt.Errorf("%w: interface %d has no IP address yet", errNetNotReady, i)
			}
			p.ip = ip
		}
		out = append(out, p)
	}
	return out, nil
}

// activeVMs are the VMs of this node whose networking must exist: those asked to run and
// those whose QEMU still runs, with their planned NICs. unsure is true when a VM whose QEMU
// runs has interfaces that cannot be resolved now (its ClusterNetwork was deleted, its spec
// is being changed): nothing is taken down then.
func (a *Agent) activeVMs() (out map[string][]plannedNIC, unsure bool) {
	out = map[string][]plannedNIC{}
	alive := func(uid string) bool { in := a.inst(uid); return in != nil && !in.isExited() }
	for _, vm := range networkedVMs(a.cfg.NodeName, a.vms.List(), a.migIn.List(), alive) {
		plan, err := a.planNICs(vm)
		if err != nil {
			if alive(vm.UID) {
				unsure = true
			}
			continue
		}
		out[vm.Namespace+"/"+vm.Name] = plan
	}
	return out, unsure
}

// networkedVMs picks the VMs whose taps and networks this node keeps: of the VMs bound here
// (or moving away), those asked to run and those whose QEMU is alive; and the VMs this node
// is the target of an active live migration for, from the moment the migration names it:
// the target's taps are made in its start pipeline before its QEMU exists, and a network
// resync in between must not delete them (QEMU would get a detached tap: "Unable to query
// TUNGETIFF ... File descriptor in bad state").
func networkedVMs(node string, bound, incoming []*v1alpha1.VirtualMachine, alive func(uid string) bool) []*v1alpha1.VirtualMachine {
	var out []*v1alpha1.VirtualMachine
	seen := map[string]bool{}
	for _, vm := range incoming {
		if m := vm.Status.MigrationState; m.Active() && m.Target.Node == node && vm.DeletionTimestamp == nil {
			out = append(out, vm)
			seen[vm.UID] = true
		}
	}
	for _, vm := range bound {
		if seen[vm.UID] || (vm.Status.NodeName != node && !vm.Status.MigrationState.Active()) {
			continue
		}
		if !alive(vm.UID) && (vm.DeletionTimestamp != nil || !wantsRunning(vm.Status.PowerRequest)) {
			continue
		}
		out = append(out, vm)
	}
	return out
}

// desired is the host state of one network from the active VMs' NICs.
func desired(name string, n *v1alpha1.ClusterNetwork, active map[string][]plannedNIC, warn func(string)) network.Desired {
	d := network.Desired{Name: name, Spec: n.Spec}
	keys := make([]string, 0, len(active))
	for k := range active {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	hostnames := map[string]int{}
	for _, k := range keys {
		for _, p := range active[k] {
			if p.netName == name && p.ip.IsValid() {
				hostnames[hostLabel(k)]++
			}
		}
	}
	taken := map[string]string{}
	for _, k := range keys {
		for _, p := range active[k] {
			if p.netName != name {
				continue
			}
			port := network.Port{Tap: p.tap, MAC: p.mac}
			if p.inbound != nil {
				port.Filtered = true
				port.Inbound = inboundRules(p.inbound)
			}
			if p.ip.IsValid() {
				port.IPs = []netip.Addr{p.ip}
				h := network.Host{MAC: p.mac, IP: p.ip}
				if hostnames[hostLabel(k)] == 1 {
					h.Hostname = hostLabel(k)
				}
				d.Hosts = append(d.Hosts, h)
			}
			d.Ports = append(d.Ports, port)
			if n.Spec.Type != v1alpha1.ClusterNetworkTypeNAT || !p.ip.IsValid() {
				if len(p.forwards) > 0 {
					warn(fmt.Sprintf("%s: port forwards of interface %d are ignored: ClusterNetwork %q is not a NAT network with addresses", k, p.index, name))
				}
				continue
			}
			for _, f := range p.forwards {
				proto := strings.ToLower(f.Protocol)
				if proto == "" {
					proto = "tcp"
				}
				id := fmt.Sprintf("%s/%d", proto, f.HostPort)
				if other, ok := taken[id]; ok {
					warn(fmt.Sprintf("%s: host port %s is already forwarded to %s; this forward is ignored", k, id, other))
					continue
				}
				taken[id] = k
				d.Forwards = append(d.Forwards, network.Forward{Protocol: proto, HostPort: f.HostPort, GuestIP: p.ip, GuestPort: f.Port})
			}
		}
	}
	return d
}

// inboundRules converts an interface's inbound policy (validated at admission) to the rules
// of its port; a source that does not parse is left out rather than widening the rule.
func inboundRules(in *v1alpha1.InboundPolicy) []network.InboundRule {
	var out []network.InboundRule
	for _, r := range in.Rules {
		proto := strings.ToLower(r.Protocol)
		if proto == "" {
			proto = "tcp"
		}
		nr := network.InboundRule{Protocol: proto, Port: r.Port, EndPort: r.EndPort}
		bad := false
		for _, src := range r.From {
			pf, err := v1alpha1.ParseInboundSource(src)
			if err != nil {
				bad = true
				break
			}
			nr.From = append(nr.From, pf)
		}
		if !bad {
			out = append(out, nr)
		}
	}
	return out
}

// hostLabel is the DNS name of a VM ("namespace/name" → name, dots made dashes).
func hostLabel(key string) string {
	_, name, _ := strings.Cut(key, "/")
	return strings.ReplaceAll(name, ".", "-")
}

// resyncNetworks makes the host match the active VMs: every network they use exists and
// is repaired, taps of VMs no longer active are deleted, networks no VM here uses are
// removed.
func (a *Agent) resyncNetworks(ctx context.Context) {
	ns := a.net
	if ns == nil || ctx.Err() != nil {
		return
	}
	ns.mu.Lock()
	defer ns.mu.Unlock()
	v := a.view()
	if ns.overlay != nil {
		ns.overlay.spans = v.spansHosts()
	}
	active, unsure := a.activeVMs()
	used := map[string]*v1alpha1.ClusterNetwork{}
	taps := map[string]bool{}
	for _, plan := range active {
		for _, p := range plan {
			used[p.netName] = p.net
			taps[p.tap] = true
		}
	}
	for name, n := range used {
		_ = a.ensureNetwork(ctx, v, name, n, active)
	}
	if unsure {
		a.log.Warn("a running VM's interfaces cannot be resolved (ClusterNetwork deleted or spec changing): no tap or network is taken down")
		return
	}
	for _, t := range ns.m.Taps() {
		if !taps[t] {
			if err := ns.m.DeleteTap(t); err != nil {
				a.log.Warn("deleting an unused tap", "tap", t, "err", err)
			} else {
				a.log.Info("deleted the tap of a VM that no longer runs here", "tap", t)
			}
		}
	}
	for _, name := range ns.m.Networks() {
		if _, ok := used[name]; !ok {
			if err := ns.m.Remove(ctx, name); err != nil {
				a.log.Warn("removing an unused network", "network", name, "err", err)
			} else {
				a.log.Info("removed the host side of a network no VM here uses", "network", name)
			}
		}
	}
}

func (a *Agent) ensureNetwork(ctx context.Context, v *overlayView, name string, n *v1alpha1.ClusterNetwork, active map[string][]plannedNIC) error {
	d := desired(name, n, active, func(msg string) { a.log.Warn(msg, "network", name) })
	d.Overlay = v.overlay(name, n)
	changed, err := a.net.m.Ensure(ctx, d)
	if err != nil {
		a.log.Error("network setup failed", "network", name, "err", err)
		return err
	}
	if len(changed) > 0 {
		a.log.Info("network brought in line", "network", name, "changes", strings.Join(changed, "; "))
	}
	return nil
}

// prepareNICs makes the networks and taps of a VM about to start, as planned, and returns
// its QEMU NICs and the taps it created (they did not exist before). A failure is a
// startFailure; the taps made until then are deleted again.
func (a *Agent) prepareNICs(ctx context.Context, vm *v1alpha1.VirtualMachine, plan []plannedNIC) ([]qemu.NIC, []string, error) {
	a.net.mu.Lock()
	defer a.net.mu.Unlock()
	active, _ := a.activeVMs()
	active[vm.Namespace+"/"+vm.Name] = plan
	v := a.view()
	done := map[string]bool{}
	var nics []qemu.NIC
	var created []string
	fail := func(msg string) ([]qemu.NIC, []string, error) {
		a.deleteTapsLocked(created)
		return nil, nil, failStart(msg)
	}
	for _, p := range plan {
		if !done[p.netName] {
			done[p.netName] = true
			if err := a.ensureNetwork(ctx, v, p.netName, p.net, active); err != nil {
				return fail(err.Error())
			}
		}
		if _, err := net.InterfaceByName(p.tap); err != nil {
			created = append(created, p.tap)
		}
		if err := a.net.m.EnsureTap(p.tap, p.net.Spec.Bridge, p.net.Spec.MTU, p.mac); err != nil {
			return fail(fmt.Sprintf("network interface %d: %v", p.index, err))
		}
		nics = append(nics, qemu.NIC{ID: fmt.Sprintf("net%d", p.index), MAC: p.mac, Tap: p.tap, MTU: p.net.Spec.MTU})
	}
	return nics, created, nil
}

// deleteTaps deletes taps a failed start made.
func (a *Agent) deleteTaps(taps []string) {
	a.net.mu.Lock()
	defer a.net.mu.Unlock()
	a.deleteTapsLocked(taps)
}

func (a *Agent) deleteTapsLocked(taps []string) {
	for _, t := range taps {
		if err := a.net.m.DeleteTap(t); err != nil {
			a.log.Warn("deleting the tap of a failed start", "tap", t, "err", err)
		}
	}
}
