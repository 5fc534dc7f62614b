package network

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

func TestParseMACRanges(t *testing.T) {
	rs, err := ParseMACRanges("02:00:00:00:00:00-02:00:00:00:00:03, 0a:00:00:00:00:10-0a:00:00:00:00:10")
	if err != nil {
		t.Fatal(err)
	}
	if Size(rs) != 5 {
		t.Fatalf("size %d, want 5", Size(rs))
	}
	for _, bad := range []string{"", "02:00:00:00:00:05-02:00:00:00:00:01", "01:00:00:00:00:00-01:00:00:00:00:01",
		"02:00:00:00:00:00", "zz:00:00:00:00:00-02:00:00:00:00:01", "02:00:00:00:00:00-03:00:00:00:00:00"} {
		if _, err := ParseMACRanges(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	taken := map[string]bool{"02:00:00:00:00:00": true, "02:00:00:00:00:01": true}
	mac, ok := NextFreeMAC(rs, 0, func(m string) bool { return taken[m] })
	if !ok || mac != "02:00:00:00:00:02" {
		t.Errorf("next free %s %v", mac, ok)
	}
	mac, ok = NextFreeMAC(rs, 4, func(m string) bool { return taken[m] })
	if !ok || mac != "0a:00:00:00:00:10" {
		t.Errorf("next free from 4: %s %v", mac, ok)
	}
	if _, ok := NextFreeMAC(rs, 0, func(string) bool { return true }); ok {
		t.Error("a full pool gave an address")
	}
}

func TestIPPool(t *testing.T) {
	s := v1alpha1.ClusterNetworkSpec{Subnet: "10.9.0.0/29", Gateway: "10.9.0.1"}
	p, err := PoolOf(s)
	if err != nil {
		t.Fatal(err)
	}
	if p.Size() != 5 { // .2 .. .6
		t.Errorf("size %d, want 5", p.Size())
	}
	a, ok := p.NextFree(func(a netip.Addr) bool { return a.String() == "10.9.0.2" })
	if !ok || a.String() != "10.9.0.3" {
		t.Errorf("next free %s", a)
	}
	for _, x := range []string{"10.9.0.0", "10.9.0.1", "10.9.0.7", "10.9.1.2"} {
		if p.Contains(netip.MustParseAddr(x)) {
			t.Errorf("%s counted as a host address", x)
		}
	}
	s.DHCP = &v1alpha1.ClusterNetworkDHCP{RangeStart: "10.9.0.5", RangeEnd: "10.9.0.6"}
	p, _ = PoolOf(s)
	if p.Size() != 2 {
		t.Errorf("range size %d", p.Size())
	}
	if _, err := PoolOf(v1alpha1.ClusterNetworkSpec{}); err == nil || !strings.Contains(err.Error(), "no subnet") {
		t.Errorf("no subnet: %v", err)
	}
}

func TestHostsFileAndConfig(t *testing.T) {
	h := hostsFile([]Host{{MAC: "02:00:00:00:00:02", IP: netip.MustParseAddr("10.0.0.3")}, {MAC: "02:00:00:00:00:01", IP: netip.MustParseAddr("10.0.0.2"), Hostname: "a"}})
	if h != "02:00:00:00:00:01,10.0.0.2,a\n02:00:00:00:00:02,10.0.0.3\n" {
		t.Errorf("hosts %q", h)
	}
	c := dnsmasqConfig(dnsmasqInput{Dir: "/d", Bridge: "rk-main", Subnet: netip.MustParsePrefix("10.0.0.0/24"), Gateway: netip.MustParseAddr("10.0.0.1"), MTU: 1450})
	for _, want := range []string{"no-resolv\n", "interface=rk-main\n", "dhcp-range=10.0.0.0,static,255.255.255.0,3600\n", "dhcp-option=option:router,10.0.0.1\n", "dhcp-option=option:mtu,1450\n"} {
		if !strings.Contains(c, want) {
			t.Errorf("config lacks %q:\n%s", want, c)
		}
	}
}

func FuzzParseMACRanges(f *testing.F) {
	f.Add(DefaultMACRange)
	f.Add("02:00:00:00:00:00-02:00:00:00:00:03,0a:00:00:00:00:10-0a:00:00:00:00:10")
	f.Add("x-y")
	f.Fuzz(func(t *testing.T, s string) {
		rs, err := ParseMACRanges(s)
		if err != nil {
			return
		}
		for _, r := range rs {
			if r.First > r.Last || r.Last >= 1<<48 || (r.First>>40)&1 == 1 {
				t.Fatalf("%q gave bad range %+v", s, r)
			}
		}
		if mac, ok := NextFreeMAC(rs, 0, func(string) bool { return false }); !ok || MACString(rs[0].First) != mac {
			t.Fatalf("first free of %q: %s", s, mac)
		}
	})
}

func TestDisjointDenySet(t *testing.T) {
	ps := []netip.Prefix{netip.MustParsePrefix("169.254.0.0/16"), netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("169.254.169.254/32"), netip.MustParsePrefix("10.1.0.0/16"),
		netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.168.0.0/16")}
	got := strings.Join(disjoint(ps), " ")
	if want := "10.0.0.0/8 169.254.0.0/16 192.168.0.0/16"; got != want {
		t.Errorf("disjoint = %q, want %q", got, want)
	}
}

func TestParseSockets(t *testing.T) {
	table := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:0CEA 0100007F:B5F2 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:094B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 100 0 0 10 0
`
	out := map[string]bool{}
	if err := parseSockets(strings.NewReader(table), "tcp", "0A", out); err != nil {
		t.Fatal(err)
	}
	if len(out) != 2 || !out["tcp/22"] || !out["tcp/2379"] || out["tcp/3306"] {
		t.Errorf("listening: %v, want tcp/22 and tcp/2379 (3306 is an established connection)", out)
	}
	if err := parseSockets(strings.NewReader("h\n 0: 00000000:ZZZZ 00000000:0000 0A\n"), "tcp", "0A", out); err == nil {
		t.Error("a malformed port was accepted")
	}
	// The real tables of this process's namespace parse; a listener opened here is in them.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	got, err := hostListeners()
	if err != nil {
		t.Fatal(err)
	}
	if port := l.Addr().(*net.TCPAddr).Port; !got[fmt.Sprintf("tcp/%d", port)] {
		t.Errorf("the listener on port %d is not among the host's: %d entries", port, len(got))
	}
}
