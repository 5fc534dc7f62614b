package apiserver

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mathrand "math/rand/v2"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"time"

	jsonpatch "github.com/evanphx/json-patch/v5"
	"github.com/google/uuid"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/objpatch"
	"github.com/rakhsh/rakhsh/internal/registry"
)

// DefaultProject always exists and cannot be deleted.
const DefaultProject = "default"

// readObject reads the request's body and decodes it as an object of t's kind.
func readObject(w http.ResponseWriter, r *http.Request, t target) (v1alpha1.Object, error) {
	data, err := readBody(w, r)
	if err != nil {
		return nil, err
	}
	return DecodeObject(data, t.st)
}

func (s *Server) serveCreate(w http.ResponseWriter, r *http.Request, t target) {
	obj, err := readObject(w, r, t)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out, rev, err := s.Create(r.Context(), t.st, t.namespace, obj)
	noteAuditName(r.Context(), obj.GetObjectMeta().Name) // as asked for, or as generated
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeRaw(w, http.StatusCreated, withRV(out, rev, rev))
}

// Create validates and stores a new object. namespace is the project from the path ("" for
// cluster-scoped kinds). It returns the stored bytes and revision.
func (s *Server) Create(ctx context.Context, st *registry.Strategy, namespace string, obj v1alpha1.Object) ([]byte, int64, error) {
	m := obj.GetObjectMeta()
	if st.Info.Namespaced {
		if m.Namespace != "" && m.Namespace != namespace {
			return nil, 0, errs.New(errs.ErrBadRequest, "the object's metadata.namespace %q does not match the project %q of the request", m.Namespace, namespace)
		}
		m.Namespace = namespace
	}
	if m.Name == "" && m.GenerateName != "" {
		m.Name = m.GenerateName + randomSuffix()
	}
	// Fields only the server sets.
	m.UID = uuid.NewString()
	m.ResourceVersion, m.CreationRevision = "", ""
	m.Generation = 1
	now := v1alpha1.NewTime(s.now())
	m.CreationTimestamp = &now
	m.DeletionTimestamp, m.DeletionGracePeriodSeconds = nil, nil
	resetField(obj, "Status")
	if err := authorizeNodeCreate(ctx, st, obj); err != nil {
		return nil, 0, err
	}
	if st.Default != nil {
		st.Default(obj)
	}
	for _, f := range st.Finalizers {
		if !contains(m.Finalizers, f) {
			m.Finalizers = append(m.Finalizers, f)
		}
	}
	if err := validate(st, obj, nil, s.policyErrors(obj, nil)); err != nil {
		return nil, 0, err
	}
	if st.Info.Namespaced {
		if err := s.checkProject(ctx, namespace); err != nil {
			return nil, 0, err
		}
	}
	unlock, err := s.admit(ctx, namespace, obj, nil) // class and quota admission (quota_admission.go)
	defer unlock()
	if err != nil {
		return nil, 0, err
	}
	data, err := encodeStored(obj)
	if err != nil {
		return nil, 0, err
	}
	rev, err := s.store.Create(ctx, key(st.Info, namespace, m.Name), data)
	if err != nil {
		if errors.Is(err, errs.ErrAlreadyExists) {
			return nil, 0, errs.New(errs.ErrAlreadyExists, "%s %q already exists%s", st.Info.Singular, m.Name, inProject(namespace))
		}
		return nil, 0, err
	}
	return data, rev, nil
}

func inProject(ns string) string {
	if ns == "" {
		return ""
	}
	return " in project " + strconv.Quote(ns)
}

// checkProject refuses objects in a missing or terminating project.
func (s *Server) checkProject(ctx context.Context, ns string) error {
	kv, err := s.store.Get(ctx, "/projects/"+ns)
	if err != nil {
		if errors.Is(err, errs.ErrNotFound) {
			return errs.New(errs.ErrNotFound, "project %q not found: create it first (kind Project)", ns)
		}
		return err
	}
	var p struct {
		Metadata v1alpha1.ObjectMeta `json:"metadata"`
	}
	if err := json.Unmarshal(kv.Value, &p); err == nil && p.Metadata.DeletionTimestamp != nil {
		return errs.New(errs.ErrForbidden, "project %q is being deleted: no new objects may be created in it", ns)
	}
	return nil
}

func validate(st *registry.Strategy, obj, old v1alpha1.Object, policy errs.FieldErrors) error {
	fe := registry.ValidateMeta(obj.GetObjectMeta(), st.Info.Namespaced)
	if st.Validate != nil {
		fe = append(fe, st.Validate(obj)...)
	}
	if old != nil && st.ValidateUpdate != nil {
		fe = append(fe, st.ValidateUpdate(obj, old)...)
	}
	fe = append(fe, policy...)
	return errs.NewInvalid(st.Info.Kind, obj.GetObjectMeta().Name, fe)
}

const suffixChars = "bcdfghjklmnpqrstvwxz2456789"

func randomSuffix() string {
	b := make([]byte, 5)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = suffixChars[int(b[i])%len(suffixChars)]
	}
	return string(b)
}

// resetField zeroes a named struct field (Status) if the kind has it.
func resetField(obj v1alpha1.Object, name string) {
	f := reflect.ValueOf(obj).Elem().FieldByName(name)
	if f.IsValid() && f.CanSet() {
		f.Set(reflect.Zero(f.Type()))
	}
}

// copyField sets dst's named field to src's.
func copyField(dst, src v1alpha1.Object, name string) {
	d := reflect.ValueOf(dst).Elem().FieldByName(name)
	sv := reflect.ValueOf(src).Elem().FieldByName(name)
	if d.IsValid() && sv.IsValid() && d.CanSet() {
		d.Set(sv)
	}
}

// specBytes encodes everything of obj but metadata and status: what a generation counts.
func specBytes(obj v1alpha1.Object) []byte {
	v := reflect.ValueOf(obj).Elem()
	c := reflect.New(v.Type()).Elem()
	c.Set(v)
	for _, n := range []string{"ObjectMeta", "Status"} {
		if f := c.FieldByName(n); f.IsValid() {
			f.Set(reflect.Zero(f.Type()))
		}
	}
	data, _ := json.Marshal(c.Addr().Interface())
	return data
}

func (s *Server) serveUpdate(w http.ResponseWriter, r *http.Request, t target, status bool) {
	obj, err := readObject(w, r, t)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out, rev, code, err := s.Update(r.Context(), t, obj, status)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeRaw(w, code, withRV(out, rev.mod, rev.created))
}

// Update replaces an object (status=false: everything but status; status=true: only status).
// An empty resourceVersion means "whatever is stored now". It returns the stored bytes,
// revision and HTTP code.
func (s *Server) Update(ctx context.Context, t target, obj v1alpha1.Object, status bool) ([]byte, revs, int, error) {
	m := obj.GetObjectMeta()
	if m.Name != "" && m.Name != t.name {
		return nil, revs{}, 0, errs.New(errs.ErrBadRequest, "the object's metadata.name %q does not match the name %q in the path", m.Name, t.name)
	}
	if t.st.Info.Namespaced && m.Namespace != "" && m.Namespace != t.namespace {
		return nil, revs{}, 0, errs.New(errs.ErrBadRequest, "the object's metadata.namespace %q does not match the project %q of the request", m.Namespace, t.namespace)
	}
	k := key(t.st.Info, t.namespace, t.name)
	kv, err := s.store.Get(ctx, k)
	if err != nil {
		return nil, revs{}, 0, s.notFound(err, t)
	}
	if m.ResourceVersion != "" {
		want, err := strconv.ParseInt(m.ResourceVersion, 10, 64)
		if err != nil {
			return nil, revs{}, 0, errs.NewInvalid(t.st.Info.Kind, t.name, errs.FieldErrors{{Field: "metadata.resourceVersion", Type: errs.FieldValueInvalid, Message: "must be a number given by the server"}})
		}
		if want != kv.ModRevision {
			return nil, revs{}, 0, conflict(t)
		}
	}
	old, err := decodeStored(t.st, kv.Value, kv.ModRevision, kv.CreateRevision)
	if err != nil {
		return nil, revs{}, 0, err
	}
	om := old.GetObjectMeta()
	if status {
		// Only status comes from the request.
		next := t.st.New()
		copyAll(next, old)
		copyField(next, obj, "Status")
		obj = next
		if n, ok := obj.(*v1alpha1.Node); ok {
			registry.EnsureNodeHostnameLabel(n)
		}
		m = obj.GetObjectMeta()
	} else {
		copyField(obj, old, "Status")
		m.Namespace = om.Namespace
		m.Name = om.Name
		if t.st.Default != nil {
			t.st.Default(obj)
		}
		m.Generation = om.Generation
		if !bytes.Equal(specBytes(obj), specBytes(old)) || placementChanged(obj, old) {
			m.Generation = om.Generation + 1
		}
	}
	m.UID = om.UID
	m.CreationTimestamp = om.CreationTimestamp
	m.DeletionTimestamp = om.DeletionTimestamp
	m.DeletionGracePeriodSeconds = om.DeletionGracePeriodSeconds
	m.GenerateName = om.GenerateName
	if om.DeletionTimestamp != nil && len(m.Finalizers) > 0 {
		for _, f := range m.Finalizers {
			if !contains(om.Finalizers, f) {
				return nil, revs{}, 0, errs.New(errs.ErrForbidden, "%s %q is being deleted: finalizer %q may not be added", t.st.Info.Singular, t.name, f)
			}
		}
	}
	if err := authorizeNodeWrite(ctx, t, old, obj, status); err != nil {
		return nil, revs{}, 0, err
	}
	if err := authorizeProjectWrite(ctx, t, old, obj, status); err != nil {
		return nil, revs{}, 0, err
	}
	if err := validate(t.st, obj, old, s.policyErrors(obj, old)); err != nil {
		return nil, revs{}, 0, err
	}
	if !status {
		unlock, err := s.admit(ctx, t.namespace, obj, old) // class and quota admission (quota_admission.go)
		defer unlock()
		if err != nil {
			return nil, revs{}, 0, err
		}
	}
	m.ResourceVersion, m.CreationRevision = "", ""
	data, err := encodeStored(obj)
	if err != nil {
		return nil, revs{}, 0, err
	}
	if bytes.Equal(data, kv.Value) {
		return kv.Value, revs{kv.ModRevision, kv.CreateRevision}, http.StatusOK, nil
	}
	if om.DeletionTimestamp != nil && len(m.Finalizers) == 0 {
		// The last finalizer went: the object goes.
		rev, _, err := s.store.Delete(ctx, k, kv.ModRevision)
		if err != nil {
			return nil, revs{}, 0, s.casError(err, t)
		}
		return data, revs{rev, kv.CreateRevision}, http.StatusOK, nil
	}
	rev, err := s.store.Update(ctx, k, data, kv.ModRevision)
	if err != nil {
		return nil, revs{}, 0, s.casError(err, t)
	}
	return data, revs{rev, kv.CreateRevision}, http.StatusOK, nil
}

// revs are the revisions of a stored object: its last write and its creation.
type revs struct{ mod, created int64 }

func copyAll(dst, src v1alpha1.Object) {
	reflect.ValueOf(dst).Elem().Set(reflect.ValueOf(src).Elem())
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func conflict(t target) error {
	return errs.New(errs.ErrConflict, "Operation cannot be fulfilled on %s %q: the object has been modified; please apply your changes to the latest version and try again", t.st.Info.Resource, t.name)
}

func (s *Server) casError(err error, t target) error {
	if errors.Is(err, errs.ErrConflict) {
		return conflict(t)
	}
	return s.notFound(err, t)
}

func (s *Server) servePatch(w http.ResponseWriter, r *http.Request, t target, status bool) {
	ct, _, _ := strings.Cut(r.Header.Get("Content-Type"), ";")
	switch strings.TrimSpace(ct) {
	case "", "application/merge-patch+json", "application/json", "application/strategic-merge-patch+json":
	case "application/json-patch+json":
		s.serveJSONPatch(w, r, t, status)
		return
	default:
		st := v1alpha1.Status{TypeMeta: v1alpha1.TypeMeta{APIVersion: "v1", Kind: "Status"}, Status: "Failure",
			Reason: v1alpha1.ReasonUnsupportedMedia, Code: http.StatusUnsupportedMediaType,
			Message: fmt.Sprintf("patch type %q is not supported: use a JSON merge patch (application/merge-patch+json), a strategic merge patch (application/strategic-merge-patch+json: a merge patch whose conditions lists merge by type) or a JSON patch (application/json-patch+json)", ct)}
		writeJSON(w, st.Code, st)
		return
	}
	data, err := readBody(w, r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var patch any
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&patch); err != nil {
		s.writeError(w, r, errs.New(errs.ErrBadRequest, "malformed JSON merge patch: %s", jsonErrorText(data, err)))
		return
	}
	if _, ok := patch.(map[string]any); !ok {
		s.writeError(w, r, errs.New(errs.ErrBadRequest, "a JSON merge patch must be an object"))
		return
	}
	// A patch without a resourceVersion applies to whatever is current: retry lost races.
	s.applyPatch(w, r, t, status, patchHasRV(patch), func(current []byte) ([]byte, error) {
		var cur any
		dec := json.NewDecoder(bytes.NewReader(current))
		dec.UseNumber()
		if err := dec.Decode(&cur); err != nil {
			return nil, err
		}
		if strings.TrimSpace(ct) == "application/strategic-merge-patch+json" {
			merged, err := objpatch.Strategic(cur, deepCopyJSON(patch))
			if err != nil {
				return nil, err
			}
			return json.Marshal(merged)
		}
		return json.Marshal(objpatch.Merge(cur, deepCopyJSON(patch)))
	})
}

// serveJSONPatch applies an RFC 6902 JSON patch (a list of add, remove, replace, move, copy
// and test operations) to the current object. A patch that tests or sets
// /metadata/resourceVersion applies only to that version; others are retried on conflicts.
func (s *Server) serveJSONPatch(w http.ResponseWriter, r *http.Request, t target, status bool) {
	data, err := readBody(w, r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	patch, err := jsonpatch.DecodePatch(data)
	if err != nil {
		s.writeError(w, r, errs.New(errs.ErrBadRequest, "malformed JSON patch: %v", err))
		return
	}
	pinned := bytes.Contains(data, []byte(`"/metadata/resourceVersion"`))
	s.applyPatch(w, r, t, status, pinned, func(current []byte) ([]byte, error) {
		if status {
			var err error
			if current, err = objpatch.WithStatusLists(current); err != nil {
				return nil, err
			}
		}
		patched, err := patch.Apply(current)
		if err != nil {
			// A failed test operation is a failed precondition, like a stale resourceVersion.
			class := errs.ErrInvalid
			if errors.Is(err, jsonpatch.ErrTestFailed) {
				class = errs.ErrConflict
			}
			return nil, errs.New(class, "the JSON patch does not apply to %s %q: %v", t.st.Info.Singular, t.name, err)
		}
		return patched, nil
	})
}

// applyPatch reads the object, applies patch to its JSON, and stores the result, reading again
// after a lost race unless the patch is pinned to a resourceVersion.
func (s *Server) applyPatch(w http.ResponseWriter, r *http.Request, t target, status, pinned bool, patch func(current []byte) ([]byte, error)) {
	for attempt := 0; ; attempt++ {
		kv, err := s.store.Get(r.Context(), key(t.st.Info, t.namespace, t.name))
		if err != nil {
			s.writeError(w, r, s.notFound(err, t))
			return
		}
		patched, err := patch(withRV(kv.Value, kv.ModRevision, kv.CreateRevision))
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		obj, err := DecodeObject(patched, t.st)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		out, rev, code, err := s.Update(r.Context(), t, obj, status)
		if err != nil {
			if errors.Is(err, errs.ErrConflict) && !pinned && retryLostRace(r.Context(), attempt) {
				continue
			}
			s.writeError(w, r, err)
			return
		}
		writeRaw(w, code, withRV(out, rev.mod, rev.created))
		return
	}
}

// retryLostRace says whether a write that lost a race with another writer on its attempt-th
// try should read again and retry, after a short random pause that grows with the attempts
// (so writers racing on one object, possibly through several API servers sharing an etcd,
// spread out rather than collide again). It gives up after maxRaceRetries or when the
// request ends; the client then gets the 409.
func retryLostRace(ctx context.Context, attempt int) bool {
	if attempt >= maxRaceRetries {
		return false
	}
	pause := time.Duration(1+mathrand.IntN(2*(attempt+1))) * time.Millisecond
	t := time.NewTimer(pause)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// maxRaceRetries bounds the retries of a write without a precondition; with the pauses of
// retryLostRace they add up to about half a second at most.
const maxRaceRetries = 20

func patchHasRV(p any) bool {
	m, _ := p.(map[string]any)
	md, _ := m["metadata"].(map[string]any)
	_, ok := md["resourceVersion"]
	return ok
}

func deepCopyJSON(v any) any {
	switch x := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = deepCopyJSON(e)
		}
		return m
	case []any:
		l := make([]any, len(x))
		for i, e := range x {
			l[i] = deepCopyJSON(e)
		}
		return l
	}
	return v
}

func (s *Server) serveDelete(w http.ResponseWriter, r *http.Request, t target) {
	grace, err := deleteGracePeriod(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if t.st.Info.Kind == "Node" {
		// Removing a node revokes its agent's credential first, so the agent cannot write
		// again (nor create its Node anew).
		if err := s.revokeNodeCredential(r.Context(), t.name); err != nil {
			s.writeError(w, r, err)
			return
		}
	}
	out, rev, err := s.Delete(r.Context(), t, grace)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeRaw(w, http.StatusOK, withRV(out, rev.mod, rev.created))
}

// deleteGracePeriod reads the grace period of a delete: ?gracePeriodSeconds=N, or
// gracePeriodSeconds in a DeleteOptions body (what kubectl sends); nil when not given.
func deleteGracePeriod(r *http.Request) (*int64, error) {
	if v := r.URL.Query().Get("gracePeriodSeconds"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return nil, errs.New(errs.ErrBadRequest, "gracePeriodSeconds %q must be a whole number of seconds, 0 or more", v)
		}
		return &n, nil
	}
	if r.ContentLength == 0 || r.Body == nil {
		return nil, nil
	}
	var opts struct {
		GracePeriodSeconds *int64 `json:"gracePeriodSeconds"`
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
	if err != nil {
		return nil, err
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, nil
	}
	if err := json.Unmarshal(body, &opts); err != nil {
		return nil, errs.New(errs.ErrBadRequest, "malformed DeleteOptions: %v", err)
	}
	if g := opts.GracePeriodSeconds; g != nil && *g < 0 {
		return nil, errs.New(errs.ErrBadRequest, "gracePeriodSeconds must be 0 or more")
	}
	return opts.GracePeriodSeconds, nil
}

// Delete removes an object, or marks it with a deletionTimestamp while finalizers remain.
// grace, when set, is recorded as metadata.deletionGracePeriodSeconds (it may only shrink).
func (s *Server) Delete(ctx context.Context, t target, grace *int64) ([]byte, revs, error) {
	k := key(t.st.Info, t.namespace, t.name)
	for attempt := 0; ; attempt++ {
		kv, err := s.store.Get(ctx, k)
		if err != nil {
			return nil, revs{}, s.notFound(err, t)
		}
		if t.st.Info.Kind == "Project" {
			if err := s.checkProjectEmpty(ctx, t.name); err != nil {
				return nil, revs{}, err
			}
		}
		if t.st.Info.Kind == "StorageClass" {
			if err := s.checkStorageClassUnused(ctx, t.name); err != nil {
				return nil, revs{}, err
			}
		}
		obj, err := decodeStored(t.st, kv.Value, kv.ModRevision, kv.CreateRevision)
		if err != nil {
			return nil, revs{}, err
		}
		m := obj.GetObjectMeta()
		var rev int64
		var data []byte
		if len(m.Finalizers) > 0 {
			shrinks := grace != nil && (m.DeletionGracePeriodSeconds == nil || *grace < *m.DeletionGracePeriodSeconds)
			if m.DeletionTimestamp != nil && !shrinks {
				return kv.Value, revs{kv.ModRevision, kv.CreateRevision}, nil
			}
			if shrinks {
				m.DeletionGracePeriodSeconds = grace
			}
			if m.DeletionTimestamp == nil {
				now := v1alpha1.NewTime(s.now())
				m.DeletionTimestamp = &now
			}
			data, err = encodeStored(obj)
			if err != nil {
				return nil, revs{}, err
			}
			rev, err = s.store.Update(ctx, k, data, kv.ModRevision)
		} else {
			data = kv.Value
			rev, _, err = s.store.Delete(ctx, k, kv.ModRevision)
		}
		if err != nil {
			if errors.Is(err, errs.ErrConflict) && retryLostRace(ctx, attempt) {
				continue
			}
			return nil, revs{}, s.casError(err, t)
		}
		return data, revs{rev, kv.CreateRevision}, nil
	}
}

// checkProjectEmpty refuses to delete the default project or one that still holds objects;
// its events are removed with it.
func (s *Server) checkProjectEmpty(ctx context.Context, ns string) error {
	if ns == DefaultProject {
		return errs.New(errs.ErrForbidden, "project %q is the default project and cannot be deleted", ns)
	}
	for _, st := range registry.All() {
		if !st.Info.Namespaced || st.Info.Kind == "Event" {
			continue
		}
		res, err := s.store.List(ctx, prefix(st.Info, ns), storeListLimit(1))
		if err != nil {
			return err
		}
		if len(res.KVs) > 0 {
			return errs.New(errs.ErrConflict, "project %q still holds %s objects (e.g. %q): delete them first", ns, st.Info.Kind, lastSegment(res.KVs[0].Key))
		}
	}
	evs, err := s.store.List(ctx, "/events/"+ns+"/", storeListLimit(0))
	if err != nil {
		return err
	}
	for _, kv := range evs.KVs {
		_, _, _ = s.store.Delete(ctx, kv.Key, 0)
	}
	return nil
}

// EnsureProject creates a project if it does not exist (used for the default project).
func (s *Server) EnsureProject(ctx context.Context, name string) error {
	st, _ := registry.ByKind("Project")
	obj := st.New()
	obj.GetObjectMeta().Name = name
	setTypeMeta(obj, "Project")
	_, _, err := s.Create(ctx, st, "", obj)
	if err != nil && !errors.Is(err, errs.ErrAlreadyExists) {
		return err
	}
	return nil
}

// placementChanged says whether an update changes an annotation that asks for a move of a
// VirtualDisk to a node (virtualization.rakhsh.io/storage-node, move-to-node): a request like
// a spec change, which bumps the generation as one does, so that a failed move is tried again
// when only the node changes (docs/storage.md).
func placementChanged(obj, old v1alpha1.Object) bool {
	n, ok1 := obj.(*v1alpha1.VirtualDisk)
	o, ok2 := old.(*v1alpha1.VirtualDisk)
	if !ok1 || !ok2 {
		return false
	}
	for _, k := range []string{v1alpha1.AnnotationStorageNode, v1alpha1.AnnotationMoveToNode} {
		if n.Annotations[k] != o.Annotations[k] {
			return true
		}
	}
	return false
}
