package agent

// Enforcement of a VM's CPU and memory on its host. Every QEMU gets a cgroup of its own under
// a "rakhsh.slice":
//
//   - coreFraction below 100% becomes a CPU bandwidth limit: cores × fraction of CPU time per
//     period (cgroup v2 cpu.max, v1 cpu.cfs_quota_us / cpu.cfs_period_us). It covers all of
//     QEMU's threads, so a busy guest gets about fraction × cores of host CPU.
//   - memory.max (v1 memory.limit_in_bytes) is the guest memory plus headroom for QEMU itself
//     (see memoryLimit).
//   - dedicatedCores: the VM's cgroup lives under rakhsh.slice/dedicated and its cpuset holds
//     host cores no other dedicated VM has; each vCPU thread (its id from QMP query-cpus-fast)
//     is pinned to one of them. The allocator is node-wide and keeps no state of its own: the
//     cores in use are the cpusets of the non-empty cgroups under rakhsh.slice/dedicated,
//     which outlive the agent, so a restarted agent (or a second agent on the host) sees them.
//
// With cgroup v2 the slice is /sys/fs/cgroup/rakhsh.slice. With v1 (only) it is created, per
// controller hierarchy, under the cgroup the agent itself runs in, so VMs stay inside the
// limits the agent was given.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/qemu/qmp"
)

// cgroupRoot is where cgroup file systems are mounted.
var cgroupRoot = "/sys/fs/cgroup"

const (
	sliceName     = "rakhsh.slice"
	dedicatedName = "dedicated"
	cfsPeriodUsec = 100000
	// allocLockPath serialises the dedicated-core allocator between agents of one host.
	allocLockPath = "/run/rakhsh-cpu-allocator.lock"
)

// cgroupLayout is where the VM cgroups of this host live.
type cgroupLayout struct {
	v2 bool
	// slices are the rakhsh.slice directories by controller ("cpu", "cpuacct", "memory",
	// "cpuset"); with v2 all point to the one unified slice.
	slices map[string]string
}

// detectCgroups finds the cgroup version and the slice directories.
func detectCgroups() (*cgroupLayout, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(cgroupRoot, &st); err != nil {
		return nil, fmt.Errorf("no cgroup file system at %s: %w", cgroupRoot, err)
	}
	if st.Type == unix.CGROUP2_SUPER_MAGIC {
		s := filepath.Join(cgroupRoot, sliceName)
		return &cgroupLayout{v2: true, slices: map[string]string{"cpu": s, "cpuacct": s, "memory": s, "cpuset": s}}, nil
	}
	self, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, err
	}
	l := &cgroupLayout{slices: map[string]string{}}
	for _, line := range strings.Split(string(self), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 || parts[1] == "" {
			continue
		}
		ctrls := strings.Split(parts[1], ",")
		mount := filepath.Join(cgroupRoot, parts[1])
		if _, err := os.Stat(mount); err != nil {
			mount = filepath.Join(cgroupRoot, ctrls[0])
		}
		for _, c := range ctrls {
			switch c {
			case "cpu", "cpuacct", "memory", "cpuset":
				l.slices[c] = filepath.Join(mount, parts[2], sliceName)
			}
		}
	}
	for _, c := range []string{"cpu", "memory"} {
		if l.slices[c] == "" {
			return nil, fmt.Errorf("cgroup v1 controller %q is not mounted under %s", c, cgroupRoot)
		}
	}
	return l, nil
}

// vmDir is the VM's cgroup directory in one controller's hierarchy.
func (l *cgroupLayout) vmDir(ctrl, uid string, dedicated bool) string {
	base := l.slices[ctrl]
	if dedicated {
		base = filepath.Join(base, dedicatedName)
	}
	return filepath.Join(base, "vm-"+uid)
}

// vmLimits are what the cgroup of one VM enforces.
type vmLimits struct {
	// cpuQuotaUsec per cfsPeriodUsec; 0 means no limit.
	cpuQuotaUsec int64
	memoryBytes  int64
	dedicated    int // number of dedicated cores, 0 for none
}

// computeLimits derives the limits from the VM spec.
func computeLimits(vm *v1alpha1.VirtualMachine, tcg bool) vmLimits {
	var l vmLimits
	cores := int64(vm.Spec.CPU.Cores)
	frac := 100
	if f := strings.TrimSuffix(vm.Spec.CPU.CoreFraction, "%"); f != "" {
		if n, err := strconv.Atoi(f); err == nil && n >= 1 && n <= 100 {
			frac = n
		}
	}
	if frac < 100 && !vm.Spec.CPU.DedicatedCores {
		l.cpuQuotaUsec = cores * cfsPeriodUsec * int64(frac) / 100
		if l.cpuQuotaUsec < 1000 {
			l.cpuQuotaUsec = 1000 // the kernel's minimum quota is 1 ms
		}
	}
	mem, _ := vm.Spec.Memory.Size.Value()
	if m, err := vm.Spec.Memory.MaxSize.Value(); err == nil && m > mem {
		// The guest may plug memory up to maxSize while it runs (virtio-mem, live.go).
		mem = m
	}
	l.memoryBytes = memoryLimit(mem, tcg)
	if vm.Spec.CPU.DedicatedCores {
		l.dedicated = vm.Spec.CPU.Cores
	}
	return l
}

// memoryLimit is the guest memory plus QEMU's own needs: 256 MiB for the process, its
// libraries, I/O buffers and device state, plus 1/16 of the guest memory (page tables,
// video and migration buffers), plus, on hosts without KVM, 1 GiB for TCG's translation
// cache (QEMU's default tb-size; it fills as the guest runs new code).
func memoryLimit(guest int64, tcg bool) int64 {
	l := guest + 256<<20 + guest/16
	if tcg {
		l += tcgCodeCache
	}
	return l
}

// tcgCodeCache is QEMU's default TCG translation buffer size on 64-bit hosts.
const tcgCodeCache = 1 << 30

// vcpuQuerier is what pinning needs of the QMP connection.
type vcpuQuerier interface {
	QueryCPUsFast(ctx context.Context) ([]qmp.CPUInfo, error)
}

// enforceLimits puts a freshly started (still paused) QEMU into its cgroup and applies the
// VM's limits; with dedicated cores it also pins the vCPU threads. An error leaves QEMU
// running: the caller stops it.
func (a *Agent) enforceLimits(ctx context.Context, vm *v1alpha1.VirtualMachine, in *instance) error {
	l, err := detectCgroups()
	if err != nil {
		return err
	}
	lim := computeLimits(vm, in.accel != "kvm")
	ded := lim.dedicated > 0
	cleanupEmptyCgroups(l)
	dirs, err := makeVMCgroups(l, vm.UID, ded)
	if err != nil {
		return err
	}
	if err := writeLimits(l, dirs, lim); err != nil {
		return err
	}
	var cores []int
	if ded {
		// The allocator lock is held until QEMU is in its cgroup: the cores in use are
		// those of the non-empty cgroups.
		unlock, err := lockAllocator()
		if err != nil {
			return err
		}
		defer unlock()
		if cores, err = assignCores(l, vm.UID, dirs, lim.dedicated); err != nil {
			return err
		}
	}
	// Move QEMU in (v1: in every hierarchy).
	for _, d := range dirs {
		if err := writeCg(d, "cgroup.procs", strconv.Itoa(in.pid)); err != nil {
			return err
		}
		if l.v2 {
			break
		}
	}
	if ded {
		mon, ok := in.monitor().(vcpuQuerier)
		if !ok {
			return errors.New("pinning vCPUs: no QMP connection")
		}
		cpus, err := mon.QueryCPUsFast(ctx)
		if err != nil {
			return fmt.Errorf("pinning vCPUs: query-cpus-fast: %w", err)
		}
		if err := pinVCPUs(cpus, cores); err != nil {
			return err
		}
		a.log.Info("pinned vCPUs to dedicated host cores", "vm", vm.Namespace+"/"+vm.Name, "cores", formatCPUList(cores))
	}
	return nil
}

// makeVMCgroups creates the VM's cgroup directories (by controller), before QEMU moves in.
func makeVMCgroups(l *cgroupLayout, uid string, ded bool) (map[string]string, error) {
	ctrls := []string{"cpu", "cpuacct", "memory"}
	if ded {
		ctrls = append(ctrls, "cpuset")
		if l.slices["cpuset"] == "" {
			return nil, errors.New("dedicated cores need the cpuset cgroup controller, which is not mounted")
		}
	}
	if l.v2 {
		ctrls = []string{"cpu"}
		if err := prepareV2(l, ded); err != nil {
			return nil, err
		}
	}
	dirs := map[string]string{}
	for _, c := range ctrls {
		if l.slices[c] == "" {
			continue
		}
		d := l.vmDir(c, uid, ded)
		if !l.v2 && c == "cpuset" {
			if err := prepareCpusetV1(filepath.Dir(d)); err != nil {
				return nil, err
			}
		}
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("creating cgroup %s: %w", d, err)
		}
		dirs[c] = d
	}
	return dirs, nil
}

// writeLimits writes the CPU bandwidth and memory limits into the VM's cgroups.
func writeLimits(l *cgroupLayout, dirs map[string]string, lim vmLimits) error {
	cpuDir, memDir := dirs["cpu"], dirs["memory"]
	if l.v2 {
		v := "max " + strconv.Itoa(cfsPeriodUsec)
		if lim.cpuQuotaUsec > 0 {
			v = fmt.Sprintf("%d %d", lim.cpuQuotaUsec, cfsPeriodUsec)
		}
		if err := writeCg(cpuDir, "cpu.max", v); err != nil {
			return err
		}
		return writeCg(cpuDir, "memory.max", strconv.FormatInt(lim.memoryBytes, 10))
	}
	if err := writeCg(cpuDir, "cpu.cfs_period_us", strconv.Itoa(cfsPeriodUsec)); err != nil {
		return err
	}
	q := int64(-1)
	if lim.cpuQuotaUsec > 0 {
		q = lim.cpuQuotaUsec
	}
	if err := writeCg(cpuDir, "cpu.cfs_quota_us", strconv.FormatInt(q, 10)); err != nil {
		return err
	}
	return writeCg(memDir, "memory.limit_in_bytes", strconv.FormatInt(lim.memoryBytes, 10))
}

// assignCores allocates n dedicated cores to the VM and writes them into its cpuset. The
// caller holds the allocator lock.
func assignCores(l *cgroupLayout, uid string, dirs map[string]string, n int) ([]int, error) {
	csDir := dirs["cpuset"]
	if l.v2 {
		csDir = dirs["cpu"]
	}
	cores, err := allocateCores(l, uid, n)
	if err != nil {
		return nil, err
	}
	if err := writeCg(csDir, "cpuset.cpus", formatCPUList(cores)); err != nil {
		return nil, err
	}
	if !l.v2 {
		mems, _ := os.ReadFile(filepath.Join(filepath.Dir(csDir), "cpuset.mems"))
		if err := writeCg(csDir, "cpuset.mems", strings.TrimSpace(string(mems))); err != nil {
			return nil, err
		}
	}
	return cores, nil
}

// pinVCPUs pins vCPU i to cores[i].
func pinVCPUs(cpus []qmp.CPUInfo, cores []int) error {
	sort.Slice(cpus, func(i, j int) bool { return cpus[i].CPUIndex < cpus[j].CPUIndex })
	if len(cpus) > len(cores) {
		return fmt.Errorf("pinning vCPUs: %d vCPUs for %d dedicated cores", len(cpus), len(cores))
	}
	for i, c := range cpus {
		var set unix.CPUSet
		set.Set(cores[i])
		if err := unix.SchedSetaffinity(c.ThreadID, &set); err != nil {
			return fmt.Errorf("pinning vCPU %d (thread %d) to core %d: %w", c.CPUIndex, c.ThreadID, cores[i], err)
		}
	}
	return nil
}

// allocateCores hands out n host cores no other live dedicated VM holds (lowest first). The
// caller holds the allocator lock. A VM that already has a cpuset (a restart of the same VM)
// gets new cores like any other.
func allocateCores(l *cgroupLayout, uid string, n int) ([]int, error) {
	busy := map[int]bool{}
	base := filepath.Join(l.slices["cpuset"], dedicatedName)
	entries, _ := os.ReadDir(base)
	for _, e := range entries {
		if !e.IsDir() || e.Name() == "vm-"+uid {
			continue
		}
		d := filepath.Join(base, e.Name())
		if !cgroupHasProcs(d) {
			continue
		}
		b, err := os.ReadFile(filepath.Join(d, "cpuset.cpus"))
		if err != nil {
			continue
		}
		for _, c := range parseCPUList(strings.TrimSpace(string(b))) {
			busy[c] = true
		}
	}
	var avail []int
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return nil, err
	}
	for c := 0; c < runtime.NumCPU()*4 && c < 1024; c++ {
		if set.IsSet(c) && !busy[c] {
			avail = append(avail, c)
		}
	}
	if len(avail) < n {
		return nil, fmt.Errorf("dedicated cores: %d needed, %d host core(s) free (%d held by other dedicated VMs)", n, len(avail), len(busy))
	}
	return avail[:n], nil
}

// lockAllocator takes the host-wide allocator lock.
func lockAllocator() (func(), error) {
	f, err := os.OpenFile(allocLockPath, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("dedicated cores: opening the allocator lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
}

// prepareV2 creates the unified slice and enables the controllers VMs need.
func prepareV2(l *cgroupLayout, dedicated bool) error {
	s := l.slices["cpu"]
	want := "+cpu +memory"
	if dedicated {
		want += " +cpuset"
	}
	if err := writeCg(cgroupRoot, "cgroup.subtree_control", want); err != nil {
		return err
	}
	if err := os.MkdirAll(s, 0o755); err != nil {
		return err
	}
	if err := writeCg(s, "cgroup.subtree_control", want); err != nil {
		return err
	}
	if dedicated {
		d := filepath.Join(s, dedicatedName)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		return writeCg(d, "cgroup.subtree_control", want)
	}
	return nil
}

// prepareCpusetV1 creates the cpuset cgroups down to dir, each inheriting its parent's cpus
// and mems (a v1 cpuset without them takes no tasks).
func prepareCpusetV1(dir string) error {
	parent := filepath.Dir(dir)
	if _, err := os.Stat(filepath.Join(parent, "cpuset.cpus")); err != nil {
		if err := prepareCpusetV1(parent); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
		cur, _ := os.ReadFile(filepath.Join(dir, f))
		if strings.TrimSpace(string(cur)) != "" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(parent, f))
		if err != nil {
			return err
		}
		if err := writeCg(dir, f, strings.TrimSpace(string(b))); err != nil {
			return err
		}
	}
	return nil
}

// cleanupEmptyCgroups removes the cgroups of VMs whose QEMU is gone.
func cleanupEmptyCgroups(l *cgroupLayout) {
	for _, s := range l.slices {
		for _, base := range []string{s, filepath.Join(s, dedicatedName)} {
			entries, _ := os.ReadDir(base)
			for _, e := range entries {
				if e.IsDir() && strings.HasPrefix(e.Name(), "vm-") {
					d := filepath.Join(base, e.Name())
					if !cgroupHasProcs(d) {
						_ = os.Remove(d)
					}
				}
			}
		}
	}
}

func cgroupHasProcs(dir string) bool {
	f, err := os.Open(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	return sc.Scan() && strings.TrimSpace(sc.Text()) != ""
}

func writeCg(dir, file, value string) error {
	if err := os.WriteFile(filepath.Join(dir, file), []byte(value), 0o644); err != nil {
		return fmt.Errorf("writing %q to %s: %w", value, filepath.Join(dir, file), err)
	}
	return nil
}

// parseCPUList parses a kernel CPU list such as "0-2,5".
func parseCPUList(s string) []int {
	var out []int
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			continue
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a || b-a > 4096 {
				continue
			}
		}
		for c := a; c <= b; c++ {
			out = append(out, c)
		}
	}
	return out
}

// formatCPUList renders cores as a kernel CPU list ("0,1,3").
func formatCPUList(cores []int) string {
	s := make([]string, len(cores))
	for i, c := range cores {
		s[i] = strconv.Itoa(c)
	}
	return strings.Join(s, ",")
}

// removeVMCgroups removes the cgroups of the VM with uid once its QEMU is gone (a cgroup
// that still holds a process stays).
func removeVMCgroups(uid string) {
	l, err := detectCgroups()
	if err != nil {
		return
	}
	for ctrl := range l.slices {
		_ = os.Remove(l.vmDir(ctrl, uid, false))
		_ = os.Remove(l.vmDir(ctrl, uid, true))
	}
}
