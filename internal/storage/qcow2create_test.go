package storage

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestQCOW2Overlay checks the in-process overlay writer against the real qemu-img: the
// overlay passes `qemu-img check`, reports its backing file and size, reads as its backing
// image, and stays consistent after a guest-like write through qemu-io.
func TestQCOW2Overlay(t *testing.T) {
	for _, tool := range []string{"qemu-img", "qemu-io", "prlimit"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed: apt-get install qemu-utils util-linux", tool)
		}
	}
	dir := t.TempDir()
	ctx := context.Background()
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
		return string(out)
	}
	raw := filepath.Join(dir, "base.raw")
	run("qemu-img", "create", "-q", "-f", "raw", raw, "64M")
	run("qemu-io", "-f", "raw", "-c", "write -P 0x5a 1M 2M", raw)
	base := filepath.Join(dir, "base.qcow2")
	run("qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, base)
	for _, tc := range []struct {
		name, backing, format string
		size                  int64
	}{
		{"qcow2 backing, same size", base, "qcow2", 64 << 20},
		{"raw backing", raw, "raw", 64 << 20},
		{"1 GiB", base, "qcow2", 1 << 30},
		{"odd size", base, "qcow2", 3<<30 + 512},
		{"100 GiB", base, "qcow2", 100 << 30},
		{"100 TiB", base, "qcow2", 100 << 40},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, "overlay.qcow2")
			os.Remove(p)
			if err := CreateLinkedClone(ctx, p, tc.backing, tc.format, tc.size); err != nil {
				t.Fatal(err)
			}
			run("qemu-img", "check", "-q", "-f", "qcow2", p)
			info, err := Info(ctx, p, "qcow2")
			if err != nil {
				t.Fatal(err)
			}
			if info.VirtualSize != RoundSize(tc.size) || info.BackingFile != tc.backing || info.BackingFormat != tc.format {
				t.Fatalf("info: %+v", info)
			}
			// Unwritten, it reads as the backing image (and zeros beyond it).
			run("qemu-img", "compare", "-q", "-f", tc.format, "-F", "qcow2", tc.backing, p)
			run("qemu-io", "-f", "qcow2", "-c", "write -P 0xa5 1536K 64K", "-c", "write -P 0x11 40M 1M", p)
			run("qemu-img", "check", "-q", "-f", "qcow2", p)
			run("qemu-io", "-f", "qcow2", "-c", "read -P 0xa5 1536K 64K", "-c", "read -P 0x5a 1M 512K", "-c", "read -P 0x11 40M 1M", p)
		})
	}
}
