package apiserver

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/store"
)

// termStore refuses writes fenced by any term but current, as a shared store does once a
// newer term exists.
type termStore struct {
	store.Store
	current int64
}

func (s termStore) check(ctx context.Context) error {
	if f, ok := store.FenceFrom(ctx); ok && f.Term != s.current {
		return errs.New(errs.ErrFenced, "refused: term %d has ended; this process is no longer the control-plane leader", f.Term)
	}
	return nil
}

func (s termStore) Create(ctx context.Context, key string, value []byte) (int64, error) {
	if err := s.check(ctx); err != nil {
		return 0, err
	}
	return s.Store.Create(ctx, key, value)
}

func (s termStore) Update(ctx context.Context, key string, value []byte, rev int64) (int64, error) {
	if err := s.check(ctx); err != nil {
		return 0, err
	}
	return s.Store.Update(ctx, key, value, rev)
}

// TestFenceHeader: the controllers' fence header reaches the store's writes; a write the
// store refuses as fenced is a 409 LeaderFenced, and the elector hears of its fence.
func TestFenceHeader(t *testing.T) {
	var mu sync.Mutex
	var heard []store.Fence
	dir := t.TempDir()
	st := boltIn(t, dir)
	s := New(Config{Store: termStore{Store: st, current: 7}, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		OnFenced: func(f store.Fence) { mu.Lock(); heard = append(heard, f); mu.Unlock() }})
	t.Cleanup(s.Shutdown)
	cl := serveLocal(t, dir, s)
	ctx := testContext(t)
	vmc := func(name string) *v1alpha1.VirtualMachineClass {
		return &v1alpha1.VirtualMachineClass{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachineClass"},
			ObjectMeta: v1alpha1.ObjectMeta{Name: name}, Spec: v1alpha1.VirtualMachineClassSpec{CPU: v1alpha1.VirtualMachineClassCPU{Type: "Host"}}}
	}
	current := cl.WithHeader(v1alpha1.HeaderLeaderFence, "7@/controlplane/election/1")
	if err := current.Create(ctx, "virtualmachineclasses", "", vmc("a"), nil); err != nil {
		t.Fatalf("a write under the current term: %v", err)
	}
	stale := cl.WithHeader(v1alpha1.HeaderLeaderFence, "6@/controlplane/election/2")
	err := stale.Create(ctx, "virtualmachineclasses", "", vmc("b"), nil)
	if !client.IsFenced(err) || client.Reason(err) != v1alpha1.ReasonLeaderFenced || !strings.Contains(err.Error(), "no longer the control-plane leader") {
		t.Fatalf("a write under an ended term: %v, want 409 LeaderFenced", err)
	}
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Status.Code != http.StatusConflict {
		t.Fatalf("fenced write: %+v, want code 409", ce)
	}
	if err := stale.PatchStatus(ctx, "virtualmachineclasses", "", "a", []byte(`{"status":{"phase":"Ready"}}`), nil); !client.IsFenced(err) {
		t.Fatalf("a status patch under an ended term: %v", err)
	}
	if err := cl.Create(ctx, "virtualmachineclasses", "", vmc("c"), nil); err != nil {
		t.Fatalf("a write without a fence: %v", err)
	}
	if n := s.fenced.Load(); n != 2 {
		t.Errorf("fenced writes counted: %d, want 2", n)
	}
	mu.Lock()
	if len(heard) != 2 || heard[0] != (store.Fence{Key: "/controlplane/election/2", Term: 6}) {
		t.Errorf("the elector heard of %v", heard)
	}
	mu.Unlock()
	bad := cl.WithHeader(v1alpha1.HeaderLeaderFence, "soon")
	if err := bad.Create(ctx, "virtualmachineclasses", "", vmc("d"), nil); client.Reason(err) != v1alpha1.ReasonBadRequest {
		t.Errorf("a malformed fence: %v, want BadRequest", err)
	}
}

// TestFenceHeaderNeedsAdmin: only admin may write under a leadership term.
func TestFenceHeaderNeedsAdmin(t *testing.T) {
	url, admin, _ := remoteTestServer(t)
	ctx := testContext(t)
	jt := joinToken(t, ctx, admin, v1alpha1.JoinTokenRequest{TTL: "10m"})
	c := tokenClient(t, url, jt.Token).WithHeader(v1alpha1.HeaderLeaderFence, "7@/controlplane/election/1")
	err := c.Get(ctx, "nodes", "", "n1", nil)
	wantReason(t, "a join token sending a fence", err, v1alpha1.ReasonForbidden, v1alpha1.HeaderLeaderFence)
	if err := admin.WithHeader(v1alpha1.HeaderLeaderFence, "7@/controlplane/election/1").Get(ctx, "projects", "", DefaultProject, nil); err != nil {
		t.Errorf("admin over TCP sending a fence: %v", err)
	}
}

// TestControlPlaneResource: the read-only ControlPlane is got and listed (one object,
// "cluster"), never written or watched, and only by admin.
func TestControlPlaneResource(t *testing.T) {
	since := &v1alpha1.Time{Time: time.Now().UTC().Truncate(time.Second)}
	st := v1alpha1.ControlPlaneStatus{Store: "etcd", Leader: &v1alpha1.ControlPlaneLeader{Name: "cp-a", Term: 42, Since: since},
		Members: []v1alpha1.ControlPlaneMember{{Name: "cp-a", APIAddress: "https://10.0.0.1:8443", Version: "v1", Since: since, Leader: true, Controllers: true}}}
	c := localTestServer(t, t.TempDir(), Config{ControlPlane: func(context.Context) (v1alpha1.ControlPlaneStatus, error) { return st, nil }})
	ctx := testContext(t)
	var cp v1alpha1.ControlPlane
	if err := c.Get(ctx, "controlplanes", "", "cluster", &cp); err != nil {
		t.Fatal(err)
	}
	if cp.Kind != "ControlPlane" || cp.Name != "cluster" || cp.Status.Leader == nil || cp.Status.Leader.Term != 42 || len(cp.Status.Members) != 1 {
		t.Fatalf("controlplane: %+v", cp)
	}
	l, err := c.List(ctx, "controlplanes", "", client.ListOptions{})
	if err != nil || len(l.Items) != 1 {
		t.Fatalf("list: %v %v", l, err)
	}
	wantReason(t, "another name", c.Get(ctx, "controlplanes", "", "other", nil), v1alpha1.ReasonNotFound, "cluster")
	wantReason(t, "a delete", c.Delete(ctx, "controlplanes", "", "cluster"), v1alpha1.ReasonMethodNotAllowed, "")
	_, err = c.Watch(ctx, "controlplanes", "", client.ListOptions{})
	wantReason(t, "a watch", err, v1alpha1.ReasonBadRequest, "cannot be watched")
	var disc struct {
		Resources []apiResource `json:"resources"`
	}
	if err := c.Do(ctx, http.MethodGet, "/apis/"+v1alpha1.APIVersion, nil, "", nil, &disc); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range disc.Resources {
		found = found || (r.Name == "controlplanes" && r.Kind == "ControlPlane" && strings.Join(r.Verbs, ",") == "get,list")
	}
	if !found {
		t.Errorf("discovery does not list controlplanes (get, list)")
	}
}
