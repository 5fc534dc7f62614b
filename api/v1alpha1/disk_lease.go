package v1alpha1

// VirtualDiskLease is the lease on one writable VirtualDisk (same project, same name) that a
// node's agent must hold before it starts a QEMU that writes the disk. It is what makes "one
// writer per disk" checkable: the lease names the node and the VM instance that may write the
// disk, and its resourceVersion is the fencing token of that grant.
//
// Only three writes change a lease: an agent acquiring it (a free lease, or one it already
// holds for the same VM), its holder releasing it (the VM stopped on that node), and the
// controllers moving it (the HA controller releases the leases of a failed node's VMs after it
// took the node's lease over; the migration controller hands a migrated VM's leases to the
// target). Every write is a compare-and-swap on the resourceVersion read, and the store's
// revision only grows, so a later grant always has a larger token than an earlier one. An agent
// that comes back after losing its node lease compares the tokens it started its QEMUs under
// with the leases as they are now, and kills each QEMU whose lease moved on (docs/ha.md).
//
// Liveness is not the disk lease's business: it has no renew time. The holder's NodeLease says
// whether the holder is alive.
type VirtualDiskLease struct {
	TypeMeta   `json:",inline"`
	ObjectMeta `json:"metadata,omitempty"`
	Spec       VirtualDiskLeaseSpec `json:"spec"`
}

// VirtualDiskLeaseSpec is who holds the lease.
type VirtualDiskLeaseSpec struct {
	// HolderNode is the node whose agent may run a QEMU that writes the disk; empty: free.
	HolderNode string `json:"holderNode,omitempty"`
	// VirtualMachineName and VirtualMachineUID name the VM (instance) the disk is leased for.
	VirtualMachineName string `json:"virtualMachineName,omitempty"`
	VirtualMachineUID  string `json:"virtualMachineUID,omitempty"`
	// AcquireTime is when the holder acquired it.
	AcquireTime *Time `json:"acquireTime,omitempty"`
	// LeaseTransitions counts the changes of holder (acquisitions, releases and moves).
	LeaseTransitions int32 `json:"leaseTransitions,omitempty"`
	// ReleasedBy says who freed the lease last (the holder when its VM stopped, or a
	// controller) and why; informational.
	ReleasedBy string `json:"releasedBy,omitempty"`
}

// HeldBy reports whether node holds the lease for the VM instance uid.
func (l *VirtualDiskLease) HeldBy(node, uid string) bool {
	return l != nil && l.Spec.HolderNode != "" && l.Spec.HolderNode == node && l.Spec.VirtualMachineUID == uid
}

// Free reports whether nobody holds the lease.
func (l *VirtualDiskLease) Free() bool { return l == nil || l.Spec.HolderNode == "" }
