package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/metrics"
	"github.com/rakhsh/rakhsh/internal/network"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// agentMetrics is the agent's part of /metrics (docs/metrics.md): its node's VMs and the
// node itself, read when Prometheus scrapes, and the VM start histograms.
type agentMetrics struct {
	starts *metrics.Starts
	// node is the Node status of the last heartbeat and the ratios it used.
	node atomic.Pointer[nodeSample]
	// images caches the size of the image directories (walked at most once a minute).
	images atomic.Pointer[imageSize]
}

type nodeSample struct {
	st                 v1alpha1.NodeStatus
	cpuRatio, memRatio float64
}

type imageSize struct {
	at    time.Time
	bytes float64
}

func newAgentMetrics(node string) *agentMetrics {
	return &agentMetrics{starts: metrics.NewStarts(node)}
}

// MetricsCollectors returns the collectors of this agent's node and VMs, to register in the
// registry of the /metrics that serves them (the serve process's, or `rakhsh agent
// --metrics-listen`'s).
func (a *Agent) MetricsCollectors() []prometheus.Collector {
	out := []prometheus.Collector{
		&metrics.VMCollector{Node: a.cfg.NodeName, Source: a.metricsVMs},
		&metrics.NodeCollector{Node: a.cfg.NodeName, Source: a.metricsNode},
	}
	return append(out, a.metrics.starts.Collectors()...)
}

// metricsVMs lists the VMs bound to this node, with their QEMU where one runs.
func (a *Agent) metricsVMs() []metrics.VM {
	vms := a.vms.List()
	byUID := map[string]*instance{}
	a.mu.Lock()
	for uid, in := range a.insts {
		byUID[uid] = in
	}
	a.mu.Unlock()
	out := make([]metrics.VM, 0, len(vms))
	for _, vm := range vms {
		if vm.Status.NodeName != a.cfg.NodeName || vm.UID == "" {
			continue
		}
		m := metrics.VM{Project: vm.Namespace, Name: vm.Name, Phase: string(vm.Status.Phase), VCPUs: vm.Spec.CPU.Cores}
		if n, err := vm.Spec.Memory.Size.Value(); err == nil {
			m.MemoryBytes = n
		}
		if r := vm.Status.Resources; r != nil {
			if r.CPU.Cores > 0 {
				m.VCPUs = r.CPU.Cores
			}
			if n, err := r.Memory.Size.Value(); err == nil && n > 0 {
				m.MemoryBytes = n
			}
			if b := r.Memory.Balloon; b != nil {
				// Less what the node reclaimed through the balloon (memory.go).
				boot := r.Memory.BootSize
				if boot == "" {
					boot = r.Memory.Size
				}
				if held := memoryBytes(boot) - memoryBytes(b.Actual); held > 0 && memoryBytes(b.Actual) > 0 {
					m.MemoryBytes -= held
				}
			}
		}
		if vm.Status.LastExit != nil {
			m.UnplannedExits = vm.Status.LastExit.Count
		}
		if ms := vm.Status.MigrationState; ms != nil {
			mig := &metrics.Migration{Running: ms.Active()}
			if p := ms.Progress; p != nil {
				mig.Percent, mig.RemainingBytes = float64(p.Percent), float64(p.RemainingBytes)
				if d, ok := p.GuestPause(); ok {
					mig.DowntimeSeconds = d.Seconds()
				} else if p.DowntimeMs > 0 {
					mig.DowntimeSeconds = float64(p.DowntimeMs) / 1000
				}
			}
			if !mig.Running && ms.StartTimestamp != nil && ms.EndTimestamp != nil && ms.EndTimestamp.After(ms.StartTimestamp.Time) {
				mig.DurationSeconds = ms.EndTimestamp.Sub(ms.StartTimestamp.Time).Seconds()
			}
			m.Migration = mig
		}
		if in := byUID[vm.UID]; in != nil && !in.isExited() {
			m.PID = in.pid
			if ex, ok := in.monitor().(qmpExecutor); ok {
				m.BlockStats = func(ctx context.Context) ([]metrics.BlockStat, error) { return queryBlockStats(ctx, ex) }
			}
			if a.net != nil {
				for i := range vm.Status.Networks {
					m.NICs = append(m.NICs, metrics.NIC{Device: fmt.Sprintf("net%d", i), Tap: network.TapName(vm.UID, i)})
				}
			}
		}
		out = append(out, m)
	}
	return out
}

// queryBlockStats asks QEMU for its block devices' counters; entries without a guest device
// (backing layers, nodes of a running block job) are left out.
func queryBlockStats(ctx context.Context, ex qmpExecutor) ([]metrics.BlockStat, error) {
	var res []struct {
		Device string `json:"device"`
		Qdev   string `json:"qdev"`
		Stats  struct {
			RdBytes       float64 `json:"rd_bytes"`
			WrBytes       float64 `json:"wr_bytes"`
			RdOps         float64 `json:"rd_operations"`
			WrOps         float64 `json:"wr_operations"`
			FlushOps      float64 `json:"flush_operations"`
			RdTotalTimeNs float64 `json:"rd_total_time_ns"`
			WrTotalTimeNs float64 `json:"wr_total_time_ns"`
			FlTotalTimeNs float64 `json:"flush_total_time_ns"`
		} `json:"stats"`
	}
	if err := ex.Execute(ctx, "query-blockstats", nil, &res); err != nil {
		return nil, err
	}
	out := make([]metrics.BlockStat, 0, len(res))
	for _, r := range res {
		dev := metrics.DeviceOfQdev(r.Qdev)
		if dev == "" {
			dev = r.Device
		}
		if dev == "" {
			continue
		}
		s := r.Stats
		out = append(out, metrics.BlockStat{Device: dev, ReadBytes: s.RdBytes, WriteBytes: s.WrBytes, ReadOps: s.RdOps,
			WriteOps: s.WrOps, FlushOps: s.FlushOps, ReadTimeNs: s.RdTotalTimeNs, WriteTimeNs: s.WrTotalTimeNs, FlushTimeNs: s.FlTotalTimeNs})
	}
	return out, nil
}

// metricsNode is the node's state for its series.
func (a *Agent) metricsNode() metrics.Node {
	var n metrics.Node
	if s := a.metrics.node.Load(); s != nil {
		st := s.st
		if st.Capacity != nil && st.Allocatable != nil {
			n.Known = true
			n.CPUCapacity, n.CPUAllocatable = float64(st.Capacity.CPU), float64(st.Allocatable.CPU)
			n.MemoryCapacity = quantityBytes(st.Capacity.Memory)
			n.MemoryAllocatable = quantityBytes(st.Allocatable.Memory)
			n.CPURatio, n.MemoryRatio = s.cpuRatio, s.memRatio
		}
	}
	if alloc := a.allocated(); alloc != nil {
		n.CPUAllocated, n.MemoryAllocated = float64(alloc.CPU), quantityBytes(alloc.Memory)
	}
	var fs syscall.Statfs_t
	if err := syscall.Statfs(a.cfg.DataDir, &fs); err == nil {
		n.StorageFree, n.StorageSize = float64(fs.Bavail)*float64(fs.Bsize), float64(fs.Blocks)*float64(fs.Bsize)
	}
	n.ImageBytes = a.imageBytes()
	n.VMsByPhase = map[string]int{}
	for _, vm := range a.vms.List() {
		if vm.Status.NodeName != a.cfg.NodeName {
			continue
		}
		p := string(vm.Status.Phase)
		if p == "" {
			p = string(v1alpha1.VMPhasePending)
		}
		n.VMsByPhase[p]++
	}
	return n
}

func quantityBytes(q v1alpha1.Quantity) float64 {
	n, err := q.Value()
	if err != nil {
		return 0
	}
	return float64(n)
}

// imageBytes is the space the node's image store and image cache take (the blocks their files
// use), walked at most once a minute.
func (a *Agent) imageBytes() float64 {
	now := time.Now()
	if c := a.metrics.images.Load(); c != nil && now.Sub(c.at) < time.Minute {
		return c.bytes
	}
	var total float64
	for _, dir := range []string{filepath.Dir(storage.ImagePath(a.cfg.DataDir, "x")),
		filepath.Dir(storage.ImageCachePath(a.cfg.DataDir, storage.DefaultPool, "x"))} {
		ents, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() {
				if st, ok := fi.Sys().(*syscall.Stat_t); ok {
					total += float64(st.Blocks) * 512
				}
			}
		}
	}
	a.metrics.images.Store(&imageSize{at: now, bytes: total})
	return total
}

// observeStart records a VM's start in the start histograms: Starting → Running, and
// creation → Running at its first start.
func (a *Agent) observeStart(startToRunning, createToRunning time.Duration) {
	if startToRunning > 0 {
		a.metrics.starts.StartToRunning.Observe(startToRunning.Seconds())
	}
	if createToRunning > 0 {
		a.metrics.starts.CreateToRunning.Observe(createToRunning.Seconds())
	}
}
