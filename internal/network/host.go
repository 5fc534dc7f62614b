package network

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// Config configures a Manager.
type Config struct {
	// DataDir is the data directory; network state goes to DataDir/run/networks/NAME.
	DataDir string
	Log     *slog.Logger
	// Nft and Dnsmasq are the programs; defaults "nft" and "dnsmasq" from PATH.
	Nft, Dnsmasq string
	// NoUpstreamDNS keeps dnsmasq from forwarding names it does not know to the host's
	// resolvers (by default it forwards to the nameservers of /etc/resolv.conf).
	NoUpstreamDNS bool
	// DnsmasqUser is the user dnsmasq drops to after binding its sockets; default
	// DefaultDnsmasqUser, "root" keeps it root (dnsmasq.go).
	DnsmasqUser string
}

// DefaultDnsmasqUser is the user dnsmasq runs as unless Config.DnsmasqUser says otherwise;
// Debian's dnsmasq-base package creates it.
const DefaultDnsmasqUser = "dnsmasq"

// Manager creates, repairs and removes the host side of networks. It is safe for
// concurrent use.
type Manager struct {
	cfg        Config
	log        *slog.Logger
	nftBin     string
	dnsmasqBin string

	mu sync.Mutex
	// applied remembers, per network, the listing of its nftables tables right after the
	// last apply, so drift (a flushed or edited table) is noticed and repaired.
	applied map[string]appliedRules
	// refused are the forwards per network left out because the host listens on their port.
	refused map[string]map[string]bool
}

type appliedRules struct {
	script         string
	ipList, brList string
}

// NewManager returns a manager.
func NewManager(cfg Config) *Manager {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	m := &Manager{cfg: cfg, log: cfg.Log, nftBin: cfg.Nft, dnsmasqBin: cfg.Dnsmasq, applied: map[string]appliedRules{}}
	if m.nftBin == "" {
		m.nftBin = "nft"
	}
	if m.dnsmasqBin == "" {
		m.dnsmasqBin = "dnsmasq"
	}
	if m.cfg.DnsmasqUser == "" {
		m.cfg.DnsmasqUser = DefaultDnsmasqUser
	}
	return m
}

// CheckTools reports which of the programs the manager needs are missing.
func (m *Manager) CheckTools() error {
	var missing []string
	for _, p := range []string{m.nftBin, m.dnsmasqBin} {
		if _, err := exec.LookPath(p); err != nil {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing programs %s (apt-get install nftables dnsmasq-base)", strings.Join(missing, ", "))
	}
	return nil
}

// Desired is the host state of one network.
type Desired struct {
	Name string
	Spec v1alpha1.ClusterNetworkSpec
	// Hosts are the static DHCP entries (MAC → IP) of the VM NICs on this host.
	Hosts []Host
	// Ports are the taps of VM NICs on this host, for the anti-spoofing rules.
	Ports []Port
	// Forwards are the port forwards of a NAT network.
	Forwards []Forward
	// Overlay, for a NAT network that spans hosts, is its VXLAN device and forwarding
	// table (overlay.go); nil: the network stays on this host (no VXLAN device).
	Overlay *Overlay
}

// stateFile is what is kept on disk of an ensured network, so it can be removed after its
// ClusterNetwork object is gone.
type stateFile struct {
	Name string                      `json:"name"`
	Spec v1alpha1.ClusterNetworkSpec `json:"spec"`
}

func stateDir(dataDir, network string) string {
	return filepath.Join(dataDir, "run", "networks", network)
}

// Ensure makes the host match d and returns what it changed (for logs). It is idempotent
// and repairs drift.
func (m *Manager) Ensure(ctx context.Context, d Desired) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var changed []string
	s := d.Spec
	nat := s.Type == v1alpha1.ClusterNetworkTypeNAT
	if err := checkIfName(s.Bridge); err != nil {
		return nil, fmt.Errorf("network %s: bridge: %w", d.Name, err)
	}
	var subnet netip.Prefix
	var gw netip.Addr
	if s.Subnet != "" {
		p, err := netip.ParsePrefix(s.Subnet)
		if err != nil {
			return nil, fmt.Errorf("network %s: subnet %q: %v", d.Name, s.Subnet, err)
		}
		subnet = p.Masked()
	}
	if s.Gateway != "" {
		a, err := netip.ParseAddr(s.Gateway)
		if err != nil {
			return nil, fmt.Errorf("network %s: gateway %q: %v", d.Name, s.Gateway, err)
		}
		gw = a
	}
	if nat && (!subnet.IsValid() || !gw.IsValid()) {
		return nil, fmt.Errorf("network %s: a NAT network needs a subnet and a gateway", d.Name)
	}
	dir := stateDir(m.cfg.DataDir, d.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	st, _ := json.Marshal(stateFile{Name: d.Name, Spec: s})
	if _, err := writeIfChanged(filepath.Join(dir, "network.json"), st); err != nil {
		return nil, err
	}

	// The bridge.
	if nat {
		c, err := ensureBridge(s.Bridge, s.MTU, netip.PrefixFrom(gw, subnet.Bits()))
		if err != nil {
			return nil, fmt.Errorf("network %s: %w", d.Name, err)
		}
		changed = append(changed, c...)
		// A VXLAN device no longer wanted goes before its rules; a wanted one is made after
		// them (below), so frames never cross the overlay unfiltered.
		if d.Overlay == nil {
			if n, err := deleteVXLANs(s.Bridge, ""); err != nil {
				return nil, fmt.Errorf("network %s: %w", d.Name, err)
			} else if n > 0 {
				changed = append(changed, "VXLAN device deleted: the network no longer spans hosts")
			}
		}
		if c, err := enableForwarding(); err != nil {
			return nil, fmt.Errorf("network %s: enabling IPv4 forwarding: %w", d.Name, err)
		} else if c {
			changed = append(changed, "ipv4 forwarding enabled")
		}
	} else {
		l, err := netlink.LinkByName(s.Bridge)
		if err != nil {
			return nil, fmt.Errorf("network %s: host bridge %s: %w", d.Name, s.Bridge, err)
		}
		if l.Type() != "bridge" {
			return nil, fmt.Errorf("network %s: host interface %s is a %s, not a bridge", d.Name, s.Bridge, l.Type())
		}
	}

	// Taps exist and are on the bridge (they are made by EnsureTap; here only re-attached).
	for _, p := range d.Ports {
		if c, err := attachTap(p.Tap, s.Bridge, s.MTU); err != nil && !isNotFound(err) {
			return nil, fmt.Errorf("network %s: tap %s: %w", d.Name, p.Tap, err)
		} else if c {
			changed = append(changed, "tap "+p.Tap+" re-attached")
		}
	}

	// nftables.
	uplink := s.Uplink
	if nat && uplink == "" {
		uplink = defaultRouteIface()
	}
	in := rulesetInput{Network: d.Name, NAT: nat, Bridge: s.Bridge, Subnet: subnet, Uplink: uplink, Ports: d.Ports}
	if nat && d.Overlay != nil {
		in.Overlay = VXLANName(d.Overlay.VNI)
		in.GatewayMAC = GatewayMAC(s.Bridge).String()
	}
	if nat {
		in.Forward = m.usableForwards(d.Name, d.Forwards)
		in.Gateway = gw
		in.DHCPServer = gw
		if s.NAT != nil {
			for _, x := range s.NAT.DenyDestinations {
				if p, err := netip.ParsePrefix(x); err == nil {
					in.Deny = append(in.Deny, p)
				}
			}
		}
	}
	if s.DNS != nil && len(s.DNS.Servers) > 0 {
		// Guests are IPv4 only: IPv6 resolvers cannot answer them (and an IPv6 address in
		// an IPv4 set would fail the whole ruleset).
		for _, x := range s.DNS.Servers {
			if a, err := netip.ParseAddr(x); err == nil && a.Unmap().Is4() {
				in.DNSServers = append(in.DNSServers, a.Unmap())
			}
		}
	}
	if len(in.DNSServers) == 0 && nat {
		in.DNSServers = []netip.Addr{gw}
	}
	script := ruleset(in)
	prev, known := m.applied[d.Name]
	ipList, ipOK := m.nftList(ctx, "ip", tableName(d.Name))
	brList, brOK := m.nftList(ctx, "bridge", tableName(d.Name))
	rulesPath := filepath.Join(dir, "nft.rules")
	if !known {
		// A restarted process: tables it applied before (same script on disk) are adopted
		// as they are, so running VMs see no rule change at all.
		if old, err := os.ReadFile(rulesPath); err == nil && string(old) == script && brOK && ipOK == nat {
			prev = appliedRules{script: script, ipList: ipList, brList: brList}
			m.applied[d.Name] = prev
		}
	}
	drift := !brOK || brList != prev.brList || (nat && (!ipOK || ipList != prev.ipList)) || (!nat && ipOK)
	if script != prev.script || drift {
		if err := m.nftApply(ctx, script); err != nil {
			return nil, fmt.Errorf("network %s: %w", d.Name, err)
		}
		ipList, _ = m.nftList(ctx, "ip", tableName(d.Name))
		brList, _ = m.nftList(ctx, "bridge", tableName(d.Name))
		m.applied[d.Name] = appliedRules{script: script, ipList: ipList, brList: brList}
		if _, err := writeIfChanged(rulesPath, []byte(script)); err != nil {
			return nil, err
		}
		if prev.script == "" {
			changed = append(changed, "nftables tables written")
		} else if script != prev.script {
			changed = append(changed, "nftables rules updated")
		} else {
			changed = append(changed, "nftables drift repaired")
		}
	}

	// The VXLAN device of a network across hosts, after the rules that filter its port.
	if nat && d.Overlay != nil {
		c, err := ensureVXLAN(s.Bridge, s.MTU, d.Overlay)
		if err != nil {
			return nil, fmt.Errorf("network %s: %w", d.Name, err)
		}
		changed = append(changed, c...)
	}

	// dnsmasq.
	if s.DHCP != nil && s.DHCP.Mode == v1alpha1.DHCPModeDnsmasq && subnet.IsValid() {
		c, err := m.ensureDnsmasq(ctx, dir, d, subnet, gw)
		if err != nil {
			return nil, fmt.Errorf("network %s: %w", d.Name, err)
		}
		changed = append(changed, c...)
	} else if dnsmasqPID(dir) > 0 {
		stopDnsmasq(dir)
		changed = append(changed, "dnsmasq stopped")
	}
	return changed, nil
}

func (m *Manager) ensureDnsmasq(ctx context.Context, dir string, d Desired, subnet netip.Prefix, gw netip.Addr) ([]string, error) {
	s := d.Spec
	var changed []string
	lt := time.Hour
	if s.DHCP.LeaseTime != "" {
		if v, err := time.ParseDuration(s.DHCP.LeaseTime); err == nil {
			lt = v
		}
	}
	hostsPath, hostsGroup, err := m.hostsPath(dir)
	if err != nil {
		return nil, err
	}
	in := dnsmasqInput{Dir: dir, Bridge: s.Bridge, Subnet: subnet, Gateway: gw, LeaseTime: lt, MTU: s.MTU, User: m.cfg.DnsmasqUser, HostsFile: hostsPath}
	if hostsGroup >= 0 {
		g, err := user.LookupGroupId(strconv.Itoa(hostsGroup))
		if err != nil {
			return nil, fmt.Errorf("the dnsmasq user's group %d: %w", hostsGroup, err)
		}
		in.Group = g.Name
	}
	if s.DNS != nil && len(s.DNS.Servers) > 0 {
		for _, x := range s.DNS.Servers {
			if a, err := netip.ParseAddr(x); err == nil {
				in.DNS = append(in.DNS, a)
			}
		}
	} else if s.Type == v1alpha1.ClusterNetworkTypeNAT {
		in.DNS = []netip.Addr{gw}
		if !m.cfg.NoUpstreamDNS {
			in.Upstreams = hostResolvers()
		}
	}
	confChanged, err := writeIfChanged(filepath.Join(dir, dnsmasqConf), []byte(dnsmasqConfig(in)))
	if err != nil {
		return nil, err
	}
	hostsChanged, err := writeIfChanged(hostsPath, []byte(hostsFile(d.Hosts)))
	if err != nil {
		return nil, err
	}
	if hostsGroup >= 0 {
		// Readable by the dnsmasq user's group only.
		if err := os.Chown(hostsPath, 0, hostsGroup); err != nil {
			return nil, err
		}
		if err := os.Chmod(hostsPath, 0o640); err != nil {
			return nil, err
		}
	}
	pid := dnsmasqPID(dir)
	switch {
	case pid > 0 && confChanged:
		stopDnsmasq(dir)
		if _, err := m.startDnsmasq(ctx, dir); err != nil {
			return nil, err
		}
		changed = append(changed, "dnsmasq restarted with a new configuration")
	case pid > 0 && hostsChanged:
		// dnsmasq re-reads its dhcp-hostsfile on SIGHUP (as its own user, from a file its
		// group reads).
		if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
			return nil, fmt.Errorf("reloading dnsmasq: %w", err)
		}
		changed = append(changed, "dnsmasq hosts reloaded")
	case pid <= 0:
		if _, err := m.startDnsmasq(ctx, dir); err != nil {
			return nil, err
		}
		changed = append(changed, "dnsmasq started")
	}
	return changed, nil
}

// Remove takes down the host side of a network: its dnsmasq, its nftables tables and, for a
// NAT network, its bridge. The operator's bridge of a Bridge network is left alone.
func (m *Manager) Remove(ctx context.Context, network string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	dir := stateDir(m.cfg.DataDir, network)
	var st stateFile
	data, err := os.ReadFile(filepath.Join(dir, "network.json"))
	if err == nil {
		_ = json.Unmarshal(data, &st)
	}
	stopDnsmasq(dir)
	removeShare(dir)
	if err := m.nftDelete(ctx, network); err != nil {
		return err
	}
	delete(m.applied, network)
	if st.Spec.Type == v1alpha1.ClusterNetworkTypeNAT && st.Spec.Bridge != "" {
		if _, err := deleteVXLANs(st.Spec.Bridge, ""); err != nil {
			return err
		}
		if l, err := netlink.LinkByName(st.Spec.Bridge); err == nil && l.Type() == "bridge" {
			if err := netlink.LinkDel(l); err != nil {
				return fmt.Errorf("deleting bridge %s: %w", st.Spec.Bridge, err)
			}
		}
	}
	return os.RemoveAll(dir)
}

// Networks lists the networks that have host state on this host.
func (m *Manager) Networks() []string {
	entries, err := os.ReadDir(filepath.Join(m.cfg.DataDir, "run", "networks"))
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out
}

// TapName is the tap of a VM's NIC: "rkt", 8 hex digits of the VM uid's hash and the
// interface index. It stays the same for the life of the VM.
func TapName(vmUID string, index int) string {
	h := sha256.Sum256([]byte(vmUID))
	return fmt.Sprintf("rkt%x%d", h[:4], index)
}

// TapPrefix starts every tap name Rakhsh makes.
const TapPrefix = "rkt"

// EnsureTap creates the persistent tap (if missing), gives it the MTU and puts it on the
// bridge, up. Its own MAC is the VM's with the first octet 0xfe (so the bridge never takes
// it as its address).
func (m *Manager) EnsureTap(name, bridge string, mtu int, vmMAC string) error {
	if err := checkIfName(name); err != nil {
		return err
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		if !isNotFound(err) {
			return err
		}
		t := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name}, Mode: netlink.TUNTAP_MODE_TAP,
			Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR | netlink.TUNTAP_ONE_QUEUE}
		if err := netlink.LinkAdd(t); err != nil {
			return fmt.Errorf("creating tap %s: %w", name, err)
		}
		if l, err = netlink.LinkByName(name); err != nil {
			return err
		}
	} else if l.Type() != "tuntap" {
		return fmt.Errorf("interface %s exists and is a %s, not a tap", name, l.Type())
	}
	if hw, err := net.ParseMAC(vmMAC); err == nil && len(hw) == 6 {
		hw[0] = 0xfe
		if l.Attrs().HardwareAddr.String() != hw.String() {
			if err := netlink.LinkSetHardwareAddr(l, hw); err != nil {
				return fmt.Errorf("tap %s: setting its MAC: %w", name, err)
			}
		}
	}
	_, err = attachTap(name, bridge, mtu)
	return err
}

// DeleteTap removes a tap; a missing one is fine.
func (m *Manager) DeleteTap(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		if isNotFound(err) {
			return nil
		}
		return err
	}
	return netlink.LinkDel(l)
}

// Taps lists the taps Rakhsh made on this host.
func (m *Manager) Taps() []string {
	links, err := netlink.LinkList()
	if err != nil {
		return nil
	}
	var out []string
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, TapPrefix) && l.Type() == "tuntap" {
			out = append(out, l.Attrs().Name)
		}
	}
	return out
}

// attachTap puts an existing tap on the bridge with the MTU, up; it reports whether
// anything had to change.
func attachTap(name, bridge string, mtu int) (bool, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return false, err
	}
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return false, fmt.Errorf("bridge %s: %w", bridge, err)
	}
	changed := false
	if mtu > 0 && l.Attrs().MTU != mtu {
		if err := netlink.LinkSetMTU(l, mtu); err != nil {
			return false, fmt.Errorf("setting MTU %d: %w", mtu, err)
		}
		changed = true
	}
	if l.Attrs().MasterIndex != br.Attrs().Index {
		if err := netlink.LinkSetMaster(l, br); err != nil {
			return false, fmt.Errorf("adding to bridge %s: %w", bridge, err)
		}
		changed = true
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(l); err != nil {
			return false, err
		}
		changed = true
	}
	return changed, nil
}

// ensureBridge makes the NAT bridge with the gateway address, MTU and up.
func ensureBridge(name string, mtu int, addr netip.Prefix) ([]string, error) {
	var changed []string
	l, err := netlink.LinkByName(name)
	if err != nil {
		if !isNotFound(err) {
			return nil, err
		}
		// A fixed, locally administered MAC derived from the name: the bridge's address
		// does not change as taps come and go, and is the same on every node (GatewayMAC).
		hw := GatewayMAC(name)
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu, HardwareAddr: hw}}
		if err := netlink.LinkAdd(br); err != nil {
			return nil, fmt.Errorf("creating bridge %s: %w", name, err)
		}
		changed = append(changed, "bridge "+name+" created")
		if l, err = netlink.LinkByName(name); err != nil {
			return nil, err
		}
	} else if l.Type() != "bridge" {
		return nil, fmt.Errorf("interface %s exists and is a %s, not a bridge", name, l.Type())
	}
	if mtu > 0 && l.Attrs().MTU != mtu {
		if err := netlink.LinkSetMTU(l, mtu); err != nil {
			return nil, fmt.Errorf("bridge %s: setting MTU %d: %w", name, mtu, err)
		}
		changed = append(changed, "bridge MTU set")
	}
	if hw := GatewayMAC(name); l.Attrs().HardwareAddr.String() != hw.String() {
		// The gateway's MAC is the same on every node only while nobody changes it.
		if err := netlink.LinkSetHardwareAddr(l, hw); err != nil {
			return nil, fmt.Errorf("bridge %s: setting its MAC %s: %w", name, hw, err)
		}
		changed = append(changed, "bridge MAC restored")
	}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return nil, err
	}
	have := false
	for _, a := range addrs {
		if p, ok := netip.AddrFromSlice(a.IP); ok && netip.PrefixFrom(p.Unmap(), onesOf(a.Mask)) == addr {
			have = true
		}
	}
	if !have {
		ipn := &net.IPNet{IP: net.IP(addr.Addr().AsSlice()), Mask: net.CIDRMask(addr.Bits(), 32)}
		if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: ipn}); err != nil && !errors.Is(err, syscall.EEXIST) {
			return nil, fmt.Errorf("bridge %s: adding %s: %w", name, addr, err)
		}
		changed = append(changed, "gateway address "+addr.String()+" added")
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(l); err != nil {
			return nil, err
		}
		changed = append(changed, "bridge up")
	}
	return changed, nil
}

func onesOf(m net.IPMask) int { o, _ := m.Size(); return o }

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}

// enableForwarding turns on IPv4 forwarding (in this network namespace).
func enableForwarding() (bool, error) {
	const p = "/proc/sys/net/ipv4/ip_forward"
	b, err := os.ReadFile(p)
	if err != nil {
		return false, err
	}
	if strings.TrimSpace(string(b)) == "1" {
		return false, nil
	}
	return true, os.WriteFile(p, []byte("1\n"), 0o644)
}

// defaultRouteIface is the interface of the IPv4 default route, or "".
func defaultRouteIface() string {
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return ""
	}
	for _, r := range routes {
		if r.Dst == nil || r.Dst.String() == "0.0.0.0/0" {
			if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
				return l.Attrs().Name
			}
		}
	}
	return ""
}

// hostResolvers are the IPv4 nameservers of /etc/resolv.conf.
func hostResolvers() []string {
	f, err := os.Open("/etc/resolv.conf")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "nameserver" {
			if a, err := netip.ParseAddr(fields[1]); err == nil && a.Is4() {
				out = append(out, a.String())
			}
		}
	}
	return out
}

// checkIfName checks a Linux interface name.
func checkIfName(s string) error {
	if s == "" || len(s) > 15 {
		return fmt.Errorf("interface name %q must be 1-15 characters", s)
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '.' || r == '-') {
			return fmt.Errorf("interface name %q may hold only letters, digits, '_', '.' and '-'", s)
		}
	}
	return nil
}

// usableForwards leaves out the forwards whose host port a socket of the host listens on (a
// forward would capture sshd, the API or etcd there), logging each once when it is first
// left out and when it comes back.
func (m *Manager) usableForwards(network string, fw []Forward) []Forward {
	if len(fw) == 0 {
		return nil
	}
	busy, err := hostListeners()
	if err != nil {
		m.log.Warn("cannot read the host's listening sockets; port forwards are applied unchecked", "network", network, "err", err)
		return fw
	}
	if m.refused == nil {
		m.refused = map[string]map[string]bool{}
	}
	was := m.refused[network]
	now := map[string]bool{}
	var out []Forward
	for _, f := range fw {
		id := fmt.Sprintf("%s/%d", f.Protocol, f.HostPort)
		if busy[id] {
			now[id] = true
			if !was[id] {
				m.log.Warn("port forward refused: the host already listens on its port", "network", network,
					"hostPort", id, "guest", fmt.Sprintf("%s:%d", f.GuestIP, f.GuestPort))
			}
			continue
		}
		if was[id] {
			m.log.Info("port forward applied: the host no longer listens on its port", "network", network, "hostPort", id)
		}
		out = append(out, f)
	}
	m.refused[network] = now
	return out
}
