package server

import (
	"errors"
	"strings"
	"testing"

	"github.com/rakhsh/rakhsh/internal/errs"
)

func TestUnderlayAddressFlag(t *testing.T) {
	for _, c := range []struct{ flag, want string }{
		{"nope", `--underlay-address "nope": want an IPv4 address of this host`},
		{"fd00::1", `--underlay-address "fd00::1": want an IPv4 address of this host`},
		{"127.0.0.1", "--underlay-address 127.0.0.1: other nodes cannot reach a loopback, unspecified or multicast address"},
		{"0.0.0.0", "--underlay-address 0.0.0.0: other nodes cannot reach"},
		{"192.0.2.77", "--underlay-address 192.0.2.77 is not an address of this host"},
	} {
		_, err := underlayAddress(c.flag, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) || !errors.Is(err, errs.ErrInvalid) {
			t.Errorf("--underlay-address %s: error %v, want an invalid-input error %q", c.flag, err, c.want)
		}
	}
	// Nothing to detect from: no address, no error (the node stays out of the overlay).
	if a, err := underlayAddress("", []string{"", "127.0.0.1", "localhost"}); err != nil || a.IsValid() {
		t.Errorf("detection from loopback targets: %v %v, want none", a, err)
	}
}

func TestUnderlayTargets(t *testing.T) {
	if h := serverHost("https://10.0.0.1:8443"); h != "10.0.0.1" {
		t.Errorf("serverHost: %q", h)
	}
	if h := serverHost("unix:///var/lib/rakhsh/rakhsh.sock"); h != "" {
		t.Errorf("serverHost of a socket: %q", h)
	}
	if got := strings.Join(storeHosts("etcd+https://10.0.0.1:2379, e2.example:2379"), " "); got != "10.0.0.1 e2.example" {
		t.Errorf("storeHosts: %q", got)
	}
	if got := storeHosts("bolt"); got != nil {
		t.Errorf("storeHosts(bolt): %v", got)
	}
}
