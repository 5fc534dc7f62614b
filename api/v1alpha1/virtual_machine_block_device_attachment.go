package v1alpha1

// VirtualMachineBlockDeviceAttachment hot-plugs a disk or an image into a VM of the same
// project. Its spec is immutable: to move a device, delete the attachment and create another.
type VirtualMachineBlockDeviceAttachment struct {
	TypeMeta   `json:",inline"`
	ObjectMeta `json:"metadata,omitempty"`

	Spec   VirtualMachineBlockDeviceAttachmentSpec   `json:"spec"`
	Status VirtualMachineBlockDeviceAttachmentStatus `json:"status,omitempty"`
}

// VirtualMachineBlockDeviceAttachmentSpec names the VM and the device.
type VirtualMachineBlockDeviceAttachmentSpec struct {
	VirtualMachineName string `json:"virtualMachineName"`
	// BlockDeviceRef is the device: a VirtualDisk (read-write) or a VirtualImage or
	// ClusterVirtualImage (read-only).
	BlockDeviceRef VMBDAObjectRef `json:"blockDeviceRef"`
}

// VMBDAObjectRef references the device to attach.
type VMBDAObjectRef struct {
	Kind BlockDeviceKind `json:"kind"`
	Name string          `json:"name"`
}

// VMBDAPhase is the phase of an attachment.
type VMBDAPhase string

// Attachment phases.
const (
	VMBDAPhasePending     VMBDAPhase = "Pending"
	VMBDAPhaseInProgress  VMBDAPhase = "InProgress"
	VMBDAPhaseAttached    VMBDAPhase = "Attached"
	VMBDAPhaseFailed      VMBDAPhase = "Failed"
	VMBDAPhaseTerminating VMBDAPhase = "Terminating"
)

// Attachment condition types.
const (
	// VMBDAConditionVirtualMachineReady is True when the VM exists and can take the device.
	VMBDAConditionVirtualMachineReady = "VirtualMachineReady"
	// VMBDAConditionBlockDeviceReady is True when the disk or image is ready to attach.
	VMBDAConditionBlockDeviceReady = "BlockDeviceReady"
	// VMBDAConditionAttached is True when the device is attached to the running VM.
	VMBDAConditionAttached = "Attached"
)

// VirtualMachineBlockDeviceAttachmentStatus is the observed state of an attachment.
type VirtualMachineBlockDeviceAttachmentStatus struct {
	Phase VMBDAPhase `json:"phase,omitempty"`
	// VirtualMachineName is the VM the device is attached to.
	VirtualMachineName string      `json:"virtualMachineName,omitempty"`
	Conditions         []Condition `json:"conditions,omitempty"`
	ObservedGeneration int64       `json:"observedGeneration,omitempty"`
}
