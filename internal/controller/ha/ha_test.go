package ha

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/runtime/fake"
)

// haWorld is a fake cluster: nodes h1 (healthy) and h2 (its agent stopped renewing), and
// VMs on h2: HA ones of several priorities, one with a Local disk on h2, one not HA, one
// with runPolicy Manual (never HA), and an HA VM on h1.
type haWorld struct {
	t   *testing.T
	fc  *fake.Client
	now time.Time
	ctx context.Context
}

func newWorld(t *testing.T) *haWorld {
	w := &haWorld{t: t, fc: fake.New(), now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), ctx: context.Background()}
	renew := v1alpha1.NewTime(w.now)
	var objs []v1alpha1.Object
	for _, n := range []string{"h1", "h2"} {
		node := &v1alpha1.Node{ObjectMeta: v1alpha1.ObjectMeta{Name: n}}
		node.Status.Phase = v1alpha1.NodePhaseReady
		objs = append(objs, node, &v1alpha1.NodeLease{ObjectMeta: v1alpha1.ObjectMeta{Name: n},
			Spec: v1alpha1.NodeLeaseSpec{HolderIdentity: n, LeaseDurationSeconds: 10, RenewTime: &renew, LeaseTransitions: 1}})
	}
	vm := func(name, node string, ha bool, prio string, policy v1alpha1.RunPolicy, disks ...string) *v1alpha1.VirtualMachine {
		v := &v1alpha1.VirtualMachine{ObjectMeta: v1alpha1.ObjectMeta{Name: name, Namespace: "default", Annotations: map[string]string{}}}
		if ha {
			v.Annotations[v1alpha1.AnnotationHA] = "enabled"
		}
		if prio != "" {
			v.Annotations[v1alpha1.AnnotationHAPriority] = prio
		}
		v.Spec.RunPolicy = policy
		v.Spec.CPU.Cores = 1
		v.Spec.Memory.Size = "256Mi"
		for _, d := range disks {
			v.Spec.BlockDeviceRefs = append(v.Spec.BlockDeviceRefs, v1alpha1.BlockDeviceSpecRef{Kind: v1alpha1.BlockDeviceKindVirtualDisk, Name: d})
		}
		v.Status.NodeName, v.Status.Phase = node, v1alpha1.VMPhaseRunning
		v.Status.PowerRequest = &v1alpha1.VMPowerRequest{State: v1alpha1.PowerStateRunning, RestartID: "r1"}
		v.Status.ObservedRestartID = "r1"
		return v
	}
	disk := func(name, node string) *v1alpha1.VirtualDisk {
		d := &v1alpha1.VirtualDisk{ObjectMeta: v1alpha1.ObjectMeta{Name: name, Namespace: "default"}}
		d.Spec.PersistentVolumeClaim.Size = "1Gi"
		d.Status.Phase, d.Status.NodeName = "Ready", node
		return d
	}
	objs = append(objs,
		vm("low", "h2", true, "", v1alpha1.RunPolicyAlwaysOn, "shared-low"),
		vm("aaa-low", "h2", true, "0", v1alpha1.RunPolicyAlwaysOnUnlessStoppedManually),
		vm("zzz-high", "h2", true, "10", ""),
		vm("mid", "h2", true, "5", v1alpha1.RunPolicyAlwaysOn),
		vm("local", "h2", true, "100", v1alpha1.RunPolicyAlwaysOn, "shared-local", "on-h2"),
		vm("plain", "h2", false, "", v1alpha1.RunPolicyAlwaysOn),
		vm("manual", "h2", true, "", v1alpha1.RunPolicyManual),
		vm("elsewhere", "h1", true, "", v1alpha1.RunPolicyAlwaysOn),
		disk("shared-low", ""), disk("shared-local", ""), disk("on-h2", "h2"))
	if err := w.fc.Add(objs...); err != nil {
		t.Fatal(err)
	}
	return w
}

func (w *haWorld) clock() time.Time { return w.now }

// renew renews the lease of node n as its agent does.
func (w *haWorld) renew(n string) {
	w.t.Helper()
	var l v1alpha1.NodeLease
	if err := w.fc.Get(w.ctx, "nodeleases", "", n, &l); err != nil {
		w.t.Fatal(err)
	}
	r := v1alpha1.NewTime(w.now)
	l.Spec.RenewTime = &r
	if err := w.fc.Update(w.ctx, "nodeleases", "", n, &l, nil); err != nil {
		w.t.Fatal(err)
	}
}

// setNode writes node n's phase as the lifecycle controller does.
func (w *haWorld) setNode(n string, p v1alpha1.NodePhase) {
	w.t.Helper()
	var node v1alpha1.Node
	if err := w.fc.Get(w.ctx, "nodes", "", n, &node); err != nil {
		w.t.Fatal(err)
	}
	node.Status.Phase = p
	if err := w.fc.UpdateStatus(w.ctx, "nodes", "", n, &node, nil); err != nil {
		w.t.Fatal(err)
	}
}

func (w *haWorld) vm(name string) *v1alpha1.VirtualMachine {
	w.t.Helper()
	var v v1alpha1.VirtualMachine
	if err := w.fc.Get(w.ctx, "virtualmachines", "default", name, &v); err != nil {
		w.t.Fatal(err)
	}
	return &v
}

func (w *haWorld) lease(n string) *v1alpha1.NodeLease {
	w.t.Helper()
	var l v1alpha1.NodeLease
	if err := w.fc.Get(w.ctx, "nodeleases", "", n, &l); err != nil {
		w.t.Fatal(err)
	}
	return &l
}

func (w *haWorld) check(c *Controller) {
	w.t.Helper()
	if err := c.Check(w.ctx); err != nil {
		w.t.Fatal(err)
	}
}

// writes returns the writes to VMs and node leases since the last ClearActions, as
// "verb resource/name".
func (w *haWorld) writes() []string {
	var out []string
	for _, a := range w.fc.Actions() {
		if a.Verb == "get" || a.Verb == "list" || a.Verb == "watch" || a.Resource == "events" {
			continue
		}
		out = append(out, a.Verb+" "+a.Resource+"/"+a.Name)
	}
	return out
}

// fail makes h2 fail: its lease is not renewed for longer than its duration, and the
// lifecycle controller marks it NotReady. The controller, checking every second, must not
// act before the safety margin has passed.
func (w *haWorld) fail(c *Controller, margin time.Duration) {
	w.t.Helper()
	for range 11 {
		w.now = w.now.Add(time.Second)
		w.renew("h1")
		w.check(c)
	}
	w.setNode("h2", v1alpha1.NodePhaseNotReady)
	w.fc.ClearActions()
	for elapsed := time.Duration(0); elapsed < margin; elapsed += time.Second {
		w.check(c)
		if got := w.writes(); len(got) > 0 {
			w.t.Fatalf("writes %s after the lease was found expired, before the safety margin %s: %v", elapsed, margin, got)
		}
		w.now = w.now.Add(time.Second)
		w.renew("h1")
		w.fc.ClearActions()
	}
}

// TestRecovery: after the safety margin the controller takes h2's lease over before it
// releases any VM, releases the HA VMs by priority (then name), gives the Local-disk VM the
// condition and leaves it, and leaves the VMs that are not HA alone; a second check, and a
// new controller (a new leader), write nothing more.
func TestRecovery(t *testing.T) {
	w := newWorld(t)
	c := New(Config{Client: w.fc, Now: w.clock, SafetyMargin: 5 * time.Second, GroupWait: -1})
	w.check(c) // the leases are first seen now
	w.fail(c, 5*time.Second)
	w.check(c)
	got := w.writes()
	t.Logf("writes: %v", got)
	var releases []string
	takeover, firstRelease := -1, -1
	for i, wr := range got {
		switch {
		case wr == "update nodeleases/h2" && takeover < 0:
			takeover = i
		case strings.HasPrefix(wr, "jsonpatchstatus virtualmachines/"):
			releases = append(releases, strings.TrimPrefix(wr, "jsonpatchstatus virtualmachines/"))
			if firstRelease < 0 {
				firstRelease = i
			}
		}
	}
	if takeover < 0 || firstRelease < 0 || takeover > firstRelease {
		t.Fatalf("the lease takeover (write %d) must come before the first release (write %d): %v", takeover, firstRelease, got)
	}
	if want := []string{"zzz-high", "mid", "aaa-low", "low"}; strings.Join(releases, ",") != strings.Join(want, ",") {
		t.Errorf("released %v, want %v (priority, then name)", releases, want)
	}
	l := w.lease("h2")
	if l.Spec.HolderIdentity != DefaultIdentity || l.Spec.LeaseTransitions != 2 {
		t.Errorf("h2's lease after the takeover: %+v", l.Spec)
	}
	for _, name := range []string{"zzz-high", "mid", "aaa-low", "low"} {
		v := w.vm(name)
		if v.Status.NodeName != "" || v.Status.Phase != v1alpha1.VMPhaseStopped {
			t.Errorf("%s after the release: node %q phase %s", name, v.Status.NodeName, v.Status.Phase)
		}
		if ex := v.Status.LastExit; ex == nil || ex.Reason != v1alpha1.ExitNodeFailed || !strings.Contains(ex.Message, "h2") || ex.Count != 1 || ex.Time == nil {
			t.Errorf("%s lastExit %+v", name, ex)
		}
		if r := v.Status.Recovered; len(r) != 1 || r[0].FromNode != "h2" || r[0].Time == nil {
			t.Errorf("%s recovered %+v", name, r)
		}
		// The fields the release did not write are as they were.
		if v.Status.PowerRequest == nil || v.Status.PowerRequest.RestartID != "r1" || v.Status.ObservedRestartID != "r1" {
			t.Errorf("%s: the release changed the power request or observedRestartID: %+v %q", name, v.Status.PowerRequest, v.Status.ObservedRestartID)
		}
	}
	loc := w.vm("local")
	if loc.Status.NodeName != "h2" || loc.Status.Phase != v1alpha1.VMPhaseRunning {
		t.Errorf("the Local-disk VM was moved: node %q phase %s", loc.Status.NodeName, loc.Status.Phase)
	}
	cond := v1alpha1.FindCondition(loc.Status.Conditions, v1alpha1.VMConditionHighAvailability)
	if cond == nil || cond.Status != v1alpha1.ConditionFalse || cond.Reason != v1alpha1.ReasonLocalStorageOnFailedNode ||
		!strings.Contains(cond.Message, `VirtualDisk "on-h2"`) || !strings.Contains(cond.Message, "node h2") || strings.Contains(cond.Message, "shared-local") {
		t.Errorf("the Local-disk VM's condition: %+v", cond)
	}
	for _, name := range []string{"plain", "manual", "elsewhere"} {
		v := w.vm(name)
		if v.Status.Phase != v1alpha1.VMPhaseRunning || v.Status.LastExit != nil || len(v.Status.Recovered) > 0 ||
			v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionHighAvailability) != nil || (name != "elsewhere" && v.Status.NodeName != "h2") {
			t.Errorf("%s (not to recover) was written: %+v", name, v.Status)
		}
	}
	if l := w.lease("h1"); l.Spec.HolderIdentity != "h1" {
		t.Errorf("h1's lease was taken: %+v", l.Spec)
	}

	// Again: nothing more.
	w.fc.ClearActions()
	for range 3 {
		w.now = w.now.Add(time.Second)
		w.renew("h1")
		w.check(c)
	}
	if got := w.writes(); len(got) != 3 {
		t.Errorf("more checks wrote %v, want only h1's renewals", got)
	}
	// A new leader's controller: it finds the lease held by the controller, waits the margin
	// again, and has nothing left to do.
	c2 := New(Config{Client: w.fc, Now: w.clock, SafetyMargin: 5 * time.Second, GroupWait: -1})
	w.fc.ClearActions()
	for range 8 {
		w.now = w.now.Add(time.Second)
		w.check(c2)
	}
	for _, wr := range w.writes() {
		if strings.Contains(wr, "virtualmachines/") || wr == "update nodeleases/h2" {
			t.Errorf("a new controller wrote %s after the recovery", wr)
		}
	}
	if l := w.lease("h2"); l.Spec.LeaseTransitions != 2 {
		t.Errorf("the new controller took the lease over again: %+v", l.Spec)
	}

	// h2 comes back: its agent acquires the lease again, the node is Ready, and the Local VM's
	// condition goes.
	var back v1alpha1.NodeLease
	_ = w.fc.Get(w.ctx, "nodeleases", "", "h2", &back)
	r := v1alpha1.NewTime(w.now)
	back.Spec.HolderIdentity, back.Spec.RenewTime, back.Spec.LeaseTransitions = "h2", &r, 3
	if err := w.fc.Update(w.ctx, "nodeleases", "", "h2", &back, nil); err != nil {
		t.Fatal(err)
	}
	w.setNode("h2", v1alpha1.NodePhaseReady)
	w.check(c)
	if cond := v1alpha1.FindCondition(w.vm("local").Status.Conditions, v1alpha1.VMConditionHighAvailability); cond != nil {
		t.Errorf("the condition stays after h2 came back: %+v", cond)
	}
}

// TestRecoveryHistoryBounded: status.recovered keeps the newest MaxRecoveredHistory, and
// lastExit.count counts node failures in a row.
func TestRecoveryHistoryBounded(t *testing.T) {
	w := newWorld(t)
	c := New(Config{Client: w.fc, Now: w.clock, SafetyMargin: -1, GroupWait: -1})
	for i := range v1alpha1.MaxRecoveredHistory + 2 {
		// Put "low" back on h2 and fail h2 again.
		v := w.vm("low")
		v.Status.NodeName, v.Status.Phase = "h2", v1alpha1.VMPhaseRunning
		if err := w.fc.UpdateStatus(w.ctx, "virtualmachines", "default", "low", v, nil); err != nil {
			t.Fatal(err)
		}
		l := w.lease("h2")
		r := v1alpha1.NewTime(w.now)
		l.Spec.HolderIdentity, l.Spec.RenewTime = "h2", &r
		if err := w.fc.Update(w.ctx, "nodeleases", "", "h2", l, nil); err != nil {
			t.Fatal(err)
		}
		w.setNode("h2", v1alpha1.NodePhaseReady)
		w.check(c)
		w.now = w.now.Add(11 * time.Second)
		w.setNode("h2", v1alpha1.NodePhaseNotReady)
		w.check(c)
		v = w.vm("low")
		if v.Status.NodeName != "" {
			t.Fatalf("round %d: not released", i)
		}
		if v.Status.LastExit.Count != i+1 {
			t.Errorf("round %d: lastExit.count %d", i, v.Status.LastExit.Count)
		}
		if want := min(i+1, v1alpha1.MaxRecoveredHistory); len(v.Status.Recovered) != want {
			t.Errorf("round %d: %d recoveries kept, want %d", i, len(v.Status.Recovered), want)
		}
		if last := v.Status.Recovered[len(v.Status.Recovered)-1]; !last.Time.Time.Equal(w.now.Truncate(time.Second)) {
			t.Errorf("round %d: the newest recovery is %v, want %v", i, last.Time, w.now)
		}
	}
}

// TestRenewedLeaseIsNotTakenOver: a lease the agent renews between the controller's
// judgement and its takeover write is left to the agent, and no VM is released; a Node that
// is still Ready (the lifecycle controller does not agree yet) is not recovered either.
func TestRenewedLeaseIsNotTakenOver(t *testing.T) {
	w := newWorld(t)
	c := New(Config{Client: w.fc, Now: w.clock, SafetyMargin: -1, GroupWait: -1})
	w.check(c)
	w.now = w.now.Add(11 * time.Second)
	w.renew("h1")
	w.fc.ClearActions()
	w.check(c) // h2 still Ready
	if got := w.writes(); len(got) > 0 {
		t.Fatalf("a Ready node was recovered: %v", got)
	}
	w.setNode("h2", v1alpha1.NodePhaseNotReady)
	// The renewal lands after the list the judgement was made on, before the takeover's get.
	l := w.lease("h2")
	r := v1alpha1.NewTime(w.now)
	l.Spec.RenewTime = &r
	stale := *l
	if err := w.fc.Update(w.ctx, "nodeleases", "", "h2", l, nil); err != nil {
		t.Fatal(err)
	}
	f := failedNode{name: "h2", lease: &stale, why: "test"}
	if _, err := c.hold(w.ctx, f); err != errLeaseLost {
		t.Fatalf("taking over a lease renewed since it was judged: %v, want errLeaseLost", err)
	}
	if got := w.lease("h2"); got.Spec.HolderIdentity != "h2" {
		t.Errorf("the renewed lease was taken over: %+v", got.Spec)
	}
	w.fc.ClearActions()
	w.check(c) // the renewal is seen: not expired any more
	for _, wr := range w.writes() {
		if strings.Contains(wr, "virtualmachines/") || wr == "update nodeleases/h2" {
			t.Errorf("after the renewal the controller wrote %s", wr)
		}
	}
}

// TestBadPriority: a priority that is not an integer is named in the error, and the VM is
// ordered with priority 0.
func TestBadPriority(t *testing.T) {
	vm := &v1alpha1.VirtualMachine{ObjectMeta: v1alpha1.ObjectMeta{Name: "x", Annotations: map[string]string{v1alpha1.AnnotationHAPriority: "high"}}}
	if _, err := v1alpha1.HAPriority(vm); err == nil || !strings.Contains(err.Error(), v1alpha1.AnnotationHAPriority) || !strings.Contains(err.Error(), `"high"`) {
		t.Errorf("error %v", err)
	}
	if msg := v1alpha1.CheckHASafetyMargin(-time.Second); !strings.Contains(msg, "negative") {
		t.Errorf("negative margin: %q", msg)
	}
	if msg := v1alpha1.CheckHASafetyMargin(time.Hour); !strings.Contains(msg, "at most") {
		t.Errorf("margin of an hour: %q", msg)
	}
	if msg := v1alpha1.CheckHASafetyMargin(5 * time.Second); msg != "" {
		t.Errorf("default margin refused: %q", msg)
	}
}

// TestRecoveryRenewsAndStopsOnLeaseLoss: while it releases VMs the controller renews its hold
// on the lease (here each release takes 2 s); when the node's agent acquires the lease again
// midway, the renewal fails and no further VM is released: they stay on their node, which
// is back.
func TestRecoveryRenewsAndStopsOnLeaseLoss(t *testing.T) {
	w := newWorld(t)
	c := New(Config{Client: w.fc, Now: w.clock, SafetyMargin: -1, GroupWait: -1})
	w.check(c)
	w.now = w.now.Add(11 * time.Second)
	w.setNode("h2", v1alpha1.NodePhaseNotReady)
	releases := 0
	w.fc.SetHook(func(a fake.Action) error {
		if a.Verb != "jsonpatchstatus" {
			return nil
		}
		w.now = w.now.Add(2 * time.Second)
		releases++
		if releases == 2 {
			// The agent is back and takes its lease (the controller's hold has expired by
			// its clock).
			l := w.lease("h2")
			r := v1alpha1.NewTime(w.now)
			l.Spec.HolderIdentity, l.Spec.RenewTime, l.Spec.LeaseTransitions = "h2", &r, l.Spec.LeaseTransitions+1
			if err := w.fc.Update(w.ctx, "nodeleases", "", "h2", l, nil); err != nil {
				t.Error(err)
			}
		}
		return nil
	})
	w.fc.ClearActions()
	if err := c.Check(w.ctx); err != nil {
		t.Fatal(err)
	}
	w.fc.SetHook(nil)
	got := w.writes()
	t.Logf("writes: %v", got)
	want := []string{"update nodeleases/h2", "patchstatus virtualmachines/local", "jsonpatchstatus virtualmachines/zzz-high",
		"update nodeleases/h2", "jsonpatchstatus virtualmachines/mid", "update nodeleases/h2" /* the agent's */, "update nodeleases/h2" /* the failed renewal */}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("writes\n%v, want\n%v", got, want)
	}
	for name, node := range map[string]string{"zzz-high": "", "mid": "", "aaa-low": "h2", "low": "h2"} {
		if v := w.vm(name); v.Status.NodeName != node {
			t.Errorf("%s is on %q, want %q", name, v.Status.NodeName, node)
		}
	}
}

// TestLeaderChangeMidway: the leader's writes are refused after its first release (it was
// deposed: the store fences its term); a new leader's controller, starting from nothing,
// waits the margin, does not take the lease over again, and releases the VMs left, each once.
func TestLeaderChangeMidway(t *testing.T) {
	w := newWorld(t)
	c1 := New(Config{Client: w.fc, Now: w.clock, SafetyMargin: 5 * time.Second, GroupWait: -1})
	w.check(c1)
	w.fail(c1, 5*time.Second)
	releases := 0
	w.fc.SetHook(func(a fake.Action) error {
		if a.Verb == "jsonpatchstatus" {
			releases++
			if releases > 1 {
				return fake.Forbidden("write refused as fenced: a newer leader term exists")
			}
		}
		return nil
	})
	if err := c1.Check(w.ctx); err == nil {
		t.Fatal("the deposed leader's check reported no error")
	}
	w.fc.SetHook(nil)
	if v := w.vm("zzz-high"); v.Status.NodeName != "" {
		t.Fatalf("the first release did not happen")
	}
	if v := w.vm("mid"); v.Status.NodeName != "h2" {
		t.Fatalf("mid was released although the write was refused")
	}
	c2 := New(Config{Client: w.fc, Now: w.clock, SafetyMargin: 5 * time.Second, GroupWait: -1})
	w.fc.ClearActions()
	w.check(c2) // the lease is held by the HA controller: expired at once, margin from now
	if got := w.writes(); len(got) > 0 {
		t.Fatalf("the new leader wrote before its safety margin: %v", got)
	}
	w.now = w.now.Add(5 * time.Second)
	w.check(c2)
	for _, name := range []string{"zzz-high", "mid", "aaa-low", "low"} {
		v := w.vm(name)
		if v.Status.NodeName != "" || len(v.Status.Recovered) != 1 {
			t.Errorf("%s after the new leader: node %q, recovered %+v", name, v.Status.NodeName, v.Status.Recovered)
		}
	}
	if l := w.lease("h2"); l.Spec.LeaseTransitions != 2 || l.Spec.HolderIdentity != DefaultIdentity {
		t.Errorf("h2's lease after the new leader: %+v (taken over once: 2 transitions)", l.Spec)
	}
	if v := w.vm("plain"); v.Status.NodeName != "h2" {
		t.Errorf("plain was released by the new leader")
	}
}

// TestRecoveryByPriorityGroups: the HA VMs of a failed node are released one priority group
// at a time; a lower group waits until the scheduler has placed the one before it (bound it,
// or found no room: Scheduled=False), or for the group wait at most.
func TestRecoveryByPriorityGroups(t *testing.T) {
	w := newWorld(t)
	c := New(Config{Client: w.fc, Now: w.clock, SafetyMargin: 5 * time.Second})
	w.check(c)
	w.fail(c, 5*time.Second)
	released := func() []string {
		var out []string
		for _, n := range []string{"zzz-high", "mid", "aaa-low", "low"} {
			if len(w.vm(n).Status.Recovered) > 0 {
				out = append(out, n)
			}
		}
		return out
	}
	step := func() {
		w.now = w.now.Add(time.Second)
		w.renew("h1")
		w.check(c)
	}
	w.check(c)
	if got := strings.Join(released(), ","); got != "zzz-high" {
		t.Fatalf("first pass released %q, want only the highest priority (zzz-high)", got)
	}
	step()
	if got := strings.Join(released(), ","); got != "zzz-high" {
		t.Fatalf("released %q before zzz-high was placed", got)
	}
	// The scheduler binds zzz-high to h1.
	v := w.vm("zzz-high")
	v.Status.NodeName = "h1"
	if err := w.fc.UpdateStatus(w.ctx, "virtualmachines", "default", "zzz-high", v, nil); err != nil {
		t.Fatal(err)
	}
	step()
	if got := strings.Join(released(), ","); got != "zzz-high,mid" {
		t.Fatalf("after zzz-high was placed: released %q, want zzz-high,mid", got)
	}
	// mid fits nowhere: Scheduled=False counts as placed.
	v = w.vm("mid")
	v1alpha1.SetCondition(&v.Status.Conditions, v1alpha1.Condition{Type: v1alpha1.VMConditionScheduled, Status: v1alpha1.ConditionFalse, Reason: "NoFit", Message: "no node fits"})
	if err := w.fc.UpdateStatus(w.ctx, "virtualmachines", "default", "mid", v, nil); err != nil {
		t.Fatal(err)
	}
	step()
	if got := strings.Join(released(), ","); got != "zzz-high,mid,aaa-low,low" {
		t.Fatalf("after mid was found not to fit: released %q, want the last group too", got)
	}
}

// TestRecoveryGroupWaitEnds: a group the scheduler never places holds the next one back for
// the group wait only.
func TestRecoveryGroupWaitEnds(t *testing.T) {
	w := newWorld(t)
	c := New(Config{Client: w.fc, Now: w.clock, SafetyMargin: 5 * time.Second, GroupWait: 10 * time.Second})
	w.check(c)
	w.fail(c, 5*time.Second)
	w.check(c)
	for i := 0; i < 9; i++ {
		w.now = w.now.Add(time.Second)
		w.renew("h1")
		w.check(c)
		if len(w.vm("mid").Status.Recovered) > 0 {
			t.Fatalf("mid released %d s after zzz-high, before the group wait", i+1)
		}
	}
	w.now = w.now.Add(2 * time.Second)
	w.renew("h1")
	w.check(c)
	if len(w.vm("mid").Status.Recovered) == 0 {
		t.Fatal("mid not released after the group wait")
	}
}

// TestRemovedNodeRecovered: a Node removed with VMs still bound to it (`node remove --force`)
// leaves its lease behind, which its agent can no longer renew; once the lease has expired and
// the safety margin passed, the HA VMs bound to the removed node are released like those of a
// failed node, and the VMs that are not HA stay bound.
func TestRemovedNodeRecovered(t *testing.T) {
	w := newWorld(t)
	c := New(Config{Client: w.fc, Now: w.clock, SafetyMargin: 5 * time.Second, GroupWait: -1})
	w.check(c)
	if err := w.fc.Delete(w.ctx, "nodes", "", "h2"); err != nil {
		t.Fatal(err)
	}
	// Before the lease expires nothing is written, though the Node is gone.
	w.fc.ClearActions()
	for range 9 {
		w.now = w.now.Add(time.Second)
		w.renew("h1")
		w.check(c)
	}
	for _, wr := range w.writes() {
		if wr != "update nodeleases/h1" {
			t.Fatalf("wrote %s before the removed node's lease expired", wr)
		}
	}
	// Lease expired (11 s without renewal), then the margin.
	for range 8 {
		w.now = w.now.Add(time.Second)
		w.renew("h1")
		w.check(c)
	}
	for _, name := range []string{"zzz-high", "mid", "aaa-low", "low"} {
		v := w.vm(name)
		if v.Status.NodeName != "" || v.Status.LastExit == nil || v.Status.LastExit.Reason != v1alpha1.ExitNodeFailed ||
			!strings.Contains(v.Status.LastExit.Message, "removed") {
			t.Errorf("%s after its node was removed: node %q lastExit %+v", name, v.Status.NodeName, v.Status.LastExit)
		}
	}
	if v := w.vm("plain"); v.Status.NodeName != "h2" {
		t.Errorf("the VM that is not HA left the removed node: %q", v.Status.NodeName)
	}
	if l := w.lease("h2"); l.Spec.HolderIdentity != DefaultIdentity {
		t.Errorf("the removed node's lease was not taken over: %+v", l.Spec)
	}
}
