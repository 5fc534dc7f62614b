package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rakhsh/rakhsh/internal/nodestream"
)

// The migration proxy: a live migration's stream and its disk mirrors go from the source
// QEMU to the source agent, from agent to agent over one TLS connection each (mutual TLS,
// each side pinning the certificate the other's Node publishes in
// status.streamEndpoint.certificateSHA256), and from the target agent to the target QEMU.
// QEMU opens no path and listens on no network address for it: each QEMU gets its end of a
// socket pair (or, for the target's NBD server, a listening socket) as a descriptor over QMP.
//
// The target agent listens on one TCP port of its underlay address; the ALPN protocol a
// client asks for says where its connection goes: alpnMigration to the incoming QEMU's
// migration stream, alpnNBD to its NBD server (the Local disks' exports). The stream thus
// lives as long as both agents do: when either dies, its connections break, QEMU's
// migration fails, and the source QEMU goes on running the guest.
//
// With encryption off (plain), the handshake is the same (both agents are checked), and the
// data then goes over the bare TCP connection. For underlays that are a trusted network of
// their own; the protocols carry plainSuffix. The disk mirrors' bytes are then spliced by the
// kernel between the agents' sockets; the migration stream is not copied at all: each agent
// hands the TCP connection itself to its QEMU (direct routes). So that the stream still ends
// when either agent dies, the source also opens a watch connection (alpnWatch) that carries
// nothing and lives as long as the migration: when it ends from the source's side before the
// stream completed, the target ends its QEMU (and with it the stream, so the source QEMU goes
// on running the guest); when it ends from the target's side, the source cancels its stream.

const (
	// alpnMigration is the ALPN protocol of a connection carrying QEMU's migration stream.
	alpnMigration = "rakhsh-migration"
	// alpnNBD is the ALPN protocol of a connection of a disk mirror to the target's exports.
	alpnNBD = "rakhsh-nbd"
	// alpnWatch is the ALPN protocol of a plain migration's watch connection: nothing is sent
	// on it; its end tells each agent that the other one (or the link) is gone.
	alpnWatch = "rakhsh-migration-watch"

	// proxyHandshakeTimeout bounds a TLS handshake of the proxy.
	proxyHandshakeTimeout = 15 * time.Second
	// proxyBufSize is the copy buffer of each direction of a piped connection.
	proxyBufSize = 256 << 10

	// plainSuffix marks the ALPN protocol of a connection whose data goes unencrypted once
	// the TLS handshake has checked both agents (the cluster setting serve
	// --migration-encryption=false; docs/migration.md). Both sides must ask for the same.
	plainSuffix = "+plain"
	// plainReady is the byte the target sends on the bare TCP connection after the handshake
	// of a plain connection: the source sends nothing before it, so that no byte of the data
	// sits unread in the server's TLS buffers when both leave TLS.
	plainReady = 0x5a
)

// pipeSet holds the connections of one side of one migration and the goroutines that copy
// between them, so that they all end together.
type pipeSet struct {
	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

// track adds c to the set; it returns false (and closes c) when the set is closed.
func (p *pipeSet) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return false
	}
	if p.conns == nil {
		p.conns = map[net.Conn]struct{}{}
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *pipeSet) untrack(cs ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cs {
		delete(p.conns, c)
	}
}

// goroutine runs f as one of the set's goroutines (waited for by close); false when the
// set is closed.
func (p *pipeSet) goroutine(f func()) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		f()
	}()
	return true
}

// halfCloser is a connection whose writing side can be closed alone.
type halfCloser interface{ CloseWrite() error }

// pipe copies between remote and local in both directions. A direction that reaches the
// end of its input passes the end on (CloseWrite) and the other direction goes on; a
// direction that fails closes both connections. Both are closed when both directions have
// ended. firstEnd, if not nil, is called once, as soon as the first direction ends, with
// whether it was the remote side's input that ended. pipe returns at once; close ends every
// pipe of the set.
func (p *pipeSet) pipe(remote, local net.Conn, firstEnd func(remoteFirst bool)) {
	if !p.track(remote) || !p.track(local) {
		remote.Close()
		local.Close()
		return
	}
	var first atomic.Int32 // 1: remote's input ended first, 2: local's
	var left atomic.Int32
	left.Store(2)
	finish := func() {
		remote.Close()
		local.Close()
		p.untrack(remote, local)
	}
	copyDir := func(dst, src net.Conn, id int32) {
		inputEnded, err := spliceConn(dst, src)
		if err == errNoSplice {
			inputEnded, err = copyConn(dst, src, make([]byte, proxyBufSize))
		}
		// The side that ended is the one this direction reads from, unless writing to the
		// other side failed first (the target QEMU killed while the stream still flows
		// in: local ended, not remote).
		ended := id
		if !inputEnded {
			ended = 3 - id
		}
		if first.CompareAndSwap(0, ended) && firstEnd != nil {
			firstEnd(ended == 1)
		}
		if err == nil {
			if hc, ok := dst.(halfCloser); ok && hc.CloseWrite() == nil {
				if left.Add(-1) == 0 {
					finish()
				}
				return
			}
		}
		// A failure (or a connection that cannot be half-closed) ends both directions.
		remote.Close()
		local.Close()
		if left.Add(-1) == 0 {
			finish()
		}
	}
	if !p.goroutine(func() { copyDir(local, remote, 1) }) {
		remote.Close()
		local.Close()
		return
	}
	if !p.goroutine(func() { copyDir(remote, local, 2) }) {
		remote.Close()
		local.Close()
	}
}

// errNoSplice says the kernel cannot move the bytes between the two connections.
var errNoSplice = errors.New("no splice between these connections")

// spliceConn copies between a bare TCP connection and a Unix one (a plain migration's) in
// the kernel (splice, through io.Copy), without the bytes passing through the agent; it
// returns errNoSplice for other pairs (TLS). A failure writing to dst (EPIPE: its reader
// is gone) counts as dst's end, any other as src's.
func spliceConn(dst, src net.Conn) (inputEnded bool, err error) {
	_, tcpToUnix := src.(*net.TCPConn)
	_, unixDst := dst.(*net.UnixConn)
	_, unixToTCP := src.(*net.UnixConn)
	_, tcpDst := dst.(*net.TCPConn)
	if !(tcpToUnix && unixDst) && !(unixToTCP && tcpDst) {
		return false, errNoSplice
	}
	if _, err := io.Copy(dst, src); err != nil {
		return !errors.Is(err, syscall.EPIPE), err
	}
	return true, nil
}

// copyConn copies src to dst until src's input ends or a write to dst fails, and says
// which: inputEnded is true when reading src ended (err is nil at its end of file).
func copyConn(dst io.Writer, src io.Reader, buf []byte) (inputEnded bool, err error) {
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return false, werr
			}
		}
		if rerr == io.EOF {
			return true, nil
		}
		if rerr != nil {
			return true, rerr
		}
	}
}

// wait waits until every pipe of the set has ended by itself, at most limit; it says
// whether they all did.
func (p *pipeSet) wait(limit time.Duration) bool {
	done := make(chan struct{})
	go func() {
		p.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-time.After(limit):
		return false
	}
}

// close closes every connection of the set and waits for its goroutines; later pipes are
// refused.
func (p *pipeSet) close() {
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// socketPair returns the two ends of a connected Unix stream socket pair: one as a file (to
// pass to QEMU), the other as a connection (the agent's). Both are close-on-exec, so that no
// process the agent starts holds the agent's end: when the agent ends, QEMU sees the end.
func socketPair() (*os.File, net.Conn, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	for _, fd := range fds {
		setSocketBuffers(fd, migrationSocketBuffer)
	}
	qemuEnd := os.NewFile(uintptr(fds[0]), "qemu-end")
	agentFile := os.NewFile(uintptr(fds[1]), "agent-end")
	defer agentFile.Close()
	agentEnd, err := net.FileConn(agentFile)
	if err != nil {
		qemuEnd.Close()
		return nil, nil, err
	}
	return qemuEnd, agentEnd, nil
}

// migrationSocketBuffer is the send and receive buffer of each end of a migration's socket
// pair. The kernel's default for a Unix stream socket (net.core.wmem_default, about 208 KiB)
// makes QEMU and the agent take turns every few hundred KiB; with 4 MiB an idle 256 MiB
// guest's migration took 483 instead of 624 ms (TLS) and 424 instead of 551 ms (unencrypted)
// on the benchmark's 2-core machine (docs/benchmarks.md, "Live migration").
const migrationSocketBuffer = 4 << 20

// setSocketBuffers sets fd's send and receive buffers to n bytes: with the FORCE options,
// which pass the system's wmem_max/rmem_max caps, when the process may (CAP_NET_ADMIN, as
// the agent runs); else as far as the caps allow. A failure leaves the defaults: only speed
// depends on it.
func setSocketBuffers(fd, n int) {
	if syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_SNDBUFFORCE, n) != nil {
		_ = syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_SNDBUF, n)
	}
	if syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_RCVBUFFORCE, n) != nil {
		_ = syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_RCVBUF, n)
	}
}

// migrationProxy is the target's side: one TLS listener whose connections go, by ALPN
// protocol, to the incoming QEMU.
type migrationProxy struct {
	ln     net.Listener
	cfg    *tls.Config
	plain  bool
	routes map[string]func(ctx context.Context) (net.Conn, error)
	log    *slog.Logger
	pipes  pipeSet
	ctx    context.Context
	cancel context.CancelFunc
	once   sync.Once
	// streamBroke says the migration stream's connection ended from the source's side
	// first (the source agent or the link went away, or the stream simply ended), or, for a
	// direct stream, that the watch connection did.
	streamBroke atomic.Bool
	// onClose runs once when the proxy is closed.
	onClose func()
	hooks   proxyHooks
}

// proxyHooks are the target's routes of a plain migration whose connection goes to QEMU
// itself rather than through the agent.
type proxyHooks struct {
	// direct routes: each gets (a duplicate of) the bare TCP connection after the handshake
	// and hands it on; the agent keeps no copy of it.
	direct map[string]func(ctx context.Context, conn *os.File) error
	// watchEnded, if set, serves alpnWatch: it is called once when the watch connection ends
	// from the source's side (not when the proxy closes it).
	watchEnded func()
}

// serveMigrationProxyHooks serves ln with TLS configuration cfg (its NextProtos are set to
// the routes', with plainSuffix when plain), routing each connection to the route of its ALPN
// protocol, and to the direct routes and the watch of hooks too (plain only: a direct route's
// data is the bare connection's); a connection whose protocol has no route is closed after
// the handshake.
func serveMigrationProxyHooks(ln net.Listener, cfg *tls.Config, routes map[string]func(ctx context.Context) (net.Conn, error), plain bool, log *slog.Logger, hooks proxyHooks) *migrationProxy {
	cfg = cfg.Clone()
	cfg.NextProtos = nil
	for proto := range routes {
		cfg.NextProtos = append(cfg.NextProtos, wireProto(proto, plain))
	}
	if !plain {
		hooks = proxyHooks{}
	}
	for proto := range hooks.direct {
		cfg.NextProtos = append(cfg.NextProtos, wireProto(proto, plain))
	}
	if hooks.watchEnded != nil {
		cfg.NextProtos = append(cfg.NextProtos, wireProto(alpnWatch, plain))
	}
	// No session ticket may follow the handshake: with plain, the bare connection's first
	// byte is plainReady.
	cfg.SessionTicketsDisabled = true
	ctx, cancel := context.WithCancel(context.Background())
	p := &migrationProxy{ln: ln, cfg: cfg, plain: plain, routes: routes, log: log, ctx: ctx, cancel: cancel, hooks: hooks}
	p.pipes.goroutine(p.accept)
	return p
}

// port is the TCP port the proxy listens on.
func (p *migrationProxy) port() int {
	if a, ok := p.ln.Addr().(*net.TCPAddr); ok {
		return a.Port
	}
	return 0
}

func (p *migrationProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || p.ctx.Err() != nil {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			p.log.Warn("migration proxy: accepting", "err", err)
			return
		}
		if !p.pipes.track(c) {
			return
		}
		if !p.pipes.goroutine(func() { p.handle(c) }) {
			c.Close()
			return
		}
	}
}

// handle completes the handshake of c and pipes it to its route (or hands it to its direct
// route, or holds it as the watch).
func (p *migrationProxy) handle(c net.Conn) {
	tc := tls.Server(c, p.cfg)
	hctx, cancel := context.WithTimeout(p.ctx, proxyHandshakeTimeout)
	err := tc.HandshakeContext(hctx)
	cancel()
	p.pipes.untrack(c)
	if err != nil {
		p.log.Warn("migration proxy: refused a connection", "from", c.RemoteAddr().String(), "err", err)
		c.Close()
		return
	}
	wire := tc.ConnectionState().NegotiatedProtocol
	proto := strings.TrimSuffix(wire, plainSuffix)
	route, direct := p.routes[proto], p.hooks.direct[proto]
	watch := proto == alpnWatch && p.hooks.watchEnded != nil
	if (route == nil && direct == nil && !watch) || wire != wireProto(proto, p.plain) {
		p.log.Warn("migration proxy: refused a connection without a known protocol", "from", c.RemoteAddr().String(), "protocol", wire)
		tc.Close()
		return
	}
	// What the connection goes to is ready before the source may send: QEMU's end (a route
	// or a direct one) or the watch. With plain, plainReady then tells the source that the
	// bare connection is its own; a failure before closes it without, and the source's
	// connect fails at once.
	var local net.Conn
	switch {
	case watch:
	case direct != nil:
		err = handOver(p.ctx, c, direct)
	default:
		local, err = route(p.ctx)
	}
	if err != nil {
		p.log.Warn("migration proxy: connecting to QEMU", "protocol", proto, "err", err)
		tc.Close()
		return
	}
	var remote net.Conn = tc
	if p.plain {
		// Both agents are checked: the data goes over the bare connection.
		if _, err := c.Write([]byte{plainReady}); err != nil {
			p.log.Warn("migration proxy: starting a plain connection", "from", c.RemoteAddr().String(), "err", err)
			c.Close()
			if local != nil {
				local.Close()
			}
			return
		}
		remote = c
	}
	switch {
	case watch:
		p.holdWatch(remote)
		return
	case direct != nil:
		c.Close() // QEMU holds the connection now; the agent keeps no descriptor of it
		return
	}
	p.pipes.pipe(remote, local, func(remoteFirst bool) {
		// (Not when the proxy itself ends the connections.)
		if proto == alpnMigration && remoteFirst && p.ctx.Err() == nil {
			p.streamBroke.Store(true)
		}
	})
}

// handOver gives a duplicate of the bare TCP connection c to hand. The caller closes c, so
// that the connection ends when its new holder ends it.
func handOver(ctx context.Context, c net.Conn, hand func(context.Context, *os.File) error) error {
	f, err := qemuSocket(c)
	if err != nil {
		return err
	}
	defer f.Close()
	return hand(ctx, f)
}

// qemuSocket returns a duplicate of the bare TCP connection c for QEMU, with Nagle's
// algorithm back on as on the sockets QEMU opens itself (Go turns it off): QEMU writes the
// stream in buffers of its own, and lets the kernel fill whole segments.
func qemuSocket(c net.Conn) (*os.File, error) {
	tcp, ok := c.(*net.TCPConn)
	if !ok {
		return nil, fmt.Errorf("a %T cannot be handed over", c)
	}
	_ = tcp.SetNoDelay(false)
	return tcp.File()
}

// holdWatch keeps the watch connection c until it ends: from the source's side first, the
// target's hook is told (the source agent or the link is gone); closing the proxy ends it
// quietly.
func (p *migrationProxy) holdWatch(c net.Conn) {
	p.pipes.hold(c, func() {
		if p.ctx.Err() == nil { // (not while the proxy closes)
			p.streamBroke.Store(true)
			p.hooks.watchEnded()
		}
	})
}

// hold keeps c, on which nothing is sent (a watch connection), in the set until it ends;
// ended runs then unless it was the set's close that ended it. False (c closed) when the set
// is closed already.
func (p *pipeSet) hold(c net.Conn, ended func()) bool {
	if !p.track(c) {
		return false
	}
	p.goroutine(func() {
		_, _ = io.Copy(io.Discard, c)
		p.mu.Lock()
		closing := p.closed
		p.mu.Unlock()
		c.Close()
		p.untrack(c)
		if !closing {
			ended()
		}
	})
	return true
}

// close stops listening and ends every connection.
func (p *migrationProxy) close() {
	p.once.Do(func() {
		p.cancel()
		p.ln.Close()
		p.pipes.close()
		if p.onClose != nil {
			p.onClose()
		}
	})
}

// wireProto is the ALPN protocol of proto on the wire.
func wireProto(proto string, plain bool) string {
	if plain {
		return proto + plainSuffix
	}
	return proto
}

// migrationDialer is the source's side: it connects to the target's proxy.
type migrationDialer struct {
	addr  string
	cfg   *tls.Config
	plain bool
	pipes pipeSet
}

// newMigrationDialer returns a dialer to the target's proxy at addr, presenting cert and
// accepting only the certificate whose fingerprint is targetFP; with plain, the data of its
// connections goes unencrypted after the handshake.
func newMigrationDialer(addr string, cert tls.Certificate, targetFP string, plain bool) (*migrationDialer, error) {
	cfg, err := nodestream.PinnedTLSConfig(targetFP)
	if err != nil {
		return nil, err
	}
	cfg.Certificates = []tls.Certificate{cert}
	return &migrationDialer{addr: addr, cfg: cfg, plain: plain}, nil
}

// connect connects to the target for proto and returns the connection its data goes over:
// the TLS one, or with plain the bare TCP one once the target said so.
func (d *migrationDialer) connect(ctx context.Context, proto string) (net.Conn, error) {
	cfg := d.cfg.Clone()
	wire := wireProto(proto, d.plain)
	cfg.NextProtos = []string{wire}
	dctx, cancel := context.WithTimeout(ctx, proxyHandshakeTimeout)
	defer cancel()
	raw, err := (&net.Dialer{}).DialContext(dctx, "tcp", d.addr)
	if err != nil {
		return nil, fmt.Errorf("connecting to the target's migration port %s: %w", d.addr, err)
	}
	tc := tls.Client(raw, cfg)
	if err := tc.HandshakeContext(dctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("connecting to the target's migration port %s: %w", d.addr, err)
	}
	if got := tc.ConnectionState().NegotiatedProtocol; got != wire {
		tc.Close()
		return nil, fmt.Errorf("the target's migration port %s does not speak %s (it chose %q)", d.addr, wire, got)
	}
	if !d.plain {
		return tc, nil
	}
	// The target says when the bare connection is its own; nothing is sent before.
	var b [1]byte
	_ = raw.SetReadDeadline(time.Now().Add(proxyHandshakeTimeout))
	if _, err := io.ReadFull(raw, b[:]); err != nil || b[0] != plainReady {
		raw.Close()
		if err == nil {
			err = fmt.Errorf("it sent %#x", b[0])
		}
		return nil, fmt.Errorf("the target's migration port %s did not start the plain connection: %w", d.addr, err)
	}
	_ = raw.SetReadDeadline(time.Time{})
	return raw, nil
}

// dial connects to the target for proto and returns QEMU's end of a socket pair whose other
// end is piped to that connection. The caller passes the file to QEMU and closes it.
func (d *migrationDialer) dial(ctx context.Context, proto string) (*os.File, error) {
	remote, err := d.connect(ctx, proto)
	if err != nil {
		return nil, err
	}
	qemuEnd, agentEnd, err := socketPair()
	if err != nil {
		remote.Close()
		return nil, err
	}
	d.pipes.pipe(remote, agentEnd, nil)
	return qemuEnd, nil
}

// dialDirect connects to the target for proto (plain only) and returns the bare TCP
// connection itself as a file, for QEMU; the agent keeps no descriptor of it. The caller
// passes the file to QEMU and closes it.
func (d *migrationDialer) dialDirect(ctx context.Context, proto string) (*os.File, error) {
	if !d.plain {
		return nil, errors.New("only an unencrypted stream goes to QEMU directly")
	}
	remote, err := d.connect(ctx, proto)
	if err != nil {
		return nil, err
	}
	defer remote.Close()
	return qemuSocket(remote)
}

// watch opens the watch connection of a plain migration: the returned channel is closed
// when it ends from the target's side (its agent or the link is gone), not when the dialer
// closes it. Waiting for the dialer's pipes (pipes.wait) waits for the target to end it.
func (d *migrationDialer) watch(ctx context.Context) (<-chan struct{}, error) {
	c, err := d.connect(ctx, alpnWatch)
	if err != nil {
		return nil, err
	}
	lost := make(chan struct{})
	if !d.pipes.hold(c, func() { close(lost) }) {
		return nil, errors.New("the migration's connections are closed")
	}
	return lost, nil
}

// close ends every connection of the dialer.
func (d *migrationDialer) close() { d.pipes.close() }
