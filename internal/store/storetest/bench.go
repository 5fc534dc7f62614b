package storetest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/store"
)

// Benchmark sizes: the API server's targets are stated for 10,000 objects of about 1.5 KB.
const (
	BenchObjects   = 10000
	BenchValueSize = 1536
	BenchWatchers  = 100
)

// BenchValue returns a JSON-like value of about BenchValueSize bytes, distinct per i.
func BenchValue(i int) []byte {
	b := fmt.Appendf(nil, `{"apiVersion":"rakhsh.io/v1","kind":"VirtualMachine","metadata":{"name":"vm-%06d"},"spec":{"data":"`, i)
	for len(b) < BenchValueSize-3 {
		b = append(b, byte('a'+len(b)%26))
	}
	return append(b, `"}}`...)
}

// Bench runs the store benchmarks on one store holding BenchObjects values under
// "/bench/items/". Mutating benchmarks also report p50 and p99 latency in milliseconds.
func Bench(b *testing.B, newStore NewStore) {
	s := newStore(b)
	ctx := context.Background()
	preload(b, s)

	b.Run("Get", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if _, err := s.Get(ctx, itemKey(i%BenchObjects)); err != nil {
				b.Fatal(err)
			}
		}
	})

	var created atomic.Int64
	b.Run("Create", func(b *testing.B) {
		lat := make([]time.Duration, 0, 1024)
		for b.Loop() {
			k := fmt.Sprintf("/bench/new/%d", created.Add(1))
			t0 := time.Now()
			if _, err := s.Create(ctx, k, BenchValue(0)); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(t0))
		}
		reportLatency(b, lat)
	})

	b.Run("Update", func(b *testing.B) {
		key := itemKey(0)
		rev := mustGet(b, s, key).ModRevision
		val := BenchValue(1)
		timeEach(b, func() {
			nrev, err := s.Update(ctx, key, val, rev)
			if err != nil {
				b.Fatal(err)
			}
			rev = nrev
		})
	})

	// 16 concurrent writers updating their own keys: ns/op is the inverse of throughput.
	b.Run("UpdateParallel16", func(b *testing.B) {
		var mu sync.Mutex
		var lat []time.Duration
		var next atomic.Int64
		b.SetParallelism(max(1, 16/runtime.GOMAXPROCS(0)))
		b.RunParallel(func(pb *testing.PB) {
			key := itemKey(int(next.Add(1)) % BenchObjects)
			rev := mustGet(b, s, key).ModRevision
			var my []time.Duration
			for pb.Next() {
				t0 := time.Now()
				nrev, err := s.Update(ctx, key, BenchValue(2), rev)
				if err != nil {
					b.Error(err)
					return
				}
				my = append(my, time.Since(t0))
				rev = nrev
			}
			mu.Lock()
			lat = append(lat, my...)
			mu.Unlock()
		})
		reportLatency(b, lat)
	})

	b.Run("List10000", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			res, err := s.List(ctx, "/bench/items/", store.ListOptions{})
			if err != nil {
				b.Fatal(err)
			}
			if len(res.KVs) != BenchObjects {
				b.Fatalf("listed %d items, want %d", len(res.KVs), BenchObjects)
			}
		}
	})

	b.Run("ListPage500", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			after := itemKey(rand.IntN(BenchObjects - 500))
			res, err := s.List(ctx, "/bench/items/", store.ListOptions{Limit: 500, After: after})
			if err != nil {
				b.Fatal(err)
			}
			if len(res.KVs) != 500 {
				b.Fatalf("page of %d items", len(res.KVs))
			}
		}
	})

	b.Run("WatchFanout100", func(b *testing.B) {
		benchFanout(b, s)
	})
}

// benchFanout measures the time from one write until all BenchWatchers watchers have it.
func benchFanout(b *testing.B, s store.Store) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	key := "/bench/fan/key"
	rev, err := s.Create(ctx, key, BenchValue(3))
	if err != nil && !errors.Is(err, errs.ErrAlreadyExists) {
		b.Fatal(err)
	}
	if rev == 0 {
		rev = mustGet(b, s, key).ModRevision
	}
	from, err := s.Revision(ctx)
	if err != nil {
		b.Fatal(err)
	}
	got := make(chan int64, BenchWatchers)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for range BenchWatchers {
		ch := s.Watch(ctx, "/bench/fan/", from)
		wg.Go(func() {
			for r := range ch {
				if r.Err != nil {
					if ctx.Err() == nil {
						b.Error(r.Err)
					}
					return
				}
				for _, ev := range r.Events {
					got <- ev.KV.ModRevision
				}
			}
		})
	}
	val := BenchValue(4)
	timeEach(b, func() {
		nrev, err := s.Update(ctx, key, val, rev)
		if err != nil {
			b.Fatal(err)
		}
		for range BenchWatchers {
			select {
			case r := <-got:
				if r != nrev {
					b.Fatalf("watcher got revision %d, want %d", r, nrev)
				}
			case <-time.After(waitTime):
				b.Fatalf("watchers did not all get revision %d", nrev)
			}
		}
		rev = nrev
	})
}

func itemKey(i int) string { return fmt.Sprintf("/bench/items/%06d", i) }

// preload stores BenchObjects values with 32 concurrent writers.
func preload(b *testing.B, s store.Store) {
	b.Helper()
	t0 := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= BenchObjects {
					return
				}
				if _, err := s.Create(context.Background(), itemKey(i), BenchValue(i)); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
	b.Logf("preloaded %d objects of %d bytes in %v", BenchObjects, BenchValueSize, time.Since(t0).Round(time.Millisecond))
}

// timeEach runs op once per iteration of the benchmark, timing each run, and reports the
// latencies (reportLatency).
func timeEach(b *testing.B, op func()) {
	lat := make([]time.Duration, 0, 1024)
	for b.Loop() {
		t0 := time.Now()
		op()
		lat = append(lat, time.Since(t0))
	}
	reportLatency(b, lat)
}

// reportLatency adds p50 and p99 (milliseconds) to the benchmark's results.
func reportLatency(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	pct := func(p float64) float64 {
		i := min(len(lat)-1, int(float64(len(lat))*p))
		return float64(lat[i].Microseconds()) / 1000
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}
