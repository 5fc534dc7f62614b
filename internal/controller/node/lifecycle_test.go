package node

import (
	"context"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/runtime/fake"
)

// TestRunsAgainstFake: a node whose heartbeat is older than the grace period is marked
// Unknown; a fresh one and one already Unknown are left alone.
func TestRunsAgainstFake(t *testing.T) {
	now := time.Now()
	mk := func(name string, age time.Duration) *v1alpha1.Node {
		hb := v1alpha1.NewTime(now.Add(-age))
		n := &v1alpha1.Node{ObjectMeta: v1alpha1.ObjectMeta{Name: name}}
		n.Status.Phase = v1alpha1.NodePhaseReady
		n.Status.LastHeartbeatTime = &hb
		return n
	}
	fc := fake.New()
	if err := fc.Add(mk("stale", time.Hour), mk("fresh", time.Second)); err != nil {
		t.Fatal(err)
	}
	c := New(Config{Client: fc, GracePeriod: time.Minute, Now: func() time.Time { return now }})
	if err := c.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	var n v1alpha1.Node
	fc.WaitFor(t, time.Second, "nodes", "", "stale", &n, func() bool { return n.Status.Phase == v1alpha1.NodePhaseUnknown })
	if c := v1alpha1.FindCondition(n.Status.Conditions, v1alpha1.NodeConditionReady); c == nil || c.Reason != ReasonHeartbeatMissed {
		t.Errorf("Ready condition %+v", c)
	}
	fc.WaitFor(t, time.Second, "nodes", "", "fresh", &n, func() bool { return n.Status.Phase == v1alpha1.NodePhaseReady })
	writes := 0
	for _, a := range fc.Actions() {
		if a.Verb == "updatestatus" {
			writes++
		}
	}
	if err := c.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, a := range fc.Actions() {
		if a.Verb == "updatestatus" {
			writes--
		}
	}
	if writes != 0 {
		t.Errorf("a second check wrote %d statuses, want none", -writes)
	}
}
