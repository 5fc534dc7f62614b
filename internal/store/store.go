// Package store defines the key-value store behind the API server: revisions, compare-and-swap
// updates and watches. Two implementations exist: store/bolt (embedded, the default) and
// store/etcd (a real etcd v3 cluster). store/storetest holds the conformance suite both pass.
//
// Keys are slash-separated strings such as "/virtualmachines/default/vm1". Values are opaque
// bytes (the API server stores JSON). Every successful write advances one global revision; each
// key carries the revision of its last write (ModRevision), which the API server exposes as
// metadata.resourceVersion.
package store

import (
	"context"
	"fmt"
	"strconv"
	"strings"
)

// KV is one stored value with the revision of its last write and of its creation.
type KV struct {
	Key         string
	Value       []byte
	ModRevision int64
	// CreateRevision is the revision of the write that created the key (for a Delete event,
	// of the key that was deleted). Revisions are totally ordered, so it orders objects by
	// creation exactly, where timestamps may tie.
	CreateRevision int64
}

// EventType says what happened to a key.
type EventType int

const (
	Put    EventType = iota + 1 // created or updated
	Delete                      // deleted
)

func (t EventType) String() string {
	switch t {
	case Put:
		return "PUT"
	case Delete:
		return "DELETE"
	}
	return "UNKNOWN"
}

// Event is one change seen by a watch. For Put, KV holds the new value and PrevValue the old
// one (nil when the key was created). For Delete, KV.Value is nil, KV.ModRevision is the
// revision of the delete, and PrevValue holds the last value before the delete.
type Event struct {
	Type      EventType
	KV        KV
	PrevValue []byte
	// Created is true for a Put that created the key.
	Created bool
}

// ListOptions restricts a List.
type ListOptions struct {
	// Limit caps the number of items returned; 0 means no limit.
	Limit int64
	// After, when set, returns only keys strictly greater than it (for paging).
	After string
	// Revision, when non-zero, reads as of that revision (used to page consistently).
	// Implementations that cannot read the past return errs.ErrCompacted when it is gone.
	Revision int64
}

// ListResult is a page of a List.
type ListResult struct {
	KVs []KV
	// Revision is the store revision the list was read at.
	Revision int64
	// More is true when keys past the page remain.
	More bool
}

// Store is what the API server needs from a key-value store.
//
// Errors are classified with the sentinels of package errs: ErrNotFound, ErrAlreadyExists,
// ErrConflict (compare-and-swap lost), ErrCompacted (watch or list revision too old),
// ErrUnavailable (backend not reachable), ErrFenced (the write's fence no longer holds).
//
// A write (Create, Update, Delete) whose context carries a Fence (WithFence) is made only if
// the fence holds at the moment of the write, atomically with it; otherwise it fails with
// errs.ErrFenced and writes nothing. Stores that several processes share implement
// FenceChecker and check fences; a store only one process opens (bolt) ignores them.
type Store interface {
	// Get returns the value at key.
	Get(ctx context.Context, key string) (KV, error)
	// List returns the keys starting with prefix, in key order.
	List(ctx context.Context, prefix string, opts ListOptions) (ListResult, error)
	// Create writes key only if it does not exist, and returns the new revision.
	Create(ctx context.Context, key string, value []byte) (int64, error)
	// Update writes key only if its current ModRevision equals expectRev, and returns the
	// new revision. A missing key gives ErrNotFound; a different revision gives ErrConflict.
	Update(ctx context.Context, key string, value []byte, expectRev int64) (int64, error)
	// Delete removes key; when expectRev is non-zero it must match the current ModRevision.
	// It returns the revision of the delete and the last value.
	Delete(ctx context.Context, key string, expectRev int64) (int64, []byte, error)
	// Watch streams the events on keys with the given prefix that happen after revision
	// fromRev (exclusive), in revision order. fromRev 0 means "from now". When fromRev is
	// older than the store keeps, the channel delivers a single WatchResult with Err wrapping
	// errs.ErrCompacted and is closed. The channel is closed when ctx ends.
	Watch(ctx context.Context, prefix string, fromRev int64) <-chan WatchResult
	// Revision returns the current store revision.
	Revision(ctx context.Context) (int64, error)
	// Close releases the store.
	Close() error
}

// WatchResult carries either events or a terminal error.
type WatchResult struct {
	Events []Event
	Err    error
}

// Fence makes a write conditional on a leadership term: the write is made only while Key
// exists with the create revision Term. The controllers' leader holds its election key
// (bound to its lease) for its whole term, and the key's create revision is the term: once
// the lease is lost the key is gone (or a new one has another revision), so no write sent
// under the old term can land, however late it arrives.
type Fence struct {
	Key  string // a store key, e.g. /controlplane/election/694d7b3c8a1e2f01
	Term int64  // Key's create revision
}

// IsZero says f is no fence.
func (f Fence) IsZero() bool { return f == Fence{} }

// String is the fence's wire form, TERM@KEY (the request header the controllers send).
func (f Fence) String() string { return strconv.FormatInt(f.Term, 10) + "@" + f.Key }

// ParseFence reads the form String writes.
func ParseFence(s string) (Fence, error) {
	term, key, ok := strings.Cut(s, "@")
	n, err := strconv.ParseInt(term, 10, 64)
	if !ok || err != nil || n <= 0 || !strings.HasPrefix(key, "/") {
		return Fence{}, fmt.Errorf("fence %q: want TERM@KEY, TERM a positive revision and KEY a store key", s)
	}
	return Fence{Key: key, Term: n}, nil
}

type fenceKey struct{}

// WithFence returns a context whose writes are fenced by f.
func WithFence(ctx context.Context, f Fence) context.Context {
	return context.WithValue(ctx, fenceKey{}, f)
}

// FenceFrom returns the fence of ctx, if any.
func FenceFrom(ctx context.Context) (Fence, bool) {
	f, ok := ctx.Value(fenceKey{}).(Fence)
	return f, ok && !f.IsZero()
}

// FenceChecker is implemented by stores that check the fences of writes (see Store). The
// conformance suite expects a stale fence to be refused by them and ignored by the others.
type FenceChecker interface {
	ChecksFences() bool
}
