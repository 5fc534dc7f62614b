package images_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/internal/images"
	"github.com/rakhsh/rakhsh/internal/images/imagetest"
)

// TestImportResumesWithRange: a download whose connection breaks mid-way is resumed with a
// Range request when the server supports byte ranges, and fails (to be retried) when it does
// not.
func TestImportResumesWithRange(t *testing.T) {
	imagetest.Need(t, "qemu-img", "prlimit")
	dir := t.TempDir()
	qcow := imagetest.Raw(t, dir, "disk.raw", 4<<20)
	data, err := os.ReadFile(qcow)
	if err != nil {
		t.Fatal(err)
	}
	mod := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	var calls, ranged atomic.Int32
	// Every full answer is cut after a third of the file; ranges are served whole.
	handler := func(withRanges bool) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			calls.Add(1)
			if withRanges && r.Header.Get("Range") != "" {
				ranged.Add(1)
				http.ServeContent(w, r, "disk.raw", mod, bytes.NewReader(data))
				return
			}
			if withRanges {
				w.Header().Set("Accept-Ranges", "bytes")
				w.Header().Set("Last-Modified", mod.Format(http.TimeFormat))
			}
			w.Header().Set("Content-Length", strconv.Itoa(len(data)))
			w.WriteHeader(http.StatusOK)
			w.Write(data[:len(data)/3])
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler) // the connection breaks
		}
	}
	ctx := context.Background()

	srv := httptest.NewServer(handler(true))
	defer srv.Close()
	res, err := images.ImportHTTP(ctx, images.HTTPSource{URL: srv.URL + "/disk.raw"}, filepath.Join(dir, "resumed"), images.Options{Network: imagetest.AllowLoopback()})
	if err != nil {
		t.Fatalf("a resumable download failed: %v", err)
	}
	if ranged.Load() != 1 || res.VirtualSize != 4<<20 {
		t.Fatalf("range requests %d, result %+v", ranged.Load(), res)
	}

	calls.Store(0)
	plain := httptest.NewServer(handler(false))
	defer plain.Close()
	_, err = images.ImportHTTP(ctx, images.HTTPSource{URL: plain.URL + "/disk.raw"}, filepath.Join(dir, "cut"), images.Options{Network: imagetest.AllowLoopback()})
	var ie *images.Error
	if !errors.As(err, &ie) || ie.Reason != images.ReasonDownloadFailed || !ie.Transient || calls.Load() != 1 {
		t.Fatalf("a cut download without ranges: %v (calls %d)", err, calls.Load())
	}
	assertNoTemp(t, dir)
}
