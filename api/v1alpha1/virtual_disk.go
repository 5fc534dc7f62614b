package v1alpha1

// VirtualDisk is a disk of one project: blank, or filled from an image, another disk, a disk
// snapshot, a URL, a container image or an upload.
type VirtualDisk struct {
	TypeMeta   `json:",inline"`
	ObjectMeta `json:"metadata,omitempty"`
	Spec       VirtualDiskSpec   `json:"spec"`
	Status     VirtualDiskStatus `json:"status,omitempty"`
}

// VirtualDiskSpec is the desired disk. Without a DataSource the disk is blank and
// PersistentVolumeClaim.Size is required. DataSource and CloneMode are immutable; the size
// may only grow.
type VirtualDiskSpec struct {
	// DataSource is as for images; objectRef kinds are ClusterVirtualImage, VirtualImage,
	// VirtualDiskSnapshot and VirtualDisk.
	DataSource            *DataSource                      `json:"dataSource,omitempty"`
	PersistentVolumeClaim VirtualDiskPersistentVolumeClaim `json:"persistentVolumeClaim,omitempty"`
	// CloneMode (a Rakhsh addition) says how a disk made from an objectRef data source
	// shares data with its source: Linked (the default for images and snapshots) makes a
	// copy-on-write overlay over the read-only source in O(1); Full copies every block. A disk
	// cloned from another VirtualDisk is always Full (the source keeps changing). It may only
	// be set with an objectRef data source.
	CloneMode CloneMode `json:"cloneMode,omitempty"`
}

// VirtualDiskPersistentVolumeClaim keeps Deckhouse's name for the disk's size and storage.
type VirtualDiskPersistentVolumeClaim struct {
	// Size of the disk. Required for a blank disk; otherwise it defaults to the source's size
	// and must not be smaller than it.
	Size Quantity `json:"size,omitempty"`
	// StorageClassName is the Rakhsh storage pool to put the disk in; empty means the
	// default pool.
	StorageClassName string `json:"storageClassName,omitempty"`
}

// CloneMode says how a disk shares data with the object it is cloned from.
type CloneMode string

// CloneMode values.
const (
	CloneModeLinked CloneMode = "Linked"
	CloneModeFull   CloneMode = "Full"
)

// DiskPhase is the lifecycle phase of a disk.
type DiskPhase string

// DiskPhase values.
const (
	DiskPhasePending              DiskPhase = "Pending"
	DiskPhaseProvisioning         DiskPhase = "Provisioning"
	DiskPhaseWaitForUserUpload    DiskPhase = "WaitForUserUpload"
	DiskPhaseWaitForFirstConsumer DiskPhase = "WaitForFirstConsumer"
	DiskPhaseReady                DiskPhase = "Ready"
	DiskPhaseResizing             DiskPhase = "Resizing"
	DiskPhaseFailed               DiskPhase = "Failed"
	DiskPhaseTerminating          DiskPhase = "Terminating"
	DiskPhaseMigrating            DiskPhase = "Migrating"
)

// Disk condition types.
const (
	DiskConditionDatasourceReady = "DatasourceReady"
	DiskConditionReady           = "Ready"
	DiskConditionResizing        = "Resizing"
	DiskConditionSnapshotting    = "Snapshotting"
	DiskConditionInUse           = "InUse"
	DiskConditionMigrating       = "Migrating"
	DiskConditionTerminating     = "Terminating"
)

// VirtualDiskStatus is the observed state of a disk.
type VirtualDiskStatus struct {
	Phase DiskPhase `json:"phase,omitempty"`
	// Capacity is the size the guest sees, e.g. "10Gi".
	Capacity string `json:"capacity,omitempty"`
	// Progress of the provisioning, e.g. "45%".
	Progress                  string                   `json:"progress,omitempty"`
	DownloadSpeed             *DownloadSpeed           `json:"downloadSpeed,omitempty"`
	ImageUploadURLs           *ImageUploadURLs         `json:"imageUploadURLs,omitempty"`
	AttachedToVirtualMachines []AttachedVirtualMachine `json:"attachedToVirtualMachines,omitempty"`
	Stats                     *VirtualDiskStats        `json:"stats,omitempty"`
	// StorageClassName is the storage pool the disk was put in.
	StorageClassName string `json:"storageClassName,omitempty"`
	// NodeName is the host that holds the disk when the pool is local to a host (Rakhsh addition).
	NodeName string `json:"nodeName,omitempty"`
	// MoveSourceNodeName is, while the disk moves from one node's Local storage to another's,
	// the node that holds the disk's file; nodeName then names the node that copies it
	// (Rakhsh addition, docs/storage.md).
	MoveSourceNodeName string `json:"moveSourceNodeName,omitempty"`
	// Format of the disk file: qcow2 or raw (Rakhsh addition).
	Format             string      `json:"format,omitempty"`
	Conditions         []Condition `json:"conditions,omitempty"`
	ObservedGeneration int64       `json:"observedGeneration,omitempty"`
}

// AttachedVirtualMachine is a VM the disk is attached to; Mounted is true while the VM runs
// with it.
type AttachedVirtualMachine struct {
	Name    string `json:"name"`
	Mounted bool   `json:"mounted,omitempty"`
}

// VirtualDiskStats are durations of the disk's life.
type VirtualDiskStats struct {
	CreationDuration *VirtualDiskCreationDuration `json:"creationDuration,omitempty"`
}

// VirtualDiskCreationDuration breaks down how long provisioning took, as Go duration strings
// (e.g. "1m30s").
type VirtualDiskCreationDuration struct {
	// WaitingForDependencies is the time spent waiting for the data source to become ready.
	WaitingForDependencies string `json:"waitingForDependencies,omitempty"`
	// DVCRProvisioning is Deckhouse's time to import into its registry; Rakhsh uses it for
	// the import into the image store.
	DVCRProvisioning string `json:"dvcrProvisioning,omitempty"`
	// TotalProvisioning is the time from creation to Ready.
	TotalProvisioning string `json:"totalProvisioning,omitempty"`
}
