package disk_test

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/controller/disk"
	"github.com/rakhsh/rakhsh/internal/images"
	"github.com/rakhsh/rakhsh/internal/images/imagetest"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/runtime/fake"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// relayDownloader stands in for the API's image data relay: it serves the image file from
// "another serve's" data dir while up is set, and answers as the relay does when the serve
// holding the file is down otherwise.
type relayDownloader struct {
	srv  *httptest.Server
	gets atomic.Int32
}

func (r *relayDownloader) Download(ctx context.Context, path string, h http.Header) (*http.Response, error) {
	r.gets.Add(1)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, r.srv.URL+path, nil)
	resp, err := r.srv.Client().Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, &client.Error{Status: v1alpha1.Status{Status: "Failure", Code: resp.StatusCode, Message: resp.Header.Get("X-Msg")}}
	}
	return resp, nil
}

// TestDiskFromImageFetched: a disk made from a Ready image whose file is not in this serve's
// image store (it was imported while another serve led) waits, Pending with a condition naming
// the image and the unreachable serve, while the fetch fails, without a busy loop; once the
// serve holding the file answers, the file is fetched into the image store (checked), the disk
// is made as a linked clone of it and the image's stored-on annotation gains this serve.
func TestDiskFromImageFetched(t *testing.T) {
	imagetest.Need(t, "qemu-img", "prlimit")
	old := disk.FetchRetryDelay
	disk.FetchRetryDelay = 500 * time.Millisecond
	t.Cleanup(func() { disk.FetchRetryDelay = old })
	fc := fake.New()
	dataDir, otherDir := t.TempDir(), t.TempDir()
	log := fake.Logger(t, slog.LevelInfo)
	mkClass(t, fc, v1alpha1.DefaultStorageClassName, true, v1alpha1.StorageClassSpec{Type: v1alpha1.StorageClassTypeLocal})

	// The file is in h1's image store, not in this serve's.
	img, file := readyImage(t, fc, otherDir, map[string]string{images.AnnotationStoredOn: "h1"})
	var up atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !up.Load() || r.URL.Path != client.Path("clustervirtualimages", "", "base", "data") {
			w.Header().Set("X-Msg", `ClusterVirtualImage "base" is Ready but its file is not on this serve (h2) and no control-plane member served it; it is stored on h1, not reached`)
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		http.ServeFile(w, r, file)
	}))
	t.Cleanup(srv.Close)
	dl := &relayDownloader{srv: srv}
	_, ctx := fake.Start(t, fc, log, func(f *runtime.Factory) (*disk.Controller, error) {
		return disk.New(disk.Config{Deps: runtime.Deps{Client: fc, Informers: f, Log: log}, DataDir: dataDir, NodeName: "h2",
			Fetcher: &images.Fetcher{Client: dl, DataDir: dataDir, Annotate: fc, NodeName: "h2"}}), nil
	})

	vd := &v1alpha1.VirtualDisk{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualDisk"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: "d", Namespace: "p1"},
		Spec: v1alpha1.VirtualDiskSpec{DataSource: &v1alpha1.DataSource{Type: v1alpha1.DataSourceTypeObjectRef,
			ObjectRef: &v1alpha1.DataSourceObjectRef{Kind: v1alpha1.DataSourceKindClusterVirtualImage, Name: "base"}}}}
	if err := fc.Create(ctx, "virtualdisks", "p1", vd, nil); err != nil {
		t.Fatal(err)
	}
	var d v1alpha1.VirtualDisk
	fc.WaitFor(t, 20*time.Second, "virtualdisks", "p1", "d", &d, func() bool {
		cond := v1alpha1.FindCondition(d.Status.Conditions, v1alpha1.DiskConditionReady)
		return cond != nil && cond.Reason == disk.ReasonImageFetchFailed
	})
	msg := v1alpha1.FindCondition(d.Status.Conditions, v1alpha1.DiskConditionReady).Message
	for _, want := range []string{`ClusterVirtualImage "base"`, "stored on h1", "this serve is h2"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the condition does not say %q: %s", want, msg)
		}
	}
	if d.Status.Phase != v1alpha1.DiskPhasePending {
		t.Errorf("phase %s while the fetch fails, want Pending", d.Status.Phase)
	}
	// Tried again after the delay, not in a loop.
	time.Sleep(1200 * time.Millisecond)
	if n := dl.gets.Load(); n < 2 || n > 4 {
		t.Errorf("%d fetch attempts in 1.2 s with a retry delay of 0.5 s", n)
	}
	if ents, _ := os.ReadDir(filepath.Dir(storage.ImagePath(dataDir, "x"))); len(ents) > 0 {
		t.Errorf("failed fetches left files in the image store: %v", ents)
	}

	up.Store(true)
	fc.WaitFor(t, 20*time.Second, "virtualdisks", "p1", "d", &d, func() bool { return d.Status.Phase == v1alpha1.DiskPhaseReady })
	chain, err := storage.CheckChain(storage.DiskPath(dataDir, storage.DefaultPool, d.UID), "qcow2")
	if err != nil || len(chain) != 2 || chain[1].Path != storage.ImagePath(dataDir, img.UID) {
		t.Fatalf("the disk's chain %v (%v), want a clone of the fetched file in this serve's image store", chain, err)
	}
	var now v1alpha1.ClusterVirtualImage
	fc.WaitFor(t, 5*time.Second, "clustervirtualimages", "", "base", &now, func() bool {
		return now.Annotations[images.AnnotationStoredOn] == "h1,h2"
	})
}
