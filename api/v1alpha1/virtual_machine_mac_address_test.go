package v1alpha1

import (
	"net"
	"testing"
)

func TestMACLeaseName(t *testing.T) {
	tests := []struct{ in, norm, name string }{
		{"aa:bb:cc:dd:ee:ff", "aa:bb:cc:dd:ee:ff", "mac-aa-bb-cc-dd-ee-ff"},
		{"02:00:0A:0b:0C:01", "02:00:0a:0b:0c:01", "mac-02-00-0a-0b-0c-01"},
		{"02-00-00-00-00-01", "02:00:00:00:00:01", "mac-02-00-00-00-00-01"},
	}
	for _, tt := range tests {
		n, err := NormalizeMAC(tt.in)
		if err != nil || n != tt.norm {
			t.Errorf("NormalizeMAC(%q) = %q, %v", tt.in, n, err)
		}
		name, err := MACLeaseName(tt.in)
		if err != nil || name != tt.name {
			t.Errorf("MACLeaseName(%q) = %q, %v", tt.in, name, err)
		}
		back, err := ParseMACLeaseName(tt.name)
		if err != nil || back != tt.norm {
			t.Errorf("ParseMACLeaseName(%q) = %q, %v", tt.name, back, err)
		}
	}
	for _, bad := range []string{"", "aa:bb:cc:dd:ee", "aabb.ccdd.eeff", "aa:bb:cc:dd:ee:ff:00:11", "aa:bb-cc:dd:ee:ff", "zz:bb:cc:dd:ee:ff"} {
		if _, err := MACLeaseName(bad); err == nil {
			t.Errorf("MACLeaseName(%q) accepted", bad)
		}
	}
	for _, bad := range []string{"mac-AA-bb-cc-dd-ee-ff", "mac-aa:bb:cc:dd:ee:ff", "ip-aa-bb-cc-dd-ee-ff", "mac-aa-bb-cc-dd-ee", "mac-"} {
		if m, err := ParseMACLeaseName(bad); err == nil {
			t.Errorf("ParseMACLeaseName(%q) = %q, want an error", bad, m)
		}
	}
}

func FuzzMACLeaseName(f *testing.F) {
	f.Add([]byte{2, 0, 0, 0, 0, 1}, "mac-02-00-00-00-00-01")
	f.Add([]byte{0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff}, "mac-AA-bb-cc-dd-ee-ff")
	f.Fuzz(func(t *testing.T, raw []byte, name string) {
		if len(raw) == 6 {
			mac := net.HardwareAddr(raw).String()
			n, err := MACLeaseName(mac)
			if err != nil {
				t.Fatalf("MACLeaseName(%q): %v", mac, err)
			}
			back, err := ParseMACLeaseName(n)
			if err != nil || back != mac {
				t.Fatalf("round trip of %s: %q -> %q, %v", mac, n, back, err)
			}
		}
		if m, err := ParseMACLeaseName(name); err == nil {
			if n, _ := MACLeaseName(m); n != name {
				t.Fatalf("ParseMACLeaseName accepted non-canonical %q", name)
			}
		}
	})
}
