package registry

import (
	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
)

func init() {
	registerTyped("VirtualMachineSnapshot", typed[*v1alpha1.VirtualMachineSnapshot]{
		Default: func(s *v1alpha1.VirtualMachineSnapshot) {
			defaultTrue(&s.Spec.RequiredConsistency)
			if s.Spec.KeepIPAddress == "" {
				s.Spec.KeepIPAddress = v1alpha1.KeepIPAddressAlways
			}
		},
		Validate: func(s *v1alpha1.VirtualMachineSnapshot) errs.FieldErrors {
			var fe errs.FieldErrors
			chkRefName(&fe, "spec.virtualMachineName", s.Spec.VirtualMachineName, true)
			chkEnum(&fe, "spec.keepIPAddress", s.Spec.KeepIPAddress, false, v1alpha1.KeepIPAddressAlways, v1alpha1.KeepIPAddressNever)
			return fe
		},
		Immutable: func(s *v1alpha1.VirtualMachineSnapshot) []immutableField {
			keep := s.Spec.KeepIPAddress
			if keep == "" {
				keep = v1alpha1.KeepIPAddressAlways
			}
			return []immutableField{{"spec.virtualMachineName", s.Spec.VirtualMachineName},
				{"spec.requiredConsistency", boolOr(s.Spec.RequiredConsistency, true)}, {"spec.keepIPAddress", keep}}
		},
	})
}
