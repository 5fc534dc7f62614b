package registry

import (
	"errors"
	"path/filepath"
	"strings"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
)

func init() {
	registerTyped("BackupTarget", typed[*v1alpha1.BackupTarget]{
		Default: func(t *v1alpha1.BackupTarget) {
			if d := t.Spec.Directory; d != nil && d.Path != "" && filepath.IsAbs(d.Path) {
				d.Path = filepath.Clean(d.Path)
			}
		},
		Validate: validateBackupTarget,
		ValidateUpdate: func(n, o *v1alpha1.BackupTarget) errs.FieldErrors {
			var fe errs.FieldErrors
			chkImmutable(&fe, "spec.type", n.Spec.Type, o.Spec.Type, "BackupTarget")
			chkUnchanged(&fe, "spec.directory.path", backupPath(n), backupPath(o), "(the target's backups are in the old directory); make a new target")
			return fe
		},
	})
	registerTyped("VirtualMachineBackup", typed[*v1alpha1.VirtualMachineBackup]{
		Default: func(b *v1alpha1.VirtualMachineBackup) { defaultBackupMode(&b.Spec.Mode) },
		Validate: func(b *v1alpha1.VirtualMachineBackup) errs.FieldErrors {
			var fe errs.FieldErrors
			chkBackupSpec(&fe, b.Spec.VirtualMachineName, b.Spec.BackupTargetName, b.Spec.Mode, b.Spec.BandwidthLimit)
			return fe
		},
		Immutable: func(b *v1alpha1.VirtualMachineBackup) []immutableField {
			return []immutableField{{"spec.virtualMachineName", b.Spec.VirtualMachineName}, {"spec.backupTargetName", b.Spec.BackupTargetName},
				{"spec.mode", b.Spec.Mode}, {"spec.bandwidthLimit", b.Spec.BandwidthLimit}}
		},
	})
}

func init() {
	registerTyped("BackupSchedule", typed[*v1alpha1.BackupSchedule]{
		Default: func(s *v1alpha1.BackupSchedule) { defaultBackupMode(&s.Spec.Mode) },
		Validate: func(s *v1alpha1.BackupSchedule) errs.FieldErrors {
			var fe errs.FieldErrors
			chkBackupSpec(&fe, s.Spec.VirtualMachineName, s.Spec.BackupTargetName, s.Spec.Mode, s.Spec.BandwidthLimit)
			if s.Spec.Schedule == "" {
				fe.Required("spec.schedule", "a cron expression of five fields (minute hour day-of-month month day-of-week, UTC) or a descriptor such as @daily")
			} else if _, err := ParseBackupSchedule(s.Spec.Schedule); err != nil {
				fe.Invalid("spec.schedule", s.Spec.Schedule, err.Error())
			}
			r := s.Spec.Retention
			for _, k := range []struct {
				name string
				n    int
			}{{"keepLast", r.KeepLast}, {"keepHourly", r.KeepHourly}, {"keepDaily", r.KeepDaily}, {"keepWeekly", r.KeepWeekly}, {"keepMonthly", r.KeepMonthly}} {
				if k.n < 0 || k.n > 10000 {
					fe.Invalid("spec.retention."+k.name, k.n, "must be between 0 and 10000")
				}
			}
			return fe
		},
		Immutable: func(s *v1alpha1.BackupSchedule) []immutableField {
			// A schedule's backups are pruned by name: it stays the same VM's.
			return []immutableField{{"spec.virtualMachineName", s.Spec.VirtualMachineName}}
		},
	})
}

// ParseBackupSchedule parses a schedule's cron expression: five fields, or a descriptor
// (@hourly, @daily, @weekly, @monthly, @yearly, @every DURATION). Times are UTC.
func ParseBackupSchedule(spec string) (cron.Schedule, error) {
	if strings.HasPrefix(strings.TrimSpace(spec), "TZ=") || strings.HasPrefix(strings.TrimSpace(spec), "CRON_TZ=") {
		return nil, errors.New("time zones are not supported: schedules are in UTC")
	}
	sch, err := cron.ParseStandard(spec)
	if err != nil {
		return nil, err
	}
	if e, ok := sch.(cron.ConstantDelaySchedule); ok && e.Delay < time.Minute {
		return nil, errors.New("@every must be at least 1m")
	}
	return sch, nil
}

// defaultBackupMode makes an unset backup mode snapshot.
func defaultBackupMode(mode *v1alpha1.BackupMode) {
	if *mode == "" {
		*mode = v1alpha1.BackupModeSnapshot
	}
}

// chkBackupSpec checks what a backup and a backup schedule share: the VM and target they
// name, the mode and the bandwidth limit.
func chkBackupSpec(fe *errs.FieldErrors, vmName, targetName string, mode v1alpha1.BackupMode, limit v1alpha1.Quantity) {
	chkRefName(fe, "spec.virtualMachineName", vmName, true)
	chkRefName(fe, "spec.backupTargetName", targetName, true)
	chkEnum(fe, "spec.mode", mode, false, v1alpha1.BackupModeSnapshot, v1alpha1.BackupModeSuspend, v1alpha1.BackupModeStop)
	if limit != "" {
		if n, err := limit.Value(); err != nil {
			fe.Invalid("spec.bandwidthLimit", string(limit), err.Error())
		} else if n < 1<<20 {
			fe.Invalid("spec.bandwidthLimit", string(limit), "must be at least 1Mi (bytes per second)")
		}
	}
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
