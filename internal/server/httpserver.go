package server

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/images"
)

// httpLimits are the timeouts and per-client limits of the API's HTTP servers.
//
// Timeouts. ReadHeaderTimeout bounds reading a request's headers (and the TLS handshake).
// ReadTimeout bounds reading a whole request with its body (an API object is at most a few
// MiB), from its first byte. IdleTimeout closes a keep-alive connection that sends no next
// request (it was kept forever). net/http lifts the read deadline once a request is read (it
// then waits for the client to close in the background), so a watch, a console, a VNC session
// or a download runs as long as it needs, whatever ReadTimeout is. Upload bodies (PUT/POST to
// /upload/TOKEN: images of many GiB, streamed for minutes or hours) are the one long read:
// they have no overall limit, but each read of the body pushes the deadline UploadIdle ahead,
// so only an upload that stalls is cut. No WriteTimeout: it would cut long answers; a client
// that stops reading meets TCP's own timeouts.
//
// Per-client limits (the TCP listener only; a client is a remote IP address, since user
// tokens are all admin today and a node's credential is one per host): at most ConnsPerClient open connections and
// StreamsPerClient concurrent watches, consoles and VNC sessions. A connection or stream
// over the limit is answered 429 TooManyRequests with Retry-After; connections past twice
// the limit are closed at once without an answer.
type httpLimits struct {
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	IdleTimeout       time.Duration
	UploadIdle        time.Duration
	ConnsPerClient    int
	StreamsPerClient  int
	RetryAfter        time.Duration
}

// defaultHTTPLimits are the limits serve uses.
var defaultHTTPLimits = httpLimits{
	ReadHeaderTimeout: 10 * time.Second,
	ReadTimeout:       2 * time.Minute,
	IdleTimeout:       2 * time.Minute,
	UploadIdle:        2 * time.Minute,
	ConnsPerClient:    128,
	StreamsPerClient:  64,
	RetryAfter:        5 * time.Second,
}

// newHTTPServer makes the HTTP server of one listener: the local socket, or the TCP listener
// that remote clients and agents use (remote). The remote listener should come from
// limitConns so that connections are counted per client.
func newHTTPServer(h http.Handler, remote bool) *http.Server {
	return newHTTPServerWith(h, remote, defaultHTTPLimits)
}

func newHTTPServerWith(h http.Handler, remote bool, lim httpLimits) *http.Server {
	h = deadlines(h, lim)
	if remote {
		h = limitStreams(h, lim)
		h = refuseOverLimit(h, lim)
	}
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: lim.ReadHeaderTimeout,
		ReadTimeout:       lim.ReadTimeout,
		IdleTimeout:       lim.IdleTimeout,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if tc, ok := c.(*tls.Conn); ok {
				c = tc.NetConn()
			}
			if cc, ok := c.(*countedConn); ok && cc.over {
				ctx = context.WithValue(ctx, overLimitKey{}, cc.ip)
			}
			return ctx
		},
	}
}

func isUpload(r *http.Request) bool {
	return strings.HasPrefix(r.URL.Path, images.UploadPathPrefix) && (r.Method == http.MethodPut || r.Method == http.MethodPost)
}

// deadlines gives upload bodies a read deadline that moves with every read, in place of
// ReadTimeout.
func deadlines(h http.Handler, lim httpLimits) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if isUpload(r) && r.Body != nil && r.Body != http.NoBody {
			rc := http.NewResponseController(w)
			_ = rc.SetReadDeadline(time.Now().Add(lim.UploadIdle))
			r.Body = &uploadBody{ReadCloser: r.Body, rc: rc, idle: lim.UploadIdle}
		}
		h.ServeHTTP(w, r)
	})
}

// uploadBody moves the connection's read deadline idle ahead before each read until the body
// ends (net/http then clears it for its background read, which must not time out).
type uploadBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	idle time.Duration
	done bool
}

func (b *uploadBody) Read(p []byte) (int, error) {
	if b.done {
		return b.ReadCloser.Read(p)
	}
	_ = b.rc.SetReadDeadline(time.Now().Add(b.idle))
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		b.done = true
	}
	return n, err
}

type overLimitKey struct{}

// refuseOverLimit answers requests on a connection past its client's limit with 429 and
// closes the connection.
func refuseOverLimit(h http.Handler, lim httpLimits) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ip, over := r.Context().Value(overLimitKey{}).(string); over {
			w.Header().Set("Connection", "close")
			tooMany(w, lim, fmt.Sprintf("too many connections from %s: at most %d at a time; close idle ones or retry later", ip, lim.ConnsPerClient))
			return
		}
		h.ServeHTTP(w, r)
	})
}

// isStream reports whether a request holds its connection open for long: a watch, or a
// VM's console or VNC websocket.
func isStream(r *http.Request) bool {
	if r.Method != http.MethodGet {
		return false
	}
	if w := r.URL.Query().Get("watch"); w == "true" || w == "1" {
		return true
	}
	return strings.HasSuffix(r.URL.Path, "/console") || strings.HasSuffix(r.URL.Path, "/vnc")
}

// limitStreams bounds the concurrent streams of each client.
func limitStreams(h http.Handler, lim httpLimits) http.Handler {
	var mu sync.Mutex
	open := map[string]int{}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !isStream(r) {
			h.ServeHTTP(w, r)
			return
		}
		ip := clientIP(r.RemoteAddr)
		mu.Lock()
		if open[ip] >= lim.StreamsPerClient {
			mu.Unlock()
			tooMany(w, lim, fmt.Sprintf("too many watches and streams from %s: at most %d at a time; stop some or retry later", ip, lim.StreamsPerClient))
			return
		}
		open[ip]++
		mu.Unlock()
		defer func() {
			mu.Lock()
			if open[ip]--; open[ip] <= 0 {
				delete(open, ip)
			}
			mu.Unlock()
		}()
		h.ServeHTTP(w, r)
	})
}

func tooMany(w http.ResponseWriter, lim httpLimits, msg string) {
	secs := int(lim.RetryAfter / time.Second)
	if secs < 1 {
		secs = 1
	}
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusTooManyRequests)
	st := v1alpha1.Status{TypeMeta: v1alpha1.TypeMeta{APIVersion: "v1", Kind: "Status"}, Status: "Failure",
		Reason: v1alpha1.ReasonTooManyRequests, Code: http.StatusTooManyRequests, Message: msg}
	data, _ := json.Marshal(st)
	_, _ = w.Write(append(data, '\n'))
}

// clientIP is the key the per-client limits count under: the IPv4 address, or the /64 of an
// IPv6 address (one host commonly holds a whole /64 and may pick any address of it).
func clientIP(addr string) string {
	h := addr
	if host, _, err := net.SplitHostPort(addr); err == nil {
		h = host
	}
	a, err := netip.ParseAddr(h)
	if err != nil {
		return h
	}
	a = a.Unmap().WithZone("")
	if a.Is6() {
		return netip.PrefixFrom(a, 64).Masked().String()
	}
	return a.String()
}

// limitConns counts the open connections of l per remote IP. A connection past max is
// accepted but marked, so that its requests are answered 429 (see refuseOverLimit); one past
// twice max is closed at once.
func limitConns(l net.Listener, max int) net.Listener {
	return &connLimiter{Listener: l, max: max, open: map[string]int{}}
}

type connLimiter struct {
	net.Listener
	max  int
	mu   sync.Mutex
	open map[string]int
}

func (l *connLimiter) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := clientIP(c.RemoteAddr().String())
		l.mu.Lock()
		n := l.open[ip]
		if n >= 2*l.max {
			l.mu.Unlock()
			c.Close()
			continue
		}
		l.open[ip] = n + 1
		l.mu.Unlock()
		return &countedConn{Conn: c, l: l, ip: ip, over: n >= l.max}, nil
	}
}

func (l *connLimiter) release(ip string) {
	l.mu.Lock()
	if l.open[ip]--; l.open[ip] <= 0 {
		delete(l.open, ip)
	}
	l.mu.Unlock()
}

// countedConn is a connection counted by a connLimiter until it is closed.
type countedConn struct {
	net.Conn
	l    *connLimiter
	ip   string
	over bool
	once sync.Once
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.ip) })
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
