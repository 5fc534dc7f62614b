package registry

import (
	"encoding/json"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

func TestClusterNetworkDefault(t *testing.T) {
	s := tkStrategy(t, "ClusterNetwork")
	nat := &v1alpha1.ClusterNetwork{ObjectMeta: v1alpha1.ObjectMeta{Name: "main"},
		Spec: v1alpha1.ClusterNetworkSpec{Type: "NAT", Subnet: "10.66.0.0/24"}}
	s.Default(nat)
	want := v1alpha1.ClusterNetworkSpec{Type: "NAT", Bridge: "rk-main", Subnet: "10.66.0.0/24", Gateway: "10.66.0.1",
		DHCP: &v1alpha1.ClusterNetworkDHCP{Mode: "dnsmasq", LeaseTime: "1h"}, MTU: 1500}
	if got := tkJSON(t, nat.Spec); got != tkJSON(t, want) {
		t.Errorf("NAT defaults:\n got %s\nwant %s", got, tkJSON(t, want))
	}
	s.Default(nat)
	if got := tkJSON(t, nat.Spec); got != tkJSON(t, want) {
		t.Errorf("second Default changed it: %s", got)
	}

	long := &v1alpha1.ClusterNetwork{ObjectMeta: v1alpha1.ObjectMeta{Name: "research-lab-network"}, Spec: v1alpha1.ClusterNetworkSpec{Type: "NAT"}}
	s.Default(long)
	if long.Spec.Bridge != "rk-research-lab" || len(long.Spec.Bridge) != 15 {
		t.Errorf("long bridge = %q", long.Spec.Bridge)
	}

	br := &v1alpha1.ClusterNetwork{ObjectMeta: v1alpha1.ObjectMeta{Name: "lan"}, Spec: v1alpha1.ClusterNetworkSpec{Type: "Bridge", Bridge: "br0", MTU: 9000}}
	s.Default(br)
	if br.Spec.Gateway != "" || br.Spec.DHCP == nil || br.Spec.DHCP.Mode != "none" || br.Spec.DHCP.LeaseTime != "" || br.Spec.MTU != 9000 {
		t.Errorf("Bridge defaults: %s", tkJSON(t, br.Spec))
	}
}

func TestClusterNetworkValidate(t *testing.T) {
	s := tkStrategy(t, "ClusterNetwork")
	nat := func(mod func(*v1alpha1.ClusterNetworkSpec)) *v1alpha1.ClusterNetwork {
		n := &v1alpha1.ClusterNetwork{ObjectMeta: v1alpha1.ObjectMeta{Name: "main"},
			Spec: v1alpha1.ClusterNetworkSpec{Type: "NAT", Subnet: "10.66.0.0/24"}}
		mod(&n.Spec)
		return n
	}
	bridge := func(mod func(*v1alpha1.ClusterNetworkSpec)) *v1alpha1.ClusterNetwork {
		n := &v1alpha1.ClusterNetwork{ObjectMeta: v1alpha1.ObjectMeta{Name: "lan"},
			Spec: v1alpha1.ClusterNetworkSpec{Type: "Bridge", Bridge: "br0"}}
		mod(&n.Spec)
		return n
	}
	dhcp := func(mode, start, end, lease string) *v1alpha1.ClusterNetworkDHCP {
		return &v1alpha1.ClusterNetworkDHCP{Mode: v1alpha1.DHCPMode(mode), RangeStart: start, RangeEnd: end, LeaseTime: lease}
	}
	tkRunCases(t, s, []tkCase[*v1alpha1.ClusterNetwork]{
		{"nat minimal", nat(func(*v1alpha1.ClusterNetworkSpec) {}), nil},
		{"nat full", nat(func(s *v1alpha1.ClusterNetworkSpec) {
			s.Bridge, s.Gateway, s.MTU, s.Uplink = "virbr9", "10.66.0.254", 1400, "eno1"
			s.DHCP = dhcp("dnsmasq", "10.66.0.10", "10.66.0.200", "12h")
			s.DNS = &v1alpha1.ClusterNetworkDNS{Servers: []string{"1.1.1.1", "2606:4700:4700::1111"}}
		}), nil},
		{"bridge minimal", bridge(func(*v1alpha1.ClusterNetworkSpec) {}), nil},
		{"bridge with subnet and dnsmasq", bridge(func(s *v1alpha1.ClusterNetworkSpec) {
			s.Subnet, s.Gateway, s.DHCP = "192.168.10.0/24", "192.168.10.1", dhcp("dnsmasq", "192.168.10.100", "192.168.10.199", "")
		}), nil},
		{"missing type", nat(func(s *v1alpha1.ClusterNetworkSpec) { s.Type = "" }), []tkCause{tkRequired("spec.type")}},
		{"bad type", nat(func(s *v1alpha1.ClusterNetworkSpec) { s.Type = "VXLAN" }), []tkCause{tkNotSupported("spec.type")}},
		{"nat needs subnet", nat(func(s *v1alpha1.ClusterNetworkSpec) { s.Subnet = "" }), []tkCause{tkRequired("spec.subnet")}},
		{"bridge needs bridge", bridge(func(s *v1alpha1.ClusterNetworkSpec) { s.Bridge = "" }), []tkCause{tkRequired("spec.bridge")}},
		{"bridge name too long", bridge(func(s *v1alpha1.ClusterNetworkSpec) { s.Bridge = "a-very-long-bridge" }), []tkCause{tkInvalid("spec.bridge")}},
		{"bridge name chars", bridge(func(s *v1alpha1.ClusterNetworkSpec) { s.Bridge = "br/0" }), []tkCause{tkInvalid("spec.bridge")}},
		{"bridge name dots", bridge(func(s *v1alpha1.ClusterNetworkSpec) { s.Bridge = ".." }), []tkCause{tkInvalid("spec.bridge")}},
		{"subnet not cidr", nat(func(s *v1alpha1.ClusterNetworkSpec) { s.Subnet = "10.66.0.0" }), []tkCause{tkInvalid("spec.subnet")}},
		{"subnet v6", nat(func(s *v1alpha1.ClusterNetworkSpec) { s.Subnet = "fd00::/64" }), []tkCause{tkInvalid("spec.subnet")}},
		{"subnet too small", nat(func(s *v1alpha1.ClusterNetworkSpec) { s.Subnet = "10.66.0.0/31" }), []tkCause{tkInvalid("spec.subnet")}},
		{"subnet too big", nat(func(s *v1alpha1.ClusterNetworkSpec) { s.Subnet = "10.0.0.0/7" }), []tkCause{tkInvalid("spec.subnet")}},
		{"subnet host bits", nat(func(s *v1alpha1.ClusterNetworkSpec) { s.Subnet = "10.66.0.1/24" }), []tkCause{tkInvalid("spec.subnet")}},
		{"subnet loopback", nat(func(s *v1alpha1.ClusterNetworkSpec) { s.Subnet = "127.0.0.0/24" }), []tkCause{tkInvalid("spec.subnet")}},
		{"subnet multicast", nat(func(s *v1alpha1.ClusterNetworkSpec) { s.Subnet = "239.0.0.0/24" }), []tkCause{tkInvalid("spec.subnet")}},
		{"gateway outside", nat(func(s *v1alpha1.ClusterNetworkSpec) { s.Gateway = "10.67.0.1" }), []tkCause{tkInvalid("spec.gateway")}},
		{"gateway network address", nat(func(s *v1alpha1.ClusterNetworkSpec) { s.Gateway = "10.66.0.0" }), []tkCause{tkInvalid("spec.gateway")}},
		{"gateway broadcast", nat(func(s *v1alpha1.ClusterNetworkSpec) { s.Gateway = "10.66.0.255" }), []tkCause{tkInvalid("spec.gateway")}},
		{"gateway not ip", nat(func(s *v1alpha1.ClusterNetworkSpec) { s.Gateway = "router" }), []tkCause{tkInvalid("spec.gateway")}},
		{"gateway without subnet", bridge(func(s *v1alpha1.ClusterNetworkSpec) { s.Gateway = "192.168.0.1" }), []tkCause{tkForbidden("spec.gateway")}},
		{"bad dhcp mode", nat(func(s *v1alpha1.ClusterNetworkSpec) { s.DHCP = dhcp("isc", "", "", "") }), []tkCause{tkNotSupported("spec.dhcp.mode")}},
		{"dnsmasq on bridge needs subnet", bridge(func(s *v1alpha1.ClusterNetworkSpec) { s.DHCP = dhcp("dnsmasq", "", "", "") }), []tkCause{tkRequired("spec.subnet")}},
		{"range half", nat(func(s *v1alpha1.ClusterNetworkSpec) { s.DHCP = dhcp("dnsmasq", "10.66.0.10", "", "") }), []tkCause{tkRequired("spec.dhcp.rangeEnd")}},
		{"range other half", nat(func(s *v1alpha1.ClusterNetworkSpec) { s.DHCP = dhcp("dnsmasq", "", "10.66.0.10", "") }), []tkCause{tkRequired("spec.dhcp.rangeStart")}},
		{"range outside", nat(func(s *v1alpha1.ClusterNetworkSpec) { s.DHCP = dhcp("dnsmasq", "10.66.1.10", "10.66.0.300", "") }),
			[]tkCause{tkInvalid("spec.dhcp.rangeStart"), tkInvalid("spec.dhcp.rangeEnd")}},
		{"range reversed", nat(func(s *v1alpha1.ClusterNetworkSpec) { s.DHCP = dhcp("dnsmasq", "10.66.0.100", "10.66.0.10", "") }),
			[]tkCause{tkInvalid("spec.dhcp.rangeEnd")}},
		{"range holds gateway", nat(func(s *v1alpha1.ClusterNetworkSpec) { s.DHCP = dhcp("dnsmasq", "10.66.0.1", "10.66.0.254", "") }),
			[]tkCause{tkInvalid("spec.dhcp.rangeStart")}},
		{"range without subnet", bridge(func(s *v1alpha1.ClusterNetworkSpec) { s.DHCP = dhcp("none", "10.0.0.2", "10.0.0.3", "") }),
			[]tkCause{tkForbidden("spec.dhcp.rangeStart")}},
		{"lease time with none", bridge(func(s *v1alpha1.ClusterNetworkSpec) { s.DHCP = dhcp("none", "", "", "1h") }),
			[]tkCause{tkForbidden("spec.dhcp.leaseTime")}},
		{"lease time bad", nat(func(s *v1alpha1.ClusterNetworkSpec) { s.DHCP = dhcp("dnsmasq", "", "", "forever") }), []tkCause{tkInvalid("spec.dhcp.leaseTime")}},
		{"lease time short", nat(func(s *v1alpha1.ClusterNetworkSpec) { s.DHCP = dhcp("dnsmasq", "", "", "30s") }), []tkCause{tkInvalid("spec.dhcp.leaseTime")}},
		{"dns bad and duplicate", nat(func(s *v1alpha1.ClusterNetworkSpec) {
			s.DNS = &v1alpha1.ClusterNetworkDNS{Servers: []string{"1.1.1.1", "one", "1.1.1.1", "0.0.0.0"}}
		}), []tkCause{tkInvalid("spec.dns.servers[1]"), tkDuplicate("spec.dns.servers[2]"), tkInvalid("spec.dns.servers[3]")}},
		{"dns too many", nat(func(s *v1alpha1.ClusterNetworkSpec) {
			s.DNS = &v1alpha1.ClusterNetworkDNS{Servers: []string{"1.0.0.1", "1.0.0.2", "1.0.0.3", "1.0.0.4", "1.0.0.5", "1.0.0.6", "1.0.0.7", "1.0.0.8", "1.0.0.9"}}
		}), []tkCause{tkInvalid("spec.dns.servers")}},
		{"mtu low", nat(func(s *v1alpha1.ClusterNetworkSpec) { s.MTU = 500 }), []tkCause{tkInvalid("spec.mtu")}},
		{"mtu high", nat(func(s *v1alpha1.ClusterNetworkSpec) { s.MTU = 9001 }), []tkCause{tkInvalid("spec.mtu")}},
		{"node selector on bridge", bridge(func(s *v1alpha1.ClusterNetworkSpec) { s.NodeSelector = map[string]string{"rakhsh.io/br0": "yes"} }), nil},
		{"node selector on nat", nat(func(s *v1alpha1.ClusterNetworkSpec) { s.NodeSelector = map[string]string{"a": "b"} }), []tkCause{tkForbidden("spec.nodeSelector")}},
		{"node selector bad label", bridge(func(s *v1alpha1.ClusterNetworkSpec) { s.NodeSelector = map[string]string{"bad key!": "b"} }), []tkCause{tkInvalid("spec.nodeSelector")}},
		{"uplink on bridge", bridge(func(s *v1alpha1.ClusterNetworkSpec) { s.Uplink = "eth0" }), []tkCause{tkForbidden("spec.uplink")}},
		{"uplink bad", nat(func(s *v1alpha1.ClusterNetworkSpec) { s.Uplink = "eth 0" }), []tkCause{tkInvalid("spec.uplink")}},
		{"uplink is bridge", nat(func(s *v1alpha1.ClusterNetworkSpec) { s.Uplink = "rk-main" }), []tkCause{tkInvalid("spec.uplink")}},
		{"deny ok", nat(func(s *v1alpha1.ClusterNetworkSpec) {
			s.NAT = &v1alpha1.ClusterNetworkNAT{DenyDestinations: []string{"10.0.0.0/8", "192.168.1.0/24"}}
		}), nil},
		{"deny on bridge", bridge(func(s *v1alpha1.ClusterNetworkSpec) {
			s.NAT = &v1alpha1.ClusterNetworkNAT{DenyDestinations: []string{"10.0.0.0/8"}}
		}), []tkCause{tkForbidden("spec.nat")}},
		{"deny bad", nat(func(s *v1alpha1.ClusterNetworkSpec) {
			s.NAT = &v1alpha1.ClusterNetworkNAT{DenyDestinations: []string{"10.0.0.0/33", "fd00::/8", "10.1.2.3/16", "lan"}}
		}), []tkCause{tkInvalid("spec.nat.denyDestinations[0]"), tkInvalid("spec.nat.denyDestinations[1]"),
			tkInvalid("spec.nat.denyDestinations[2]"), tkInvalid("spec.nat.denyDestinations[3]")}},
	})
}

func TestClusterNetworkUpdate(t *testing.T) {
	s := tkStrategy(t, "ClusterNetwork")
	old := &v1alpha1.ClusterNetwork{Spec: v1alpha1.ClusterNetworkSpec{Type: "NAT", Bridge: "rk-main", Subnet: "10.66.0.0/24", MTU: 1500}}
	n := *old
	n.Spec.MTU = 1400
	n.Spec.DNS = &v1alpha1.ClusterNetworkDNS{Servers: []string{"9.9.9.9"}}
	tkCheck(t, s.ValidateUpdate(&n, old))
	n.Spec.Type, n.Spec.Subnet, n.Spec.Bridge = "Bridge", "10.67.0.0/24", "br0"
	tkCheck(t, s.ValidateUpdate(&n, old), tkForbidden("spec.type"), tkForbidden("spec.subnet"), tkForbidden("spec.bridge"))
}

func FuzzValidateClusterNetwork(f *testing.F) {
	tkFuzzSeeds(f, "ClusterNetwork",
		`{"metadata":{"name":"main"},"spec":{"type":"NAT","subnet":"10.66.0.0/24"}}`,
		`{"metadata":{"name":"lan"},"spec":{"type":"Bridge","bridge":"br0","subnet":"192.168.1.0/24","dhcp":{"mode":"dnsmasq","rangeStart":"192.168.1.100","rangeEnd":"192.168.1.200"}}}`,
		`{"metadata":{"name":"x"},"spec":{"type":"NAT","subnet":"10.0.0.1/30","gateway":"10.0.0.2","dns":{"servers":["1.1.1.1"]},"mtu":9000,"uplink":"eth0"}}`,
	)
}

func tkJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
