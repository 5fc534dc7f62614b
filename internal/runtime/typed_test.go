package runtime_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/runtime/fake"
)

// fakeFactory returns a factory over a fake client that holds objs, and a context that
// ends with the test or when cancelled.
func fakeFactory(t *testing.T, objs ...v1alpha1.Object) (context.Context, context.CancelFunc, *fake.Client, *runtime.Factory) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	fc := fake.New()
	if err := fc.Add(objs...); err != nil {
		t.Fatal(err)
	}
	return ctx, cancel, fc, runtime.NewFactory(fc, nil)
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func vm(name, node string) *v1alpha1.VirtualMachine {
	v := &v1alpha1.VirtualMachine{ObjectMeta: v1alpha1.ObjectMeta{Name: name, Namespace: "p1"}}
	v.Spec.CPU.Cores = 1
	v.Spec.Memory.Size = "1Gi"
	v.Status.NodeName = node
	return v
}

func TestFactorySharesTypedInformers(t *testing.T) {
	ctx, _, fc, f := fakeFactory(t, vm("a", "n1"), vm("b", "n2"))
	vms := f.VirtualMachines()
	if again := runtime.For[v1alpha1.VirtualMachine](f, "virtualmachines"); again != vms {
		t.Fatal("a second request for the same kind made a second informer")
	}
	onN1 := f.VirtualMachines(runtime.WithFieldSelector("status.nodeName=n1"))
	if f.Count() != 2 {
		t.Fatalf("%d informers, want 2 (%v)", f.Count(), f.Resources())
	}
	var mu sync.Mutex
	seen := map[runtime.Key]int{}
	vms.OnChange(func(k runtime.Key) { mu.Lock(); seen[k]++; mu.Unlock() })
	f.Start(ctx)
	if !f.WaitForSync(ctx) {
		t.Fatal("not synced")
	}
	a, ok := vms.Get("p1/a")
	if !ok || a.Status.NodeName != "n1" {
		t.Fatalf("Get(p1/a) = %v, %v", a, ok)
	}
	if a2, _ := vms.Get("p1/a"); a2 != a {
		t.Fatal("Get decoded the object again: the cache should hand out one decoded object")
	}
	if ks := vms.KeysWhere(func(vm *v1alpha1.VirtualMachine) bool { return vm.Status.NodeName == "n2" }); len(ks) != 1 || ks[0] != "p1/b" {
		t.Errorf("KeysWhere(on n2) = %v, want [p1/b]", ks)
	}
	if l := vms.List(); len(l) != 2 || l[0].Name != "a" || l[1].Name != "b" {
		t.Fatalf("List = %v", l)
	}
	if keys := onN1.Keys(); len(keys) != 1 || keys[0] != "p1/a" {
		t.Fatalf("field-selected informer keys %v, want [p1/a]", keys)
	}

	// Changes arrive decoded; handlers see every key.
	if err := fc.Patch(ctx, "virtualmachines", "p1", "b", []byte(`{"metadata":{"labels":{"x":"y"}}}`), nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the label in the cache", func() bool { b, ok := vms.Get("p1/b"); return ok && b.Labels["x"] == "y" })
	if err := fc.Delete(ctx, "virtualmachines", "p1", "a"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the delete in the cache", func() bool { _, ok := vms.Get("p1/a"); return !ok })
	mu.Lock()
	if seen["p1/a"] < 2 || seen["p1/b"] < 2 {
		t.Errorf("handler calls %v, want at least 2 per key", seen)
	}
	mu.Unlock()

	// A handler added late hears of every cached key at once.
	var late []runtime.Key
	vms.OnChange(func(k runtime.Key) { late = append(late, k) })
	if len(late) != 1 || late[0] != "p1/b" {
		t.Errorf("late handler got %v, want [p1/b]", late)
	}
	// An informer made after Start starts at once.
	nodes := f.Nodes()
	if !runtime.WaitForSync(ctx, nodes) {
		t.Fatal("late informer did not sync")
	}
}

func TestForPanicsOnTwoTypes(t *testing.T) {
	f := runtime.NewFactory(fake.New(), nil)
	f.VirtualMachines()
	defer func() {
		if recover() == nil {
			t.Error("asking for virtualmachines as VirtualDisk did not panic")
		}
	}()
	runtime.For[v1alpha1.VirtualDisk](f, "virtualmachines")
}

func TestDeepCopy(t *testing.T) {
	a := vm("a", "n1")
	a.Labels = map[string]string{"k": "v"}
	c := runtime.DeepCopy(a)
	c.Labels["k"] = "w"
	if a.Labels["k"] != "v" {
		t.Fatal("DeepCopy shares the labels map")
	}
}

// TestInformerRelistsAfterBrokenWatch: a watch that breaks makes the informer list again,
// and what changed meanwhile reaches the cache; a field-selected informer drops an object that
// leaves its selection.
func TestInformerRelistsAfterBrokenWatch(t *testing.T) {
	ctx, _, fc, f := fakeFactory(t, vm("a", "n1"))
	onN1 := f.VirtualMachines(runtime.WithFieldSelector("status.nodeName=n1"))
	f.Start(ctx)
	if !f.WaitForSync(ctx) {
		t.Fatal("not synced")
	}
	// The VM moves to another node: it leaves the node's informer.
	if err := fc.PatchStatus(ctx, "virtualmachines", "p1", "a", []byte(`{"status":{"nodeName":"n2"}}`), nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the VM gone from n1's cache", func() bool { return onN1.Len() == 0 })
	// The stream breaks and history is compacted (no replay possible): the informer
	// relists and sees b.
	fc.BreakWatches()
	fc.Compact()
	if err := fc.Add(vm("b", "n1")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "b in n1's cache", func() bool { _, ok := onN1.Get("p1/b"); return ok })
}
