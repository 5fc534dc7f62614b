package v1alpha1

import (
	"strings"
	"testing"
)

func TestParseInboundSource(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.7":    "192.0.2.7/32",
		"192.0.2.0/24": "192.0.2.0/24",
		"0.0.0.0/0":    "0.0.0.0/0",
		"10.1.2.3/32":  "10.1.2.3/32",
	} {
		got, err := ParseInboundSource(in)
		if err != nil || got.String() != want {
			t.Errorf("ParseInboundSource(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	for in, msg := range map[string]string{
		"":               "IPv4 address or CIDR",
		"2001:db8::1":    "IPv4 address or CIDR",
		"2001:db8::/32":  "IPv4 address or CIDR",
		"192.0.2.1/24":   "did you mean 192.0.2.0/24?",
		"192.0.2.0/33":   "IPv4 address or CIDR",
		"example.org":    "IPv4 address or CIDR",
		"192.0.2.0/24 ":  "IPv4 address or CIDR",
		"192.0.2.300":    "IPv4 address or CIDR",
		"10.0.0.0/8,1.1": "IPv4 address or CIDR",
	} {
		if _, err := ParseInboundSource(in); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("ParseInboundSource(%q) error %v, want one saying %q", in, err, msg)
		}
	}
}
