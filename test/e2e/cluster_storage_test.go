package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

// clusterStorageVM is a VM of one or two disks, AlwaysOn, optionally pinned by hostname.
func clusterStorageVM(name, host string, disks ...string) string {
	return clusterVMManifest{Name: name, Host: host, Disks: disks}.YAML()
}

// clusterScheduledFalse waits for the VM's Scheduled condition to be False and returns its
// message; the VM must stay unbound.
func clusterScheduledFalse(t *testing.T, s *Serve, name string) string {
	t.Helper()
	v := vmWait(t, s, name, time.Minute, "Scheduled=False", func(v *v1alpha1.VirtualMachine) bool {
		c := v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionScheduled)
		return c != nil && c.Status == v1alpha1.ConditionFalse
	})
	if v.Status.NodeName != "" {
		t.Errorf("VM %s was bound to %s", name, v.Status.NodeName)
	}
	return v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionScheduled).Message
}

// TestClusterStorage, in the three-host cluster: a disk on the default Local class is made
// on h1 (the control plane's host) and pins its VM there; a VM whose disks are on two nodes
// (the second moved from Shared storage to h2's by h2's agent),
// or whose Local disk is on a node its nodeSelector excludes, stays unbound with a Scheduled
// condition naming each disk's node; a disk on a Shared class over the cluster's shared
// directory is a linked clone of the class's own copy of the guest image, and its VM pinned
// to h2 boots on h2 from it; the disk moves to h2's Local storage and back (by h2's agent),
// and its VM, pinned by the disk, boots on h2 in between.
func TestClusterStorage(t *testing.T) {
	c, s, img := clusterStart(t, sharedCluster)
	h1, h2, h3 := c.Host("h1"), c.Host("h2"), c.Host("h3")
	t.Cleanup(func() {
		for _, vm := range []string{"rks-cl-local", "rks-cl-split", "rks-cl-elsewhere", "rks-cl-shared"} {
			s.CLI("", "delete", "vm", vm, "--ignore-not-found", "--wait")
		}
		for _, d := range []string{"rks-cl-l1", "rks-cl-l2", "rks-cl-s1"} {
			s.CLI("", "delete", "vd", d, "--ignore-not-found", "--wait")
		}
		s.CLI("", "delete", "storageclass", "rks-cl-shared", "--ignore-not-found")
	})
	// A Shared class over the directory every host sees.
	clusterApply(s, clusterSharedClassYAML("rks-cl-shared", filepath.Join(c.Shared, "rks-storage")))

	// A Local disk is on h1 and its VM is bound there.
	clusterApply(s, clusterDiskManifest{Name: "rks-cl-l1", Size: "1Gi", Image: img}.YAML(),
		clusterDiskManifest{Name: "rks-cl-l2", Size: "64Mi", StorageClass: "rks-cl-shared"}.YAML())
	clusterWaitDisks(s, "rks-cl-l1", "rks-cl-l2")
	if d := storageDisk(t, s, "rks-cl-l1"); d.Status.StorageClassName != "local" || d.Status.NodeName != "h1" {
		t.Fatalf("a Local disk: class %q node %q, want local on h1", d.Status.StorageClassName, d.Status.NodeName)
	}
	clusterApply(s, clusterStorageVM("rks-cl-local", "", "rks-cl-l1"))
	v := vmWait(t, s, "rks-cl-local", vmBootTimeout, "Running", vmPhase(v1alpha1.VMPhaseRunning))
	if v.Status.NodeName != "h1" {
		t.Errorf("the VM of a Local disk on h1 runs on %q", v.Status.NodeName)
	}
	s.MustCLI("", "delete", "vm", "rks-cl-local", "--wait")

	// The same disk with a nodeSelector for h2: unbound, and the condition says why.
	clusterApply(s, clusterStorageVM("rks-cl-elsewhere", "h2", "rks-cl-l1"))
	msg := clusterScheduledFalse(t, s, "rks-cl-elsewhere")
	for _, want := range []string{`VirtualDisk "rks-cl-l1" (StorageClass "local") is on node h1's local storage`, "node h1 cannot take it (not matching nodeSelector)"} {
		if !strings.Contains(msg, want) {
			t.Errorf("Scheduled message %q lacks %q", msg, want)
		}
	}
	s.MustCLI("", "delete", "vm", "rks-cl-elsewhere", "--wait")

	// Disks on two nodes: the second disk, made on Shared storage, is moved to h2's local
	// storage by h2's agent.
	s.MustCLI("", "disk", "move", "rks-cl-l2", "--storage-class", "local", "--node", "h2", "--timeout", "3m")
	if d := storageDisk(t, s, "rks-cl-l2"); d.Status.StorageClassName != "local" || d.Status.NodeName != "h2" {
		t.Fatalf("the disk moved to h2: class %q node %q", d.Status.StorageClassName, d.Status.NodeName)
	}
	clusterApply(s, clusterStorageVM("rks-cl-split", "", "rks-cl-l1", "rks-cl-l2"))
	msg = clusterScheduledFalse(t, s, "rks-cl-split")
	for _, want := range []string{`VirtualDisk "rks-cl-l1" (StorageClass "local") on node h1`, `VirtualDisk "rks-cl-l2" (StorageClass "local") on node h2`, "different nodes"} {
		if !strings.Contains(msg, want) {
			t.Errorf("Scheduled message %q lacks %q", msg, want)
		}
	}
	if out := s.MustCLI("", "describe", "vm", "rks-cl-split"); !strings.Contains(out, "different nodes") {
		t.Errorf("rakhsh describe vm does not explain the split disks:\n%s", out)
	}
	s.MustCLI("", "delete", "vm", "rks-cl-split", "--wait")

	// From h1's Local storage to h3's: h3's agent fetches the disk through the API from h1's
	// agent (the one in serve's process), which serves a flattened copy of the linked clone;
	// then h1's file and export go.
	l1 := storageDisk(t, s, "rks-cl-l1")
	l1OnH1, l1OnH3 := filepath.Join(h1.DataDir, "pools", "default", "disks", l1.UID+".qcow2"), filepath.Join(h3.DataDir, "pools", "default", "disks", l1.UID+".qcow2")
	if b := storageBacking(t, l1OnH1); b == "" {
		t.Fatalf("the disk made from an image on h1 is not a linked clone")
	}
	out := s.MustCLI("", "disk", "move", "rks-cl-l1", "--storage-class", "local", "--node", "h3", "--timeout", "3m")
	if !strings.Contains(out, "moved from storage class local to local on node h3") {
		t.Errorf("rakhsh disk move --node h3 printed %q", out)
	}
	l1 = storageDisk(t, s, "rks-cl-l1")
	if l1.Status.NodeName != "h3" || l1.Status.MoveSourceNodeName != "" || !storageFileThere(l1OnH3) {
		t.Fatalf("after the move from h1 to h3: node %q, source %q, file on h3 %v", l1.Status.NodeName, l1.Status.MoveSourceNodeName, storageFileThere(l1OnH3))
	}
	if b := storageBacking(t, l1OnH3); b != "" {
		t.Errorf("the disk fetched by h3 has a backing file %q: it was not flattened", b)
	}
	if c := v1alpha1.FindCondition(l1.Status.Conditions, v1alpha1.DiskConditionMigrating); c == nil || c.Reason != v1alpha1.DiskReasonMoved ||
		!strings.Contains(c.Message, `moved from storage class "local" on node h1 to "local" on node h3`) {
		t.Errorf("the Migrating condition after the move: %+v", c)
	}
	waitFor(t, "h1's file and export to go after the move to h3", func() bool {
		exports, _ := os.ReadDir(filepath.Join(h1.DataDir, "run", "disk-exports"))
		return !storageFileThere(l1OnH1) && len(exports) == 0
	})
	// A node's credential cannot read a disk's data it does not copy.
	if _, err := h2.NodeClient(t).Download(ctxT(t), client.Path("virtualdisks", "default", "rks-cl-l1", "data"), nil); !client.IsForbidden(err) {
		t.Errorf("h2's node credential reading the data of a disk on h3: %v, want 403", err)
	}
	// Deleting the disk on h2: h2's agent removes its file, then the disk goes.
	l2 := storageDisk(t, s, "rks-cl-l2")
	l2File := filepath.Join(h2.DataDir, "pools", "default", "disks", l2.UID+".qcow2")
	if !storageFileThere(l2File) {
		t.Fatalf("the disk moved to h2 has no file %s", l2File)
	}
	s.MustCLI("", "delete", "vd", "rks-cl-l2", "--wait", "--timeout", "2m")
	if storageFileThere(l2File) {
		t.Errorf("the deleted disk's file on h2 is still there: %s", l2File)
	}

	// A disk on the Shared class: the VM pinned to h2 boots from it.
	clusterApply(s, clusterDiskManifest{Name: "rks-cl-s1", Size: "1Gi", StorageClass: "rks-cl-shared", Image: img}.YAML())
	clusterWaitDisks(s, "rks-cl-s1")
	sd := storageDisk(t, s, "rks-cl-s1")
	file := filepath.Join(c.Shared, "rks-storage", "disks", sd.UID+".qcow2")
	if sd.Status.NodeName != "" || !storageFileThere(file) {
		t.Fatalf("a Shared disk: node %q, file %s there: %v", sd.Status.NodeName, file, storageFileThere(file))
	}
	if b := storageBacking(t, file); !strings.HasPrefix(b, filepath.Join(c.Shared, "rks-storage", "images", "sha256-")) {
		t.Errorf("the Shared disk's backing file is %q, want the class's image copy", b)
	}
	clusterApply(s, clusterStorageVM("rks-cl-shared", "h2", "rks-cl-s1"))
	v = clusterBoot(t, s, "rks-cl-shared", "h2")
	if _, err := os.Stat(filepath.Join(h2.DataDir, "run", "vms", v.UID, "qemu.pid")); err != nil {
		t.Errorf("h2 runs no QEMU of the VM: %v", err)
	}
	if _, err := os.Stat(filepath.Join(h1.DataDir, "run", "vms", v.UID)); !os.IsNotExist(err) {
		t.Errorf("h1 has a run directory of the VM on h2 (stat: %v)", err)
	}

	// Shared -> h2's Local storage, done by h2's agent (the control plane cannot reach h2's
	// pool); the VM, now without a node selector, is pinned to h2 by its disk and boots.
	s.MustCLI("", "delete", "vm", "rks-cl-shared", "--wait")
	onH2 := filepath.Join(h2.DataDir, "pools", "default", "disks", sd.UID+".qcow2")
	out = s.MustCLI("", "disk", "move", "rks-cl-s1", "--storage-class", "local", "--node", "h2", "--timeout", "3m")
	if !strings.Contains(out, "moved from storage class rks-cl-shared to local on node h2") {
		t.Errorf("rakhsh disk move --node h2 printed %q", out)
	}
	waitFor(t, "the Shared file to go after the move to h2", func() bool { return !storageFileThere(file) })
	sd = storageDisk(t, s, "rks-cl-s1")
	if sd.Status.StorageClassName != "local" || sd.Status.NodeName != "h2" || !storageFileThere(onH2) {
		t.Fatalf("after the move to h2: class %q node %q, file on h2 %v", sd.Status.StorageClassName, sd.Status.NodeName, storageFileThere(onH2))
	}
	clusterApply(s, clusterStorageVM("rks-cl-shared", "", "rks-cl-s1"))
	v = clusterBoot(t, s, "rks-cl-shared", "h2")
	// The guest writes a marker on the disk, which must move with it.
	migrateConsoleType(t, h2, v.UID, "echo RKMOVE-2718 > /dev/vda; sync; echo RK''WROTE")
	vmWaitSerial(t, s, "rks-cl-shared", "RKWROTE", 1)
	s.MustCLI("", "delete", "vm", "rks-cl-shared", "--wait")

	// h2's Local storage -> h3's: h3's agent fetches the file from h2's stream service (the
	// disk is whole on h2, so it is served as it is); the VM follows the disk to h3 and
	// reads the marker.
	onH3 := filepath.Join(h3.DataDir, "pools", "default", "disks", sd.UID+".qcow2")
	s.MustCLI("", "disk", "move", "rks-cl-s1", "--storage-class", "local", "--node", "h3", "--timeout", "3m")
	sd = storageDisk(t, s, "rks-cl-s1")
	if sd.Status.NodeName != "h3" || !storageFileThere(onH3) {
		t.Fatalf("after the move from h2 to h3: node %q, file on h3 %v", sd.Status.NodeName, storageFileThere(onH3))
	}
	waitFor(t, "h2's file to go after the move to h3", func() bool { return !storageFileThere(onH2) })
	clusterApply(s, clusterStorageVM("rks-cl-shared", "", "rks-cl-s1"))
	v = clusterBoot(t, s, "rks-cl-shared", "h3")
	migrateConsoleType(t, h3, v.UID, "echo RKREAD $(head -c 11 /dev/vda)")
	vmWaitSerial(t, s, "rks-cl-shared", "RKREAD RKMOVE-2718", 1)
	s.MustCLI("", "delete", "vm", "rks-cl-shared", "--wait")

	// And back to Shared, by h3's agent.
	s.MustCLI("", "disk", "move", "rks-cl-s1", "--storage-class", "rks-cl-shared", "--timeout", "3m")
	waitFor(t, "h3's file to go after the move back", func() bool { return !storageFileThere(onH3) })
	sd = storageDisk(t, s, "rks-cl-s1")
	if sd.Status.StorageClassName != "rks-cl-shared" || sd.Status.NodeName != "" || !storageFileThere(file) {
		t.Fatalf("after the move back to Shared: class %q node %q, shared file %v", sd.Status.StorageClassName, sd.Status.NodeName, storageFileThere(file))
	}
}
