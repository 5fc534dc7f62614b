package e2e

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/store/etcd/etcdtest"
)

// TestEtcdStore runs `rakhsh serve --store etcd://...` against a real etcd: every kind
// applies, a stale update conflicts, a watch on one server sees writes made through another
// server sharing the etcd, and a restart keeps everything.
func TestEtcdStore(t *testing.T) {
	e := etcdtest.Start(t)
	storeFlag := "etcd://" + e.Addr
	a := StartServe(t, "--store", storeFlag)
	out := a.MustCLI("", "apply", "-f", "testdata/all-kinds.yaml")
	// A lease may already exist when its document is applied: the IPAM controller leases a
	// Static address as soon as its VirtualMachineIPAddress is stored, and apply then updates it.
	if strings.Count(out, " created")+strings.Count(out, " configured") != len(v1alpha1.Kinds) {
		t.Fatalf("apply on etcd:\n%s", out)
	}
	// Each server runs an agent; two hosts of one cluster have different node names.
	b := StartServe(t, "--store", storeFlag, "--node-name", "second-host")
	ctx := ctxT(t)
	var vm v1alpha1.VirtualMachine
	if err := b.Client().Get(ctx, "virtualmachines", "default", "vm1", &vm); err != nil {
		t.Fatalf("second server does not see the first one's VM: %v", err)
	}
	w, err := b.Client().Watch(ctx, "virtualmachines", "default", client.ListOptions{ResourceVersion: vm.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	stale := vm
	if err := a.Client().Patch(ctx, "virtualmachines", "default", "vm1", []byte(`{"spec":{"cpu":{"cores":3}}}`), nil); err != nil {
		t.Fatal(err)
	}
	// Controllers write the VM's status too; the patch is the event that carries cores 3.
	timeout := time.After(10 * time.Second)
	for seen := false; !seen; {
		select {
		case ev := <-w.Events():
			if ev.Type != "MODIFIED" {
				t.Fatalf("watch on the second server: %s %s", ev.Type, ev.Object)
			}
			seen = strings.Contains(string(ev.Object), `"cores":3`)
		case <-timeout:
			t.Fatal("no MODIFIED event with the patch through the second server")
		}
	}
	stale.Spec.CPU.Cores = 4
	if err := b.Client().Update(ctx, "virtualmachines", "default", "vm1", &stale, nil); !client.IsConflict(err) {
		t.Fatalf("stale update through etcd: got %v, want Conflict", err)
	}
	// Quota admission through both servers at once: the lock in etcd keeps the count.
	two := int64(2)
	proj := &v1alpha1.Project{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "Project"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: "quota-race"}, Spec: v1alpha1.ProjectSpec{Quota: &v1alpha1.ProjectQuota{VirtualMachines: &two}}}
	if err := a.Client().Create(ctx, "projects", "", proj, nil); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var admitted atomic.Int32
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			srv := a
			if i%2 == 1 {
				srv = b
			}
			v := &v1alpha1.VirtualMachine{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachine"},
				ObjectMeta: v1alpha1.ObjectMeta{Name: fmt.Sprintf("q%d", i)},
				Spec: v1alpha1.VirtualMachineSpec{RunPolicy: v1alpha1.RunPolicyAlwaysOff, CPU: v1alpha1.VirtualMachineCPU{Cores: 1},
					Memory: v1alpha1.VirtualMachineMemory{Size: "64Mi"}}}
			err := srv.Client().Create(ctx, "virtualmachines", "quota-race", v, nil)
			switch {
			case err == nil:
				admitted.Add(1)
			case !client.IsForbidden(err) || !strings.Contains(err.Error(), "exceeded quota virtualMachines"):
				t.Errorf("create q%d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	if n := admitted.Load(); n != 2 {
		t.Errorf("two servers on one etcd admitted %d VMs into a project with room for 2", n)
	}
	a.Stop()
	b.Stop()
	a.Start()
	for _, f := range allKindsFixtures(t) {
		if err := a.Client().Get(ctx, f.kind.Resource, f.namespace, f.name, nil); err != nil {
			t.Errorf("%s/%s after restart on etcd: %v", f.kind.Kind, f.name, err)
		}
	}
}
