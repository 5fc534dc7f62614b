package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Node is what the node agent knows of its host, handed to NodeCollector at every scrape.
type Node struct {
	// Known is false until the agent has heartbeated once: no capacity series until then.
	Known bool
	// Capacity, Allocatable and Allocated CPU (cores) and memory (bytes), as in the Node's
	// status; the ratios are the Node's spec.allocationRatios (defaults filled in).
	CPUCapacity, CPUAllocatable, CPUAllocated          float64
	MemoryCapacity, MemoryAllocatable, MemoryAllocated float64
	CPURatio, MemoryRatio                              float64
	// StorageFree and StorageSize are the data directory's file system (bytes).
	StorageFree, StorageSize float64
	// ImageBytes is the space the node's image store and image cache take.
	ImageBytes float64
	// VMsByPhase counts the VMs bound to the node by phase ("" is counted as Pending).
	VMsByPhase map[string]int
}

// NodeCollector collects a node's series at scrape time.
type NodeCollector struct {
	Node   string
	Source func() Node
	// Sys is where sysfs is mounted; default /sys.
	Sys string
}

func nodeDesc(name, help string, extra ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, append([]string{"node"}, extra...), nil)
}

var (
	descNodeCPU        = nodeDesc("rakhsh_node_cpu_cores", "The node's CPU: capacity (host threads), allocatable (capacity × the CPU allocation ratio) and allocated (vCPUs of the VMs bound to it).", "type")
	descNodeMemory     = nodeDesc("rakhsh_node_memory_bytes", "The node's memory: capacity, allocatable (capacity × the memory allocation ratio) and allocated (memory of the VMs bound to it).", "type")
	descNodeRatio      = nodeDesc("rakhsh_node_allocation_ratio", "The node's overcommit ratios (spec.allocationRatios), by resource (cpu, memory).", "resource")
	descNodeStorage    = nodeDesc("rakhsh_node_storage_bytes", "The file system of the node's data directory (disks, images): size and free (available to Rakhsh).", "type")
	descNodeImages     = nodeDesc("rakhsh_node_image_cache_bytes", "Space the node's image store and image cache take.")
	descNodeKSMShared  = nodeDesc("rakhsh_node_ksm_pages_shared", "Distinct pages the kernel's same-page merging keeps (/sys/kernel/mm/ksm/pages_shared).")
	descNodeKSMSharing = nodeDesc("rakhsh_node_ksm_pages_sharing", "Pages merged into the shared ones: the pages KSM saves (/sys/kernel/mm/ksm/pages_sharing).")
	descNodeVMs        = nodeDesc("rakhsh_node_vms", "VMs bound to the node, by phase.", "phase")
	nodeDescs          = []*prometheus.Desc{descNodeCPU, descNodeMemory, descNodeRatio, descNodeStorage, descNodeImages, descNodeKSMShared, descNodeKSMSharing, descNodeVMs}
)

// Describe implements prometheus.Collector.
func (c *NodeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range nodeDescs {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *NodeCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.Source()
	with := func(x string) []string { return []string{c.Node, x} }
	only := []string{c.Node}
	if n.Known {
		gauge(ch, descNodeCPU, n.CPUCapacity, with("capacity"))
		gauge(ch, descNodeCPU, n.CPUAllocatable, with("allocatable"))
		gauge(ch, descNodeCPU, n.CPUAllocated, with("allocated"))
		gauge(ch, descNodeMemory, n.MemoryCapacity, with("capacity"))
		gauge(ch, descNodeMemory, n.MemoryAllocatable, with("allocatable"))
		gauge(ch, descNodeMemory, n.MemoryAllocated, with("allocated"))
		gauge(ch, descNodeRatio, n.CPURatio, with("cpu"))
		gauge(ch, descNodeRatio, n.MemoryRatio, with("memory"))
	}
	gauge(ch, descNodeStorage, n.StorageSize, with("size"))
	gauge(ch, descNodeStorage, n.StorageFree, with("free"))
	gauge(ch, descNodeImages, n.ImageBytes, only)
	sys := c.Sys
	if sys == "" {
		sys = "/sys"
	}
	if shared, sharing, err := ReadKSM(sys); err == nil {
		gauge(ch, descNodeKSMShared, shared, only)
		gauge(ch, descNodeKSMSharing, sharing, only)
	}
	for _, p := range VMPhases {
		gauge(ch, descNodeVMs, float64(n.VMsByPhase[p]), with(p))
	}
}

// VMPhases are the phases rakhsh_node_vms counts (every phase, zero or not, so that a sum
// over time has no gaps).
var VMPhases = []string{"Pending", "Starting", "Running", "Stopping", "Stopped", "Migrating", "Pause", "Degraded", "Terminating"}

// Starts holds the histograms of VM start times of one node: observed by the agent when it
// reports a VM Running.
type Starts struct {
	// CreateToRunning is observed once per VM: creation → first Running.
	CreateToRunning prometheus.Observer
	// StartToRunning is observed at every start: Starting → Running.
	StartToRunning prometheus.Observer
	collectors     []prometheus.Collector
}

// startBuckets span a fast KVM start (a fraction of a second) to a slow TCG start with an
// image download (minutes).
var startBuckets = []float64{0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300}

// NewStarts returns the start histograms of a node.
func NewStarts(node string) *Starts {
	c := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "rakhsh_vm_create_to_running_seconds",
		Help:        "Time from a VM's creation to its first Running, once per VM.",
		ConstLabels: prometheus.Labels{"node": node}, Buckets: startBuckets})
	s := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "rakhsh_vm_start_to_running_seconds",
		Help:        "Time from Starting to Running, at every start of a VM.",
		ConstLabels: prometheus.Labels{"node": node}, Buckets: startBuckets})
	return &Starts{CreateToRunning: c, StartToRunning: s, collectors: []prometheus.Collector{c, s}}
}

// Collectors are the histograms, to register.
func (s *Starts) Collectors() []prometheus.Collector { return s.collectors }
