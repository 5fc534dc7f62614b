package registry

import (
	"path/filepath"
	"strings"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
)

func init() {
	registerTyped("StorageClass", typed[*v1alpha1.StorageClass]{
		Default:  defaultStorageClass,
		Validate: validateStorageClass,
		ValidateUpdate: func(n, o *v1alpha1.StorageClass) errs.FieldErrors {
			var fe errs.FieldErrors
			chkUnchanged(&fe, "spec.type", n.Spec.Type, o.Spec.Type, "(the class's disks live where the type says)")
			chkUnchanged(&fe, "spec.local.path", localPath(n), localPath(o), "(the class's disks are in the old directory); make a new class and move the disks")
			chkUnchanged(&fe, "spec.shared.path", sharedPath(n), sharedPath(o), "(the class's disks are in the old directory); make a new class and move the disks")
			return fe
		},
	})
}

// storageClassTypes are the types the API accepts; reservedStorageClassTypes are named for
// later work and refused with their own message.
var (
	storageClassTypes         = []string{string(v1alpha1.StorageClassTypeLocal), string(v1alpha1.StorageClassTypeShared)}
	reservedStorageClassTypes = []v1alpha1.StorageClassType{v1alpha1.StorageClassTypeRBD, v1alpha1.StorageClassTypeLVMThin}
)

func localPath(sc *v1alpha1.StorageClass) string {
	if sc.Spec.Local == nil {
		return ""
	}
	return sc.Spec.Local.Path
}

func sharedPath(sc *v1alpha1.StorageClass) string {
	if sc.Spec.Shared == nil {
		return ""
	}
	return sc.Spec.Shared.Path
}

func defaultStorageClass(sc *v1alpha1.StorageClass) {
	// Paths are kept as written but cleaned, so that "/srv/nfs/" and "/srv/nfs" are one
	// directory to every comparison.
	if l := sc.Spec.Local; l != nil && l.Path != "" && filepath.IsAbs(l.Path) {
		l.Path = filepath.Clean(l.Path)
	}
	if s := sc.Spec.Shared; s != nil && s.Path != "" && filepath.IsAbs(s.Path) {
		s.Path = filepath.Clean(s.Path)
	}
}

// maxStoragePath bounds a class path: disk files and their temporary names go below it, and
// a VM's disk paths end up in QEMU's arguments.
const maxStoragePath = 512

func validateStoragePath(fe *errs.FieldErrors, field, p string, required bool) {
	switch {
	case p == "":
		if required {
			fe.Required(field, "an absolute directory is required")
		}
	case !filepath.IsAbs(p):
		fe.Invalid(field, p, "must be an absolute path")
	case len(p) > maxStoragePath:
		fe.Invalid(field, p, "must be at most 512 bytes")
	case strings.ContainsAny(p, "\x00\n,:"):
		fe.Invalid(field, p, "must not contain NUL, newline, ',' or ':' (QEMU's option syntax)")
	case filepath.Clean(p) != p:
		fe.Invalid(field, p, "must be a clean path (no '..', '.', '//' or trailing '/')")
	case p == "/":
		fe.Invalid(field, p, "must not be the root directory")
	}
}

func validateStorageClass(sc *v1alpha1.StorageClass) errs.FieldErrors {
	var fe errs.FieldErrors
	s := sc.Spec
	switch s.Type {
	case "":
		fe.Required("spec.type", "one of Local, Shared")
	case v1alpha1.StorageClassTypeLocal:
		if s.Local != nil {
			validateStoragePath(&fe, "spec.local.path", s.Local.Path, false)
		}
		if s.Shared != nil {
			fe.Forbidden("spec.shared", "only allowed with type Shared")
		}
	case v1alpha1.StorageClassTypeShared:
		if s.Shared == nil {
			fe.Required("spec.shared.path", "a Shared class needs the directory every node mounts at the same place")
		} else {
			validateStoragePath(&fe, "spec.shared.path", s.Shared.Path, true)
		}
		if s.Local != nil {
			fe.Forbidden("spec.local", "only allowed with type Local")
		}
	default:
		reserved := false
		for _, r := range reservedStorageClassTypes {
			if s.Type == r {
				reserved = true
			}
		}
		if reserved {
			fe.Invalid("spec.type", s.Type, "type "+string(s.Type)+" is reserved for a later version and not supported yet; use Local or Shared")
		} else {
			fe.NotSupported("spec.type", s.Type, storageClassTypes)
		}
	}
	if v, ok := sc.Annotations[v1alpha1.AnnotationDefaultStorageClass]; ok && v != "true" && v != "false" {
		fe.Invalid("metadata.annotations."+v1alpha1.AnnotationDefaultStorageClass, v, `must be "true" or "false"`)
	}
	return fe
}
