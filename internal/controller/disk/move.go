package disk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// Reasons of the Migrating condition (a move between storage classes).
const (
	ReasonMoving          = "Moving"
	ReasonMoved           = v1alpha1.DiskReasonMoved
	ReasonMoveWaiting     = "WaitingForVMToStop"
	ReasonMoveFailed      = v1alpha1.DiskReasonMoveFailed
	ReasonMoveUnsupported = "MoveNotSupported"
	ReasonMovingOnNode    = v1alpha1.DiskReasonMovingOnNode
)

// reconcileMove moves a Ready disk into the storage class its spec now names, when that
// differs from the class it lives in (status.storageClassName). done says the move decided
// this reconcile (it wrote status or waits).
//
// The move copies the disk into the new class (flattened: a linked clone becomes a whole
// disk, whose file needs no backing file in the old place), checks the copy against the
// original with qemu-img compare, switches status to the new class, and only then removes
// the old file. A move that fails leaves the disk where it was, Ready, with condition
// Migrating=False saying why; it is tried again when the spec changes.
func (c *Controller) reconcileMove(ctx context.Context, d *v1alpha1.VirtualDisk, st v1alpha1.VirtualDiskStatus, sc *v1alpha1.StorageClass) (bool, runtime.Result, error) {
	want := c.specClass(d)
	cond := v1alpha1.FindCondition(st.Conditions, v1alpha1.DiskConditionMigrating)
	movingOnNode := st.Phase == v1alpha1.DiskPhaseMigrating && cond != nil && cond.Status == v1alpha1.ConditionTrue && cond.Reason == ReasonMovingOnNode
	if st.MoveSourceNodeName != "" && !movingOnNode {
		// The node that copied a disk from another node's Local storage gave up (MoveFailed,
		// written by its agent) or the move was cut short otherwise: the disk stays where its
		// file is, on the source node. The failed move waits for a spec change.
		st.NodeName, st.MoveSourceNodeName = st.MoveSourceNodeName, ""
		st.Phase = v1alpha1.DiskPhaseReady
		st.Progress = "100%"
		if cond == nil || cond.Status != v1alpha1.ConditionFalse || cond.Reason != ReasonMoveFailed {
			setCond(&st, d, v1alpha1.DiskConditionMigrating, v1alpha1.ConditionFalse, ReasonMoveFailed,
				"the move was interrupted; the disk stays in storage class "+st.StorageClassName+" on node "+st.NodeName)
		}
		return true, runtime.Result{}, c.writeStatusGuarded(ctx, d, st)
	}
	storageNode, moveTo := d.Annotations[v1alpha1.AnnotationStorageNode], d.Annotations[v1alpha1.AnnotationMoveToNode]
	if movingOnNode {
		wanted := want != "" && want != st.StorageClassName
		if st.MoveSourceNodeName != "" {
			// Between two nodes: to another class, while the storage-node annotation names the
			// copying node; within the class, while move-to-node does.
			wanted = (wanted && storageNode == st.NodeName) || (!wanted && moveTo == st.NodeName)
		}
		if wanted {
			return true, runtime.Result{}, nil // a node's agent moves the disk and writes its status
		}
		// The spec names the disk's class again (or, for a move between nodes, the annotation
		// no longer names the copying node): the move is called off (a node that never took
		// it up, e.g. one that is down, does not hold the disk forever). The agent's end of
		// it, if it comes, fails its resourceVersion guard.
		st.Phase = v1alpha1.DiskPhaseReady
		st.Progress = "100%"
		if sc := c.homeClass(d); sc != nil && !isLocal(sc) {
			st.NodeName = ""
		}
		msg := "the move was called off (the spec names storage class " + st.StorageClassName + " again); the disk stays there"
		if st.MoveSourceNodeName != "" {
			st.NodeName, st.MoveSourceNodeName = st.MoveSourceNodeName, ""
			msg = "the move was called off; the disk stays in storage class " + st.StorageClassName + " on node " + st.NodeName
		}
		// The generation of the hand-over, not the current one: a request made since (another
		// node) is not taken for the one that was called off, and goes ahead.
		v1alpha1.SetCondition(&st.Conditions, v1alpha1.Condition{Type: v1alpha1.DiskConditionMigrating, Status: v1alpha1.ConditionFalse,
			Reason: ReasonMoveFailed, Message: msg, ObservedGeneration: cond.ObservedGeneration})
		// Guarded by the resourceVersion read: the copying node's end, if it landed first,
		// stands, and this reconcile runs again on what it wrote.
		return true, runtime.Result{}, c.writeStatusGuarded(ctx, d, st)
	}
	// A move to another node's Local storage within one class is asked for by the
	// move-to-node annotation, which is taken off once the disk is Ready on that node or the
	// move to it failed: a request, never a standing rule (a live migration may take the disk
	// elsewhere later).
	if want == "" {
		want = st.StorageClassName // the class the disk lives in stands for a spec naming none
	} else if want != st.StorageClassName {
		moveTo = "" // a move to another class names its node with storage-node
	}
	nodeMove := want == st.StorageClassName && isLocal(sc) && moveTo != "" && st.NodeName != "" && moveTo != st.NodeName
	if st.Phase == v1alpha1.DiskPhaseReady && moveTo != "" && (moveTo == st.NodeName ||
		(nodeMove && cond != nil && cond.Status == v1alpha1.ConditionFalse && cond.Reason == ReasonMoveFailed && cond.ObservedGeneration == d.Generation)) {
		return true, runtime.Result{}, c.dropMoveToNode(ctx, d)
	}
	if want == "" || (want == st.StorageClassName && !nodeMove) || (st.Phase != v1alpha1.DiskPhaseReady && st.Phase != v1alpha1.DiskPhaseMigrating) {
		if st.Phase == v1alpha1.DiskPhaseMigrating {
			// A move cut short (a restart mid-copy, or the spec changed back): the disk is
			// still whole where its status says.
			st.Phase = v1alpha1.DiskPhaseReady
			st.Progress = "100%"
			setCond(&st, d, v1alpha1.DiskConditionMigrating, v1alpha1.ConditionFalse, ReasonMoveFailed, "the move was interrupted; the disk stays in storage class "+st.StorageClassName)
			return true, runtime.Result{}, c.writeStatus(ctx, d, st)
		}
		return false, runtime.Result{}, nil
	}
	if cond != nil && cond.Status == v1alpha1.ConditionFalse && (cond.Reason == ReasonMoveFailed || cond.Reason == ReasonMoveUnsupported) &&
		cond.ObservedGeneration == d.Generation && st.Phase == v1alpha1.DiskPhaseReady {
		return true, runtime.Result{}, nil // waits for a spec change
	}
	from := st.StorageClassName
	wait := func(reason, msg string, after time.Duration) (bool, runtime.Result, error) {
		st.Phase = v1alpha1.DiskPhaseReady
		setCond(&st, d, v1alpha1.DiskConditionMigrating, v1alpha1.ConditionFalse, reason, msg)
		return true, runtime.Result{RequeueAfter: after}, c.writeStatus(ctx, d, st)
	}
	target, ok := c.classes.Get(runtime.NewKey("", want))
	if !ok || target.DeletionTimestamp != nil {
		return wait(ReasonStorageClassMissing, fmt.Sprintf("cannot move to StorageClass %q: it does not exist; the disk stays in %q", want, from), 0)
	}
	for _, a := range st.AttachedToVirtualMachines {
		if a.Mounted {
			return wait(ReasonMoveWaiting, fmt.Sprintf("the move to storage class %q waits for VirtualMachine %q to stop: a disk is moved only while no running VM uses it", want, a.Name), 0)
		}
	}
	// The VMs as stored now, not as the cache last saw them: a VM starting with the disk
	// stops the move before anything is written.
	if vm, hibernated, err := c.runningUser(ctx, d); err != nil {
		return true, runtime.Result{}, err
	} else if hibernated {
		return wait(ReasonMoveWaiting, fmt.Sprintf("the move to storage class %q waits for VirtualMachine %q, which is hibernated: its saved state resumes with the disk where it is (start it, or discard the state with rakhsh vm start --force)", want, vm), 30*time.Second)
	} else if vm != "" {
		return wait(ReasonMoveWaiting, fmt.Sprintf("the move to storage class %q waits for VirtualMachine %q to stop: a disk is moved only while no running VM uses it", want, vm), 5*time.Second)
	}
	// Who can see both ends: this controller sees its own node's Local storage and Shared
	// storage; a node's agent sees that node's Local storage and Shared storage.
	srcNode, dstNode := "", ""
	if isLocal(sc) {
		srcNode = st.NodeName
	}
	if isLocal(target) {
		dstNode = storageNode
		if nodeMove {
			dstNode = moveTo
		}
		if dstNode == "" {
			dstNode = srcNode
		}
		if dstNode == "" {
			dstNode = c.cfg.NodeName
		}
	}
	switch {
	case (srcNode == "" || srcNode == c.cfg.NodeName) && (dstNode == "" || dstNode == c.cfg.NodeName):
		// This controller copies.
	case srcNode != "" && dstNode != "" && srcNode != dstNode:
		// From one node's Local storage to another's: the target node's agent fetches the
		// disk from the source node's agent, through the API (its data subresource).
		return c.delegateMove(ctx, d, st, from, want, dstNode, srcNode)
	default:
		node := srcNode
		if node == "" {
			node = dstNode
		}
		return c.delegateMove(ctx, d, st, from, want, node, "")
	}
	src := c.diskPath(sc, d.UID)
	dst := c.diskPath(target, d.UID)
	if src == dst {
		// Two classes over one directory (e.g. Local without a path and a Local class
		// naming the default pool): only the status changes.
		st.StorageClassName = target.Name
		st.NodeName = dstNode
		setCond(&st, d, v1alpha1.DiskConditionMigrating, v1alpha1.ConditionFalse, ReasonMoved, fmt.Sprintf("moved from storage class %q to %q (the same directory)", from, want))
		return true, runtime.Result{}, c.writeStatus(ctx, d, st)
	}
	if !fileExists(src) {
		return false, runtime.Result{}, nil // the disk is lost or not made yet: reconcile says so
	}

	started := time.Now()
	st.Phase = v1alpha1.DiskPhaseMigrating
	st.Progress = "0%"
	setCond(&st, d, v1alpha1.DiskConditionMigrating, v1alpha1.ConditionTrue, ReasonMoving, fmt.Sprintf("copying the disk from storage class %q to %q", from, want))
	if err := c.writeStatus(ctx, d, st); err != nil {
		return true, runtime.Result{}, err
	}
	log := c.Log.With("disk", d.Namespace+"/"+d.Name, "from", from, "to", want)
	err := c.copyVerified(ctx, src, dst)
	if err != nil {
		storage.CleanTempFor(dst)
		if ctx.Err() != nil {
			return true, runtime.Result{}, ctx.Err()
		}
		log.Warn("moving the disk failed", "err", err)
		st.Phase = v1alpha1.DiskPhaseReady
		st.Progress = "100%"
		msg := fmt.Sprintf("moving to storage class %q failed; the disk stays in %q: %v", want, from, err)
		setCond(&st, d, v1alpha1.DiskConditionMigrating, v1alpha1.ConditionFalse, ReasonMoveFailed, msg)
		c.Rec.Event(ctx, "VirtualDisk", d, "Warning", ReasonMoveFailed, msg)
		return true, runtime.Result{}, c.writeStatus(ctx, d, st)
	}
	st.Phase = v1alpha1.DiskPhaseReady
	st.Progress = "100%"
	st.StorageClassName = target.Name
	st.NodeName = dstNode
	took := time.Since(started).Round(time.Millisecond)
	msg := fmt.Sprintf("moved from storage class %q to %q in %s", from, want, took)
	setCond(&st, d, v1alpha1.DiskConditionMigrating, v1alpha1.ConditionFalse, ReasonMoved, msg)
	if err := c.writeStatus(ctx, d, st); err != nil {
		// A write whose answer was lost may have been applied: the copy is removed only when
		// the status, read again, still names the old class (whose file is untouched); the
		// next try makes it again. Otherwise both files stay, and the next pass decides.
		var now v1alpha1.VirtualDisk
		if gerr := c.C.Get(ctx, "virtualdisks", d.Namespace, d.Name, &now); gerr == nil && now.UID == d.UID && now.Status.StorageClassName == from {
			_ = os.Remove(dst)
		}
		return true, runtime.Result{}, err
	}
	// A VM that started from the old file in spite of the checks (it read the disk Ready just
	// before the move began) holds QEMU's image lock on it: then the old file is kept, not
	// removed from under the VM.
	if _, err := storage.Info(ctx, src, "qcow2"); storage.IsLocked(err) {
		log.Warn("the disk's old file is open in a QEMU: it is kept", "path", src)
		c.Rec.Event(ctx, "VirtualDisk", d, "Warning", "OldFileInUse", fmt.Sprintf(
			"the disk moved to storage class %q, but a QEMU still had its old file %s open: the old file is kept; stop that VM and remove the file", want, src))
	} else if err := os.Remove(src); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Warn("removing the disk's old file after the move", "path", src, "err", err)
	}
	log.Info("disk moved", "took", took)
	c.Rec.Event(ctx, "VirtualDisk", d, "Normal", ReasonMoved, msg)
	return true, runtime.Result{}, nil
}

// dropMoveToNode takes the move-to-node annotation off (guarded by the resourceVersion read);
// the change bumps the disk's generation.
func (c *Controller) dropMoveToNode(ctx context.Context, d *v1alpha1.VirtualDisk) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"resourceVersion": d.ResourceVersion,
		"annotations": map[string]any{v1alpha1.AnnotationMoveToNode: nil}}})
	if err != nil {
		return err
	}
	if err := c.C.Patch(ctx, "virtualdisks", d.Namespace, d.Name, patch, nil); err != nil && !client.IsNotFound(err) {
		return fmt.Errorf("taking the annotation %s off: %w", v1alpha1.AnnotationMoveToNode, err)
	}
	return nil
}

// copyVerified writes a flattened copy of the qcow2 disk src to dst (replacing a leftover
// from an earlier try) and checks that the guest sees the same data in both.
func (c *Controller) copyVerified(ctx context.Context, src, dst string) error {
	if err := os.Remove(dst); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := storage.Convert(ctx, src, "qcow2", dst, "qcow2"); err != nil {
		return fmt.Errorf("copying: %w", err)
	}
	if err := storage.Compare(ctx, src, dst); err != nil {
		_ = os.Remove(dst)
		return fmt.Errorf("checking the copy: %w", err)
	}
	return nil
}

// runningUser returns a VM of the disk's project, read from the API, that lists the disk and
// whose QEMU may have it open or is about to (bound to a node, or in a running phase), or
// that is hibernated (its saved state needs the disk where it is); "" if none.
func (c *Controller) runningUser(ctx context.Context, d *v1alpha1.VirtualDisk) (name string, hibernated bool, err error) {
	l, err := c.C.List(ctx, "virtualmachines", d.Namespace, client.ListOptions{})
	if err != nil {
		return "", false, fmt.Errorf("listing the VMs of project %s: %w", d.Namespace, err)
	}
	for _, raw := range l.Items {
		var vm v1alpha1.VirtualMachine
		if err := json.Unmarshal(raw, &vm); err != nil {
			return "", false, err
		}
		uses := false
		for _, b := range vm.Spec.BlockDeviceRefs {
			uses = uses || (b.Kind == v1alpha1.BlockDeviceKindVirtualDisk && b.Name == d.Name)
		}
		if !uses {
			continue
		}
		if v1alpha1.IsHibernated(&vm) {
			// Its saved state resumes on its node with its disks as they were: the disk stays
			// until the VM has resumed or its state is discarded (rakhsh vm start --force).
			return vm.Name, true, nil
		}
		switch vm.Status.Phase {
		case v1alpha1.VMPhaseStarting, v1alpha1.VMPhaseRunning, v1alpha1.VMPhasePause, v1alpha1.VMPhaseStopping,
			v1alpha1.VMPhaseMigrating, v1alpha1.VMPhaseDegraded:
			return vm.Name, false, nil
		case v1alpha1.VMPhaseStopped:
		default:
			if vm.Status.NodeName != "" {
				return vm.Name, false, nil // bound: its agent is about to start it
			}
		}
	}
	return "", false, nil
}

// delegateMove hands a move whose ends this controller cannot both see to the agent of node:
// the disk goes to phase Migrating with condition Migrating=True reason MovingOnNode and
// status.nodeName naming the node (so that its agent may write the disk's status). The agent
// copies and checks the disk, then writes the new class and node, or MoveFailed and the disk
// back where it was. With source set (the disk's file is on another node's Local storage),
// status.moveSourceNodeName names that node: node's agent fetches the file from it.
func (c *Controller) delegateMove(ctx context.Context, d *v1alpha1.VirtualDisk, st v1alpha1.VirtualDiskStatus, from, want, node, source string) (bool, runtime.Result, error) {
	var n v1alpha1.Node
	if err := c.C.Get(ctx, "nodes", "", node, &n); err != nil {
		if client.IsNotFound(err) {
			st.Phase = v1alpha1.DiskPhaseReady
			setCond(&st, d, v1alpha1.DiskConditionMigrating, v1alpha1.ConditionFalse, ReasonMoveFailed, fmt.Sprintf("cannot move to storage class %q on node %s: there is no such node", want, node))
			return true, runtime.Result{}, c.writeStatus(ctx, d, st)
		}
		return true, runtime.Result{}, err
	}
	st.Phase = v1alpha1.DiskPhaseMigrating
	st.Progress = "0%"
	st.NodeName = node
	st.MoveSourceNodeName = source
	msg := fmt.Sprintf("node %s's agent copies the disk from storage class %q to %q", node, from, want)
	if source != "" {
		msg = fmt.Sprintf("node %s's agent copies the disk from storage class %q on node %s to %q", node, from, source, want)
	}
	setCond(&st, d, v1alpha1.DiskConditionMigrating, v1alpha1.ConditionTrue, ReasonMovingOnNode, msg)
	c.Log.Info("a node's agent moves the disk", "disk", d.Namespace+"/"+d.Name, "node", node, "source", source, "from", from, "to", want)
	return true, runtime.Result{}, c.writeStatusGuarded(ctx, d, st)
}
