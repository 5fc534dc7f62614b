package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// TestVMSnapshotKeepRAM: a VM snapshot with keepRAM of a running VM keeps the guest's RAM
// state with its disks, pausing the guest only for the RAM save (no guest agent needed). After
// more writes and ticks, a stop and a restore, the VM is hibernated; its start resumes the
// guest at the snapshot's instant: no boot (one boot marker), a shell variable set before is
// still set, the tick counter goes on from the snapshot's value (below the last one before the
// stop), and the data disk holds the marker written before the snapshot but not the one after.
// A keepRAM snapshot of a stopped VM has no RAM to keep; deleting the snapshot removes its
// RAM state.
func TestVMSnapshotKeepRAM(t *testing.T) {
	sideBySide(t)
	s := snapServeVM(t, "64Mi")
	uid := vmGet(t, s, "vm1").UID

	snapWriteMarker(t, s, "vm1", uid, "MARK-A", 0)
	vmConsoleType(t, s, uid, "RKVAR=kept-in-ram; (i=0; while true; do i=$((i+1)); echo RKTICK $i; sleep 1; done) &")
	waitTick(t, s, "vm1", 2, time.Minute)

	out := s.MustCLI("", "vm", "snapshot", "vm1", "--name", "with-ram", "--keep-ram", "--wait", "--timeout", "3m")
	t.Logf("vm snapshot: %s", strings.TrimSpace(out))
	// The tick the guest had printed when the snapshot was done: the last one before a marker
	// the guest prints now. (The log read at once can lag the guest by seconds under load.)
	vmConsoleType(t, s, uid, "echo SNAP$((1+1))DONE")
	vmWaitSerial(t, s, "vm1", "SNAP2DONE", 1)
	l := vmLog(t, s, "vm1")
	atSnapshot := lastTick(l[:strings.Index(l, "SNAP2DONE")])
	vs := getObj[v1alpha1.VirtualMachineSnapshot](t, s, "virtualmachinesnapshots", "with-ram")
	if vs.Status.RAM == nil || vs.Status.RAM.NodeName == "" || vs.Status.Consistent == nil || !*vs.Status.Consistent {
		t.Fatalf("snapshot with RAM: %+v", vs.Status)
	}
	ramDir := storage.SnapshotRAMDir(s.DataDir, vs.UID)
	if _, err := os.Stat(filepath.Join(ramDir, "meta.json")); err != nil {
		t.Fatalf("the RAM state is not kept: %v", err)
	}
	for _, name := range vs.Status.VirtualDiskSnapshotNames {
		ds := snapVDS(t, s, name)
		if ds.Status.Stats == nil || ds.Status.Stats.Frozen == "" {
			t.Errorf("disk snapshot %s: no pause recorded: %+v", name, ds.Status.Stats)
			continue
		}
		t.Logf("disk snapshot %s: the guest was paused for %s, copy %s, RAM %s", name, ds.Status.Stats.Frozen, ds.Status.Stats.Copy, ds.Status.RAM.Size)
	}

	// The guest goes on: a marker after the snapshot, more ticks; then it is stopped.
	snapWriteMarker(t, s, "vm1", uid, "MARK-B", 1)
	beforeStop := waitTick(t, s, "vm1", atSnapshot+3, time.Minute)
	s.MustCLI("", "vm", "stop", "vm1", "--wait", "--timeout", "3m")

	// A keepRAM snapshot of the stopped VM: Ready, nothing to keep.
	s.MustCLI("", "vm", "snapshot", "vm1", "--name", "stopped", "--keep-ram", "--wait")
	stopped := getObj[v1alpha1.VirtualMachineSnapshot](t, s, "virtualmachinesnapshots", "stopped")
	if c := v1alpha1.FindCondition(stopped.Status.Conditions, v1alpha1.VMSnapshotConditionReady); stopped.Status.RAM != nil || c == nil || !strings.Contains(c.Message, "no RAM state to keep") {
		t.Errorf("keepRAM snapshot of a stopped VM: ram %+v, condition %+v", stopped.Status.RAM, c)
	}

	out = s.MustCLI("", "vm", "restore", "vm1", "with-ram", "--wait")
	t.Logf("vm restore: %s", strings.TrimSpace(out))
	v := vmGet(t, s, "vm1")
	if c := v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionHibernated); c == nil || c.Status != v1alpha1.ConditionTrue || v.Status.StateNodeName == "" {
		t.Fatalf("after the restore: Hibernated %+v, stateNodeName %q", c, v.Status.StateNodeName)
	}
	data := getObj[v1alpha1.VirtualDisk](t, s, "virtualdisks", "data")
	dpath := storage.ClassDiskPath(s.DataDir, nil, data.UID)
	if b := snapSector(t, dpath, 0); !bytes.HasPrefix(b, []byte("MARK-A")) {
		t.Errorf("sector 0 of the restored data disk: %q", b[:16])
	}
	if b := snapSector(t, dpath, 1); bytes.HasPrefix(b, []byte("MARK-B")) {
		t.Errorf("the restored data disk holds a write made after the snapshot")
	}

	logBefore := vmLog(t, s, "vm1")
	s.MustCLI("", "vm", "start", "vm1", "--wait", "--timeout", "3m")
	vmConsoleType(t, s, uid, "echo VAR-$RKVAR")
	vmWaitSerial(t, s, "vm1", "VAR-kept-in-ram", 1)
	log := vmLog(t, s, "vm1")
	if n := strings.Count(log, "RAKHSH-GUEST: ready"); n != 1 {
		t.Errorf("%d boot markers after the resume, want 1 (the guest booted again)", n)
	}
	var resumed []int
	deadline := time.Now().Add(time.Minute)
	for len(resumed) < 2 && time.Now().Before(deadline) {
		time.Sleep(500 * time.Millisecond)
		log = vmLog(t, s, "vm1")
		resumed = ticksIn(log[min(len(logBefore), len(log)):])
	}
	if len(resumed) < 2 || resumed[0] > atSnapshot+2 || resumed[0] >= beforeStop || resumed[1] <= resumed[0] {
		t.Errorf("ticks after the resume %v: want them to go on from the snapshot's %d (the last before the stop was %d)", resumed, atSnapshot, beforeStop)
	}
	v = vmGet(t, s, "vm1")
	if c := v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionHibernated); c != nil || v.Status.Phase != v1alpha1.VMPhaseRunning {
		t.Errorf("after the resume: phase %s, Hibernated %+v", v.Status.Phase, c)
	}
	if _, err := os.Stat(filepath.Join(ramDir, "meta.json")); err != nil {
		t.Errorf("the resume used up the snapshot's RAM state: %v", err)
	}
	if ev := s.MustCLI("", "get", "events"); !strings.Contains(ev, "Resumed") {
		t.Errorf("no Resumed event:\n%s", ev)
	}

	s.MustCLI("", "vm", "stop", "vm1", "--wait", "--timeout", "3m")
	s.MustCLI("", "delete", "vmsnapshot", "with-ram", "stopped")
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
		if _, err := os.Stat(ramDir); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("deleting the snapshot left its RAM state")
		}
	}
}

// ticksIn is the tick counters of a serial log, in order.
func ticksIn(log string) []int {
	var out []int
	for _, m := range tickRe.FindAllStringSubmatch(log, -1) {
		n := 0
		for _, c := range m[1] {
			n = n*10 + int(c-'0')
		}
		out = append(out, n)
	}
	return out
}
