package network

import (
	"net/netip"
	"strings"
	"testing"
)

func TestDnsmasqConfigUser(t *testing.T) {
	base := dnsmasqInput{Dir: "/d", Bridge: "rk-main", Subnet: netip.MustParsePrefix("10.0.0.0/24"), Gateway: netip.MustParseAddr("10.0.0.1")}
	for _, tc := range []struct {
		user, want string
		drops      bool
	}{
		{"dnsmasq", "user=dnsmasq\n", true},
		{"rakhsh-dns", "user=rakhsh-dns\n", true},
		{"root", "user=root\n", false},
		{"", "user=root\n", false},
	} {
		in := base
		in.User = tc.user
		c := dnsmasqConfig(in)
		if !strings.Contains(c, "\n"+tc.want) || strings.Count(c, "\nuser=") != 1 {
			t.Errorf("user %q: config lacks %q:\n%s", tc.user, tc.want, c)
		}
		if in.dropsPrivileges() != tc.drops {
			t.Errorf("user %q: dropsPrivileges = %v, want %v", tc.user, in.dropsPrivileges(), tc.drops)
		}
	}
}

func TestManagerDefaultDnsmasqUser(t *testing.T) {
	if u := NewManager(Config{DataDir: "/d"}).cfg.DnsmasqUser; u != DefaultDnsmasqUser {
		t.Fatalf("default dnsmasq user %q, want %q", u, DefaultDnsmasqUser)
	}
	if u := NewManager(Config{DataDir: "/d", DnsmasqUser: "root"}).cfg.DnsmasqUser; u != "root" {
		t.Fatalf("explicit root became %q", u)
	}
}
