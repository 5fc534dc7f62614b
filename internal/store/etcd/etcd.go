// Package etcd is the Rakhsh store on an etcd v3 cluster.
//
// Every key is stored under Config.Prefix, so several Rakhsh installations can share one
// etcd. Revisions are etcd's own (global to the cluster, so they advance with the writes of
// every installation sharing it). Old revisions stay readable until etcd compacts them; run
// etcd with --auto-compaction-retention (for example 1h) so its history does not grow
// without bound. Watches and lists at a compacted revision fail with errs.ErrCompacted.
package etcd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/store"
)

// Defaults for Config.
const (
	DefaultPrefix         = "/rakhsh"
	DefaultDialTimeout    = 5 * time.Second
	DefaultRequestTimeout = 10 * time.Second
)

// Config says how to reach etcd.
type Config struct {
	// Endpoints are the client URLs of the cluster, e.g. "http://127.0.0.1:2379".
	Endpoints []string
	// Prefix is put in front of every key; default DefaultPrefix. Trailing slashes are
	// ignored, so "/rakhsh" and "/rakhsh/" are the same.
	Prefix string
	// DialTimeout bounds the first connection made by New; default DefaultDialTimeout.
	DialTimeout time.Duration
	// RequestTimeout bounds each call; a call that runs out of it fails with
	// errs.ErrUnavailable. Default DefaultRequestTimeout.
	RequestTimeout time.Duration
	// Username and Password enable etcd authentication when set.
	Username string
	Password string
	// TLS, when set, is used for the client connections (https endpoints).
	TLS *tls.Config
}

// Store implements store.Store on etcd.
type Store struct {
	client  *clientv3.Client
	base    string // prefix without trailing slash; every stored key is base + key
	timeout time.Duration

	closeOnce sync.Once
	closed    atomic.Bool
	closeErr  error
}

var _ store.Store = (*Store)(nil)

var errClosed = fmt.Errorf("etcd store is closed: %w", errs.ErrUnavailable)

// New connects to etcd and checks that it answers.
func New(ctx context.Context, cfg Config) (*Store, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, fmt.Errorf("etcd store: no endpoints: %w", errs.ErrInvalid)
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	client, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: cfg.DialTimeout,
		Username:    cfg.Username,
		Password:    cfg.Password,
		TLS:         cfg.TLS,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("etcd store %v: %w: %w", cfg.Endpoints, errs.ErrUnavailable, err)
	}
	s := &Store{client: client, base: strings.TrimRight(cfg.Prefix, "/"), timeout: cfg.RequestTimeout}
	if err := s.connect(ctx, cfg); err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("etcd store %v: %w", cfg.Endpoints, err)
	}
	return s, nil
}

// connect checks that etcd answers within the dial timeout. gRPC waits for a connection until
// the deadline and then reports only "context deadline exceeded", so each endpoint is also
// dialled directly, alongside: a TLS handshake that fails (etcd's certificate does not verify,
// or etcd refuses the client certificate) fails at once with the reason, and any other
// failure of the direct dial (connection refused, no TLS handshake) is reported if the
// deadline passes.
func (s *Store) connect(ctx context.Context, cfg Config) error {
	pctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	revErr := make(chan error, 1)
	go func() {
		_, err := s.revision(pctx)
		revErr <- err
	}()
	probes := make(chan probeResult, len(cfg.Endpoints))
	for _, ep := range cfg.Endpoints {
		go func() { probes <- probe(pctx, ep, cfg.TLS) }()
	}
	var found []probeResult
	tlsFailures := 0
	for pending := len(cfg.Endpoints); ; {
		select {
		case err := <-revErr:
			if err == nil {
				return nil
			}
			if pctx.Err() == nil || ctx.Err() != nil {
				// etcd answered with an error (authentication, say), or the caller gave up.
				return s.mapErr(ctx, "connect", "", err)
			}
			// The dial timeout passed: the probes say what they found by then.
			for ; pending > 0; pending-- {
				if r := <-probes; r.err != nil {
					found = append(found, r)
				}
			}
			if len(found) == 0 {
				return s.mapErr(ctx, "connect", "", err)
			}
			return fmt.Errorf("connect: %w: %w", errs.ErrUnavailable, joinProbes(found))
		case r := <-probes:
			pending--
			if r.err == nil {
				continue
			}
			found = append(found, r)
			if r.tls {
				tlsFailures++
			}
			if tlsFailures == len(cfg.Endpoints) {
				// No endpoint will accept this TLS configuration: waiting does not help.
				cancel()
				<-revErr
				return fmt.Errorf("connect: %w: %w", errs.ErrUnavailable, joinProbes(found))
			}
		}
	}
}

// probeResult is what a direct dial of one endpoint found: err is nil when the dial (and TLS
// handshake) succeeded or when it could not finish before the check ended; tls says err is a
// TLS failure that retrying will not cure.
type probeResult struct {
	err error
	tls bool
}

func joinProbes(rs []probeResult) error {
	errl := make([]error, len(rs))
	for i, r := range rs {
		errl[i] = r.err
	}
	if len(errl) == 1 {
		return errl[0]
	}
	return errors.Join(errl...)
}

// probe dials endpoint (a client URL or host:port) and, when it is reached over TLS, does the
// handshake and waits for etcd's verdict on the client certificate: under TLS 1.3 a server
// refuses it only after the client's side of the handshake is complete, with an alert the
// client reads. A probe that is still waiting when ctx ends found nothing wrong.
func probe(ctx context.Context, endpoint string, tc *tls.Config) probeResult {
	addr, useTLS := endpoint, tc != nil
	if scheme, rest, ok := strings.Cut(endpoint, "://"); ok {
		switch scheme {
		case "http":
			useTLS = false
		case "https":
		default: // unix sockets and the like: gRPC's own error will do
			return probeResult{}
		}
		addr = rest
	}
	addr, _, _ = strings.Cut(addr, "/")
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return probeResult{}
	}
	d := &net.Dialer{}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		if ctx.Err() != nil {
			// The check ended first: the client's request failed, or succeeded over another
			// endpoint (then this result is not used).
			return probeResult{err: fmt.Errorf("%s: no TCP connection before the dial timeout", endpoint)}
		}
		return probeResult{err: fmt.Errorf("%s: %w", endpoint, err)}
	}
	defer conn.Close()
	if !useTLS {
		return probeResult{}
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	c := tc.Clone()
	if c.ServerName == "" {
		c.ServerName = host
	}
	c.NextProtos = []string{"h2"} // as gRPC offers
	tconn := tls.Client(conn, c)
	err = tconn.HandshakeContext(ctx)
	if err != nil && ctx.Err() != nil {
		return probeResult{err: fmt.Errorf("%s: connected, but no TLS handshake before the dial timeout (is the server speaking TLS?)", endpoint)}
	}
	if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
		// Not conclusive (a busy server may drop or reset a connection; a plain http etcd
		// under load resets it rather than closing it), so not fatal either.
		return probeResult{err: fmt.Errorf("%s: the server closed the connection during the TLS handshake (is it speaking TLS?)", endpoint)}
	}
	if err == nil {
		// A refused client certificate arrives as an alert once the handshake is done;
		// etcd itself sends nothing before the client speaks, so this read ends with that
		// alert, or when the check ends.
		_, err = tconn.Read(make([]byte, 1))
	}
	if err == nil || ctx.Err() != nil {
		return probeResult{}
	}
	var verr *tls.CertificateVerificationError
	var rerr tls.RecordHeaderError
	var oerr *net.OpError
	switch {
	case errors.As(err, &verr):
		return probeResult{tls: true, err: fmt.Errorf("%s: TLS handshake failed: etcd's server certificate did not verify against the trusted CAs (wrong CA bundle, or a certificate not valid for %s): %w", endpoint, host, err)}
	case errors.As(err, &rerr):
		return probeResult{tls: true, err: fmt.Errorf("%s: TLS handshake failed: the server does not speak TLS (is etcd serving plain http there?): %w", endpoint, err)}
	case errors.As(err, &oerr) && oerr.Op == "remote error":
		// The alert says what etcd disliked; every alert about certificates names them.
		why := "etcd refused the TLS handshake"
		switch {
		case !strings.Contains(err.Error(), "certificate"):
		case len(c.Certificates) == 0 && c.GetClientCertificate == nil:
			why += ": it requires a client certificate and none is configured"
		default:
			why += ": it did not accept the client certificate (is it signed by a CA in etcd's --trusted-ca-file, and valid now?)"
		}
		return probeResult{tls: true, err: fmt.Errorf("%s: %s: %w", endpoint, why, err)}
	case errors.Is(err, io.EOF):
		return probeResult{}
	default:
		return probeResult{err: fmt.Errorf("%s: TLS: %w", endpoint, err)}
	}
}

// Client returns the underlying etcd client, for tests and administration.
func (s *Store) Client() *clientv3.Client { return s.client }

// checkKey accepts keys that start with a slash: the namespace of an installation is exactly
// the etcd keys starting with base + "/".
func checkKey(op, key string) error {
	if !strings.HasPrefix(key, "/") {
		return fmt.Errorf("%s %q: key must start with /: %w", op, key, errs.ErrInvalid)
	}
	return nil
}

// rangePrefix maps a List or Watch prefix to the etcd key prefix; "" means every key.
func (s *Store) rangePrefix(op, prefix string) (string, error) {
	if prefix == "" {
		return s.base + "/", nil
	}
	if err := checkKey(op, prefix); err != nil {
		return "", err
	}
	return s.base + prefix, nil
}

// call starts a request: it fails fast on a closed store and adds the request timeout. The
// request requires a leader: a member that has lost its leader (the cluster lost its quorum)
// refuses it at once with "no leader", where it would otherwise hold it until the timeout.
// Reads are retried by the client on another member for a moment (so a lone member without
// a leader costs a couple of seconds at most); writes fail at once.
func (s *Store) call(ctx context.Context) (context.Context, context.CancelFunc, error) {
	if s.closed.Load() {
		return nil, nil, errClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	cctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), s.timeout)
	return cctx, cancel, nil
}

// mapErr classifies an etcd client error. ctx is the caller's context: its own cancellation
// is reported as such, anything else that is not a clear answer from etcd is ErrUnavailable.
func (s *Store) mapErr(ctx context.Context, op, key string, err error) error {
	what := op
	if key != "" {
		what = fmt.Sprintf("%s %q", op, key)
	}
	switch {
	case errors.Is(err, errClosed):
		return fmt.Errorf("%s: %w", what, err)
	case errors.Is(err, rpctypes.ErrCompacted):
		return fmt.Errorf("%s: %w", what, errs.ErrCompacted)
	case errors.Is(err, rpctypes.ErrFutureRev):
		return fmt.Errorf("%s: revision is in the future: %w", what, errs.ErrInvalid)
	case errors.Is(err, rpctypes.ErrRequestTooLarge), status.Code(err) == codes.ResourceExhausted:
		return fmt.Errorf("%s: %w: %v", what, errs.ErrTooLarge, err)
	case ctx.Err() != nil:
		return fmt.Errorf("%s: %w", what, ctx.Err())
	case errors.Is(err, rpctypes.ErrNoLeader):
		return fmt.Errorf("%s: the etcd store is %w: its members have no leader (fewer than a quorum of them are up and reachable): %w", what, errs.ErrUnavailable, err)
	default:
		return fmt.Errorf("%s: the etcd store is %w: %w", what, errs.ErrUnavailable, err)
	}
}

// Get returns the value at key.
func (s *Store) Get(ctx context.Context, key string) (store.KV, error) {
	cctx, cancel, err := s.call(ctx)
	if err != nil {
		return store.KV{}, s.mapErr(ctx, "get", key, err)
	}
	defer cancel()
	resp, err := s.client.Get(cctx, s.base+key)
	if err != nil {
		return store.KV{}, s.mapErr(ctx, "get", key, err)
	}
	if len(resp.Kvs) == 0 {
		return store.KV{}, fmt.Errorf("get %q: %w", key, errs.ErrNotFound)
	}
	kv := resp.Kvs[0]
	return store.KV{Key: key, Value: kv.Value, ModRevision: kv.ModRevision, CreateRevision: kv.CreateRevision}, nil
}

// List returns the keys under prefix in key order, at opts.Revision when set (until etcd
// compacts it: then errs.ErrCompacted).
func (s *Store) List(ctx context.Context, prefix string, opts store.ListOptions) (store.ListResult, error) {
	if opts.Limit < 0 || opts.Revision < 0 {
		return store.ListResult{}, fmt.Errorf("list %q: negative limit or revision: %w", prefix, errs.ErrInvalid)
	}
	ep, err := s.rangePrefix("list", prefix)
	if err != nil {
		return store.ListResult{}, err
	}
	cctx, cancel, err := s.call(ctx)
	if err != nil {
		return store.ListResult{}, s.mapErr(ctx, "list", prefix, err)
	}
	defer cancel()
	start, end := ep, clientv3.GetPrefixRangeEnd(ep)
	if a := s.base + opts.After; opts.After != "" && a >= start {
		start = a + "\x00" // the smallest key after a
	}
	var res store.ListResult
	if start >= end {
		// Nothing can match; still report the revision read at.
		rev := opts.Revision
		if rev == 0 {
			if rev, err = s.revision(cctx); err != nil {
				return res, s.mapErr(ctx, "list", prefix, err)
			}
		}
		res.Revision = rev
		return res, nil
	}
	ops := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(opts.Limit)}
	if opts.Revision != 0 {
		ops = append(ops, clientv3.WithRev(opts.Revision))
	}
	resp, err := s.client.Get(cctx, start, ops...)
	if err != nil {
		return res, s.mapErr(ctx, "list", prefix, err)
	}
	res.Revision = resp.Header.Revision
	if opts.Revision != 0 {
		res.Revision = opts.Revision
	}
	res.More = resp.More
	res.KVs = make([]store.KV, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		res.KVs[i] = store.KV{Key: string(kv.Key[len(s.base):]), Value: kv.Value, ModRevision: kv.ModRevision, CreateRevision: kv.CreateRevision}
	}
	return res, nil
}

// Create writes key only if it does not exist.
func (s *Store) Create(ctx context.Context, key string, value []byte) (int64, error) {
	if err := checkKey("create", key); err != nil {
		return 0, err
	}
	k := s.base + key
	resp, err := s.fencedTxn(ctx, "create", key, clientv3.Compare(clientv3.CreateRevision(k), "=", 0), clientv3.OpPut(k, string(value)))
	if err != nil {
		return 0, err
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("create %q: %w", key, errs.ErrAlreadyExists)
	}
	return resp.Header.Revision, nil
}

// Update writes key only if its ModRevision equals expectRev.
func (s *Store) Update(ctx context.Context, key string, value []byte, expectRev int64) (int64, error) {
	if err := checkKey("update", key); err != nil {
		return 0, err
	}
	if expectRev <= 0 {
		// No stored key has this revision; only tell "missing" from "conflict".
		if _, err := s.Get(ctx, key); err != nil {
			return 0, fmt.Errorf("update: %w", err)
		}
		return 0, fmt.Errorf("update %q: revision %d: %w", key, expectRev, errs.ErrConflict)
	}
	k := s.base + key
	resp, err := s.fencedTxn(ctx, "update", key, clientv3.Compare(clientv3.ModRevision(k), "=", expectRev), clientv3.OpPut(k, string(value)),
		clientv3.OpGet(k, clientv3.WithKeysOnly()))
	if err != nil {
		return 0, err
	}
	if !resp.Succeeded {
		return 0, casFailure("update", key, expectRev, resp)
	}
	return resp.Header.Revision, nil
}

// Delete removes key, checking its ModRevision when expectRev is non-zero.
func (s *Store) Delete(ctx context.Context, key string, expectRev int64) (int64, []byte, error) {
	if err := checkKey("delete", key); err != nil {
		return 0, nil, err
	}
	k := s.base + key
	cmp := clientv3.Compare(clientv3.ModRevision(k), ">", 0)
	if expectRev != 0 {
		cmp = clientv3.Compare(clientv3.ModRevision(k), "=", expectRev)
	}
	resp, err := s.fencedTxn(ctx, "delete", key, cmp, clientv3.OpDelete(k, clientv3.WithPrevKV()), clientv3.OpGet(k, clientv3.WithKeysOnly()))
	if err != nil {
		return 0, nil, err
	}
	if !resp.Succeeded {
		return 0, nil, casFailure("delete", key, expectRev, resp)
	}
	var prev []byte
	if d := resp.Responses[0].GetResponseDeleteRange(); d != nil && len(d.PrevKvs) > 0 {
		prev = d.PrevKvs[0].Value
	}
	return resp.Header.Revision, prev, nil
}

// fencedTxn commits the write then of key when own holds, together with the fence of ctx
// (store.Fence); otherwise it runs els (reads for the caller) and reads the fence key. A write
// refused by its fence is ErrFenced; resp.Succeeded says whether own held.
func (s *Store) fencedTxn(ctx context.Context, op, key string, own clientv3.Cmp, then clientv3.Op, els ...clientv3.Op) (*clientv3.TxnResponse, error) {
	cctx, cancel, err := s.call(ctx)
	if err != nil {
		return nil, s.mapErr(ctx, op, key, err)
	}
	defer cancel()
	fc := s.fence(ctx)
	resp, err := s.client.Txn(cctx).
		If(fc.cmps(own)...).
		Then(then).
		Else(append(els, fc.reads()...)...).
		Commit()
	if err != nil {
		return nil, s.mapErr(ctx, op, key, err)
	}
	if !resp.Succeeded {
		if err := fc.check(op, key, resp, len(els)); err != nil {
			return nil, err
		}
	}
	return resp, nil
}

// ChecksFences says the store checks the fences of writes (store.FenceChecker): several
// serve processes share one etcd.
func (s *Store) ChecksFences() bool { return true }

// Prefix is the etcd key prefix every store key is stored under (Config.Prefix without its
// trailing slash): store key K is etcd key Prefix()+K.
func (s *Store) Prefix() string { return s.base }

// fenceCmp is the fence of one write: the compare that makes the write conditional on it
// and, when the write fails, the read that tells a lost fence from a lost compare-and-swap.
type fenceCmp struct {
	f  store.Fence
	k  string // etcd key of f.Key
	on bool
}

func (s *Store) fence(ctx context.Context) fenceCmp {
	f, ok := store.FenceFrom(ctx)
	if !ok {
		return fenceCmp{}
	}
	return fenceCmp{f: f, k: s.base + f.Key, on: true}
}

// cmps adds the fence's compare to the write's own.
func (fc fenceCmp) cmps(own clientv3.Cmp) []clientv3.Cmp {
	if !fc.on {
		return []clientv3.Cmp{own}
	}
	return []clientv3.Cmp{own, clientv3.Compare(clientv3.CreateRevision(fc.k), "=", fc.f.Term)}
}

// reads is the Else branch's read of the fence key.
func (fc fenceCmp) reads() []clientv3.Op {
	if !fc.on {
		return nil
	}
	return []clientv3.Op{clientv3.OpGet(fc.k, clientv3.WithKeysOnly())}
}

// check returns ErrFenced when the failed write's fence did not hold; the fence key's read
// is the Else branch's response at index i. A lost fence is reported before a lost
// compare-and-swap: a deposed leader's stale write is refused as fenced, whatever else.
func (fc fenceCmp) check(op, key string, resp *clientv3.TxnResponse, i int) error {
	if !fc.on || i >= len(resp.Responses) {
		return nil
	}
	r := resp.Responses[i].GetResponseRange()
	if r != nil && len(r.Kvs) > 0 && r.Kvs[0].CreateRevision == fc.f.Term {
		return nil
	}
	return errs.New(errs.ErrFenced, "%s %q refused: it was sent under leadership term %d, which has ended: "+
		"the controllers that sent it are no longer the control-plane leader (fence %s)", op, key, fc.f.Term, fc.f.Key)
}

// casFailure explains a failed compare from the Else branch's read of the key.
func casFailure(op, key string, expectRev int64, resp *clientv3.TxnResponse) error {
	r := resp.Responses[0].GetResponseRange()
	if r == nil || len(r.Kvs) == 0 {
		return fmt.Errorf("%s %q: %w", op, key, errs.ErrNotFound)
	}
	return fmt.Errorf("%s %q: revision is %d, not %d: %w", op, key, r.Kvs[0].ModRevision, expectRev, errs.ErrConflict)
}

// Revision returns etcd's current revision.
func (s *Store) Revision(ctx context.Context) (int64, error) {
	cctx, cancel, err := s.call(ctx)
	if err != nil {
		return 0, s.mapErr(ctx, "revision", "", err)
	}
	defer cancel()
	rev, err := s.revision(cctx)
	if err != nil {
		return 0, s.mapErr(ctx, "revision", "", err)
	}
	return rev, nil
}

// revision reads the header revision of a minimal read.
func (s *Store) revision(ctx context.Context) (int64, error) {
	resp, err := s.client.Get(ctx, s.base+"/", clientv3.WithCountOnly())
	if err != nil {
		return 0, err
	}
	return resp.Header.Revision, nil
}

// Watch streams changes under prefix after fromRev; see store.Store. A watch "from now"
// (fromRev 0) first reads the current revision, so no write made after Watch returns is
// missed. If etcd cannot be reached the watch waits for it; if the member loses its leader
// the watch ends with errs.ErrUnavailable.
func (s *Store) Watch(ctx context.Context, prefix string, fromRev int64) <-chan store.WatchResult {
	ep, err := s.rangePrefix("watch", prefix)
	if err != nil {
		return ended(err)
	}
	if ctx.Err() != nil {
		return ended(nil)
	}
	if s.closed.Load() {
		return ended(fmt.Errorf("watch %q: %w", prefix, errClosed))
	}
	if fromRev <= 0 {
		if fromRev, err = s.Revision(ctx); err != nil {
			if ctx.Err() != nil {
				return ended(nil)
			}
			return ended(fmt.Errorf("watch %q: %w", prefix, err))
		}
	}
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	wch := s.client.Watch(wctx, ep, clientv3.WithPrefix(), clientv3.WithPrevKV(), clientv3.WithRev(fromRev+1))
	out := make(chan store.WatchResult, 1)
	go func() {
		defer close(out)
		defer cancel()
		send := func(r store.WatchResult) bool {
			select {
			case out <- r:
				return true
			case <-ctx.Done():
				return false
			}
		}
		for resp := range wch {
			if resp.CompactRevision != 0 {
				send(store.WatchResult{Err: fmt.Errorf("watch %q from revision %d: etcd compacted up to %d: %w",
					prefix, fromRev, resp.CompactRevision, errs.ErrCompacted)})
				return
			}
			if err := resp.Err(); err != nil {
				if ctx.Err() == nil {
					send(store.WatchResult{Err: s.mapErr(ctx, "watch", prefix, err)})
				}
				return
			}
			if len(resp.Events) == 0 {
				continue
			}
			evs := make([]store.Event, len(resp.Events))
			for i, ev := range resp.Events {
				e := store.Event{KV: store.KV{Key: string(ev.Kv.Key[len(s.base):]), ModRevision: ev.Kv.ModRevision, CreateRevision: ev.Kv.CreateRevision}}
				if ev.PrevKv != nil {
					e.PrevValue = ev.PrevKv.Value
					if ev.Type == clientv3.EventTypeDelete {
						e.KV.CreateRevision = ev.PrevKv.CreateRevision // a delete's Kv carries none
					}
				}
				if ev.Type == clientv3.EventTypeDelete {
					e.Type = store.Delete
				} else {
					e.Type = store.Put
					e.KV.Value = ev.Kv.Value
					e.Created = ev.IsCreate()
				}
				evs[i] = e
			}
			if !send(store.WatchResult{Events: evs}) {
				return
			}
		}
		// The client closes the channel when ctx ends or the client is closed.
		if ctx.Err() == nil {
			send(store.WatchResult{Err: fmt.Errorf("watch %q: etcd watch ended: %w", prefix, errs.ErrUnavailable)})
		}
	}()
	return out
}

// ended returns a closed channel carrying err, or nothing when err is nil.
func ended(err error) <-chan store.WatchResult {
	ch := make(chan store.WatchResult, 1)
	if err != nil {
		ch <- store.WatchResult{Err: err}
	}
	close(ch)
	return ch
}

// Compact makes etcd forget revisions before rev. Compaction is cluster-wide: it affects
// every installation sharing the etcd. Compacting an already compacted revision is not an
// error.
func (s *Store) Compact(ctx context.Context, rev int64) error {
	cctx, cancel, err := s.call(ctx)
	if err != nil {
		return s.mapErr(ctx, "compact", "", err)
	}
	defer cancel()
	_, err = s.client.Compact(cctx, rev, clientv3.WithCompactPhysical())
	if err != nil && !errors.Is(err, rpctypes.ErrCompacted) {
		return s.mapErr(ctx, "compact", "", err)
	}
	return nil
}

// Close closes the client; open watches end with errs.ErrUnavailable. It is safe to call
// more than once.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		err := s.client.Close()
		if err != nil && !errors.Is(err, context.Canceled) {
			s.closeErr = err
		}
	})
	return s.closeErr
}
