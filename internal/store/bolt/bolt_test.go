package bolt

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/store"
	"github.com/rakhsh/rakhsh/internal/store/storetest"
)

func open(t testing.TB, path string, opts Options) *Store {
	t.Helper()
	s, err := Open(path, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func newStore(t testing.TB) store.Store {
	return open(t, filepath.Join(t.TempDir(), "rakhsh.db"), Options{})
}

func TestConformance(t *testing.T) {
	storetest.Run(t, newStore)
}

func TestReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rakhsh.db")
	storetest.RunReopen(t, func(t testing.TB) store.Store { return open(t, path, Options{}) })
}

func BenchmarkStore(b *testing.B) {
	storetest.Bench(b, newStore)
}

func TestReopenHistoryEmpty(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "rakhsh.db")
	s := open(t, path, Options{})
	r1, err := s.Create(ctx, "/k", []byte("v"))
	if err != nil {
		t.Fatal(err)
	}
	r2, err := s.Update(ctx, "/k", []byte("v2"), r1)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, path, Options{})
	if rev, _ := s.Revision(ctx); rev != r2 {
		t.Fatalf("revision after reopen = %d, want %d", rev, r2)
	}
	r := <-s.Watch(ctx, "/", r1)
	if !errors.Is(r.Err, errs.ErrCompacted) {
		t.Fatalf("watch from before reopen: %+v, want ErrCompacted", r)
	}
	if _, err := s.List(ctx, "/", store.ListOptions{Revision: r1}); !errors.Is(err, errs.ErrCompacted) {
		t.Fatalf("list from before reopen: err = %v, want ErrCompacted", err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := s.Watch(wctx, "/", r2)
	r3, err := s.Update(ctx, "/k", []byte("v3"), r2)
	if err != nil {
		t.Fatal(err)
	}
	res := <-ch
	if res.Err != nil || len(res.Events) != 1 || res.Events[0].KV.ModRevision != r3 || string(res.Events[0].PrevValue) != "v2" {
		t.Fatalf("watch from current revision after reopen: %+v", res)
	}
}

func TestHistoryOverflow(t *testing.T) {
	ctx := context.Background()
	s := open(t, filepath.Join(t.TempDir(), "rakhsh.db"), Options{HistorySize: 5})
	var revs []int64
	for i := range 10 {
		rev, err := s.Create(ctx, fmt.Sprintf("/k/%d", i), []byte("v"))
		if err != nil {
			t.Fatal(err)
		}
		revs = append(revs, rev)
	}
	// The history holds the last 5 revisions: a watch may start after revs[4].
	if r := <-s.Watch(ctx, "/", revs[3]); !errors.Is(r.Err, errs.ErrCompacted) {
		t.Fatalf("watch before the history: %+v, want ErrCompacted", r)
	}
	if _, err := s.List(ctx, "/", store.ListOptions{Revision: revs[3]}); !errors.Is(err, errs.ErrCompacted) {
		t.Fatalf("list before the history: err = %v, want ErrCompacted", err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r := <-s.Watch(wctx, "/", revs[4])
	if r.Err != nil || len(r.Events) != 5 || r.Events[0].KV.ModRevision != revs[5] {
		t.Fatalf("watch from the oldest kept revision: %+v", r)
	}
	res, err := s.List(ctx, "/", store.ListOptions{Revision: revs[4]})
	if err != nil || len(res.KVs) != 5 {
		t.Fatalf("list at the oldest kept revision: %d items, %v", len(res.KVs), err)
	}
}

func TestSlowWatcherEnded(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := open(t, filepath.Join(t.TempDir(), "rakhsh.db"), Options{WatchQueue: 5})
	slow := s.Watch(ctx, "/", 0)
	fast := s.Watch(ctx, "/", 0)
	got := make(chan int, 1)
	seen := make(chan int, 50) // the fast watcher's count after each result
	go func() {
		n := 0
		for r := range fast {
			if r.Err != nil {
				t.Errorf("fast watcher: %v", r.Err)
			}
			n += len(r.Events)
			seen <- n
			if n == 50 {
				break
			}
		}
		got <- n
	}()
	// Each write waits until the fast watcher has its event (a loaded machine may not run its
	// goroutine for a while, and it would fall behind too); a write blocked by the slow
	// watcher, which never reads, would hang here.
	t0 := time.Now()
	for i := range 50 {
		if _, err := s.Create(ctx, fmt.Sprintf("/k/%02d", i), []byte("v")); err != nil {
			t.Fatal(err)
		}
		for n := 0; n < i+1; {
			select {
			case n = <-seen:
			case <-time.After(30 * time.Second):
				t.Fatalf("the fast watcher did not get write %d within 30 s (a write blocked by the slow watcher?)", i)
			}
		}
	}
	if d := time.Since(t0); d > 30*time.Second {
		t.Fatalf("writes took %v with a stuck watcher", d)
	}
	if n := <-got; n != 50 {
		t.Fatalf("fast watcher got %d events", n)
	}
	var last store.WatchResult
	n := 0
	for r := range slow {
		n += len(r.Events)
		last = r
	}
	if !errors.Is(last.Err, errs.ErrCompacted) || n > 6 {
		t.Fatalf("slow watcher got %d events and then %v, want ErrCompacted", n, last.Err)
	}
}

func TestLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rakhsh.db")
	open(t, path, Options{})
	_, err := Open(path, Options{LockTimeout: 100 * time.Millisecond})
	if !errors.Is(err, errs.ErrUnavailable) {
		t.Fatalf("second Open: err = %v, want ErrUnavailable", err)
	}
}

// TestListPastRandom checks lists at past revisions against a model of every revision.
func TestListPastRandom(t *testing.T) {
	ctx := context.Background()
	s := open(t, filepath.Join(t.TempDir(), "rakhsh.db"), Options{HistorySize: 400})
	rng := rand.New(rand.NewPCG(1, 2))
	type state map[string]store.KV
	cur := state{}
	snaps := map[int64]state{}
	keys := []string{"/a", "/a/1", "/a/2", "/a/3", "/a/4", "/a/5", "/a/6", "/ab", "/b/1"}
	var revs []int64
	for i := range 300 {
		k := keys[rng.IntN(len(keys))]
		old, exists := cur[k]
		val := []byte(fmt.Sprint(i))
		var rev int64
		var err error
		deleted := false
		next := maps.Clone(cur)
		switch {
		case !exists:
			rev, err = s.Create(ctx, k, val)
		case rng.IntN(3) == 0:
			rev, _, err = s.Delete(ctx, k, old.ModRevision)
			delete(next, k)
			deleted = true
		default:
			rev, err = s.Update(ctx, k, val, old.ModRevision)
		}
		if err != nil {
			t.Fatal(err)
		}
		if !deleted {
			created := rev
			if exists {
				created = old.CreateRevision
			}
			next[k] = store.KV{Key: k, Value: val, ModRevision: rev, CreateRevision: created}
		}
		cur = next
		snaps[rev] = cur
		revs = append(revs, rev)
	}
	for range 500 {
		rev := revs[rng.IntN(len(revs))]
		prefix := []string{"/", "/a", "/a/", "/b/", "/c"}[rng.IntN(5)]
		opts := store.ListOptions{Revision: rev, Limit: int64(rng.IntN(4)), After: []string{"", "/a/2", "/a/25", "/ab"}[rng.IntN(4)]}
		res, err := s.List(ctx, prefix, opts)
		if err != nil {
			t.Fatalf("List %q %+v: %v", prefix, opts, err)
		}
		var want []store.KV
		for _, k := range keys {
			if kv, ok := snaps[rev][k]; ok && len(k) >= len(prefix) && k[:len(prefix)] == prefix && k > opts.After {
				want = append(want, kv)
			}
		}
		more := false
		if opts.Limit > 0 && len(want) > int(opts.Limit) {
			want, more = want[:opts.Limit], true
		}
		if fmt.Sprint(res.KVs) != fmt.Sprint(want) || res.More != more || res.Revision != rev {
			t.Fatalf("List %q %+v:\n got %v more=%v rev=%d\nwant %v more=%v", prefix, opts, res.KVs, res.More, res.Revision, want, more)
		}
	}
}
