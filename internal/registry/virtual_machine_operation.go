package registry

import (
	"fmt"
	"regexp"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
)

func init() {
	registerTyped("VirtualMachineOperation", typed[*v1alpha1.VirtualMachineOperation]{
		Validate: validateVMOP,
		Immutable: func(op *v1alpha1.VirtualMachineOperation) []immutableField {
			s := &op.Spec
			return []immutableField{{"spec.type", s.Type}, {"spec.virtualMachineName", s.VirtualMachineName}, {"spec.force", s.Force},
				{"spec.restore", s.Restore}, {"spec.clone", s.Clone}, {"spec.migrate", s.Migrate}, {"spec.evict", s.Evict}}
		},
	})
}

// chkImmutable reports a Forbidden change of path when n and old differ (by JSON form).
func chkImmutable(fe *errs.FieldErrors, path string, n, old any, kind string) {
	if !jsonEqual(n, old) {
		fe.Forbidden(path, fmt.Sprintf("the field is immutable: %s cannot be changed once the %s is created", path, kind))
	}
}

// chkUnchanged reports a Forbidden change of path when n and old differ: the field "cannot be
// changed after creation", followed by why when it is not empty.
func chkUnchanged[T comparable](fe *errs.FieldErrors, path string, n, old T, why string) {
	if n == old {
		return
	}
	msg := "cannot be changed after creation"
	if why != "" {
		msg += " " + why
	}
	fe.Forbidden(path, msg)
}

const maxCloneName = 59

var (
	clonePrefixRE = regexp.MustCompile(`^[a-z0-9][-a-z0-9]*$`)
	cloneSuffixRE = regexp.MustCompile(`^[-a-z0-9]*[a-z0-9]$`)
	kindNameRE    = regexp.MustCompile(`^[A-Z][A-Za-z0-9]{0,62}$`)
)

var snapshotOperationModes = []v1alpha1.SnapshotOperationMode{
	v1alpha1.SnapshotOperationModeDryRun, v1alpha1.SnapshotOperationModeStrict, v1alpha1.SnapshotOperationModeBestEffort,
}

// chkTypeSection checks the section at path of an operation of type typ that belongs to
// operations of type owner: such an operation needs it (required says what it holds), any
// other may not have it.
func chkTypeSection(fe *errs.FieldErrors, path string, typ, owner v1alpha1.VMOPType, set bool, required string) {
	switch {
	case typ == owner && !set:
		fe.Required(path, required)
	case typ != owner && set:
		fe.Forbidden(path, "only allowed with type "+string(owner))
	}
}

func validateVMOP(op *v1alpha1.VirtualMachineOperation) errs.FieldErrors {
	var fe errs.FieldErrors
	s := &op.Spec
	chkEnum(&fe, "spec.type", s.Type, true, v1alpha1.VMOPTypeStart, v1alpha1.VMOPTypeStop, v1alpha1.VMOPTypeRestart,
		v1alpha1.VMOPTypeMigrate, v1alpha1.VMOPTypeEvict, v1alpha1.VMOPTypeRestore, v1alpha1.VMOPTypeClone, v1alpha1.VMOPTypeHibernate)
	chkRefName(&fe, "spec.virtualMachineName", s.VirtualMachineName, true)
	if s.Type == v1alpha1.VMOPTypeHibernate && s.Force != nil && *s.Force {
		fe.Forbidden("spec.force", "a Hibernate operation cannot be forced (a forced Stop powers off at once)")
	}

	// restore
	chkTypeSection(&fe, "spec.restore", s.Type, v1alpha1.VMOPTypeRestore, s.Restore != nil,
		"a Restore operation needs restore {mode, virtualMachineSnapshotName or virtualMachineBackupName}")
	if r := s.Restore; r != nil {
		chkEnum(&fe, "spec.restore.mode", r.Mode, true, snapshotOperationModes...)
		switch {
		case r.VirtualMachineSnapshotName == "" && r.VirtualMachineBackupName == "":
			fe.Required("spec.restore.virtualMachineSnapshotName", "name the VirtualMachineSnapshot (or, in virtualMachineBackupName, the VirtualMachineBackup) to restore from")
		case r.VirtualMachineSnapshotName != "" && r.VirtualMachineBackupName != "":
			fe.Forbidden("spec.restore.virtualMachineBackupName", "give either virtualMachineSnapshotName or virtualMachineBackupName, not both")
		}
		chkRefName(&fe, "spec.restore.virtualMachineSnapshotName", r.VirtualMachineSnapshotName, false)
		chkRefName(&fe, "spec.restore.virtualMachineBackupName", r.VirtualMachineBackupName, false)
	}

	// clone
	chkTypeSection(&fe, "spec.clone", s.Type, v1alpha1.VMOPTypeClone, s.Clone != nil,
		"a Clone operation needs clone {mode, customization or nameReplacement}")
	if c := s.Clone; c != nil {
		validateVMOPClone(&fe, c)
	}

	// migrate / evict
	migrating := s.Type == v1alpha1.VMOPTypeMigrate || s.Type == v1alpha1.VMOPTypeEvict
	for _, m := range []struct {
		spec *v1alpha1.VMOPMigrateSpec
		path string
	}{{s.Migrate, "spec.migrate"}, {s.Evict, "spec.evict"}} {
		if m.spec == nil {
			continue
		}
		if !migrating {
			fe.Forbidden(m.path, "only allowed with type Migrate or Evict")
		}
		chkLabelMap(&fe, m.path+".nodeSelector", m.spec.NodeSelector)
	}
	if s.Migrate != nil && s.Evict != nil {
		fe.Forbidden("spec.evict", "give the target node selector in migrate or in evict, not both")
	}
	return fe
}

func validateVMOPClone(fe *errs.FieldErrors, c *v1alpha1.VMOPCloneSpec) {
	chkEnum(fe, "spec.clone.cloneMode", c.CloneMode, false, v1alpha1.CloneModeLinked, v1alpha1.CloneModeFull)
	chkEnum(fe, "spec.clone.mode", c.Mode, true, snapshotOperationModes...)
	for i, nr := range c.NameReplacement {
		p := fmt.Sprintf("spec.clone.nameReplacement[%d]", i)
		if nr.From.Kind != "" && !kindNameRE.MatchString(nr.From.Kind) {
			fe.Invalid(p+".from.kind", nr.From.Kind, "must be a kind name such as VirtualDisk")
		}
		chkRefName(fe, p+".from.name", nr.From.Name, true)
		chkRefName(fe, p+".to", nr.To, true)
		if len(nr.To) > maxCloneName {
			fe.Invalid(p+".to", nr.To, fmt.Sprintf("must be at most %d characters", maxCloneName))
		}
	}
	var prefix, suffix string
	if cu := c.Customization; cu != nil {
		prefix, suffix = cu.NamePrefix, cu.NameSuffix
		if prefix != "" && (len(prefix) > maxCloneName || !clonePrefixRE.MatchString(prefix)) {
			fe.Invalid("spec.clone.customization.namePrefix", prefix,
				fmt.Sprintf("must be 1-%d lower case alphanumerics or '-', starting with an alphanumeric", maxCloneName))
		}
		if suffix != "" && (len(suffix) > maxCloneName || !cloneSuffixRE.MatchString(suffix)) {
			fe.Invalid("spec.clone.customization.nameSuffix", suffix,
				fmt.Sprintf("must be 1-%d lower case alphanumerics or '-', ending with an alphanumeric", maxCloneName))
		}
	}
	if prefix == "" && suffix == "" && len(c.NameReplacement) == 0 {
		fe.Required("spec.clone", "set customization.namePrefix, customization.nameSuffix or nameReplacement, so the clones get new names")
	}
}
