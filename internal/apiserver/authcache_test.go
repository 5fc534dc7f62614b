package apiserver

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/internal/store"
	"github.com/rakhsh/rakhsh/internal/store/bolt"
)

func rawValue(b []byte) (any, error) { return string(b), nil }

// tempBolt is a bolt store in the test's temporary directory, closed with the test.
func tempBolt(t testing.TB) *bolt.Store {
	t.Helper()
	return boltIn(t, t.TempDir())
}

// boltIn is a bolt store in dir/db, closed with the test.
func boltIn(t testing.TB, dir string) *bolt.Store {
	t.Helper()
	st, err := bolt.Open(filepath.Join(dir, "db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// countingStore counts Gets.
type countingStore struct {
	store.Store
	gets int
}

func (c *countingStore) Get(ctx context.Context, key string) (store.KV, error) {
	c.gets++
	return c.Store.Get(ctx, key)
}

// TestAuthCache: a record read while the watch runs is served from the cache; a write through
// the wrapping store drops it at once, a write that bypasses it (another API server) is
// dropped by the watch; a watch that ends empties the cache.
func TestAuthCache(t *testing.T) {
	raw := tempBolt(t)
	ctx := context.Background()
	life, end := context.WithCancel(ctx)
	defer end()
	cs := &countingStore{Store: raw}
	c := newAuthCache(cs, "/identity/tokens/", "/users/")
	through := cacheStore{Store: raw, cache: c}
	if _, err := raw.Create(ctx, "/users/ann", []byte(`{"v":1}`)); err != nil {
		t.Fatal(err)
	}
	waitRunning := func() {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			c.mu.Lock()
			on := c.running
			c.mu.Unlock()
			if on {
				return
			}
			if time.Now().After(deadline) {
				t.Fatal("the cache's watch did not start")
			}
		}
	}
	value := func(key string) string {
		t.Helper()
		kv, _, err := c.get(ctx, life, key, rawValue)
		if err != nil {
			t.Fatalf("get %s: %v", key, err)
		}
		return string(kv.Value)
	}
	value("/users/ann") // starts the watch; not kept before it runs
	waitRunning()
	cs.gets = 0
	for range 3 {
		if v := value("/users/ann"); v != `{"v":1}` {
			t.Fatalf("value %s", v)
		}
	}
	if cs.gets != 1 {
		t.Errorf("%d store reads for 3 gets of a known key, want 1", cs.gets)
	}

	// A write through this server: the next get reads the new value, with no wait.
	kv, _ := raw.Get(ctx, "/users/ann")
	if _, err := through.Update(ctx, "/users/ann", []byte(`{"v":2}`), kv.ModRevision); err != nil {
		t.Fatal(err)
	}
	if v := value("/users/ann"); v != `{"v":2}` {
		t.Errorf("after an update through the server: %s", v)
	}

	// A write elsewhere (straight into the store): the watch drops the key.
	kv, _ = raw.Get(ctx, "/users/ann")
	if _, err := raw.Update(ctx, "/users/ann", []byte(`{"v":3}`), kv.ModRevision); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); value("/users/ann") != `{"v":3}`; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("a change made by another server never reached the cache")
		}
	}

	// A deleted record is gone at once when deleted through the server.
	kv, _ = raw.Get(ctx, "/users/ann")
	if _, _, err := through.Delete(ctx, "/users/ann", kv.ModRevision); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.get(ctx, life, "/users/ann", rawValue); err == nil {
		t.Error("a deleted user is still served")
	}

	// Keys outside the prefixes are not dropped by writes (nothing to drop) and the cache
	// ends with its watch.
	if c.covers("/projects/p") || !c.covers("/identity/tokens/abc") {
		t.Error("covers")
	}
	end()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		c.mu.Lock()
		on, n := c.running, len(c.entries)
		c.mu.Unlock()
		if !on && n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after its watch ended the cache runs %v with %d entries", on, n)
		}
	}
}

// hookStore runs during each Get after reading (an event arriving while a read is on its
// way).
type hookStore struct {
	store.Store
	during func()
}

func (h hookStore) Get(ctx context.Context, key string) (store.KV, error) {
	kv, err := h.Store.Get(ctx, key)
	h.during()
	return kv, err
}

// TestAuthCacheRace: a read that an event overtakes is not kept; the next read goes to the
// store again.
func TestAuthCacheRace(t *testing.T) {
	raw := tempBolt(t)
	ctx := context.Background()
	if _, err := raw.Create(ctx, "/users/bob", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	var c *authCache
	reads := 0
	c = newAuthCache(hookStore{Store: raw, during: func() { reads++; c.drop("/users/bob") }}, "/users/")
	c.running, c.started = true, true // as if the watch ran
	for range 2 {
		if _, _, err := c.get(ctx, ctx, "/users/bob", rawValue); err != nil {
			t.Fatal(err)
		}
	}
	if reads != 2 || len(c.entries) != 0 {
		t.Errorf("%d store reads, %d entries: a read overtaken by an event was kept", reads, len(c.entries))
	}
}
