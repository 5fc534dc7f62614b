package disk

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/backup"
)

// Reasons of a disk restored from a backup that waits.
const (
	ReasonBackupNotFound = "VirtualMachineBackupNotFound"
	ReasonBackupNotReady = "VirtualMachineBackupNotReady"
)

// backupSource is a backed-up disk a new disk is restored from.
type backupSource struct {
	store *backup.Store
	disk  backup.Disk
	what  string
}

// backupSource finds the backed-up disk a new disk is restored from, or says why it waits.
// The control plane reads the target's directory itself: it must see the directory the
// backup was written to (the same host, or a shared mount).
func (c *Controller) backupSource(ctx context.Context, d *v1alpha1.VirtualDisk) (src *source, reason, msg string) {
	r := d.Spec.DataSource.ObjectRef
	if r.Namespace != "" && r.Namespace != d.Namespace {
		return nil, ReasonNotSupported, fmt.Sprintf("a disk may be restored only from backups of its own project %q, not %q", d.Namespace, r.Namespace)
	}
	what := fmt.Sprintf("VirtualMachineBackup %q", r.Name)
	var b v1alpha1.VirtualMachineBackup
	if err := c.C.Get(ctx, "virtualmachinebackups", d.Namespace, r.Name, &b); err != nil {
		if client.IsNotFound(err) {
			return nil, ReasonBackupNotFound, fmt.Sprintf("waiting for %s: not found", what)
		}
		return nil, ReasonBackupNotReady, fmt.Sprintf("reading %s: %v", what, err)
	}
	switch b.Status.Phase {
	case v1alpha1.BackupPhaseCompleted:
	case v1alpha1.BackupPhaseFailed:
		return nil, ReasonBackupNotReady, what + " failed; restore from another backup"
	default:
		return nil, ReasonBackupNotReady, fmt.Sprintf("waiting for %s to complete (it is %s)", what, phaseOrPending(string(b.Status.Phase)))
	}
	var t v1alpha1.BackupTarget
	if err := c.C.Get(ctx, "backuptargets", "", b.Spec.BackupTargetName, &t); err != nil || t.Spec.Directory == nil {
		return nil, ReasonBackupNotReady, fmt.Sprintf("the BackupTarget %q of %s cannot be read: %v", b.Spec.BackupTargetName, what, err)
	}
	if _, err := os.Stat(filepath.Join(t.Spec.Directory.Path, "manifests")); err != nil {
		return nil, ReasonNotSupported, fmt.Sprintf("the directory %s of BackupTarget %q is not reachable from node %s, where disks are restored (use a directory shared by the nodes)", t.Spec.Directory.Path, t.Name, c.cfg.NodeName)
	}
	store := &backup.Store{Dir: t.Spec.Directory.Path}
	m, _, err := store.ReadManifestOf(b.Namespace, b.Status.VirtualMachineUID, string(b.UID))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, ReasonNotSupported, fmt.Sprintf("the manifest of %s is not in %s as node %s sees it (it was written on node %s)", what, t.Spec.Directory.Path, c.cfg.NodeName, b.Status.NodeName)
		}
		return nil, ReasonBackupNotReady, fmt.Sprintf("the manifest of %s: %v", what, err)
	}
	var names []string
	for _, bd := range m.Disks {
		names = append(names, bd.Name)
		if bd.Name == r.DiskName || (r.DiskName == "" && len(m.Disks) == 1) {
			return &source{virtualSize: bd.Size, format: "raw", fromDisk: true, backup: &backupSource{store: store, disk: bd, what: what}}, "", ""
		}
	}
	if r.DiskName == "" {
		return nil, ReasonNotSupported, fmt.Sprintf("%s has the disks %q: name one in spec.dataSource.objectRef.diskName", what, names)
	}
	return nil, ReasonNotSupported, fmt.Sprintf("%s has no disk %q (it has %q)", what, r.DiskName, names)
}

func phaseOrPending(p string) string {
	if p == "" {
		return "Pending"
	}
	return p
}

// restoreFromBackup writes the backed-up disk to the disk's qcow2 file path (grown to size
// when that is larger).
func restoreFromBackup(ctx context.Context, b *backupSource, path string, size int64) error {
	if err := b.store.RestoreDiskFile(ctx, b.disk, path, size); err != nil {
		return fmt.Errorf("restoring from %s: %w", b.what, err)
	}
	return nil
}
