package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/suggest"
)

// waitCond is what `wait --for` waits for.
type waitCond struct {
	what  string // "phase", "condition", "delete", "field"
	key   string // condition type, or dotted field path
	value string // phase, condition status, or field value
}

func (w waitCond) String() string {
	switch w.what {
	case "delete":
		return "delete"
	case "phase":
		return "phase=" + w.value
	case "condition":
		return "condition=" + w.key + "=" + w.value
	}
	return "jsonpath={." + w.key + "}=" + w.value
}

// parseWaitFor reads --for: phase=Running, condition=Ready[=True|False|Unknown], delete,
// or jsonpath={.status.phase}=Running (a dotted path only).
func parseWaitFor(s string) (waitCond, error) {
	what, arg, _ := strings.Cut(s, "=")
	switch strings.ToLower(what) {
	case "delete":
		if arg != "" {
			break
		}
		return waitCond{what: "delete"}, nil
	case "phase":
		if arg == "" {
			break
		}
		return waitCond{what: "phase", value: arg}, nil
	case "condition":
		typ, status, ok := strings.Cut(arg, "=")
		if typ == "" {
			break
		}
		if !ok {
			status = v1alpha1.ConditionTrue
		}
		return waitCond{what: "condition", key: typ, value: status}, nil
	case "jsonpath":
		path, value, ok := strings.Cut(arg, "}=")
		if !ok {
			break
		}
		path = strings.TrimPrefix(strings.TrimPrefix(path, "{"), ".")
		if path == "" {
			break
		}
		return waitCond{what: "field", key: path, value: value}, nil
	}
	return waitCond{}, usageErrorf("--for %q: use phase=PHASE, condition=TYPE[=True|False|Unknown], delete or jsonpath={.path}=VALUE", s)
}

// check refuses a phase or condition type kind k never has (a typo would otherwise wait
// until the timeout), suggesting the closest one.
func (w waitCond) check(k *v1alpha1.KindInfo) error {
	var list []string
	var what, got string
	switch w.what {
	case "phase":
		list, what, got = k.Phases, "phase", w.value
	case "condition":
		list, what, got = k.Conditions, "condition type", w.key
		switch strings.ToLower(w.value) {
		case "true", "false", "unknown":
		default:
			return usageErrorf("--for %s: a condition status is True, False or Unknown", w)
		}
	default:
		return nil
	}
	if list == nil {
		return nil
	}
	for _, v := range list {
		if strings.EqualFold(v, got) {
			return nil
		}
	}
	msg := fmt.Sprintf("--for %s: %s has no %s %q", w, k.Kind, what, got)
	if s := suggest.Closest(got, list); s != "" {
		msg += fmt.Sprintf("; did you mean %q?", s)
	}
	return usageErrorf("%s (%ss: %s)", msg, what, strings.Join(list, ", "))
}

// describeState is the object's phase and conditions in one line, for a timeout message.
func describeState(obj object) string {
	if obj == nil {
		return "it does not exist"
	}
	parts := []string{"phase " + orDash(str(obj, "status.phase"))}
	conds, _ := lookupPath(obj, "status.conditions")
	list, _ := conds.([]any)
	for _, c := range list {
		cm, _ := c.(map[string]any)
		t, _ := cm["type"].(string)
		st, _ := cm["status"].(string)
		reason, _ := cm["reason"].(string)
		p := t + "=" + st
		if reason != "" {
			p += " (" + reason + ")"
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, ", ")
}

// satisfied reports whether obj (nil: it does not exist) meets the condition.
func (w waitCond) satisfied(obj object) bool {
	if w.what == "delete" {
		return obj == nil
	}
	if obj == nil {
		return false
	}
	switch w.what {
	case "phase":
		return strings.EqualFold(str(obj, "status.phase"), w.value)
	case "condition":
		conds, _ := lookupPath(obj, "status.conditions")
		list, _ := conds.([]any)
		for _, c := range list {
			cm, ok := c.(map[string]any)
			if !ok {
				continue
			}
			if t, _ := cm["type"].(string); strings.EqualFold(t, w.key) {
				s, _ := cm["status"].(string)
				return strings.EqualFold(s, w.value)
			}
		}
		return false
	case "field":
		v, ok := lookupPath(obj, w.key)
		return ok && cellString(v) == w.value
	}
	return false
}

// errWaitTimeout is returned when the deadline passes before the condition holds.
var errWaitTimeout = errors.New("timed out waiting for the condition")

// waitForObject waits until the named object meets cond: it lists the kind in the project,
// then watches from the list's version, listing and watching again when the stream ends or
// the version expired. It returns errWaitTimeout when ctx's deadline passes, and a NotFound
// error when the object does not exist (or is deleted) and cond is not delete. once checks
// the current state only.
func waitForObject(ctx context.Context, c *client.Client, k *v1alpha1.KindInfo, ns, name string, cond waitCond, once bool) error {
	ns = scopeNS(k, ns)
	backoff := 100 * time.Millisecond
	timedOut := func(err error) error {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return errWaitTimeout
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}
	for {
		l, err := c.ListAll(ctx, k.Resource, ns, client.ListOptions{})
		if err != nil {
			return timedOut(err)
		}
		items, err := decodeItems(l)
		if err != nil {
			return err
		}
		var obj object
		for _, it := range items {
			if objName(it) == name {
				obj = it
				break
			}
		}
		if cond.satisfied(obj) {
			return nil
		}
		if obj == nil {
			// let the server say it is not there, in its words
			got, err := getObject(ctx, c, k, ns, name)
			if err != nil {
				return timedOut(err)
			}
			if cond.satisfied(got) { // created just now
				return nil
			}
		}
		if once {
			return errWaitTimeout
		}
		w, err := c.Watch(ctx, k.Resource, ns, client.ListOptions{ResourceVersion: l.Metadata.ResourceVersion})
		if err != nil {
			if client.Reason(err) != v1alpha1.ReasonExpired {
				if e := timedOut(err); e != err || !retriable(err) {
					return e
				}
			}
		} else {
			done, err := consumeWait(w, name, cond)
			w.Stop()
			if done {
				return nil
			}
			if err != nil {
				return err
			}
			if ctx.Err() != nil {
				return timedOut(ctx.Err())
			}
			backoff = 100 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return timedOut(ctx.Err())
		case <-time.After(backoff):
		}
		if backoff < 5*time.Second {
			backoff *= 2
		}
	}
}

// consumeWait reads events until the condition holds (true), the stream ends or expires
// (false, nil: list again), or the object goes while waiting for something else.
func consumeWait(w *client.Watcher, name string, cond waitCond) (bool, error) {
	for ev := range w.Events() {
		switch ev.Type {
		case v1alpha1.WatchBookmark:
			continue
		case v1alpha1.WatchError:
			st := decodeStatus(ev.Object)
			if st.Reason == v1alpha1.ReasonExpired {
				return false, nil
			}
			return false, &client.Error{Status: st}
		}
		obj, err := decodeObject(ev.Object)
		if err != nil || objName(obj) != name {
			continue
		}
		if ev.Type == v1alpha1.WatchDeleted {
			obj = nil
		}
		if cond.satisfied(obj) {
			return true, nil
		}
		if obj == nil {
			return false, fmt.Errorf("%q was deleted while waiting for %s", name, cond)
		}
	}
	return false, nil
}

// retriable reports whether an error is worth listing again for.
func retriable(err error) bool {
	switch client.Reason(err) {
	case v1alpha1.ReasonServiceUnavailable, v1alpha1.ReasonTooManyRequests, v1alpha1.ReasonInternalError, v1alpha1.ReasonExpired:
		return true
	case "":
		return true // transport errors
	}
	return false
}

func newWaitCommand(cc *cliContext) *cobra.Command {
	var forFlag string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "wait KIND NAME... | KIND/NAME... --for COND",
		Short: "Wait until objects reach a phase or condition, or are deleted",
		Long: "Wait until each object meets the condition given with --for:\n" +
			"  phase=PHASE                         status.phase is PHASE\n" +
			"  condition=TYPE[=True|False|Unknown] the condition TYPE has that status (default True)\n" +
			"  delete                              the object is gone\n" +
			"  jsonpath={.path.to.field}=VALUE     a field has a value\n" +
			"A --timeout of 0 checks once; a negative one waits forever.",
		Example: "  rakhsh wait vm vm1 --for phase=Running --timeout 2m\n  rakhsh wait vd/disk1 --for condition=Ready\n  rakhsh wait vm vm1 --for delete",
		RunE: func(cmd *cobra.Command, args []string) error {
			if forFlag == "" {
				return usageErrorf("wait needs --for, e.g. --for phase=Running")
			}
			cond, err := parseWaitFor(forFlag)
			if err != nil {
				return err
			}
			targets, err := resolveTargets(args)
			if err != nil {
				return err
			}
			for _, t := range targets {
				if len(t.names) == 0 {
					return usageErrorf("wait needs the names of the objects, e.g. rakhsh wait %s NAME --for %s", preferredName(t.kind), forFlag)
				}
				if err := cond.check(t.kind); err != nil {
					return err
				}
			}
			c, err := cc.Client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			ctx, cancel := withTimeout(ctx, timeout)
			defer cancel()
			for _, t := range targets {
				for _, name := range t.names {
					err := waitForObject(ctx, c, t.kind, cc.Namespace(), name, cond, timeout == 0)
					if errors.Is(err, errWaitTimeout) {
						now, gerr := getObject(context.Background(), c, t.kind, scopeNS(t.kind, cc.Namespace()), name)
						state := describeState(now)
						if gerr != nil && !client.IsNotFound(gerr) {
							state = gerr.Error()
						}
						return fmt.Errorf("timed out waiting for %s on %s; now: %s", cond, ref(t.kind, name), state)
					}
					if err != nil {
						return err
					}
					fmt.Fprintf(cmd.OutOrStdout(), "%s condition met\n", ref(t.kind, name))
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&forFlag, "for", "", "the condition: phase=PHASE, condition=TYPE[=STATUS], delete or jsonpath={.path}=VALUE")
	cmd.Flags().DurationVar(&timeout, "timeout", 60*time.Second, "how long to wait (0: check once; negative: forever)")
	return cmd
}
