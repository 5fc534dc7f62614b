package runtime

import (
	"context"
	"log/slog"
	"time"

	"github.com/rakhsh/rakhsh/client"
)

// Base is the set-up the controllers share, embedded in each: the client they read and write
// through, their logger, a recorder of their Events, and the informer factory they read — the
// process's shared one or, when they were given none, one of their own, which Run starts.
type Base struct {
	C         client.Interface
	Log       *slog.Logger
	Rec       *Recorder
	Informers *Factory
	own       bool
}

// NewBase returns the base of a controller that reads and writes through c: log
// (slog.Default() when nil) with the attributes attrs, a recorder of Events from component,
// and the factory shared or, when nil, a factory of its own.
func NewBase(c client.Interface, shared *Factory, log *slog.Logger, component string, attrs ...any) Base {
	if log == nil {
		log = slog.Default()
	}
	if len(attrs) > 0 {
		log = log.With(attrs...)
	}
	b := Base{C: c, Log: log, Rec: &Recorder{C: c, Component: component, Log: log}, Informers: shared}
	if shared == nil {
		b.Informers, b.own = NewFactory(c, log), true
	}
	return b
}

// StartInformers starts the factory if it is the controller's own (someone else runs a
// shared one).
func (b Base) StartInformers(ctx context.Context) {
	if b.own {
		b.Informers.Start(ctx)
	}
}

// Run starts the controller's own informers and runs ctls until ctx ends; it returns the
// first of their errors.
func (b Base) Run(ctx context.Context, ctls ...*Controller) error {
	b.StartInformers(ctx)
	return RunAll(ctx, ctls...)
}

// RunAll runs ctls until ctx ends and returns the first of their errors.
func RunAll(ctx context.Context, ctls ...*Controller) error {
	errc := make(chan error, len(ctls))
	for _, c := range ctls {
		go func() { errc <- c.Run(ctx) }()
	}
	var err error
	for range ctls {
		if e := <-errc; err == nil {
			err = e
		}
	}
	return err
}

// OrDefault returns v, or def when v is zero or negative: the default of a count or a
// duration in a Config.
func OrDefault[T ~int | ~int64 | ~float64](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

// Every calls fn at once and then every d until ctx ends.
func Every(ctx context.Context, d time.Duration, fn func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		fn()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Ticks calls fn every d, the first time d from now (Every also calls it at once), until ctx
// ends.
func Ticks(ctx context.Context, d time.Duration, fn func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}
