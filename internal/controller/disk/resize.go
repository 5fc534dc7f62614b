package disk

import (
	"context"
	"fmt"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/images"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// Reasons of the Resizing condition.
const (
	ReasonResized      = "Resized"
	ReasonResizingInVM = "ResizingInVM"
	ReasonResizeFailed = "ResizeFailed"
)

// resizePoll is how often a disk that a running VM grows is checked.
var resizePoll = time.Second

// reconcileSize grows a Ready (or Resizing) disk whose spec.persistentVolumeClaim.size went
// above its capacity. A disk no VM has open is grown with qemu-img resize. A running VM holds
// the image lock, so qemu-img refuses; the disk then goes to phase Resizing and the node agent
// that runs the VM grows it with QMP block_resize (the guest sees the new size at once). The
// controller reads the size from the image header until it is reached. Shrinking is refused
// at admission.
func (c *Controller) reconcileSize(ctx context.Context, d *v1alpha1.VirtualDisk, st v1alpha1.VirtualDiskStatus, path string) (runtime.Result, error) {
	want := int64(0)
	if q := d.Spec.PersistentVolumeClaim.Size; q != "" {
		n, err := q.Value()
		if err != nil {
			return runtime.Result{}, nil // validated at admission; nothing to do
		}
		want = storage.RoundSize(n)
	}
	have := int64(-1)
	if st.Capacity != "" {
		if n, err := v1alpha1.Quantity(st.Capacity).Value(); err == nil {
			have = n
		}
	}
	if want <= have && st.Phase == v1alpha1.DiskPhaseReady {
		return runtime.Result{}, nil
	}
	// The file's own size is the truth (the agent may have grown it already).
	info, err := storage.InfoShared(ctx, path, "qcow2")
	if err != nil {
		return runtime.Result{}, fmt.Errorf("reading the size of %s: %w", path, err)
	}
	if info.VirtualSize >= want {
		if st.Phase == v1alpha1.DiskPhaseResizing || have != info.VirtualSize {
			return runtime.Result{}, c.resized(ctx, d, st, info.VirtualSize)
		}
		return runtime.Result{}, nil
	}
	err = storage.Resize(ctx, path, "qcow2", want)
	switch {
	case err == nil:
		return runtime.Result{}, c.resized(ctx, d, st, want)
	case storage.IsLocked(err):
		if st.Phase != v1alpha1.DiskPhaseResizing {
			st.Phase = v1alpha1.DiskPhaseResizing
			msg := fmt.Sprintf("a running VM uses the disk: its node agent grows it from %s to %s", images.HumanBytes(info.VirtualSize), images.HumanBytes(want))
			setCond(&st, d, v1alpha1.DiskConditionResizing, v1alpha1.ConditionTrue, ReasonResizingInVM, msg)
			c.Log.Info("disk resize handed to the VM", "disk", d.Namespace+"/"+d.Name, "from", info.VirtualSize, "to", want)
			if err := c.writeStatus(ctx, d, st); err != nil {
				return runtime.Result{}, err
			}
		}
		return runtime.Result{RequeueAfter: resizePoll}, nil
	default:
		msg := fmt.Sprintf("growing the disk to %s failed: %v", images.HumanBytes(want), err)
		if images.IsNoSpace(err) {
			msg = fmt.Sprintf("growing the disk to %s failed: the storage pool is full", images.HumanBytes(want))
		}
		setCond(&st, d, v1alpha1.DiskConditionResizing, v1alpha1.ConditionFalse, ReasonResizeFailed, msg)
		if err := c.writeStatus(ctx, d, st); err != nil {
			return runtime.Result{}, err
		}
		return runtime.Result{}, fmt.Errorf("resizing %s: %w", path, err)
	}
}

func (c *Controller) resized(ctx context.Context, d *v1alpha1.VirtualDisk, st v1alpha1.VirtualDiskStatus, size int64) error {
	old := st.Capacity
	st.Phase = v1alpha1.DiskPhaseReady
	st.Capacity = string(v1alpha1.BytesQuantity(size)) // exact: a later resize compares against it
	st.ObservedGeneration = d.Generation
	setCond(&st, d, v1alpha1.DiskConditionResizing, v1alpha1.ConditionFalse, ReasonResized, "the disk is "+st.Capacity)
	c.Log.Info("disk resized", "disk", d.Namespace+"/"+d.Name, "from", old, "to", st.Capacity)
	c.Rec.Event(ctx, "VirtualDisk", d, "Normal", ReasonResized, fmt.Sprintf("grown from %s to %s", old, st.Capacity))
	return c.writeStatus(ctx, d, st)
}
