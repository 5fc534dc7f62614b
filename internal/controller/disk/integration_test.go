package disk_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/apiserver"
	"github.com/rakhsh/rakhsh/internal/controller/disk"
	"github.com/rakhsh/rakhsh/internal/controller/image"
	"github.com/rakhsh/rakhsh/internal/images/imagetest"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/storage"
	"github.com/rakhsh/rakhsh/internal/store/bolt"
)

// tWriter routes logs to the test.
type tWriter struct {
	mu sync.Mutex
	t  *testing.T
	on bool
}

func (w *tWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.on {
		w.t.Log(strings.TrimSpace(string(p)))
	}
	return len(p), nil
}

// env is an in-process API server on a unix socket plus the image and disk controllers.
type env struct {
	t       *testing.T
	c       *client.Client
	dataDir string
	log     *slog.Logger
	stop    func()
}

func newEnv(t *testing.T) *env {
	t.Helper()
	imagetest.Need(t, "qemu-img", "prlimit", "xorriso")
	dataDir := t.TempDir()
	st, err := bolt.Open(filepath.Join(dataDir, "rakhsh.db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	w := &tWriter{t: t, on: true}
	t.Cleanup(func() { w.mu.Lock(); w.on = false; w.mu.Unlock() })
	log := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
	api := apiserver.New(apiserver.Config{Store: st, Log: log})
	ctx := context.Background()
	if err := api.EnsureProject(ctx, apiserver.DefaultProject); err != nil {
		t.Fatal(err)
	}
	if err := api.EnsureDefaultStorageClass(ctx); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dataDir, "rakhsh.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: api.LocalHandler(), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	c, err := client.New(client.Config{Server: "unix://" + sock})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, c: c, dataDir: dataDir, log: log}
	e.start()
	t.Cleanup(func() {
		e.stop()
		api.Shutdown()
		srv.Close()
		st.Close()
	})
	return e
}

// start runs the controllers (as `rakhsh serve` does) until stop.
func (e *env) start() {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	ic := image.New(image.Config{Deps: runtime.Deps{Client: e.c, Log: e.log}, DataDir: e.dataDir, NodeName: "n1", Workers: 2, ProgressInterval: 50 * time.Millisecond})
	dc := disk.New(disk.Config{Deps: runtime.Deps{Client: e.c, Log: e.log}, DataDir: e.dataDir, NodeName: "n1", Workers: 2})
	for _, run := range []func(context.Context) error{ic.Run, dc.Run} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := run(ctx); err != nil {
				e.t.Errorf("controller: %v", err)
			}
		}()
	}
	e.stop = func() { cancel(); wg.Wait() }
}

func (e *env) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	e.t.Cleanup(cancel)
	return ctx
}

func (e *env) create(resource, ns string, obj any) {
	e.t.Helper()
	if err := e.c.Create(e.ctx(), resource, ns, obj, nil); err != nil {
		e.t.Fatalf("creating %s: %v", resource, err)
	}
}

// waitFor polls an object until cond holds.
func waitFor[T any](e *env, resource, ns, name string, what string, cond func(*T) bool) *T {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last T
	for time.Now().Before(deadline) {
		var obj T
		err := e.c.Get(e.ctx(), resource, ns, name, &obj)
		if err == nil {
			last = obj
			if cond(&obj) {
				return &obj
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	e.t.Fatalf("%s %s/%s: not %s within 30s; last: %+v", resource, ns, name, what, last)
	return nil
}

func waitGone(e *env, resource, ns, name string) {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		err := e.c.Get(e.ctx(), resource, ns, name, &map[string]any{})
		if client.IsNotFound(err) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.t.Fatalf("%s %s/%s still exists after 30s", resource, ns, name)
}

func httpCVI(name, url string, sum *v1alpha1.Checksum) *v1alpha1.ClusterVirtualImage {
	return &v1alpha1.ClusterVirtualImage{
		TypeMeta:   v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "ClusterVirtualImage"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: name},
		Spec: v1alpha1.ClusterVirtualImageSpec{DataSource: v1alpha1.DataSource{Type: v1alpha1.DataSourceTypeHTTP,
			HTTP: &v1alpha1.DataSourceHTTP{URL: url, Checksum: sum}}},
	}
}

func imageDisk(name string, kind v1alpha1.DataSourceObjectKind, image, size string, mode v1alpha1.CloneMode) *v1alpha1.VirtualDisk {
	return &v1alpha1.VirtualDisk{
		TypeMeta:   v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualDisk"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: name},
		Spec: v1alpha1.VirtualDiskSpec{
			DataSource: &v1alpha1.DataSource{Type: v1alpha1.DataSourceTypeObjectRef,
				ObjectRef: &v1alpha1.DataSourceObjectRef{Kind: kind, Name: image}},
			PersistentVolumeClaim: v1alpha1.VirtualDiskPersistentVolumeClaim{Size: v1alpha1.Quantity(size)},
			CloneMode:             mode,
		},
	}
}

func blankDisk(name, size string) *v1alpha1.VirtualDisk {
	return &v1alpha1.VirtualDisk{
		TypeMeta:   v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualDisk"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: name},
		Spec:       v1alpha1.VirtualDiskSpec{PersistentVolumeClaim: v1alpha1.VirtualDiskPersistentVolumeClaim{Size: v1alpha1.Quantity(size)}},
	}
}

func cviReady(i *v1alpha1.ClusterVirtualImage) bool {
	return i.Status.Phase == v1alpha1.ImagePhaseReady
}
func cviFailed(i *v1alpha1.ClusterVirtualImage) bool {
	return i.Status.Phase == v1alpha1.ImagePhaseFailed
}
func diskReady(d *v1alpha1.VirtualDisk) bool { return d.Status.Phase == v1alpha1.DiskPhaseReady }

func condOf(conds []v1alpha1.Condition, typ string) v1alpha1.Condition {
	if c := v1alpha1.FindCondition(conds, typ); c != nil {
		return *c
	}
	return v1alpha1.Condition{}
}

func fileSHA(t *testing.T, p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

func TestImagesAndDisks(t *testing.T) {
	e := newEnv(t)
	src := t.TempDir()
	qcow := imagetest.QCOW2(t, src, "debian.qcow2", "64M")
	imagetest.Raw(t, src, "disk.raw", 8<<20)
	imagetest.ISO(t, src, "install.iso")
	imagetest.WithBacking(t, src, "backed.qcow2")
	base := imagetest.Serve(t, src)
	qsha := fileSHA(t, qcow)

	// HTTP import of a qcow2, with its checksum.
	e.create("clustervirtualimages", "", httpCVI("debian", base+"/debian.qcow2", &v1alpha1.Checksum{SHA256: qsha}))
	// A raw image in a project: converted to qcow2.
	e.create("virtualimages", "default", &v1alpha1.VirtualImage{
		TypeMeta:   v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualImage"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: "rawimg"},
		Spec: v1alpha1.VirtualImageSpec{DataSource: v1alpha1.DataSource{Type: v1alpha1.DataSourceTypeHTTP,
			HTTP: &v1alpha1.DataSourceHTTP{URL: base + "/disk.raw"}}},
	})
	e.create("clustervirtualimages", "", httpCVI("install", base+"/install.iso", nil))
	e.create("clustervirtualimages", "", httpCVI("badsum", base+"/debian.qcow2", &v1alpha1.Checksum{SHA256: strings.Repeat("0", 64)}))
	e.create("clustervirtualimages", "", httpCVI("backed", base+"/backed.qcow2", nil))

	deb := waitFor(e, "clustervirtualimages", "", "debian", "Ready", cviReady)
	debPath := storage.ImagePath(e.dataDir, deb.UID)
	if deb.Status.Format != "qcow2" || deb.Status.CDROM || deb.Status.Progress != "100%" ||
		deb.Status.Size == nil || deb.Status.Size.Unpacked != "64Mi" || deb.Status.Size.UnpackedBytes != 64<<20 ||
		deb.Status.Size.StoredBytes <= 0 || deb.Status.Size.Stored == "" || deb.Status.SHA256 != qsha {
		t.Fatalf("debian status: %+v size %+v", deb.Status, deb.Status.Size)
	}
	if c := condOf(deb.Status.Conditions, "Ready"); c.Status != "True" {
		t.Fatalf("debian Ready condition: %+v", c)
	}
	if fileSHA(t, debPath) != qsha {
		t.Fatal("the stored qcow2 differs from the published one")
	}
	if !contains(deb.Finalizers, image.Finalizer) {
		t.Fatalf("finalizers %v", deb.Finalizers)
	}

	rawimg := waitFor(e, "virtualimages", "default", "rawimg", "Ready", func(i *v1alpha1.VirtualImage) bool { return i.Status.Phase == v1alpha1.ImagePhaseReady })
	if rawimg.Status.Format != "qcow2" || rawimg.Status.Size.UnpackedBytes != 8<<20 {
		t.Fatalf("raw image status: %+v", rawimg.Status)
	}
	if info, err := storage.Info(e.ctx(), storage.ImagePath(e.dataDir, rawimg.UID), "qcow2"); err != nil || info.Format != "qcow2" {
		t.Fatalf("raw image stored as %+v, %v", info, err)
	}
	iso := waitFor(e, "clustervirtualimages", "", "install", "Ready", cviReady)
	if iso.Status.Format != "iso" || !iso.Status.CDROM {
		t.Fatalf("iso status: %+v", iso.Status)
	}

	bad := waitFor(e, "clustervirtualimages", "", "badsum", "Failed", cviFailed)
	if c := condOf(bad.Status.Conditions, "Ready"); c.Status != "False" || c.Reason != "ChecksumMismatch" || !strings.Contains(c.Message, qsha) {
		t.Fatalf("checksum mismatch condition: %+v", c)
	}
	backed := waitFor(e, "clustervirtualimages", "", "backed", "Failed", cviFailed)
	if c := condOf(backed.Status.Conditions, "Ready"); c.Reason != "ImageRejected" || !strings.Contains(c.Message, "backing file") {
		t.Fatalf("backing file condition: %+v", c)
	}
	for _, i := range []*v1alpha1.ClusterVirtualImage{bad, backed} {
		if exists(storage.ImagePath(e.dataDir, i.UID)) {
			t.Fatalf("a failed import left a file for %s", i.Name)
		}
	}

	// A blank disk.
	e.create("virtualdisks", "default", blankDisk("blank", "1Gi"))
	blank := waitFor(e, "virtualdisks", "default", "blank", "Ready", diskReady)
	blankPath := storage.DiskPath(e.dataDir, "default", blank.UID)
	if blank.Status.Capacity != "1Gi" || blank.Status.Format != "qcow2" || blank.Status.Stats == nil ||
		blank.Status.Stats.CreationDuration == nil || blank.Status.Stats.CreationDuration.TotalProvisioning == "" {
		t.Fatalf("blank disk status: %+v", blank.Status)
	}
	if info, err := storage.Info(e.ctx(), blankPath, "qcow2"); err != nil || info.VirtualSize != 1<<30 || info.BackingFile != "" {
		t.Fatalf("blank disk file: %+v %v", info, err)
	}

	// A linked clone of the qcow2 image: O(1), backed by the image file.
	start := time.Now()
	e.create("virtualdisks", "default", imageDisk("linked", "ClusterVirtualImage", "debian", "10Gi", ""))
	linked := waitFor(e, "virtualdisks", "default", "linked", "Ready", diskReady)
	took := time.Since(start)
	if took > time.Second {
		t.Errorf("linked clone took %s from create to Ready, want < 1s", took)
	}
	linkedPath := storage.DiskPath(e.dataDir, "default", linked.UID)
	info, err := storage.Info(e.ctx(), linkedPath, "qcow2")
	if err != nil || info.BackingFile != debPath || info.BackingFormat != "qcow2" || info.VirtualSize != 10<<30 {
		t.Fatalf("linked clone: %+v %v (want backing %s)", info, err, debPath)
	}
	if linked.Status.Capacity != "10Gi" {
		t.Fatalf("linked capacity %q", linked.Status.Capacity)
	}
	// Without a size the disk gets the image's.
	e.create("virtualdisks", "default", imageDisk("nosize", "ClusterVirtualImage", "install", "", ""))
	nosize := waitFor(e, "virtualdisks", "default", "nosize", "Ready", diskReady)
	if info, err := storage.Info(e.ctx(), storage.DiskPath(e.dataDir, "default", nosize.UID), "qcow2"); err != nil ||
		info.BackingFormat != "raw" || info.VirtualSize != iso.Status.Size.UnpackedBytes {
		t.Fatalf("disk from an ISO: %+v %v", info, err)
	}

	// Requested smaller than the image: Failed with a clear message.
	e.create("virtualdisks", "default", imageDisk("small", "ClusterVirtualImage", "debian", "32Mi", ""))
	small := waitFor(e, "virtualdisks", "default", "small", "Failed", func(d *v1alpha1.VirtualDisk) bool { return d.Status.Phase == v1alpha1.DiskPhaseFailed })
	if c := condOf(small.Status.Conditions, "Ready"); c.Reason != disk.ReasonSizeTooSmall || !strings.Contains(c.Message, "64Mi") {
		t.Fatalf("size too small condition: %+v", c)
	}

	// A full copy of the project image: no backing file.
	e.create("virtualdisks", "default", imageDisk("full", "VirtualImage", "rawimg", "16Mi", v1alpha1.CloneModeFull))
	full := waitFor(e, "virtualdisks", "default", "full", "Ready", diskReady)
	if info, err := storage.Info(e.ctx(), storage.DiskPath(e.dataDir, "default", full.UID), "qcow2"); err != nil || info.BackingFile != "" || info.VirtualSize != 16<<20 {
		t.Fatalf("full copy: %+v %v", info, err)
	}

	// A disk waits (Pending, saying for what) for an image that does not exist yet.
	e.create("virtualdisks", "default", imageDisk("waiting", "ClusterVirtualImage", "later", "", ""))
	w := waitFor(e, "virtualdisks", "default", "waiting", "Pending", func(d *v1alpha1.VirtualDisk) bool { return d.Status.Phase == v1alpha1.DiskPhasePending })
	if c := condOf(w.Status.Conditions, "Ready"); c.Reason != disk.ReasonImageNotFound || !strings.Contains(c.Message, `"later"`) {
		t.Fatalf("waiting condition: %+v", c)
	}
	e.create("clustervirtualimages", "", httpCVI("later", base+"/debian.qcow2", nil))
	waitFor(e, "virtualdisks", "default", "waiting", "Ready", diskReady)

	// An image used as a linked-clone backing refuses to vanish.
	if err := e.c.Delete(e.ctx(), "clustervirtualimages", "", "debian"); err != nil {
		t.Fatal(err)
	}
	inuse := waitFor(e, "clustervirtualimages", "", "debian", "InUse", func(i *v1alpha1.ClusterVirtualImage) bool {
		return condOf(i.Status.Conditions, "InUse").Status == "True"
	})
	if !strings.Contains(condOf(inuse.Status.Conditions, "InUse").Message, "VirtualDisk default/linked") || inuse.Status.Phase != v1alpha1.ImagePhaseTerminating {
		t.Fatalf("in-use image: %+v", inuse.Status)
	}
	if !exists(debPath) {
		t.Fatal("the image file went while a disk uses it")
	}

	// A disk used by a VM keeps its file.
	vm := map[string]any{"apiVersion": v1alpha1.APIVersion, "kind": "VirtualMachine", "metadata": map[string]any{"name": "vm1"},
		"spec": map[string]any{"runPolicy": "AlwaysOff", "cpu": map[string]any{"cores": 1}, "memory": map[string]any{"size": "256Mi"},
			"blockDeviceRefs": []any{map[string]any{"kind": "VirtualDisk", "name": "linked"}}}}
	e.create("virtualmachines", "default", vm)
	if err := e.c.Delete(e.ctx(), "virtualdisks", "default", "linked"); err != nil {
		t.Fatal(err)
	}
	waitFor(e, "virtualdisks", "default", "linked", "InUse", func(d *v1alpha1.VirtualDisk) bool {
		return condOf(d.Status.Conditions, "InUse").Status == "True" && d.Status.Phase == v1alpha1.DiskPhaseTerminating
	})
	if !exists(linkedPath) {
		t.Fatal("the disk file went while a VM lists the disk")
	}
	// The VM goes: the disk goes, then the image.
	if err := e.c.Delete(e.ctx(), "virtualmachines", "default", "vm1"); err != nil {
		t.Fatal(err)
	}
	// No VM controller runs here: take off the cleanup finalizer the server put on the VM, as
	// it would for a VM on no node.
	if err := e.c.Patch(e.ctx(), "virtualmachines", "default", "vm1", []byte(`{"metadata":{"finalizers":null}}`), nil); err != nil {
		t.Fatal(err)
	}
	waitGone(e, "virtualdisks", "default", "linked")
	if exists(linkedPath) {
		t.Fatal("deleting the disk left its file")
	}
	waitGone(e, "clustervirtualimages", "", "debian")
	if exists(debPath) {
		t.Fatal("deleting the image left its file")
	}
	// Deleting a blank disk removes its file.
	if err := e.c.Delete(e.ctx(), "virtualdisks", "default", "blank"); err != nil {
		t.Fatal(err)
	}
	waitGone(e, "virtualdisks", "default", "blank")
	if exists(blankPath) {
		t.Fatal("deleting the blank disk left its file")
	}
}

// TestRestart: after a restart a Ready image is left alone, an interrupted import starts again
// and leftover temporary files are removed.
func TestRestart(t *testing.T) {
	e := newEnv(t)
	src := t.TempDir()
	imagetest.QCOW2(t, src, "a.qcow2", "32M")
	base := imagetest.Serve(t, src)
	e.create("clustervirtualimages", "", httpCVI("a", base+"/a.qcow2", nil))
	a := waitFor(e, "clustervirtualimages", "", "a", "Ready", cviReady)
	e.create("virtualdisks", "default", imageDisk("d", "ClusterVirtualImage", "a", "", ""))
	d := waitFor(e, "virtualdisks", "default", "d", "Ready", diskReady)
	e.stop()

	// While the controllers are down: an import "interrupted" mid-way, and stray temp files.
	e.create("clustervirtualimages", "", httpCVI("b", base+"/a.qcow2", nil))
	var b v1alpha1.ClusterVirtualImage
	if err := e.c.Get(e.ctx(), "clustervirtualimages", "", "b", &b); err != nil {
		t.Fatal(err)
	}
	b.Finalizers = []string{image.Finalizer}
	if err := e.c.Update(e.ctx(), "clustervirtualimages", "", "b", &b, &b); err != nil {
		t.Fatal(err)
	}
	b.Status = v1alpha1.ImageStatus{Phase: v1alpha1.ImagePhaseProvisioning, Progress: "40%"}
	if err := e.c.UpdateStatus(e.ctx(), "clustervirtualimages", "", "b", &b, nil); err != nil {
		t.Fatal(err)
	}
	strayImage := filepath.Join(e.dataDir, "images", storage.TempPrefix+b.UID+"-123")
	strayDisk := filepath.Join(e.dataDir, "pools", "default", "disks", storage.TempPrefix+"x-1")
	for _, p := range []string{strayImage, strayDisk} {
		if err := os.WriteFile(p, []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	aPath := storage.ImagePath(e.dataDir, a.UID)
	aStat, _ := os.Stat(aPath)

	e.start()
	waitFor(e, "clustervirtualimages", "", "b", "Ready", cviReady)
	for _, p := range []string{strayImage, strayDisk} {
		if exists(p) {
			t.Errorf("leftover %s not removed at start", p)
		}
	}
	var a2 v1alpha1.ClusterVirtualImage
	if err := e.c.Get(e.ctx(), "clustervirtualimages", "", "a", &a2); err != nil {
		t.Fatal(err)
	}
	a2Stat, _ := os.Stat(aPath)
	if a2.Status.Phase != v1alpha1.ImagePhaseReady || !a2Stat.ModTime().Equal(aStat.ModTime()) {
		t.Fatalf("the Ready image was touched on restart: %+v", a2.Status)
	}
	var d2 v1alpha1.VirtualDisk
	if err := e.c.Get(e.ctx(), "virtualdisks", "default", "d", &d2); err != nil || d2.Status.Phase != v1alpha1.DiskPhaseReady || d2.ResourceVersion != d.ResourceVersion {
		t.Fatalf("the Ready disk changed on restart: %+v %v (rv %s → %s)", d2.Status, err, d.ResourceVersion, d2.ResourceVersion)
	}
}

// TestProgressAndStreaming: a slow download reports progress and speed while it runs.
func TestProgressAndStreaming(t *testing.T) {
	e := newEnv(t)
	const size = 4 << 20
	payload := bytes.Repeat([]byte{0}, size) // a raw disk
	srv := slowServer(t, payload, 2*time.Second)
	e.create("clustervirtualimages", "", httpCVI("slow", srv+"/slow.raw", nil))
	mid := waitFor(e, "clustervirtualimages", "", "slow", "in progress", func(i *v1alpha1.ClusterVirtualImage) bool {
		return i.Status.Phase == v1alpha1.ImagePhaseProvisioning && i.Status.Progress != "" && i.Status.Progress != "0%" &&
			i.Status.Progress != "100%" && i.Status.DownloadSpeed != nil && i.Status.DownloadSpeed.AvgBytes > 0 &&
			i.Status.Size != nil && i.Status.Size.StoredBytes > 0 && i.Status.Size.StoredBytes < size
	})
	t.Logf("mid-import status: progress %s speed %+v size %+v", mid.Status.Progress, *mid.Status.DownloadSpeed, *mid.Status.Size)
	done := waitFor(e, "clustervirtualimages", "", "slow", "Ready", cviReady)
	if done.Status.Progress != "100%" || done.Status.Size.UnpackedBytes != size {
		t.Fatalf("final status %+v", done.Status)
	}
}

// slowServer serves payload over about d, in chunks, on 127.0.0.1.
func slowServer(t *testing.T, payload []byte, d time.Duration) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(len(payload)))
		const chunks = 20
		step := len(payload) / chunks
		for i := 0; i < chunks; i++ {
			if _, err := w.Write(payload[i*step : (i+1)*step]); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-time.After(d / chunks):
			case <-r.Context().Done():
				return
			}
		}
		w.Write(payload[chunks*step:])
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return "http://" + l.Addr().String()
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}
