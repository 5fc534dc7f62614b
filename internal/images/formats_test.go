package images_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/rakhsh/rakhsh/internal/images"
	"github.com/rakhsh/rakhsh/internal/images/imagetest"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// TestImportEveryFormat imports files made by the real qemu-img in every accepted format,
// plain, gzip- and xz-compressed, and checks that the stored qcow2 holds the same disk.
func TestImportEveryFormat(t *testing.T) {
	imagetest.Need(t, "qemu-img", "prlimit", "gzip", "xz", "xorriso")
	src := t.TempDir()
	raw := imagetest.Raw(t, src, "disk.raw", 8<<20)
	files := map[string]string{
		"raw":                   raw,
		"qcow2":                 imagetest.Convert(t, raw, src, "disk.qcow2", "qcow2"),
		"vmdk monolithicSparse": imagetest.Convert(t, raw, src, "disk.vmdk", "vmdk"),
		"vmdk streamOptimized":  imagetest.Convert(t, raw, src, "stream.vmdk", "vmdk", "subformat=streamOptimized"),
		"vdi":                   imagetest.Convert(t, raw, src, "disk.vdi", "vdi"),
		"vhd dynamic":           imagetest.Convert(t, raw, src, "disk.vhd", "vpc"),
		"vhd fixed":             imagetest.Convert(t, raw, src, "fixed.vhd", "vpc", "subformat=fixed"),
		"vhdx":                  imagetest.Convert(t, raw, src, "disk.vhdx", "vhdx"),
		"iso":                   imagetest.ISO(t, src, "cd.iso"),
	}
	base := imagetest.Serve(t, src)
	store := t.TempDir()
	ctx := context.Background()
	for name, p := range files {
		for _, comp := range []string{"", "gz", "xz"} {
			file := p
			switch comp {
			case "gz":
				file = imagetest.Gzip(t, p)
			case "xz":
				file = imagetest.Xz(t, p)
			}
			t.Run(strings.TrimSpace(name+" "+comp), func(t *testing.T) {
				dst := filepath.Join(store, strings.NewReplacer(" ", "-").Replace(name)+"-"+comp)
				res, err := images.ImportHTTP(ctx, images.HTTPSource{URL: base + "/" + filepath.Base(file)}, dst, images.Options{Network: imagetest.AllowLoopback()})
				if err != nil {
					t.Fatal(err)
				}
				if comp != "" && string(res.Compression) != map[string]string{"gz": "gzip", "xz": "xz"}[comp] {
					t.Errorf("compression %q", res.Compression)
				}
				if name == "iso" {
					if res.Format != images.FormatISO || !res.CDROM {
						t.Fatalf("result %+v", res)
					}
					want, _ := os.ReadFile(p)
					got, _ := os.ReadFile(dst)
					if !bytes.Equal(want, got) {
						t.Fatal("the stored ISO differs from the original")
					}
					return
				}
				if res.Format != images.FormatQCOW2 || res.CDROM || res.VirtualSize < 8<<20 || res.StoredSize <= 0 {
					t.Fatalf("result %+v", res)
				}
				// The stored qcow2 holds the same disk as the raw file it was made from.
				if out, err := exec.Command("qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2", raw, dst).CombinedOutput(); err != nil {
					t.Fatalf("qemu-img compare: %v %s", err, out)
				}
			})
		}
	}
	assertNoTemp(t, store)
}

func assertNoTemp(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), storage.TempPrefix) {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
}

// TestImportRejectsHostileImages feeds each class of hostile file and checks that it is
// refused with ImageRejected (or the size/format reason) and nothing is stored. The files that
// point at host files point at a FIFO: had qemu-img opened it, the import would hang instead
// of returning.
func TestImportRejectsHostileImages(t *testing.T) {
	imagetest.Need(t, "qemu-img", "prlimit", "gzip", "xz")
	src := t.TempDir()
	canary := filepath.Join(t.TempDir(), "canary")
	if err := syscall.Mkfifo(canary, 0o600); err != nil {
		t.Fatal(err)
	}
	zeros := imagetest.Raw(t, src, "zeros.raw", 64<<20)
	gz := imagetest.Gzip(t, zeros)
	xz := imagetest.Xz(t, zeros)
	double := imagetest.Gzip(t, gz)
	full, _ := os.ReadFile(gz)
	if err := os.WriteFile(filepath.Join(src, "cut.gz"), full[:len(full)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "disk.zst"), []byte{0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0}, 0o644); err != nil {
		t.Fatal(err)
	}
	imagetest.WithBacking(t, src, "backed.qcow2")
	imagetest.QCOW2(t, src, "huge.qcow2", "1G") // a few hundred KiB on disk, 1 GiB virtual
	imagetest.WithDataFile(t, src, "datafile.qcow2")
	imagetest.JSONBacking(t, src, "json.qcow2", canary)
	imagetest.VMDKDescriptor(t, src, "descriptor.vmdk", canary)
	imagetest.VMDKWithParent(t, src, "child.vmdk")
	imagetest.Gzip(t, filepath.Join(src, "backed.qcow2"))
	imagetest.Xz(t, filepath.Join(src, "descriptor.vmdk"))
	base := imagetest.Serve(t, src)
	store := t.TempDir()
	for _, tc := range []struct {
		name, file, reason string
		unsafe             bool
	}{
		{"qcow2 backing file", "backed.qcow2", images.ReasonImageRejected, true},
		{"qcow2 backing file, gzip", "backed.qcow2.gz", images.ReasonImageRejected, true},
		{"qcow2 external data file", "datafile.qcow2", images.ReasonImageRejected, true},
		{"qcow2 json: backing name", "json.qcow2", images.ReasonImageRejected, true},
		{"vmdk descriptor pointing at a host file", "descriptor.vmdk", images.ReasonImageRejected, true},
		{"vmdk descriptor, xz", "descriptor.vmdk.xz", images.ReasonImageRejected, true},
		{"vmdk with a parent", "child.vmdk", images.ReasonImageRejected, true},
		{"gzip bomb", filepath.Base(gz), images.ReasonImageTooLarge, false},
		{"xz bomb", filepath.Base(xz), images.ReasonImageTooLarge, false},
		{"qcow2 bomb: virtual size over the maximum", "huge.qcow2", images.ReasonImageTooLarge, false},
		{"gzip inside gzip", filepath.Base(double), images.ReasonUnsupportedFormat, false},
		{"truncated gzip", "cut.gz", images.ReasonImageRejected, false},
		{"zstd", "disk.zst", images.ReasonUnsupportedFormat, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := filepath.Join(store, strings.ReplaceAll(tc.name, " ", "-"))
			max := int64(0)
			if strings.Contains(tc.name, "bomb") {
				max = 16 << 20
			}
			_, err := images.ImportHTTP(context.Background(), images.HTTPSource{URL: base + "/" + tc.file}, dst,
				images.Options{MaxUnpackedSize: max, Network: imagetest.AllowLoopback()})
			var ie *images.Error
			if !errors.As(err, &ie) || ie.Reason != tc.reason || ie.Transient {
				t.Fatalf("got %v (%+v), want the permanent reason %s", err, ie, tc.reason)
			}
			if tc.unsafe && !errors.Is(err, images.ErrUnsafeImage) {
				t.Fatalf("got %v, want ErrUnsafeImage", err)
			}
			if _, err := os.Stat(dst); !os.IsNotExist(err) {
				t.Fatalf("a refused import left %s", dst)
			}
			t.Log(err)
		})
	}
	assertNoTemp(t, store)
}
