package server

import (
	"net"
	"os"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// uploadBases returns the bases of upload URLs for the API's TCP listener at addr (nil: no
// listener, uploads go over the unix socket with the CLI). External names the host as
// --listen gives it (or the hostname when --listen has no host); InCluster is the loopback
// address, for clients on this host.
func uploadBases(listen string, addr net.Addr) v1alpha1.ImageUploadURLs {
	if addr == nil {
		return v1alpha1.ImageUploadURLs{}
	}
	_, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return v1alpha1.ImageUploadURLs{}
	}
	host, _, _ := net.SplitHostPort(listen)
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		if h, err := os.Hostname(); err == nil && h != "" {
			host = h
		} else {
			host = "127.0.0.1"
		}
	}
	return v1alpha1.ImageUploadURLs{
		External:  "https://" + net.JoinHostPort(host, port),
		InCluster: "https://" + net.JoinHostPort("127.0.0.1", port),
	}
}
