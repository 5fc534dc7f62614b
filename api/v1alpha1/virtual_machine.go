package v1alpha1

import (
	"encoding/json"
	"time"
)

// VirtualMachine is a virtual machine of a project: its CPU, memory, disks, networks, firmware,
// provisioning and placement (spec), and what the controllers and the node agent observe of it
// (status). Field names follow Deckhouse Virtualization's VirtualMachine.
type VirtualMachine struct {
	TypeMeta   `json:",inline"`
	ObjectMeta `json:"metadata,omitempty"`

	Spec   VirtualMachineSpec   `json:"spec"`
	Status VirtualMachineStatus `json:"status,omitempty"`
}

// VirtualMachineSpec is the desired state of a virtual machine.
type VirtualMachineSpec struct {
	// VirtualMachineClassName names the VirtualMachineClass (CPU model, placement, sizing
	// policies). Optional for now: without it the VM gets the host CPU model and no sizing policy.
	VirtualMachineClassName string `json:"virtualMachineClassName,omitempty"`
	// RunPolicy says when the VM runs; default AlwaysOnUnlessStoppedManually.
	RunPolicy RunPolicy `json:"runPolicy,omitempty"`
	// CPU is the number of cores and the guaranteed share of each.
	CPU VirtualMachineCPU `json:"cpu"`
	// Memory is the guest memory.
	Memory VirtualMachineMemory `json:"memory"`
	// BlockDeviceRefs are the disks and images of the VM. Without bootOrder on any entry the
	// list order is the boot order.
	BlockDeviceRefs []BlockDeviceSpecRef `json:"blockDeviceRefs,omitempty"`
	// Networks are the network interfaces; without any, the VM gets one Main interface.
	Networks []NetworkSpec `json:"networks,omitempty"`
	// VirtualMachineIPAddressName names the VirtualMachineIPAddress claim to use for the Main
	// network; when empty a claim named after the VM is created.
	VirtualMachineIPAddressName string `json:"virtualMachineIPAddressName,omitempty"`
	// OSType selects the virtual hardware set; default Generic.
	OSType OSType `json:"osType,omitempty"`
	// Bootloader selects the firmware; default BIOS.
	Bootloader Bootloader `json:"bootloader,omitempty"`
	// EnableParavirtualization connects disks and NICs over virtio; default true.
	EnableParavirtualization *bool `json:"enableParavirtualization,omitempty"`
	// Provisioning is the cloud-init or sysprep configuration handed to the guest.
	Provisioning *Provisioning `json:"provisioning,omitempty"`
	// LiveMigrationPolicy says how migrations are made; default PreferSafe.
	LiveMigrationPolicy LiveMigrationPolicy `json:"liveMigrationPolicy,omitempty"`
	// Disruptions says how changes that need a restart are applied; default restartApprovalMode Manual.
	Disruptions *Disruptions `json:"disruptions,omitempty"`
	// NodeSelector must match a node's labels for the VM to run there.
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`
	// Affinity holds node affinity and affinity/anti-affinity to other VMs.
	Affinity *VMAffinity `json:"affinity,omitempty"`
	// Tolerations let the VM run on nodes with matching taints.
	Tolerations []Toleration `json:"tolerations,omitempty"`
	// PriorityClassName is a scheduling priority class name (accepted for compatibility).
	PriorityClassName string `json:"priorityClassName,omitempty"`
	// TerminationGracePeriodSeconds is how long a stop waits for the guest to shut down before
	// the VM is powered off; default 60.
	TerminationGracePeriodSeconds *int64 `json:"terminationGracePeriodSeconds,omitempty"`
}

// VirtualMachineCPU is the CPU of a VM.
type VirtualMachineCPU struct {
	// Cores is the number of virtual cores, at least 1.
	Cores int `json:"cores"`
	// CoreFraction is the guaranteed share of each core, "1%".."100%". When empty it comes from
	// the class's sizing policy (defaultCoreFraction); a VM without a class defaults to "100%".
	CoreFraction string `json:"coreFraction,omitempty"`
	// DedicatedCores pins each vCPU to a host core of its own that no other dedicated VM
	// gets (a Rakhsh addition; the class's sizing policy says whether it is allowed). A VM
	// whose policy allows only dedicated cores gets true at admission.
	DedicatedCores bool `json:"dedicatedCores,omitempty"`
	// MaxCores is the most cores the VM may grow to while it runs (a Rakhsh addition): QEMU
	// starts with MaxCores vCPU slots of which Cores are present, and raising Cores up to
	// MaxCores hot-adds vCPUs. 0 (unset): no room to grow; a change of Cores waits for a
	// restart. At least Cores, at most 240. Changing it needs a restart.
	MaxCores int `json:"maxCores,omitempty"`
}

// VirtualMachineMemory is the memory of a VM.
type VirtualMachineMemory struct {
	// Size is the guest memory, at least 16Mi.
	Size Quantity `json:"size"`
	// MaxSize is the most memory the VM may grow to while it runs (a Rakhsh addition): QEMU
	// starts with Size as boot memory and a virtio-mem device of MaxSize-Size, and Size may
	// then move live between its value at start and MaxSize. Empty: no room to grow. Sizes
	// must be multiples of 2Mi with it. Changing it needs a restart. The guest needs a
	// virtio-mem driver (Linux 5.8+, Windows with the virtio-win viomem driver).
	MaxSize Quantity `json:"maxSize,omitempty"`
}

// RunPolicy says when a VM runs.
type RunPolicy string

// Run policies.
const (
	// RunPolicyAlwaysOnUnlessStoppedManually starts the VM and restarts it after failures, but
	// not after a shutdown from inside the guest or a Stop operation. The default.
	RunPolicyAlwaysOnUnlessStoppedManually RunPolicy = "AlwaysOnUnlessStoppedManually"
	// RunPolicyAlwaysOn keeps the VM running whatever happens.
	RunPolicyAlwaysOn RunPolicy = "AlwaysOn"
	// RunPolicyAlwaysOff keeps the VM stopped.
	RunPolicyAlwaysOff RunPolicy = "AlwaysOff"
	// RunPolicyManual leaves starting and stopping to operations and the guest.
	RunPolicyManual RunPolicy = "Manual"
)

// VMCleanupFinalizer keeps a VM object until the agent of its node has stopped its QEMU and
// removed its run directory. The VM controller alone adds and removes it: the agent, when it
// has cleaned up, releases the VM (clears status.nodeName), and the scheduler binds only VMs
// that carry it.
const VMCleanupFinalizer = "virtualization.rakhsh.io/vm-cleanup"

// OSType selects the virtual hardware suited to a guest family.
type OSType string

// OS types.
const (
	OSTypeGeneric OSType = "Generic"
	OSTypeWindows OSType = "Windows"
	// OSTypeLegacy is for guests without AHCI or virtio drivers: i440fx and BIOS only.
	OSTypeLegacy OSType = "Legacy"
)

// Bootloader selects the VM firmware.
type Bootloader string

// Bootloaders.
const (
	BootloaderBIOS              Bootloader = "BIOS"
	BootloaderEFI               Bootloader = "EFI"
	BootloaderEFIWithSecureBoot Bootloader = "EFIWithSecureBoot"
)

// LiveMigrationPolicy says how live migrations of a VM are made.
type LiveMigrationPolicy string

// Live migration policies.
const (
	// LiveMigrationPolicyManual: only migrations asked for by an operation.
	LiveMigrationPolicyManual LiveMigrationPolicy = "Manual"
	// LiveMigrationPolicyNever: the VM is never live-migrated.
	LiveMigrationPolicyNever LiveMigrationPolicy = "Never"
	// LiveMigrationPolicyAlwaysSafe: never throttle the guest CPU to make a migration converge.
	LiveMigrationPolicyAlwaysSafe LiveMigrationPolicy = "AlwaysSafe"
	// LiveMigrationPolicyPreferSafe: no throttling unless an operation asks with force. The default.
	LiveMigrationPolicyPreferSafe LiveMigrationPolicy = "PreferSafe"
	// LiveMigrationPolicyAlwaysForced: always throttle when needed.
	LiveMigrationPolicyAlwaysForced LiveMigrationPolicy = "AlwaysForced"
	// LiveMigrationPolicyPreferForced: throttle unless an operation says force=false.
	LiveMigrationPolicyPreferForced LiveMigrationPolicy = "PreferForced"
)

// Disruptions says how changes that need a restart of the VM are applied.
type Disruptions struct {
	// RestartApprovalMode is Manual (default: wait for a restart by the user) or Automatic.
	RestartApprovalMode RestartApprovalMode `json:"restartApprovalMode,omitempty"`
}

// RestartApprovalMode says who restarts a VM to apply a change.
type RestartApprovalMode string

// Restart approval modes.
const (
	RestartApprovalModeManual    RestartApprovalMode = "Manual"
	RestartApprovalModeAutomatic RestartApprovalMode = "Automatic"
)

// BlockDeviceKind is the kind of object a block device reference names.
type BlockDeviceKind string

// Block device kinds.
const (
	BlockDeviceKindVirtualDisk         BlockDeviceKind = "VirtualDisk"
	BlockDeviceKindVirtualImage        BlockDeviceKind = "VirtualImage"
	BlockDeviceKindClusterVirtualImage BlockDeviceKind = "ClusterVirtualImage"
)

// BlockDeviceSpecRef references a disk or image of a VM.
type BlockDeviceSpecRef struct {
	Kind BlockDeviceKind `json:"kind"`
	Name string          `json:"name"`
	// BootOrder is the boot priority, 1 first. Rakhsh addition; when no entry has one, the list
	// order is the boot order.
	BootOrder *int `json:"bootOrder,omitempty"`
}

// NetworkType is the kind of network an interface is connected to.
type NetworkType string

// Network types.
const (
	// NetworkTypeMain is the project's default network (NAT); at most one, without a name.
	NetworkTypeMain NetworkType = "Main"
	// NetworkTypeNetwork is a network of the project, by name.
	NetworkTypeNetwork NetworkType = "Network"
	// NetworkTypeClusterNetwork is a ClusterNetwork, by name.
	NetworkTypeClusterNetwork NetworkType = "ClusterNetwork"
)

// NetworkSpec is one network interface of a VM.
type NetworkSpec struct {
	Type NetworkType `json:"type"`
	// Name of the network; required unless Type is Main.
	Name string `json:"name,omitempty"`
	// VirtualMachineMACAddressName names the MAC claim to use; one is created when empty.
	VirtualMachineMACAddressName string `json:"virtualMachineMACAddressName,omitempty"`
	// PortForwards publish ports of the VM on the host it runs on (a Rakhsh addition; NAT
	// networks only, and only interfaces with an IP address).
	PortForwards []PortForward `json:"portForwards,omitempty"`
	// Inbound, when set, is a basic security group of the interface (a Rakhsh addition): only
	// traffic a rule allows, plus replies to the VM's own traffic, reaches the VM. Unset: all.
	Inbound *InboundPolicy `json:"inbound,omitempty"`
}

// InboundPolicy lists what may reach a VM interface. An empty rule list lets nothing in but
// replies (and DHCP and DNS answers).
type InboundPolicy struct {
	Rules []InboundRule `json:"rules,omitempty"`
}

// InboundRule allows one protocol, on a port or a range of ports, from some source networks.
type InboundRule struct {
	// Protocol is TCP (default), UDP or ICMP (echo requests; no ports).
	Protocol string `json:"protocol,omitempty"`
	// Port is the first allowed destination port (TCP and UDP; required).
	Port int `json:"port,omitempty"`
	// EndPort, when set, makes the rule a range Port..EndPort.
	EndPort int `json:"endPort,omitempty"`
	// From lists source IPv4 addresses or CIDRs; empty: from anywhere.
	From []string `json:"from,omitempty"`
}

// PortForward sends traffic to HostPort on any address of the VM's host to Port of the VM.
type PortForward struct {
	// Protocol is TCP (default) or UDP.
	Protocol string `json:"protocol,omitempty"`
	// HostPort is the port on the host, 1..65535; unique per protocol on a host.
	HostPort int `json:"hostPort"`
	// Port is the port in the VM, 1..65535.
	Port int `json:"port"`
}

// ProvisioningType is the kind of guest provisioning.
type ProvisioningType string

// Provisioning types.
const (
	// ProvisioningTypeUserData: inline cloud-init user data in provisioning.userData.
	ProvisioningTypeUserData ProvisioningType = "UserData"
	// ProvisioningTypeUserDataRef: cloud-init user data in a Secret (key userData).
	ProvisioningTypeUserDataRef ProvisioningType = "UserDataRef"
	// ProvisioningTypeSysprepRef: Windows unattend files in a Secret.
	ProvisioningTypeSysprepRef ProvisioningType = "SysprepRef"
)

// MaxUserDataBytes is the largest inline cloud-init user data accepted.
const MaxUserDataBytes = 2 << 20

// Provisioning is what the guest gets on first boot. Only the field matching Type may be set.
type Provisioning struct {
	Type ProvisioningType `json:"type"`
	// UserData is an inline cloud-init document (at most 2 MiB).
	UserData    string              `json:"userData,omitempty"`
	UserDataRef *ProvisioningSecret `json:"userDataRef,omitempty"`
	SysprepRef  *ProvisioningSecret `json:"sysprepRef,omitempty"`
}

// ProvisioningSecret references a Secret of the project holding provisioning data.
type ProvisioningSecret struct {
	// Kind is Secret (the default and only value).
	Kind string `json:"kind,omitempty"`
	Name string `json:"name"`
}

// ProvisioningSecretKind is the only kind a provisioning reference may name.
const ProvisioningSecretKind = "Secret"

// TaintEffect is what a taint does to VMs that do not tolerate it.
type TaintEffect string

// Taint effects.
const (
	TaintEffectNoSchedule       TaintEffect = "NoSchedule"
	TaintEffectPreferNoSchedule TaintEffect = "PreferNoSchedule"
	TaintEffectNoExecute        TaintEffect = "NoExecute"
)

// TolerationOperator compares a toleration to a taint.
type TolerationOperator string

// Toleration operators. An empty operator means Equal.
const (
	TolerationOpExists TolerationOperator = "Exists"
	TolerationOpEqual  TolerationOperator = "Equal"
)

// Toleration lets a VM run on a node with a matching taint, as in Kubernetes.
type Toleration struct {
	// Key is the taint key; empty with operator Exists matches every taint.
	Key string `json:"key,omitempty"`
	// Operator is Exists or Equal (the default when empty).
	Operator TolerationOperator `json:"operator,omitempty"`
	// Value must match the taint value with Equal; empty with Exists.
	Value string `json:"value,omitempty"`
	// Effect to match; empty matches all effects.
	Effect TaintEffect `json:"effect,omitempty"`
	// TolerationSeconds bounds how long a NoExecute taint is tolerated.
	TolerationSeconds *int64 `json:"tolerationSeconds,omitempty"`
}

// SelectorOperator relates a label key to values in selector requirements.
type SelectorOperator string

// Selector operators. Gt and Lt are only allowed in node selector requirements.
const (
	SelectorOpIn           SelectorOperator = "In"
	SelectorOpNotIn        SelectorOperator = "NotIn"
	SelectorOpExists       SelectorOperator = "Exists"
	SelectorOpDoesNotExist SelectorOperator = "DoesNotExist"
	SelectorOpGt           SelectorOperator = "Gt"
	SelectorOpLt           SelectorOperator = "Lt"
)

// NodeSelectorRequirement is a requirement on node labels (operators In, NotIn, Exists,
// DoesNotExist, Gt, Lt).
type NodeSelectorRequirement struct {
	Key      string           `json:"key"`
	Operator SelectorOperator `json:"operator"`
	Values   []string         `json:"values,omitempty"`
}

// LabelSelectorRequirement is a requirement on object labels (operators In, NotIn, Exists,
// DoesNotExist).
type LabelSelectorRequirement struct {
	Key      string           `json:"key"`
	Operator SelectorOperator `json:"operator"`
	Values   []string         `json:"values,omitempty"`
}

// LabelSelector selects objects by labels; all requirements are ANDed, and an empty selector
// selects everything.
type LabelSelector struct {
	MatchLabels      map[string]string          `json:"matchLabels,omitempty"`
	MatchExpressions []LabelSelectorRequirement `json:"matchExpressions,omitempty"`
}

// VMAffinity is the affinity of a VM, as Kubernetes pod affinity with podAffinity renamed
// virtualMachineAndPodAffinity. Rakhsh supports: nodeAffinity (required nodeSelectorTerms with
// matchExpressions/matchFields, and weighted preferred terms) and VM affinity/anti-affinity
// terms with labelSelector, namespaces, namespaceSelector and topologyKey.
type VMAffinity struct {
	NodeAffinity                     *NodeAffinity           `json:"nodeAffinity,omitempty"`
	VirtualMachineAndPodAffinity     *VirtualMachineAffinity `json:"virtualMachineAndPodAffinity,omitempty"`
	VirtualMachineAndPodAntiAffinity *VirtualMachineAffinity `json:"virtualMachineAndPodAntiAffinity,omitempty"`
}

// NodeAffinity constrains the nodes a VM may run on.
type NodeAffinity struct {
	RequiredDuringSchedulingIgnoredDuringExecution  *NodeSelectorTerms        `json:"requiredDuringSchedulingIgnoredDuringExecution,omitempty"`
	PreferredDuringSchedulingIgnoredDuringExecution []PreferredSchedulingTerm `json:"preferredDuringSchedulingIgnoredDuringExecution,omitempty"`
}

// NodeSelectorTerms is a list of terms, ORed.
type NodeSelectorTerms struct {
	NodeSelectorTerms []NodeSelectorTerm `json:"nodeSelectorTerms"`
}

// NodeSelectorTerm is a set of requirements, ANDed. matchFields supports the key
// metadata.name only.
type NodeSelectorTerm struct {
	MatchExpressions []NodeSelectorRequirement `json:"matchExpressions,omitempty"`
	MatchFields      []NodeSelectorRequirement `json:"matchFields,omitempty"`
}

// PreferredSchedulingTerm is a weighted node preference.
type PreferredSchedulingTerm struct {
	// Weight is 1..100.
	Weight     int32            `json:"weight"`
	Preference NodeSelectorTerm `json:"preference"`
}

// VirtualMachineAffinity is a set of affinity (or anti-affinity) terms towards other VMs.
type VirtualMachineAffinity struct {
	RequiredDuringSchedulingIgnoredDuringExecution  []VirtualMachineAffinityTerm         `json:"requiredDuringSchedulingIgnoredDuringExecution,omitempty"`
	PreferredDuringSchedulingIgnoredDuringExecution []WeightedVirtualMachineAffinityTerm `json:"preferredDuringSchedulingIgnoredDuringExecution,omitempty"`
}

// VirtualMachineAffinityTerm selects VMs by labels (in the listed projects, or those matching
// namespaceSelector, or the VM's own project) and a node label that defines the topology domain.
type VirtualMachineAffinityTerm struct {
	LabelSelector     *LabelSelector `json:"labelSelector,omitempty"`
	Namespaces        []string       `json:"namespaces,omitempty"`
	NamespaceSelector *LabelSelector `json:"namespaceSelector,omitempty"`
	TopologyKey       string         `json:"topologyKey"`
}

// WeightedVirtualMachineAffinityTerm is a weighted preferred affinity term.
type WeightedVirtualMachineAffinityTerm struct {
	// Weight is 1..100.
	Weight                           int32                      `json:"weight"`
	VirtualMachineAndPodAffinityTerm VirtualMachineAffinityTerm `json:"virtualMachineAndPodAffinityTerm"`
}

// VirtualMachinePhase is the lifecycle phase of a VM.
type VirtualMachinePhase string

// VM phases.
const (
	VMPhasePending     VirtualMachinePhase = "Pending"
	VMPhaseStarting    VirtualMachinePhase = "Starting"
	VMPhaseRunning     VirtualMachinePhase = "Running"
	VMPhaseStopping    VirtualMachinePhase = "Stopping"
	VMPhaseStopped     VirtualMachinePhase = "Stopped"
	VMPhaseMigrating   VirtualMachinePhase = "Migrating"
	VMPhasePause       VirtualMachinePhase = "Pause"
	VMPhaseDegraded    VirtualMachinePhase = "Degraded"
	VMPhaseTerminating VirtualMachinePhase = "Terminating"
)

// VM condition types.
const (
	VMConditionIPAddressReady                      = "IPAddressReady"
	VMConditionMACAddressReady                     = "MACAddressReady"
	VMConditionClassReady                          = "ClassReady"
	VMConditionBlockDevicesReady                   = "BlockDevicesReady"
	VMConditionRunning                             = "Running"
	VMConditionMigrating                           = "Migrating"
	VMConditionMigratable                          = "Migratable"
	VMConditionProvisioningReady                   = "ProvisioningReady"
	VMConditionAgentReady                          = "AgentReady"
	VMConditionConfigurationApplied                = "ConfigurationApplied"
	VMConditionAwaitingRestartToApplyConfiguration = "AwaitingRestartToApplyConfiguration"
	VMConditionSizingPolicyMatched                 = "SizingPolicyMatched"
	VMConditionSnapshotting                        = "Snapshotting"
	VMConditionFilesystemFrozen                    = "FilesystemFrozen"
	// VMConditionHibernated (a Rakhsh addition, written by the node agent) is True while a
	// stopped VM's RAM and device state is saved on the node status.stateNodeName names: the
	// next start runs there and resumes the guest. False with reason SaveFailed reports a
	// hibernation that could not save the state (the guest runs on).
	VMConditionHibernated = "Hibernated"
	// VMConditionSoftwareEmulation is True when the VM runs under TCG (no KVM on its node).
	VMConditionSoftwareEmulation = "SoftwareEmulation"
	// VMConditionRestartBackoff is True while a VM that crashed or failed to start waits for
	// its automatic restart; the message gives the time of the next attempt and the last
	// exit's cause. The VM controller owns it and removes it when no restart is pending.
	VMConditionRestartBackoff = "RestartBackoff"
	// VMConditionGuestReady (a Rakhsh addition) is True once the guest has written to its
	// serial console since QEMU started or was reset: the guest's own code runs, beyond the
	// firmware. False (NoSerialOutputYet) until then. The node agent owns it.
	VMConditionGuestReady = "GuestReady"
)

// VirtualMachineStatus is the observed state of a VM.
type VirtualMachineStatus struct {
	Phase VirtualMachinePhase `json:"phase,omitempty"`
	// NodeName is the node the VM is bound to (set by the scheduler).
	NodeName string `json:"nodeName,omitempty"`
	// StateNodeName is the node that keeps the VM's host state (its UEFI variable store and
	// TPM state) while the VM is stopped: the scheduler prefers it when the VM starts again,
	// and its agent removes that state when the VM is deleted. Written by the agent.
	StateNodeName string `json:"stateNodeName,omitempty"`
	// IPAddress is the address of the Main interface.
	IPAddress string `json:"ipAddress,omitempty"`
	// VirtualMachineIPAddressName is the IP claim in use.
	VirtualMachineIPAddressName string `json:"virtualMachineIPAddressName,omitempty"`
	// BlockDeviceRefs are the block devices as attached (spec ones and hot-plugged ones).
	BlockDeviceRefs []BlockDeviceStatusRef `json:"blockDeviceRefs,omitempty"`
	// BlockDevicesCount is the number of attached block devices.
	BlockDevicesCount int `json:"blockDevicesCount,omitempty"`
	// Networks are the interfaces as configured.
	Networks []NetworkStatus `json:"networks,omitempty"`
	// GuestOSInfo is what the guest agent reports of the guest OS.
	GuestOSInfo *GuestOSInfo `json:"guestOSInfo,omitempty"`
	// Stats are phase history and launch timings.
	Stats *VirtualMachineStats `json:"stats,omitempty"`
	// MigrationState describes the last or current live migration.
	MigrationState *VirtualMachineMigrationState `json:"migrationState,omitempty"`
	// RestartAwaitingChanges are spec changes that wait for a restart to be applied.
	RestartAwaitingChanges []RestartAwaitingChange `json:"restartAwaitingChanges,omitempty"`
	// Resources are the resources the running VM has.
	Resources *VirtualMachineResources `json:"resources,omitempty"`
	// Versions are the hypervisor versions the VM runs under.
	Versions *VirtualMachineVersions `json:"versions,omitempty"`
	// PowerRequest is what the control plane asks the node agent to do with the VM
	// (a Rakhsh addition, written by the VM controller, read by the agent).
	PowerRequest *VMPowerRequest `json:"powerRequest,omitempty"`
	// LastExit records how the VM's QEMU process last ended (a Rakhsh addition, written by
	// the node agent, read by the VM controller to apply the runPolicy).
	LastExit *VMExit `json:"lastExit,omitempty"`
	// ObservedRestartID is the last PowerRequest.RestartID the agent carried out.
	ObservedRestartID string `json:"observedRestartID,omitempty"`
	// Recovered lists the VM's last recoveries from failed nodes by the HA controller
	// (a Rakhsh addition, newest last, at most MaxRecoveredHistory; docs/ha.md).
	Recovered          []VMRecovery `json:"recovered,omitempty"`
	Conditions         []Condition  `json:"conditions,omitempty"`
	ObservedGeneration int64        `json:"observedGeneration,omitempty"`
}

// Power states the control plane may ask for.
const (
	PowerStateRunning = "Running"
	PowerStateStopped = "Stopped"
	PowerStatePaused  = "Paused"
)

// VMPowerRequest is the desired power state of a VM.
type VMPowerRequest struct {
	// State is Running, Stopped or Paused.
	State string `json:"state"`
	// Force asks for a hard stop (or a hard reset with RestartID) instead of a graceful one;
	// with state Running on a stopped VM, a boot from the disks that discards the RAM state
	// a hibernation saved.
	Force bool `json:"force,omitempty"`
	// Hibernate, with state Stopped, asks the node agent to save the guest's RAM and device
	// state on the node before QEMU ends; the next start resumes from it.
	Hibernate bool `json:"hibernate,omitempty"`
	// RestartID, when it changes while the VM runs, asks the agent to restart it once.
	RestartID string `json:"restartID,omitempty"`
	// Operation names the VirtualMachineOperation that asked, if any.
	Operation string `json:"operation,omitempty"`
}

// IsHibernated says a stopped VM has a saved RAM state (condition Hibernated True) that its
// next start resumes, unless the start is a forced one.
func IsHibernated(vm *VirtualMachine) bool {
	c := FindCondition(vm.Status.Conditions, VMConditionHibernated)
	return c != nil && c.Status == ConditionTrue
}

// Reasons a VM's QEMU process ended.
const (
	ExitGuestShutdown = "GuestShutdown" // the guest powered itself off
	ExitStopped       = "Stopped"       // the agent stopped it as asked
	ExitCrashed       = "Crashed"       // QEMU died or the guest panicked
	ExitStartFailed   = "StartFailed"   // QEMU did not start
)

// VMExit is how the VM's QEMU process last ended.
type VMExit struct {
	Reason  string `json:"reason"`
	Message string `json:"message,omitempty"`
	Time    *Time  `json:"time,omitempty"`
	// Count is how many unplanned exits (crashes, failed starts) happened in a row.
	Count int `json:"count,omitempty"`
}

// BlockDeviceStatusRef is one block device as attached to the VM.
type BlockDeviceStatusRef struct {
	Kind BlockDeviceKind `json:"kind"`
	Name string          `json:"name"`
	// Size is the device size, e.g. "10Gi".
	Size Quantity `json:"size,omitempty"`
	// Target is the device name inside QEMU (e.g. "vda", "sdb").
	Target string `json:"target,omitempty"`
	// Attached says the device is attached to the running VM.
	Attached bool `json:"attached"`
	// Hotplugged says the device came from a VirtualMachineBlockDeviceAttachment.
	Hotplugged bool `json:"hotplugged,omitempty"`
	// VirtualMachineBlockDeviceAttachmentName names the attachment of a hot-plugged device.
	VirtualMachineBlockDeviceAttachmentName string `json:"virtualMachineBlockDeviceAttachmentName,omitempty"`
	// Slot is where a hot-plugged device sits in QEMU: its PCIe root port ("hotplug2") for a
	// disk, "scsi-id=N" on the hot-plug SCSI bus for a CD-ROM (a Rakhsh addition, written by
	// the node agent). A live migration's target plugs the device into the same slot; a
	// hot-plugged device without one is not live-migrated.
	Slot string `json:"slot,omitempty"`
	// BootOrder is the boot priority given to the device.
	BootOrder *int `json:"bootOrder,omitempty"`
}

// NetworkStatus is one interface of the VM as configured.
type NetworkStatus struct {
	Type                         NetworkType `json:"type"`
	Name                         string      `json:"name,omitempty"`
	MACAddress                   string      `json:"macAddress,omitempty"`
	VirtualMachineMACAddressName string      `json:"virtualMachineMACAddressName,omitempty"`
	IPAddress                    string      `json:"ipAddress,omitempty"`
	// InterfaceName is the name the guest gives the interface, as its guest agent reports
	// it (a Rakhsh addition, written by the node agent; docs/guest-agent.md).
	InterfaceName string `json:"interfaceName,omitempty"`
	// GuestIPAddresses are the addresses the guest reports on the interface through its guest
	// agent, in CIDR form, link-local ones left out (a Rakhsh addition, written by the node
	// agent). IPAddress stays the platform's own claim.
	GuestIPAddresses []string `json:"guestIPAddresses,omitempty"`
	// Slot is the PCIe root port ("hotplug1") of an interface hot-plugged into the running VM
	// (a Rakhsh addition, written by the node agent); empty for the interfaces QEMU started
	// with. A live migration's target plugs the interface into the same port.
	Slot string `json:"slot,omitempty"`
}

// GuestOSInfo is the guest OS as reported by the guest agent.
type GuestOSInfo struct {
	Name          string `json:"name,omitempty"`
	PrettyName    string `json:"prettyName,omitempty"`
	Version       string `json:"version,omitempty"`
	VersionID     string `json:"versionId,omitempty"`
	KernelRelease string `json:"kernelRelease,omitempty"`
	KernelVersion string `json:"kernelVersion,omitempty"`
	Machine       string `json:"machine,omitempty"`
	ID            string `json:"id,omitempty"`
	Hostname      string `json:"hostname,omitempty"`
}

// MaxPhaseTransitions bounds status.stats.phasesTransitions: the oldest entries go first.
const MaxPhaseTransitions = 10

// SetPhase sets the VM's phase and, when it changes, records the transition at now in
// status.stats.phasesTransitions, of which the last MaxPhaseTransitions are kept.
func (vm *VirtualMachine) SetPhase(p VirtualMachinePhase, now Time) {
	if vm.Status.Phase == p {
		return
	}
	vm.Status.Phase = p
	if vm.Status.Stats == nil {
		vm.Status.Stats = &VirtualMachineStats{}
	}
	tr := append(vm.Status.Stats.PhasesTransitions, VirtualMachinePhaseTransition{Phase: p, Timestamp: now})
	if len(tr) > MaxPhaseTransitions {
		tr = tr[len(tr)-MaxPhaseTransitions:]
	}
	vm.Status.Stats.PhasesTransitions = tr
}

// VirtualMachineStats are the phase history and launch timings of a VM.
type VirtualMachineStats struct {
	PhasesTransitions  []VirtualMachinePhaseTransition   `json:"phasesTransitions,omitempty"`
	LaunchTimeDuration *VirtualMachineLaunchTimeDuration `json:"launchTimeDuration,omitempty"`
	// LastStartTime is when the VM last started running.
	LastStartTime *Time `json:"lastStartTime,omitempty"`
}

// VirtualMachinePhaseTransition records when a VM entered a phase.
type VirtualMachinePhaseTransition struct {
	Phase     VirtualMachinePhase `json:"phase"`
	Timestamp Time                `json:"timestamp"`
}

// VirtualMachineLaunchTimeDuration are the durations of the launch steps, as Go duration
// strings such as "1.5s" or "2m3s".
type VirtualMachineLaunchTimeDuration struct {
	// WaitingForDependencies is Pending → Starting.
	WaitingForDependencies string `json:"waitingForDependencies,omitempty"`
	// VirtualMachineStarting is Starting → Running.
	VirtualMachineStarting string `json:"virtualMachineStarting,omitempty"`
	// GuestOSAgentStarting is Running → guest agent connected.
	GuestOSAgentStarting string `json:"guestOSAgentStarting,omitempty"`
}

// MigrationResult is how a live migration ended.
type MigrationResult string

// Migration results.
const (
	MigrationResultSucceeded MigrationResult = "Succeeded"
	MigrationResultFailed    MigrationResult = "Failed"
)

// MigrationPhase is the step a live migration is at (a Rakhsh addition).
type MigrationPhase string

// Migration phases, in order. Each has one writer: the migration controller writes
// Scheduling (and Failed on timeouts and cancels), the scheduler Pending (with the target
// node), the target node's agent TargetReady and Succeeded (with status.nodeName, in one
// write), the source node's agent Transferring (with progress) and Failed when QEMU's
// migration fails.
const (
	// MigrationPhaseScheduling: the target node is being chosen.
	MigrationPhaseScheduling MigrationPhase = "Scheduling"
	// MigrationPhasePending: the target node prepares: disks, taps, a QEMU waiting for the
	// incoming stream.
	MigrationPhasePending MigrationPhase = "Pending"
	// MigrationPhaseTargetReady: the target QEMU waits and the target agent's migration
	// proxy listens (target.address, target.port).
	MigrationPhaseTargetReady MigrationPhase = "TargetReady"
	// MigrationPhaseTransferring: local disks are mirrored and memory is copied.
	MigrationPhaseTransferring MigrationPhase = "Transferring"
	// MigrationPhaseSucceeded: the VM runs on the target (status.nodeName is the target).
	MigrationPhaseSucceeded MigrationPhase = "Succeeded"
	// MigrationPhaseFailed: the VM runs on the source; reason and message say why.
	MigrationPhaseFailed MigrationPhase = "Failed"
)

// Reasons of a failed migration.
const (
	MigrationReasonCancelled       = "Cancelled"
	MigrationReasonNoTarget        = "NoTargetNode"
	MigrationReasonTargetFailed    = "TargetFailed"
	MigrationReasonTransferFailed  = "TransferFailed"
	MigrationReasonTimeout         = "Timeout"
	MigrationReasonSourceRestarted = "SourceAgentRestarted"
	MigrationReasonVMStopped       = "VirtualMachineStopped"
	// MigrationReasonStreamBroken: the stream's connection from the source broke off before
	// it completed (the source agent died, or the connection was reset) and the target QEMU
	// ended.
	MigrationReasonStreamBroken = "StreamBroken"
)

// VirtualMachineMigrationState describes a live migration.
type VirtualMachineMigrationState struct {
	StartTimestamp *Time                  `json:"startTimestamp,omitempty"`
	EndTimestamp   *Time                  `json:"endTimestamp,omitempty"`
	Source         VirtualMachineLocation `json:"source,omitempty"`
	Target         VirtualMachineLocation `json:"target,omitempty"`
	Result         MigrationResult        `json:"result,omitempty"`

	// The rest is a Rakhsh addition.

	// ID names this attempt (the operation's uid): agents act only on the attempt they see.
	ID string `json:"id,omitempty"`
	// Operation is the VirtualMachineOperation that asked for the migration.
	Operation string         `json:"operation,omitempty"`
	Phase     MigrationPhase `json:"phase,omitempty"`
	// Reason and Message say why a migration failed (or what it waits for).
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
	// NodeSelector narrows the target (from the operation); TargetNode is one asked for.
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`
	// Policy is the settings the agents apply.
	Policy *MigrationPolicySettings `json:"policy,omitempty"`
	// Disks are the disks mirrored to the target (VM disks on Local storage).
	Disks []MigrationDisk `json:"disks,omitempty"`
	// Progress of the transfer, written by the source agent about once a second.
	Progress *MigrationProgress `json:"progress,omitempty"`
}

// MigrationPolicySettings are the knobs of one migration, from the VM's liveMigrationPolicy,
// the operation's force and the cluster's settings.
type MigrationPolicySettings struct {
	// AutoConverge lets QEMU throttle the guest's vCPUs when it dirties memory faster than
	// the link copies it (the "forced" policies).
	AutoConverge bool `json:"autoConverge,omitempty"`
	// MaxDowntimeMs is the pause QEMU allows at the switch-over; default 300.
	MaxDowntimeMs int64 `json:"maxDowntimeMs,omitempty"`
	// BandwidthMiBps caps the stream; 0: no cap.
	BandwidthMiBps int64 `json:"bandwidthMiBps,omitempty"`
	// TimeoutSeconds ends a transfer that has not finished by then (from the completion
	// timeout per GiB of memory and disk).
	TimeoutSeconds int64 `json:"timeoutSeconds,omitempty"`
	// Unencrypted says the stream and the disk mirrors go unencrypted between the agents once
	// their TLS handshake has checked both (serve --migration-encryption=false).
	Unencrypted bool `json:"unencrypted,omitempty"`
}

// MigrationDisk is one disk copied to the target during a migration.
type MigrationDisk struct {
	// Name is the VirtualDisk.
	Name string `json:"name"`
	// Export is the target's NBD export name of the disk.
	Export string `json:"export,omitempty"`
	// Size is the disk's virtual size in bytes.
	Size int64 `json:"size,omitempty"`
}

// MigrationProgress is how far a transfer is.
type MigrationProgress struct {
	// Percent of memory (and mirrored disks) copied, 0..100.
	Percent          int   `json:"percent"`
	TransferredBytes int64 `json:"transferredBytes,omitempty"`
	RemainingBytes   int64 `json:"remainingBytes,omitempty"`
	TotalBytes       int64 `json:"totalBytes,omitempty"`
	// DirtyPagesRate is pages the guest dirties per second.
	DirtyPagesRate int64 `json:"dirtyPagesRate,omitempty"`
	// Iterations is QEMU's count of dirty-memory passes.
	Iterations int64 `json:"iterations,omitempty"`
	// DiskRemainingBytes is what disk mirrors still have to copy.
	DiskRemainingBytes int64 `json:"diskRemainingBytes,omitempty"`
	// DowntimeMs is the guest's pause at the switch-over (set when done).
	DowntimeMs int64 `json:"downtimeMs,omitempty"`
	// TotalTimeMs is the transfer's duration as QEMU measured it (set when done).
	TotalTimeMs int64 `json:"totalTimeMs,omitempty"`
	// PausedAtMs is when the source QEMU stopped the guest for the switch-over and ResumedAtMs
	// when the target resumed it (Unix milliseconds, from QEMU's event time and the target
	// agent's clock): their difference is the pause the guest saw, store write included.
	PausedAtMs  int64 `json:"pausedAtMs,omitempty"`
	ResumedAtMs int64 `json:"resumedAtMs,omitempty"`
	// SwitchoverMs is the target's part of the pause: from the stream's end to the guest
	// resumed (the switch-over write to the store, and the resume).
	SwitchoverMs int64 `json:"switchoverMs,omitempty"`
}

// GuestPause is the pause the guest saw at the switch-over, when both ends are known.
func (p *MigrationProgress) GuestPause() (time.Duration, bool) {
	if p == nil || p.PausedAtMs == 0 || p.ResumedAtMs < p.PausedAtMs {
		return 0, false
	}
	return time.Duration(p.ResumedAtMs-p.PausedAtMs) * time.Millisecond, true
}

// Active says a migration is under way (not finished).
func (m *VirtualMachineMigrationState) Active() bool {
	return m != nil && m.Phase != "" && m.Phase != MigrationPhaseSucceeded && m.Phase != MigrationPhaseFailed
}

// VirtualMachineLocation is where a VM runs during a migration.
type VirtualMachineLocation struct {
	Node string `json:"node,omitempty"`
	// Address is the node's underlay address the stream goes to (target only); Port the
	// target agent's migration proxy port (TLS; the stream and the disk mirrors are told
	// apart by ALPN); NBDPort, when Local disks are mirrored, the same port, kept for
	// readers of earlier versions (a Rakhsh addition).
	Address string `json:"address,omitempty"`
	Port    int    `json:"port,omitempty"`
	NBDPort int    `json:"nbdPort,omitempty"`
}

// RestartAwaitingChange is one spec change that waits for a restart, as a JSON-patch-like
// operation (add, remove, replace) on a spec path.
type RestartAwaitingChange struct {
	Operation    string          `json:"operation"`
	Path         string          `json:"path"`
	CurrentValue json.RawMessage `json:"currentValue,omitempty"`
	DesiredValue json.RawMessage `json:"desiredValue,omitempty"`
}

// VirtualMachineResources are the resources a running VM has.
type VirtualMachineResources struct {
	CPU    VirtualMachineCPUStatus    `json:"cpu"`
	Memory VirtualMachineMemoryStatus `json:"memory"`
}

// VirtualMachineCPUStatus is the CPU a running VM has.
type VirtualMachineCPUStatus struct {
	Cores        int    `json:"cores"`
	CoreFraction string `json:"coreFraction,omitempty"`
	// RequestedCores is cores × coreFraction, e.g. "500m".
	RequestedCores Quantity                  `json:"requestedCores,omitempty"`
	Topology       VirtualMachineCPUTopology `json:"topology"`
	// MaxCores is the most cores the running VM can grow to without a restart, and
	// BootCores the vCPUs it started with (Rakhsh additions, with a maxCores).
	MaxCores  int `json:"maxCores,omitempty"`
	BootCores int `json:"bootCores,omitempty"`
}

// VirtualMachineCPUTopology is the CPU topology given to the guest.
type VirtualMachineCPUTopology struct {
	CoresPerSocket int `json:"coresPerSocket"`
	Sockets        int `json:"sockets"`
}

// VirtualMachineMemoryStatus is the memory a running VM has.
type VirtualMachineMemoryStatus struct {
	Size Quantity `json:"size"`
	// RuntimeOverhead is the memory QEMU uses beyond the guest memory.
	RuntimeOverhead Quantity `json:"runtimeOverhead,omitempty"`
	// MaxSize is the most memory the running VM can grow to without a restart, and
	// Hotplugged the part of Size its guest has taken through virtio-mem beyond the boot
	// memory (Rakhsh additions; empty without a memory.maxSize).
	MaxSize    Quantity `json:"maxSize,omitempty"`
	Hotplugged Quantity `json:"hotplugged,omitempty"`
	// BootSize is the memory the guest booted with (a Rakhsh addition, with a maxSize):
	// Size moves live between it and MaxSize; a migration's target starts with it.
	BootSize Quantity `json:"bootSize,omitempty"`
	// Balloon is the VM's memory balloon (a Rakhsh addition; absent when its QEMU has none:
	// no paravirtualization, or started by an agent that gave none). A migration's target
	// has one only when its source has.
	Balloon *VirtualMachineBalloonStatus `json:"balloon,omitempty"`
	// Padding is what QEMU gives the guest beyond Size (a Rakhsh addition: 8Ki under TCG
	// with QEMU older than 9.0, whose dirty tracking loses writes of a migrating guest with a
	// RAM of whole 256 KiB words; docs/migration.md). A migration's target copies it.
	Padding Quantity `json:"padding,omitempty"`
}

// VirtualMachineBalloonStatus is what the memory balloon does (docs/live-resources.md).
type VirtualMachineBalloonStatus struct {
	// Actual is the memory the guest has now of the memory it booted with: less while the
	// node reclaims memory from it.
	Actual Quantity `json:"actual,omitempty"`
	// Floor is the least the node reclaims it down to: the memory minimum of the VM's class
	// for its cores; empty: the VM is never reclaimed from (it still returns the memory it
	// frees, by free page reporting).
	Floor Quantity `json:"floor,omitempty"`
	// FreePageReporting says the guest gives the pages it frees back to the host (on under
	// KVM or QEMU 9.0+; a migration's target has what its source has).
	FreePageReporting bool `json:"freePageReporting,omitempty"`
}

// VirtualMachineVersions are the versions of the hypervisor a VM runs under.
type VirtualMachineVersions struct {
	Qemu string `json:"qemu,omitempty"`
}

// VMConditionScheduled is True with the node the VM is bound to, or False with why no node
// fits (a Rakhsh addition, like Kubernetes' PodScheduled).
const VMConditionScheduled = "Scheduled"

// VirtualMachineBinding places a VM on a node: the body of POST
// .../virtualmachines/NAME/binding, the scheduler's one way of setting status.nodeName. The
// server binds only a VM that is not deleted, not bound elsewhere, of the given uid, and whose
// status.powerRequest is still the one the decision was made on; it sets the Scheduled
// condition with the binding.
type VirtualMachineBinding struct {
	TypeMeta   `json:",inline"`
	ObjectMeta `json:"metadata,omitempty"`

	// NodeName is the node the VM goes to.
	NodeName string `json:"nodeName"`
	// PowerRequest is the VM's status.powerRequest when the scheduler decided; the binding is
	// refused (409) once it has changed, e.g. by a stop in between.
	PowerRequest *VMPowerRequest `json:"powerRequest,omitempty"`
	// Message, when set, is the Scheduled condition's message.
	Message string `json:"message,omitempty"`
}
