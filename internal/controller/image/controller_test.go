package image

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/images"
	"github.com/rakhsh/rakhsh/internal/images/imagetest"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/runtime/fake"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// env is the image controller running against the fake client, with a file server of test
// images.
type env struct {
	t       *testing.T
	fc      *fake.Client
	c       *Controller
	dataDir string
	srcDir  string
	url     string
	ctx     context.Context
}

func newEnv(t *testing.T, mod func(*Config)) *env {
	t.Helper()
	imagetest.Need(t, "qemu-img", "prlimit")
	e := &env{t: t, fc: fake.New(), dataDir: t.TempDir(), srcDir: t.TempDir()}
	e.url = imagetest.Serve(t, e.srcDir)
	cfg := Config{Deps: runtime.Deps{Client: e.fc, Log: fake.Logger(t, slog.LevelDebug)}, DataDir: e.dataDir, ProgressInterval: 20 * time.Millisecond, RetryDelay: time.Hour}
	if mod != nil {
		mod(&cfg)
	}
	e.c = New(cfg)
	e.ctx = fake.Run(t, e.c)
	return e
}

func httpImage(name, url string) *v1alpha1.VirtualImage {
	return &v1alpha1.VirtualImage{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualImage"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: name, Namespace: "p1"},
		Spec: v1alpha1.VirtualImageSpec{DataSource: v1alpha1.DataSource{Type: v1alpha1.DataSourceTypeHTTP,
			HTTP: &v1alpha1.DataSourceHTTP{URL: url}}}}
}

func (e *env) create(obj any) {
	e.t.Helper()
	var err error
	switch o := obj.(type) {
	case *v1alpha1.VirtualImage:
		err = e.fc.Create(e.ctx, "virtualimages", o.Namespace, o, nil)
	case *v1alpha1.ClusterVirtualImage:
		err = e.fc.Create(e.ctx, "clustervirtualimages", "", o, nil)
	case *v1alpha1.VirtualMachine:
		err = e.fc.Create(e.ctx, "virtualmachines", o.Namespace, o, nil)
	default:
		err = fmt.Errorf("unexpected %T", obj)
	}
	if err != nil {
		e.t.Fatal(err)
	}
}

// waitVI waits until the VirtualImage p1/name satisfies ok and returns it.
func (e *env) waitVI(name, what string, ok func(*v1alpha1.VirtualImage) bool) *v1alpha1.VirtualImage {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var vi v1alpha1.VirtualImage
	for {
		vi = v1alpha1.VirtualImage{} // decoding over the last read would keep pointers the object lost
		err := e.fc.Get(e.ctx, "virtualimages", "p1", name, &vi)
		if err == nil && ok(&vi) {
			return &vi
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("image %s: timed out waiting for %s (err %v, status %+v)", name, what, err, vi.Status)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func phaseIs(p v1alpha1.ImagePhase) func(*v1alpha1.VirtualImage) bool {
	return func(vi *v1alpha1.VirtualImage) bool { return vi.Status.Phase == p }
}

func readyCond(st v1alpha1.ImageStatus) *v1alpha1.Condition {
	return v1alpha1.FindCondition(st.Conditions, v1alpha1.ImageConditionReady)
}

func (e *env) eventReasons() map[string]bool {
	l, err := e.fc.List(e.ctx, "events", "", client.ListOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string]bool{}
	for _, raw := range l.Items {
		var ev v1alpha1.Event
		if err := json.Unmarshal(raw, &ev); err == nil {
			out[ev.Reason] = true
		}
	}
	return out
}

func TestHTTPImportBecomesReady(t *testing.T) {
	e := newEnv(t, nil)
	imagetest.QCOW2(t, e.srcDir, "disk.qcow2", "32M")
	e.create(httpImage("web", e.url+"/disk.qcow2"))
	vi := e.waitVI("web", "Ready", phaseIs(v1alpha1.ImagePhaseReady))
	if vi.Status.Format != "qcow2" || vi.Status.Size == nil || vi.Status.Size.UnpackedBytes != 32<<20 || vi.Status.Progress != "100%" {
		t.Errorf("status of the imported image: format %q size %+v progress %q", vi.Status.Format, vi.Status.Size, vi.Status.Progress)
	}
	if c := readyCond(vi.Status); c == nil || c.Status != v1alpha1.ConditionTrue || c.Reason != ReasonReady {
		t.Errorf("Ready condition %+v", c)
	}
	if !fileExists(storage.ImagePath(e.dataDir, vi.UID)) {
		t.Error("the image file is not in the store")
	}
	found := false
	for _, f := range vi.Finalizers {
		found = found || f == Finalizer
	}
	if !found {
		t.Errorf("finalizers %v lack %s", vi.Finalizers, Finalizer)
	}
	if ev := e.eventReasons(); !ev["ImportStarted"] || !ev["Ready"] {
		t.Errorf("events %v, want ImportStarted and Ready", ev)
	}
	// The status went through Provisioning: the controller wrote it before importing.
	sawProvisioning := false
	for _, a := range e.fc.Actions() {
		if a.Resource == "virtualimages" && strings.Contains(string(a.Body), `"phase":"Provisioning"`) {
			sawProvisioning = true
		}
	}
	if !sawProvisioning {
		t.Error("no status write of phase Provisioning")
	}

	// Deleting the image removes its file, then the finalizer, then the object.
	if err := e.fc.Delete(e.ctx, "virtualimages", "p1", "web"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := e.fc.Get(e.ctx, "virtualimages", "p1", "web", &v1alpha1.VirtualImage{})
		if client.IsNotFound(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the deleted image is still there: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if fileExists(storage.ImagePath(e.dataDir, vi.UID)) {
		t.Error("the file of the deleted image is still there")
	}
}

func TestTransientFailureIsRetried(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.RetryDelay = 300 * time.Millisecond })
	e.create(httpImage("late", e.url+"/late.qcow2")) // 404 until the file appears
	vi := e.waitVI("late", "Failed", phaseIs(v1alpha1.ImagePhaseFailed))
	c := readyCond(vi.Status)
	if c == nil || c.Reason != images.ReasonHTTPError || !strings.Contains(c.Message, "retrying in") {
		t.Fatalf("Ready condition of a 404 %+v, want reason %s saying it retries", c, images.ReasonHTTPError)
	}
	if ev := e.eventReasons(); !ev[images.ReasonHTTPError] {
		t.Errorf("events %v lack the failure", ev)
	}
	// The file appears whole (made under another name, then renamed): a retry that read it
	// half-written would fail for good and the test with it.
	if err := os.Rename(imagetest.QCOW2(t, e.srcDir, "late.qcow2.part", "16M"), filepath.Join(e.srcDir, "late.qcow2")); err != nil {
		t.Fatal(err)
	}
	e.waitVI("late", "Ready after the retry", phaseIs(v1alpha1.ImagePhaseReady))
}

func TestPermanentFailureStays(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.RetryDelay = 50 * time.Millisecond })
	imagetest.QCOW2(t, e.srcDir, "disk.qcow2", "16M")
	img := httpImage("sum", e.url+"/disk.qcow2")
	img.Spec.DataSource.HTTP.Checksum = &v1alpha1.Checksum{SHA256: strings.Repeat("ab", 32)}
	e.create(img)
	vi := e.waitVI("sum", "Failed", phaseIs(v1alpha1.ImagePhaseFailed))
	if c := readyCond(vi.Status); c == nil || c.Reason != images.ReasonChecksumMismatch || strings.Contains(c.Message, "retrying") {
		t.Fatalf("Ready condition %+v, want a checksum mismatch that is not retried", c)
	}
	// Many retry delays later nothing was tried again: the status did not change.
	rv := vi.ResourceVersion
	time.Sleep(300 * time.Millisecond)
	vi = e.waitVI("sum", "Failed", phaseIs(v1alpha1.ImagePhaseFailed))
	if vi.ResourceVersion != rv {
		t.Errorf("a permanently failed image was written again (rv %s -> %s, status %+v)", rv, vi.ResourceVersion, vi.Status)
	}
	if fileExists(storage.ImagePath(e.dataDir, vi.UID)) {
		t.Error("a file of the failed import is in the store")
	}
}

func TestRejectedImageFails(t *testing.T) {
	e := newEnv(t, nil)
	imagetest.WithBacking(t, e.srcDir, "backed.qcow2")
	e.create(httpImage("backed", e.url+"/backed.qcow2"))
	vi := e.waitVI("backed", "Failed", phaseIs(v1alpha1.ImagePhaseFailed))
	if c := readyCond(vi.Status); c == nil || c.Reason != images.ReasonImageRejected {
		t.Fatalf("Ready condition %+v, want %s for an image with a backing file", c, images.ReasonImageRejected)
	}
}

func TestPendingReasons(t *testing.T) {
	e := newEnv(t, nil)
	for _, tc := range []struct {
		name   string
		ds     v1alpha1.DataSource
		reason string
	}{
		{"upload", v1alpha1.DataSource{Type: v1alpha1.DataSourceTypeUpload}, ReasonNotSupported}, // no upload endpoint
		{"missing-src", v1alpha1.DataSource{Type: v1alpha1.DataSourceTypeObjectRef,
			ObjectRef: &v1alpha1.DataSourceObjectRef{Kind: v1alpha1.DataSourceKindClusterVirtualImage, Name: "nope"}}, ReasonWaitForSource},
	} {
		img := httpImage(tc.name, "")
		img.Spec.DataSource = tc.ds
		e.create(img)
		vi := e.waitVI(tc.name, "Pending", phaseIs(v1alpha1.ImagePhasePending))
		if c := readyCond(vi.Status); c == nil || c.Reason != tc.reason {
			t.Errorf("%s: Ready condition %+v, want reason %s", tc.name, c, tc.reason)
		}
	}
}

func TestCopyWaitsForSourceImage(t *testing.T) {
	e := newEnv(t, nil)
	copyImg := httpImage("copy", "")
	copyImg.Spec.DataSource = v1alpha1.DataSource{Type: v1alpha1.DataSourceTypeObjectRef,
		ObjectRef: &v1alpha1.DataSourceObjectRef{Kind: v1alpha1.DataSourceKindVirtualImage, Name: "base"}}
	e.create(copyImg)
	vi := e.waitVI("copy", "Pending", phaseIs(v1alpha1.ImagePhasePending))
	if c := readyCond(vi.Status); c == nil || c.Reason != ReasonWaitForSource {
		t.Fatalf("copy of a missing image: %+v", c)
	}
	// The source arrives and imports: its change queues the copy, which then copies it.
	imagetest.QCOW2(t, e.srcDir, "base.qcow2", "16M")
	e.create(httpImage("base", e.url+"/base.qcow2"))
	base := e.waitVI("base", "Ready", phaseIs(v1alpha1.ImagePhaseReady))
	cp := e.waitVI("copy", "Ready", phaseIs(v1alpha1.ImagePhaseReady))
	if cp.Status.Format != base.Status.Format || cp.UID == base.UID || !fileExists(storage.ImagePath(e.dataDir, cp.UID)) {
		t.Errorf("copy status %+v", cp.Status)
	}
}

func TestDeleteWaitsForVMUsingImage(t *testing.T) {
	e := newEnv(t, nil)
	imagetest.QCOW2(t, e.srcDir, "disk.qcow2", "16M")
	e.create(httpImage("boot", e.url+"/disk.qcow2"))
	vi := e.waitVI("boot", "Ready", phaseIs(v1alpha1.ImagePhaseReady))
	vm := &v1alpha1.VirtualMachine{ObjectMeta: v1alpha1.ObjectMeta{Name: "vm1", Namespace: "p1"}}
	vm.Spec.BlockDeviceRefs = []v1alpha1.BlockDeviceSpecRef{{Kind: v1alpha1.BlockDeviceKindVirtualImage, Name: "boot"}}
	if err := e.fc.Add(vm); err != nil {
		t.Fatal(err)
	}
	// Let the controller's VM cache see the VM before the delete.
	time.Sleep(100 * time.Millisecond)
	if err := e.fc.Delete(e.ctx, "virtualimages", "p1", "boot"); err != nil {
		t.Fatal(err)
	}
	vi = e.waitVI("boot", "Terminating", phaseIs(v1alpha1.ImagePhaseTerminating))
	c := v1alpha1.FindCondition(vi.Status.Conditions, v1alpha1.ImageConditionInUse)
	if c == nil || !strings.Contains(c.Message, "VirtualMachine p1/vm1") {
		t.Fatalf("InUse condition %+v, want it to name the VM", c)
	}
	if !fileExists(storage.ImagePath(e.dataDir, vi.UID)) {
		t.Fatal("the file of an image in use was removed")
	}
	// The VM goes: its change frees the image at once (no wait for the 30 s requeue).
	if err := e.fc.Delete(e.ctx, "virtualmachines", "p1", "vm1"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !client.IsNotFound(e.fc.Get(e.ctx, "virtualimages", "p1", "boot", &v1alpha1.VirtualImage{})) {
		if time.Now().After(deadline) {
			t.Fatal("the image was not deleted once the VM went")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestLostFileIsReported(t *testing.T) {
	e := newEnv(t, nil)
	imagetest.QCOW2(t, e.srcDir, "disk.qcow2", "16M")
	e.create(httpImage("lost", e.url+"/disk.qcow2"))
	vi := e.waitVI("lost", "Ready", phaseIs(v1alpha1.ImagePhaseReady))
	if err := os.Remove(storage.ImagePath(e.dataDir, vi.UID)); err != nil {
		t.Fatal(err)
	}
	// Any change queues the image again.
	if err := e.fc.Patch(e.ctx, "virtualimages", "p1", "lost", []byte(`{"metadata":{"labels":{"poke":"1"}}}`), nil); err != nil {
		t.Fatal(err)
	}
	vi = e.waitVI("lost", "ImageLost", phaseIs(v1alpha1.ImagePhaseImageLost))
	if c := readyCond(vi.Status); c == nil || c.Reason != ReasonImageLost {
		t.Errorf("Ready condition %+v", c)
	}
}

func TestStatusWriteConflictsAreRetried(t *testing.T) {
	var mu sync.Mutex
	failures := 0
	e := newEnv(t, nil)
	e.fc.SetHook(func(a fake.Action) error {
		mu.Lock()
		defer mu.Unlock()
		// The first two full status writes meet a conflict, as when another writer got there
		// first; the controller must try again and get the image Ready anyway.
		if a.Verb == "updatestatus" && a.Resource == "virtualimages" && failures < 2 {
			failures++
			return fake.Conflict(a.Resource, a.Name)
		}
		return nil
	})
	imagetest.QCOW2(t, e.srcDir, "disk.qcow2", "16M")
	e.create(httpImage("busy", e.url+"/disk.qcow2"))
	e.waitVI("busy", "Ready", phaseIs(v1alpha1.ImagePhaseReady))
	mu.Lock()
	defer mu.Unlock()
	if failures != 2 {
		t.Errorf("%d conflicts injected, want 2", failures)
	}
}

func TestClusterImageAndAdoption(t *testing.T) {
	imagetest.Need(t, "qemu-img", "prlimit")
	fc := fake.New()
	dataDir, srcDir := t.TempDir(), t.TempDir()
	url := imagetest.Serve(t, srcDir)
	imagetest.QCOW2(t, srcDir, "disk.qcow2", "16M")
	cvi := &v1alpha1.ClusterVirtualImage{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "ClusterVirtualImage"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: "shared", UID: "0b7c6c9e-1111-4222-8333-444455556666", Finalizers: []string{Finalizer}},
		Spec: v1alpha1.ClusterVirtualImageSpec{DataSource: v1alpha1.DataSource{Type: v1alpha1.DataSourceTypeHTTP,
			HTTP: &v1alpha1.DataSourceHTTP{URL: url + "/disk.qcow2"}}}}
	if err := fc.Add(cvi); err != nil {
		t.Fatal(err)
	}
	// A file already stored without a Ready status (a crash between the rename and the
	// status write) is adopted after a check, not imported again.
	if err := os.MkdirAll(storage.ImagePath(dataDir, ""), 0o700); err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile(srcDir + "/disk.qcow2")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(storage.ImagePath(dataDir, cvi.UID), src, 0o600); err != nil {
		t.Fatal(err)
	}
	c := New(Config{Deps: runtime.Deps{Client: fc, Log: fake.Logger(t, slog.LevelInfo)}, DataDir: dataDir})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(10 * time.Second)
	var got v1alpha1.ClusterVirtualImage
	for {
		if err := fc.Get(ctx, "clustervirtualimages", "", "shared", &got); err == nil && got.Status.Phase == v1alpha1.ImagePhaseReady {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cluster image not Ready: %+v", got.Status)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, a := range fc.Actions() {
		if a.Verb == "updatestatus" && strings.Contains(string(a.Body), `"phase":"Provisioning"`) {
			t.Fatal("the stored file was imported again instead of adopted")
		}
	}
}

func uploadImage(name string) *v1alpha1.VirtualImage {
	img := httpImage(name, "")
	img.Spec.DataSource = v1alpha1.DataSource{Type: v1alpha1.DataSourceTypeUpload}
	return img
}

func TestUploadWaitsThenImports(t *testing.T) {
	ups := &images.Uploads{}
	e := newEnv(t, func(c *Config) { c.Uploads = ups; c.UploadTimeout = time.Minute })
	e.create(uploadImage("up"))
	vi := e.waitVI("up", "WaitForUserUpload", func(vi *v1alpha1.VirtualImage) bool {
		return vi.Status.Phase == v1alpha1.ImagePhaseWaitForUserUpload && vi.Status.ImageUploadURLs != nil
	})
	tok := images.UploadToken(vi.Status.ImageUploadURLs.External)
	if tok == "" || !strings.HasPrefix(vi.Status.ImageUploadURLs.External, images.UploadPathPrefix) {
		t.Fatalf("upload URLs %+v", vi.Status.ImageUploadURLs)
	}
	src := imagetest.QCOW2(t, e.srcDir, "up.qcow2", "16M")
	body, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(ups)
	defer srv.Close()
	req, _ := http.NewRequest(http.MethodPut, srv.URL+images.UploadPathPrefix+tok, bytes.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("upload answered %s", resp.Status)
	}
	vi = e.waitVI("up", "Ready", phaseIs(v1alpha1.ImagePhaseReady))
	if vi.Status.ImageUploadURLs != nil || vi.Status.Format != "qcow2" {
		t.Errorf("after the upload: URLs %+v (single-use), format %q", vi.Status.ImageUploadURLs, vi.Status.Format)
	}
}

func TestUploadTimesOut(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Uploads = &images.Uploads{}; c.UploadTimeout = 100 * time.Millisecond })
	e.create(uploadImage("late"))
	vi := e.waitVI("late", "Failed", phaseIs(v1alpha1.ImagePhaseFailed))
	if c := readyCond(vi.Status); c == nil || c.Reason != images.ReasonUploadTimeout || vi.Status.ImageUploadURLs != nil {
		t.Errorf("Ready condition %+v, URLs %+v", c, vi.Status.ImageUploadURLs)
	}
}

// fileDownloader serves image data from a directory of files named by image uid (the store of
// "another serve"), while up; down, it fails as the API does when that serve is unreachable.
type fileDownloader struct {
	dir  string
	mu   sync.Mutex
	up   bool
	gets int
}

func (d *fileDownloader) Download(ctx context.Context, path string, _ http.Header) (*http.Response, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.gets++
	if !d.up {
		return nil, fmt.Errorf("it is stored on h1, not reached")
	}
	f, err := os.Open(d.dir + "/" + path[strings.LastIndexByte(path, '/')+1:])
	if err != nil {
		return nil, err
	}
	return &http.Response{StatusCode: http.StatusOK, Status: "200 OK", Body: f}, nil
}

// TestReadyFileFetchedFromAnotherServe: a Ready image whose file is not in this serve's store
// while the stored-on annotation names another serve (h1) stays Ready while the fetch fails
// (tried again after FetchRetryDelay), and its file is fetched into this store once h1 answers;
// the annotation then lists this serve too.
func TestReadyFileFetchedFromAnotherServe(t *testing.T) {
	dl := &fileDownloader{dir: t.TempDir(), up: true}
	e := newEnv(t, func(c *Config) {
		c.NodeName, c.FetchRetryDelay = "h2", 200*time.Millisecond
		c.Fetcher = &images.Fetcher{Client: dl, DataDir: c.DataDir, Annotate: c.Client, NodeName: "h2"}
	})
	imagetest.QCOW2(t, e.srcDir, "disk.qcow2", "16M")
	e.create(httpImage("far", e.url+"/disk.qcow2"))
	vi := e.waitVI("far", "Ready on h2", func(vi *v1alpha1.VirtualImage) bool {
		return vi.Status.Phase == v1alpha1.ImagePhaseReady && vi.Annotations[images.AnnotationStoredOn] == "h2"
	})
	// As if h1 had imported it: the file is in h1's store only, and h1 is down.
	path := storage.ImagePath(e.dataDir, vi.UID)
	if err := os.Rename(path, dl.dir+"/data"); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(storage.ContentPath(e.dataDir, vi.Status.SHA256)); err != nil { // else the fetch links it
		t.Fatal(err)
	}
	dl.mu.Lock()
	dl.up = false
	dl.mu.Unlock()
	if err := e.fc.Patch(e.ctx, "virtualimages", "p1", "far", []byte(`{"metadata":{"annotations":{"`+images.AnnotationStoredOn+`":"h1"}}}`), nil); err != nil {
		t.Fatal(err)
	}
	// Two failed fetches (the first and one retry), however slow this machine is.
	start := time.Now()
	deadline := start.Add(20 * time.Second)
	gets := 0
	for gets < 2 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		dl.mu.Lock()
		gets = dl.gets
		dl.mu.Unlock()
	}
	vi = e.waitVI("far", "still Ready", func(*v1alpha1.VirtualImage) bool { return true })
	dl.mu.Lock()
	gets = dl.gets
	dl.up = true
	dl.mu.Unlock()
	elapsed := time.Since(start)
	if vi.Status.Phase != v1alpha1.ImagePhaseReady {
		t.Fatalf("with h1 down the image turned %s, want Ready", vi.Status.Phase)
	}
	// No faster than the retry delay allows: one try at once, then one per 200 ms at most.
	if most := int(elapsed/(200*time.Millisecond)) + 2; gets < 2 || gets > most {
		t.Errorf("%d fetch attempts in %v with a retry delay of 200 ms, want 2..%d", gets, elapsed.Round(time.Millisecond), most)
	}
	e.waitVI("far", "fetched, stored on h1 and h2", func(vi *v1alpha1.VirtualImage) bool {
		return vi.Annotations[images.AnnotationStoredOn] == "h1,h2" && fileExists(path)
	})
}
