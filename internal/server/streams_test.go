package server

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/nodestream"
	"github.com/rakhsh/rakhsh/internal/testutil/apiservertest"
)

// TestStreamServicePublishesAndRefusesWithoutTicket: the agent's stream service publishes its
// address and certificate in the Node's status once the Node exists, serves that certificate,
// and answers nothing without a ticket.
func TestStreamServicePublishesAndRefusesWithoutTicket(t *testing.T) {
	l := apiservertest.Start(t, "rk-svc")
	dir, sock, c := l.Dir, l.Sock, l.Client
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	svcCtx, stop := context.WithCancel(ctx)
	wait, err := streamService{Listen: "127.0.0.1:0", Server: "unix://" + sock, Node: "n1", DataDir: dir, Client: c, Log: log}.start(svcCtx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { stop(); wait() }()
	// The Node is registered after the service started (as the agent's first heartbeat does).
	time.Sleep(100 * time.Millisecond)
	if err := c.Create(ctx, "nodes", "", map[string]any{"kind": "Node", "metadata": map[string]any{"name": "n1"}}, nil); err != nil {
		t.Fatal(err)
	}
	var n v1alpha1.Node
	for {
		if err := c.Get(ctx, "nodes", "", "n1", &n); err == nil && n.Status.StreamEndpoint != nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("no stream endpoint published: %+v", n.Status)
		}
		time.Sleep(50 * time.Millisecond)
	}
	ep := n.Status.StreamEndpoint
	if !strings.HasPrefix(ep.Address, "127.0.0.1:") {
		t.Fatalf("published address %q", ep.Address)
	}
	tc, err := nodestream.PinnedTLSConfig(ep.CertificateSHA256)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 10 * time.Second}
	resp, err := hc.Get("https://" + ep.Address + nodestream.StreamPath("0b5e6a42-6f0e-4c39-9d4e-7f3f0d3c1a11", "log"))
	if err != nil {
		t.Fatalf("the service does not serve the published certificate: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("a request without a ticket: %d, want 401", resp.StatusCode)
	}
}

func TestServeStreamFlags(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{StreamListen: ":8444", NoAgent: true}, "does not go with --no-agent"},
		{Config{StreamAdvertise: "h:1"}, "--stream-advertise needs --stream-listen"},
	} {
		tc.cfg.DataDir, tc.cfg.Accelerator = t.TempDir(), "auto"
		if err := tc.cfg.validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.cfg, err, tc.want)
		}
	}
}
