package e2e

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/testutil"
)

// TestHAHungHostPartitionLeaderLoss, on a cluster of its own (rhf) whose control plane runs on
// h1 and h3 (two serves, one leader), with h2 an agent-only host. Every VM has a data disk on
// Shared storage. A poller samples every 100 ms which QEMUs of each VM exist.
//
//  1. Hung host: h2's agent is stopped with SIGSTOP while hung-vm (HA) and plain-vm (not HA)
//     run on h2. hung-vm's QEMU is killed on h2 by the node's fence guard (the agent cannot),
//     the HA controller then starts it elsewhere, under a later disk-lease token; plain-vm's
//     QEMU lives on, its lease unchanged. SIGCONT: the agent finds its node lease lost, and h2
//     never runs hung-vm again.
//  2. Partition and leader loss: part-vm (HA) runs on h2; h2's underlay link is cut; when h2
//     is NotReady the control plane's leader is killed with SIGKILL (and started again). The
//     other serve takes over and completes the recovery: part-vm runs on a node of the
//     control plane, its lease granted anew. Link up: h2 Ready again, no second QEMU.
//
// At no time does the poller see two QEMUs of one VM.
func TestHAHungHostPartitionLeaderLoss(t *testing.T) {
	clusterLane(t)
	c := newCluster(t, ClusterOptions{Name: "rhf", ServeOn: []string{"h1", "h3"}})
	h1, h2, h3 := c.Host("h1"), c.Host("h2"), c.Host("h3")
	s := c.ServeOf(t, h1)
	img := c.GuestImage(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	t.Cleanup(cancel)

	clusterApply(s, clusterSharedClassYAML("rhf-shared", c.Shared+"/rhf-storage"))
	// Each VM with a disk of its own on the Shared class.
	vm := func(name string, annotations ...string) string {
		return clusterDiskManifest{Name: name + "-data", Size: "64Mi", StorageClass: "rhf-shared"}.YAML() + "---\n" +
			clusterVMManifest{Name: name, Annotations: annotations, Host: "h2", Image: img, Disks: []string{name + "-data"}}.YAML()
	}
	clusterApply(s, vm("hung-vm", clusterHAAnnotation), vm("plain-vm"))
	uid := map[string]string{}
	for _, n := range []string{"hung-vm", "plain-vm"} {
		v := vmWait(t, s, n, vmBootTimeout, "Running on h2", clusterRunningOn("h2"))
		uid[n] = v.UID
	}
	vmWaitSerial(t, s, "hung-vm", "RAKHSH-GUEST: ready", 1)
	s.MustCLI("", "patch", "vm", "hung-vm", "--type", "json", "-p", `[{"op":"remove","path":"/spec/nodeSelector"}]`)
	hungTok := leaseToken(t, diskLease(t, s, "hung-vm-data"))
	plainTok := leaseToken(t, diskLease(t, s, "plain-vm-data"))
	if got := runDirLeaseToken(t, h2, uid["hung-vm"], "hung-vm-data"); got != hungTok {
		t.Fatalf("hung-vm's QEMU runs under token %d, its lease has %d", got, hungTok)
	}
	poller := startHAPoller([]string{uid["hung-vm"], uid["plain-vm"]})
	pollerDone := false
	t.Cleanup(func() {
		if !pollerDone {
			poller.finish()
		}
	})

	// 1. The hung host.
	hungPID := testutil.QEMUPIDs(h2.DataDir)[uid["hung-vm"]]
	plainPID := testutil.QEMUPIDs(h2.DataDir)[uid["plain-vm"]]
	if hungPID == 0 || plainPID == 0 {
		t.Fatalf("QEMUs on h2: hung-vm %d, plain-vm %d", hungPID, plainPID)
	}
	stoppedAt := time.Now()
	h2.Pause(t)
	resume := clusterLiftLater(t, func() { h2.Resume(t) })
	waitForIn(t, "hung-vm's QEMU on h2 killed while h2's agent is stopped", 2*time.Minute, func() bool { return !pidAlive(hungPID) })
	killed := time.Since(stoppedAt)
	moved := vmWait(t, s, "hung-vm", 3*time.Minute, "Running on another node", func(v *v1alpha1.VirtualMachine) bool {
		return v != nil && v.Status.Phase == v1alpha1.VMPhaseRunning && v.Status.NodeName != "" && v.Status.NodeName != "h2"
	})
	running := time.Since(stoppedAt)
	t.Logf("HA-FENCE hung host: SIGSTOP -> h2's QEMU killed %s, -> running on %s %s", killed.Round(10*time.Millisecond), moved.Status.NodeName, running.Round(10*time.Millisecond))
	if !pidAlive(plainPID) {
		t.Errorf("plain-vm's QEMU (not HA) died while h2's agent was stopped")
	}
	l := diskLease(t, s, "hung-vm-data")
	newTok := leaseToken(t, l)
	t.Logf("lease of hung-vm-data: h2 token %d -> %s token %d", hungTok, l.Spec.HolderNode, newTok)
	if l.Spec.HolderNode != moved.Status.NodeName || newTok <= hungTok {
		t.Errorf("the lease of hung-vm-data after the recovery: %+v token %d, want held by %s under a token above %d", l.Spec, newTok, moved.Status.NodeName, hungTok)
	}
	if got := runDirLeaseToken(t, c.Host(moved.Status.NodeName), uid["hung-vm"], "hung-vm-data"); got != newTok {
		t.Errorf("hung-vm's new QEMU runs under token %d, its lease has %d", got, newTok)
	}
	resume()
	// The serial log is the running node's: the new node's holds the one boot there.
	vmWaitSerial(t, s, "hung-vm", "RAKHSH-GUEST: ready", 1)
	waitForIn(t, "h2 Ready again", 2*time.Minute, func() bool {
		var n v1alpha1.Node
		return s.Client().Get(ctx, "nodes", "", "h2", &n) == nil && n.Status.Phase == v1alpha1.NodePhaseReady
	})
	if pid := testutil.QEMUPIDs(h2.DataDir)[uid["hung-vm"]]; pid != 0 {
		t.Errorf("h2 runs hung-vm again (pid %d) after SIGCONT", pid)
	}
	if !pidAlive(plainPID) || leaseToken(t, diskLease(t, s, "plain-vm-data")) != plainTok {
		t.Errorf("plain-vm: QEMU alive %v, lease %+v (token was %d)", pidAlive(plainPID), diskLease(t, s, "plain-vm-data").Spec, plainTok)
	}
	if l := diskLease(t, s, "hung-vm-data"); leaseToken(t, l) != newTok {
		t.Errorf("the lease of hung-vm-data changed after h2 came back: %+v", l.Spec)
	}

	// 2. The partition, and the leader lost while the node is being recovered.
	clusterApply(s, vm("part-vm", clusterHAAnnotation))
	pv := vmWait(t, s, "part-vm", vmBootTimeout, "Running on h2", clusterRunningOn("h2"))
	uid["part-vm"] = pv.UID
	poller.add(pv.UID)
	vmWaitSerial(t, s, "part-vm", "RAKHSH-GUEST: ready", 1)
	partTok := leaseToken(t, diskLease(t, s, "part-vm-data"))
	var cp v1alpha1.ControlPlane
	if err := s.Client().Get(ctx, "controlplanes", "", v1alpha1.ControlPlaneName, &cp); err != nil || cp.Status.Leader == nil {
		t.Fatalf("control plane: %+v %v", cp.Status, err)
	}
	leader := c.Host(cp.Status.Leader.Name)
	other := h1
	if leader == h1 {
		other = h3
	}
	t.Logf("leader %s; part-vm may go to %s only", leader.Name, other.Name)
	s = c.ServeOf(t, other) // the view that outlives the leader
	s.MustCLI("", "patch", "vm", "part-vm", "--type", "merge", "-p", `{"spec":{"nodeSelector":{"kubernetes.io/hostname":"`+other.Name+`"}}}`)
	partPID := testutil.QEMUPIDs(h2.DataDir)[pv.UID]
	cutAt := time.Now()
	h2.LinkDown(t)
	linkUp := clusterLiftLater(t, func() { h2.LinkUp(t) })
	waitForIn(t, "h2 NotReady", 2*time.Minute, func() bool {
		var n v1alpha1.Node
		return s.Client().Get(ctx, "nodes", "", "h2", &n) == nil && n.Status.Phase != v1alpha1.NodePhaseReady
	})
	notReady := time.Since(cutAt)
	if pidAlive(partPID) {
		t.Errorf("part-vm's QEMU still runs on the cut-off h2 when h2 is found NotReady (%s after the cut)", notReady.Round(10*time.Millisecond))
	}
	leader.Kill9(t)
	t.Logf("leader %s killed %s after the cut (h2 NotReady)", leader.Name, time.Since(cutAt).Round(10*time.Millisecond))
	leader.Restart(t)
	moved = vmWait(t, s, "part-vm", 3*time.Minute, "Running on "+other.Name, clusterRunningOn(other.Name))
	t.Logf("HA-FENCE partition: cut -> NotReady %s, -> running on %s %s (with the leader lost)", notReady.Round(10*time.Millisecond), moved.Status.NodeName, time.Since(cutAt).Round(10*time.Millisecond))
	if r := moved.Status.Recovered; len(r) != 1 || r[0].FromNode != "h2" {
		t.Errorf("part-vm status.recovered %+v, want one recovery from h2", r)
	}
	if l := diskLease(t, s, "part-vm-data"); l.Spec.HolderNode != other.Name || leaseToken(t, l) <= partTok {
		t.Errorf("the lease of part-vm-data after the recovery: %+v, want held by %s under a token above %d", l.Spec, other.Name, partTok)
	}
	if err := s.Client().Get(ctx, "controlplanes", "", v1alpha1.ControlPlaneName, &cp); err == nil && cp.Status.Leader != nil {
		t.Logf("leader now %s", cp.Status.Leader.Name)
	}
	vmWaitSerial(t, s, "part-vm", "RAKHSH-GUEST: ready", 1)
	linkUp()
	waitForIn(t, "h2 Ready again", 2*time.Minute, func() bool {
		var n v1alpha1.Node
		return s.Client().Get(ctx, "nodes", "", "h2", &n) == nil && n.Status.Phase == v1alpha1.NodePhaseReady
	})
	time.Sleep(3 * time.Second)
	if pid := testutil.QEMUPIDs(h2.DataDir)[pv.UID]; pid != 0 {
		t.Errorf("h2 runs part-vm again (pid %d) after its link came back", pid)
	}

	most, samples := poller.finish()
	pollerDone = true
	t.Logf("poller: %d samples, most QEMUs at once: hung-vm %d, plain-vm %d, part-vm %d", samples, most[uid["hung-vm"]], most[uid["plain-vm"]], most[uid["part-vm"]])
	for n, u := range uid {
		if most[u] > 1 {
			t.Errorf("the poller saw %d QEMUs of %s at once", most[u], n)
		}
	}
	if samples < 100 {
		t.Errorf("the poller took only %d samples", samples)
	}
	s.MustCLI("", "delete", "vm", "hung-vm", "plain-vm", "part-vm")
}

// waitForIn is waitFor with a limit of its own.
func waitForIn(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("%s: not within %s", what, limit)
}

// pidAlive says whether process pid exists and is not a zombie.
func pidAlive(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	b := string(data)
	i := strings.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}
