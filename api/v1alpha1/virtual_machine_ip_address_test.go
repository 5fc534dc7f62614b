package v1alpha1

import (
	"net/netip"
	"testing"
)

func TestIPLeaseName(t *testing.T) {
	tests := []struct{ addr, name string }{
		{"10.66.10.1", "ip-10-66-10-1"},
		{"0.0.0.0", "ip-0-0-0-0"},
		{"::ffff:192.168.1.2", "ip-192-168-1-2"},
		{"2001:db8::1", "ip-2001-0db8-0000-0000-0000-0000-0000-0001"},
		{"fe80::1%eth0", "ip-fe80-0000-0000-0000-0000-0000-0000-0001"},
	}
	for _, tt := range tests {
		a := netip.MustParseAddr(tt.addr)
		if got := IPLeaseName(a); got != tt.name {
			t.Errorf("IPLeaseName(%s) = %q, want %q", tt.addr, got, tt.name)
		}
		back, err := ParseIPLeaseName(tt.name)
		if err != nil || back != a.Unmap().WithZone("") {
			t.Errorf("ParseIPLeaseName(%q) = %v, %v; want %v", tt.name, back, err, a.Unmap().WithZone(""))
		}
	}
	for _, bad := range []string{"", "ip-", "10-0-0-1", "ip-10-0-0", "ip-010-0-0-1", "ip-10-0-0-256", "ip-2001-db8-0-0-0-0-0-1",
		"ip-2001-0DB8-0000-0000-0000-0000-0000-0001", "ip-1-2-3-4-5", "mac-10-0-0-1", "ip-a-b-c-d"} {
		if a, err := ParseIPLeaseName(bad); err == nil {
			t.Errorf("ParseIPLeaseName(%q) = %v, want an error", bad, a)
		}
	}
}

func FuzzIPLeaseName(f *testing.F) {
	f.Add([]byte{10, 0, 0, 1}, "ip-10-0-0-1")
	f.Add([]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, "ip-2001-0db8-0000-0000-0000-0000-0000-0001")
	f.Fuzz(func(t *testing.T, raw []byte, name string) {
		if a, ok := netip.AddrFromSlice(raw); ok {
			n := IPLeaseName(a)
			back, err := ParseIPLeaseName(n)
			if err != nil || back != a.Unmap() {
				t.Fatalf("round trip of %v: %q -> %v, %v", a, n, back, err)
			}
			if len(n) > 63 {
				t.Fatalf("name %q is longer than a DNS label", n)
			}
		}
		if a, err := ParseIPLeaseName(name); err == nil && IPLeaseName(a) != name {
			t.Fatalf("ParseIPLeaseName accepted non-canonical %q (%v)", name, a)
		}
	})
}
