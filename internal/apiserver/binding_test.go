package apiserver

import (
	"net/http"
	"strings"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

// TestBinding: the binding subresource binds a VM whatever else was written to its status
// meanwhile, and refuses (409, saying why) a VM that was replaced, is being deleted, is bound
// elsewhere, or whose power request changed since the decision.
func TestBinding(t *testing.T) {
	c := localTestServer(t, t.TempDir(), Config{})
	ctx := testContext(t)
	for _, n := range []string{"n1", "n2"} {
		node := v1alpha1.Node{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "Node"}, ObjectMeta: v1alpha1.ObjectMeta{Name: n}}
		if err := c.Create(ctx, "nodes", "", &node, nil); err != nil {
			t.Fatal(err)
		}
	}
	newVM := func(name string) *v1alpha1.VirtualMachine {
		vm := &v1alpha1.VirtualMachine{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachine"},
			ObjectMeta: v1alpha1.ObjectMeta{Name: name},
			Spec: v1alpha1.VirtualMachineSpec{RunPolicy: v1alpha1.RunPolicyAlwaysOn, CPU: v1alpha1.VirtualMachineCPU{Cores: 1},
				Memory: v1alpha1.VirtualMachineMemory{Size: "128Mi"}}}
		if err := c.Create(ctx, "virtualmachines", "default", vm, vm); err != nil {
			t.Fatal(err)
		}
		if len(vm.Finalizers) != 1 || vm.Finalizers[0] != v1alpha1.VMCleanupFinalizer {
			t.Fatalf("a new VM's finalizers: %v, want the server to put %s on", vm.Finalizers, v1alpha1.VMCleanupFinalizer)
		}
		return vm
	}
	bind := func(vm *v1alpha1.VirtualMachine, node string, pr *v1alpha1.VMPowerRequest) (*v1alpha1.VirtualMachine, error) {
		b := v1alpha1.VirtualMachineBinding{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachineBinding"},
			ObjectMeta: v1alpha1.ObjectMeta{Name: vm.Name, UID: vm.UID}, NodeName: node, PowerRequest: pr}
		var out v1alpha1.VirtualMachine
		err := c.Bind(ctx, "default", vm.Name, &b, &out)
		return &out, err
	}
	wantErr := func(what string, err error, conflict bool, msg string) {
		t.Helper()
		if err == nil || (conflict && !client.IsConflict(err)) || !strings.Contains(err.Error(), msg) {
			t.Errorf("%s: error %v, want one saying %q (conflict %v)", what, err, msg, conflict)
		}
	}

	vm := newVM("vm1")
	// Another component writes the status after the scheduler read it: no matter.
	if err := c.PatchStatusStrategic(ctx, "virtualmachines", "default", "vm1",
		[]byte(`{"status":{"conditions":[{"type":"BlockDevicesReady","status":"True"}]}}`), nil); err != nil {
		t.Fatal(err)
	}
	_, err := bind(vm, "nope", nil)
	wantErr("unknown node", err, false, `node "nope" not found`)
	other := *vm
	other.UID = "00000000-0000-4000-8000-000000000000"
	_, err = bind(&other, "n1", nil)
	wantErr("another uid", err, true, "the VM was replaced")
	_, err = bind(vm, "n1", &v1alpha1.VMPowerRequest{State: v1alpha1.PowerStateRunning})
	wantErr("another power request", err, true, "its power request changed since the decision (now none)")

	got, err := bind(vm, "n1", nil)
	if err != nil {
		t.Fatal(err)
	}
	sc := v1alpha1.FindCondition(got.Status.Conditions, v1alpha1.VMConditionScheduled)
	if got.Status.NodeName != "n1" || sc == nil || sc.Status != v1alpha1.ConditionTrue || v1alpha1.FindCondition(got.Status.Conditions, "BlockDevicesReady") == nil {
		t.Fatalf("bound VM: node %q, conditions %+v", got.Status.NodeName, got.Status.Conditions)
	}
	if _, err := bind(vm, "n1", nil); err != nil {
		t.Errorf("binding again to the same node: %v", err)
	}
	_, err = bind(vm, "n2", nil)
	wantErr("bound elsewhere", err, true, `it is bound to node "n1"`)

	vm2 := newVM("vm2")
	if err := c.Delete(ctx, "virtualmachines", "default", "vm2"); err != nil {
		t.Fatal(err)
	}
	_, err = bind(vm2, "n1", nil)
	wantErr("deleting", err, true, "it is being deleted")

	// Bad bodies and methods.
	err = c.Do(ctx, http.MethodPost, client.Path("virtualmachines", "default", "vm1", "binding"), nil, "", []byte(`{"nodeName":"n1","extra":1}`), nil)
	wantErr("unknown field", err, false, `unknown field "extra"`)
	err = c.Do(ctx, http.MethodPost, client.Path("virtualmachines", "default", "vm1", "binding"), nil, "", []byte(`{}`), nil)
	wantErr("no node", err, false, "nodeName")
	err = c.Do(ctx, http.MethodGet, client.Path("virtualmachines", "default", "vm1", "binding"), nil, "", nil, nil)
	wantErr("GET", err, false, "allowed: POST")
	err = c.Do(ctx, http.MethodPost, client.Path("virtualdisks", "default", "d", "binding"), nil, "", []byte(`{"nodeName":"n1"}`), nil)
	wantErr("a disk", err, false, `no subresource "binding"`)
}

// TestJSONPatchTestIsPrecondition: a JSON patch's failed test operation is a 409 Conflict (a
// failed precondition), and a test of null passes on an absent field, so a writer can add the
// first finalizer without a resourceVersion and without losing one added meanwhile.
func TestJSONPatchTestIsPrecondition(t *testing.T) {
	c := localTestServer(t, t.TempDir(), Config{})
	ctx := testContext(t)
	obj := &v1alpha1.Secret{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "Secret"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: "s1"}}
	if err := c.Create(ctx, "secrets", "default", obj, obj); err != nil {
		t.Fatal(err)
	}
	addFirst := func(f string) error {
		return c.JSONPatch(ctx, "secrets", "default", "s1", []byte(`[{"op":"test","path":"/metadata/uid","value":"`+obj.UID+`"},`+
			`{"op":"test","path":"/metadata/finalizers","value":null},{"op":"add","path":"/metadata/finalizers","value":["`+f+`"]}]`), nil)
	}
	if err := addFirst("example.org/a"); err != nil {
		t.Fatalf("first finalizer: %v", err)
	}
	if err := addFirst("example.org/b"); !client.IsConflict(err) || !strings.Contains(err.Error(), "does not apply") {
		t.Fatalf("a second writer that saw no finalizers: %v, want a 409", err)
	}
	var got v1alpha1.Secret
	if err := c.Get(ctx, "secrets", "default", "s1", &got); err != nil || len(got.Finalizers) != 1 || got.Finalizers[0] != "example.org/a" {
		t.Fatalf("finalizers %v (%v)", got.Finalizers, err)
	}
	// A patch that is wrong, not stale, stays a 422.
	err := c.JSONPatch(ctx, "secrets", "default", "s1", []byte(`[{"op":"remove","path":"/data/nothing"}]`), nil)
	if err == nil || client.IsConflict(err) || !strings.Contains(err.Error(), "does not apply") {
		t.Fatalf("removing a missing field: %v, want a 422", err)
	}
}
