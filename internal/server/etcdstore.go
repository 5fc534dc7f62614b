package server

import (
	"crypto/tls"
	"fmt"
	"net"
	"strings"
)

// EtcdTLS is how serve reaches an etcd cluster over TLS (--store etcd+https://...).
type EtcdTLS struct {
	CA       string // PEM bundle of the CAs that sign etcd's server certificates ("": system roots)
	Cert     string // client certificate (PEM) when etcd checks clients (--client-cert-auth)
	Key      string // its private key
	Insecure bool   // --insecure-etcd: plain http to an etcd that is not on loopback
}

// etcdEndpoints turns --store into etcd client URLs: etcd://h:p[,h:p...] is plain http, and is
// refused to any endpoint off loopback unless insecure is set (the store holds every object,
// secrets included, and etcd's plain http has neither encryption nor authentication);
// etcd+https://h:p[,...] is TLS.
func etcdEndpoints(store string, insecure bool) (eps []string, useTLS bool, err error) {
	scheme, rest, ok := strings.Cut(store, "://")
	switch {
	case !ok:
		return nil, false, fmt.Errorf("--store %q: use bolt, etcd://host:port[,...] or etcd+https://host:port[,...]", store)
	case scheme == "etcd":
	case scheme == "etcd+https":
		useTLS = true
	default:
		return nil, false, fmt.Errorf("--store %q: unknown scheme %q (bolt, etcd:// or etcd+https://)", store, scheme)
	}
	for _, e := range strings.Split(rest, ",") {
		if e = strings.TrimSpace(e); e == "" {
			continue
		}
		host, port, err := net.SplitHostPort(e)
		if err != nil || host == "" || port == "" {
			return nil, false, fmt.Errorf("--store %q: endpoint %q is not host:port", store, e)
		}
		if !useTLS && !insecure && !loopbackHost(host) {
			return nil, false, fmt.Errorf("--store %q: etcd endpoint %s is reached over plain http, which neither encrypts nor authenticates; use etcd+https:// with --etcd-ca, --etcd-cert and --etcd-key, or pass --insecure-etcd to accept it", store, e)
		}
		if useTLS {
			eps = append(eps, "https://"+e)
		} else {
			eps = append(eps, "http://"+e)
		}
	}
	if len(eps) == 0 {
		return nil, false, fmt.Errorf("--store %q names no etcd endpoint", store)
	}
	return eps, useTLS, nil
}

func loopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// tlsConfig loads the files of c into a client TLS configuration.
func (c EtcdTLS) tlsConfig() (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CA != "" {
		pool, err := readCertPool("--etcd-ca", c.CA)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}
	if (c.Cert == "") != (c.Key == "") {
		return nil, fmt.Errorf("--etcd-cert and --etcd-key go together")
	}
	if c.Cert != "" {
		kp, err := tls.LoadX509KeyPair(c.Cert, c.Key)
		if err != nil {
			return nil, fmt.Errorf("--etcd-cert/--etcd-key: %w", err)
		}
		cfg.Certificates = []tls.Certificate{kp}
	}
	return cfg, nil
}
