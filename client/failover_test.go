package client

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// apiServer is an httptest https server answering every GET with an object naming it,
// counting requests, and answering 503 while unavailable is set.
type apiServer struct {
	*httptest.Server
	name        string
	hits        atomic.Int32
	unavailable atomic.Bool
}

func newAPIServer(t *testing.T, name string) *apiServer {
	t.Helper()
	s := &apiServer{name: name}
	s.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		if s.unavailable.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			_ = json.NewEncoder(w).Encode(v1alpha1.Status{TypeMeta: v1alpha1.TypeMeta{Kind: "Status"}, Status: "Failure", Code: 503, Reason: v1alpha1.ReasonServiceUnavailable, Message: name + ": store unavailable"})
			return
		}
		if r.URL.Query().Get("watch") == "true" {
			w.WriteHeader(http.StatusOK)
			obj, _ := json.Marshal(map[string]string{"server": name})
			_ = json.NewEncoder(w).Encode(v1alpha1.WatchEvent{Type: "ADDED", Object: obj})
			w.(http.Flusher).Flush()
			<-r.Context().Done()
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]string{"server": name, "method": r.Method})
	}))
	t.Cleanup(s.Close)
	return s
}

// caFile writes the httptest servers' certificate (the same for all) as a CA file.
func caFile(t *testing.T, s *httptest.Server) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ca.crt")
	data := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Certificate().Raw})
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func getServer(t *testing.T, c *Client) (string, error) {
	t.Helper()
	var out map[string]string
	err := c.Get(context.Background(), "nodes", "", "n1", &out)
	return out["server"], err
}

// TestFailoverUnreachable: with the first server down (connection refused), requests go to
// the second, which stays in use afterwards; when it goes down too and the first is back,
// the client returns to the first.
func TestFailoverUnreachable(t *testing.T) {
	a, b := newAPIServer(t, "a"), newAPIServer(t, "b")
	var moves []string
	c, err := New(Config{Server: a.URL + "," + b.URL, Token: "tok", CAFile: caFile(t, a.Server),
		OnFailover: func(from, to string, err error) { moves = append(moves, from+">"+to+":"+fmt.Sprint(err != nil)) }})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := getServer(t, c); err != nil || got != "a" {
		t.Fatalf("first request answered by %q, %v; want a", got, err)
	}
	a.CloseClientConnections()
	a.Listener.Close() // connections to a are now refused
	for i := 0; i < 3; i++ {
		if got, err := getServer(t, c); err != nil || got != "b" {
			t.Fatalf("with a down: answered by %q, %v; want b", got, err)
		}
	}
	if c.Server() != b.URL {
		t.Errorf("Server() = %s after failover, want %s", c.Server(), b.URL)
	}
	if len(moves) != 1 || moves[0] != a.URL+">"+b.URL+":true" {
		t.Errorf("OnFailover heard %v, want one move from a to b with its error", moves)
	}
	if got := c.Servers(); len(got) != 2 || got[0] != b.URL || got[1] != a.URL {
		t.Errorf("Servers() = %v, want b then a", got)
	}
	// A write fails over too: it never reached a.
	var out map[string]string
	if err := c.WithUserAgent("test").Create(context.Background(), "nodes", "", map[string]string{"x": "y"}, &out); err != nil || out["server"] != "b" || out["method"] != http.MethodPost {
		t.Fatalf("POST: %v %v, want it answered by b", out, err)
	}
	b.CloseClientConnections()
	b.Listener.Close()
	_, err = getServer(t, c)
	if err == nil {
		t.Fatal("no error with every server down")
	}
	if !strings.Contains(err.Error(), "refused") {
		t.Errorf("error with every server down does not say why: %v", err)
	}
}

// TestFailover503: a server answering 503 (its store is gone) is failed over for reads and
// writes; a single server's 503 is returned as the API error it is.
func TestFailover503(t *testing.T) {
	a, b := newAPIServer(t, "a"), newAPIServer(t, "b")
	ca := caFile(t, a.Server)
	c, err := New(Config{Servers: []string{a.URL, b.URL}, CAFile: ca})
	if err != nil {
		t.Fatal(err)
	}
	a.unavailable.Store(true)
	if got, err := getServer(t, c); err != nil || got != "b" {
		t.Fatalf("with a answering 503: answered by %q, %v; want b", got, err)
	}
	var out map[string]string
	b.unavailable.Store(true)
	a.unavailable.Store(false)
	if err := c.Update(context.Background(), "nodes", "", "n1", map[string]string{}, &out); err != nil || out["server"] != "a" {
		t.Fatalf("PUT with b answering 503: %v %v, want a", out, err)
	}
	a.unavailable.Store(true)
	_, err = getServer(t, c)
	var apiErr *Error
	if !errors.As(err, &apiErr) || apiErr.Status.Code != 503 || Reason(err) != v1alpha1.ReasonServiceUnavailable {
		t.Fatalf("both answering 503: %v, want the API error 503 ServiceUnavailable", err)
	}
	single, err := New(Config{Server: b.URL, CAFile: ca})
	if err != nil {
		t.Fatal(err)
	}
	before := b.hits.Load()
	if _, err := getServer(t, single); Reason(err) != v1alpha1.ReasonServiceUnavailable {
		t.Fatalf("one server answering 503: %v", err)
	}
	if n := b.hits.Load() - before; n != 1 {
		t.Errorf("one server answering 503 was asked %d times, want 1", n)
	}
}

// TestFailoverWatch: a watch whose server dies ends with an error; the next watch (as the
// informers open after an error) is served by the other server.
func TestFailoverWatch(t *testing.T) {
	a, b := newAPIServer(t, "a"), newAPIServer(t, "b")
	c, err := New(Config{Server: a.URL + ", " + b.URL, CAFile: caFile(t, a.Server)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	first := func(w *Watcher) string {
		t.Helper()
		ev, ok := <-w.Events()
		if !ok {
			t.Fatalf("watch ended before its first event: %v", w.Err())
		}
		var o map[string]string
		_ = json.Unmarshal(ev.Object, &o)
		return o["server"]
	}
	w, err := c.Watch(ctx, "nodes", "", ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := first(w); got != "a" {
		t.Fatalf("watch served by %q, want a", got)
	}
	a.Listener.Close()
	a.CloseClientConnections()
	for range w.Events() {
	}
	w2, err := c.Watch(ctx, "nodes", "", ListOptions{})
	if err != nil {
		t.Fatalf("watch after a died: %v", err)
	}
	defer w2.Stop()
	if got := first(w2); got != "b" {
		t.Fatalf("watch after a died served by %q, want b", got)
	}
}

// TestNoReplayOfStreamedBody: a request whose body is a stream is not sent to a second
// server (it could not be sent again whole).
func TestNoReplayOfStreamedBody(t *testing.T) {
	a, b := newAPIServer(t, "a"), newAPIServer(t, "b")
	c, err := New(Config{Server: a.URL + "," + b.URL, CAFile: caFile(t, a.Server)})
	if err != nil {
		t.Fatal(err)
	}
	a.unavailable.Store(true)
	_, err = c.Stream(context.Background(), http.MethodPut, "/upload", nil, strings.NewReader("data"))
	if Reason(err) != v1alpha1.ReasonServiceUnavailable {
		t.Fatalf("streamed upload to a 503 server: %v, want its 503", err)
	}
	if b.hits.Load() != 0 {
		t.Errorf("the streamed body went to b too")
	}
}

// TestServerListErrors: bad lists are refused with errors naming the problem.
func TestServerListErrors(t *testing.T) {
	for _, tc := range []struct{ server, want string }{
		{"https://a:1,https://a:1", "given twice"},
		{"https://a:1,ftp://b", "scheme must be unix or https"},
		{"https://", "needs a host"},
	} {
		_, err := New(Config{Server: tc.server})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want %q", tc.server, err, tc.want)
		}
	}
	if got := SplitServers(" https://a:1 ,,https://b:2,"); fmt.Sprint(got) != "[https://a:1 https://b:2]" {
		t.Errorf("SplitServers = %v", got)
	}
}
