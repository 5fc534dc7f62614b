package network

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// DefaultMACRange is the MAC pool when none is configured: a locally administered unicast
// prefix (02:72:6b is "rk"), 16 million addresses.
const DefaultMACRange = "02:72:6b:00:00:00-02:72:6b:ff:ff:ff"

// MACRange is an inclusive range of MAC addresses, as 48-bit numbers.
type MACRange struct{ First, Last uint64 }

// ParseMACRanges parses "first-last[,first-last...]". Every address must be unicast
// (the lowest bit of the first octet clear) and first must not be above last.
func ParseMACRanges(s string) ([]MACRange, error) {
	var out []MACRange
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		a, b, ok := strings.Cut(part, "-")
		if !ok || len(a) != 17 {
			return nil, fmt.Errorf("MAC range %q is not of the form aa:bb:cc:dd:ee:ff-aa:bb:cc:dd:ee:ff", part)
		}
		first, err := macNum(a)
		if err != nil {
			return nil, fmt.Errorf("MAC range %q: %v", part, err)
		}
		last, err := macNum(b)
		if err != nil {
			return nil, fmt.Errorf("MAC range %q: %v", part, err)
		}
		if first > last {
			return nil, fmt.Errorf("MAC range %q: the first address is above the last", part)
		}
		if (first>>40)&1 == 1 || (last>>40)&1 == 1 || first>>41 != last>>41 {
			return nil, fmt.Errorf("MAC range %q: addresses must be unicast (even first octet) and share the first octet's multicast bit", part)
		}
		out = append(out, MACRange{First: first, Last: last})
	}
	return out, nil
}

func macNum(s string) (uint64, error) {
	n, err := v1alpha1.NormalizeMAC(s)
	if err != nil {
		return 0, err
	}
	hw, _ := net.ParseMAC(n)
	var v uint64
	for _, b := range hw {
		v = v<<8 | uint64(b)
	}
	return v, nil
}

// MACString formats a 48-bit number as a MAC address.
func MACString(v uint64) string {
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", byte(v>>40), byte(v>>32), byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
}

// Size is the number of addresses in the ranges.
func Size(rs []MACRange) uint64 {
	var n uint64
	for _, r := range rs {
		n += r.Last - r.First + 1
	}
	return n
}

// NextFreeMAC returns the first address at or after start (an offset into the ranges taken
// as one sequence, wrapping around) for which taken is false. ok is false when every
// address is taken.
func NextFreeMAC(rs []MACRange, start uint64, taken func(mac string) bool) (string, bool) {
	size := Size(rs)
	if size == 0 {
		return "", false
	}
	for i := uint64(0); i < size; i++ {
		off := (start + i) % size
		for _, r := range rs {
			n := r.Last - r.First + 1
			if off < n {
				mac := MACString(r.First + off)
				if !taken(mac) {
					return mac, true
				}
				break
			}
			off -= n
		}
	}
	return "", false
}

// IPPool is the range of addresses Auto claims of a network get.
type IPPool struct {
	Subnet      netip.Prefix
	Gateway     netip.Addr
	First, Last netip.Addr
}

// PoolOf returns the address pool of a network: dhcp.rangeStart..rangeEnd, or every host
// address of the subnet; the gateway is never handed out.
func PoolOf(s v1alpha1.ClusterNetworkSpec) (IPPool, error) {
	if s.Subnet == "" {
		return IPPool{}, fmt.Errorf("the network has no subnet, so Rakhsh does not manage its addresses")
	}
	p, err := netip.ParsePrefix(s.Subnet)
	if err != nil || !p.Addr().Is4() {
		return IPPool{}, fmt.Errorf("subnet %q is not an IPv4 CIDR", s.Subnet)
	}
	p = p.Masked()
	pool := IPPool{Subnet: p, First: p.Addr().Next(), Last: prev(broadcast(p))}
	if s.Gateway != "" {
		pool.Gateway, _ = netip.ParseAddr(s.Gateway)
	}
	if s.DHCP != nil && s.DHCP.RangeStart != "" && s.DHCP.RangeEnd != "" {
		a, err1 := netip.ParseAddr(s.DHCP.RangeStart)
		b, err2 := netip.ParseAddr(s.DHCP.RangeEnd)
		if err1 != nil || err2 != nil {
			return IPPool{}, fmt.Errorf("dhcp range %s-%s is not two IPv4 addresses", s.DHCP.RangeStart, s.DHCP.RangeEnd)
		}
		pool.First, pool.Last = a, b
	}
	return pool, nil
}

// Contains says whether a is an address a claim may hold: a host address of the subnet that
// is not the gateway (Static claims may lie outside the Auto range).
func (p IPPool) Contains(a netip.Addr) bool {
	return p.Subnet.Contains(a) && a != p.Subnet.Addr() && a != broadcast(p.Subnet) && a != p.Gateway
}

// Size is the number of addresses Auto claims may get.
func (p IPPool) Size() int {
	n := 0
	for a := p.First; a.IsValid() && a.Compare(p.Last) <= 0; a = a.Next() {
		if a != p.Gateway {
			n++
		}
		if n > 1<<24 {
			break
		}
	}
	return n
}

// NextFree returns the first address of the Auto range for which taken is false.
func (p IPPool) NextFree(taken func(netip.Addr) bool) (netip.Addr, bool) {
	for a := p.First; a.IsValid() && a.Compare(p.Last) <= 0; a = a.Next() {
		if a != p.Gateway && !taken(a) {
			return a, true
		}
	}
	return netip.Addr{}, false
}

func broadcast(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v |= uint32(1)<<(32-p.Bits()) - 1
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func prev(a netip.Addr) netip.Addr { return a.Prev() }

// InRanges says whether mac ("aa:bb:cc:dd:ee:ff") lies in one of rs (none: the default
// range).
func InRanges(rs []MACRange, mac string) bool {
	v, err := macNum(mac)
	if err != nil {
		return false
	}
	for _, r := range rangesOrDefault(rs) {
		if v >= r.First && v <= r.Last {
			return true
		}
	}
	return false
}

// RangesString writes rs as --mac-ranges takes them (none: the default range).
func RangesString(rs []MACRange) string {
	parts := []string{}
	for _, r := range rangesOrDefault(rs) {
		parts = append(parts, MACString(r.First)+"-"+MACString(r.Last))
	}
	return strings.Join(parts, ",")
}

func rangesOrDefault(rs []MACRange) []MACRange {
	if len(rs) == 0 {
		rs, _ = ParseMACRanges(DefaultMACRange)
	}
	return rs
}
