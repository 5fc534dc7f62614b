package fake

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

func image(name, url string) *v1alpha1.VirtualImage {
	return &v1alpha1.VirtualImage{
		TypeMeta:   v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualImage"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: name, Namespace: "p1"},
		Spec: v1alpha1.VirtualImageSpec{DataSource: v1alpha1.DataSource{Type: v1alpha1.DataSourceTypeHTTP,
			HTTP: &v1alpha1.DataSourceHTTP{URL: url}}},
	}
}

func TestCreateGetUpdateConflict(t *testing.T) {
	ctx := context.Background()
	f := New()
	var vi v1alpha1.VirtualImage
	if err := f.Create(ctx, "virtualimages", "p1", image("a", "http://x/a.img"), &vi); err != nil {
		t.Fatal(err)
	}
	if vi.UID == "" || vi.ResourceVersion == "" || vi.Generation != 1 || vi.CreationTimestamp == nil || vi.Namespace != "p1" {
		t.Fatalf("server fields not set: %+v", vi.ObjectMeta)
	}
	if err := f.Create(ctx, "virtualimages", "p1", image("a", "http://x/a.img"), nil); !client.IsAlreadyExists(err) {
		t.Fatalf("second create: %v, want AlreadyExists", err)
	}
	if err := f.Get(ctx, "virtualimages", "p1", "b", &v1alpha1.VirtualImage{}); !client.IsNotFound(err) {
		t.Fatalf("get of a missing image: %v, want NotFound", err)
	}

	// The kind's validation runs: an image's data source is immutable.
	stale := vi
	bad := vi
	bad.Spec.DataSource.HTTP = &v1alpha1.DataSourceHTTP{URL: "http://x/b.img"}
	if err := f.Update(ctx, "virtualimages", "p1", "a", &bad, nil); !client.IsInvalid(err) {
		t.Fatalf("changing the data source: %v, want Invalid", err)
	}
	// A metadata change keeps the generation; a status in an update is ignored.
	vi.Labels = map[string]string{"a": "b"}
	vi.Status.Phase = v1alpha1.ImagePhaseReady
	var upd v1alpha1.VirtualImage
	if err := f.Update(ctx, "virtualimages", "p1", "a", &vi, &upd); err != nil {
		t.Fatal(err)
	}
	if upd.Generation != 1 || upd.Status.Phase != "" || upd.ResourceVersion == vi.ResourceVersion || upd.Labels["a"] != "b" {
		t.Fatalf("after update: generation %d, phase %q, rv %s (was %s)", upd.Generation, upd.Status.Phase, upd.ResourceVersion, vi.ResourceVersion)
	}
	// The old resourceVersion is stale now.
	if err := f.Update(ctx, "virtualimages", "p1", "a", &stale, nil); !client.IsConflict(err) {
		t.Fatalf("update with a stale resourceVersion: %v, want Conflict", err)
	}
	if err := f.UpdateStatus(ctx, "virtualimages", "p1", "a", &stale, nil); !client.IsConflict(err) {
		t.Fatalf("status update with a stale resourceVersion: %v, want Conflict", err)
	}
	// A merge patch pinned to a stale version conflicts; one without a version applies.
	if err := f.PatchStatus(ctx, "virtualimages", "p1", "a", []byte(`{"metadata":{"resourceVersion":"`+stale.ResourceVersion+`"},"status":{"phase":"Failed"}}`), nil); !client.IsConflict(err) {
		t.Fatalf("pinned stale patch: %v, want Conflict", err)
	}
	if err := f.PatchStatus(ctx, "virtualimages", "p1", "a", []byte(`{"status":{"phase":"Ready","progress":"100%"},"spec":{"dataSource":{"http":{"url":"http://evil"}}}}`), &upd); err != nil {
		t.Fatal(err)
	}
	if upd.Status.Phase != v1alpha1.ImagePhaseReady || upd.Status.Progress != "100%" || upd.Spec.DataSource.HTTP.URL != "http://x/a.img" || upd.Generation != 1 {
		t.Fatalf("status patch: phase %q progress %q url %q generation %d", upd.Status.Phase, upd.Status.Progress, upd.Spec.DataSource.HTTP.URL, upd.Generation)
	}
	// A write that changes nothing keeps the resourceVersion.
	rv := upd.ResourceVersion
	if err := f.PatchStatus(ctx, "virtualimages", "p1", "a", []byte(`{"status":{"phase":"Ready"}}`), &upd); err != nil || upd.ResourceVersion != rv {
		t.Fatalf("no-op patch: %v, rv %s -> %s", err, rv, upd.ResourceVersion)
	}
}

func TestStrategicConditionsMerge(t *testing.T) {
	ctx := context.Background()
	f := New()
	if err := f.Create(ctx, "virtualimages", "p1", image("a", "http://x/a.img"), nil); err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"A", "B"} {
		p := `{"status":{"conditions":[{"type":"` + c + `","status":"True"}]}}`
		if err := f.PatchStatusStrategic(ctx, "virtualimages", "p1", "a", []byte(p), nil); err != nil {
			t.Fatal(err)
		}
	}
	var vi v1alpha1.VirtualImage
	if err := f.Get(ctx, "virtualimages", "p1", "a", &vi); err != nil {
		t.Fatal(err)
	}
	if len(vi.Status.Conditions) != 2 {
		t.Fatalf("conditions %+v, want A and B", vi.Status.Conditions)
	}
}

func TestFinalizersAndDeletion(t *testing.T) {
	ctx := context.Background()
	f := New()
	img := image("a", "http://x/a.img")
	img.Finalizers = []string{"x/one"}
	if err := f.Create(ctx, "virtualimages", "p1", img, nil); err != nil {
		t.Fatal(err)
	}
	if err := f.Delete(ctx, "virtualimages", "p1", "a"); err != nil {
		t.Fatal(err)
	}
	var vi v1alpha1.VirtualImage
	if err := f.Get(ctx, "virtualimages", "p1", "a", &vi); err != nil || vi.DeletionTimestamp == nil {
		t.Fatalf("after delete with a finalizer: %v, deletionTimestamp %v", err, vi.DeletionTimestamp)
	}
	// No new finalizer on an object being deleted.
	if err := f.Patch(ctx, "virtualimages", "p1", "a", []byte(`{"metadata":{"finalizers":["x/one","x/two"]}}`), nil); !client.IsForbidden(err) {
		t.Fatalf("adding a finalizer while deleting: %v, want Forbidden", err)
	}
	// Removing the last one removes the object.
	if err := f.Patch(ctx, "virtualimages", "p1", "a", []byte(`{"metadata":{"finalizers":null}}`), nil); err != nil {
		t.Fatal(err)
	}
	if err := f.Get(ctx, "virtualimages", "p1", "a", &vi); !client.IsNotFound(err) {
		t.Fatalf("after the last finalizer went: %v, want NotFound", err)
	}
	// Add stores a starting state as it is.
	vm := &v1alpha1.VirtualMachine{ObjectMeta: v1alpha1.ObjectMeta{Name: "vm1", Namespace: "p1"}}
	if err := f.Add(vm); err != nil {
		t.Fatal(err)
	}
	var got v1alpha1.VirtualMachine
	if err := f.Get(ctx, "virtualmachines", "p1", "vm1", &got); err != nil || got.UID == "" || got.Kind != "VirtualMachine" {
		t.Fatalf("added VM: %v, %+v", err, got.ObjectMeta)
	}
}

func TestWatchReplayAndSelectors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f := New()
	if err := f.Create(ctx, "virtualimages", "p1", image("a", "http://x/a.img"), nil); err != nil {
		t.Fatal(err)
	}
	l, err := f.List(ctx, "virtualimages", "", client.ListOptions{})
	if err != nil || len(l.Items) != 1 {
		t.Fatalf("list: %v, %d items", err, len(l.Items))
	}
	b := image("b", "http://x/b.img")
	b.Labels = map[string]string{"app": "web"}
	if err := f.Create(ctx, "virtualimages", "p1", b, nil); err != nil {
		t.Fatal(err)
	}
	w, err := f.Watch(ctx, "virtualimages", "", client.ListOptions{ResourceVersion: l.Metadata.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	next := func() (string, string) {
		select {
		case ev := <-w.Events():
			var m struct {
				Metadata v1alpha1.ObjectMeta `json:"metadata"`
			}
			_ = json.Unmarshal(ev.Object, &m)
			return ev.Type, m.Metadata.Name
		case <-ctx.Done():
			t.Fatal("no watch event")
			return "", ""
		}
	}
	if typ, name := next(); typ != v1alpha1.WatchAdded || name != "b" {
		t.Fatalf("replayed %s %s, want ADDED b", typ, name)
	}
	if err := f.Delete(ctx, "virtualimages", "p1", "a"); err != nil {
		t.Fatal(err)
	}
	if typ, name := next(); typ != v1alpha1.WatchDeleted || name != "a" {
		t.Fatalf("got %s %s, want DELETED a", typ, name)
	}
	for sel, want := range map[string]int{"app=web": 1, "app!=web": 0} {
		l, err := f.List(ctx, "virtualimages", "p1", client.ListOptions{LabelSelector: sel})
		if err != nil || len(l.Items) != want {
			t.Fatalf("list %s: %v, %d items, want %d", sel, err, len(l.Items), want)
		}
	}
	l, err = f.List(ctx, "virtualimages", "", client.ListOptions{FieldSelector: "spec.dataSource.http.url=http://x/b.img"})
	if err != nil || len(l.Items) != 1 {
		t.Fatalf("field selector: %v, %d items", err, len(l.Items))
	}
}

func TestWatchInitialTransitionsAndExpiry(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f := New()
	a := image("a", "http://x/a.img")
	a.Labels = map[string]string{"tier": "web"}
	if err := f.Create(ctx, "virtualimages", "p1", a, nil); err != nil {
		t.Fatal(err)
	}
	// Without a resourceVersion the current objects come first.
	w, err := f.Watch(ctx, "virtualimages", "", client.ListOptions{LabelSelector: "tier=web"})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	next := func() string {
		select {
		case ev := <-w.Events():
			return ev.Type
		case <-ctx.Done():
			t.Fatal("no watch event")
			return ""
		}
	}
	if typ := next(); typ != v1alpha1.WatchAdded {
		t.Fatalf("first event %s, want ADDED", typ)
	}
	// Leaving the selection is a DELETED, entering it again an ADDED.
	if err := f.Patch(ctx, "virtualimages", "p1", "a", []byte(`{"metadata":{"labels":{"tier":"db"}}}`), nil); err != nil {
		t.Fatal(err)
	}
	if typ := next(); typ != v1alpha1.WatchDeleted {
		t.Fatalf("leaving the selection: %s, want DELETED", typ)
	}
	if err := f.Patch(ctx, "virtualimages", "p1", "a", []byte(`{"metadata":{"labels":{"tier":"web"}}}`), nil); err != nil {
		t.Fatal(err)
	}
	if typ := next(); typ != v1alpha1.WatchAdded {
		t.Fatalf("entering the selection: %s, want ADDED", typ)
	}
	// After a compaction an old resourceVersion is Expired.
	f.Compact()
	w2, err := f.Watch(ctx, "virtualimages", "", client.ListOptions{ResourceVersion: "1"})
	if err != nil {
		t.Fatal(err)
	}
	ev, ok := <-w2.Events()
	if !ok || ev.Type != v1alpha1.WatchError || !strings.Contains(string(ev.Object), v1alpha1.ReasonExpired) {
		t.Fatalf("watch from a compacted version: %v %s %s", ok, ev.Type, ev.Object)
	}
}
