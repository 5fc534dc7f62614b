package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// storageDisk reads a VirtualDisk of the default project.
func storageDisk(t *testing.T, s *Serve, name string) *v1alpha1.VirtualDisk {
	t.Helper()
	return getObj[v1alpha1.VirtualDisk](t, s, "virtualdisks", name)
}

func storageFileThere(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

// storageBacking returns the backing file a qcow2 file names ("" : none).
func storageBacking(t *testing.T, path string) string {
	t.Helper()
	out, err := exec.Command("qemu-img", "info", "-U", "-f", "qcow2", "--output=json", path).Output()
	if err != nil {
		t.Fatalf("qemu-img info %s: %v", path, err)
	}
	var info struct {
		Backing string `json:"backing-filename"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatal(err)
	}
	return info.Backing
}

// storageBoot starts the VM, waits for its guest, and returns its node.
func storageBoot(t *testing.T, s *Serve, vm string, boots int) string {
	t.Helper()
	s.MustCLI("", "vm", "start", vm, "--wait")
	v := vmWait(t, s, vm, time.Minute, "Running", vmPhase(v1alpha1.VMPhaseRunning))
	vmWaitSerial(t, s, vm, "RAKHSH-GUEST: ready", boots)
	return v.Status.NodeName
}

func storageStop(t *testing.T, s *Serve, vm string) {
	t.Helper()
	s.MustCLI("", "vm", "stop", vm, "--wait")
	vmWait(t, s, vm, time.Minute, "Stopped", vmPhase(v1alpha1.VMPhaseStopped))
}

// TestStorageClasses runs a real `rakhsh serve`: the default Local class exists; a disk on it
// gets the node and its VM runs there; a disk on a Shared class in a temporary directory
// lands there as a linked clone of the class's own copy of the image and its VM boots; a
// stopped VM's disk, with data the guest wrote, moves Local -> Shared -> Local and the VM
// boots with its data each time; a move of a disk a running VM uses, and the deletion of a
// class in use, are refused with clear errors.
func TestStorageClasses(t *testing.T) {
	sideBySide(t)
	vmGuestDir(t)
	const node = "rks-n1"
	s := vmServe(t, "--node-name", node)

	out := s.MustCLI("", "get", "storageclasses")
	if !strings.Contains(out, "local") || !strings.Contains(out, "Local") || !strings.Contains(out, "true") {
		t.Fatalf("rakhsh get storageclasses: the default class is missing:\n%s", out)
	}
	shared := filepath.Join(shortTempDir(t), "nfs")
	s.MustCLI(fmt.Sprintf(`apiVersion: virtualization.rakhsh.io/v1alpha1
kind: StorageClass
metadata: {name: rks-shared}
spec:
  type: Shared
  shared: {path: %s}
`, shared), "apply", "-f", "-")
	if r := s.CLI(`{"apiVersion":"virtualization.rakhsh.io/v1alpha1","kind":"StorageClass","metadata":{"name":"rks-ceph"},"spec":{"type":"RBD"}}`, "apply", "-f", "-"); r.Code == 0 || !strings.Contains(r.Stderr, "not supported yet") {
		t.Errorf("an RBD class: %v\n%s", r.Code, r.Stderr)
	}

	vmSetupGuest(t, s, "rks-root")
	d := storageDisk(t, s, "rks-root")
	localFile := storage.DiskPath(s.DataDir, storage.DefaultPool, d.UID)
	sharedFile := filepath.Join(shared, "disks", d.UID+".qcow2")
	if d.Status.StorageClassName != "local" || d.Status.NodeName != node || !storageFileThere(localFile) {
		t.Fatalf("a disk on the default class: class %q node %q, file there %v", d.Status.StorageClassName, d.Status.NodeName, storageFileThere(localFile))
	}

	// A disk on the Shared class: a linked clone of the class's copy of the image.
	s.MustCLI(strings.Replace(vmDiskManifest("rks-sroot"), "persistentVolumeClaim: {size: 1Gi}", "persistentVolumeClaim: {size: 1Gi, storageClassName: rks-shared}", 1), "apply", "-f", "-")
	s.MustCLI("", "wait", "vd", "rks-sroot", "--for", "phase=Ready", "--timeout", "2m")
	sd := storageDisk(t, s, "rks-sroot")
	sfile := filepath.Join(shared, "disks", sd.UID+".qcow2")
	if sd.Status.StorageClassName != "rks-shared" || sd.Status.NodeName != "" || !storageFileThere(sfile) {
		t.Fatalf("a disk on the Shared class: class %q node %q, file there %v", sd.Status.StorageClassName, sd.Status.NodeName, storageFileThere(sfile))
	}
	if b := storageBacking(t, sfile); !strings.HasPrefix(b, filepath.Join(shared, "images", "sha256-")) || !storageFileThere(b) {
		t.Errorf("the Shared disk's backing file is %q, want the class's image copy under %s/images", b, shared)
	}
	s.MustCLI(vmManifest("rks-svm", "rks-sroot", "Manual", "256Mi"), "apply", "-f", "-")
	if n := storageBoot(t, s, "rks-svm", 1); n != node {
		t.Errorf("the Shared disk's VM runs on %q", n)
	}
	storageStop(t, s, "rks-svm")

	// The Local disk's VM runs on the disk's node; the guest writes a marker into its disk.
	s.MustCLI(vmManifest("rks-vm", "rks-root", "Manual", "256Mi"), "apply", "-f", "-")
	if n := storageBoot(t, s, "rks-vm", 1); n != node {
		t.Errorf("the Local disk's VM runs on %q, want %s", n, node)
	}
	v := vmGet(t, s, "rks-vm")
	vmConsoleType(t, s, v.UID, "")
	vmConsoleType(t, s, v.UID, "echo RKS-DATA-$((6*7)) | dd of=/dev/vda bs=1M seek=900 conv=notrunc 2>/dev/null; sync; echo RKS-WROTE-$((1+1))")
	vmWaitSerial(t, s, "rks-vm", "RKS-WROTE-2", 1)

	// A disk a running VM uses is not moved.
	if r := s.CLI("", "disk", "move", "rks-root", "--storage-class", "rks-shared"); r.Code == 0 || !strings.Contains(r.Stderr, "running VirtualMachine") {
		t.Errorf("moving a disk in use: %v\n%s", r.Code, r.Stderr)
	}
	// A class in use is not deleted.
	if r := s.CLI("", "delete", "storageclass", "rks-shared"); r.Code == 0 || !strings.Contains(r.Stderr, "used by VirtualDisks") {
		t.Errorf("deleting a class in use: %v\n%s", r.Code, r.Stderr)
	}
	storageStop(t, s, "rks-vm")

	readMarker := func(boots int) {
		t.Helper()
		if n := storageBoot(t, s, "rks-vm", boots); n != node {
			t.Errorf("after the move the VM runs on %q", n)
		}
		v := vmGet(t, s, "rks-vm")
		vmConsoleType(t, s, v.UID, "")
		vmConsoleType(t, s, v.UID, "dd if=/dev/vda bs=1M skip=900 count=1 2>/dev/null | head -c 11; echo")
		vmWaitSerial(t, s, "rks-vm", "RKS-DATA-42", boots-1)
		storageStop(t, s, "rks-vm")
	}
	started := time.Now()
	out = s.MustCLI("", "disk", "move", "rks-root", "--storage-class", "rks-shared", "--timeout", "5m")
	t.Logf("move to Shared took %s: %s", time.Since(started).Round(time.Millisecond), strings.TrimSpace(out))
	if want := "virtualdisk/rks-root moved from storage class local to rks-shared\n"; out != want {
		t.Errorf("rakhsh disk move printed %q, want %q", out, want)
	}
	// The old file goes just after the status names the new class.
	waitFor(t, "the old file to go", func() bool { return !storageFileThere(localFile) })
	d = storageDisk(t, s, "rks-root")
	if d.Status.StorageClassName != "rks-shared" || d.Status.NodeName != "" || storageFileThere(localFile) || !storageFileThere(sharedFile) {
		t.Fatalf("after the move to Shared: class %q node %q, local file %v, shared file %v", d.Status.StorageClassName, d.Status.NodeName,
			storageFileThere(localFile), storageFileThere(sharedFile))
	}
	readMarker(2)

	started = time.Now()
	s.MustCLI("", "disk", "move", "rks-root", "--storage-class", "local", "--timeout", "5m")
	t.Logf("move back to Local took %s", time.Since(started).Round(time.Millisecond))
	waitFor(t, "the old file to go", func() bool { return !storageFileThere(sharedFile) })
	d = storageDisk(t, s, "rks-root")
	if d.Status.StorageClassName != "local" || d.Status.NodeName != node || !storageFileThere(localFile) || storageFileThere(sharedFile) {
		t.Fatalf("after the move back: class %q node %q, local file %v, shared file %v", d.Status.StorageClassName, d.Status.NodeName,
			storageFileThere(localFile), storageFileThere(sharedFile))
	}
	readMarker(3)
}
