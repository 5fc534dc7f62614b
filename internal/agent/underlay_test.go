package agent_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/agent"
)

// TestUnderlayAddressPublished: the agent publishes its underlay address as the Node's
// InternalIP, and an agent started without one takes the old one away.
func TestUnderlayAddressPublished(t *testing.T) {
	e := newEnvOpts(t, false, 0)
	runAgent := func(addr netip.Addr) func() {
		a, err := agent.New(agent.Config{Client: e.c, NodeName: e.node, DataDir: e.dir, Log: e.log,
			HeartbeatInterval: 200 * time.Millisecond, UnderlayAddress: addr})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = a.Run(ctx) }()
		return func() { cancel(); <-done }
	}
	waitIP := func(want string) {
		t.Helper()
		var n v1alpha1.Node
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			n = v1alpha1.Node{}
			if err := e.c.Get(context.Background(), "nodes", "", e.node, &n); err == nil && n.Status.LastHeartbeatTime != nil && n.Status.InternalIP() == want {
				return
			}
		}
		t.Fatalf("node %s: addresses %+v, want InternalIP %q", e.node, n.Status.Addresses, want)
	}
	stop := runAgent(netip.MustParseAddr("10.232.0.7"))
	waitIP("10.232.0.7")
	stop()
	stop = runAgent(netip.Addr{})
	defer stop()
	waitIP("")
}
