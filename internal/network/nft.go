package network

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"regexp"
	"sort"
	"strings"
)

// TablePrefix starts the name of every nftables table Rakhsh owns; the network name follows.
const TablePrefix = "rakhsh-"

// Port is one VM NIC on a network as the anti-spoofing rules see it.
type Port struct {
	// Tap is the host tap device of the NIC.
	Tap string
	// MAC is the only source MAC the NIC may send.
	MAC string
	// IPs are the only IPv4 source addresses it may send (and claim in ARP). Empty: any
	// address (a network without IP address management), the MAC is still enforced.
	IPs []netip.Addr
	// Filtered says the NIC has an inbound policy: only Inbound's rules, replies and DHCP and
	// DNS answers reach it. Unfiltered NICs receive everything.
	Filtered bool
	Inbound  []InboundRule
}

// InboundRule lets one protocol in to a filtered port.
type InboundRule struct {
	Protocol string // "tcp", "udp" or "icmp"
	Port     int    // tcp and udp: the first destination port
	EndPort  int    // 0 or the last port of a range
	From     []netip.Prefix
}

// Forward is one port forward of a NAT network: traffic to HostPort on any local address of
// the host is sent to GuestIP:GuestPort.
type Forward struct {
	Protocol  string // "tcp" or "udp"
	HostPort  int
	GuestIP   netip.Addr
	GuestPort int
}

// rulesetInput is what the nftables tables of one network are made from.
type rulesetInput struct {
	Network string
	NAT     bool
	Bridge  string
	Subnet  netip.Prefix // NAT only
	Uplink  string       // NAT: "" masquerades out of every interface but the bridge
	Ports   []Port
	Forward []Forward
	// Gateway is the host's address on a NAT bridge: where dnsmasq answers DHCP and DNS.
	Gateway netip.Addr
	// DHCPServer, when valid, is the only source filtered ports take DHCP answers from.
	DHCPServer netip.Addr
	// DNSServers, when set, are the only sources filtered ports take DNS answers from.
	DNSServers []netip.Addr
	// Deny are destinations a NAT network's guests may not reach through the host, besides
	// the link-local range (with cloud metadata addresses) that is always denied.
	Deny []netip.Prefix
	// Overlay is the VXLAN device of a NAT network that spans hosts ("" when it does not);
	// GatewayMAC is the MAC of its bridge. What belongs to each node's own gateway (its MAC,
	// ARP for its address, DHCP) is kept off the overlay.
	Overlay, GatewayMAC string
}

func tableName(network string) string { return TablePrefix + network }

// quote writes s as an nft double-quoted string; callers pass only interface names, which
// are validated to [A-Za-z0-9_.-].
func quote(s string) string { return `"` + s + `"` }

// ruleset returns the nft script that atomically replaces the tables of one network. The
// "table X; delete table X" pair makes the delete succeed whether or not the table exists.
func ruleset(in rulesetInput) string {
	var b strings.Builder
	t := tableName(in.Network)
	for _, fam := range []string{"ip", "bridge"} {
		fmt.Fprintf(&b, "table %s %s\ndelete table %s %s\n", fam, t, fam, t)
	}
	if in.NAT {
		b.WriteString(natTable(in))
	}
	b.WriteString(bridgeTable(in))
	return b.String()
}

// natTable masquerades the subnet towards the uplink, lets replies and forwarded ports in
// and keeps everything else out of the bridge.
func natTable(in rulesetInput) string {
	var b strings.Builder
	br := quote(in.Bridge)
	fmt.Fprintf(&b, "table ip %s {\n", tableName(in.Network))
	b.WriteString("\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n")
	out := "oifname != " + br
	if in.Uplink != "" {
		out = "oifname " + quote(in.Uplink)
	}
	fmt.Fprintf(&b, "\t\tip saddr %s ip daddr != %s %s masquerade\n\t}\n", in.Subnet, in.Subnet, out)
	fw := sortedForwards(in.Forward)
	b.WriteString("\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n")
	for _, f := range fw {
		fmt.Fprintf(&b, "\t\tiifname != %s fib daddr type local %s dport %d dnat to %s:%d\n", br, f.Protocol, f.HostPort, f.GuestIP, f.GuestPort)
	}
	b.WriteString("\t}\n")
	b.WriteString("\tchain output {\n\t\ttype nat hook output priority -100; policy accept;\n")
	for _, f := range fw {
		fmt.Fprintf(&b, "\t\tfib daddr type local %s dport %d dnat to %s:%d\n", f.Protocol, f.HostPort, f.GuestIP, f.GuestPort)
	}
	b.WriteString("\t}\n")
	// Guests reach the host itself only for DHCP, DNS and ping of the gateway: not sshd, the
	// API or an etcd that listens on every address.
	b.WriteString("\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n")
	fmt.Fprintf(&b, "\t\tiifname %s jump from-guests\n\t}\n", br)
	b.WriteString("\tchain from-guests {\n")
	b.WriteString("\t\tct state established,related accept\n")
	b.WriteString("\t\tudp sport 68 udp dport 67 accept\n")
	if in.Gateway.IsValid() {
		fmt.Fprintf(&b, "\t\tip daddr %s udp dport 53 accept\n", in.Gateway)
		fmt.Fprintf(&b, "\t\tip daddr %s tcp dport 53 accept\n", in.Gateway)
		fmt.Fprintf(&b, "\t\tip daddr %s icmp type echo-request accept\n", in.Gateway)
	}
	b.WriteString("\t\tdrop\n\t}\n")
	b.WriteString("\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n")
	// Link-local destinations (169.254.169.254 is the cloud metadata service of the host's
	// provider) and the operator's denied ranges are never routed for guests.
	deny := disjoint(append([]netip.Prefix{netip.MustParsePrefix("169.254.0.0/16")}, in.Deny...))
	fmt.Fprintf(&b, "\t\tiifname %s ip daddr { %s } reject with icmp type admin-prohibited\n", br, strings.Join(deny, ", "))
	fmt.Fprintf(&b, "\t\tiifname %s accept\n", br)
	fmt.Fprintf(&b, "\t\toifname %s ct state established,related accept\n", br)
	fmt.Fprintf(&b, "\t\toifname %s ct status dnat accept\n", br)
	fmt.Fprintf(&b, "\t\toifname %s drop\n", br)
	b.WriteString("\t}\n}\n")
	return b.String()
}

// bridgeTable holds one chain per VM port: frames entering the bridge from a VM's tap must
// carry its MAC, and IPv4 packets and ARP its leased addresses (0.0.0.0 is allowed as the
// source of DHCP requests and ARP probes). Other ethertypes (IPv6, VLAN tags) are dropped:
// address management is IPv4 only.
func bridgeTable(in rulesetInput) string {
	var b strings.Builder
	fmt.Fprintf(&b, "table bridge %s {\n", tableName(in.Network))
	ports := append([]Port(nil), in.Ports...)
	sort.Slice(ports, func(i, j int) bool { return ports[i].Tap < ports[j].Tap })
	b.WriteString("\tchain prerouting {\n\t\ttype filter hook prerouting priority -200; policy accept;\n")
	for _, p := range ports {
		fmt.Fprintf(&b, "\t\tiifname %s jump port-%s\n", quote(p.Tap), p.Tap)
	}
	b.WriteString("\t}\n")
	for _, p := range ports {
		fmt.Fprintf(&b, "\tchain port-%s {\n", p.Tap)
		fmt.Fprintf(&b, "\t\tether saddr != %s drop\n", p.MAC)
		fmt.Fprintf(&b, "\t\tether type arp arp saddr ether != %s drop\n", p.MAC)
		// A guest is a DHCP client, never a server: its OFFERs and ACKs would make it its
		// neighbours' router and DNS. (DHCPv6 goes with the rest of IPv6, below.)
		b.WriteString("\t\tether type ip udp sport 67 drop\n")
		if len(p.IPs) > 0 {
			set := addrSet(p.IPs)
			fmt.Fprintf(&b, "\t\tether type arp arp saddr ip != { 0.0.0.0, %s } drop\n", set)
			b.WriteString("\t\tether type ip ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept\n")
			fmt.Fprintf(&b, "\t\tether type ip ip saddr != { %s } drop\n", set)
		}
		b.WriteString("\t\tether type != { ip, arp } drop\n")
		b.WriteString("\t}\n")
	}
	if in.Overlay != "" {
		b.WriteString(overlayChains(in))
	}
	var filtered []Port
	for _, p := range ports {
		if p.Filtered {
			filtered = append(filtered, p)
		}
	}
	if len(filtered) > 0 {
		// Frames towards a VM come through the forward hook (from another port of the bridge)
		// or the output hook (routed by the host: NAT replies, port forwards, the gateway).
		for _, hook := range []string{"forward", "output"} {
			fmt.Fprintf(&b, "\tchain %s {\n\t\ttype filter hook %s priority -200; policy accept;\n", hook, hook)
			for _, p := range filtered {
				fmt.Fprintf(&b, "\t\toifname %s jump in-%s\n", quote(p.Tap), p.Tap)
			}
			b.WriteString("\t}\n")
		}
		for _, p := range filtered {
			b.WriteString(inboundChain(p, in.DHCPServer, in.DNSServers))
		}
	}
	b.WriteString("}\n")
	return b.String()
}

// overlayChains keep each node's gateway its own when a NAT network spans hosts: every node
// has the gateway address and MAC on its bridge and answers ARP and DHCP for its own VMs, so
// frames from or to the gateway MAC, ARP for or from the gateway address and DHCP never
// cross the VXLAN device, in either direction. Frames from other nodes' VMs are IPv4 or ARP
// only, as the port chains allow VMs to send. Everything else between VMs (on this node and
// others) passes. The drops count (nft list table bridge rakhsh-NET shows what was kept
// off).
func overlayChains(in rulesetInput) string {
	var b strings.Builder
	vx := quote(in.Overlay)
	common := func() {
		fmt.Fprintf(&b, "\t\tether saddr %s counter drop\n", in.GatewayMAC)
		fmt.Fprintf(&b, "\t\tether daddr %s counter drop\n", in.GatewayMAC)
		if in.Gateway.IsValid() {
			fmt.Fprintf(&b, "\t\tether type arp arp saddr ip %s counter drop\n", in.Gateway)
			fmt.Fprintf(&b, "\t\tether type arp arp daddr ip %s counter drop\n", in.Gateway)
		}
		b.WriteString("\t\tether type ip udp dport { 67, 68 } counter drop\n")
	}
	b.WriteString("\tchain overlay-in {\n\t\ttype filter hook prerouting priority -200; policy accept;\n")
	fmt.Fprintf(&b, "\t\tiifname != %s accept\n", vx)
	common()
	b.WriteString("\t\tether type != { ip, arp } drop\n")
	b.WriteString("\t}\n")
	for _, hook := range []string{"forward", "output"} {
		fmt.Fprintf(&b, "\tchain overlay-%s {\n\t\ttype filter hook %s priority -200; policy accept;\n", hook, hook)
		fmt.Fprintf(&b, "\t\toifname != %s accept\n", vx)
		common()
		b.WriteString("\t}\n")
	}
	return b.String()
}

// inboundChain is the inbound policy of one port. The bridge family has no connection
// tracking on the kernels Rakhsh supports, so the policy is stateless, as a router's ACLs
// are: a TCP segment that opens a connection (SYN without ACK) needs a rule, every other
// segment belongs to a connection the VM opened or to one a rule allowed (a stray one can
// only make the guest answer with a reset). ICMP errors and echo replies, DHCP and DNS
// answers always pass; other UDP and ICMP need a rule. DHCP answers pass only from dhcp and
// DNS answers only from dns when those are known (a network whose DHCP and DNS are on the
// LAN has none: then any source may answer, and dns.servers in the spec closes that).
func inboundChain(p Port, dhcp netip.Addr, dns []netip.Addr) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\tchain in-%s {\n", p.Tap)
	b.WriteString("\t\tether type arp accept\n")
	b.WriteString("\t\tether type != ip drop\n")
	b.WriteString("\t\tip protocol tcp tcp flags & (syn | ack) != syn accept\n")
	b.WriteString("\t\tip protocol icmp icmp type { echo-reply, destination-unreachable, time-exceeded, parameter-problem } accept\n")
	if dhcp.IsValid() {
		fmt.Fprintf(&b, "\t\tip saddr %s udp sport 67 udp dport 68 accept\n", dhcp)
	} else {
		b.WriteString("\t\tudp sport 67 udp dport 68 accept\n")
	}
	if set := addrSet(dns); set != "" {
		fmt.Fprintf(&b, "\t\tip saddr { %s } udp sport 53 accept\n", set)
	} else {
		b.WriteString("\t\tudp sport 53 accept\n")
	}
	for _, r := range p.Inbound {
		var m strings.Builder
		if len(r.From) > 0 {
			srcs := make([]string, 0, len(r.From))
			for _, f := range r.From {
				srcs = append(srcs, f.String())
			}
			sort.Strings(srcs)
			fmt.Fprintf(&m, "ip saddr { %s } ", strings.Join(srcs, ", "))
		}
		switch r.Protocol {
		case "icmp":
			m.WriteString("icmp type echo-request")
		case "tcp", "udp":
			ports := fmt.Sprint(r.Port)
			if r.EndPort > r.Port {
				ports = fmt.Sprintf("%d-%d", r.Port, r.EndPort)
			}
			fmt.Fprintf(&m, "%s dport %s", r.Protocol, ports)
		default:
			continue
		}
		fmt.Fprintf(&b, "\t\t%s accept\n", m.String())
	}
	b.WriteString("\t\tdrop\n\t}\n")
	return b.String()
}

// addrSet lists the IPv4 addresses of ips for an nft set (others are left out: the sets are
// of IPv4 addresses).
func addrSet(ips []netip.Addr) string {
	s := make([]string, 0, len(ips))
	seen := map[netip.Addr]bool{}
	for _, ip := range ips {
		ip = ip.Unmap()
		if ip.Is4() && !seen[ip] {
			seen[ip] = true
			s = append(s, ip.String())
		}
	}
	sort.Strings(s)
	return strings.Join(s, ", ")
}

// disjoint returns the IPv4 prefixes of ps that no other one covers, sorted: an nftables
// interval set refuses overlapping elements.
func disjoint(ps []netip.Prefix) []string {
	var out []string
	for i, p := range ps {
		p = p.Masked()
		if !p.Addr().Is4() {
			continue
		}
		covered := false
		for j, q := range ps {
			q = q.Masked()
			if i != j && q.Addr().Is4() && q.Bits() <= p.Bits() && q.Contains(p.Addr()) && (q.Bits() < p.Bits() || j < i) {
				covered = true
				break
			}
		}
		if !covered {
			out = append(out, p.String())
		}
	}
	sort.Strings(out)
	return out
}

func sortedForwards(f []Forward) []Forward {
	out := append([]Forward(nil), f...)
	sort.Slice(out, func(i, j int) bool {
		if out[i].Protocol != out[j].Protocol {
			return out[i].Protocol < out[j].Protocol
		}
		return out[i].HostPort < out[j].HostPort
	})
	return out
}

// nft runs the nft binary with the script on stdin.
func (m *Manager) nftApply(ctx context.Context, script string) error {
	cmd := exec.CommandContext(ctx, m.nftBin, "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("nft -f: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// nftList returns the listing of a table, or ok=false when it does not exist. Counter
// values are left out: they change with traffic, not with the rules.
func (m *Manager) nftList(ctx context.Context, family, table string) (string, bool) {
	out, err := exec.CommandContext(ctx, m.nftBin, "list", "table", family, table).Output()
	if err != nil {
		return "", false
	}
	return counterValues.ReplaceAllString(string(out), "counter"), true
}

var counterValues = regexp.MustCompile(`counter packets [0-9]+ bytes [0-9]+`)

// nftDelete removes the tables of a network (missing ones are fine).
func (m *Manager) nftDelete(ctx context.Context, network string) error {
	t := tableName(network)
	var b strings.Builder
	for _, fam := range []string{"ip", "bridge"} {
		fmt.Fprintf(&b, "table %s %s\ndelete table %s %s\n", fam, t, fam, t)
	}
	return m.nftApply(ctx, b.String())
}
