package runtime

import "github.com/rakhsh/rakhsh/api/v1alpha1"

// The factory's informers of the kinds controllers watch, by name.

// VirtualMachines returns the shared informer of virtualmachines.
func (f *Factory) VirtualMachines(opts ...InformerOption) *TypedInformer[v1alpha1.VirtualMachine] {
	return For[v1alpha1.VirtualMachine](f, "virtualmachines", opts...)
}

// VirtualDisks returns the shared informer of virtualdisks.
func (f *Factory) VirtualDisks(opts ...InformerOption) *TypedInformer[v1alpha1.VirtualDisk] {
	return For[v1alpha1.VirtualDisk](f, "virtualdisks", opts...)
}

// VirtualImages returns the shared informer of virtualimages.
func (f *Factory) VirtualImages(opts ...InformerOption) *TypedInformer[v1alpha1.VirtualImage] {
	return For[v1alpha1.VirtualImage](f, "virtualimages", opts...)
}

// ClusterVirtualImages returns the shared informer of clustervirtualimages.
func (f *Factory) ClusterVirtualImages(opts ...InformerOption) *TypedInformer[v1alpha1.ClusterVirtualImage] {
	return For[v1alpha1.ClusterVirtualImage](f, "clustervirtualimages", opts...)
}

// Nodes returns the shared informer of nodes.
func (f *Factory) Nodes(opts ...InformerOption) *TypedInformer[v1alpha1.Node] {
	return For[v1alpha1.Node](f, "nodes", opts...)
}

// Projects returns the shared informer of projects.
func (f *Factory) Projects(opts ...InformerOption) *TypedInformer[v1alpha1.Project] {
	return For[v1alpha1.Project](f, "projects", opts...)
}

// VirtualMachineClasses returns the shared informer of virtualmachineclasses.
func (f *Factory) VirtualMachineClasses(opts ...InformerOption) *TypedInformer[v1alpha1.VirtualMachineClass] {
	return For[v1alpha1.VirtualMachineClass](f, "virtualmachineclasses", opts...)
}

// VirtualMachineOperations returns the shared informer of virtualmachineoperations.
func (f *Factory) VirtualMachineOperations(opts ...InformerOption) *TypedInformer[v1alpha1.VirtualMachineOperation] {
	return For[v1alpha1.VirtualMachineOperation](f, "virtualmachineoperations", opts...)
}

// ClusterNetworks returns the shared informer of clusternetworks.
func (f *Factory) ClusterNetworks(opts ...InformerOption) *TypedInformer[v1alpha1.ClusterNetwork] {
	return For[v1alpha1.ClusterNetwork](f, "clusternetworks", opts...)
}

// VirtualMachineIPAddresses returns the shared informer of virtualmachineipaddresses.
func (f *Factory) VirtualMachineIPAddresses(opts ...InformerOption) *TypedInformer[v1alpha1.VirtualMachineIPAddress] {
	return For[v1alpha1.VirtualMachineIPAddress](f, "virtualmachineipaddresses", opts...)
}

// VirtualMachineIPAddressLeases returns the shared informer of virtualmachineipaddressleases.
func (f *Factory) VirtualMachineIPAddressLeases(opts ...InformerOption) *TypedInformer[v1alpha1.VirtualMachineIPAddressLease] {
	return For[v1alpha1.VirtualMachineIPAddressLease](f, "virtualmachineipaddressleases", opts...)
}

// VirtualMachineMACAddresses returns the shared informer of virtualmachinemacaddresses.
func (f *Factory) VirtualMachineMACAddresses(opts ...InformerOption) *TypedInformer[v1alpha1.VirtualMachineMACAddress] {
	return For[v1alpha1.VirtualMachineMACAddress](f, "virtualmachinemacaddresses", opts...)
}

// VirtualMachineMACAddressLeases returns the shared informer of virtualmachinemacaddressleases.
func (f *Factory) VirtualMachineMACAddressLeases(opts ...InformerOption) *TypedInformer[v1alpha1.VirtualMachineMACAddressLease] {
	return For[v1alpha1.VirtualMachineMACAddressLease](f, "virtualmachinemacaddressleases", opts...)
}

// StorageClasses returns the shared informer of storageclasses.
func (f *Factory) StorageClasses(opts ...InformerOption) *TypedInformer[v1alpha1.StorageClass] {
	return For[v1alpha1.StorageClass](f, "storageclasses", opts...)
}

// NodeLeases returns the shared informer of nodeleases.
func (f *Factory) NodeLeases(opts ...InformerOption) *TypedInformer[v1alpha1.NodeLease] {
	return For[v1alpha1.NodeLease](f, "nodeleases", opts...)
}
