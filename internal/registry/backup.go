package registry

import (
	"path/filepath"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
)

func init() {
	register("BackupTarget", Strategy{
		New: func() v1alpha1.Object { return &v1alpha1.BackupTarget{} },
		Default: func(obj v1alpha1.Object) {
			if d := obj.(*v1alpha1.BackupTarget).Spec.Directory; d != nil && d.Path != "" && filepath.IsAbs(d.Path) {
				d.Path = filepath.Clean(d.Path)
			}
		},
		Validate: func(obj v1alpha1.Object) errs.FieldErrors { return validateBackupTarget(obj.(*v1alpha1.BackupTarget)) },
		ValidateUpdate: func(obj, old v1alpha1.Object) errs.FieldErrors {
			n, o := obj.(*v1alpha1.BackupTarget), old.(*v1alpha1.BackupTarget)
			var fe errs.FieldErrors
			chkImmutable(&fe, "spec.type", n.Spec.Type, o.Spec.Type, "BackupTarget")
			if backupPath(n) != backupPath(o) {
				fe.Forbidden("spec.directory.path", "cannot be changed after creation (the target's backups are in the old directory); make a new target")
			}
			return fe
		},
	})
	register("VirtualMachineBackup", Strategy{
		New: func() v1alpha1.Object { return &v1alpha1.VirtualMachineBackup{} },
		Default: func(obj v1alpha1.Object) {
			if b := obj.(*v1alpha1.VirtualMachineBackup); b.Spec.Mode == "" {
				b.Spec.Mode = v1alpha1.BackupModeSnapshot
			}
		},
		Validate: func(obj v1alpha1.Object) errs.FieldErrors {
			b := obj.(*v1alpha1.VirtualMachineBackup)
			var fe errs.FieldErrors
			chkRefName(&fe, "spec.virtualMachineName", b.Spec.VirtualMachineName, true)
			chkRefName(&fe, "spec.backupTargetName", b.Spec.BackupTargetName, true)
			if b.Spec.Mode == v1alpha1.BackupModeStop {
				fe.Invalid("spec.mode", b.Spec.Mode, "mode stop is not supported yet; use snapshot (the guest's filesystems frozen for an instant) or suspend (its vCPUs paused for an instant)")
			} else {
				chkEnum(&fe, "spec.mode", b.Spec.Mode, false, v1alpha1.BackupModeSnapshot, v1alpha1.BackupModeSuspend)
			}
			if q := b.Spec.BandwidthLimit; q != "" {
				if n, err := q.Value(); err != nil {
					fe.Invalid("spec.bandwidthLimit", string(q), err.Error())
				} else if n < 1<<20 {
					fe.Invalid("spec.bandwidthLimit", string(q), "must be at least 1Mi (bytes per second)")
				}
			}
			return fe
		},
		ValidateUpdate: func(obj, old v1alpha1.Object) errs.FieldErrors {
			n, o := obj.(*v1alpha1.VirtualMachineBackup), old.(*v1alpha1.VirtualMachineBackup)
			var fe errs.FieldErrors
			const kind = "VirtualMachineBackup"
			chkImmutable(&fe, "spec.virtualMachineName", n.Spec.VirtualMachineName, o.Spec.VirtualMachineName, kind)
			chkImmutable(&fe, "spec.backupTargetName", n.Spec.BackupTargetName, o.Spec.BackupTargetName, kind)
			chkImmutable(&fe, "spec.mode", n.Spec.Mode, o.Spec.Mode, kind)
			chkImmutable(&fe, "spec.bandwidthLimit", n.Spec.BandwidthLimit, o.Spec.BandwidthLimit, kind)
			return fe
		},
	})
}

func backupPath(t *v1alpha1.BackupTarget) string {
	if t.Spec.Directory == nil {
		return ""
	}
	return t.Spec.Directory.Path
}

func validateBackupTarget(t *v1alpha1.BackupTarget) errs.FieldErrors {
	var fe errs.FieldErrors
	switch t.Spec.Type {
	case "":
		fe.Required("spec.type", "Directory")
	case v1alpha1.BackupTargetTypeDirectory:
		if t.Spec.Directory == nil {
			fe.Required("spec.directory.path", "a Directory target needs an absolute directory")
		} else {
			validateStoragePath(&fe, "spec.directory.path", t.Spec.Directory.Path, true)
		}
	default:
		fe.NotSupported("spec.type", t.Spec.Type, []string{string(v1alpha1.BackupTargetTypeDirectory)})
	}
	return fe
}
