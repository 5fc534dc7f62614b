package runtime

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestQueueDedupAndRetry(t *testing.T) {
	q := NewQueue("test", nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	calls := map[Key]int{}
	var inFlight, maxInFlight atomic.Int32
	done := make(chan struct{})
	go q.Run(ctx, 4, func(ctx context.Context, k Key) (Result, error) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		if k == "a" && n > maxInFlight.Load() {
			maxInFlight.Store(n)
		}
		mu.Lock()
		calls[k]++
		c := calls[k]
		mu.Unlock()
		time.Sleep(5 * time.Millisecond)
		if k == "flaky" && c < 3 {
			return Result{}, errors.New("not yet")
		}
		if k == "flaky" && c == 3 {
			close(done)
		}
		return Result{}, nil
	})
	for range 50 {
		q.Add("a")
	}
	q.Add("flaky")
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("a failing key was not retried to success")
	}
	time.Sleep(50 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if calls["a"] < 1 || calls["a"] > 3 {
		t.Fatalf("50 adds of one key gave %d reconciles; want them merged", calls["a"])
	}
	if calls["flaky"] != 3 {
		t.Fatalf("flaky reconciled %d times, want 3", calls["flaky"])
	}
}

func TestKeySplit(t *testing.T) {
	ns, n := NewKey("p", "vm").Split()
	if ns != "p" || n != "vm" {
		t.Fatal(ns, n)
	}
	ns, n = NewKey("", "node1").Split()
	if ns != "" || n != "node1" {
		t.Fatal(ns, n)
	}
}

// TestQueuePeriodic: the chore runs at once and again after its period, under its own key;
// other keys go to the reconciler, never to the chore.
func TestQueuePeriodic(t *testing.T) {
	q := NewQueue("test", nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var chores atomic.Int32
	others := make(chan Key, 4)
	twice := make(chan struct{})
	r := q.Periodic("sweep/x", 20*time.Millisecond, func(context.Context) {
		if chores.Add(1) == 2 {
			close(twice)
		}
	}, func(_ context.Context, k Key) (Result, error) {
		others <- k
		return Result{}, nil
	})
	go q.Run(ctx, 1, r)
	q.Add("ns/vm")
	select {
	case k := <-others:
		if k != "ns/vm" {
			t.Fatalf("the reconciler got %q", k)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the other key never reached the reconciler")
	}
	select {
	case <-twice:
	case <-time.After(10 * time.Second):
		t.Fatalf("the chore ran %d times in 10 s, want a second run after its period", chores.Load())
	}
	if len(others) != 0 {
		t.Errorf("the chore's key reached the reconciler: %q", <-others)
	}
}
