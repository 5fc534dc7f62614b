package apiserver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/images"
	"github.com/rakhsh/rakhsh/internal/storage"
	"github.com/rakhsh/rakhsh/internal/store/bolt"
)

// token is the admin token the servers of these tests share.
const token = "0123456789abcdef0123456789abcdef"

// peerStore returns a test directory, a bolt store in it and a quiet logger, for API servers
// sharing one store.
func peerStore(t *testing.T) (string, *bolt.Store, *slog.Logger) {
	t.Helper()
	dir := t.TempDir()
	st := boltIn(t, dir)
	return dir, st, slog.New(slog.NewTextHandler(io.Discard, nil))
}

// peerLocal runs an API server of cfg until the test ends and serves its local handler on a
// unix socket in sockDir (made if need be), returning a client of it.
func peerLocal(t *testing.T, sockDir string, cfg Config) *client.Client {
	t.Helper()
	s := New(cfg)
	t.Cleanup(s.Shutdown)
	_ = os.MkdirAll(sockDir, 0o700)
	return serveLocal(t, sockDir, s)
}

// peerServer serves an API server of cfg over TLS; its certificate, written to dir/ca.crt,
// stands in for the cluster CA the other servers trust.
func peerServer(t *testing.T, dir string, cfg Config) (*httptest.Server, string) {
	t.Helper()
	s := New(cfg)
	t.Cleanup(s.Shutdown)
	srv := httptest.NewTLSServer(s.RemoteHandler())
	t.Cleanup(srv.Close)
	caFile := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	return srv, caFile
}

// TestImageDataFromPeer: two API servers on one store; the image's file is in a's image store
// only (a's controllers imported it). A download through b, which lacks the file, is relayed
// from a (found among the control-plane members, reached with the shared admin token and the
// cluster CA), ranges and ETag included. Without the cluster CA, b answers 404 as before; a
// request that is itself relayed is never relayed further.
func TestImageDataFromPeer(t *testing.T) {
	dir, st, log := peerStore(t)
	dirA, dirB := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	srvA, caFile := peerServer(t, dir, Config{Store: st, Log: log, AdminToken: token, NodeName: "a", ImageDataDir: dirA})
	members := func(context.Context) (v1alpha1.ControlPlaneStatus, error) {
		return v1alpha1.ControlPlaneStatus{Store: "etcd", Members: []v1alpha1.ControlPlaneMember{
			{Name: "b", APIAddress: "https://127.0.0.1:1"}, {Name: "a", APIAddress: srvA.URL}}}, nil
	}
	cl := peerLocal(t, filepath.Join(dir, "bs"), Config{Store: st, Log: log, AdminToken: token, NodeName: "b", ImageDataDir: dirB, PeerCAFile: caFile, ControlPlane: members})
	ctx := testContext(t)

	img := map[string]any{"apiVersion": v1alpha1.APIVersion, "kind": "ClusterVirtualImage", "metadata": map[string]any{"name": "img"},
		"spec": map[string]any{"dataSource": map[string]any{"type": "HTTP", "http": map[string]any{"url": "https://example.com/x.iso"}}}}
	var created v1alpha1.ClusterVirtualImage
	if err := cl.Create(ctx, "clustervirtualimages", "", img, &created); err != nil {
		t.Fatal(err)
	}
	content := []byte("the image's bytes, imported by a")
	sum := sha256.Sum256(content)
	if err := os.MkdirAll(filepath.Dir(storage.ImagePath(dirA, created.UID)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(storage.ImagePath(dirA, created.UID), content, 0o644); err != nil {
		t.Fatal(err)
	}
	patch := `{"status":{"phase":"Ready","format":"iso","sha256":"` + hex.EncodeToString(sum[:]) + `"}}`
	if err := cl.PatchStatus(ctx, "clustervirtualimages", "", "img", []byte(patch), nil); err != nil {
		t.Fatal(err)
	}
	path := client.Path("clustervirtualimages", "", "img", SubData)

	resp, err := cl.Download(ctx, path, nil)
	if err != nil {
		t.Fatalf("download through b: %v", err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(got) != string(content) || resp.Header.Get("ETag") != `"`+hex.EncodeToString(sum[:])+`"` {
		t.Fatalf("through b: %d %q ETag %q, want a's file", resp.StatusCode, got, resp.Header.Get("ETag"))
	}
	resp, err = cl.Download(ctx, path, http.Header{"Range": {"bytes=4-8"}, "If-Range": {`"` + hex.EncodeToString(sum[:]) + `"`}})
	if err != nil {
		t.Fatalf("ranged download through b: %v", err)
	}
	got, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || string(got) != string(content[4:9]) || resp.Header.Get("Content-Range") == "" {
		t.Fatalf("ranged through b: %d %q %q", resp.StatusCode, got, resp.Header.Get("Content-Range"))
	}

	// Relayed requests go no further: b asked with the peer header answers 404.
	_, err = cl.Download(ctx, path, http.Header{headerImagePeer: {"c"}})
	if !client.IsNotFound(err) {
		t.Fatalf("a relayed request to b: %v, want 404", err)
	}
	// Without the cluster CA, no relaying.
	noCA := Config{Store: st, Log: log, AdminToken: token, NodeName: "c", ImageDataDir: filepath.Join(dir, "c"), ControlPlane: members}
	_, err = peerLocal(t, filepath.Join(dir, "cs"), noCA).Download(ctx, path, nil)
	if !client.IsNotFound(err) {
		t.Fatalf("through a server without the cluster CA: %v, want 404 (file missing)", err)
	}
}

// TestImageFetchThroughRelay: b's image store lacks the file of an image a imported; an
// images.Fetcher over b's API (as b's controllers use it after a leader change) brings it into
// b's store through the relay, checked. When the serve that holds the file (the image's
// stored-on annotation) is down or unreachable, b answers 503 naming it, and the fetch fails
// with that message and leaves nothing in b's store.
func TestImageFetchThroughRelay(t *testing.T) {
	dir, st, log := peerStore(t)
	dirA, dirB := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	srvA, caFile := peerServer(t, dir, Config{Store: st, Log: log, AdminToken: token, NodeName: "a", ImageDataDir: dirA})
	aAddr := srvA.URL
	var live bool
	members := func(context.Context) (v1alpha1.ControlPlaneStatus, error) {
		ms := []v1alpha1.ControlPlaneMember{{Name: "b", APIAddress: "https://127.0.0.1:1"}}
		if live {
			ms = append(ms, v1alpha1.ControlPlaneMember{Name: "a", APIAddress: aAddr})
		}
		return v1alpha1.ControlPlaneStatus{Store: "etcd", Members: ms}, nil
	}
	cl := peerLocal(t, filepath.Join(dir, "bs"), Config{Store: st, Log: log, AdminToken: token, NodeName: "b", ImageDataDir: dirB, PeerCAFile: caFile, ControlPlane: members})
	ctx := testContext(t)

	img := map[string]any{"apiVersion": v1alpha1.APIVersion, "kind": "ClusterVirtualImage",
		"metadata": map[string]any{"name": "img", "annotations": map[string]string{images.AnnotationStoredOn: "a"}},
		"spec":     map[string]any{"dataSource": map[string]any{"type": "HTTP", "http": map[string]any{"url": "https://example.com/x.iso"}}}}
	var created v1alpha1.ClusterVirtualImage
	if err := cl.Create(ctx, "clustervirtualimages", "", img, &created); err != nil {
		t.Fatal(err)
	}
	content := []byte(strings.Repeat("the image's bytes, imported by a; ", 1000))
	sum := sha256.Sum256(content)
	if err := os.MkdirAll(filepath.Dir(storage.ImagePath(dirA, created.UID)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(storage.ImagePath(dirA, created.UID), content, 0o644); err != nil {
		t.Fatal(err)
	}
	patch := fmt.Sprintf(`{"status":{"phase":"Ready","format":"iso","sha256":%q,"size":{"storedBytes":%d,"unpackedBytes":%d}}}`,
		hex.EncodeToString(sum[:]), len(content), len(content))
	if err := cl.PatchStatus(ctx, "clustervirtualimages", "", "img", []byte(patch), nil); err != nil {
		t.Fatal(err)
	}
	f := images.NewFetcher(cl, dirB, "b")
	req := images.FetchRequest{Resource: "clustervirtualimages", Name: "img", What: `ClusterVirtualImage "img"`,
		UID: created.UID, SHA256: hex.EncodeToString(sum[:]), Size: int64(len(content))}

	// a is down (no member record): b names it.
	_, _, err := f.Ensure(ctx, req)
	if err == nil || !strings.Contains(err.Error(), "stored on a") || !strings.Contains(err.Error(), "not a live control-plane member") ||
		!strings.Contains(err.Error(), "not on this serve (b)") {
		t.Fatalf("fetch with a down: %v", err)
	}
	// a is a member but unreachable at its address.
	live, aAddr = true, "https://127.0.0.1:1"
	_, _, err = f.Ensure(ctx, req)
	if err == nil || !strings.Contains(err.Error(), "stored on a") || !strings.Contains(err.Error(), "asked at https://127.0.0.1:1") {
		t.Fatalf("fetch with a unreachable: %v", err)
	}
	if _, err := os.Stat(storage.ImagePath(dirB, created.UID)); !os.IsNotExist(err) {
		t.Fatalf("a failed fetch left a file in b's store: %v", err)
	}
	// a is back: the fetch goes through b's relay into b's store.
	aAddr = srvA.URL
	path, fetched, err := f.Ensure(ctx, req)
	if err != nil || !fetched {
		t.Fatalf("fetch with a back: %v", err)
	}
	if got, _ := os.ReadFile(path); string(got) != string(content) || path != storage.ImagePath(dirB, created.UID) {
		t.Fatalf("fetched %s, %d bytes", path, len(got))
	}
	// b now serves it itself, and says it stores it.
	var now v1alpha1.ClusterVirtualImage
	if err := cl.Get(ctx, "clustervirtualimages", "", "img", &now); err != nil || now.Annotations[images.AnnotationStoredOn] != "a,b" {
		t.Fatalf("stored-on after b's fetch: %v %q", err, now.Annotations[images.AnnotationStoredOn])
	}
	live = false
	resp, err := cl.Download(ctx, client.Path("clustervirtualimages", "", "img", SubData), nil)
	if err != nil {
		t.Fatalf("b serving its fetched copy: %v", err)
	}
	resp.Body.Close()
}

// TestUploadForwardedToLeader: an upload URL whose token no import of this serve waits for is
// forwarded to the leader's serve, where the image controller waits: the upload goes through
// any serve. An unknown token is answered 404 by the leader; a serve that is the leader itself,
// or has no cluster CA, answers as before.
func TestUploadForwardedToLeader(t *testing.T) {
	dir, st, log := peerStore(t)
	upsA := &images.Uploads{}
	srvA, caFile := peerServer(t, dir, Config{Store: st, Log: log, AdminToken: token, NodeName: "a", Uploads: upsA})
	leader := "a"
	members := func(context.Context) (v1alpha1.ControlPlaneStatus, error) {
		return v1alpha1.ControlPlaneStatus{Store: "etcd", Leader: &v1alpha1.ControlPlaneLeader{Name: leader},
			Members: []v1alpha1.ControlPlaneMember{{Name: "a", APIAddress: srvA.URL}, {Name: "b", APIAddress: "https://127.0.0.1:1"}}}, nil
	}
	b := New(Config{Store: st, Log: log, AdminToken: token, NodeName: "b", Uploads: &images.Uploads{}, PeerCAFile: caFile, ControlPlane: members})
	t.Cleanup(b.Shutdown)
	srvB := httptest.NewServer(b.RemoteHandler())
	t.Cleanup(srvB.Close)

	tok := images.NewUploadToken()
	w := upsA.Wait(tok)
	defer w.Close()
	got := make(chan string, 1)
	go func() {
		up, err := w.Await(context.Background(), 10*time.Second)
		if err != nil || up == nil {
			got <- fmt.Sprintf("no upload: %v", err)
			return
		}
		data, _ := io.ReadAll(up.Body)
		up.Finish(nil)
		got <- string(data)
	}()
	put := func(url string) (int, string) {
		req, _ := http.NewRequest(http.MethodPut, url, strings.NewReader("the uploaded file"))
		return roundTrip(t, req)
	}
	if code, body := put(srvB.URL + images.UploadPathPrefix + tok); code != http.StatusOK || !strings.Contains(body, "upload complete") {
		t.Fatalf("upload through b: %d %s", code, body)
	}
	if s := <-got; s != "the uploaded file" {
		t.Fatalf("a's import received %q", s)
	}
	// Used: the leader answers 404, relayed by b.
	if code, body := put(srvB.URL + images.UploadPathPrefix + tok); code != http.StatusNotFound || !strings.Contains(body, "no upload waits") {
		t.Fatalf("a used token through b: %d %s", code, body)
	}
	// b leads itself: nothing to forward to.
	leader = "b"
	if code, _ := put(srvB.URL + images.UploadPathPrefix + images.NewUploadToken()); code != http.StatusNotFound {
		t.Fatalf("an unknown token on the leader b: %d", code)
	}
}
