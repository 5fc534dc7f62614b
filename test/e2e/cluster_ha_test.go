package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/agent"
	"github.com/rakhsh/rakhsh/internal/testutil"
)

// The node lease and self-fencing (docs/ha.md) on a cluster of its own (rhl), since the test
// stops and cuts off h2. Two VMs run on h2: ha-vm (runPolicy AlwaysOn: an HA VM) and
// manual-vm (runPolicy Manual: not HA).
//
//	(a) SIGSTOP h2's agent: its fence guard (a process of its own) kills ha-vm's QEMU about
//	    the fence timeout later, while the agent is still stopped, and before node h2 becomes
//	    NotReady (NodeLeaseExpired) about a lease duration later; manual-vm's QEMU lives.
//	    SIGCONT: the agent finds its lease lost, acquires it anew: h2 Ready again, ha-vm's
//	    lastExit says Fenced.
//	(b) cut h2's link: ha-vm's QEMU is killed after the fence timeout, while the link is
//	    still down; manual-vm's QEMU lives on. Link up: h2 Ready again, ha-vm's lastExit
//	    says Fenced, and (the HA controller's margin is 10 minutes here) ha-vm runs again on h2.
//	(c) kill -9 h2's agent (its QEMUs and its guard live on): the guard kills ha-vm's QEMU
//	    after the fence timeout; manual-vm's lives. The agent started again reuses the guard,
//	    adopts manual-vm's QEMU, and h2 is Ready again.
//
// The times it logs (HA-TIMES) are the numbers of docs/benchmarks.md; it asserts order and
// outcome with loose bounds only.
func TestClusterHALeaseFencing(t *testing.T) {
	clusterLane(t)
	// The HA controller waits 10 minutes after a lease expires before it recovers anything:
	// this test is about the node's own fencing, and its VMs must come back on h2.
	c := newCluster(t, ClusterOptions{Name: "rhl", ServeArgs: []string{"--ha-safety-margin", "10m"}})
	s := c.Serve(t)
	h2 := c.Host("h2")
	img := c.GuestImage(t)
	const leaseDuration, fenceTimeout = 10 * time.Second, 6 * time.Second
	for _, vm := range []struct{ name, policy string }{{"ha-vm", "AlwaysOn"}, {"manual-vm", "Manual"}} {
		clusterApply(s, clusterVMManifest{Name: vm.name, RunPolicy: vm.policy, Annotations: []string{clusterHAAnnotation}, Host: "h2", Image: img}.YAML())
	}
	s.MustCLI("", "vm", "start", "manual-vm")
	ha := vmWait(t, s, "ha-vm", vmBootTimeout, "Running on h2", vmPhase(v1alpha1.VMPhaseRunning))
	man := vmWait(t, s, "manual-vm", vmBootTimeout, "Running on h2", vmPhase(v1alpha1.VMPhaseRunning))
	if ha.Status.NodeName != "h2" || man.Status.NodeName != "h2" {
		t.Fatalf("the VMs run on %q and %q, want h2", ha.Status.NodeName, man.Status.NodeName)
	}
	vmWaitSerial(t, s, "ha-vm", "RAKHSH-GUEST: ready", 1)
	vmWaitSerial(t, s, "manual-vm", "RAKHSH-GUEST: ready", 1)
	pidOf := func(uid string) int { return testutil.QEMUPIDs(h2.DataDir)[uid] }
	haPID, manPID := pidOf(ha.UID), pidOf(man.UID)
	if haPID == 0 || manPID == 0 {
		t.Fatalf("QEMU pids on h2: ha-vm %d, manual-vm %d", haPID, manPID)
	}

	ctx := ctxT(t)
	cl := s.Client()
	var lease v1alpha1.NodeLease
	if err := cl.Get(ctx, "nodeleases", "", "h2", &lease); err != nil || lease.Spec.HolderIdentity != "h2" || lease.Spec.LeaseDurationSeconds != 10 {
		t.Fatalf("h2's lease: %v %+v", err, lease.Spec)
	}
	transitions := lease.Spec.LeaseTransitions
	// h2's node credential may not write h3's lease.
	var l3 v1alpha1.NodeLease
	if err := cl.Get(ctx, "nodeleases", "", "h3", &l3); err != nil {
		t.Fatal(err)
	}
	l3.Spec.HolderIdentity = "h2"
	if err := h2.NodeClient(t).Update(ctx, "nodeleases", "", "h3", &l3, nil); !client.IsForbidden(err) {
		t.Fatalf("h2's credential updating h3's lease: %v, want 403", err)
	}

	node := func() (v1alpha1.NodePhase, string) {
		var n v1alpha1.Node
		if err := cl.Get(ctx, "nodes", "", "h2", &n); err != nil {
			return "", err.Error()
		}
		r := v1alpha1.FindCondition(n.Status.Conditions, v1alpha1.NodeConditionReady)
		if r == nil {
			return n.Status.Phase, ""
		}
		return n.Status.Phase, r.Reason
	}
	// waitUntil polls cond every 50 ms for up to limit and returns how long it took.
	waitUntil := func(what string, from time.Time, limit time.Duration, cond func() bool) time.Duration {
		t.Helper()
		for time.Since(from) < limit {
			if cond() {
				return time.Since(from)
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatalf("%s: not within %s", what, limit)
		return 0
	}
	notReady := func() bool {
		p, r := node()
		return p == v1alpha1.NodePhaseNotReady && r == v1alpha1.ReasonNodeLeaseExpired
	}
	ready := func() bool { p, _ := node(); return p == v1alpha1.NodePhaseReady }

	guardPID := agent.GuardPID(h2.DataDir)
	if guardPID == 0 {
		t.Fatalf("no fence guard runs for h2 (pid file %s)", filepath.Join(h2.DataDir, agent.GuardPIDFile))
	}
	guardLog := func() string {
		b, _ := os.ReadFile(filepath.Join(h2.DataDir, agent.GuardLogFile))
		return string(b)
	}

	// fencedAfter waits until ha-vm's QEMU is killed, no sooner than the fence timeout after
	// h2 was cut off at from (by what, e.g. "SIGSTOP"; while says how h2 is off), and until h2
	// is NotReady, no sooner than that; manual-vm's QEMU must live on. It returns both times.
	fencedAfter := func(what, while string, from time.Time) (toKilled, toNotReady time.Duration) {
		t.Helper()
		toKilled = waitUntil("ha-vm's QEMU killed "+while, from, leaseDuration+10*time.Second, func() bool { return !testutil.IsQEMUOf(haPID, ha.UID) })
		if toKilled < fenceTimeout-2*time.Second {
			t.Errorf("ha-vm's QEMU was killed %s after %s, before the fence timeout %s", toKilled, what, fenceTimeout)
		}
		toNotReady = waitUntil("h2 NotReady (NodeLeaseExpired) "+while, from, leaseDuration+15*time.Second, notReady)
		if toNotReady < toKilled {
			t.Errorf("h2 was NotReady (%s after %s) before it was fenced (%s): the lease must outlast the fence", toNotReady, what, toKilled)
		}
		if !testutil.IsQEMUOf(manPID, man.UID) {
			t.Fatalf("manual-vm's QEMU (not HA) was killed %s", while)
		}
		return toKilled, toNotReady
	}
	// runsAgain waits until h2 runs ha-vm again in a new QEMU.
	runsAgain := func(what string) {
		t.Helper()
		ha = vmWait(t, s, "ha-vm", vmBootTimeout, what, func(v *v1alpha1.VirtualMachine) bool {
			return v != nil && v.Status.Phase == v1alpha1.VMPhaseRunning && pidOf(v.UID) != 0 && pidOf(v.UID) != haPID
		})
		haPID = pidOf(ha.UID)
	}

	// (a) SIGSTOP, then SIGCONT.
	stoppedAt := time.Now()
	h2.Pause(t)
	resume := clusterLiftLater(t, func() { h2.Resume(t) })
	toKilled, toNotReady := fencedAfter("SIGSTOP", "while h2's agent is stopped", stoppedAt)
	if !h2.Running() || !processStopped(h2.PID()) {
		t.Fatalf("h2's agent is not stopped any more: the guard, not the agent, must have killed the QEMU")
	}
	if !strings.Contains(guardLog(), "vm-uid="+ha.UID) {
		t.Errorf("the fence guard's log does not name ha-vm:\n%s", guardLog())
	}
	if toNotReady < leaseDuration-2*time.Second {
		t.Errorf("h2 was NotReady %s after SIGSTOP: sooner than its lease duration %s allows", toNotReady, leaseDuration)
	}
	resumedAt := time.Now()
	resume()
	toReady := waitUntil("h2 Ready again after SIGCONT", resumedAt, time.Minute, ready)
	if !testutil.IsQEMUOf(manPID, man.UID) {
		t.Errorf("manual-vm's QEMU (not HA) was killed")
	}
	if err := cl.Get(ctx, "nodeleases", "", "h2", &lease); err != nil || lease.Spec.LeaseTransitions <= transitions || lease.Spec.HolderIdentity != "h2" {
		t.Errorf("after SIGCONT h2's lease is %+v (%v): want it acquired anew (transitions > %d)", lease.Spec, err, transitions)
	}
	transitions = lease.Spec.LeaseTransitions
	if logs := h2.Logs(t); !strings.Contains(logs, "self-fencing") || !strings.Contains(logs, "node lease acquired") {
		t.Errorf("h2's agent logged no fencing and re-acquisition")
	}
	fenced := func(v *v1alpha1.VirtualMachine) bool {
		return v != nil && v.Status.LastExit != nil && v.Status.LastExit.Reason == v1alpha1.ExitFenced
	}
	// fencedSince waits until ha-vm's lastExit says Fenced at a time after at (after what).
	fencedSince := func(what string, at time.Time) *v1alpha1.VirtualMachine {
		t.Helper()
		v := vmWait(t, s, "ha-vm", time.Minute, "lastExit Fenced after "+what, func(v *v1alpha1.VirtualMachine) bool {
			return fenced(v) && v.Status.LastExit.Time != nil && v.Status.LastExit.Time.After(at)
		})
		t.Logf("ha-vm's lastExit after %s: %s", what, v.Status.LastExit.Message)
		return v
	}
	v := vmWait(t, s, "ha-vm", time.Minute, "lastExit Fenced", fenced)
	t.Logf("ha-vm's lastExit after SIGCONT: %s: %s", v.Status.LastExit.Reason, v.Status.LastExit.Message)
	waitFor(t, "an event Fenced on ha-vm", func() bool { return hasEvent(t, cl, "ha-vm", v1alpha1.ExitFenced) })
	t.Logf("HA-TIMES (a): SIGSTOP -> QEMU killed %s; SIGSTOP -> NotReady %s; SIGCONT -> Ready %s",
		toKilled.Round(10*time.Millisecond), toNotReady.Round(10*time.Millisecond), toReady.Round(10*time.Millisecond))

	// With its lease back before the HA controller's margin, h2 starts ha-vm again (AlwaysOn).
	runsAgain("Running on h2 again")

	// (b) Cut h2's link.
	cutAt := time.Now()
	h2.LinkDown(t)
	linkUp := clusterLiftLater(t, func() { h2.LinkUp(t) })
	cutToKilled, cutToNotReady := fencedAfter("the link cut", "with h2's link down", cutAt)
	if h2.linkUp() {
		t.Fatal("h2's link came up by itself")
	}
	linkUp()
	upAt := time.Now()
	upToReady := waitUntil("h2 Ready again after link up", upAt, time.Minute, ready)
	if !testutil.IsQEMUOf(manPID, man.UID) {
		t.Errorf("manual-vm's QEMU ended")
	}
	fencedSince("the partition", cutAt)
	if err := cl.Get(ctx, "nodeleases", "", "h2", &lease); err != nil || lease.Spec.LeaseTransitions <= transitions {
		t.Errorf("after the partition h2's lease is %+v (%v): want it acquired anew", lease.Spec, err)
	}
	t.Logf("HA-TIMES (b): link cut -> QEMU killed %s; link cut -> NotReady %s; link up -> Ready %s",
		cutToKilled.Round(10*time.Millisecond), cutToNotReady.Round(10*time.Millisecond), upToReady.Round(10*time.Millisecond))

	// (c) kill -9 of h2's agent: its QEMUs and its guard live on.
	runsAgain("Running on h2 after the partition")
	vmWaitSerial(t, s, "ha-vm", "RAKHSH-GUEST: ready", 1)
	if g := agent.GuardPID(h2.DataDir); g != guardPID {
		t.Errorf("h2's fence guard is %d, was %d: the agent replaced a live guard of its own executable", g, guardPID)
	}
	killAt := time.Now()
	h2.Kill9(t)
	restart := clusterLiftLater(t, func() { h2.Restart(t) })
	kill9ToKilled, kill9ToNotReady := fencedAfter("the agent's kill -9", "with h2's agent dead", killAt)
	if h2.Running() {
		t.Fatal("h2's agent runs again by itself")
	}
	restartAt := time.Now()
	restart() // waits for h2 Ready with a heartbeat of the new agent
	restartToReady := time.Since(restartAt)
	if g := agent.GuardPID(h2.DataDir); g != guardPID {
		t.Errorf("after the restart h2's fence guard is %d, want the live one %d reused", g, guardPID)
	}
	man = vmWait(t, s, "manual-vm", time.Minute, "Running on h2, adopted", clusterRunningOn("h2"))
	if !testutil.IsQEMUOf(manPID, man.UID) || pidOf(man.UID) != manPID {
		t.Errorf("manual-vm's QEMU after the restart: pid %d, want %d adopted", pidOf(man.UID), manPID)
	}
	v = fencedSince("the agent's kill -9", killAt)
	if !strings.Contains(v.Status.LastExit.Message, "fence guard") {
		t.Errorf("ha-vm's lastExit after the kill -9 does not say the fence guard killed it: %s", v.Status.LastExit.Message)
	}
	t.Logf("HA-TIMES (c): kill -9 -> QEMU killed %s; kill -9 -> NotReady %s; restart -> Ready %s",
		kill9ToKilled.Round(10*time.Millisecond), kill9ToNotReady.Round(10*time.Millisecond), restartToReady.Round(10*time.Millisecond))
	fmt.Printf("HA-TIMES sigstop_to_killed=%.2f sigstop_to_notready=%.2f linkcut_to_killed=%.2f linkcut_to_notready=%.2f kill9_to_killed=%.2f kill9_to_notready=%.2f\n",
		toKilled.Seconds(), toNotReady.Seconds(), cutToKilled.Seconds(), cutToNotReady.Seconds(), kill9ToKilled.Seconds(), kill9ToNotReady.Seconds())
	s.MustCLI("", "delete", "vm", "ha-vm", "manual-vm")
}

// hasEvent says whether the VM name in project default has an event with reason.
func hasEvent(t *testing.T, cl *client.Client, name, reason string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := cl.List(ctx, "events", "default", client.ListOptions{})
	if err != nil {
		return false
	}
	for _, raw := range l.Items {
		var ev v1alpha1.Event
		if json.Unmarshal(raw, &ev) == nil && ev.InvolvedObject.Name == name && ev.Reason == reason {
			return true
		}
	}
	return false
}

// processStopped says whether pid is stopped (state T in /proc/PID/stat).
func processStopped(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i >= 0 && i+2 < len(b) && (b[i+2] == 'T' || b[i+2] == 't')
}
