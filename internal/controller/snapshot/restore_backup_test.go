package snapshot

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/backup"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// TestRestoreFromBackup: a Restore operation naming a VirtualMachineBackup writes the backed-up
// data into the VM's disk (grown to the disk's current size) and gives the VM the spec the
// backup recorded; a backup of another VM, one that is not Completed, or a disk made again
// since the backup (mode Strict) fail with a message that names the problem, leaving the disk;
// so does a disk whose lease a node holds, and a restore gives back the leases it took (the
// sweep gives back those of a restore that is gone).
func TestRestoreFromBackup(t *testing.T) {
	saved := restoreLeaseSweep
	t.Cleanup(func() { restoreLeaseSweep = saved }) // after the controller has stopped (cleanups run last first)
	restoreLeaseSweep = 50 * time.Millisecond
	_, fc, dataDir, ctx := startOnFake(t)
	targetDir := t.TempDir()

	disk := readyDisk(t, fc, dataDir, "root")
	vm := testVM("128Mi", "root")
	vm.Status.Phase = v1alpha1.VMPhaseStopped
	if err := fc.Add(vm); err != nil {
		t.Fatal(err)
	}
	var gotVM v1alpha1.VirtualMachine
	if err := fc.Get(ctx, "virtualmachines", "p1", "vm", &gotVM); err != nil {
		t.Fatal(err)
	}
	if err := fc.Add(&v1alpha1.BackupTarget{ObjectMeta: v1alpha1.ObjectMeta{Name: "t"},
		Spec: v1alpha1.BackupTargetSpec{Type: v1alpha1.BackupTargetTypeDirectory, Directory: &v1alpha1.BackupTargetDirectory{Path: targetDir}}}); err != nil {
		t.Fatal(err)
	}

	// The backup: one 1 MiB disk whose first half is a pattern, taken when the VM had 64Mi.
	store, err := backup.Open(targetDir)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 1<<20)
	copy(data, bytes.Repeat([]byte("rakhsh-backup-restore "), (512<<10)/22))
	sum, _, err := store.Put(data)
	if err != nil {
		t.Fatal(err)
	}
	oldSpec := vm.Spec
	oldSpec.Memory.Size = "64Mi"
	specJSON, _ := json.Marshal(oldSpec)
	addBackup := func(name, vmName string, phase v1alpha1.BackupPhase, diskUID string) {
		t.Helper()
		b := &v1alpha1.VirtualMachineBackup{ObjectMeta: v1alpha1.ObjectMeta{Name: name, Namespace: "p1"},
			Spec: v1alpha1.VirtualMachineBackupSpec{VirtualMachineName: vmName, BackupTargetName: "t"}}
		b.Status.Phase, b.Status.VirtualMachineUID, b.Status.NodeName = phase, gotVM.UID, "n1"
		if err := fc.Add(b); err != nil {
			t.Fatal(err)
		}
		var got v1alpha1.VirtualMachineBackup
		if err := fc.Get(ctx, "virtualmachinebackups", "p1", name, &got); err != nil {
			t.Fatal(err)
		}
		m := &backup.Manifest{Version: backup.ManifestVersion, Backup: backup.Ref{Namespace: "p1", Name: name, UID: string(got.UID)},
			VM: backup.Ref{Namespace: "p1", Name: vmName, UID: gotVM.UID}, Target: "t", CreatedAt: time.Now().UTC(), ChunkSize: backup.ChunkSize,
			Consistent: true, VMSpec: specJSON, Disks: []backup.Disk{{Name: "root", UID: diskUID, Size: 1 << 20, Chunks: []string{sum}}}}
		if _, err := store.WriteManifest(m); err != nil {
			t.Fatal(err)
		}
	}
	addBackup("monday", "vm", v1alpha1.BackupPhaseCompleted, string(disk.UID))
	addBackup("other-vm", "vm2", v1alpha1.BackupPhaseCompleted, string(disk.UID))
	addBackup("running", "vm", v1alpha1.BackupPhaseInProgress, string(disk.UID))
	addBackup("old-disk", "vm", v1alpha1.BackupPhaseCompleted, "0b6b7d3e-5f0c-4a51-9d55-3c8a1f0e2b71")
	// The running backup ends (Failed): it would otherwise hold every restore off.
	var running v1alpha1.VirtualMachineBackup
	if err := fc.Get(ctx, "virtualmachinebackups", "p1", "running", &running); err != nil {
		t.Fatal(err)
	}

	// The disk grew since the backup.
	diskFile := storage.ClassDiskPath(dataDir, nil, disk.UID)
	if err := storage.Resize(ctx, diskFile, "qcow2", 2<<20); err != nil {
		t.Fatal(err)
	}
	var d v1alpha1.VirtualDisk
	if err := fc.Get(ctx, "virtualdisks", "p1", "root", &d); err != nil {
		t.Fatal(err)
	}
	d.Spec.PersistentVolumeClaim.Size = "2Mi"
	if err := fc.Update(ctx, "virtualdisks", "p1", "root", &d, &d); err != nil {
		t.Fatal(err)
	}
	d.Status.Capacity = "2Mi"
	if err := fc.UpdateStatus(ctx, "virtualdisks", "p1", "root", &d, nil); err != nil {
		t.Fatal(err)
	}

	restore := func(name, from string) *v1alpha1.VirtualMachineOperation {
		t.Helper()
		if err := fc.Add(&v1alpha1.VirtualMachineOperation{ObjectMeta: v1alpha1.ObjectMeta{Name: name, Namespace: "p1"},
			Spec: v1alpha1.VirtualMachineOperationSpec{Type: v1alpha1.VMOPTypeRestore, VirtualMachineName: "vm",
				Restore: &v1alpha1.VMOPRestoreSpec{Mode: v1alpha1.SnapshotOperationModeStrict, VirtualMachineBackupName: from}}}); err != nil {
			t.Fatal(err)
		}
		var op v1alpha1.VirtualMachineOperation
		fc.WaitFor(t, 20*time.Second, "virtualmachineoperations", "p1", name, &op, func() bool {
			return op.Status.Phase == v1alpha1.VMOPPhaseCompleted || op.Status.Phase == v1alpha1.VMOPPhaseFailed
		})
		return &op
	}
	message := func(op *v1alpha1.VirtualMachineOperation) string {
		if c := v1alpha1.FindCondition(op.Status.Conditions, v1alpha1.VMOPConditionCompleted); c != nil {
			return c.Message
		}
		return ""
	}
	before, err := os.ReadFile(diskFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ op, from, want string }{
		{"busy", "monday", `VirtualMachineBackup "running" of virtual machine "vm" is being taken`},
	} {
		if op := restore(tc.op, tc.from); op.Status.Phase != v1alpha1.VMOPPhaseFailed || !strings.Contains(message(op), tc.want) {
			t.Errorf("restore %s from %s: %s %q, want it Failed with %q", tc.op, tc.from, op.Status.Phase, message(op), tc.want)
		}
	}
	running.Status.Phase = v1alpha1.BackupPhaseFailed
	if err := fc.UpdateStatus(ctx, "virtualmachinebackups", "p1", "running", &running, nil); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ op, from, want string }{
		{"of-other", "other-vm", `VirtualMachineBackup "other-vm" is of VirtualMachine "vm2", not "vm"`},
		{"not-done", "running", `VirtualMachineBackup "running" is not Completed (it is Failed)`},
		{"missing", "tuesday", `VirtualMachineBackup "tuesday" not found`},
		{"old", "old-disk", `VirtualDisk "root" was deleted and made again since it was taken (mode Strict`},
	} {
		if op := restore(tc.op, tc.from); op.Status.Phase != v1alpha1.VMOPPhaseFailed || !strings.Contains(message(op), tc.want) {
			t.Errorf("restore %s from %s: %s %q, want it Failed with %q", tc.op, tc.from, op.Status.Phase, message(op), tc.want)
		}
	}
	if after, err := os.ReadFile(diskFile); err != nil || !bytes.Equal(before, after) {
		t.Fatalf("a failed restore changed the disk file (%v)", err)
	}

	// A disk whose lease a node holds (a start of the VM under way) is not written.
	lease := &v1alpha1.VirtualDiskLease{ObjectMeta: v1alpha1.ObjectMeta{Name: "root", Namespace: "p1"},
		Spec: v1alpha1.VirtualDiskLeaseSpec{HolderNode: "n1", VirtualMachineName: "vm", VirtualMachineUID: gotVM.UID}}
	if err := fc.Add(lease); err != nil {
		t.Fatal(err)
	}
	if op := restore("leased", "monday"); op.Status.Phase != v1alpha1.VMOPPhaseFailed || !strings.Contains(message(op), `VirtualDisk "root" is in use`) {
		t.Errorf("restore of a leased disk: %s %q", op.Status.Phase, message(op))
	}
	if after, err := os.ReadFile(diskFile); err != nil || !bytes.Equal(before, after) {
		t.Fatalf("a restore of a leased disk changed the disk file (%v)", err)
	}
	if _, err := runtime.ReleaseDiskLease(ctx, fc, "p1", "root", "n1", gotVM.UID, "test"); err != nil {
		t.Fatal(err)
	}

	if op := restore("back", "monday"); op.Status.Phase != v1alpha1.VMOPPhaseCompleted {
		t.Fatalf("restore: %s %q", op.Status.Phase, message(op))
	}
	var l v1alpha1.VirtualDiskLease
	if err := fc.Get(ctx, runtime.DiskLeaseResource, "p1", "root", &l); err != nil || !l.Free() {
		t.Errorf("the restore did not give the disk's lease back: %+v %v", l.Spec, err)
	}
	info, err := storage.Info(ctx, diskFile, "qcow2")
	if err != nil || info.VirtualSize != 2<<20 {
		t.Errorf("restored disk: %+v %v, want 2 MiB (the disk's current size)", info, err)
	}
	raw := filepath.Join(t.TempDir(), "raw")
	if err := storage.Convert(ctx, diskFile, "qcow2", raw, "raw"); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:1<<20], data) || !bytes.Equal(got[1<<20:], make([]byte, 1<<20)) {
		t.Error("the restored disk does not hold the backed-up data followed by zeros")
	}
	if err := fc.Get(ctx, "virtualmachines", "p1", "vm", &gotVM); err != nil {
		t.Fatal(err)
	}
	if gotVM.Spec.Memory.Size != "64Mi" {
		t.Errorf("the VM's spec was not set to the backup's: memory %s", gotVM.Spec.Memory.Size)
	}

	// A lease a restore took and could not give back (its operation was deleted meanwhile)
	// is given back by the sweep.
	if err := fc.Add(&v1alpha1.VirtualDiskLease{ObjectMeta: v1alpha1.ObjectMeta{Name: "left", Namespace: "p1"},
		Spec: v1alpha1.VirtualDiskLeaseSpec{HolderNode: restoreHolder, VirtualMachineName: "vm", VirtualMachineUID: "0d6f7a4e-7a0c-4c1e-9a57-2f0f6f0d9b11"}}); err != nil {
		t.Fatal(err)
	}
	var left v1alpha1.VirtualDiskLease
	fc.WaitFor(t, 10*time.Second, runtime.DiskLeaseResource, "p1", "left", &left, func() bool { return left.Free() })
}
