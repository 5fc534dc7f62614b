package storage_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/internal/storage"
)

func need(t *testing.T) {
	t.Helper()
	for tool, pkg := range map[string]string{"qemu-img": "qemu-utils", "prlimit": "util-linux"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed: apt-get install %s", tool, pkg)
		}
	}
}

func noTemp(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), storage.TempPrefix) {
			t.Errorf("temporary file %s left in %s", e.Name(), dir)
		}
	}
}

func TestQemuImgWrappers(t *testing.T) {
	need(t)
	ctx := context.Background()
	dir := t.TempDir()
	// A linked clone is a stored disk whose backing file is an image of the same data dir.
	base := storage.ImagePath(dir, "11111111-2222-3333-4444-555555555555")
	if err := storage.CreateBlank(ctx, base, 1000); err != nil {
		t.Fatal(err)
	}
	info, err := storage.Info(ctx, base, "qcow2")
	if err != nil {
		t.Fatal(err)
	}
	if info.Format != "qcow2" || info.VirtualSize != 1024 || info.BackingFile != "" {
		t.Fatalf("blank: %+v (size must be rounded up to a sector)", info)
	}

	clone := storage.DiskPath(dir, storage.DefaultPool, "66666666-7777-8888-9999-000000000000")
	start := time.Now()
	if err := storage.CreateLinkedClone(ctx, clone, base, "qcow2", 10<<30); err != nil {
		t.Fatal(err)
	}
	t.Logf("linked clone took %s", time.Since(start))
	info, err = storage.Info(ctx, clone, "qcow2")
	if err != nil {
		t.Fatal(err)
	}
	if info.BackingFile != base || info.BackingFormat != "qcow2" || info.VirtualSize != 10<<30 {
		t.Fatalf("clone: %+v", info)
	}

	raw := filepath.Join(dir, "copy.raw")
	if err := storage.ConvertResize(ctx, clone, "qcow2", raw, "raw", 11<<30); err != nil {
		t.Fatal(err)
	}
	if info, err = storage.Info(ctx, raw, "raw"); err != nil || info.VirtualSize != 11<<30 {
		t.Fatalf("convert+resize: %+v %v", info, err)
	}

	// Failures leave neither the destination nor a temporary file, and carry stderr.
	bad := filepath.Join(dir, "bad.qcow2")
	if err := storage.CreateLinkedClone(ctx, bad, filepath.Join(dir, "missing.qcow2"), "qcow2", 1<<20); err == nil {
		t.Fatal("a clone of a missing backing file was made")
	}
	if _, err := os.Stat(bad); !os.IsNotExist(err) {
		t.Fatal("a failed clone left its destination")
	}
	err = storage.Convert(ctx, filepath.Join(dir, "missing.vmdk"), "vmdk", bad, "qcow2")
	var te *storage.ToolError
	if err == nil || !errors.As(err, &te) || te.Stderr == "" {
		t.Fatalf("convert of a missing file: %v", err)
	}
	if err := storage.Convert(ctx, filepath.Join(dir, "missing.qcow2"), "qcow2", bad, "qcow2"); err == nil || !strings.Contains(err.Error(), "missing.qcow2") {
		t.Fatalf("convert of a missing qcow2: %v", err)
	}
	if _, err := os.Stat(bad); !os.IsNotExist(err) {
		t.Fatal("a failed create left its destination")
	}
	if err := storage.Convert(ctx, raw, "iso", bad, "qcow2"); err == nil {
		t.Fatal("a format qemu-img is never given was accepted")
	}
	if err := storage.Convert(ctx, raw, "raw", bad, "vmdk"); err == nil {
		t.Fatal("a destination format other than qcow2/raw was accepted")
	}
	if _, err := storage.Info(ctx, "relative.qcow2", "qcow2"); err == nil {
		t.Fatal("a relative path was accepted")
	}
	noTemp(t, dir)

	// A timeout kills qemu-img.
	tctx, cancel := context.WithTimeout(ctx, time.Nanosecond)
	defer cancel()
	if err := storage.CreateBlank(tctx, filepath.Join(dir, "late.qcow2"), 1<<20); err == nil {
		t.Fatal("an expired context did not fail the run")
	}
	noTemp(t, dir)

	// CleanTemp removes leftovers only.
	os.WriteFile(filepath.Join(dir, storage.TempPrefix+"x"), nil, 0o600)
	if err := storage.CleanTemp(dir); err != nil {
		t.Fatal(err)
	}
	noTemp(t, dir)
	if _, err := os.Stat(base); err != nil {
		t.Fatal("CleanTemp removed a real file")
	}
}

func TestRlimitsApply(t *testing.T) {
	need(t)
	// An address-space limit far too small for qemu-img makes it fail: the limits reach the child.
	old := storage.InfoLimits
	storage.InfoLimits = storage.Limits{CPUSeconds: 30, AddressSpace: 4 << 20}
	defer func() { storage.InfoLimits = old }()
	dir := t.TempDir()
	p := filepath.Join(dir, "x.qcow2")
	if err := storage.CreateBlank(context.Background(), p, 1<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := storage.Info(context.Background(), p, "qcow2"); err == nil {
		t.Fatal("qemu-img info ran within a 4 MiB address space: the rlimit is not applied")
	}
}
