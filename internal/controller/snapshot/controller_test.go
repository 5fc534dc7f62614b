package snapshot

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/runtime/fake"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// startOnFake runs a snapshot controller of node n1 over a fake client and a data dir of its
// own until the test ends. The controller makes files with qemu-img: without it the test is
// skipped.
func startOnFake(t *testing.T) (*Controller, *fake.Client, string, context.Context) {
	t.Helper()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img is not installed (install qemu-utils)")
	}
	dataDir := t.TempDir()
	fc := fake.New()
	log := fake.Logger(t, slog.LevelInfo)
	c, ctx := fake.Start(t, fc, log, func(f *runtime.Factory) (*Controller, error) {
		return New(Config{Deps: runtime.Deps{Client: fc, Informers: f, Log: log}, DataDir: dataDir, NodeName: "n1"}), nil
	})
	return c, fc, dataDir, ctx
}

func readyDisk(t *testing.T, fc *fake.Client, dataDir, name string) *v1alpha1.VirtualDisk {
	t.Helper()
	d := &v1alpha1.VirtualDisk{ObjectMeta: v1alpha1.ObjectMeta{Name: name, Namespace: "p1"}}
	d.Status.Phase = v1alpha1.DiskPhaseReady
	d.Status.Capacity = "1Mi"
	if err := fc.Add(d); err != nil {
		t.Fatal(err)
	}
	var got v1alpha1.VirtualDisk
	if err := fc.Get(context.Background(), "virtualdisks", "p1", name, &got); err != nil {
		t.Fatal(err)
	}
	if err := storage.CreateBlank(context.Background(), storage.ClassDiskPath(dataDir, nil, got.UID), 1<<20); err != nil {
		t.Fatal(err)
	}
	return &got
}

// testVM is the VM p1/vm of one core and memory whose one disk is the VirtualDisk disk.
func testVM(memory v1alpha1.Quantity, disk string) *v1alpha1.VirtualMachine {
	vm := &v1alpha1.VirtualMachine{ObjectMeta: v1alpha1.ObjectMeta{Name: "vm", Namespace: "p1"}}
	vm.Spec.CPU.Cores = 1
	vm.Spec.Memory.Size = memory
	vm.Spec.BlockDeviceRefs = []v1alpha1.BlockDeviceSpecRef{{Kind: v1alpha1.BlockDeviceKindVirtualDisk, Name: disk}}
	return vm
}

// readySnapshot adds the snapshot p1/name of disk and waits until it is Ready.
func readySnapshot(t *testing.T, fc *fake.Client, name, disk string) v1alpha1.VirtualDiskSnapshot {
	t.Helper()
	if err := fc.Add(&v1alpha1.VirtualDiskSnapshot{ObjectMeta: v1alpha1.ObjectMeta{Name: name, Namespace: "p1"},
		Spec: v1alpha1.VirtualDiskSnapshotSpec{VirtualDiskName: disk}}); err != nil {
		t.Fatal(err)
	}
	var s v1alpha1.VirtualDiskSnapshot
	fc.WaitFor(t, 20*time.Second, "virtualdisksnapshots", "p1", name, &s, func() bool { return s.Status.Phase == v1alpha1.SnapshotPhaseReady })
	return s
}

// TestDiskSnapshots: a snapshot of a disk no VM runs is copied here and Ready (consistent);
// one of a disk a running VM has open waits for the VM's guest agent when consistency is
// required, and is handed to the VM's node otherwise; deleting a snapshot removes its file.
func TestDiskSnapshots(t *testing.T) {
	c, fc, dataDir, ctx := startOnFake(t)

	readyDisk(t, fc, dataDir, "idle")
	s := readySnapshot(t, fc, "s-idle", "idle")
	if s.Status.Consistent == nil || !*s.Status.Consistent || s.Status.Size != "1Mi" || s.Status.NodeName != "" {
		t.Errorf("status %+v", s.Status)
	}
	file := storage.SnapshotPath(dataDir, nil, s.UID)
	if info, err := storage.Info(ctx, file, "qcow2"); err != nil || info.VirtualSize != 1<<20 {
		t.Fatalf("snapshot file: %+v %v", info, err)
	}

	// A disk of a running VM without a guest agent.
	readyDisk(t, fc, dataDir, "busy")
	vm := testVM("64Mi", "busy")
	vm.Status.NodeName, vm.Status.Phase = "n2", v1alpha1.VMPhaseRunning
	if err := fc.Add(vm, &v1alpha1.Node{ObjectMeta: v1alpha1.ObjectMeta{Name: "n2"}}); err != nil {
		t.Fatal(err)
	}
	// The controller sees the VM before the snapshots (in a real node QEMU's image lock would
	// make an offline copy fail instead).
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, ok := c.vms.Get(runtime.NewKey("p1", "vm")); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the VM never reached the controller's cache")
		}
	}
	f2 := false
	if err := fc.Add(&v1alpha1.VirtualDiskSnapshot{ObjectMeta: v1alpha1.ObjectMeta{Name: "s-strict", Namespace: "p1"},
		Spec: v1alpha1.VirtualDiskSnapshotSpec{VirtualDiskName: "busy"}},
		&v1alpha1.VirtualDiskSnapshot{ObjectMeta: v1alpha1.ObjectMeta{Name: "s-loose", Namespace: "p1"},
			Spec: v1alpha1.VirtualDiskSnapshotSpec{VirtualDiskName: "busy", RequiredConsistency: &f2}}); err != nil {
		t.Fatal(err)
	}
	fc.WaitFor(t, 20*time.Second, "virtualdisksnapshots", "p1", "s-strict", &s, func() bool {
		c := v1alpha1.FindCondition(s.Status.Conditions, v1alpha1.VDSnapshotConditionReady)
		return c != nil && c.Reason == v1alpha1.VDSnapshotReasonWaitingForAgent
	})
	if s.Status.Phase != v1alpha1.SnapshotPhasePending || s.Status.NodeName != "" {
		t.Errorf("strict snapshot without an agent: %+v", s.Status)
	}
	fc.WaitFor(t, 20*time.Second, "virtualdisksnapshots", "p1", "s-loose", &s, func() bool {
		return s.Status.Phase == v1alpha1.SnapshotPhaseInProgress
	})
	if s.Status.NodeName != "n2" {
		t.Errorf("loose snapshot not handed to the VM's node: %+v", s.Status)
	}

	// The guest agent comes up: the strict one is handed over too.
	var got v1alpha1.VirtualMachine
	if err := fc.Get(ctx, "virtualmachines", "p1", "vm", &got); err != nil {
		t.Fatal(err)
	}
	v1alpha1.SetCondition(&got.Status.Conditions, v1alpha1.Condition{Type: v1alpha1.VMConditionAgentReady, Status: v1alpha1.ConditionTrue, Reason: "AgentReady"})
	if err := fc.UpdateStatus(ctx, "virtualmachines", "p1", "vm", &got, &got); err != nil {
		t.Fatal(err)
	}
	fc.WaitFor(t, 20*time.Second, "virtualdisksnapshots", "p1", "s-strict", &s, func() bool {
		return s.Status.Phase == v1alpha1.SnapshotPhaseInProgress && s.Status.NodeName == "n2"
	})

	if err := fc.Delete(ctx, "virtualdisksnapshots", "p1", "s-idle"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := os.Stat(file)
		gerr := fc.Get(ctx, "virtualdisksnapshots", "p1", "s-idle", nil)
		if os.IsNotExist(err) && gerr != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after delete: file %v, object %v", err, gerr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestVMSnapshotAndRestore: a VM snapshot of a stopped VM keeps its spec and takes a disk
// snapshot of each disk; a restore refuses a running VM, and on the stopped VM gives back the
// disk files and the spec; a dry run changes nothing.
func TestVMSnapshotAndRestore(t *testing.T) {
	_, fc, dataDir, ctx := startOnFake(t)

	disk := readyDisk(t, fc, dataDir, "root")
	vm := testVM("64Mi", "root")
	vm.Status.Phase = v1alpha1.VMPhaseStopped
	if err := fc.Add(vm); err != nil {
		t.Fatal(err)
	}
	if err := fc.Add(&v1alpha1.VirtualMachineSnapshot{ObjectMeta: v1alpha1.ObjectMeta{Name: "before", Namespace: "p1"},
		Spec: v1alpha1.VirtualMachineSnapshotSpec{VirtualMachineName: "vm"}}); err != nil {
		t.Fatal(err)
	}
	var vs v1alpha1.VirtualMachineSnapshot
	fc.WaitFor(t, 20*time.Second, "virtualmachinesnapshots", "p1", "before", &vs, func() bool { return vs.Status.Phase == v1alpha1.SnapshotPhaseReady })
	if vs.Status.Consistent == nil || !*vs.Status.Consistent || len(vs.Status.VirtualDiskSnapshotNames) != 1 || vs.Status.VirtualDiskSnapshotNames[0] != "before-root" ||
		vs.Status.VirtualMachineSpec == nil || vs.Status.VirtualMachineSpec.Memory.Size != "64Mi" {
		t.Fatalf("VM snapshot status %+v", vs.Status)
	}

	// The VM changes: more memory, a grown disk.
	var got v1alpha1.VirtualMachine
	if err := fc.Get(ctx, "virtualmachines", "p1", "vm", &got); err != nil {
		t.Fatal(err)
	}
	got.Spec.Memory.Size = "128Mi"
	if err := fc.Update(ctx, "virtualmachines", "p1", "vm", &got, nil); err != nil {
		t.Fatal(err)
	}
	diskFile := storage.ClassDiskPath(dataDir, nil, disk.UID)
	if err := storage.Resize(ctx, diskFile, "qcow2", 2<<20); err != nil {
		t.Fatal(err)
	}

	restore := func(name string, mode v1alpha1.SnapshotOperationMode) *v1alpha1.VirtualMachineOperation {
		t.Helper()
		if err := fc.Add(&v1alpha1.VirtualMachineOperation{ObjectMeta: v1alpha1.ObjectMeta{Name: name, Namespace: "p1"},
			Spec: v1alpha1.VirtualMachineOperationSpec{Type: v1alpha1.VMOPTypeRestore, VirtualMachineName: "vm",
				Restore: &v1alpha1.VMOPRestoreSpec{Mode: mode, VirtualMachineSnapshotName: "before"}}}); err != nil {
			t.Fatal(err)
		}
		var op v1alpha1.VirtualMachineOperation
		fc.WaitFor(t, 20*time.Second, "virtualmachineoperations", "p1", name, &op, func() bool {
			return op.Status.Phase == v1alpha1.VMOPPhaseCompleted || op.Status.Phase == v1alpha1.VMOPPhaseFailed
		})
		return &op
	}
	size := func() int64 {
		info, err := storage.Info(ctx, diskFile, "qcow2")
		if err != nil {
			t.Fatal(err)
		}
		return info.VirtualSize
	}

	if op := restore("dry", v1alpha1.SnapshotOperationModeDryRun); op.Status.Phase != v1alpha1.VMOPPhaseCompleted || size() != 2<<20 {
		t.Errorf("dry run: %+v, disk size %d", op.Status, size())
	}

	// Running: refused.
	got = v1alpha1.VirtualMachine{}
	if err := fc.Get(ctx, "virtualmachines", "p1", "vm", &got); err != nil {
		t.Fatal(err)
	}
	got.Status.Phase, got.Status.NodeName = v1alpha1.VMPhaseRunning, "n1"
	if err := fc.UpdateStatus(ctx, "virtualmachines", "p1", "vm", &got, &got); err != nil {
		t.Fatal(err)
	}
	op := restore("while-running", v1alpha1.SnapshotOperationModeStrict)
	if cond := v1alpha1.FindCondition(op.Status.Conditions, v1alpha1.VMOPConditionCompleted); op.Status.Phase != v1alpha1.VMOPPhaseFailed ||
		cond == nil || cond.Reason != v1alpha1.VMOPReasonNotApplicableForPhase {
		t.Errorf("restore of a running VM: %+v", op.Status)
	}

	got.Status.Phase, got.Status.NodeName = v1alpha1.VMPhaseStopped, ""
	if err := fc.UpdateStatus(ctx, "virtualmachines", "p1", "vm", &got, &got); err != nil {
		t.Fatal(err)
	}
	op = restore("back", v1alpha1.SnapshotOperationModeStrict)
	if op.Status.Phase != v1alpha1.VMOPPhaseCompleted {
		t.Fatalf("restore: %+v", op.Status)
	}
	if size() != 1<<20 {
		t.Errorf("the disk file was not restored: virtual size %d", size())
	}
	if err := fc.Get(ctx, "virtualmachines", "p1", "vm", &got); err != nil {
		t.Fatal(err)
	}
	if got.Spec.Memory.Size != "64Mi" {
		t.Errorf("the VM's spec was not restored: memory %s", got.Spec.Memory.Size)
	}

	// Deleting the VM snapshot deletes its disk snapshots.
	if err := fc.Delete(ctx, "virtualmachinesnapshots", "p1", "before"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for fc.Get(ctx, "virtualdisksnapshots", "p1", "before-root", nil) == nil {
		if time.Now().After(deadline) {
			t.Fatal("the disk snapshot outlived its VM snapshot")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestDiskSnapshotName(t *testing.T) {
	if n := diskSnapshotName("s", "d"); n != "s-d" {
		t.Errorf("short: %q", n)
	}
	long := diskSnapshotName(strings.Repeat("a", 40), strings.Repeat("b", 40))
	if len(long) > 63 || long == diskSnapshotName(strings.Repeat("a", 40), strings.Repeat("b", 39)+"c") {
		t.Errorf("long: %q", long)
	}
}

// TestClone: a Clone operation of a template takes a snapshot, makes the new disks from it and
// the new VM with the renamed disks, no address claims and no template label; once the disks
// are Ready it completes and the snapshot goes, but its disk snapshot stays (being deleted)
// while the new disk is a linked clone of it. A clone onto names in use fails before anything
// is made; a Full clone asks for full copies.
func TestClone(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img is not installed (install qemu-utils)")
	}
	saved := linkedRetry
	t.Cleanup(func() { linkedRetry = saved }) // after the controller has stopped (cleanups run last first)
	linkedRetry = 50 * time.Millisecond
	_, fc, dataDir, ctx := startOnFake(t)

	readyDisk(t, fc, dataDir, "root")
	vm := &v1alpha1.VirtualMachine{ObjectMeta: v1alpha1.ObjectMeta{Name: "tpl", Namespace: "p1",
		Labels: map[string]string{v1alpha1.LabelTemplate: "true", "team": "a"}}}
	vm.Spec.CPU.Cores = 1
	vm.Spec.Memory.Size = "64Mi"
	vm.Spec.VirtualMachineIPAddressName = "tpl-ip"
	vm.Spec.Networks = []v1alpha1.NetworkSpec{{Type: v1alpha1.NetworkTypeMain, VirtualMachineMACAddressName: "tpl-mac"}}
	vm.Spec.BlockDeviceRefs = []v1alpha1.BlockDeviceSpecRef{{Kind: v1alpha1.BlockDeviceKindVirtualDisk, Name: "root"}}
	vm.Status.Phase = v1alpha1.VMPhaseStopped
	if err := fc.Add(vm); err != nil {
		t.Fatal(err)
	}
	clone := func(name string, spec v1alpha1.VMOPCloneSpec) {
		t.Helper()
		if err := fc.Add(&v1alpha1.VirtualMachineOperation{ObjectMeta: v1alpha1.ObjectMeta{Name: name, Namespace: "p1"},
			Spec: v1alpha1.VirtualMachineOperationSpec{Type: v1alpha1.VMOPTypeClone, VirtualMachineName: "tpl", Clone: &spec}}); err != nil {
			t.Fatal(err)
		}
	}
	clone("c1", v1alpha1.VMOPCloneSpec{Mode: v1alpha1.SnapshotOperationModeStrict,
		NameReplacement: []v1alpha1.NameReplacement{{From: v1alpha1.NameReplacementFrom{Kind: "VirtualMachine", Name: "tpl"}, To: "web1"}},
		Customization:   &v1alpha1.VMOPCloneCustomization{NamePrefix: "web1-"}})
	// The disk controller's part: the new disk, a linked clone of the disk snapshot's file,
	// becomes Ready.
	var d v1alpha1.VirtualDisk
	fc.WaitFor(t, 20*time.Second, "virtualdisks", "p1", "web1-root", &d, func() bool { return d.Name != "" })
	if d.Spec.DataSource == nil || d.Spec.DataSource.ObjectRef == nil || d.Spec.DataSource.ObjectRef.Kind != v1alpha1.DataSourceKindVirtualDiskSnapshot {
		t.Fatalf("new disk %+v", d.Spec)
	}
	var from v1alpha1.VirtualDiskSnapshot
	fc.WaitFor(t, 20*time.Second, "virtualdisksnapshots", "p1", d.Spec.DataSource.ObjectRef.Name, &from, func() bool { return from.Status.Phase == v1alpha1.SnapshotPhaseReady })
	if err := storage.CreateLinkedClone(ctx, storage.ClassDiskPath(dataDir, nil, d.UID), storage.SnapshotPath(dataDir, nil, from.UID), "qcow2", 1<<20); err != nil {
		t.Fatal(err)
	}
	d.Status.Phase = v1alpha1.DiskPhaseReady
	if err := fc.UpdateStatus(ctx, "virtualdisks", "p1", "web1-root", &d, nil); err != nil {
		t.Fatal(err)
	}
	var op v1alpha1.VirtualMachineOperation
	fc.WaitFor(t, 20*time.Second, "virtualmachineoperations", "p1", "c1", &op, func() bool {
		return op.Status.Phase == v1alpha1.VMOPPhaseCompleted || op.Status.Phase == v1alpha1.VMOPPhaseFailed
	})
	if op.Status.Phase != v1alpha1.VMOPPhaseCompleted {
		t.Fatalf("clone: %+v", op.Status)
	}
	var got v1alpha1.VirtualMachine
	if err := fc.Get(ctx, "virtualmachines", "p1", "web1", &got); err != nil {
		t.Fatal(err)
	}
	if got.Spec.BlockDeviceRefs[0].Name != "web1-root" || got.Spec.VirtualMachineIPAddressName != "" || got.Spec.Networks[0].VirtualMachineMACAddressName != "" ||
		v1alpha1.IsTemplate(&got) || got.Labels["team"] != "a" || got.Spec.Memory.Size != "64Mi" {
		t.Errorf("the clone: labels %v, spec %+v", got.Labels, got.Spec)
	}
	deadline := time.Now().Add(20 * time.Second)
	for fc.Get(ctx, "virtualmachinesnapshots", "p1", "c1-clone", nil) == nil {
		if time.Now().After(deadline) {
			t.Fatal("the clone's snapshot was not deleted")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Its disk snapshot is kept, being deleted, while the new disk is a linked clone of it
	// (same class, not Full), and goes with the disk.
	var ds v1alpha1.VirtualDiskSnapshot
	fc.WaitFor(t, 20*time.Second, "virtualdisksnapshots", "p1", "c1-clone-root", &ds, func() bool {
		cond := v1alpha1.FindCondition(ds.Status.Conditions, v1alpha1.VDSnapshotConditionReady)
		return ds.DeletionTimestamp != nil && cond != nil && cond.Reason == ReasonLinkedClones && strings.Contains(cond.Message, "web1-root")
	})
	if err := fc.Delete(ctx, "virtualdisks", "p1", "web1-root"); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); fc.Get(ctx, "virtualdisksnapshots", "p1", "c1-clone-root", nil) == nil; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the disk snapshot outlived its last linked clone")
		}
	}

	// A Full clone asks for full copies.
	clone("c3", v1alpha1.VMOPCloneSpec{Mode: v1alpha1.SnapshotOperationModeStrict, CloneMode: v1alpha1.CloneModeFull,
		Customization: &v1alpha1.VMOPCloneCustomization{NamePrefix: "full-"}})
	var fd v1alpha1.VirtualDisk
	fc.WaitFor(t, 20*time.Second, "virtualdisks", "p1", "full-root", &fd, func() bool { return fd.Name != "" })
	if fd.Spec.CloneMode != v1alpha1.CloneModeFull {
		t.Errorf("the disk of a Full clone: cloneMode %q", fd.Spec.CloneMode)
	}

	// The same names again: refused before anything is made.
	clone("c2", v1alpha1.VMOPCloneSpec{Mode: v1alpha1.SnapshotOperationModeStrict,
		NameReplacement: []v1alpha1.NameReplacement{{From: v1alpha1.NameReplacementFrom{Kind: "VirtualMachine", Name: "tpl"}, To: "web1"}},
		Customization:   &v1alpha1.VMOPCloneCustomization{NamePrefix: "web1-"}})
	fc.WaitFor(t, 20*time.Second, "virtualmachineoperations", "p1", "c2", &op, func() bool { return op.Status.Phase == v1alpha1.VMOPPhaseFailed })
	if cond := v1alpha1.FindCondition(op.Status.Conditions, v1alpha1.VMOPConditionCompleted); cond == nil || !strings.Contains(cond.Message, "exists") {
		t.Errorf("clone onto taken names: %+v", op.Status)
	}
	if fc.Get(ctx, "virtualmachinesnapshots", "p1", "c2-clone", nil) == nil {
		t.Error("a refused clone took a snapshot")
	}
}

// TestLinkedDisksByFile: a deleted snapshot is kept for a disk made from it only while the
// disk's file backs onto the snapshot's file: a disk made as a full copy (as before linked
// clones, with the same spec) does not hold it.
func TestLinkedDisksByFile(t *testing.T) {
	saved := linkedRetry
	t.Cleanup(func() { linkedRetry = saved })
	linkedRetry = 50 * time.Millisecond
	_, fc, dataDir, ctx := startOnFake(t)
	readyDisk(t, fc, dataDir, "src")
	s1 := readySnapshot(t, fc, "s1", "src")
	// A disk from the snapshot whose file is a standalone copy.
	copied := &v1alpha1.VirtualDisk{ObjectMeta: v1alpha1.ObjectMeta{Name: "copied", Namespace: "p1"}}
	copied.Spec.DataSource = &v1alpha1.DataSource{Type: v1alpha1.DataSourceTypeObjectRef,
		ObjectRef: &v1alpha1.DataSourceObjectRef{Kind: v1alpha1.DataSourceKindVirtualDiskSnapshot, Name: "s1"}}
	copied.Status.Phase, copied.Status.Capacity = v1alpha1.DiskPhaseReady, "1Mi"
	if err := fc.Add(copied); err != nil {
		t.Fatal(err)
	}
	var got v1alpha1.VirtualDisk
	if err := fc.Get(ctx, "virtualdisks", "p1", "copied", &got); err != nil {
		t.Fatal(err)
	}
	if err := storage.Convert(ctx, storage.SnapshotPath(dataDir, nil, s1.UID), "qcow2", storage.ClassDiskPath(dataDir, nil, got.UID), "qcow2"); err != nil {
		t.Fatal(err)
	}
	if err := fc.Delete(ctx, "virtualdisksnapshots", "p1", "s1"); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); fc.Get(ctx, "virtualdisksnapshots", "p1", "s1", nil) == nil; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("a disk that is a full copy of the snapshot kept it")
		}
	}
}
