package network

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/testutil"
)

func TestFDBEntries(t *testing.T) {
	a := netip.MustParseAddr
	o := &Overlay{VNI: 7, Local: a("10.232.0.1"),
		Peers: []netip.Addr{a("10.232.0.3"), a("10.232.0.2"), a("10.232.0.1"), a("10.232.0.2"), {}},
		Remote: []RemoteMAC{
			{MAC: "02:72:6B:00:00:02", Node: a("10.232.0.2")},
			{MAC: "02:72:6b:00:00:01", Node: a("10.232.0.1")}, // on this node: the bridge knows it
			{MAC: "not-a-mac", Node: a("10.232.0.2")},
			{MAC: "02:72:6b:00:00:03", Node: a("::ffff:10.232.0.3")},
			{MAC: "02:72:6b:00:00:04", Node: a("fd00::4")}, // an IPv6 underlay is not supported
			{MAC: floodMAC, Node: a("10.232.0.9")},         // never a flood entry from a VM
		}}
	var got []string
	for _, e := range fdbEntries(o) {
		got = append(got, e.MAC+">"+e.Dst.String())
	}
	want := []string{"00:00:00:00:00:00>10.232.0.2", "00:00:00:00:00:00>10.232.0.3",
		"02:72:6b:00:00:02>10.232.0.2", "02:72:6b:00:00:03>10.232.0.3"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("entries\n got %v\nwant %v", got, want)
	}
	if e := fdbEntries(&Overlay{VNI: 7, Local: a("10.232.0.1")}); len(e) != 0 {
		t.Fatalf("no peers: %v", e)
	}
}

func TestOverlayMTU(t *testing.T) {
	for _, c := range []struct{ spec, underlay, want int }{
		{0, 1500, 1450}, {1500, 1500, 1450}, {1400, 1500, 1400}, {9000, 9000, 8950}, {0, 0, 1500}, {1300, 0, 1300},
	} {
		if got := OverlayMTU(c.spec, c.underlay); got != c.want {
			t.Errorf("OverlayMTU(%d, %d) = %d, want %d", c.spec, c.underlay, got, c.want)
		}
	}
}

func TestGatewayMACStable(t *testing.T) {
	a, b := GatewayMAC("rk-main"), GatewayMAC("rk-main")
	if a.String() != b.String() || a[0] != 0x02 || GatewayMAC("rk-other").String() == a.String() {
		t.Fatalf("GatewayMAC: %s %s %s", a, b, GatewayMAC("rk-other"))
	}
}

func TestRulesetOverlay(t *testing.T) {
	in := rulesetInput{Network: "main", NAT: true, Bridge: "rk-main", Subnet: netip.MustParsePrefix("10.66.0.0/24"),
		Gateway: netip.MustParseAddr("10.66.0.1"), DHCPServer: netip.MustParseAddr("10.66.0.1")}
	plain := ruleset(in)
	if strings.Contains(plain, "overlay") {
		t.Fatalf("a network on one host has overlay rules:\n%s", plain)
	}
	in.Overlay, in.GatewayMAC = "rkv1", GatewayMAC("rk-main").String()
	s := ruleset(in)
	gw := in.GatewayMAC
	for _, want := range []string{
		"chain overlay-in {\n\t\ttype filter hook prerouting priority -200; policy accept;\n\t\tiifname != \"rkv1\" accept\n",
		"chain overlay-forward {\n\t\ttype filter hook forward priority -200; policy accept;\n\t\toifname != \"rkv1\" accept\n",
		"chain overlay-output {\n\t\ttype filter hook output priority -200; policy accept;\n\t\toifname != \"rkv1\" accept\n",
		"ether saddr " + gw + " counter drop", "ether daddr " + gw + " counter drop",
		"arp saddr ip 10.66.0.1 counter drop", "arp daddr ip 10.66.0.1 counter drop",
		"ether type ip udp dport { 67, 68 } counter drop",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("overlay ruleset lacks %q:\n%s", want, s)
		}
	}
	if strings.Count(s, "ether saddr "+gw+" counter drop") != 3 {
		t.Errorf("the gateway MAC must be kept off the overlay in all three chains:\n%s", s)
	}
	if !strings.HasPrefix(s, plain[:strings.Index(plain, "table bridge rakhsh-main {")]) {
		t.Errorf("the overlay changed the NAT table")
	}
}

// underlayLab is two "nodes" (network namespaces joined by a veth pair, the underlay, on
// 10.232.0.0/24) and a "VM" namespace behind each node's bridge (a veth end stands in for a
// tap).
type underlayLab struct {
	node, vm [2]string
	vmMAC    [2]string
	vmIP     [2]string
	under    [2]netip.Addr
}

func sh(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func newUnderlayLab(t *testing.T) *underlayLab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test makes network namespaces and needs root")
	}
	for _, p := range []string{"ip", "nft", "bridge"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Fatalf("%s is missing: run scripts/install-deps.sh (apt-get install iproute2 nftables)", p)
		}
	}
	id := os.Getpid() % 100000
	l := &underlayLab{vmMAC: [2]string{"02:72:6b:00:01:01", "02:72:6b:00:01:02"}, vmIP: [2]string{"10.77.0.10", "10.77.0.20"},
		under: [2]netip.Addr{netip.MustParseAddr("10.232.0.1"), netip.MustParseAddr("10.232.0.2")}}
	for i := 0; i < 2; i++ {
		l.node[i] = fmt.Sprintf("rko-n%d-%d", i+1, id)
		l.vm[i] = fmt.Sprintf("rko-v%d-%d", i+1, id)
		for _, ns := range []string{l.node[i], l.vm[i]} {
			sh(t, "ip", "netns", "add", ns)
			ns := ns
			t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
			sh(t, "ip", "-n", ns, "link", "set", "lo", "up")
		}
	}
	sh(t, "ip", "-n", l.node[0], "link", "add", "rkou", "type", "veth", "peer", "name", "rkou", "netns", l.node[1])
	for i := 0; i < 2; i++ {
		sh(t, "ip", "-n", l.node[i], "addr", "add", l.under[i].String()+"/24", "dev", "rkou")
		sh(t, "ip", "-n", l.node[i], "link", "set", "rkou", "up")
		tap := fmt.Sprintf("rkotap%d", i+1)
		sh(t, "ip", "-n", l.vm[i], "link", "add", "eth0", "type", "veth", "peer", "name", tap, "netns", l.node[i])
		sh(t, "ip", "-n", l.vm[i], "link", "set", "eth0", "address", l.vmMAC[i], "mtu", "1450", "up")
		sh(t, "ip", "-n", l.vm[i], "addr", "add", l.vmIP[i]+"/24", "dev", "eth0")
		sh(t, "ip", "-n", l.vm[i], "route", "add", "default", "via", "10.77.0.1")
	}
	return l
}

func (l *underlayLab) desired(i int, remote bool) Desired {
	other := 1 - i
	spec := v1alpha1.ClusterNetworkSpec{Type: v1alpha1.ClusterNetworkTypeNAT, Bridge: "rko-br", Subnet: "10.77.0.0/24", Gateway: "10.77.0.1", MTU: 1450}
	o := &Overlay{VNI: 4242, Local: l.under[i]}
	if remote {
		o.Peers = []netip.Addr{l.under[other]}
		o.Remote = []RemoteMAC{{MAC: l.vmMAC[other], Node: l.under[other]}}
	}
	return Desired{Name: "rko", Spec: spec, Overlay: o,
		Ports: []Port{{Tap: fmt.Sprintf("rkotap%d", i+1), MAC: l.vmMAC[i], IPs: []netip.Addr{netip.MustParseAddr(l.vmIP[i])}}}}
}

// ping sends ICMP echo requests to addr from inside the namespace ns (a raw socket made
// there) and returns nil at the first reply from addr, within about 4 s.
func ping(t *testing.T, ns, addr string) error { return pingFrom(t, ns, "0.0.0.0", addr) }

// pingFrom is ping with the source address src.
func pingFrom(t *testing.T, ns, src, addr string) error {
	t.Helper()
	var c net.PacketConn
	var err error
	testutil.InNetns(t, ns, func() { c, err = net.ListenPacket("ip4:icmp", src) })
	if err != nil {
		return err
	}
	defer c.Close()
	dst := &net.IPAddr{IP: net.ParseIP(addr)}
	id := os.Getpid() & 0xffff
	for seq := 1; seq <= 4; seq++ {
		msg := []byte{8, 0, 0, 0, byte(id >> 8), byte(id), 0, byte(seq), 'r', 'k', 'o'}
		sum := icmpChecksum(msg)
		msg[2], msg[3] = byte(sum>>8), byte(sum)
		if _, err := c.WriteTo(msg, dst); err != nil {
			return fmt.Errorf("ping %s from %s: %w", addr, ns, err)
		}
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		buf := make([]byte, 1500)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				break // this attempt timed out
			}
			if from.String() == addr && n >= 8 && buf[0] == 0 && int(buf[4])<<8|int(buf[5]) == id {
				return nil
			}
		}
	}
	return fmt.Errorf("ping %s from %s: no reply", addr, ns)
}

func icmpChecksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

var dropCount = regexp.MustCompile(`arp daddr ip 10\.77\.0\.1 counter packets ([0-9]+)`)

// TestOverlayTwoNodes builds the host side of one NAT network on two nodes with real
// netlink and nft, joined by VXLAN over a veth underlay, and shows: the VXLAN device and its
// forwarding table as asked; VM-to-VM frames cross between the nodes, a spoofed source
// address does not; each node's gateway
// (same address, same MAC) answers its own VM, and ARP for it is kept off the overlay;
// without forwarding entries nothing crosses; a network back on one host has no VXLAN
// device; Remove leaves nothing.
func TestOverlayTwoNodes(t *testing.T) {
	l := newUnderlayLab(t)
	ctx := context.Background()
	var ms [2]*Manager
	for i := 0; i < 2; i++ {
		ms[i] = NewManager(Config{DataDir: t.TempDir(), NoUpstreamDNS: true})
		i := i
		testutil.InNetns(t, l.node[i], func() {
			if _, err := ms[i].Ensure(ctx, l.desired(i, true)); err != nil {
				t.Fatalf("node %d: %v", i+1, err)
			}
		})
	}
	// Idempotent: the same state again changes nothing (the device is not replaced, no entry
	// is rewritten, the rules stay).
	testutil.InNetns(t, l.node[0], func() {
		changed, err := ms[0].Ensure(ctx, l.desired(0, true))
		if err != nil || len(changed) != 0 {
			t.Fatalf("a second Ensure changed %v (err %v)", changed, err)
		}
	})
	n1 := func(args ...string) string {
		return sh(t, append([]string{"ip", "netns", "exec", l.node[0]}, args...)...)
	}

	link := n1("ip", "-d", "link", "show", "rkv4242")
	for _, want := range []string{"master rko-br", "mtu 1450", "vxlan id 4242", "local 10.232.0.1", "dstport 4789", "nolearning"} {
		if !strings.Contains(link, want) {
			t.Errorf("the VXLAN device lacks %q:\n%s", want, link)
		}
	}
	fdb := n1("bridge", "fdb", "show", "dev", "rkv4242")
	for _, want := range []string{"00:00:00:00:00:00 dst 10.232.0.2 self permanent", l.vmMAC[1] + " dst 10.232.0.2 self permanent"} {
		if !strings.Contains(fdb, want) {
			t.Errorf("forwarding table lacks %q:\n%s", want, fdb)
		}
	}
	if br := n1("ip", "link", "show", "rko-br"); !strings.Contains(br, GatewayMAC("rko-br").String()) {
		t.Errorf("the bridge does not carry the gateway MAC %s:\n%s", GatewayMAC("rko-br"), br)
	}

	// Across the nodes, both ways.
	if err := ping(t, l.vm[0], l.vmIP[1]); err != nil {
		t.Fatal(err)
	}
	if err := ping(t, l.vm[1], l.vmIP[0]); err != nil {
		t.Fatal(err)
	}
	// Anti-spoofing holds across the overlay: a source address the VM does not lease never
	// reaches the other node's VM.
	sh(t, "ip", "-n", l.vm[0], "addr", "add", "10.77.0.99/24", "dev", "eth0")
	if err := pingFrom(t, l.vm[0], "10.77.0.99", l.vmIP[1]); err == nil {
		t.Fatal("a spoofed source address crossed the overlay")
	}
	sh(t, "ip", "-n", l.vm[0], "addr", "del", "10.77.0.99/24", "dev", "eth0")
	if err := ping(t, l.vm[0], l.vmIP[1]); err != nil {
		t.Fatalf("after the spoofing attempt: %v", err)
	}

	// Each VM's gateway: the address and MAC of its own node's bridge. Its ARP request for
	// the gateway was not sent over the overlay (the drop counted).
	for i := 0; i < 2; i++ {
		sh(t, "ip", "-n", l.vm[i], "neigh", "flush", "all")
		if err := ping(t, l.vm[i], "10.77.0.1"); err != nil {
			t.Fatal(err)
		}
		neigh := sh(t, "ip", "-n", l.vm[i], "neigh", "show", "10.77.0.1")
		if !strings.Contains(neigh, GatewayMAC("rko-br").String()) {
			t.Errorf("VM %d resolves the gateway to %q, want %s", i+1, neigh, GatewayMAC("rko-br"))
		}
		rules := sh(t, "ip", "netns", "exec", l.node[i], "nft", "list", "chain", "bridge", "rakhsh-rko", "overlay-forward")
		m := dropCount.FindStringSubmatch(rules)
		if m == nil {
			t.Fatalf("node %d: no counted rule for ARP of the gateway:\n%s", i+1, rules)
		}
		if n, _ := strconv.Atoi(m[1]); n == 0 {
			t.Errorf("node %d: the VM's ARP for the gateway was not kept off the overlay:\n%s", i+1, rules)
		}
	}

	// The forwarding table follows: without the entries of the other node nothing crosses.
	testutil.InNetns(t, l.node[0], func() {
		if _, err := ms[0].SyncOverlay(l.desired(0, false).Overlay); err != nil {
			t.Fatal(err)
		}
	})
	if fdb := n1("bridge", "fdb", "show", "dev", "rkv4242"); strings.Contains(fdb, " dst ") {
		t.Fatalf("entries left after the peer went away:\n%s", fdb)
	}
	sh(t, "ip", "-n", l.vm[0], "neigh", "flush", "all")
	if err := ping(t, l.vm[0], l.vmIP[1]); err == nil {
		t.Fatal("a VM reached the other node with no forwarding entries: the frames did not go over the VXLAN table")
	}
	testutil.InNetns(t, l.node[0], func() {
		if _, err := ms[0].Ensure(ctx, l.desired(0, true)); err != nil {
			t.Fatal(err)
		}
	})
	if err := ping(t, l.vm[0], l.vmIP[1]); err != nil {
		t.Fatalf("after restoring the entries: %v", err)
	}

	// Back on one host: no VXLAN device, no overlay rules.
	testutil.InNetns(t, l.node[0], func() {
		d := l.desired(0, true)
		d.Overlay = nil
		if _, err := ms[0].Ensure(ctx, d); err != nil {
			t.Fatal(err)
		}
	})
	if exec.Command("ip", "-n", l.node[0], "link", "show", "rkv4242").Run() == nil {
		t.Error("the VXLAN device is left on a network without an overlay")
	}
	if r := n1("nft", "list", "table", "bridge", "rakhsh-rko"); strings.Contains(r, "overlay") {
		t.Errorf("overlay rules left:\n%s", r)
	}
	// Remove takes the VXLAN device down with the bridge.
	testutil.InNetns(t, l.node[1], func() {
		if err := ms[1].Remove(ctx, "rko"); err != nil {
			t.Fatal(err)
		}
	})
	for _, dev := range []string{"rkv4242", "rko-br"} {
		if exec.Command("ip", "-n", l.node[1], "link", "show", dev).Run() == nil {
			t.Errorf("%s left after Remove", dev)
		}
	}
}
