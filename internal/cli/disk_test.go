package cli

import (
	"strings"
	"testing"
)

// TestDiskMoveRefusals: rakhsh disk move refuses, before changing anything, a disk a running
// VM uses, a disk that is not Ready, a class that does not exist, --node with a Shared class
// and a move between two nodes' local storage; a disk already in the class is left alone.
func TestDiskMoveRefusals(t *testing.T) {
	f := newFakeServer(t)
	disk := func(name, phase, class, node string, mounted bool) object {
		st := object{"phase": phase, "storageClassName": class}
		if node != "" {
			st["nodeName"] = node
		}
		if mounted {
			st["attachedToVirtualMachines"] = []any{object{"name": "vm1", "mounted": true}}
		}
		return object{"apiVersion": "virtualization.rakhsh.io/v1alpha1", "kind": "VirtualDisk",
			"metadata": object{"name": name, "namespace": "default"}, "status": st}
	}
	f.put("virtualdisks", disk("busy", "Ready", "local", "n1", true))
	f.put("virtualdisks", disk("new", "Provisioning", "local", "n1", false))
	f.put("virtualdisks", disk("idle", "Ready", "local", "n1", false))
	f.put("virtualdisks", disk("shared", "Ready", "nfs", "", false))
	f.put("storageclasses", object{"apiVersion": "virtualization.rakhsh.io/v1alpha1", "kind": "StorageClass",
		"metadata": object{"name": "nfs"}, "spec": object{"type": "Shared", "shared": object{"path": "/mnt/nfs"}}})
	f.put("storageclasses", object{"apiVersion": "virtualization.rakhsh.io/v1alpha1", "kind": "StorageClass",
		"metadata": object{"name": "local"}, "spec": object{"type": "Local"}})
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"busy", "--storage-class", "nfs"}, `used by the running VirtualMachine "vm1": stop it first`},
		{[]string{"new", "--storage-class", "nfs"}, "is Provisioning: only a Ready disk can be moved"},
		{[]string{"idle", "--storage-class", "ceph"}, `StorageClass "ceph" does not exist`},
		{[]string{"idle", "--storage-class", "nfs", "--node", "n2"}, "--node is only for a Local class"},
		{[]string{"idle", "--storage-class", "local", "--node", "n2"}, `node "n2" does not exist`},
		{[]string{"idle"}, "--storage-class is required"},
	} {
		out, errOut, code := f.run(t, "", append([]string{"disk", "move"}, c.args...)...)
		if code == 0 || !strings.Contains(errOut, c.want) {
			t.Errorf("disk move %v: code %d out %q err %q; want an error saying %q", c.args, code, out, errOut, c.want)
		}
	}
	out, errOut, code := f.run(t, "", "disk", "move", "shared", "--storage-class", "nfs")
	if code != 0 || out != "virtualdisk/shared is already in storage class nfs\n" {
		t.Errorf("a disk already in the class: code %d out %q err %q", code, out, errOut)
	}
	for _, r := range f.requests {
		if strings.HasPrefix(r, "PATCH") || strings.HasPrefix(r, "PUT") {
			t.Errorf("a refused move changed something: %s", r)
		}
	}
}

// TestDiskMoveRequests: a move to another node within the class is asked for with the
// move-to-node annotation (storage-node untouched); naming the class again without --node
// takes back a move that is asked for but not started, and says so.
func TestDiskMoveRequests(t *testing.T) {
	f := newFakeServer(t)
	f.put("nodes", object{"apiVersion": "virtualization.rakhsh.io/v1alpha1", "kind": "Node", "metadata": object{"name": "n2"}})
	f.put("storageclasses", object{"apiVersion": "virtualization.rakhsh.io/v1alpha1", "kind": "StorageClass",
		"metadata": object{"name": "local"}, "spec": object{"type": "Local"}})
	f.put("virtualdisks", object{"apiVersion": "virtualization.rakhsh.io/v1alpha1", "kind": "VirtualDisk",
		"metadata": object{"name": "d1", "namespace": "default", "annotations": object{"virtualization.rakhsh.io/storage-node": "n1"}},
		"spec":     object{"persistentVolumeClaim": object{"storageClassName": "local"}},
		"status":   object{"phase": "Ready", "storageClassName": "local", "nodeName": "n1"}})
	_, errOut, code := f.run(t, "", "disk", "move", "d1", "--storage-class", "local", "--node", "n2", "--no-wait")
	if code != 0 {
		t.Fatalf("disk move --node n2: exit %d: %s", code, errOut)
	}
	annotations := func() map[string]any {
		md, _ := f.get("virtualdisks", "default", "d1")["metadata"].(map[string]any)
		ann, _ := md["annotations"].(map[string]any)
		return ann
	}
	if ann := annotations(); ann["virtualization.rakhsh.io/move-to-node"] != "n2" || ann["virtualization.rakhsh.io/storage-node"] != "n1" {
		t.Errorf("annotations after disk move --node n2: %v, want move-to-node n2 and storage-node n1 untouched", ann)
	}
	// The request waits (its VM runs, say): naming the class again takes it back.
	out, errOut, code := f.run(t, "", "disk", "move", "d1", "--storage-class", "local", "--timeout", "5s")
	if code != 0 || !strings.Contains(out, "the move was called off; it stays in storage class local") {
		t.Fatalf("calling off a waiting move: exit %d out %q err %q", code, out, errOut)
	}
	if ann := annotations(); ann["virtualization.rakhsh.io/move-to-node"] != nil {
		t.Errorf("the move-to-node annotation stayed after the call-off: %v", ann)
	}
}
