package e2e

import (
	"strings"
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
	a.Stop()
	b.Stop()
	a.Start()
	for _, f := range allKindsFixtures(t) {
		if err := a.Client().Get(ctx, f.kind.Resource, f.namespace, f.name, nil); err != nil {
			t.Errorf("%s/%s after restart on etcd: %v", f.kind.Kind, f.name, err)
		}
	}
}
