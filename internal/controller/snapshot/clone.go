package snapshot

import (
	"context"
	"fmt"
	"maps"
	"strings"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// Clone: a VirtualMachineOperation of type Clone makes a new VM from a VM (running or not, or
// a template): it takes a VirtualMachineSnapshot of the source (consistent, as any snapshot),
// makes each new disk from its disk snapshot, and creates the new VM with the snapshot's spec
// under the new names. The new VM gets new identities: a new uid (which is its SMBIOS UUID and
// cloud-init instance-id), a new MAC and IP claim (the source's claims are not copied), and no
// template label. The operation completes when the new disks are Ready; the snapshot it worked
// from is then deleted.

// LabelCloneOf marks the VirtualMachineSnapshot a Clone operation works from.
const LabelCloneOf = "virtualization.rakhsh.io/clone-of"

func (c *Controller) cloneOpsOfVMSnapshot(k runtime.Key) []runtime.Key {
	s, ok := c.vmsnaps.Get(k)
	if !ok || s.Labels[LabelCloneOf] == "" {
		return nil
	}
	return []runtime.Key{runtime.NewKey(s.Namespace, s.Labels[LabelCloneOf])}
}

func (c *Controller) cloneOpsOfDisk(k runtime.Key) []runtime.Key {
	d, ok := c.disks.Get(k)
	if !ok || d.Labels[LabelCloneOf] == "" {
		return nil
	}
	return []runtime.Key{runtime.NewKey(d.Namespace, d.Labels[LabelCloneOf])}
}

// cloneName is the new name of the object kind/name under the clone spec: a nameReplacement
// that matches (with or without kind), else the customization's prefix and suffix.
func cloneName(spec *v1alpha1.VMOPCloneSpec, kind, name string) string {
	for _, r := range spec.NameReplacement {
		if r.From.Name == name && (r.From.Kind == "" || r.From.Kind == kind) {
			return r.To
		}
	}
	if cu := spec.Customization; cu != nil {
		return cu.NamePrefix + name + cu.NameSuffix
	}
	return name
}

func (c *Controller) reconcileOp(ctx context.Context, key runtime.Key) (runtime.Result, error) {
	op, ok := c.ops.Get(key)
	if !ok {
		return runtime.Result{}, nil
	}
	switch op.Spec.Type {
	case v1alpha1.VMOPTypeRestore:
		return c.reconcileRestore(ctx, key)
	case v1alpha1.VMOPTypeClone:
		return c.reconcileClone(ctx, key)
	}
	return runtime.Result{}, nil
}

// readActiveOp reads the operation of key. It says false, with no error, when there is
// nothing to do: the operation is gone, being deleted, of another type than typ or finished.
func (c *Controller) readActiveOp(ctx context.Context, key runtime.Key, typ v1alpha1.VMOPType) (*v1alpha1.VirtualMachineOperation, bool, error) {
	var op v1alpha1.VirtualMachineOperation
	if ok, err := runtime.Read(ctx, c.C, "virtualmachineoperations", key, &op); !ok {
		return nil, false, err
	}
	if op.Spec.Type != typ || op.DeletionTimestamp != nil {
		return nil, false, nil
	}
	switch op.Status.Phase {
	case "", v1alpha1.VMOPPhasePending, v1alpha1.VMOPPhaseInProgress:
		return &op, true, nil
	}
	return nil, false, nil
}

func (c *Controller) reconcileClone(ctx context.Context, key runtime.Key) (runtime.Result, error) {
	ns, name := key.Split()
	op, ok, err := c.readActiveOp(ctx, key, v1alpha1.VMOPTypeClone)
	if !ok || op.Spec.Clone == nil {
		return runtime.Result{}, err
	}
	spec := op.Spec.Clone
	fail := func(msg string) (runtime.Result, error) {
		c.deleteCloneSnapshot(ctx, op)
		return runtime.Result{}, c.writeOp(ctx, op, v1alpha1.VMOPPhaseFailed, v1alpha1.VMOPReasonOperationFailed, msg, nil)
	}
	var src v1alpha1.VirtualMachine
	if err := c.C.Get(ctx, "virtualmachines", ns, op.Spec.VirtualMachineName, &src); err != nil {
		if client.IsNotFound(err) && op.Status.Phase != v1alpha1.VMOPPhaseInProgress {
			return runtime.Result{}, c.writeOp(ctx, op, v1alpha1.VMOPPhaseFailed, v1alpha1.VMOPReasonVirtualMachineNotFound,
				fmt.Sprintf("virtual machine %q not found", op.Spec.VirtualMachineName), nil)
		}
		if !client.IsNotFound(err) {
			return runtime.Result{}, err
		}
	}
	newVM := cloneName(spec, "VirtualMachine", op.Spec.VirtualMachineName)
	if op.Status.Phase != v1alpha1.VMOPPhaseInProgress {
		// Check the new names before anything is made.
		var res []v1alpha1.VMOPResourceStatus
		var taken []string
		check := func(resource, kind, old string) {
			n := cloneName(spec, kind, old)
			r := v1alpha1.VMOPResourceStatus{APIVersion: v1alpha1.APIVersion, Kind: kind, Name: n, Status: "InProgress", Message: "a clone of " + old}
			switch {
			case n == old:
				taken = append(taken, fmt.Sprintf("%s %q would keep its name", kind, old))
			case c.C.Get(ctx, resource, ns, n, nil) == nil:
				taken = append(taken, fmt.Sprintf("%s %q exists", kind, n))
			}
			res = append(res, r)
		}
		for _, r := range src.Spec.BlockDeviceRefs {
			if r.Kind == v1alpha1.BlockDeviceKindVirtualDisk {
				check("virtualdisks", "VirtualDisk", r.Name)
			}
		}
		check("virtualmachines", "VirtualMachine", src.Name)
		if len(taken) > 0 {
			return fail("the clone's names are not free: " + strings.Join(taken, "; ") + " (choose another namePrefix, nameSuffix or nameReplacement)")
		}
		if spec.Mode == v1alpha1.SnapshotOperationModeDryRun {
			for i := range res {
				res[i].Status = "Completed"
			}
			return runtime.Result{}, c.writeOp(ctx, op, v1alpha1.VMOPPhaseCompleted, v1alpha1.VMOPReasonOperationCompleted,
				fmt.Sprintf("dry run: %s would be cloned as %s", src.Name, newVM), res)
		}
		if err := c.writeOp(ctx, op, v1alpha1.VMOPPhaseInProgress, "InProgress", "taking a snapshot of "+src.Name, res); err != nil {
			return runtime.Result{}, err
		}
		return runtime.Result{}, nil
	}

	// The snapshot the clone works from.
	snapName := diskSnapshotName(name, "clone")
	var snap v1alpha1.VirtualMachineSnapshot
	switch err := c.C.Get(ctx, "virtualmachinesnapshots", ns, snapName, &snap); {
	case client.IsNotFound(err):
		if c.C.Get(ctx, "virtualmachines", ns, newVM, nil) == nil {
			// The VM was made and its snapshot deleted: a finished clone whose status write was lost.
			return runtime.Result{}, c.writeOp(ctx, op, v1alpha1.VMOPPhaseCompleted, v1alpha1.VMOPReasonOperationCompleted,
				fmt.Sprintf("cloned %s as %s", op.Spec.VirtualMachineName, newVM), nil)
		}
		snap = v1alpha1.VirtualMachineSnapshot{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachineSnapshot"},
			ObjectMeta: v1alpha1.ObjectMeta{Name: snapName, Namespace: ns, Labels: map[string]string{LabelCloneOf: name}},
			Spec:       v1alpha1.VirtualMachineSnapshotSpec{VirtualMachineName: op.Spec.VirtualMachineName}}
		if err := c.C.Create(ctx, "virtualmachinesnapshots", ns, &snap, nil); err != nil && !client.IsAlreadyExists(err) {
			return runtime.Result{}, err
		}
		return runtime.Result{}, nil
	case err != nil:
		return runtime.Result{}, err
	case snap.Labels[LabelCloneOf] != name:
		return fail(fmt.Sprintf("a VirtualMachineSnapshot %q that this clone did not make exists", snapName))
	case snap.Status.Phase == v1alpha1.SnapshotPhaseFailed:
		msg := "the snapshot of the source failed"
		if rc := v1alpha1.FindCondition(snap.Status.Conditions, v1alpha1.VMSnapshotConditionReady); rc != nil {
			msg += ": " + rc.Message
		}
		return fail(msg)
	case snap.Status.Phase != v1alpha1.SnapshotPhaseReady || snap.Status.VirtualMachineSpec == nil:
		return runtime.Result{}, nil // the snapshot's changes requeue the operation
	}

	// New disks from the disk snapshots.
	renamed := map[string]string{}
	allReady := true
	for _, sn := range snap.Status.VirtualDiskSnapshotNames {
		var ds v1alpha1.VirtualDiskSnapshot
		if err := c.C.Get(ctx, "virtualdisksnapshots", ns, sn, &ds); err != nil {
			return runtime.Result{}, err
		}
		old := ds.Spec.VirtualDiskName
		nd := cloneName(spec, "VirtualDisk", old)
		renamed[old] = nd
		var d v1alpha1.VirtualDisk
		err := c.C.Get(ctx, "virtualdisks", ns, nd, &d)
		switch {
		case client.IsNotFound(err):
			d = v1alpha1.VirtualDisk{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualDisk"},
				ObjectMeta: v1alpha1.ObjectMeta{Name: nd, Namespace: ns, Labels: map[string]string{LabelCloneOf: name}}}
			d.Spec.DataSource = &v1alpha1.DataSource{Type: v1alpha1.DataSourceTypeObjectRef,
				ObjectRef: &v1alpha1.DataSourceObjectRef{Kind: v1alpha1.DataSourceKindVirtualDiskSnapshot, Name: sn}}
			d.Spec.PersistentVolumeClaim.StorageClassName = ds.Status.StorageClassName
			d.Spec.CloneMode = spec.CloneMode // "": Linked, the default of a disk from a snapshot
			if err := c.C.Create(ctx, "virtualdisks", ns, &d, nil); err != nil && !client.IsAlreadyExists(err) {
				return fail(fmt.Sprintf("creating VirtualDisk %q: %v", nd, err))
			}
			allReady = false
		case err != nil:
			return runtime.Result{}, err
		case d.Labels[LabelCloneOf] != name:
			return fail(fmt.Sprintf("VirtualDisk %q exists and was not made by this clone", nd))
		case d.Status.Phase == v1alpha1.DiskPhaseFailed:
			msg := ""
			if rc := v1alpha1.FindCondition(d.Status.Conditions, v1alpha1.DiskConditionReady); rc != nil {
				msg = ": " + rc.Message
			}
			return fail(fmt.Sprintf("VirtualDisk %q of the clone failed%s", nd, msg))
		case d.Status.Phase != v1alpha1.DiskPhaseReady:
			allReady = false
		}
	}

	// The new VM, with the snapshot's spec under the new names and new address claims.
	var vm v1alpha1.VirtualMachine
	switch err := c.C.Get(ctx, "virtualmachines", ns, newVM, &vm); {
	case client.IsNotFound(err):
		vm = v1alpha1.VirtualMachine{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachine"},
			ObjectMeta: v1alpha1.ObjectMeta{Name: newVM, Namespace: ns, Labels: maps.Clone(src.Labels), Annotations: map[string]string{LabelCloneOf: name}}}
		if vm.Labels == nil {
			vm.Labels = map[string]string{}
		}
		delete(vm.Labels, v1alpha1.LabelTemplate)
		vm.Labels[LabelCloneOf] = name
		vm.Spec = *snap.Status.VirtualMachineSpec
		vm.Spec.BlockDeviceRefs = append([]v1alpha1.BlockDeviceSpecRef(nil), vm.Spec.BlockDeviceRefs...)
		for i, r := range vm.Spec.BlockDeviceRefs {
			if n, ok := renamed[r.Name]; ok && r.Kind == v1alpha1.BlockDeviceKindVirtualDisk {
				vm.Spec.BlockDeviceRefs[i].Name = n
			}
		}
		vm.Spec.VirtualMachineIPAddressName = ""
		vm.Spec.Networks = append([]v1alpha1.NetworkSpec(nil), vm.Spec.Networks...)
		for i := range vm.Spec.Networks {
			vm.Spec.Networks[i].VirtualMachineMACAddressName = ""
		}
		if err := c.C.Create(ctx, "virtualmachines", ns, &vm, nil); err != nil && !client.IsAlreadyExists(err) {
			return fail(fmt.Sprintf("creating VirtualMachine %q: %v", newVM, err))
		}
	case err != nil:
		return runtime.Result{}, err
	case vm.Labels[LabelCloneOf] != name:
		return fail(fmt.Sprintf("VirtualMachine %q exists and was not made by this clone", newVM))
	}
	if !allReady {
		return runtime.Result{}, c.writeOp(ctx, op, v1alpha1.VMOPPhaseInProgress, "InProgress", "copying the disks of the clone", nil)
	}
	c.deleteCloneSnapshot(ctx, op)
	res := op.Status.Resources
	for i := range res {
		res[i].Status = "Completed"
	}
	return runtime.Result{}, c.writeOp(ctx, op, v1alpha1.VMOPPhaseCompleted, v1alpha1.VMOPReasonOperationCompleted,
		fmt.Sprintf("cloned %s as %s", op.Spec.VirtualMachineName, newVM), res)
}

// deleteCloneSnapshot deletes the snapshot a clone worked from (best effort: a later pass or
// the user deletes what is left).
func (c *Controller) deleteCloneSnapshot(ctx context.Context, op *v1alpha1.VirtualMachineOperation) {
	n := diskSnapshotName(op.Name, "clone")
	var s v1alpha1.VirtualMachineSnapshot
	if err := c.C.Get(ctx, "virtualmachinesnapshots", op.Namespace, n, &s); err == nil && s.Labels[LabelCloneOf] == op.Name {
		_ = c.C.Delete(ctx, "virtualmachinesnapshots", op.Namespace, n)
	}
}
