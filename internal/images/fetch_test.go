package images_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/internal/images"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// httpDownloader is a Downloader over plain HTTP to a test server, answering as
// client.Client.Download does: 200, 206 and 416 come back, anything else is an error.
type httpDownloader struct{ base string }

func (d httpDownloader) Download(ctx context.Context, path string, h http.Header) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.base+path, nil)
	if err != nil {
		return nil, err
	}
	for k, v := range h {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	switch resp.StatusCode {
	case http.StatusOK, http.StatusPartialContent, http.StatusRequestedRangeNotSatisfiable:
		return resp, nil
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return nil, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(msg)))
}

const testUID = "0b5a8a4e-3c1d-4e55-9b7a-2f7c1e9d0a11"

func fetchFixture(t *testing.T, handler http.HandlerFunc) (*images.Fetcher, images.FetchRequest, []byte, *atomic.Int32) {
	t.Helper()
	data := []byte(strings.Repeat("rakhsh image bytes ", 100000))
	sum := sha256.Sum256(data)
	var gets atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gets.Add(1)
		if handler != nil {
			handler(w, r)
			return
		}
		w.Write(data)
	}))
	t.Cleanup(srv.Close)
	f := &images.Fetcher{Client: httpDownloader{srv.URL}, DataDir: t.TempDir()}
	req := images.FetchRequest{Resource: "clustervirtualimages", Name: "img", What: `ClusterVirtualImage "img"`,
		UID: testUID, SHA256: hex.EncodeToString(sum[:]), Size: int64(len(data))}
	return f, req, data, &gets
}

// imagesDirClean fails the test when the image store holds anything but want (no
// temporary or partial file).
func imagesDirClean(t *testing.T, dataDir string, want ...string) {
	t.Helper()
	ents, _ := os.ReadDir(filepath.Join(dataDir, "images"))
	var got []string
	for _, e := range ents {
		if e.Type().IsRegular() {
			got = append(got, e.Name())
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("image store holds %v, want %v", got, want)
	}
}

func TestFetchStoresAndLinksContent(t *testing.T) {
	f, req, data, gets := fetchFixture(t, nil)
	path, fetched, err := f.Ensure(context.Background(), req)
	if err != nil || !fetched {
		t.Fatalf("Ensure: %v (fetched %v)", err, fetched)
	}
	if path != storage.ImagePath(f.DataDir, testUID) {
		t.Fatalf("path %s", path)
	}
	got, _ := os.ReadFile(path)
	if string(got) != string(data) {
		t.Fatal("the stored file differs from the served one")
	}
	a, _ := os.Stat(path)
	b, err := os.Stat(storage.ContentPath(f.DataDir, req.SHA256))
	if err != nil || !os.SameFile(a, b) {
		t.Fatalf("the fetched file has no content-addressed name: %v", err)
	}
	imagesDirClean(t, f.DataDir, testUID)
	// There now: no second download.
	if _, fetched, err := f.Ensure(context.Background(), req); err != nil || fetched || gets.Load() != 1 {
		t.Fatalf("second Ensure: %v, fetched %v, %d GETs", err, fetched, gets.Load())
	}
	// Another image of the same content is linked, not downloaded.
	other := req
	other.UID = "1c6b9b5f-4d2e-4f66-8c8b-3a8d2f0e1b22"
	p2, _, err := f.Ensure(context.Background(), other)
	if err != nil || gets.Load() != 1 {
		t.Fatalf("same content, other uid: %v, %d GETs", err, gets.Load())
	}
	c, _ := os.Stat(p2)
	if !os.SameFile(a, c) {
		t.Fatal("the second image is not a link to the stored content")
	}
}

func TestFetchConcurrentShareOneDownload(t *testing.T) {
	release := make(chan struct{})
	var data []byte
	f, req, data0, gets := fetchFixture(t, func(w http.ResponseWriter, r *http.Request) {
		<-release
		w.Write(data)
	})
	data = data0
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, errs[i] = f.Ensure(context.Background(), req)
		}()
	}
	// Let every caller reach the fetch before the server answers.
	for gets.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	close(release)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("caller %d: %v", i, err)
		}
	}
	if g := gets.Load(); g != 1 {
		t.Fatalf("%d downloads for %d concurrent callers, want 1", g, n)
	}
	imagesDirClean(t, f.DataDir, testUID)
}

func TestFetchRefusesWrongContent(t *testing.T) {
	for name, tc := range map[string]struct {
		serve func(w http.ResponseWriter, data []byte)
		want  string
	}{
		"other bytes": {func(w http.ResponseWriter, data []byte) {
			b := append([]byte(nil), data...)
			b[10] ^= 1
			w.Write(b)
		}, "sha256"},
		"longer":  {func(w http.ResponseWriter, data []byte) { w.Write(append(data, 'x')) }, "storedBytes"},
		"shorter": {func(w http.ResponseWriter, data []byte) { w.Write(data[:len(data)-1]) }, "storedBytes"},
		"cut short": {func(w http.ResponseWriter, data []byte) {
			w.Header().Set("Content-Length", fmt.Sprint(len(data)))
			w.Write(data[:len(data)/2])
			// The handler returns early: the server closes the connection mid-body.
		}, "cut short"},
		"relay error": {func(w http.ResponseWriter, data []byte) {
			http.Error(w, `no control-plane member serves the file; it is stored on h1, which is not up`, http.StatusServiceUnavailable)
		}, "stored on h1"},
	} {
		t.Run(name, func(t *testing.T) {
			var data []byte
			f, req, d, _ := fetchFixture(t, func(w http.ResponseWriter, r *http.Request) { tc.serve(w, data) })
			data = d
			_, _, err := f.Ensure(context.Background(), req)
			var fe *images.FetchError
			if !errors.As(err, &fe) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), `ClusterVirtualImage "img"`) {
				t.Fatalf("err = %v, want a FetchError naming the image and %q", err, tc.want)
			}
			imagesDirClean(t, f.DataDir)
		})
	}
}

func TestFetchCancelledLeavesNothing(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	f, req, _, _ := fetchFixture(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "10000000")
		w.Write([]byte("partial"))
		w.(http.Flusher).Flush()
		cancel()
		<-r.Context().Done()
	})
	if _, _, err := f.Ensure(ctx, req); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	imagesDirClean(t, f.DataDir)
}

func TestStoredOn(t *testing.T) {
	if got := images.StoredOn(map[string]string{images.AnnotationStoredOn: " h1, ,h2"}); fmt.Sprint(got) != "[h1 h2]" {
		t.Fatalf("StoredOn = %v", got)
	}
	if got := images.StoredOn(nil); got != nil {
		t.Fatalf("StoredOn(nil) = %v", got)
	}
}
