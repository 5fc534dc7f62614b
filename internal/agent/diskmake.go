package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/qemu"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// Disks made on this node. A new disk of a Local class whose annotation
// virtualization.rakhsh.io/storage-node names this node is handed here by the disk controller
// (phase Provisioning, condition Ready=False reason ProvisioningOnNode, status.nodeName this
// node): the agent makes its file in this node's pool, blank or from an image (a linked clone
// over the image's copy in this node's image cache, or a full copy with cloneMode Full), and
// writes the disk Ready, or Failed with the reason.

// makingHere says whether d is a disk this node's agent is to make.
func (a *Agent) makingHere(d *v1alpha1.VirtualDisk) bool {
	c := v1alpha1.FindCondition(d.Status.Conditions, v1alpha1.DiskConditionReady)
	return d.Status.Phase == v1alpha1.DiskPhaseProvisioning && d.Status.NodeName == a.cfg.NodeName && c != nil &&
		c.Reason == v1alpha1.DiskReasonProvisioningOnNode && storage.CheckUID(d.UID) == nil
}

// makeDisk makes the file of a disk handed to this node and writes its status.
func (a *Agent) makeDisk(ctx context.Context, d *v1alpha1.VirtualDisk) error {
	var sc *v1alpha1.StorageClass
	if err := a.getClass(ctx, d.Status.StorageClassName, &sc); err != nil {
		return err
	}
	if sc == nil || sc.Spec.Type != v1alpha1.StorageClassTypeLocal {
		return a.patchMade(ctx, d, 0, fmt.Errorf("StorageClass %q is not a Local class on this node", d.Status.StorageClassName))
	}
	path := storage.ClassDiskPath(a.cfg.DataDir, sc, d.UID)
	started := time.Now()
	size, mode, err := a.makeDiskFile(ctx, d, path)
	var again *retryable
	if errors.As(err, &again) {
		// The image could not be had now (the API or the image's holder unreachable): tried
		// again with the queue's backoff; the disk stays Provisioning.
		return fmt.Errorf("making disk %s/%s: %w", d.Namespace, d.Name, again.err)
	}
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		storage.CleanTempFor(path)
		_ = os.Remove(path)
		return a.patchMade(ctx, d, 0, err)
	}
	if err := a.patchMade(ctx, d, size, nil); err != nil {
		_ = os.Remove(path) // the status does not name it: no disk of it
		return err
	}
	a.log.Info("disk made on this node", "disk", d.Namespace+"/"+d.Name, "mode", mode, "size", size, "took", time.Since(started).Round(time.Millisecond))
	return nil
}

// makeDiskFile creates the file at path and returns its virtual size and how it was made.
func (a *Agent) makeDiskFile(ctx context.Context, d *v1alpha1.VirtualDisk, path string) (int64, string, error) {
	var requested int64
	if q := d.Spec.PersistentVolumeClaim.Size; q != "" {
		n, err := q.Value()
		if err != nil {
			return 0, "", fmt.Errorf("spec.persistentVolumeClaim.size: %w", err)
		}
		requested = n
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return 0, "", err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, "", err
	}
	ds := d.Spec.DataSource
	if ds == nil {
		if requested <= 0 {
			return 0, "", errors.New("a blank disk needs spec.persistentVolumeClaim.size")
		}
		return requested, "blank", storage.CreateBlank(ctx, path, requested)
	}
	if ds.ObjectRef == nil {
		return 0, "", fmt.Errorf("data source %s cannot be made on a node", ds.Type)
	}
	kind := v1alpha1.BlockDeviceKindVirtualImage
	if ds.ObjectRef.Kind == v1alpha1.DataSourceKindClusterVirtualImage {
		kind = v1alpha1.BlockDeviceKindClusterVirtualImage
	}
	var img qemu.Disk
	if err := a.resolveImage(ctx, d.Namespace, kind, ds.ObjectRef.Name, &img); err != nil {
		return 0, "", &retryable{err}
	}
	info, err := storage.Info(ctx, img.Path, img.Format)
	if err != nil {
		return 0, "", fmt.Errorf("reading the image's copy in this node's cache: %w", err)
	}
	if requested > 0 && requested < info.VirtualSize {
		return 0, "", fmt.Errorf("spec.persistentVolumeClaim.size %s is smaller than the image's virtual size (%d bytes)", d.Spec.PersistentVolumeClaim.Size, info.VirtualSize)
	}
	size := max(requested, info.VirtualSize)
	if d.Spec.CloneMode == v1alpha1.CloneModeFull {
		resizeTo := int64(0)
		if size > info.VirtualSize {
			resizeTo = size
		}
		return size, "full copy", storage.ConvertResize(ctx, img.Path, img.Format, path, "qcow2", resizeTo)
	}
	return size, "linked clone", storage.CreateLinkedClone(ctx, path, img.Path, img.Format, size)
}

// retryable is a failure to make a disk that a later try may not meet.
type retryable struct{ err error }

func (r *retryable) Error() string { return r.err.Error() }

// patchMade ends the making of a disk: Ready with its size, or Failed with err. The patch is
// guarded by the resourceVersion the handing over wrote.
func (a *Agent) patchMade(ctx context.Context, d *v1alpha1.VirtualDisk, size int64, failure error) error {
	now := v1alpha1.NewTime(time.Now())
	st := map[string]any{}
	var conds []v1alpha1.Condition
	if failure != nil {
		a.log.Warn("making the disk on this node failed", "disk", d.Namespace+"/"+d.Name, "err", failure)
		st["phase"] = v1alpha1.DiskPhaseFailed
		conds = []v1alpha1.Condition{{Type: v1alpha1.DiskConditionReady, Status: v1alpha1.ConditionFalse, Reason: "ProvisioningFailed",
			Message: "node " + a.cfg.NodeName + "'s agent could not make the disk: " + failure.Error(), ObservedGeneration: d.Generation}}
	} else {
		st["phase"], st["format"], st["progress"] = v1alpha1.DiskPhaseReady, "qcow2", "100%"
		st["capacity"] = string(v1alpha1.BytesQuantity(storage.RoundSize(size)))
		if d.CreationTimestamp != nil {
			st["stats"] = v1alpha1.VirtualDiskStats{CreationDuration: &v1alpha1.VirtualDiskCreationDuration{
				TotalProvisioning: time.Since(d.CreationTimestamp.Time).Round(time.Second).String()}}
		}
		conds = []v1alpha1.Condition{{Type: v1alpha1.DiskConditionReady, Status: v1alpha1.ConditionTrue, Reason: "Ready",
			Message: "made by node " + a.cfg.NodeName + "'s agent", ObservedGeneration: d.Generation}}
		if d.Spec.DataSource != nil {
			conds = append(conds, v1alpha1.Condition{Type: v1alpha1.DiskConditionDatasourceReady, Status: v1alpha1.ConditionTrue, Reason: "DataSourceReady", ObservedGeneration: d.Generation})
		}
	}
	st["observedGeneration"] = d.Generation
	st["conditions"] = runtime.ConditionsPatch(d.Status.Conditions, conds, nil, now)
	body, err := json.Marshal(map[string]any{"metadata": map[string]any{"resourceVersion": d.ResourceVersion}, "status": st})
	if err != nil {
		return err
	}
	if err := a.c.PatchStatusStrategic(ctx, "virtualdisks", d.Namespace, d.Name, body, nil); err != nil {
		return fmt.Errorf("writing the status of the disk made on this node: %w", err)
	}
	return nil
}
