package node

import (
	"context"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/runtime/fake"
)

// TestLeaseExpiry: with a fake clock, a Ready node whose lease nobody renews for its duration
// is marked NotReady with reason NodeLeaseExpired (judged by when the controller saw the
// lease change, not by the agent's clock), and Ready again once the lease is renewed.
func TestLeaseExpiry(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	ctx := context.Background()
	fc := fake.New()
	hb := v1alpha1.NewTime(now)
	n := &v1alpha1.Node{ObjectMeta: v1alpha1.ObjectMeta{Name: "h2"}}
	n.Status.Phase, n.Status.LastHeartbeatTime = v1alpha1.NodePhaseReady, &hb
	v1alpha1.SetCondition(&n.Status.Conditions, v1alpha1.Condition{Type: v1alpha1.NodeConditionReady, Status: v1alpha1.ConditionTrue, Reason: "AgentReady"})
	// The agent's clock is an hour behind: it must not matter.
	renew := v1alpha1.NewTime(now.Add(-time.Hour))
	l := &v1alpha1.NodeLease{ObjectMeta: v1alpha1.ObjectMeta{Name: "h2"},
		Spec: v1alpha1.NodeLeaseSpec{HolderIdentity: "h2", LeaseDurationSeconds: 10, RenewTime: &renew}}
	if err := fc.Add(n, l); err != nil {
		t.Fatal(err)
	}
	c := New(Config{Client: fc, GracePeriod: time.Hour, Now: clock})
	phase := func() (v1alpha1.NodePhase, *v1alpha1.Condition) {
		var got v1alpha1.Node
		if err := fc.Get(ctx, "nodes", "", "h2", &got); err != nil {
			t.Fatal(err)
		}
		return got.Status.Phase, v1alpha1.FindCondition(got.Status.Conditions, v1alpha1.NodeConditionReady)
	}
	renewLease := func() {
		var cur v1alpha1.NodeLease
		if err := fc.Get(ctx, "nodeleases", "", "h2", &cur); err != nil {
			t.Fatal(err)
		}
		r := v1alpha1.NewTime(now.Add(-time.Hour))
		cur.Spec.RenewTime = &r
		if err := fc.Update(ctx, "nodeleases", "", "h2", &cur, nil); err != nil {
			t.Fatal(err)
		}
	}
	for range 10 { // renewed every second, and checked after each renewal: stays Ready
		now = now.Add(time.Second)
		renewLease()
		if err := c.Check(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if p, _ := phase(); p != v1alpha1.NodePhaseReady {
		t.Fatalf("a node renewing its lease is %s", p)
	}
	// No renewal: Ready up to the lease's duration, NotReady after.
	now = now.Add(10 * time.Second)
	if err := c.Check(ctx); err != nil {
		t.Fatal(err)
	}
	if p, _ := phase(); p != v1alpha1.NodePhaseReady {
		t.Fatalf("NotReady at exactly the lease duration: %s", p)
	}
	now = now.Add(time.Second)
	if err := c.Check(ctx); err != nil {
		t.Fatal(err)
	}
	if p, cond := phase(); p != v1alpha1.NodePhaseNotReady || cond == nil || cond.Status != v1alpha1.ConditionFalse || cond.Reason != v1alpha1.ReasonNodeLeaseExpired {
		t.Fatalf("after the lease expired: phase %s, Ready %+v", p, cond)
	}
	// Renewed: Ready again.
	renewLease()
	if err := c.Check(ctx); err != nil {
		t.Fatal(err)
	}
	if p, cond := phase(); p != v1alpha1.NodePhaseReady || cond.Status != v1alpha1.ConditionTrue || cond.Reason != ReasonLeaseRenewed {
		t.Fatalf("after the renewal: phase %s, Ready %+v", p, cond)
	}
	// A node NotReady for another reason (its agent says QEMU is unusable) stays so.
	var got v1alpha1.Node
	_ = fc.Get(ctx, "nodes", "", "h2", &got)
	got.Status.Phase = v1alpha1.NodePhaseNotReady
	v1alpha1.SetCondition(&got.Status.Conditions, v1alpha1.Condition{Type: v1alpha1.NodeConditionReady, Status: v1alpha1.ConditionFalse, Reason: "QEMUUnusable"})
	if err := fc.UpdateStatus(ctx, "nodes", "", "h2", &got, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Check(ctx); err != nil {
		t.Fatal(err)
	}
	if _, cond := phase(); cond.Reason != "QEMUUnusable" {
		t.Fatalf("the controller overwrote the agent's NotReady: %+v", cond)
	}
	// A lease held by someone else (taken over) makes the node NotReady too.
	got = v1alpha1.Node{}
	_ = fc.Get(ctx, "nodes", "", "h2", &got)
	got.Status.Phase = v1alpha1.NodePhaseReady
	_ = fc.UpdateStatus(ctx, "nodes", "", "h2", &got, nil)
	var cur v1alpha1.NodeLease
	_ = fc.Get(ctx, "nodeleases", "", "h2", &cur)
	cur.Spec.HolderIdentity = "rakhsh-ha"
	_ = fc.Update(ctx, "nodeleases", "", "h2", &cur, nil)
	if err := c.Check(ctx); err != nil {
		t.Fatal(err)
	}
	if p, cond := phase(); p != v1alpha1.NodePhaseNotReady || cond.Reason != v1alpha1.ReasonNodeLeaseExpired {
		t.Fatalf("with the lease taken over: phase %s, Ready %+v", p, cond)
	}
}
