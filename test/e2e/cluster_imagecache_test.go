package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// TestClusterImageCacheGC, on the three-host cluster: h2's agent, restarted with a short
// --image-cache-expiry, removes a cached image nothing uses (and a leftover partial fetch),
// keeps the image a disk made on h2 is a linked clone of for as long as the disk exists
// (several passes), and removes it once the disk is deleted; the agent is given its own flags
// back at the end.
func TestClusterImageCacheGC(t *testing.T) {
	c, s, img := clusterStart(t, sharedCluster)
	t.Cleanup(func() { s.CLI("", "delete", "vd", "rkc-h2", "--ignore-not-found", "--wait") })
	// The VM some cluster tests share (clusterVM, made again when a test needs it) boots the
	// cluster image on h2, which keeps it in h2's cache: it goes first, whichever of those
	// tests ran before this one.
	s.MustCLI("", "delete", "vm", clusterVMName, "--ignore-not-found", "--wait", "--timeout", "2m")
	var cvi v1alpha1.ClusterVirtualImage
	if err := s.Client().Get(context.Background(), "clustervirtualimages", "", img, &cvi); err != nil || cvi.Status.SHA256 == "" {
		t.Fatalf("the cluster image: %+v %v", cvi.Status, err)
	}
	h2 := c.Host("h2")
	cache := filepath.Join(h2.DataDir, "pools", "default", "cache")
	clusterApply(s, clusterDiskManifest{Name: "rkc-h2", Node: "h2", Image: img}.YAML())
	clusterWaitDisks(s, "rkc-h2")
	used := filepath.Join(cache, cvi.Status.SHA256)
	if !storageFileThere(used) {
		t.Fatalf("the image is not in h2's cache: %s", used)
	}
	// An image no disk or VM uses any more, and a fetch cut off long ago.
	stale := filepath.Join(cache, strings.Repeat("5", 64))
	part := filepath.Join(cache, strings.Repeat("6", 64)+".part")
	old := time.Now().Add(-time.Hour)
	for _, p := range []string{stale, part} {
		if err := os.WriteFile(p, []byte("an image nobody uses"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	h2.RestartWithArgs(t, "--image-cache-expiry", "3s", "--image-cache-gc-interval", "1s")
	restarted := time.Now()
	waitFor(t, "the unused image and the partial fetch removed from h2's cache", func() bool {
		return !storageFileThere(stale) && !storageFileThere(part)
	})
	// The disk's image is marked used by the passes, and still there at a pass that came
	// later than the expiry after the restart (its time says when the pass was).
	waitFor(t, "the disk's image marked used by a pass 4 s after the restart", func() bool {
		st, err := os.Stat(used)
		if err != nil {
			t.Fatalf("the image a disk on h2 is a clone of was removed: %v", err)
		}
		return st.ModTime().After(restarted.Add(4 * time.Second))
	})
	if !strings.Contains(h2.Logs(t), "image cache: removed an image unused") {
		t.Error("the agent's log does not say what it removed")
	}
	s.MustCLI("", "delete", "vd", "rkc-h2", "--wait", "--timeout", "2m")
	waitFor(t, "the image removed from h2's cache once no disk uses it", func() bool { return !storageFileThere(used) })
}
