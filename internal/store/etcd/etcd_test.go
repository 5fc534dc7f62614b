package etcd

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/store"
	"github.com/rakhsh/rakhsh/internal/store/etcd/etcdtest"
	"github.com/rakhsh/rakhsh/internal/store/storetest"
)

var prefixes atomic.Int64

// uniquePrefix keeps the keys of each test apart on a shared server.
func uniquePrefix() string { return fmt.Sprintf("/rakhsh-test-%d", prefixes.Add(1)) }

func open(t testing.TB, cfg Config) *Store {
	t.Helper()
	s, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func factory(srv *etcdtest.Server) storetest.NewStore {
	return func(t testing.TB) store.Store {
		return open(t, Config{Endpoints: srv.Endpoints, Prefix: uniquePrefix()})
	}
}

func TestConformance(t *testing.T) {
	storetest.Run(t, factory(etcdtest.Start(t)))
}

func TestReopen(t *testing.T) {
	srv := etcdtest.Start(t)
	prefix := uniquePrefix()
	storetest.RunReopen(t, func(t testing.TB) store.Store {
		return open(t, Config{Endpoints: srv.Endpoints, Prefix: prefix})
	})
}

// TestPrefixIsolation checks that installations sharing an etcd do not see each other.
func TestPrefixIsolation(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := context.Background()
	a := open(t, Config{Endpoints: srv.Endpoints, Prefix: "/inst"})
	b := open(t, Config{Endpoints: srv.Endpoints, Prefix: "/inst2/"})
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wa := a.Watch(wctx, "", 0)
	if _, err := b.Create(ctx, "/k", []byte("b")); err != nil {
		t.Fatal(err)
	}
	ra, err := a.Create(ctx, "/k", []byte("a"))
	if err != nil {
		t.Fatal(err)
	}
	res, err := a.List(ctx, "", store.ListOptions{})
	if err != nil || len(res.KVs) != 1 || string(res.KVs[0].Value) != "a" {
		t.Fatalf("List of /inst = %+v, %v", res.KVs, err)
	}
	r := <-wa
	if r.Err != nil || len(r.Events) != 1 || r.Events[0].KV.ModRevision != ra || r.Events[0].KV.Key != "/k" {
		t.Fatalf("watch of /inst got %+v", r)
	}
	kv, err := a.Client().Get(ctx, "/inst2/k")
	if err != nil || len(kv.Kvs) != 1 || string(kv.Kvs[0].Value) != "b" {
		t.Fatalf("raw key /inst2/k: %+v, %v", kv, err)
	}
}

// TestUnavailable stops etcd under an open store: calls then fail with ErrUnavailable within
// the request timeout, and New fails the same way.
func TestUnavailable(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := context.Background()
	s := open(t, Config{Endpoints: srv.Endpoints, Prefix: uniquePrefix(), RequestTimeout: time.Second})
	if _, err := s.Create(ctx, "/k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	t0 := time.Now()
	if _, err := s.Get(ctx, "/k"); !errors.Is(err, errs.ErrUnavailable) {
		t.Fatalf("Get with etcd down: err = %v, want ErrUnavailable", err)
	}
	if _, err := s.Create(ctx, "/k2", []byte("v")); !errors.Is(err, errs.ErrUnavailable) {
		t.Fatalf("Create with etcd down: err = %v, want ErrUnavailable", err)
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Fatalf("failing calls took %v", d)
	}
	_, err := New(ctx, Config{Endpoints: srv.Endpoints, DialTimeout: time.Second})
	if !errors.Is(err, errs.ErrUnavailable) {
		t.Fatalf("New with etcd down: err = %v, want ErrUnavailable", err)
	}
}

func BenchmarkStore(b *testing.B) {
	storetest.Bench(b, factory(etcdtest.Start(b)))
}

// TestNoLeaderIsUnavailable: etcd's "no leader" answer (a member without a quorum, refusing a
// request that requires a leader) is ErrUnavailable with a message saying so.
func TestNoLeaderIsUnavailable(t *testing.T) {
	s := &Store{}
	err := s.mapErr(context.Background(), "get", "/k", fmt.Errorf("range: %w", rpctypes.ErrNoLeader))
	if !errors.Is(err, errs.ErrUnavailable) || !strings.Contains(err.Error(), "the etcd store is unavailable: its members have no leader") {
		t.Fatalf("no leader: %v, want ErrUnavailable naming the missing leader", err)
	}
	err = s.mapErr(context.Background(), "get", "/k", errors.New("connection refused"))
	if !errors.Is(err, errs.ErrUnavailable) || !strings.Contains(err.Error(), `get "/k": the etcd store is unavailable: connection refused`) {
		t.Fatalf("other failure: %v", err)
	}
}
