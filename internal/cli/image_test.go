package cli

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/images"
)

func TestProgressBar(t *testing.T) {
	for _, tc := range []struct {
		n, total int64
		want     string
	}{
		{0, 100 << 20, "[>                             ]   0%  0/100Mi"},
		{50 << 20, 100 << 20, "[===============>              ]  50%  50Mi/100Mi"},
		{100 << 20, 100 << 20, "[==============================] 100%  100Mi/100Mi"},
		{0, 0, "[==============================] 100%  0/0"},
	} {
		got := progressBar(tc.n, tc.total, 2*time.Second)
		if !strings.HasPrefix(got, tc.want) {
			t.Errorf("progressBar(%d, %d) = %q, want prefix %q", tc.n, tc.total, got, tc.want)
		}
	}
	if got := progressBar(50<<20, 100<<20, 2*time.Second); !strings.Contains(got, "25Mi/s") {
		t.Errorf("speed: %q", got)
	}
}

// failAfter reads n bytes of r, then fails (the connection broke).
type failAfter struct {
	r io.Reader
	n int
}

func (f *failAfter) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, errors.New("connection reset")
	}
	if len(p) > f.n {
		p = p[:f.n]
	}
	k, err := f.r.Read(p)
	f.n -= k
	return k, err
}

// TestPutFileResumes: `rakhsh image upload` sends the rest of a file whose first request
// broke off, from the byte the server took, and the import reads the whole file once.
func TestPutFileResumes(t *testing.T) {
	uploadPause = 10 * time.Millisecond
	ups := &images.Uploads{}
	tok := images.NewUploadToken()
	w := ups.Wait(tok)
	defer w.Close()
	var cut atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && cut.CompareAndSwap(false, true) {
			// The first request breaks after 100 KiB: the server sees its body end in an
			// error, the client its connection closed.
			r.Body = io.NopCloser(&failAfter{r: r.Body, n: 100 << 10})
			ups.ServeHTTP(httptest.NewRecorder(), r)
			conn, _, err := rw.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
			return
		}
		ups.ServeHTTP(rw, r)
	}))
	defer srv.Close()
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	file := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	got := make(chan []byte, 1)
	go func() {
		up := <-w.C()
		b, err := io.ReadAll(up.Body)
		up.Finish(err)
		got <- b
	}()
	c, err := client.New(client.Config{Server: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out bytes.Buffer
	if err := putFile(context.Background(), c, images.UploadPathPrefix+tok, f, int64(len(data)), &out, false); err != nil {
		t.Fatalf("putFile: %v\n%s", err, out.String())
	}
	if !cut.Load() || !strings.Contains(out.String(), "resuming") {
		t.Fatalf("the first request was not cut, or putFile did not say it resumed: %q", out.String())
	}
	if b := <-got; !bytes.Equal(b, data) {
		t.Fatalf("the import read %d bytes, not the file's %d (or other bytes)", len(b), len(data))
	}
}
