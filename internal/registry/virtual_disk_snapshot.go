package registry

import (
	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
)

func init() {
	registerTyped("VirtualDiskSnapshot", typed[*v1alpha1.VirtualDiskSnapshot]{
		Default: func(s *v1alpha1.VirtualDiskSnapshot) { defaultTrue(&s.Spec.RequiredConsistency) },
		Validate: func(s *v1alpha1.VirtualDiskSnapshot) errs.FieldErrors {
			var fe errs.FieldErrors
			chkRefName(&fe, "spec.virtualDiskName", s.Spec.VirtualDiskName, true)
			return fe
		},
		Immutable: func(s *v1alpha1.VirtualDiskSnapshot) []immutableField {
			return []immutableField{{"spec.virtualDiskName", s.Spec.VirtualDiskName}, {"spec.requiredConsistency", boolOr(s.Spec.RequiredConsistency, true)}}
		},
	})
}

// defaultTrue sets *p to true when it is unset.
func defaultTrue(p **bool) {
	if *p == nil {
		t := true
		*p = &t
	}
}

// boolOr returns *p, or def when p is nil.
func boolOr(p *bool, def bool) bool {
	if p == nil {
		return def
	}
	return *p
}
