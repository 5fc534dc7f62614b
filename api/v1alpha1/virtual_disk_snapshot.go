package v1alpha1

// VirtualDiskSnapshot is a point-in-time copy of a VirtualDisk. Its spec is immutable.
type VirtualDiskSnapshot struct {
	TypeMeta   `json:",inline"`
	ObjectMeta `json:"metadata,omitempty"`

	Spec   VirtualDiskSnapshotSpec   `json:"spec"`
	Status VirtualDiskSnapshotStatus `json:"status,omitempty"`
}

// VirtualDiskSnapshotSpec names the disk.
type VirtualDiskSnapshotSpec struct {
	// VirtualDiskName is the disk of the same project to snapshot.
	VirtualDiskName string `json:"virtualDiskName"`
	// RequiredConsistency (default true) allows the snapshot only when the disk is unused or
	// the guest filesystems of its VM could be frozen through the guest agent.
	RequiredConsistency *bool `json:"requiredConsistency,omitempty"`
}

// SnapshotPhase is the phase of a disk or VM snapshot.
type SnapshotPhase string

// Snapshot phases (both snapshot kinds).
const (
	SnapshotPhasePending     SnapshotPhase = "Pending"
	SnapshotPhaseInProgress  SnapshotPhase = "InProgress"
	SnapshotPhaseReady       SnapshotPhase = "Ready"
	SnapshotPhaseFailed      SnapshotPhase = "Failed"
	SnapshotPhaseTerminating SnapshotPhase = "Terminating"
)

// Disk snapshot condition types.
const (
	// VDSnapshotConditionVirtualDiskReady is True when the disk can be snapshotted.
	VDSnapshotConditionVirtualDiskReady = "VirtualDiskReady"
	// VDSnapshotConditionReady is True when the snapshot is taken and usable.
	VDSnapshotConditionReady = "VirtualDiskSnapshotReady"
)

// VirtualDiskSnapshotStatus is the observed state of a disk snapshot.
type VirtualDiskSnapshotStatus struct {
	Phase SnapshotPhase `json:"phase,omitempty"`
	// Consistent says the guest filesystems were frozen (or the disk was unused) when taken.
	Consistent *bool `json:"consistent,omitempty"`
	// Size is the size of the snapshotted disk.
	Size Quantity `json:"size,omitempty"`
	// VirtualDiskUID is the uid of the disk the snapshot was taken of (a disk made again
	// under the same name is another disk).
	VirtualDiskUID string `json:"virtualDiskUID,omitempty"`
	// StorageClassName is the storage class the snapshot's file is kept in: the disk's.
	StorageClassName string `json:"storageClassName,omitempty"`
	// NodeName is the node whose agent takes the snapshot of a disk in use by a running VM
	// (through QMP, without stopping it), and, for a Local class, the node that holds the file.
	NodeName string `json:"nodeName,omitempty"`
	// Stats are how long taking the snapshot took.
	Stats *VirtualDiskSnapshotStats `json:"stats,omitempty"`
	// RAM is the guest's RAM state saved at the snapshot's instant, for a disk snapshot of a
	// VirtualMachineSnapshot with keepRAM of a running VM (written by the node's agent).
	RAM                *SnapshotRAM `json:"ram,omitempty"`
	Conditions         []Condition  `json:"conditions,omitempty"`
	ObservedGeneration int64        `json:"observedGeneration,omitempty"`
}

// VirtualDiskSnapshotStats are the timings of a snapshot.
type VirtualDiskSnapshotStats struct {
	// Frozen is how long the guest's filesystems were frozen (empty: they were not); with
	// the RAM kept, how long its vCPUs were paused.
	Frozen string `json:"frozen,omitempty"`
	// Copy is how long the copy of the disk took once its point in time was fixed.
	Copy string `json:"copy,omitempty"`
}

// Disk snapshot condition reasons.
const (
	VDSnapshotReasonWaitingForDisk  = "WaitingForVirtualDisk"
	VDSnapshotReasonWaitingForAgent = "WaitingForGuestAgent"
	VDSnapshotReasonTaking          = "Snapshotting"
	VDSnapshotReasonReady           = "Ready"
	VDSnapshotReasonFailed          = "SnapshotFailed"
	VDSnapshotReasonNotSupported    = "NotSupported"
)
