package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/internal/nodestream"
	"github.com/rakhsh/rakhsh/internal/testutil"
)

// proxyNode is a node's certificate and fingerprint in the proxy tests.
type proxyNode struct {
	cert tls.Certificate
	fp   string
}

func newProxyNode(t testing.TB, name string) proxyNode {
	t.Helper()
	c, fp, err := nodestream.SelfSignedCertificate(name)
	if err != nil {
		t.Fatal(err)
	}
	return proxyNode{c, fp}
}

// fakeQEMU is a backend the target proxy routes to: it reads each connection to its end,
// then answers prefix + what it read and closes. conns counts its connections.
type fakeQEMU struct {
	ln     net.Listener
	prefix string
	conns  atomic.Int32
	mu     sync.Mutex
	got    []string
	wg     sync.WaitGroup
	// hold keeps each connection open without answering until it is closed by the peer.
	hold bool
	// gone receives, for each connection, the error its read ended with (hold only).
	gone chan error
}

func newFakeQEMU(t *testing.T, prefix string, hold bool) *fakeQEMU {
	t.Helper()
	f := &fakeQEMU{prefix: prefix, hold: hold, gone: make(chan error, 8)}
	f.ln = serveLoopback(t, &f.wg, func(c net.Conn) {
		f.conns.Add(1)
		defer c.Close()
		b, err := io.ReadAll(c)
		f.mu.Lock()
		f.got = append(f.got, string(b))
		f.mu.Unlock()
		if f.hold {
			f.gone <- err
			return
		}
		_, _ = c.Write([]byte(f.prefix + string(b)))
	})
	t.Cleanup(func() {
		f.ln.Close()
		f.wg.Wait()
	})
	return f
}

// serveLoopback listens on loopback and serves each connection with serve, in a goroutine
// counted in wg, until the listener is closed.
func serveLoopback(t *testing.T, wg *sync.WaitGroup, serve func(net.Conn)) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				serve(c)
			}()
		}
	}()
	return ln
}

func (f *fakeQEMU) route(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", f.ln.Addr().String())
}

// startProxy starts a target proxy on loopback that accepts only source's certificate.
func startProxy(t *testing.T, target, source proxyNode, routes map[string]func(context.Context) (net.Conn, error)) *migrationProxy {
	return startProxyMode(t, target, source, routes, false)
}

// startProxyMode is startProxy, with the data unencrypted after the handshake when plain.
func startProxyMode(t testing.TB, target, source proxyNode, routes map[string]func(context.Context) (net.Conn, error), plain bool) *migrationProxy {
	t.Helper()
	return startProxyHooks(t, target, source, routes, plain, proxyHooks{})
}

// startProxyHooks is startProxyMode with the direct routes and watch of hooks.
func startProxyHooks(t testing.TB, target, source proxyNode, routes map[string]func(context.Context) (net.Conn, error), plain bool, hooks proxyHooks) *migrationProxy {
	t.Helper()
	cfg, err := nodestream.PinnedClientServerTLSConfig(target.cert, source.fp)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := serveMigrationProxyHooks(ln, cfg, routes, plain, slog.New(slog.NewTextHandler(io.Discard, nil)), hooks)
	t.Cleanup(p.close)
	return p
}

// streamProxy starts a target proxy (plain or not) that routes the migration stream to
// stream, and a source dialer to it (dialPlain or not).
func streamProxy(t *testing.T, target, source proxyNode, stream *fakeQEMU, plain, dialPlain bool) (*migrationProxy, *migrationDialer) {
	t.Helper()
	p := startProxyMode(t, target, source, map[string]func(context.Context) (net.Conn, error){alpnMigration: stream.route}, plain)
	return p, testDialer(t, p.ln.Addr().String(), source, target.fp, dialPlain)
}

// testDialer is newMigrationDialer from src to the proxy at addr of the node with the
// certificate fingerprint fp.
func testDialer(tb testing.TB, addr string, src proxyNode, fp string, plain bool) *migrationDialer {
	tb.Helper()
	d, err := newMigrationDialer(addr, src.cert, fp, plain)
	if err != nil {
		tb.Fatal(err)
	}
	return d
}

// dialFile dials proto through d and returns the connection as QEMU holds it (a file made a
// net.Conn).
func dialFile(tb testing.TB, d *migrationDialer, proto string) net.Conn {
	tb.Helper()
	f, err := d.dial(context.Background(), proto)
	if err != nil {
		tb.Fatalf("dial %s: %v", proto, err)
	}
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// exchange sends msg through the dialer's connection for proto, closes its writing side and
// returns all it reads back.
func exchange(t *testing.T, d *migrationDialer, proto, msg string) string {
	t.Helper()
	c := dialFile(t, d, proto)
	defer c.Close()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	if err := c.(*net.UnixConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading the answer through %s: %v", proto, err)
	}
	return string(b)
}

// waitGoroutines waits until the number of goroutines is back to at most base.
func waitGoroutines(t *testing.T, base int) {
	t.Helper()
	for i := 0; i < 500; i++ {
		if runtime.NumGoroutine() <= base {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	buf := make([]byte, 1<<20)
	n := runtime.Stack(buf, true)
	t.Fatalf("%d goroutines left, %d before:\n%s", runtime.NumGoroutine(), base, buf[:n])
}

// TestMigrationProxyRoutesByALPN: through a source dialer and a target proxy on loopback,
// with mutual TLS, the stream's connection reaches the stream's backend and the NBD one the
// NBD backend, in both directions, with the end of each direction passed on; afterwards no
// goroutine is left.
//
// With plain (serve --migration-encryption=false) the same holds, and the data crosses the
// wire in the clear after the handshake, where with TLS it does not (a relay in between
// records what the source sends).
func TestMigrationProxyRoutesByALPN(t *testing.T) {
	inBothModes(t, testProxyRoutes)
}

// inBothModes runs test as two subtests (or sub-benchmarks): "tls", then "plain".
func inBothModes[T interface{ Run(string, func(T)) bool }](t T, test func(T, bool)) {
	for _, plain := range []bool{false, true} {
		t.Run(map[bool]string{false: "tls", true: "plain"}[plain], func(t T) { test(t, plain) })
	}
}

func testProxyRoutes(t *testing.T, plain bool) {
	base := runtime.NumGoroutine()
	src, dst := newProxyNode(t, "src"), newProxyNode(t, "dst")
	stream, nbd := newFakeQEMU(t, "stream:", false), newFakeQEMU(t, "nbd:", false)
	p := startProxyMode(t, dst, src, map[string]func(context.Context) (net.Conn, error){alpnMigration: stream.route, alpnNBD: nbd.route}, plain)
	wire := &wireTap{target: p.ln.Addr().String()}
	d := testDialer(t, wire.start(t), src, dst.fp, plain)
	big := strings.Repeat("0123456789abcdef", 1<<16) // 1 MiB, more than one copy buffer
	if got := exchange(t, d, alpnMigration, big); got != "stream:"+big {
		t.Errorf("the stream's answer: %d bytes, want %d", len(got), len("stream:"+big))
	}
	if clear := strings.Contains(wire.sent.String(), big[:4096]); clear != plain {
		t.Errorf("plain %v: the stream's data in the clear on the wire: %v", plain, clear)
	}
	if got := exchange(t, d, alpnNBD, "disk0"); got != "nbd:disk0" {
		t.Errorf("the NBD answer: %q", got)
	}
	if got := exchange(t, d, alpnNBD, "disk1"); got != "nbd:disk1" {
		t.Errorf("the second NBD answer: %q", got)
	}
	if stream.conns.Load() != 1 || nbd.conns.Load() != 2 {
		t.Errorf("backend connections: stream %d (want 1), nbd %d (want 2)", stream.conns.Load(), nbd.conns.Load())
	}
	// Each pipe ended by itself when both of its ends were done.
	if !d.pipes.wait(10 * time.Second) {
		t.Error("the source's pipes did not end after both sides closed")
	}
	d.close()
	p.close()
	stream.ln.Close()
	nbd.ln.Close()
	stream.wg.Wait()
	nbd.wg.Wait()
	wire.close()
	waitGoroutines(t, base)
}

// wireTap relays TCP connections to target and records what the clients send.
type wireTap struct {
	target string
	ln     net.Listener
	sent   testutil.LockedBuffer
	wg     sync.WaitGroup
}

// start listens on loopback and returns the address to dial.
func (w *wireTap) start(t *testing.T) string {
	w.ln = serveLoopback(t, &w.wg, func(c net.Conn) {
		u, err := net.Dial("tcp", w.target)
		if err != nil {
			c.Close()
			return
		}
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			_, _ = io.Copy(io.MultiWriter(u, &w.sent), c)
			_ = u.(*net.TCPConn).CloseWrite()
		}()
		_, _ = io.Copy(c, u)
		_ = c.(*net.TCPConn).CloseWrite()
	})
	return w.ln.Addr().String()
}

func (w *wireTap) close() {
	w.ln.Close()
	w.wg.Wait()
}

// TestMigrationProxyPlainMismatch: a source and a target that disagree on encryption do not
// connect (the protocols differ), and no backend is reached.
func TestMigrationProxyPlainMismatch(t *testing.T) {
	src, dst := newProxyNode(t, "src"), newProxyNode(t, "dst")
	for _, plain := range []bool{false, true} {
		stream := newFakeQEMU(t, "stream:", false)
		p, d := streamProxy(t, dst, src, stream, plain, !plain)
		if f, err := d.dial(context.Background(), alpnMigration); err == nil {
			f.Close()
			t.Errorf("target plain %v, source plain %v: connected", plain, !plain)
		}
		d.close()
		p.close()
		if n := stream.conns.Load(); n != 0 {
			t.Errorf("target plain %v: %d connections reached QEMU", plain, n)
		}
	}
}

// TestMigrationProxyRefuses: the target proxy refuses a client that presents another
// certificate, one that presents none, one that asks for an unknown protocol or none, and a
// plain TCP client; none of them reaches a backend. A source that pins another target
// certificate refuses the target.
func TestMigrationProxyRefuses(t *testing.T) {
	base := runtime.NumGoroutine()
	src, dst, stranger := newProxyNode(t, "src"), newProxyNode(t, "dst"), newProxyNode(t, "stranger")
	stream := newFakeQEMU(t, "stream:", false)
	p := startProxy(t, dst, src, map[string]func(context.Context) (net.Conn, error){alpnMigration: stream.route})
	addr := p.ln.Addr().String()

	// tryTLS dials with cfg and returns the error of the handshake or of the first read.
	tryTLS := func(cfg *tls.Config) error {
		c, err := tls.Dial("tcp", addr, cfg)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := c.Write([]byte("QEVM")); err != nil {
			return err
		}
		_, err = c.Read(make([]byte, 1))
		if err == nil {
			return errors.New("the proxy answered")
		}
		return err
	}
	pinned := func() *tls.Config {
		cfg, err := nodestream.PinnedTLSConfig(dst.fp)
		if err != nil {
			t.Fatal(err)
		}
		cfg.NextProtos = []string{alpnMigration}
		return cfg
	}
	cfg := pinned()
	cfg.Certificates = []tls.Certificate{stranger.cert}
	if err := tryTLS(cfg); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("a client with another certificate: %v, want a certificate error", err)
	}
	if err := tryTLS(pinned()); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("a client without a certificate: %v, want a certificate error", err)
	}
	cfg = pinned()
	cfg.Certificates = []tls.Certificate{src.cert}
	cfg.NextProtos = []string{"http/1.1"}
	if err := tryTLS(cfg); err == nil || !strings.Contains(err.Error(), "protocol") {
		t.Errorf("a client asking for another protocol: %v, want a protocol error", err)
	}
	cfg.NextProtos = nil
	if err := tryTLS(cfg); err == nil {
		t.Error("a client asking for no protocol was answered")
	}
	// Plain TCP: the proxy's first bytes, if any, are a TLS alert, never a QEMU stream; then
	// it closes the connection.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	_, _ = c.Write([]byte("QEVM\x00\x00\x00\x03"))
	b, err := io.ReadAll(c)
	c.Close()
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("a plain TCP client: %v, want the connection closed", err)
	}
	if len(b) > 0 && b[0] != 0x15 { // 0x15: a TLS alert record
		t.Errorf("a plain TCP client read %q", b)
	}
	// A source pinning another certificate refuses the target.
	d := testDialer(t, addr, src, stranger.fp, false)
	if _, err := d.dial(context.Background(), alpnMigration); !errors.Is(err, nodestream.ErrFingerprint) {
		t.Errorf("a source pinning another certificate: %v, want %v", err, nodestream.ErrFingerprint)
	}
	d.close()
	if n := stream.conns.Load(); n != 0 {
		t.Errorf("%d refused clients reached the backend", n)
	}
	// The right client still gets through.
	d = testDialer(t, addr, src, dst.fp, false)
	if got := exchange(t, d, alpnMigration, "ok"); got != "stream:ok" {
		t.Errorf("the source's answer after the refusals: %q", got)
	}
	d.close()
	p.close()
	stream.ln.Close()
	stream.wg.Wait()
	waitGoroutines(t, base)
}

// TestMigrationProxySourceGone: when the source's side ends in the middle of a stream (its
// agent dies: the dialer's connections close), the target's backend sees its connection end
// and the proxy records that the stream broke from the source's side; when the target's side
// ends (the proxy closes), the source QEMU's end sees the end. No goroutine is left.
func TestMigrationProxySourceGone(t *testing.T) {
	inBothModes(t, testProxySourceGone)
}

func testProxySourceGone(t *testing.T, plain bool) {
	base := runtime.NumGoroutine()
	src, dst := newProxyNode(t, "src"), newProxyNode(t, "dst")
	stream := newFakeQEMU(t, "", true)
	p, d := streamProxy(t, dst, src, stream, plain, plain)
	qemu := dialFile(t, d, alpnMigration)
	if _, err := qemu.Write([]byte("part of a stream")); err != nil {
		t.Fatal(err)
	}
	// The source agent goes away in the middle.
	d.close()
	select {
	case <-stream.gone:
	case <-time.After(time.Minute):
		t.Fatal("the target's backend connection did not end when the source went away")
	}
	stream.mu.Lock()
	got := strings.Join(stream.got, "")
	stream.mu.Unlock()
	if !strings.HasPrefix("part of a stream", got) {
		t.Errorf("the backend read %q", got)
	}
	if !p.streamBroke.Load() {
		t.Error("the proxy did not record that the stream broke from the source's side")
	}
	// QEMU's end on the source sees the end as well.
	_ = qemu.SetReadDeadline(time.Now().Add(time.Minute))
	if n, err := qemu.Read(make([]byte, 16)); err == nil {
		t.Errorf("the source QEMU's end read %d bytes after its agent went away", n)
	} else {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Error("the source QEMU's end stayed open after its agent went away")
		}
	}
	qemu.Close()

	// The other way: the target's proxy closes during a stream.
	stream2 := newFakeQEMU(t, "", true)
	p2, d2 := streamProxy(t, dst, src, stream2, plain, plain)
	qemu2 := dialFile(t, d2, alpnMigration)
	if _, err := qemu2.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	for stream2.conns.Load() == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	p2.close()
	_ = qemu2.SetReadDeadline(time.Now().Add(time.Minute))
	if _, err := io.ReadAll(qemu2); err != nil {
		t.Errorf("the source QEMU's end after the target went away: %v, want its end", err)
	}
	if p2.streamBroke.Load() {
		t.Error("a stream ended by the target was recorded as broken by the source")
	}
	<-stream2.gone
	// QEMU goes on writing its stream: its writes fail once the agent finds the target gone.
	chunk := make([]byte, 64<<10)
	failed := false
	for i := 0; i < 10000 && !failed; i++ {
		_ = qemu2.SetWriteDeadline(time.Now().Add(time.Minute))
		_, err := qemu2.Write(chunk)
		failed = err != nil
	}
	if !failed {
		t.Error("the source QEMU's writes went on after the target went away")
	}
	if !d2.pipes.wait(time.Minute) {
		t.Error("the source's pipe did not end after the target went away")
	}
	qemu2.Close()
	d2.close()
	p.close()
	stream.ln.Close()
	stream2.ln.Close()
	stream.wg.Wait()
	stream2.wg.Wait()
	waitGoroutines(t, base)
}

// connPair is a connected socket pair: the end a QEMU would hold, as a net.Conn, and the
// agent's end.
func connPair(t *testing.T) (qemuEnd, agentEnd net.Conn) {
	t.Helper()
	f, agentEnd, err := socketPair()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	qemuEnd, err = net.FileConn(f)
	if err != nil {
		t.Fatal(err)
	}
	return qemuEnd, agentEnd
}

// TestPipeSetHalfClose: a direction that reaches its end passes it on and the other
// direction goes on; the pair is closed once both have ended.
func TestPipeSetHalfClose(t *testing.T) {
	base := runtime.NumGoroutine()
	a, aAgent := connPair(t)
	b, bAgent := connPair(t)
	var ps pipeSet
	var first atomic.Int32
	ps.pipe(aAgent, bAgent, func(remoteFirst bool) {
		if remoteFirst {
			first.Store(1)
		} else {
			first.Store(2)
		}
	})
	_, _ = a.Write([]byte("request"))
	_ = a.(*net.UnixConn).CloseWrite()
	req, err := io.ReadAll(b)
	if err != nil || string(req) != "request" {
		t.Fatalf("b read %q, %v", req, err)
	}
	if first.Load() != 1 {
		t.Errorf("the first end: %d, want the remote's (1)", first.Load())
	}
	// The other direction still works after the first ended.
	_, _ = b.Write([]byte("answer"))
	_ = b.(*net.UnixConn).CloseWrite()
	ans, err := io.ReadAll(a)
	if err != nil || !bytes.Equal(ans, []byte("answer")) {
		t.Fatalf("a read %q, %v", ans, err)
	}
	if !ps.wait(time.Minute) {
		t.Fatal("the pipe did not end after both directions ended")
	}
	ps.mu.Lock()
	left := len(ps.conns)
	ps.mu.Unlock()
	if left != 0 {
		t.Errorf("%d connections still tracked", left)
	}
	a.Close()
	b.Close()
	ps.close()
	waitGoroutines(t, base)
}

// TestPipeSetLocalGone: when the local side (the target QEMU) dies while the remote side
// still streams into it, the first end is the local side's, whichever direction notices
// first (the write into the dead socket fails, or the read from it ends); the remote side
// sees its connection end. Repeated, as the two directions race.
//
// Run with the remote side a Unix socket pair (copied by the agent, as with TLS) and a bare
// TCP connection (spliced in the kernel, as a plain migration's).
func TestPipeSetLocalGone(t *testing.T) {
	t.Run("copy", func(t *testing.T) { testPipeLocalGone(t, connPair) })
	t.Run("splice", func(t *testing.T) { testPipeLocalGone(t, tcpPair) })
}

// tcpPair returns the two ends of a TCP connection over loopback.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	return client, server
}

func testPipeLocalGone(t *testing.T, remotePair func(*testing.T) (net.Conn, net.Conn)) {
	base := runtime.NumGoroutine()
	for i := 0; i < 20; i++ {
		r, remoteAgent := remotePair(t)
		l, localAgent := connPair(t)
		var ps pipeSet
		ended := make(chan bool, 1)
		ps.pipe(remoteAgent, localAgent, func(remoteFirst bool) { ended <- remoteFirst })
		writer := make(chan error, 1)
		go func() {
			chunk := make([]byte, 64<<10)
			for {
				_ = r.SetWriteDeadline(time.Now().Add(time.Minute))
				if _, err := r.Write(chunk); err != nil {
					writer <- err
					return
				}
			}
		}()
		// The local side reads a little of the stream, then dies.
		if _, err := io.ReadFull(l, make([]byte, 1<<20)); err != nil {
			t.Fatal(err)
		}
		l.Close()
		select {
		case remoteFirst := <-ended:
			if remoteFirst {
				t.Fatalf("round %d: the local side died, and the first end was recorded as the remote's", i)
			}
		case <-time.After(time.Minute):
			t.Fatal("no end recorded after the local side died")
		}
		select {
		case <-writer:
		case <-time.After(time.Minute):
			t.Fatal("the remote side's writes went on after the local side died")
		}
		if !ps.wait(time.Minute) {
			t.Fatal("the pipe did not end")
		}
		r.Close()
		ps.close()
	}
	waitGoroutines(t, base)
}

// BenchmarkMigrationProxy measures the throughput of one connection through a source dialer
// and a target proxy on loopback (mutual TLS, two socket pairs, the agents' copies), as a
// migration stream goes: `go test -run '^$' -bench MigrationProxy ./internal/agent/`.
func BenchmarkMigrationProxy(b *testing.B) {
	inBothModes(b, benchProxy)
}

func benchProxy(b *testing.B, plain bool) {
	src, dst := newProxyNode(b, "src"), newProxyNode(b, "dst")
	sink, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	got := make(chan int64, 1)
	go func() {
		c, err := sink.Accept()
		if err != nil {
			return
		}
		n, _ := io.Copy(io.Discard, c)
		c.Close()
		got <- n
	}()
	route := func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", sink.Addr().String())
	}
	p := startProxyMode(b, dst, src, map[string]func(context.Context) (net.Conn, error){alpnMigration: route}, plain)
	d := testDialer(b, p.ln.Addr().String(), src, dst.fp, plain)
	defer d.close()
	c := dialFile(b, d, alpnMigration)
	chunk := make([]byte, 1<<20)
	b.SetBytes(int64(len(chunk)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	_ = c.(*net.UnixConn).CloseWrite()
	if n := <-got; n != int64(b.N)*int64(len(chunk)) {
		b.Fatalf("the sink got %d bytes, want %d", n, int64(b.N)*int64(len(chunk)))
	}
	b.StopTimer()
	c.Close()
}

// TestSocketPairBuffers: both ends of a migration's socket pair get migrationSocketBuffer
// (the kernel reports double what was set, its bookkeeping included), or, for a process that
// may not pass the system's caps (no CAP_NET_ADMIN), at least what the caps allow.
func TestSocketPairBuffers(t *testing.T) {
	qemuEnd, agentEnd, err := socketPair()
	if err != nil {
		t.Fatal(err)
	}
	defer qemuEnd.Close()
	defer agentEnd.Close()
	// May this process force a buffer past the caps? Ask the kernel on a scratch socket.
	scratch, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	forced := syscall.SetsockoptInt(scratch, syscall.SOL_SOCKET, syscall.SO_SNDBUFFORCE, migrationSocketBuffer) == nil
	syscall.Close(scratch)
	want := func(capFile string) int {
		if forced {
			return migrationSocketBuffer
		}
		b, err := os.ReadFile(capFile)
		if err != nil {
			t.Fatal(err)
		}
		capped, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			t.Fatal(err)
		}
		return min(migrationSocketBuffer, capped)
	}
	opts := []struct {
		name string
		o    int
		want int
	}{
		{"SO_SNDBUF", syscall.SO_SNDBUF, want("/proc/sys/net/core/wmem_max")},
		{"SO_RCVBUF", syscall.SO_RCVBUF, want("/proc/sys/net/core/rmem_max")},
	}
	check := func(name string, fd int) {
		for _, opt := range opts {
			got, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, opt.o)
			if err != nil {
				t.Fatal(err)
			}
			if got < opt.want {
				t.Errorf("%s end: %s is %d, want at least %d (forced: %v)", name, opt.name, got, opt.want, forced)
			}
		}
	}
	raw, err := agentEnd.(*net.UnixConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	if err := raw.Control(func(fd uintptr) { check("agent", int(fd)) }); err != nil {
		t.Fatal(err)
	}
	check("qemu", int(qemuEnd.Fd()))
}

// TestMigrationDirectStream: with plain, the target's direct route gets the bare TCP
// connection itself, the source's dialDirect the other end of it, and neither agent keeps a
// descriptor of it: bytes go end to end, and when one holder (QEMU) closes its end the other
// reads the end at once. The watch connection: ended by the source (its dialer closed, as
// when its agent dies), the target's hook runs once and the stream is marked broken; ended
// by the target (its proxy closed, after the switch-over), the source's channel is closed;
// an agent that closes its own side is not told. A TLS proxy offers neither.
func TestMigrationDirectStream(t *testing.T) {
	dst, src := newProxyNode(t, "target"), newProxyNode(t, "source")
	base := runtime.NumGoroutine()
	handed := make(chan net.Conn, 1)
	var ended atomic.Int32
	start := func(plain bool) (*migrationProxy, *migrationDialer) {
		hooks := proxyHooks{
			direct: map[string]func(context.Context, *os.File) error{alpnMigration: func(_ context.Context, f *os.File) error {
				c, err := net.FileConn(f) // a copy of its own, as QEMU's getfd keeps
				if err != nil {
					return err
				}
				handed <- c
				return nil
			}},
			watchEnded: func() { ended.Add(1) },
		}
		p := startProxyHooks(t, dst, src, nil, plain, hooks)
		d := testDialer(t, p.ln.Addr().String(), src, dst.fp, plain)
		return p, d
	}

	// The source dies: the target is told once; its closing later tells nobody again.
	p, d := start(true)
	lost, err := d.watch(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// The source QEMU's end: dialDirect's file as QEMU would hold it.
	dialQEMU := func() net.Conn {
		t.Helper()
		f, err := d.dialDirect(context.Background(), alpnMigration)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	out := dialQEMU()
	in := <-handed
	msg := []byte("guest memory page")
	if _, err := out.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(in, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("through the handed connection: %q, %v", got, err)
	}
	in.Close() // the target QEMU ends: the source QEMU's end sees it, no agent holds it open
	_ = out.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := out.Read(got); err != io.EOF {
		t.Errorf("after the target's holder closed: read %d, %v; want the end (the target's agent kept the connection)", n, err)
	}
	out.Close()
	// And the other way: the source QEMU ends, the target QEMU's end sees it.
	out = dialQEMU()
	in = <-handed
	out.Close()
	_ = in.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := in.Read(got); err != io.EOF {
		t.Errorf("after the source's holder closed: read %d, %v; want the end (the source's agent kept the connection)", n, err)
	}
	in.Close()
	if ended.Load() != 0 || p.streamBroke.Load() {
		t.Fatal("the watch ended while the source was there")
	}
	d.close() // as the source agent's death closes its sockets
	waitFor2s(t, "the target told that the source is gone", func() bool { return ended.Load() == 1 })
	if !p.streamBroke.Load() {
		t.Error("the stream is not marked broken after the watch ended from the source")
	}
	select {
	case <-lost:
		t.Error("the source's channel closed when the source itself closed")
	default:
	}
	p.close()
	if ended.Load() != 1 {
		t.Errorf("watch hook ran %d times", ended.Load())
	}

	// The target ends it (after its switch-over, or its agent died): the source is told.
	p, d = start(true)
	if lost, err = d.watch(context.Background()); err != nil {
		t.Fatal(err)
	}
	p.close()
	select {
	case <-lost:
	case <-time.After(5 * time.Second):
		t.Fatal("the source was not told that the target ended the watch")
	}
	if ended.Load() != 1 {
		t.Errorf("the target's own close ran its hook (%d)", ended.Load())
	}
	d.close()

	// With TLS the stream is not handed over, and there is no watch.
	p, d = start(false)
	if _, err := d.watch(context.Background()); err == nil {
		t.Error("a TLS proxy accepted a watch connection")
	}
	if _, err := d.dialDirect(context.Background(), alpnMigration); err == nil {
		t.Error("a TLS dialer handed a connection over")
	}
	p.close()
	d.close()
	waitGoroutines(t, base)
}

// waitFor2s polls cond for up to 2 s.
func waitFor2s(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for i := 0; i < 200; i++ {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

// migMonitor is a fake QEMU monitor whose query-migrate answers status.
type migMonitor struct {
	*fakeMonitor
	status string
}

func (m *migMonitor) Execute(_ context.Context, cmd string, _, result any) error {
	m.call(cmd)
	if cmd == "query-migrate" {
		return json.Unmarshal([]byte(`{"status":"`+m.status+`"}`), result)
	}
	return nil
}

// TestSourceGoneDecidesOnce: when a plain migration's watch ends from the source's side, the
// target QEMU's fate is decided once. Still transferring: it is ended, and a completion
// reported afterwards starts no switch-over. Completed: the switch-over is started (as QEMU's
// event would), not the end. A switch-over already started is left alone.
func TestSourceGoneDecidesOnce(t *testing.T) {
	logs := &bytes.Buffer{}
	a := &Agent{runCtx: context.Background()}
	log := slog.New(slog.NewTextHandler(logs, nil))
	newTarget := func(status string) (*instance, *atomic.Int32) {
		in := &instance{mon: &migMonitor{newFakeMonitor("inmigrate"), status}}
		var switchOvers atomic.Int32
		in.setMigrationHook(func(s string) { // what watchIncoming's hook does
			if s == "completed" && in.incomingFate.CompareAndSwap(0, fateSwitchOver) {
				switchOvers.Add(1)
			}
		})
		return in, &switchOvers
	}

	in, switchOvers := newTarget("active")
	a.sourceGone(in, log)
	in.migrationStatus("completed")
	if f := in.incomingFate.Load(); f != fateEnded || switchOvers.Load() != 0 {
		t.Errorf("transferring: fate %d, %d switch-overs; want ended, none", f, switchOvers.Load())
	}
	if !strings.Contains(logs.String(), "ending the target QEMU") {
		t.Errorf("transferring: the target QEMU was not ended: %s", logs)
	}

	logs.Reset()
	in, switchOvers = newTarget("completed")
	a.sourceGone(in, log)
	if f := in.incomingFate.Load(); f != fateSwitchOver || switchOvers.Load() != 1 || strings.Contains(logs.String(), "ending") {
		t.Errorf("completed: fate %d, %d switch-overs, log %q; want the switch-over", f, switchOvers.Load(), logs)
	}

	logs.Reset()
	in, _ = newTarget("active")
	in.incomingFate.Store(fateSwitchOver)
	a.sourceGone(in, log)
	if f := in.incomingFate.Load(); f != fateSwitchOver || strings.Contains(logs.String(), "ending") {
		t.Errorf("switching over: fate %d, log %q; want it left alone", f, logs)
	}
}
