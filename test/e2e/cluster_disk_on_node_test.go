package e2e

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// TestClusterDiskOnNode: new disks of the Local class made directly on the node named by
// their storage-node annotation, by that node's agent: one from the cluster image on h2 (a
// linked clone over h2's image cache), a blank one on h3; a disk from another disk cannot be
// made there and says how to get it; a VM of the h2 disk runs on h2 and boots from it; the
// deleted disk's file goes from h2.
func TestClusterDiskOnNode(t *testing.T) {
	c, s, img := clusterStart(t, sharedCluster)
	t.Cleanup(func() {
		s.CLI("", "delete", "vm", "rkd-vm", "--ignore-not-found", "--wait")
		s.CLI("", "delete", "vd", "rkd-h2", "rkd-h3", "rkd-copy", "--ignore-not-found", "--wait")
	})
	clusterApply(s, clusterDiskManifest{Name: "rkd-h2", Node: "h2", Image: img}.YAML(), clusterDiskManifest{Name: "rkd-h3", Node: "h3", Size: "16Mi"}.YAML())
	for name, node := range map[string]string{"rkd-h2": "h2", "rkd-h3": "h3"} {
		s.MustCLI("", "wait", "vd", name, "--for", "phase=Ready", "--timeout", "2m")
		d := storageDisk(t, s, name)
		if d.Status.NodeName != node || d.Status.StorageClassName != "local" {
			t.Errorf("%s: node %q class %q, want %s and local", name, d.Status.NodeName, d.Status.StorageClassName, node)
		}
		file := filepath.Join(c.Host(node).DataDir, "pools", "default", "disks", d.UID+".qcow2")
		if !storageFileThere(file) {
			t.Errorf("%s: no file %s on %s", name, file, node)
		}
		if c := v1alpha1.FindCondition(d.Status.Conditions, v1alpha1.DiskConditionReady); c == nil || !strings.Contains(c.Message, "made by node "+node) {
			t.Errorf("%s: Ready condition %+v", name, c)
		}
		if node == "h2" {
			if b := storageBacking(t, file); !strings.HasPrefix(b, c.Host("h2").DataDir) {
				t.Errorf("the h2 disk's backing file %q is not in h2's image cache", b)
			}
		}
	}

	// A copy of another disk needs the control plane's files: it waits and says so.
	clusterApply(s, clusterDiskManifest{Name: "rkd-copy", Node: "h2", FromDisk: "rkd-h3"}.YAML())
	deadline := time.Now().Add(time.Minute)
	for {
		d := storageDisk(t, s, "rkd-copy")
		c := v1alpha1.FindCondition(d.Status.Conditions, v1alpha1.DiskConditionReady)
		if d.Status.Phase == v1alpha1.DiskPhasePending && c != nil && strings.Contains(c.Message, "rakhsh disk move --node h2") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a disk from a disk on h2: phase %s, condition %+v", d.Status.Phase, c)
		}
		time.Sleep(200 * time.Millisecond)
	}

	// Its VM runs on h2 and boots from it.
	clusterApply(s, clusterStorageVM("rkd-vm", "", "rkd-h2"))
	clusterBoot(t, s, "rkd-vm", "h2")
	s.MustCLI("", "delete", "vm", "rkd-vm", "--wait")
	d := storageDisk(t, s, "rkd-h2")
	s.MustCLI("", "delete", "vd", "rkd-h2", "--wait", "--timeout", "1m")
	if file := filepath.Join(c.Host("h2").DataDir, "pools", "default", "disks", d.UID+".qcow2"); storageFileThere(file) {
		t.Errorf("the deleted disk's file %s is still on h2", file)
	}
}
