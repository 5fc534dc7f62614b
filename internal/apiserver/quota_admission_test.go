package apiserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/registry"
	"github.com/rakhsh/rakhsh/internal/store/bolt"
)

// quotaTestServer runs an API server on a fresh bolt store (both end with the test) with the
// project "team" of quota q; the context of the test's calls lasts 30 seconds at the most.
func quotaTestServer(t *testing.T, q v1alpha1.ProjectQuota) (context.Context, *Server, *bolt.Store) {
	t.Helper()
	st := tempBolt(t)
	s := New(Config{Store: st})
	t.Cleanup(s.Shutdown)
	ctx := testContext(t)
	pst, _ := registry.ByKind("Project")
	p := &v1alpha1.Project{ObjectMeta: v1alpha1.ObjectMeta{Name: "team"}, Spec: v1alpha1.ProjectSpec{Quota: &q}}
	setTypeMeta(p, "Project")
	if _, _, err := s.Create(ctx, pst, "", p); err != nil {
		t.Fatal(err)
	}
	return ctx, s, st
}

// TestQuotaConcurrentCreates: 20 concurrent creates into a project with room for 5 VMs admit
// exactly 5; the others are Forbidden with the quota named. The creates go through two API
// servers that share the store (each with its own process-local ordering, as two serve
// processes on one etcd have), so only the lock in the store keeps the count.
func TestQuotaConcurrentCreates(t *testing.T) {
	five := int64(5)
	ctx, s, st := quotaTestServer(t, v1alpha1.ProjectQuota{VirtualMachines: &five})
	other := New(Config{Store: st})
	defer other.Shutdown()
	vst, _ := registry.ByKind("VirtualMachine")
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok, refused := 0, 0
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			vm := &v1alpha1.VirtualMachine{ObjectMeta: v1alpha1.ObjectMeta{Name: fmt.Sprintf("vm%d", i)}}
			setTypeMeta(vm, "VirtualMachine")
			vm.Spec.RunPolicy = v1alpha1.RunPolicyAlwaysOff
			vm.Spec.CPU.Cores = 1
			vm.Spec.Memory.Size = "128Mi"
			srv := s
			if i%2 == 1 {
				srv = other
			}
			_, _, err := srv.Create(ctx, vst, "team", vm)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				ok++
			case errors.Is(err, errs.ErrForbidden) && strings.Contains(err.Error(), "exceeded quota virtualMachines"):
				refused++
			default:
				t.Errorf("vm%d: %v", i, err)
			}
		}(i)
	}
	wg.Wait()
	if ok != 5 || refused != 15 {
		t.Fatalf("admitted %d, refused %d; want 5 and 15", ok, refused)
	}
	u, err := s.ProjectUsage(ctx, "team")
	if err != nil || u.VirtualMachines != 5 || u.Cores != 5 || u.Memory != "640Mi" {
		t.Fatalf("usage %+v %v", u, err)
	}
	if _, err := st.Get(ctx, "/locks/quota/team"); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("the quota lock was left in the store: %v", err)
	}

	// A lock left by a server that died before releasing it: taken over once its time is up,
	// refused with a clear message before.
	held, _ := json.Marshal(quotaLock{Holder: "gone", Until: time.Now().Add(time.Hour)})
	if _, err := st.Create(ctx, "/locks/quota/team", held); err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelShort()
	if _, err := s.lockQuota(short, "team"); !errors.Is(err, errs.ErrConflict) || !strings.Contains(err.Error(), `the quota of project "team" is being taken by another request`) {
		t.Fatalf("a held lock: %v", err)
	}
	kv, _ := st.Get(ctx, "/locks/quota/team")
	expired, _ := json.Marshal(quotaLock{Holder: "gone", Until: time.Now().Add(-time.Second)})
	if _, err := st.Update(ctx, "/locks/quota/team", expired, kv.ModRevision); err != nil {
		t.Fatal(err)
	}
	unlock, err := other.lockQuota(ctx, "team")
	if err != nil {
		t.Fatalf("an expired lock was not taken over: %v", err)
	}
	unlock()
	if _, err := st.Get(ctx, "/locks/quota/team"); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("the taken-over lock was not released: %v", err)
	}
}

// TestQuotaDiskFromSnapshot: a disk made from a disk snapshot without a size counts the
// snapshot's size against the disk quota.
func TestQuotaDiskFromSnapshot(t *testing.T) {
	ctx, s, _ := quotaTestServer(t, v1alpha1.ProjectQuota{Disk: "1Gi"})
	sst, _ := registry.ByKind("VirtualDiskSnapshot")
	snap := &v1alpha1.VirtualDiskSnapshot{ObjectMeta: v1alpha1.ObjectMeta{Name: "s1"}, Spec: v1alpha1.VirtualDiskSnapshotSpec{VirtualDiskName: "d"}}
	setTypeMeta(snap, "VirtualDiskSnapshot")
	if _, _, err := s.Create(ctx, sst, "team", snap); err != nil {
		t.Fatal(err)
	}
	snap.Status.Phase, snap.Status.Size = v1alpha1.SnapshotPhaseReady, "2Gi"
	if _, _, _, err := s.Update(ctx, target{st: sst, namespace: "team", name: "s1"}, snap, true); err != nil {
		t.Fatal(err)
	}
	dst, _ := registry.ByKind("VirtualDisk")
	d := &v1alpha1.VirtualDisk{ObjectMeta: v1alpha1.ObjectMeta{Name: "copy"}}
	setTypeMeta(d, "VirtualDisk")
	d.Spec.DataSource = &v1alpha1.DataSource{Type: v1alpha1.DataSourceTypeObjectRef,
		ObjectRef: &v1alpha1.DataSourceObjectRef{Kind: v1alpha1.DataSourceKindVirtualDiskSnapshot, Name: "s1"}}
	_, _, err := s.Create(ctx, dst, "team", d)
	if !errors.Is(err, errs.ErrForbidden) || !strings.Contains(err.Error(), "disk") {
		t.Fatalf("a 2Gi disk from a snapshot in a 1Gi quota: %v", err)
	}
	if !strings.Contains(err.Error(), "2Gi") {
		t.Errorf("the refusal does not count the snapshot's 2Gi: %v", err)
	}
}
