package v1alpha1

// Project is a tenant (cluster-scoped): the namespace of its VMs, disks and images, with
// quotas, members and defaults.
type Project struct {
	TypeMeta   `json:",inline"`
	ObjectMeta `json:"metadata,omitempty"`

	Spec   ProjectSpec   `json:"spec"`
	Status ProjectStatus `json:"status,omitempty"`
}

// MaxProjectDescription is the longest project description accepted, in bytes.
const MaxProjectDescription = 4096

// ProjectSpec is the desired state of a project.
type ProjectSpec struct {
	// Description is free text for people.
	Description string `json:"description,omitempty"`
	// Quota limits what the project may use; an unset limit is unlimited.
	Quota *ProjectQuota `json:"quota,omitempty"`
	// Defaults are applied to new objects of the project.
	Defaults *ProjectDefaults `json:"defaults,omitempty"`
	// Members are the users with access to the project and their roles.
	Members []ProjectMember `json:"members,omitempty"`
}

// ProjectQuota limits a project; every field is optional and unset means unlimited.
type ProjectQuota struct {
	// Cores is the total virtual cores of the project's VMs.
	Cores *int64 `json:"cores,omitempty"`
	// Memory is the total memory of the project's VMs.
	Memory Quantity `json:"memory,omitempty"`
	// Disk is the total size of the project's disks.
	Disk Quantity `json:"disk,omitempty"`
	// VirtualMachines is the number of VMs.
	VirtualMachines *int64 `json:"virtualMachines,omitempty"`
	// Images is the number of VirtualImages.
	Images *int64 `json:"images,omitempty"`
}

// ProjectDefaults are defaults for new objects of a project.
type ProjectDefaults struct {
	// VirtualMachineClassName is given to VMs created without a class (before the cluster's
	// default class).
	VirtualMachineClassName string `json:"virtualMachineClassName,omitempty"`
}

// ProjectRole is what a member may do in a project.
type ProjectRole string

// Project roles.
const (
	// ProjectRoleAdmin manages everything in the project, members included.
	ProjectRoleAdmin ProjectRole = "Admin"
	// ProjectRoleUser creates and uses VMs, disks, images and operations.
	ProjectRoleUser ProjectRole = "User"
	// ProjectRoleViewer reads objects only.
	ProjectRoleViewer ProjectRole = "Viewer"
)

// ProjectMember is one user of a project.
type ProjectMember struct {
	// Name is the user name as the authenticator knows it.
	Name string      `json:"name"`
	Role ProjectRole `json:"role"`
}

// ProjectPhase is the phase of a project.
type ProjectPhase string

// Project phases.
const (
	ProjectPhaseActive      ProjectPhase = "Active"
	ProjectPhaseTerminating ProjectPhase = "Terminating"
)

// Project condition types.
const (
	// ProjectConditionQuotaExceeded is True when usage is over a quota (e.g. after lowering it).
	ProjectConditionQuotaExceeded = "QuotaExceeded"
)

// ProjectStatus is the observed state of a project.
type ProjectStatus struct {
	Phase ProjectPhase `json:"phase,omitempty"`
	// Used is what the project's objects use, counted against the quota.
	Used               *ProjectUsage `json:"used,omitempty"`
	Conditions         []Condition   `json:"conditions,omitempty"`
	ObservedGeneration int64         `json:"observedGeneration,omitempty"`
}

// ProjectUsage is the resource usage of a project.
type ProjectUsage struct {
	Cores           int64    `json:"cores"`
	Memory          Quantity `json:"memory,omitempty"`
	Disk            Quantity `json:"disk,omitempty"`
	VirtualMachines int64    `json:"virtualMachines"`
	Images          int64    `json:"images"`
}
