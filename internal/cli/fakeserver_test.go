package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/objpatch"
)

// fakeServer is a tiny in-memory API server: enough of the Rakhsh API (CRUD, lists with
// label selectors, watch with resourceVersion, Status errors, no-op updates) to drive the
// commands end to end.
type fakeServer struct {
	t   *testing.T
	srv *httptest.Server

	mu      sync.Mutex
	rv      int64
	objects map[string]object // key: resource/namespace/name
	log     []fakeEvent
	changed chan struct{} // closed and replaced on every change
	// expireBelow makes watches from older versions fail with Expired.
	expireBelow int64
	requests    []string // "METHOD path"
	// onPut, when set, may rewrite a PUT body before it is stored (e.g. to reject it).
	reject func(method, resource string, obj object) *v1alpha1.Status
}

type fakeEvent struct {
	rv       int64
	typ      string
	resource string
	ns       string
	obj      object
}

func newFakeServer(t *testing.T) *fakeServer {
	f := &fakeServer{t: t, objects: map[string]object{}, changed: make(chan struct{})}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeServer) URL() string { return f.srv.URL }

func deepCopy(o object) object {
	b, _ := json.Marshal(o)
	c, _ := decodeObject(b)
	return c
}

// put stores obj directly (test setup), as a create or an update.
func (f *fakeServer) put(resource string, obj object) object {
	obj = deepCopy(obj)
	f.mu.Lock()
	defer f.mu.Unlock()
	md := meta(obj)
	ns, _ := md["namespace"].(string)
	name, _ := md["name"].(string)
	key := resource + "/" + ns + "/" + name
	typ := v1alpha1.WatchModified
	if _, ok := f.objects[key]; !ok {
		typ = v1alpha1.WatchAdded
		if _, ok := md["creationTimestamp"]; !ok {
			md["creationTimestamp"] = time.Now().UTC().Format(time.RFC3339)
		}
		if _, ok := md["uid"]; !ok {
			md["uid"] = fmt.Sprintf("uid-%s", name)
		}
	}
	return f.storeLocked(typ, resource, ns, key, obj)
}

func (f *fakeServer) storeLocked(typ, resource, ns, key string, obj object) object {
	f.rv++
	meta(obj)["resourceVersion"] = strconv.FormatInt(f.rv, 10)
	if typ == v1alpha1.WatchDeleted {
		delete(f.objects, key)
	} else {
		f.objects[key] = obj
	}
	f.log = append(f.log, fakeEvent{rv: f.rv, typ: typ, resource: resource, ns: ns, obj: deepCopy(obj)})
	close(f.changed)
	f.changed = make(chan struct{})
	return deepCopy(obj)
}

func (f *fakeServer) remove(resource, ns, name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := resource + "/" + ns + "/" + name
	if o, ok := f.objects[key]; ok {
		f.storeLocked(v1alpha1.WatchDeleted, resource, ns, key, o)
	}
}

func (f *fakeServer) get(resource, ns, name string) object {
	f.mu.Lock()
	defer f.mu.Unlock()
	o := f.objects[resource+"/"+ns+"/"+name]
	if o == nil {
		return nil
	}
	return deepCopy(o)
}

func (f *fakeServer) status(w http.ResponseWriter, code int, reason, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v1alpha1.Status{TypeMeta: v1alpha1.TypeMeta{APIVersion: "v1", Kind: "Status"},
		Status: "Failure", Reason: reason, Message: msg, Code: code})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func matchSelector(o object, sel string) bool {
	if sel == "" {
		return true
	}
	labels, _ := lookupPath(o, "metadata.labels")
	lm, _ := labels.(map[string]any)
	for _, req := range strings.Split(sel, ",") {
		if k, v, ok := strings.Cut(req, "!="); ok {
			if lm[k] == v {
				return false
			}
			continue
		}
		k, v, _ := strings.Cut(req, "=")
		if lm[k] != v {
			return false
		}
	}
	return true
}

func (f *fakeServer) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.requests = append(f.requests, r.Method+" "+r.URL.Path)
	f.mu.Unlock()
	if r.URL.Path == "/version" {
		writeJSON(w, 200, map[string]string{"gitVersion": "v0.1.0-fake"})
		return
	}
	prefix := "/apis/" + v1alpha1.APIVersion + "/"
	if !strings.HasPrefix(r.URL.Path, prefix) {
		f.status(w, 404, v1alpha1.ReasonNotFound, "the server could not find the requested resource")
		return
	}
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, prefix), "/")
	ns := ""
	if len(parts) >= 2 && parts[0] == "namespaces" {
		ns = parts[1]
		parts = parts[2:]
	}
	if len(parts) == 0 || len(parts) > 2 {
		f.status(w, 404, v1alpha1.ReasonNotFound, "no such path")
		return
	}
	resource := parts[0]
	k, ok := v1alpha1.KindByResource(resource)
	if !ok {
		f.status(w, 404, v1alpha1.ReasonNotFound, "no such resource "+resource)
		return
	}
	name := ""
	if len(parts) == 2 {
		name = parts[1]
	}
	key := resource + "/" + ns + "/" + name
	switch {
	case r.Method == http.MethodGet && name == "" && r.URL.Query().Get("watch") == "true":
		f.watch(w, r, resource, ns)
	case r.Method == http.MethodGet && name == "":
		f.mu.Lock()
		var items []json.RawMessage
		var keys []string
		for key := range f.objects {
			keys = append(keys, key)
		}
		sort.Strings(keys)
		for _, key := range keys {
			o := f.objects[key]
			res, ons, _ := strings.Cut(key, "/")
			ons, _, _ = strings.Cut(ons, "/")
			if res != resource || (ns != "" && ons != ns) || !matchSelector(o, r.URL.Query().Get("labelSelector")) {
				continue
			}
			b, _ := json.Marshal(o)
			items = append(items, b)
		}
		rv := strconv.FormatInt(f.rv, 10)
		f.mu.Unlock()
		writeJSON(w, 200, v1alpha1.List{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: k.Kind + "List"},
			Metadata: v1alpha1.ListMeta{ResourceVersion: rv}, Items: items})
	case r.Method == http.MethodGet:
		o := f.get(resource, ns, name)
		if o == nil {
			f.status(w, 404, v1alpha1.ReasonNotFound, fmt.Sprintf("%s %q not found", resource, name))
			return
		}
		writeJSON(w, 200, o)
	case r.Method == http.MethodPost && name == "":
		o, ok := f.decodeBody(w, r, resource)
		if !ok {
			return
		}
		md := meta(o)
		n, _ := md["name"].(string)
		if n == "" {
			gn, _ := md["generateName"].(string)
			n = gn + "x7k2q"
			md["name"] = n
		}
		if k.Namespaced {
			md["namespace"] = ns
		}
		md["creationTimestamp"] = time.Now().UTC().Format(time.RFC3339)
		md["uid"] = "uid-" + n
		f.mu.Lock()
		key = resource + "/" + ns + "/" + n
		if _, exists := f.objects[key]; exists {
			f.mu.Unlock()
			f.status(w, 409, v1alpha1.ReasonAlreadyExists, fmt.Sprintf("%s %q already exists", resource, n))
			return
		}
		stored := f.storeLocked(v1alpha1.WatchAdded, resource, ns, key, o)
		f.mu.Unlock()
		writeJSON(w, 201, stored)
	case r.Method == http.MethodPut && name != "":
		o, ok := f.decodeBody(w, r, resource)
		if !ok {
			return
		}
		old, ok := f.lockStored(w, key, resource, name)
		if !ok {
			return
		}
		if str(o, "metadata.resourceVersion") != str(old, "metadata.resourceVersion") {
			f.mu.Unlock()
			f.status(w, 409, v1alpha1.ReasonConflict, "the object has been modified")
			return
		}
		// status is kept (a subresource); a no-op update keeps the version
		if st, ok := old["status"]; ok {
			o["status"] = st
		} else {
			delete(o, "status")
		}
		if o["apiVersion"] == v1alpha1.DeckhouseAPI {
			o["apiVersion"] = v1alpha1.APIVersion
		}
		if reflect.DeepEqual(o, old) {
			out := deepCopy(old)
			f.mu.Unlock()
			writeJSON(w, 200, out)
			return
		}
		stored := f.storeLocked(v1alpha1.WatchModified, resource, ns, key, o)
		f.mu.Unlock()
		writeJSON(w, 200, stored)
	case r.Method == http.MethodPatch && name != "":
		// A JSON merge patch (what the CLI sends), refused on a stale resourceVersion.
		body, _ := io.ReadAll(r.Body)
		var patch map[string]any
		if err := json.Unmarshal(body, &patch); err != nil {
			f.status(w, 400, v1alpha1.ReasonBadRequest, err.Error())
			return
		}
		old, ok := f.lockStored(w, key, resource, name)
		if !ok {
			return
		}
		if rv := str(patch, "metadata.resourceVersion"); rv != "" && rv != str(old, "metadata.resourceVersion") {
			f.mu.Unlock()
			f.status(w, 409, v1alpha1.ReasonConflict, "the object has been modified")
			return
		}
		o, _ := objpatch.Merge(deepCopy(old), patch).(map[string]any)
		o["status"] = old["status"]
		stored := f.storeLocked(v1alpha1.WatchModified, resource, ns, key, o)
		f.mu.Unlock()
		writeJSON(w, 200, stored)
	case r.Method == http.MethodDelete && name != "":
		o, ok := f.lockStored(w, key, resource, name)
		if !ok {
			return
		}
		if fz, _ := lookupPath(o, "metadata.finalizers"); fz != nil {
			meta(o)["deletionTimestamp"] = time.Now().UTC().Format(time.RFC3339)
			f.storeLocked(v1alpha1.WatchModified, resource, ns, key, o)
		} else {
			f.storeLocked(v1alpha1.WatchDeleted, resource, ns, key, o)
		}
		f.mu.Unlock()
		writeJSON(w, 200, v1alpha1.Status{TypeMeta: v1alpha1.TypeMeta{Kind: "Status"}, Status: "Success", Code: 200})
	default:
		f.status(w, 405, v1alpha1.ReasonMethodNotAllowed, "method not allowed")
	}
}

// decodeBody reads the object a POST or PUT sends; false when it answered the request
// already: the body is no object, or the test's reject hook refuses it.
func (f *fakeServer) decodeBody(w http.ResponseWriter, r *http.Request, resource string) (object, bool) {
	body, _ := io.ReadAll(r.Body)
	o, err := decodeObject(body)
	if err != nil {
		f.status(w, 400, v1alpha1.ReasonBadRequest, err.Error())
		return nil, false
	}
	if st := f.rejected(r.Method, resource, o); st != nil {
		f.status(w, st.Code, st.Reason, st.Message)
		return nil, false
	}
	return o, true
}

// lockStored locks f and returns the object stored under key. Without one it unlocks f,
// answers 404 and returns false.
func (f *fakeServer) lockStored(w http.ResponseWriter, key, resource, name string) (object, bool) {
	f.mu.Lock()
	o, exists := f.objects[key]
	if !exists {
		f.mu.Unlock()
		f.status(w, 404, v1alpha1.ReasonNotFound, fmt.Sprintf("%s %q not found", resource, name))
		return nil, false
	}
	return o, true
}

func (f *fakeServer) rejected(method, resource string, o object) *v1alpha1.Status {
	f.mu.Lock()
	fn := f.reject
	f.mu.Unlock()
	if fn == nil {
		return nil
	}
	return fn(method, resource, o)
}

func (f *fakeServer) watch(w http.ResponseWriter, r *http.Request, resource, ns string) {
	from, _ := strconv.ParseInt(r.URL.Query().Get("resourceVersion"), 10, 64)
	sel := r.URL.Query().Get("labelSelector")
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(200)
	fl, _ := w.(http.Flusher)
	enc := json.NewEncoder(w)
	f.mu.Lock()
	if from < f.expireBelow {
		f.mu.Unlock()
		st, _ := json.Marshal(v1alpha1.Status{TypeMeta: v1alpha1.TypeMeta{Kind: "Status"}, Status: "Failure",
			Reason: v1alpha1.ReasonExpired, Message: "too old resource version", Code: 410})
		enc.Encode(v1alpha1.WatchEvent{Type: v1alpha1.WatchError, Object: st})
		return
	}
	f.mu.Unlock()
	sent := from
	for {
		f.mu.Lock()
		var batch []fakeEvent
		for _, ev := range f.log {
			if ev.rv > sent && ev.resource == resource && (ns == "" || ev.ns == ns) && matchSelector(ev.obj, sel) {
				batch = append(batch, ev)
			}
		}
		if n := len(f.log); n > 0 && f.log[n-1].rv > sent {
			sent = f.log[n-1].rv
		}
		changed := f.changed
		f.mu.Unlock()
		for _, ev := range batch {
			b, _ := json.Marshal(ev.obj)
			if err := enc.Encode(v1alpha1.WatchEvent{Type: ev.typ, Object: b}); err != nil {
				return
			}
		}
		if fl != nil {
			fl.Flush()
		}
		select {
		case <-r.Context().Done():
			return
		case <-changed:
		}
	}
}

// run runs the CLI in-process against the fake server and returns stdout, stderr and the
// exit code.
func (f *fakeServer) run(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	return runCLI(t, context.Background(), f.URL(), stdin, args...)
}

// wantFailure runs the CLI with args and fails the test unless it exits with code 1.
func (f *fakeServer) wantFailure(t *testing.T, args ...string) {
	t.Helper()
	if _, _, code := f.run(t, "", args...); code != 1 {
		t.Errorf("rakhsh %s: exit code %d, want 1", strings.Join(args, " "), code)
	}
}

var testNow = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

func runCLI(t *testing.T, ctx context.Context, server, stdin string, args ...string) (string, string, int) {
	t.Helper()
	cc := newCLIContext()
	cc.getenv = func(string) string { return "" }
	root := newRootCommand(cc)
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetIn(strings.NewReader(stdin))
	root.SetArgs(append([]string{"--server", server}, args...))
	code := executeContext(ctx, root)
	return out.String(), errOut.String(), code
}
