package e2e

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/images/imagetest"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// waitObj polls an object through the API until cond holds or 60 s pass.
func waitObj[T any](t *testing.T, s *Serve, resource, ns, name, what string, cond func(*T) bool) *T {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var last T
	for time.Now().Before(deadline) {
		var obj T
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := s.Client().Get(ctx, resource, ns, name, &obj)
		cancel()
		if err == nil {
			last = obj
			if cond(&obj) {
				return &obj
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s %s: not %s within 60s; last seen: %+v", resource, name, what, last)
	return nil
}

// TestImageImportAndDisks drives the image and disk controllers of a real `rakhsh serve`
// through manifests: an HTTP qcow2 image, a checksum mismatch, a linked-clone disk, and the
// cleanup order (the image outlives the disk cloned from it).
func TestImageImportAndDisks(t *testing.T) {
	imagetest.Need(t, "qemu-img", "prlimit")
	s := StartServe(t)
	src := t.TempDir()
	imagetest.QCOW2(t, src, "debian.qcow2", "64M")
	base := imagetest.Serve(t, src)

	applyDocs(s, cviDoc("debian", httpSource(base+"/debian.qcow2")),
		cviDoc("corrupt", httpChecksumSource(base+"/debian.qcow2", "sha256", strings.Repeat("ab", 32))),
		diskDoc("root", "10Gi", objectRefSource("{kind: ClusterVirtualImage, name: debian}")))

	img := waitCVI(t, s, "debian", v1alpha1.ImagePhaseReady)
	if img.Status.Format != "qcow2" || img.Status.Size == nil || img.Status.Size.Unpacked != "64Mi" {
		t.Fatalf("image status: %+v", img.Status)
	}
	imgPath := storage.ImagePath(s.DataDir, img.UID)
	if _, err := os.Stat(imgPath); err != nil {
		t.Fatalf("image file: %v", err)
	}
	out := s.MustCLI("", "get", "cvi", "debian")
	if !strings.Contains(out, "Ready") || !strings.Contains(out, "64Mi") {
		t.Fatalf("rakhsh get cvi:\n%s", out)
	}
	// The store is content-addressed: a second image of the same file shares its inode, and
	// the content name goes with the last image that has it.
	applyDocs(s, cviDoc("debian-again", httpSource(base+"/debian.qcow2")))
	again := waitCVI(t, s, "debian-again", v1alpha1.ImagePhaseReady)
	contentPath := storage.ContentPath(s.DataDir, img.Status.SHA256)
	st1, err1 := os.Stat(imgPath)
	st2, err2 := os.Stat(storage.ImagePath(s.DataDir, again.UID))
	st3, err3 := os.Stat(contentPath)
	if err1 != nil || err2 != nil || err3 != nil || again.Status.SHA256 != img.Status.SHA256 || !os.SameFile(st1, st2) || !os.SameFile(st1, st3) {
		t.Fatalf("two images of one file: %v %v %v, sha256 %s and %s: not one stored file", err1, err2, err3, img.Status.SHA256, again.Status.SHA256)
	}
	s.MustCLI("", "delete", "cvi", "debian-again", "--wait", "--timeout", "60s")
	if _, err := os.Stat(contentPath); err != nil {
		t.Fatalf("the content name went while image debian still has it: %v", err)
	}

	bad := waitCVI(t, s, "corrupt", v1alpha1.ImagePhaseFailed)
	if c := v1alpha1.FindCondition(bad.Status.Conditions, "Ready"); c == nil || c.Reason != "ChecksumMismatch" {
		t.Fatalf("checksum mismatch: conditions %+v", bad.Status.Conditions)
	}

	d := waitDisk(t, s, "root", v1alpha1.DiskPhaseReady)
	if d.Status.Capacity != "10Gi" || d.Status.Format != "qcow2" {
		t.Fatalf("disk status: %+v", d.Status)
	}
	diskPath := storage.DiskPath(s.DataDir, "default", d.UID)
	info, err := storage.Info(context.Background(), diskPath, "qcow2")
	if err != nil || info.BackingFile != imgPath || info.VirtualSize != 10<<30 {
		t.Fatalf("disk file: %+v %v", info, err)
	}

	// The image is in use by the disk: deleting it waits for the disk.
	s.MustCLI("", "delete", "cvi", "debian")
	waitObj(t, s, "clustervirtualimages", "", "debian", "InUse", func(i *v1alpha1.ClusterVirtualImage) bool {
		c := v1alpha1.FindCondition(i.Status.Conditions, "InUse")
		return c != nil && c.Status == "True"
	})
	if _, err := os.Stat(imgPath); err != nil {
		t.Fatal("the image file went while a disk is cloned from it")
	}

	// A restart leaves the Ready image and disk alone.
	s.Stop()
	s.Start()
	d2 := waitDisk(t, s, "root", v1alpha1.DiskPhaseReady)
	if d2.UID != d.UID {
		t.Fatal("the disk changed identity across a restart")
	}

	s.MustCLI("", "delete", "vd", "root", "--wait", "--timeout", "60s")
	waitGone := func(resource, ns, name string) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := s.Client().Get(ctx, resource, ns, name, &map[string]any{})
			cancel()
			if client.IsNotFound(err) {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatalf("%s %s was not deleted within 60s", resource, name)
	}
	waitGone("virtualdisks", "default", "root")
	waitGone("clustervirtualimages", "", "debian")
	for _, p := range []string{diskPath, imgPath, contentPath} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s was not removed", p)
		}
	}
}
