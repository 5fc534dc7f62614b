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
	Size               Quantity    `json:"size,omitempty"`
	Conditions         []Condition `json:"conditions,omitempty"`
	ObservedGeneration int64       `json:"observedGeneration,omitempty"`
}
