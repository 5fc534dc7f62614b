package backup

import (
	"context"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// Mode stop. A backup in mode stop of a running VM shuts the VM down first, through a Stop
// operation (a guest shutdown, as `rakhsh vm stop` does), then backs up its disks as those of
// any stopped VM (the node's agent reads them through a storage daemon of its own), and when
// the backup has ended, Completed or Failed, starts the VM again through a Start operation.
// status.stoppedVM is written before the Stop operation is made and status.restartedVM after
// the Start operation is: a controller restarted in between makes the missing one (the
// operations have fixed names, so none is made twice). A VM that is stopped already is backed
// up as it is and stays stopped.
//
// Under runPolicy AlwaysOn the VM controller starts a stopped VM again at once, which would
// fail the backup: such a VM is refused (use mode snapshot or suspend, or another policy).

// backupOpName names the Stop or Start operation (verb) of backup: BACKUP-VERB, cut with a
// hash of the whole when longer than a name may be.
func backupOpName(backup, verb string) string {
	n := backup + "-" + verb
	if len(n) <= 63 {
		return n
	}
	h := fnv.New32a()
	h.Write([]byte(n))
	suffix := fmt.Sprintf("-%08x-%s", h.Sum32(), verb)
	return strings.TrimRight(n[:63-len(suffix)], "-") + suffix
}

// stopForBackup moves a backup in mode stop of a running VM on: it records that it stops the
// VM, makes the Stop operation, and waits for the VM to be stopped (or fails with the
// operation).
func (c *Controller) stopForBackup(ctx context.Context, b *v1alpha1.VirtualMachineBackup, vm *v1alpha1.VirtualMachine) (runtime.Result, error) {
	if !b.Status.StoppedVM {
		if vm.Spec.RunPolicy == v1alpha1.RunPolicyAlwaysOn {
			return runtime.Result{}, c.fail(ctx, b, "mode stop shuts the VirtualMachine down for the backup, and its runPolicy AlwaysOn would start it again at once: use mode snapshot or suspend, or another run policy")
		}
		// What would fail the backup of the stopped VM fails it before the VM is stopped.
		if node, why := c.stoppedVMNode(vm); node == "" {
			return runtime.Result{}, c.fail(ctx, b, why)
		}
		if o := c.runningBackupOf(b); o != "" {
			return c.wait(ctx, b, fmt.Sprintf("backup %q of the VM runs; one backup of a VM runs at a time", o))
		}
		st := b.Status
		st.Conditions = slices.Clone(b.Status.Conditions)
		st.Phase = v1alpha1.BackupPhasePending
		st.ObservedGeneration = b.Generation
		st.StoppedVM = true
		st.VirtualMachineUID = vm.UID // the VM to start again, whatever happens next
		setCond(&st, b, v1alpha1.ConditionFalse, v1alpha1.BackupReasonWaiting,
			fmt.Sprintf("stopping the VirtualMachine for the backup (mode stop; operation %q)", backupOpName(b.Name, "stop")))
		return runtime.Result{}, c.write(ctx, b, st)
	}
	name := backupOpName(b.Name, "stop")
	op, err := c.ensureOp(ctx, b, name, v1alpha1.VMOPTypeStop)
	if err != nil {
		return runtime.Result{}, err
	}
	switch {
	case op.Status.Phase == v1alpha1.VMOPPhaseFailed:
		msg := "the VirtualMachine could not be stopped for the backup"
		if cond := v1alpha1.FindCondition(op.Status.Conditions, v1alpha1.VMOPConditionCompleted); cond != nil && cond.Message != "" {
			msg += ": " + cond.Message
		}
		return runtime.Result{}, c.fail(ctx, b, msg)
	case op.Status.Phase == v1alpha1.VMOPPhaseCompleted && vm.Status.Phase != v1alpha1.VMPhaseStopping:
		// Stopped, and started again by someone before the backup could begin (or the Stop
		// was superseded): the VM runs, and the backup does not stop it twice.
		return runtime.Result{}, c.fail(ctx, b, fmt.Sprintf("the VirtualMachine was started again (it is %s) before the backup of its stopped disks began", phaseOr(vm.Status.Phase)))
	}
	return c.wait(ctx, b, fmt.Sprintf("waiting for the VirtualMachine to stop for the backup (mode stop; operation %q; it is %s)", name, phaseOr(vm.Status.Phase)))
}

// restartAfterBackup starts the VM a backup in mode stop stopped, once the backup has ended:
// when it is stopped (a Stop that failed, or a VM started meanwhile by someone else, is left
// as it is).
func (c *Controller) restartAfterBackup(ctx context.Context, b *v1alpha1.VirtualMachineBackup) (runtime.Result, error) {
	vm, ok := c.vms.Get(runtime.NewKey(b.Namespace, b.Spec.VirtualMachineName))
	msg := "the VirtualMachine is gone: nothing to start again"
	switch {
	case ok && vm.UID == b.Status.VirtualMachineUID && vm.Status.Phase == v1alpha1.VMPhaseStopping:
		return runtime.Result{RequeueAfter: waitRetry}, nil // the Stop is still under way
	case ok && vm.UID == b.Status.VirtualMachineUID && vm.Status.Phase != v1alpha1.VMPhaseStopped && vm.Status.Phase != "":
		msg = fmt.Sprintf("the VirtualMachine is %s: nothing to start again", vm.Status.Phase)
	case ok && vm.UID == b.Status.VirtualMachineUID:
		name := backupOpName(b.Name, "start")
		if _, err := c.ensureOp(ctx, b, name, v1alpha1.VMOPTypeStart); err != nil {
			return runtime.Result{}, err
		}
		msg = fmt.Sprintf("the backup ended: the VirtualMachine it stopped is started again (operation %q)", name)
		c.Rec.Event(ctx, "VirtualMachineBackup", b, "Normal", "VirtualMachineRestarted", msg)
	}
	c.Log.Info("backup in mode stop ended", "backup", b.Namespace+"/"+b.Name, "restart", msg)
	st := b.Status
	st.Conditions = slices.Clone(b.Status.Conditions)
	st.RestartedVM = true
	return runtime.Result{}, c.write(ctx, b, st)
}

// ensureOp makes the operation name of type typ on the backup's VM, or returns the one this
// backup made (annotated with its uid). One of that name made by someone else, or by an
// earlier backup of the same name, is deleted and made again.
func (c *Controller) ensureOp(ctx context.Context, b *v1alpha1.VirtualMachineBackup, name string, typ v1alpha1.VMOPType) (*v1alpha1.VirtualMachineOperation, error) {
	op := &v1alpha1.VirtualMachineOperation{
		TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachineOperation"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: name, Namespace: b.Namespace,
			Labels:      map[string]string{v1alpha1.LabelBackupOf: b.Name},
			Annotations: map[string]string{annotationBackupUID: b.UID}},
		Spec: v1alpha1.VirtualMachineOperationSpec{Type: typ, VirtualMachineName: b.Spec.VirtualMachineName},
	}
	err := c.C.Create(ctx, "virtualmachineoperations", b.Namespace, op, op)
	if client.IsAlreadyExists(err) {
		if err = c.C.Get(ctx, "virtualmachineoperations", b.Namespace, name, op); err == nil && op.Annotations[annotationBackupUID] != b.UID {
			if err := c.C.Delete(ctx, "virtualmachineoperations", b.Namespace, name); err != nil && !client.IsNotFound(err) {
				return nil, fmt.Errorf("deleting the stale %s operation %s: %w", typ, name, err)
			}
			return nil, fmt.Errorf("%s operation %s was not this backup's: deleted, to be made again", typ, name)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%s operation %s: %w", typ, name, err)
	}
	return op, nil
}

// annotationBackupUID, on the operations a backup in mode stop makes, is the backup's uid.
const annotationBackupUID = "virtualization.rakhsh.io/backup-uid"

// vmHeldByBackup names another backup of vm in mode stop that stopped it and has not started
// it again yet ("" for none).
func (c *Controller) vmHeldByBackup(b *v1alpha1.VirtualMachineBackup, vm *v1alpha1.VirtualMachine) string {
	for _, o := range c.backups.List() {
		if o.Namespace == b.Namespace && o.Spec.VirtualMachineName == b.Spec.VirtualMachineName && o.Name != b.Name &&
			o.Status.StoppedVM && !o.Status.RestartedVM && o.Status.VirtualMachineUID == vm.UID && o.DeletionTimestamp == nil {
			return o.Name
		}
	}
	return ""
}

// runningBackupOf names another backup of b's VM that is being taken ("" for none).
func (c *Controller) runningBackupOf(b *v1alpha1.VirtualMachineBackup) string {
	for _, o := range c.backups.List() {
		if o.Namespace == b.Namespace && o.Spec.VirtualMachineName == b.Spec.VirtualMachineName && o.Name != b.Name &&
			o.Status.Phase == v1alpha1.BackupPhaseInProgress {
			return o.Name
		}
	}
	return ""
}
