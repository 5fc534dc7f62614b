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

// Deps are what every controller is given, embedded in its Config: the client it reads and
// writes through, the process's shared informer factory (nil: the controller makes its own and
// runs it), and its logger (nil: slog.Default()).
type Deps struct {
	Client    client.Interface
	Informers *Factory
	Log       *slog.Logger
}

// NewBase returns the base of a controller given d: its logger with the attributes attrs, a
// recorder of Events from component, and the shared factory or, when there is none, a
// factory of its own.
func NewBase(d Deps, component string, attrs ...any) Base {
	log := d.Log
	if log == nil {
		log = slog.Default()
	}
	if len(attrs) > 0 {
		log = log.With(attrs...)
	}
	b := Base{C: d.Client, Log: log, Rec: &Recorder{C: d.Client, Component: component, Log: log}, Informers: d.Informers}
	if d.Informers == nil {
		b.Informers, b.own = NewFactory(d.Client, log), true
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
