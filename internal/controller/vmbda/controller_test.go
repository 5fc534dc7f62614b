package vmbda

import (
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/runtime/fake"
)

func attachment(name, vm string, kind v1alpha1.BlockDeviceKind, dev string) *v1alpha1.VirtualMachineBlockDeviceAttachment {
	return &v1alpha1.VirtualMachineBlockDeviceAttachment{ObjectMeta: v1alpha1.ObjectMeta{Name: name, Namespace: "p1"},
		Spec: v1alpha1.VirtualMachineBlockDeviceAttachmentSpec{VirtualMachineName: vm, BlockDeviceRef: v1alpha1.VMBDAObjectRef{Kind: kind, Name: dev}}}
}

// TestLifecycle: an attachment of a stopped VM is Pending; once the VM runs it is InProgress,
// Attached when the VM's status lists the device; a second attachment of the same disk
// fails with Conflict, one of a disk in another VM's spec too; a VM without
// paravirtualization fails it; deleting an attached one waits until the device is gone from
// the VM's status, then the finalizer goes.
func TestLifecycle(t *testing.T) {
	vm := &v1alpha1.VirtualMachine{ObjectMeta: v1alpha1.ObjectMeta{Name: "vm1", Namespace: "p1"}}
	vm.Spec.CPU.Cores = 1
	vm.Spec.Memory.Size = "256Mi"
	vm.Status.Phase = v1alpha1.VMPhaseStopped
	other := &v1alpha1.VirtualMachine{ObjectMeta: v1alpha1.ObjectMeta{Name: "vm2", Namespace: "p1"}}
	other.Spec.CPU.Cores = 1
	other.Spec.Memory.Size = "256Mi"
	other.Spec.BlockDeviceRefs = []v1alpha1.BlockDeviceSpecRef{{Kind: v1alpha1.BlockDeviceKindVirtualDisk, Name: "used"}}
	off := false
	legacy := &v1alpha1.VirtualMachine{ObjectMeta: v1alpha1.ObjectMeta{Name: "vm3", Namespace: "p1"}}
	legacy.Spec.CPU.Cores = 1
	legacy.Spec.Memory.Size = "256Mi"
	legacy.Spec.EnableParavirtualization = &off
	disk := func(name string) *v1alpha1.VirtualDisk {
		d := &v1alpha1.VirtualDisk{ObjectMeta: v1alpha1.ObjectMeta{Name: name, Namespace: "p1"}}
		d.Spec.PersistentVolumeClaim.Size = "1Gi"
		d.Status.Phase = v1alpha1.DiskPhaseReady
		return d
	}
	fc := fake.New()
	if err := fc.Add(vm, other, legacy, disk("data"), disk("used"), attachment("a1", "vm1", v1alpha1.BlockDeviceKindVirtualDisk, "data")); err != nil {
		t.Fatal(err)
	}
	_, ctx := fake.Start(t, fc, nil, func(f *runtime.Factory) (*Controller, error) {
		return New(Config{Deps: runtime.Deps{Client: fc, Informers: f}})
	})
	var b v1alpha1.VirtualMachineBlockDeviceAttachment
	wait := func(name, _ string, cond func() bool) {
		t.Helper()
		fc.WaitFor(t, 10*time.Second, Resource, "p1", name, &b, cond)
	}
	wait("a1", "Pending", func() bool {
		c := v1alpha1.FindCondition(b.Status.Conditions, v1alpha1.VMBDAConditionVirtualMachineReady)
		return b.Status.Phase == v1alpha1.VMBDAPhasePending && c != nil && c.Reason == ReasonVirtualMachineNotRunning && len(b.Finalizers) == 1
	})
	// The VM runs.
	setVM := func(mutate func(v *v1alpha1.VirtualMachine)) {
		t.Helper()
		var v v1alpha1.VirtualMachine
		if err := fc.Get(ctx, "virtualmachines", "p1", "vm1", &v); err != nil {
			t.Fatal(err)
		}
		mutate(&v)
		if err := fc.UpdateStatus(ctx, "virtualmachines", "p1", "vm1", &v, nil); err != nil {
			t.Fatal(err)
		}
	}
	setVM(func(v *v1alpha1.VirtualMachine) { v.Status.Phase = v1alpha1.VMPhaseRunning; v.Status.NodeName = "n1" })
	wait("a1", "InProgress", func() bool { return b.Status.Phase == v1alpha1.VMBDAPhaseInProgress })
	setVM(func(v *v1alpha1.VirtualMachine) {
		v.Status.BlockDeviceRefs = []v1alpha1.BlockDeviceStatusRef{{Kind: v1alpha1.BlockDeviceKindVirtualDisk, Name: "data", Attached: true, Hotplugged: true,
			VirtualMachineBlockDeviceAttachmentName: "a1"}}
	})
	wait("a1", "Attached", func() bool {
		c := v1alpha1.FindCondition(b.Status.Conditions, v1alpha1.VMBDAConditionAttached)
		return b.Status.Phase == v1alpha1.VMBDAPhaseAttached && c != nil && c.Status == v1alpha1.ConditionTrue
	})

	// Conflicts and unsupported VMs fail.
	if err := fc.Create(ctx, Resource, "p1", attachment("a2", "vm1", v1alpha1.BlockDeviceKindVirtualDisk, "data"), nil); err != nil {
		t.Fatal(err)
	}
	if err := fc.Create(ctx, Resource, "p1", attachment("a3", "vm1", v1alpha1.BlockDeviceKindVirtualDisk, "used"), nil); err != nil {
		t.Fatal(err)
	}
	if err := fc.Create(ctx, Resource, "p1", attachment("a4", "vm3", v1alpha1.BlockDeviceKindVirtualDisk, "data2"), nil); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a2", "a3"} {
		wait(n, "Failed", func() bool {
			c := v1alpha1.FindCondition(b.Status.Conditions, v1alpha1.VMBDAConditionBlockDeviceReady)
			return b.Status.Phase == v1alpha1.VMBDAPhaseFailed && c != nil && c.Reason == ReasonConflict
		})
	}
	wait("a4", "Failed", func() bool {
		c := v1alpha1.FindCondition(b.Status.Conditions, v1alpha1.VMBDAConditionVirtualMachineReady)
		return b.Status.Phase == v1alpha1.VMBDAPhaseFailed && c != nil && c.Reason == ReasonNotSupported
	})

	// Deleting the attached one: Terminating until the device is gone, then it goes.
	if err := fc.Delete(ctx, Resource, "p1", "a1"); err != nil {
		t.Fatal(err)
	}
	wait("a1", "Terminating", func() bool { return b.Status.Phase == v1alpha1.VMBDAPhaseTerminating })
	setVM(func(v *v1alpha1.VirtualMachine) { v.Status.BlockDeviceRefs = nil })
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := fc.Get(ctx, Resource, "p1", "a1", &b)
		if err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the deleted attachment stays: %+v", b)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// A stopped VM's attachment goes at once.
	if err := fc.Delete(ctx, Resource, "p1", "a4"); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for fc.Get(ctx, Resource, "p1", "a4", &b) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("the attachment of a stopped VM stays: %+v", b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
