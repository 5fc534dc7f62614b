package server

import (
	"net"
	"net/netip"
	"net/url"
	"strings"

	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/network"
)

// underlayAddress is the node's underlay address (docs/networking.md, "Networks across
// hosts"): --underlay-address when given (an IPv4 address of this host), else the source
// address of the route toward the first of targets (the API server or the store) that is
// not on loopback; invalid when there is none (NAT networks then stay on this host).
func underlayAddress(flag string, targets []string) (netip.Addr, error) {
	if flag != "" {
		a, err := netip.ParseAddr(flag)
		if err != nil || !a.Unmap().Is4() {
			return netip.Addr{}, errs.New(errs.ErrInvalid, "--underlay-address %q: want an IPv4 address of this host", flag)
		}
		a = a.Unmap()
		if a.IsLoopback() || a.IsUnspecified() || a.IsMulticast() {
			return netip.Addr{}, errs.New(errs.ErrInvalid, "--underlay-address %s: other nodes cannot reach a loopback, unspecified or multicast address", a)
		}
		if network.UnderlayMTU(a) == 0 {
			return netip.Addr{}, errs.New(errs.ErrInvalid, "--underlay-address %s is not an address of this host", a)
		}
		return a, nil
	}
	return network.DetectUnderlay(targets), nil
}

// serverHost is the host of an API server URL ("" for a unix socket).
func serverHost(server string) string {
	if strings.HasPrefix(server, "unix://") {
		return ""
	}
	u, err := url.Parse(server)
	if err != nil {
		return ""
	}
	return u.Hostname()
}

// storeHosts are the hosts of an etcd store's endpoints (none for bolt).
func storeHosts(store string) []string {
	_, rest, ok := strings.Cut(store, "://")
	if !ok {
		return nil
	}
	var out []string
	for _, e := range strings.Split(rest, ",") {
		if h, _, err := net.SplitHostPort(strings.TrimSpace(e)); err == nil {
			out = append(out, h)
		}
	}
	return out
}
