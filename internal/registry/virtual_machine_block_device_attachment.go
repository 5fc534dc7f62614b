package registry

import (
	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
)

func init() {
	registerTyped("VirtualMachineBlockDeviceAttachment", typed[*v1alpha1.VirtualMachineBlockDeviceAttachment]{
		Validate: func(a *v1alpha1.VirtualMachineBlockDeviceAttachment) errs.FieldErrors {
			var fe errs.FieldErrors
			chkRefName(&fe, "spec.virtualMachineName", a.Spec.VirtualMachineName, true)
			chkEnum(&fe, "spec.blockDeviceRef.kind", a.Spec.BlockDeviceRef.Kind, true, blockDeviceKinds...)
			chkRefName(&fe, "spec.blockDeviceRef.name", a.Spec.BlockDeviceRef.Name, true)
			return fe
		},
		Immutable: func(a *v1alpha1.VirtualMachineBlockDeviceAttachment) []immutableField {
			return []immutableField{{"spec.virtualMachineName", a.Spec.VirtualMachineName}, {"spec.blockDeviceRef", a.Spec.BlockDeviceRef}}
		},
	})
}
