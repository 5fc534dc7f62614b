package registry

import (
	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
)

func init() {
	registerTyped("VirtualDiskLease", typed[*v1alpha1.VirtualDiskLease]{
		Validate: func(l *v1alpha1.VirtualDiskLease) errs.FieldErrors {
			var fe errs.FieldErrors
			s := l.Spec
			if s.HolderNode != "" {
				if msg := ValidateName(s.HolderNode); msg != "" {
					fe.Invalid("spec.holderNode", s.HolderNode, msg)
				}
				if s.VirtualMachineUID == "" {
					fe.Required("spec.virtualMachineUID", "a held lease names the VM instance it is held for")
				}
			}
			if s.VirtualMachineName != "" {
				if msg := ValidateName(s.VirtualMachineName); msg != "" {
					fe.Invalid("spec.virtualMachineName", s.VirtualMachineName, msg)
				}
			}
			if len(s.VirtualMachineUID) > 64 {
				fe.Invalid("spec.virtualMachineUID", s.VirtualMachineUID, "must be at most 64 characters")
			}
			if s.LeaseTransitions < 0 {
				fe.Invalid("spec.leaseTransitions", s.LeaseTransitions, "must not be negative")
			}
			if len(s.ReleasedBy) > 1024 {
				fe.Invalid("spec.releasedBy", "(long)", "must be at most 1024 characters")
			}
			return fe
		},
	})
}
