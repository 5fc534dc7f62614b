// Package fake is an in-memory implementation of client.Interface for controller unit tests.
// It keeps the rules of the API server that controllers rely on: resourceVersions from one
// counter, optimistic concurrency (a stale resourceVersion is a Conflict), the status
// subresource (status writes change only status, other writes never change it), generations
// that count spec changes, defaults, finalizers and validation from the kind's registry
// strategy, deletion that only marks an object with finalizers (deletionTimestamp) and removes
// it when the last finalizer goes, merge, strategic merge and JSON patches, VM binding, label
// and field selectors, and watch streams that replay from a resourceVersion.
//
// It does not do admission (quota, classes, sizing policies), project existence checks,
// authorization, paging (List answers in one page) or watch bookmarks.
package fake

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	jsonpatch "github.com/evanphx/json-patch/v5"
	"github.com/google/uuid"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/labels"
	"github.com/rakhsh/rakhsh/internal/objpatch"
	"github.com/rakhsh/rakhsh/internal/registry"
)

// Action is one call the fake served, for tests that check what a controller wrote.
type Action struct {
	Verb      string // get, list, watch, create, update, updatestatus, patch, jsonpatch, patchstatus, jsonpatchstatus, bind, delete
	Resource  string
	Namespace string
	Name      string
	Body      []byte // the object or patch sent, if any
}

// Client is the fake. The zero value is not usable: call New.
type Client struct {
	// Hook, when set, runs before every call; an error it returns is the call's answer.
	// Tests use it to make writes fail (client.Error values classify as the real ones do).
	// Set it before the fake is used, or with SetHook while it is.
	Hook func(a Action) error
	// Now is the server's clock (creation and deletion timestamps); default time.Now.
	Now func() time.Time

	mu        sync.Mutex
	rev       int64
	compacted int64             // watches from before this revision are Expired
	objects   map[string]*entry // by resource/namespace/name
	log       []event           // every change, oldest first
	watchers  map[*watcher]bool
	actions   []Action
}

type entry struct {
	data []byte // stored JSON with metadata.resourceVersion set
	rev  int64
}

type event struct {
	rev      int64
	resource string
	ns       string
	typ      string
	data     []byte
	prev     []byte // the object before the change; nil for a create
}

// New returns an empty fake.
func New() *Client {
	return &Client{objects: map[string]*entry{}, watchers: map[*watcher]bool{}}
}

var _ client.Interface = (*Client)(nil)

// SetHook replaces Hook while the fake may be in use.
func (f *Client) SetHook(h func(a Action) error) {
	f.mu.Lock()
	f.Hook = h
	f.mu.Unlock()
}

// Actions returns the calls served so far.
func (f *Client) Actions() []Action {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Action(nil), f.actions...)
}

// ClearActions forgets the recorded calls.
func (f *Client) ClearActions() {
	f.mu.Lock()
	f.actions = nil
	f.mu.Unlock()
}

// ResourceVersion returns the last revision written.
func (f *Client) ResourceVersion() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rev
}

func (f *Client) now() v1alpha1.Time {
	if f.Now != nil {
		return v1alpha1.NewTime(f.Now())
	}
	return v1alpha1.Now()
}

func (f *Client) begin(a Action) error {
	f.mu.Lock()
	f.actions = append(f.actions, a)
	hook := f.Hook
	f.mu.Unlock()
	if hook != nil {
		return hook(a)
	}
	return nil
}

// Errors shaped like the server's, so client.IsNotFound and friends classify them.

func apiError(code int, reason, format string, a ...any) error {
	return &client.Error{Status: v1alpha1.Status{TypeMeta: v1alpha1.TypeMeta{APIVersion: "v1", Kind: "Status"},
		Status: "Failure", Code: code, Reason: reason, Message: fmt.Sprintf(format, a...)}}
}

// NotFound, Conflict, AlreadyExists, Invalid and Forbidden build errors for Hook.
func NotFound(resource, name string) error {
	return apiError(http.StatusNotFound, v1alpha1.ReasonNotFound, "%s %q not found", resource, name)
}

// Conflict is the error of a write with a stale resourceVersion.
func Conflict(resource, name string) error {
	return apiError(http.StatusConflict, v1alpha1.ReasonConflict,
		"Operation cannot be fulfilled on %s %q: the object has been modified; please apply your changes to the latest version and try again", resource, name)
}

// AlreadyExists is the error of a create of an existing name.
func AlreadyExists(resource, name string) error {
	return apiError(http.StatusConflict, v1alpha1.ReasonAlreadyExists, "%s %q already exists", resource, name)
}

// Invalid is the error of a write the kind's validation refuses.
func Invalid(resource, name, msg string) error {
	return apiError(http.StatusUnprocessableEntity, v1alpha1.ReasonInvalid, "%s %q is invalid: %s", resource, name, msg)
}

// Forbidden is the error of a write the server's rules refuse.
func Forbidden(format string, a ...any) error {
	return apiError(http.StatusForbidden, v1alpha1.ReasonForbidden, format, a...)
}

func badRequest(format string, a ...any) error {
	return apiError(http.StatusBadRequest, v1alpha1.ReasonBadRequest, format, a...)
}

// start records the call a and returns the strategy of its resource and its namespace (""
// for a cluster-scoped resource).
func (f *Client) start(a Action) (*registry.Strategy, string, error) {
	if err := f.begin(a); err != nil {
		return nil, "", err
	}
	st, err := strategy(a.Resource)
	if err != nil {
		return nil, "", err
	}
	if !st.Info.Namespaced {
		return st, "", nil
	}
	return st, a.Namespace, nil
}

func strategy(resource string) (*registry.Strategy, error) {
	st, ok := registry.ByResource(resource)
	if !ok {
		return nil, apiError(http.StatusNotFound, v1alpha1.ReasonNotFound, "the server does not know the resource %q", resource)
	}
	return st, nil
}

func objKey(resource, ns, name string) string { return resource + "/" + ns + "/" + name }

// toMap encodes v (an object, a []byte of JSON or a json.RawMessage) as a JSON map.
func toMap(v any) (map[string]any, error) {
	var data []byte
	switch b := v.(type) {
	case []byte:
		data = b
	case json.RawMessage:
		data = b
	default:
		var err error
		if data, err = json.Marshal(v); err != nil {
			return nil, badRequest("encoding the object: %v", err)
		}
	}
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil || m == nil {
		return nil, badRequest("the body is not a JSON object")
	}
	return m, nil
}

func metaOf(m map[string]any) map[string]any {
	md, _ := m["metadata"].(map[string]any)
	if md == nil {
		md = map[string]any{}
		m["metadata"] = md
	}
	return md
}

func str(m map[string]any, k string) string { s, _ := m[k].(string); return s }

func finalizersOf(md map[string]any) []string {
	l, _ := md["finalizers"].([]any)
	out := make([]string, 0, len(l))
	for _, v := range l {
		if s, ok := v.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

// typed decodes m into the kind's Go type, applies fn (defaults) and checks it.
func typed(st *registry.Strategy, m map[string]any) (v1alpha1.Object, error) {
	data, _ := json.Marshal(m)
	obj := st.New()
	if err := json.Unmarshal(data, obj); err != nil {
		return nil, badRequest("decoding %s: %v", st.Info.Kind, err)
	}
	return obj, nil
}

func validate(st *registry.Strategy, obj, old v1alpha1.Object) error {
	fe := registry.ValidateMeta(obj.GetObjectMeta(), st.Info.Namespaced)
	if st.Validate != nil {
		fe = append(fe, st.Validate(obj)...)
	}
	if old != nil && st.ValidateUpdate != nil {
		fe = append(fe, st.ValidateUpdate(obj, old)...)
	}
	if len(fe) == 0 {
		return nil
	}
	msgs := make([]string, 0, len(fe))
	for _, e := range fe {
		msgs = append(msgs, e.Field+": "+e.Message)
	}
	return Invalid(st.Info.Resource, obj.GetObjectMeta().Name, strings.Join(msgs, "; "))
}

// normalize re-encodes obj as a JSON map (after defaulting through the Go type).
func normalize(obj v1alpha1.Object) map[string]any {
	data, _ := json.Marshal(obj)
	m, _ := toMap(data)
	return m
}

func decodeOut(data []byte, out any) error {
	switch o := out.(type) {
	case nil:
		return nil
	case *[]byte:
		*o = append([]byte(nil), data...)
		return nil
	default:
		return json.Unmarshal(data, out)
	}
}

// Add stores objects defaulted but not validated, with fresh resourceVersions
// and, when missing, a uid, generation and creation time: the starting state of a test.
// resource is inferred from each object's kind.
func (f *Client) Add(objs ...v1alpha1.Object) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, o := range objs {
		m, err := toMap(o)
		if err != nil {
			return err
		}
		kind := str(m, "kind")
		if kind == "" {
			kind = reflect.TypeOf(o).Elem().Name()
			m["kind"] = kind
			m["apiVersion"] = v1alpha1.APIVersion
		}
		st, ok := registry.ByKind(kind)
		if !ok {
			return fmt.Errorf("fake: unknown kind %q", kind)
		}
		md := metaOf(m)
		if str(md, "uid") == "" {
			md["uid"] = uuid.NewString()
		}
		if _, ok := md["generation"]; !ok {
			md["generation"] = 1
		}
		if _, ok := md["creationTimestamp"]; !ok {
			md["creationTimestamp"] = f.now()
		}
		if st.Default != nil {
			// Stored objects are always defaulted: later writes default again and compare.
			o, err := typed(st, m)
			if err != nil {
				return err
			}
			st.Default(o)
			m = normalize(o)
			md = metaOf(m)
		}
		ns := ""
		if st.Info.Namespaced {
			ns = str(md, "namespace")
		}
		k := objKey(st.Info.Resource, ns, str(md, "name"))
		typ := v1alpha1.WatchAdded
		if _, exists := f.objects[k]; exists {
			typ = v1alpha1.WatchModified
		}
		f.store(st.Info.Resource, ns, k, m, typ)
	}
	return nil
}

// store writes m under a new revision and records the event; call with f.mu held.
func (f *Client) store(resource, ns, k string, m map[string]any, typ string) []byte {
	f.rev++
	metaOf(m)["resourceVersion"] = strconv.FormatInt(f.rev, 10)
	data, _ := json.Marshal(m)
	var prev []byte
	if old := f.objects[k]; old != nil {
		prev = old.data
	}
	if typ == v1alpha1.WatchDeleted {
		delete(f.objects, k)
	} else {
		f.objects[k] = &entry{data: data, rev: f.rev}
	}
	ev := event{rev: f.rev, resource: resource, ns: ns, typ: typ, data: data, prev: prev}
	f.log = append(f.log, ev)
	for w := range f.watchers {
		w.offer(ev)
	}
	return data
}

// Get reads one object.
func (f *Client) Get(ctx context.Context, resource, namespace, name string, out any) error {
	_, namespace, err := f.start(Action{Verb: "get", Resource: resource, Namespace: namespace, Name: name})
	if err != nil {
		return err
	}
	f.mu.Lock()
	e := f.objects[objKey(resource, namespace, name)]
	f.mu.Unlock()
	if e == nil {
		return NotFound(resource, name)
	}
	return decodeOut(e.data, out)
}

// selector is a parsed label and field selector.
type selector struct {
	labels labels.Selector
	fields [][3]string // path, op (= or !=), value
}

func parseSelector(opts client.ListOptions) (selector, error) {
	ls, err := labels.Parse(opts.LabelSelector)
	if err != nil {
		return selector{}, badRequest("%v", err)
	}
	s := selector{labels: ls}
	if strings.TrimSpace(opts.FieldSelector) == "" {
		return s, nil
	}
	for _, term := range strings.Split(opts.FieldSelector, ",") {
		op := "="
		k, v, ok := strings.Cut(term, "!=")
		if ok {
			op = "!="
		} else if k, v, ok = strings.Cut(term, "=="); !ok {
			if k, v, ok = strings.Cut(term, "="); !ok {
				return selector{}, badRequest("fieldSelector term %q: use FIELD=VALUE, FIELD==VALUE or FIELD!=VALUE", term)
			}
		}
		s.fields = append(s.fields, [3]string{strings.TrimSpace(k), op, strings.TrimSpace(v)})
	}
	return s, nil
}

func (s selector) empty() bool { return s.labels.Empty() && len(s.fields) == 0 }

func (s selector) matches(data []byte) bool {
	var m map[string]any
	if json.Unmarshal(data, &m) != nil {
		return false
	}
	if !s.labels.Empty() {
		l := map[string]string{}
		if md, ok := m["metadata"].(map[string]any); ok {
			if lm, ok := md["labels"].(map[string]any); ok {
				for k, v := range lm {
					l[k], _ = v.(string)
				}
			}
		}
		if !s.labels.Matches(l) {
			return false
		}
	}
	for _, fr := range s.fields {
		if (labels.FieldValue(m, strings.Split(fr[0], ".")) == fr[2]) != (fr[1] == "=") {
			return false
		}
	}
	return true
}

// List returns every selected object (the fake never pages).
func (f *Client) List(ctx context.Context, resource, namespace string, opts client.ListOptions) (*v1alpha1.List, error) {
	if err := f.begin(Action{Verb: "list", Resource: resource, Namespace: namespace}); err != nil {
		return nil, err
	}
	st, err := strategy(resource)
	if err != nil {
		return nil, err
	}
	sel, err := parseSelector(opts)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	keys := make([]string, 0, len(f.objects))
	pfx := resource + "/"
	if namespace != "" && st.Info.Namespaced {
		pfx += namespace + "/"
	}
	for k := range f.objects {
		if strings.HasPrefix(k, pfx) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	l := &v1alpha1.List{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: st.Info.Kind + "List"},
		Items: []json.RawMessage{}}
	l.Metadata.ResourceVersion = strconv.FormatInt(f.rev, 10)
	for _, k := range keys {
		if d := f.objects[k].data; sel.matches(d) {
			l.Items = append(l.Items, append(json.RawMessage(nil), d...))
		}
	}
	return l, nil
}

// ListAll is List: the fake answers in one page.
func (f *Client) ListAll(ctx context.Context, resource, namespace string, opts client.ListOptions) (*v1alpha1.List, error) {
	return f.List(ctx, resource, namespace, opts)
}

// Create stores a new object.
func (f *Client) Create(ctx context.Context, resource, namespace string, obj, out any) error {
	body, _ := json.Marshal(obj)
	if err := f.begin(Action{Verb: "create", Resource: resource, Namespace: namespace, Body: body}); err != nil {
		return err
	}
	st, err := strategy(resource)
	if err != nil {
		return err
	}
	m, err := toMap(body)
	if err != nil {
		return err
	}
	md := metaOf(m)
	if st.Info.Namespaced {
		if ns := str(md, "namespace"); ns != "" && ns != namespace {
			return badRequest("the object's metadata.namespace %q does not match the project %q of the request", ns, namespace)
		}
		md["namespace"] = namespace
	} else {
		namespace = ""
		delete(md, "namespace")
	}
	if str(md, "name") == "" && str(md, "generateName") != "" {
		md["name"] = str(md, "generateName") + strings.ToLower(uuid.NewString()[:5])
	}
	md["uid"] = uuid.NewString()
	delete(md, "resourceVersion")
	delete(md, "creationRevision")
	md["generation"] = 1
	md["creationTimestamp"] = f.now()
	delete(md, "deletionTimestamp")
	delete(md, "deletionGracePeriodSeconds")
	delete(m, "status")
	o, err := typed(st, m)
	if err != nil {
		return err
	}
	if st.Default != nil {
		st.Default(o)
	}
	om := o.GetObjectMeta()
	for _, fin := range st.Finalizers {
		if !contains(om.Finalizers, fin) {
			om.Finalizers = append(om.Finalizers, fin)
		}
	}
	if err := validate(st, o, nil); err != nil {
		return err
	}
	m = normalize(o)
	f.mu.Lock()
	k := objKey(resource, namespace, om.Name)
	if _, dup := f.objects[k]; dup {
		f.mu.Unlock()
		return AlreadyExists(resource, om.Name)
	}
	data := f.store(resource, namespace, k, m, v1alpha1.WatchAdded)
	f.mu.Unlock()
	return decodeOut(data, out)
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// without returns a copy of m without the named top-level fields and, in metadata, without
// resourceVersion: what two versions are compared on.
func without(m map[string]any, fields ...string) []byte {
	c := make(map[string]any, len(m))
	for k, v := range m {
		c[k] = v
	}
	for _, f := range fields {
		delete(c, f)
	}
	if md, ok := c["metadata"].(map[string]any); ok {
		mc := make(map[string]any, len(md))
		for k, v := range md {
			mc[k] = v
		}
		delete(mc, "resourceVersion")
		c["metadata"] = mc
	}
	data, _ := json.Marshal(c)
	return data
}

// update is the server's update rule; call with f.mu held. obj is the new object (its
// metadata.resourceVersion, when set, must be current); status picks the subresource.
func (f *Client) update(st *registry.Strategy, namespace, name string, obj map[string]any, status bool) ([]byte, error) {
	resource := st.Info.Resource
	md := metaOf(obj)
	if n := str(md, "name"); n != "" && n != name {
		return nil, badRequest("the object's metadata.name %q does not match the name %q in the path", n, name)
	}
	if ns := str(md, "namespace"); st.Info.Namespaced && ns != "" && ns != namespace {
		return nil, badRequest("the object's metadata.namespace %q does not match the project %q of the request", ns, namespace)
	}
	k := objKey(resource, namespace, name)
	cur := f.objects[k]
	if cur == nil {
		return nil, NotFound(resource, name)
	}
	if rv := str(md, "resourceVersion"); rv != "" {
		want, err := strconv.ParseInt(rv, 10, 64)
		if err != nil {
			return nil, Invalid(resource, name, "metadata.resourceVersion: must be a number given by the server")
		}
		if want != cur.rev {
			return nil, Conflict(resource, name)
		}
	}
	old, _ := toMap(cur.data)
	oldMD := metaOf(old)
	var next map[string]any
	if status {
		next, _ = toMap(cur.data)
		if s, ok := obj["status"]; ok {
			next["status"] = s
		} else {
			delete(next, "status")
		}
	} else {
		next = obj
		if s, ok := old["status"]; ok {
			next["status"] = s
		} else {
			delete(next, "status")
		}
		md["namespace"], md["name"] = oldMD["namespace"], oldMD["name"]
		if !st.Info.Namespaced {
			delete(md, "namespace")
		}
	}
	nmd := metaOf(next)
	for _, fld := range []string{"uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generateName", "generation"} {
		if v, ok := oldMD[fld]; ok {
			nmd[fld] = v
		} else {
			delete(nmd, fld)
		}
	}
	o, err := typed(st, next)
	if err != nil {
		return nil, err
	}
	oldObj, _ := typed(st, old)
	if !status && st.Default != nil {
		st.Default(o)
	}
	om := o.GetObjectMeta()
	if !status && !bytes.Equal(without(normalize(o), "metadata", "status"), without(old, "metadata", "status")) {
		om.Generation = oldObj.GetObjectMeta().Generation + 1
	}
	deleting := oldObj.GetObjectMeta().DeletionTimestamp != nil
	if deleting {
		for _, fin := range om.Finalizers {
			if !contains(oldObj.GetObjectMeta().Finalizers, fin) {
				return nil, Forbidden("%s %q is being deleted: finalizer %q may not be added", st.Info.Singular, name, fin)
			}
		}
	}
	if err := validate(st, o, oldObj); err != nil {
		return nil, err
	}
	next = normalize(o)
	if bytes.Equal(without(next), without(old)) {
		return cur.data, nil
	}
	if deleting && len(om.Finalizers) == 0 {
		return f.store(resource, namespace, k, next, v1alpha1.WatchDeleted), nil
	}
	return f.store(resource, namespace, k, next, v1alpha1.WatchModified), nil
}

func (f *Client) write(verb, resource, namespace, name string, body []byte, status bool, out any,
	apply func(current map[string]any) (map[string]any, error)) error {
	st, namespace, err := f.start(Action{Verb: verb, Resource: resource, Namespace: namespace, Name: name, Body: body})
	if err != nil {
		return err
	}
	f.mu.Lock()
	cur := f.objects[objKey(resource, namespace, name)]
	if cur == nil {
		f.mu.Unlock()
		return NotFound(resource, name)
	}
	curMap, _ := toMap(cur.data)
	next, err := apply(curMap)
	if err != nil {
		f.mu.Unlock()
		return err
	}
	data, err := f.update(st, namespace, name, next, status)
	f.mu.Unlock()
	if err != nil {
		return err
	}
	return decodeOut(data, out)
}

func (f *Client) replace(verb, resource, namespace, name string, obj, out any, status bool) error {
	body, _ := json.Marshal(obj)
	return f.write(verb, resource, namespace, name, body, status, out, func(map[string]any) (map[string]any, error) {
		return toMap(body)
	})
}

// Update replaces an object but its status.
func (f *Client) Update(ctx context.Context, resource, namespace, name string, obj, out any) error {
	return f.replace("update", resource, namespace, name, obj, out, false)
}

// UpdateStatus replaces an object's status.
func (f *Client) UpdateStatus(ctx context.Context, resource, namespace, name string, obj, out any) error {
	return f.replace("updatestatus", resource, namespace, name, obj, out, true)
}

func (f *Client) mergePatch(verb, resource, namespace, name string, patch []byte, out any, status, strategic bool) error {
	return f.write(verb, resource, namespace, name, patch, status, out, func(cur map[string]any) (map[string]any, error) {
		p, err := toMap(patch)
		if err != nil {
			return nil, badRequest("malformed JSON merge patch")
		}
		var merged any
		if strategic {
			if merged, err = objpatch.Strategic(map[string]any(cur), p); err != nil {
				return nil, badRequest("%v", err)
			}
		} else {
			merged = objpatch.Merge(map[string]any(cur), p)
		}
		m, _ := merged.(map[string]any)
		if m == nil {
			return nil, badRequest("the patch leaves no object")
		}
		if md, ok := p["metadata"].(map[string]any); !ok || md["resourceVersion"] == nil {
			// Without a resourceVersion a patch applies to whatever is current.
			delete(metaOf(m), "resourceVersion")
		}
		return m, nil
	})
}

// Patch applies a JSON merge patch.
func (f *Client) Patch(ctx context.Context, resource, namespace, name string, patch []byte, out any) error {
	return f.mergePatch("patch", resource, namespace, name, patch, out, false, false)
}

// PatchStatus applies a JSON merge patch to the status subresource.
func (f *Client) PatchStatus(ctx context.Context, resource, namespace, name string, patch []byte, out any) error {
	return f.mergePatch("patchstatus", resource, namespace, name, patch, out, true, false)
}

// PatchStatusStrategic applies a strategic merge patch (conditions merge by type) to status.
func (f *Client) PatchStatusStrategic(ctx context.Context, resource, namespace, name string, patch []byte, out any) error {
	return f.mergePatch("patchstatus", resource, namespace, name, patch, out, true, true)
}

// JSONPatch applies an RFC 6902 JSON patch; a failed test operation is a Conflict.
func (f *Client) JSONPatch(ctx context.Context, resource, namespace, name string, patch []byte, out any) error {
	return f.jsonPatch("jsonpatch", resource, namespace, name, patch, out, false)
}

// JSONPatchStatus applies an RFC 6902 JSON patch to the status subresource, which it sees
// with status and status.conditions present, as the server does.
func (f *Client) JSONPatchStatus(ctx context.Context, resource, namespace, name string, patch []byte, out any) error {
	return f.jsonPatch("jsonpatchstatus", resource, namespace, name, patch, out, true)
}

func (f *Client) jsonPatch(verb, resource, namespace, name string, patch []byte, out any, status bool) error {
	return f.write(verb, resource, namespace, name, patch, status, out, func(cur map[string]any) (map[string]any, error) {
		p, err := jsonpatch.DecodePatch(patch)
		if err != nil {
			return nil, badRequest("malformed JSON patch: %v", err)
		}
		data, _ := json.Marshal(cur)
		if status {
			if data, err = objpatch.WithStatusLists(data); err != nil {
				return nil, err
			}
		}
		patched, err := p.Apply(data)
		if err != nil {
			if errors.Is(err, jsonpatch.ErrTestFailed) {
				return nil, apiError(http.StatusConflict, v1alpha1.ReasonConflict, "the JSON patch does not apply to %q: %v", name, err)
			}
			return nil, Invalid(resource, name, err.Error())
		}
		m, err := toMap(patched)
		if err != nil {
			return nil, err
		}
		if !bytes.Contains(patch, []byte(`"/metadata/resourceVersion"`)) {
			delete(metaOf(m), "resourceVersion")
		}
		return m, nil
	})
}

// Bind binds a VM to a node with the server's preconditions.
func (f *Client) Bind(ctx context.Context, namespace, name string, b *v1alpha1.VirtualMachineBinding, out any) error {
	body, _ := json.Marshal(b)
	if err := f.begin(Action{Verb: "bind", Resource: "virtualmachines", Namespace: namespace, Name: name, Body: body}); err != nil {
		return err
	}
	if b.NodeName == "" {
		return Invalid("virtualmachinebindings", name, "nodeName: the node to bind the VM to")
	}
	st, _ := registry.ByResource("virtualmachines")
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.objects[objKey("nodes", "", b.NodeName)] == nil {
		return NotFound("nodes", b.NodeName)
	}
	cur := f.objects[objKey("virtualmachines", namespace, name)]
	if cur == nil {
		return NotFound("virtualmachines", name)
	}
	var vm v1alpha1.VirtualMachine
	if err := json.Unmarshal(cur.data, &vm); err != nil {
		return err
	}
	refuse := func(format string, a ...any) error {
		return apiError(http.StatusConflict, v1alpha1.ReasonConflict, "cannot bind virtualmachine %q to node %q: "+format,
			append([]any{name, b.NodeName}, a...)...)
	}
	switch {
	case b.UID != "" && vm.UID != b.UID:
		return refuse("the VM was replaced (uid %s, the binding is for %s)", vm.UID, b.UID)
	case vm.DeletionTimestamp != nil:
		return refuse("it is being deleted")
	case vm.Status.NodeName == b.NodeName:
		return decodeOut(cur.data, out)
	case vm.Status.NodeName != "":
		return refuse("it is bound to node %q", vm.Status.NodeName)
	case !reflect.DeepEqual(vm.Status.PowerRequest, b.PowerRequest):
		return refuse("its power request changed since the decision")
	}
	vm.Status.NodeName = b.NodeName
	msg := b.Message
	if msg == "" {
		msg = "bound to node " + b.NodeName
	}
	now := f.now()
	v1alpha1.SetCondition(&vm.Status.Conditions, v1alpha1.Condition{Type: v1alpha1.VMConditionScheduled,
		Status: v1alpha1.ConditionTrue, Reason: "Scheduled", Message: msg, LastTransitionTime: &now})
	m, _ := toMap(&vm)
	data, err := f.update(st, namespace, name, m, true)
	if err != nil {
		return err
	}
	return decodeOut(data, out)
}

// Delete deletes an object, or marks it deleted while it has finalizers.
func (f *Client) Delete(ctx context.Context, resource, namespace, name string) error {
	return f.delete(resource, namespace, name, nil)
}

// DeleteWithGrace deletes with a grace period (recorded when it shrinks).
func (f *Client) DeleteWithGrace(ctx context.Context, resource, namespace, name string, grace time.Duration) error {
	g := int64(grace / time.Second)
	return f.delete(resource, namespace, name, &g)
}

func (f *Client) delete(resource, namespace, name string, grace *int64) error {
	_, namespace, err := f.start(Action{Verb: "delete", Resource: resource, Namespace: namespace, Name: name})
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	k := objKey(resource, namespace, name)
	cur := f.objects[k]
	if cur == nil {
		return NotFound(resource, name)
	}
	m, _ := toMap(cur.data)
	md := metaOf(m)
	if len(finalizersOf(md)) == 0 {
		f.store(resource, namespace, k, m, v1alpha1.WatchDeleted)
		return nil
	}
	var old *int64
	if n, ok := md["deletionGracePeriodSeconds"].(json.Number); ok {
		v, _ := n.Int64()
		old = &v
	}
	shrinks := grace != nil && (old == nil || *grace < *old)
	if md["deletionTimestamp"] != nil && !shrinks {
		return nil
	}
	if shrinks {
		md["deletionGracePeriodSeconds"] = *grace
	}
	if md["deletionTimestamp"] == nil {
		md["deletionTimestamp"] = f.now()
	}
	f.store(resource, namespace, k, m, v1alpha1.WatchModified)
	return nil
}

// Compact forgets the history before the current revision, as a store compaction does: a
// watch from an older resourceVersion then gets an ERROR event of reason Expired.
func (f *Client) Compact() {
	f.mu.Lock()
	f.compacted = f.rev
	f.log = nil
	f.mu.Unlock()
}

// BreakWatches ends every open watch stream, as a lost connection or a restarted server
// does; watchers then list again.
func (f *Client) BreakWatches() {
	f.mu.Lock()
	for w := range f.watchers {
		w.mu.Lock()
		w.broken = true
		w.mu.Unlock()
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
	f.mu.Unlock()
}

// Watch streams changes as the API server does. Without a resourceVersion (or with "0") the
// selected objects come first as ADDED; with one, the changes after it are replayed first
// (or, before the last Compact, an ERROR event of reason Expired ends the stream). With a
// selector, an object that leaves the selection is DELETED and one that enters it ADDED.
func (f *Client) Watch(ctx context.Context, resource, namespace string, opts client.ListOptions) (*client.Watcher, error) {
	_, namespace, err := f.start(Action{Verb: "watch", Resource: resource, Namespace: namespace})
	if err != nil {
		return nil, err
	}
	sel, err := parseSelector(opts)
	if err != nil {
		return nil, err
	}
	var from int64
	if opts.ResourceVersion != "" {
		if from, err = strconv.ParseInt(opts.ResourceVersion, 10, 64); err != nil {
			return nil, badRequest("resourceVersion %q is not a number", opts.ResourceVersion)
		}
	}
	cw, feed := client.NewWatcher()
	w := &watcher{resource: resource, ns: namespace, sel: sel, wake: make(chan struct{}, 1)}
	f.mu.Lock()
	switch {
	case from > 0 && from < f.compacted:
		f.mu.Unlock()
		st, _ := json.Marshal(v1alpha1.Status{TypeMeta: v1alpha1.TypeMeta{APIVersion: "v1", Kind: "Status"}, Status: "Failure",
			Code: http.StatusGone, Reason: v1alpha1.ReasonExpired,
			Message: "too old resource version: " + opts.ResourceVersion + ": list again and watch from the list's resourceVersion"})
		go func() {
			feed.Send(v1alpha1.WatchEvent{Type: v1alpha1.WatchError, Object: st})
			feed.Finish(nil)
		}()
		return cw, nil
	case from > 0:
		for _, ev := range f.log {
			if ev.rev > from {
				w.offer(ev)
			}
		}
	default:
		keys := make([]string, 0, len(f.objects))
		for k := range f.objects {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			parts := strings.SplitN(k, "/", 3)
			if parts[0] != resource || (namespace != "" && parts[1] != namespace) || !sel.matches(f.objects[k].data) {
				continue
			}
			w.add(v1alpha1.WatchAdded, f.objects[k].data)
		}
	}
	f.watchers[w] = true
	f.mu.Unlock()
	go func() {
		defer func() {
			f.mu.Lock()
			delete(f.watchers, w)
			f.mu.Unlock()
			feed.Finish(nil)
		}()
		for {
			for _, ev := range w.take() {
				if !feed.Send(ev) {
					return
				}
			}
			if w.isBroken() {
				return
			}
			select {
			case <-w.wake:
			case <-feed.Stopped():
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	return cw, nil
}

// watcher buffers the events of one watch without bounds, so writers never wait for readers.
type watcher struct {
	resource, ns string
	sel          selector
	wake         chan struct{}

	mu      sync.Mutex
	pending []v1alpha1.WatchEvent
	broken  bool
}

func (w *watcher) isBroken() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.broken
}

// offer passes a change to the watch if it concerns the watched objects, translated for the
// selector as the server does.
func (w *watcher) offer(ev event) {
	if ev.resource != w.resource || (w.ns != "" && ev.ns != w.ns) {
		return
	}
	typ := ev.typ
	if !w.sel.empty() {
		now := ev.typ != v1alpha1.WatchDeleted && w.sel.matches(ev.data)
		before := ev.prev != nil && w.sel.matches(ev.prev)
		switch {
		case ev.typ == v1alpha1.WatchDeleted && before:
			typ = v1alpha1.WatchDeleted
		case ev.typ == v1alpha1.WatchDeleted:
			return
		case now && before:
			typ = v1alpha1.WatchModified
		case now:
			typ = v1alpha1.WatchAdded
		case before:
			typ = v1alpha1.WatchDeleted
		default:
			return
		}
	}
	w.add(typ, ev.data)
}

func (w *watcher) add(typ string, data []byte) {
	w.mu.Lock()
	w.pending = append(w.pending, v1alpha1.WatchEvent{Type: typ, Object: append(json.RawMessage(nil), data...)})
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *watcher) take() []v1alpha1.WatchEvent {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.pending
	w.pending = nil
	return out
}
