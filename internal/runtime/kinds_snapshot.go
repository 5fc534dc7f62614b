package runtime

import "github.com/rakhsh/rakhsh/api/v1alpha1"

// VirtualDiskSnapshots returns the shared informer of virtualdisksnapshots.
func (f *Factory) VirtualDiskSnapshots(opts ...InformerOption) *TypedInformer[v1alpha1.VirtualDiskSnapshot] {
	return For[v1alpha1.VirtualDiskSnapshot](f, "virtualdisksnapshots", opts...)
}

// VirtualMachineSnapshots returns the shared informer of virtualmachinesnapshots.
func (f *Factory) VirtualMachineSnapshots(opts ...InformerOption) *TypedInformer[v1alpha1.VirtualMachineSnapshot] {
	return For[v1alpha1.VirtualMachineSnapshot](f, "virtualmachinesnapshots", opts...)
}
