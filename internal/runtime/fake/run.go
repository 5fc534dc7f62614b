package fake

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/internal/runtime"
)

// Runner is a component that runs until its context ends: a controller.
type Runner interface {
	Run(ctx context.Context) error
}

// Start makes a process's shared informer factory over c and the component newC builds on
// it, starts both, and stops them when the test ends (waiting for the component's Run to
// return). It returns the component and the context it runs in.
func Start[R Runner](t testing.TB, c *Client, log *slog.Logger, newC func(f *runtime.Factory) (R, error)) (R, context.Context) {
	t.Helper()
	f := runtime.NewFactory(c, log)
	r, err := newC(f)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	f.Start(ctx)
	go func() { defer close(done); _ = r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return r, ctx
}

// Run runs r until the test ends, and then fails the test when r's Run has not returned
// within 10 s. It returns the context r runs in.
func Run(t testing.TB, r Runner) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("the controller did not stop")
		}
	})
	return ctx
}
