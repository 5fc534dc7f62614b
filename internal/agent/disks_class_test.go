package agent

import (
	"strings"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// TestInsideClassDir: a backing file is accepted from a storage class directory only as one
// of its disks or image copies, never from elsewhere under or beside it.
func TestInsideClassDir(t *testing.T) {
	for _, c := range []struct {
		dir, p string
		want   bool
	}{
		{"/mnt/nfs", "/mnt/nfs/images/sha256-abc", true},
		{"/mnt/nfs", "/mnt/nfs/disks/u.qcow2", true},
		{"/mnt/nfs", "/mnt/nfs/images", false},
		{"/mnt/nfs", "/mnt/nfs/images/x/y", false},
		{"/mnt/nfs", "/mnt/nfs/other/f", false},
		{"/mnt/nfs", "/mnt/nfs/images/../../../etc/passwd", false},
		{"/mnt/nfs", "/mnt/nfs2/images/x", false},
		{"/mnt/nfs", "/etc/passwd", false},
		{"", "/mnt/nfs/images/x", false},
	} {
		if got := insideClassDir(c.dir, c.p); got != c.want {
			t.Errorf("insideClassDir(%q, %q) = %v, want %v", c.dir, c.p, got, c.want)
		}
	}
}

// TestDiskHome: a disk's file is found by its class on this node; a disk on another node's
// Local storage is refused with a message naming both nodes.
func TestDiskHome(t *testing.T) {
	const uid = "0a0a0a0a-1111-2222-3333-444444444444"
	disk := func(class, node string) *v1alpha1.VirtualDisk {
		d := &v1alpha1.VirtualDisk{ObjectMeta: v1alpha1.ObjectMeta{Name: "root", UID: uid}}
		d.Status.StorageClassName, d.Status.NodeName = class, node
		return d
	}
	local := &v1alpha1.StorageClass{ObjectMeta: v1alpha1.ObjectMeta{Name: "local"}, Spec: v1alpha1.StorageClassSpec{Type: v1alpha1.StorageClassTypeLocal}}
	fast := &v1alpha1.StorageClass{ObjectMeta: v1alpha1.ObjectMeta{Name: "fast"},
		Spec: v1alpha1.StorageClassSpec{Type: v1alpha1.StorageClassTypeLocal, Local: &v1alpha1.StorageClassLocal{Path: "/srv/fast"}}}
	nfs := &v1alpha1.StorageClass{ObjectMeta: v1alpha1.ObjectMeta{Name: "nfs"},
		Spec: v1alpha1.StorageClassSpec{Type: v1alpha1.StorageClassTypeShared, Shared: &v1alpha1.StorageClassShared{Path: "/mnt/nfs"}}}
	for _, c := range []struct {
		name             string
		d                *v1alpha1.VirtualDisk
		sc               *v1alpha1.StorageClass
		path, dir        string
		errHas1, errHas2 string
	}{
		{"default pool", disk("local", "n1"), local, "/data/pools/default/disks/" + uid + ".qcow2", "", "", ""},
		{"before classes", disk("default", ""), nil, "/data/pools/default/disks/" + uid + ".qcow2", "", "", ""},
		{"local path", disk("fast", "n1"), fast, "/srv/fast/disks/" + uid + ".qcow2", "/srv/fast", "", ""},
		{"shared, any node", disk("nfs", ""), nfs, "/mnt/nfs/disks/" + uid + ".qcow2", "/mnt/nfs", "", ""},
		{"another node", disk("local", "n2"), local, "", "", "node n2's local storage", "not on this node n1"},
	} {
		path, dir, err := diskHome(c.d, c.sc, "/data", "n1")
		if c.errHas1 != "" {
			if err == nil || !strings.Contains(err.Error(), c.errHas1) || !strings.Contains(err.Error(), c.errHas2) {
				t.Errorf("%s: err %v, want one saying %q and %q", c.name, err, c.errHas1, c.errHas2)
			}
			continue
		}
		if err != nil || path != c.path || dir != c.dir {
			t.Errorf("%s: %q, %q, %v; want %q, %q", c.name, path, dir, err, c.path, c.dir)
		}
	}
}
