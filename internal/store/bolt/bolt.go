// Package bolt is the embedded Rakhsh store: one bbolt file on local disk.
//
// Layout: bucket "kv" maps each key to a record of its ModRevision, its create revision and
// the value; bucket "meta" holds the global revision counter. Every write is committed with
// fsync before it returns. Concurrent writes are grouped: one goroutine owns all write
// transactions and commits every request waiting at that moment in one transaction, so the
// fsync cost is shared.
//
// Watches are served from an in-memory history of the most recent events (Options.HistorySize).
// The history starts empty when the file is opened: a watch or a List at a revision older than
// the history fails with errs.ErrCompacted, and the caller relists. List at a past revision
// within the history is supported (it is rebuilt from the current data and the history), so
// paging with ListOptions.Revision keeps working under concurrent writes.
//
// Values handed out in watch events are shared between watchers and must not be modified.
package bolt

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/store"
)

// Defaults for Options.
const (
	DefaultHistorySize = 10000
	DefaultWatchQueue  = 10000
	DefaultLockTimeout = 5 * time.Second
)

// maxBatch caps the number of writes committed in one transaction.
const maxBatch = 512

// initialMmapSize is the address space mapped for the file when it is opened.
const initialMmapSize = 1 << 30

var (
	bucketKV   = []byte("kv")
	bucketMeta = []byte("meta")
	keyRev     = []byte("rev")
	keyFormat  = []byte("format")
	formatV1   = []byte("1")
)

var errClosed = fmt.Errorf("bolt store is closed: %w", errs.ErrUnavailable)

// Options tune a Store. The zero value uses the defaults.
type Options struct {
	// HistorySize is how many recent events are kept in memory for watches and lists that
	// start at a past revision. Each kept event holds the new and the previous value, so
	// 10,000 events of 1.5 KB values take about 30 MB. Default DefaultHistorySize.
	HistorySize int
	// WatchQueue is how many undelivered events one watch may hold before it is ended with
	// errs.ErrCompacted (its consumer then relists). Writers never wait for watchers.
	// Default DefaultWatchQueue.
	WatchQueue int
	// LockTimeout is how long Open waits for the file lock held by another process.
	// Default DefaultLockTimeout.
	LockTimeout time.Duration
}

// Store implements store.Store on a bbolt file.
type Store struct {
	db  *bbolt.DB
	hub *hub
	rev atomic.Int64 // last committed revision

	reqs chan *writeReq // unbuffered: the writer takes every request waiting at once
	stop chan struct{}
	done chan struct{}

	closeOnce sync.Once
	closed    atomic.Bool
	closeErr  error
}

var _ store.Store = (*Store)(nil)

// Open opens (creating if needed) the store file at path.
func Open(path string, opts Options) (*Store, error) {
	if opts.HistorySize <= 0 {
		opts.HistorySize = DefaultHistorySize
	}
	if opts.WatchQueue <= 0 {
		opts.WatchQueue = DefaultWatchQueue
	}
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = DefaultLockTimeout
	}
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{
		Timeout:        opts.LockTimeout,
		NoFreelistSync: true,
		FreelistType:   bbolt.FreelistMapType,
		// Map far more than the file needs (address space only, the file grows as written)
		// so that growing the file rarely has to wait for long reads such as big lists.
		InitialMmapSize: initialMmapSize,
	})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("open store %s: file is locked by another process: %w", path, errs.ErrUnavailable)
		}
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	var rev int64
	err = db.Update(func(tx *bbolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists(bucketKV); err != nil {
			return err
		}
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		switch f := meta.Get(keyFormat); {
		case f == nil:
			if err := meta.Put(keyFormat, formatV1); err != nil {
				return err
			}
		case !bytes.Equal(f, formatV1):
			return fmt.Errorf("unknown store format %q", f)
		}
		rev, err = readRev(meta)
		return err
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	s := &Store{
		db:   db,
		hub:  newHub(rev, opts.HistorySize, opts.WatchQueue),
		reqs: make(chan *writeReq),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	s.rev.Store(rev)
	go s.writeLoop(rev)
	return s, nil
}

func readRev(meta *bbolt.Bucket) (int64, error) {
	v := meta.Get(keyRev)
	if v == nil {
		return 0, nil
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("corrupt revision counter (%d bytes)", len(v))
	}
	return int64(binary.BigEndian.Uint64(v)), nil
}

// record is the stored form of a key: ModRevision, create revision, value.
const recordHeader = 16

func encodeRecord(mod, create int64, value []byte) []byte {
	b := make([]byte, recordHeader+len(value))
	binary.BigEndian.PutUint64(b[0:8], uint64(mod))
	binary.BigEndian.PutUint64(b[8:16], uint64(create))
	copy(b[recordHeader:], value)
	return b
}

// decodeRecord splits a stored record; value aliases b.
func decodeRecord(key string, b []byte) (mod, create int64, value []byte, err error) {
	if len(b) < recordHeader {
		return 0, 0, nil, fmt.Errorf("record of %q is corrupt (%d bytes)", key, len(b))
	}
	return int64(binary.BigEndian.Uint64(b[0:8])), int64(binary.BigEndian.Uint64(b[8:16])), b[recordHeader:], nil
}

// checkKey accepts keys that start with a slash and fit bbolt's key size limit. Both stores
// require the slash so that a key's namespace is unambiguous on a shared etcd.
func checkKey(op, key string) error {
	if !strings.HasPrefix(key, "/") || len(key) > bbolt.MaxKeySize {
		return fmt.Errorf("%s %q: key must start with / and have at most %d bytes: %w", op, key, bbolt.MaxKeySize, errs.ErrInvalid)
	}
	return nil
}

// checkPrefix accepts the List and Watch prefixes that can match a key: "" or "/...".
func checkPrefix(op, prefix string) error {
	if prefix != "" && !strings.HasPrefix(prefix, "/") {
		return fmt.Errorf("%s %q: prefix must be empty or start with /: %w", op, prefix, errs.ErrInvalid)
	}
	return nil
}

// check fails fast on a cancelled context or a closed store.
func (s *Store) check(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.closed.Load() {
		return errClosed
	}
	return nil
}

// view runs a read transaction, mapping "database closed" to ErrUnavailable.
func (s *Store) view(fn func(tx *bbolt.Tx) error) error {
	err := s.db.View(fn)
	if errors.Is(err, berrors.ErrDatabaseNotOpen) {
		return errClosed
	}
	return err
}

// Get returns the value at key.
func (s *Store) Get(ctx context.Context, key string) (store.KV, error) {
	if err := s.check(ctx); err != nil {
		return store.KV{}, fmt.Errorf("get %q: %w", key, err)
	}
	var kv store.KV
	err := s.view(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketKV).Get([]byte(key))
		if b == nil {
			return fmt.Errorf("get %q: %w", key, errs.ErrNotFound)
		}
		mod, create, v, err := decodeRecord(key, b)
		if err != nil {
			return err
		}
		kv = store.KV{Key: key, Value: bytes.Clone(v), ModRevision: mod, CreateRevision: create}
		return nil
	})
	if err != nil {
		return store.KV{}, err
	}
	return kv, nil
}

// Revision returns the last committed revision.
func (s *Store) Revision(ctx context.Context) (int64, error) {
	if err := s.check(ctx); err != nil {
		return 0, fmt.Errorf("revision: %w", err)
	}
	return s.rev.Load(), nil
}

// pastKey is the state of a key at a past revision, rebuilt from the history.
type pastKey struct {
	exists bool
	value  []byte
	mod    int64
	create int64
}

// List returns the keys under prefix in key order. With opts.Revision set to a past revision
// it returns the keys as they were then, as long as the history still covers every change
// since; otherwise it fails with errs.ErrCompacted. A revision newer than the store's gives
// errs.ErrInvalid.
func (s *Store) List(ctx context.Context, prefix string, opts store.ListOptions) (store.ListResult, error) {
	if err := s.check(ctx); err != nil {
		return store.ListResult{}, fmt.Errorf("list %q: %w", prefix, err)
	}
	if opts.Limit < 0 || opts.Revision < 0 {
		return store.ListResult{}, fmt.Errorf("list %q: negative limit or revision: %w", prefix, errs.ErrInvalid)
	}
	if err := checkPrefix("list", prefix); err != nil {
		return store.ListResult{}, err
	}
	var res store.ListResult
	err := s.view(func(tx *bbolt.Tx) error {
		cur, err := readRev(tx.Bucket(bucketMeta))
		if err != nil {
			return err
		}
		b := tx.Bucket(bucketKV)
		inRange := func(k string) bool { return strings.HasPrefix(k, prefix) && k > opts.After }

		// For a past revision: the keys changed since then, as they were at that revision,
		// and the keys that existed then but are gone now (extra, sorted).
		var past map[string]pastKey
		var extra []string
		res.Revision = cur
		if opts.Revision != 0 && opts.Revision != cur {
			if opts.Revision > cur {
				return fmt.Errorf("list %q at revision %d: current revision is %d: %w", prefix, opts.Revision, cur, errs.ErrInvalid)
			}
			changes, err := s.hub.changes(opts.Revision, cur, inRange)
			if err != nil {
				return fmt.Errorf("list %q: %w", prefix, err)
			}
			past = make(map[string]pastKey, len(changes))
			for _, c := range changes {
				k := c.ev.KV.Key
				if _, seen := past[k]; seen {
					continue // the first change after the revision tells the state at it
				}
				created := c.ev.Type == store.Put && c.ev.Created
				past[k] = pastKey{exists: !created, value: c.ev.PrevValue, mod: c.prevRev, create: c.prevCreate}
				if !created && b.Get([]byte(k)) == nil {
					extra = append(extra, k)
				}
			}
			slices.Sort(extra)
			res.Revision = opts.Revision
		}

		want := -1 // items to collect: limit+1 tells whether more remain
		if opts.Limit > 0 {
			want = int(min(opts.Limit, 1<<30)) + 1
		}
		if want > 0 {
			res.KVs = make([]store.KV, 0, min(want, 1024))
		}
		full := func() bool { return want > 0 && len(res.KVs) >= want }
		addPast := func(k string, p pastKey) {
			res.KVs = append(res.KVs, store.KV{Key: k, Value: bytes.Clone(p.value), ModRevision: p.mod, CreateRevision: p.create})
		}

		start := prefix
		if opts.After > start {
			start = opts.After
		}
		pb := []byte(prefix)
		c := b.Cursor()
		k, v := c.Seek([]byte(start))
		for ; k != nil && bytes.HasPrefix(k, pb) && !full(); k, v = c.Next() {
			ks := string(k)
			if ks <= opts.After {
				continue
			}
			for len(extra) > 0 && extra[0] < ks && !full() {
				addPast(extra[0], past[extra[0]])
				extra = extra[1:]
			}
			if full() {
				break
			}
			if p, changed := past[ks]; changed {
				if p.exists {
					addPast(ks, p)
				}
				continue
			}
			mod, create, val, err := decodeRecord(ks, v)
			if err != nil {
				return err
			}
			res.KVs = append(res.KVs, store.KV{Key: ks, Value: bytes.Clone(val), ModRevision: mod, CreateRevision: create})
		}
		for len(extra) > 0 && !full() {
			addPast(extra[0], past[extra[0]])
			extra = extra[1:]
		}
		if want > 0 && len(res.KVs) == want {
			res.KVs = res.KVs[:want-1]
			res.More = true
		}
		return nil
	})
	if err != nil {
		return store.ListResult{}, err
	}
	return res, nil
}

// Create writes key only if it does not exist.
func (s *Store) Create(ctx context.Context, key string, value []byte) (int64, error) {
	r := s.write(ctx, &writeReq{op: opCreate, key: key, value: value})
	return r.rev, r.err
}

// Update writes key only if its ModRevision equals expectRev.
func (s *Store) Update(ctx context.Context, key string, value []byte, expectRev int64) (int64, error) {
	r := s.write(ctx, &writeReq{op: opUpdate, key: key, value: value, expect: expectRev})
	return r.rev, r.err
}

// Delete removes key, checking its ModRevision when expectRev is non-zero.
func (s *Store) Delete(ctx context.Context, key string, expectRev int64) (int64, []byte, error) {
	r := s.write(ctx, &writeReq{op: opDelete, key: key, expect: expectRev})
	return r.rev, r.prev, r.err
}

// Watch streams changes under prefix after fromRev; see store.Store.
func (s *Store) Watch(ctx context.Context, prefix string, fromRev int64) <-chan store.WatchResult {
	if err := checkPrefix("watch", prefix); err != nil {
		return endedWatch(err)
	}
	return s.hub.watch(ctx, prefix, fromRev)
}

// Compact forgets the history up to and including rev: watches and lists from an older
// revision then fail with errs.ErrCompacted. The data itself is not affected.
func (s *Store) Compact(ctx context.Context, rev int64) error {
	if err := s.check(ctx); err != nil {
		return fmt.Errorf("compact: %w", err)
	}
	s.hub.compact(rev)
	return nil
}

// Close waits for the write in progress, ends all watches with ErrUnavailable and closes
// the file. It is safe to call more than once.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		close(s.stop)
		<-s.done
		s.hub.close()
		s.closeErr = s.db.Close()
	})
	return s.closeErr
}

type writeOp int

const (
	opCreate writeOp = iota
	opUpdate
	opDelete
)

func (o writeOp) String() string {
	return [...]string{"create", "update", "delete"}[o]
}

type writeReq struct {
	ctx    context.Context
	op     writeOp
	key    string
	value  []byte
	expect int64
	done   chan writeRes
}

type writeRes struct {
	rev  int64
	prev []byte
	err  error
}

// write hands a request to the writer goroutine and waits for its outcome. A request the
// writer has taken is always answered, so its outcome is never in doubt.
func (s *Store) write(ctx context.Context, r *writeReq) writeRes {
	if err := s.check(ctx); err != nil {
		return writeRes{err: fmt.Errorf("%s %q: %w", r.op, r.key, err)}
	}
	if err := checkKey(r.op.String(), r.key); err != nil {
		return writeRes{err: err}
	}
	if len(r.value) > bbolt.MaxValueSize-recordHeader {
		return writeRes{err: fmt.Errorf("%s %q: value of %d bytes: %w", r.op, r.key, len(r.value), errs.ErrTooLarge)}
	}
	r.ctx = ctx
	r.done = make(chan writeRes, 1)
	select {
	case s.reqs <- r:
	case <-ctx.Done():
		return writeRes{err: fmt.Errorf("%s %q: %w", r.op, r.key, ctx.Err())}
	case <-s.stop:
		return writeRes{err: fmt.Errorf("%s %q: %w", r.op, r.key, errClosed)}
	}
	return <-r.done
}

// writeLoop owns all write transactions. It takes one request, then every other request
// already waiting, and commits them together.
func (s *Store) writeLoop(rev int64) {
	defer close(s.done)
	batch := make([]*writeReq, 0, maxBatch)
	for {
		select {
		case <-s.stop:
			return
		case r := <-s.reqs:
			batch = append(batch[:0], r)
		}
	more:
		for len(batch) < maxBatch {
			select {
			case r := <-s.reqs:
				batch = append(batch, r)
			default:
				break more
			}
		}
		rev = s.commit(batch, rev)
		clear(batch)
	}
}

// commit applies batch in order in one transaction, publishes the events and answers every
// request. It returns the new revision.
func (s *Store) commit(batch []*writeReq, base int64) int64 {
	res := make([]writeRes, len(batch))
	var entries []entry
	rev := base
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketKV)
		for i, r := range batch {
			if err := r.ctx.Err(); err != nil {
				res[i].err = fmt.Errorf("%s %q: %w", r.op, r.key, err)
				continue
			}
			e, err := apply(b, r, rev+1)
			if err != nil {
				if isStoreErr(err) {
					res[i].err = err
					continue
				}
				return err
			}
			rev++
			entries = append(entries, e)
			res[i].rev = rev
			if r.op == opDelete {
				res[i].prev = bytes.Clone(e.ev.PrevValue)
			}
		}
		if rev == base {
			return nil
		}
		var rb [8]byte
		binary.BigEndian.PutUint64(rb[:], uint64(rev))
		return tx.Bucket(bucketMeta).Put(keyRev, rb[:])
	})
	if err != nil {
		rev = base
		entries = nil
		for i, r := range batch {
			res[i] = writeRes{err: fmt.Errorf("%s %q: commit: %w: %w", r.op, r.key, errs.ErrUnavailable, err)}
		}
	}
	if rev != base {
		s.rev.Store(rev)
		s.hub.publish(entries)
	}
	for i, r := range batch {
		r.done <- res[i]
	}
	return rev
}

// isStoreErr tells a rejected request (conflict, missing key, ...) from a transaction failure.
func isStoreErr(err error) bool {
	return errors.Is(err, errs.ErrNotFound) || errors.Is(err, errs.ErrAlreadyExists) || errors.Is(err, errs.ErrConflict)
}

// apply performs one write inside the transaction as revision rev and returns its event.
func apply(b *bbolt.Bucket, r *writeReq, rev int64) (entry, error) {
	key := []byte(r.key)
	old := b.Get(key)
	var oldMod, oldCreate int64
	var oldVal []byte
	if old != nil {
		var err error
		if oldMod, oldCreate, oldVal, err = decodeRecord(r.key, old); err != nil {
			return entry{}, err
		}
		oldVal = bytes.Clone(oldVal) // bbolt memory is only valid inside the transaction
	}
	switch r.op {
	case opCreate:
		if old != nil {
			return entry{}, fmt.Errorf("create %q: %w", r.key, errs.ErrAlreadyExists)
		}
	case opUpdate, opDelete:
		if old == nil {
			return entry{}, fmt.Errorf("%s %q: %w", r.op, r.key, errs.ErrNotFound)
		}
		if (r.op == opUpdate || r.expect != 0) && oldMod != r.expect {
			return entry{}, fmt.Errorf("%s %q: revision is %d, not %d: %w", r.op, r.key, oldMod, r.expect, errs.ErrConflict)
		}
	}
	e := entry{prevRev: oldMod, prevCreate: oldCreate}
	e.ev.KV = store.KV{Key: r.key, ModRevision: rev, CreateRevision: oldCreate}
	e.ev.PrevValue = oldVal
	if r.op == opDelete {
		e.ev.Type = store.Delete
		return e, b.Delete(key)
	}
	create := oldCreate
	if old == nil {
		create = rev
		e.ev.Created = true
	}
	e.ev.KV.CreateRevision = create
	rec := encodeRecord(rev, create, r.value)
	e.ev.Type = store.Put
	e.ev.KV.Value = rec[recordHeader:len(rec):len(rec)]
	return e, b.Put(key, rec)
}
