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
