package registry

import (
	"fmt"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
)

// validatePortForwards checks spec.networks[i].portForwards: protocol TCP or UDP, ports
// 1..65535, a host port used once per protocol across the VM's interfaces (seen maps
// "PROTO/port" to the path that took it). Whether the network is NAT is checked when the
// VM starts (the network may be created later).
func validatePortForwards(fe *errs.FieldErrors, p string, n v1alpha1.NetworkSpec, seen map[string]string) {
	if len(n.PortForwards) > 0 && n.Type == v1alpha1.NetworkTypeNetwork {
		fe.Forbidden(p+".portForwards", "port forwards are only possible on the Main network or a NAT ClusterNetwork")
	}
	for j, f := range n.PortForwards {
		fp := fmt.Sprintf("%s.portForwards[%d]", p, j)
		proto := f.Protocol
		if proto == "" {
			proto = "TCP"
		}
		if proto != "TCP" && proto != "UDP" {
			fe.NotSupported(fp+".protocol", f.Protocol, []string{"TCP", "UDP"})
		}
		if f.HostPort < 1 || f.HostPort > 65535 {
			fe.Invalid(fp+".hostPort", f.HostPort, "must be a port number 1..65535")
		}
		if f.Port < 1 || f.Port > 65535 {
			fe.Invalid(fp+".port", f.Port, "must be a port number 1..65535")
		}
		k := fmt.Sprintf("%s/%d", proto, f.HostPort)
		if other, ok := seen[k]; ok {
			fe.Duplicate(fp+".hostPort", fmt.Sprintf("%s host port %d is already forwarded by %s", proto, f.HostPort, other))
		} else {
			seen[k] = fp
		}
	}
}
