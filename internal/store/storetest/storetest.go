// Package storetest is the conformance suite every store.Store implementation passes, plus
// shared benchmarks.
//
// A backend's test calls Run with a function returning a fresh, empty store (a new file, or a
// new key prefix on a shared server); the function registers its own cleanup. Stores that can
// drop old revisions implement Compactor so the suite can check the ErrCompacted paths.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/store"
)

// NewStore returns a fresh, empty store for one test and registers its cleanup on t.
type NewStore func(t testing.TB) store.Store

// Compactor is implemented by stores that can forget old revisions. After Compact(rev),
// watches from before rev-1 and lists before rev fail with ErrCompacted (a store may forget
// a little more: watching from rev-1 or listing at rev-1 may fail too), while lists at rev and
// watches from rev on keep working.
//
// Stores that implement store.FenceChecker must refuse writes under a stale fence with
// errs.ErrFenced; the others must ignore fences.
type Compactor interface {
	Compact(ctx context.Context, rev int64) error
}

// waitTime bounds every wait for a watch event.
const waitTime = 10 * time.Second

// Run runs the conformance suite; each subtest gets its own store from newStore.
func Run(t *testing.T, newStore NewStore) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"GetMissing", testGetMissing},
		{"CreateGet", testCreateGet},
		{"CreateExisting", testCreateExisting},
		{"Update", testUpdate},
		{"Delete", testDelete},
		{"DeleteExpectRev", testDeleteExpectRev},
		{"Revisions", testRevisions},
		{"CreateRevision", testCreateRevision},
		{"ListPrefix", testListPrefix},
		{"ListEmpty", testListEmpty},
		{"ListPaging", testListPaging},
		{"ListPastRevision", testListPastRevision},
		{"ListFutureRevision", testListFutureRevision},
		{"WatchFromNow", testWatchFromNow},
		{"WatchFromPast", testWatchFromPast},
		{"WatchPrefix", testWatchPrefix},
		{"WatchCancel", testWatchCancel},
		{"WatchCompacted", testWatchCompacted},
		{"ListCompacted", testListCompacted},
		{"ConcurrentCreate", testConcurrentCreate},
		{"ConcurrentUpdate", testConcurrentUpdate},
		{"InvalidKeys", testInvalidKeys},
		{"CanceledContext", testCanceledContext},
		{"Closed", testClosed},
		{"Fence", testFence},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, newStore(t))
		})
	}
}

// RunReopen checks that data and revisions survive a close and reopen. open must return a
// store on the same backing data every time it is called (same file, same prefix); RunReopen
// closes the stores it opens.
func RunReopen(t *testing.T, open NewStore) {
	ctx := context.Background()
	s1 := open(t)
	mustCreate(t, s1, "/r/a", "a1")
	rb := mustCreate(t, s1, "/r/b", "b1")
	ra := mustUpdate(t, s1, "/r/a", "a2", 0)
	if _, _, err := s1.Delete(ctx, "/r/b", rb); err != nil {
		t.Fatal(err)
	}
	rev1 := mustRevision(t, s1)
	if err := s1.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	s2 := open(t)
	defer s2.Close()
	kv := mustGet(t, s2, "/r/a")
	if string(kv.Value) != "a2" || kv.ModRevision != ra {
		t.Fatalf("after reopen /r/a = %q@%d, want %q@%d", kv.Value, kv.ModRevision, "a2", ra)
	}
	if _, err := s2.Get(ctx, "/r/b"); !errors.Is(err, errs.ErrNotFound) {
		t.Fatalf("after reopen deleted key: err = %v, want ErrNotFound", err)
	}
	rev2 := mustRevision(t, s2)
	if rev2 < rev1 {
		t.Fatalf("revision went back after reopen: %d < %d", rev2, rev1)
	}

	// A watch from the current revision works; one from before the reopen either replays
	// or reports ErrCompacted.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	now := s2.Watch(wctx, "/r/", rev2)
	old := s2.Watch(wctx, "/r/", ra-1)
	rc := mustCreate(t, s2, "/r/c", "c1")
	if rc <= rev2 {
		t.Fatalf("create after reopen got revision %d, want > %d", rc, rev2)
	}
	evs := collect(t, now, 1)
	checkEvent(t, evs[0], store.Put, "/r/c", "c1", rc, "", true)

	var got []store.Event
	for len(got) < 3 {
		select {
		case r, ok := <-old:
			if !ok {
				t.Fatalf("watch from before reopen closed after %d events", len(got))
			}
			if r.Err != nil {
				if !errors.Is(r.Err, errs.ErrCompacted) || len(got) > 0 {
					t.Fatalf("watch from before reopen: err %v after %d events, want ErrCompacted first", r.Err, len(got))
				}
				return
			}
			got = append(got, r.Events...)
		case <-time.After(waitTime):
			t.Fatalf("watch from before reopen: no result")
		}
	}
	checkEvent(t, got[0], store.Put, "/r/a", "a2", ra, "a1", false)
	if got[1].Type != store.Delete || got[1].KV.Key != "/r/b" || got[2].KV.Key != "/r/c" {
		t.Fatalf("watch from before reopen replayed %+v", got)
	}
}

func testGetMissing(t *testing.T, s store.Store) {
	_, err := s.Get(context.Background(), "/missing/key")
	if !errors.Is(err, errs.ErrNotFound) {
		t.Fatalf("Get missing: err = %v, want ErrNotFound", err)
	}
	if !strings.Contains(err.Error(), "/missing/key") {
		t.Errorf("error %q does not name the key", err)
	}
}

func testCreateGet(t *testing.T, s store.Store) {
	ctx := context.Background()
	val := []byte{0, 1, 2, 255, '{', '}'}
	rev, err := s.Create(ctx, "/c/bin", val)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if rev <= 0 {
		t.Fatalf("Create returned revision %d", rev)
	}
	val[0] = 99 // the store must have kept its own copy
	kv := mustGet(t, s, "/c/bin")
	if kv.Key != "/c/bin" || !bytes.Equal(kv.Value, []byte{0, 1, 2, 255, '{', '}'}) || kv.ModRevision != rev {
		t.Fatalf("Get = %+v, want value written at %d", kv, rev)
	}
	kv.Value[1] = 42 // nor may a caller's change to a result leak back
	if kv2 := mustGet(t, s, "/c/bin"); kv2.Value[1] != 1 {
		t.Fatalf("changing a Get result changed the stored value")
	}

	rev2, err := s.Create(ctx, "/c/empty", nil)
	if err != nil {
		t.Fatalf("Create empty value: %v", err)
	}
	kv = mustGet(t, s, "/c/empty")
	if len(kv.Value) != 0 || kv.ModRevision != rev2 {
		t.Fatalf("Get empty = %+v", kv)
	}
}

func testCreateExisting(t *testing.T, s store.Store) {
	rev := mustCreate(t, s, "/c/k", "v1")
	_, err := s.Create(context.Background(), "/c/k", []byte("v2"))
	if !errors.Is(err, errs.ErrAlreadyExists) {
		t.Fatalf("second Create: err = %v, want ErrAlreadyExists", err)
	}
	if !strings.Contains(err.Error(), "/c/k") {
		t.Errorf("error %q does not name the key", err)
	}
	if kv := mustGet(t, s, "/c/k"); string(kv.Value) != "v1" || kv.ModRevision != rev {
		t.Fatalf("failed Create changed the key: %+v", kv)
	}
}

func testUpdate(t *testing.T, s store.Store) {
	ctx := context.Background()
	r1 := mustCreate(t, s, "/u/k", "v1")
	r2 := mustUpdate(t, s, "/u/k", "v2", r1)
	if r2 <= r1 {
		t.Fatalf("Update revision %d not after %d", r2, r1)
	}
	if kv := mustGet(t, s, "/u/k"); string(kv.Value) != "v2" || kv.ModRevision != r2 {
		t.Fatalf("after Update Get = %q@%d, want v2@%d", kv.Value, kv.ModRevision, r2)
	}

	_, err := s.Update(ctx, "/u/k", []byte("stale"), r1)
	if !errors.Is(err, errs.ErrConflict) {
		t.Fatalf("Update with stale revision: err = %v, want ErrConflict", err)
	}
	if !strings.Contains(err.Error(), "/u/k") {
		t.Errorf("error %q does not name the key", err)
	}
	if _, err := s.Update(ctx, "/u/k", []byte("zero"), 0); !errors.Is(err, errs.ErrConflict) {
		t.Fatalf("Update with revision 0: err = %v, want ErrConflict", err)
	}
	if _, err := s.Update(ctx, "/u/k", []byte("future"), r2+1000); !errors.Is(err, errs.ErrConflict) {
		t.Fatalf("Update with future revision: err = %v, want ErrConflict", err)
	}
	if kv := mustGet(t, s, "/u/k"); string(kv.Value) != "v2" || kv.ModRevision != r2 {
		t.Fatalf("failed Updates changed the key: %+v", kv)
	}

	for _, rev := range []int64{0, r2} {
		_, err = s.Update(ctx, "/u/missing", []byte("x"), rev)
		if !errors.Is(err, errs.ErrNotFound) {
			t.Fatalf("Update missing key (rev %d): err = %v, want ErrNotFound", rev, err)
		}
	}
	if _, err := s.Get(ctx, "/u/missing"); !errors.Is(err, errs.ErrNotFound) {
		t.Fatalf("Update of a missing key created it: %v", err)
	}
}

func testDelete(t *testing.T, s store.Store) {
	ctx := context.Background()
	r1 := mustCreate(t, s, "/d/k", "last")
	rev, prev, err := s.Delete(ctx, "/d/k", 0)
	if err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if rev <= r1 || string(prev) != "last" {
		t.Fatalf("Delete = rev %d prev %q, want rev > %d prev %q", rev, prev, r1, "last")
	}
	if _, err := s.Get(ctx, "/d/k"); !errors.Is(err, errs.ErrNotFound) {
		t.Fatalf("Get after Delete: err = %v, want ErrNotFound", err)
	}
	_, _, err = s.Delete(ctx, "/d/k", 0)
	if !errors.Is(err, errs.ErrNotFound) {
		t.Fatalf("second Delete: err = %v, want ErrNotFound", err)
	}
	if !strings.Contains(err.Error(), "/d/k") {
		t.Errorf("error %q does not name the key", err)
	}
	// The key can be created again.
	r3 := mustCreate(t, s, "/d/k", "again")
	if r3 <= rev {
		t.Fatalf("re-Create revision %d not after delete %d", r3, rev)
	}
}

func testDeleteExpectRev(t *testing.T, s store.Store) {
	ctx := context.Background()
	r1 := mustCreate(t, s, "/d/k", "v1")
	r2 := mustUpdate(t, s, "/d/k", "v2", r1)
	_, _, err := s.Delete(ctx, "/d/k", r1)
	if !errors.Is(err, errs.ErrConflict) {
		t.Fatalf("Delete with stale revision: err = %v, want ErrConflict", err)
	}
	if !strings.Contains(err.Error(), "/d/k") {
		t.Errorf("error %q does not name the key", err)
	}
	if kv := mustGet(t, s, "/d/k"); kv.ModRevision != r2 {
		t.Fatalf("failed Delete changed the key: %+v", kv)
	}
	rev, prev, err := s.Delete(ctx, "/d/k", r2)
	if err != nil || rev <= r2 || string(prev) != "v2" {
		t.Fatalf("Delete with current revision = %d, %q, %v", rev, prev, err)
	}
	if _, _, err := s.Delete(ctx, "/d/k", r2); !errors.Is(err, errs.ErrNotFound) {
		t.Fatalf("Delete of deleted key with revision: err = %v, want ErrNotFound", err)
	}
}

func testRevisions(t *testing.T, s store.Store) {
	ctx := context.Background()
	last := mustRevision(t, s)
	next := func(rev int64, what string) {
		t.Helper()
		if rev <= last {
			t.Fatalf("%s: revision %d not after %d", what, rev, last)
		}
		last = rev
		if cur := mustRevision(t, s); cur < rev {
			t.Fatalf("%s: Revision() = %d, below the write's %d", what, cur, rev)
		}
	}
	for i := range 5 {
		next(mustCreate(t, s, fmt.Sprintf("/rev/%d", i), "v"), "Create")
	}
	next(mustUpdate(t, s, "/rev/0", "w", 0), "Update")
	rev, _, err := s.Delete(ctx, "/rev/1", 0)
	if err != nil {
		t.Fatal(err)
	}
	next(rev, "Delete")

	// Failed writes do not advance the revision.
	before := mustRevision(t, s)
	_, _ = s.Create(ctx, "/rev/2", []byte("dup"))
	_, _ = s.Update(ctx, "/rev/2", []byte("x"), 1)
	_, _, _ = s.Delete(ctx, "/rev/missing", 0)
	if after := mustRevision(t, s); after != before {
		t.Fatalf("failed writes moved the revision from %d to %d", before, after)
	}

	res, err := s.List(ctx, "/rev/", store.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Revision < last {
		t.Fatalf("List revision %d below last write %d", res.Revision, last)
	}
}

// testCreateRevision: every read and event carries the revision that created the key, which
// updates keep and a re-creation renews.
func testCreateRevision(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := s.Watch(ctx, "/c/", mustRevision(t, s))
	ra := mustCreate(t, s, "/c/a", "1")
	rb := mustCreate(t, s, "/c/b", "1")
	ra2 := mustUpdate(t, s, "/c/a", "2", ra)
	if kv := mustGet(t, s, "/c/a"); kv.CreateRevision != ra || kv.ModRevision != ra2 {
		t.Fatalf("get after update: created %d mod %d, want %d and %d", kv.CreateRevision, kv.ModRevision, ra, ra2)
	}
	res, err := s.List(ctx, "/c/", store.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	checkKVs(t, res.KVs, []store.KV{{Key: "/c/a", Value: []byte("2"), ModRevision: ra2, CreateRevision: ra},
		{Key: "/c/b", Value: []byte("1"), ModRevision: rb, CreateRevision: rb}})
	if _, _, err := s.Delete(ctx, "/c/a", 0); err != nil {
		t.Fatal(err)
	}
	ra3 := mustCreate(t, s, "/c/a", "3")
	if kv := mustGet(t, s, "/c/a"); kv.CreateRevision != ra3 {
		t.Fatalf("re-created key: created %d, want %d", kv.CreateRevision, ra3)
	}
	evs := collect(t, ch, 5)
	for i, want := range []int64{ra, rb, ra, ra, ra3} {
		if evs[i].KV.CreateRevision != want {
			t.Errorf("event %d (%s %s@%d): created %d, want %d", i, evs[i].Type, evs[i].KV.Key, evs[i].KV.ModRevision, evs[i].KV.CreateRevision, want)
		}
	}
}

func testListPrefix(t *testing.T, s store.Store) {
	ctx := context.Background()
	want := map[string]int64{}
	for _, k := range []string{"/a/2", "/a/1", "/a/sub/3"} {
		want[k] = mustCreate(t, s, k, "v"+k)
	}
	for _, k := range []string{"/ab/x", "/a", "/", "/b/1", "/0"} {
		mustCreate(t, s, k, "other")
	}
	res, err := s.List(ctx, "/a/", store.ListOptions{})
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	checkKeys(t, res.KVs, "/a/1", "/a/2", "/a/sub/3")
	for _, kv := range res.KVs {
		if kv.ModRevision != want[kv.Key] || string(kv.Value) != "v"+kv.Key {
			t.Errorf("List item %s = %q@%d, want %q@%d", kv.Key, kv.Value, kv.ModRevision, "v"+kv.Key, want[kv.Key])
		}
	}
	if res.More {
		t.Errorf("List without limit says More")
	}
	if cur := mustRevision(t, s); res.Revision != cur {
		t.Errorf("List revision %d, current %d", res.Revision, cur)
	}
	res.KVs[0].Value[0] = 'X'
	if kv := mustGet(t, s, "/a/1"); kv.Value[0] != 'v' {
		t.Errorf("changing a List result changed the stored value")
	}

	res, err = s.List(ctx, "/", store.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	checkKeys(t, res.KVs, "/", "/0", "/a", "/a/1", "/a/2", "/a/sub/3", "/ab/x", "/b/1")
}

func testListEmpty(t *testing.T, s store.Store) {
	mustCreate(t, s, "/x/1", "v")
	cur := mustRevision(t, s)
	res, err := s.List(context.Background(), "/nothing/", store.ListOptions{Limit: 10})
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if len(res.KVs) != 0 || res.More || res.Revision != cur {
		t.Fatalf("empty List = %+v, want no items at revision %d", res, cur)
	}
}

func testListPaging(t *testing.T, s store.Store) {
	ctx := context.Background()
	var all []string
	for i := range 10 {
		k := fmt.Sprintf("/p/%02d", i)
		all = append(all, k)
		mustCreate(t, s, k, "v")
	}
	mustCreate(t, s, "/q/0", "v")

	var got []string
	var after string
	var rev int64
	pages := 0
	for {
		res, err := s.List(ctx, "/p/", store.ListOptions{Limit: 3, After: after, Revision: rev})
		if err != nil {
			t.Fatalf("List page %d: %v", pages, err)
		}
		pages++
		if rev == 0 {
			rev = res.Revision
		} else if res.Revision != rev {
			t.Fatalf("page %d read at revision %d, asked %d", pages, res.Revision, rev)
		}
		if len(res.KVs) > 3 {
			t.Fatalf("page of %d items with Limit 3", len(res.KVs))
		}
		for _, kv := range res.KVs {
			got = append(got, kv.Key)
		}
		if !res.More {
			break
		}
		if len(res.KVs) == 0 {
			t.Fatalf("empty page with More")
		}
		after = res.KVs[len(res.KVs)-1].Key
		if pages > 10 {
			t.Fatalf("paging does not end")
		}
	}
	if pages != 4 || strings.Join(got, ",") != strings.Join(all, ",") {
		t.Fatalf("paged %d pages: %v, want 4 pages of %v", pages, got, all)
	}

	// A limit equal to what remains: no More.
	res, err := s.List(ctx, "/p/", store.ListOptions{Limit: 2, After: "/p/07"})
	if err != nil {
		t.Fatal(err)
	}
	checkKeys(t, res.KVs, "/p/08", "/p/09")
	if res.More {
		t.Errorf("last full page says More")
	}
	// After before the prefix starts at the prefix; after past it gives nothing.
	res, err = s.List(ctx, "/p/", store.ListOptions{Limit: 1, After: "/a"})
	if err != nil {
		t.Fatal(err)
	}
	checkKeys(t, res.KVs, "/p/00")
	if !res.More {
		t.Errorf("first page of one says no More")
	}
	res, err = s.List(ctx, "/p/", store.ListOptions{After: "/p/zz"})
	if err != nil {
		t.Fatal(err)
	}
	checkKeys(t, res.KVs)
	res, err = s.List(ctx, "/p/", store.ListOptions{After: "/z"})
	if err != nil {
		t.Fatal(err)
	}
	checkKeys(t, res.KVs)
	// After that is not a stored key.
	res, err = s.List(ctx, "/p/", store.ListOptions{After: "/p/04x"})
	if err != nil {
		t.Fatal(err)
	}
	checkKeys(t, res.KVs, "/p/05", "/p/06", "/p/07", "/p/08", "/p/09")
}

func testListPastRevision(t *testing.T, s store.Store) {
	ctx := context.Background()
	r1 := mustCreate(t, s, "/l/1", "one")
	r2 := mustCreate(t, s, "/l/2", "two")
	r3 := mustCreate(t, s, "/l/3", "three")
	past := mustRevision(t, s)
	mustUpdate(t, s, "/l/1", "ONE", r1)
	if _, _, err := s.Delete(ctx, "/l/2", 0); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, s, "/l/0", "zero")
	mustCreate(t, s, "/l/4", "four")
	mustUpdate(t, s, "/l/1", "One", 0)
	r3b := mustUpdate(t, s, "/l/3", "THREE", r3)
	if _, _, err := s.Delete(ctx, "/l/3", r3b); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, s, "/l/3", "3")

	want := []store.KV{{Key: "/l/1", Value: []byte("one"), ModRevision: r1, CreateRevision: r1},
		{Key: "/l/2", Value: []byte("two"), ModRevision: r2, CreateRevision: r2},
		{Key: "/l/3", Value: []byte("three"), ModRevision: r3, CreateRevision: r3}}
	res, err := s.List(ctx, "/l/", store.ListOptions{Revision: past})
	if err != nil {
		t.Fatalf("List at past revision: %v", err)
	}
	if res.Revision != past {
		t.Errorf("List at %d says revision %d", past, res.Revision)
	}
	checkKVs(t, res.KVs, want)

	// Paging at the past revision.
	var got []store.KV
	after := ""
	for range 5 {
		res, err := s.List(ctx, "/l/", store.ListOptions{Revision: past, Limit: 1, After: after})
		if err != nil {
			t.Fatalf("List page at past revision: %v", err)
		}
		got = append(got, res.KVs...)
		if !res.More {
			break
		}
		after = res.KVs[len(res.KVs)-1].Key
	}
	checkKVs(t, got, want)

	// The past state of the deleted key alone.
	res, err = s.List(ctx, "/l/2", store.ListOptions{Revision: past})
	if err != nil {
		t.Fatal(err)
	}
	checkKVs(t, res.KVs, want[1:2])
}

func testListFutureRevision(t *testing.T, s store.Store) {
	mustCreate(t, s, "/f/1", "v")
	cur := mustRevision(t, s)
	_, err := s.List(context.Background(), "/f/", store.ListOptions{Revision: cur + 1000})
	if err == nil {
		t.Fatalf("List at a future revision succeeded")
	}
	if !errors.Is(err, errs.ErrInvalid) {
		t.Fatalf("List at a future revision: err = %v, want ErrInvalid", err)
	}
}

func testWatchFromNow(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mustCreate(t, s, "/w/before", "x")
	ch := s.Watch(ctx, "/w/", 0)
	r1 := mustCreate(t, s, "/w/k", "v1")
	r2 := mustUpdate(t, s, "/w/k", "v2", r1)
	r3, _, err := s.Delete(ctx, "/w/k", r2)
	if err != nil {
		t.Fatal(err)
	}
	evs := collect(t, ch, 3)
	checkEvent(t, evs[0], store.Put, "/w/k", "v1", r1, "", true)
	checkEvent(t, evs[1], store.Put, "/w/k", "v2", r2, "v1", false)
	checkEvent(t, evs[2], store.Delete, "/w/k", "", r3, "v2", false)
	if evs[2].KV.Value != nil {
		t.Errorf("delete event has value %q", evs[2].KV.Value)
	}
	expectQuiet(t, ch)
}

func testWatchFromPast(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r0 := mustCreate(t, s, "/w/a", "a")
	r1 := mustCreate(t, s, "/w/b", "b")
	r2 := mustUpdate(t, s, "/w/a", "a2", r0)
	r3, _, err := s.Delete(ctx, "/w/b", 0)
	if err != nil {
		t.Fatal(err)
	}

	ch := s.Watch(ctx, "/w/", r0)
	r4 := mustCreate(t, s, "/w/c", "c")
	evs := collect(t, ch, 4)
	checkEvent(t, evs[0], store.Put, "/w/b", "b", r1, "", true)
	checkEvent(t, evs[1], store.Put, "/w/a", "a2", r2, "a", false)
	checkEvent(t, evs[2], store.Delete, "/w/b", "", r3, "b", false)
	checkEvent(t, evs[3], store.Put, "/w/c", "c", r4, "", true)
	expectQuiet(t, ch)

	// Watching from the current revision replays nothing.
	ch2 := s.Watch(ctx, "/w/", r4)
	r5 := mustUpdate(t, s, "/w/c", "c2", r4)
	evs = collect(t, ch2, 1)
	checkEvent(t, evs[0], store.Put, "/w/c", "c2", r5, "c", false)
}

func testWatchPrefix(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := s.Watch(ctx, "/p/", 0)
	all := s.Watch(ctx, "/", 0)
	r1 := mustCreate(t, s, "/p/x", "1")
	mustCreate(t, s, "/pq/y", "2")
	mustCreate(t, s, "/p", "3")
	mustCreate(t, s, "/q/p/", "4")
	r5 := mustCreate(t, s, "/p/z", "5")
	evs := collect(t, ch, 2)
	checkEvent(t, evs[0], store.Put, "/p/x", "1", r1, "", true)
	checkEvent(t, evs[1], store.Put, "/p/z", "5", r5, "", true)
	expectQuiet(t, ch)
	evs = collect(t, all, 5)
	for i := 1; i < len(evs); i++ {
		if evs[i].KV.ModRevision <= evs[i-1].KV.ModRevision {
			t.Fatalf("events out of order: %d after %d", evs[i].KV.ModRevision, evs[i-1].KV.ModRevision)
		}
	}
}

func testWatchCancel(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := s.Watch(ctx, "/c/", 0)
	mustCreate(t, s, "/c/1", "v")
	collect(t, ch, 1)
	cancel()
	mustCreate(t, s, "/c/2", "v") // may or may not be delivered before the close
	waitClosed(t, ch, "watch channel not closed after cancel", func(r store.WatchResult) {
		if r.Err != nil && !errors.Is(r.Err, context.Canceled) {
			t.Fatalf("unexpected error after cancel: %v", r.Err)
		}
	})
}

// waitClosed reads ch until it is closed, passing what it reads to check when check is not
// nil; the test fails with msg when ch is still open after waitTime.
func waitClosed(t *testing.T, ch <-chan store.WatchResult, msg string, check func(store.WatchResult)) {
	t.Helper()
	deadline := time.After(waitTime)
	for {
		select {
		case r, ok := <-ch:
			if !ok {
				return
			}
			if check != nil {
				check(r)
			}
		case <-deadline:
			t.Fatal(msg)
		}
	}
}

func testWatchCompacted(t *testing.T, s store.Store) {
	c, ok := s.(Compactor)
	if !ok {
		t.Skip("store does not implement Compact")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r1 := mustCreate(t, s, "/k/1", "v")
	mustUpdate(t, s, "/k/1", "v2", r1)
	r3 := mustCreate(t, s, "/k/2", "v")
	live := s.Watch(ctx, "/k/", r3)
	if err := c.Compact(ctx, r3); err != nil {
		t.Fatalf("Compact: %v", err)
	}
	ch := s.Watch(ctx, "/k/", r1)
	select {
	case r, ok := <-ch:
		if !ok {
			t.Fatalf("compacted watch closed without an error")
		}
		if !errors.Is(r.Err, errs.ErrCompacted) || len(r.Events) != 0 {
			t.Fatalf("compacted watch gave %+v, want ErrCompacted", r)
		}
	case <-time.After(waitTime):
		t.Fatalf("compacted watch: no result")
	}
	select {
	case r, ok := <-ch:
		if ok {
			t.Fatalf("compacted watch not closed after its error: %+v", r)
		}
	case <-time.After(waitTime):
		t.Fatalf("compacted watch not closed")
	}

	// Watches from the compaction revision on keep working.
	ch = s.Watch(ctx, "/k/", r3)
	r4 := mustCreate(t, s, "/k/3", "v")
	checkEvent(t, collect(t, ch, 1)[0], store.Put, "/k/3", "v", r4, "", true)
	checkEvent(t, collect(t, live, 1)[0], store.Put, "/k/3", "v", r4, "", true)
}

func testListCompacted(t *testing.T, s store.Store) {
	c, ok := s.(Compactor)
	if !ok {
		t.Skip("store does not implement Compact")
	}
	ctx := context.Background()
	r1 := mustCreate(t, s, "/k/1", "v")
	r2 := mustUpdate(t, s, "/k/1", "v2", r1)
	if err := c.Compact(ctx, r2); err != nil {
		t.Fatalf("Compact: %v", err)
	}
	if _, err := s.List(ctx, "/k/", store.ListOptions{Revision: r1}); !errors.Is(err, errs.ErrCompacted) {
		t.Fatalf("List at compacted revision: err = %v, want ErrCompacted", err)
	}
	res, err := s.List(ctx, "/k/", store.ListOptions{Revision: r2})
	if err != nil {
		t.Fatalf("List at compaction revision: %v", err)
	}
	checkKVs(t, res.KVs, []store.KV{{Key: "/k/1", Value: []byte("v2"), ModRevision: r2}})
}

func testConcurrentCreate(t *testing.T, s store.Store) {
	const n = 16
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins, dups := 0, 0
	var winRev int64
	var winVal string
	for i := range n {
		wg.Go(func() {
			val := fmt.Sprintf("writer-%d", i)
			rev, err := s.Create(context.Background(), "/cc/key", []byte(val))
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				wins++
				winRev, winVal = rev, val
			case errors.Is(err, errs.ErrAlreadyExists):
				dups++
			default:
				t.Errorf("Create: %v", err)
			}
		})
	}
	wg.Wait()
	if wins != 1 || dups != n-1 {
		t.Fatalf("%d creates won and %d lost, want 1 and %d", wins, dups, n-1)
	}
	if kv := mustGet(t, s, "/cc/key"); string(kv.Value) != winVal || kv.ModRevision != winRev {
		t.Fatalf("stored %q@%d, winner wrote %q@%d", kv.Value, kv.ModRevision, winVal, winRev)
	}
}

func testConcurrentUpdate(t *testing.T, s store.Store) {
	const workers, increments = 8, 25
	mustCreate(t, s, "/cu/counter", "0")
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			ctx := context.Background()
			for done := 0; done < increments; {
				kv, err := s.Get(ctx, "/cu/counter")
				if err != nil {
					t.Errorf("Get: %v", err)
					return
				}
				n, err := strconv.Atoi(string(kv.Value))
				if err != nil {
					t.Errorf("counter value %q: %v", kv.Value, err)
					return
				}
				_, err = s.Update(ctx, "/cu/counter", []byte(fmt.Sprint(n+1)), kv.ModRevision)
				switch {
				case err == nil:
					done++
				case errors.Is(err, errs.ErrConflict):
				default:
					t.Errorf("Update: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	if kv := mustGet(t, s, "/cu/counter"); string(kv.Value) != fmt.Sprint(workers*increments) {
		t.Fatalf("counter = %s after %d increments: lost updates", kv.Value, workers*increments)
	}
}

func testInvalidKeys(t *testing.T, s store.Store) {
	ctx := context.Background()
	for _, key := range []string{"", "nokey", "a/b"} {
		if _, err := s.Create(ctx, key, []byte("v")); !errors.Is(err, errs.ErrInvalid) {
			t.Errorf("Create %q: err = %v, want ErrInvalid", key, err)
		}
		if _, err := s.Update(ctx, key, []byte("v"), 1); !errors.Is(err, errs.ErrInvalid) {
			t.Errorf("Update %q: err = %v, want ErrInvalid", key, err)
		}
		if _, _, err := s.Delete(ctx, key, 0); !errors.Is(err, errs.ErrInvalid) {
			t.Errorf("Delete %q: err = %v, want ErrInvalid", key, err)
		}
	}
	if _, err := s.List(ctx, "x", store.ListOptions{}); !errors.Is(err, errs.ErrInvalid) {
		t.Errorf("List prefix without slash: err = %v, want ErrInvalid", err)
	}
	if _, err := s.List(ctx, "/", store.ListOptions{Limit: -1}); !errors.Is(err, errs.ErrInvalid) {
		t.Errorf("List with negative limit: err = %v, want ErrInvalid", err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	select {
	case r := <-s.Watch(wctx, "x", 0):
		if !errors.Is(r.Err, errs.ErrInvalid) {
			t.Errorf("Watch prefix without slash: %+v, want ErrInvalid", r)
		}
	case <-time.After(waitTime):
		t.Errorf("Watch prefix without slash: no result")
	}
}

func testCanceledContext(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Create(ctx, "/cx/k", []byte("v")); err == nil {
		t.Fatalf("Create with a canceled context succeeded")
	}
	if _, err := s.Get(context.Background(), "/cx/k"); !errors.Is(err, errs.ErrNotFound) {
		t.Fatalf("Create with a canceled context wrote the key (Get: %v)", err)
	}
	if _, err := s.Get(ctx, "/cx/k"); err == nil {
		t.Fatalf("Get with a canceled context succeeded")
	}
	ch := s.Watch(ctx, "/cx/", 0)
	select {
	case r, ok := <-ch:
		if ok && r.Err == nil {
			t.Fatalf("watch with a canceled context delivered %+v", r)
		}
	case <-time.After(waitTime):
		t.Fatalf("watch with a canceled context not closed")
	}
}

func testClosed(t *testing.T, s store.Store) {
	ctx := context.Background()
	mustCreate(t, s, "/z/k", "v")
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := s.Watch(wctx, "/z/", 0)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.Get(ctx, "/z/k"); !errors.Is(err, errs.ErrUnavailable) {
		t.Errorf("Get after Close: err = %v, want ErrUnavailable", err)
	}
	if _, err := s.Create(ctx, "/z/k2", nil); !errors.Is(err, errs.ErrUnavailable) {
		t.Errorf("Create after Close: err = %v, want ErrUnavailable", err)
	}
	if _, err := s.List(ctx, "/z/", store.ListOptions{}); !errors.Is(err, errs.ErrUnavailable) {
		t.Errorf("List after Close: err = %v, want ErrUnavailable", err)
	}
	// An open watch ends (with or without an error) when the store closes.
	waitClosed(t, ch, "watch not ended by Close", nil)
}

// testFence checks writes under a store.Fence. Stores that check fences make a write only
// while the fence key exists with the fence's term as its create revision: once the key is
// deleted or recreated (a new term), every write under the old fence fails with ErrFenced
// and writes nothing, even one whose own compare-and-swap would also fail. Stores that do
// not check fences (one process) make the writes as if there were none.
func testFence(t *testing.T, s store.Store) {
	ctx := context.Background()
	fc, ok := s.(store.FenceChecker)
	checks := ok && fc.ChecksFences()
	holder := "/fence/election/holder"
	term1 := mustCreate(t, s, holder, "leader 1")
	cur := store.WithFence(ctx, store.Fence{Key: holder, Term: term1})

	// Under the current fence every write is made.
	r1, err := s.Create(cur, "/fence/obj/a", []byte("v1"))
	if err != nil {
		t.Fatalf("Create under the current fence: %v", err)
	}
	r2, err := s.Update(cur, "/fence/obj/a", []byte("v2"), r1)
	if err != nil {
		t.Fatalf("Update under the current fence: %v", err)
	}
	mustCreate(t, s, "/fence/obj/b", "b")
	if _, _, err := s.Delete(cur, "/fence/obj/b", 0); err != nil {
		t.Fatalf("Delete under the current fence: %v", err)
	}
	// A lost compare-and-swap under a holding fence stays a conflict.
	if _, err := s.Update(cur, "/fence/obj/a", []byte("x"), r1); !errors.Is(err, errs.ErrConflict) || errors.Is(err, errs.ErrFenced) {
		t.Fatalf("stale Update under the current fence: err = %v, want ErrConflict", err)
	}
	if _, err := s.Create(cur, "/fence/obj/a", []byte("x")); !errors.Is(err, errs.ErrAlreadyExists) {
		t.Fatalf("Create of an existing key under the current fence: err = %v, want ErrAlreadyExists", err)
	}

	// A new term: the holder key is deleted (its lease ended) and made again.
	if _, _, err := s.Delete(ctx, holder, 0); err != nil {
		t.Fatal(err)
	}
	term2 := mustCreate(t, s, holder, "leader 2")
	stale := store.WithFence(ctx, store.Fence{Key: holder, Term: term1})
	mustCreate(t, s, "/fence/obj/c", "c")
	_, createErr := s.Create(stale, "/fence/obj/new", []byte("x"))
	_, updateErr := s.Update(stale, "/fence/obj/a", []byte("x"), r2)
	_, staleCASErr := s.Update(stale, "/fence/obj/a", []byte("x"), r1)
	_, _, deleteErr := s.Delete(stale, "/fence/obj/c", 0)
	_, missingErr := s.Create(store.WithFence(ctx, store.Fence{Key: "/fence/election/none", Term: term1}), "/fence/obj/new2", []byte("x"))
	if !checks {
		// The writes were made (all but the stale compare-and-swap); fences are ignored.
		for name, err := range map[string]error{"Create": createErr, "Update": updateErr, "Delete": deleteErr, "Create (missing fence key)": missingErr} {
			if err != nil {
				t.Errorf("%s under a stale fence on a store that ignores fences: %v", name, err)
			}
		}
		if !errors.Is(staleCASErr, errs.ErrConflict) {
			t.Errorf("stale Update under a stale fence on a store that ignores fences: err = %v, want ErrConflict", staleCASErr)
		}
		return
	}
	for name, err := range map[string]error{"Create": createErr, "Update": updateErr, "Update with a stale revision": staleCASErr,
		"Delete": deleteErr, "Create under a fence whose key is missing": missingErr} {
		if !errors.Is(err, errs.ErrFenced) {
			t.Errorf("%s under a stale fence: err = %v, want ErrFenced", name, err)
		} else if errors.Is(err, errs.ErrConflict) || errors.Is(err, errs.ErrNotFound) {
			t.Errorf("%s under a stale fence: %v is also classed as another error", name, err)
		}
	}
	if kv := mustGet(t, s, "/fence/obj/a"); string(kv.Value) != "v2" || kv.ModRevision != r2 {
		t.Errorf("a fenced Update wrote: %q@%d", kv.Value, kv.ModRevision)
	}
	mustGet(t, s, "/fence/obj/c")
	for _, k := range []string{"/fence/obj/new", "/fence/obj/new2"} {
		if _, err := s.Get(ctx, k); !errors.Is(err, errs.ErrNotFound) {
			t.Errorf("a fenced Create made %s: %v", k, err)
		}
	}
	// Under the new term, writes are made again.
	next := store.WithFence(ctx, store.Fence{Key: holder, Term: term2})
	if _, err := s.Update(next, "/fence/obj/a", []byte("v3"), r2); err != nil {
		t.Errorf("Update under the new term's fence: %v", err)
	}
	if _, _, err := s.Delete(next, "/fence/obj/c", 0); err != nil {
		t.Errorf("Delete under the new term's fence: %v", err)
	}
}

// Helpers.

func mustCreate(t testing.TB, s store.Store, key, val string) int64 {
	t.Helper()
	rev, err := s.Create(context.Background(), key, []byte(val))
	if err != nil {
		t.Fatalf("Create %s: %v", key, err)
	}
	return rev
}

// mustUpdate updates key; rev 0 means "whatever the current revision is".
func mustUpdate(t testing.TB, s store.Store, key, val string, rev int64) int64 {
	t.Helper()
	if rev == 0 {
		rev = mustGet(t, s, key).ModRevision
	}
	nrev, err := s.Update(context.Background(), key, []byte(val), rev)
	if err != nil {
		t.Fatalf("Update %s: %v", key, err)
	}
	return nrev
}

func mustGet(t testing.TB, s store.Store, key string) store.KV {
	t.Helper()
	kv, err := s.Get(context.Background(), key)
	if err != nil {
		t.Fatalf("Get %s: %v", key, err)
	}
	return kv
}

func mustRevision(t testing.TB, s store.Store) int64 {
	t.Helper()
	rev, err := s.Revision(context.Background())
	if err != nil {
		t.Fatalf("Revision: %v", err)
	}
	return rev
}

// collect reads exactly n events from a watch, failing on an error, a close or a timeout.
func collect(t testing.TB, ch <-chan store.WatchResult, n int) []store.Event {
	t.Helper()
	var evs []store.Event
	deadline := time.After(waitTime)
	for len(evs) < n {
		select {
		case r, ok := <-ch:
			if !ok {
				t.Fatalf("watch closed after %d of %d events", len(evs), n)
			}
			if r.Err != nil {
				t.Fatalf("watch error after %d events: %v", len(evs), r.Err)
			}
			evs = append(evs, r.Events...)
		case <-deadline:
			t.Fatalf("got %d of %d watch events", len(evs), n)
		}
	}
	if len(evs) > n {
		t.Fatalf("got %d watch events, want %d: %+v", len(evs), n, evs)
	}
	return evs
}

// expectQuiet checks that a watch delivers nothing more for a short while.
func expectQuiet(t testing.TB, ch <-chan store.WatchResult) {
	t.Helper()
	select {
	case r := <-ch:
		t.Fatalf("unexpected watch result %+v", r)
	case <-time.After(100 * time.Millisecond):
	}
}

func checkEvent(t testing.TB, ev store.Event, typ store.EventType, key, val string, rev int64, prev string, created bool) {
	t.Helper()
	if ev.Type != typ || ev.KV.Key != key || string(ev.KV.Value) != val || ev.KV.ModRevision != rev ||
		string(ev.PrevValue) != prev || ev.Created != created {
		t.Fatalf("event %s %s=%q@%d prev=%q created=%v, want %s %s=%q@%d prev=%q created=%v",
			ev.Type, ev.KV.Key, ev.KV.Value, ev.KV.ModRevision, ev.PrevValue, ev.Created,
			typ, key, val, rev, prev, created)
	}
	if prev == "" && ev.PrevValue != nil && typ == store.Put {
		t.Fatalf("create event has PrevValue %q", ev.PrevValue)
	}
}

func checkKeys(t testing.TB, kvs []store.KV, keys ...string) {
	t.Helper()
	got := make([]string, len(kvs))
	for i, kv := range kvs {
		got[i] = kv.Key
	}
	if strings.Join(got, ",") != strings.Join(keys, ",") {
		t.Fatalf("keys %v, want %v", got, keys)
	}
}

func checkKVs(t testing.TB, got, want []store.KV) {
	t.Helper()
	ok := len(got) == len(want)
	for i := 0; ok && i < len(got); i++ {
		ok = got[i].Key == want[i].Key && bytes.Equal(got[i].Value, want[i].Value) && got[i].ModRevision == want[i].ModRevision &&
			(want[i].CreateRevision == 0 || got[i].CreateRevision == want[i].CreateRevision)
	}
	if !ok {
		t.Fatalf("got %s, want %s", fmtKVs(got), fmtKVs(want))
	}
}

func fmtKVs(kvs []store.KV) string {
	parts := make([]string, len(kvs))
	for i, kv := range kvs {
		parts[i] = fmt.Sprintf("%s=%q@%d(created %d)", kv.Key, kv.Value, kv.ModRevision, kv.CreateRevision)
	}
	return "[" + strings.Join(parts, " ") + "]"
}
