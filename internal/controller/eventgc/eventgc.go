// Package eventgc bounds the Events the API keeps: an Event whose last occurrence is older
// than a TTL is deleted, and of the Events about one object only the newest few are kept.
// Repeats of one event are already merged by the recorders (runtime.Recorder), so these
// bounds count distinct happenings.
package eventgc

import (
	"context"
	"encoding/json"
	"log/slog"
	"sort"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// Defaults of Config.
const (
	DefaultTTL          = time.Hour
	DefaultMaxPerObject = 50
	DefaultInterval     = time.Minute
)

// Config configures a GC.
type Config struct {
	Client client.Interface
	// TTL is how long an Event is kept after its last occurrence; default DefaultTTL.
	TTL time.Duration
	// MaxPerObject is how many Events about one object are kept (the newest); default
	// DefaultMaxPerObject.
	MaxPerObject int
	// Interval is the time between sweeps; default DefaultInterval.
	Interval time.Duration
	Now      func() time.Time
	Log      *slog.Logger
}

// GC deletes old Events.
type GC struct{ cfg Config }

// New fills cfg's defaults.
func New(cfg Config) *GC {
	cfg.TTL = runtime.OrDefault(cfg.TTL, DefaultTTL)
	cfg.MaxPerObject = runtime.OrDefault(cfg.MaxPerObject, DefaultMaxPerObject)
	cfg.Interval = runtime.OrDefault(cfg.Interval, DefaultInterval)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &GC{cfg: cfg}
}

// Run sweeps at once and then every Interval until ctx ends.
func (g *GC) Run(ctx context.Context) error {
	runtime.Every(ctx, g.cfg.Interval, func() {
		if n, err := g.Sweep(ctx); err != nil && ctx.Err() == nil {
			g.cfg.Log.Warn("event sweep failed", "err", err)
		} else if n > 0 {
			g.cfg.Log.Debug("expired events deleted", "count", n)
		}
	})
	return nil
}

// Sweep deletes the Events past their TTL or beyond the per-object bound, and returns how
// many it deleted.
func (g *GC) Sweep(ctx context.Context) (int, error) {
	l, err := g.cfg.Client.ListAll(ctx, "events", "", client.ListOptions{})
	if err != nil {
		return 0, err
	}
	byObject := map[string][]*v1alpha1.Event{}
	for _, raw := range l.Items {
		ev := &v1alpha1.Event{}
		if json.Unmarshal(raw, ev) != nil {
			continue
		}
		o := ev.InvolvedObject
		k := o.Kind + "/" + o.Namespace + "/" + o.Name + "/" + o.UID
		byObject[k] = append(byObject[k], ev)
	}
	cutoff := g.cfg.Now().Add(-g.cfg.TTL)
	deleted := 0
	for _, evs := range byObject {
		sort.Slice(evs, func(i, j int) bool { return newer(evs[i], evs[j]) })
		for i, ev := range evs {
			if i < g.cfg.MaxPerObject && !last(ev).Before(cutoff) {
				continue
			}
			if err := g.cfg.Client.Delete(ctx, "events", ev.Namespace, ev.Name); err != nil && !client.IsNotFound(err) {
				return deleted, err
			}
			deleted++
		}
	}
	return deleted, nil
}

func last(ev *v1alpha1.Event) time.Time {
	switch {
	case ev.LastTimestamp != nil:
		return ev.LastTimestamp.Time
	case ev.FirstTimestamp != nil:
		return ev.FirstTimestamp.Time
	case ev.CreationTimestamp != nil:
		return ev.CreationTimestamp.Time
	}
	return time.Time{}
}

// newer orders Events newest first: by last occurrence, then by creation.
func newer(a, b *v1alpha1.Event) bool {
	ta, tb := last(a), last(b)
	if !ta.Equal(tb) {
		return ta.After(tb)
	}
	return b.CreatedBefore(&a.ObjectMeta)
}
