package e2e

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/backup"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// bkGet reads a backup.
func bkGet(t *testing.T, s *Serve, name string) *v1alpha1.VirtualMachineBackup {
	t.Helper()
	return getObj[v1alpha1.VirtualMachineBackup](t, s, "virtualmachinebackups", name)
}

// bkSetup applies the Directory BackupTarget "nightly" at dir and vm1 of vmWithDataDisk with
// a data disk of size, and waits until the data disk is Ready.
func bkSetup(t *testing.T, s *Serve, dir, size string) {
	t.Helper()
	applyDocs(s, `apiVersion: virtualization.rakhsh.io/v1alpha1
kind: BackupTarget
metadata: {name: nightly}
spec:
  type: Directory
  directory: {path: `+dir+`}
`, vmWithDataDisk(size))
	s.MustCLI("", "wait", "vd", "data", "--for", "phase=Ready", "--timeout", "1m")
}

// bkRun creates a backup of vm1 into the target "nightly" and waits until it ends; it must
// complete.
func bkRun(t *testing.T, s *Serve, name string) *v1alpha1.VirtualMachineBackup {
	t.Helper()
	s.MustCLI(fmt.Sprintf(`apiVersion: virtualization.rakhsh.io/v1alpha1
kind: VirtualMachineBackup
metadata: {name: %s}
spec: {virtualMachineName: vm1, backupTargetName: nightly}
`, name), "apply", "-f", "-")
	return bkWait(t, s, name)
}

// bkWait waits until a backup ends; it must complete.
func bkWait(t *testing.T, s *Serve, name string) *v1alpha1.VirtualMachineBackup {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		b := bkGet(t, s, name)
		switch b.Status.Phase {
		case v1alpha1.BackupPhaseCompleted:
			t.Logf("backup %s: %s", name, v1alpha1.FindCondition(b.Status.Conditions, v1alpha1.BackupConditionCompleted).Message)
			return b
		case v1alpha1.BackupPhaseFailed:
			j, _ := json.MarshalIndent(b.Status, "", "  ")
			t.Fatalf("backup %s failed:\n%s", name, j)
		}
		if time.Now().After(deadline) {
			j, _ := json.MarshalIndent(b.Status, "", "  ")
			t.Fatalf("backup %s not done within 3 minutes:\n%s", name, j)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func bkDisk(t *testing.T, b *v1alpha1.VirtualMachineBackup, name string) v1alpha1.BackupDisk {
	t.Helper()
	for _, d := range b.Status.Disks {
		if d.Name == name {
			return d
		}
	}
	t.Fatalf("backup %s has no disk %s: %+v", b.Name, name, b.Status.Disks)
	return v1alpha1.BackupDisk{}
}

// bkRestore restores disk of a backup's manifest to a raw file and returns its contents.
func bkRestore(t *testing.T, store *backup.Store, b *v1alpha1.VirtualMachineBackup, disk string) []byte {
	t.Helper()
	m, err := store.ReadManifest(b.Status.Manifest)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range m.Disks {
		if d.Name != disk {
			continue
		}
		f, err := os.Create(filepath.Join(t.TempDir(), disk+".raw"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := f.Truncate(d.Size); err != nil {
			t.Fatal(err)
		}
		if err := store.RestoreDisk(context.Background(), d, f); err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(f.Name())
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	t.Fatalf("the manifest of %s has no disk %s", b.Name, disk)
	return nil
}

// bkVerify asks the node to verify a backup and returns the Verified condition it writes.
func bkVerify(t *testing.T, s *Serve, name, req string) *v1alpha1.Condition {
	t.Helper()
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, v1alpha1.AnnotationVerifyRequest, req)
	if err := s.Client().Patch(context.Background(), "virtualmachinebackups", "default", name, []byte(patch), nil); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if c := v1alpha1.FindCondition(bkGet(t, s, name).Status.Conditions, v1alpha1.BackupConditionVerified); c != nil && strings.HasSuffix(c.Message, "(request "+req+")") {
			return c
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("backup %s: no verification of request %s within a minute", name, req)
	return nil
}

var sumLine = regexp.MustCompile(`SUM-([0-9a-f]{32})`)

// TestVMBackup: backups of a VM into a Directory target. The first, of the stopped VM, reads
// the disks whole through a storage daemon; the first of the running VM builds on it; one
// with no guest writes stores almost nothing; after the guest writes 64 MiB, the next reads
// and stores about 64 MiB, and its restored data disk holds the first marker and exactly the
// bytes the guest wrote (their md5 as the guest printed it), but not a marker written after
// it; a new VM boots from the backup's disks. Verify passes, then finds a corrupted chunk.
// Deleting backups and taking another frees the chunks only they used. A kill -9 of serve in
// the middle of a backup, a schedule that prunes, a backup in mode stop (the VM shut down for
// it and started again), and a restore of the VM itself from a backup.
func TestVMBackup(t *testing.T) {
	sideBySide(t)
	vmGuestDir(t)
	s := vmServe(t)
	vmSetupGuest(t, s, "root")
	dir := filepath.Join(t.TempDir(), "backups")
	bkSetup(t, s, dir, "96Mi")

	// A backup of the stopped VM: its disks are read through a storage daemon of the node's
	// agent, whole (the first backup), and it is consistent (nothing runs).
	b0 := bkRun(t, s, "stopped")
	if !b0.Status.Stopped || b0.Status.Consistent == nil || !*b0.Status.Consistent || len(b0.Status.Disks) != 2 {
		j, _ := json.MarshalIndent(b0.Status, "", "  ")
		t.Fatalf("backup of the stopped VM:\n%s", j)
	}
	for _, d := range b0.Status.Disks {
		if d.Kind != v1alpha1.BackupKindFull || !strings.Contains(d.FullReason, "first backup") {
			t.Errorf("the stopped VM's backup of disk %s: kind %s (%s)", d.Name, d.Kind, d.FullReason)
		}
	}

	s.MustCLI("", "vm", "start", "vm1", "--wait")
	vmWaitSerial(t, s, "vm1", "RAKHSH-GUEST: ready", 1)
	v := vmWait(t, s, "vm1", vmBootTimeout, "AgentReady=True", func(v *v1alpha1.VirtualMachine) bool {
		c := agentReadyCond(v)
		return c != nil && c.Status == v1alpha1.ConditionTrue
	})
	snapWriteMarker(t, s, "vm1", v.UID, "MARK-A", 0)

	b1 := bkRun(t, s, "b1")
	if b1.Status.Consistent == nil || !*b1.Status.Consistent || b1.Status.NodeName != v.Status.NodeName || b1.Status.Size == nil {
		j, _ := json.MarshalIndent(b1.Status, "", "  ")
		t.Fatalf("first backup:\n%s", j)
	}
	// The bitmaps the stopped VM's backup left in its disks were kept by QEMU from the boot
	// on: the first backup of the running VM reads only what changed since.
	for _, d := range b1.Status.Disks {
		if d.Kind != v1alpha1.BackupKindIncremental {
			t.Errorf("the running VM's first backup of disk %s: kind %s (%s)", d.Name, d.Kind, d.FullReason)
		}
	}
	if d := bkDisk(t, b1, "data"); d.Read > 1<<20 {
		t.Errorf("the running VM's first backup read %d bytes of the data disk (the guest wrote one sector)", d.Read)
	}

	// Nothing written: the next backup reads the blocks the guest's own housekeeping wrote,
	// if any, and stores at most 1 MiB.
	b2 := bkRun(t, s, "b2")
	for _, d := range b2.Status.Disks {
		if d.Kind != v1alpha1.BackupKindIncremental {
			t.Errorf("second backup's disk %s: kind %s (%s)", d.Name, d.Kind, d.FullReason)
		}
	}
	if b2.Status.Size.Stored > 1<<20 {
		t.Errorf("an unchanged incremental stored %d bytes (more than 1 MiB)", b2.Status.Size.Stored)
	}

	// The guest writes 64 MiB of random data from 1 MiB on, and prints its md5.
	vmConsoleType(t, s, v.UID, "dd if=/dev/urandom of=/dev/vdb bs=1M seek=1 count=64 conv=fsync 2>/dev/null && echo SUM-$(dd if=/dev/vdb bs=1M skip=1 count=64 2>/dev/null | md5sum | cut -c1-32) && echo WROTE''-64M")
	vmWaitSerial(t, s, "vm1", "WROTE-64M", 1)
	m := sumLine.FindStringSubmatch(vmLog(t, s, "vm1"))
	if m == nil {
		t.Fatalf("the guest printed no md5 of what it wrote")
	}
	b3 := bkRun(t, s, "b3")
	d3 := bkDisk(t, b3, "data")
	if d3.Kind != v1alpha1.BackupKindIncremental || d3.Read < 64<<20 || d3.Read > 66<<20 || d3.Stored < 60<<20 || d3.Stored > 70<<20 {
		t.Errorf("the incremental after 64 MiB written: %+v", d3)
	}
	snapWriteMarker(t, s, "vm1", v.UID, "MARK-B", 1)

	store, err := backup.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	data := bkRestore(t, store, b3, "data")
	if !bytes.HasPrefix(data, []byte("MARK-A")) || bytes.HasPrefix(data[512:], []byte("MARK-B")) {
		t.Errorf("the restored data disk: sector 0 %q, sector 1 %q", data[:8], data[512:520])
	}
	sum := md5.Sum(data[1<<20 : 65<<20])
	if got := hex.EncodeToString(sum[:]); got != m[1] {
		t.Errorf("the restored 64 MiB have md5 %s, the guest wrote %s", got, m[1])
	}
	if old := bkRestore(t, store, b1, "data"); !bytes.HasPrefix(old, []byte("MARK-A")) || !bytes.Equal(old[1<<20:2<<20], make([]byte, 1<<20)) {
		t.Errorf("the first backup's data disk changed")
	}

	// A new VM from the backup's disks boots, and its data disk holds what the backup holds.
	applyDocs(s, diskDoc("root-r", "", objectRefSource("{kind: VirtualMachineBackup, name: b3, diskName: root}")),
		diskDoc("data-r", "", objectRefSource("{kind: VirtualMachineBackup, name: b3, diskName: data}")),
		vmDoc{Name: "vm2", Policy: "Manual", Memory: "256Mi", Refs: []string{vdRef("root-r"), vdRef("data-r")}}.String())
	if r := s.CLI(`{"apiVersion":"virtualization.rakhsh.io/v1alpha1","kind":"VirtualDisk","metadata":{"name":"x"},"spec":{"dataSource":{"type":"ObjectRef","objectRef":{"kind":"VirtualDisk","name":"root","diskName":"root"}}}}`, "apply", "-f", "-"); r.Code == 0 || !strings.Contains(r.Stderr, "diskName") {
		t.Errorf("diskName with another kind: code %d stderr %q", r.Code, r.Stderr)
	}
	s.MustCLI("", "wait", "vd", "data-r", "--for", "phase=Ready", "--timeout", "2m")
	s.MustCLI("", "wait", "vd", "root-r", "--for", "phase=Ready", "--timeout", "2m")
	dr := getObj[v1alpha1.VirtualDisk](t, s, "virtualdisks", "data-r")
	if b := snapSector(t, storage.ClassDiskPath(s.DataDir, nil, dr.UID), 0); !bytes.HasPrefix(b, []byte("MARK-A")) {
		t.Errorf("sector 0 of the restored data disk: %q", b[:8])
	}
	s.MustCLI("", "vm", "start", "vm2", "--wait")
	vmWaitSerial(t, s, "vm2", "RAKHSH-GUEST: ready", 1)
	s.MustCLI("", "vm", "stop", "vm2", "--wait")

	// Verify reads every chunk back; a corrupted chunk is found and named.
	if out := s.MustCLI("", "backup", "verify", "b3"); !strings.Contains(out, "verified: all") {
		t.Fatalf("backup verify of an intact backup: %q", out)
	}
	if c := v1alpha1.FindCondition(bkGet(t, s, "b3").Status.Conditions, v1alpha1.BackupConditionVerified); c == nil || c.Status != v1alpha1.ConditionTrue {
		t.Fatalf("the Verified condition of an intact backup: %+v", c)
	}
	mf, _ := store.ReadManifest(b3.Status.Manifest)
	var victim string
	for _, d := range mf.Disks {
		if d.Name == "data" {
			victim = d.Chunks[5]
		}
	}
	if victim == "" {
		t.Fatal("chunk 5 of the data disk is zeros")
	}
	if err := os.WriteFile(filepath.Join(dir, "chunks", victim[:4], victim), []byte("rot"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := s.CLI("", "backup", "verify", "b3"); r.Code == 0 || !strings.Contains(r.Stderr, "chunk 5") {
		t.Fatalf("backup verify of a corrupted chunk: code %d, stderr %q", r.Code, r.Stderr)
	}
	if c := bkVerify(t, s, "b3", "again"); c.Status != v1alpha1.ConditionFalse || c.Reason != v1alpha1.BackupReasonCorrupted || !strings.Contains(c.Message, "missing") {
		t.Fatalf("verify after the corrupted chunk was put aside: %+v", c)
	}

	// Deleting the backups and taking another: the next backup (a full one, no earlier one
	// is left) collects what only the deleted ones used.
	chunkFiles := func() int {
		n := 0
		filepath.WalkDir(filepath.Join(dir, "chunks"), func(p string, d os.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				n++
			}
			return nil
		})
		return n
	}
	before := chunkFiles()
	s.MustCLI("", "delete", "vmbackup", "stopped", "b1", "b2", "b3")
	if out := s.MustCLI("", "backup", "create", "vm1", "--target", "nightly", "--name", "b4", "--mode", "suspend", "--wait"); strings.TrimSpace(out) != "b4" {
		t.Fatalf("backup create: %q", out)
	}
	b4 := bkGet(t, s, "b4")
	if b4.Status.Phase != v1alpha1.BackupPhaseCompleted || b4.Status.Consistent == nil || !*b4.Status.Consistent {
		t.Fatalf("a suspend-mode backup: %+v", b4.Status)
	}
	if d := bkDisk(t, b4, "data"); d.Kind != v1alpha1.BackupKindFull {
		t.Errorf("the backup after all others were deleted: %+v", d)
	}
	after := chunkFiles()
	if after != b4.Status.Size.Chunks || after >= before {
		t.Errorf("chunk files: %d before the deletes, %d after the next backup, which uses %d", before, after, b4.Status.Size.Chunks)
	}
	if out := s.MustCLI("", "get", "vmbackup"); !strings.Contains(out, "b4") || !strings.Contains(out, "Completed") {
		t.Errorf("get vmbackup:\n%s", out)
	}

	// A kill -9 of serve in the middle of a backup (its copy slowed to 4 MiB/s): the VM runs
	// on, and after the restart the backup runs again and completes, incrementally over b4,
	// with what the guest wrote before it.
	vmConsoleType(t, s, v.UID, "dd if=/dev/urandom of=/dev/vdb bs=1M seek=70 count=24 conv=fsync 2>/dev/null && echo SUM2-$(dd if=/dev/vdb bs=1M skip=70 count=24 2>/dev/null | md5sum | cut -c1-32) && echo WROTE''-24M")
	vmWaitSerial(t, s, "vm1", "WROTE-24M", 1)
	m2 := regexp.MustCompile(`SUM2-([0-9a-f]{32})`).FindStringSubmatch(vmLog(t, s, "vm1"))
	if m2 == nil {
		t.Fatalf("the guest printed no md5 of the second write")
	}
	s.MustCLI(`apiVersion: virtualization.rakhsh.io/v1alpha1
kind: VirtualMachineBackup
metadata: {name: b5}
spec: {virtualMachineName: vm1, backupTargetName: nightly, bandwidthLimit: 4Mi}
`, "apply", "-f", "-")
	for deadline := time.Now().Add(time.Minute); !strings.Contains(s.Logs(), "backup=default/b5"); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("backup b5 did not start within a minute")
		}
	}
	time.Sleep(time.Second)
	s.Kill9()
	s.Start()
	b5 := bkWait(t, s, "b5")
	if d := bkDisk(t, b5, "data"); d.Kind != v1alpha1.BackupKindIncremental || d.Read < 24<<20 || d.Read > 26<<20 {
		t.Errorf("the backup run again after a kill -9: %+v", d)
	}
	if !strings.Contains(s.Logs(), "taking a backup") {
		t.Error("the restarted serve did not take the backup again")
	}
	data = bkRestore(t, store, b5, "data")
	sum2 := md5.Sum(data[70<<20 : 94<<20])
	if got := hex.EncodeToString(sum2[:]); got != m2[1] || !bytes.HasPrefix(data[512:], []byte("MARK-B")) {
		t.Errorf("the data disk of the backup run again: md5 %s (the guest wrote %s), sector 1 %q", got, m2[1], data[512:520])
	}
	// The chain goes on: nothing written since, nothing read.
	if b6 := bkRun(t, s, "b6"); b6.Status.Size.Read > 1<<20 || bkDisk(t, b6, "data").Kind != v1alpha1.BackupKindIncremental {
		t.Errorf("the backup after the one run again: %+v", b6.Status.Disks)
	}

	// A schedule every minute that keeps the last backup: its first backup completes, and b6,
	// labelled as the schedule's, is pruned.
	s.MustCLI("", "label", "vmbackup", "b6", v1alpha1.LabelBackupSchedule+"=every-minute")
	s.MustCLI(`apiVersion: virtualization.rakhsh.io/v1alpha1
kind: BackupSchedule
metadata: {name: every-minute}
spec:
  virtualMachineName: vm1
  backupTargetName: nightly
  schedule: "* * * * *"
  retention: {keepLast: 1}
`, "apply", "-f", "-")
	var sched v1alpha1.BackupSchedule
	for deadline := time.Now().Add(100 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		if err := s.Client().Get(context.Background(), "backupschedules", "default", "every-minute", &sched); err != nil {
			t.Fatal(err)
		}
		if sched.Status.LastBackupName != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the schedule took no backup within 100 s: %+v", sched.Status)
		}
	}
	bs := bkWait(t, s, sched.Status.LastBackupName)
	if bs.Labels[v1alpha1.LabelBackupSchedule] != "every-minute" || bs.Status.Size.Read > 1<<20 {
		t.Errorf("the scheduled backup: labels %v, read %d", bs.Labels, bs.Status.Size.Read)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if r := s.CLI("", "get", "vmbackup", "b6"); r.Code != 0 && strings.Contains(r.Stderr, "NotFound") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("b6 was not pruned by the schedule's keepLast 1")
		}
	}
	if out := s.MustCLI("", "get", "bsched"); !strings.Contains(out, "every-minute") || !strings.Contains(out, "* * * * *") {
		t.Errorf("get bsched:\n%s", out)
	}
	s.MustCLI("", "delete", "bsched", "every-minute")

	if now := vmGet(t, s, "vm1"); now.Status.Phase != v1alpha1.VMPhaseRunning || now.UID != v.UID {
		t.Errorf("the VM did not run on through the backups: %s", now.Status.Phase)
	}
	if n := strings.Count(vmLog(t, s, "vm1"), "RAKHSH-GUEST: ready"); n != 1 {
		t.Errorf("%d boot markers: the guest rebooted during the backups", n)
	}

	// Mode stop: the running VM is shut down for the backup (a Stop operation), its disks are
	// read while it is stopped (incrementally: QEMU saved the bitmaps when it shut down), and
	// it is started again (a Start operation) once the backup has ended.
	s.MustCLI("", "backup", "create", "vm1", "--target", "nightly", "--name", "bstop", "--mode", "stop", "--wait", "--timeout", "5m")
	bst := bkGet(t, s, "bstop")
	if !bst.Status.Stopped || !bst.Status.StoppedVM || bst.Status.Consistent == nil || !*bst.Status.Consistent || bkDisk(t, bst, "data").Kind != v1alpha1.BackupKindIncremental {
		j, _ := json.MarshalIndent(bst.Status, "", "  ")
		t.Errorf("a backup in mode stop:\n%s", j)
	}
	vmWait(t, s, "vm1", vmBootTimeout, "Running again after the backup in mode stop", vmPhase(v1alpha1.VMPhaseRunning))
	vmWaitSerial(t, s, "vm1", "RAKHSH-GUEST: ready", 2)
	for deadline := time.Now().Add(30 * time.Second); !bkGet(t, s, "bstop").Status.RestartedVM; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the backup in mode stop did not record that it started the VM again")
		}
	}
	if out := s.MustCLI("", "get", "vmop", "-l", v1alpha1.LabelBackupOf+"=bstop"); !strings.Contains(out, "bstop-stop") || !strings.Contains(out, "bstop-start") {
		t.Errorf("the operations of the backup in mode stop:\n%s", out)
	}

	// Restoring the VM itself from b4: refused while it runs; once it is stopped, its disks
	// hold what b4 holds (the markers and the 64 MiB, not the 24 MiB written after b4), the
	// next backup reads them whole (the restore dropped the dirty bitmaps: no incremental may
	// build on them), and the VM boots from them.
	if r := s.CLI("", "vm", "restore", "vm1", "--backup", "b4", "--wait"); r.Code == 0 || !strings.Contains(r.Stderr, "stop it") {
		t.Errorf("restore of the running VM: code %d, stderr %q", r.Code, r.Stderr)
	}
	s.MustCLI("", "vm", "stop", "vm1", "--wait")
	s.MustCLI("", "vm", "restore", "vm1", "--backup", "b4", "--wait")
	dataDisk := getObj[v1alpha1.VirtualDisk](t, s, "virtualdisks", "data")
	raw := filepath.Join(t.TempDir(), "data.raw")
	if out, err := exec.Command("qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", storage.ClassDiskPath(s.DataDir, nil, dataDisk.UID), raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v: %s", err, out)
	}
	data, err = os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	sum = md5.Sum(data[1<<20 : 65<<20])
	if got := hex.EncodeToString(sum[:]); !bytes.HasPrefix(data, []byte("MARK-A")) || !bytes.HasPrefix(data[512:], []byte("MARK-B")) ||
		got != m[1] || !bytes.Equal(data[70<<20:94<<20], make([]byte, 24<<20)) {
		t.Errorf("the data disk restored from b4: sector 0 %q, sector 1 %q, md5 of the 64 MiB %s (want %s), the 24 MiB written after b4 zero: %v",
			data[:8], data[512:520], got, m[1], bytes.Equal(data[70<<20:94<<20], make([]byte, 24<<20)))
	}
	if d := bkDisk(t, bkRun(t, s, "after-restore"), "data"); d.Kind != v1alpha1.BackupKindFull {
		t.Errorf("the backup after a restore of the disk: %+v", d)
	}
	s.MustCLI("", "vm", "start", "vm1", "--wait")
	vmWaitSerial(t, s, "vm1", "RAKHSH-GUEST: ready", 3)
	s.MustCLI("", "vm", "stop", "vm1", "--wait")
}
