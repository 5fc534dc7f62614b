package v1alpha1

// Node is a host that runs VMs (cluster-scoped). Its agent registers it, heartbeats and
// reports capacity, CPU model and features, and the hypervisor it found (status); operators
// set taints, schedulability and overcommit ratios (spec).
type Node struct {
	TypeMeta   `json:",inline"`
	ObjectMeta `json:"metadata,omitempty"`

	Spec   NodeSpec   `json:"spec"`
	Status NodeStatus `json:"status,omitempty"`
}

// Default overcommit ratios of a node.
const (
	DefaultCPUAllocationRatio    = 4.0
	DefaultMemoryAllocationRatio = 1.0
)

// NodeSpec is what operators control of a node.
type NodeSpec struct {
	// Unschedulable keeps new VMs off the node (running ones stay).
	Unschedulable bool `json:"unschedulable,omitempty"`
	// Maintenance puts the node in maintenance mode: the scheduler places no new VM on it (as
	// with Unschedulable) and the control plane's node maintenance controller evicts the VMs
	// running there (Evict operations), reporting in the condition Maintenance. Clearing it
	// makes the node schedulable again; evicted VMs do not come back by themselves.
	Maintenance bool `json:"maintenance,omitempty"`
	// Taints repel VMs that do not tolerate them.
	Taints []Taint `json:"taints,omitempty"`
	// AllocationRatios are the overcommit ratios: allocatable = capacity × ratio.
	AllocationRatios AllocationRatios `json:"allocationRatios,omitempty"`
	// Address is where the API server reaches the node's agent (consoles, uploads): host,
	// host:port or an http(s) URL. Set by the agent when it registers.
	Address string `json:"address,omitempty"`
}

// AllocationRatios are the overcommit ratios of a node. A zero (unset) ratio is defaulted.
type AllocationRatios struct {
	// CPU is virtual cores per physical core (thread); default 4.0.
	CPU float64 `json:"cpu,omitempty"`
	// Memory is guest memory per byte of host memory; default 1.0.
	Memory float64 `json:"memory,omitempty"`
}

// Taint marks a node so that only VMs tolerating it run there.
type Taint struct {
	Key    string      `json:"key"`
	Value  string      `json:"value,omitempty"`
	Effect TaintEffect `json:"effect"`
}

// NodePhase is the state of a node.
type NodePhase string

// Node phases.
const (
	// NodePhaseReady: the agent heartbeats and the node can run VMs.
	NodePhaseReady NodePhase = "Ready"
	// NodePhaseNotReady: the agent reports a problem.
	NodePhaseNotReady NodePhase = "NotReady"
	// NodePhaseUnknown: the agent stopped heartbeating.
	NodePhaseUnknown NodePhase = "Unknown"
)

// Accelerator is the way QEMU runs guest code on a node.
type Accelerator string

// Accelerators.
const (
	// AcceleratorKVM is hardware virtualization through /dev/kvm.
	AcceleratorKVM Accelerator = "KVM"
	// AcceleratorTCG is QEMU's software emulation (slow; for hosts without KVM).
	AcceleratorTCG Accelerator = "TCG"
)

// Node condition types.
const (
	// NodeConditionReady is True while the agent heartbeats and reports the node healthy.
	NodeConditionReady = "Ready"
	// NodeConditionKVM is True while VMs start under KVM on the node; its reason and message
	// say how the accelerator was chosen (--accelerator auto|kvm|tcg, the probe's finding, a
	// KVM failure at run time).
	NodeConditionKVM = "KVM"
	// NodeConditionMaintenance is True while spec.maintenance is set: reason
	// NodeReasonDraining while VMs still run on the node, NodeReasonDrained once none does;
	// absent otherwise. Written by the node maintenance controller.
	NodeConditionMaintenance = "Maintenance"
)

// Reasons of the Maintenance condition.
const (
	NodeReasonDraining = "Draining"
	NodeReasonDrained  = "Drained"
)

// NodeStatus is what the agent and the controllers observe of a node.
type NodeStatus struct {
	Phase NodePhase `json:"phase,omitempty"`
	// Capacity is the whole host.
	Capacity *NodeResources `json:"capacity,omitempty"`
	// Allocatable is what VMs may use: capacity less reservations, times the allocation ratios.
	Allocatable *NodeResources `json:"allocatable,omitempty"`
	// Allocated is the sum of the VMs bound to the node.
	Allocated *NodeResources `json:"allocated,omitempty"`
	// QemuVersion is the version of the QEMU binary.
	QemuVersion string `json:"qemuVersion,omitempty"`
	// Accelerator is KVM or TCG.
	Accelerator Accelerator `json:"accelerator,omitempty"`
	// CPUModel is the host CPU model name.
	CPUModel string `json:"cpuModel,omitempty"`
	// CPUFeatures are the host CPU features (as QEMU names them), sorted.
	CPUFeatures []string `json:"cpuFeatures,omitempty"`
	// KernelVersion is the host kernel release.
	KernelVersion string `json:"kernelVersion,omitempty"`
	// AgentVersion is the version of the Rakhsh agent.
	AgentVersion string `json:"agentVersion,omitempty"`
	// Addresses are the node's addresses as its agent reports them: one InternalIP, the
	// underlay address other nodes send the VXLAN traffic of NAT networks to (`rakhsh agent
	// --underlay-address`, else the source address of the route toward the API server or
	// store). A node with no InternalIP takes no part in the overlay (docs/networking.md).
	Addresses []NodeAddress `json:"addresses,omitempty"`
	// StreamEndpoint is where the node agent serves its VMs' consoles, VNC and logs to the
	// API servers, which proxy them; written by the agent (see docs/operations.md).
	StreamEndpoint *NodeStreamEndpoint `json:"streamEndpoint,omitempty"`
	// MetricsURL is where the node's Prometheus metrics are served (the agent's
	// --metrics-listen, or the all-in-one serve's /metrics), listed by /sd/prometheus;
	// written by the agent (see docs/metrics.md).
	MetricsURL string `json:"metricsURL,omitempty"`
	// Memory is how the agent manages the node's memory: KSM and memory balloons (a Rakhsh
	// addition, docs/live-resources.md).
	Memory *NodeMemoryStatus `json:"memory,omitempty"`
	// LastHeartbeatTime is the last time the agent reported.
	LastHeartbeatTime  *Time       `json:"lastHeartbeatTime,omitempty"`
	Conditions         []Condition `json:"conditions,omitempty"`
	ObservedGeneration int64       `json:"observedGeneration,omitempty"`
}

// NodeMemoryStatus is the node's memory as its agent manages it.
type NodeMemoryStatus struct {
	// Available is the host's MemAvailable at the last look; Reserve what the agent keeps
	// available (agent --memory-reserve): below it, it reclaims memory from balloons.
	Available Quantity `json:"available,omitempty"`
	Reserve   Quantity `json:"reserve,omitempty"`
	// Reclaiming says memory is being reclaimed from the VMs' balloons now, and Reclaimed
	// how much their balloons hold.
	Reclaiming bool     `json:"reclaiming"`
	Reclaimed  Quantity `json:"reclaimed"`
	// KSM is kernel same-page merging on the node.
	KSM *NodeKSMStatus `json:"ksm,omitempty"`
}

// NodeKSMStatus is kernel same-page merging as the agent runs it (agent --ksm).
type NodeKSMStatus struct {
	// Mode is the agent's --ksm: auto (runs while memory is short), on or off.
	Mode string `json:"mode"`
	// Running says ksmd merges pages now.
	Running bool `json:"running"`
	// PagesShared are the shared pages in use and PagesSharing the pages that use them (the
	// saving); Saved is PagesSharing in bytes.
	PagesShared  int64    `json:"pagesShared"`
	PagesSharing int64    `json:"pagesSharing"`
	Saved        Quantity `json:"saved,omitempty"`
}

// NodeAddressType is the kind of a node address.
type NodeAddressType string

// NodeAddressType values.
const (
	// NodeAddressInternalIP is the address other nodes reach this one on (the underlay of the
	// networks that span hosts).
	NodeAddressInternalIP NodeAddressType = "InternalIP"
)

// NodeAddress is one address of a node.
type NodeAddress struct {
	Type    NodeAddressType `json:"type"`
	Address string          `json:"address"`
}

// InternalIP returns the node's InternalIP address, or "".
func (s *NodeStatus) InternalIP() string {
	for _, a := range s.Addresses {
		if a.Type == NodeAddressInternalIP {
			return a.Address
		}
	}
	return ""
}

// NodeStreamEndpoint is the address of a node agent's stream service and the certificate it
// serves there.
type NodeStreamEndpoint struct {
	// Address is host:port, reached over TLS.
	Address string `json:"address"`
	// CertificateSHA256 is the SHA-256 of the DER form of the agent's serving certificate, in
	// lowercase hex: the API servers accept no other certificate there.
	CertificateSHA256 string `json:"certificateSHA256"`
}

// NodeResources is an amount of node resources.
type NodeResources struct {
	// CPU is in cores (threads for capacity; virtual cores for allocatable and allocated).
	CPU int64 `json:"cpu"`
	// Memory is bytes, as a quantity such as "64Gi".
	Memory Quantity `json:"memory,omitempty"`
	// Storage is the space of the node's storage pools.
	Storage Quantity `json:"storage,omitempty"`
}
