package metrics

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// VM is what the node agent knows of one VM bound to its node, handed to the collector at
// every scrape: a VM the agent no longer lists has no series from then on.
type VM struct {
	Project, Name string
	Phase         string
	// PID is QEMU's process id; 0 when no QEMU runs.
	PID int
	// VCPUs and MemoryBytes are the VM's size (as it runs, else as specified).
	VCPUs       int
	MemoryBytes int64
	// NICs are the VM's taps on the host (host networking only).
	NICs []NIC
	// BlockStats asks QEMU for its block devices' counters (QMP query-blockstats); nil when
	// no QMP connection is open. The collector bounds the time it may take.
	BlockStats func(ctx context.Context) ([]BlockStat, error)
	// UnplannedExits counts the VM's crashes and failed starts in a row (status.lastExit).
	UnplannedExits int
	// Migration is the VM's current or last live migration, if any.
	Migration *Migration
}

// NIC is one VM NIC's tap.
type NIC struct {
	Device string // the NIC's device id in QEMU (net0, net1, ...)
	Tap    string
}

// BlockStat is one block device's counters, as QEMU's query-blockstats reports them.
type BlockStat struct {
	Device                               string
	ReadBytes, WriteBytes                float64
	ReadOps, WriteOps, FlushOps          float64
	ReadTimeNs, WriteTimeNs, FlushTimeNs float64
}

// Migration is the state of a VM's live migration from its status.
type Migration struct {
	Running        bool
	Percent        float64
	RemainingBytes float64
	// DowntimeSeconds is the last finished migration's switch-over pause (0: unknown).
	DowntimeSeconds float64
	// DurationSeconds is the last finished migration's start to end (0: unknown).
	DurationSeconds float64
}

// DefaultQMPTimeout bounds the QMP calls of one scrape, for each VM (they run in parallel).
const DefaultQMPTimeout = time.Second

// VMCollector collects the series of a node's VMs when Prometheus scrapes: QEMU's CPU time,
// its vCPU threads' run and wait time, resident memory, block device and tap counters,
// phase and migration state.
type VMCollector struct {
	Node string
	// Source lists the node's VMs; called once per scrape.
	Source func() []VM
	// Proc and Sys are where procfs and sysfs are mounted; default /proc and /sys (tests and
	// benchmarks point them at fake trees).
	Proc, Sys string
	// QMPTimeout bounds each VM's QMP calls of one scrape; default DefaultQMPTimeout.
	QMPTimeout time.Duration

	bufs sync.Pool
}

func (c *VMCollector) proc() string {
	if c.Proc == "" {
		return "/proc"
	}
	return c.Proc
}

func (c *VMCollector) sys() string {
	if c.Sys == "" {
		return "/sys"
	}
	return c.Sys
}

var vmLabels = []string{"project", "name", "node"}

func vmDesc(name, help string, extra ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, append(append([]string{}, vmLabels...), extra...), nil)
}

var (
	descVMPhase          = vmDesc("rakhsh_vm_phase", "The VM's phase: 1 for the phase it is in.", "phase")
	descVMCPU            = vmDesc("rakhsh_vm_cpu_seconds_total", "CPU time of the VM's QEMU process (all threads), by mode (user, system).", "mode")
	descVMVCPURun        = vmDesc("rakhsh_vm_vcpu_run_seconds_total", "Time each vCPU thread ran on a host CPU.", "vcpu")
	descVMVCPUWait       = vmDesc("rakhsh_vm_vcpu_wait_seconds_total", "Time each vCPU thread was ready to run but waited for a host CPU (the guest's steal time): the overcommit signal.", "vcpu")
	descVMVCPUs          = vmDesc("rakhsh_vm_vcpus", "vCPUs the VM has.")
	descVMMemory         = vmDesc("rakhsh_vm_memory_size_bytes", "Memory the VM's guest has: its memory size less what the node reclaimed through its balloon.")
	descVMRSS            = vmDesc("rakhsh_vm_memory_resident_bytes", "Resident memory of the VM's QEMU process on the host.")
	descVMExits          = vmDesc("rakhsh_vm_unplanned_exits", "Crashes and failed starts of the VM in a row (reset by a run that lasts).")
	descVMDiskReadBytes  = vmDesc("rakhsh_vm_disk_read_bytes_total", "Bytes the guest read from the block device.", "device")
	descVMDiskWriteBytes = vmDesc("rakhsh_vm_disk_write_bytes_total", "Bytes the guest wrote to the block device.", "device")
	descVMDiskReads      = vmDesc("rakhsh_vm_disk_reads_total", "Read requests the guest completed on the block device.", "device")
	descVMDiskWrites     = vmDesc("rakhsh_vm_disk_writes_total", "Write requests the guest completed on the block device.", "device")
	descVMDiskFlushes    = vmDesc("rakhsh_vm_disk_flushes_total", "Flush requests the guest completed on the block device.", "device")
	descVMDiskReadTime   = vmDesc("rakhsh_vm_disk_read_time_seconds_total", "Time the block device's reads took, summed (divide by reads for the mean latency).", "device")
	descVMDiskWriteTime  = vmDesc("rakhsh_vm_disk_write_time_seconds_total", "Time the block device's writes took, summed.", "device")
	descVMDiskFlushTime  = vmDesc("rakhsh_vm_disk_flush_time_seconds_total", "Time the block device's flushes took, summed.", "device")
	descVMNetRxBytes     = vmDesc("rakhsh_vm_network_receive_bytes_total", "Bytes the VM's NIC received (sent to its tap by the host).", "device")
	descVMNetTxBytes     = vmDesc("rakhsh_vm_network_transmit_bytes_total", "Bytes the VM's NIC sent.", "device")
	descVMNetRxPackets   = vmDesc("rakhsh_vm_network_receive_packets_total", "Packets the VM's NIC received.", "device")
	descVMNetTxPackets   = vmDesc("rakhsh_vm_network_transmit_packets_total", "Packets the VM's NIC sent.", "device")
	descVMNetRxDropped   = vmDesc("rakhsh_vm_network_receive_dropped_total", "Packets for the VM that its tap dropped.", "device")
	descVMNetTxDropped   = vmDesc("rakhsh_vm_network_transmit_dropped_total", "Packets from the VM that its tap dropped.", "device")
	descVMMigProgress    = vmDesc("rakhsh_vm_migration_progress_percent", "Progress of the VM's running live migration (memory and mirrored disks copied).")
	descVMMigRemaining   = vmDesc("rakhsh_vm_migration_remaining_bytes", "Bytes the VM's running live migration still has to copy.")
	descVMMigDowntime    = vmDesc("rakhsh_vm_migration_downtime_seconds", "The guest's pause at the switch-over of the VM's last finished live migration.")
	descVMMigDuration    = vmDesc("rakhsh_vm_migration_duration_seconds", "Start to end of the VM's last finished live migration.")
)

var vmDescs = []*prometheus.Desc{descVMPhase, descVMCPU, descVMVCPURun, descVMVCPUWait, descVMVCPUs, descVMMemory, descVMRSS,
	descVMExits, descVMDiskReadBytes, descVMDiskWriteBytes, descVMDiskReads, descVMDiskWrites, descVMDiskFlushes,
	descVMDiskReadTime, descVMDiskWriteTime, descVMDiskFlushTime, descVMNetRxBytes, descVMNetTxBytes, descVMNetRxPackets,
	descVMNetTxPackets, descVMNetRxDropped, descVMNetTxDropped, descVMMigProgress, descVMMigRemaining, descVMMigDowntime, descVMMigDuration}

// Describe implements prometheus.Collector.
func (c *VMCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range vmDescs {
		ch <- d
	}
}

// Collect implements prometheus.Collector. QMP calls of all VMs run in parallel, each bounded
// by QMPTimeout; a VM whose QEMU does not answer in time has no block series in this scrape.
func (c *VMCollector) Collect(ch chan<- prometheus.Metric) {
	vms := c.Source()
	timeout := c.QMPTimeout
	if timeout <= 0 {
		timeout = DefaultQMPTimeout
	}
	blocks := make([][]BlockStat, len(vms))
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for i := range vms {
		if vms[i].BlockStats == nil {
			continue
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if bs, err := vms[i].BlockStats(ctx); err == nil {
				blocks[i] = bs
			}
		}(i)
	}
	buf, _ := c.bufs.Get().([]byte)
	if buf == nil {
		buf = make([]byte, 4096)
	}
	for i := range vms {
		c.collectHost(ch, &vms[i], buf)
	}
	c.bufs.Put(buf)
	wg.Wait()
	for i := range vms {
		v := &vms[i]
		for _, b := range blocks[i] {
			lv := []string{v.Project, v.Name, c.Node, b.Device}
			counter(ch, descVMDiskReadBytes, b.ReadBytes, lv)
			counter(ch, descVMDiskWriteBytes, b.WriteBytes, lv)
			counter(ch, descVMDiskReads, b.ReadOps, lv)
			counter(ch, descVMDiskWrites, b.WriteOps, lv)
			counter(ch, descVMDiskFlushes, b.FlushOps, lv)
			counter(ch, descVMDiskReadTime, b.ReadTimeNs/1e9, lv)
			counter(ch, descVMDiskWriteTime, b.WriteTimeNs/1e9, lv)
			counter(ch, descVMDiskFlushTime, b.FlushTimeNs/1e9, lv)
		}
	}
}

// collectHost emits the series read from the VM's status and from /proc and /sys.
func (c *VMCollector) collectHost(ch chan<- prometheus.Metric, v *VM, buf []byte) {
	base := []string{v.Project, v.Name, c.Node}
	with := func(x string) []string { return []string{v.Project, v.Name, c.Node, x} }
	if v.Phase != "" {
		gauge(ch, descVMPhase, 1, with(v.Phase))
	}
	gauge(ch, descVMVCPUs, float64(v.VCPUs), base)
	gauge(ch, descVMMemory, float64(v.MemoryBytes), base)
	gauge(ch, descVMExits, float64(v.UnplannedExits), base)
	if m := v.Migration; m != nil {
		if m.Running {
			gauge(ch, descVMMigProgress, m.Percent, base)
			gauge(ch, descVMMigRemaining, m.RemainingBytes, base)
		} else {
			if m.DowntimeSeconds > 0 {
				gauge(ch, descVMMigDowntime, m.DowntimeSeconds, base)
			}
			if m.DurationSeconds > 0 {
				gauge(ch, descVMMigDuration, m.DurationSeconds, base)
			}
		}
	}
	if v.PID > 0 {
		if cpu, err := readProcStat(c.proc(), v.PID, buf); err == nil {
			counter(ch, descVMCPU, cpu.User, with("user"))
			counter(ch, descVMCPU, cpu.System, with("system"))
		}
		if rss, err := readRSS(c.proc(), v.PID, buf); err == nil {
			gauge(ch, descVMRSS, float64(rss), base)
		}
		if vcpus, err := readVCPUs(c.proc(), v.PID, buf); err == nil {
			for _, s := range vcpus {
				counter(ch, descVMVCPURun, s.Run, with(s.VCPU))
				counter(ch, descVMVCPUWait, s.Wait, with(s.VCPU))
			}
		}
	}
	for _, n := range v.NICs {
		t, err := readTap(c.sys(), n.Tap, buf)
		if err != nil {
			continue
		}
		lv := with(n.Device)
		// The tap's receive is what the VM sent, and the other way round.
		counter(ch, descVMNetRxBytes, t.TxBytes, lv)
		counter(ch, descVMNetTxBytes, t.RxBytes, lv)
		counter(ch, descVMNetRxPackets, t.TxPackets, lv)
		counter(ch, descVMNetTxPackets, t.RxPackets, lv)
		counter(ch, descVMNetRxDropped, t.TxDropped, lv)
		counter(ch, descVMNetTxDropped, t.RxDropped, lv)
	}
}

func counter(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, lv []string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, lv...)
}

func gauge(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, lv []string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, lv...)
}

// DeviceOfQdev is the device label of a query-blockstats entry's qdev: the device's id,
// without the QOM path around it ("/machine/peripheral/disk-x/virtio-backend" → "disk-x").
func DeviceOfQdev(qdev string) string {
	s := strings.TrimPrefix(qdev, "/machine/peripheral/")
	s = strings.TrimSuffix(s, "/virtio-backend")
	return s
}
