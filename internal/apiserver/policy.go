package apiserver

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
)

// PortRange is the host ports that port forwards may take: a forward on a lower port could
// capture a host service (sshd on 22, the API, etcd), since DNAT sees the packet before the
// host's own sockets do.
type PortRange struct{ First, Last int }

// DefaultPortForwardRange is the range of `serve --port-forward-range`: above the well-known
// and most registered service ports, below Linux's ephemeral ports (32768-60999).
var DefaultPortForwardRange = PortRange{20000, 32767}

func (r PortRange) String() string { return fmt.Sprintf("%d-%d", r.First, r.Last) }

// ParsePortRange parses "FIRST-LAST" (1..65535, FIRST <= LAST).
func ParsePortRange(s string) (PortRange, error) {
	a, b, ok := strings.Cut(strings.TrimSpace(s), "-")
	first, err1 := strconv.Atoi(strings.TrimSpace(a))
	last, err2 := strconv.Atoi(strings.TrimSpace(b))
	if !ok || err1 != nil || err2 != nil {
		return PortRange{}, fmt.Errorf("port range %q: want FIRST-LAST, e.g. 20000-32767", s)
	}
	if first < 1 || last > 65535 || first > last {
		return PortRange{}, fmt.Errorf("port range %q: ports are 1..65535 and FIRST must not be above LAST", s)
	}
	return PortRange{first, last}, nil
}

// policyErrors checks what depends on this server's configuration rather than on the object
// alone: a VM's port forwards take host ports inside the allowed range. Only forwards that
// are new in this write are checked, so narrowing the range later leaves existing VMs (and
// their status writes) alone.
func (s *Server) policyErrors(obj, old v1alpha1.Object) errs.FieldErrors {
	vm, ok := obj.(*v1alpha1.VirtualMachine)
	if !ok || s.forwardRange == (PortRange{}) {
		return nil
	}
	had := map[string]bool{}
	if o, ok := old.(*v1alpha1.VirtualMachine); ok {
		for _, n := range o.Spec.Networks {
			for _, f := range n.PortForwards {
				had[forwardKey(f)] = true
			}
		}
	}
	var fe errs.FieldErrors
	r := s.forwardRange
	for i, n := range vm.Spec.Networks {
		for j, f := range n.PortForwards {
			if (f.HostPort < r.First || f.HostPort > r.Last) && !had[forwardKey(f)] {
				fe.Invalid(fmt.Sprintf("spec.networks[%d].portForwards[%d].hostPort", i, j), f.HostPort,
					fmt.Sprintf("must be in %s, the host ports this cluster gives to port forwards (rakhsh serve --port-forward-range)", r))
			}
		}
	}
	return fe
}

func forwardKey(f v1alpha1.PortForward) string {
	p := strings.ToUpper(f.Protocol)
	if p == "" {
		p = "TCP"
	}
	return fmt.Sprintf("%s/%d", p, f.HostPort)
}
