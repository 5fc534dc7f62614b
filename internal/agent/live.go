package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/qemu"
)

// Live CPU and memory changes. A VM started with room to grow (spec.cpu.maxCores,
// spec.memory.maxSize; internal/qemu gives it spare vCPU slots and a virtio-mem device)
// takes changes of spec.cpu.cores and spec.memory.size while it runs:
//
//   - more cores: a CPU object is added (device_add) into each of the lowest free slots that
//     query-hotpluggable-cpus lists; the guest brings the new vCPUs online;
//   - fewer cores: the highest hot-added vCPUs are removed (device_del); the guest must
//     offline and eject them (Linux does it by itself on the ACPI eject request), which is
//     waited for up to liveUnplugTimeout. vCPUs the VM started with are never removed;
//   - memory: the virtio-mem device's requested-size becomes the new size minus the boot
//     memory (qom-set), and its size (what the guest plugged) is waited for up to
//     liveMemoryTimeout, growing or shrinking.
//
// What the guest ends up with is written to runspec.json (so status.resources shows the
// live values, and a change that did not go through stays listed in
// AwaitingRestartToApplyConfiguration). A change that cannot be live, or that the guest did
// not follow, gets an event, once per value asked for.

// Time the guest gets to follow a live change (variables for tests).
var (
	liveUnplugTimeout = 20 * time.Second
	liveMemoryTimeout = 30 * time.Second
)

const (
	livePollInterval = 100 * time.Millisecond
	// A change the guest did not finish in time is looked at again every
	// liveCatchUpInterval for liveCatchUpFor (catchUpLive).
	liveCatchUpInterval = 2 * time.Second
	liveCatchUpFor      = 10 * time.Minute
)

// liveState remembers the last live change that could not be made, so that a reconcile
// does not wait for a guest that did not cooperate again and again, nor repeat its event.
type liveState struct {
	// failedCores and failedMemory are the values whose change failed or was refused (0:
	// none); a new value in the spec is tried afresh.
	failedCores  int
	failedMemory int64
	// refusedCores and refusedMemory are the spec values a RestartRequired event was made
	// for.
	refusedCores  int
	refusedMemory int64
	// failedAt is when the last change failed; slow says it failed because the guest had
	// not followed within the wait, so that it may still finish it.
	failedAt time.Time
	slow     bool
}

// unfinished says a live change failed and may still be finished by the guest.
func (st *liveState) unfinished() bool {
	return st.slow && (st.failedCores != 0 || st.failedMemory != 0)
}

// slowGuestError is a live change the guest had not followed when the wait ended.
type slowGuestError struct{ msg string }

func (e *slowGuestError) Error() string { return e.msg }

func slowGuest(err error) bool {
	var s *slowGuestError
	return errors.As(err, &s)
}

// livePlan is what a running VM's spec asks of its CPUs and memory beyond what runs.
type livePlan struct {
	// Cores is the vCPU count to reach live; 0: no change (or none possible).
	Cores int
	// Memory is the memory size to reach live, in bytes; 0: no change (or none possible).
	Memory int64
	// Refused lists changes that cannot be made live, each with why.
	Refused []string
}

// planLive compares what runs (rs) with the spec and says which CPU and memory changes can
// be made live. It is pure.
func planLive(rs *runSpec, want *v1alpha1.VirtualMachineSpec, st liveState) livePlan {
	var p livePlan
	run := &rs.Spec
	if c := want.CPU.Cores; c != run.CPU.Cores && c > 0 {
		boot := rs.bootCores()
		switch {
		case run.CPU.MaxCores <= boot:
			p.Refused = append(p.Refused, fmt.Sprintf("spec.cpu.cores: the VM started without room to grow its vCPUs (spec.cpu.maxCores was not set above %d)", boot))
		case c > run.CPU.MaxCores:
			p.Refused = append(p.Refused, fmt.Sprintf("spec.cpu.cores: %d is above the %d vCPU slots the VM started with (spec.cpu.maxCores)", c, run.CPU.MaxCores))
		case c < boot:
			p.Refused = append(p.Refused, fmt.Sprintf("spec.cpu.cores: %d is below the %d vCPUs the VM started with, which are not removed live", c, boot))
		case c > run.CPU.Cores && len(rs.RetiredCPUSlots) > 0:
			p.Refused = append(p.Refused, "spec.cpu.cores: a vCPU was removed from this QEMU, and QEMU 7.2 was seen to end when a vCPU was added after a removal: the growth waits for a restart")
		case run.CPU.DedicatedCores:
			p.Refused = append(p.Refused, "spec.cpu.cores: the vCPUs of a VM with dedicated cores are pinned to host cores at start")
		case c == st.failedCores:
			// Tried, and the guest did not follow: the restart applies it.
		default:
			p.Cores = c
		}
	}
	if m := memoryBytes(want.Memory.Size); m > 0 && m != memoryBytes(run.Memory.Size) {
		boot, maxSize := memoryBytes(rs.bootMemory()), memoryBytes(run.Memory.MaxSize)
		switch {
		case maxSize <= boot:
			p.Refused = append(p.Refused, fmt.Sprintf("spec.memory.size: the VM started without room to grow its memory (spec.memory.maxSize was not set above %s)", rs.bootMemory()))
		case m > maxSize:
			p.Refused = append(p.Refused, fmt.Sprintf("spec.memory.size: %s is above the spec.memory.maxSize %s the VM started with", want.Memory.Size, run.Memory.MaxSize))
		case m < boot:
			p.Refused = append(p.Refused, fmt.Sprintf("spec.memory.size: %s is below the %s the guest booted with, which is not removed live", want.Memory.Size, rs.bootMemory()))
		case m%(qemu.MemoryHotplugBlockMiB<<20) != 0:
			p.Refused = append(p.Refused, fmt.Sprintf("spec.memory.size: %s is not a multiple of the %dMi hot-plug block", want.Memory.Size, qemu.MemoryHotplugBlockMiB))
		case m == st.failedMemory:
		default:
			p.Memory = m
		}
	}
	return p
}

// recordCores records that have vCPUs run (keeping the count the VM started with); false
// when that is what rs says already, or have is unknown (0).
func (rs *runSpec) recordCores(have int) bool {
	if have <= 0 || have == rs.Spec.CPU.Cores {
		return false
	}
	if rs.BootCores == 0 {
		rs.BootCores = rs.Spec.CPU.Cores
	}
	rs.Spec.CPU.Cores = have
	return true
}

// recordMemory records that the guest has plugged bytes of the virtio-mem device on top of
// its boot memory (keeping the boot memory).
func (rs *runSpec) recordMemory(plugged int64) {
	boot := memoryBytes(rs.bootMemory())
	if rs.BootMemory == "" {
		rs.BootMemory = rs.Spec.Memory.Size
	}
	rs.HotpluggedMemory = v1alpha1.BytesQuantity(plugged)
	rs.Spec.Memory.Size = v1alpha1.BytesQuantity(boot + plugged)
}

// bootCores is the vCPU count the VM started with.
func (rs *runSpec) bootCores() int {
	if rs.BootCores > 0 {
		return rs.BootCores
	}
	return rs.Spec.CPU.Cores
}

// hotCPU is an entry of query-hotpluggable-cpus.
type hotCPU struct {
	Type    string         `json:"type"`
	Props   map[string]any `json:"props"`
	QOMPath string         `json:"qom-path,omitempty"`
}

// prop is a numeric property of a slot (-1 when absent).
func (c hotCPU) prop(name string) int {
	if v, ok := c.Props[name].(float64); ok {
		return int(v)
	}
	return -1
}

// hotplugged says the vCPU was added by device_add (the -smp ones are not under peripheral).
func (c hotCPU) hotplugged() bool { return strings.HasPrefix(c.QOMPath, "/machine/peripheral/") }

// cpuSlots lists the vCPU slots in topology order (socket, die, core, thread).
func cpuSlots(ctx context.Context, mon qmpExecutor) ([]hotCPU, error) {
	var slots []hotCPU
	if err := mon.Execute(ctx, "query-hotpluggable-cpus", nil, &slots); err != nil {
		return nil, fmt.Errorf("query-hotpluggable-cpus: %w", err)
	}
	keys := []string{"socket-id", "die-id", "core-id", "thread-id"}
	sort.SliceStable(slots, func(i, j int) bool {
		for _, k := range keys {
			if a, b := slots[i].prop(k), slots[j].prop(k); a != b {
				return a < b
			}
		}
		return false
	})
	return slots, nil
}

func presentCPUs(slots []hotCPU) int {
	n := 0
	for _, s := range slots {
		if s.QOMPath != "" {
			n++
		}
	}
	return n
}

// cpuDeviceID is the qdev id of the vCPU in slot i (of the topology order).
func cpuDeviceID(i int) string { return qemu.CPUDeviceID(i) }

// setCPUs brings the VM to want vCPUs: it adds vCPUs into the lowest free slots that were
// never used (retired lists the slots, by topology index, whose vCPU was removed earlier:
// QEMU 7.2 was seen to end when a vCPU was added again into such a slot, so a slot is used
// once per QEMU process), or removes the highest hot-added ones and waits (up to timeout)
// for the guest to let them go, adding their slots to retired. It returns the vCPUs present
// at the end.
func setCPUs(ctx context.Context, mon qmpExecutor, want int, timeout time.Duration, retired map[int]bool) (int, error) {
	slots, err := cpuSlots(ctx, mon)
	if err != nil {
		return 0, err
	}
	have := presentCPUs(slots)
	switch {
	case want > have:
		for i, s := range slots {
			if have >= want {
				break
			}
			if s.QOMPath != "" || retired[i] {
				continue
			}
			args := map[string]any{"driver": s.Type, "id": cpuDeviceID(i)}
			for k, v := range s.Props {
				args[k] = v
			}
			if err := mon.Execute(ctx, "device_add", args, nil); err != nil {
				return have, fmt.Errorf("device_add %s: %w", cpuDeviceID(i), err)
			}
			have++
		}
		if have < want {
			if len(retired) > 0 {
				return have, fmt.Errorf("no unused vCPU slot left (%d slots, %d of them emptied earlier, which are not used again before a restart)", len(slots), len(retired))
			}
			return have, fmt.Errorf("only %d vCPU slots", len(slots))
		}
		return have, nil
	case want < have:
		var gone []string
		for i := len(slots) - 1; i >= 0 && have-len(gone) > want; i-- {
			s := slots[i]
			if !s.hotplugged() {
				continue
			}
			id := s.QOMPath[strings.LastIndex(s.QOMPath, "/")+1:]
			retired[i] = true // asked to go: never plugged again, whatever the guest does
			if err := mon.Execute(ctx, "device_del", map[string]any{"id": id}, nil); err != nil {
				return have, fmt.Errorf("device_del %s: %w", id, err)
			}
			gone = append(gone, s.QOMPath)
		}
		deadline := time.Now().Add(timeout)
		for {
			slots, err := cpuSlots(ctx, mon)
			if err != nil {
				return have, err
			}
			have = presentCPUs(slots)
			if have <= want {
				return have, nil
			}
			if time.Now().After(deadline) {
				return have, &slowGuestError{fmt.Sprintf("the guest did not release the vCPUs within %s (it runs %d)", timeout, have)}
			}
			select {
			case <-ctx.Done():
				return have, ctx.Err()
			case <-time.After(livePollInterval):
			}
		}
	}
	return have, nil
}

// memoryDevicePath is the QOM path of the virtio-mem device.
const memoryDevicePath = "/machine/peripheral/" + qemu.MemoryHotplugDevice

// memorySize reads what the guest has plugged of the virtio-mem device.
func memorySize(ctx context.Context, mon qmpExecutor) (int64, error) {
	var n json.Number
	if err := mon.Execute(ctx, "qom-get", map[string]any{"path": memoryDevicePath, "property": "size"}, &n); err != nil {
		return 0, fmt.Errorf("qom-get size: %w", err)
	}
	return n.Int64()
}

// setHotpluggedMemory asks the guest for requested bytes of the virtio-mem device and waits
// (up to timeout) until it has plugged or unplugged them. It returns the size plugged at the
// end, -1 when QEMU did not say.
func setHotpluggedMemory(ctx context.Context, mon qmpExecutor, requested int64, timeout time.Duration) (int64, error) {
	if err := mon.Execute(ctx, "qom-set", map[string]any{"path": memoryDevicePath, "property": "requested-size", "value": requested}, nil); err != nil {
		return -1, fmt.Errorf("qom-set requested-size: %w", err)
	}
	deadline := time.Now().Add(timeout)
	for {
		size, err := memorySize(ctx, mon)
		if err != nil {
			return -1, err
		}
		if size == requested {
			return size, nil
		}
		if time.Now().After(deadline) {
			return size, &slowGuestError{fmt.Sprintf("the guest has %s of the %s asked for after %s", v1alpha1.HumanBytes(size), v1alpha1.HumanBytes(requested), timeout)}
		}
		select {
		case <-ctx.Done():
			return size, ctx.Err()
		case <-time.After(livePollInterval):
		}
	}
}

// catchUpLive records in rs what QEMU runs after a live change that the guest did not
// finish in time (in.live.failedCores, failedMemory): the guest may still finish it (Linux
// ejects a vCPU it was asked to give back once it can; the virtio-mem driver keeps working
// toward the requested size), and then status.resources shows it and nothing waits for a
// restart. A change that is now complete is no longer failed. It says whether rs changed.
func (a *Agent) catchUpLive(ctx context.Context, mon qmpExecutor, rs *runSpec, in *instance, key string) (changed bool) {
	st := &in.live
	if st.failedCores != 0 {
		if slots, err := cpuSlots(ctx, mon); err == nil {
			if have := presentCPUs(slots); rs.recordCores(have) {
				changed = true
				if have == st.failedCores {
					st.failedCores = 0
					a.log.Info("the guest finished a live change of its vCPUs late", "vm", key, "cores", have, "after", time.Since(st.failedAt).Round(time.Millisecond))
				}
			}
		}
	}
	if st.failedMemory != 0 {
		if plugged, err := memorySize(ctx, mon); err == nil {
			if total := memoryBytes(rs.bootMemory()) + plugged; total != memoryBytes(rs.Spec.Memory.Size) {
				rs.recordMemory(plugged)
				changed = true
				if total == st.failedMemory {
					st.failedMemory = 0
					a.log.Info("the guest finished a live change of its memory late", "vm", key, "size", rs.Spec.Memory.Size, "after", time.Since(st.failedAt).Round(time.Millisecond))
				}
			}
		}
	}
	return changed
}

// applyLive makes the CPU and memory changes of vm's spec that can be made live on its
// running QEMU, and records what runs in runspec.json. It returns when to look again: while
// a change the guest did not finish in time may still be finished (catchUpLive), else 0.
func (a *Agent) applyLive(ctx context.Context, vm *v1alpha1.VirtualMachine, in *instance, m monitor) time.Duration {
	mon, ok := m.(qmpExecutor)
	if !ok || vm.Status.MigrationState.Active() {
		// During a migration the target is (or is being) made with what runs now: the change
		// waits for the migration's end, and is then made on whichever side runs the VM.
		return 0
	}
	rs := loadRunSpec(in.runDir, vm)
	key := vm.Namespace + "/" + vm.Name
	cores := rs.Spec.CPU.Cores
	changed := in.live.unfinished() && a.catchUpLive(ctx, mon, rs, in, key)
	p := planLive(rs, &vm.Spec, in.live)
	var failed []string
	if p.Cores > 0 {
		c, failure := a.applyLiveCores(ctx, mon, rs, in, p.Cores, key)
		changed = changed || c
		if failure != "" {
			failed = append(failed, failure)
		}
	}
	if p.Memory > 0 {
		c, failure := a.applyLiveMemory(ctx, mon, rs, in, p.Memory, vm.Spec.Memory.Size, key)
		changed = changed || c
		if failure != "" {
			failed = append(failed, failure)
		}
	}
	if changed {
		if err := saveRunSpec(in.runDir, rs); err != nil {
			a.log.Warn("recording a live change", "vm", key, "err", err)
		}
		if rs.Spec.CPU.Cores != cores {
			a.refreshCPULimit(vm, rs, in)
		}
	}
	if len(failed) > 0 {
		in.live.failedAt = time.Now()
		msg := "a live change did not go through and waits for a restart (unless the guest still finishes it): " + strings.Join(failed, "; ")
		a.log.Warn(msg, "vm", key)
		a.rec.Event(ctx, "VirtualMachine", vm, "Warning", "LiveChangeFailed", msg)
	}
	// Refusals are told once per value asked for.
	if len(p.Refused) > 0 {
		cores, mem := vm.Spec.CPU.Cores, memoryBytes(vm.Spec.Memory.Size)
		if in.live.refusedCores != cores || in.live.refusedMemory != mem {
			in.live.refusedCores, in.live.refusedMemory = cores, mem
			a.rec.Event(ctx, "VirtualMachine", vm, "Normal", "RestartRequired", "not changed live, applied at the next restart: "+strings.Join(p.Refused, "; "))
		}
	}
	// Looked at again while the guest may still finish a change the spec still asks for.
	st := &in.live
	if st.unfinished() && time.Since(st.failedAt) < liveCatchUpFor &&
		((st.failedCores != 0 && vm.Spec.CPU.Cores == st.failedCores) || (st.failedMemory != 0 && memoryBytes(vm.Spec.Memory.Size) == st.failedMemory)) {
		return liveCatchUpInterval
	}
	return 0
}

// applyLiveCores sets the running vCPUs to cores and records in rs what runs (and the slots
// QEMU cannot take again). It says whether rs changed, and why it failed.
func (a *Agent) applyLiveCores(ctx context.Context, mon qmpExecutor, rs *runSpec, in *instance, cores int, key string) (changed bool, failure string) {
	retired := map[int]bool{}
	for _, i := range rs.RetiredCPUSlots {
		retired[i] = true
	}
	have, err := setCPUs(ctx, mon, cores, liveUnplugTimeout, retired)
	if len(retired) != len(rs.RetiredCPUSlots) {
		rs.RetiredCPUSlots = rs.RetiredCPUSlots[:0]
		for i := range retired {
			rs.RetiredCPUSlots = append(rs.RetiredCPUSlots, i)
		}
		sort.Ints(rs.RetiredCPUSlots)
		changed = true
	}
	if rs.recordCores(have) {
		changed = true
	}
	if err != nil {
		in.live.failedCores, in.live.slow = cores, slowGuest(err)
		return changed, fmt.Sprintf("spec.cpu.cores %d: %v", cores, err)
	}
	in.live.failedCores = 0
	a.log.Info("vCPUs changed live", "vm", key, "cores", have)
	return changed, ""
}

// applyLiveMemory resizes the hot-plugged memory so that the guest has memory bytes (asked as
// size) and records in rs what runs. It says whether rs changed, and why it failed.
func (a *Agent) applyLiveMemory(ctx context.Context, mon qmpExecutor, rs *runSpec, in *instance, memory int64, size v1alpha1.Quantity, key string) (changed bool, failure string) {
	plugged, err := setHotpluggedMemory(ctx, mon, memory-memoryBytes(rs.bootMemory()), liveMemoryTimeout)
	if plugged >= 0 {
		rs.recordMemory(plugged)
		changed = true
	}
	if err != nil {
		in.live.failedMemory, in.live.slow = memory, slowGuest(err)
		return changed, fmt.Sprintf("spec.memory.size %s: %v", size, err)
	}
	in.live.failedMemory = 0
	a.log.Info("memory changed live", "vm", key, "size", rs.Spec.Memory.Size)
	return changed, ""
}

// incomingShape is what the target of a live migration starts with: the CPUs and memory
// the source's QEMU runs with, as its agent reports them in status.resources (with the
// live changes made since its start), rather than what the spec asks for. It returns the
// input to build QEMU's command line from (the source's boot vCPUs and boot memory, its
// vCPU slots and maxSize, the vCPUs it hot-added as devices of their own, and the
// virtio-mem size its guest has plugged, requested at start), and the run spec to record
// (the live values, with the source's boot values, so that later live changes on the
// target treat the hot-added vCPUs as hot-added). A VM without status.resources (none
// reported yet) starts as its spec says.
func incomingShape(vm *v1alpha1.VirtualMachine) (shape incoming, rs *runSpec) {
	res := vm.Status.Resources
	if res == nil || res.CPU.Cores < 1 || res.Memory.Size == "" {
		return incoming{vm: vm}, &runSpec{Spec: vm.Spec, BootMemory: vm.Spec.Memory.Size, BootCores: vm.Spec.CPU.Cores}
	}
	// The target's RAM is as long as its source's (padded or not, qemu.MemoryPadKiB).
	pad := res.Memory.Padding != ""
	shape.padMemory = &pad
	spec := vm.Spec
	spec.CPU.Cores = res.CPU.Cores
	spec.CPU.MaxCores = res.CPU.MaxCores
	spec.Memory.Size = res.Memory.Size
	spec.Memory.MaxSize = res.Memory.MaxSize
	rs = &runSpec{Spec: spec, BootMemory: res.Memory.Size, BootCores: res.CPU.Cores}
	build := spec
	if b := res.CPU.BootCores; b > 0 && b < res.CPU.Cores {
		rs.BootCores = b
		build.CPU.Cores = b
		shape.hotCPUs = res.CPU.Cores - b
	}
	if res.Memory.MaxSize != "" && res.Memory.BootSize != "" {
		rs.BootMemory = res.Memory.BootSize
		rs.HotpluggedMemory = res.Memory.Hotplugged
		shape.memoryMiB = max((memoryBytes(res.Memory.Size)-memoryBytes(res.Memory.BootSize))>>20, 0)
	}
	build.Memory.Size = rs.BootMemory
	shaped := *vm
	shaped.Spec = build
	shape.vm = &shaped
	return shape, rs
}

// incoming is the part of a migration target's QEMU input that follows its source's live
// shape.
type incoming struct {
	vm        *v1alpha1.VirtualMachine // the VM to build from: boot vCPUs and memory
	memoryMiB int64                    // virtio-mem requested size
	hotCPUs   int                      // vCPUs hot-added on the source
	padMemory *bool                    // the source's RAM padding; nil: unknown
}

// refreshCPULimit rewrites the VM's cgroup CPU bandwidth for the vCPUs it has now (a core
// fraction below 100% is a share of each core: cores × fraction). VMs without a CPU limit
// are left alone.
func (a *Agent) refreshCPULimit(vm *v1alpha1.VirtualMachine, rs *runSpec, in *instance) {
	ran := &v1alpha1.VirtualMachine{Spec: rs.Spec}
	lim := computeLimits(ran, in.accel != "kvm")
	if lim.cpuQuotaUsec == 0 {
		return
	}
	l, err := detectCgroups()
	if err == nil {
		dirs := map[string]string{}
		for _, c := range []string{"cpu", "memory"} {
			if l.slices[c] != "" {
				dirs[c] = l.vmDir(c, vm.UID, false)
			}
		}
		err = writeLimits(l, dirs, lim)
	}
	if err != nil {
		a.log.Warn("updating the CPU limit after a live change", "vm", vm.Namespace+"/"+vm.Name, "err", err)
	}
}
