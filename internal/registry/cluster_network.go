package registry

import (
	"fmt"
	"net/netip"
	"regexp"
	"time"
	"unicode/utf8"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
)

func init() {
	registerTyped("ClusterNetwork", typed[*v1alpha1.ClusterNetwork]{
		Default:  defaultClusterNetwork,
		Validate: validateClusterNetwork,
		ValidateUpdate: func(n, o *v1alpha1.ClusterNetwork) errs.FieldErrors {
			var fe errs.FieldErrors
			chkUnchanged(&fe, "spec.type", n.Spec.Type, o.Spec.Type, "")
			chkUnchanged(&fe, "spec.subnet", n.Spec.Subnet, o.Spec.Subnet, "")
			chkUnchanged(&fe, "spec.bridge", n.Spec.Bridge, o.Spec.Bridge, "(VMs' interfaces are attached to it)")
			return fe
		},
	})
}

// maxIfName is IFNAMSIZ-1: the longest Linux interface name.
const maxIfName = 15

// NATBridgeName is the default bridge of a NAT ClusterNetwork: "rk-" + name, cut to 15
// characters.
func NATBridgeName(network string) string {
	b := v1alpha1.ClusterNetworkBridgePrefix + network
	if len(b) > maxIfName {
		b = b[:maxIfName]
		// Never cut a character in half: the half would not survive a JSON round trip, and
		// the stored name would differ from the one derived again.
		for len(b) > 0 && !utf8.ValidString(b) {
			b = b[:len(b)-1]
		}
	}
	return b
}

func defaultClusterNetwork(n *v1alpha1.ClusterNetwork) {
	s := &n.Spec
	nat := s.Type == v1alpha1.ClusterNetworkTypeNAT
	if nat && s.Bridge == "" && n.Name != "" {
		s.Bridge = NATBridgeName(n.Name)
	}
	if s.MTU == 0 {
		s.MTU = v1alpha1.ClusterNetworkDefaultMTU
	}
	if nat && s.Gateway == "" {
		if p, err := netip.ParsePrefix(s.Subnet); err == nil && p.Addr().Is4() && p == p.Masked() && p.Bits() <= 30 {
			s.Gateway = p.Addr().Next().String()
		}
	}
	if s.Type == v1alpha1.ClusterNetworkTypeNAT || s.Type == v1alpha1.ClusterNetworkTypeBridge {
		if s.DHCP == nil {
			s.DHCP = &v1alpha1.ClusterNetworkDHCP{}
		}
		if s.DHCP.Mode == "" {
			if nat {
				s.DHCP.Mode = v1alpha1.DHCPModeDnsmasq
			} else {
				s.DHCP.Mode = v1alpha1.DHCPModeNone
			}
		}
	}
	if s.DHCP != nil && s.DHCP.Mode == v1alpha1.DHCPModeDnsmasq && s.DHCP.LeaseTime == "" {
		s.DHCP.LeaseTime = v1alpha1.ClusterNetworkDefaultLeaseTime
	}
}

var ifNameRe = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)

// checkIfName returns why s is not a valid Linux interface name, or "".
func checkIfName(s string) string {
	if len(s) > maxIfName || !ifNameRe.MatchString(s) || s == "." || s == ".." {
		return fmt.Sprintf("must be a Linux interface name: 1 to %d letters, digits, '_', '.' or '-' (not \".\" or \"..\")", maxIfName)
	}
	return ""
}

const (
	minLeaseTime  = 2 * time.Minute
	maxLeaseTime  = 365 * 24 * time.Hour
	maxDNSServers = 8
)

var cnetTypes = []string{string(v1alpha1.ClusterNetworkTypeNAT), string(v1alpha1.ClusterNetworkTypeBridge)}
var dhcpModes = []string{string(v1alpha1.DHCPModeDnsmasq), string(v1alpha1.DHCPModeNone)}

func validateClusterNetwork(n *v1alpha1.ClusterNetwork) errs.FieldErrors {
	var fe errs.FieldErrors
	s := &n.Spec
	nat := s.Type == v1alpha1.ClusterNetworkTypeNAT
	switch s.Type {
	case v1alpha1.ClusterNetworkTypeNAT, v1alpha1.ClusterNetworkTypeBridge:
	case "":
		fe.Required("spec.type", "NAT or Bridge is required")
	default:
		fe.NotSupported("spec.type", string(s.Type), cnetTypes)
	}

	if s.Bridge == "" {
		if s.Type == v1alpha1.ClusterNetworkTypeBridge {
			fe.Required("spec.bridge", "the name of the existing host bridge is required for a Bridge network")
		} else if nat {
			fe.Required("spec.bridge", "")
		}
	} else if msg := checkIfName(s.Bridge); msg != "" {
		fe.Invalid("spec.bridge", s.Bridge, msg)
	}

	// subnet
	var subnet netip.Prefix
	subnetOK := false
	if s.Subnet == "" {
		if nat {
			fe.Required("spec.subnet", "a NAT network needs an IPv4 subnet such as 10.66.0.0/24")
		}
	} else if p, err := netip.ParsePrefix(s.Subnet); err != nil {
		fe.Invalid("spec.subnet", s.Subnet, "must be an IPv4 network in CIDR form, e.g. 10.66.0.0/24")
	} else if !p.Addr().Is4() {
		fe.Invalid("spec.subnet", s.Subnet, "only IPv4 subnets are supported for now")
	} else if p.Bits() < 8 || p.Bits() > 30 {
		fe.Invalid("spec.subnet", s.Subnet, "the prefix length must be between /8 and /30")
	} else if p != p.Masked() {
		fe.Invalid("spec.subnet", s.Subnet, fmt.Sprintf("must be the network address: %s", p.Masked()))
	} else if a := p.Addr(); a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsMulticast() || a.As4()[0] == 0 || a.As4()[0] >= 240 {
		fe.Invalid("spec.subnet", s.Subnet, "must not be in a reserved range (0/8, 127/8, 169.254/16, 224/4, 240/4)")
	} else {
		subnet, subnetOK = p, true
	}
	broadcast := netip.Addr{}
	if subnetOK {
		broadcast = lastAddr(subnet)
	}
	// hostAddr checks that s is a usable host address of the subnet.
	hostAddr := func(path, v string) (netip.Addr, bool) {
		a, err := netip.ParseAddr(v)
		if err != nil || !a.Is4() {
			fe.Invalid(path, v, "must be an IPv4 address")
			return a, false
		}
		if !subnetOK {
			return a, false
		}
		if !subnet.Contains(a) {
			fe.Invalid(path, v, fmt.Sprintf("must be inside spec.subnet %s", subnet))
			return a, false
		}
		if a == subnet.Addr() || a == broadcast {
			fe.Invalid(path, v, "must be a host address, not the network or broadcast address")
			return a, false
		}
		return a, true
	}

	// gateway
	var gw netip.Addr
	gwOK := false
	if s.Gateway != "" {
		if s.Subnet == "" {
			fe.Forbidden("spec.gateway", "needs spec.subnet")
		} else {
			gw, gwOK = hostAddr("spec.gateway", s.Gateway)
		}
	} else if nat && subnetOK {
		fe.Required("spec.gateway", "")
	}

	// dhcp
	if d := s.DHCP; d != nil {
		switch d.Mode {
		case "", v1alpha1.DHCPModeNone:
		case v1alpha1.DHCPModeDnsmasq:
			if s.Subnet == "" && s.Type == v1alpha1.ClusterNetworkTypeBridge {
				fe.Required("spec.subnet", "dhcp.mode dnsmasq needs a subnet to serve")
			}
		default:
			fe.NotSupported("spec.dhcp.mode", string(d.Mode), dhcpModes)
		}
		switch {
		case d.RangeStart == "" && d.RangeEnd == "":
		case d.RangeStart == "":
			fe.Required("spec.dhcp.rangeStart", "rangeStart and rangeEnd go together")
		case d.RangeEnd == "":
			fe.Required("spec.dhcp.rangeEnd", "rangeStart and rangeEnd go together")
		case s.Subnet == "":
			fe.Forbidden("spec.dhcp.rangeStart", "a range needs spec.subnet")
		default:
			start, ok1 := hostAddr("spec.dhcp.rangeStart", d.RangeStart)
			end, ok2 := hostAddr("spec.dhcp.rangeEnd", d.RangeEnd)
			if ok1 && ok2 {
				if end.Less(start) {
					fe.Invalid("spec.dhcp.rangeEnd", d.RangeEnd, "must not be before rangeStart")
				} else if gwOK && !gw.Less(start) && !end.Less(gw) {
					fe.Invalid("spec.dhcp.rangeStart", d.RangeStart, fmt.Sprintf("the range must not contain the gateway %s", gw))
				}
			}
		}
		if d.LeaseTime != "" {
			if d.Mode != v1alpha1.DHCPModeDnsmasq {
				fe.Forbidden("spec.dhcp.leaseTime", "applies only when dhcp.mode is dnsmasq")
			} else if lt, err := time.ParseDuration(d.LeaseTime); err != nil {
				fe.Invalid("spec.dhcp.leaseTime", d.LeaseTime, "must be a duration such as 1h or 30m")
			} else if lt < minLeaseTime || lt > maxLeaseTime {
				fe.Invalid("spec.dhcp.leaseTime", d.LeaseTime, "must be between 2m and 8760h")
			}
		}
	}

	// dns
	if s.DNS != nil {
		if len(s.DNS.Servers) > maxDNSServers {
			fe.Invalid("spec.dns.servers", nil, fmt.Sprintf("may list at most %d servers", maxDNSServers))
		}
		seen := map[netip.Addr]bool{}
		for i, v := range s.DNS.Servers {
			path := fmt.Sprintf("spec.dns.servers[%d]", i)
			a, err := netip.ParseAddr(v)
			if err != nil || a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() {
				fe.Invalid(path, v, "must be an IPv4 or IPv6 unicast address")
				continue
			}
			if seen[a] {
				fe.Duplicate(path, v)
			}
			seen[a] = true
		}
	}

	if s.MTU != 0 && (s.MTU < v1alpha1.ClusterNetworkMinMTU || s.MTU > v1alpha1.ClusterNetworkMaxMTU) {
		fe.Invalid("spec.mtu", s.MTU, fmt.Sprintf("must be between %d and %d", v1alpha1.ClusterNetworkMinMTU, v1alpha1.ClusterNetworkMaxMTU))
	}

	if len(s.NodeSelector) > 0 {
		if nat {
			fe.Forbidden("spec.nodeSelector", "a NAT network spans every node (over VXLAN); only a Bridge network, whose bridge some hosts lack, takes a node selector")
		} else {
			chkLabelMap(&fe, "spec.nodeSelector", s.NodeSelector)
		}
	}
	if s.Uplink != "" {
		switch {
		case s.Type == v1alpha1.ClusterNetworkTypeBridge:
			fe.Forbidden("spec.uplink", "applies only to NAT networks")
		case checkIfName(s.Uplink) != "":
			fe.Invalid("spec.uplink", s.Uplink, checkIfName(s.Uplink))
		case s.Uplink == s.Bridge:
			fe.Invalid("spec.uplink", s.Uplink, "must differ from spec.bridge")
		}
	}
	if s.NAT != nil {
		if s.Type == v1alpha1.ClusterNetworkTypeBridge {
			fe.Forbidden("spec.nat", "applies only to NAT networks")
		}
		if len(s.NAT.DenyDestinations) > MaxDenyDestinations {
			fe.Invalid("spec.nat.denyDestinations", len(s.NAT.DenyDestinations), fmt.Sprintf("at most %d ranges", MaxDenyDestinations))
		}
		for i, d := range s.NAT.DenyDestinations {
			path := fmt.Sprintf("spec.nat.denyDestinations[%d]", i)
			p, err := netip.ParsePrefix(d)
			switch {
			case err != nil:
				fe.Invalid(path, d, "must be an IPv4 range in CIDR form, e.g. 192.168.0.0/16")
			case !p.Addr().Is4():
				fe.Invalid(path, d, "must be an IPv4 range (guests of NAT networks have IPv4 only)")
			case p.Masked() != p:
				fe.Invalid(path, d, fmt.Sprintf("has host bits set (did you mean %s?)", p.Masked()))
			}
		}
	}
	return fe
}

// MaxDenyDestinations bounds spec.nat.denyDestinations of a ClusterNetwork.
const MaxDenyDestinations = 64

// lastAddr returns the last address of p (the broadcast address of an IPv4 subnet).
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v |= host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
