package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// vmWithDataDisk is the manifest of a blank disk "data" of size and a VM "vm1" (started by
// hand) with the disks "root" and "data".
func vmWithDataDisk(size string) string {
	return diskDoc("data", size, "") + "---\n" + snapVM1("256Mi")
}

// snapVM1 is the VM "vm1" (started by hand) of memory mem with the disks "root" and "data".
func snapVM1(mem string) string {
	return vmDoc{Name: "vm1", Policy: "Manual", Memory: mem, Grace: "30", Refs: []string{vdRef("root"), vdRef("data")}}.String()
}

// snapServeVM runs a serve of its own with vm1 of vmWithDataDisk (a data disk of size) over
// the test guest's root disk, started and booted.
func snapServeVM(t *testing.T, size string) *Serve {
	t.Helper()
	vmGuestDir(t)
	s := vmServe(t)
	vmSetupGuest(t, s, "root")
	s.MustCLI(vmWithDataDisk(size), "apply", "-f", "-")
	s.MustCLI("", "wait", "vd", "data", "--for", "phase=Ready", "--timeout", "1m")
	s.MustCLI("", "vm", "start", "vm1", "--wait")
	vmWaitSerial(t, s, "vm1", "RAKHSH-GUEST: ready", 1)
	return s
}

// snapVDS reads a disk snapshot.
func snapVDS(t *testing.T, s *Serve, name string) *v1alpha1.VirtualDiskSnapshot {
	t.Helper()
	return getObj[v1alpha1.VirtualDiskSnapshot](t, s, "virtualdisksnapshots", name)
}

// snapWaitVDS polls a disk snapshot until cond holds.
func snapWaitVDS(t *testing.T, s *Serve, name string, timeout time.Duration, what string, cond func(v *v1alpha1.VirtualDiskSnapshot) bool) *v1alpha1.VirtualDiskSnapshot {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var v *v1alpha1.VirtualDiskSnapshot
	for time.Now().Before(deadline) {
		if v = snapVDS(t, s, name); cond(v) {
			return v
		}
		time.Sleep(100 * time.Millisecond)
	}
	b, _ := json.MarshalIndent(v, "", "  ")
	t.Fatalf("VirtualDiskSnapshot %s not %s within %s; last seen:\n%s", name, what, timeout, b)
	return nil
}

// snapWriteMarker writes text at sector n of the guest's /dev/vdb (the data disk) straight to
// the disk, and waits for the guest to say it is written.
func snapWriteMarker(t *testing.T, s *Serve, vm, uid, text string, sector int) {
	t.Helper()
	done := "WROTE-" + text
	vmConsoleType(t, s, uid, "printf '"+text+"' | dd of=/dev/vdb bs=512 seek="+strconv.Itoa(sector)+" conv=notrunc,fsync 2>/dev/null && echo WROTE-"+text[:2]+"''"+text[2:])
	vmWaitSerial(t, s, vm, done, 1)
}

// snapSector reads 512 bytes at sector n of the qcow2 file path from the host (qemu-img dd
// counts the skipped blocks in count).
func snapSector(t *testing.T, path string, n int) []byte {
	t.Helper()
	raw := filepath.Join(t.TempDir(), "raw")
	out, err := exec.Command("qemu-img", "dd", "-U", "-f", "qcow2", "-O", "raw", "bs=512", "skip="+strconv.Itoa(n), "count="+strconv.Itoa(n+1), "if="+path, "of="+raw).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img dd %s: %v: %s", path, err, out)
	}
	b, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 512 {
		t.Fatalf("qemu-img dd of sector %d of %s wrote %d bytes", n, path, len(b))
	}
	return b[len(b)-512:]
}

// TestDiskSnapshotLive: a snapshot of the data disk of a running VM is taken without stopping
// it, with the guest frozen through its agent (consistent); what the guest writes afterwards
// is not in it; a new disk made from the snapshot holds the first marker and not the later
// one; deleting the snapshot removes its file while the VM runs on. Then a VM snapshot of the
// running VM, a later write, and a restore of the stopped VM: the earlier markers are there,
// the later one is not, the spec is the snapshot's and the guest boots again. Last, the VM
// marked as a template refuses to start, and a clone of it boots with its own MAC and IP.
func TestDiskSnapshotLive(t *testing.T) {
	sideBySide(t)
	s := snapServeVM(t, "64Mi")
	v := vmWait(t, s, "vm1", vmBootTimeout, "AgentReady=True", func(v *v1alpha1.VirtualMachine) bool {
		c := agentReadyCond(v)
		return c != nil && c.Status == v1alpha1.ConditionTrue
	})
	snapWriteMarker(t, s, "vm1", v.UID, "MARK-A", 0)
	v = vmWait(t, s, "vm1", time.Minute, "showing its addresses", func(v *v1alpha1.VirtualMachine) bool {
		return v != nil && v.Status.IPAddress != "" && len(v.Status.Networks) > 0 && v.Status.Networks[0].MACAddress != ""
	})
	ip1, mac1 := v.Status.IPAddress, v.Status.Networks[0].MACAddress

	s.MustCLI(`apiVersion: virtualization.rakhsh.io/v1alpha1
kind: VirtualDiskSnapshot
metadata: {name: snap1}
spec: {virtualDiskName: data}
`, "apply", "-f", "-")
	snap := snapWaitVDS(t, s, "snap1", 2*time.Minute, "Ready", func(v *v1alpha1.VirtualDiskSnapshot) bool {
		return v.Status.Phase == v1alpha1.SnapshotPhaseReady || v.Status.Phase == v1alpha1.SnapshotPhaseFailed
	})
	if snap.Status.Phase != v1alpha1.SnapshotPhaseReady || snap.Status.Consistent == nil || !*snap.Status.Consistent ||
		snap.Status.Stats == nil || snap.Status.Stats.Frozen == "" || snap.Status.NodeName != v.Status.NodeName {
		b, _ := json.MarshalIndent(snap.Status, "", "  ")
		t.Fatalf("snapshot of the running VM's disk:\n%s", b)
	}
	t.Logf("live snapshot: frozen %s, copy %s", snap.Status.Stats.Frozen, snap.Status.Stats.Copy)
	if out := s.MustCLI("", "get", "vdsnapshot"); !strings.Contains(out, "snap1") || !strings.Contains(out, "Ready") || !strings.Contains(out, "true") {
		t.Errorf("get vdsnapshot:\n%s", out)
	}
	if now := vmGet(t, s, "vm1"); now.Status.Phase != v1alpha1.VMPhaseRunning || now.UID != v.UID {
		t.Fatalf("the VM did not run on through the snapshot: %s", now.Status.Phase)
	}
	snapWriteMarker(t, s, "vm1", v.UID, "MARK-B", 1)
	if n, _ := strconv.Atoi(os.Getenv("RAKHSH_BENCH_SNAPSHOT")); n > 0 {
		snapBenchmark(t, s, v.UID, n)
	}

	file := storage.SnapshotPath(s.DataDir, nil, snap.UID)
	if b := snapSector(t, file, 0); !bytes.HasPrefix(b, []byte("MARK-A")) {
		t.Errorf("sector 0 of the snapshot: %q", b[:16])
	}
	if b := snapSector(t, file, 1); bytes.HasPrefix(b, []byte("MARK-B")) {
		t.Errorf("the snapshot holds a write made after it")
	}

	// A new disk from the snapshot: a linked clone of the snapshot, not of the disk as it is now.
	applyDocs(s, diskDoc("fromsnap", "", objectRefSource("{kind: VirtualDiskSnapshot, name: snap1}")))
	s.MustCLI("", "wait", "vd", "fromsnap", "--for", "phase=Ready", "--timeout", "2m")
	fromsnap := getObj[v1alpha1.VirtualDisk](t, s, "virtualdisks", "fromsnap")
	if fromsnap.Status.Capacity != string(v1alpha1.BytesQuantity(64<<20)) && fromsnap.Status.Capacity != "64Mi" {
		t.Errorf("capacity of the disk from the snapshot: %s", fromsnap.Status.Capacity)
	}
	dpath := storage.ClassDiskPath(s.DataDir, nil, fromsnap.UID)
	if b := snapSector(t, dpath, 0); !bytes.HasPrefix(b, []byte("MARK-A")) {
		t.Errorf("sector 0 of the disk made from the snapshot: %q", b[:16])
	}
	if b := snapSector(t, dpath, 1); bytes.HasPrefix(b, []byte("MARK-B")) {
		t.Errorf("the disk made from the snapshot holds a write made after the snapshot")
	}

	// Deleting the snapshot keeps it while the disk made from it is a linked clone of it; once
	// that disk is deleted, the snapshot and its file go. The VM runs on.
	s.MustCLI("", "delete", "vdsnapshot", "snap1")
	kept := snapWaitVDS(t, s, "snap1", time.Minute, "kept for its linked clone", func(v *v1alpha1.VirtualDiskSnapshot) bool {
		c := v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VDSnapshotConditionReady)
		return v.DeletionTimestamp != nil && c != nil && strings.Contains(c.Message, "fromsnap")
	})
	if _, err := os.Stat(file); err != nil {
		t.Fatalf("the file of the snapshot a linked clone is made over: %v", err)
	}
	t.Logf("deleted snapshot: %s", v1alpha1.FindCondition(kept.Status.Conditions, v1alpha1.VDSnapshotConditionReady).Message)
	s.MustCLI("", "delete", "vd", "fromsnap")
	deadline := time.Now().Add(time.Minute)
	for {
		if _, err := os.Stat(file); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the snapshot file %s is still there a minute after the delete", file)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if now := vmGet(t, s, "vm1"); now.Status.Phase != v1alpha1.VMPhaseRunning || now.UID != v.UID {
		t.Errorf("the VM after the snapshot's delete: %s", now.Status.Phase)
	}

	// A VM snapshot of the running VM (both disks at one instant), a later write, then a
	// restore: the markers written before the snapshot are there, the later one is not, the
	// spec is the snapshot's, and the VM boots from its restored root disk.
	s.MustCLI(`apiVersion: virtualization.rakhsh.io/v1alpha1
kind: VirtualMachineSnapshot
metadata: {name: vmsnap}
spec: {virtualMachineName: vm1}
`, "apply", "-f", "-")
	s.MustCLI("", "wait", "vmsnapshot", "vmsnap", "--for", "phase=Ready", "--timeout", "3m")
	vs := getObj[v1alpha1.VirtualMachineSnapshot](t, s, "virtualmachinesnapshots", "vmsnap")
	if vs.Status.Consistent == nil || !*vs.Status.Consistent || len(vs.Status.VirtualDiskSnapshotNames) != 2 || vs.Status.VirtualMachineSpec == nil {
		b, _ := json.MarshalIndent(vs.Status, "", "  ")
		t.Fatalf("VM snapshot:\n%s", b)
	}
	for _, n := range vs.Status.VirtualDiskSnapshotNames {
		if ds := snapVDS(t, s, n); ds.Status.Phase != v1alpha1.SnapshotPhaseReady || ds.Status.NodeName != v.Status.NodeName {
			t.Errorf("disk snapshot %s of the VM snapshot: %+v", n, ds.Status)
		}
	}
	snapWriteMarker(t, s, "vm1", v.UID, "MARK-C", 2)
	s.MustCLI("", "vm", "stop", "vm1", "--force", "--wait")
	vmWait(t, s, "vm1", time.Minute, "Stopped", vmPhase(v1alpha1.VMPhaseStopped))
	applyDocs(s, snapVM1("320Mi"))
	s.MustCLI(`apiVersion: virtualization.rakhsh.io/v1alpha1
kind: VirtualMachineOperation
metadata: {name: restore1}
spec: {type: Restore, virtualMachineName: vm1, restore: {mode: Strict, virtualMachineSnapshotName: vmsnap}}
`, "apply", "-f", "-")
	s.MustCLI("", "wait", "vmop", "restore1", "--for", "phase=Completed", "--timeout", "3m")
	data := getObj[v1alpha1.VirtualDisk](t, s, "virtualdisks", "data")
	dataFile := storage.ClassDiskPath(s.DataDir, nil, data.UID)
	for i, want := range []string{"MARK-A", "MARK-B"} {
		if b := snapSector(t, dataFile, i); !bytes.HasPrefix(b, []byte(want)) {
			t.Errorf("restored sector %d: %q, want %s", i, b[:16], want)
		}
	}
	if b := snapSector(t, dataFile, 2); bytes.HasPrefix(b, []byte("MARK-C")) {
		t.Error("the restored disk holds a write made after the VM snapshot")
	}
	if now := vmGet(t, s, "vm1"); now.Spec.Memory.Size != "256Mi" {
		t.Errorf("restored VM memory %s, want the snapshot's 256Mi", now.Spec.Memory.Size)
	}
	s.MustCLI("", "vm", "start", "vm1", "--wait")
	vmWaitSerial(t, s, "vm1", "RAKHSH-GUEST: ready", 2)
	v = vmGet(t, s, "vm1")
	vmConsoleType(t, s, v.UID, "echo RD-$(dd if=/dev/vdb bs=512 skip=1 count=1 2>/dev/null | head -c 6)")
	vmWaitSerial(t, s, "vm1", "RD-MARK-B", 1)
	s.MustCLI("", "vm", "stop", "vm1", "--force", "--wait")

	// A template refuses to start, and says why.
	s.MustCLI("", "label", "vm", "vm1", v1alpha1.LabelTemplate+"=true")
	if r := s.CLI("", "vm", "start", "vm1", "--wait", "--timeout", "1m"); r.Code == 0 || !strings.Contains(r.Stderr, "template") {
		t.Errorf("start of a template: code %d, %q", r.Code, r.Stderr)
	}
	if now := vmGet(t, s, "vm1"); now.Status.Phase != v1alpha1.VMPhaseStopped {
		t.Errorf("the template is %s", now.Status.Phase)
	}

	// A clone of the template boots with its own MAC and IP claims, and is no template.
	s.MustCLI("", "vm", "clone", "vm1", "vm2", "--wait", "--timeout", "3m")
	s.MustCLI("", "vm", "start", "vm2", "--wait")
	vmWaitSerial(t, s, "vm2", "RAKHSH-GUEST: ready", 1)
	v2 := vmWait(t, s, "vm2", time.Minute, "showing its addresses", func(v *v1alpha1.VirtualMachine) bool {
		return v != nil && v.Status.IPAddress != "" && len(v.Status.Networks) > 0 && v.Status.Networks[0].MACAddress != ""
	})
	// (This serve gives VMs user-mode networking, where every guest leases the same address;
	// the platform's claims are what differ.)
	vmWaitSerialMatch(t, s, "vm2", ipMarker, 1) // the clone's guest got a DHCP lease
	if v2.Status.IPAddress == ip1 || v2.Status.Networks[0].MACAddress == mac1 || v2.UID == v.UID || v1alpha1.IsTemplate(v2) {
		t.Errorf("the clone shares the source's identity: ip %s/%s, mac %s/%s, template %v", v2.Status.IPAddress, ip1, v2.Status.Networks[0].MACAddress, mac1, v1alpha1.IsTemplate(v2))
	}
	if refs := v2.Spec.BlockDeviceRefs; len(refs) != 2 || refs[0].Name != "vm2-root" || refs[1].Name != "vm2-data" {
		t.Errorf("the clone's disks: %+v", refs)
	}
	s.MustCLI("", "vm", "stop", "vm2", "--force", "--wait")

	// The clone's disks are linked clones of its snapshot's files, which stay (their objects
	// being deleted) while the disks exist; a --full clone's disks stand alone.
	backingOf := func(disk string) string {
		t.Helper()
		d := getObj[v1alpha1.VirtualDisk](t, s, "virtualdisks", disk)
		out, err := exec.Command("qemu-img", "info", "-U", "--output=json", storage.ClassDiskPath(s.DataDir, nil, d.UID)).Output()
		if err != nil {
			t.Fatalf("qemu-img info of %s: %v", disk, err)
		}
		var info struct {
			Backing string `json:"full-backing-filename"`
		}
		if err := json.Unmarshal(out, &info); err != nil {
			t.Fatal(err)
		}
		return info.Backing
	}
	if b := backingOf("vm2-root"); !strings.Contains(b, "/snapshots/") {
		t.Errorf("vm2-root is not a linked clone of a snapshot: backing file %q", b)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(500 * time.Millisecond) {
		l, err := s.Client().List(context.Background(), "virtualdisksnapshots", "default", client.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		kept := false
		for _, raw := range l.Items {
			var ds v1alpha1.VirtualDiskSnapshot
			if json.Unmarshal(raw, &ds) == nil && ds.DeletionTimestamp != nil {
				c := v1alpha1.FindCondition(ds.Status.Conditions, v1alpha1.VDSnapshotConditionReady)
				kept = kept || (c != nil && strings.Contains(c.Message, "vm2-root"))
			}
		}
		if kept {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the clone's disk snapshots are not kept for its linked clones:\n%s", s.MustCLI("", "get", "vdsnapshot"))
		}
	}
	s.MustCLI("", "vm", "clone", "vm1", "vm3", "--full", "--wait", "--timeout", "3m")
	if b := backingOf("vm3-root"); b != "" {
		t.Errorf("vm3-root of a --full clone has the backing file %q", b)
	}
	s.MustCLI("", "delete", "vm", "vm2", "--wait")
	s.MustCLI("", "delete", "vd", "vm2-root", "vm2-data")
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(500 * time.Millisecond) {
		if out := s.MustCLI("", "get", "vdsnapshot", "-o", "name"); !strings.Contains(out, "clone") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the clone's disk snapshots outlived its linked clones:\n%s", s.MustCLI("", "get", "vdsnapshot"))
		}
	}
}

// snapBenchmark (RAKHSH_BENCH_SNAPSHOT=N) fills 32 MiB of the running VM's data disk, then
// takes N live snapshots of it one after the other and logs the medians of the time from
// create to Ready (as a client polling every 20 ms sees it), of the guest's freeze and of
// the copy. The snapshots are deleted again.
func snapBenchmark(t *testing.T, s *Serve, uid string, n int) {
	t.Helper()
	vmConsoleType(t, s, uid, "dd if=/dev/urandom of=/dev/vdb bs=1M seek=1 count=32 conv=fsync 2>/dev/null && echo FILLED-$((30+2))")
	vmWaitSerial(t, s, "vm1", "FILLED-32", 1)
	var total, frozen, copied []time.Duration
	for i := range n {
		name := "bench-" + strconv.Itoa(i)
		start := time.Now()
		s.MustCLI("apiVersion: virtualization.rakhsh.io/v1alpha1\nkind: VirtualDiskSnapshot\nmetadata: {name: "+name+"}\nspec: {virtualDiskName: data}\n", "apply", "-f", "-")
		var v *v1alpha1.VirtualDiskSnapshot
		for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(20 * time.Millisecond) {
			v = snapVDS(t, s, name)
			if v.Status.Phase == v1alpha1.SnapshotPhaseReady || v.Status.Phase == v1alpha1.SnapshotPhaseFailed || time.Now().After(deadline) {
				break
			}
		}
		took := time.Since(start)
		if v.Status.Phase != v1alpha1.SnapshotPhaseReady || v.Status.Stats == nil {
			t.Fatalf("benchmark snapshot %s: %+v", name, v.Status)
		}
		f, _ := time.ParseDuration(v.Status.Stats.Frozen)
		c, _ := time.ParseDuration(v.Status.Stats.Copy)
		total, frozen, copied = append(total, took), append(frozen, f), append(copied, c)
		t.Logf("snapshot %d: create→Ready %s, guest frozen %s, copy %s", i, took.Round(time.Millisecond), f, c)
		s.MustCLI("", "delete", "vdsnapshot", name)
	}
	med := func(d []time.Duration) time.Duration {
		d = append([]time.Duration(nil), d...)
		slices.Sort(d)
		return d[len(d)/2]
	}
	t.Logf("BENCH live disk snapshot (64 MiB disk, 32 MiB written), median of %d: create→Ready %s, guest frozen %s, copy %s",
		n, med(total).Round(time.Millisecond), med(frozen), med(copied))
}
