package v1alpha1

// VirtualMachineOperation is an imperative action on a VM (start, stop, restart, migrate,
// evict, restore from a snapshot, clone). Its spec is immutable; one operation is active per
// VM at a time, and a newer compatible one supersedes a pending one (reason Superseded).
type VirtualMachineOperation struct {
	TypeMeta   `json:",inline"`
	ObjectMeta `json:"metadata,omitempty"`

	Spec   VirtualMachineOperationSpec   `json:"spec"`
	Status VirtualMachineOperationStatus `json:"status,omitempty"`
}

// LabelEvictOf marks a Stop or Start operation that carries out a step of the Evict
// operation it names (a VM with liveMigrationPolicy Never is evicted by a stop and a start
// elsewhere). The VM controller carries out such a Stop even under runPolicy AlwaysOn.
const LabelEvictOf = "virtualization.rakhsh.io/evict-of"

// VMOPType is the kind of operation.
type VMOPType string

// Operation types.
const (
	VMOPTypeStart   VMOPType = "Start"
	VMOPTypeStop    VMOPType = "Stop"
	VMOPTypeRestart VMOPType = "Restart"
	// VMOPTypeMigrate live-migrates the VM to another node (Deckhouse marks it deprecated in
	// favour of Evict; both are accepted).
	VMOPTypeMigrate VMOPType = "Migrate"
	// VMOPTypeEvict live-migrates the VM off its node.
	VMOPTypeEvict   VMOPType = "Evict"
	VMOPTypeRestore VMOPType = "Restore"
	VMOPTypeClone   VMOPType = "Clone"
	// VMOPTypeHibernate (a Rakhsh addition) saves the running guest's RAM and device state on
	// its node and stops QEMU; the next start resumes the guest where it was (docs/vms.md).
	VMOPTypeHibernate VMOPType = "Hibernate"
)

// VirtualMachineOperationSpec is the whole (immutable) request.
type VirtualMachineOperationSpec struct {
	Type VMOPType `json:"type"`
	// VirtualMachineName is the VM of the same project the operation acts on.
	VirtualMachineName string `json:"virtualMachineName"`
	// Force: for Stop and Restart, power off at once instead of a guest shutdown; for Migrate
	// and Evict, allow CPU throttling to make the migration converge; for Start, boot from
	// the disks and discard the saved RAM state of a hibernated VM. Not allowed with
	// Hibernate.
	Force *bool `json:"force,omitempty"`
	// Restore is required with (and only allowed with) type Restore.
	Restore *VMOPRestoreSpec `json:"restore,omitempty"`
	// Clone is required with (and only allowed with) type Clone.
	Clone *VMOPCloneSpec `json:"clone,omitempty"`
	// Migrate narrows the target nodes; only with Migrate or Evict.
	Migrate *VMOPMigrateSpec `json:"migrate,omitempty"`
	// Evict is the newer Deckhouse name of Migrate; only with Migrate or Evict, and not together
	// with Migrate.
	Evict *VMOPMigrateSpec `json:"evict,omitempty"`
}

// SnapshotOperationMode is how a restore or clone treats what cannot be reproduced.
type SnapshotOperationMode string

// Snapshot operation modes.
const (
	// SnapshotOperationModeDryRun changes nothing and reports what would happen.
	SnapshotOperationModeDryRun SnapshotOperationMode = "DryRun"
	// SnapshotOperationModeStrict fails when anything cannot be reproduced exactly.
	SnapshotOperationModeStrict SnapshotOperationMode = "Strict"
	// SnapshotOperationModeBestEffort skips missing external dependencies.
	SnapshotOperationModeBestEffort SnapshotOperationMode = "BestEffort"
)

// VMOPRestoreSpec restores a VM from one of its snapshots or (a Rakhsh addition) one of its
// backups: exactly one of virtualMachineSnapshotName and virtualMachineBackupName is given.
type VMOPRestoreSpec struct {
	Mode                       SnapshotOperationMode `json:"mode"`
	VirtualMachineSnapshotName string                `json:"virtualMachineSnapshotName,omitempty"`
	// VirtualMachineBackupName is a Completed VirtualMachineBackup of the VM: each backed-up
	// disk that is still the VM's disk gets the backed-up data, and the VM its spec then.
	VirtualMachineBackupName string `json:"virtualMachineBackupName,omitempty"`
}

// VMOPCloneSpec clones a VM (with its disks) under new names. At least one of
// customization.namePrefix, customization.nameSuffix or nameReplacement must be given.
type VMOPCloneSpec struct {
	Mode SnapshotOperationMode `json:"mode"`
	// CloneMode (a Rakhsh addition) is how the clone's disks are made from the snapshot of
	// the source's: Linked (default: qcow2 overlays over the snapshot's files, made at once;
	// the snapshot is kept while they exist) or Full (standalone copies).
	CloneMode       CloneMode               `json:"cloneMode,omitempty"`
	NameReplacement []NameReplacement       `json:"nameReplacement,omitempty"`
	Customization   *VMOPCloneCustomization `json:"customization,omitempty"`
}

// NameReplacement renames one object (or every object of a kind with that name) of a clone.
type NameReplacement struct {
	From NameReplacementFrom `json:"from"`
	// To is the new name (1..59 characters, a DNS-1123 label).
	To string `json:"to"`
}

// NameReplacementFrom selects the object to rename; Kind is optional.
type NameReplacementFrom struct {
	Kind string `json:"kind,omitempty"`
	Name string `json:"name"`
}

// VMOPCloneCustomization adds a prefix and/or a suffix to the cloned objects' names.
type VMOPCloneCustomization struct {
	NamePrefix string `json:"namePrefix,omitempty"`
	NameSuffix string `json:"nameSuffix,omitempty"`
}

// VMOPMigrateSpec narrows where a migration may go.
type VMOPMigrateSpec struct {
	// NodeSelector must match the target node's labels, in addition to the VM's own placement.
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`
}

// VMOPPhase is the phase of an operation.
type VMOPPhase string

// Operation phases.
const (
	VMOPPhasePending     VMOPPhase = "Pending"
	VMOPPhaseInProgress  VMOPPhase = "InProgress"
	VMOPPhaseCompleted   VMOPPhase = "Completed"
	VMOPPhaseFailed      VMOPPhase = "Failed"
	VMOPPhaseTerminating VMOPPhase = "Terminating"
	// VMOPPhaseSuperseded: a newer compatible operation took this one's place before it ran
	// (the Completed condition then carries reason Superseded).
	VMOPPhaseSuperseded VMOPPhase = "Superseded"
)

// Operation condition types.
const (
	// VMOPConditionCompleted is True when the operation finished; its reason says how.
	VMOPConditionCompleted = "Completed"
	// VMOPConditionSignalSent is True once the start/stop/restart signal reached the VM.
	VMOPConditionSignalSent = "SignalSent"
	// VMOPConditionSnapshotReady is True when the snapshot a clone works from is ready.
	VMOPConditionSnapshotReady = "SnapshotReady"
)

// Reasons of the Completed condition.
const (
	VMOPReasonSuperseded                          = "Superseded"
	VMOPReasonVirtualMachineNotFound              = "VirtualMachineNotFound"
	VMOPReasonNotApplicableForPhase               = "NotApplicableForVirtualMachinePhase"
	VMOPReasonNotApplicableForPolicy              = "NotApplicableForVirtualMachineRunPolicy"
	VMOPReasonNotApplicableForLiveMigrationPolicy = "NotApplicableForLiveMigrationPolicy"
	VMOPReasonOtherOperationInProgress            = "OtherOperationInProgress"
	VMOPReasonOperationCompleted                  = "OperationCompleted"
	VMOPReasonOperationFailed                     = "OperationFailed"
	// VMOPReasonNotImplemented fails an operation type this version does not carry out yet.
	VMOPReasonNotImplemented = "NotImplemented"
	// VMOPReasonHotpluggedDevices fails a live migration of a VM with hot-plugged block
	// devices (docs/hotplug.md).
	VMOPReasonHotpluggedDevices = "HotpluggedDevices"
	// VMOPReasonNotHibernatable fails a Hibernate operation that the VM cannot carry out
	// now (hot-plugged devices, changes waiting for a restart, a migration); the message
	// says which.
	VMOPReasonNotHibernatable = "NotHibernatable"
	// VMReasonHotpluggedDevices is the reason of the VM condition Migratable=False the node
	// agent sets while the VM has hot-plugged disks or NICs.
	VMReasonHotpluggedDevices = "HotpluggedDevices"
)

// VirtualMachineOperationStatus is the observed state of an operation.
type VirtualMachineOperationStatus struct {
	Phase VMOPPhase `json:"phase,omitempty"`
	// Progress is a percentage such as "45%" for long operations (migration, clone, restore).
	Progress string `json:"progress,omitempty"`
	// Resources are the objects a restore or clone touches, with their outcome.
	Resources          []VMOPResourceStatus `json:"resources,omitempty"`
	Conditions         []Condition          `json:"conditions,omitempty"`
	ObservedGeneration int64                `json:"observedGeneration,omitempty"`
}

// VMOPResourceStatus is one object a restore or clone acts on.
type VMOPResourceStatus struct {
	APIVersion string `json:"apiVersion,omitempty"`
	Kind       string `json:"kind"`
	Name       string `json:"name"`
	// Status is InProgress, Completed or Failed.
	Status  string `json:"status,omitempty"`
	Message string `json:"message,omitempty"`
}
