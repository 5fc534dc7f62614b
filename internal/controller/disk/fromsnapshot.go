package disk

import (
	"fmt"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// Condition reasons of a disk made from a snapshot.
const (
	ReasonSnapshotNotFound = "VirtualDiskSnapshotNotFound"
	ReasonSnapshotNotReady = "VirtualDiskSnapshotNotReady"
)

// snapshotSource returns the Ready VirtualDiskSnapshot a disk is made from, or why it waits.
// The disk is a linked clone of the snapshot's file (cloneMode Linked, the default) when it is
// in the same storage class directory, else a full copy (the snapshot may then be deleted).
func (c *Controller) snapshotSource(d *v1alpha1.VirtualDisk) (src *source, reason, msg string) {
	r := d.Spec.DataSource.ObjectRef
	if r.Namespace != "" && r.Namespace != d.Namespace {
		return nil, ReasonNotSupported, fmt.Sprintf("a disk may be made only from snapshots of its own project %q, not %q", d.Namespace, r.Namespace)
	}
	what := fmt.Sprintf("VirtualDiskSnapshot %q", r.Name)
	s, found := c.snaps.Get(runtime.NewKey(d.Namespace, r.Name)) // shared with the cache: only read
	switch {
	case !found:
		return nil, ReasonSnapshotNotFound, fmt.Sprintf("waiting for %s: not found", what)
	case s.DeletionTimestamp != nil:
		return nil, ReasonSnapshotNotReady, what + " is being deleted"
	case s.Status.Phase == v1alpha1.SnapshotPhaseFailed:
		return nil, ReasonSnapshotNotReady, what + " failed; make the disk from another snapshot"
	case s.Status.Phase != v1alpha1.SnapshotPhaseReady:
		phase := string(s.Status.Phase)
		if phase == "" {
			phase = "Pending"
		}
		return nil, ReasonSnapshotNotReady, fmt.Sprintf("waiting for %s to be Ready (it is %s)", what, phase)
	case storage.CheckUID(s.UID) != nil:
		return nil, ReasonSnapshotNotReady, what + " has no valid uid"
	}
	size, err := s.Status.Size.Value()
	if err != nil || size <= 0 {
		return nil, ReasonSnapshotNotReady, what + " reports no size"
	}
	sc, _ := c.classes.Get(runtime.NewKey("", s.Status.StorageClassName))
	if isLocal(sc) && s.Status.NodeName != "" && s.Status.NodeName != c.cfg.NodeName {
		return nil, ReasonNotSupported, fmt.Sprintf("%s is on node %s's local storage, which this controller (on %s) cannot read", what, s.Status.NodeName, c.cfg.NodeName)
	}
	return &source{path: storage.SnapshotPath(c.cfg.DataDir, sc, s.UID), format: "qcow2", virtualSize: size, fromDisk: true,
		snapshotDir: storage.ClassDir(c.cfg.DataDir, sc), snapshotWhat: what}, "", ""
}
