package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestHandshake(t *testing.T) {
	c, fc := dialFake(t)

	if got, want := c.Version().String(), "7.2.0 (fake)"; got != want {
		t.Errorf("Version = %q, want %q", got, want)
	}
	if g := c.Greeting(); len(g.Capabilities) != 1 || g.Capabilities[0] != "oob" {
		t.Errorf("Capabilities = %v, want [oob]", g.Capabilities)
	}
	fc.mu.Lock()
	caps, order := fc.caps, fc.order
	fc.mu.Unlock()
	if len(order) == 0 || order[0] != "qmp_capabilities" || len(caps) != 1 {
		t.Fatalf("server saw %v, want qmp_capabilities first and once", order)
	}
	if caps[0].Arguments != nil {
		t.Errorf("qmp_capabilities sent arguments %s, want none (no capability enabled)", caps[0].Arguments)
	}
	if _, ok := decodeID(caps[0].ID); !ok {
		t.Errorf("qmp_capabilities id = %s, want an unsigned integer", caps[0].ID)
	}
	if c.Err() != nil {
		t.Errorf("Err() = %v on a live connection", c.Err())
	}
	select {
	case <-c.Done():
		t.Error("Done closed on a live connection")
	default:
	}
}

func TestHandshakeFailures(t *testing.T) {
	t.Run("not a greeting", func(t *testing.T) {
		s := newFakeServer(t, `{"return": {}}`)
		_, err := Dial(testCtx(t), s.path)
		if !errors.Is(err, ErrProtocol) {
			t.Fatalf("Dial = %v, want ErrProtocol", err)
		}
	})
	t.Run("garbage", func(t *testing.T) {
		s := newFakeServer(t, `Welcome to my server`)
		_, err := Dial(testCtx(t), s.path)
		if !errors.Is(err, ErrProtocol) {
			t.Fatalf("Dial = %v, want ErrProtocol", err)
		}
	})
	t.Run("silent server", func(t *testing.T) {
		s := newFakeServer(t, "")
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := Dial(ctx, s.path)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Dial = %v, want DeadlineExceeded", err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("Dial took %v", d)
		}
	})
	t.Run("default timeout", func(t *testing.T) {
		s := newFakeServer(t, "")
		_, err := Dial(context.Background(), s.path, WithDefaultTimeout(100*time.Millisecond))
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Dial = %v, want DeadlineExceeded", err)
		}
	})
	t.Run("no socket", func(t *testing.T) {
		_, err := Dial(testCtx(t), filepath.Join(t.TempDir(), "nope.sock"))
		if !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("Dial = %v, want ErrNotExist", err)
		}
	})
}

func TestConcurrentOutOfOrder(t *testing.T) {
	c, fc := dialFake(t)
	const n = 32
	ctx := testCtx(t)

	type result struct {
		N    int    `json:"n"`
		Echo string `json:"echo"`
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	res := make([]result, n)
	for i := range n {
		wg.Go(func() {
			errs[i] = c.Execute(ctx, "echo", map[string]any{"n": i}, &res[i])
		})
	}

	// Collect every request, then answer in reverse order with events
	// sprinkled in between.
	reqs := make([]fakeRequest, n)
	for i := range n {
		reqs[i] = fc.next(t)
	}
	seen := map[string]bool{}
	for i := n - 1; i >= 0; i-- {
		r := reqs[i]
		if seen[string(r.ID)] {
			t.Fatalf("duplicate id %s", r.ID)
		}
		seen[string(r.ID)] = true
		var args struct{ N int }
		if err := json.Unmarshal(r.Arguments, &args); err != nil {
			t.Fatal(err)
		}
		if i%5 == 0 {
			fc.event("SOMETHING", map[string]int{"i": i}, time.Now())
		}
		fc.reply(r, map[string]any{"n": args.N, "echo": fmt.Sprint("reply-", args.N)})
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Errorf("call %d: %v", i, errs[i])
			continue
		}
		if res[i].N != i || res[i].Echo != fmt.Sprint("reply-", i) {
			t.Errorf("call %d got %+v", i, res[i])
		}
	}
}

func TestErrorReply(t *testing.T) {
	c, fc := dialFake(t)
	fc.serve(func(r fakeRequest) {
		switch r.Execute {
		case "device_add":
			fc.replyErr(r, ClassGenericError, "Duplicate device ID 'net0'")
		case "nope":
			fc.replyErr(r, ClassCommandNotFound, "The command nope has not been found")
		default:
			fc.reply(r, map[string]any{"status": "running", "running": true})
		}
	})
	ctx := testCtx(t)

	err := c.Execute(ctx, "device_add", map[string]string{"id": "net0"}, nil)
	var ce *CommandError
	if !errors.As(err, &ce) {
		t.Fatalf("err = %T %v, want *CommandError", err, err)
	}
	want := CommandError{Command: "device_add", Class: ClassGenericError, Desc: "Duplicate device ID 'net0'"}
	if *ce != want {
		t.Errorf("CommandError = %+v, want %+v", *ce, want)
	}
	if !strings.Contains(err.Error(), "Duplicate device ID") {
		t.Errorf("Error() = %q", err)
	}
	if err := c.Execute(ctx, "nope", nil, nil); !IsCommandError(err, ClassCommandNotFound) {
		t.Errorf("nope: %v, want CommandNotFound", err)
	}
	if isDisconnect(err) {
		t.Error("a command error must not look like a disconnect")
	}
	// The connection is still fine.
	st, err := c.QueryStatus(ctx)
	if err != nil || st != (StatusInfo{Status: StatusRunning, Running: true}) {
		t.Errorf("QueryStatus = %+v, %v", st, err)
	}
}

func TestResultDecoding(t *testing.T) {
	c, fc := dialFake(t)
	fc.serve(func(r fakeRequest) {
		switch r.Execute {
		case "query-cpus-fast":
			fc.sendRaw(`{"return": [{"thread-id": 7840, "props": {"core-id": 0, "thread-id": 0, "socket-id": 0}, "qom-path": "/machine/unattached/device[0]", "cpu-index": 0, "target": "x86_64"}], "id": ` + string(r.ID) + `}`)
		case "query-version":
			fc.sendRaw(`{"return": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian"}, "id": ` + string(r.ID) + `}`)
		default:
			fc.reply(r, "not an object")
		}
	})
	ctx := testCtx(t)
	cpus, err := c.QueryCPUsFast(ctx)
	if err != nil || len(cpus) != 1 {
		t.Fatalf("QueryCPUsFast = %+v, %v", cpus, err)
	}
	cpu := cpus[0]
	if cpu.ThreadID != 7840 || cpu.Target != "x86_64" || cpu.QOMPath != "/machine/unattached/device[0]" ||
		cpu.Props.CoreID == nil || *cpu.Props.CoreID != 0 || cpu.Props.NodeID != nil {
		t.Errorf("cpu = %+v", cpu)
	}
	v, err := c.QueryVersion(ctx)
	if err != nil || v.QEMU != (VersionTriple{7, 2, 22}) || v.Package != "Debian" {
		t.Errorf("QueryVersion = %+v, %v", v, err)
	}
	var out struct{ X int }
	err = c.Execute(ctx, "weird", nil, &out)
	if err == nil || isDisconnect(err) {
		t.Errorf("decoding a string into a struct: err = %v", err)
	}
}

func TestRequestEncoding(t *testing.T) {
	c, fc := dialFake(t)
	ctx := testCtx(t)
	if err := c.Execute(ctx, "x", []int{1}, nil); err == nil {
		t.Error("array arguments accepted")
	}
	if err := c.Execute(ctx, "x", make(chan int), nil); err == nil {
		t.Error("unencodable arguments accepted")
	}
	if err := c.Execute(ctx, "", nil, nil); err == nil {
		t.Error("empty command accepted")
	}
	fc.serve(func(r fakeRequest) { fc.reply(r, struct{}{}) })
	_ = c.Execute(ctx, "a", nil, nil)
	_ = c.Execute(ctx, "b", struct{}{}, nil)
	_ = c.Execute(ctx, "c", map[string]any{"k": "<v>"}, nil)
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if got := strings.Join(fc.order, ","); got != "qmp_capabilities,a,b,c" {
		t.Errorf("server saw %s; invalid requests must not be sent", got)
	}
}

func TestEventsToSeveralSubscribers(t *testing.T) {
	c, fc := dialFake(t)
	fc.serve(func(r fakeRequest) { fc.reply(r, struct{}{}) })
	ctx := testCtx(t)

	fast1, cancel1 := c.Subscribe(0)
	defer cancel1()
	fast2, cancel2 := c.Subscribe(8)
	defer cancel2()
	slow, cancelSlow := c.Subscribe(0) // not read until the end
	defer cancelSlow()

	const n = 3000 // well past the channel buffers and the lag warning
	base := time.Unix(1795321188, 290732000)
	go func() {
		for i := range n {
			fc.event(EventStop, map[string]int{"i": i}, base.Add(time.Duration(i)*time.Microsecond))
		}
	}()

	check := func(name string, ch <-chan Event) {
		t.Helper()
		for i := range n {
			ev := recvEvent(t, ch)
			var d struct{ I int }
			if err := ev.DecodeData(&d); err != nil {
				t.Fatal(err)
			}
			if ev.Name != EventStop || d.I != i || !ev.Time.Equal(base.Add(time.Duration(i)*time.Microsecond)) {
				t.Fatalf("%s: event %d = %+v (%s)", name, i, ev, ev.Data)
			}
		}
	}
	var wg sync.WaitGroup
	wg.Go(func() { check("fast1", fast1) })
	wg.Go(func() { check("fast2", fast2) })
	wg.Wait()

	// The slow subscriber has not read anything, yet replies still flow.
	if err := c.Cont(ctx); err != nil {
		t.Fatalf("command while a subscriber lags: %v", err)
	}
	check("slow", slow)

	// Cancel closes that channel only.
	cancel2()
	cancel2() // idempotent
	expectClosed(t, fast2)
	fc.event(EventResume, nil, base)
	if ev := recvEvent(t, fast1); ev.Name != EventResume || ev.Data != nil {
		t.Errorf("fast1 got %+v", ev)
	}
	if ev := recvEvent(t, slow); ev.Name != EventResume {
		t.Errorf("slow got %+v", ev)
	}
}

func TestTimeoutDoesNotBreakOthers(t *testing.T) {
	c, fc := dialFake(t, WithDefaultTimeout(150*time.Millisecond))
	slowReqs := make(chan fakeRequest, 8)
	fc.serve(func(r fakeRequest) {
		if r.Execute == "slow" {
			slowReqs <- r // never answered in time
			return
		}
		fc.reply(r, map[string]string{"cmd": r.Execute})
	})

	// Explicit ctx deadline.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	var wg sync.WaitGroup
	var slowErr error
	wg.Go(func() { slowErr = c.Execute(ctx, "slow", nil, nil) })
	// Others succeed while "slow" is outstanding.
	for i := range 10 {
		var out map[string]string
		if err := c.Execute(testCtx(t), fmt.Sprint("fast", i), nil, &out); err != nil {
			t.Fatalf("fast%d: %v", i, err)
		}
	}
	wg.Wait()
	if !errors.Is(slowErr, context.DeadlineExceeded) || isDisconnect(slowErr) {
		t.Fatalf("slow = %v, want DeadlineExceeded", slowErr)
	}

	// Default timeout when ctx has none.
	start := time.Now()
	err := c.Execute(context.Background(), "slow", nil, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slow with default timeout = %v", err)
	}
	if d := time.Since(start); d < 100*time.Millisecond || d > 3*time.Second {
		t.Errorf("default timeout took %v", d)
	}

	// Cancellation, too.
	cctx, ccancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, ccancel)
	if err := c.Execute(cctx, "slow", nil, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("slow cancelled = %v", err)
	}

	// The late replies arrive now and are discarded; the connection works.
	for range 3 {
		fc.reply(<-slowReqs, map[string]string{"cmd": "late"})
	}
	var out map[string]string
	if err := c.Execute(testCtx(t), "after", nil, &out); err != nil || out["cmd"] != "after" {
		t.Fatalf("after late replies: %v %v", out, err)
	}
}

func TestDisconnect(t *testing.T) {
	c, fc := dialFake(t)
	events, cancel := c.Subscribe(0)
	defer cancel()
	ctx := testCtx(t)

	var wg sync.WaitGroup
	errs := make([]error, 5)
	for i := range errs {
		wg.Go(func() { errs[i] = c.Execute(ctx, "hang", nil, nil) })
	}
	for range errs {
		fc.next(t)
	}
	fc.event(EventShutdown, map[string]any{"guest": false, "reason": "host-qmp-quit"}, time.Now())
	fc.uc.Close()
	wg.Wait()

	for i, err := range errs {
		if !errors.Is(err, ErrDisconnected) || !errors.Is(err, io.EOF) {
			t.Errorf("pending call %d: %v, want ErrDisconnected wrapping EOF", i, err)
		}
	}
	if ev := recvEvent(t, events); ev.Name != EventShutdown {
		t.Errorf("first event %+v, want SHUTDOWN", ev)
	}
	ev := recvEvent(t, events)
	if ev.Name != EventDisconnected || ev.Time.IsZero() {
		t.Errorf("event %+v, want %s", ev, EventDisconnected)
	}
	var d struct{ Error string }
	if err := ev.DecodeData(&d); err != nil || !strings.Contains(d.Error, "EOF") {
		t.Errorf("disconnect data %s (%v)", ev.Data, err)
	}
	expectClosed(t, events)

	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed")
	}
	if err := c.Err(); !errors.Is(err, ErrDisconnected) {
		t.Errorf("Err() = %v", err)
	}
	if err := c.Execute(ctx, "later", nil, nil); !errors.Is(err, ErrDisconnected) {
		t.Errorf("Execute after disconnect = %v", err)
	}
	if err := c.Quit(ctx); !errors.Is(err, ErrDisconnected) {
		t.Errorf("Quit after disconnect = %v", err)
	}
	// Subscribing to an ended connection yields the final event only.
	late, lateCancel := c.Subscribe(1)
	defer lateCancel()
	if ev := recvEvent(t, late); ev.Name != EventDisconnected {
		t.Errorf("late subscriber got %+v", ev)
	}
	expectClosed(t, late)
}

func TestClose(t *testing.T) {
	c, fc := dialFake(t)
	events, cancel := c.Subscribe(0)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- c.Execute(testCtx(t), "hang", nil, nil) }()
	fc.next(t)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := <-errc; !errors.Is(err, ErrDisconnected) || !errors.Is(err, ErrClosed) {
		t.Errorf("pending call: %v", err)
	}
	if ev := recvEvent(t, events); ev.Name != EventDisconnected {
		t.Errorf("got %+v", ev)
	}
	expectClosed(t, events)
	if err := c.Err(); !errors.Is(err, ErrClosed) {
		t.Errorf("Err() = %v", err)
	}
}

func TestQuitToleratesEarlyHangup(t *testing.T) {
	c, fc := dialFake(t)
	fc.serve(func(r fakeRequest) {
		if r.Execute == "quit" {
			fc.event(EventShutdown, map[string]any{"guest": false}, time.Now())
			fc.uc.Close() // no reply
		}
	})
	if err := c.Quit(testCtx(t)); err != nil {
		t.Fatalf("Quit = %v", err)
	}
}

func TestMalformedLinesIgnored(t *testing.T) {
	var logs strings.Builder
	var mu sync.Mutex
	c, fc := dialFake(t, WithLogger(newTestLogger(&mu, &logs)))
	fc.serve(func(r fakeRequest) {
		fc.sendRaw(`this is not json`)
		fc.sendRaw(``)
		fc.sendRaw(`{"return": {}, "error": {}, "id": ` + string(r.ID) + `}`)
		fc.sendRaw(`{"error": {"class": "GenericError", "desc": "JSON parse error"}}`) // no id
		fc.sendRaw(`{"return": {}, "id": "someone-else"}`)
		fc.reply(r, 42)
	})
	var n int
	if err := c.Execute(testCtx(t), "x", nil, &n); err != nil || n != 42 {
		t.Fatalf("Execute = %d, %v", n, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(logs.String(), "malformed") || !strings.Contains(logs.String(), "without a usable id") {
		t.Errorf("logs:\n%s", logs.String())
	}
}

func TestMaxMessageSize(t *testing.T) {
	c, fc := dialFake(t, WithMaxMessageSize(1<<10))
	fc.serve(func(r fakeRequest) {
		fc.reply(r, strings.Repeat("x", 200<<10))
	})
	err := c.Execute(testCtx(t), "big", nil, nil)
	if !errors.Is(err, ErrDisconnected) || !errors.Is(err, ErrMessageTooLarge) {
		t.Fatalf("Execute = %v", err)
	}
}

func TestLargeMessage(t *testing.T) {
	c, fc := dialFake(t)
	big := strings.Repeat("y", 1<<20)
	fc.serve(func(r fakeRequest) { fc.reply(r, big) })
	var s string
	if err := c.Execute(testCtx(t), "big", nil, &s); err != nil || s != big {
		t.Fatalf("Execute = %d bytes, %v", len(s), err)
	}
}

func TestFDPassing(t *testing.T) {
	c, fc := dialFake(t)
	// The fake server reads each received descriptor's content and returns
	// it, like a tiny getfd that proves the descriptor arrived.
	fc.serve(func(r fakeRequest) {
		var contents []string
		for _, fd := range r.FDs {
			f := os.NewFile(uintptr(fd), "received")
			b := make([]byte, 100)
			n, _ := f.ReadAt(b, 0)
			contents = append(contents, string(b[:n]))
			f.Close()
		}
		fc.reply(r, map[string]any{"contents": contents})
	})
	dir := t.TempDir()
	mk := func(name, content string) *os.File {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	a, b := mk("a", "hello from a"), mk("b", "and b")
	ctx := testCtx(t)

	var out struct{ Contents []string }
	if err := c.ExecuteWithFiles(ctx, "getfd", map[string]string{"fdname": "a"}, &out, a); err != nil {
		t.Fatal(err)
	}
	if len(out.Contents) != 1 || out.Contents[0] != "hello from a" {
		t.Fatalf("server read %q", out.Contents)
	}
	out.Contents = nil
	if err := c.ExecuteWithFiles(ctx, "two", nil, &out, a, b); err != nil {
		t.Fatal(err)
	}
	if strings.Join(out.Contents, "|") != "hello from a|and b" {
		t.Fatalf("server read %q", out.Contents)
	}
	// Concurrent fd commands and plain commands: every descriptor lands
	// with its own command.
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			f := a
			want := "hello from a"
			if i%2 == 1 {
				f, want = b, "and b"
			}
			var o struct{ Contents []string }
			if err := c.ExecuteWithFiles(ctx, "getfd", nil, &o, f); err != nil {
				t.Error(err)
				return
			}
			if len(o.Contents) != 1 || o.Contents[0] != want {
				t.Errorf("call %d: server read %q, want %q", i, o.Contents, want)
			}
			var p struct{ Contents []string }
			if err := c.Execute(ctx, "plain", nil, &p); err != nil || len(p.Contents) != 0 {
				t.Errorf("plain call got fds %q (%v)", p.Contents, err)
			}
		})
	}
	wg.Wait()
	// The caller's files stay open and usable.
	buf := make([]byte, 5)
	if _, err := a.ReadAt(buf, 0); err != nil || string(buf) != "hello" {
		t.Errorf("file unusable after passing: %q %v", buf, err)
	}
	if err := c.GetFD(ctx, "x", b); err != nil {
		t.Errorf("GetFD: %v", err)
	}
	if err := c.ExecuteWithFiles(ctx, "getfd", nil, nil, nil); err == nil {
		t.Error("nil file accepted")
	}
	closed := mk("c", "")
	closed.Close()
	if err := c.ExecuteWithFiles(ctx, "getfd", nil, nil, closed); err == nil || isDisconnect(err) {
		t.Errorf("closed file: %v", err)
	}
	if err := c.Execute(ctx, "still-alive", nil, nil); err != nil {
		t.Errorf("after closed-file error: %v", err)
	}
}

// TestWriteBlockedByPeer checks that writes stuck because the peer stopped
// reading honour their context: a caller waiting for the write lock just
// times out, while a caller that got half a request onto the wire ends the
// connection (the stream cannot be resynchronized).
func TestWriteBlockedByPeer(t *testing.T) {
	c, fc := dialFake(t)
	fc.gate.Lock()
	defer fc.gate.Unlock()

	big := map[string]string{"pad": strings.Repeat("p", 4<<20)} // far beyond socket buffers
	bigErr := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		bigErr <- c.Execute(ctx, "big", big, nil)
	}()
	// Wait until "big" holds the write lock (and is stuck writing).
	for deadline := time.Now().Add(5 * time.Second); len(c.wmu) == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("big never started writing")
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err := c.Execute(ctx, "small", nil, nil)
	if !errors.Is(err, context.DeadlineExceeded) || isDisconnect(err) {
		t.Errorf("small (waiting for the write lock) = %v, want DeadlineExceeded", err)
	}

	select {
	case err := <-bigErr:
		if !isDisconnect(err) || !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("big (partially written) = %v, want ErrDisconnected wrapping a write timeout", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("blocked write ignored its context")
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("connection not ended after a partial write")
	}
}

// sanity: the errors package sees through our wrappers.
func TestErrorWrapping(t *testing.T) {
	err := callErr("cont", &disconnectError{cause: syscall.ECONNRESET})
	if !errors.Is(err, ErrDisconnected) || !errors.Is(err, syscall.ECONNRESET) {
		t.Fatal("wrapping broken")
	}
	if got := err.Error(); got != "qmp: cont: disconnected: connection reset by peer" {
		t.Errorf("Error() = %q", got)
	}
}

// TestOnEvent: a handler gets every event in order on the reader goroutine, then one
// EventDisconnected when the connection ends; after cancel it gets nothing more; a handler
// added to an ended connection gets the EventDisconnected at once.
func TestOnEvent(t *testing.T) {
	c, fc := dialFake(t)
	fc.serve(func(r fakeRequest) { fc.reply(r, struct{}{}) })
	var mu sync.Mutex
	var got, gotCancelled []string
	done := make(chan struct{})
	cancel := c.OnEvent(func(ev Event) {
		mu.Lock()
		got = append(got, ev.Name)
		mu.Unlock()
		if ev.Name == EventDisconnected {
			close(done)
		}
	})
	defer cancel()
	stopped := make(chan struct{}, 1)
	cancelled := c.OnEvent(func(ev Event) {
		mu.Lock()
		gotCancelled = append(gotCancelled, ev.Name)
		mu.Unlock()
		select {
		case stopped <- struct{}{}:
		default:
		}
	})
	fc.event(EventStop, nil, time.Now())
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("no event reached the second handler")
	}
	cancelled()
	fc.event(EventResume, nil, time.Now())
	fc.event(EventReset, nil, time.Now())
	// A command after the events: its reply comes after them, so they have been handled.
	if err := c.Execute(testCtx(t), "cont", nil, nil); err != nil {
		t.Fatal(err)
	}
	c.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("no EventDisconnected after Close")
	}
	mu.Lock()
	defer mu.Unlock()
	want := []string{EventStop, EventResume, EventReset, EventDisconnected}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("handler got %v, want %v", got, want)
	}
	if strings.Join(gotCancelled, ",") != EventStop {
		t.Errorf("cancelled handler got %v, want only %s", gotCancelled, EventStop)
	}
	late := ""
	c.OnEvent(func(ev Event) { late = ev.Name })
	if late != EventDisconnected {
		t.Errorf("handler added after the end got %q, want %s at once", late, EventDisconnected)
	}
}
