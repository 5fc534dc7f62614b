package images_test

import (
	"context"
	"crypto/md5" //nolint:gosec
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/images"
	"github.com/rakhsh/rakhsh/internal/images/imagetest"
	"github.com/rakhsh/rakhsh/internal/storage"
)

func TestDetectFormat(t *testing.T) {
	iso := make([]byte, 0x9010)
	copy(iso[0x8001:], "CD001")
	iso2 := make([]byte, 0x9010)
	copy(iso2[0x9001:], "CD001")
	vdi := make([]byte, 0x50)
	copy(vdi[0x40:], "\x7f\x10\xda\xbe")
	for _, tc := range []struct {
		name string
		in   []byte
		want images.Format
	}{
		{"empty", nil, images.FormatRaw},
		{"qcow2", []byte("QFI\xfb\x00\x00\x00\x03"), images.FormatQCOW2},
		{"short qcow2 magic", []byte("QFI"), images.FormatRaw},
		{"iso", iso, images.FormatISO},
		{"iso at 0x9001", iso2, images.FormatISO},
		{"vmdk", []byte("KDMV\x01\x00\x00\x00"), images.FormatVMDK},
		{"vmdk descriptor", []byte("# Disk DescriptorFile\nversion=1\n"), images.FormatVMDK},
		{"vdi", vdi, images.FormatVDI},
		{"vhdx", []byte("vhdxfile"), images.FormatVHDX},
		{"vhd dynamic", []byte("conectix"), images.FormatVHD},
		{"gzip", []byte{0x1f, 0x8b, 8, 0}, images.FormatGzip},
		{"xz", []byte("\xfd7zXZ\x00"), images.FormatXz},
		{"zstd", []byte{0x28, 0xb5, 0x2f, 0xfd}, images.FormatZstd},
		{"bzip2", []byte("BZh9"), images.FormatBzip2},
		{"mbr disk", append(make([]byte, 510), 0x55, 0xaa), images.FormatRaw},
	} {
		if got := images.DetectFormat(tc.in); got != tc.want {
			t.Errorf("%s: DetectFormat = %s, want %s", tc.name, got, tc.want)
		}
	}
}

func TestDetectRealFiles(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		path string
		want images.Format
	}{
		{imagetest.QCOW2(t, dir, "a.qcow2", "64M"), images.FormatQCOW2},
		{imagetest.Raw(t, dir, "a.raw", 4<<20), images.FormatRaw},
		{imagetest.ISO(t, dir, "a.iso"), images.FormatISO},
		{imagetest.VMDK(t, dir, "a.vmdk"), images.FormatVMDK},
	} {
		f, err := os.Open(tc.path)
		if err != nil {
			t.Fatal(err)
		}
		h, err := images.ReadHeader(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if got := images.DetectFormat(h); got != tc.want {
			t.Errorf("%s: %s, want %s", filepath.Base(tc.path), got, tc.want)
		}
	}
}

func header(t *testing.T, p string) []byte {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h, err := images.ReadHeader(f)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestCheckQCOW2Header(t *testing.T) {
	dir := t.TempDir()
	if _, err := images.CheckQCOW2Header(header(t, imagetest.QCOW2(t, dir, "ok.qcow2", "64M"))); err != nil {
		t.Fatalf("a plain qcow2 was refused: %v", err)
	}
	for name, p := range map[string]string{
		"backing":   imagetest.WithBacking(t, dir, "b.qcow2"),
		"data file": imagetest.WithDataFile(t, dir, "d.qcow2"),
	} {
		if _, err := images.CheckQCOW2Header(header(t, p)); !errors.Is(err, images.ErrUnsafeImage) {
			t.Errorf("%s: got %v, want ErrUnsafeImage", name, err)
		}
	}
}

func TestHumanBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 512: "512", 1024: "1Ki", 64 << 20: "64Mi", 10 << 30: "10Gi",
		1288490189: "1.2Gi", 1536: "1.5Ki", 376832: "368Ki"} {
		if got := images.HumanBytes(n); got != want {
			t.Errorf("HumanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func digest(t *testing.T, p string) (md5hex, sha256hex string) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	m := md5.Sum(b) //nolint:gosec
	s := sha256.Sum256(b)
	return hex.EncodeToString(m[:]), hex.EncodeToString(s[:])
}

func TestImportHTTP(t *testing.T) {
	imagetest.Need(t, "qemu-img", "prlimit")
	src := t.TempDir()
	qcow := imagetest.QCOW2(t, src, "disk.qcow2", "64M")
	imagetest.Raw(t, src, "disk.raw", 8<<20)
	imagetest.ISO(t, src, "cd.iso")
	imagetest.WithBacking(t, src, "backed.qcow2")
	imagetest.WithDataFile(t, src, "datafile.qcow2")
	imagetest.VMDK(t, src, "disk.vmdk")
	if err := os.WriteFile(filepath.Join(src, "disk.gz"), []byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0}, 0o644); err != nil {
		t.Fatal(err)
	}
	base := imagetest.Serve(t, src)
	qmd5, qsha := digest(t, qcow)
	store := t.TempDir()
	ctx := context.Background()

	t.Run("qcow2 kept, checksums verified", func(t *testing.T) {
		dst := filepath.Join(store, "q")
		var mu sync.Mutex
		var last images.Progress
		res, err := images.ImportHTTP(ctx, images.HTTPSource{URL: base + "/disk.qcow2",
			Checksum: &v1alpha1.Checksum{MD5: qmd5, SHA256: strings.ToUpper(qsha)}}, dst,
			images.Options{Network: imagetest.AllowLoopback(), ProgressInterval: 10 * time.Millisecond, Progress: func(p images.Progress) { mu.Lock(); last = p; mu.Unlock() }})
		if err != nil {
			t.Fatal(err)
		}
		if res.Format != images.FormatQCOW2 || res.CDROM || res.VirtualSize != 64<<20 || res.SHA256 != qsha {
			t.Fatalf("result %+v", res)
		}
		if _, dsha := digest(t, dst); dsha != qsha {
			t.Fatal("the stored qcow2 is not the downloaded file")
		}
		mu.Lock()
		defer mu.Unlock()
		if last.Percent() != "100%" || last.Received != last.Total {
			t.Fatalf("last progress %+v", last)
		}
	})
	t.Run("raw converted to qcow2", func(t *testing.T) {
		dst := filepath.Join(store, "r")
		res, err := images.ImportHTTP(ctx, images.HTTPSource{URL: base + "/disk.raw"}, dst, images.Options{Network: imagetest.AllowLoopback()})
		if err != nil {
			t.Fatal(err)
		}
		if res.Format != images.FormatQCOW2 || res.VirtualSize != 8<<20 {
			t.Fatalf("result %+v", res)
		}
		info, err := storage.Info(ctx, dst, "qcow2")
		if err != nil || info.Format != "qcow2" {
			t.Fatalf("stored file: %+v %v", info, err)
		}
	})
	t.Run("iso kept raw as cdrom", func(t *testing.T) {
		dst := filepath.Join(store, "i")
		res, err := images.ImportHTTP(ctx, images.HTTPSource{URL: base + "/cd.iso"}, dst, images.Options{Network: imagetest.AllowLoopback()})
		if err != nil {
			t.Fatal(err)
		}
		if res.Format != images.FormatISO || !res.CDROM {
			t.Fatalf("result %+v", res)
		}
	})
	for _, tc := range []struct {
		name, file, reason string
		sum                *v1alpha1.Checksum
	}{
		{"checksum mismatch", "disk.qcow2", images.ReasonChecksumMismatch, &v1alpha1.Checksum{SHA256: strings.Repeat("0", 64)}},
		{"one of two checksums wrong", "disk.qcow2", images.ReasonChecksumMismatch, &v1alpha1.Checksum{SHA256: qsha, SHA512: strings.Repeat("a", 128)}},
		{"backing file", "backed.qcow2", images.ReasonImageRejected, nil},
		{"data file", "datafile.qcow2", images.ReasonImageRejected, nil},
		{"corrupt gzip", "disk.gz", images.ReasonImageRejected, nil},
		{"404", "missing.qcow2", images.ReasonHTTPError, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := filepath.Join(store, "fail-"+strings.ReplaceAll(tc.name, " ", "-"))
			_, err := images.ImportHTTP(ctx, images.HTTPSource{URL: base + "/" + tc.file, Checksum: tc.sum}, dst, images.Options{Network: imagetest.AllowLoopback()})
			var ie *images.Error
			if !errors.As(err, &ie) || ie.Reason != tc.reason {
				t.Fatalf("got %v, want reason %s", err, tc.reason)
			}
			if _, err := os.Stat(dst); !os.IsNotExist(err) {
				t.Fatalf("a failed import left %s", dst)
			}
		})
	}
	ents, _ := os.ReadDir(store)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), storage.TempPrefix) {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
}

func TestImportHTTPSTruncatedAndCABundle(t *testing.T) {
	imagetest.Need(t, "qemu-img", "prlimit")
	dir := t.TempDir()
	qcow := imagetest.QCOW2(t, dir, "disk.qcow2", "16M")
	data, _ := os.ReadFile(qcow)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/short" {
			w.Header().Set("Content-Length", "1000000")
			w.Write(data[:1000])
			return
		}
		w.Write(data)
	}))
	defer srv.Close()
	ca := base64.StdEncoding.EncodeToString(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))
	ctx := context.Background()
	// Without the CA bundle the self-signed server is not trusted.
	_, err := images.ImportHTTP(ctx, images.HTTPSource{URL: srv.URL + "/ok"}, filepath.Join(dir, "x"), images.Options{Network: imagetest.AllowLoopback()})
	var ie *images.Error
	var cve *tls.CertificateVerificationError
	if !errors.As(err, &ie) || ie.Reason != images.ReasonDownloadFailed || !errors.As(err, &cve) {
		t.Fatalf("untrusted server: got %v", err)
	}
	if _, err := images.ImportHTTP(ctx, images.HTTPSource{URL: srv.URL + "/ok", CABundle: ca}, filepath.Join(dir, "y"), images.Options{Network: imagetest.AllowLoopback()}); err != nil {
		t.Fatalf("with caBundle: %v", err)
	}
	_, err = images.ImportHTTP(ctx, images.HTTPSource{URL: srv.URL + "/short", CABundle: ca}, filepath.Join(dir, "z"), images.Options{Network: imagetest.AllowLoopback()})
	if !errors.As(err, &ie) || ie.Reason != images.ReasonDownloadFailed || !ie.Transient {
		t.Fatalf("truncated download: got %v", err)
	}
}
