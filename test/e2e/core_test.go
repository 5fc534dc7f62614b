package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestSocketAndTCPAuth: the unix socket works without a token; TCP refuses without one and
// accepts the admin token over TLS with the self-signed certificate.
func TestSocketAndTCPAuth(t *testing.T) {
	addr := freeAddr(t)
	s := StartServe(t, "--listen", addr)
	ctx := ctxT(t)

	var l v1alpha1.List
	if err := s.Client().Do(ctx, "GET", client.Path("projects", "", ""), nil, "", nil, &l); err != nil {
		t.Fatalf("unix socket without token: %v", err)
	}
	fi, err := os.Stat(s.Socket())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode = %o, want 600", fi.Mode().Perm())
	}

	token := adminToken(t, s)
	ca := filepath.Join(s.DataDir, "tls.crt")

	// No token: 401 with a Status.
	noTok, err := client.New(client.Config{Server: "https://" + addr, CAFile: ca})
	if err != nil {
		t.Fatal(err)
	}
	err = noTok.Get(ctx, "projects", "", "default", &map[string]any{})
	if client.Reason(err) != v1alpha1.ReasonUnauthorized {
		t.Fatalf("TCP without token: got %v, want Unauthorized", err)
	}
	bad, _ := client.New(client.Config{Server: "https://" + addr, CAFile: ca, Token: "not-the-token"})
	if err := bad.Get(ctx, "projects", "", "default", &map[string]any{}); client.Reason(err) != v1alpha1.ReasonUnauthorized {
		t.Fatalf("TCP with a wrong token: got %v, want Unauthorized", err)
	}
	// Plain HTTP on the TLS port is refused too (no data served).
	resp, err := http.Get("http://" + addr + client.Path("projects", "", ""))
	if err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatalf("plain HTTP on the TLS port answered 200: %s", body)
		}
	}
	// With the token, verified against the self-signed certificate.
	good, _ := client.New(client.Config{Server: "https://" + addr, CAFile: ca, Token: token})
	var p map[string]any
	if err := good.Get(ctx, "projects", "", "default", &p); err != nil {
		t.Fatalf("TCP with the admin token: %v", err)
	}
	// Health checks need no token.
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}} //nolint:gosec // test
	hc := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	resp, err = hc.Get("https://" + addr + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("/healthz over TCP: %v %v", err, resp)
	}
	resp.Body.Close()
	// The CLI over TCP: refused without a token, works with one.
	r := runCLI(t, "https://"+addr, "", "", "get", "proj", "--ca-file", ca)
	if r.Code == 0 || !strings.Contains(r.Stderr, "Unauthorized") {
		t.Fatalf("CLI over TCP without token: code %d, stderr %q", r.Code, r.Stderr)
	}
	r = runCLI(t, "https://"+addr, token, "", "get", "proj", "--ca-file", ca)
	if r.Code != 0 || !strings.Contains(r.Stdout, "default") {
		t.Fatalf("CLI over TCP with token: code %d, stdout %q stderr %q", r.Code, r.Stdout, r.Stderr)
	}
}

// TestStaleUpdateConflict: an update with an old resourceVersion is 409 Conflict and changes
// nothing.
func TestStaleUpdateConflict(t *testing.T) {
	s := StartServe(t)
	ctx := ctxT(t)
	c := s.Client()
	sec := map[string]any{"apiVersion": v1alpha1.APIVersion, "kind": "Secret",
		"metadata": map[string]any{"name": "s1"}, "stringData": map[string]string{"a": "1"}}
	var created map[string]any
	if err := c.Create(ctx, "secrets", "default", sec, &created); err != nil {
		t.Fatal(err)
	}
	rv1 := created["metadata"].(map[string]any)["resourceVersion"].(string)
	created["data"] = map[string]any{"a": "Mg=="}
	var updated map[string]any
	if err := c.Update(ctx, "secrets", "default", "s1", created, &updated); err != nil {
		t.Fatalf("first update: %v", err)
	}
	rv2 := updated["metadata"].(map[string]any)["resourceVersion"].(string)
	if rv2 == rv1 {
		t.Fatalf("resourceVersion did not change on update")
	}
	// created still carries rv1: stale.
	created["data"] = map[string]any{"a": "Mw=="}
	err := c.Update(ctx, "secrets", "default", "s1", created, nil)
	var ae *client.Error
	if !client.IsConflict(err) || !asAPIError(err, &ae) || ae.Status.Code != 409 {
		t.Fatalf("stale update: got %v, want 409 Conflict", err)
	}
	var now map[string]any
	if err := c.Get(ctx, "secrets", "default", "s1", &now); err != nil {
		t.Fatal(err)
	}
	if got := now["data"].(map[string]any)["a"]; got != "Mg==" {
		t.Fatalf("stale update changed data to %v", got)
	}
	// A merge patch with a stale resourceVersion is a conflict too; without one it applies.
	patch := []byte(`{"metadata":{"resourceVersion":"` + rv1 + `"},"data":{"b":"NA=="}}`)
	if err := c.Patch(ctx, "secrets", "default", "s1", patch, nil); !client.IsConflict(err) {
		t.Fatalf("stale patch: got %v, want Conflict", err)
	}
	if err := c.Patch(ctx, "secrets", "default", "s1", []byte(`{"metadata":{"labels":{"x":"y"}}}`), &now); err != nil {
		t.Fatalf("patch: %v", err)
	}
	if now["metadata"].(map[string]any)["labels"].(map[string]any)["x"] != "y" {
		t.Fatalf("patch did not apply: %v", now["metadata"])
	}
}

func asAPIError(err error, out **client.Error) bool {
	e, ok := err.(*client.Error)
	if ok {
		*out = e
	}
	return ok
}

// TestBadRequests: malformed bodies, unknown kinds and fields, wrong types, bad names and
// oversized bodies get a 4xx with a clear message, and nothing is stored.
func TestBadRequests(t *testing.T) {
	s := StartServe(t)
	ctx := ctxT(t)
	c := s.Client()
	path := client.Path("secrets", "default", "")
	cases := []struct {
		name   string
		body   string
		code   int
		reason string
		want   string
	}{
		{"malformed JSON", `{"metadata": {"name": "a"`, 400, v1alpha1.ReasonBadRequest, "malformed JSON"},
		{"not an object", `[1,2]`, 400, v1alpha1.ReasonBadRequest, "must be a JSON object"},
		{"wrong kind", `{"kind":"VirtualMachine","metadata":{"name":"a"}}`, 400, v1alpha1.ReasonBadRequest, "does not match"},
		{"unknown apiVersion", `{"apiVersion":"example.com/v9","kind":"Secret","metadata":{"name":"a"}}`, 400, v1alpha1.ReasonBadRequest, "apiVersion"},
		{"unknown field", `{"kind":"Secret","metadata":{"name":"a"},"sepc":{}}`, 422, v1alpha1.ReasonInvalid, "sepc"},
		{"unknown nested field", `{"kind":"Secret","metadata":{"name":"a","lables":{}}}`, 422, v1alpha1.ReasonInvalid, "metadata.lables"},
		{"wrong type", `{"kind":"Secret","metadata":{"name":"a","labels":"x"}}`, 422, v1alpha1.ReasonInvalid, "metadata.labels"},
		{"path traversal name", `{"kind":"Secret","metadata":{"name":"../x"}}`, 422, v1alpha1.ReasonInvalid, "metadata.name"},
		{"upper case name", `{"kind":"Secret","metadata":{"name":"Bad_Name"}}`, 422, v1alpha1.ReasonInvalid, "RFC 1123"},
		{"missing name", `{"kind":"Secret","metadata":{}}`, 422, v1alpha1.ReasonInvalid, "metadata.name"},
		{"empty body", ``, 400, v1alpha1.ReasonBadRequest, "empty"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := c.Do(ctx, "POST", path, nil, "application/json", []byte(tc.body), nil)
			var ae *client.Error
			if !asAPIError(err, &ae) {
				t.Fatalf("got %v, want an API error", err)
			}
			if ae.Status.Code != tc.code || ae.Status.Reason != tc.reason || !strings.Contains(ae.Status.Message, tc.want) {
				t.Fatalf("got %d %s %q, want %d %s containing %q", ae.Status.Code, ae.Status.Reason, ae.Status.Message, tc.code, tc.reason, tc.want)
			}
		})
	}
	// Unknown fields are reported as field causes.
	err := c.Do(ctx, "POST", path, nil, "application/json", []byte(`{"kind":"Secret","metadata":{"name":"a"},"foo":1,"bar":2}`), nil)
	var ae *client.Error
	if !asAPIError(err, &ae) || ae.Status.Details == nil || len(ae.Status.Details.Causes) != 2 {
		t.Fatalf("want two field causes, got %+v", err)
	}
	// Unknown resource.
	err = c.Do(ctx, "GET", client.Path("virtualteapots", "default", ""), nil, "", nil, nil)
	if !client.IsNotFound(err) {
		t.Fatalf("unknown resource: got %v", err)
	}
	// A bad name in the path never reaches the store.
	err = c.Do(ctx, "GET", "/apis/"+v1alpha1.APIVersion+"/namespaces/default/secrets/..%2Fx", nil, "", nil, nil)
	if err == nil {
		t.Fatalf("a '../x' name in the path was accepted")
	}
	// Bodies over 3 MiB: 413.
	big := `{"kind":"Secret","metadata":{"name":"big"},"stringData":{"a":"` + strings.Repeat("x", 3<<20) + `"}}`
	err = c.Do(ctx, "POST", path, nil, "application/json", []byte(big), nil)
	if !asAPIError(err, &ae) || ae.Status.Code != 413 {
		t.Fatalf("3 MiB body: got %v, want 413", err)
	}
	// Nothing of the above was stored.
	l, err := c.List(ctx, "secrets", "default", client.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Items) != 0 {
		t.Fatalf("bad requests left %d secrets behind", len(l.Items))
	}
	// A project-scoped object in a missing project is refused.
	err = c.Create(ctx, "secrets", "nope", map[string]any{"kind": "Secret", "metadata": map[string]any{"name": "a"}}, nil)
	if !client.IsNotFound(err) || !strings.Contains(err.Error(), `project "nope" not found`) {
		t.Fatalf("object in missing project: got %v", err)
	}
	// The default project cannot be deleted.
	if err := c.Delete(ctx, "projects", "", "default"); client.Reason(err) != v1alpha1.ReasonForbidden {
		t.Fatalf("deleting the default project: got %v", err)
	}
}

// TestWatchAndFinalizers: watch delivers ADDED, MODIFIED and DELETED in order, resumes from a
// resourceVersion, and delete waits for finalizers.
func TestWatchAndFinalizers(t *testing.T) {
	s := StartServe(t)
	ctx := ctxT(t)
	c := s.Client()
	w, err := c.Watch(ctx, "secrets", "default", client.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	sec := map[string]any{"kind": "Secret", "metadata": map[string]any{"name": "w1", "finalizers": []string{"example.com/hold"}}}
	var created map[string]any
	if err := c.Create(ctx, "secrets", "default", sec, &created); err != nil {
		t.Fatal(err)
	}
	startRV := created["metadata"].(map[string]any)["resourceVersion"].(string)
	if err := c.Delete(ctx, "secrets", "default", "w1"); err != nil {
		t.Fatal(err)
	}
	var marked map[string]any
	if err := c.Get(ctx, "secrets", "default", "w1", &marked); err != nil {
		t.Fatalf("object with a finalizer vanished on delete: %v", err)
	}
	if marked["metadata"].(map[string]any)["deletionTimestamp"] == nil {
		t.Fatalf("no deletionTimestamp after delete: %v", marked["metadata"])
	}
	if err := c.Patch(ctx, "secrets", "default", "w1", []byte(`{"metadata":{"finalizers":null}}`), nil); err != nil {
		t.Fatalf("removing the finalizer: %v", err)
	}
	if err := c.Get(ctx, "secrets", "default", "w1", nil); !client.IsNotFound(err) {
		t.Fatalf("object still there after its last finalizer went: %v", err)
	}
	want := []string{"ADDED", "MODIFIED", "DELETED"}
	for i, typ := range want {
		select {
		case ev, ok := <-w.Events():
			if !ok {
				t.Fatalf("watch ended early: %v", w.Err())
			}
			if ev.Type != typ {
				t.Fatalf("event %d: %s, want %s", i, ev.Type, typ)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no %s event within 10s", typ)
		}
	}
	// Resume from the creation's resourceVersion: the two later events replay.
	w2, err := c.Watch(ctx, "secrets", "default", client.ListOptions{ResourceVersion: startRV})
	if err != nil {
		t.Fatal(err)
	}
	defer w2.Stop()
	for _, typ := range want[1:] {
		select {
		case ev := <-w2.Events():
			if ev.Type != typ {
				t.Fatalf("replayed %s, want %s", ev.Type, typ)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no replayed %s", typ)
		}
	}
}

// TestListPagingAndSelectors: limit/continue walks every object once; selectors filter.
func TestListPagingAndSelectors(t *testing.T) {
	s := StartServe(t)
	ctx := ctxT(t)
	c := s.Client()
	for i := 0; i < 25; i++ {
		tier := "web"
		if i%5 == 0 {
			tier = "db"
		}
		obj := map[string]any{"kind": "Secret", "metadata": map[string]any{"name": fmt.Sprintf("s%02d", i), "labels": map[string]string{"tier": tier}}}
		if err := c.Create(ctx, "secrets", "default", obj, nil); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	opts := client.ListOptions{Limit: 7}
	pages := 0
	for {
		l, err := c.List(ctx, "secrets", "default", opts)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, it := range l.Items {
			var m struct {
				Metadata v1alpha1.ObjectMeta `json:"metadata"`
			}
			_ = json.Unmarshal(it, &m)
			if seen[m.Metadata.Name] {
				t.Fatalf("%s listed twice", m.Metadata.Name)
			}
			seen[m.Metadata.Name] = true
		}
		if l.Metadata.Continue == "" {
			break
		}
		opts.Continue = l.Metadata.Continue
		if pages == 1 {
			// Written after the first page: later pages come from the first page's snapshot.
			obj := map[string]any{"kind": "Secret", "metadata": map[string]any{"name": "s20a"}}
			if err := c.Create(ctx, "secrets", "default", obj, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	if seen["s20a"] {
		t.Fatalf("a paged list showed an object created after its first page")
	}
	if len(seen) != 25 || pages != 4 {
		t.Fatalf("paging saw %d objects in %d pages, want 25 in 4", len(seen), pages)
	}
	l, err := c.ListAll(ctx, "secrets", "default", client.ListOptions{LabelSelector: "tier=db", Limit: 2})
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Items) != 5 {
		t.Fatalf("tier=db selected %d, want 5", len(l.Items))
	}
	l, err = c.List(ctx, "secrets", "default", client.ListOptions{LabelSelector: "tier notin (db)"})
	if err != nil || len(l.Items) != 21 {
		t.Fatalf("tier notin (db): %v, %d items", err, len(l.Items))
	}
	if _, err := c.List(ctx, "secrets", "default", client.ListOptions{LabelSelector: "tier in (db"}); client.Reason(err) != v1alpha1.ReasonBadRequest {
		t.Fatalf("bad selector: got %v", err)
	}
	// Discovery lists every kind.
	var disc struct {
		Resources []struct{ Name, Kind string } `json:"resources"`
	}
	if err := c.Do(ctx, "GET", "/apis/"+v1alpha1.APIVersion, nil, "", nil, &disc); err != nil {
		t.Fatal(err)
	}
	kinds := map[string]bool{}
	for _, r := range disc.Resources {
		kinds[r.Kind] = true
	}
	for _, k := range v1alpha1.Kinds {
		if !kinds[k.Kind] {
			t.Errorf("discovery lacks %s", k.Kind)
		}
	}
	_ = bytes.MinRead
}
