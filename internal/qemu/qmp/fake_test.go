package qmp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// A fake QMP server on a unix socket, written for these tests from the
// protocol description: it greets, answers qmp_capabilities by itself and
// hands every other request to the test, which replies (or not) through the
// fakeConn.

const fakeGreeting = `{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "fake"}, "capabilities": ["oob"]}}`

type fakeServer struct {
	path     string
	ln       *net.UnixListener
	greeting string
	accepted chan *fakeConn
}

func newFakeServer(t *testing.T, greeting string) *fakeServer {
	t.Helper()
	path := filepath.Join(t.TempDir(), "qmp.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeServer{path: path, ln: ln, greeting: greeting, accepted: make(chan *fakeConn, 16)}
	var mu sync.Mutex
	var conns []*fakeConn
	acceptDone := make(chan struct{})
	t.Cleanup(func() {
		ln.Close()
		<-acceptDone
		mu.Lock()
		defer mu.Unlock()
		for _, fc := range conns {
			close(fc.stop)
			fc.uc.Close()
			<-fc.readerDone
		}
	})
	go func() {
		defer close(acceptDone)
		for {
			uc, err := ln.AcceptUnix()
			if err != nil {
				return
			}
			fc := &fakeConn{
				uc:         uc,
				reqs:       make(chan fakeRequest, 1024),
				stop:       make(chan struct{}),
				readerDone: make(chan struct{}),
			}
			mu.Lock()
			conns = append(conns, fc)
			mu.Unlock()
			if greeting != "" {
				fc.sendRaw(greeting)
			}
			go fc.readLoop()
			select {
			case s.accepted <- fc:
			default:
			}
		}
	}()
	return s
}

func (s *fakeServer) conn(t *testing.T) *fakeConn {
	t.Helper()
	select {
	case fc := <-s.accepted:
		return fc
	case <-time.After(5 * time.Second):
		t.Fatal("fake server: no connection accepted")
		return nil
	}
}

type fakeRequest struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments"`
	ID        json.RawMessage `json:"id"`
	Raw       string          `json:"-"`
	FDs       []int           `json:"-"` // descriptors received with this request
}

type fakeConn struct {
	uc   *net.UnixConn
	wmu  sync.Mutex
	gate sync.RWMutex

	reqs       chan fakeRequest
	stop       chan struct{}
	readerDone chan struct{}

	mu    sync.Mutex
	caps  []fakeRequest // qmp_capabilities requests seen
	order []string      // every command name, in arrival order
}

func (fc *fakeConn) readLoop() {
	defer close(fc.readerDone)
	defer close(fc.reqs)
	buf := make([]byte, 64<<10)
	oob := make([]byte, syscall.CmsgSpace(16*4))
	var partial []byte
	var pendingFDs []int
	for {
		fc.gate.RLock() // a test holding gate stops the server from reading
		fc.gate.RUnlock()
		n, oobn, _, _, err := fc.uc.ReadMsgUnix(buf, oob)
		if err != nil {
			return
		}
		if oobn > 0 {
			msgs, perr := syscall.ParseSocketControlMessage(oob[:oobn])
			if perr == nil {
				for _, m := range msgs {
					if fds, err := syscall.ParseUnixRights(&m); err == nil {
						pendingFDs = append(pendingFDs, fds...)
					}
				}
			}
		}
		partial = append(partial, buf[:n]...)
		// Linux ends a recvmsg right after the message that carried
		// descriptors, so they belong to the line containing the last
		// byte read: the last complete line if the data ends with '\n'.
		for {
			i := bytes.IndexByte(partial, '\n')
			if i < 0 {
				break
			}
			line := partial[:i]
			partial = partial[i+1:]
			var req fakeRequest
			if err := json.Unmarshal(line, &req); err != nil {
				req = fakeRequest{Execute: "<malformed>"}
			}
			req.Raw = string(line)
			if len(partial) == 0 {
				req.FDs, pendingFDs = pendingFDs, nil
			}
			fc.mu.Lock()
			fc.order = append(fc.order, req.Execute)
			auto := req.Execute == "qmp_capabilities"
			if auto {
				fc.caps = append(fc.caps, req)
			}
			fc.mu.Unlock()
			if auto {
				fc.reply(req, struct{}{})
				continue
			}
			select {
			case fc.reqs <- req:
			case <-fc.stop:
				return
			}
		}
	}
}

func (fc *fakeConn) sendRaw(s string) error {
	fc.wmu.Lock()
	defer fc.wmu.Unlock()
	_, err := fc.uc.Write([]byte(s + "\r\n"))
	return err
}

func (fc *fakeConn) send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return fc.sendRaw(string(b))
}

func (fc *fakeConn) reply(req fakeRequest, ret any) error {
	return fc.send(map[string]any{"return": ret, "id": req.ID})
}

func (fc *fakeConn) replyErr(req fakeRequest, class, desc string) error {
	return fc.send(map[string]any{"error": map[string]string{"class": class, "desc": desc}, "id": req.ID})
}

func (fc *fakeConn) event(name string, data any, at time.Time) error {
	m := map[string]any{
		"event":     name,
		"timestamp": map[string]int64{"seconds": at.Unix(), "microseconds": int64(at.Nanosecond() / 1000)},
	}
	if data != nil {
		m["data"] = data
	}
	return fc.send(m)
}

// next returns the next request (other than qmp_capabilities).
func (fc *fakeConn) next(t *testing.T) fakeRequest {
	t.Helper()
	return recvWithin(t, fc.reqs, "fake server: connection closed while waiting for a request", "fake server: no request within 5s")
}

// recvWithin receives one value from ch, failing the test with closed when ch is closed, or
// with none when nothing comes within 5 s.
func recvWithin[T any](t *testing.T, ch <-chan T, closed, none string) T {
	t.Helper()
	select {
	case v, ok := <-ch:
		if !ok {
			t.Fatal(closed)
		}
		return v
	case <-time.After(5 * time.Second):
		t.Fatal(none)
		var zero T
		return zero
	}
}

// serve answers requests with fn until the connection closes.
func (fc *fakeConn) serve(fn func(fakeRequest)) {
	go func() {
		for r := range fc.reqs {
			fn(r)
		}
	}()
}

// dialFake starts a fake server and connects a Conn to it.
func dialFake(t *testing.T, opts ...Option) (*Conn, *fakeConn) {
	t.Helper()
	s := newFakeServer(t, fakeGreeting)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, s.path, opts...)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c, s.conn(t)
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// recvEvent receives one event or fails the test.
func recvEvent(t *testing.T, ch <-chan Event) Event {
	t.Helper()
	return recvWithin(t, ch, "event channel closed", "no event within 5s")
}

// expectClosed checks that ch is closed (after any remaining events).
func expectClosed(t *testing.T, ch <-chan Event) {
	t.Helper()
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				return
			}
			t.Errorf("unexpected event after the end: %+v", ev)
		case <-time.After(5 * time.Second):
			t.Fatal("event channel not closed within 5s")
		}
	}
}

func isDisconnect(err error) bool { return errors.Is(err, ErrDisconnected) }

func newTestLogger(mu *sync.Mutex, w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(lockedWriter{mu, w}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
