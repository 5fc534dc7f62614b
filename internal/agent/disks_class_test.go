package agent

import "testing"

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
