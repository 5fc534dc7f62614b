package qmp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	// DefaultTimeout bounds the handshake and every command whose context has
	// no deadline, unless changed with WithDefaultTimeout.
	DefaultTimeout = 30 * time.Second
	// DefaultMaxMessageSize is the longest line accepted from the server
	// unless changed with WithMaxMessageSize. query-qmp-schema, the largest
	// reply of QEMU 7.2, is a few hundred KiB.
	DefaultMaxMessageSize = 16 << 20
)

// Option configures a Conn.
type Option func(*config)

type config struct {
	timeout time.Duration
	maxMsg  int
	log     *slog.Logger
}

// WithDefaultTimeout sets the timeout applied to the handshake and to each
// command whose context has no deadline. d <= 0 means no default timeout.
func WithDefaultTimeout(d time.Duration) Option {
	return func(c *config) { c.timeout = d }
}

// WithMaxMessageSize sets the longest line accepted from the server; a longer
// one ends the connection with ErrMessageTooLarge. n <= 0 means no limit.
func WithMaxMessageSize(n int) Option {
	return func(c *config) { c.maxMsg = n }
}

// WithLogger sets the logger for diagnostics (discarded replies, malformed
// messages, lagging subscribers). The default discards everything.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) {
		if l != nil {
			c.log = l
		}
	}
}

// Conn is a QMP connection with capabilities negotiated. It is safe for
// concurrent use.
type Conn struct {
	cfg      config
	uc       *net.UnixConn
	br       *bufio.Reader
	greeting Greeting

	nextID atomic.Uint64
	wmu    chan struct{} // held while writing one request
	fdmu   chan struct{} // held for a whole fd-passing command

	mu      sync.Mutex
	pending map[uint64]chan reply // nil once the connection has ended
	subs    map[*subscriber]struct{}
	hooks   map[*eventHook]struct{} // nil once the connection has ended
	cause   error                   // why the client ended the connection, if it did
	err     error                   // set before done is closed
	lastEv  Event                   // the EventDisconnected, once done

	done       chan struct{}
	readerDone chan struct{}
}

type reply struct {
	isErr           bool
	ret             json.RawMessage
	errClass, errDe string
}

// Dial connects to the QMP unix socket at socketPath, reads the greeting and
// negotiates capabilities (none are enabled). ctx bounds the whole handshake
// (DefaultTimeout if it has no deadline); it does not affect the Conn
// afterwards.
func Dial(ctx context.Context, socketPath string, opts ...Option) (*Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", socketPath)
	if err != nil {
		return nil, fmt.Errorf("qmp: dial: %w", err)
	}
	return NewConn(ctx, nc.(*net.UnixConn), opts...)
}

// NewConn runs the QMP handshake on an already connected socket, for
// example one end of a socketpair whose other end QEMU inherited
// (-chardev socket,id=mon,fd=N -mon chardev=mon,mode=control). The Conn owns
// uc from then on: it is closed on failure and by Conn.Close.
func NewConn(ctx context.Context, uc *net.UnixConn, opts ...Option) (*Conn, error) {
	cfg := config{
		timeout: DefaultTimeout,
		maxMsg:  DefaultMaxMessageSize,
		log:     slog.New(slog.DiscardHandler),
	}
	for _, o := range opts {
		o(&cfg)
	}
	c := &Conn{
		cfg:        cfg,
		uc:         uc,
		br:         bufio.NewReaderSize(uc, 8<<10), // longer messages are gathered (readMessage)
		wmu:        make(chan struct{}, 1),
		fdmu:       make(chan struct{}, 1),
		pending:    make(map[uint64]chan reply),
		subs:       make(map[*subscriber]struct{}),
		hooks:      make(map[*eventHook]struct{}),
		done:       make(chan struct{}),
		readerDone: make(chan struct{}),
	}
	ctx, cancel := c.withDefaultTimeout(ctx)
	defer cancel()

	if err := c.readGreeting(ctx); err != nil {
		uc.Close()
		return nil, err
	}
	go c.readLoop()
	if err := c.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		c.Close()
		return nil, fmt.Errorf("qmp: negotiating capabilities: %w", err)
	}
	return c, nil
}

func (c *Conn) withDefaultTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok || c.cfg.timeout <= 0 {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, c.cfg.timeout)
}

func (c *Conn) readGreeting(ctx context.Context) error {
	dl, _ := ctx.Deadline()
	c.uc.SetReadDeadline(dl)
	release := interruptOnDone(ctx, c.uc.SetReadDeadline)
	var line []byte
	var err error
	for err == nil && len(bytes.TrimSpace(line)) == 0 {
		line, err = readLine(c.br, c.cfg.maxMsg)
	}
	release()
	c.uc.SetReadDeadline(time.Time{})
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// The socket deadline is the context's, or its cancellation.
			err = context.DeadlineExceeded
			if ctx.Err() != nil {
				err = ctx.Err()
			}
		}
		return fmt.Errorf("qmp: reading greeting: %w", err)
	}
	m, err := decodeMessage(line)
	if err != nil {
		return fmt.Errorf("%w: reading greeting: %w", ErrProtocol, err)
	}
	if m.kind != kindGreeting {
		return fmt.Errorf("%w: first message is a %v, not a greeting", ErrProtocol, m.kind)
	}
	c.greeting = m.greeting
	return nil
}

// Greeting returns the greeting the server sent on connect.
func (c *Conn) Greeting() Greeting { return c.greeting }

// Version returns QEMU's version from the greeting.
func (c *Conn) Version() Version { return c.greeting.Version }

// Done is closed when the connection has ended.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err is nil while the connection is up; afterwards it reports why it ended.
// The error matches ErrDisconnected and wraps the cause (io.EOF, ErrClosed, a
// socket error, ...).
func (c *Conn) Err() error {
	select {
	case <-c.done:
		return c.err
	default:
		return nil
	}
}

// Close ends the connection. Pending and later calls fail with
// ErrDisconnected (wrapping ErrClosed) and subscribers get EventDisconnected.
// Close waits for the reader to stop; it is safe to call more than once.
func (c *Conn) Close() error {
	c.shutdown(ErrClosed)
	<-c.readerDone
	return nil
}

// shutdown records cause (unless one is recorded already) and closes the
// socket, which makes the reader finish the connection.
func (c *Conn) shutdown(cause error) {
	c.mu.Lock()
	if c.cause == nil {
		c.cause = cause
	}
	c.mu.Unlock()
	c.uc.Close()
}

// Execute runs command with args (marshalled to a JSON object; nil for none)
// and unmarshals the reply's "return" member into result unless result is
// nil. An error reply is returned as *CommandError.
//
// The wait is bounded by ctx, or by the default timeout if ctx has no
// deadline. A timed-out or cancelled call returns an error wrapping
// ctx.Err(); the command may still run in QEMU, and its late reply is
// discarded. If the connection ends first the error matches
// ErrDisconnected.
func (c *Conn) Execute(ctx context.Context, command string, args, result any) error {
	return c.execute(ctx, command, args, result, nil)
}

// ExecuteWithFiles is Execute that also passes files to QEMU as SCM_RIGHTS
// ancillary data attached to the command's bytes, as getfd and add-fd
// require. Commands with files are serialized with each other so that QEMU
// cannot hand one command's descriptors to another. The files stay open and
// owned by the caller; QEMU receives duplicates.
func (c *Conn) ExecuteWithFiles(ctx context.Context, command string, args, result any, files ...*os.File) error {
	if len(files) == 0 {
		return c.execute(ctx, command, args, result, nil)
	}
	for i, f := range files {
		if f == nil {
			return fmt.Errorf("qmp: %s: file %d is nil", command, i)
		}
	}
	return c.execute(ctx, command, args, result, files)
}

func (c *Conn) execute(ctx context.Context, command string, args, result any, files []*os.File) error {
	if command == "" {
		return errors.New("qmp: empty command name")
	}
	ctx, cancel := c.withDefaultTimeout(ctx)
	defer cancel()

	id := c.nextID.Add(1)
	req, err := encodeRequest(command, args, id)
	if err != nil {
		return err
	}

	if len(files) > 0 {
		select {
		case c.fdmu <- struct{}{}:
		case <-ctx.Done():
			return callErr(command, ctx.Err())
		case <-c.done:
			return callErr(command, c.err)
		}
		defer func() { <-c.fdmu }()
	}

	ch := make(chan reply, 1)
	c.mu.Lock()
	if c.pending == nil {
		err := c.err
		c.mu.Unlock()
		return callErr(command, err)
	}
	c.pending[id] = ch
	c.mu.Unlock()
	defer deleteLocked(&c.mu, &c.pending, id)

	if err := c.write(ctx, req, files); err != nil {
		return callErr(command, err)
	}

	var r reply
	select {
	case r = <-ch:
	case <-ctx.Done():
		return callErr(command, ctx.Err())
	case <-c.done:
		select {
		case r = <-ch: // the reply made it before the end
		default:
			return callErr(command, c.err)
		}
	}
	if r.isErr {
		return &CommandError{Command: command, Class: r.errClass, Desc: r.errDe}
	}
	if result != nil {
		if err := json.Unmarshal(r.ret, result); err != nil {
			return callErr(command, fmt.Errorf("decoding reply: %w", err))
		}
	}
	return nil
}

// encodeRequest builds {"execute": command, "arguments": args, "id": id}
// followed by a newline. Arguments are left out when args is nil or encodes
// to null or {}.
func encodeRequest(command string, args any, id uint64) ([]byte, error) {
	name, err := json.Marshal(command)
	if err != nil {
		return nil, callErr(command, err)
	}
	var a []byte
	if args != nil {
		a, err = json.Marshal(args)
		if err != nil {
			return nil, callErr(command, fmt.Errorf("encoding arguments: %w", err))
		}
		switch {
		case string(a) == "null", string(a) == "{}":
			a = nil
		case a[0] != '{':
			return nil, callErr(command, fmt.Errorf("arguments must encode to a JSON object, got %.20s", a))
		}
	}
	b := make([]byte, 0, len(name)+len(a)+64)
	b = append(b, `{"execute":`...)
	b = append(b, name...)
	if a != nil {
		b = append(b, `,"arguments":`...)
		b = append(b, a...)
	}
	b = append(b, `,"id":`...)
	b = strconv.AppendUint(b, id, 10)
	return append(b, "}\n"...), nil
}

// write sends one request. If nothing could be written before ctx ended the
// connection stays usable; a partial write or a socket error ends it.
func (c *Conn) write(ctx context.Context, b []byte, files []*os.File) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case c.wmu <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	case <-c.done:
		return c.err
	}
	defer func() { <-c.wmu }()

	dl, _ := ctx.Deadline()
	c.uc.SetWriteDeadline(dl)
	release := interruptOnDone(ctx, c.uc.SetWriteDeadline)
	var n int
	var err error
	if len(files) == 0 {
		n, err = c.uc.Write(b)
	} else {
		n, err = c.writeWithFiles(b, files)
	}
	release()
	c.uc.SetWriteDeadline(time.Time{})
	if err == nil {
		return nil
	}
	var fe *fileError
	if errors.As(err, &fe) {
		return err // nothing was sent
	}
	if n == 0 && errors.Is(err, os.ErrDeadlineExceeded) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return context.DeadlineExceeded
	}
	// Half a request on the wire, or a dead socket: nothing can follow.
	err = fmt.Errorf("write: %w", err)
	c.shutdown(err)
	return &disconnectError{cause: err}
}

func (c *Conn) writeWithFiles(b []byte, files []*os.File) (int, error) {
	var n int
	err := withRawFDs(files, nil, func(fds []int) error {
		var err error
		n, _, err = c.uc.WriteMsgUnix(b, syscall.UnixRights(fds...), nil)
		if err == nil && n < len(b) {
			// A short sendmsg on a stream socket; the descriptors went with
			// the first part, which is all QEMU needs.
			var m int
			m, err = c.uc.Write(b[n:])
			n += m
		}
		return err
	})
	return n, err
}

// withRawFDs calls fn with the raw descriptors of files, keeping every one of
// them from being closed until fn returns.
func withRawFDs(files []*os.File, fds []int, fn func([]int) error) error {
	if len(files) == 0 {
		return fn(fds)
	}
	rc, err := files[0].SyscallConn()
	if err != nil {
		return &fileError{name: files[0].Name(), err: err}
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		ferr = withRawFDs(files[1:], append(fds, int(fd)), fn)
	}); err != nil {
		return &fileError{name: files[0].Name(), err: err}
	}
	return ferr
}

// fileError is a file that could not be passed (e.g. already closed).
type fileError struct {
	name string
	err  error
}

func (e *fileError) Error() string { return "passing " + e.name + ": " + e.err.Error() }
func (e *fileError) Unwrap() error { return e.err }

// aLongTimeAgo is a deadline in the past, used to interrupt blocked I/O.
var aLongTimeAgo = time.Unix(1, 0)

// interruptOnDone sets a past deadline with set when ctx ends. The returned
// func disarms that and waits for a callback that is already running, so the
// caller can then reset the deadline safely.
func interruptOnDone(ctx context.Context, set func(time.Time) error) (release func()) {
	ran := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		set(aLongTimeAgo)
		close(ran)
	})
	return func() {
		if !stop() {
			<-ran
		}
	}
}

func (c *Conn) readLoop() {
	defer close(c.readerDone)
	var err error
	for {
		var line []byte
		line, err = readLine(c.br, c.cfg.maxMsg)
		if err != nil {
			break
		}
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		m, derr := decodeMessage(line)
		if derr != nil {
			c.cfg.log.Warn("qmp: ignoring malformed message", "err", derr, "line", abbrev(line))
			continue
		}
		c.dispatch(m)
	}
	c.finish(err)
}

func (c *Conn) dispatch(m message) {
	switch m.kind {
	case kindReturn, kindError:
		if !m.hasID {
			// QEMU sends id-less errors only for requests it could not
			// parse, which this client never sends.
			c.cfg.log.Warn("qmp: discarding reply without a usable id",
				"kind", m.kind.String(), "class", m.errClass, "desc", m.errDesc)
			return
		}
		c.mu.Lock()
		ch, ok := c.pending[m.id]
		if ok {
			delete(c.pending, m.id)
		}
		c.mu.Unlock()
		if !ok {
			c.cfg.log.Debug("qmp: discarding late or unknown reply", "id", m.id, "kind", m.kind.String())
			return
		}
		ch <- reply{isErr: m.kind == kindError, ret: m.ret, errClass: m.errClass, errDe: m.errDesc}
	case kindEvent:
		c.mu.Lock()
		for s := range c.subs {
			s.push(m.event)
		}
		hooks := make([]*eventHook, 0, len(c.hooks))
		for h := range c.hooks {
			hooks = append(hooks, h)
		}
		c.mu.Unlock()
		for _, h := range hooks {
			h.call(m.event)
		}
	case kindGreeting:
		c.cfg.log.Warn("qmp: ignoring unexpected greeting")
	}
}

// finish ends the connection after the reader stopped with readErr.
func (c *Conn) finish(readErr error) {
	c.mu.Lock()
	cause := c.cause
	if cause == nil {
		cause = readErr
		if errors.Is(cause, io.ErrUnexpectedEOF) {
			cause = io.EOF
		}
	}
	c.err = &disconnectError{cause: cause}
	data, _ := json.Marshal(map[string]string{"error": c.err.Error()})
	c.lastEv = Event{Name: EventDisconnected, Data: data, Time: time.Now()}
	subs, hooks := c.subs, c.hooks
	c.subs, c.hooks = nil, nil
	c.pending = nil
	c.mu.Unlock()
	for h := range hooks {
		h.call(c.lastEv)
	}

	c.uc.Close()
	close(c.done)
	for s := range subs {
		s.end(c.lastEv)
	}
	if errors.Is(cause, ErrClosed) {
		c.cfg.log.Debug("qmp: connection closed")
	} else {
		c.cfg.log.Info("qmp: disconnected", "err", cause)
	}
}

// Subscribe returns a channel that receives every event the server sends
// from now on, in order. buffer is the channel's capacity; in addition each
// subscriber has an unbounded queue, so a slow receiver never blocks the
// connection and never loses events (it only costs memory; a warning is
// logged when the queue grows past 1024 events).
//
// When the connection ends the channel receives a final EventDisconnected
// and is closed. Subscribing to an ended connection yields just that event.
//
// cancel unsubscribes: it discards queued events, closes the channel and
// returns once the channel is closed (events already in the channel's buffer
// can still be received). It is safe to call more than once and from any
// goroutine.
func (c *Conn) Subscribe(buffer int) (events <-chan Event, cancel func()) {
	s := newSubscriber(max(buffer, 0), c.cfg.log)
	c.mu.Lock()
	if c.subs == nil {
		s.end(c.lastEv)
	} else {
		c.subs[s] = struct{}{}
	}
	c.mu.Unlock()
	go s.pump()
	return s.ch, func() {
		deleteLocked(&c.mu, &c.subs, s)
		s.cancel()
	}
}

// deleteLocked deletes k from the map *m (one of the connection's, nil once it has ended)
// while holding mu.
func deleteLocked[K comparable, V any](mu *sync.Mutex, m *map[K]V, k K) {
	mu.Lock()
	defer mu.Unlock()
	delete(*m, k)
}

// OnEvent calls handle with every event the server sends from now on, in order, on the
// connection's reader goroutine, and last with an EventDisconnected when the connection ends
// (at once, on the caller's goroutine, if it has already ended). It costs no goroutine and no
// queue, unlike Subscribe, so handle must return quickly and must not wait for this
// connection: a command sent from it would wait for a reply that only the reader it blocks
// can read. cancel stops the calls: once it returns, no call is under way and none follows
// (so handle must not call it).
func (c *Conn) OnEvent(handle func(Event)) (cancel func()) {
	h := &eventHook{handle: handle}
	c.mu.Lock()
	if c.hooks == nil {
		last := c.lastEv
		c.mu.Unlock()
		h.call(last)
		return func() {}
	}
	c.hooks[h] = struct{}{}
	c.mu.Unlock()
	return func() {
		deleteLocked(&c.mu, &c.hooks, h)
		h.stop()
	}
}

// eventHook is one OnEvent handler; stopped hooks are not called again.
type eventHook struct {
	mu      sync.Mutex
	stopped bool
	handle  func(Event)
}

func (h *eventHook) call(ev Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.stopped {
		h.handle(ev)
	}
}

func (h *eventHook) stop() {
	h.mu.Lock()
	h.stopped = true
	h.mu.Unlock()
}

// readLine returns the next line, including its '\n'. The slice may be
// valid only until the next read.
func readLine(r *bufio.Reader, limit int) ([]byte, error) {
	line, err := r.ReadSlice('\n')
	if err == nil {
		if limit > 0 && len(line) > limit {
			return nil, ErrMessageTooLarge
		}
		return line, nil
	}
	if !errors.Is(err, bufio.ErrBufferFull) {
		return nil, err
	}
	buf := append([]byte(nil), line...)
	for {
		if limit > 0 && len(buf) > limit {
			return nil, ErrMessageTooLarge
		}
		line, err = r.ReadSlice('\n')
		buf = append(buf, line...)
		switch {
		case err == nil:
			if limit > 0 && len(buf) > limit {
				return nil, ErrMessageTooLarge
			}
			return buf, nil
		case !errors.Is(err, bufio.ErrBufferFull):
			return nil, err
		}
	}
}

func abbrev(b []byte) string {
	const n = 200
	b = bytes.TrimSpace(b)
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}

// disconnectError is the error of an ended connection.
type disconnectError struct{ cause error }

func (e *disconnectError) Error() string {
	return "qmp: disconnected: " + strings.TrimPrefix(e.cause.Error(), "qmp: ")
}
func (e *disconnectError) Is(target error) bool { return target == ErrDisconnected }
func (e *disconnectError) Unwrap() error        { return e.cause }

// commandFailure is a failed call (other than an error reply).
type commandFailure struct {
	command string
	err     error
}

func callErr(command string, err error) error { return &commandFailure{command: command, err: err} }

func (e *commandFailure) Error() string {
	return "qmp: " + e.command + ": " + strings.TrimPrefix(e.err.Error(), "qmp: ")
}
func (e *commandFailure) Unwrap() error { return e.err }
