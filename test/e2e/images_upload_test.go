package e2e

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/images/imagetest"
	"github.com/rakhsh/rakhsh/internal/storage"
)

func fileSHA256(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func readyCond(conds []v1alpha1.Condition) *v1alpha1.Condition {
	return v1alpha1.FindCondition(conds, "Ready")
}

// TestImageUpload: images and disks with an Upload data source take their file from
// `curl -T` to the single-use URL in status.imageUploadURLs and from `rakhsh image upload`;
// a checksum mismatch fails the image, and a used URL is refused.
func TestImageUpload(t *testing.T) {
	imagetest.Need(t, "qemu-img", "prlimit", "curl", "gzip", "xz")
	s := StartServe(t, "--listen", freeAddr(t))
	src := t.TempDir()
	raw := imagetest.Raw(t, src, "disk.raw", 8<<20)
	qcowGz := imagetest.Gzip(t, imagetest.QCOW2(t, src, "disk.qcow2", "64M"))
	vmdk := imagetest.Convert(t, raw, src, "disk.vmdk", "vmdk", "subformat=streamOptimized")
	rawXz := imagetest.Xz(t, raw)

	applyDocs(s, cviDoc("up-curl", uploadSource(fileSHA256(t, qcowGz))), cviDoc("up-bad", uploadSource(strings.Repeat("cd", 32))),
		`apiVersion: virtualization.rakhsh.io/v1alpha1
kind: VirtualImage
metadata: {name: up-cli}
spec:
  storage: ContainerRegistry
  dataSource: {type: Upload}
`, diskDoc("up-disk", "128Mi", uploadSource("")))

	waitURL := func(resource, ns, name string) string {
		t.Helper()
		var url string
		switch resource {
		case "virtualdisks":
			d := waitObj(t, s, resource, ns, name, "WaitForUserUpload", func(d *v1alpha1.VirtualDisk) bool {
				return d.Status.Phase == v1alpha1.DiskPhaseWaitForUserUpload && d.Status.ImageUploadURLs != nil
			})
			url = d.Status.ImageUploadURLs.InCluster
		default:
			i := waitObj(t, s, resource, ns, name, "WaitForUserUpload", func(i *v1alpha1.ClusterVirtualImage) bool {
				return i.Status.Phase == v1alpha1.ImagePhaseWaitForUserUpload && i.Status.ImageUploadURLs != nil
			})
			url = i.Status.ImageUploadURLs.InCluster
		}
		if !strings.HasPrefix(url, "https://127.0.0.1:") || !strings.Contains(url, "/upload/") {
			t.Fatalf("%s %s: upload URL %q", resource, name, url)
		}
		return url
	}
	curl := func(file, url string) (string, error) { return curlTLS(s, "-T", file, url) }

	// curl -T, with a checksum that matches.
	url := waitURL("clustervirtualimages", "", "up-curl")
	if out, err := curl(qcowGz, url); err != nil {
		t.Fatalf("curl -T: %v\n%s", err, out)
	}
	img := waitCVI(t, s, "up-curl", v1alpha1.ImagePhaseReady)
	if img.Status.Format != "qcow2" || img.Status.Size == nil || img.Status.Size.Unpacked != "64Mi" || img.Status.ImageUploadURLs != nil {
		t.Fatalf("uploaded image status: %+v", img.Status)
	}
	get := s.MustCLI("", "get", "cvi", "up-curl")
	if f := strings.Fields(strings.SplitN(get, "\n", 2)[0]); strings.Join(f, " ") != "NAME PHASE CDROM PROGRESS STOREDSIZE UNPACKEDSIZE AGE" ||
		!strings.Contains(get, "100%") || !strings.Contains(get, "64Mi") {
		t.Fatalf("rakhsh get cvi:\n%s", get)
	}
	// The URL was single-use.
	if out, err := curl(qcowGz, url); err == nil || !strings.Contains(out, "no upload waits at this URL") {
		t.Fatalf("a second upload to a used URL: %v\n%s", err, out)
	}

	// A checksum mismatch fails the image and the upload request says why.
	out, err := curl(qcowGz, waitURL("clustervirtualimages", "", "up-bad"))
	if err == nil || !strings.Contains(out, "ChecksumMismatch") {
		t.Fatalf("checksum mismatch upload: %v\n%s", err, out)
	}
	bad := waitCVI(t, s, "up-bad", v1alpha1.ImagePhaseFailed)
	if c := readyCond(bad.Status.Conditions); c == nil || c.Reason != "ChecksumMismatch" {
		t.Fatalf("checksum mismatch: %+v", bad.Status.Conditions)
	}

	// The CLI, over the unix socket: a streamOptimized VMDK to an image, and an xz raw file
	// to a disk that is larger than the file.
	waitURL("virtualimages", "default", "up-cli")
	if out := s.MustCLI("", "image", "upload", "vi/up-cli", vmdk); !strings.Contains(out, "uploaded") {
		t.Fatalf("rakhsh image upload: %s", out)
	}
	vi := waitObj(t, s, "virtualimages", "default", "up-cli", "Ready", func(i *v1alpha1.VirtualImage) bool {
		return i.Status.Phase == v1alpha1.ImagePhaseReady
	})
	if vi.Status.Format != "qcow2" || vi.Status.Size == nil || vi.Status.Size.UnpackedBytes != 8<<20 {
		t.Fatalf("VMDK upload: %+v", vi.Status)
	}
	waitURL("virtualdisks", "default", "up-disk")
	s.MustCLI("", "image", "upload", "vd/up-disk", rawXz)
	d := waitDisk(t, s, "up-disk", v1alpha1.DiskPhaseReady)
	if d.Status.Capacity != "128Mi" {
		t.Fatalf("uploaded disk: %+v", d.Status)
	}
	diskPath := storage.DiskPath(s.DataDir, "default", d.UID)
	info, err := storage.Info(context.Background(), diskPath, "qcow2")
	if err != nil || info.VirtualSize != 128<<20 || info.BackingFile != "" {
		t.Fatalf("disk file: %+v %v", info, err)
	}
	if out, err := exec.Command("qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2", raw, diskPath).CombinedOutput(); err != nil {
		t.Fatalf("the disk does not hold the uploaded data: %v %s", err, out)
	}
	// Uploading to an object that is Ready is refused by the CLI with the reason.
	if r := s.CLI("", "image", "upload", "vd/up-disk", rawXz); r.Code == 0 || !strings.Contains(r.Stderr, "is Ready") {
		t.Fatalf("upload to a Ready disk: %+v", r)
	}

	// An upload whose connection breaks goes on: HEAD says how much arrived (Upload-Offset),
	// and `curl -C OFFSET -T` sends the rest; the checksum proves the bytes.
	applyDocs(s, cviDoc("up-resume", uploadSource(fileSHA256(t, raw))))
	resumeURL := waitURL("clustervirtualimages", "", "up-resume")
	uploadCut(t, filepath.Join(s.DataDir, "tls.crt"), resumeURL, raw, 2<<20)
	off := uploadOffsetOf(t, filepath.Join(s.DataDir, "tls.crt"), resumeURL)
	if off <= 0 || off > 2<<20 {
		t.Fatalf("after a cut at 2 MiB the server says the upload stands at byte %d", off)
	}
	var rest string
	for attempt := 0; ; attempt++ {
		var err error
		rest, err = curlTLS(s, "-C", strconv.FormatInt(off, 10), "-T", raw, resumeURL)
		if err == nil || !strings.Contains(rest, "another request") || attempt > 50 {
			if err != nil {
				t.Fatalf("curl -C %d -T: %v\n%s", off, err, rest)
			}
			break
		}
		time.Sleep(100 * time.Millisecond) // the cut request still holds the upload
	}
	if !strings.Contains(rest, "upload complete") {
		t.Fatalf("the resumed upload: %s", rest)
	}
	resumed := waitCVI(t, s, "up-resume", v1alpha1.ImagePhaseReady)
	if resumed.Status.Size == nil || resumed.Status.Size.UnpackedBytes != 8<<20 {
		t.Fatalf("the resumed upload's image: %+v", resumed.Status)
	}
	assertNoTempFiles(t, filepath.Dir(storage.ImagePath(s.DataDir, img.UID)), filepath.Dir(diskPath))
}

// uploadCut sends the first n bytes of file to an upload URL, then breaks the connection.
func uploadCut(t *testing.T, caFile, url, file string, n int) {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	req, err := http.NewRequest(http.MethodPut, url, io.MultiReader(io.LimitReader(f, int64(n)), errReader{}))
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = fi.Size()
	if resp, err := tlsClient(t, caFile).Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("a request cut after %d bytes was answered %s", n, resp.Status)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("the connection broke") }

// uploadOffsetOf asks an upload URL how much of its upload arrived, once that stops growing.
func uploadOffsetOf(t *testing.T, caFile, url string) int64 {
	t.Helper()
	last := int64(-1)
	for i := 0; i < 100; i++ {
		resp, err := tlsClient(t, caFile).Head(url)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		n, err := strconv.ParseInt(resp.Header.Get("Upload-Offset"), 10, 64)
		if resp.StatusCode != http.StatusOK || err != nil {
			t.Fatalf("HEAD %s: %s, Upload-Offset %q", url, resp.Status, resp.Header.Get("Upload-Offset"))
		}
		if n == last {
			return n
		}
		last = n
		time.Sleep(100 * time.Millisecond)
	}
	return last
}

// curlTLS runs curl -sS --fail-with-body with the serve's CA and args; it returns curl's output.
func curlTLS(s *Serve, args ...string) (string, error) {
	out, err := exec.Command("curl", append([]string{"-sS", "--fail-with-body", "--cacert", filepath.Join(s.DataDir, "tls.crt")}, args...)...).CombinedOutput()
	return string(out), err
}

func tlsClient(t *testing.T, caFile string) *http.Client {
	t.Helper()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: time.Minute}
}

func assertNoTempFiles(t *testing.T, dirs ...string) {
	t.Helper()
	for _, dir := range dirs {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), storage.TempPrefix) {
				t.Errorf("temporary file %s left in %s", e.Name(), dir)
			}
		}
	}
}

// TestImageUploadTimeout: an image or disk whose file never comes fails after the
// configured --upload-timeout, and its URL stops working.
func TestImageUploadTimeout(t *testing.T) {
	imagetest.Need(t, "curl")
	s := StartServe(t, "--listen", freeAddr(t), "--upload-timeout", "2s")
	applyDocs(s, cviDoc("late", uploadSource("")), diskDoc("late-disk", "", uploadSource("")))
	img := waitCVI(t, s, "late", v1alpha1.ImagePhaseFailed)
	if c := readyCond(img.Status.Conditions); c == nil || c.Reason != "UploadTimeout" || !strings.Contains(c.Message, "2s") || img.Status.ImageUploadURLs != nil {
		t.Fatalf("image after the upload timeout: %+v", img.Status)
	}
	d := waitDisk(t, s, "late-disk", v1alpha1.DiskPhaseFailed)
	if c := readyCond(d.Status.Conditions); c == nil || c.Reason != "UploadTimeout" {
		t.Fatalf("disk after the upload timeout: %+v", d.Status)
	}
	if _, err := os.Stat(storage.ImagePath(s.DataDir, img.UID)); !os.IsNotExist(err) {
		t.Fatal("a timed-out upload left an image file")
	}
}

// TestImageUploadRestart: an image waiting for its upload keeps its URL across a restart of
// `rakhsh serve`, and the URL works afterwards.
func TestImageUploadRestart(t *testing.T) {
	imagetest.Need(t, "qemu-img", "prlimit", "curl")
	s := StartServe(t, "--listen", freeAddr(t))
	qcow := imagetest.QCOW2(t, t.TempDir(), "disk.qcow2", "32M")
	applyDocs(s, cviDoc("later", uploadSource("")))
	waiting := func() string {
		i := waitObj(t, s, "clustervirtualimages", "", "later", "WaitForUserUpload", func(i *v1alpha1.ClusterVirtualImage) bool {
			return i.Status.Phase == v1alpha1.ImagePhaseWaitForUserUpload && i.Status.ImageUploadURLs != nil
		})
		return i.Status.ImageUploadURLs.InCluster
	}
	before := waiting()
	s.Stop()
	s.Start()
	// The restarted controller registers the same token again.
	waitObj(t, s, "clustervirtualimages", "", "later", "waiting again", func(i *v1alpha1.ClusterVirtualImage) bool {
		return i.Status.Phase == v1alpha1.ImagePhaseWaitForUserUpload && i.Status.ImageUploadURLs != nil &&
			strings.Contains(s.Logs()[strings.LastIndex(s.Logs(), "rakhsh serve started"):], "waiting for an upload")
	})
	if after := waiting(); after != before {
		t.Fatalf("the upload URL changed across a restart: %s -> %s", before, after)
	}
	if out, err := curlTLS(s, "-T", qcow, before); err != nil {
		t.Fatalf("upload after the restart: %v\n%s", err, out)
	}
	waitObj(t, s, "clustervirtualimages", "", "later", "Ready", func(i *v1alpha1.ClusterVirtualImage) bool {
		return i.Status.Phase == v1alpha1.ImagePhaseReady && i.Status.Size != nil && i.Status.Size.Unpacked == "32Mi"
	})
}

// TestDiskFromHTTP: a VirtualDisk takes an HTTP data source directly (here a gzip-compressed
// VMDK), grown to the requested size; a checksum mismatch fails it.
func TestDiskFromHTTP(t *testing.T) {
	imagetest.Need(t, "qemu-img", "prlimit", "gzip")
	s := StartServe(t)
	src := t.TempDir()
	raw := imagetest.Raw(t, src, "disk.raw", 8<<20)
	vmdkGz := imagetest.Gzip(t, imagetest.Convert(t, raw, src, "disk.vmdk", "vmdk"))
	base := imagetest.Serve(t, src)
	url := base + "/" + filepath.Base(vmdkGz)
	applyDocs(s, diskDoc("web", "64Mi", httpChecksumSource(url, "sha256", fileSHA256(t, vmdkGz))),
		diskDoc("web-bad", "", httpChecksumSource(url, "md5", strings.Repeat("0", 32))))
	d := waitDisk(t, s, "web", v1alpha1.DiskPhaseReady, v1alpha1.DiskPhaseFailed)
	if d.Status.Phase != v1alpha1.DiskPhaseReady || d.Status.Capacity != "64Mi" {
		t.Fatalf("disk from HTTP: %+v", d.Status)
	}
	p := storage.DiskPath(s.DataDir, "default", d.UID)
	if out, err := exec.Command("qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2", raw, p).CombinedOutput(); err != nil {
		t.Fatalf("the disk does not hold the downloaded data: %v %s", err, out)
	}
	bad := waitDisk(t, s, "web-bad", v1alpha1.DiskPhaseFailed)
	if c := readyCond(bad.Status.Conditions); c == nil || c.Reason != "ChecksumMismatch" {
		t.Fatalf("checksum mismatch: %+v", bad.Status.Conditions)
	}
	assertNoTempFiles(t, filepath.Dir(p))

	// A disk copied from the disk is a full, flattened copy of it, grown to its own size.
	applyDocs(s, diskDoc("web-copy", "80Mi", objectRefSource("{kind: VirtualDisk, name: web}")))
	cp := waitDisk(t, s, "web-copy", v1alpha1.DiskPhaseReady, v1alpha1.DiskPhaseFailed)
	cpPath := storage.DiskPath(s.DataDir, "default", cp.UID)
	if info, err := storage.Info(context.Background(), cpPath, "qcow2"); cp.Status.Phase != v1alpha1.DiskPhaseReady || err != nil ||
		info.BackingFile != "" || info.VirtualSize != 80<<20 {
		t.Fatalf("disk copied from a disk: %+v %+v %v", cp.Status, info, err)
	}
	if out, err := exec.Command("qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2", raw, cpPath).CombinedOutput(); err != nil {
		t.Fatalf("the copy does not hold the disk's data: %v %s", err, out)
	}

	// An image made from the disk is a flattened copy of it.
	applyDocs(s, cviDoc("from-disk", objectRefSource("{kind: VirtualDisk, name: web, namespace: default}")))
	img := waitCVI(t, s, "from-disk", v1alpha1.ImagePhaseReady, v1alpha1.ImagePhaseFailed)
	if img.Status.Phase != v1alpha1.ImagePhaseReady || img.Status.Size == nil || img.Status.Size.Unpacked != "64Mi" {
		t.Fatalf("image from a disk: %+v", img.Status)
	}
	ip := storage.ImagePath(s.DataDir, img.UID)
	if info, err := storage.Info(context.Background(), ip, "qcow2"); err != nil || info.BackingFile != "" {
		t.Fatalf("image from a disk is not self-contained: %+v %v", info, err)
	}
	if out, err := exec.Command("qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2", raw, ip).CombinedOutput(); err != nil {
		t.Fatalf("the image does not hold the disk's data: %v %s", err, out)
	}
}
