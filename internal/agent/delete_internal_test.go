package agent

import (
	"os"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// A reconcile that finds the QEMU of a VM being deleted already exited must finish the
// deletion itself (remove the run directory and release the VM, so that the VM controller
// removes the finalizer): it writes no status, so no further event would come to do it.
func TestExitedInstanceOfDeletingVMFinishesDelete(t *testing.T) {
	e := newInternalEnv(t)
	ctx, c, a := e.ctx, e.c, e.a

	vm := &v1alpha1.VirtualMachine{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachine"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: "gone", Namespace: "default", Finalizers: []string{v1alpha1.VMCleanupFinalizer}},
		Spec: v1alpha1.VirtualMachineSpec{RunPolicy: v1alpha1.RunPolicyAlwaysOn, CPU: v1alpha1.VirtualMachineCPU{Cores: 1},
			Memory: v1alpha1.VirtualMachineMemory{Size: "128Mi"}}}
	if err := c.Create(ctx, "virtualmachines", "default", vm, vm); err != nil {
		t.Fatal(err)
	}
	if err := c.PatchStatus(ctx, "virtualmachines", "default", "gone", []byte(`{"status":{"nodeName":"node1","phase":"Running"}}`), nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, "virtualmachines", "default", "gone"); err != nil {
		t.Fatal(err)
	}
	if err := c.Get(ctx, "virtualmachines", "default", "gone", vm); err != nil {
		t.Fatal(err)
	}
	if vm.DeletionTimestamp == nil {
		t.Fatal("the VM has no deletionTimestamp after delete with a finalizer")
	}
	runDir := a.runDir(vm.UID)
	if err := os.MkdirAll(runDir, 0o700); err != nil {
		t.Fatal(err)
	}
	in := &instance{uid: vm.UID, key: runtime.KeyOf(vm), runDir: runDir, exited: make(chan struct{})}
	in.markExited()
	a.mu.Lock()
	a.insts[vm.UID] = in
	a.mu.Unlock()

	if _, err := a.reconcileVM(ctx, vm, in); err != nil {
		t.Fatalf("reconcile: %v", err)
	}
	vm = &v1alpha1.VirtualMachine{}
	if err := c.Get(ctx, "virtualmachines", "default", "gone", vm); err != nil {
		t.Fatal(err)
	}
	if vm.Status.NodeName != "" || len(vm.Finalizers) != 1 {
		t.Fatalf("after the reconcile: nodeName %q, finalizers %v; want the VM released, the finalizer left to the VM controller", vm.Status.NodeName, vm.Finalizers)
	}
	if _, err := os.Stat(runDir); !os.IsNotExist(err) {
		t.Fatalf("run directory %s still exists (stat err=%v)", runDir, err)
	}
	if a.inst(vm.UID) != nil {
		t.Fatal("the exited instance is still tracked")
	}
}
