package agent

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestImageCacheGC: a cached image that a disk in the host's pools or in a Local class's
// directory is a linked clone of, or that a process has open, is kept and marked used now;
// one unused for the expiry is removed with the leftover of a fetch, under its lock; one used
// more recently stays.
func TestImageCacheGC(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Fatal("qemu-img missing: apt-get install qemu-utils")
	}
	data, classDir := t.TempDir(), t.TempDir()
	cache := imageCacheDir(data)
	if err := os.MkdirAll(cache, 0o700); err != nil {
		t.Fatal(err)
	}
	sha := func(c byte) string { return strings.Repeat(string(c), 64) }
	old := time.Now().Add(-48 * time.Hour)
	mk := func(p string, format bool) {
		t.Helper()
		if format {
			if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", p, "1M").CombinedOutput(); err != nil {
				t.Fatalf("%v %s", err, out)
			}
		} else if err := os.WriteFile(p, []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	clone := func(disk, backing string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(disk), 0o700); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing, disk, "1M").CombinedOutput(); err != nil {
			t.Fatalf("%v %s", err, out)
		}
	}
	for _, c := range "abcde" {
		mk(filepath.Join(cache, sha(byte(c))), true)
	}
	mk(filepath.Join(cache, sha('f')+".part"), false)
	// a: a disk in the host's default pool (absolute backing name); b: a disk of a Local
	// class in its own directory (relative name), under a snapshot overlay; c: open in a
	// process; d: unused, old; e: unused, used an hour ago.
	clone(filepath.Join(data, "pools", "default", "disks", "d1.qcow2"), filepath.Join(cache, sha('a')))
	rel, _ := filepath.Rel(filepath.Join(classDir, "disks"), filepath.Join(cache, sha('b')))
	clone(filepath.Join(classDir, "disks", "d2.qcow2"), rel)
	clone(filepath.Join(classDir, "snapshots", "s2.qcow2"), filepath.Join(classDir, "disks", "d2.qcow2"))
	f, err := os.Open(filepath.Join(cache, sha('c'))) // held open, as by a QEMU
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recent := time.Now().Add(-time.Hour)
	_ = os.Chtimes(filepath.Join(cache, sha('e')), recent, recent)

	// The class is reached through a symbolic link, as a Local class's path may be.
	link := filepath.Join(t.TempDir(), "class")
	if err := os.Symlink(classDir, link); err != nil {
		t.Fatal(err)
	}
	used, err := cacheReferences(cache, []string{link, filepath.Join(data, "pools", "default")}, []int{os.Getpid()})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range "abc" {
		if !used[sha(byte(c))] {
			t.Errorf("%c…: not seen as used (%v)", c, used)
		}
	}
	if used[sha('d')] || used[sha('e')] {
		t.Errorf("unused images seen as used: %v", used)
	}
	var mu sync.Mutex
	locked := map[string]int{}
	lock := func(s string) func() {
		mu.Lock()
		locked[s]++
		mu.Unlock()
		return func() {}
	}
	now := time.Now()
	removed := pruneImageCache(cache, used, now, 24*time.Hour, lock)
	var names []string
	for _, r := range removed {
		names = append(names, filepath.Base(r.path))
	}
	if len(removed) != 2 || !strings.Contains(strings.Join(names, ","), sha('d')) || !strings.Contains(strings.Join(names, ","), sha('f')+".part") {
		t.Fatalf("removed %v, want d… and f….part", names)
	}
	if locked[sha('d')] != 1 || locked[sha('f')] != 1 {
		t.Errorf("removals under the image's lock: %v", locked)
	}
	for _, c := range "abce" {
		st, err := os.Stat(filepath.Join(cache, sha(byte(c))))
		if err != nil {
			t.Fatalf("%c… removed: %v", c, err)
		}
		if c != 'e' && now.Sub(st.ModTime()) > time.Minute {
			t.Errorf("%c… is used and keeps its old time %s", c, st.ModTime())
		}
	}
	// A qcow2 file whose header does not parse (so its backing file cannot be told) stops
	// the pass.
	odd := filepath.Join(classDir, "disks", "odd.qcow2")
	if err := os.WriteFile(odd, append([]byte(q2Magic), make([]byte, 200)...), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := cacheReferences(cache, []string{classDir}, nil); err == nil {
		t.Error("a qcow2 file whose backing cannot be read did not stop the pass")
	}
	_ = os.Remove(odd)
	// The disk still opens: its backing file is there.
	if out, err := exec.Command("qemu-img", "info", "--backing-chain", filepath.Join(classDir, "snapshots", "s2.qcow2")).CombinedOutput(); err != nil {
		t.Errorf("the snapshot's chain after the collection: %v %s", err, out)
	}
}
