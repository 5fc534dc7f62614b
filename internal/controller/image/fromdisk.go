package image

import (
	"context"
	"fmt"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/images"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// startFromDisk makes an image from a VirtualDisk: a flattened copy (qemu-img convert reads
// through the disk's backing chain) of a Ready disk that no running VM has open, so the copy
// is consistent. A VirtualImage copies a disk of its own project; a ClusterVirtualImage names
// the disk's project.
func (c *Controller) startFromDisk(ctx context.Context, img *image, st v1alpha1.ImageStatus, r *v1alpha1.DataSourceObjectRef) (runtime.Result, error) {
	ns := r.Namespace
	if img.kind.namespaced {
		if ns != "" && ns != img.meta.Namespace {
			return runtime.Result{}, c.pending(ctx, img, st, ReasonNotSupported,
				fmt.Sprintf("a VirtualImage may copy only disks of its own project %q, not %q", img.meta.Namespace, ns))
		}
		ns = img.meta.Namespace
	} else if ns == "" {
		return runtime.Result{}, c.pending(ctx, img, st, ReasonNotSupported,
			"a ClusterVirtualImage made from a VirtualDisk must name the disk's project in objectRef.namespace")
	}
	what := fmt.Sprintf("VirtualDisk %q in project %q", r.Name, ns)
	d, found := c.disks.Get(runtime.NewKey(ns, r.Name))
	switch {
	case !found:
		return runtime.Result{}, c.pending(ctx, img, st, ReasonWaitForSource, "waiting for "+what+": not found")
	case d.DeletionTimestamp != nil:
		return runtime.Result{}, c.pending(ctx, img, st, ReasonWaitForSource, what+" is being deleted")
	case d.Status.Phase != v1alpha1.DiskPhaseReady:
		return runtime.Result{}, c.pending(ctx, img, st, ReasonWaitForSource,
			fmt.Sprintf("waiting for %s to be Ready (it is %s)", what, orUnknown(string(d.Status.Phase))))
	}
	for _, a := range d.Status.AttachedToVirtualMachines {
		if a.Mounted {
			return runtime.Result{}, c.pending(ctx, img, st, ReasonWaitForSource,
				fmt.Sprintf("waiting for VirtualMachine %q to stop: %s is in use, and a copy of a disk in use would not be consistent", a.Name, what))
		}
	}
	if err := storage.CheckUID(d.UID); err != nil {
		return runtime.Result{}, err
	}
	sc := c.diskClass(d)
	if (sc == nil || sc.Spec.Type == v1alpha1.StorageClassTypeLocal) && d.Status.NodeName != "" && d.Status.NodeName != c.cfg.NodeName {
		return runtime.Result{}, c.pending(ctx, img, st, ReasonWaitForSource,
			fmt.Sprintf("%s is on node %s's local storage, which this controller (on %s) cannot read; move it to a Shared class or to this node first", what, d.Status.NodeName, c.cfg.NodeName))
	}
	src := storage.ClassDiskPath(c.cfg.DataDir, sc, d.UID)
	c.launch(img, func(ctx context.Context, dst string, _ images.Options) (*images.Result, error) {
		return images.CopyStored(ctx, src, "qcow2", dst)
	})
	return runtime.Result{}, nil
}
