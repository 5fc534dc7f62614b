package backup

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/runtime/fake"
)

func newVM(name string, phase v1alpha1.VirtualMachinePhase, node string) *v1alpha1.VirtualMachine {
	vm := &v1alpha1.VirtualMachine{ObjectMeta: v1alpha1.ObjectMeta{Name: name, Namespace: "p1"}}
	vm.Spec.CPU.Cores = 1
	vm.Spec.Memory.Size = "256Mi"
	vm.Status.Phase, vm.Status.NodeName = phase, node
	return vm
}

func newBackup(name, vm string) *v1alpha1.VirtualMachineBackup {
	return &v1alpha1.VirtualMachineBackup{ObjectMeta: v1alpha1.ObjectMeta{Name: name, Namespace: "p1"},
		Spec: v1alpha1.VirtualMachineBackupSpec{VirtualMachineName: vm, BackupTargetName: "nightly"}}
}

// clock is a settable clock for schedules.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) set(t time.Time) { c.mu.Lock(); c.t = t; c.mu.Unlock() }

func start(t *testing.T, fc *fake.Client, now func() time.Time) {
	t.Helper()
	fake.Start(t, fc, nil, func(f *runtime.Factory) (*Controller, error) {
		return New(Config{Deps: runtime.Deps{Client: fc, Informers: f}, Now: now}), nil
	})
}

// TestHandOver: a backup of a running VM goes to the VM's node; one of a stopped VM to the
// node of its disks (one of a stopped VM without disks fails with the reason); one naming a
// missing target waits; a second backup of the same VM waits
// while the first runs, and goes once the first ended.
func TestHandOver(t *testing.T) {
	fc := fake.New()
	target := &v1alpha1.BackupTarget{ObjectMeta: v1alpha1.ObjectMeta{Name: "nightly"},
		Spec: v1alpha1.BackupTargetSpec{Type: v1alpha1.BackupTargetTypeDirectory, Directory: &v1alpha1.BackupTargetDirectory{Path: "/srv/b"}}}
	orphan := newBackup("orphan", "vm1")
	orphan.Spec.BackupTargetName = "nosuch"
	vm3 := newVM("vm3", v1alpha1.VMPhaseStopped, "")
	vm3.Spec.BlockDeviceRefs = []v1alpha1.BlockDeviceSpecRef{{Kind: v1alpha1.BlockDeviceKindVirtualDisk, Name: "d3"}}
	d3 := &v1alpha1.VirtualDisk{ObjectMeta: v1alpha1.ObjectMeta{Name: "d3", Namespace: "p1"}}
	d3.Spec.PersistentVolumeClaim.Size = "1Gi"
	d3.Status.Phase, d3.Status.NodeName = v1alpha1.DiskPhaseReady, "n2"
	if err := fc.Add(target, newVM("vm1", v1alpha1.VMPhaseRunning, "n1"), newVM("vm2", v1alpha1.VMPhaseStopped, ""), vm3, d3,
		newBackup("b1", "vm1"), newBackup("stopped", "vm2"), newBackup("offline", "vm3"), orphan); err != nil {
		t.Fatal(err)
	}
	start(t, fc, nil)
	var b v1alpha1.VirtualMachineBackup
	fc.WaitFor(t, 10*time.Second, "virtualmachinebackups", "p1", "b1", &b, func() bool {
		return b.Status.Phase == v1alpha1.BackupPhaseInProgress && b.Status.NodeName == "n1" && b.Status.VirtualMachineUID != "" && b.Status.StartedAt != nil
	})
	fc.WaitFor(t, 10*time.Second, "virtualmachinebackups", "p1", "stopped", &b, func() bool {
		c := v1alpha1.FindCondition(b.Status.Conditions, v1alpha1.BackupConditionCompleted)
		return b.Status.Phase == v1alpha1.BackupPhaseFailed && c != nil && strings.Contains(c.Message, "no VirtualDisk")
	})
	// A stopped VM's backup goes to the node of its Local disks, marked stopped.
	fc.WaitFor(t, 10*time.Second, "virtualmachinebackups", "p1", "offline", &b, func() bool {
		return b.Status.Phase == v1alpha1.BackupPhaseInProgress && b.Status.NodeName == "n2" && b.Status.Stopped
	})
	// The stopped VM starts meanwhile: that backup fails.
	var v3 v1alpha1.VirtualMachine
	_ = fc.Get(context.Background(), "virtualmachines", "p1", "vm3", &v3)
	v3.Status.Phase, v3.Status.NodeName = v1alpha1.VMPhaseStarting, "n2"
	if err := fc.UpdateStatus(context.Background(), "virtualmachines", "p1", "vm3", &v3, nil); err != nil {
		t.Fatal(err)
	}
	fc.WaitFor(t, 10*time.Second, "virtualmachinebackups", "p1", "offline", &b, func() bool {
		c := v1alpha1.FindCondition(b.Status.Conditions, v1alpha1.BackupConditionCompleted)
		return b.Status.Phase == v1alpha1.BackupPhaseFailed && c != nil && strings.Contains(c.Message, "started")
	})
	fc.WaitFor(t, 10*time.Second, "virtualmachinebackups", "p1", "orphan", &b, func() bool {
		c := v1alpha1.FindCondition(b.Status.Conditions, v1alpha1.BackupConditionCompleted)
		return b.Status.Phase == v1alpha1.BackupPhasePending && c != nil && strings.Contains(c.Message, `"nosuch" does not exist`)
	})
	if err := fc.Add(newBackup("b2", "vm1")); err != nil {
		t.Fatal(err)
	}
	fc.WaitFor(t, 10*time.Second, "virtualmachinebackups", "p1", "b2", &b, func() bool {
		c := v1alpha1.FindCondition(b.Status.Conditions, v1alpha1.BackupConditionCompleted)
		return b.Status.Phase == v1alpha1.BackupPhasePending && c != nil && strings.Contains(c.Message, `"b1"`)
	})
	// The node completes b1: b2 goes.
	var b1 v1alpha1.VirtualMachineBackup
	if err := fc.Get(context.Background(), "virtualmachinebackups", "p1", "b1", &b1); err != nil {
		t.Fatal(err)
	}
	b1.Status.Phase = v1alpha1.BackupPhaseCompleted
	if err := fc.UpdateStatus(context.Background(), "virtualmachinebackups", "p1", "b1", &b1, nil); err != nil {
		t.Fatal(err)
	}
	fc.WaitFor(t, 10*time.Second, "virtualmachinebackups", "p1", "b2", &b, func() bool { return b.Status.Phase == v1alpha1.BackupPhaseInProgress })
	// The VM leaves the node during b2: it fails.
	var vm v1alpha1.VirtualMachine
	_ = fc.Get(context.Background(), "virtualmachines", "p1", "vm1", &vm)
	vm.Status.NodeName = "n2"
	if err := fc.UpdateStatus(context.Background(), "virtualmachines", "p1", "vm1", &vm, nil); err != nil {
		t.Fatal(err)
	}
	fc.WaitFor(t, 10*time.Second, "virtualmachinebackups", "p1", "b2", &b, func() bool {
		c := v1alpha1.FindCondition(b.Status.Conditions, v1alpha1.BackupConditionCompleted)
		return b.Status.Phase == v1alpha1.BackupPhaseFailed && c != nil && strings.Contains(c.Message, "left node")
	})
}

// TestSchedule: a schedule creates one backup per due time (named after the time, labelled
// with the schedule), one for the latest of several missed times, none while suspended, and
// prunes its completed backups by its retention policy (and failed ones older than the newest
// kept), never other backups of the VM.
func TestSchedule(t *testing.T) {
	fc := fake.New()
	clk := &clock{t: time.Now()}
	s := &v1alpha1.BackupSchedule{ObjectMeta: v1alpha1.ObjectMeta{Name: "hourly", Namespace: "p1"},
		Spec: v1alpha1.BackupScheduleSpec{VirtualMachineName: "vm1", BackupTargetName: "nightly", Schedule: "0 * * * *",
			Retention: v1alpha1.BackupRetention{KeepLast: 2}}}
	if err := fc.Add(s, newVM("vm1", v1alpha1.VMPhaseStopped, "")); err != nil {
		t.Fatal(err)
	}
	// The fake stamps creation with its own clock: the schedule counts from its status.
	start(t, fc, clk.now)
	var got v1alpha1.BackupSchedule
	fc.WaitFor(t, 10*time.Second, "backupschedules", "p1", "hourly", &got, func() bool {
		return got.Status.NextScheduleTime != nil && v1alpha1.FindCondition(got.Status.Conditions, ScheduleConditionReady) != nil
	})
	// Three backups, each completed one hour apart.
	ctx := context.Background()
	var slots []time.Time
	for h := 1; h <= 3; h++ {
		// The next slot, once the schedule has moved past the last one (its status is
		// written after the backup is made).
		var cur v1alpha1.BackupSchedule
		fc.WaitFor(t, 10*time.Second, "backupschedules", "p1", "hourly", &cur, func() bool {
			return cur.Status.NextScheduleTime != nil && (len(slots) == 0 || cur.Status.NextScheduleTime.After(slots[len(slots)-1]))
		})
		slot := cur.Status.NextScheduleTime.Time
		clk.set(slot.Add(time.Second))
		// Nudge the schedule: its requeue waits on the real clock.
		if err := fc.Patch(ctx, "backupschedules", "p1", "hourly", []byte(fmt.Sprintf(`{"metadata":{"annotations":{"nudge":"%d"}}}`, h)), nil); err != nil {
			t.Fatal(err)
		}
		name := scheduledName("hourly", slot)
		var b v1alpha1.VirtualMachineBackup
		fc.WaitFor(t, 10*time.Second, "virtualmachinebackups", "p1", name, &b, func() bool { return b.Labels[v1alpha1.LabelBackupSchedule] == "hourly" })
		b.Status.Phase = v1alpha1.BackupPhaseCompleted
		st := v1alpha1.NewTime(slot)
		b.Status.StartedAt = &st
		if err := fc.UpdateStatus(ctx, "virtualmachinebackups", "p1", name, &b, nil); err != nil {
			t.Fatal(err)
		}
		slots = append(slots, slot)
	}
	if slots[1].Sub(slots[0]) != time.Hour || slots[2].Sub(slots[1]) != time.Hour {
		t.Errorf("schedule times %v, want one an hour", slots)
	}
	// keepLast 2: the first is pruned.
	first := scheduledName("hourly", slots[0])
	deadline := time.Now().Add(10 * time.Second)
	for {
		var b v1alpha1.VirtualMachineBackup
		if err := fc.Get(ctx, "virtualmachinebackups", "p1", first, &b); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("backup %s not pruned", first)
		}
		time.Sleep(10 * time.Millisecond)
	}
	count := func() int {
		l, _ := fc.List(ctx, "virtualmachinebackups", "p1", client.ListOptions{})
		return len(l.Items)
	}
	if n := count(); n != 2 {
		t.Errorf("%d backups left, want 2", n)
	}
	// Five hours missed: one backup, for the latest of them.
	missed := slots[2].Add(5 * time.Hour)
	clk.set(missed.Add(time.Minute))
	if err := fc.Patch(ctx, "backupschedules", "p1", "hourly", []byte(`{"metadata":{"annotations":{"nudge":"missed"}}}`), nil); err != nil {
		t.Fatal(err)
	}
	var b v1alpha1.VirtualMachineBackup
	fc.WaitFor(t, 10*time.Second, "virtualmachinebackups", "p1", scheduledName("hourly", missed), &b, func() bool { return true })
	time.Sleep(200 * time.Millisecond)
	if n := count(); n != 3 {
		t.Errorf("%d backups after five missed hours, want 3 (one new)", n)
	}
	// Suspended: none.
	if err := fc.Patch(ctx, "backupschedules", "p1", "hourly", []byte(`{"spec":{"suspend":true}}`), nil); err != nil {
		t.Fatal(err)
	}
	clk.set(missed.Add(3 * time.Hour))
	fc.WaitFor(t, 10*time.Second, "backupschedules", "p1", "hourly", &got, func() bool {
		c := v1alpha1.FindCondition(got.Status.Conditions, ScheduleConditionReady)
		return c != nil && c.Reason == ReasonSuspended && got.Status.NextScheduleTime == nil
	})
	time.Sleep(200 * time.Millisecond)
	if n := count(); n != 3 {
		t.Errorf("%d backups while suspended, want 3", n)
	}
}

func TestRetain(t *testing.T) {
	at := func(s string) time.Time {
		tm, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	times := []time.Time{
		at("2026-12-05T10:30:00Z"), at("2026-12-05T10:00:00Z"), at("2026-12-05T09:00:00Z"),
		at("2026-12-04T23:00:00Z"), at("2026-12-04T08:00:00Z"), at("2026-12-03T08:00:00Z"),
		at("2026-11-20T08:00:00Z"), at("2026-10-01T08:00:00Z"),
	}
	for _, tc := range []struct {
		r    v1alpha1.BackupRetention
		want string
	}{
		{v1alpha1.BackupRetention{KeepLast: 3}, "11100000"},
		// Hourly: the newest of each of the last 2 hours that hold a backup.
		{v1alpha1.BackupRetention{KeepHourly: 2}, "10100000"},
		// Last 1, then daily 2: the 5th's day is covered by the kept last; the 4th and 3rd.
		{v1alpha1.BackupRetention{KeepLast: 1, KeepDaily: 2}, "10010100"},
		{v1alpha1.BackupRetention{KeepMonthly: 3}, "10000011"},
		{v1alpha1.BackupRetention{KeepWeekly: 1, KeepMonthly: 1}, "10000010"},
	} {
		keep := Retain(times, tc.r)
		got := ""
		for _, k := range keep {
			if k {
				got += "1"
			} else {
				got += "0"
			}
		}
		if got != tc.want {
			t.Errorf("%+v: kept %s, want %s", tc.r, got, tc.want)
		}
	}
	// Order does not matter.
	rev := []time.Time{times[2], times[0], times[1]}
	if k := Retain(rev, v1alpha1.BackupRetention{KeepLast: 1}); !k[1] || k[0] || k[2] {
		t.Errorf("unsorted: %v", k)
	}
}

// TestModeStop: a backup in mode stop of a running VM records that it stops the VM, makes a
// Stop operation and waits; once the VM is stopped it goes to the node of the VM's disks as a
// stopped VM's backup; when it has ended it makes a Start operation and records it, once. A
// VM with runPolicy AlwaysOn is refused; a stopped VM is backed up and left stopped.
func TestModeStop(t *testing.T) {
	fc := fake.New()
	target, vm, d1 := modeStopFixture()
	always := newVM("always", v1alpha1.VMPhaseRunning, "n1")
	always.Spec.RunPolicy = v1alpha1.RunPolicyAlwaysOn
	off := newVM("off", v1alpha1.VMPhaseStopped, "")
	off.Spec.BlockDeviceRefs = vm.Spec.BlockDeviceRefs
	mk := func(name, vm string) *v1alpha1.VirtualMachineBackup {
		b := newBackup(name, vm)
		b.Spec.Mode = v1alpha1.BackupModeStop
		return b
	}
	if err := fc.Add(target, vm, d1, always, off, mk("b1", "vm1"), mk("b-always", "always"), mk("b-off", "off")); err != nil {
		t.Fatal(err)
	}
	start(t, fc, nil)
	ctx := context.Background()
	var b v1alpha1.VirtualMachineBackup
	fc.WaitFor(t, 10*time.Second, "virtualmachinebackups", "p1", "b1", &b, func() bool {
		c := v1alpha1.FindCondition(b.Status.Conditions, v1alpha1.BackupConditionCompleted)
		return b.Status.Phase == v1alpha1.BackupPhasePending && b.Status.StoppedVM && c != nil && strings.Contains(c.Message, "waiting for the VirtualMachine to stop")
	})
	var op v1alpha1.VirtualMachineOperation
	if err := fc.Get(ctx, "virtualmachineoperations", "p1", "b1-stop", &op); err != nil || op.Spec.Type != v1alpha1.VMOPTypeStop || op.Spec.VirtualMachineName != "vm1" || op.Labels[v1alpha1.LabelBackupOf] != "b1" {
		t.Fatalf("the Stop operation: %+v %v", op, err)
	}
	fc.WaitFor(t, 10*time.Second, "virtualmachinebackups", "p1", "b-always", &b, func() bool {
		c := v1alpha1.FindCondition(b.Status.Conditions, v1alpha1.BackupConditionCompleted)
		return b.Status.Phase == v1alpha1.BackupPhaseFailed && c != nil && strings.Contains(c.Message, "AlwaysOn")
	})
	fc.WaitFor(t, 10*time.Second, "virtualmachinebackups", "p1", "b-off", &b, func() bool {
		return b.Status.Phase == v1alpha1.BackupPhaseInProgress && b.Status.Stopped && !b.Status.StoppedVM
	})

	// The VM stops: the backup goes to n1 as a stopped VM's.
	var v v1alpha1.VirtualMachine
	_ = fc.Get(ctx, "virtualmachines", "p1", "vm1", &v)
	v.Status.Phase, v.Status.NodeName = v1alpha1.VMPhaseStopped, ""
	if err := fc.UpdateStatus(ctx, "virtualmachines", "p1", "vm1", &v, nil); err != nil {
		t.Fatal(err)
	}
	fc.WaitFor(t, 10*time.Second, "virtualmachinebackups", "p1", "b1", &b, func() bool {
		return b.Status.Phase == v1alpha1.BackupPhaseInProgress && b.Status.Stopped && b.Status.StoppedVM && b.Status.NodeName == "n1"
	})
	if err := fc.Get(ctx, "virtualmachineoperations", "p1", "b1-start", nil); !client.IsNotFound(err) {
		t.Fatalf("a Start operation before the backup ended: %v", err)
	}
	// The node completes both: b1's VM is started again, b-off's is not.
	for _, name := range []string{"b1", "b-off"} {
		var got v1alpha1.VirtualMachineBackup
		if err := fc.Get(ctx, "virtualmachinebackups", "p1", name, &got); err != nil {
			t.Fatal(err)
		}
		got.Status.Phase = v1alpha1.BackupPhaseCompleted
		if err := fc.UpdateStatus(ctx, "virtualmachinebackups", "p1", name, &got, nil); err != nil {
			t.Fatal(err)
		}
	}
	fc.WaitFor(t, 10*time.Second, "virtualmachinebackups", "p1", "b1", &b, func() bool { return b.Status.RestartedVM })
	if err := fc.Get(ctx, "virtualmachineoperations", "p1", "b1-start", &op); err != nil || op.Spec.Type != v1alpha1.VMOPTypeStart {
		t.Fatalf("the Start operation: %+v %v", op, err)
	}
	// b-off never stopped its VM (stoppedVM false, checked above): nothing restarts it.
	var bOff v1alpha1.VirtualMachineBackup
	if err := fc.Get(ctx, "virtualmachinebackups", "p1", "b-off", &bOff); err != nil || bOff.Status.StoppedVM || bOff.Status.RestartedVM {
		t.Errorf("a stopped VM's backup in mode stop: %+v %v", bOff.Status, err)
	}
	if n := backupOpName(strings.Repeat("a", 63), "start"); len(n) > 63 || !strings.HasSuffix(n, "-start") {
		t.Errorf("backupOpName of a long name: %q", n)
	}
}

// TestModeStopEdges: a Stop operation of the same name left by an earlier backup is deleted
// and made again; another backup of the VM waits while one in mode stop holds it; a VM
// started again before its stopped disks were backed up fails the backup, which then starts
// nothing (the VM runs).
func TestModeStopEdges(t *testing.T) {
	fc := fake.New()
	target, vm, d1 := modeStopFixture()
	stale := &v1alpha1.VirtualMachineOperation{ObjectMeta: v1alpha1.ObjectMeta{Name: "b1-stop", Namespace: "p1",
		Annotations: map[string]string{annotationBackupUID: "an-earlier-backup"}},
		Spec: v1alpha1.VirtualMachineOperationSpec{Type: v1alpha1.VMOPTypeStop, VirtualMachineName: "vm1"}}
	stale.Status.Phase = v1alpha1.VMOPPhaseCompleted
	b1 := newBackup("b1", "vm1")
	b1.Spec.Mode = v1alpha1.BackupModeStop
	if err := fc.Add(target, vm, d1, stale, b1); err != nil {
		t.Fatal(err)
	}
	start(t, fc, nil)
	ctx := context.Background()
	var got v1alpha1.VirtualMachineBackup
	fc.WaitFor(t, 10*time.Second, "virtualmachinebackups", "p1", "b1", &got, func() bool { return got.Status.StoppedVM })
	var op v1alpha1.VirtualMachineOperation
	fc.WaitFor(t, 20*time.Second, "virtualmachineoperations", "p1", "b1-stop", &op, func() bool {
		return op.Annotations[annotationBackupUID] == got.UID && op.Status.Phase == ""
	})

	// Another backup of the VM waits while b1 holds it.
	if err := fc.Add(newBackup("b2", "vm1")); err != nil {
		t.Fatal(err)
	}
	var b2 v1alpha1.VirtualMachineBackup
	fc.WaitFor(t, 10*time.Second, "virtualmachinebackups", "p1", "b2", &b2, func() bool {
		c := v1alpha1.FindCondition(b2.Status.Conditions, v1alpha1.BackupConditionCompleted)
		return b2.Status.Phase == v1alpha1.BackupPhasePending && c != nil && strings.Contains(c.Message, `backup "b1" (mode stop) holds the VM`)
	})

	// The Stop completes, but the VM is started again before the backup begins: b1 fails and
	// starts nothing; b2 may go then.
	op.Status.Phase = v1alpha1.VMOPPhaseCompleted
	if err := fc.UpdateStatus(ctx, "virtualmachineoperations", "p1", "b1-stop", &op, nil); err != nil {
		t.Fatal(err)
	}
	fc.WaitFor(t, 10*time.Second, "virtualmachinebackups", "p1", "b1", &got, func() bool {
		c := v1alpha1.FindCondition(got.Status.Conditions, v1alpha1.BackupConditionCompleted)
		return got.Status.Phase == v1alpha1.BackupPhaseFailed && got.Status.RestartedVM && c != nil
	})
	if c := v1alpha1.FindCondition(got.Status.Conditions, v1alpha1.BackupConditionCompleted); !strings.Contains(c.Message, "started again") {
		t.Errorf("b1: %q", c.Message)
	}
	if err := fc.Get(ctx, "virtualmachineoperations", "p1", "b1-start", nil); !client.IsNotFound(err) {
		t.Errorf("a Start of a VM that runs: %v", err)
	}
	fc.WaitFor(t, 10*time.Second, "virtualmachinebackups", "p1", "b2", &b2, func() bool { return b2.Status.Phase == v1alpha1.BackupPhaseInProgress })
}

// modeStopFixture is a target and a running Manual VM vm1 on n1 with its Local disk d1.
func modeStopFixture() (*v1alpha1.BackupTarget, *v1alpha1.VirtualMachine, *v1alpha1.VirtualDisk) {
	target := &v1alpha1.BackupTarget{ObjectMeta: v1alpha1.ObjectMeta{Name: "nightly"},
		Spec: v1alpha1.BackupTargetSpec{Type: v1alpha1.BackupTargetTypeDirectory, Directory: &v1alpha1.BackupTargetDirectory{Path: "/srv/b"}}}
	vm := newVM("vm1", v1alpha1.VMPhaseRunning, "n1")
	vm.Spec.RunPolicy = v1alpha1.RunPolicyManual
	vm.Spec.BlockDeviceRefs = []v1alpha1.BlockDeviceSpecRef{{Kind: v1alpha1.BlockDeviceKindVirtualDisk, Name: "d1"}}
	d1 := &v1alpha1.VirtualDisk{ObjectMeta: v1alpha1.ObjectMeta{Name: "d1", Namespace: "p1"}}
	d1.Spec.PersistentVolumeClaim.Size = "1Gi"
	d1.Status.Phase, d1.Status.NodeName = v1alpha1.DiskPhaseReady, "n1"
	return target, vm, d1
}

// TestNodeAgentGone: a backup in progress on a node whose agent is gone (Ready Unknown:
// no heartbeat) fails once that has lasted nodeDownAfter, with the node's reason; one on a
// node whose agent is there but reports a problem (QEMU unusable) goes on, and so does one
// on a node whose agent is fenced (False, NodeLeaseExpired: it heartbeats and says so). One
// on a node removed from the cluster fails nodeDownAfter after the node went.
func TestNodeAgentGone(t *testing.T) {
	old := nodeDownAfter
	nodeDownAfter = 2 * time.Second
	t.Cleanup(func() { nodeDownAfter = old })
	fc := fake.New()
	target := &v1alpha1.BackupTarget{ObjectMeta: v1alpha1.ObjectMeta{Name: "nightly"},
		Spec: v1alpha1.BackupTargetSpec{Type: v1alpha1.BackupTargetTypeDirectory, Directory: &v1alpha1.BackupTargetDirectory{Path: "/srv/b"}}}
	objs := []v1alpha1.Object{target}
	for i, n := range []string{"n1", "n2", "n3", "n4"} {
		vm := newVM(fmt.Sprintf("vm%d", i+1), v1alpha1.VMPhaseRunning, n)
		node := &v1alpha1.Node{ObjectMeta: v1alpha1.ObjectMeta{Name: n}}
		node.Status.Phase = v1alpha1.NodePhaseReady
		node.Status.Conditions = []v1alpha1.Condition{{Type: v1alpha1.NodeConditionReady, Status: v1alpha1.ConditionTrue, Reason: "AgentReady"}}
		objs = append(objs, vm, node, newBackup(fmt.Sprintf("b%d", i+1), vm.Name))
	}
	if err := fc.Add(objs...); err != nil {
		t.Fatal(err)
	}
	start(t, fc, nil)
	ctx := context.Background()
	var b v1alpha1.VirtualMachineBackup
	for _, name := range []string{"b1", "b2", "b3", "b4"} {
		fc.WaitFor(t, 10*time.Second, "virtualmachinebackups", "p1", name, &b, func() bool { return b.Status.Phase == v1alpha1.BackupPhaseInProgress })
	}
	setReady := func(node, status, reason string) {
		t.Helper()
		var n v1alpha1.Node
		if err := fc.Get(ctx, "nodes", "", node, &n); err != nil {
			t.Fatal(err)
		}
		now := v1alpha1.Now()
		n.Status.Conditions = []v1alpha1.Condition{{Type: v1alpha1.NodeConditionReady, Status: status, Reason: reason, Message: "test", LastTransitionTime: &now}}
		if err := fc.UpdateStatus(ctx, "nodes", "", node, &n, nil); err != nil {
			t.Fatal(err)
		}
	}
	setReady("n1", v1alpha1.ConditionUnknown, "HeartbeatMissed")
	setReady("n2", v1alpha1.ConditionFalse, "QEMUUnusable")
	setReady("n3", v1alpha1.ConditionFalse, v1alpha1.ReasonNodeLeaseExpired)
	began := time.Now()
	if err := fc.Delete(ctx, "nodes", "", "n4"); err != nil { // removed from the cluster
		t.Fatal(err)
	}
	fc.WaitFor(t, 10*time.Second, "virtualmachinebackups", "p1", "b1", &b, func() bool { return b.Status.Phase == v1alpha1.BackupPhaseFailed })
	if d := time.Since(began); d < nodeDownAfter-100*time.Millisecond {
		t.Errorf("failed after %s, before the node had been gone for %s", d, nodeDownAfter)
	}
	if c := v1alpha1.FindCondition(b.Status.Conditions, v1alpha1.BackupConditionCompleted); c == nil || !strings.Contains(c.Message, `node "n1" has not been Ready since`) || !strings.Contains(c.Message, "HeartbeatMissed") {
		t.Errorf("b1's reason: %+v", c)
	}
	fc.WaitFor(t, 10*time.Second, "virtualmachinebackups", "p1", "b4", &b, func() bool { return b.Status.Phase == v1alpha1.BackupPhaseFailed })
	if d := time.Since(began); d < nodeDownAfter-100*time.Millisecond {
		t.Errorf("b4 failed after %s, before its node had been missing for %s", d, nodeDownAfter)
	}
	if c := v1alpha1.FindCondition(b.Status.Conditions, v1alpha1.BackupConditionCompleted); c == nil || !strings.Contains(c.Message, `node "n4" no longer exists`) {
		t.Errorf("b4's reason: %+v", c)
	}
	// The agents of n2 and n3 are there: their backups go on (their nodes changed at the
	// same time as n1).
	time.Sleep(time.Second)
	for _, name := range []string{"b2", "b3"} {
		if err := fc.Get(ctx, "virtualmachinebackups", "p1", name, &b); err != nil || b.Status.Phase != v1alpha1.BackupPhaseInProgress {
			t.Errorf("%s on a node whose agent is there: %s %v", name, b.Status.Phase, err)
		}
	}
}
