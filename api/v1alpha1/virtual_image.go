package v1alpha1

// This file holds ClusterVirtualImage and VirtualImage, and the data source types they share
// with VirtualDisk.

// ClusterVirtualImage is an image every project may use: an installation ISO, a cloud image or
// a prepared (sysprepped) system disk, imported once and linked-cloned into disks.
type ClusterVirtualImage struct {
	TypeMeta   `json:",inline"`
	ObjectMeta `json:"metadata,omitempty"`
	Spec       ClusterVirtualImageSpec `json:"spec"`
	Status     ImageStatus             `json:"status,omitempty"`
}

// ClusterVirtualImageSpec says where a cluster image comes from. The data source is
// immutable after creation.
type ClusterVirtualImageSpec struct {
	DataSource DataSource `json:"dataSource"`
}

// VirtualImage is an image of one project, usable only by that project's disks and VMs.
type VirtualImage struct {
	TypeMeta   `json:",inline"`
	ObjectMeta `json:"metadata,omitempty"`
	Spec       VirtualImageSpec `json:"spec"`
	Status     ImageStatus      `json:"status,omitempty"`
}

// VirtualImageSpec says where a project image comes from and where Deckhouse would keep it.
type VirtualImageSpec struct {
	// Storage is accepted for compatibility with Deckhouse (default ContainerRegistry). Rakhsh
	// keeps every image in its own image store whatever the value, so it changes nothing.
	Storage    ImageStorage `json:"storage,omitempty"`
	DataSource DataSource   `json:"dataSource"`
}

// ImageStorage is where Deckhouse keeps a VirtualImage. Rakhsh accepts both values and ignores them.
type ImageStorage string

// ImageStorage values.
const (
	ImageStorageContainerRegistry     ImageStorage = "ContainerRegistry"
	ImageStoragePersistentVolumeClaim ImageStorage = "PersistentVolumeClaim"
)

// DataSourceType says which kind of source an image or disk is filled from.
type DataSourceType string

// DataSourceType values.
const (
	DataSourceTypeHTTP           DataSourceType = "HTTP"
	DataSourceTypeContainerImage DataSourceType = "ContainerImage"
	DataSourceTypeObjectRef      DataSourceType = "ObjectRef"
	DataSourceTypeUpload         DataSourceType = "Upload"
)

// DataSource is where the content of an image or disk comes from. Exactly the sub-struct
// matching Type may be set (Upload's is optional).
type DataSource struct {
	Type           DataSourceType            `json:"type"`
	HTTP           *DataSourceHTTP           `json:"http,omitempty"`
	ContainerImage *DataSourceContainerImage `json:"containerImage,omitempty"`
	ObjectRef      *DataSourceObjectRef      `json:"objectRef,omitempty"`
	Upload         *DataSourceUpload         `json:"upload,omitempty"`
}

// DataSourceHTTP downloads the content from an http or https URL.
type DataSourceHTTP struct {
	URL string `json:"url"`
	// CABundle is base64-encoded PEM of the certificates that may sign the server's
	// certificate, in addition to the host's trust store.
	CABundle string    `json:"caBundle,omitempty"`
	Checksum *Checksum `json:"checksum,omitempty"`
}

// Checksum lists digests (hex) the downloaded or uploaded file must match; every one given
// must match.
type Checksum struct {
	MD5    string `json:"md5,omitempty"`
	SHA1   string `json:"sha1,omitempty"`
	SHA256 string `json:"sha256,omitempty"`
	SHA512 string `json:"sha512,omitempty"`
}

// DataSourceContainerImage takes the content from an OCI image (a containerdisk: the disk file
// under /disk in the image).
type DataSourceContainerImage struct {
	// Image is an OCI reference such as registry.example.com/images/debian:12 or
	// ...@sha256:<digest>.
	Image           string              `json:"image"`
	ImagePullSecret *ImagePullSecretRef `json:"imagePullSecret,omitempty"`
	// CABundle is base64-encoded PEM of the certificates of the registry.
	CABundle string `json:"caBundle,omitempty"`
}

// ImagePullSecretRef names a Secret of type kubernetes.io/dockerconfigjson. Namespace is
// needed only from cluster-scoped kinds; a project's objects may use only their own project.
type ImagePullSecretRef struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace,omitempty"`
}

// DataSourceObjectKind is the kind an ObjectRef data source points at.
type DataSourceObjectKind string

// DataSourceObjectKind values. Images accept ClusterVirtualImage, VirtualImage, VirtualDisk
// and VirtualDiskSnapshot; disks accept ClusterVirtualImage, VirtualImage, VirtualDiskSnapshot
// and (a Rakhsh addition) VirtualDisk.
const (
	DataSourceKindClusterVirtualImage DataSourceObjectKind = "ClusterVirtualImage"
	DataSourceKindVirtualImage        DataSourceObjectKind = "VirtualImage"
	DataSourceKindVirtualDisk         DataSourceObjectKind = "VirtualDisk"
	DataSourceKindVirtualDiskSnapshot DataSourceObjectKind = "VirtualDiskSnapshot"
	// DataSourceKindVirtualMachineBackup (disks only, a Rakhsh addition): a disk restored
	// from a Completed backup; objectRef.diskName names the backed-up disk.
	DataSourceKindVirtualMachineBackup DataSourceObjectKind = "VirtualMachineBackup"
)

// DataSourceObjectRef copies the content of another image, disk or disk snapshot.
// Namespace is needed when a ClusterVirtualImage refers to a project's object; a project's
// objects may refer only to their own project (or to ClusterVirtualImages, which have none).
type DataSourceObjectRef struct {
	Kind      DataSourceObjectKind `json:"kind"`
	Name      string               `json:"name"`
	Namespace string               `json:"namespace,omitempty"`
	// DiskName, with kind VirtualMachineBackup, is the backed-up VirtualDisk to restore
	// (may be left out when the backup has one disk).
	DiskName string `json:"diskName,omitempty"`
}

// DataSourceUpload waits for the user to PUT the file to status.imageUploadURLs.
type DataSourceUpload struct {
	Checksum *Checksum `json:"checksum,omitempty"`
}

// ImagePhase is the lifecycle phase of an image.
type ImagePhase string

// ImagePhase values.
const (
	ImagePhasePending           ImagePhase = "Pending"
	ImagePhaseProvisioning      ImagePhase = "Provisioning"
	ImagePhaseWaitForUserUpload ImagePhase = "WaitForUserUpload"
	ImagePhaseReady             ImagePhase = "Ready"
	ImagePhaseFailed            ImagePhase = "Failed"
	ImagePhaseTerminating       ImagePhase = "Terminating"
	// ImagePhaseImageLost means the image was Ready but its stored file is gone.
	ImagePhaseImageLost ImagePhase = "ImageLost"
)

// Image condition types.
const (
	ImageConditionDatasourceReady = "DatasourceReady"
	ImageConditionReady           = "Ready"
	ImageConditionInUse           = "InUse"
	ImageConditionTerminating     = "Terminating"
)

// ImageStatus is the observed state of a ClusterVirtualImage or VirtualImage.
type ImageStatus struct {
	Phase ImagePhase `json:"phase,omitempty"`
	// Progress of the import, e.g. "45%".
	Progress      string         `json:"progress,omitempty"`
	DownloadSpeed *DownloadSpeed `json:"downloadSpeed,omitempty"`
	Size          *ImageSize     `json:"size,omitempty"`
	// Format of the stored file: qcow2, raw or iso.
	Format string `json:"format,omitempty"`
	// CDROM is true when the image is an ISO and is attached as a CD-ROM.
	CDROM           bool             `json:"cdrom"`
	ImageUploadURLs *ImageUploadURLs `json:"imageUploadURLs,omitempty"`
	Conditions      []Condition      `json:"conditions,omitempty"`
	// UsedInNamespaces lists the projects whose objects use this image (ClusterVirtualImage).
	UsedInNamespaces []string `json:"usedInNamespaces,omitempty"`
	// SHA256 is the hex digest of the stored file, set when the image is Ready (Rakhsh addition;
	// it identifies the content in the image store and lets clients verify a download).
	SHA256             string `json:"sha256,omitempty"`
	ObservedGeneration int64  `json:"observedGeneration,omitempty"`
}

// DownloadSpeed is the speed of an import: human strings (e.g. "12.5Mi/s") and bytes per second.
type DownloadSpeed struct {
	Avg          string `json:"avg,omitempty"`
	Current      string `json:"current,omitempty"`
	AvgBytes     int64  `json:"avgBytes,omitempty"`
	CurrentBytes int64  `json:"currentBytes,omitempty"`
}

// ImageSize is the size of an image: Stored is the file in the store, Unpacked the virtual
// disk size the guest sees. Stored and Unpacked are human strings such as "1.2Gi".
type ImageSize struct {
	Stored        string `json:"stored,omitempty"`
	Unpacked      string `json:"unpacked,omitempty"`
	StoredBytes   int64  `json:"storedBytes,omitempty"`
	UnpackedBytes int64  `json:"unpackedBytes,omitempty"`
}

// ImageUploadURLs are where the user PUTs the file of an Upload data source. The URLs are
// single-use and short-lived.
type ImageUploadURLs struct {
	External  string `json:"external,omitempty"`
	InCluster string `json:"inCluster,omitempty"`
}
