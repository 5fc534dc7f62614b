package apiserver

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/console"
	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/nodestream"
	"github.com/rakhsh/rakhsh/internal/storage"
	"github.com/rakhsh/rakhsh/internal/store"
	"github.com/rakhsh/rakhsh/internal/testutil"
	"github.com/rakhsh/rakhsh/internal/testutil/apitest"
)

// localTestServer runs an API server with a bolt store in dir, on the unix socket dir/api.sock
// (dir must be short enough for a socket path), with the default project; all of it ends
// with the test.
func localTestServer(t *testing.T, dir string, cfg Config) *client.Client {
	t.Helper()
	return serveLocal(t, dir, projectServer(t, dir, cfg))
}

// projectServer runs an API server of cfg with a bolt store in dir and the default project;
// both end with the test.
func projectServer(t *testing.T, dir string, cfg Config) *Server {
	t.Helper()
	cfg.Store = boltIn(t, dir)
	s := New(cfg)
	t.Cleanup(s.Shutdown)
	if err := s.EnsureProject(context.Background(), DefaultProject); err != nil {
		t.Fatal(err)
	}
	return s
}

// testContext lasts 30 seconds at the most and ends with the test.
func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// createVM1 creates the stopped VM vm1 (1 core, 128Mi) in the default project through c and
// returns it as created.
func createVM1(t *testing.T, ctx context.Context, c *client.Client) v1alpha1.VirtualMachine {
	t.Helper()
	var vm v1alpha1.VirtualMachine
	if err := c.Create(ctx, "virtualmachines", "default", map[string]any{"kind": "VirtualMachine", "metadata": map[string]any{"name": "vm1"},
		"spec": map[string]any{"runPolicy": "AlwaysOff", "cpu": map[string]any{"cores": 1}, "memory": map[string]any{"size": "128Mi"}}}, &vm); err != nil {
		t.Fatal(err)
	}
	return vm
}

// serveLocal serves s's local handler on a unix socket in dir and returns a client of it.
func serveLocal(t *testing.T, dir string, s *Server) *client.Client {
	t.Helper()
	return apitest.ServeUnix(t, filepath.Join(dir, "api.sock"), s.LocalHandler())
}

// passLine writes line to from and checks that to (named who) reads it, within 5 seconds.
func passLine(t *testing.T, from, to net.Conn, who, line string) {
	t.Helper()
	if _, err := from.Write([]byte(line)); err != nil {
		t.Fatal(err)
	}
	_ = to.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := bufio.NewReader(to).ReadString('\n')
	if err != nil || got != line {
		t.Fatalf("%s read %q, %v", who, got, err)
	}
}

// TestConsoleAndLogStreams serves a VM's console over a websocket and its kept log over
// plain GET, from a run dir whose serial socket is faked.
func TestConsoleAndLogStreams(t *testing.T) {
	dir := testutil.ShortTempDir(t, "rk-streams")
	c := localTestServer(t, dir, Config{LocalStreams: &nodestream.Service{DataDir: dir}, NodeName: "n1"})
	ctx := testContext(t)
	vm := createVM1(t, ctx, c)
	// Not running yet: clear errors.
	if _, err := c.DialStream(ctx, "virtualmachines", "default", "vm1", "console"); client.Reason(err) != v1alpha1.ReasonServiceUnavailable {
		t.Fatalf("console of a stopped VM: %v", err)
	}
	if err := c.Do(ctx, "GET", client.Path("virtualmachines", "default", "vm1", "log"), nil, "", nil, nil); !client.IsNotFound(err) {
		t.Fatalf("log of a VM that never ran: %v", err)
	}
	// Bound to this server's own node: its agent's streams are called directly.
	bindVM(t, c, "vm1", "n1")
	if _, err := c.DialStream(ctx, "virtualmachines", "default", "vm1", "console"); client.Reason(err) != v1alpha1.ReasonServiceUnavailable {
		t.Fatalf("console of a bound VM that does not run: %v", err)
	}
	run := storage.VMRunDir(dir, vm.UID)
	if err := os.MkdirAll(run, 0o700); err != nil {
		t.Fatal(err)
	}
	sl, err := net.Listen("unix", filepath.Join(run, console.SerialSocket))
	if err != nil {
		t.Fatal(err)
	}
	defer sl.Close()
	guest := make(chan net.Conn, 1)
	go func() {
		g, err := sl.Accept()
		if err == nil {
			guest <- g
		}
	}()
	go (&console.Mux{RunDir: run}).Run(ctx)
	g := <-guest
	defer g.Close()
	var conn net.Conn
	for i := 0; i < 100; i++ {
		conn, err = c.DialStream(ctx, "virtualmachines", "default", "vm1", "console")
		if err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("console: %v", err)
	}
	defer conn.Close()
	time.Sleep(100 * time.Millisecond)
	passLine(t, g, conn, "console", "RAKHSH-GUEST: ready\n")
	passLine(t, conn, g, "guest", "echo hi\n")
	var logData []byte
	if err := c.Do(ctx, "GET", client.Path("virtualmachines", "default", "vm1", "log"), nil, "", nil, &logData); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(logData), "RAKHSH-GUEST: ready") {
		t.Fatalf("log: %q", logData)
	}
	// A browser from another origin is refused.
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://rakhsh"+client.Path("virtualmachines", "default", "vm1", "console"), nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	req.Header.Set("Origin", "http://evil.example")
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", filepath.Join(dir, "api.sock"))
	}}}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("cross-origin websocket: %d, want 403", resp.StatusCode)
	}
}

// bindVM registers node (if needed) and binds the VM to it.
func bindVM(t *testing.T, c *client.Client, vm, node string) {
	t.Helper()
	ctx := context.Background()
	err := c.Create(ctx, "nodes", "", map[string]any{"kind": "Node", "metadata": map[string]any{"name": node}}, nil)
	if err != nil && !client.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if err := c.Bind(ctx, "default", vm, &v1alpha1.VirtualMachineBinding{NodeName: node}, nil); err != nil {
		t.Fatal(err)
	}
}

// TestStreamTicketsRedeemOnce: a ticket is redeemed once, by its node, before it expires.
func TestStreamTicketsRedeemOnce(t *testing.T) {
	dir := testutil.ShortTempDir(t, "rk-tickets")
	var mu sync.Mutex
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	st := boltIn(t, dir)
	s := New(Config{Store: st, Now: clock})
	t.Cleanup(s.Shutdown)
	c := serveLocal(t, dir, s)
	ctx := context.Background()
	uid := "0b5e6a42-6f0e-4c39-9d4e-7f3f0d3c1a11"
	issue := func() string {
		tk, err := s.issueTicket(ctx, nodestream.Grant{Node: "n1", Namespace: "default", Name: "vm1", UID: uid, Stream: SubConsole})
		if err != nil {
			t.Fatal(err)
		}
		return tk
	}
	n1 := &nodestream.APIRedeemer{Client: c, Node: "n1"}
	n2 := &nodestream.APIRedeemer{Client: c, Node: "n2"}

	tk := issue()
	// The store does not hold the ticket itself.
	res, err := st.List(ctx, ticketPrefix, store.ListOptions{})
	if err != nil || len(res.KVs) != 1 || strings.Contains(res.KVs[0].Key+string(res.KVs[0].Value), tk) {
		t.Fatalf("stored ticket: %v %+v", err, res.KVs)
	}
	g, err := n1.Redeem(ctx, tk)
	if err != nil || g.UID != uid || g.Stream != SubConsole || g.Node != "n1" || g.Name != "vm1" {
		t.Fatalf("first redemption: %+v %v", g, err)
	}
	if _, err := n1.Redeem(ctx, tk); !errors.Is(err, errs.ErrForbidden) {
		t.Fatalf("replayed ticket: %v, want Forbidden", err)
	}
	// Another node cannot use it (and spends it).
	tk = issue()
	if _, err := n2.Redeem(ctx, tk); !errors.Is(err, errs.ErrForbidden) {
		t.Fatalf("ticket redeemed by another node: %v, want Forbidden", err)
	}
	if _, err := n1.Redeem(ctx, tk); !errors.Is(err, errs.ErrForbidden) {
		t.Fatalf("ticket after another node tried it: %v, want Forbidden", err)
	}
	// Expired.
	tk = issue()
	mu.Lock()
	now = now.Add(ticketTTL)
	mu.Unlock()
	if _, err := n1.Redeem(ctx, tk); !errors.Is(err, errs.ErrForbidden) {
		t.Fatalf("expired ticket: %v, want Forbidden", err)
	}
	if _, err := n1.Redeem(ctx, "made-up"); !errors.Is(err, errs.ErrForbidden) {
		t.Fatalf("made-up ticket: %v, want Forbidden", err)
	}
	// Tickets never redeemed are swept once expired.
	_ = issue()
	mu.Lock()
	now = now.Add(ticketSweepEvery + ticketTTL)
	mu.Unlock()
	last := issue()
	res, err = st.List(ctx, ticketPrefix, store.ListOptions{})
	if err != nil || len(res.KVs) != 1 || res.KVs[0].Key != ticketKey(last) {
		t.Fatalf("tickets after a sweep: %v %d (want only the fresh one)", err, len(res.KVs))
	}
	// Redemption is a POST with a body.
	if err := c.Do(ctx, "GET", client.Path("nodes", "", "n1", nodestream.SubStreamTickets), nil, "", nil, nil); client.Reason(err) != v1alpha1.ReasonMethodNotAllowed {
		t.Fatalf("GET of the redemption: %v", err)
	}
}

// TestStreamsProxiedToNodeAgent: an API server without a local agent proxies a VM's log and
// console to the stream service its node publishes, which redeems the tickets through the API;
// clear errors when the node publishes no endpoint or cannot be reached.
func TestStreamsProxiedToNodeAgent(t *testing.T) {
	dir := testutil.ShortTempDir(t, "rk-proxy")
	c := localTestServer(t, dir, Config{})
	ctx := testContext(t)
	vm := createVM1(t, ctx, c)
	if _, err := c.DialStream(ctx, "virtualmachines", "default", "vm1", "console"); client.Reason(err) != v1alpha1.ReasonServiceUnavailable || !strings.Contains(err.Error(), "bound to no node") {
		t.Fatalf("console of an unbound VM: %v", err)
	}
	if err := c.Do(ctx, "GET", client.Path("virtualmachines", "default", "vm1", "log"), nil, "", nil, nil); !client.IsNotFound(err) {
		t.Fatalf("log of a VM that never ran anywhere: %v", err)
	}
	bindVM(t, c, "vm1", "far")
	// The node publishes no endpoint.
	err := c.Do(ctx, "GET", client.Path("virtualmachines", "default", "vm1", "log"), nil, "", nil, nil)
	if client.Reason(err) != v1alpha1.ReasonServiceUnavailable || !strings.Contains(err.Error(), `node "far"`) || !strings.Contains(err.Error(), "no stream endpoint") {
		t.Fatalf("log on a node without a stream endpoint: %v", err)
	}

	// The node's agent: its data dir, a console that echoes, a stream service on loopback.
	nodeDir := filepath.Join(dir, "node")
	run := storage.VMRunDir(nodeDir, vm.UID)
	if err := os.MkdirAll(run, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(run, console.LogFile), []byte("RAKHSH-GUEST: ready\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	testutil.ListenUnix(t, filepath.Join(run, console.ConsoleSocket), func(g net.Conn) {
		defer g.Close()
		line, err := bufio.NewReader(g).ReadString('\n')
		if err == nil {
			_, _ = g.Write([]byte("guest got " + line))
		}
	})
	cert, fp, err := nodestream.SelfSignedCertificate("far")
	if err != nil {
		t.Fatal(err)
	}
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	agentSrv := &http.Server{Handler: &nodestream.Handler{Streams: &nodestream.Service{DataDir: nodeDir}, Node: "far",
		Redeemer: &nodestream.APIRedeemer{Client: c, Node: "far"}}, TLSConfig: nodestream.ServerTLSConfig(cert)}
	go func() { _ = agentSrv.ServeTLS(tl, "", "") }()
	defer agentSrv.Close()
	publish := func(ep v1alpha1.NodeStreamEndpoint) {
		t.Helper()
		pub := &nodestream.Publisher{Client: c, Node: "far", Endpoint: ep}
		if done, err := pub.PublishOnce(ctx); err != nil || !done {
			t.Fatalf("publishing %+v: %v %v", ep, done, err)
		}
	}
	publish(v1alpha1.NodeStreamEndpoint{Address: tl.Addr().String(), CertificateSHA256: fp})

	var logData []byte
	if err := c.Do(ctx, "GET", client.Path("virtualmachines", "default", "vm1", "log"), nil, "", nil, &logData); err != nil || string(logData) != "RAKHSH-GUEST: ready\n" {
		t.Fatalf("proxied log: %q %v", logData, err)
	}
	q := url.Values{"source": {"qemu"}}
	if err := c.Do(ctx, "GET", client.Path("virtualmachines", "default", "vm1", "log"), q, "", nil, nil); !client.IsNotFound(err) || !strings.Contains(err.Error(), `node "far"`) {
		t.Fatalf("proxied QEMU log that does not exist: %v", err)
	}
	conn, err := c.DialStream(ctx, "virtualmachines", "default", "vm1", "console")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if line, err := bufio.NewReader(conn).ReadString('\n'); err != nil || line != "guest got hello\n" {
		t.Fatalf("proxied console: %q %v", line, err)
	}
	conn.Close()
	if _, err := c.DialStream(ctx, "virtualmachines", "default", "vm1", "vnc"); client.Reason(err) != v1alpha1.ReasonServiceUnavailable {
		t.Fatalf("proxied VNC of a VM without a display: %v", err)
	}

	// Another certificate at the published address: refused.
	_, otherFP, _ := nodestream.SelfSignedCertificate("far")
	publish(v1alpha1.NodeStreamEndpoint{Address: tl.Addr().String(), CertificateSHA256: otherFP})
	if _, err := c.DialStream(ctx, "virtualmachines", "default", "vm1", "console"); client.Reason(err) != v1alpha1.ReasonServiceUnavailable || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("console through a service with another certificate: %v", err)
	}
	// Nothing listens at the published address.
	gone, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	goneAddr := gone.Addr().String()
	gone.Close()
	publish(v1alpha1.NodeStreamEndpoint{Address: goneAddr, CertificateSHA256: fp})
	err = c.Do(ctx, "GET", client.Path("virtualmachines", "default", "vm1", "log"), nil, "", nil, nil)
	if client.Reason(err) != v1alpha1.ReasonServiceUnavailable || !strings.Contains(err.Error(), `node "far"`) || !strings.Contains(err.Error(), goneAddr) {
		t.Fatalf("log through an unreachable node: %v", err)
	}

	// Stopped and unbound: the log comes from the node whose agent last reported on the VM.
	publish(v1alpha1.NodeStreamEndpoint{Address: tl.Addr().String(), CertificateSHA256: fp})
	if err := c.PatchStatus(ctx, "virtualmachines", "default", "vm1", []byte(`{"status":{"nodeName":null,"phase":"Stopped"}}`), nil); err != nil {
		t.Fatal(err)
	}
	err = c.Do(ctx, "GET", client.Path("virtualmachines", "default", "vm1", "log"), nil, "", nil, nil)
	if !client.IsNotFound(err) || !strings.Contains(err.Error(), "no node reported") {
		t.Fatalf("log of an unbound VM no agent reported on: %v", err)
	}
	if _, err := c.DialStream(ctx, "virtualmachines", "default", "vm1", "console"); client.Reason(err) != v1alpha1.ReasonServiceUnavailable || !strings.Contains(err.Error(), "Stopped") {
		t.Fatalf("console of a stopped VM: %v", err)
	}
	ev := map[string]any{"kind": "Event", "metadata": map[string]any{"name": "vm1-stopped"}, "reason": "Stopped", "type": "Normal",
		"involvedObject": map[string]any{"kind": "VirtualMachine", "name": "vm1", "namespace": "default", "uid": vm.UID},
		"source":         map[string]any{"component": agentEventComponent, "host": "far"}}
	if err := c.Create(ctx, "events", "default", ev, nil); err != nil {
		t.Fatal(err)
	}
	logData = nil
	if err := c.Do(ctx, "GET", client.Path("virtualmachines", "default", "vm1", "log"), nil, "", nil, &logData); err != nil || string(logData) != "RAKHSH-GUEST: ready\n" {
		t.Fatalf("log of a stopped VM from the node that last ran it: %q %v", logData, err)
	}
}
