package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// Disk moves the control plane cannot do. The disk controller moves a disk between storage
// classes when its host sees both ends; when one end is another node's Local storage it hands
// the move to that node's agent: the disk is in phase Migrating with condition Migrating=True
// reason MovingOnNode and status.nodeName naming the node. The agent copies the disk into the
// class its spec names (flattened, checked with qemu-img compare), writes the new class and
// node, and only then removes the old file; a failure writes MoveFailed and leaves the disk
// where it was.

// moveDisk carries out a move handed to this node, if the disk key has one, or removes the
// file of a deleted disk on this node's Local storage.
func (a *Agent) moveDisk(ctx context.Context, key runtime.Key) error {
	if err := errors.Join(a.settleDiskExports(ctx), a.settleDiskFetches(ctx)); err != nil { // diskexport.go
		a.log.Warn("cleaning up after disks that moved between nodes", "err", err)
	}
	var d v1alpha1.VirtualDisk
	if found, err := a.getKey(ctx, "virtualdisks", key, &d); !found {
		return err
	}
	if d.DeletionTimestamp != nil {
		return a.removeDiskFile(ctx, &d)
	}
	if a.makingHere(&d) {
		return a.makeDisk(ctx, &d) // diskmake.go
	}
	cond := v1alpha1.FindCondition(d.Status.Conditions, v1alpha1.DiskConditionMigrating)
	if d.Status.Phase != v1alpha1.DiskPhaseMigrating || d.Status.NodeName != a.cfg.NodeName || cond == nil ||
		cond.Status != v1alpha1.ConditionTrue || cond.Reason != v1alpha1.DiskReasonMovingOnNode || storage.CheckUID(d.UID) != nil {
		return nil
	}
	from, want := d.Status.StorageClassName, d.Spec.PersistentVolumeClaim.StorageClassName
	log := a.log.With("disk", string(key), "from", from, "to", want)
	var src, target *v1alpha1.StorageClass
	if err := a.getClass(ctx, from, &src); err != nil {
		return err
	}
	if err := a.getClass(ctx, want, &target); err != nil {
		return err
	}
	if source := d.Status.MoveSourceNodeName; source != "" && source != a.cfg.NodeName {
		// From another node: within the disk's class when the spec names none (or the
		// default pool), as the disk controller reads it.
		if want == "" || (target == nil && want == storage.DefaultPool) {
			want, target = from, src
		}
		return a.moveFromNode(ctx, &d, from, want, target)
	}
	return a.moveOnNode(ctx, &d, from, want, src, target, log)
}

// moveOnNode copies disk d from its file in class from (src) to class want (target), both on
// this node, checks the copy, and makes the status name the new file; the old one goes once
// no QEMU has it open.
func (a *Agent) moveOnNode(ctx context.Context, d *v1alpha1.VirtualDisk, from, want string, src, target *v1alpha1.StorageClass, log *slog.Logger) error {
	srcLocal := src == nil || src.Spec.Type == v1alpha1.StorageClassTypeLocal
	fail := func(err error) error {
		log.Warn("moving the disk failed", "err", err)
		back := any(nil) // a disk on Shared storage has no node
		if srcLocal {
			back = a.cfg.NodeName
		}
		msg := fmt.Sprintf("moving to storage class %q on node %s failed; the disk stays in %q: %v", want, a.cfg.NodeName, from, err)
		return a.patchMoved(ctx, d, from, back, v1alpha1.DiskReasonMoveFailed, msg)
	}
	if target == nil {
		return fail(fmt.Errorf("StorageClass %q does not exist", want))
	}
	if target.Spec.Type != v1alpha1.StorageClassTypeLocal && target.Spec.Type != v1alpha1.StorageClassTypeShared {
		return fail(fmt.Errorf("StorageClass %q has type %q, which this agent does not support", want, target.Spec.Type))
	}
	srcPath, _, err := diskHome(d, src, a.cfg.DataDir, a.cfg.NodeName)
	if err != nil {
		return fail(err)
	}
	dst := storage.ClassDiskPath(a.cfg.DataDir, target, d.UID)
	started := time.Now()
	if err := os.Remove(dst); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fail(err)
	}
	if err := storage.Convert(ctx, srcPath, "qcow2", dst, "qcow2"); err != nil {
		storage.CleanTempFor(dst)
		return fail(fmt.Errorf("copying: %w", err))
	}
	if err := storage.Compare(ctx, srcPath, dst); err != nil {
		_ = os.Remove(dst)
		return fail(fmt.Errorf("checking the copy: %w", err))
	}
	node := any(nil)
	if target.Spec.Type == v1alpha1.StorageClassTypeLocal {
		node = a.cfg.NodeName
	}
	took := time.Since(started).Round(time.Millisecond)
	msg := fmt.Sprintf("moved from storage class %q to %q by node %s's agent in %s", from, want, a.cfg.NodeName, took)
	if err := a.patchMoved(ctx, d, want, node, v1alpha1.DiskReasonMoved, msg); err != nil {
		if landed, sure := a.moveLanded(ctx, d, want, node); sure && !landed {
			_ = os.Remove(dst) // the status still names the old file, which is whole
		}
		return err
	}
	if _, err := storage.Info(ctx, srcPath, "qcow2"); storage.IsLocked(err) {
		log.Warn("the disk's old file is open in a QEMU: it is kept", "path", srcPath)
	} else if err := os.Remove(srcPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Warn("removing the disk's old file after the move", "path", srcPath, "err", err)
	}
	log.Info("disk moved", "took", took)
	return nil
}

// getClass reads the StorageClass name into *out (nil when it does not exist; "default",
// the pool before classes, is then the default pool).
func (a *Agent) getClass(ctx context.Context, name string, out **v1alpha1.StorageClass) error {
	*out = nil
	if name == "" {
		return nil
	}
	var sc v1alpha1.StorageClass
	if err := a.c.Get(ctx, "storageclasses", "", name, &sc); err != nil {
		if client.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("reading StorageClass %q: %w", name, err)
	}
	*out = &sc
	return nil
}

// patchMoved ends a move: the disk is Ready in class with node (nil: none), with condition
// Migrating=False for reason. The patch is guarded by the resourceVersion the move started
// from.
func (a *Agent) patchMoved(ctx context.Context, d *v1alpha1.VirtualDisk, class string, node any, reason, msg string) error {
	return a.patchMigrating(ctx, d, map[string]any{"phase": v1alpha1.DiskPhaseReady, "progress": "100%", "storageClassName": class, "nodeName": node, "moveSourceNodeName": nil},
		reason, msg, "the disk's status after the move")
}

// patchMigrating writes the fields in status and Migrating=False for reason (msg) into the
// disk's status, guarded by the resourceVersion the move started from; what names the write
// in an error.
func (a *Agent) patchMigrating(ctx context.Context, d *v1alpha1.VirtualDisk, status map[string]any, reason, msg, what string) error {
	cond := v1alpha1.Condition{Type: v1alpha1.DiskConditionMigrating, Status: v1alpha1.ConditionFalse, Reason: reason, Message: msg,
		ObservedGeneration: d.Generation}
	status["conditions"] = runtime.ConditionsPatch(d.Status.Conditions, []v1alpha1.Condition{cond}, nil, v1alpha1.NewTime(time.Now()))
	body, err := json.Marshal(map[string]any{"metadata": map[string]any{"resourceVersion": d.ResourceVersion}, "status": status})
	if err != nil {
		return err
	}
	if err := a.c.PatchStatusStrategic(ctx, "virtualdisks", d.Namespace, d.Name, body, nil); err != nil {
		return fmt.Errorf("writing %s: %w", what, err)
	}
	return nil
}

// moveFromNode carries out a move from another node's Local storage (status.moveSourceNodeName)
// to this node's: the file is fetched through the API (diskexport.go), and the disk's status
// then names the new class and this node. A source node that cannot be reached is tried again
// (the move is called off by naming the old class in the spec); a refusal or a file that
// fails its checks ends the move with MoveFailed, after which the disk controller gives the
// disk back to the source node.
func (a *Agent) moveFromNode(ctx context.Context, d *v1alpha1.VirtualDisk, from, want string, target *v1alpha1.StorageClass) error {
	source := d.Status.MoveSourceNodeName
	log := a.log.With("disk", d.Namespace+"/"+d.Name, "from", from, "to", want, "source", source)
	giveUp := func(err error) error {
		log.Warn("moving the disk from another node failed", "err", err)
		msg := fmt.Sprintf("moving from storage class %q on node %s to %q on node %s failed; the disk stays on node %s: %v", from, source, want, a.cfg.NodeName, source, err)
		return a.patchMoveFailed(ctx, d, msg)
	}
	if target == nil && from != storage.DefaultPool && want != storage.DefaultPool {
		return giveUp(fmt.Errorf("StorageClass %q does not exist", want))
	}
	if target != nil && target.Spec.Type != v1alpha1.StorageClassTypeLocal {
		return giveUp(fmt.Errorf("StorageClass %q is not Local: a disk is fetched from another node only into this node's Local storage", want))
	}
	dst := storage.ClassDiskPath(a.cfg.DataDir, target, d.UID)
	started := time.Now()
	if err := a.fetchMovedDisk(ctx, d, dst); err != nil {
		var perm *permanentMoveError
		if errors.As(err, &perm) {
			removeStaged(dst, "")
			return giveUp(err)
		}
		return fmt.Errorf("fetching the disk from node %s (tried again): %w", source, err)
	}
	took := time.Since(started).Round(time.Millisecond)
	msg := fmt.Sprintf("moved from storage class %q on node %s to %q on node %s in %s", from, source, want, a.cfg.NodeName, took)
	if err := a.patchMoved(ctx, d, want, a.cfg.NodeName, v1alpha1.DiskReasonMoved, msg); err != nil {
		if landed, _ := a.moveLanded(ctx, d, want, a.cfg.NodeName); landed {
			log.Info("disk moved from another node (the answer to its status write was lost)", "took", took)
		}
		return err // the fetched file is removed later only if the status names another node
	}
	_ = os.Remove(filepath.Join(diskFetchDir(a.cfg.DataDir), d.UID+".json"))
	log.Info("disk moved from another node", "took", took)
	return nil
}

// moveLanded reads the disk's status again after a status write that failed: a write whose
// answer was lost (a timeout, a broken connection) may have been applied, and then the new
// file is the disk's only copy. landed: the status names class and node as a finished move;
// sure: it was read and either names that or still the move's start (the same class and
// node as d's), so the write certainly did not land. Anything else (the read failed, the
// status changed otherwise) is not sure: keep both files and decide on the next pass.
func (a *Agent) moveLanded(ctx context.Context, d *v1alpha1.VirtualDisk, class string, node any) (landed, sure bool) {
	var now v1alpha1.VirtualDisk
	if err := a.c.Get(ctx, "virtualdisks", d.Namespace, d.Name, &now); err != nil || now.UID != d.UID {
		return false, false
	}
	n, _ := node.(string)
	if now.Status.Phase == v1alpha1.DiskPhaseReady && now.Status.StorageClassName == class && now.Status.NodeName == n && now.Status.MoveSourceNodeName == "" {
		return true, true
	}
	unchanged := now.Status.StorageClassName == d.Status.StorageClassName && now.Status.NodeName == d.Status.NodeName &&
		now.Status.MoveSourceNodeName == d.Status.MoveSourceNodeName
	return false, unchanged
}

// patchMoveFailed records that this node gave up a move from another node: the condition
// only, guarded by the disk's resourceVersion; the disk controller then gives the disk back
// to its source node (a node writes no other node's name into a status).
func (a *Agent) patchMoveFailed(ctx context.Context, d *v1alpha1.VirtualDisk, msg string) error {
	return a.patchMigrating(ctx, d, map[string]any{}, v1alpha1.DiskReasonMoveFailed, msg, "the failed move into the disk's status")
}

// removeDiskFile removes the file of a deleted disk on this node's Local storage once the
// disk controller asks (condition Terminating reason WaitingForNode: no VM lists the disk any
// more), and says so (reason FileRemoved), after which the controller lets the disk go.
func (a *Agent) removeDiskFile(ctx context.Context, d *v1alpha1.VirtualDisk) error {
	cond := v1alpha1.FindCondition(d.Status.Conditions, v1alpha1.DiskConditionTerminating)
	if d.Status.NodeName != a.cfg.NodeName || cond == nil || cond.Reason != v1alpha1.DiskReasonWaitingForNode || storage.CheckUID(d.UID) != nil {
		return nil
	}
	var sc *v1alpha1.StorageClass
	if err := a.getClass(ctx, d.Status.StorageClassName, &sc); err != nil {
		return err
	}
	if sc != nil && sc.Spec.Type != v1alpha1.StorageClassTypeLocal {
		return nil
	}
	path, _, err := diskHome(d, sc, a.cfg.DataDir, a.cfg.NodeName)
	if err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing %s: %w", path, err)
	}
	storage.CleanTempFor(path)
	done := v1alpha1.Condition{Type: v1alpha1.DiskConditionTerminating, Status: v1alpha1.ConditionTrue, Reason: v1alpha1.DiskReasonFileRemoved,
		Message: "node " + a.cfg.NodeName + "'s agent removed the disk's file", ObservedGeneration: d.Generation}
	body, err := json.Marshal(map[string]any{"status": map[string]any{
		"conditions": runtime.ConditionsPatch(d.Status.Conditions, []v1alpha1.Condition{done}, nil, v1alpha1.NewTime(time.Now()))}})
	if err != nil {
		return err
	}
	if err := a.c.PatchStatusStrategic(ctx, "virtualdisks", d.Namespace, d.Name, body, nil); err != nil && !client.IsNotFound(err) {
		return fmt.Errorf("writing the disk's status after removing its file: %w", err)
	}
	a.log.Info("removed a deleted disk's file", "disk", d.Namespace+"/"+d.Name, "path", path)
	return nil
}
