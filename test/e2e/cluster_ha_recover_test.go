package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/storage"
	"github.com/rakhsh/rakhsh/internal/testutil"
)

// diskLease reads the VirtualDiskLease of disk name in the default project.
func diskLease(t *testing.T, s *Serve, name string) *v1alpha1.VirtualDiskLease {
	t.Helper()
	var l v1alpha1.VirtualDiskLease
	if err := s.Client().Get(context.Background(), "virtualdiskleases", "default", name, &l); err != nil {
		t.Fatalf("reading the lease of %s: %v", name, err)
	}
	return &l
}

// leaseToken is a lease's fencing token (its resourceVersion, a store revision).
func leaseToken(t *testing.T, l *v1alpha1.VirtualDiskLease) int64 {
	t.Helper()
	n, err := strconv.ParseInt(l.ResourceVersion, 10, 64)
	if err != nil {
		t.Fatalf("the lease of %s has token %q: %v", l.Name, l.ResourceVersion, err)
	}
	return n
}

// runDirLeaseToken is the token the QEMU of VM uid on host h was started under for disk
// (from the "disk-leases" file of its run directory), or 0.
func runDirLeaseToken(t *testing.T, h *ClusterHost, uid, disk string) int64 {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(storage.VMRunDir(h.DataDir, uid), "disk-leases"))
	if err != nil {
		t.Errorf("reading the disk leases of VM %s on %s: %v", uid, h.Name, err)
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == disk {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	return 0
}

// haQEMUCounts counts, in one pass over /proc, the live QEMU processes of each VM uid.
func haQEMUCounts(uids []string) map[string]int {
	out := map[string]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		if err != nil || !strings.Contains(string(b), "qemu") {
			continue
		}
		for _, uid := range uids {
			if strings.Contains(string(b), "-uuid\x00"+uid+"\x00") {
				out[uid]++
			}
		}
	}
	return out
}

// haPoller samples every 100 ms which QEMU processes of each VM exist, and keeps the most
// seen at once.
type haPoller struct {
	mu      sync.Mutex
	uids    []string
	most    map[string]int
	samples int
	stop    chan struct{}
	done    chan struct{}
}

func startHAPoller(uids []string) *haPoller {
	p := &haPoller{uids: uids, most: map[string]int{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			p.mu.Lock()
			uids := slices.Clone(p.uids)
			p.mu.Unlock()
			counts := haQEMUCounts(uids)
			p.mu.Lock()
			p.samples++
			for uid, n := range counts {
				p.most[uid] = max(p.most[uid], n)
			}
			p.mu.Unlock()
			select {
			case <-p.stop:
				return
			case <-t.C:
			}
		}
	}()
	return p
}

// add makes the poller watch the QEMUs of one more VM.
func (p *haPoller) add(uid string) {
	p.mu.Lock()
	p.uids = append(p.uids, uid)
	p.mu.Unlock()
}

func (p *haPoller) finish() (map[string]int, int) {
	close(p.stop)
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.most, p.samples
}

// TestHARecovery: host crash on a cluster of its own (rha, three hosts, a Shared
// StorageClass over the cluster's shared directory). On h2 run ha-a and ha-b (HA, the test
// guest from the CVI with a data disk on Shared storage, started pinned to h2, then unpinned),
// plain (not HA) and ha-local (HA, its data disk on h2's Local storage). h2's agent and every
// QEMU of h2 are killed with SIGKILL. Then:
//   - ha-a and ha-b run on another node and their guests boot (serial marker); the time
//     from the kill to each marker is logged, split into detection (NotReady), margin (lease
//     taken over), scheduling (bound elsewhere) and boot;
//   - a poller sampling every 100 ms never sees two QEMUs of one VM;
//   - plain stays bound to h2; ha-local stays bound to h2 with condition HighAvailability=False
//     (LocalStorageOnFailedNode) naming its disk;
//   - h2 restarted does not start ha-a and ha-b again (one QEMU each), runs plain again, and
//     ha-local too, whose condition goes.
func TestHARecovery(t *testing.T) {
	clusterLane(t)
	c := newCluster(t, ClusterOptions{Name: "rha"})
	s := c.Serve(t)
	h2 := c.Host("h2")
	img := c.GuestImage(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	t.Cleanup(cancel)
	cl := s.Client()

	clusterApply(s, clusterSharedClassYAML("rha-shared", filepath.Join(c.Shared, "rha-storage")))
	disk := func(name string) string {
		return clusterDiskManifest{Name: name, Size: "64Mi", StorageClass: "rha-shared"}.YAML()
	}
	clusterApply(s, disk("ha-a-data"), disk("ha-b-data"), disk("ha-local-data"))
	clusterWaitDisks(s, "ha-a-data", "ha-b-data", "ha-local-data")
	// ha-local's disk goes to h2's Local storage (moved there by h2's agent).
	s.MustCLI("", "disk", "move", "ha-local-data", "--storage-class", "local", "--node", "h2", "--timeout", "3m")
	if d := storageDisk(t, s, "ha-local-data"); d.Status.StorageClassName != "local" || d.Status.NodeName != "h2" {
		t.Fatalf("ha-local-data after the move: class %q node %q, want local on h2", d.Status.StorageClassName, d.Status.NodeName)
	}
	vm := func(name string, ha bool, prio int, data ...string) string {
		m := clusterVMManifest{Name: name, Host: "h2", Image: img, Disks: data}
		if ha {
			m.Annotations = []string{clusterHAAnnotation, fmt.Sprintf("virtualization.rakhsh.io/high-availability-priority: %q", strconv.Itoa(prio))}
		}
		return m.YAML()
	}
	appliedAt := time.Now()
	clusterApply(s, vm("ha-a", true, 10, "ha-a-data"), vm("ha-b", true, 0, "ha-b-data"), vm("plain", false, 0), vm("ha-local", true, 0, "ha-local-data"))
	names := []string{"ha-a", "ha-b", "plain", "ha-local"}
	uid := map[string]string{}
	for _, n := range names {
		v := vmWait(t, s, n, vmBootTimeout, "Running on h2", clusterRunningOn("h2"))
		uid[n] = v.UID
	}
	for _, n := range names {
		vmWaitSerial(t, s, n, "RAKHSH-GUEST: ready", 1)
	}
	// For comparison with the boot after the recovery: the first boot of the four VMs on h2.
	firstBoot := time.Since(appliedAt)
	t.Logf("first boot: apply -> every guest ready on h2 %s", firstBoot.Round(10*time.Millisecond))
	fmt.Printf("HA-RECOVERY first-boot=%.2f\n", firstBoot.Seconds())
	// ha-a and ha-b may now move.
	for _, n := range []string{"ha-a", "ha-b"} {
		s.MustCLI("", "patch", "vm", n, "--type", "json", "-p", `[{"op":"remove","path":"/spec/nodeSelector"}]`)
	}
	pids := testutil.QEMUPIDs(h2.DataDir)
	for _, n := range names {
		if pids[uid[n]] == 0 {
			t.Fatalf("no QEMU of %s under h2's data dir: %v", n, pids)
		}
	}
	// The disk leases h2 holds, with their fencing tokens.
	before := map[string]int64{}
	for _, d := range []string{"ha-a-data", "ha-b-data", "ha-local-data"} {
		l := diskLease(t, s, d)
		if l.Spec.HolderNode != "h2" {
			t.Fatalf("the lease of %s before the crash: %+v, want held by h2", d, l.Spec)
		}
		before[d] = leaseToken(t, l)
	}
	poller := startHAPoller([]string{uid["ha-a"], uid["ha-b"], uid["ha-local"], uid["plain"]})
	pollerDone := false
	t.Cleanup(func() {
		if !pollerDone {
			poller.finish()
		}
	})

	// The crash: h2's agent and every QEMU of h2.
	killedAt := time.Now()
	h2.Kill9(t)
	for _, pid := range pids {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Errorf("killing QEMU %d: %v", pid, err)
		}
	}
	restart := clusterLiftLater(t, func() { h2.Restart(t) })

	// Watch every 100 ms: the node, its lease, the VMs.
	type times struct{ released, bound, running, booted, ready time.Duration }
	got := map[string]*times{"ha-a": {}, "ha-b": {}}
	var notReady, takenOver time.Duration
	var order []string // the HA VMs in the order they were seen released
	// A liveness bound, not a timing target (the times are reported): 3 minutes, or twice the
	// first boot on a machine so loaded that booting the guests took longer than 90 s.
	limit := max(3*time.Minute, 2*firstBoot)
	deadline := killedAt.Add(limit)
	since := func() time.Duration { return time.Since(killedAt) }
	for {
		if time.Now().After(deadline) {
			t.Fatalf("the HA VMs did not boot elsewhere within %s: %+v %+v", limit.Round(time.Second), *got["ha-a"], *got["ha-b"])
		}
		var n v1alpha1.Node
		if notReady == 0 && cl.Get(ctx, "nodes", "", "h2", &n) == nil && n.Status.Phase != v1alpha1.NodePhaseReady {
			notReady = since()
		}
		var l v1alpha1.NodeLease
		if takenOver == 0 && cl.Get(ctx, "nodeleases", "", "h2", &l) == nil && l.Spec.HolderIdentity != "h2" {
			takenOver = since()
			t.Logf("h2's lease taken over: %+v", l.Spec)
		}
		all := true
		for _, name := range []string{"ha-a", "ha-b"} {
			tm := got[name]
			if tm.ready != 0 {
				continue
			}
			all = false
			var v v1alpha1.VirtualMachine
			if err := cl.Get(ctx, "virtualmachines", "default", name, &v); err != nil {
				t.Logf("reading %s: %v", name, err)
				continue
			}
			if tm.released == 0 && v.Status.NodeName != "h2" {
				tm.released = since()
				order = append(order, name)
			}
			if tm.bound == 0 && v.Status.NodeName != "" && v.Status.NodeName != "h2" {
				tm.bound = since()
			}
			if tm.bound != 0 && tm.running == 0 && v.Status.Phase == v1alpha1.VMPhaseRunning {
				tm.running = since()
			}
			if tm.running != 0 {
				// The serial log is the new node's: its boot marker, then its ready marker.
				log := vmLog(t, s, name)
				if tm.booted == 0 && strings.Contains(log, "RAKHSH-GUEST: booted") {
					tm.booted = since()
				}
				if strings.Contains(log, "RAKHSH-GUEST: ready") {
					tm.ready = since()
				}
			}
		}
		if all {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, name := range []string{"ha-a", "ha-b"} {
		tm := got[name]
		v := vmGet(t, s, name)
		t.Logf("HA-RECOVERY %s: on %s; kill -> NotReady %s, -> lease taken over %s, -> released %s, -> bound %s, -> Running %s, -> guest ready %s",
			name, v.Status.NodeName, notReady.Round(10*time.Millisecond), takenOver.Round(10*time.Millisecond), tm.released.Round(10*time.Millisecond),
			tm.bound.Round(10*time.Millisecond), tm.running.Round(10*time.Millisecond), tm.ready.Round(10*time.Millisecond))
		fmt.Printf("HA-RECOVERY vm=%s node=%s detection=%.2f margin=%.2f scheduling=%.2f boot=%.2f total=%.2f kill_to_boot_marker=%.2f\n", name, v.Status.NodeName,
			notReady.Seconds(), (takenOver - notReady).Seconds(), (tm.bound - takenOver).Seconds(), (tm.ready - tm.bound).Seconds(), tm.ready.Seconds(), tm.booted.Seconds())
		if tm.booted == 0 || tm.booted > tm.ready {
			t.Errorf("%s: the boot marker was seen at %s, the ready marker at %s", name, tm.booted, tm.ready)
		}
		if v.Status.NodeName == "h2" || v.Status.NodeName == "" {
			t.Errorf("%s runs on %q", name, v.Status.NodeName)
		}
		if ex := v.Status.LastExit; ex == nil || ex.Reason != v1alpha1.ExitNodeFailed || !strings.Contains(ex.Message, "h2") {
			t.Errorf("%s lastExit %+v", name, ex)
		}
		if r := v.Status.Recovered; len(r) != 1 || r[0].FromNode != "h2" {
			t.Errorf("%s status.recovered %+v, want one recovery from h2", name, r)
		}
		if !hasEvent(t, cl, name, "Recovered") {
			t.Errorf("no event Recovered on %s", name)
		}
		if takenOver == 0 || notReady == 0 || takenOver < notReady || tm.released < takenOver {
			t.Errorf("%s: order of NotReady (%s), lease takeover (%s), release (%s) is wrong", name, notReady, takenOver, tm.released)
		}
	}
	// The recovered VMs' disk leases were granted anew, to their new nodes, under later
	// tokens, and their QEMUs run under those tokens; ha-local's stays with h2.
	for _, name := range []string{"ha-a", "ha-b"} {
		v := vmGet(t, s, name)
		l := diskLease(t, s, name+"-data")
		tok := leaseToken(t, l)
		t.Logf("lease of %s-data: h2 token %d -> %s token %d (%d transitions)", name, before[name+"-data"], l.Spec.HolderNode, tok, l.Spec.LeaseTransitions)
		if l.Spec.HolderNode != v.Status.NodeName || l.Spec.VirtualMachineUID != v.UID || tok <= before[name+"-data"] {
			t.Errorf("the lease of %s-data after the recovery: %+v token %d, want held by %s under a token above %d", name, l.Spec, tok, v.Status.NodeName, before[name+"-data"])
		}
		if got := runDirLeaseToken(t, c.Host(v.Status.NodeName), v.UID, name+"-data"); got != tok {
			t.Errorf("%s's QEMU on %s runs under token %d, the lease's token is %d", name, v.Status.NodeName, got, tok)
		}
	}
	if l := diskLease(t, s, "ha-local-data"); l.Spec.HolderNode != "h2" || leaseToken(t, l) != before["ha-local-data"] {
		t.Errorf("the lease of ha-local-data changed while h2 was down: %+v", l.Spec)
	}
	if len(order) == 2 && order[0] != "ha-a" && got["ha-a"].released != got["ha-b"].released {
		t.Errorf("released in the order %v: ha-a has the higher priority", order)
	}
	// plain (not HA) stays on h2; ha-local stays on h2 with the condition.
	if v := vmGet(t, s, "plain"); v.Status.NodeName != "h2" || len(v.Status.Recovered) > 0 {
		t.Errorf("plain (not HA): node %q, recovered %+v", v.Status.NodeName, v.Status.Recovered)
	}
	loc := vmWait(t, s, "ha-local", time.Minute, "condition HighAvailability=False", func(v *v1alpha1.VirtualMachine) bool {
		c := v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionHighAvailability)
		return c != nil && c.Status == v1alpha1.ConditionFalse
	})
	cond := v1alpha1.FindCondition(loc.Status.Conditions, v1alpha1.VMConditionHighAvailability)
	t.Logf("ha-local: %s: %s", cond.Reason, cond.Message)
	if loc.Status.NodeName != "h2" || cond.Reason != v1alpha1.ReasonLocalStorageOnFailedNode || !strings.Contains(cond.Message, `VirtualDisk "ha-local-data"`) || !strings.Contains(cond.Message, "h2") {
		t.Errorf("ha-local: node %q, condition %+v", loc.Status.NodeName, cond)
	}

	// h2 comes back: it must not start ha-a and ha-b again; plain and ha-local run on h2.
	restartAt := time.Now()
	restart()
	for _, name := range []string{"plain", "ha-local"} {
		vmWait(t, s, name, vmBootTimeout, "Running on h2 again", func(v *v1alpha1.VirtualMachine) bool {
			return v != nil && v.Status.Phase == v1alpha1.VMPhaseRunning && v.Status.NodeName == "h2" && testutil.QEMUPIDs(h2.DataDir)[v.UID] != 0
		})
		t.Logf("%s runs on h2 again %s after h2's restart", name, time.Since(restartAt).Round(10*time.Millisecond))
	}
	vmWait(t, s, "ha-local", time.Minute, "condition HighAvailability gone", func(v *v1alpha1.VirtualMachine) bool {
		return v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionHighAvailability) == nil
	})
	var l v1alpha1.NodeLease
	if err := cl.Get(ctx, "nodeleases", "", "h2", &l); err != nil || l.Spec.HolderIdentity != "h2" {
		t.Errorf("h2's lease after its restart: %+v (%v), want it held by h2 again", l.Spec, err)
	}
	// A few seconds more on the poller with h2 up and holding its lease.
	time.Sleep(3 * time.Second)
	counts := haQEMUCounts([]string{uid["ha-a"], uid["ha-b"]})
	on2 := testutil.QEMUPIDs(h2.DataDir)
	for _, name := range []string{"ha-a", "ha-b"} {
		if counts[uid[name]] != 1 || on2[uid[name]] != 0 {
			t.Errorf("%s after h2's restart: %d QEMUs (one on h2: %v), want exactly 1, not on h2", name, counts[uid[name]], on2[uid[name]] != 0)
		}
		if v := vmGet(t, s, name); v.Status.NodeName == "h2" || v.Status.Phase != v1alpha1.VMPhaseRunning {
			t.Errorf("%s after h2's restart: %s on %q", name, v.Status.Phase, v.Status.NodeName)
		}
	}
	most, samples := poller.finish()
	pollerDone = true
	t.Logf("poller: %d samples, most QEMUs seen at once per VM: ha-a %d, ha-b %d, ha-local %d, plain %d",
		samples, most[uid["ha-a"]], most[uid["ha-b"]], most[uid["ha-local"]], most[uid["plain"]])
	for _, name := range names {
		if most[uid[name]] > 1 {
			t.Errorf("the poller saw %d QEMUs of %s at once", most[uid[name]], name)
		}
	}
	if samples < 100 {
		t.Errorf("the poller took only %d samples", samples)
	}
	s.MustCLI("", "delete", "vm", "ha-a", "ha-b", "plain", "ha-local")
}
