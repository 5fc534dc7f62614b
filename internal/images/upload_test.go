package images_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/internal/images"
)

// TestUploadsBroker: a token is claimed once; the request is answered with the import's
// outcome; wrong tokens and methods are refused.
func TestUploadsBroker(t *testing.T) {
	u := &images.Uploads{}
	srv := httptest.NewServer(u)
	defer srv.Close()
	tok := images.NewUploadToken()
	if images.UploadToken(srv.URL+images.UploadPathPrefix+tok) != tok {
		t.Fatal("UploadToken does not read back a token")
	}
	w := u.Wait(tok)
	defer w.Close()
	type reply struct {
		code int
		body string
	}
	put := func(path, body string) chan reply {
		ch := make(chan reply, 1)
		go func() {
			req, _ := http.NewRequestWithContext(context.Background(), http.MethodPut, srv.URL+path, strings.NewReader(body))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				ch <- reply{code: -1, body: err.Error()}
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			ch <- reply{resp.StatusCode, string(b)}
		}()
		return ch
	}
	first := put(images.UploadPathPrefix+tok, "hello")
	var up *images.Upload
	select {
	case up = <-w.C():
	case <-time.After(30 * time.Second):
		t.Fatal("the upload did not reach the waiter")
	}
	b, _ := io.ReadAll(up.Body)
	if string(b) != "hello" || up.Size != 5 {
		t.Fatalf("body %q size %d", b, up.Size)
	}
	// The token is claimed: a second request is refused while the first is still open.
	if r := <-put(images.UploadPathPrefix+tok, "again"); r.code != http.StatusNotFound {
		t.Fatalf("second use: %+v", r)
	}
	up.Finish(&images.Error{Reason: images.ReasonChecksumMismatch, Err: io.ErrUnexpectedEOF})
	if r := <-first; r.code != http.StatusUnprocessableEntity || !strings.Contains(r.body, "ChecksumMismatch") {
		t.Fatalf("first upload answer: %+v", r)
	}
	if r := <-put(images.UploadPathPrefix+"short", "x"); r.code != http.StatusNotFound {
		t.Fatalf("malformed token: %+v", r)
	}
	resp, err := http.Get(srv.URL + images.UploadPathPrefix + images.NewUploadToken())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("GET: %d", resp.StatusCode)
	}
}
