package registry

import (
	"fmt"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
)

// Limits of one interface's inbound policy: the rules become nftables rules on the host.
const (
	maxInboundRules   = 64
	maxInboundSources = 32
)

// validateInbound checks spec.networks[i].inbound: protocol TCP, UDP or ICMP; TCP and UDP
// rules need a port (and an optional endPort not below it), ICMP rules take none; sources
// are IPv4 addresses or CIDRs without host bits.
func validateInbound(fe *errs.FieldErrors, p string, n v1alpha1.NetworkSpec) {
	if n.Inbound == nil {
		return
	}
	p += ".inbound.rules"
	if len(n.Inbound.Rules) > maxInboundRules {
		fe.Invalid(p, len(n.Inbound.Rules), fmt.Sprintf("at most %d rules per interface", maxInboundRules))
		return
	}
	for j, r := range n.Inbound.Rules {
		rp := fmt.Sprintf("%s[%d]", p, j)
		proto := r.Protocol
		if proto == "" {
			proto = "TCP"
		}
		switch proto {
		case "TCP", "UDP":
			if r.Port < 1 || r.Port > 65535 {
				fe.Invalid(rp+".port", r.Port, "must be a port number 1..65535")
			}
			if r.EndPort != 0 && (r.EndPort < r.Port || r.EndPort > 65535) {
				fe.Invalid(rp+".endPort", r.EndPort, fmt.Sprintf("must be a port number from port (%d) to 65535", r.Port))
			}
		case "ICMP":
			if r.Port != 0 || r.EndPort != 0 {
				fe.Forbidden(rp+".port", "ICMP rules have no ports")
			}
		default:
			fe.NotSupported(rp+".protocol", r.Protocol, []string{"TCP", "UDP", "ICMP"})
		}
		if len(r.From) > maxInboundSources {
			fe.Invalid(rp+".from", len(r.From), fmt.Sprintf("at most %d sources per rule", maxInboundSources))
			continue
		}
		for k, src := range r.From {
			if _, err := v1alpha1.ParseInboundSource(src); err != nil {
				fe.Invalid(fmt.Sprintf("%s.from[%d]", rp, k), src, err.Error())
			}
		}
	}
}
