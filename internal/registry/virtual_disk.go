package registry

import (
	"fmt"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
)

func init() {
	registerTyped("VirtualDisk", typed[*v1alpha1.VirtualDisk]{
		Default:        defaultVirtualDisk,
		Validate:       validateVirtualDisk,
		ValidateUpdate: validateVirtualDiskUpdate,
	})
}

// diskObjectRefKinds are the kinds a disk may be copied from.
var diskObjectRefKinds = []v1alpha1.DataSourceObjectKind{
	v1alpha1.DataSourceKindClusterVirtualImage, v1alpha1.DataSourceKindVirtualImage,
	v1alpha1.DataSourceKindVirtualDiskSnapshot, v1alpha1.DataSourceKindVirtualDisk,
	v1alpha1.DataSourceKindVirtualMachineBackup,
}

// MinVirtualDiskSize is the smallest disk Rakhsh creates.
const MinVirtualDiskSize = 1 << 20

func defaultVirtualDisk(d *v1alpha1.VirtualDisk) {
	ds := d.Spec.DataSource
	if ds == nil {
		return
	}
	defaultDataSource(ds)
	if d.Spec.CloneMode == "" && ds.Type == v1alpha1.DataSourceTypeObjectRef && ds.ObjectRef != nil {
		switch ds.ObjectRef.Kind {
		case v1alpha1.DataSourceKindVirtualDisk:
			d.Spec.CloneMode = v1alpha1.CloneModeFull
		case v1alpha1.DataSourceKindClusterVirtualImage, v1alpha1.DataSourceKindVirtualImage,
			v1alpha1.DataSourceKindVirtualDiskSnapshot:
			d.Spec.CloneMode = v1alpha1.CloneModeLinked
		}
	}
}

func validateVirtualDisk(d *v1alpha1.VirtualDisk) errs.FieldErrors {
	var fe errs.FieldErrors
	ds := d.Spec.DataSource
	if ds != nil {
		validateDataSource(&fe, ds, "spec.dataSource", dataSourceContext{
			allowedKinds: diskObjectRefKinds,
			namespaced:   true,
			namespace:    d.Namespace,
			selfKind:     v1alpha1.DataSourceKindVirtualDisk,
			selfName:     d.Name,
		})
	}
	pvc := d.Spec.PersistentVolumeClaim
	if pvc.Size == "" {
		if ds == nil {
			fe.Required("spec.persistentVolumeClaim.size", "a blank disk (no spec.dataSource) needs a size")
		}
	} else if n, err := pvc.Size.Value(); err != nil {
		fe.Invalid("spec.persistentVolumeClaim.size", string(pvc.Size), err.Error())
	} else if n < MinVirtualDiskSize {
		fe.Invalid("spec.persistentVolumeClaim.size", string(pvc.Size), "must be at least 1Mi")
	}
	if pvc.StorageClassName != "" {
		if msg := ValidateName(pvc.StorageClassName); msg != "" {
			fe.Invalid("spec.persistentVolumeClaim.storageClassName", pvc.StorageClassName, msg)
		}
	}
	// Status values name files (the pool) and hosts: only what the server could have made.
	if sc := d.Status.StorageClassName; sc != "" {
		if msg := ValidateName(sc); msg != "" {
			fe.Invalid("status.storageClassName", sc, msg)
		}
	}
	if n := d.Status.NodeName; n != "" {
		if msg := ValidateName(n); msg != "" {
			fe.Invalid("status.nodeName", n, msg)
		}
	}
	switch d.Status.Format {
	case "", "qcow2", "raw":
	default:
		fe.NotSupported("status.format", d.Status.Format, []string{"qcow2", "raw"})
	}
	switch d.Spec.CloneMode {
	case "":
	case v1alpha1.CloneModeLinked, v1alpha1.CloneModeFull:
		switch {
		case ds == nil || ds.Type != v1alpha1.DataSourceTypeObjectRef:
			fe.Forbidden("spec.cloneMode", "applies only to disks made from an objectRef data source")
		case d.Spec.CloneMode == v1alpha1.CloneModeLinked && ds.ObjectRef != nil &&
			ds.ObjectRef.Kind == v1alpha1.DataSourceKindVirtualDisk:
			fe.Invalid("spec.cloneMode", string(d.Spec.CloneMode), "a disk made from another VirtualDisk is always a Full copy")
		}
	default:
		fe.NotSupported("spec.cloneMode", string(d.Spec.CloneMode),
			[]string{string(v1alpha1.CloneModeLinked), string(v1alpha1.CloneModeFull)})
	}
	return fe
}

func validateVirtualDiskUpdate(n, o *v1alpha1.VirtualDisk) errs.FieldErrors {
	var fe errs.FieldErrors
	immutableDataSource(&fe, n.Spec.DataSource, o.Spec.DataSource, "spec.dataSource")
	chkUnchanged(&fe, "spec.cloneMode", n.Spec.CloneMode, o.Spec.CloneMode, "")
	// Naming another class moves the disk there (the disk controller copies it while no
	// running VM uses it); clearing the name would say nothing about where it should be.
	if nc, oc := n.Spec.PersistentVolumeClaim.StorageClassName, o.Spec.PersistentVolumeClaim.StorageClassName; nc != oc && nc == "" {
		fe.Forbidden("spec.persistentVolumeClaim.storageClassName", fmt.Sprintf("cannot be cleared once set (was %q); name a class to move the disk to it", oc))
	}
	newSize, oldSize := n.Spec.PersistentVolumeClaim.Size, o.Spec.PersistentVolumeClaim.Size
	switch {
	case newSize == oldSize:
	case newSize == "":
		fe.Forbidden("spec.persistentVolumeClaim.size", fmt.Sprintf("cannot be removed once set (was %s)", oldSize))
	case oldSize == "":
		// The size was the source's; any explicit size is checked against it by the disk controller.
	default:
		nv, err1 := newSize.Value()
		ov, err2 := oldSize.Value()
		if err1 == nil && err2 == nil && nv < ov {
			fe.Forbidden("spec.persistentVolumeClaim.size", fmt.Sprintf("shrinking a disk is not supported (from %s to %s)", oldSize, newSize))
		}
	}
	return fe
}
