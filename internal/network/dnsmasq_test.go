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

func TestDnsmasqConfigHosts(t *testing.T) {
	hosts := []Host{
		{MAC: "02:00:00:00:00:02", IP: netip.MustParseAddr("10.0.0.2"), Hostname: "vm2"},
		{MAC: "02:00:00:00:00:01", IP: netip.MustParseAddr("10.0.0.1")},
		{MAC: "02:00:00:00:00:03", IP: netip.MustParseAddr("10.0.0.3"), Hostname: "x\ndhcp-script=/bin/sh"},
	}
	in := dnsmasqInput{Dir: "/d", Bridge: "rk-main", Subnet: netip.MustParsePrefix("10.0.0.0/24"), User: "dnsmasq", Hosts: hosts}
	c := dnsmasqConfig(in)
	// An unprivileged dnsmasq reads a dhcp-hostsfile only after dropping to its user, which
	// cannot enter the data directory: the leases must be in the configuration it reads as root.
	if strings.Contains(c, "dhcp-hostsfile=") || !strings.Contains(c, "\ndhcp-host=02:00:00:00:00:01,10.0.0.1\ndhcp-host=02:00:00:00:00:02,10.0.0.2,vm2\n") {
		t.Errorf("unprivileged config without its hosts:\n%s", c)
	}
	if strings.Contains(c, "dhcp-script") || strings.Contains(hostsFile(hosts), "dhcp-script") {
		t.Errorf("a hostname carried a line into the configuration:\n%s", c)
	}
	in.User = "root"
	c = dnsmasqConfig(in)
	if !strings.Contains(c, "\ndhcp-hostsfile=/d/dhcp-hosts\n") || strings.Contains(c, "dhcp-host=") {
		t.Errorf("root config does not use the hosts file:\n%s", c)
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
