package e2e

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// TestImportSSRFRefused: a server started without --allow-import-from refuses an image and a
// disk whose URL points at the host's own loopback (a server-side request forgery), names
// the rule in the condition, never sends the request, and has nothing to serve through the
// image's data subresource.
func TestImportSSRFRefused(t *testing.T) {
	s := &Serve{t: t, DataDir: t.TempDir(), NoImportAllowList: true}
	startOwnServe(s)

	// An internal service of the host: what an attacker would like to read back. It is a
	// valid raw disk, so an import that reached it would go Ready.
	secret := bytes.Repeat([]byte("TOP-SECRET-CREDENTIALS "), 1<<16/23+1)[:1<<16]
	var hits atomic.Int64
	internal := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Content-Length", strconv.Itoa(len(secret)))
		_, _ = w.Write(secret)
	}))
	defer internal.Close()
	url := internal.URL + "/secret"

	applyDocs(s, cviDoc("ssrf", httpSource(url)), diskDoc("ssrf", "1Gi", httpSource(url)))

	rule := "import from " + url + " refused: 127.0.0.1 is a loopback address; an operator may allow it with serve --allow-import-from"
	img := waitCVI(t, s, "ssrf", v1alpha1.ImagePhaseFailed, v1alpha1.ImagePhaseReady)
	c := v1alpha1.FindCondition(img.Status.Conditions, v1alpha1.ImageConditionReady)
	if img.Status.Phase != v1alpha1.ImagePhaseFailed || c == nil || c.Reason != "ImportRefused" || c.Message != rule {
		t.Fatalf("image status: phase %s, condition %+v; want Failed, ImportRefused, %q", img.Status.Phase, c, rule)
	}
	d := waitDisk(t, s, "ssrf", v1alpha1.DiskPhaseFailed, v1alpha1.DiskPhaseReady)
	dc := v1alpha1.FindCondition(d.Status.Conditions, v1alpha1.DiskConditionReady)
	if d.Status.Phase != v1alpha1.DiskPhaseFailed || dc == nil || dc.Reason != "ImportRefused" || !strings.Contains(dc.Message, rule) {
		t.Fatalf("disk status: phase %s, condition %+v; want Failed, ImportRefused, %q", d.Status.Phase, dc, rule)
	}
	if n := hits.Load(); n != 0 {
		t.Fatalf("the internal server got %d requests", n)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := s.Client().Download(ctx, "/apis/virtualization.rakhsh.io/v1alpha1/clustervirtualimages/ssrf/data", nil)
	if err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Fatalf("the data subresource answered %s with %d bytes (secret inside: %v)", resp.Status, len(body), bytes.Contains(body, []byte("TOP-SECRET")))
	}
	t.Logf("data subresource: %v", err)

	// The describe output tells the user why.
	out := s.MustCLI("", "describe", "cvi", "ssrf")
	if !strings.Contains(out, "--allow-import-from") {
		t.Errorf("describe does not name the rule:\n%s", out)
	}
}
