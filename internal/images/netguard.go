package images

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// An import is a request the server makes on behalf of whoever wrote the image's URL. Without
// a guard, a URL such as http://127.0.0.1:2379/... or http://169.254.169.254/... reads from the
// server's own network (a server-side request forgery) and the answer comes back through the
// image's data subresource. NetworkPolicy refuses internal destinations on the address that is
// actually dialled, after DNS resolution and on every redirect (each redirect is a new dial),
// so a name that resolves to a public address once and to 127.0.0.1 the next time (DNS
// rebinding) cannot pass.

// AllowFlag is the serve flag that lets an operator open internal networks to imports.
const AllowFlag = "--allow-import-from"

// ReasonImportRefused: the URL (or a redirect, or what its name resolves to) points at an
// internal address that the operator has not allowed.
const ReasonImportRefused = "ImportRefused"

// RefusedError is a dial to an address imports may not reach.
type RefusedError struct {
	Addr netip.Addr
	// Class says what the address is: "a loopback address", "a private address", ...
	Class string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("%s is %s; an operator may allow it with serve %s", e.Addr, e.Class, AllowFlag)
}

// NetworkPolicy decides which addresses imports may dial. The zero value refuses every
// internal address (see Classify) and allows the rest.
type NetworkPolicy struct {
	// Allow lists networks that imports may reach although they are internal (an operator's
	// mirror on the LAN: serve --allow-import-from).
	Allow []netip.Prefix
	// LookupNetIP resolves a host name; nil uses the system resolver. Tests make it answer
	// differently from one call to the next (DNS rebinding).
	LookupNetIP func(ctx context.Context, host string) ([]netip.Addr, error)
}

var defaultPolicy atomic.Pointer[NetworkPolicy]

// SetDefaultNetworkPolicy sets the policy of imports whose Options do not name one (the
// server's --allow-import-from). nil restores the strict default.
func SetDefaultNetworkPolicy(p *NetworkPolicy) { defaultPolicy.Store(p) }

// DefaultNetworkPolicy is the policy of imports whose Options do not name one.
func DefaultNetworkPolicy() *NetworkPolicy {
	if p := defaultPolicy.Load(); p != nil {
		return p
	}
	return &NetworkPolicy{}
}

func (o Options) networkPolicy() *NetworkPolicy {
	if o.Network != nil {
		return o.Network
	}
	return DefaultNetworkPolicy()
}

// ParseAllowList parses --allow-import-from values: CIDRs, each value possibly a comma list.
func ParseAllowList(values []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, v := range values {
		for _, s := range strings.Split(v, ",") {
			s = strings.TrimSpace(s)
			if s == "" {
				continue
			}
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("%s %q: not a CIDR network (want e.g. 10.20.0.0/16, 192.0.2.7/32 or fd12:3456::/48)", AllowFlag, s)
			}
			out = append(out, p.Masked())
		}
	}
	return out, nil
}

// metadataAddrs are cloud instance metadata services, named as such in refusals.
var metadataAddrs = []netip.Addr{
	netip.MustParseAddr("169.254.169.254"), // AWS, GCP, Azure, OpenStack instance metadata
	netip.MustParseAddr("fd00:ec2::254"),   // AWS instance metadata over IPv6
	netip.MustParseAddr("100.100.100.200"), // Alibaba Cloud instance metadata
}

var internalRanges = []struct {
	p     netip.Prefix
	class string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "an unspecified (\"this network\") address"},
	{netip.MustParsePrefix("127.0.0.0/8"), "a loopback address"},
	{netip.MustParsePrefix("10.0.0.0/8"), "a private address"},
	{netip.MustParsePrefix("172.16.0.0/12"), "a private address"},
	{netip.MustParsePrefix("192.168.0.0/16"), "a private address"},
	{netip.MustParsePrefix("100.64.0.0/10"), "a carrier-grade NAT (shared) address"},
	{netip.MustParsePrefix("169.254.0.0/16"), "a link-local address"},
	{netip.MustParsePrefix("192.0.0.0/24"), "an IETF protocol assignment address"},
	{netip.MustParsePrefix("198.18.0.0/15"), "a benchmarking address"},
	{netip.MustParsePrefix("224.0.0.0/4"), "a multicast address"},
	{netip.MustParsePrefix("240.0.0.0/4"), "a reserved (or broadcast) address"},
	{netip.MustParsePrefix("::/128"), "an unspecified address"},
	{netip.MustParsePrefix("::1/128"), "a loopback address"},
	{netip.MustParsePrefix("fc00::/7"), "a private (unique local) address"},
	{netip.MustParsePrefix("fec0::/10"), "a private (site-local) address"},
	{netip.MustParsePrefix("fe80::/10"), "a link-local address"},
	{netip.MustParsePrefix("ff00::/8"), "a multicast address"},
}

// nat64 is the well-known NAT64 prefix: its last 32 bits are an IPv4 address.
var nat64 = netip.MustParsePrefix("64:ff9b::/96")

var (
	localNAT64     = netip.MustParsePrefix("64:ff9b:1::/48") // RFC 8215: any IPv4 behind a local translator
	sixToFour      = netip.MustParsePrefix("2002::/16")      // bits 16..47 are an IPv4 address
	ipv4Compatible = netip.MustParsePrefix("::/96")          // deprecated ::a.b.c.d
)

// Classify says why imports may not reach a, or "" when a is a public address.
func Classify(a netip.Addr) string {
	// ::ffff:127.0.0.1 is 127.0.0.1, and ::1%lo is ::1 (a prefix never contains a zoned
	// address, and the kernel ignores the zone of a loopback or unique local address).
	a = a.Unmap().WithZone("")
	if a.Is6() && ipv4Compatible.Contains(a) && a != netip.IPv6Unspecified() && a != netip.IPv6Loopback() {
		return "an IPv4-compatible IPv6 address"
	}
	if a.Is6() && localNAT64.Contains(a) {
		return "a local-use NAT64 address"
	}
	if a.Is6() && sixToFour.Contains(a) {
		b := a.As16()
		if c := Classify(netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]})); c != "" {
			return c + " (inside a 6to4 address)"
		}
	}
	if a.Is6() && nat64.Contains(a) {
		b := a.As16()
		if c := Classify(netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})); c != "" {
			return c + " (behind NAT64)"
		}
	}
	for _, m := range metadataAddrs {
		if a == m {
			return "a cloud metadata address"
		}
	}
	for _, r := range internalRanges {
		if r.p.Contains(a) {
			return r.class
		}
	}
	if !a.IsValid() {
		return "not a valid address"
	}
	return ""
}

// Check returns a *RefusedError when imports may not dial a.
func (p *NetworkPolicy) Check(a netip.Addr) error {
	a = a.Unmap().WithZone("")
	class := Classify(a)
	if class == "" {
		return nil
	}
	for _, allowed := range p.Allow {
		if allowed.Contains(a) {
			return nil
		}
	}
	return &RefusedError{Addr: a, Class: class}
}

// control is the net.Dialer Control hook: it sees the address of the socket about to connect.
func (p *NetworkPolicy) control(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("dialling %s %q: not an IP address and port", network, address)
	}
	return p.Check(ap.Addr())
}

func (p *NetworkPolicy) lookup(ctx context.Context, host string) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		return []netip.Addr{a}, nil
	}
	if p.LookupNetIP != nil {
		return p.LookupNetIP(ctx, host)
	}
	return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
}

// dialer returns a DialContext for an http.Transport that resolves the host itself and dials
// each address with the policy's Control hook. trusted are host:port addresses dialled
// without the check (the operator's HTTP proxy).
func (p *NetworkPolicy) dialer(trusted map[string]bool) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second, Control: p.control}
	plain := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if trusted[addr] {
			return plain.DialContext(ctx, network, addr)
		}
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		addrs, err := p.lookup(ctx, host)
		if err != nil {
			return nil, err
		}
		if len(addrs) == 0 {
			return nil, fmt.Errorf("%s has no address", host)
		}
		var firstErr error
		for _, a := range addrs {
			// Checked here so that a refused address is named even where its family has no
			// sockets; the Control hook checks again on the socket itself.
			if err := p.Check(a); err != nil {
				if firstErr == nil || !errors.As(firstErr, new(*RefusedError)) {
					firstErr = err
				}
				continue
			}
			c, err := d.DialContext(ctx, network, net.JoinHostPort(a.Unmap().String(), port))
			if err == nil {
				return c, nil
			}
			var re *RefusedError
			if firstErr == nil || (errors.As(err, &re) && !errors.As(firstErr, &re)) {
				firstErr = err // a refusal says more than a connection error
			}
			if ctx.Err() != nil {
				break
			}
		}
		return nil, firstErr
	}
}

// proxyFunc is http.ProxyFromEnvironment that refuses, before the request goes to the
// proxy, a target the policy refuses (the proxy would reach it on the import's behalf). The
// check resolves the name here; the proxy resolves it again, so an operator's proxy should
// itself refuse internal destinations.
func (p *NetworkPolicy) proxyFunc(req *http.Request) (*url.URL, error) {
	u, err := http.ProxyFromEnvironment(req)
	if err != nil {
		return nil, err
	}
	if u == nil {
		// Not proxied (NO_PROXY): the dialer does not check a proxy's own address, so a direct
		// request to that address is checked here.
		port := req.URL.Port()
		if port == "" {
			port = map[string]string{"http": "80", "https": "443"}[req.URL.Scheme]
		}
		if proxyAddrs()[net.JoinHostPort(req.URL.Hostname(), port)] {
			return nil, p.checkHost(req.Context(), req.URL.Hostname())
		}
		return nil, nil
	}
	if err := p.checkHost(req.Context(), req.URL.Hostname()); err != nil {
		return nil, err
	}
	return u, nil
}

// checkHost resolves host and refuses it when any of its addresses is refused.
func (p *NetworkPolicy) checkHost(ctx context.Context, host string) error {
	addrs, err := p.lookup(ctx, host)
	if err != nil {
		return err
	}
	for _, a := range addrs {
		if err := p.Check(a); err != nil {
			return err
		}
	}
	return nil
}

// proxyAddrs are the host:port of the proxies the environment names, for http and https.
func proxyAddrs() map[string]bool {
	out := map[string]bool{}
	for _, s := range []string{"http://rakhsh-import.invalid/", "https://rakhsh-import.invalid/"} {
		req, _ := http.NewRequest(http.MethodGet, s, nil)
		u, err := http.ProxyFromEnvironment(req)
		if err != nil || u == nil {
			continue
		}
		port := u.Port()
		if port == "" {
			port = map[string]string{"http": "80", "https": "443", "socks5": "1080"}[u.Scheme]
		}
		out[net.JoinHostPort(u.Hostname(), port)] = true
	}
	return out
}

// refusal turns a dial refused by the policy into the import's error, or returns nil.
func refusal(err error, srcURL string) error {
	var re *RefusedError
	if !errors.As(err, &re) {
		return nil
	}
	var ue *url.Error
	via := ""
	if errors.As(err, &ue) && ue.URL != "" && ue.URL != srcURL {
		via = " (redirected to " + redact(ue.URL) + ")"
	}
	return permanent(ReasonImportRefused, "import from %s refused%s: %v", redact(srcURL), via, re)
}
