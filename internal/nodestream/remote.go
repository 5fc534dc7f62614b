package nodestream

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/coder/websocket"

	"github.com/rakhsh/rakhsh/internal/errs"
)

// Remote opens streams at a node agent's stream service, authenticated by one ticket per
// stream. It is what an API server uses for a VM on a node other than its own.
type Remote struct {
	// Node names the node in errors.
	Node string
	// Address is the service's host:port; Fingerprint the certificate it must present.
	Address     string
	Fingerprint string
	// Ticket returns a fresh single-use ticket for one stream of the VM uid.
	Ticket func(ctx context.Context, uid, stream string) (string, error)
	// DialTimeout bounds the connection and TLS handshake (default 10 s).
	DialTimeout time.Duration
}

var _ Streams = (*Remote)(nil)

func (r *Remote) httpClient() (*http.Client, error) {
	tc, err := PinnedTLSConfig(r.Fingerprint)
	if err != nil {
		return nil, errs.New(errs.ErrUnavailable, "node %q published a stream endpoint with a bad certificate fingerprint: %v", r.Node, err)
	}
	timeout := r.DialTimeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	tr := &http.Transport{
		TLSClientConfig:       tc,
		DialContext:           (&net.Dialer{Timeout: timeout}).DialContext,
		TLSHandshakeTimeout:   timeout,
		ResponseHeaderTimeout: 30 * time.Second,
		DisableKeepAlives:     true,
		ForceAttemptHTTP2:     false,
	}
	return &http.Client{Transport: tr}, nil
}

func (r *Remote) url(scheme, uid, stream string, q url.Values) string {
	u := url.URL{Scheme: scheme, Host: r.Address, Path: StreamPath(uid, stream), RawQuery: q.Encode()}
	return u.String()
}

// unreachable wraps a failure to talk to the service.
func (r *Remote) unreachable(err error) error {
	return errs.New(errs.ErrUnavailable, "cannot reach the stream service of node %q at %s: %v", r.Node, r.Address, err)
}

// fromService classes an error answer of the service: a refused ticket is the API server's
// problem, not the caller's, so it becomes Unavailable.
func (r *Remote) fromService(code int, body []byte) error {
	err := errorFromStatus(code, body)
	if code == http.StatusUnauthorized || code == http.StatusForbidden {
		return errs.New(errs.ErrUnavailable, "the stream service of node %q at %s refused this API server: %v", r.Node, r.Address, err)
	}
	return err
}

// ticketed returns the HTTP client for the node's stream service and a ticket for stream of
// the VM uid.
func (r *Remote) ticketed(ctx context.Context, uid, stream string) (*http.Client, string, error) {
	hc, err := r.httpClient()
	if err != nil {
		return nil, "", err
	}
	ticket, err := r.Ticket(ctx, uid, stream)
	if err != nil {
		return nil, "", err
	}
	return hc, ticket, nil
}

// ReadLog implements Streams.
func (r *Remote) ReadLog(ctx context.Context, uid, source string, limit int64) ([]byte, error) {
	if _, _, err := CheckSource(source); err != nil {
		return nil, err
	}
	hc, ticket, err := r.ticketed(ctx, uid, StreamLog)
	if err != nil {
		return nil, err
	}
	q := url.Values{}
	if source != "" {
		q.Set("source", source)
	}
	if limit > 0 {
		q.Set("limitBytes", strconv.FormatInt(limit, 10))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.url("https", uid, StreamLog, q), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set(TicketHeader, "Bearer "+ticket)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, r.unreachable(err)
	}
	defer resp.Body.Close()
	max := limit
	if max <= 0 {
		max = DefaultLogLimit
	}
	// The QEMU log is two files, each at most limit bytes.
	data, err := io.ReadAll(io.LimitReader(resp.Body, 2*max+4096))
	if err != nil {
		return nil, r.unreachable(err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, r.fromService(resp.StatusCode, data)
	}
	return data, nil
}

// Dial implements Streams. The connection lives until it is closed or ctx ends.
func (r *Remote) Dial(ctx context.Context, uid, stream string) (net.Conn, error) {
	if stream != StreamConsole && stream != StreamVNC {
		return nil, errs.New(errs.ErrBadRequest, "stream %q: want console or vnc", stream)
	}
	hc, ticket, err := r.ticketed(ctx, uid, stream)
	if err != nil {
		return nil, err
	}
	h := http.Header{}
	h.Set(TicketHeader, "Bearer "+ticket)
	ws, resp, err := websocket.Dial(ctx, r.url("wss", uid, stream, nil), &websocket.DialOptions{HTTPClient: hc, HTTPHeader: h, Subprotocols: []string{"binary"}})
	if err != nil {
		if resp != nil && resp.StatusCode >= 300 {
			var body []byte
			if resp.Body != nil {
				body, _ = io.ReadAll(io.LimitReader(resp.Body, 64<<10))
				resp.Body.Close()
			}
			return nil, r.fromService(resp.StatusCode, body)
		}
		return nil, r.unreachable(err)
	}
	ws.SetReadLimit(1 << 20)
	return websocket.NetConn(ctx, ws, websocket.MessageBinary), nil
}

// String names the endpoint for logs.
func (r *Remote) String() string { return fmt.Sprintf("node %s at %s", r.Node, r.Address) }
