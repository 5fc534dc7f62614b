// Package client is the Go client of the Rakhsh API. The CLI, the node agent, the tests and
// third-party programs use it. It speaks plain HTTP/JSON to a server reached either over the
// local unix socket (no token needed: local root is admin) or over HTTPS with a bearer token.
package client

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// DefaultSocket is where `rakhsh serve` listens by default.
const DefaultSocket = "/var/lib/rakhsh/rakhsh.sock"

// Config says how to reach the server.
type Config struct {
	// Server is unix:///path/to/rakhsh.sock or https://host:port. Empty means the default socket.
	// Several servers of one control plane may be given separated by commas
	// (https://a:6443,https://b:6443): see Servers.
	Server string
	// Servers are more API servers of the same control plane, after those in Server. The
	// client uses one at a time and fails over to the next (wrapping around) when the one in
	// use cannot be reached or answers 503 Service Unavailable; it then stays with the server
	// that answered. See Do for which requests are sent again.
	Servers []string
	// Token is the bearer token for TCP connections. It is sent only over https (or the
	// unix socket): New refuses a token with a plain http:// server.
	Token string
	// CAFile is a PEM file of CA certificates to trust for https (e.g. the server's ca.crt).
	CAFile string
	// Insecure skips TLS verification (for self-signed test servers only).
	Insecure bool
	// Timeout bounds each non-streaming request, failovers included; 0 means 60 s.
	Timeout time.Duration
	// DialContext, when set, opens the TCP connections to an https (or http) server in place
	// of a plain net.Dialer: for example one that dials from inside another network
	// namespace. TLS is still done by the client.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// OnFailover, when set, is told each time the client moves from the server it used
	// (from, which failed with err) to another that answered (to): the agent logs it.
	OnFailover func(from, to string, err error)
}

// endpoint is one API server of the client.
type endpoint struct {
	server string       // as configured
	base   string       // scheme://host for building URLs
	http   *http.Client // non-streaming calls
	stream *http.Client // watches and streams: no overall timeout
	dialer func(ctx context.Context) (net.Conn, error)
}

// endpoints are the API servers of a client and the one in use, shared by the clients
// derived with WithUserAgent and WithHeader.
type endpoints struct {
	list       []*endpoint
	cur        atomic.Int32
	onFailover func(from, to string, err error)
}

// Client talks to the Rakhsh API through one server at a time of those configured.
type Client struct {
	eps     *endpoints
	token   string
	timeout time.Duration
	agent   string      // User-Agent; empty: Go's default
	header  http.Header // sent with every request (WithHeader)
}

// WithUserAgent returns a client that shares c's connections and names itself ua in the
// User-Agent header, so the server's logs tell which component sent a request.
func (c *Client) WithUserAgent(ua string) *Client {
	c2 := *c
	c2.agent = ua
	return &c2
}

// WithHeader returns a client that shares c's connections and sends the header name: value
// with every request, watches and streams included (the controllers of the elected serve
// process send their leadership fence, v1alpha1.HeaderLeaderFence, this way).
func (c *Client) WithHeader(name, value string) *Client {
	c2 := *c
	c2.header = c.header.Clone()
	if c2.header == nil {
		c2.header = http.Header{}
	}
	c2.header.Set(name, value)
	return &c2
}

// SplitServers splits a comma-separated list of server addresses, dropping empty items and
// surrounding space.
func SplitServers(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// New builds a client from cfg.
func New(cfg Config) (*Client, error) {
	servers := append(SplitServers(cfg.Server), cfg.Servers...)
	if len(servers) == 0 {
		servers = []string{"unix://" + DefaultSocket}
	}
	c := &Client{token: cfg.Token, timeout: cfg.Timeout, eps: &endpoints{onFailover: cfg.OnFailover}}
	if c.timeout == 0 {
		c.timeout = 60 * time.Second
	}
	var tc *tls.Config
	seen := map[string]bool{}
	for _, server := range servers {
		if seen[server] {
			return nil, fmt.Errorf("server address %q is given twice", server)
		}
		seen[server] = true
		if tc == nil && strings.HasPrefix(server, "https:") {
			var err error
			if tc, err = clientTLS(cfg); err != nil {
				return nil, err
			}
		}
		ep, err := newEndpoint(cfg, server, tc)
		if err != nil {
			return nil, err
		}
		c.eps.list = append(c.eps.list, ep)
	}
	return c, nil
}

// clientTLS is the TLS configuration of cfg's https servers.
func clientTLS(cfg Config) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: cfg.Insecure} //nolint:gosec // opt-in flag
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("reading CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate", cfg.CAFile)
		}
		tc.RootCAs = pool
	}
	return tc, nil
}

// newEndpoint is the endpoint of one server address.
func newEndpoint(cfg Config, server string, tc *tls.Config) (*endpoint, error) {
	u, err := url.Parse(server)
	if err != nil {
		return nil, fmt.Errorf("server address %q: %w", server, err)
	}
	ep := &endpoint{server: server}
	tr := &http.Transport{MaxIdleConnsPerHost: 32, IdleConnTimeout: 90 * time.Second}
	switch u.Scheme {
	case "unix":
		path := u.Path
		if path == "" {
			path = u.Opaque
		}
		if path == "" {
			return nil, fmt.Errorf("server address %q: a unix address needs a path, e.g. unix:///var/lib/rakhsh/rakhsh.sock", server)
		}
		d := &net.Dialer{}
		ep.dialer = func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "unix", path) }
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) { return ep.dialer(ctx) }
		ep.base = "http://rakhsh"
	case "https":
		if u.Host == "" {
			return nil, fmt.Errorf("server address %q: an https address needs a host, e.g. https://10.0.0.1:6443", server)
		}
		tr.TLSClientConfig = tc
		dial := tcpDialer(cfg)
		tr.DialContext = dial
		host := u.Host
		ep.dialer = func(ctx context.Context) (net.Conn, error) {
			conn, err := dial(ctx, "tcp", host)
			if err != nil {
				return nil, err
			}
			cfg := tc.Clone()
			if cfg.ServerName == "" {
				cfg.ServerName, _, _ = net.SplitHostPort(host)
			}
			tconn := tls.Client(conn, cfg)
			if err := tconn.HandshakeContext(ctx); err != nil {
				conn.Close()
				return nil, err
			}
			return tconn, nil
		}
		ep.base = "https://" + u.Host
	case "http":
		// Plain HTTP is only for tests behind a proxy; the server itself never listens on it.
		// A bearer token would travel in clear text, readable and replayable by anyone on
		// the path, loopback included (other local users can capture it).
		if cfg.Token != "" {
			return nil, fmt.Errorf("server address %q: refusing to send the bearer token over plain http, where anyone on the path can read it: use https://%s (or the unix socket)", server, u.Host)
		}
		ep.base = "http://" + u.Host
		dial := tcpDialer(cfg)
		tr.DialContext = dial
		host := u.Host
		ep.dialer = func(ctx context.Context) (net.Conn, error) { return dial(ctx, "tcp", host) }
	default:
		return nil, fmt.Errorf("server address %q: scheme must be unix or https", server)
	}
	ep.http = &http.Client{Transport: tr}
	ep.stream = &http.Client{Transport: tr}
	return ep, nil
}

// current is the endpoint in use and its index.
func (c *Client) current() (*endpoint, int) {
	i := int(c.eps.cur.Load())
	return c.eps.list[i], i
}

// Servers are the configured server addresses, the one in use first.
func (c *Client) Servers() []string {
	_, i := c.current()
	n := len(c.eps.list)
	out := make([]string, 0, n)
	for k := 0; k < n; k++ {
		out = append(out, c.eps.list[(i+k)%n].server)
	}
	return out
}

// Server is the address of the server in use.
func (c *Client) Server() string {
	ep, _ := c.current()
	return ep.server
}

// unreachable says err means the request never reached a server: the connection could not be
// made (refused, no route, timed out, or the TLS handshake failed on a dead peer).
func unreachable(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	return false
}

// idempotent methods may be sent again when their connection broke after they were sent.
func idempotent(method string) bool {
	return method == http.MethodGet || method == http.MethodHead
}

// tcpDialer is cfg.DialContext, or a net.Dialer with a 10 s connect timeout.
func tcpDialer(cfg Config) func(ctx context.Context, network, addr string) (net.Conn, error) {
	if cfg.DialContext != nil {
		return cfg.DialContext
	}
	d := &net.Dialer{Timeout: 10 * time.Second}
	return d.DialContext
}

// ReadTokenFile reads a bearer token from a file (the first line, without surrounding
// space). A token in a file stays out of the process list, where --token is visible to every
// local user (/proc/PID/cmdline).
func ReadTokenFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("reading the token file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return "", fmt.Errorf("reading the token file %s: %w", path, err)
	}
	line, _, _ := strings.Cut(string(data), "\n")
	tok := strings.TrimSpace(line)
	if tok == "" {
		return "", fmt.Errorf("the token file %s is empty: it should hold the bearer token on its first line", path)
	}
	if strings.ContainsAny(tok, " \t\r") {
		return "", fmt.Errorf("the token file %s holds space inside its first line: it should hold only the bearer token", path)
	}
	return tok, nil
}

// DialRaw opens a raw connection to the server in use (used for websocket upgrades and
// uploads); a server that cannot be reached is failed over like a request.
func (c *Client) DialRaw(ctx context.Context) (net.Conn, error) {
	var conn net.Conn
	err := c.each(ctx, func(ep *endpoint) (bool, error) {
		var err error
		conn, err = ep.dialer(ctx)
		return err != nil && unreachable(err), err
	})
	return conn, err
}

// each calls try with the endpoint in use and, while try says to fail over, with the next
// ones (each once, wrapping around); the endpoint of the last call becomes the one in use
// when it succeeded. It returns try's last error.
func (c *Client) each(ctx context.Context, try func(ep *endpoint) (failover bool, err error)) error {
	_, start := c.current()
	n := len(c.eps.list)
	var err, first error
	for k := 0; k < n; k++ {
		i := (start + k) % n
		var again bool
		again, err = try(c.eps.list[i])
		if !again || ctx.Err() != nil {
			if err == nil && i != start && c.eps.cur.CompareAndSwap(int32(start), int32(i)) && c.eps.onFailover != nil {
				if first == nil {
					first = errors.New("answered 503 Service Unavailable")
				}
				c.eps.onFailover(c.eps.list[start].server, c.eps.list[i].server, first)
			}
			return err
		}
		if first == nil {
			first = err
		}
	}
	return err
}

// BaseURL is scheme://host of the server in use, which the client builds request URLs on.
func (c *Client) BaseURL() string {
	ep, _ := c.current()
	return ep.base
}

// Token returns the bearer token, if any.
func (c *Client) Token() string { return c.token }

// Path returns the REST path of a resource collection or object. namespace "" means
// cluster-scoped, or all projects for a project-scoped list.
func Path(resource, namespace, name string, sub ...string) string {
	var b strings.Builder
	b.WriteString("/apis/" + v1alpha1.APIVersion)
	if namespace != "" {
		b.WriteString("/namespaces/" + url.PathEscape(namespace))
	}
	b.WriteString("/" + resource)
	if name != "" {
		b.WriteString("/" + url.PathEscape(name))
	}
	for _, s := range sub {
		b.WriteString("/" + s)
	}
	return b.String()
}

// Error is a failed call: the server's Status.
type Error struct {
	Status v1alpha1.Status
}

func (e *Error) Error() string {
	if e.Status.Message != "" {
		return e.Status.Message
	}
	return fmt.Sprintf("server answered %d %s", e.Status.Code, e.Status.Reason)
}

// Reason returns the Status reason of err, or "" when err is not an API error.
func Reason(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Status.Reason
	}
	return ""
}

// IsNotFound, IsConflict, IsAlreadyExists, IsInvalid and IsForbidden classify API errors.
func IsNotFound(err error) bool      { return Reason(err) == v1alpha1.ReasonNotFound }
func IsConflict(err error) bool      { return Reason(err) == v1alpha1.ReasonConflict }
func IsAlreadyExists(err error) bool { return Reason(err) == v1alpha1.ReasonAlreadyExists }
func IsInvalid(err error) bool       { return Reason(err) == v1alpha1.ReasonInvalid }
func IsForbidden(err error) bool     { return Reason(err) == v1alpha1.ReasonForbidden }

// IsFenced says the server refused a write of the controllers because their leadership term
// has ended (reason LeaderFenced): their process is no longer the control-plane leader.
func IsFenced(err error) bool { return Reason(err) == v1alpha1.ReasonLeaderFenced }

// doJSON sends one request with body (nil or a value to encode as JSON) and returns its JSON
// answer decoded into a new T.
func doJSON[T any](ctx context.Context, c *Client, method, path string, body any) (*T, error) {
	var out T
	if err := c.Do(ctx, method, path, nil, "", body, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Do sends one request. body may be nil, []byte, or a value to encode as JSON; out, when
// non-nil, receives the decoded JSON answer (or, for *[]byte, the raw body).
func (c *Client) Do(ctx context.Context, method, path string, query url.Values, contentType string, body, out any) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	resp, err := c.send(ctx, false, method, path, query, contentType, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 512<<20))
	if err != nil {
		return fmt.Errorf("%s %s: reading answer: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		return decodeError(resp.StatusCode, data)
	}
	switch o := out.(type) {
	case nil:
		return nil
	case *[]byte:
		*o = data
		return nil
	default:
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: decoding answer: %w", method, path, err)
		}
	}
	return nil
}

func (c *Client) send(ctx context.Context, streaming bool, method, path string, query url.Values, contentType string, body any) (*http.Response, error) {
	return c.sendHeader(ctx, streaming, method, path, query, contentType, body, nil)
}

// sendHeader sends one request to the server in use and fails over to the next servers when
// it cannot be reached, when the connection of a GET or HEAD broke, or when it answers 503
// Service Unavailable (its store is gone). A body given as an io.Reader cannot be sent twice:
// such a request goes to the server in use only.
func (c *Client) sendHeader(ctx context.Context, streaming bool, method, path string, query url.Values, contentType string, body any, header http.Header) (*http.Response, error) {
	var data []byte
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		data = b
	case io.Reader:
		rd = b
	default:
		var err error
		if data, err = json.Marshal(body); err != nil {
			return nil, fmt.Errorf("encoding request: %w", err)
		}
	}
	replayable := rd == nil
	var resp *http.Response
	err := c.each(ctx, func(ep *endpoint) (bool, error) {
		var err error
		resp, err = c.sendTo(ctx, ep, streaming, method, path, query, contentType, body != nil, data, rd, header)
		if err != nil {
			return replayable && (unreachable(err) || idempotent(method)), err
		}
		if resp.StatusCode == http.StatusServiceUnavailable && replayable && len(c.eps.list) > 1 {
			msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
			// The last server's answer is returned as it is (decoded by the caller).
			resp.Body = io.NopCloser(bytes.NewReader(msg))
			return true, nil
		}
		return false, nil
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// sendTo sends one request to ep.
func (c *Client) sendTo(ctx context.Context, ep *endpoint, streaming bool, method, path string, query url.Values, contentType string, hasBody bool, data []byte, rd io.Reader, header http.Header) (*http.Response, error) {
	if hasBody && rd == nil {
		rd = bytes.NewReader(data)
	}
	u := ep.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, err
	}
	if hasBody {
		if contentType == "" {
			contentType = "application/json"
		}
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("Accept", "application/json")
	for k, v := range c.header {
		req.Header[k] = v
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if c.agent != "" {
		req.Header.Set("User-Agent", c.agent)
	}
	hc := ep.http
	if streaming {
		hc = ep.stream
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	return resp, nil
}

func decodeError(code int, data []byte) error {
	var st v1alpha1.Status
	if err := json.Unmarshal(data, &st); err != nil || st.Kind != "Status" {
		msg := strings.TrimSpace(string(data))
		if len(msg) > 512 {
			msg = msg[:512]
		}
		st = v1alpha1.Status{Status: "Failure", Code: code, Message: fmt.Sprintf("server answered %d: %s", code, msg)}
	}
	if st.Code == 0 {
		st.Code = code
	}
	return &Error{Status: st}
}

// Get reads one object into out.
func (c *Client) Get(ctx context.Context, resource, namespace, name string, out any) error {
	return c.Do(ctx, http.MethodGet, Path(resource, namespace, name), nil, "", nil, out)
}

// ListOptions restricts List and Watch.
type ListOptions struct {
	LabelSelector string
	// FieldSelector selects by fields: comma-separated FIELD=VALUE or FIELD!=VALUE terms,
	// FIELD a dotted path such as spec.nodeName or status.phase.
	FieldSelector   string
	Limit           int64
	Continue        string
	ResourceVersion string
}

func (o ListOptions) query() url.Values {
	q := url.Values{}
	if o.LabelSelector != "" {
		q.Set("labelSelector", o.LabelSelector)
	}
	if o.FieldSelector != "" {
		q.Set("fieldSelector", o.FieldSelector)
	}
	if o.Limit > 0 {
		q.Set("limit", strconv.FormatInt(o.Limit, 10))
	}
	if o.Continue != "" {
		q.Set("continue", o.Continue)
	}
	if o.ResourceVersion != "" {
		q.Set("resourceVersion", o.ResourceVersion)
	}
	return q
}

// List returns one page of objects; namespace "" lists across all projects.
func (c *Client) List(ctx context.Context, resource, namespace string, opts ListOptions) (*v1alpha1.List, error) {
	var l v1alpha1.List
	if err := c.Do(ctx, http.MethodGet, Path(resource, namespace, ""), opts.query(), "", nil, &l); err != nil {
		return nil, err
	}
	return &l, nil
}

// ListAll follows continue tokens and returns every object.
func (c *Client) ListAll(ctx context.Context, resource, namespace string, opts ListOptions) (*v1alpha1.List, error) {
	var all *v1alpha1.List
	for {
		l, err := c.List(ctx, resource, namespace, opts)
		if err != nil {
			return nil, err
		}
		if all == nil {
			all = l
		} else {
			all.Items = append(all.Items, l.Items...)
			all.Metadata = l.Metadata
		}
		if l.Metadata.Continue == "" {
			all.Metadata.Continue = ""
			return all, nil
		}
		opts.Continue = l.Metadata.Continue
	}
}

// Create stores a new object and decodes the stored form into out.
func (c *Client) Create(ctx context.Context, resource, namespace string, obj, out any) error {
	return c.Do(ctx, http.MethodPost, Path(resource, namespace, ""), nil, "", obj, out)
}

// Update replaces an object; its metadata.resourceVersion must be current.
func (c *Client) Update(ctx context.Context, resource, namespace, name string, obj, out any) error {
	return c.Do(ctx, http.MethodPut, Path(resource, namespace, name), nil, "", obj, out)
}

// UpdateStatus replaces an object's status through the status subresource.
func (c *Client) UpdateStatus(ctx context.Context, resource, namespace, name string, obj, out any) error {
	return c.Do(ctx, http.MethodPut, Path(resource, namespace, name, "status"), nil, "", obj, out)
}

// Patch applies a JSON merge patch (RFC 7386).
func (c *Client) Patch(ctx context.Context, resource, namespace, name string, patch []byte, out any) error {
	return c.Do(ctx, http.MethodPatch, Path(resource, namespace, name), nil, "application/merge-patch+json", patch, out)
}

// JSONPatch applies a JSON patch (RFC 6902). Its test operations are preconditions: a failed
// one is a 409 Conflict.
func (c *Client) JSONPatch(ctx context.Context, resource, namespace, name string, patch []byte, out any) error {
	return c.Do(ctx, http.MethodPatch, Path(resource, namespace, name), nil, "application/json-patch+json", patch, out)
}

// JSONPatchStatus applies a JSON patch (RFC 6902) to the status subresource. Its test
// operations are preconditions (a failed one is a 409 Conflict); the patch sees status and
// status.conditions as present, empty when the object has none.
func (c *Client) JSONPatchStatus(ctx context.Context, resource, namespace, name string, patch []byte, out any) error {
	return c.Do(ctx, http.MethodPatch, Path(resource, namespace, name, "status"), nil, "application/json-patch+json", patch, out)
}

// PatchStatus applies a JSON merge patch to the status subresource.
func (c *Client) PatchStatus(ctx context.Context, resource, namespace, name string, patch []byte, out any) error {
	return c.Do(ctx, http.MethodPatch, Path(resource, namespace, name, "status"), nil, "application/merge-patch+json", patch, out)
}

// PatchStatusStrategic applies a strategic merge patch to the status subresource: a merge
// patch whose conditions lists merge by type, so a writer sends only the conditions it owns
// ({"type": T, "$patch": "delete"} removes one).
func (c *Client) PatchStatusStrategic(ctx context.Context, resource, namespace, name string, patch []byte, out any) error {
	return c.Do(ctx, http.MethodPatch, Path(resource, namespace, name, "status"), nil, "application/strategic-merge-patch+json", patch, out)
}

// Bind binds a VM to a node through its binding subresource (see
// v1alpha1.VirtualMachineBinding); out, if not nil, receives the bound VM.
func (c *Client) Bind(ctx context.Context, namespace, name string, b *v1alpha1.VirtualMachineBinding, out any) error {
	return c.Do(ctx, http.MethodPost, Path("virtualmachines", namespace, name, "binding"), nil, "", b, out)
}

// Delete deletes an object. With finalizers, it is only marked (deletionTimestamp) and goes
// once they are removed.
func (c *Client) Delete(ctx context.Context, resource, namespace, name string) error {
	return c.Do(ctx, http.MethodDelete, Path(resource, namespace, name), nil, "", nil, nil)
}

// DeleteWithGrace deletes an object with a grace period: a VM being deleted gets at most
// grace to shut down (0: it is powered off at once).
func (c *Client) DeleteWithGrace(ctx context.Context, resource, namespace, name string, grace time.Duration) error {
	q := url.Values{"gracePeriodSeconds": {strconv.FormatInt(int64(grace/time.Second), 10)}}
	return c.Do(ctx, http.MethodDelete, Path(resource, namespace, name), q, "", nil, nil)
}

// Watcher is an open watch stream.
type Watcher struct {
	ch     chan v1alpha1.WatchEvent
	cancel context.CancelFunc
	err    error
	done   chan struct{}
}

// Events delivers events until the stream ends; then Err says why.
func (w *Watcher) Events() <-chan v1alpha1.WatchEvent { return w.ch }

// Stop ends the stream.
func (w *Watcher) Stop() { w.cancel() }

// Err returns why the stream ended (nil after Stop or a clean end).
func (w *Watcher) Err() error { <-w.done; return w.err }

// Watch opens a watch stream. With opts.ResourceVersion set, events after that version are
// replayed first; an expired version gives an ERROR event with a Status of reason Expired
// (HTTP 410 Gone): list again and watch from the list's resourceVersion.
func (c *Client) Watch(ctx context.Context, resource, namespace string, opts ListOptions) (*Watcher, error) {
	ctx, cancel := context.WithCancel(ctx)
	q := opts.query()
	q.Set("watch", "true")
	resp, err := c.send(ctx, true, http.MethodGet, Path(resource, namespace, ""), q, "", nil)
	if err != nil {
		cancel()
		return nil, err
	}
	if resp.StatusCode >= 300 {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		cancel()
		return nil, decodeError(resp.StatusCode, data)
	}
	w := &Watcher{ch: make(chan v1alpha1.WatchEvent, 64), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		defer close(w.ch)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 16<<20)
		for sc.Scan() {
			line := sc.Bytes()
			if len(bytes.TrimSpace(line)) == 0 {
				continue
			}
			var ev v1alpha1.WatchEvent
			if err := json.Unmarshal(line, &ev); err != nil {
				w.err = fmt.Errorf("watch: bad event: %w", err)
				return
			}
			ev.Object = append(json.RawMessage(nil), ev.Object...)
			select {
			case w.ch <- ev:
			case <-ctx.Done():
				return
			}
		}
		if err := sc.Err(); err != nil && ctx.Err() == nil {
			w.err = fmt.Errorf("watch: %w", err)
		}
	}()
	return w, nil
}

// Download GETs path (an image's data subresource) with extra request headers, such as
// Range and If-Range. A 200 or 206 answer is returned for the caller to read and close;
// 416 (the range starts at the end) too, so that a finished download can be recognised.
func (c *Client) Download(ctx context.Context, path string, header http.Header) (*http.Response, error) {
	resp, err := c.sendHeader(ctx, true, http.MethodGet, path, nil, "", nil, header)
	if err != nil {
		return nil, err
	}
	switch resp.StatusCode {
	case http.StatusOK, http.StatusPartialContent, http.StatusRequestedRangeNotSatisfiable:
		return resp, nil
	}
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	return nil, decodeError(resp.StatusCode, data)
}

// Stream opens a request whose body is read by the caller (logs, downloads).
func (c *Client) Stream(ctx context.Context, method, path string, query url.Values, body io.Reader) (*http.Response, error) {
	resp, err := c.send(ctx, true, method, path, query, "application/octet-stream", body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 300 {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		return nil, decodeError(resp.StatusCode, data)
	}
	return resp, nil
}
