package v1alpha1

// BackupTarget is a cluster-wide place where VM backups are kept: a chunk store that every
// backup of every VM kept there shares, so that data stored once is not stored again.
type BackupTarget struct {
	TypeMeta   `json:",inline"`
	ObjectMeta `json:"metadata,omitempty"`
	Spec       BackupTargetSpec   `json:"spec"`
	Status     BackupTargetStatus `json:"status,omitempty"`
}

// BackupTargetType says what a target is. It is immutable.
type BackupTargetType string

// BackupTargetTypeDirectory: a directory on the node that runs the backup; a shared mount
// (NFS) at the same path on every node makes one store for the whole cluster.
const BackupTargetTypeDirectory BackupTargetType = "Directory"

// BackupTargetSpec is the desired target. Exactly the section of its type is set.
type BackupTargetSpec struct {
	Type      BackupTargetType       `json:"type"`
	Directory *BackupTargetDirectory `json:"directory,omitempty"`
}

// BackupTargetDirectory is a Directory target's place.
type BackupTargetDirectory struct {
	// Path is an absolute directory (required): chunks go to PATH/chunks, manifests to
	// PATH/manifests.
	Path string `json:"path"`
}

// BackupTargetStatus is the observed state of a target.
type BackupTargetStatus struct {
	Conditions []Condition `json:"conditions,omitempty"`
}

// VirtualMachineBackup is one backup run of a VM into a BackupTarget: every disk of the VM
// at one instant, and the VM's spec. Its spec is immutable. The first backup of a VM in a
// target reads the whole disks; later ones read only the blocks written since the previous
// backup (QEMU's persistent dirty bitmaps) and store only chunks the target lacks.
type VirtualMachineBackup struct {
	TypeMeta   `json:",inline"`
	ObjectMeta `json:"metadata,omitempty"`
	Spec       VirtualMachineBackupSpec   `json:"spec"`
	Status     VirtualMachineBackupStatus `json:"status,omitempty"`
}

// BackupMode says how the guest is held still for the instant the backup is taken.
type BackupMode string

// Backup modes (as Proxmox names them).
const (
	// BackupModeSnapshot (default): the VM runs on; its filesystems are frozen through the
	// guest agent (when it answers) for the instant the copy starts.
	BackupModeSnapshot BackupMode = "snapshot"
	// BackupModeSuspend: the VM's vCPUs are paused for the instant the copy starts (no guest
	// agent needed); the copy itself runs while the VM runs.
	BackupModeSuspend BackupMode = "suspend"
	// BackupModeStop: a running VM is shut down (a Stop operation) for the backup, its disks
	// are read while it is stopped, and it is started again (a Start operation) when the
	// backup ends; a stopped VM is backed up as it is.
	BackupModeStop BackupMode = "stop"
)

// VirtualMachineBackupSpec names the VM, the target and the mode.
type VirtualMachineBackupSpec struct {
	// VirtualMachineName is the VM of the same project to back up, running or stopped.
	VirtualMachineName string `json:"virtualMachineName"`
	// BackupTargetName is the BackupTarget the backup is stored in.
	BackupTargetName string `json:"backupTargetName"`
	// Mode (default snapshot) says how the guest is held still.
	Mode BackupMode `json:"mode,omitempty"`
	// BandwidthLimit bounds how fast the backup reads the disks, in bytes per second (a
	// quantity such as 50Mi; at least 1Mi; empty: no limit), so that a backup does not
	// starve the VM's own disk traffic.
	BandwidthLimit Quantity `json:"bandwidthLimit,omitempty"`
}

// BackupPhase is the phase of a VirtualMachineBackup.
type BackupPhase string

// Backup phases.
const (
	BackupPhasePending    BackupPhase = "Pending"
	BackupPhaseInProgress BackupPhase = "InProgress"
	BackupPhaseCompleted  BackupPhase = "Completed"
	BackupPhaseFailed     BackupPhase = "Failed"
)

// Backup condition type and reasons.
const (
	BackupConditionCompleted = "Completed"
	// BackupConditionVerified is the result of the last verification (rakhsh backup verify).
	BackupConditionVerified = "Verified"

	BackupReasonWaiting    = "WaitingForVirtualMachine"
	BackupReasonInProgress = "BackingUp"
	BackupReasonCompleted  = "Completed"
	BackupReasonFailed     = "BackupFailed"
	BackupReasonVerified   = "Verified"
	BackupReasonCorrupted  = "Corrupted"
)

// AnnotationVerifyRequest on a VirtualMachineBackup asks the node that keeps it to read back
// every chunk of the backup and check its hash (`rakhsh backup verify` sets it to a fresh
// value). The node writes the result to the Verified condition, whose message ends with
// "(request VALUE)".
const AnnotationVerifyRequest = "virtualization.rakhsh.io/verify-request"

// Kinds of a backed-up disk.
const (
	BackupKindFull        = "Full"
	BackupKindIncremental = "Incremental"
)

// VirtualMachineBackupStatus is the observed state of a backup.
type VirtualMachineBackupStatus struct {
	Phase BackupPhase `json:"phase,omitempty"`
	// NodeName is the node whose agent takes the backup: the VM's node.
	NodeName string `json:"nodeName,omitempty"`
	// VirtualMachineUID is the uid of the VM backed up.
	VirtualMachineUID string `json:"virtualMachineUID,omitempty"`
	// Stopped says the VM was stopped when the backup was handed over: the node reads its
	// disks through a qemu-storage-daemon of its own, and the backup fails if the VM starts.
	Stopped bool `json:"stopped,omitempty"`
	// StoppedVM says the backup (mode stop) shut the running VM down; RestartedVM that it
	// asked for it to start again once it ended.
	StoppedVM   bool `json:"stoppedVM,omitempty"`
	RestartedVM bool `json:"restartedVM,omitempty"`
	// Consistent says the guest's filesystems were frozen (or its vCPUs paused) at the
	// instant of the backup.
	Consistent *bool `json:"consistent,omitempty"`
	// Manifest is the backup's manifest file, relative to the target's directory.
	Manifest string `json:"manifest,omitempty"`
	// Progress is the share of the data to read that has been stored ("42%").
	Progress string `json:"progress,omitempty"`
	// Disks are the backed-up disks.
	Disks []BackupDisk `json:"disks,omitempty"`
	// Size sums the disks' figures.
	Size *BackupSize `json:"size,omitempty"`
	// StartedAt and CompletedAt bound the run.
	StartedAt   *Time `json:"startedAt,omitempty"`
	CompletedAt *Time `json:"completedAt,omitempty"`
	// Duration is how long the run took, ThroughputMiBps the data read per second of it.
	Duration        string      `json:"duration,omitempty"`
	ThroughputMiBps string      `json:"throughputMiBps,omitempty"`
	Conditions      []Condition `json:"conditions,omitempty"`
	// ObservedGeneration is the generation the status describes.
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
}

// BackupDisk is one disk of a backup.
type BackupDisk struct {
	// Name is the VirtualDisk's name, VirtualDiskUID its uid.
	Name           string `json:"name"`
	VirtualDiskUID string `json:"virtualDiskUID,omitempty"`
	// Kind is Full or Incremental; FullReason says why a disk was read whole when an
	// earlier backup exists.
	Kind       string `json:"kind"`
	FullReason string `json:"fullReason,omitempty"`
	BackupSize `json:",inline"`
}

// BackupSize are the byte counts of a backup.
type BackupSize struct {
	// Capacity is the disks' virtual size.
	Capacity int64 `json:"capacity"`
	// Read is what was read from the disks (for an incremental backup, the changed blocks).
	Read int64 `json:"read"`
	// Stored is what the backup added to the target, compressed (chunks it already had
	// cost nothing).
	Stored int64 `json:"stored"`
	// Chunks counts the backup's chunks, NewChunks those the target did not have.
	Chunks    int `json:"chunks"`
	NewChunks int `json:"newChunks"`
}

// BackupSchedule takes backups of a VM on a cron schedule and prunes the ones it took by a
// retention policy.
type BackupSchedule struct {
	TypeMeta   `json:",inline"`
	ObjectMeta `json:"metadata,omitempty"`
	Spec       BackupScheduleSpec   `json:"spec"`
	Status     BackupScheduleStatus `json:"status,omitempty"`
}

// BackupScheduleSpec is what to back up, when, and what to keep.
type BackupScheduleSpec struct {
	// VirtualMachineName is the VM of the same project to back up.
	VirtualMachineName string `json:"virtualMachineName"`
	// BackupTargetName is the BackupTarget the backups go to.
	BackupTargetName string `json:"backupTargetName"`
	// Schedule is a cron expression of five fields (minute hour day-of-month month
	// day-of-week, in UTC), or a descriptor such as @daily or @every 6h.
	Schedule string `json:"schedule"`
	// Mode and BandwidthLimit are those of each backup.
	Mode           BackupMode `json:"mode,omitempty"`
	BandwidthLimit Quantity   `json:"bandwidthLimit,omitempty"`
	// Retention says which of the schedule's completed backups are kept; the others are
	// deleted after each new backup completes. Empty: all are kept.
	Retention BackupRetention `json:"retention,omitempty"`
	// Suspend stops new backups (and pruning) while true.
	Suspend bool `json:"suspend,omitempty"`
}

// BackupRetention is a retention policy, as Proxmox's: each rule keeps the newest backup of
// each of its last N periods that hold a backup, not counting periods a rule before it
// already kept a backup of. Rules apply in the order keepLast, keepHourly, keepDaily,
// keepWeekly, keepMonthly.
type BackupRetention struct {
	KeepLast    int `json:"keepLast,omitempty"`
	KeepHourly  int `json:"keepHourly,omitempty"`
	KeepDaily   int `json:"keepDaily,omitempty"`
	KeepWeekly  int `json:"keepWeekly,omitempty"`
	KeepMonthly int `json:"keepMonthly,omitempty"`
}

// LabelBackupSchedule on a VirtualMachineBackup names the BackupSchedule it belongs to: the
// schedule prunes the backups that carry it.
const LabelBackupSchedule = "virtualization.rakhsh.io/backup-schedule"

// BackupScheduleStatus is the observed state of a schedule.
type BackupScheduleStatus struct {
	// LastScheduleTime is when the schedule last created a backup, LastBackupName that backup.
	LastScheduleTime *Time  `json:"lastScheduleTime,omitempty"`
	LastBackupName   string `json:"lastBackupName,omitempty"`
	// NextScheduleTime is when it creates the next one.
	NextScheduleTime *Time `json:"nextScheduleTime,omitempty"`
	// Pruned counts the backups the retention policy deleted.
	Pruned             int64       `json:"pruned,omitempty"`
	Conditions         []Condition `json:"conditions,omitempty"`
	ObservedGeneration int64       `json:"observedGeneration,omitempty"`
}

// LabelBackupOf marks the Stop and Start operations a backup in mode stop made of its VM.
const LabelBackupOf = "virtualization.rakhsh.io/backup-of"
