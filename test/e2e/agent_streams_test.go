package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/nodestream"
	"github.com/rakhsh/rakhsh/internal/testutil"
)

// TestJoinedHostStreams: a VM runs on a host that joined with `rakhsh agent` (its own
// data dir), under a control plane that runs no agent and so has no node files at all
// (subtest cp), and under an all-in-one `rakhsh serve` whose own agent runs on another
// node (subtest aio; the VM is held to the joined host by a node selector). Its serial log
// (`rakhsh logs`), its QEMU log and its serial console (the API websocket and `rakhsh
// console`) work through the API server, which proxies them to the agent's stream service at
// the endpoint the Node publishes. The stream service itself refuses requests without a ticket
// and with a made-up one (replays and expiry: unit tests). A console ticket opens the
// console websocket once, without an Authorization header, as a browser would.
func TestJoinedHostStreams(t *testing.T) {
	sideBySide(t)
	dir := vmGuestDir(t)
	base := vmImageServer(t, dir)
	t.Run("cp", func(t *testing.T) { joinedHostStreams(t, base, false) })
	t.Run("aio", func(t *testing.T) { joinedHostStreams(t, base, true) })
}

func joinedHostStreams(t *testing.T, base string, allInOne bool) {
	addr := freeAddr(t)
	var s *Serve
	if allInOne {
		s = vmServe(t, "--listen", addr)
	} else {
		s = StartServe(t, "--no-agent", "--listen", addr)
	}
	token := adminToken(t, s)
	applyGuestISO(t, s, base)

	agentDir := t.TempDir()
	agent := startJoinedAgent(t, addr, filepath.Join(s.DataDir, "tls.crt"), agentDir,
		append(os.Environ(), "RAKHSH_TOKEN="+token), "--node-name", "joined-host")
	waitNodePhase(t, s.Client(), "joined-host", v1alpha1.NodePhaseReady, time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var node v1alpha1.Node
	for {
		err := s.Client().Get(ctx, "nodes", "", "joined-host", &node)
		if err == nil && node.Status.StreamEndpoint != nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the joined host published no stream endpoint: %v %+v", err, node.Status)
		}
		time.Sleep(200 * time.Millisecond)
	}
	ep := *node.Status.StreamEndpoint
	if !strings.HasPrefix(ep.Address, "127.0.0.1:") || len(ep.CertificateSHA256) != 64 {
		t.Fatalf("stream endpoint %+v: want 127.0.0.1:PORT and a hex SHA-256", ep)
	}
	s.MustCLI("", "label", "node", "joined-host", "rakhsh.test/host=joined")

	applyDocs(s, isoVM("remote", "{rakhsh.test/host: joined}"))
	v := vmRunningOn(t, s, "remote", "joined-host", 2*time.Minute)
	// `rakhsh logs` through the control plane, which has no copy of the file.
	vmWaitSerial(t, s, "remote", "RAKHSH-GUEST: ready", 1)
	if r := s.CLI("", "logs", "vm", "remote", "--qemu"); r.Code != 0 {
		t.Fatalf("rakhsh logs --qemu of the remote VM: exit %d: %s", r.Code, r.Stderr)
	}

	// The serial console through the API websocket.
	con := openConsole(t, ctx, s.Client(), "remote")
	con.run("echo REMOTE-$((6*7))", "REMOTE-42", 30*time.Second, "the API console websocket of a VM on a joined host")
	con.Close()

	// A browser's way in: a console ticket, then the websocket with ?ticket= and the page's
	// Origin and no Authorization header; the ticket opens it once.
	var tk v1alpha1.ConsoleTicket
	if err := s.Client().Do(ctx, "POST", client.Path("virtualmachines", "default", "remote", v1alpha1.SubConsoleTickets), nil,
		"application/json", v1alpha1.ConsoleTicketRequest{Stream: "console"}, &tk); err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(filepath.Join(s.DataDir, "tls.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	wsClient := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	dialTicket := func() (*websocket.Conn, *http.Response, error) {
		return websocket.Dial(ctx, "wss://"+addr+tk.Path, &websocket.DialOptions{HTTPClient: wsClient,
			HTTPHeader: http.Header{"Origin": []string{"https://" + addr}}, Subprotocols: []string{"binary"}})
	}
	ws, _, err := dialTicket()
	if err != nil {
		t.Fatalf("the console websocket with a ticket: %v", err)
	}
	tconn := websocket.NetConn(ctx, ws, websocket.MessageBinary)
	tout := &lockedBuffer{}
	go func() { _, _ = io.Copy(tout, tconn) }()
	if _, err := tconn.Write([]byte("\necho TICKET-$((6*7))\n")); err != nil {
		t.Fatal(err)
	}
	consoleWait(t, tout, "TICKET-42", 30*time.Second, "the console websocket opened with a console ticket")
	tconn.Close()
	if _, resp, err := dialTicket(); err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		code := 0
		if resp != nil {
			code = resp.StatusCode
		}
		t.Errorf("the console ticket used a second time: %v (HTTP %d), want 401", err, code)
	}

	// `rakhsh console`, detaching with Ctrl-].
	cliConsoleDetach(t, s, "remote", "rakhsh console of a VM on a joined host")

	// The stream service itself: no ticket and a made-up ticket are refused.
	tc, err := nodestream.PinnedTLSConfig(ep.CertificateSHA256)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 10 * time.Second}
	get := func(ticket string) int {
		return testutil.GetStatus(ctx, t, hc, "https://"+ep.Address+nodestream.StreamPath(v.UID, "log"), ticket)
	}
	if code := get(""); code != http.StatusUnauthorized {
		t.Fatalf("stream service without a ticket: %d, want 401", code)
	}
	if code := get(strings.Repeat("A", 43)); code != http.StatusForbidden { // well-formed, never issued
		t.Fatalf("stream service with a made-up ticket: %d, want 403", code)
	}
	if err := s.Client().Get(ctx, "nodes", "", "joined-host", &node); err != nil || node.Status.StreamEndpoint == nil || *node.Status.StreamEndpoint != ep {
		t.Fatalf("the stream endpoint changed: %v %+v", err, node.Status.StreamEndpoint)
	}
	if !strings.Contains(agent.logs.String(), "stream opened") {
		t.Errorf("the agent logged no console stream")
	}

	s.MustCLI("", "delete", "vm", "remote")
	waitGone(t, s, "virtualmachines", "remote")
}
