package runtime

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Result tells the queue what to do after a reconcile that did not fail.
type Result struct {
	// RequeueAfter, when positive, reconciles the key again after this delay.
	RequeueAfter time.Duration
}

// Reconciler makes the world match one object's desired state. It must be idempotent, safe
// to run twice and safe to be stopped at any line.
type Reconciler func(ctx context.Context, key Key) (Result, error)

// Queue de-duplicates keys and hands them to workers; a key is never processed by two
// workers at once, and a key added while it is processed is processed again afterwards.
// Failures are retried with exponential backoff (50 ms doubling up to MaxBackoff).
type Queue struct {
	Name       string
	Log        *slog.Logger
	MaxBackoff time.Duration

	mu         sync.Mutex
	cond       *sync.Cond
	queue      []Key
	dirty      map[Key]bool
	processing map[Key]bool
	failures   map[Key]int
	timers     map[Key]*time.Timer
	closed     bool
}

// NewQueue returns an empty queue.
func NewQueue(name string, log *slog.Logger) *Queue {
	if log == nil {
		log = slog.Default()
	}
	q := &Queue{Name: name, Log: log, MaxBackoff: 30 * time.Second,
		dirty: map[Key]bool{}, processing: map[Key]bool{}, failures: map[Key]int{}, timers: map[Key]*time.Timer{}}
	q.cond = sync.NewCond(&q.mu)
	return q
}

// Add queues a key now.
func (q *Queue) Add(k Key) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed || q.dirty[k] {
		return
	}
	q.dirty[k] = true
	if !q.processing[k] {
		q.queue = append(q.queue, k)
		q.cond.Signal()
	}
}

// AddAfter queues a key after a delay (an earlier pending delay for the key wins).
func (q *Queue) AddAfter(k Key, d time.Duration) {
	if d <= 0 {
		q.Add(k)
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return
	}
	if t, ok := q.timers[k]; ok {
		t.Stop()
	}
	q.timers[k] = time.AfterFunc(d, func() {
		q.mu.Lock()
		delete(q.timers, k)
		q.mu.Unlock()
		q.Add(k)
	})
}

func (q *Queue) get() (Key, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.queue) == 0 && !q.closed {
		q.cond.Wait()
	}
	if q.closed {
		return "", false
	}
	k := q.queue[0]
	q.queue = q.queue[1:]
	delete(q.dirty, k)
	q.processing[k] = true
	return k, true
}

func (q *Queue) done(k Key) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.processing, k)
	if q.dirty[k] {
		q.queue = append(q.queue, k)
		q.cond.Signal()
	}
}

func (q *Queue) backoff(k Key, failed bool) time.Duration {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !failed {
		delete(q.failures, k)
		return 0
	}
	n := q.failures[k]
	q.failures[k] = n + 1
	d := 50 * time.Millisecond << min(n, 20)
	if d > q.MaxBackoff || d <= 0 {
		d = q.MaxBackoff
	}
	return d
}

// Periodic adds key to the queue and returns a reconciler that runs chore for key, then
// again every period, and r for every other key. Key must be one no object has (a name with
// a slash, say). On a queue with one worker the chore never runs beside another key's work.
func (q *Queue) Periodic(key Key, period time.Duration, chore func(context.Context), r Reconciler) Reconciler {
	q.Add(key)
	return func(ctx context.Context, k Key) (Result, error) {
		if k == key {
			chore(ctx)
			return Result{RequeueAfter: period}, nil
		}
		return r(ctx, k)
	}
}

// Run starts workers that call r for each key until ctx ends.
func (q *Queue) Run(ctx context.Context, workers int, r Reconciler) {
	go func() {
		<-ctx.Done()
		q.mu.Lock()
		q.closed = true
		for _, t := range q.timers {
			t.Stop()
		}
		q.cond.Broadcast()
		q.mu.Unlock()
	}()
	liveQueues.Store(q, struct{}{}) // metrics.go
	defer liveQueues.Delete(q)
	var wg sync.WaitGroup
	for range max(workers, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				k, ok := q.get()
				if !ok {
					return
				}
				start := time.Now()
				res, err := safeReconcile(ctx, r, k)
				observeReconcile(q.Name, start, err)
				q.done(k)
				if ctx.Err() != nil {
					continue
				}
				if err != nil {
					d := q.backoff(k, true)
					q.Log.Warn("reconcile failed", "queue", q.Name, "key", string(k), "retry-in", d, "err", err)
					q.AddAfter(k, d)
					continue
				}
				q.backoff(k, false)
				if res.RequeueAfter > 0 {
					q.AddAfter(k, res.RequeueAfter)
				}
			}
		}()
	}
	wg.Wait()
}

func safeReconcile(ctx context.Context, r Reconciler, k Key) (res Result, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = panicError{p}
		}
	}()
	return r(ctx, k)
}

type panicError struct{ v any }

func (p panicError) Error() string { return "reconciler panicked: " + fmtAny(p.v) }

func fmtAny(v any) string {
	if e, ok := v.(error); ok {
		return e.Error()
	}
	if s, ok := v.(string); ok {
		return s
	}
	return "non-error panic value"
}
