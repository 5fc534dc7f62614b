package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/nodestream"
)

// DefaultStreamListen is the default address of `rakhsh agent --stream-listen`.
const DefaultStreamListen = ":8444"

// streamService is a node agent's stream service on TCP with TLS: it serves the consoles, VNC
// and logs of the VMs in dataDir to the API servers, each request authorized by a ticket the
// service redeems through the API with c (the agent's own credential), and publishes its
// address and certificate fingerprint in the Node's status.
type streamService struct {
	Listen    string // TCP address to listen on
	Advertise string // host[:port] published; "" derives it (see nodestream.AdvertiseAddress)
	Server    string // the control plane's address, to derive the advertised one
	Node      string
	DataDir   string
	Client    *client.Client
	Log       *slog.Logger
	// Cert is the node's certificate (see nodeCertificate); nil: one is made.
	Cert *tls.Certificate
}

// nodeCertificate makes the node's certificate for this process: the stream service serves
// it and publishes its fingerprint, and the agent presents it in live migrations.
func nodeCertificate(node string) (*tls.Certificate, error) {
	cert, _, err := nodestream.SelfSignedCertificate(node)
	if err != nil {
		return nil, fmt.Errorf("making the node's certificate: %w", err)
	}
	return &cert, nil
}

// start listens and serves until ctx ends; the returned function waits for the end.
func (s streamService) start(ctx context.Context) (func(), error) {
	if s.Cert == nil {
		c, err := nodeCertificate(s.Node)
		if err != nil {
			return nil, err
		}
		s.Cert = c
	}
	cert, fp := *s.Cert, nodestream.Fingerprint(s.Cert.Certificate[0])
	l, err := net.Listen("tcp", s.Listen)
	if err != nil {
		return nil, fmt.Errorf("--stream-listen %s: %w", s.Listen, err)
	}
	addr, err := nodestream.AdvertiseAddress(l.Addr(), s.Advertise, s.Server)
	if err != nil {
		l.Close()
		return nil, err
	}
	h := &nodestream.Handler{Streams: &nodestream.Service{DataDir: s.DataDir}, Node: s.Node, Context: ctx,
		Redeemer: &nodestream.APIRedeemer{Client: s.Client, Node: s.Node}, Log: s.Log}
	hs := &http.Server{Handler: h, TLSConfig: nodestream.ServerTLSConfig(cert), ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(s.Log.Handler(), slog.LevelDebug)}
	pub := &nodestream.Publisher{Client: s.Client, Node: s.Node, Log: s.Log,
		Endpoint: v1alpha1.NodeStreamEndpoint{Address: addr, CertificateSHA256: fp}}
	s.Log.Info("serving VM streams", "listen", l.Addr().String(), "address", addr, "certificateSHA256", fp)
	done := make(chan struct{}, 2)
	go func() {
		defer func() { done <- struct{}{} }()
		if err := hs.ServeTLS(l, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.Log.Error("the stream service stopped", "err", err)
		}
	}()
	go func() {
		defer func() { done <- struct{}{} }()
		_ = pub.Run(ctx)
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
	}()
	return func() { <-done; <-done }, nil
}
