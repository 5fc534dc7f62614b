// Package qga is a client of the QEMU guest agent (qemu-ga) over the unix socket QEMU serves
// for the VM's org.qemu.guest_agent.0 virtio-serial port.
//
// The agent runs inside the guest, so everything it sends is untrusted input: a response is
// one line of at most MaxResponse bytes (a longer one is an error and the connection is
// dropped, nothing is buffered beyond the limit), it is decoded into typed values whose
// lists and strings are bounded (see decode.go), and every call ends by its context's
// deadline or DefaultTimeout, whichever comes first. A Client whose call failed for any
// reason other than an error answer from the agent is broken (Broken reports it): its stream
// may hold a late or partial answer, so the caller closes it and dials again, and Dial
// resynchronises with guest-sync-delimited.
package qga

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// Limits on what is read from the guest.
const (
	// MaxResponse is the longest response line accepted, in bytes.
	MaxResponse = 1 << 20
	// maxDiscard is how many bytes before the sync delimiter are skipped before giving up.
	maxDiscard = 4 << 20
	// maxStale is how many answers to earlier requests are skipped while waiting for one.
	maxStale = 16
)

// DefaultTimeout bounds a call whose context has no earlier deadline.
const DefaultTimeout = 10 * time.Second

// Errors.
var (
	// ErrTooLarge: the guest sent a line longer than MaxResponse.
	ErrTooLarge = errors.New("guest agent response exceeds the size limit")
	// ErrBroken: the client failed earlier and must be closed and dialled again.
	ErrBroken = errors.New("guest agent connection is broken (dial again)")
	// ErrNoSync: the guest did not answer guest-sync-delimited as expected.
	ErrNoSync = errors.New("guest agent did not synchronise")
)

// AgentError is an error answer from the guest agent ({"error": {...}}).
type AgentError struct {
	Class string
	Desc  string
}

func (e *AgentError) Error() string {
	return fmt.Sprintf("guest agent error %s: %s", e.Class, e.Desc)
}

// Client is one connection to a guest agent. Calls are serialised; it is safe for concurrent
// use.
type Client struct {
	mu     sync.Mutex
	conn   net.Conn
	br     *bufio.Reader
	broken bool
	nextID uint64
}

// Dial connects to the guest agent socket at path and synchronises with the agent. It fails
// (by ctx's deadline or DefaultTimeout) when no agent answers in the guest.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	dctx, cancel := withDefault(ctx)
	defer cancel()
	conn, err := d.DialContext(dctx, "unix", path)
	if err != nil {
		return nil, err
	}
	c := NewClient(conn)
	if err := c.Sync(dctx); err != nil {
		_ = conn.Close()
		return nil, err
	}
	return c, nil
}

// NewClient wraps a connection without synchronising (call Sync before other calls).
func NewClient(conn net.Conn) *Client {
	var seed [8]byte
	_, _ = rand.Read(seed[:])
	// Ids stay below 2^53 so that they survive a trip through a JSON number as a double.
	id := binary.LittleEndian.Uint64(seed[:]) & (1<<52 - 1)
	return &Client{conn: conn, br: bufio.NewReaderSize(conn, 64<<10), nextID: id + 1}
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Broken reports whether the client failed and must be replaced.
func (c *Client) Broken() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.broken
}

func withDefault(ctx context.Context) (context.Context, context.CancelFunc) {
	if d, ok := ctx.Deadline(); ok && time.Until(d) < DefaultTimeout {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, DefaultTimeout)
}

// begin takes the lock and arms the connection's deadline from ctx; a cancelled ctx also
// unblocks the connection. The returned function undoes both.
func (c *Client) begin(ctx context.Context) (context.Context, func(), error) {
	c.mu.Lock()
	if c.broken {
		c.mu.Unlock()
		return nil, nil, ErrBroken
	}
	ctx, cancel := withDefault(ctx)
	d, _ := ctx.Deadline()
	_ = c.conn.SetDeadline(d)
	stop := context.AfterFunc(ctx, func() { _ = c.conn.SetDeadline(time.Unix(1, 0)) })
	return ctx, func() {
		stop()
		cancel()
		_ = c.conn.SetDeadline(time.Time{})
		c.mu.Unlock()
	}, nil
}

// fail marks the client broken and returns err (with ctx's error when that is the cause).
func (c *Client) fail(ctx context.Context, err error) error {
	c.broken = true
	// The connection's deadlines come from ctx only: a timeout is ctx's, even when the
	// connection noticed it a moment before ctx did.
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		cause := ctx.Err()
		if cause == nil || errors.Is(cause, context.DeadlineExceeded) {
			cause = context.DeadlineExceeded
		}
		return fmt.Errorf("guest agent did not answer in time: %w", cause)
	}
	return err
}

// Sync resets the agent's parser, sends guest-sync-delimited and discards everything up to
// its answer (the 0xFF delimiter, then {"return": id}): stale answers of earlier requests
// and partial lines are dropped.
func (c *Client) Sync(ctx context.Context) error {
	c.mu.Lock()
	c.broken = false
	c.mu.Unlock()
	ctx, end, err := c.begin(ctx)
	if err != nil {
		return err
	}
	defer end()
	id := c.nextID
	c.nextID++
	req, _ := json.Marshal(map[string]any{"execute": "guest-sync-delimited", "arguments": map[string]any{"id": id}})
	// 0xFF is never valid JSON: it makes the agent drop whatever partial request it holds.
	if _, err := c.conn.Write(append([]byte{0xFF}, append(req, '\n')...)); err != nil {
		return c.fail(ctx, err)
	}
	if err := c.skipToDelimiter(); err != nil {
		return c.fail(ctx, err)
	}
	for i := 0; i <= maxStale; i++ {
		line, err := readLine(c.br, MaxResponse)
		if err != nil {
			return c.fail(ctx, err)
		}
		line = bytes.TrimLeft(line, "\xff")
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var r struct {
			Return *uint64 `json:"return"`
		}
		if json.Unmarshal(line, &r) == nil && r.Return != nil && *r.Return == id {
			return nil
		}
	}
	return c.fail(ctx, ErrNoSync)
}

func (c *Client) skipToDelimiter() error {
	for n := 0; n < maxDiscard; {
		b, err := c.br.ReadSlice(0xFF)
		n += len(b)
		if err == nil {
			return nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return err
		}
	}
	return fmt.Errorf("%w: %d bytes before the sync delimiter", ErrNoSync, maxDiscard)
}

// readLine reads one '\n'-terminated line of at most limit bytes (without the newline).
func readLine(r *bufio.Reader, limit int) ([]byte, error) {
	var buf []byte
	for {
		b, err := r.ReadSlice('\n')
		if len(buf)+len(b) > limit+1 {
			return nil, fmt.Errorf("%w (%d bytes)", ErrTooLarge, limit)
		}
		buf = append(buf, b...)
		if err == nil {
			return buf[:len(buf)-1], nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return nil, err
		}
	}
}

// response is one answer line.
type response struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	ID *uint64 `json:"id"`
}

// call sends one command and returns its raw "return" value. noReply commands (guest-shutdown
// answers nothing on success) return after the write.
func (c *Client) call(ctx context.Context, cmd string, args any, noReply bool) (json.RawMessage, error) {
	ctx, end, err := c.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer end()
	id := c.nextID
	c.nextID++
	msg := map[string]any{"execute": cmd, "id": id}
	if args != nil {
		msg["arguments"] = args
	}
	req, err := json.Marshal(msg)
	if err != nil {
		return nil, err
	}
	if _, err := c.conn.Write(append(req, '\n')); err != nil {
		return nil, c.fail(ctx, err)
	}
	if noReply {
		// Whatever the agent says later (an error, or nothing) is left unread.
		c.broken = true
		return nil, nil
	}
	for i := 0; i <= maxStale; i++ {
		line, err := readLine(c.br, MaxResponse)
		if err != nil {
			return nil, c.fail(ctx, err)
		}
		line = bytes.TrimLeft(line, "\xff")
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var r response
		if err := json.Unmarshal(line, &r); err != nil {
			return nil, c.fail(ctx, fmt.Errorf("guest agent sent a malformed response to %s: %v", cmd, err))
		}
		if r.ID != nil && *r.ID != id {
			continue // the answer to an earlier request that timed out
		}
		if r.Error != nil {
			return nil, &AgentError{Class: clean(r.Error.Class, 64), Desc: clean(r.Error.Desc, 256)}
		}
		if r.Return == nil {
			return nil, c.fail(ctx, fmt.Errorf("guest agent response to %s has neither return nor error", cmd))
		}
		return r.Return, nil
	}
	return nil, c.fail(ctx, fmt.Errorf("guest agent sent %d answers to other requests", maxStale+1))
}
