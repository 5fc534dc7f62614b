package v1alpha1

// StorageClass is a cluster-wide place where disks live. A VirtualDisk names it in
// spec.persistentVolumeClaim.storageClassName (as Deckhouse manifests do); a disk that names
// none gets the default class (annotation AnnotationDefaultStorageClass "true").
type StorageClass struct {
	TypeMeta   `json:",inline"`
	ObjectMeta `json:"metadata,omitempty"`
	Spec       StorageClassSpec   `json:"spec"`
	Status     StorageClassStatus `json:"status,omitempty"`
}

// AnnotationDefaultStorageClass marks the default StorageClass (value "true"), Kubernetes'
// own key.
const AnnotationDefaultStorageClass = "storageclass.kubernetes.io/is-default-class"

// DefaultStorageClassName is the Local class `rakhsh serve` creates on first start when no
// class exists.
const DefaultStorageClassName = "local"

// StorageClassType says where a class keeps its disks. It is immutable.
type StorageClassType string

// StorageClassType values. RBD and LVMThin are reserved names of later work: the API refuses
// them for now.
const (
	// StorageClassTypeLocal: a directory on each node; a disk lives on one node
	// (VirtualDisk status.nodeName) and its VMs run there.
	StorageClassTypeLocal StorageClassType = "Local"
	// StorageClassTypeShared: a directory that is the same on every node (an NFS, CephFS or
	// GlusterFS mount); its disks run on any node.
	StorageClassTypeShared StorageClassType = "Shared"
	// StorageClassTypeRBD (reserved): Ceph RBD images, opened by QEMU's rbd driver.
	StorageClassTypeRBD StorageClassType = "RBD"
	// StorageClassTypeLVMThin (reserved): thin logical volumes of a volume group on each node.
	StorageClassTypeLVMThin StorageClassType = "LVMThin"
)

// StorageClassSpec is the desired class. Exactly the section of its type may be set.
type StorageClassSpec struct {
	Type   StorageClassType    `json:"type"`
	Local  *StorageClassLocal  `json:"local,omitempty"`
	Shared *StorageClassShared `json:"shared,omitempty"`
}

// StorageClassLocal is a Local class's directory.
type StorageClassLocal struct {
	// Path is an absolute directory on every node (disks go to PATH/disks); empty: the
	// node's own pool in its data dir (DATA-DIR/pools/default).
	Path string `json:"path,omitempty"`
}

// StorageClassShared is a Shared class's directory.
type StorageClassShared struct {
	// Path is an absolute directory mounted at the same place on every node (required):
	// disks go to PATH/disks, the images linked clones are made over to PATH/images.
	Path string `json:"path"`
}

// StorageClassStatus is the observed state of a class.
type StorageClassStatus struct {
	Conditions []Condition `json:"conditions,omitempty"`
}

// IsDefaultStorageClass says whether the class carries the default annotation.
func IsDefaultStorageClass(sc *StorageClass) bool {
	return sc.Annotations[AnnotationDefaultStorageClass] == "true"
}

// AnnotationStorageNode on a VirtualDisk names the node a move into a Local class puts the
// disk on (default: the node it is on, or for a disk on Shared storage the control plane's
// node). `rakhsh disk move --node` sets it. On a new disk of a Local class it names the node
// the disk is made on (default: the control plane's node), by that node's agent when it is
// another node (DiskReasonProvisioningOnNode).
const AnnotationStorageNode = "virtualization.rakhsh.io/storage-node"

// AnnotationMoveToNode on a VirtualDisk of a Local class asks for a move to another node's
// storage in the same class (`rakhsh disk move --node` sets it). It is a request: the disk
// controller takes it off once the disk is on that node or the move failed. A change of it
// bumps the disk's generation, as a spec change does.
const AnnotationMoveToNode = "virtualization.rakhsh.io/move-to-node"

// Reasons of a VirtualDisk's Migrating condition (a move between storage classes) that both
// the disk controller and the node agents write.
const (
	// DiskReasonMovingOnNode: the control plane cannot see both ends of the move; the agent
	// of the node in status.nodeName copies the disk.
	DiskReasonMovingOnNode = "MovingOnNode"
	// DiskReasonProvisioningOnNode (a Ready condition reason): a new disk of a Local class
	// is made on another node than the control plane's, by the agent of the node in
	// status.nodeName.
	DiskReasonProvisioningOnNode = "ProvisioningOnNode"
	DiskReasonMoved              = "Moved"
	DiskReasonMoveFailed         = "MoveFailed"
)

// Reasons of a VirtualDisk's Terminating condition while the file of a disk on another node's
// Local storage is removed: the disk controller waits (DiskReasonWaitingForNode) until that
// node's agent has removed it (DiskReasonFileRemoved).
const (
	DiskReasonWaitingForNode = "WaitingForNode"
	DiskReasonFileRemoved    = "FileRemoved"
)
