package storage_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rakhsh/rakhsh/internal/storage"
)

const (
	imgUID   = "0a0a0a0a-1111-2222-3333-444444444444"
	diskUID  = "0b0b0b0b-1111-2222-3333-444444444444"
	disk2UID = "0c0c0c0c-1111-2222-3333-444444444444"
)

// overlay makes path a qcow2 overlay whose header names backing (in backingFmt)
// with qemu-img itself (-u: without opening it), the way a hostile or edited file would look.
func overlay(t *testing.T, path, backing, backingFmt string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	args := []string{"create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", backingFmt, path, "1M"}
	if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img %v: %v\n%s", args, err, out)
	}
}

func TestCheckChain(t *testing.T) {
	need(t)
	ctx := context.Background()
	data := t.TempDir()
	img := storage.ImagePath(data, imgUID)
	if err := storage.CreateBlank(ctx, img, 1<<20); err != nil {
		t.Fatal(err)
	}
	disk := storage.DiskPath(data, storage.DefaultPool, diskUID)
	if err := storage.CreateLinkedClone(ctx, disk, img, "qcow2", 2<<20); err != nil {
		t.Fatal(err)
	}
	chain, err := storage.CheckChain(disk, "qcow2")
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 2 || chain[0].Path != disk || chain[1] != (storage.Link{Path: img, Format: "qcow2"}) {
		t.Fatalf("chain of a linked clone: %+v", chain)
	}
	// A disk made from a disk: three files.
	disk2 := storage.DiskPath(data, storage.DefaultPool, disk2UID)
	if err := storage.CreateLinkedClone(ctx, disk2, disk, "qcow2", 2<<20); err != nil {
		t.Fatal(err)
	}
	if chain, err := storage.CheckChain(disk2, "qcow2"); err != nil || len(chain) != 3 {
		t.Fatalf("chain of a clone of a clone: %+v %v", chain, err)
	}

	// A host file planted outside the data dir, named by a stored disk's header: refused,
	// and the conversion that would have read it never starts.
	outside := t.TempDir()
	planted := filepath.Join(outside, "secret")
	if err := os.WriteFile(planted, []byte("host secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	evil := storage.DiskPath(data, storage.DefaultPool, "0d0d0d0d-1111-2222-3333-444444444444")
	symlink := storage.ImagePath(data, "0e0e0e0e-1111-2222-3333-444444444444")
	if err := os.Symlink(planted, symlink); err != nil {
		t.Fatal(err)
	}
	cases := []struct{ backing, format, want string }{
		{planted, "raw", "is not an image, cached image or disk in the data dir"},
		{data + "/images/../../" + filepath.Base(outside) + "/secret", "raw", "not an absolute, clean path"},
		{"secret", "raw", "not an absolute, clean path"},
		{`json:{"driver":"raw","file":{"driver":"file","filename":"` + planted + `"}}`, "raw", "not an absolute, clean path"},
		{symlink, "raw", "is not a regular file"},
		{img, "vmdk", `names backing format "vmdk"`},
	}
	for _, c := range cases {
		os.Remove(evil)
		overlay(t, evil, c.backing, c.format)
		_, err := storage.CheckChain(evil, "qcow2")
		if !errors.Is(err, storage.ErrUnsafeChain) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("backing %q (%s): got %v, want an unsafe chain error with %q", c.backing, c.format, err, c.want)
		}
		dst := filepath.Join(data, "copy.qcow2")
		if err := storage.Convert(ctx, evil, "qcow2", dst, "qcow2"); !errors.Is(err, storage.ErrUnsafeChain) {
			t.Errorf("convert over backing %q: got %v, want refused", c.backing, err)
		}
		if err := storage.Resize(ctx, evil, "qcow2", 4<<20); !errors.Is(err, storage.ErrUnsafeChain) {
			t.Errorf("resize over backing %q: got %v, want refused", c.backing, err)
		}
		if _, err := os.Stat(dst); !os.IsNotExist(err) {
			t.Errorf("a refused conversion left %s", dst)
		}
	}

	// Two disks that name each other: the walk stops.
	loop := storage.DiskPath(data, storage.DefaultPool, "0f0f0f0f-1111-2222-3333-444444444444")
	os.Remove(evil)
	overlay(t, evil, loop, "qcow2")
	overlay(t, loop, evil, "qcow2")
	if _, err := storage.CheckChain(evil, "qcow2"); !errors.Is(err, storage.ErrUnsafeChain) || !strings.Contains(err.Error(), "more than 16 files") {
		t.Errorf("a backing loop: %v", err)
	}

	// A file that is not a stored disk (an image, a staged upload) may have no backing file,
	// even one inside the data dir: an upload naming another tenant's image is refused.
	staged := filepath.Join(data, "pools", "default", "disks", storage.TempPrefix+"upload")
	overlay(t, staged, img, "qcow2")
	if _, err := storage.CheckChain(staged, "qcow2"); !errors.Is(err, storage.ErrUnsafeChain) {
		t.Errorf("a staged file with a backing file: %v", err)
	}
	// An image with no backing file is a chain of one; raw files have no headers to read.
	if chain, err := storage.CheckChain(img, "qcow2"); err != nil || len(chain) != 1 {
		t.Errorf("image: %+v %v", chain, err)
	}
	if chain, err := storage.CheckChain(planted, "raw"); err != nil || len(chain) != 1 {
		t.Errorf("raw: %+v %v", chain, err)
	}

	// The pinned chain still converts: the copy of a linked clone is whole.
	flat := filepath.Join(data, "flat.qcow2")
	if err := storage.Convert(ctx, disk2, "qcow2", flat, "qcow2"); err != nil {
		t.Fatal(err)
	}
	info, err := storage.Info(ctx, flat, "qcow2")
	if err != nil || info.BackingFile != "" || info.VirtualSize != 2<<20 {
		t.Fatalf("flattened copy: %+v %v", info, err)
	}
	if err := storage.Resize(ctx, disk2, "qcow2", 8<<20); err != nil {
		t.Fatal(err)
	}
	if info, err := storage.Info(ctx, disk2, "qcow2"); err != nil || info.VirtualSize != 8<<20 || info.BackingFile != disk {
		t.Fatalf("resized clone: %+v %v", info, err)
	}
}

// FuzzQCOW2Chain feeds arbitrary first clusters to the chain check: it must never panic, and
// whatever it accepts names no backing file outside the data dir.
func FuzzQCOW2Chain(f *testing.F) {
	data := f.TempDir()
	img := storage.ImagePath(data, imgUID)
	if err := os.MkdirAll(filepath.Dir(img), 0o700); err != nil {
		f.Fatal(err)
	}
	if err := os.WriteFile(img, []byte("raw image"), 0o600); err != nil {
		f.Fatal(err)
	}
	disk := storage.DiskPath(data, storage.DefaultPool, diskUID)
	if err := storage.CreateLinkedClone(context.Background(), disk, img, "raw", 1<<20); err != nil {
		f.Fatal(err)
	}
	good, err := os.ReadFile(disk)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good[:4096])
	f.Add([]byte("QFI\xfb"))
	f.Fuzz(func(t *testing.T, header []byte) {
		if err := os.WriteFile(disk, header, 0o600); err != nil {
			t.Fatal(err)
		}
		chain, err := storage.CheckChain(disk, "qcow2")
		if err != nil {
			return
		}
		for _, l := range chain[1:] {
			if l.Path != img || l.Format != "raw" {
				t.Fatalf("accepted a chain through %+v", l)
			}
		}
	})
}

// TestCheckChainClassDir: a disk in a registered storage class directory may back onto the
// class's image copies and disks and onto its data dir's images, and nowhere else; an
// unregistered directory's disk may have no backing file at all.
func TestCheckChainClassDir(t *testing.T) {
	need(t)
	ctx := context.Background()
	data, class, other := t.TempDir(), t.TempDir(), t.TempDir()
	sha := strings.Repeat("ab", 32)
	shared := storage.SharedImagePath(class, sha)
	if err := storage.CreateBlank(ctx, shared, 1<<20); err != nil {
		t.Fatal(err)
	}
	img := storage.ImagePath(data, imgUID)
	if err := storage.CreateBlank(ctx, img, 1<<20); err != nil {
		t.Fatal(err)
	}
	stray := filepath.Join(other, "images", "sha256-"+sha)
	if err := storage.CreateBlank(ctx, stray, 1<<20); err != nil {
		t.Fatal(err)
	}
	onShared := filepath.Join(class, "disks", diskUID+".qcow2")
	overlay(t, onShared, shared, "qcow2")
	if _, err := storage.CheckChain(onShared, "qcow2"); !errors.Is(err, storage.ErrUnsafeChain) {
		t.Errorf("a disk of an unregistered directory with a backing file: %v, want ErrUnsafeChain", err)
	}
	storage.RegisterClassDir(class, data)
	chain, err := storage.CheckChain(onShared, "qcow2")
	if err != nil || len(chain) != 2 || chain[1].Path != shared {
		t.Errorf("a disk over the class's image copy: %v, %v", chain, err)
	}
	onImage := filepath.Join(class, "disks", disk2UID+".qcow2")
	overlay(t, onImage, img, "qcow2")
	if _, err := storage.CheckChain(onImage, "qcow2"); err != nil {
		t.Errorf("a disk of the class over a data dir image: %v", err)
	}
	astray := filepath.Join(class, "disks", "0d0d0d0d-1111-2222-3333-444444444444.qcow2")
	overlay(t, astray, stray, "qcow2")
	if _, err := storage.CheckChain(astray, "qcow2"); !errors.Is(err, storage.ErrUnsafeChain) {
		t.Errorf("a disk over a file of another directory: %v, want ErrUnsafeChain", err)
	}
}

// TestBackingFile: a file without backing names none; a relative backing is made absolute
// against the file's directory; an absolute one is kept.
func TestBackingFile(t *testing.T) {
	need(t)
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	if err := storage.CreateBlank(context.Background(), base, 1<<20); err != nil {
		t.Fatal(err)
	}
	rel, abs := filepath.Join(dir, "sub", "rel.qcow2"), filepath.Join(dir, "abs.qcow2")
	overlay(t, rel, "../base.qcow2", "qcow2")
	overlay(t, abs, base, "qcow2")
	for path, want := range map[string]string{base: "", rel: base, abs: base} {
		if got, err := storage.BackingFile(path); err != nil || got != want {
			t.Errorf("BackingFile(%s) = %q, %v; want %q", path, got, err, want)
		}
	}
	if _, err := storage.BackingFile(filepath.Join(dir, "missing.qcow2")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a missing file: %v", err)
	}
}
