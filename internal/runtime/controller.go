package runtime

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Source is what a controller watches: something that calls handlers with the keys of
// changed objects and reports its first full list. Every TypedInformer is one.
type Source interface {
	OnChange(h func(Key))
	Synced() <-chan struct{}
}

// MapFunc maps the key of a changed object to the keys a controller should reconcile.
type MapFunc func(Key) []Key

// Builder assembles a Controller: the informers that feed its queue, how their keys map to
// the keys it reconciles, its workers and its periodic work. Start with NewController.
type Builder struct {
	name       string
	log        *slog.Logger
	workers    int
	maxBackoff time.Duration
	sources    []Source
	waits      []Syncer
	watches    []func(q *Queue)
	periodic   []periodic
	initial    []func() []Key
}

type periodic struct {
	every time.Duration
	fn    func(ctx context.Context, q *Queue)
}

// NewController starts building the controller name (the queue's name in logs).
func NewController(name string, log *slog.Logger) *Builder {
	if log == nil {
		log = slog.Default()
	}
	return &Builder{name: name, log: log, workers: 1}
}

// For queues the key of every changed object of src: the controller reconciles its objects.
// Once src has synced, every cached key is queued once more when the controller starts.
func (b *Builder) For(src Source) *Builder {
	b.sources = append(b.sources, src)
	b.watches = append(b.watches, func(q *Queue) { src.OnChange(q.Add) })
	if k, ok := src.(interface{ Keys() []Key }); ok {
		b.initial = append(b.initial, k.Keys)
	}
	return b
}

// Watches queues the keys fn returns for every changed object of src.
func (b *Builder) Watches(src Source, fn MapFunc) *Builder {
	b.sources = append(b.sources, src)
	b.watches = append(b.watches, func(q *Queue) {
		src.OnChange(func(k Key) {
			for _, m := range fn(k) {
				q.Add(m)
			}
		})
	})
	return b
}

// Reads names informers the reconciler reads without reacting to their changes; the
// controller waits for them to sync before its first reconcile.
func (b *Builder) Reads(srcs ...Syncer) *Builder {
	b.waits = append(b.waits, srcs...)
	return b
}

// Workers sets how many keys are reconciled at once (default 1).
func (b *Builder) Workers(n int) *Builder {
	if n > 0 {
		b.workers = n
	}
	return b
}

// MaxBackoff bounds the retry delay of a failing key (default 30 s).
func (b *Builder) MaxBackoff(d time.Duration) *Builder {
	b.maxBackoff = d
	return b
}

// Every runs fn every d once the informers synced (resyncs, sweeps); fn may queue keys.
func (b *Builder) Every(d time.Duration, fn func(ctx context.Context, q *Queue)) *Builder {
	b.periodic = append(b.periodic, periodic{every: d, fn: fn})
	return b
}

// Build makes the controller with reconciler r and registers its handlers on the sources:
// call it before the informers start, so no change is missed.
func (b *Builder) Build(r Reconciler) *Controller {
	q := NewQueue(b.name, b.log)
	if b.maxBackoff > 0 {
		q.MaxBackoff = b.maxBackoff
	}
	for _, w := range b.watches {
		w(q)
	}
	waits := append([]Syncer(nil), b.waits...)
	for _, s := range b.sources {
		waits = append(waits, s)
	}
	return &Controller{name: b.name, log: b.log, queue: q, workers: b.workers, reconcile: r,
		waits: waits, periodic: b.periodic, initial: b.initial}
}

// Controller is a queue of keys fed by informers and drained by workers that call one
// reconciler.
type Controller struct {
	name      string
	log       *slog.Logger
	queue     *Queue
	workers   int
	reconcile Reconciler
	waits     []Syncer
	periodic  []periodic
	initial   []func() []Key
}

// Queue is the controller's queue, for code that queues keys itself.
func (c *Controller) Queue() *Queue { return c.queue }

// Name is the controller's name.
func (c *Controller) Name() string { return c.name }

// Run waits for the informers to sync (someone else runs them: the process's Factory),
// queues every key of the For sources, and reconciles until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	if !WaitForSync(ctx, c.waits...) {
		return nil
	}
	for _, keys := range c.initial {
		for _, k := range keys() {
			c.queue.Add(k)
		}
	}
	var wg sync.WaitGroup
	for _, p := range c.periodic {
		wg.Add(1)
		go func() {
			defer wg.Done()
			Ticks(ctx, p.every, func() { p.fn(ctx, c.queue) })
		}()
	}
	c.queue.Run(ctx, c.workers, c.reconcile)
	wg.Wait()
	return nil
}
