package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/images/imagetest"
)

// TestDecompressionBombStopsAtReserve: an xz file of 40 KiB that unpacks to 256 MiB of
// non-zero data, imported into an image store on a 64 MiB file system with a 16Mi reserve,
// fails with InsufficientStorage naming the reserve, and leaves the file system as it was.
func TestDecompressionBombStopsAtReserve(t *testing.T) {
	imagetest.Need(t, "qemu-img", "prlimit", "xz")
	s := &Serve{t: t, DataDir: t.TempDir(), Args: []string{"--min-free-space", "16Mi"}}
	imagesDir := filepath.Join(s.DataDir, "images")
	mountTmpfs(t, imagesDir, "64m")
	startOwnServe(s)
	var st syscall.Statfs_t
	free := func() int64 {
		if err := syscall.Statfs(imagesDir, &st); err != nil {
			t.Fatal(err)
		}
		return int64(st.Bavail) * st.Bsize
	}
	before := free()

	src := t.TempDir()
	xz := exec.Command("xz", "-T1", "-0", "--stdout")
	xz.Stdin = bytes.NewReader(bytes.Repeat([]byte("rakhsh decompression bomb\n"), 256<<20/26))
	bomb, err := xz.Output()
	if err != nil {
		t.Fatalf("xz: %v", err)
	}
	if err := os.WriteFile(filepath.Join(src, "bomb.raw.xz"), bomb, 0o644); err != nil {
		t.Fatal(err)
	}
	base := imagetest.Serve(t, src)
	applyDocs(s, cviDoc("bomb", httpSource(base+"/bomb.raw.xz")))
	img := waitCVI(t, s, "bomb", v1alpha1.ImagePhaseFailed, v1alpha1.ImagePhaseReady)
	c := readyCond(img.Status.Conditions)
	if img.Status.Phase != v1alpha1.ImagePhaseFailed || c == nil || c.Reason != "InsufficientStorage" ||
		!strings.Contains(c.Message, "free-space reserve of 16Mi") || !strings.Contains(c.Message, "--min-free-space") {
		t.Fatalf("a %d-byte xz bomb: phase %s, condition %+v", len(bomb), img.Status.Phase, c)
	}
	t.Logf("%d-byte xz bomb: %s", len(bomb), c.Message)
	ents, _ := os.ReadDir(imagesDir)
	for _, e := range ents {
		if !e.IsDir() {
			t.Errorf("left in the image store: %s", e.Name())
		}
	}
	if after := free(); after != before {
		t.Errorf("%d bytes free after the failed import, %d before", after, before)
	}
	s.MustCLI("", "delete", "cvi", "bomb", "--wait", "--timeout", "60s")
}
