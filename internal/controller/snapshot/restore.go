package snapshot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/backup"
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
	return c.ops.KeysWhere(func(op *v1alpha1.VirtualMachineOperation) bool {
		return op.Namespace == ns && op.Spec.VirtualMachineName == name && op.Spec.Type == v1alpha1.VMOPTypeRestore
	})
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
	if ok, err := runtime.MergeStatus(ctx, c.C, "virtualmachineoperations", &op.ObjectMeta, st); !ok {
		return err
	}
	if phase != v1alpha1.VMOPPhaseInProgress {
		c.Rec.OperationEvent(ctx, op, phase, msg)
	}
	c.Log.Info("operation", "op", op.Namespace+"/"+op.Name, "type", op.Spec.Type, "vm", op.Spec.VirtualMachineName, "phase", phase, "message", msg)
	return nil
}

func (c *Controller) reconcileRestore(ctx context.Context, key runtime.Key) (runtime.Result, error) {
	ns, _ := key.Split()
	op, ok, err := c.readActiveOp(ctx, key, v1alpha1.VMOPTypeRestore)
	if !ok || op.Spec.Restore == nil {
		return runtime.Result{}, err
	}
	fail := func(reason, msg string) (runtime.Result, error) {
		return runtime.Result{}, c.writeOp(ctx, op, v1alpha1.VMOPPhaseFailed, reason, msg, nil)
	}
	var vm v1alpha1.VirtualMachine
	if err := c.C.Get(ctx, "virtualmachines", ns, op.Spec.VirtualMachineName, &vm); err != nil {
		if client.IsNotFound(err) {
			return fail(v1alpha1.VMOPReasonVirtualMachineNotFound, fmt.Sprintf("virtual machine %q not found", op.Spec.VirtualMachineName))
		}
		return runtime.Result{}, err
	}
	var src *restoreSource
	var reason, msg string
	if op.Spec.Restore.VirtualMachineBackupName != "" {
		src, reason, msg, err = c.backupRestoreSource(ctx, &vm, op.Spec.Restore.VirtualMachineBackupName)
	} else {
		src, reason, msg, err = c.snapshotRestoreSource(ctx, &vm, op.Spec.Restore.VirtualMachineSnapshotName)
	}
	if err != nil {
		return runtime.Result{}, err
	}
	if src == nil {
		return fail(reason, msg)
	}
	if done, err := c.restoredWithRAM(ctx, op, &vm, src); done || err != nil {
		return runtime.Result{}, err
	}
	if op.Spec.Restore.Mode != v1alpha1.SnapshotOperationModeDryRun {
		switch {
		case vm.Status.Phase != v1alpha1.VMPhaseStopped:
			return fail(v1alpha1.VMOPReasonNotApplicableForPhase, fmt.Sprintf("virtual machine %q is %s: stop it (rakhsh vm stop %s --wait) and restore again", vm.Name, orPending(string(vm.Status.Phase)), vm.Name))
		case v1alpha1.IsHibernated(&vm):
			// Its saved RAM would be resumed over the restored disks.
			return fail(v1alpha1.VMOPReasonNotApplicableForPhase, fmt.Sprintf("virtual machine %q is hibernated: its saved RAM belongs to its disks as they are; start it (it resumes) and stop it, or start it with --force to discard the saved state, then restore", vm.Name))
		}
		// A backup of the stopped VM reads its disks through a storage daemon of its own:
		// replacing a disk's file under it would mix two states in one backup.
		busy, err := c.backupRunning(ctx, &vm)
		if err != nil {
			return runtime.Result{}, err
		}
		if busy != "" {
			return fail(v1alpha1.VMOPReasonNotApplicableForPhase, fmt.Sprintf("VirtualMachineBackup %q of virtual machine %q is being taken: restore when it has ended", busy, vm.Name))
		}
	}
	items := src.items
	ramNote := ""
	if src.ram != nil {
		if why := c.ramReachable(src, &vm); why != "" {
			if op.Spec.Restore.Mode == v1alpha1.SnapshotOperationModeStrict {
				return fail(v1alpha1.VMOPReasonOperationFailed, why+" (mode Strict; BestEffort restores the disks and the spec without it, and the VM boots from them)")
			}
			src.ram, ramNote = nil, "; without the RAM state: "+why
		}
	}
	var res []v1alpha1.VMOPResourceStatus
	for _, it := range items {
		if it.skip != "" && op.Spec.Restore.Mode == v1alpha1.SnapshotOperationModeStrict {
			return fail(v1alpha1.VMOPReasonOperationFailed, it.skip+" (mode Strict; BestEffort restores the other disks)")
		}
		if it.skip != "" && src.ram != nil {
			// The RAM state belongs to all the disks as they were: never resumed over one
			// that was not restored.
			src.ram, ramNote = nil, "; without the RAM state, as not every disk is restored"
		}
		r := v1alpha1.VMOPResourceStatus{APIVersion: v1alpha1.APIVersion, Kind: "VirtualDisk", Name: it.name, Status: "InProgress"}
		if it.skip != "" {
			r.Status, r.Message = "Failed", "skipped: "+it.skip
		}
		res = append(res, r)
	}
	res = append(res, v1alpha1.VMOPResourceStatus{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachine", Name: vm.Name, Status: "InProgress"})
	if op.Spec.Restore.Mode == v1alpha1.SnapshotOperationModeDryRun {
		for i := range res {
			if res[i].Status == "InProgress" {
				res[i].Status, res[i].Message = "Completed", "would be restored"
			}
		}
		what := "disks and the spec"
		if src.ram != nil {
			what = "disks, the spec and the RAM state"
		}
		return runtime.Result{}, c.writeOp(ctx, op, v1alpha1.VMOPPhaseCompleted, v1alpha1.VMOPReasonOperationCompleted,
			fmt.Sprintf("dry run: %d %s of %q would be restored from %s%s", len(items), what, vm.Name, src.what, ramNote), res)
	}
	if err := c.writeOp(ctx, op, v1alpha1.VMOPPhaseInProgress, "InProgress", "restoring the disks", res); err != nil {
		return runtime.Result{}, err
	}
	// The disks' leases, held for the restore: a start of the VM (or of another VM with one
	// of the disks) waits until the restore has ended instead of opening a file that is
	// being replaced.
	release, busyDisk, err := c.holdDiskLeases(ctx, op, &vm, items)
	if err != nil {
		return runtime.Result{}, err
	}
	defer release()
	if busyDisk != "" {
		release() // the leases go before the outcome is written: a start right after finds them free
		return runtime.Result{}, c.writeOp(ctx, op, v1alpha1.VMOPPhaseFailed, v1alpha1.VMOPReasonNotApplicableForPhase, busyDisk+": stop it and restore again", res)
	}
	if cur, err := c.vmNow(ctx, &vm); err != nil || cur != "" {
		if err != nil {
			return runtime.Result{}, err
		}
		release() // the leases go before the outcome is written: a start right after finds them free
		return runtime.Result{}, c.writeOp(ctx, op, v1alpha1.VMOPPhaseFailed, v1alpha1.VMOPReasonNotApplicableForPhase, cur, res)
	}
	for i, it := range items {
		if it.disk == nil {
			continue
		}
		dst := storage.ClassDiskPath(c.cfg.DataDir, c.classOf(it.disk.Status.StorageClassName), it.disk.UID)
		storage.CleanTempFor(dst)
		size, _ := v1alpha1.Quantity(it.disk.Status.Capacity).Value()
		if err := it.write(ctx, dst, size); err != nil {
			if ctx.Err() != nil {
				return runtime.Result{}, ctx.Err()
			}
			res[i].Status, res[i].Message = "Failed", err.Error()
			release() // the leases go before the outcome is written: a start right after finds them free
			return runtime.Result{}, c.writeOp(ctx, op, v1alpha1.VMOPPhaseFailed, v1alpha1.VMOPReasonOperationFailed,
				fmt.Sprintf("restoring VirtualDisk %q: %v", it.disk.Name, err), res)
		}
		res[i].Status = "Completed"
	}
	// The spec: the source's, under the VM's current resourceVersion (a concurrent edit
	// makes this fail with a conflict and the operation is tried again).
	if src.spec != nil {
		vm.Spec = *src.spec
		if err := c.C.Update(ctx, "virtualmachines", ns, vm.Name, &vm, nil); err != nil {
			if client.IsConflict(err) {
				return runtime.Result{}, err
			}
			res[len(res)-1].Status, res[len(res)-1].Message = "Failed", err.Error()
			release() // the leases go before the outcome is written: a start right after finds them free
			return runtime.Result{}, c.writeOp(ctx, op, v1alpha1.VMOPPhaseFailed, v1alpha1.VMOPReasonOperationFailed,
				"the disks are restored, but setting the VM's spec back failed: "+err.Error(), res)
		}
		res[len(res)-1].Status = "Completed"
	} else {
		res[len(res)-1].Status, res[len(res)-1].Message = "Completed", "the spec is kept: "+src.what+" holds none"
	}
	var skipped []string
	for _, r := range res {
		if r.Status == "Failed" {
			skipped = append(skipped, r.Name)
		}
	}
	msg = fmt.Sprintf("restored %q from %s", vm.Name, src.what)
	if src.ram != nil {
		if err := c.installRAM(ctx, &vm, src); err != nil {
			if ctx.Err() != nil {
				return runtime.Result{}, ctx.Err()
			}
			release() // the leases go before the outcome is written: a start right after finds them free
			return runtime.Result{}, c.writeOp(ctx, op, v1alpha1.VMOPPhaseFailed, v1alpha1.VMOPReasonOperationFailed,
				"the disks and the spec are restored, but the RAM state could not be left to resume ("+err.Error()+"): the VM boots from the restored disks when started", res)
		}
		msg += " with its RAM state: the VM is hibernated, and its next start resumes the guest"
	}
	msg += ramNote
	if len(skipped) > 0 {
		msg += "; skipped " + strings.Join(skipped, ", ")
	}
	release() // the leases go before the outcome is written: a start right after finds them free
	return runtime.Result{}, c.writeOp(ctx, op, v1alpha1.VMOPPhaseCompleted, v1alpha1.VMOPReasonOperationCompleted, msg, res)
}

// restoreItem is one disk a restore writes: the VirtualDisk (nil when skipped, and why) and
// how its data is written into a qcow2 file (made beside it and renamed over it).
type restoreItem struct {
	name  string
	disk  *v1alpha1.VirtualDisk
	skip  string
	write func(ctx context.Context, dst string, size int64) error
}

// restoreSource is what a restore reads: its disks and the VM spec it gives back (nil: none).
type restoreSource struct {
	what  string
	items []restoreItem
	spec  *v1alpha1.VirtualMachineSpec
	// ram is the guest's RAM state kept with a VM snapshot (keepRAM), ramUID the snapshot's
	// uid: the restored VM is left hibernated, to resume it.
	ram    *v1alpha1.SnapshotRAM
	ramUID string
	// vmUID is the uid of the VM the source was taken of ("" : not recorded).
	vmUID string
}

// restoreTarget finds the disk name of the VM's project that a restore writes, if it is still
// the disk (uid) the source was taken of, Ready, and its file is reachable from here; it
// returns the disk or why it is skipped.
func (c *Controller) restoreTarget(ctx context.Context, ns, name, uid string) (*v1alpha1.VirtualDisk, string, error) {
	var d v1alpha1.VirtualDisk
	switch err := c.C.Get(ctx, "virtualdisks", ns, name, &d); {
	case client.IsNotFound(err):
		return nil, fmt.Sprintf("VirtualDisk %q no longer exists", name), nil
	case err != nil:
		return nil, "", err
	case d.UID != uid:
		return nil, fmt.Sprintf("VirtualDisk %q was deleted and made again since it was taken", d.Name), nil
	case d.Status.Phase != v1alpha1.DiskPhaseReady:
		return nil, fmt.Sprintf("VirtualDisk %q is %s, not Ready", d.Name, orPending(string(d.Status.Phase))), nil
	}
	if sc := c.classOf(d.Status.StorageClassName); !c.reachable(sc, d.Status.NodeName) {
		return nil, fmt.Sprintf("VirtualDisk %q is on node %s's local storage, which this controller cannot write", d.Name, d.Status.NodeName), nil
	}
	return &d, "", nil
}

// snapshotRestoreSource reads the VM snapshot name of vm: each of its disk snapshots restores
// the disk it was taken of. A nil source comes with the reason and message to fail with.
func (c *Controller) snapshotRestoreSource(ctx context.Context, vm *v1alpha1.VirtualMachine, snapName string) (*restoreSource, string, string, error) {
	ns := vm.Namespace
	var snap v1alpha1.VirtualMachineSnapshot
	if err := c.C.Get(ctx, "virtualmachinesnapshots", ns, snapName, &snap); err != nil {
		if client.IsNotFound(err) {
			return nil, v1alpha1.VMOPReasonOperationFailed, fmt.Sprintf("VirtualMachineSnapshot %q not found", snapName), nil
		}
		return nil, "", "", err
	}
	switch {
	case snap.Spec.VirtualMachineName != vm.Name:
		return nil, v1alpha1.VMOPReasonOperationFailed, fmt.Sprintf("VirtualMachineSnapshot %q is of VirtualMachine %q, not %q", snapName, snap.Spec.VirtualMachineName, vm.Name), nil
	case snap.Status.Phase != v1alpha1.SnapshotPhaseReady || snap.Status.VirtualMachineSpec == nil:
		return nil, v1alpha1.VMOPReasonOperationFailed, fmt.Sprintf("VirtualMachineSnapshot %q is not Ready (it is %s)", snapName, orPending(string(snap.Status.Phase))), nil
	}
	src := &restoreSource{what: fmt.Sprintf("VirtualMachineSnapshot %q", snapName), spec: snap.Status.VirtualMachineSpec, ram: snap.Status.RAM, ramUID: snap.UID, vmUID: snap.Status.VirtualMachineUID}
	for _, sn := range snap.Status.VirtualDiskSnapshotNames {
		var ds v1alpha1.VirtualDiskSnapshot
		if err := c.C.Get(ctx, "virtualdisksnapshots", ns, sn, &ds); err != nil {
			if client.IsNotFound(err) {
				return nil, v1alpha1.VMOPReasonOperationFailed, fmt.Sprintf("VirtualDiskSnapshot %q of the snapshot is gone", sn), nil
			}
			return nil, "", "", err
		}
		if ds.Status.Phase != v1alpha1.SnapshotPhaseReady {
			return nil, v1alpha1.VMOPReasonOperationFailed, fmt.Sprintf("VirtualDiskSnapshot %q of the snapshot is not Ready", sn), nil
		}
		d, skip, err := c.restoreTarget(ctx, ns, ds.Spec.VirtualDiskName, ds.Status.VirtualDiskUID)
		if err != nil {
			return nil, "", "", err
		}
		from := storage.SnapshotPath(c.cfg.DataDir, c.classOf(ds.Status.StorageClassName), ds.UID)
		taken, _ := ds.Status.Size.Value()
		src.items = append(src.items, restoreItem{name: ds.Spec.VirtualDiskName, disk: d, skip: skip,
			write: func(ctx context.Context, dst string, size int64) error {
				// A disk grown since keeps its size (the space after the snapshot's data
				// reads as zeros), as its status says.
				resizeTo := int64(0)
				if size > taken && taken > 0 {
					resizeTo = size
				}
				return storage.ConvertResize(ctx, from, "qcow2", dst, "qcow2", resizeTo)
			}})
	}
	return src, "", "", nil
}

// backupRestoreSource reads the backup name of vm from its target: each backed-up disk
// restores the disk it was taken of, and the VM gets the spec the backup recorded. The
// control plane reads the target's directory itself (a shared mount, or this node's own).
func (c *Controller) backupRestoreSource(ctx context.Context, vm *v1alpha1.VirtualMachine, name string) (*restoreSource, string, string, error) {
	ns := vm.Namespace
	what := fmt.Sprintf("VirtualMachineBackup %q", name)
	failed := v1alpha1.VMOPReasonOperationFailed
	var b v1alpha1.VirtualMachineBackup
	if err := c.C.Get(ctx, "virtualmachinebackups", ns, name, &b); err != nil {
		if client.IsNotFound(err) {
			return nil, failed, what + " not found", nil
		}
		return nil, "", "", err
	}
	switch {
	case b.Spec.VirtualMachineName != vm.Name:
		return nil, failed, fmt.Sprintf("%s is of VirtualMachine %q, not %q", what, b.Spec.VirtualMachineName, vm.Name), nil
	case b.Status.Phase != v1alpha1.BackupPhaseCompleted:
		return nil, failed, fmt.Sprintf("%s is not Completed (it is %s)", what, orPending(string(b.Status.Phase))), nil
	}
	var t v1alpha1.BackupTarget
	if err := c.C.Get(ctx, "backuptargets", "", b.Spec.BackupTargetName, &t); err != nil || t.Spec.Directory == nil {
		if err != nil && !client.IsNotFound(err) {
			return nil, "", "", err
		}
		return nil, failed, fmt.Sprintf("the BackupTarget %q of %s is gone", b.Spec.BackupTargetName, what), nil
	}
	store := &backup.Store{Dir: t.Spec.Directory.Path}
	m, _, err := store.ReadManifestOf(ns, b.Status.VirtualMachineUID, string(b.UID))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, failed, fmt.Sprintf("the manifest of %s is not in %s as node %s sees it (it was written on node %s; the directory must be shared, or this node's own)", what, t.Spec.Directory.Path, c.cfg.NodeName, b.Status.NodeName), nil
		}
		return nil, failed, fmt.Sprintf("the manifest of %s: %v", what, err), nil
	}
	src := &restoreSource{what: what}
	if len(m.VMSpec) > 0 {
		var spec v1alpha1.VirtualMachineSpec
		if err := json.Unmarshal(m.VMSpec, &spec); err != nil {
			return nil, failed, fmt.Sprintf("the VM spec recorded in %s cannot be read: %v", what, err), nil
		}
		src.spec = &spec
	}
	for _, bd := range m.Disks {
		d, skip, err := c.restoreTarget(ctx, ns, bd.Name, bd.UID)
		if err != nil {
			return nil, "", "", err
		}
		src.items = append(src.items, restoreItem{name: bd.Name, disk: d, skip: skip,
			write: func(ctx context.Context, dst string, size int64) error {
				return store.RestoreDiskFile(ctx, bd, dst, size)
			}})
	}
	return src, "", "", nil
}

// backupRunning names a backup of vm that is being taken, or "".
func (c *Controller) backupRunning(ctx context.Context, vm *v1alpha1.VirtualMachine) (string, error) {
	list, err := c.C.List(ctx, "virtualmachinebackups", vm.Namespace, client.ListOptions{})
	if err != nil {
		return "", err
	}
	for _, raw := range list.Items {
		var b v1alpha1.VirtualMachineBackup
		if err := json.Unmarshal(raw, &b); err != nil {
			return "", err
		}
		if b.Spec.VirtualMachineName == vm.Name && b.Status.Phase == v1alpha1.BackupPhaseInProgress {
			return b.Name, nil
		}
	}
	return "", nil
}

// ramReachable says why the RAM state of src cannot be left to resume from here ("" when it
// can): the control plane leaves it in the VM's run directory on its own node.
func (c *Controller) ramReachable(src *restoreSource, vm *v1alpha1.VirtualMachine) string {
	if src.vmUID != vm.UID {
		return fmt.Sprintf("the RAM state of %s is of an earlier VirtualMachine named %q (uid %s), not of this one", src.what, vm.Name, src.vmUID)
	}
	if src.ram.NodeName != c.cfg.NodeName {
		return fmt.Sprintf("the RAM state of %s is kept on node %s, and a restore with RAM runs only on the node that keeps it (this control plane runs on %s)", src.what, src.ram.NodeName, c.cfg.NodeName)
	}
	if _, err := os.Stat(filepath.Join(storage.SnapshotRAMDir(c.cfg.DataDir, src.ramUID), "meta.json")); err != nil {
		return fmt.Sprintf("the RAM state of %s is missing on node %s", src.what, c.cfg.NodeName)
	}
	return ""
}

// installRAM leaves the restored VM hibernated with the RAM state of src: a file in its run
// directory names the snapshot (the agent resumes from the snapshot's state), and the VM's
// status says Hibernated on this node. The VM is Stopped and bound to no node, so no agent
// writes these fields meanwhile; the write is guarded by them and by the phase.
func (c *Controller) installRAM(ctx context.Context, vm *v1alpha1.VirtualMachine, src *restoreSource) error {
	path := storage.ResumeFromSnapshotPath(c.cfg.DataDir, vm.UID)
	_ = os.RemoveAll(filepath.Dir(path))
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(src.ramUID+"\n"), 0o600); err != nil {
		return err
	}
	if err := storage.Commit(tmp, path); err != nil {
		return err
	}
	moved := false
	_, err := runtime.UpdateVMStatus(ctx, c.C, vm.Namespace, vm.Name, vm.UID, []string{"stateNodeName", "conditions"}, []string{"phase", "nodeName"}, func(cur *v1alpha1.VirtualMachine) error {
		if cur.Status.Phase != v1alpha1.VMPhaseStopped || cur.Status.NodeName != "" {
			moved = true
			return fmt.Errorf("the VM is no longer stopped (%s)", orPending(string(cur.Status.Phase)))
		}
		cur.Status.StateNodeName = c.cfg.NodeName
		v1alpha1.SetCondition(&cur.Status.Conditions, v1alpha1.Condition{Type: v1alpha1.VMConditionHibernated, Status: v1alpha1.ConditionTrue,
			Reason: ReasonSnapshotRestored, Message: fmt.Sprintf("restored from %s with its RAM state (%s), kept on node %s: the next start resumes the guest; start it with --force to boot from the disks instead", src.what, src.ram.Size, c.cfg.NodeName)})
		return nil
	})
	if moved || errors.Is(err, runtime.ErrVMGone) {
		_ = os.RemoveAll(filepath.Dir(path))
	}
	return err
}

// ReasonSnapshotRestored is the reason of the Hibernated condition of a VM restored from a
// snapshot with its RAM state.
const ReasonSnapshotRestored = "SnapshotRestored"

// restoreHolder is the holder of the disk leases a restore takes (not a node's name: no
// agent takes them meanwhile, and the restore's operation uid is the instance).
const restoreHolder = "rakhsh-restore"

// holdDiskLeases takes the leases of the disks items writes for the restore op. busy names a
// disk in use (its lease held by a VM's node); release gives back what was taken.
func (c *Controller) holdDiskLeases(ctx context.Context, op *v1alpha1.VirtualMachineOperation, vm *v1alpha1.VirtualMachine, items []restoreItem) (release func(), busy string, err error) {
	var held []string
	c.restoring.Store(op.UID, true)
	release = func() {
		defer c.restoring.Delete(op.UID)
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		for _, n := range held {
			if _, err := runtime.ReleaseDiskLease(rctx, c.C, op.Namespace, n, restoreHolder, op.UID, "the restore "+op.Name+" ended"); err != nil {
				c.Log.Warn("giving back a disk lease after a restore", "disk", op.Namespace+"/"+n, "err", err)
			}
		}
		held = nil // given back once
	}
	for _, it := range items {
		if it.disk == nil {
			continue
		}
		_, err := runtime.AcquireDiskLease(ctx, c.C, op.Namespace, it.disk.Name, restoreHolder, vm.Name, op.UID, time.Now(), nil)
		if errors.Is(err, runtime.ErrDiskLeaseHeld) {
			return release, fmt.Sprintf("VirtualDisk %q is in use (%v)", it.disk.Name, err), nil
		}
		if err != nil {
			release()
			return func() {}, "", err
		}
		held = append(held, it.disk.Name)
	}
	return release, "", nil
}

// vmNow says why the VM of a restore is no longer fit for it ("" when it still is: the same
// VM, Stopped, on no node), read afresh once the disks' leases are held.
func (c *Controller) vmNow(ctx context.Context, vm *v1alpha1.VirtualMachine) (string, error) {
	var cur v1alpha1.VirtualMachine
	if err := c.C.Get(ctx, "virtualmachines", vm.Namespace, vm.Name, &cur); err != nil {
		if client.IsNotFound(err) {
			return fmt.Sprintf("virtual machine %q is gone", vm.Name), nil
		}
		return "", err
	}
	if cur.UID != vm.UID || cur.Status.Phase != v1alpha1.VMPhaseStopped || cur.Status.NodeName != "" {
		return fmt.Sprintf("virtual machine %q started meanwhile (it is %s)", vm.Name, orPending(string(cur.Status.Phase))), nil
	}
	return "", nil
}

// restoredWithRAM completes a restore with RAM whose every step was done by an earlier run
// that ended before it wrote the outcome: the VM is hibernated from this snapshot.
func (c *Controller) restoredWithRAM(ctx context.Context, op *v1alpha1.VirtualMachineOperation, vm *v1alpha1.VirtualMachine, src *restoreSource) (bool, error) {
	if op.Status.Phase != v1alpha1.VMOPPhaseInProgress || src.ram == nil {
		return false, nil
	}
	cond := v1alpha1.FindCondition(vm.Status.Conditions, v1alpha1.VMConditionHibernated)
	if cond == nil || cond.Status != v1alpha1.ConditionTrue || cond.Reason != ReasonSnapshotRestored {
		return false, nil
	}
	b, err := os.ReadFile(storage.ResumeFromSnapshotPath(c.cfg.DataDir, vm.UID))
	if err != nil || strings.TrimSpace(string(b)) != src.ramUID {
		return false, nil
	}
	return true, c.writeOp(ctx, op, v1alpha1.VMOPPhaseCompleted, v1alpha1.VMOPReasonOperationCompleted,
		fmt.Sprintf("restored %q from %s with its RAM state: the VM is hibernated, and its next start resumes the guest", vm.Name, src.what), nil)
}

// restoreLeaseSweep is how often the leases of restores that are gone are looked for.
var restoreLeaseSweep = time.Minute

// sweepRestoreLeases gives back, now and then, the disk leases a restore took and could not
// give back itself: its operation was deleted while it ran (or the process ended and the
// operation went before it ran again). A lease left so would keep the VM from starting.
func (c *Controller) sweepRestoreLeases(ctx context.Context) {
	runtime.Ticks(ctx, restoreLeaseSweep, func() { c.sweepRestoreLeasesOnce(ctx) })
}

func (c *Controller) sweepRestoreLeasesOnce(ctx context.Context) {
	list, err := c.C.List(ctx, runtime.DiskLeaseResource, "", client.ListOptions{})
	if err != nil {
		return
	}
	running := map[string]bool{}
	for _, op := range c.ops.List() {
		if op.Spec.Type == v1alpha1.VMOPTypeRestore && op.DeletionTimestamp == nil &&
			(op.Status.Phase == "" || op.Status.Phase == v1alpha1.VMOPPhasePending || op.Status.Phase == v1alpha1.VMOPPhaseInProgress) {
			running[op.UID] = true
		}
	}
	for _, raw := range list.Items {
		var l v1alpha1.VirtualDiskLease
		if json.Unmarshal(raw, &l) != nil || l.Spec.HolderNode != restoreHolder || running[l.Spec.VirtualMachineUID] {
			continue
		}
		if _, ours := c.restoring.Load(l.Spec.VirtualMachineUID); ours {
			continue // a restore of this process still writes (its operation may be gone)
		}
		if ok, err := runtime.ReleaseDiskLease(ctx, c.C, l.Namespace, l.Name, restoreHolder, l.Spec.VirtualMachineUID, "its restore is gone"); err == nil && ok {
			c.Log.Info("gave back the disk lease of a restore that is gone", "disk", l.Namespace+"/"+l.Name)
		}
	}
}
