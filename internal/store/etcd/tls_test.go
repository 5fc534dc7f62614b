package etcd

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/store"
	"github.com/rakhsh/rakhsh/internal/store/etcd/etcdtest"
	"github.com/rakhsh/rakhsh/internal/store/storetest"
	"github.com/rakhsh/rakhsh/internal/testutil"
)

// TestConformanceTLS runs the store conformance suite against an etcd that serves clients
// only over TLS and requires a client certificate.
func TestConformanceTLS(t *testing.T) {
	srv := etcdtest.StartTLS(t)
	if !strings.HasPrefix(srv.Endpoints[0], "https://") {
		t.Fatalf("StartTLS endpoint %s is not https", srv.Endpoints[0])
	}
	storetest.Run(t, func(t testing.TB) store.Store {
		return open(t, Config{Endpoints: srv.Endpoints, Prefix: uniquePrefix(), TLS: srv.TLS})
	})
}

// TestTLSRefused checks that New fails at once, not after the dial timeout, and says why, when
// the TLS configuration cannot work with the server.
func TestTLSRefused(t *testing.T) {
	srv := etcdtest.StartTLS(t)
	plain := etcdtest.Start(t)
	other, err := etcdtest.GenerateCerts(filepath.Join(t.TempDir(), "other"))
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := tls.LoadX509KeyPair(other.ClientCert, other.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := testutil.CertPool(t, srv.Certs.CA)
	cases := []struct {
		name      string
		endpoints []string
		tls       *tls.Config
		want      []string
		slow      bool // fails only at the dial timeout
	}{{
		name: "no client certificate", endpoints: srv.Endpoints,
		tls:  &tls.Config{RootCAs: pool},
		want: []string{srv.Endpoints[0], "etcd refused the TLS handshake", "requires a client certificate and none is configured"},
	}, {
		name: "client certificate of another CA", endpoints: srv.Endpoints,
		tls:  &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{foreign}},
		want: []string{srv.Endpoints[0], "etcd refused the TLS handshake", "did not accept the client certificate"},
	}, {
		name: "wrong CA", endpoints: srv.Endpoints,
		tls:  &tls.Config{RootCAs: testutil.CertPool(t, other.CA), Certificates: srv.TLS.Certificates},
		want: []string{srv.Endpoints[0], "server certificate did not verify", "x509: certificate signed by unknown authority"},
	}, {
		// The server certificate names only the IP 127.0.0.1.
		name: "name not in the server certificate", endpoints: []string{"https://localhost:" + srv.Addr[strings.LastIndex(srv.Addr, ":")+1:]},
		tls:  srv.TLS,
		want: []string{"server certificate did not verify", "not valid for localhost"},
	}, {
		name: "TLS to a plain http etcd", endpoints: []string{"https://" + plain.Addr},
		tls:  srv.TLS,
		want: []string{"https://" + plain.Addr, "TLS handshake", "speaking TLS?"},
		slow: true,
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dialTimeout := 20 * time.Second
			if c.slow {
				dialTimeout = time.Second
			}
			t0 := time.Now()
			s, err := New(context.Background(), Config{Endpoints: c.endpoints, TLS: c.tls, DialTimeout: dialTimeout})
			d := time.Since(t0)
			if err == nil {
				s.Close()
				t.Fatal("New succeeded")
			}
			t.Logf("%v (after %v)", err, d)
			if !errors.Is(err, errs.ErrUnavailable) {
				t.Errorf("err is not ErrUnavailable")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q", w)
				}
			}
			// A refused or unverifiable handshake must not wait out the 20s dial timeout.
			if d > 5*time.Second {
				t.Errorf("New took %v to fail", d)
			}
		})
	}
	// The same server with the right configuration works, so the failures above are the
	// configurations' fault.
	s := open(t, Config{Endpoints: srv.Endpoints, TLS: srv.TLS, Prefix: uniquePrefix()})
	if _, err := s.Create(context.Background(), "/k", []byte("v")); err != nil {
		t.Fatal(err)
	}
}

// TestConnectRefusedSaysWhy checks that a failed connection names the endpoint and the
// dial error, not only "context deadline exceeded".
func TestConnectRefusedSaysWhy(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	_, err = New(context.Background(), Config{Endpoints: []string{"http://" + addr}, DialTimeout: 500 * time.Millisecond})
	if !errors.Is(err, errs.ErrUnavailable) || !strings.Contains(err.Error(), "http://"+addr) || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("New on a closed port: %v", err)
	}
}
