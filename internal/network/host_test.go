package network

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// inNetns runs the calling test again inside a fresh network namespace (the test binary is
// re-executed under `ip netns exec`), so it can make bridges, taps, nftables tables and
// dnsmasq without touching the host's network. It returns true in the child, where the
// test body runs.
func inNetns(t *testing.T) bool {
	t.Helper()
	if os.Getenv("RAKHSH_TEST_NETNS") != "" {
		return true
	}
	if os.Geteuid() != 0 {
		t.Fatal("this test makes network namespaces and needs root")
	}
	for _, p := range []string{"ip", "nft", "dnsmasq"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Fatalf("%s is missing: run scripts/install-deps.sh (apt-get install iproute2 nftables dnsmasq-base)", p)
		}
	}
	ns := fmt.Sprintf("rk-nt%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	cmd := exec.Command("ip", "netns", "exec", ns, os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "RAKHSH_TEST_NETNS="+ns)
	out, err := cmd.CombinedOutput()
	t.Logf("in namespace %s:\n%s", ns, out)
	if err != nil {
		t.Fatalf("test in namespace failed: %v", err)
	}
	return false
}

func natSpec() v1alpha1.ClusterNetworkSpec {
	return v1alpha1.ClusterNetworkSpec{Type: v1alpha1.ClusterNetworkTypeNAT, Bridge: "rk-test", Subnet: "10.77.0.0/24",
		Gateway: "10.77.0.1", MTU: 1400, DHCP: &v1alpha1.ClusterNetworkDHCP{Mode: v1alpha1.DHCPModeDnsmasq, LeaseTime: "1h"}}
}

func TestHostNATNetwork(t *testing.T) {
	if !inNetns(t) {
		return
	}
	ctx := context.Background()
	dir := t.TempDir()
	m := NewManager(Config{DataDir: dir, NoUpstreamDNS: true})
	defer func() { _ = m.Remove(ctx, "test") }()
	if err := exec.Command("ip", "link", "set", "lo", "up").Run(); err != nil {
		t.Fatal(err)
	}
	tap := TapName("0b7c1f2e-0000-4000-8000-000000000001", 0)
	// The bridge is made by Ensure; the tap goes on it.
	d := Desired{Name: "test", Spec: natSpec(),
		Hosts:    []Host{{MAC: "02:72:6b:00:00:01", IP: netip.MustParseAddr("10.77.0.10"), Hostname: "vm1"}},
		Ports:    []Port{{Tap: tap, MAC: "02:72:6b:00:00:01", IPs: []netip.Addr{netip.MustParseAddr("10.77.0.10")}}},
		Forwards: []Forward{{Protocol: "tcp", HostPort: 2222, GuestIP: netip.MustParseAddr("10.77.0.10"), GuestPort: 22}}}
	if _, err := m.Ensure(ctx, d); err != nil {
		t.Fatal(err)
	}
	if err := m.EnsureTap(tap, "rk-test", 1400, "02:72:6b:00:00:01"); err != nil {
		t.Fatal(err)
	}
	br, err := netlink.LinkByName("rk-test")
	if err != nil {
		t.Fatal(err)
	}
	if br.Attrs().MTU != 1400 {
		t.Errorf("bridge MTU %d, want 1400", br.Attrs().MTU)
	}
	tl, err := netlink.LinkByName(tap)
	if err != nil {
		t.Fatal(err)
	}
	if tl.Attrs().MasterIndex != br.Attrs().Index || tl.Attrs().MTU != 1400 {
		t.Errorf("tap master %d (bridge %d), MTU %d", tl.Attrs().MasterIndex, br.Attrs().Index, tl.Attrs().MTU)
	}
	if tl.Attrs().HardwareAddr.String() != "fe:72:6b:00:00:01" {
		t.Errorf("tap MAC %s", tl.Attrs().HardwareAddr)
	}
	addrs, _ := netlink.AddrList(br, netlink.FAMILY_V4)
	if len(addrs) != 1 || addrs[0].IPNet.String() != "10.77.0.1/24" {
		t.Errorf("bridge addresses %v, want 10.77.0.1/24", addrs)
	}
	ipl, ok := m.nftList(ctx, "ip", "rakhsh-test")
	if !ok || !strings.Contains(ipl, "masquerade") || !strings.Contains(ipl, "dnat to 10.77.0.10:22") {
		t.Errorf("ip table:\n%s", ipl)
	}
	brl, ok := m.nftList(ctx, "bridge", "rakhsh-test")
	if !ok || !strings.Contains(brl, "ether saddr != 02:72:6b:00:00:01 drop") {
		t.Errorf("bridge table:\n%s", brl)
	}
	pid := dnsmasqPID(stateDir(dir, "test"))
	if pid <= 0 {
		t.Fatal("dnsmasq does not run")
	}
	// dnsmasq runs as its own user, which reads the hosts file outside the data dir.
	hostsPath, _, err := m.hostsPath(stateDir(dir, "test"))
	if err != nil || strings.HasPrefix(hostsPath, dir) {
		t.Fatalf("hosts path %s %v: want one outside the data dir", hostsPath, err)
	}
	hosts, _ := os.ReadFile(hostsPath)
	if string(hosts) != "02:72:6b:00:00:01,10.77.0.10,vm1\n" {
		t.Errorf("hosts file %q", hosts)
	}

	// Idempotent: a second Ensure changes nothing.
	if c, err := m.Ensure(ctx, d); err != nil || len(c) != 0 {
		t.Errorf("second Ensure changed %v (err %v)", c, err)
	}
	// A new Manager (a restarted serve) re-adopts dnsmasq and rewrites nothing on the host
	// but its in-memory view of the rules.
	m2 := NewManager(Config{DataDir: dir, NoUpstreamDNS: true})
	if _, err := m2.Ensure(ctx, d); err != nil {
		t.Fatal(err)
	}
	if p := dnsmasqPID(stateDir(dir, "test")); p != pid {
		t.Errorf("dnsmasq pid %d after a restart, want the adopted %d", p, pid)
	}

	// Drift: a deleted table, a killed dnsmasq, a removed gateway address and a detached
	// tap are all repaired.
	if err := exec.Command("nft", "delete", "table", "bridge", "rakhsh-test").Run(); err != nil {
		t.Fatal(err)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for dnsmasqPID(stateDir(dir, "test")) == pid {
		var ws syscall.WaitStatus
		_, _ = syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
	}
	_ = exec.Command("ip", "addr", "flush", "dev", "rk-test").Run()
	_ = exec.Command("ip", "link", "set", tap, "nomaster").Run()
	c, err := m2.Ensure(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("repaired: %v", c)
	if _, ok := m2.nftList(ctx, "bridge", "rakhsh-test"); !ok {
		t.Error("bridge table not repaired")
	}
	if dnsmasqPID(stateDir(dir, "test")) <= 0 {
		t.Error("dnsmasq not restarted")
	}
	tl, _ = netlink.LinkByName(tap)
	if tl.Attrs().MasterIndex != br.Attrs().Index {
		t.Error("tap not re-attached")
	}
	addrs, _ = netlink.AddrList(br, netlink.FAMILY_V4)
	if len(addrs) != 1 {
		t.Errorf("gateway address not repaired: %v", addrs)
	}

	// Removal leaves nothing behind.
	if err := m2.DeleteTap(tap); err != nil {
		t.Fatal(err)
	}
	dpid := dnsmasqPID(stateDir(dir, "test"))
	if err := m2.Remove(ctx, "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName("rk-test"); err == nil {
		t.Error("bridge still there")
	}
	if _, ok := m2.nftList(ctx, "ip", "rakhsh-test"); ok {
		t.Error("ip table still there")
	}
	if dpid > 0 && syscall.Kill(dpid, 0) == nil {
		if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", dpid)); strings.Contains(string(b), "dnsmasq") {
			t.Error("dnsmasq still runs")
		}
	}
}

// TestRulesetIsValidNft checks generated rulesets with `nft -c` (no change is made).
func TestRulesetIsValidNft(t *testing.T) {
	if !inNetns(t) {
		return
	}
	for _, in := range []rulesetInput{
		{Network: "main", NAT: true, Bridge: "rk-main", Subnet: netip.MustParsePrefix("10.66.0.0/24"),
			Gateway: netip.MustParseAddr("10.66.0.1"), DHCPServer: netip.MustParseAddr("10.66.0.1"), DNSServers: []netip.Addr{netip.MustParseAddr("10.66.0.1")},
			Deny: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("169.254.169.254/32"), netip.MustParsePrefix("10.1.0.0/16")},
			Ports: []Port{{Tap: "rkt0011223300", MAC: "02:72:6b:00:00:01", IPs: []netip.Addr{netip.MustParseAddr("10.66.0.2")}},
				{Tap: "rkt0011223301", MAC: "02:72:6b:00:00:02"}},
			Forward: []Forward{{Protocol: "udp", HostPort: 5353, GuestIP: netip.MustParseAddr("10.66.0.2"), GuestPort: 53}}},
		{Network: "lan", Bridge: "br0", Ports: []Port{{Tap: "rkt0011223300", MAC: "02:72:6b:00:00:01"}}},
		{Network: "guarded", NAT: true, Bridge: "rk-guarded", Subnet: netip.MustParsePrefix("10.66.0.0/24"),
			Gateway: netip.MustParseAddr("10.66.0.1"), DHCPServer: netip.MustParseAddr("10.66.0.1"),
			DNSServers: []netip.Addr{netip.MustParseAddr("10.66.0.1"), netip.MustParseAddr("192.0.2.53"), netip.MustParseAddr("2001:db8::53"), netip.MustParseAddr("::ffff:192.0.2.54")},
			Ports: []Port{
				{Tap: "rkt0011223300", MAC: "02:72:6b:00:00:01", IPs: []netip.Addr{netip.MustParseAddr("10.66.0.2")}, Filtered: true,
					Inbound: []InboundRule{{Protocol: "tcp", Port: 3389}, {Protocol: "udp", Port: 5000, EndPort: 5100,
						From: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.7/32")}}, {Protocol: "icmp"}}},
				{Tap: "rkt0011223301", MAC: "02:72:6b:00:00:02", Filtered: true}, // nothing in but replies
				{Tap: "rkt0011223302", MAC: "02:72:6b:00:00:03"},
			}},
		{Network: "empty", NAT: true, Bridge: "rk-empty", Subnet: netip.MustParsePrefix("10.1.0.0/16"), Uplink: "eth0"},
	} {
		cmd := exec.Command("nft", "-c", "-f", "-")
		cmd.Stdin = strings.NewReader(ruleset(in))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s: nft -c: %v: %s\n%s", in.Network, err, out, ruleset(in))
		}
	}
}
