package nodestream

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/internal/console"
	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/storage"
	"github.com/rakhsh/rakhsh/internal/testutil"
)

const testUID = "0b5e6a42-6f0e-4c39-9d4e-7f3f0d3c1a11"

// fakeTickets is a Redeemer with a controlled clock: each ticket once, before it expires.
type fakeTickets struct {
	mu       sync.Mutex
	now      time.Time
	grants   map[string]Grant
	redeemed []string
}

func (f *fakeTickets) issue(ticket string, g Grant) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.grants == nil {
		f.grants = map[string]Grant{}
	}
	g.Expires = f.now.Add(30 * time.Second)
	f.grants[ticket] = g
}

func (f *fakeTickets) Redeem(ctx context.Context, ticket string) (Grant, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.redeemed = append(f.redeemed, ticket)
	g, ok := f.grants[ticket]
	delete(f.grants, ticket)
	if !ok || !f.now.Before(g.Expires) {
		return Grant{}, errs.New(errs.ErrForbidden, "the stream ticket is not valid")
	}
	return g, nil
}

func (f *fakeTickets) advance(d time.Duration) {
	f.mu.Lock()
	f.now = f.now.Add(d)
	f.mu.Unlock()
}

// testNode is a data dir with one VM run dir whose console socket echoes lines back, and a
// stream service for node n1 on a loopback TLS listener.
type testNode struct {
	dataDir, runDir string
	addr, fp        string
	tickets         *fakeTickets
}

func newTestNode(t *testing.T) *testNode {
	t.Helper()
	dataDir, err := os.MkdirTemp("/tmp", "rk-ns")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dataDir) })
	n := &testNode{dataDir: dataDir, runDir: storage.VMRunDir(dataDir, testUID), tickets: &fakeTickets{now: time.Unix(1_800_000_000, 0)}}
	if err := os.MkdirAll(n.runDir, 0o700); err != nil {
		t.Fatal(err)
	}
	cert, fp, err := SelfSignedCertificate("n1")
	if err != nil {
		t.Fatal(err)
	}
	n.fp = fp
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n.addr = l.Addr().String()
	hs := &http.Server{Handler: &Handler{Streams: &Service{DataDir: dataDir}, Redeemer: n.tickets, Node: "n1"}, TLSConfig: ServerTLSConfig(cert)}
	go func() { _ = hs.ServeTLS(l, "", "") }()
	t.Cleanup(func() { hs.Close() })
	return n
}

// echoConsole listens on the VM's console socket and echoes each line back in upper case.
func (n *testNode) echoConsole(t *testing.T) {
	t.Helper()
	testutil.ListenUnix(t, filepath.Join(n.runDir, console.ConsoleSocket), func(c net.Conn) {
		defer c.Close()
		br := bufio.NewReader(c)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if _, err := c.Write([]byte(strings.ToUpper(line))); err != nil {
				return
			}
		}
	})
}

// remote returns a Remote for n whose tickets are issued by n's fake for grant g (g's UID and
// Stream are filled per call) and reports each ticket on issued.
func (n *testNode) remote(fp string, g Grant, issued *[]string) *Remote {
	i := 0
	return &Remote{Node: "n1", Address: n.addr, Fingerprint: fp, Ticket: func(ctx context.Context, uid, stream string) (string, error) {
		i++
		ticket := tk("ticket-" + stream + "-" + string(rune('a'+i)))
		gg := g
		if gg.UID == "" {
			gg.UID = uid
		}
		if gg.Stream == "" {
			gg.Stream = stream
		}
		n.tickets.issue(ticket, gg)
		if issued != nil {
			*issued = append(*issued, ticket)
		}
		return ticket, nil
	}}
}

func TestServiceReadsLogsAndDialsSockets(t *testing.T) {
	n := newTestNode(t)
	svc := &Service{DataDir: n.dataDir}
	ctx := context.Background()
	if _, err := svc.ReadLog(ctx, testUID, "", 0); !errors.Is(err, errs.ErrNotFound) {
		t.Fatalf("log of a VM that never ran: %v, want NotFound", err)
	}
	if err := os.WriteFile(filepath.Join(n.runDir, console.LogFile), []byte("boot\nRAKHSH-GUEST: ready\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(n.runDir, console.QEMULog), []byte("qemu: warning\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := svc.ReadLog(ctx, testUID, "serial", 0); err != nil || string(b) != "boot\nRAKHSH-GUEST: ready\n" {
		t.Fatalf("serial log: %q %v", b, err)
	}
	if b, err := svc.ReadLog(ctx, testUID, "", 6); err != nil || string(b) != "ready\n" {
		t.Fatalf("serial log limited to 6 bytes: %q %v", b, err)
	}
	if b, err := svc.ReadLog(ctx, testUID, "qemu", 0); err != nil || string(b) != "qemu: warning\n" {
		t.Fatalf("QEMU log: %q %v", b, err)
	}
	if _, err := svc.ReadLog(ctx, testUID, "dmesg", 0); !errors.Is(err, errs.ErrBadRequest) {
		t.Fatalf("unknown source: %v", err)
	}
	if _, err := svc.ReadLog(ctx, "../../etc", "", 0); !errors.Is(err, errs.ErrBadRequest) {
		t.Fatalf("a uid that is a path: %v", err)
	}
	if _, err := svc.Dial(ctx, testUID, StreamConsole); !errors.Is(err, errs.ErrUnavailable) {
		t.Fatalf("console of a VM that does not run: %v", err)
	}
	if _, err := svc.Dial(ctx, testUID, "log"); !errors.Is(err, errs.ErrBadRequest) {
		t.Fatalf("dialling the log: %v", err)
	}
	n.echoConsole(t)
	c, err := svc.Dial(ctx, testUID, StreamConsole)
	checkEcho(t, c, err, "hi\n", "HI\n")
}

// checkEcho checks that the console c (dialled with err) of the echoConsole answers send with
// want, and closes it at the end of the test.
func checkEcho(t *testing.T, c net.Conn, err error, send, want string) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write([]byte(send)); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || line != want {
		t.Fatalf("console echo %q %v, want %q", line, err, want)
	}
}

// TestRemoteThroughTickets: logs and the console through the TLS service with valid tickets.
func TestRemoteThroughTickets(t *testing.T) {
	n := newTestNode(t)
	n.echoConsole(t)
	if err := os.WriteFile(filepath.Join(n.runDir, console.LogFile), []byte("RAKHSH-GUEST: ready\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r := n.remote(n.fp, Grant{Node: "n1", Namespace: "default", Name: "vm1"}, nil)
	if b, err := r.ReadLog(ctx, testUID, "", 0); err != nil || string(b) != "RAKHSH-GUEST: ready\n" {
		t.Fatalf("remote log: %q %v", b, err)
	}
	if _, err := r.ReadLog(ctx, testUID, "qemu", 0); !errors.Is(err, errs.ErrNotFound) {
		t.Fatalf("remote QEMU log that does not exist: %v, want NotFound", err)
	}
	c, err := r.Dial(ctx, testUID, StreamConsole)
	checkEcho(t, c, err, "echo remote\n", "ECHO REMOTE\n")
	if _, err := r.Dial(ctx, testUID, StreamVNC); !errors.Is(err, errs.ErrUnavailable) || !strings.Contains(err.Error(), "no vnc now") {
		t.Fatalf("VNC of a VM without a display: %v", err)
	}
}

// get sends one log request to n's service with ticket (none when empty).
func (n *testNode) get(t *testing.T, ticket, path string) int {
	t.Helper()
	tc, err := PinnedTLSConfig(n.fp)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 10 * time.Second}
	return testutil.GetStatus(context.Background(), t, hc, "https://"+n.addr+path, ticket)
}

// TestTicketsAreSingleUseAndShortLived: no ticket, a replayed ticket, an expired ticket and a
// ticket for another node, VM or stream are all refused before the VM is touched.
func TestTicketsAreSingleUseAndShortLived(t *testing.T) {
	n := newTestNode(t)
	if err := os.WriteFile(filepath.Join(n.runDir, console.LogFile), []byte("secret output\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := StreamPath(testUID, StreamLog)
	if code := n.get(t, "", logPath); code != http.StatusUnauthorized {
		t.Fatalf("no ticket: %d, want 401", code)
	}
	if code := n.get(t, tk("never-issued"), logPath); code != http.StatusForbidden {
		t.Fatalf("unknown ticket: %d, want 403", code)
	}
	if code := n.get(t, "not-a-ticket", logPath); code != http.StatusForbidden {
		t.Fatalf("malformed ticket: %d, want 403", code)
	}
	if len(n.tickets.redeemed) != 1 {
		t.Fatalf("redeemed %d tickets, want 1 (a malformed ticket is refused without asking the API)", len(n.tickets.redeemed))
	}
	good := Grant{Node: "n1", UID: testUID, Stream: StreamLog}
	n.tickets.issue(tk("t1"), good)
	if code := n.get(t, tk("t1"), logPath); code != http.StatusOK {
		t.Fatalf("fresh ticket: %d, want 200", code)
	}
	if code := n.get(t, tk("t1"), logPath); code != http.StatusForbidden {
		t.Fatalf("replayed ticket: %d, want 403", code)
	}
	n.tickets.issue(tk("t2"), good)
	n.tickets.advance(31 * time.Second)
	if code := n.get(t, tk("t2"), logPath); code != http.StatusForbidden {
		t.Fatalf("expired ticket: %d, want 403", code)
	}
	for name, g := range map[string]Grant{
		"other node":   {Node: "n2", UID: testUID, Stream: StreamLog},
		"other VM":     {Node: "n1", UID: "7d0f3b7e-2b1c-4f55-9a1e-0c2d3e4f5a6b", Stream: StreamLog},
		"other stream": {Node: "n1", UID: testUID, Stream: StreamConsole},
	} {
		n.tickets.issue(tk("t-"+name), g)
		if code := n.get(t, tk("t-"+name), logPath); code != http.StatusForbidden {
			t.Fatalf("ticket for %s: %d, want 403", name, code)
		}
	}
	// Through Remote, a refused ticket is the API server's trouble: Unavailable, naming the node.
	ctx := context.Background()
	r := n.remote(n.fp, Grant{Node: "n2"}, nil)
	if _, err := r.ReadLog(ctx, testUID, "", 0); !errors.Is(err, errs.ErrUnavailable) || !strings.Contains(err.Error(), `node "n1"`) || !strings.Contains(err.Error(), n.addr) {
		t.Fatalf("remote with a ticket for another node: %v", err)
	}
}

// TestWrongFingerprintIsRefused: a service whose certificate is not the published one gets
// no ticket: the TLS handshake fails before any request is sent.
func TestWrongFingerprintIsRefused(t *testing.T) {
	n := newTestNode(t)
	if err := os.WriteFile(filepath.Join(n.runDir, console.LogFile), []byte("x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, other, err := SelfSignedCertificate("impostor")
	if err != nil {
		t.Fatal(err)
	}
	var issued []string
	r := n.remote(other, Grant{Node: "n1"}, &issued)
	ctx := context.Background()
	_, err = r.ReadLog(ctx, testUID, "", 0)
	if !errors.Is(err, errs.ErrUnavailable) || !strings.Contains(err.Error(), "certificate") || !strings.Contains(err.Error(), n.addr) {
		t.Fatalf("log through a service with another certificate: %v", err)
	}
	if _, err := r.Dial(ctx, testUID, StreamConsole); !errors.Is(err, errs.ErrUnavailable) || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("console through a service with another certificate: %v", err)
	}
	if len(n.tickets.redeemed) != 0 {
		t.Fatalf("the service received tickets %v over a connection the client refused", n.tickets.redeemed)
	}
	if _, err := PinnedTLSConfig("not-hex"); err == nil {
		t.Fatal("a fingerprint that is not hex was accepted")
	}
	bad := &Remote{Node: "n1", Address: n.addr, Fingerprint: "abc", Ticket: r.Ticket}
	if _, err := bad.ReadLog(ctx, testUID, "", 0); !errors.Is(err, errs.ErrUnavailable) || !strings.Contains(err.Error(), "fingerprint") {
		t.Fatalf("remote with a malformed fingerprint: %v", err)
	}
}

// TestUnreachableNamesNodeAndAddress: nothing listens at the published address.
func TestUnreachableNamesNodeAndAddress(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	_, fp, _ := SelfSignedCertificate("n1")
	r := &Remote{Node: "n1", Address: addr, Fingerprint: fp, Ticket: func(context.Context, string, string) (string, error) { return tk("t"), nil }}
	_, err = r.Dial(context.Background(), testUID, StreamConsole)
	if !errors.Is(err, errs.ErrUnavailable) || !strings.Contains(err.Error(), `node "n1"`) || !strings.Contains(err.Error(), addr) {
		t.Fatalf("unreachable service: %v", err)
	}
}

func TestAdvertiseAddress(t *testing.T) {
	loop := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8444}
	any := &net.TCPAddr{IP: net.IPv4zero, Port: 8444}
	for _, c := range []struct {
		l                 net.Addr
		advertise, server string
		want              string
	}{
		{loop, "", "https://10.0.0.1:8443", "127.0.0.1:8444"},
		{any, "node1.example", "https://10.0.0.1:8443", "node1.example:8444"},
		{any, "node1.example:9000", "https://10.0.0.1:8443", "node1.example:9000"},
		{any, "", "unix:///var/lib/rakhsh/rakhsh.sock", "127.0.0.1:8444"},
		{any, "", "https://127.0.0.1:8443", "127.0.0.1:8444"},
	} {
		got, err := AdvertiseAddress(c.l, c.advertise, c.server)
		if err != nil || got != c.want {
			t.Errorf("AdvertiseAddress(%s, %q, %q) = %q, %v; want %q", c.l, c.advertise, c.server, got, err, c.want)
		}
	}
}

// tk is a well-formed ticket derived from name.
func tk(name string) string {
	sum := sha256.Sum256([]byte(name))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

func TestNewTicket(t *testing.T) {
	a, err := NewTicket()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := NewTicket()
	if a == b || !WellFormedTicket(a) || len(a) != 43 {
		t.Fatalf("tickets %q %q", a, b)
	}
	for _, bad := range []string{"", "short", a + "A", a[:42] + "+", strings.Repeat("A", 44)} {
		if WellFormedTicket(bad) {
			t.Errorf("%q is well-formed", bad)
		}
	}
}
