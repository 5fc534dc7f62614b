package images_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
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

// cutReader gives n bytes of data, then fails: the client's request is cut short.
type cutReader struct {
	data []byte
	n    int
}

func (c *cutReader) Read(p []byte) (int, error) {
	if c.n <= 0 {
		return 0, errors.New("the client's connection broke")
	}
	k := copy(p, c.data[:min(c.n, len(c.data))])
	c.data, c.n = c.data[k:], c.n-k
	return k, nil
}

// TestUploadsResume: an upload cut short goes on with a piece from the byte HEAD reports (a
// piece from another byte is refused with that byte); the import reads one stream and the
// request that completes the file gets its outcome. An upload not resumed within the resume
// window fails the import with UploadFailed.
func TestUploadsResume(t *testing.T) {
	u := &images.Uploads{ResumeWindow: time.Minute}
	srv := httptest.NewServer(u)
	defer srv.Close()
	tok := images.NewUploadToken()
	url := srv.URL + images.UploadPathPrefix + tok
	w := u.Wait(tok)
	defer w.Close()
	data := []byte("0123456789")

	head := func() (string, int) {
		resp, err := http.Head(url)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.Header.Get(images.HeaderUploadOffset), resp.StatusCode
	}
	if off, code := head(); code != http.StatusOK || off != "0" {
		t.Fatalf("HEAD before the upload: %d, offset %q", code, off)
	}
	// The first request sends 4 of the 10 bytes, then breaks.
	go func() {
		req, _ := http.NewRequest(http.MethodPut, url, &cutReader{data: data, n: 4})
		req.ContentLength = 10
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	var up *images.Upload
	select {
	case up = <-w.C():
	case <-time.After(30 * time.Second):
		t.Fatal("the upload did not reach the waiter")
	}
	got := make(chan string, 1)
	go func() {
		b, err := io.ReadAll(up.Body)
		up.Finish(err)
		got <- string(b)
	}()
	if up.Size != 10 {
		t.Fatalf("the upload's size is %d, want 10", up.Size)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if off, _ := head(); off == "4" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("HEAD never reports offset 4")
		}
		time.Sleep(10 * time.Millisecond)
	}
	piece := func(from, to int) (int, string, string) {
		req, _ := http.NewRequest(http.MethodPut, url, bytes.NewReader(data[from:to]))
		req.Header.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", from, to-1, len(data)))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get(images.HeaderUploadOffset), string(b)
	}
	// A piece from the wrong byte is refused, naming the right one (the cut request may
	// still hold the upload for a moment: then it is "another request").
	for {
		code, off, body := piece(6, 10)
		if code == http.StatusConflict && off == "4" {
			break
		}
		if code != http.StatusConflict || !strings.Contains(body, "another request") || time.Now().After(deadline) {
			t.Fatalf("a piece from byte 6: %d %q %s", code, off, body)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if code, off, body := piece(4, 7); code != http.StatusAccepted || off != "7" {
		t.Fatalf("the piece 4-6: %d %q %s", code, off, body)
	}
	if code, _, body := piece(7, 10); code != http.StatusOK || !strings.Contains(body, "upload complete") {
		t.Fatalf("the last piece: %d %s", code, body)
	}
	if s := <-got; s != string(data) {
		t.Fatalf("the import read %q", s)
	}
	if _, code := head(); code != http.StatusNotFound {
		t.Fatalf("HEAD after the upload: %d", code)
	}

	// Not resumed in time: the import fails.
	u.ResumeWindow = 50 * time.Millisecond
	tok2 := images.NewUploadToken()
	w2 := u.Wait(tok2)
	defer w2.Close()
	go func() {
		req, _ := http.NewRequest(http.MethodPut, srv.URL+images.UploadPathPrefix+tok2, &cutReader{data: data, n: 3})
		req.ContentLength = 10
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	up2 := <-w2.C()
	_, err := io.ReadAll(up2.Body)
	var ie *images.Error
	if !errors.As(err, &ie) || ie.Reason != images.ReasonUploadFailed || !strings.Contains(err.Error(), "stopped at byte 3 and was not resumed within 50ms") {
		t.Fatalf("an upload not resumed: %v", err)
	}
	up2.Finish(err)
}

func TestParseContentRange(t *testing.T) {
	if r, err := images.ParseContentRange(""); r != nil || err != nil {
		t.Fatalf("empty: %v %v", r, err)
	}
	if r, err := images.ParseContentRange("bytes 4-9/10"); err != nil || *r != (images.ContentRange{Start: 4, End: 9, Total: 10}) {
		t.Fatalf("bytes 4-9/10: %v %v", r, err)
	}
	for _, bad := range []string{"bytes 4-9/*", "bytes */10", "bytes 9-4/10", "bytes 0-10/10", "items 0-1/2", "bytes -1-2/3", "bytes 0-1/99999999999999999999", "bytes 0x1-2/3", "bytes 1-2"} {
		if r, err := images.ParseContentRange(bad); err == nil {
			t.Errorf("%q parsed as %+v", bad, r)
		}
	}
}

// FuzzParseContentRange: any header either fails or gives START <= END < TOTAL.
func FuzzParseContentRange(f *testing.F) {
	for _, s := range []string{"bytes 0-0/1", "bytes 4-9/10", "bytes 9-4/10", "bytes */10", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		r, err := images.ParseContentRange(h)
		if err != nil || r == nil {
			return
		}
		if r.Start < 0 || r.Start > r.End || r.End >= r.Total {
			t.Fatalf("%q gave %+v", h, r)
		}
	})
}
