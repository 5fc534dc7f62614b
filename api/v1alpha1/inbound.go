package v1alpha1

import (
	"fmt"
	"net/netip"
	"strings"
)

// ParseInboundSource parses one source of an inbound rule: an IPv4 address (a /32) or an
// IPv4 CIDR whose host bits are zero.
func ParseInboundSource(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil || !a.Is4() {
			return netip.Prefix{}, fmt.Errorf("must be an IPv4 address or CIDR such as 192.0.2.0/24")
		}
		return netip.PrefixFrom(a, 32), nil
	}
	pf, err := netip.ParsePrefix(s)
	if err != nil || !pf.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("must be an IPv4 address or CIDR such as 192.0.2.0/24")
	}
	if pf.Masked() != pf {
		return netip.Prefix{}, fmt.Errorf("has host bits set: did you mean %s?", pf.Masked())
	}
	return pf, nil
}
