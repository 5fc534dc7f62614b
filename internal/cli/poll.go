package cli

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

// withTimeout is ctx limited to d, or without a limit when d is not positive.
func withTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if d > 0 {
		return context.WithTimeout(ctx, d)
	}
	return context.WithCancel(ctx)
}

// waitFlags are the --wait and --timeout flags of a command that can wait until what it
// asked for is done.
type waitFlags struct {
	wait    bool
	timeout time.Duration
}

// add defines the flags on cmd: --wait, whose help says what it waits for, and --timeout.
func (w *waitFlags) add(cmd *cobra.Command, help string, timeout time.Duration) {
	cmd.Flags().BoolVar(&w.wait, "wait", false, help)
	cmd.Flags().DurationVar(&w.timeout, "timeout", timeout, "with --wait, how long to wait (0: no limit)")
}

// poll calls step at once and then after each pause of every, until step reports done or
// fails (poll returns its error). When ctx ends first, poll returns what expired makes of
// ctx's error.
func poll(ctx context.Context, every time.Duration, step func() (bool, error), expired func(error) error) error {
	for {
		if done, err := step(); done || err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return expired(ctx.Err())
		case <-time.After(every):
		}
	}
}

// sameError is the expired function of a poll that returns ctx's error as it is.
func sameError(err error) error { return err }

// lineChanges returns a function that writes a line to w unless it is the line written last.
func lineChanges(w io.Writer) func(line string) {
	last := ""
	return func(line string) {
		if line != last {
			last = line
			fmt.Fprintln(w, line)
		}
	}
}

// conditionMessage is the message of the condition of type t ("" without one).
func conditionMessage(conds []v1alpha1.Condition, t string) string {
	if c := v1alpha1.FindCondition(conds, t); c != nil {
		return c.Message
	}
	return ""
}

// metaObject is a typed API object, with its metadata.
type metaObject interface {
	GetObjectMeta() *v1alpha1.ObjectMeta
}

// createAndPrint creates obj of resource in the project ns, prints the name the server gave
// it and returns the object created.
func createAndPrint[T any, P interface {
	*T
	metaObject
}](cmd *cobra.Command, c *client.Client, resource, ns string, obj P) (P, error) {
	out := P(new(T))
	if err := c.Create(cmd.Context(), resource, ns, obj, out); err != nil {
		return nil, err
	}
	fmt.Fprintln(cmd.OutOrStdout(), out.GetObjectMeta().Name)
	return out, nil
}

// pollPhase gets the object name of resource in the project ns at once and then after each
// pause of every, until done says it is done or fails. When ctx ends first, the error names
// the object as "what NAME" and says the phase it was last seen in.
func pollPhase[T any, P interface {
	*T
	metaObject
}](ctx context.Context, c *client.Client, resource, what, ns, name string, every time.Duration, phase func(P) string, done func(P) (bool, error)) error {
	var last string
	return poll(ctx, every, func() (bool, error) {
		obj := P(new(T))
		if err := c.Get(ctx, resource, ns, name, obj); err != nil {
			return false, err
		}
		last = phase(obj)
		return done(obj)
	}, func(err error) error {
		return fmt.Errorf("%s %s: %w (it is %s)", what, name, err, last)
	})
}
