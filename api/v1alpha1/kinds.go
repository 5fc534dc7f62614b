package v1alpha1

import "strings"

// Column is one printer column of `rakhsh get`. Path is a dotted path into the object
// (e.g. "status.phase", "spec.cpu.cores"); Format says how to print it.
type Column struct {
	Name   string
	Path   string
	Format string // "" (as is), "age" (from a timestamp), "bytes" (a byte count made human), "bool"
	Wide   bool   // shown only with -o wide
}

// KindInfo describes one kind for clients: its REST resource, scope and printer columns.
type KindInfo struct {
	Kind       string
	Resource   string // plural, lower case: the path segment
	Singular   string
	ShortNames []string
	Namespaced bool
	// HasStatus says the kind has a status subresource.
	HasStatus bool
	Columns   []Column
	// Phases and Conditions are the values status.phase and the condition types may take
	// (nil: not listed); `rakhsh wait` refuses others.
	Phases, Conditions []string
}

var ageCol = Column{Name: "AGE", Path: "metadata.creationTimestamp", Format: "age"}
var phaseCol = Column{Name: "PHASE", Path: "status.phase"}

// Kinds lists every kind the API serves.
var Kinds = []KindInfo{
	{Kind: "Project", Resource: "projects", ShortNames: []string{"proj"}, HasStatus: true,
		Columns: []Column{phaseCol, ageCol}},
	{Kind: "Node", Resource: "nodes", ShortNames: []string{"no"}, HasStatus: true,
		Columns: []Column{{Name: "STATUS", Path: "status.phase"}, {Name: "CPU", Path: "status.capacity.cpu"},
			{Name: "MEMORY", Path: "status.capacity.memory", Format: "bytes"}, {Name: "ACCELERATOR", Path: "status.accelerator"}, ageCol}},
	{Kind: "NodeLease", Resource: "nodeleases", ShortNames: []string{"nlease", "nleases"},
		Columns: []Column{{Name: "HOLDER", Path: "spec.holderIdentity"}, {Name: "RENEWED", Path: "spec.renewTime", Format: "age"},
			{Name: "DURATION", Path: "spec.leaseDurationSeconds"}, {Name: "TRANSITIONS", Path: "spec.leaseTransitions", Wide: true}, ageCol}},
	{Kind: "ClusterVirtualImage", Resource: "clustervirtualimages", ShortNames: []string{"cvi", "cvis"}, HasStatus: true,
		Columns: imageColumns()},
	{Kind: "VirtualImage", Resource: "virtualimages", ShortNames: []string{"vi", "vis"}, Namespaced: true, HasStatus: true,
		Columns: imageColumns()},
	{Kind: "VirtualDisk", Resource: "virtualdisks", ShortNames: []string{"vd", "vds"}, Namespaced: true, HasStatus: true,
		Columns: []Column{phaseCol, {Name: "CAPACITY", Path: "status.capacity"},
			{Name: "VIRTUALMACHINE", Path: "status.attachedToVirtualMachines.0.name"},
			{Name: "STORAGECLASS", Path: "status.storageClassName", Wide: true}, {Name: "NODE", Path: "status.nodeName", Wide: true}, ageCol}},
	{Kind: "VirtualDiskLease", Resource: "virtualdiskleases", ShortNames: []string{"vdlease", "vdleases"}, Namespaced: true,
		Columns: []Column{{Name: "HOLDER", Path: "spec.holderNode"}, {Name: "VIRTUALMACHINE", Path: "spec.virtualMachineName"},
			{Name: "TOKEN", Path: "metadata.resourceVersion"}, {Name: "TRANSITIONS", Path: "spec.leaseTransitions", Wide: true},
			{Name: "ACQUIRED", Path: "spec.acquireTime", Format: "age"}}},
	{Kind: "VirtualMachine", Resource: "virtualmachines", ShortNames: []string{"vm", "vms"}, Namespaced: true, HasStatus: true,
		Columns: []Column{phaseCol, {Name: "CORES", Path: "spec.cpu.cores"},
			{Name: "COREFRACTION", Path: "spec.cpu.coreFraction", Wide: true},
			{Name: "MEMORY", Path: "spec.memory.size"}, {Name: "NODE", Path: "status.nodeName"},
			{Name: "IPADDRESS", Path: "status.ipAddress"},
			{Name: "MIGRATION", Path: "status.migrationState.phase", Wide: true}, {Name: "TARGET", Path: "status.migrationState.target.node", Wide: true},
			{Name: "PROGRESS", Path: "status.migrationState.progress.percent", Wide: true}, ageCol}},
	{Kind: "VirtualMachineClass", Resource: "virtualmachineclasses", ShortNames: []string{"vmc", "vmcs", "vmclass"}, HasStatus: true,
		Columns: []Column{phaseCol, ageCol}},
	{Kind: "VirtualMachineIPAddress", Resource: "virtualmachineipaddresses", ShortNames: []string{"vmip", "vmips"}, Namespaced: true, HasStatus: true,
		Columns: []Column{{Name: "ADDRESS", Path: "status.address"}, phaseCol, {Name: "VIRTUALMACHINE", Path: "status.virtualMachineName"}, ageCol}},
	{Kind: "VirtualMachineIPAddressLease", Resource: "virtualmachineipaddressleases", ShortNames: []string{"vmipl", "vmipls", "vmiplease"}, HasStatus: true,
		Columns: []Column{{Name: "VIRTUALMACHINEIPADDRESS", Path: "spec.virtualMachineIPAddressRef.name"}, phaseCol, ageCol}},
	{Kind: "VirtualMachineMACAddress", Resource: "virtualmachinemacaddresses", ShortNames: []string{"vmmac", "vmmacs"}, Namespaced: true, HasStatus: true,
		Columns: []Column{{Name: "ADDRESS", Path: "status.address"}, phaseCol, {Name: "VIRTUALMACHINE", Path: "status.virtualMachineName"}, ageCol}},
	{Kind: "VirtualMachineMACAddressLease", Resource: "virtualmachinemacaddressleases", ShortNames: []string{"vmmacl", "vmmacls", "vmmaclease"}, HasStatus: true,
		Columns: []Column{{Name: "VIRTUALMACHINEMACADDRESS", Path: "spec.virtualMachineMACAddressRef.name"}, phaseCol, ageCol}},
	{Kind: "VirtualMachineOperation", Resource: "virtualmachineoperations", ShortNames: []string{"vmop", "vmops"}, Namespaced: true, HasStatus: true,
		Columns: []Column{phaseCol, {Name: "TYPE", Path: "spec.type"}, {Name: "VIRTUALMACHINE", Path: "spec.virtualMachineName"}, ageCol}},
	{Kind: "VirtualMachineBlockDeviceAttachment", Resource: "virtualmachineblockdeviceattachments", ShortNames: []string{"vmbda", "vmbdas"}, Namespaced: true, HasStatus: true,
		Columns: []Column{phaseCol, {Name: "VIRTUALMACHINE", Path: "spec.virtualMachineName"}, ageCol}},
	{Kind: "VirtualDiskSnapshot", Resource: "virtualdisksnapshots", ShortNames: []string{"vdsnapshot", "vdsnapshots"}, Namespaced: true, HasStatus: true,
		Columns: []Column{phaseCol, {Name: "CONSISTENT", Path: "status.consistent"}, {Name: "VIRTUALDISK", Path: "spec.virtualDiskName"}, ageCol}},
	{Kind: "VirtualMachineSnapshot", Resource: "virtualmachinesnapshots", ShortNames: []string{"vmsnapshot", "vmsnapshots"}, Namespaced: true, HasStatus: true,
		Columns: []Column{phaseCol, {Name: "CONSISTENT", Path: "status.consistent"}, {Name: "VIRTUALMACHINE", Path: "spec.virtualMachineName"},
			{Name: "RAM", Path: "status.ram.size", Format: "bytes"}, ageCol}},
	{Kind: "BackupTarget", Resource: "backuptargets", ShortNames: []string{"bt", "bts"}, HasStatus: true,
		Columns: []Column{{Name: "TYPE", Path: "spec.type"}, {Name: "PATH", Path: "spec.directory.path"}, ageCol}},
	{Kind: "VirtualMachineBackup", Resource: "virtualmachinebackups", ShortNames: []string{"vmbackup", "vmbackups"}, Namespaced: true, HasStatus: true,
		Columns: []Column{phaseCol, {Name: "VIRTUALMACHINE", Path: "spec.virtualMachineName"}, {Name: "TARGET", Path: "spec.backupTargetName"},
			{Name: "PROGRESS", Path: "status.progress"}, {Name: "READ", Path: "status.size.read", Format: "bytes"},
			{Name: "STORED", Path: "status.size.stored", Format: "bytes"}, {Name: "KIND", Path: "status.disks.0.kind", Wide: true},
			{Name: "NODE", Path: "status.nodeName", Wide: true}, ageCol}},
	{Kind: "BackupSchedule", Resource: "backupschedules", ShortNames: []string{"bsched", "bscheds"}, Namespaced: true, HasStatus: true,
		Columns: []Column{{Name: "VIRTUALMACHINE", Path: "spec.virtualMachineName"}, {Name: "TARGET", Path: "spec.backupTargetName"},
			{Name: "SCHEDULE", Path: "spec.schedule"}, {Name: "SUSPEND", Path: "spec.suspend", Format: "bool"},
			{Name: "LAST", Path: "status.lastScheduleTime", Format: "age"}, {Name: "LASTBACKUP", Path: "status.lastBackupName", Wide: true}, ageCol}},
	{Kind: "StorageClass", Resource: "storageclasses", ShortNames: []string{"sc"}, HasStatus: true,
		Columns: []Column{{Name: "TYPE", Path: "spec.type"}, {Name: "DEFAULT", Path: "metadata.annotations.storageclass\\.kubernetes\\.io/is-default-class"},
			{Name: "LOCALPATH", Path: "spec.local.path", Wide: true}, {Name: "SHAREDPATH", Path: "spec.shared.path", Wide: true}, ageCol}},
	{Kind: "ClusterNetwork", Resource: "clusternetworks", ShortNames: []string{"cnet", "cnets"}, HasStatus: true,
		Columns: []Column{{Name: "TYPE", Path: "spec.type"}, {Name: "SUBNET", Path: "spec.subnet"}, phaseCol, {Name: "VNI", Path: "status.vni", Wide: true}, ageCol}},
	{Kind: "Secret", Resource: "secrets", ShortNames: []string{"secret"}, Namespaced: true,
		Columns: []Column{{Name: "TYPE", Path: "type"}, ageCol}},
	{Kind: "Event", Resource: "events", ShortNames: []string{"ev"}, Namespaced: true,
		Columns: []Column{{Name: "TYPE", Path: "type"}, {Name: "REASON", Path: "reason"},
			{Name: "OBJECT", Path: "involvedObject.name"}, {Name: "COUNT", Path: "count"}, {Name: "MESSAGE", Path: "message"},
			{Name: "LAST SEEN", Path: "lastTimestamp", Format: "age"}}},
	{Kind: "User", Resource: "users", ShortNames: []string{"usr"},
		Columns: []Column{{Name: "DISPLAYNAME", Path: "spec.displayName"}, {Name: "CLUSTERROLE", Path: "spec.clusterRole"},
			{Name: "DISABLED", Path: "spec.disabled", Format: "bool"}, {Name: "EMAIL", Path: "spec.email", Wide: true}, ageCol}},
}

// ReadOnlyKinds are kinds the API serves without storing them: computed on each read, they
// can only be got and listed. They are not in Kinds (which lists the stored kinds: apply,
// migration and the conformance of every kind go through those); LookupKind finds them.
var ReadOnlyKinds = []KindInfo{
	{Kind: "ControlPlane", Resource: "controlplanes", Singular: "controlplane", ShortNames: []string{"cp"},
		Columns: []Column{{Name: "STORE", Path: "status.store"}, {Name: "LEADER", Path: "status.leader.name"},
			{Name: "TERM", Path: "status.leader.term"}, {Name: "LEADER-SINCE", Path: "status.leader.since", Format: "age"},
			{Name: "LEASE-TTL", Path: "status.leaseTTLSeconds", Wide: true}}},
}

func imageColumns() []Column {
	return []Column{phaseCol, {Name: "CDROM", Path: "status.cdrom", Format: "bool"}, {Name: "PROGRESS", Path: "status.progress"},
		{Name: "STOREDSIZE", Path: "status.size.stored"}, {Name: "UNPACKEDSIZE", Path: "status.size.unpacked"}, ageCol}
}

// kindStates lists the phases and condition types of the kinds that have them.
var kindStates = map[string][2][]string{
	"Project":     {{"Active", "Terminating"}, {"QuotaExceeded"}},
	"Node":        {{"Ready", "NotReady", "Unknown"}, {NodeConditionReady, NodeConditionKVM, NodeConditionMaintenance}},
	"VirtualDisk": {{"Pending", "Provisioning", "WaitForUserUpload", "WaitForFirstConsumer", "Ready", "Resizing", "Failed", "Terminating", "Migrating"}, {"DatasourceReady", "Ready", "Resizing", "Snapshotting", "InUse", "Migrating", "Terminating"}},
	"VirtualImage": {{"Pending", "Provisioning", "WaitForUserUpload", "Ready", "Failed", "Terminating", "ImageLost"},
		{"DatasourceReady", "Ready", "InUse", "Terminating"}},
	"ClusterVirtualImage": {{"Pending", "Provisioning", "WaitForUserUpload", "Ready", "Failed", "Terminating", "ImageLost"},
		{"DatasourceReady", "Ready", "InUse", "Terminating"}},
	"VirtualMachine": {{"Pending", "Starting", "Running", "Stopping", "Stopped", "Migrating", "Pause", "Degraded", "Terminating"},
		{VMConditionIPAddressReady, VMConditionMACAddressReady, VMConditionClassReady, VMConditionBlockDevicesReady, VMConditionRunning,
			VMConditionMigrating, VMConditionMigratable, VMConditionProvisioningReady, VMConditionAgentReady, VMConditionConfigurationApplied,
			VMConditionAwaitingRestartToApplyConfiguration, VMConditionSizingPolicyMatched, VMConditionSnapshotting, VMConditionFilesystemFrozen,
			VMConditionSoftwareEmulation, VMConditionRestartBackoff, VMConditionScheduled, VMConditionGuestReady, VMConditionHighAvailability, VMConditionHibernated}},
	"VirtualMachineClass":     {{"Pending", "Ready", "Terminating"}, {"Discovered", "InUse"}},
	"VirtualMachineOperation": {{"Pending", "InProgress", "Completed", "Failed", "Terminating", "Superseded"}, {"Completed", "SignalSent", "SnapshotReady"}},
	"ClusterNetwork":          {{"Pending", "Ready", "Failed"}, {"Ready"}},
	"VirtualMachineBackup":    {{"Pending", "InProgress", "Completed", "Failed"}, {BackupConditionCompleted, BackupConditionVerified}},
}

func init() {
	for i := range Kinds {
		k := &Kinds[i]
		if k.Singular == "" {
			k.Singular = strings.ToLower(k.Kind)
		}
		if st, ok := kindStates[k.Kind]; ok {
			k.Phases, k.Conditions = st[0], st[1]
		}
	}
}

// LookupKind finds a kind (stored or read-only) by its name, plural, singular or short name
// (case-insensitive).
func LookupKind(name string) (*KindInfo, bool) {
	n := strings.ToLower(name)
	all := make([]*KindInfo, 0, len(Kinds)+len(ReadOnlyKinds))
	for i := range Kinds {
		all = append(all, &Kinds[i])
	}
	for i := range ReadOnlyKinds {
		all = append(all, &ReadOnlyKinds[i])
	}
	for _, k := range all {
		if strings.ToLower(k.Kind) == n || k.Resource == n || k.Singular == n {
			return k, true
		}
		for _, s := range k.ShortNames {
			if s == n {
				return k, true
			}
		}
	}
	return nil, false
}

// KindByResource finds a kind by its REST resource name.
func KindByResource(resource string) (*KindInfo, bool) {
	for i := range Kinds {
		if Kinds[i].Resource == resource {
			return &Kinds[i], true
		}
	}
	return nil, false
}

// KindByName finds a kind by its exact Kind name.
func KindByName(kind string) (*KindInfo, bool) {
	for i := range Kinds {
		if Kinds[i].Kind == kind {
			return &Kinds[i], true
		}
	}
	return nil, false
}
