package v1alpha1

// VirtualMachineSnapshot is a point-in-time copy of a VM: its configuration and a
// VirtualDiskSnapshot of each of its disks. Its spec is immutable.
type VirtualMachineSnapshot struct {
	TypeMeta   `json:",inline"`
	ObjectMeta `json:"metadata,omitempty"`

	Spec   VirtualMachineSnapshotSpec   `json:"spec"`
	Status VirtualMachineSnapshotStatus `json:"status,omitempty"`
}

// VirtualMachineSnapshotSpec names the VM.
type VirtualMachineSnapshotSpec struct {
	// VirtualMachineName is the VM of the same project to snapshot.
	VirtualMachineName string `json:"virtualMachineName"`
	// RequiredConsistency (default true) allows the snapshot only when the VM is stopped or its
	// guest filesystems could be frozen through the guest agent.
	RequiredConsistency *bool `json:"requiredConsistency,omitempty"`
	// KeepIPAddress (default Always) keeps the VM's IP address with the snapshot.
	KeepIPAddress KeepIPAddress `json:"keepIPAddress,omitempty"`
	// KeepRAM (a Rakhsh addition) also saves the running guest's RAM and device state at the
	// snapshot's instant: a restore leaves the VM hibernated, and its next start resumes the
	// guest where it was. The guest's vCPUs are paused while the RAM is written, not for the
	// copy of the disks. A stopped VM's snapshot has no RAM to keep.
	KeepRAM bool `json:"keepRAM,omitempty"`
}

// SnapshotRAM is a guest's saved RAM state: kept on the node that took it.
type SnapshotRAM struct {
	NodeName string `json:"nodeName"`
	// Size is the size of the saved state.
	Size Quantity `json:"size"`
}

// AnnotationVMSnapshotRAM, on the VirtualDiskSnapshots of a VirtualMachineSnapshot with
// keepRAM, is the uid of the VM snapshot: the node agent saves the guest's RAM state under it
// at the instant it copies the disks.
const AnnotationVMSnapshotRAM = "virtualization.rakhsh.io/vm-snapshot-ram"

// KeepIPAddress says whether a VM snapshot keeps the VM's IP address.
type KeepIPAddress string

// KeepIPAddress values.
const (
	// KeepIPAddressAlways turns an Auto IP claim into a Static one so a restore gets it back.
	KeepIPAddressAlways KeepIPAddress = "Always"
	// KeepIPAddressNever leaves the IP claim as it is.
	KeepIPAddressNever KeepIPAddress = "Never"
)

// VM snapshot condition types.
const (
	// VMSnapshotConditionVirtualMachineReady is True when the VM can be snapshotted.
	VMSnapshotConditionVirtualMachineReady = "VirtualMachineReady"
	// VMSnapshotConditionBlockDevicesReady is True when every disk of the VM can be snapshotted.
	VMSnapshotConditionBlockDevicesReady = "BlockDevicesReady"
	// VMSnapshotConditionReady is True when the snapshot is complete and usable.
	VMSnapshotConditionReady = "VirtualMachineSnapshotReady"
)

// VirtualMachineSnapshotStatus is the observed state of a VM snapshot.
type VirtualMachineSnapshotStatus struct {
	Phase SnapshotPhase `json:"phase,omitempty"`
	// Consistent says the guest filesystems were frozen (or the VM was stopped) when taken.
	Consistent *bool `json:"consistent,omitempty"`
	// VirtualDiskSnapshotNames are the disk snapshots taken with the VM.
	VirtualDiskSnapshotNames []string `json:"virtualDiskSnapshotNames,omitempty"`
	// VirtualMachineSpec is the VM's spec when the snapshot was taken: a restore gives it back.
	VirtualMachineSpec *VirtualMachineSpec `json:"virtualMachineSpec,omitempty"`
	// VirtualMachineUID is the uid of the VM the snapshot was taken of.
	VirtualMachineUID string `json:"virtualMachineUID,omitempty"`
	// RAM is the guest's RAM state kept with the snapshot (keepRAM of a running VM).
	RAM *SnapshotRAM `json:"ram,omitempty"`
	// Resources are the objects captured in the snapshot (the VM, its IP claim, secrets, ...).
	Resources          []SnapshotResourceRef `json:"resources,omitempty"`
	Conditions         []Condition           `json:"conditions,omitempty"`
	ObservedGeneration int64                 `json:"observedGeneration,omitempty"`
}

// SnapshotResourceRef names one object captured in a VM snapshot.
type SnapshotResourceRef struct {
	APIVersion string `json:"apiVersion,omitempty"`
	Kind       string `json:"kind,omitempty"`
	Name       string `json:"name,omitempty"`
}

// LabelVMSnapshot marks the VirtualDiskSnapshots taken as part of the VirtualMachineSnapshot
// it names.
const LabelVMSnapshot = "virtualization.rakhsh.io/vm-snapshot"

// AnnotationVMSnapshotDisks, on the VirtualDiskSnapshots of a VirtualMachineSnapshot, is how
// many disk snapshots the VM snapshot has: a node agent copies them together, at one instant,
// once all of them are handed to it.
const AnnotationVMSnapshotDisks = "virtualization.rakhsh.io/vm-snapshot-disks"

// LabelTemplate marks a VirtualMachine as a template (value "true"): it never runs (a start
// fails with reason VMOPReasonVirtualMachineIsTemplate and the run policy is not applied; a
// running VM marked so is stopped, as with runPolicy AlwaysOff) and is meant to be cloned.
const LabelTemplate = "virtualization.rakhsh.io/template"

// VMOPReasonVirtualMachineIsTemplate fails a Start or Restart of a template VM.
const VMOPReasonVirtualMachineIsTemplate = "VirtualMachineIsTemplate"

// IsTemplate says the VM is marked as a template.
func IsTemplate(vm *VirtualMachine) bool { return vm.Labels[LabelTemplate] == "true" }
