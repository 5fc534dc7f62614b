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
		ValidateUpdate: func(n, p *v1alpha1.VirtualMachineSnapshot) errs.FieldErrors {
			var fe errs.FieldErrors
			const kind = "VirtualMachineSnapshot"
			chkImmutable(&fe, "spec.virtualMachineName", n.Spec.VirtualMachineName, p.Spec.VirtualMachineName, kind)
			chkImmutable(&fe, "spec.requiredConsistency", boolOr(n.Spec.RequiredConsistency, true), boolOr(p.Spec.RequiredConsistency, true), kind)
			keep := func(k v1alpha1.KeepIPAddress) v1alpha1.KeepIPAddress {
				if k == "" {
					return v1alpha1.KeepIPAddressAlways
				}
				return k
			}
			chkImmutable(&fe, "spec.keepIPAddress", keep(n.Spec.KeepIPAddress), keep(p.Spec.KeepIPAddress), kind)
			return fe
		},
	})
}
