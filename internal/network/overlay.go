package network

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
)

// VXLAN constants of the overlay that joins a NAT network's bridges on several nodes.
const (
	// VXLANPort is the UDP port VXLAN frames are sent to and received on (the IANA port).
	VXLANPort = 4789
	// VXLANOverhead is what the encapsulation adds to a frame on an IPv4 underlay: outer
	// IPv4 (20), UDP (8), VXLAN (8) and inner Ethernet (14) headers. A network that spans
	// hosts gives its bridge, taps and guests an MTU this much below the underlay's.
	VXLANOverhead = 50
	// VXLANPrefix starts the name of every VXLAN device Rakhsh makes; the VNI follows.
	VXLANPrefix = "rkv"
)

// Overlay is the VXLAN side of a NAT network on one node: a VXLAN device on the network's
// bridge that sends to the other nodes over the underlay.
type Overlay struct {
	// VNI is the network's VXLAN identifier (ClusterNetwork status.vni).
	VNI int
	// Local is this node's underlay address, the source of the encapsulated frames.
	Local netip.Addr
	// Port is the UDP port; 0 means VXLANPort.
	Port int
	// Peers are the underlay addresses of the other nodes: broadcasts, multicasts and frames
	// to unknown MACs are sent to each (head-end replication, no multicast underlay needed).
	Peers []netip.Addr
	// Remote are the MACs of the VM NICs of this network on other nodes, each sent only to
	// the node that runs it.
	Remote []RemoteMAC
}

// RemoteMAC says that the NIC with MAC is on the node with underlay address Node.
type RemoteMAC struct {
	MAC  string
	Node netip.Addr
}

// VXLANName is the VXLAN device of the network with VNI vni: "rkv" and the VNI.
func VXLANName(vni int) string { return fmt.Sprintf("%s%d", VXLANPrefix, vni) }

// GatewayMAC is the MAC of a NAT network's bridge, derived from the bridge's name: every
// node gives the bridge of a network the same MAC, so the gateway of a network that spans
// hosts (the same address on every node) also has the same MAC everywhere and a VM that
// moves finds it unchanged.
func GatewayMAC(bridge string) net.HardwareAddr {
	h := sha256.Sum256([]byte("bridge/" + bridge))
	return net.HardwareAddr{0x02, h[0], h[1], h[2], h[3], h[4]}
}

// fdbEntry is one forwarding entry of a VXLAN device: frames to MAC go to Dst.
type fdbEntry struct {
	MAC string // lower case; 00:00:00:00:00:00 is the default (flood) entry
	Dst netip.Addr
}

const floodMAC = "00:00:00:00:00:00"

// fdbEntries is the forwarding table an overlay needs: a flood entry per peer and one entry
// per remote MAC (toward its node). Entries toward this node itself, invalid addresses and
// MACs are left out; the result is sorted and free of duplicates.
func fdbEntries(o *Overlay) []fdbEntry {
	seen := map[fdbEntry]bool{}
	var out []fdbEntry
	add := func(mac string, dst netip.Addr) {
		dst = dst.Unmap()
		if !dst.Is4() || dst == o.Local.Unmap() || dst.IsUnspecified() {
			return
		}
		hw, err := net.ParseMAC(mac)
		if err != nil || len(hw) != 6 {
			return
		}
		e := fdbEntry{MAC: hw.String(), Dst: dst}
		if !seen[e] {
			seen[e] = true
			out = append(out, e)
		}
	}
	for _, p := range o.Peers {
		add(floodMAC, p)
	}
	for _, r := range o.Remote {
		if r.MAC == floodMAC {
			continue
		}
		add(r.MAC, r.Node)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].MAC != out[j].MAC {
			return out[i].MAC < out[j].MAC
		}
		return out[i].Dst.Less(out[j].Dst)
	})
	return out
}

// ensureVXLAN makes the network's VXLAN device (no learning: its forwarding table is only
// what the agent writes from the store), on the bridge with the MTU, up, and brings its
// forwarding table in line with o. Other VXLAN devices on the bridge (of an older VNI) are
// deleted.
func ensureVXLAN(bridge string, mtu int, o *Overlay) ([]string, error) {
	var changed []string
	if o.VNI < 1 || o.VNI > 1<<24-1 {
		return nil, fmt.Errorf("VNI %d is outside 1..16777215", o.VNI)
	}
	if !o.Local.Unmap().Is4() {
		return nil, fmt.Errorf("the underlay address %q is not an IPv4 address", o.Local)
	}
	port := o.Port
	if port == 0 {
		port = VXLANPort
	}
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return nil, fmt.Errorf("bridge %s: %w", bridge, err)
	}
	name := VXLANName(o.VNI)
	local := net.IP(o.Local.Unmap().AsSlice())
	l, err := netlink.LinkByName(name)
	if err != nil && !isNotFound(err) {
		return nil, err
	}
	if err == nil {
		vx, ok := l.(*netlink.Vxlan)
		if !ok {
			return nil, fmt.Errorf("interface %s exists and is a %s, not a VXLAN device", name, l.Type())
		}
		if vx.VxlanId != o.VNI || !vx.SrcAddr.Equal(local) || vx.Port != port || vx.Learning {
			if err := netlink.LinkDel(l); err != nil {
				return nil, fmt.Errorf("replacing VXLAN device %s: %w", name, err)
			}
			changed = append(changed, "VXLAN device "+name+" replaced (its identifier, address or port changed)")
			l = nil
		}
	} else {
		l = nil
	}
	if l == nil {
		vx := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu}, VxlanId: o.VNI, SrcAddr: local, Port: port, Learning: false}
		if err := netlink.LinkAdd(vx); err != nil {
			return nil, fmt.Errorf("creating VXLAN device %s: %w", name, err)
		}
		changed = append(changed, "VXLAN device "+name+" created")
		if l, err = netlink.LinkByName(name); err != nil {
			return nil, err
		}
	}
	if mtu > 0 && l.Attrs().MTU != mtu {
		if err := netlink.LinkSetMTU(l, mtu); err != nil {
			return nil, fmt.Errorf("VXLAN device %s: setting MTU %d: %w", name, mtu, err)
		}
		changed = append(changed, "VXLAN MTU set")
	}
	if l.Attrs().MasterIndex != br.Attrs().Index {
		if err := netlink.LinkSetMaster(l, br); err != nil {
			return nil, fmt.Errorf("VXLAN device %s: adding to bridge %s: %w", name, bridge, err)
		}
		changed = append(changed, "VXLAN device on the bridge")
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(l); err != nil {
			return nil, err
		}
		changed = append(changed, "VXLAN device up")
	}
	if n, err := deleteVXLANs(bridge, name); err != nil {
		return nil, err
	} else if n > 0 {
		changed = append(changed, "old VXLAN device deleted")
	}
	c, err := syncFDB(l, fdbEntries(o))
	if err != nil {
		return nil, fmt.Errorf("VXLAN device %s: %w", name, err)
	}
	return append(changed, c...), nil
}

// deleteVXLANs deletes the VXLAN devices Rakhsh made on a bridge, except keep; it returns how
// many it deleted.
func deleteVXLANs(bridge, keep string) (int, error) {
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		if isNotFound(err) {
			return 0, nil
		}
		return 0, err
	}
	links, err := netlink.LinkList()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, l := range links {
		a := l.Attrs()
		if a.MasterIndex != br.Attrs().Index || a.Name == keep || l.Type() != "vxlan" || !strings.HasPrefix(a.Name, VXLANPrefix) {
			continue
		}
		if err := netlink.LinkDel(l); err != nil {
			return n, fmt.Errorf("deleting VXLAN device %s: %w", a.Name, err)
		}
		n++
	}
	return n, nil
}

// currentFDB lists the forwarding entries of a VXLAN device that send to a remote address
// (the device's own entries; the bridge's learned ones have no remote).
func currentFDB(l netlink.Link) ([]fdbEntry, error) {
	neighs, err := netlink.NeighList(l.Attrs().Index, syscall.AF_BRIDGE)
	if err != nil {
		return nil, err
	}
	var out []fdbEntry
	for _, n := range neighs {
		if n.Flags&netlink.NTF_SELF == 0 || n.IP == nil || len(n.HardwareAddr) != 6 {
			continue
		}
		a, ok := netip.AddrFromSlice(n.IP)
		if !ok {
			continue
		}
		out = append(out, fdbEntry{MAC: n.HardwareAddr.String(), Dst: a.Unmap()})
	}
	return out, nil
}

func fdbNeigh(l netlink.Link, e fdbEntry) *netlink.Neigh {
	hw, _ := net.ParseMAC(e.MAC)
	return &netlink.Neigh{LinkIndex: l.Attrs().Index, Family: syscall.AF_BRIDGE, State: netlink.NUD_PERMANENT | netlink.NUD_NOARP,
		Flags: netlink.NTF_SELF, HardwareAddr: hw, IP: net.IP(e.Dst.AsSlice())}
}

// syncFDB adds the missing entries of want to the device and deletes those it has beyond
// want.
func syncFDB(l netlink.Link, want []fdbEntry) ([]string, error) {
	have, err := currentFDB(l)
	if err != nil {
		return nil, fmt.Errorf("listing forwarding entries: %w", err)
	}
	wanted := map[fdbEntry]bool{}
	for _, e := range want {
		wanted[e] = true
	}
	had := map[fdbEntry]bool{}
	var changed []string
	for _, e := range have {
		had[e] = true
		if wanted[e] {
			continue
		}
		if err := netlink.NeighDel(fdbNeigh(l, e)); err != nil && !errors.Is(err, syscall.ENOENT) {
			return nil, fmt.Errorf("deleting forwarding entry %s → %s: %w", e.MAC, e.Dst, err)
		}
		changed = append(changed, fmt.Sprintf("forwarding entry %s → %s deleted", e.MAC, e.Dst))
	}
	for _, e := range want {
		if had[e] {
			continue
		}
		if err := netlink.NeighAppend(fdbNeigh(l, e)); err != nil && !errors.Is(err, syscall.EEXIST) {
			return nil, fmt.Errorf("adding forwarding entry %s → %s: %w", e.MAC, e.Dst, err)
		}
		changed = append(changed, fmt.Sprintf("forwarding entry %s → %s added", e.MAC, e.Dst))
	}
	return changed, nil
}

// SyncOverlay brings only the forwarding table of a network's VXLAN device in line with o
// (cheap: netlink only), for changes of nodes and VMs elsewhere. It does nothing when the
// device does not exist (the network's next Ensure makes it).
func (m *Manager) SyncOverlay(o *Overlay) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	l, err := netlink.LinkByName(VXLANName(o.VNI))
	if err != nil {
		if isNotFound(err) {
			return nil, nil
		}
		return nil, err
	}
	if l.Type() != "vxlan" {
		return nil, nil
	}
	return syncFDB(l, fdbEntries(o))
}

// UnderlayMTU returns the MTU of the interface holding addr, or 0 when no interface has it.
func UnderlayMTU(addr netip.Addr) int {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return 0
	}
	for _, a := range addrs {
		if p, ok := netip.AddrFromSlice(a.IP); ok && p.Unmap() == addr.Unmap() {
			if l, err := netlink.LinkByIndex(a.LinkIndex); err == nil {
				return l.Attrs().MTU
			}
		}
	}
	return 0
}

// OverlayMTU is the MTU of a network's bridge, taps and guests when it spans hosts: the
// network's own MTU (default 1500), at most the underlay's less VXLANOverhead.
func OverlayMTU(specMTU, underlayMTU int) int {
	mtu := specMTU
	if mtu <= 0 {
		mtu = 1500
	}
	if underlayMTU > 0 && underlayMTU-VXLANOverhead < mtu {
		mtu = underlayMTU - VXLANOverhead
	}
	return mtu
}

// DetectUnderlay returns the source address this host uses toward the first of hosts (names
// or addresses) that it has a route to: the underlay
// address when none is configured. Loopback and unresolvable targets are skipped; invalid
// when none is left.
func DetectUnderlay(hosts []string) netip.Addr {
	for _, h := range hosts {
		var ips []net.IP
		if a, err := netip.ParseAddr(h); err == nil {
			ips = []net.IP{net.IP(a.Unmap().AsSlice())}
		} else if found, err := net.LookupIP(h); err == nil {
			ips = found
		}
		for _, ip := range ips {
			if ip.To4() == nil || ip.IsLoopback() || ip.IsUnspecified() {
				continue
			}
			routes, err := netlink.RouteGet(ip)
			if err != nil {
				continue
			}
			for _, r := range routes {
				if src, ok := netip.AddrFromSlice(r.Src); ok && src.Unmap().Is4() && !src.Unmap().IsLoopback() {
					return src.Unmap()
				}
			}
		}
	}
	return netip.Addr{}
}
