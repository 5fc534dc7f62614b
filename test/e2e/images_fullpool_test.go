package e2e

import (
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/images/imagetest"
)

// mountTmpfs mounts a tmpfs of size (e.g. "8m") on dir and unmounts it when the test ends.
func mountTmpfs(t *testing.T, dir, size string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test mounts a tmpfs: run it as root")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs on %s: %v %s", dir, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v %s", dir, err, out)
		}
	})
}

// TestFullPool: an import into a full image store and a full copy into a full disk pool fail
// with reason InsufficientStorage and a message that says so, and leave no file behind.
func TestFullPool(t *testing.T) {
	imagetest.Need(t, "qemu-img", "prlimit")
	s := &Serve{t: t, DataDir: t.TempDir()}
	imagesDir := filepath.Join(s.DataDir, "images")
	disksDir := filepath.Join(s.DataDir, "pools", "default", "disks")
	mountTmpfs(t, imagesDir, "12m")
	mountTmpfs(t, disksDir, "3m")
	startOwnServe(s)

	src := t.TempDir()
	imagetest.Raw(t, src, "big.raw", 32<<20) // 32 MiB sent over HTTP: more than the 12 MiB store
	// 6 MiB of incompressible data: fits the store, not the 3 MiB disk pool.
	noise := make([]byte, 6<<20)
	if _, err := rand.Read(noise); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "noise.raw"), noise, 0o644); err != nil {
		t.Fatal(err)
	}
	imagetest.Convert(t, filepath.Join(src, "noise.raw"), src, "noise.qcow2", "qcow2") // stored as it is
	base := imagetest.Serve(t, src)
	applyDocs(s, cviDoc("noise", httpSource(base+"/noise.qcow2")), `apiVersion: virtualization.rakhsh.io/v1alpha1
kind: VirtualDisk
metadata: {name: copy}
spec:
  cloneMode: Full
  dataSource:
    type: ObjectRef
    objectRef: {kind: ClusterVirtualImage, name: noise}
`)

	waitCVI(t, s, "noise", v1alpha1.ImagePhaseReady)
	d := waitDisk(t, s, "copy", v1alpha1.DiskPhaseFailed)
	if c := readyCond(d.Status.Conditions); c == nil || c.Reason != "InsufficientStorage" || !strings.Contains(c.Message, `storage class "local" is full`) {
		t.Fatalf("full copy into a full pool: %+v", d.Status.Conditions)
	}
	applyDocs(s, cviDoc("big", httpSource(base+"/big.raw")))
	big := waitCVI(t, s, "big", v1alpha1.ImagePhaseFailed)
	if c := readyCond(big.Status.Conditions); c == nil || c.Reason != "InsufficientStorage" || !strings.Contains(c.Message, "image store is full") {
		t.Fatalf("import into a full store: %+v", big.Status.Conditions)
	}
	// Nothing is left behind: the store holds only the one image that fit, the pool nothing.
	ents, _ := os.ReadDir(imagesDir)
	ents = slices.DeleteFunc(ents, func(e os.DirEntry) bool { return e.IsDir() }) // sha256/: content names
	if len(ents) != 1 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("image store after the failed import: %v, want only the noise image", names)
	}
	if ents, _ := os.ReadDir(disksDir); len(ents) != 0 {
		t.Errorf("disk pool after the failed copy: %d files left", len(ents))
	}
	// Free the store's objects so that the tmpfs can be unmounted.
	s.MustCLI("", "delete", "vd", "copy", "--wait", "--timeout", "60s")
	s.MustCLI("", "delete", "cvi", "big", "noise", "--wait", "--timeout", "60s")
}
