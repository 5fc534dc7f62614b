package node

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

// LeaseTracker judges node leases by the control plane's own clock: a lease has expired when
// nobody saw it change for its duration. Like Kubernetes' node lifecycle controller it never
// compares the agent's renewTime with its own clock, so clock skew between hosts does not
// matter; a lease first seen after a (re)start counts as renewed then, which delays, never
// hastens, finding it expired. The HA controller is to use the same judgement (plus a safety
// margin) before it restarts a node's VMs elsewhere.
type LeaseTracker struct {
	mu   sync.Mutex
	seen map[string]leaseSeen // by node name
}

type leaseSeen struct {
	rv       string // the lease's resourceVersion
	at       time.Time
	duration time.Duration
	holder   string
}

// Observe records the lease as seen at now.
func (t *LeaseTracker) Observe(l *v1alpha1.NodeLease, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.seen == nil {
		t.seen = map[string]leaseSeen{}
	}
	s, ok := t.seen[l.Name]
	if !ok || s.rv != l.ResourceVersion {
		s = leaseSeen{rv: l.ResourceVersion, at: now}
	}
	s.duration, s.holder = l.Spec.Duration(), l.Spec.HolderIdentity
	t.seen[l.Name] = s
}

// Forget drops the leases not in names.
func (t *LeaseTracker) Forget(keep map[string]bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for n := range t.seen {
		if !keep[n] {
			delete(t.seen, n)
		}
	}
}

// Expired reports whether node's lease has expired at now (or is not held by the node's
// agent), with why; false for a node whose lease was never seen.
func (t *LeaseTracker) Expired(node string, now time.Time) (bool, string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ok := t.seen[node]
	if !ok {
		return false, ""
	}
	if s.holder != node {
		return true, fmt.Sprintf("the node lease is not held by the node's agent (holder %q)", s.holder)
	}
	if d := now.Sub(s.at); d > s.duration {
		return true, fmt.Sprintf("the node agent has not renewed its lease for %s (lease duration %s, last renewal seen %s)",
			d.Truncate(100*time.Millisecond), s.duration, s.at.UTC().Format(time.RFC3339))
	}
	return false, ""
}

// checkLeases marks NotReady the Ready nodes whose lease expired, and Ready again those it
// marked so whose lease is renewed.
func (c *Controller) checkLeases(ctx context.Context, nodes []v1alpha1.Node) error {
	l, err := c.cfg.Client.ListAll(ctx, "nodeleases", "", client.ListOptions{})
	if err != nil {
		return err
	}
	now := c.cfg.Now()
	keep := map[string]bool{}
	for _, raw := range l.Items {
		var nl v1alpha1.NodeLease
		if err := json.Unmarshal(raw, &nl); err != nil {
			return err
		}
		c.leases.Observe(&nl, now)
		keep[nl.Name] = true
	}
	c.leases.Forget(keep)
	var firstErr error
	for i := range nodes {
		n := &nodes[i]
		expired, why := c.leases.Expired(n.Name, now)
		ready := v1alpha1.FindCondition(n.Status.Conditions, v1alpha1.NodeConditionReady)
		var err error
		switch {
		case expired && n.Status.Phase == v1alpha1.NodePhaseReady:
			err = c.setReady(ctx, n, v1alpha1.NodePhaseNotReady, v1alpha1.Condition{Type: v1alpha1.NodeConditionReady,
				Status: v1alpha1.ConditionFalse, Reason: v1alpha1.ReasonNodeLeaseExpired, Message: why})
			if err == nil {
				c.cfg.Log.Warn("node marked NotReady: its lease expired", "node", n.Name, "why", why)
			}
		case !expired && keep[n.Name] && n.Status.Phase == v1alpha1.NodePhaseNotReady && ready != nil && ready.Reason == v1alpha1.ReasonNodeLeaseExpired:
			err = c.setReady(ctx, n, v1alpha1.NodePhaseReady, v1alpha1.Condition{Type: v1alpha1.NodeConditionReady,
				Status: v1alpha1.ConditionTrue, Reason: ReasonLeaseRenewed, Message: "the node agent renews its lease again"})
			if err == nil {
				c.cfg.Log.Info("node Ready again: its lease is renewed", "node", n.Name)
			}
		}
		if err != nil && firstErr == nil && !client.IsConflict(err) && !client.IsNotFound(err) {
			firstErr = fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	return firstErr
}

// ReasonLeaseRenewed is the Ready condition's reason on a Node the controller marks Ready
// again after its lease expired (the agent's next heartbeat writes its own).
const ReasonLeaseRenewed = "NodeLeaseRenewed"

// setReady writes phase and the Ready condition; the update carries the resourceVersion read,
// so a heartbeat in between wins and the next check looks again.
func (c *Controller) setReady(ctx context.Context, n *v1alpha1.Node, phase v1alpha1.NodePhase, cond v1alpha1.Condition) error {
	n.Status.Phase = phase
	v1alpha1.SetCondition(&n.Status.Conditions, cond)
	return c.cfg.Client.UpdateStatus(ctx, "nodes", "", n.Name, n, nil)
}
