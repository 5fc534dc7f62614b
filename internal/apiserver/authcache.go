package apiserver

import (
	"context"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rakhsh/rakhsh/internal/store"
)

// authCache keeps the store records that every request of a user reads (its token record,
// its User, the Project of the request), so that a known user's request costs no store read.
// It is kept right by a watch on their prefixes, from the store, so writes made through other
// API servers reach it too:
//
//   - a record is kept only when it was read while the watch ran, and no event arrived
//     during the read (such a read may predate the event's change);
//   - an event drops its key;
//   - writes through this server drop their key before they return (cacheStore), so that a
//     revocation, a disabled user or a removed member takes effect for the next request here
//     without waiting for the event;
//   - when the watch ends (store restart, compaction), everything is dropped and nothing is
//     kept until a new watch runs.
//
// What the records say is still checked on every request: a token's expiry, a user's
// disabled flag, the project's members.
type authCache struct {
	st       store.Store // the store itself, not cacheStore
	prefixes []string
	mu       sync.Mutex
	running  bool   // the watch runs: entries may be kept
	started  bool   // the watching goroutine exists
	gen      uint64 // counts events and drops: a read that saw it change is not kept
	entries  map[string]authEntry
}

// authEntry is a kept record, and what it decoded to (nil until a reader decoded it): the
// decoded value is shared by readers, which must not change it.
type authEntry struct {
	kv  store.KV
	val any
	at  time.Time
}

// authCacheMax bounds the entries (a token record, a User or a Project each); when full, the
// cache starts again empty.
const authCacheMax = 20000

// authCacheRetry is how long the cache waits before watching again after a watch ended.
const authCacheRetry = time.Second

// authCacheMaxAge bounds how long an entry is used without reading the store again: a watch
// that stalls without ending (an etcd client cut off from every member retries quietly) then
// leaves a change made elsewhere unseen for at most this long.
const authCacheMaxAge = 10 * time.Second

func newAuthCache(st store.Store, prefixes ...string) *authCache {
	return &authCache{st: st, prefixes: prefixes, entries: map[string]authEntry{}}
}

// get reads key from the cache, or from the store (keeping it when allowed), with the value
// decode made of it; the first call starts the watch, which ends with life.
func (c *authCache) get(ctx, life context.Context, key string, decode func([]byte) (any, error)) (store.KV, any, error) {
	c.mu.Lock()
	if e, ok := c.entries[key]; ok && e.val != nil && time.Since(e.at) < authCacheMaxAge {
		c.mu.Unlock()
		return e.kv, e.val, nil
	}
	if !c.started {
		c.started = true
		go c.watch(life)
	}
	running, gen := c.running, c.gen
	c.mu.Unlock()
	kv, err := c.st.Get(ctx, key)
	if err != nil {
		return kv, nil, err
	}
	val, err := decode(kv.Value)
	if err != nil || !running {
		return kv, val, err
	}
	c.mu.Lock()
	if c.running && c.gen == gen {
		if len(c.entries) >= authCacheMax {
			clear(c.entries)
		}
		c.entries[key] = authEntry{kv: kv, val: val, at: time.Now()}
	}
	c.mu.Unlock()
	return kv, val, nil
}

// cachedRecord reads a token record, User or Project through the server's authCache and
// decodes it (decode must be the same for every reader of key's kind, and its result is
// shared: readers must not change it).
func cachedRecord[T any](ctx context.Context, s *Server, key string, decode func([]byte) (T, error)) (T, error) {
	dec := func(b []byte) (any, error) { return decode(b) }
	var kv store.KV
	var val any
	var err error
	if s.authCache == nil {
		kv, err = s.store.Get(ctx, key)
		if err == nil {
			val, err = dec(kv.Value)
		}
	} else {
		kv, val, err = s.authCache.get(ctx, s.ctx, key, dec)
	}
	if err != nil {
		var zero T
		return zero, err
	}
	if v, ok := val.(T); ok {
		return v, nil
	}
	return decode(kv.Value) // kept by a reader of another type (not expected)
}

// drop forgets key.
func (c *authCache) drop(key string) {
	c.mu.Lock()
	delete(c.entries, key)
	c.gen++
	c.mu.Unlock()
}

// covers says key is under one of the cache's prefixes.
func (c *authCache) covers(key string) bool {
	return slices.ContainsFunc(c.prefixes, func(p string) bool { return strings.HasPrefix(key, p) })
}

func (c *authCache) setRunning(on bool) {
	c.mu.Lock()
	c.running = on
	c.gen++
	clear(c.entries)
	c.mu.Unlock()
}

// watch follows the prefixes until life ends, watching again after a failure.
func (c *authCache) watch(life context.Context) {
	for life.Err() == nil {
		c.watchOnce(life)
		select {
		case <-life.Done():
		case <-time.After(authCacheRetry):
		}
	}
}

// watchOnce watches the prefixes from the store's current revision until one of the watches
// ends; the cache is used only meanwhile.
func (c *authCache) watchOnce(life context.Context) {
	rev, err := c.st.Revision(life)
	if err != nil {
		return
	}
	ctx, cancel := context.WithCancel(life)
	defer cancel()
	ended := make(chan struct{}, len(c.prefixes))
	for _, p := range c.prefixes {
		ch := c.st.Watch(ctx, p, rev)
		go func() {
			defer func() { ended <- struct{}{} }()
			for res := range ch {
				if res.Err != nil {
					return
				}
				for _, ev := range res.Events {
					c.drop(ev.KV.Key)
				}
			}
		}()
	}
	c.setRunning(true)
	defer c.setRunning(false)
	select {
	case <-ended:
	case <-ctx.Done():
	}
}

// cacheStore drops the keys of the authCache that writes through it touch.
type cacheStore struct {
	store.Store
	cache *authCache
}

func (s cacheStore) Create(ctx context.Context, key string, value []byte) (int64, error) {
	defer s.dropIfCovered(key)
	return s.Store.Create(ctx, key, value)
}

func (s cacheStore) Update(ctx context.Context, key string, value []byte, expectRev int64) (int64, error) {
	defer s.dropIfCovered(key)
	return s.Store.Update(ctx, key, value, expectRev)
}

func (s cacheStore) Delete(ctx context.Context, key string, expectRev int64) (int64, []byte, error) {
	defer s.dropIfCovered(key)
	return s.Store.Delete(ctx, key, expectRev)
}

func (s cacheStore) dropIfCovered(key string) {
	if s.cache.covers(key) {
		s.cache.drop(key)
	}
}
