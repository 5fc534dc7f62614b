package server

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

var testLimits = httpLimits{
	ReadHeaderTimeout: 2 * time.Second,
	ReadTimeout:       400 * time.Millisecond,
	IdleTimeout:       400 * time.Millisecond,
	UploadIdle:        400 * time.Millisecond,
	ConnsPerClient:    2,
	StreamsPerClient:  2,
	RetryAfter:        3 * time.Second,
}

// serveTest serves h on a loopback listener (wrapped by wrap when not nil) and returns its
// address.
func serveTest(t *testing.T, h http.Handler, remote bool, lim httpLimits, wrap func(net.Listener) net.Listener) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if wrap != nil {
		l = wrap(l)
	}
	srv := newHTTPServerWith(h, remote, lim)
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		srv.Close()
	})
	return addr
}

func okHandler(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	_, _ = io.WriteString(w, "ok")
}

// TestDefaultHTTPLimits: the servers serve gets have every timeout and limit set.
func TestDefaultHTTPLimits(t *testing.T) {
	for _, remote := range []bool{false, true} {
		s := newHTTPServer(http.NotFoundHandler(), remote)
		if s.ReadHeaderTimeout <= 0 || s.ReadTimeout <= 0 || s.IdleTimeout <= 0 {
			t.Errorf("remote=%v: ReadHeaderTimeout %v, ReadTimeout %v, IdleTimeout %v: want all set", remote, s.ReadHeaderTimeout, s.ReadTimeout, s.IdleTimeout)
		}
	}
	l := defaultHTTPLimits
	if l.UploadIdle <= 0 || l.ConnsPerClient <= 0 || l.StreamsPerClient <= 0 || l.RetryAfter <= 0 {
		t.Errorf("default limits %+v: want all set", l)
	}
}

// TestIdleKeepAliveClosed: a keep-alive connection that sends no next request is closed
// after IdleTimeout (it was served forever).
func TestIdleKeepAliveClosed(t *testing.T) {
	addr := serveTest(t, http.HandlerFunc(okHandler), true, testLimits, nil)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	start := time.Now()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("idle connection: read %v, want EOF (closed by the server)", err)
	}
	if d := time.Since(start); d < testLimits.IdleTimeout/2 || d > 3*time.Second {
		t.Errorf("idle connection closed after %v, want about %v", d, testLimits.IdleTimeout)
	}
}

// TestSlowBodyCut: a request body that stalls is cut after ReadTimeout.
func TestSlowBodyCut(t *testing.T) {
	readErr := make(chan error, 1)
	addr := serveTest(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := io.ReadAll(r.Body)
		readErr <- err
	}), true, testLimits, nil)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /apis/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
	select {
	case err := <-readErr:
		if err == nil {
			t.Fatal("the handler read a stalled body without an error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a stalled request body was not cut within 5s")
	}
}

// TestUploadOutlivesReadTimeout: an upload body that keeps coming is read to its end
// however long it takes; one that stalls for UploadIdle is cut.
func TestUploadOutlivesReadTimeout(t *testing.T) {
	got := make(chan string, 2)
	addr := serveTest(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			got <- "error: " + err.Error()
			return
		}
		got <- string(b)
	}), true, testLimits, nil)
	upload := func(pause time.Duration) string {
		pr, pw := io.Pipe()
		go func() {
			for i := 0; i < 8; i++ {
				time.Sleep(pause)
				if _, err := pw.Write([]byte("0123456789")); err != nil {
					return
				}
			}
			pw.Close()
		}()
		req, _ := http.NewRequest("PUT", "http://"+addr+"/upload/tok", pr)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		pr.CloseWithError(io.ErrClosedPipe)
		select {
		case s := <-got:
			return s
		case <-time.After(10 * time.Second):
			return "no answer"
		}
	}
	// 8 pieces, one every 100 ms: 0.8 s in all, twice ReadTimeout.
	if s := upload(100 * time.Millisecond); s != strings.Repeat("0123456789", 8) {
		t.Errorf("a slow but steady upload: the handler got %q", s)
	}
	if s := upload(2 * testLimits.UploadIdle); !strings.HasPrefix(s, "error:") {
		t.Errorf("an upload stalling for twice UploadIdle: the handler got %q, want a read error", s)
	}
}

// TestLongAnswersOutliveReadTimeout: a watch (no body) and a request with a body whose
// answer takes longer than ReadTimeout keep their context and finish (net/http lifts the
// read deadline once the request is read; this keeps it so).
func TestLongAnswersOutliveReadTimeout(t *testing.T) {
	addr := serveTest(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		for i := 0; i < 8; i++ {
			select {
			case <-r.Context().Done():
				return
			case <-time.After(150 * time.Millisecond):
			}
			fmt.Fprintf(w, "line %d\n", i)
			_ = http.NewResponseController(w).Flush()
		}
	}), true, testLimits, nil)
	for _, req := range []func() (*http.Response, error){
		func() (*http.Response, error) { return http.Get("http://" + addr + "/apis/x?watch=true") },
		func() (*http.Response, error) {
			return http.Post("http://"+addr+"/apis/x", "application/json", strings.NewReader(`{"a":1}`))
		},
	} {
		resp, err := req()
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || strings.Count(string(b), "\n") != 8 {
			t.Errorf("a 1.2 s answer with a ReadTimeout of %v: got %q, %v; want 8 lines", testLimits.ReadTimeout, b, err)
		}
	}
}

func checkTooMany(t *testing.T, resp *http.Response, what string) {
	t.Helper()
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("%s: HTTP %d, want 429", what, resp.StatusCode)
	}
	if ra := resp.Header.Get("Retry-After"); ra != "3" {
		t.Errorf("%s: Retry-After %q, want 3", what, ra)
	}
	var st v1alpha1.Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil || st.Reason != v1alpha1.ReasonTooManyRequests || !strings.Contains(st.Message, "too many") {
		t.Errorf("%s: Status %+v, %v; want reason TooManyRequests and a message", what, st, err)
	}
}

// TestConnectionLimitPerClient: past ConnsPerClient open connections from one address, a
// request is answered 429 with Retry-After; past twice the limit a connection is closed at
// once; a closed connection frees its place. Through TLS, as serve's TCP listener.
func TestConnectionLimitPerClient(t *testing.T) {
	ss := &selfSigned{dir: t.TempDir(), listen: "127.0.0.1:0", now: time.Now}
	cert, err := ss.certificate()
	if err != nil {
		t.Fatal(err)
	}
	addr := serveTest(t, http.HandlerFunc(okHandler), true, testLimits, func(l net.Listener) net.Listener {
		return tls.NewListener(limitConns(l, testLimits.ConnsPerClient), &tls.Config{Certificates: []tls.Certificate{*cert}})
	})
	dial := func() (*tls.Conn, *bufio.Reader) {
		c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // test server
		if err != nil {
			t.Fatalf("dialing: %v", err)
		}
		t.Cleanup(func() { c.Close() })
		return c, bufio.NewReader(c)
	}
	get := func(c *tls.Conn, br *bufio.Reader) (*http.Response, error) {
		fmt.Fprintf(c, "GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
		return http.ReadResponse(br, nil)
	}
	var conns []*tls.Conn
	for i := 0; i < testLimits.ConnsPerClient; i++ {
		c, br := dial()
		resp, err := get(c, br)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("connection %d within the limit: %v %v", i+1, resp, err)
		}
		resp.Body.Close()
		conns = append(conns, c)
	}
	c, br := dial()
	resp, err := get(c, br)
	if err != nil {
		t.Fatal(err)
	}
	checkTooMany(t, resp, "a connection past the limit")
	if !resp.Close {
		t.Error("the server keeps a connection past the limit open")
	}
	// Past twice the limit the server closes without a word.
	var extra []net.Conn
	for i := testLimits.ConnsPerClient + 1; i < 2*testLimits.ConnsPerClient; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		extra = append(extra, c)
	}
	last, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = last.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := last.Read(make([]byte, 1)); err != io.EOF && !isReset(err) {
		t.Errorf("a connection past twice the limit: read %v, want it closed", err)
	}
	last.Close()
	for _, c := range extra {
		c.Close()
	}
	// Closing one frees a place (once the server has seen the others close too).
	conns[0].Close()
	deadline := time.Now().Add(3 * time.Second)
	for {
		c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // test server
		if err == nil {
			resp, err := get(c, bufio.NewReader(c))
			c.Close()
			if err == nil && resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("after closing a connection, a new one still fails: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func isReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset")
}

// TestStreamLimitPerClient: past StreamsPerClient concurrent watches from one address, a
// watch is answered 429 with Retry-After; other requests still pass, and an ended watch
// frees its place. The local socket's server has no such limit.
func TestStreamLimitPerClient(t *testing.T) {
	release := make(chan struct{})
	var running atomic.Int32
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("watch") == "true" {
			running.Add(1)
			defer running.Add(-1)
			w.WriteHeader(200)
			_ = http.NewResponseController(w).Flush()
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return
		}
		_, _ = io.WriteString(w, "ok")
	})
	for _, remote := range []bool{true, false} {
		addr := serveTest(t, h, remote, testLimits, nil)
		var open []*http.Response
		for i := 0; i < testLimits.StreamsPerClient; i++ {
			resp, err := http.Get("http://" + addr + "/apis/x?watch=true")
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("watch %d within the limit: %v %v", i+1, resp, err)
			}
			open = append(open, resp)
		}
		resp, err := http.Get("http://" + addr + "/apis/x?watch=true")
		if err != nil {
			t.Fatal(err)
		}
		if !remote {
			if resp.StatusCode != 200 {
				t.Errorf("the local socket limits watches: HTTP %d", resp.StatusCode)
			}
			resp.Body.Close()
			for _, r := range open {
				r.Body.Close()
			}
			continue
		}
		checkTooMany(t, resp, "a watch past the limit")
		if resp, err := http.Get("http://" + addr + "/apis/x"); err != nil || resp.StatusCode != 200 {
			t.Errorf("a plain GET while the watches are at the limit: %v %v", resp, err)
		} else {
			resp.Body.Close()
		}
		open[0].Body.Close()
		deadline := time.Now().Add(3 * time.Second)
		for {
			resp, err := http.Get("http://" + addr + "/apis/x?watch=true")
			if err == nil && resp.StatusCode == 200 {
				open[0] = resp
				break
			}
			if err == nil {
				resp.Body.Close()
			}
			if time.Now().After(deadline) {
				t.Fatalf("after one watch ended, a new one still gets %v %v", resp, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		for _, r := range open {
			r.Body.Close()
		}
	}
	close(release)
}

func TestClientKey(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.7:4242":             "192.0.2.7",
		"[::ffff:192.0.2.7]:1":       "192.0.2.7",
		"[2001:db8:1:2:aaaa::1]:443": "2001:db8:1:2::/64",
		"[2001:db8:1:2:ffff::9]:443": "2001:db8:1:2::/64",
		"[fe80::1%eth0]:80":          "fe80::/64",
		"@":                          "@", // a unix socket peer
		"[2001:db8:1:3::1]:443":      "2001:db8:1:3::/64",
	} {
		if got := clientIP(in); got != want {
			t.Errorf("clientIP(%q) = %q, want %q", in, got, want)
		}
	}
}
