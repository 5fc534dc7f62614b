package images

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

func TestAwaitUpload(t *testing.T) {
	u := &Uploads{}
	// Time up with nobody uploading: nil, and the token is closed.
	w := u.Wait("t1")
	if up, err := w.Await(context.Background(), 10*time.Millisecond); up != nil || err != nil {
		t.Fatalf("Await without an upload = %v, %v", up, err)
	}
	if u.Waiting("t1") || u.begin("t1", 1) != nil {
		t.Error("the token is still open after the time ran out")
	}
	// An upload claimed in time is returned.
	w = u.Wait("t2")
	go func() { u.begin("t2", 7) }()
	if up, err := w.Await(context.Background(), 5*time.Second); err != nil || up == nil || up.Size != 7 {
		t.Fatalf("Await with an upload = %+v, %v", up, err)
	}
	// A cancelled context ends the wait with its error.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if up, err := u.Wait("t3").Await(ctx, time.Hour); up != nil || !errors.Is(err, context.Canceled) {
		t.Fatalf("Await on a cancelled context = %v, %v", up, err)
	}
}

func TestTokenForAndURLs(t *testing.T) {
	tok := NewUploadToken()
	urls := UploadURLs(v1alpha1.ImageUploadURLs{External: "https://h:8443", InCluster: "https://10.0.0.1:8443"}, tok)
	if urls.External != "https://h:8443"+UploadPathPrefix+tok || !strings.HasSuffix(urls.InCluster, UploadPathPrefix+tok) {
		t.Fatalf("URLs %+v", urls)
	}
	if got := TokenFor(true, urls); got != tok {
		t.Errorf("a waiting object's token %q, want %q (kept across restarts)", got, tok)
	}
	if got := TokenFor(false, urls); got == tok || got == "" {
		t.Errorf("a new wait reused the token or made none: %q", got)
	}
	if got := TokenFor(true, nil); got == "" {
		t.Error("no token for a waiting object without URLs")
	}
}
