package images_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/rakhsh/rakhsh/internal/images"
)

// smallFS mounts a tmpfs of size bytes on a new directory until the test ends.
func smallFS(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a small tmpfs needs root: run this test as root (CI does)")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "rakhsh-test", dir).CombinedOutput(); err != nil {
		t.Fatalf("mounting a tmpfs on %s: %v\n%s", dir, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("unmounting %s: %v\n%s", dir, err, out)
		}
	})
	return dir
}

func avail(t *testing.T, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize
}

// gzipBomb is a gzip stream of n bytes of non-zero data (holes do not help) that is about a
// thousand times smaller.
func gzipBomb(t *testing.T, n int) []byte {
	t.Helper()
	block := bytes.Repeat([]byte("rakhsh decompression bomb "), 1<<16/26+1)[:1<<16]
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	for w := 0; w < n; w += len(block) {
		if _, err := zw.Write(block); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// A compressed file that unpacks to more than the file system holds stops at the free-space
// reserve, fails cleanly and leaves the file system as it was.
func TestDecompressionBombKeepsReserve(t *testing.T) {
	fs := smallFS(t, "64m")
	store := filepath.Join(fs, "images")
	if err := os.Mkdir(store, 0o700); err != nil {
		t.Fatal(err)
	}
	bomb := gzipBomb(t, 256<<20)
	t.Logf("a %d-byte gzip file of 256MiB on a 64MiB file system", len(bomb))
	before := avail(t, store)

	var mu sync.Mutex
	lowest := before
	var total int64
	guard := &images.SpaceGuard{MinFree: images.MinFree{Percent: 10}, Step: 4 << 20, Statfs: func(dir string) (images.FSSpace, error) {
		var st syscall.Statfs_t
		if err := syscall.Statfs(dir, &st); err != nil {
			return images.FSSpace{}, err
		}
		sp := images.FSSpace{Avail: int64(st.Bavail) * st.Bsize, Total: int64(st.Blocks) * st.Bsize}
		mu.Lock()
		lowest, total = min(lowest, sp.Avail), sp.Total
		mu.Unlock()
		return sp, nil
	}}
	_, err := images.ImportStream(context.Background(), bytes.NewReader(bomb), int64(len(bomb)), nil, filepath.Join(store, "bomb"),
		images.Options{Space: guard, MaxUnpackedSize: 1 << 30})
	var ie *images.Error
	if !errors.As(err, &ie) || ie.Reason != images.ReasonInsufficientStorage {
		t.Fatalf("got %v, want %s", err, images.ReasonInsufficientStorage)
	}
	for _, s := range []string{"the image store is full", "free-space reserve of 6.4Mi (10% of 64Mi)", "--min-free-space"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("the message %q does not say %q", err, s)
		}
	}
	t.Log(err)
	if reserve := total / 10; lowest < reserve {
		t.Errorf("the free space went down to %d bytes, below the reserve of %d", lowest, reserve)
	}
	left, err := os.ReadDir(store)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Errorf("files left in the store: %v", left)
	}
	if after := avail(t, store); after != before {
		t.Errorf("%d bytes free after the import, %d before", after, before)
	}
	if g := guard.Claimed(store); g != 0 {
		t.Errorf("%d bytes still claimed", g)
	}
}

// Without a reserve the same bomb fills the file system to its last bytes: the test above
// checks something.
func TestDecompressionBombWithoutReserveFillsTheDisk(t *testing.T) {
	fs := smallFS(t, "16m")
	before := avail(t, fs)
	bomb := gzipBomb(t, 64<<20)
	lowest := before
	guard := &images.SpaceGuard{MinFree: images.MinFree{}, Step: 1 << 20, Statfs: func(dir string) (images.FSSpace, error) {
		var st syscall.Statfs_t
		err := syscall.Statfs(dir, &st)
		lowest = min(lowest, int64(st.Bavail)*st.Bsize)
		return images.FSSpace{Avail: int64(st.Bavail) * st.Bsize, Total: int64(st.Blocks) * st.Bsize}, err
	}}
	_, err := images.ImportStream(context.Background(), bytes.NewReader(bomb), int64(len(bomb)), nil, filepath.Join(fs, "bomb"),
		images.Options{Space: guard, MaxUnpackedSize: 1 << 30})
	var ie *images.Error
	if !errors.As(err, &ie) || ie.Reason != images.ReasonInsufficientStorage {
		t.Fatalf("got %v, want %s", err, images.ReasonInsufficientStorage)
	}
	if lowest > 1<<20 {
		t.Fatalf("the free space went down to %d bytes only", lowest)
	}
	if left, _ := os.ReadDir(fs); len(left) != 0 {
		t.Errorf("files left: %v", left)
	}
	if after := avail(t, fs); after != before {
		t.Errorf("%d bytes free after the import, %d before", after, before)
	}
}
