// Package node holds the node lifecycle controller: it marks a Node whose agent stopped
// heartbeating as Unknown, and one whose node lease (NodeLease, renewed by its agent about
// every second) expired as NotReady with reason NodeLeaseExpired (Ready again once the lease
// is renewed), so the scheduler places nothing new on it and operators (and, with high
// availability, the controllers) see that its VMs are no longer watched.
package node

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// Defaults of Config.
const (
	// DefaultGracePeriod is how long a Node may go without a heartbeat before it is Unknown:
	// four heartbeats of the agent's default 10 s interval.
	DefaultGracePeriod = 40 * time.Second
	// ReasonHeartbeatMissed is the Ready condition's reason on a Node marked Unknown.
	ReasonHeartbeatMissed = "NodeStatusUnknown"
)

// Config configures the controller.
type Config struct {
	Client client.Interface
	Log    *slog.Logger
	// GracePeriod: default DefaultGracePeriod.
	GracePeriod time.Duration
	// Interval is how often Nodes are checked; default a quarter of GracePeriod, at most 10 s.
	Interval time.Duration
	// LeaseInterval is how often node leases are checked; default 1 s.
	LeaseInterval time.Duration
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
}

// Controller is the node lifecycle controller.
type Controller struct {
	cfg    Config
	leases LeaseTracker
}

// New returns a controller; Run starts it.
func New(cfg Config) *Controller {
	cfg.GracePeriod = runtime.OrDefault(cfg.GracePeriod, DefaultGracePeriod)
	cfg.Interval = runtime.OrDefault(cfg.Interval, min(cfg.GracePeriod/4, 10*time.Second))
	cfg.LeaseInterval = runtime.OrDefault(cfg.LeaseInterval, time.Second)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Controller{cfg: cfg}
}

// Run checks the node leases each lease interval and every Node's heartbeat each interval
// until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	var lastHeartbeats time.Time
	runtime.Every(ctx, c.cfg.LeaseInterval, func() {
		heartbeats := c.cfg.Now().Sub(lastHeartbeats) >= c.cfg.Interval
		if heartbeats {
			lastHeartbeats = c.cfg.Now()
		}
		if err := c.check(ctx, heartbeats); err != nil && ctx.Err() == nil {
			c.cfg.Log.Warn("checking nodes", "err", err)
		}
	})
	return nil
}

// Check marks every Node whose last heartbeat is older than the grace period Unknown, and
// checks the node leases (checkLeases).
func (c *Controller) Check(ctx context.Context) error { return c.check(ctx, true) }

func (c *Controller) check(ctx context.Context, heartbeats bool) error {
	l, err := c.cfg.Client.ListAll(ctx, "nodes", "", client.ListOptions{})
	if err != nil {
		return err
	}
	now := c.cfg.Now()
	var firstErr error
	nodes := make([]v1alpha1.Node, 0, len(l.Items))
	for _, raw := range l.Items {
		var n v1alpha1.Node
		if err := json.Unmarshal(raw, &n); err != nil {
			return err
		}
		if !heartbeats || !Stale(&n, now, c.cfg.GracePeriod) {
			nodes = append(nodes, n)
			continue
		}
		if err := c.markUnknown(ctx, &n, now); err != nil && firstErr == nil && !client.IsConflict(err) && !client.IsNotFound(err) {
			firstErr = fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	if err := c.checkLeases(ctx, nodes); err != nil && firstErr == nil {
		firstErr = err
	}
	return firstErr
}

// Stale reports whether n claims to be reporting (phase Ready or NotReady) but its last
// heartbeat is older than grace, or it never sent one.
func Stale(n *v1alpha1.Node, now time.Time, grace time.Duration) bool {
	if n.Status.Phase == v1alpha1.NodePhaseUnknown || n.Status.Phase == "" {
		return false
	}
	return n.Status.LastHeartbeatTime == nil || now.Sub(n.Status.LastHeartbeatTime.Time) > grace
}

// markUnknown writes phase Unknown and Ready=Unknown. The update carries the resourceVersion
// read, so a heartbeat that lands in between wins (409) and the Node stays Ready.
func (c *Controller) markUnknown(ctx context.Context, n *v1alpha1.Node, now time.Time) error {
	since := "never"
	if hb := n.Status.LastHeartbeatTime; hb != nil {
		since = now.Sub(hb.Time).Truncate(time.Second).String() + " ago (" + hb.Time.Format(time.RFC3339) + ")"
	}
	n.Status.Phase = v1alpha1.NodePhaseUnknown
	v1alpha1.SetCondition(&n.Status.Conditions, v1alpha1.Condition{
		Type: v1alpha1.NodeConditionReady, Status: v1alpha1.ConditionUnknown, Reason: ReasonHeartbeatMissed,
		Message: fmt.Sprintf("the node agent stopped reporting: last heartbeat %s, grace period %s", since, c.cfg.GracePeriod)})
	if err := c.cfg.Client.UpdateStatus(ctx, "nodes", "", n.Name, n, nil); err != nil {
		return err
	}
	c.cfg.Log.Warn("node marked Unknown: no heartbeat", "node", n.Name, "lastHeartbeat", since)
	return nil
}
