package snapshot

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// Restore: a VirtualMachineOperation of type Restore returns a stopped VM to one of its
// VirtualMachineSnapshots: each disk's file is replaced by a copy of its disk snapshot (the
// copy is written beside the disk and renamed over it, so a disk is either restored or as it
// was), then the VM's spec is set back to the snapshot's. A VM that is not Stopped is refused
// (reason NotApplicableForVirtualMachinePhase): stop it first. Mode DryRun checks and
// reports what would be restored without changing anything; Strict fails when a disk of the
// snapshot is gone; BestEffort restores what it can and skips such disks.

func (c *Controller) restoreOpsOfVM(k runtime.Key) []runtime.Key {
	ns, name := k.Split()
	var out []runtime.Key
	for _, op := range c.ops.List() {
		if op.Namespace == ns && op.Spec.VirtualMachineName == name && op.Spec.Type == v1alpha1.VMOPTypeRestore {
			out = append(out, runtime.NewKey(op.Namespace, op.Name))
		}
	}
	return out
}

func (c *Controller) writeOp(ctx context.Context, op *v1alpha1.VirtualMachineOperation, phase v1alpha1.VMOPPhase, reason, msg string, res []v1alpha1.VMOPResourceStatus) error {
	st := op.Status
	st.Conditions = slices.Clone(op.Status.Conditions)
	st.Phase = phase
	st.ObservedGeneration = op.Generation
	status := v1alpha1.ConditionFalse
	if phase == v1alpha1.VMOPPhaseCompleted {
		status = v1alpha1.ConditionTrue
	}
	v1alpha1.SetCondition(&st.Conditions, v1alpha1.Condition{Type: v1alpha1.VMOPConditionCompleted, Status: status, Reason: reason, Message: msg, ObservedGeneration: op.Generation})
	if res != nil {
		st.Resources = res
	}
	body, _ := json.Marshal(map[string]any{"status": st})
	err := c.c.PatchStatus(ctx, "virtualmachineoperations", op.Namespace, op.Name, body, nil)
	if client.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if phase != v1alpha1.VMOPPhaseInProgress {
		typ := "Normal"
		if phase == v1alpha1.VMOPPhaseFailed {
			typ = "Warning"
		}
		c.rec.Event(ctx, "VirtualMachineOperation", op, typ, string(phase), msg)
	}
	c.log.Info("operation", "op", op.Namespace+"/"+op.Name, "type", op.Spec.Type, "vm", op.Spec.VirtualMachineName, "phase", phase, "message", msg)
	return nil
}

func (c *Controller) reconcileRestore(ctx context.Context, key runtime.Key) (runtime.Result, error) {
	ns, name := key.Split()
	var op v1alpha1.VirtualMachineOperation
	if err := c.c.Get(ctx, "virtualmachineoperations", ns, name, &op); err != nil {
		if client.IsNotFound(err) {
			return runtime.Result{}, nil
		}
		return runtime.Result{}, err
	}
	if op.Spec.Type != v1alpha1.VMOPTypeRestore || op.DeletionTimestamp != nil || op.Spec.Restore == nil {
		return runtime.Result{}, nil
	}
	switch op.Status.Phase {
	case "", v1alpha1.VMOPPhasePending, v1alpha1.VMOPPhaseInProgress:
	default:
		return runtime.Result{}, nil
	}
	fail := func(reason, msg string) (runtime.Result, error) {
		return runtime.Result{}, c.writeOp(ctx, &op, v1alpha1.VMOPPhaseFailed, reason, msg, nil)
	}
	var vm v1alpha1.VirtualMachine
	if err := c.c.Get(ctx, "virtualmachines", ns, op.Spec.VirtualMachineName, &vm); err != nil {
		if client.IsNotFound(err) {
			return fail(v1alpha1.VMOPReasonVirtualMachineNotFound, fmt.Sprintf("virtual machine %q not found", op.Spec.VirtualMachineName))
		}
		return runtime.Result{}, err
	}
	var snap v1alpha1.VirtualMachineSnapshot
	snapName := op.Spec.Restore.VirtualMachineSnapshotName
	if err := c.c.Get(ctx, "virtualmachinesnapshots", ns, snapName, &snap); err != nil {
		if client.IsNotFound(err) {
			return fail(v1alpha1.VMOPReasonOperationFailed, fmt.Sprintf("VirtualMachineSnapshot %q not found", snapName))
		}
		return runtime.Result{}, err
	}
	switch {
	case snap.Spec.VirtualMachineName != vm.Name:
		return fail(v1alpha1.VMOPReasonOperationFailed, fmt.Sprintf("VirtualMachineSnapshot %q is of VirtualMachine %q, not %q", snapName, snap.Spec.VirtualMachineName, vm.Name))
	case snap.Status.Phase != v1alpha1.SnapshotPhaseReady || snap.Status.VirtualMachineSpec == nil:
		return fail(v1alpha1.VMOPReasonOperationFailed, fmt.Sprintf("VirtualMachineSnapshot %q is not Ready (it is %s)", snapName, orPending(string(snap.Status.Phase))))
	case op.Spec.Restore.Mode != v1alpha1.SnapshotOperationModeDryRun && vm.Status.Phase != v1alpha1.VMPhaseStopped:
		return fail(v1alpha1.VMOPReasonNotApplicableForPhase, fmt.Sprintf("virtual machine %q is %s: stop it (rakhsh vm stop %s --wait) and restore again", vm.Name, orPending(string(vm.Status.Phase)), vm.Name))
	case op.Spec.Restore.Mode != v1alpha1.SnapshotOperationModeDryRun && v1alpha1.IsHibernated(&vm):
		// Its saved RAM would be resumed over the restored disks.
		return fail(v1alpha1.VMOPReasonNotApplicableForPhase, fmt.Sprintf("virtual machine %q is hibernated: its saved RAM belongs to its disks as they are; start it (it resumes) and stop it, or start it with --force to discard the saved state, then restore", vm.Name))
	}

	// What each disk snapshot restores: the disk it was taken of, if it is still that disk.
	type item struct {
		snap *v1alpha1.VirtualDiskSnapshot
		disk *v1alpha1.VirtualDisk
		skip string
	}
	var items []item
	var res []v1alpha1.VMOPResourceStatus
	for _, sn := range snap.Status.VirtualDiskSnapshotNames {
		var ds v1alpha1.VirtualDiskSnapshot
		if err := c.c.Get(ctx, "virtualdisksnapshots", ns, sn, &ds); err != nil {
			if client.IsNotFound(err) {
				return fail(v1alpha1.VMOPReasonOperationFailed, fmt.Sprintf("VirtualDiskSnapshot %q of the snapshot is gone", sn))
			}
			return runtime.Result{}, err
		}
		if ds.Status.Phase != v1alpha1.SnapshotPhaseReady {
			return fail(v1alpha1.VMOPReasonOperationFailed, fmt.Sprintf("VirtualDiskSnapshot %q of the snapshot is not Ready", sn))
		}
		it := item{snap: &ds}
		var d v1alpha1.VirtualDisk
		switch err := c.c.Get(ctx, "virtualdisks", ns, ds.Spec.VirtualDiskName, &d); {
		case client.IsNotFound(err):
			it.skip = fmt.Sprintf("VirtualDisk %q no longer exists", ds.Spec.VirtualDiskName)
		case err != nil:
			return runtime.Result{}, err
		case d.UID != ds.Status.VirtualDiskUID:
			it.skip = fmt.Sprintf("VirtualDisk %q was deleted and made again since the snapshot", d.Name)
		case d.Status.Phase != v1alpha1.DiskPhaseReady:
			it.skip = fmt.Sprintf("VirtualDisk %q is %s, not Ready", d.Name, orPending(string(d.Status.Phase)))
		default:
			it.disk = &d
			sc := c.classOf(d.Status.StorageClassName)
			if !c.reachable(sc, d.Status.NodeName) {
				it.skip = fmt.Sprintf("VirtualDisk %q is on node %s's local storage, which this controller cannot write", d.Name, d.Status.NodeName)
				it.disk = nil
			}
		}
		if it.skip != "" && op.Spec.Restore.Mode == v1alpha1.SnapshotOperationModeStrict {
			return fail(v1alpha1.VMOPReasonOperationFailed, it.skip+" (mode Strict; BestEffort restores the other disks)")
		}
		r := v1alpha1.VMOPResourceStatus{APIVersion: v1alpha1.APIVersion, Kind: "VirtualDisk", Name: ds.Spec.VirtualDiskName, Status: "InProgress"}
		if it.skip != "" {
			r.Status, r.Message = "Failed", "skipped: "+it.skip
		}
		res = append(res, r)
		items = append(items, it)
	}
	res = append(res, v1alpha1.VMOPResourceStatus{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachine", Name: vm.Name, Status: "InProgress"})
	if op.Spec.Restore.Mode == v1alpha1.SnapshotOperationModeDryRun {
		for i := range res {
			if res[i].Status == "InProgress" {
				res[i].Status, res[i].Message = "Completed", "would be restored"
			}
		}
		return runtime.Result{}, c.writeOp(ctx, &op, v1alpha1.VMOPPhaseCompleted, v1alpha1.VMOPReasonOperationCompleted,
			fmt.Sprintf("dry run: %d disks and the spec of %q would be restored from %q", len(items), vm.Name, snapName), res)
	}
	if err := c.writeOp(ctx, &op, v1alpha1.VMOPPhaseInProgress, "InProgress", "restoring the disks", res); err != nil {
		return runtime.Result{}, err
	}
	for i, it := range items {
		if it.disk == nil {
			continue
		}
		dsc := c.classOf(it.snap.Status.StorageClassName)
		src := storage.SnapshotPath(c.cfg.DataDir, dsc, it.snap.UID)
		dst := storage.ClassDiskPath(c.cfg.DataDir, c.classOf(it.disk.Status.StorageClassName), it.disk.UID)
		storage.CleanTempFor(dst)
		if err := storage.Convert(ctx, src, "qcow2", dst, "qcow2"); err != nil {
			if ctx.Err() != nil {
				return runtime.Result{}, ctx.Err()
			}
			res[i].Status, res[i].Message = "Failed", err.Error()
			return runtime.Result{}, c.writeOp(ctx, &op, v1alpha1.VMOPPhaseFailed, v1alpha1.VMOPReasonOperationFailed,
				fmt.Sprintf("restoring VirtualDisk %q: %v", it.disk.Name, err), res)
		}
		res[i].Status = "Completed"
	}
	// The spec: the snapshot's, under the VM's current resourceVersion (a concurrent edit
	// makes this fail with a conflict and the operation is tried again).
	vm.Spec = *snap.Status.VirtualMachineSpec
	if err := c.c.Update(ctx, "virtualmachines", ns, vm.Name, &vm, nil); err != nil {
		if client.IsConflict(err) {
			return runtime.Result{}, err
		}
		res[len(res)-1].Status, res[len(res)-1].Message = "Failed", err.Error()
		return runtime.Result{}, c.writeOp(ctx, &op, v1alpha1.VMOPPhaseFailed, v1alpha1.VMOPReasonOperationFailed,
			"the disks are restored, but setting the VM's spec back failed: "+err.Error(), res)
	}
	res[len(res)-1].Status = "Completed"
	var skipped []string
	for _, r := range res {
		if r.Status == "Failed" {
			skipped = append(skipped, r.Name)
		}
	}
	msg := fmt.Sprintf("restored %q from %q", vm.Name, snapName)
	if len(skipped) > 0 {
		msg += "; skipped " + strings.Join(skipped, ", ")
	}
	return runtime.Result{}, c.writeOp(ctx, &op, v1alpha1.VMOPPhaseCompleted, v1alpha1.VMOPReasonOperationCompleted, msg, res)
}
