package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

func liveRunSpec(cores, maxCores int, mem, maxMem string) *runSpec {
	rs := &runSpec{BootCores: cores, BootMemory: v1alpha1.Quantity(mem)}
	rs.Spec.CPU = v1alpha1.VirtualMachineCPU{Cores: cores, MaxCores: maxCores}
	rs.Spec.Memory = v1alpha1.VirtualMachineMemory{Size: v1alpha1.Quantity(mem), MaxSize: v1alpha1.Quantity(maxMem)}
	return rs
}

func liveWant(cores int, mem string) *v1alpha1.VirtualMachineSpec {
	return &v1alpha1.VirtualMachineSpec{CPU: v1alpha1.VirtualMachineCPU{Cores: cores}, Memory: v1alpha1.VirtualMachineMemory{Size: v1alpha1.Quantity(mem)}}
}

func TestPlanLive(t *testing.T) {
	const gi = int64(1) << 30
	for _, c := range []struct {
		name    string
		rs      *runSpec
		want    *v1alpha1.VirtualMachineSpec
		st      liveState
		cores   int
		memory  int64
		refused []string // substrings, one per refusal
	}{
		{name: "nothing changed", rs: liveRunSpec(2, 4, "1Gi", "4Gi"), want: liveWant(2, "1024Mi")},
		{name: "grow both", rs: liveRunSpec(2, 4, "1Gi", "4Gi"), want: liveWant(4, "3Gi"), cores: 4, memory: 3 * gi},
		{name: "shrink to boot", rs: func() *runSpec {
			rs := liveRunSpec(2, 4, "1Gi", "4Gi")
			rs.Spec.CPU.Cores, rs.Spec.Memory.Size = 4, "3Gi"
			return rs
		}(), want: liveWant(2, "1Gi"), cores: 2, memory: gi},
		{name: "no room for cores", rs: liveRunSpec(2, 0, "1Gi", ""), want: liveWant(3, "1Gi"), refused: []string{"spec.cpu.cores: the VM started without room to grow its vCPUs"}},
		{name: "above maxCores", rs: liveRunSpec(2, 4, "1Gi", ""), want: liveWant(5, "1Gi"), refused: []string{"5 is above the 4 vCPU slots"}},
		{name: "below boot cores", rs: liveRunSpec(2, 4, "1Gi", ""), want: liveWant(1, "1Gi"), refused: []string{"1 is below the 2 vCPUs the VM started with"}},
		{name: "no room for memory", rs: liveRunSpec(2, 0, "1Gi", ""), want: liveWant(2, "2Gi"), refused: []string{"spec.memory.size: the VM started without room to grow its memory"}},
		{name: "above maxSize", rs: liveRunSpec(2, 0, "1Gi", "2Gi"), want: liveWant(2, "3Gi"), refused: []string{"above the spec.memory.maxSize 2Gi"}},
		{name: "below boot memory", rs: liveRunSpec(2, 0, "1Gi", "2Gi"), want: liveWant(2, "512Mi"), refused: []string{"below the 1Gi the guest booted with"}},
		{name: "unaligned", rs: liveRunSpec(2, 0, "1Gi", "2Gi"), want: liveWant(2, "1025Mi"), refused: []string{"not a multiple of the 2Mi"}},
		{name: "dedicated cores", rs: func() *runSpec {
			rs := liveRunSpec(2, 4, "1Gi", "")
			rs.Spec.CPU.DedicatedCores = true
			return rs
		}(), want: liveWant(3, "1Gi"), refused: []string{"pinned to host cores at start"}},
		{name: "growth after a removal", rs: func() *runSpec {
			rs := liveRunSpec(1, 4, "1Gi", "")
			rs.Spec.CPU.Cores, rs.RetiredCPUSlots = 2, []int{2}
			return rs
		}(), want: liveWant(3, "1Gi"), refused: []string{"a vCPU was removed from this QEMU"}},
		{name: "removal after a removal", rs: func() *runSpec {
			rs := liveRunSpec(1, 4, "1Gi", "")
			rs.Spec.CPU.Cores, rs.RetiredCPUSlots = 2, []int{2}
			return rs
		}(), want: liveWant(1, "1Gi"), cores: 1},
		{name: "failed before: not tried again", rs: liveRunSpec(2, 4, "1Gi", "2Gi"), want: liveWant(3, "2Gi"), st: liveState{failedCores: 3, failedMemory: 2 * gi}},
		{name: "failed before, new value tried", rs: liveRunSpec(2, 4, "1Gi", "2Gi"), want: liveWant(4, "1536Mi"), st: liveState{failedCores: 3, failedMemory: 2 * gi}, cores: 4, memory: 1536 << 20},
		{name: "runspec of an older agent (no boot fields)", rs: func() *runSpec {
			rs := liveRunSpec(2, 4, "1Gi", "2Gi")
			rs.BootCores, rs.BootMemory = 0, ""
			return rs
		}(), want: liveWant(3, "2Gi"), cores: 3, memory: 2 * gi},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := planLive(c.rs, c.want, c.st)
			if p.Cores != c.cores || p.Memory != c.memory {
				t.Errorf("plan cores %d memory %d, want %d %d (refused %q)", p.Cores, p.Memory, c.cores, c.memory, p.Refused)
			}
			if len(p.Refused) != len(c.refused) {
				t.Fatalf("refused %q, want %d matching %q", p.Refused, len(c.refused), c.refused)
			}
			for i, r := range c.refused {
				if !strings.Contains(p.Refused[i], r) {
					t.Errorf("refusal %q lacks %q", p.Refused[i], r)
				}
			}
		})
	}
}

// fakeHotplugQEMU plays QEMU's side of CPU and memory hot-plug: slots, device_add and
// device_del (the guest releases removed vCPUs when release is true), and a virtio-mem
// device whose guest follows requested-size up to follow bytes.
type fakeHotplugQEMU struct {
	slots    []hotCPU // present ones have a qom-path
	release  bool
	follow   int64
	size     int64
	calls    []string
	deleting map[string]bool
	hold     bool // the guest does not move from size (a slow guest)
}

func newFakeHotplugQEMU(slots, present int) *fakeHotplugQEMU {
	f := &fakeHotplugQEMU{release: true, follow: 1 << 62, deleting: map[string]bool{}}
	// QEMU lists the slots highest first.
	for i := slots - 1; i >= 0; i-- {
		s := hotCPU{Type: "max-x86_64-cpu", Props: map[string]any{"socket-id": float64(0), "core-id": float64(i), "thread-id": float64(0)}}
		if i < present {
			s.QOMPath = fmt.Sprintf("/machine/unattached/device[%d]", i)
		}
		f.slots = append(f.slots, s)
	}
	return f
}

func (f *fakeHotplugQEMU) Execute(_ context.Context, cmd string, args, result any) error {
	a, _ := args.(map[string]any)
	switch cmd {
	case "query-hotpluggable-cpus":
		for id := range f.deleting {
			if f.release {
				for i := range f.slots {
					if strings.HasSuffix(f.slots[i].QOMPath, "/"+id) {
						f.slots[i].QOMPath = ""
					}
				}
				delete(f.deleting, id)
			}
		}
		b, _ := json.Marshal(f.slots)
		return json.Unmarshal(b, result)
	case "device_add":
		f.calls = append(f.calls, fmt.Sprintf("device_add %s core %v", a["id"], a["core-id"]))
		for i := range f.slots {
			if f.slots[i].prop("core-id") == int(a["core-id"].(float64)) {
				if f.slots[i].QOMPath != "" {
					return fmt.Errorf("slot taken")
				}
				f.slots[i].QOMPath = "/machine/peripheral/" + a["id"].(string)
			}
		}
	case "device_del":
		f.calls = append(f.calls, fmt.Sprintf("device_del %s", a["id"]))
		f.deleting[a["id"].(string)] = true
	case "qom-set":
		f.calls = append(f.calls, fmt.Sprintf("qom-set %v %v=%v", a["path"], a["property"], a["value"]))
		if !f.hold {
			f.size = min(a["value"].(int64), f.follow)
		}
	case "qom-get":
		b, _ := json.Marshal(f.size)
		return json.Unmarshal(b, result)
	default:
		return fmt.Errorf("unexpected %s", cmd)
	}
	return nil
}

func TestSetCPUs(t *testing.T) {
	ctx := context.Background()
	f := newFakeHotplugQEMU(4, 1)
	retired := map[int]bool{}
	if n, err := setCPUs(ctx, f, 3, time.Second, retired); err != nil || n != 3 {
		t.Fatalf("grow to 3: %d %v", n, err)
	}
	// The lowest free slots, with ids after their place in the topology.
	if want := []string{"device_add vcpu1 core 1", "device_add vcpu2 core 2"}; !reflect.DeepEqual(f.calls, want) {
		t.Errorf("calls %q, want %q", f.calls, want)
	}
	f.calls = nil
	if n, err := setCPUs(ctx, f, 2, time.Second, retired); err != nil || n != 2 {
		t.Fatalf("shrink to 2: %d %v", n, err)
	}
	if want := []string{"device_del vcpu2"}; !reflect.DeepEqual(f.calls, want) || !retired[2] {
		t.Errorf("calls %q, want %q (the highest hot-added vCPU), retired %v", f.calls, want, retired)
	}
	// Growing again skips the emptied slot 2: slot 3.
	f.calls = nil
	if n, err := setCPUs(ctx, f, 3, time.Second, retired); err != nil || n != 3 {
		t.Fatalf("grow to 3 again: %d %v", n, err)
	}
	if want := []string{"device_add vcpu3 core 3"}; !reflect.DeepEqual(f.calls, want) {
		t.Errorf("calls %q, want %q", f.calls, want)
	}
	// And then no unused slot is left.
	if _, err := setCPUs(ctx, f, 4, time.Second, retired); err == nil || !strings.Contains(err.Error(), "no unused vCPU slot left") {
		t.Errorf("grow to 4 with slot 2 retired: %v", err)
	}
	f.calls = nil
	if n, err := setCPUs(ctx, f, 2, time.Second, retired); err != nil || n != 2 {
		t.Fatalf("shrink to 2 again: %d %v", n, err)
	}
	// The boot vCPU is never removed: asking for 0 removes the hot-added one only.
	f.calls = nil
	if n, err := setCPUs(ctx, f, 0, 200*time.Millisecond, retired); err == nil || n != 1 {
		t.Fatalf("shrink below the boot vCPUs: %d %v", n, err)
	}
	if want := []string{"device_del vcpu1"}; !reflect.DeepEqual(f.calls, want) {
		t.Errorf("calls %q, want %q", f.calls, want)
	}
	// A guest that does not let go: the wait ends with an error and the count that runs.
	f = newFakeHotplugQEMU(4, 1)
	if _, err := setCPUs(ctx, f, 4, time.Second, map[int]bool{}); err != nil {
		t.Fatal(err)
	}
	f.release = false
	n, err := setCPUs(ctx, f, 2, 300*time.Millisecond, map[int]bool{})
	if err == nil || n != 4 || !strings.Contains(err.Error(), "did not release the vCPUs") {
		t.Fatalf("guest keeps its vCPUs: %d %v", n, err)
	}
	// Not enough slots.
	f = newFakeHotplugQEMU(2, 1)
	if n, err := setCPUs(ctx, f, 3, time.Second, map[int]bool{}); err == nil || n != 2 {
		t.Fatalf("beyond the slots: %d %v", n, err)
	}
}

func TestSetHotpluggedMemory(t *testing.T) {
	ctx := context.Background()
	f := newFakeHotplugQEMU(1, 1)
	if n, err := setHotpluggedMemory(ctx, f, 512<<20, time.Second); err != nil || n != 512<<20 {
		t.Fatalf("plug 512Mi: %d %v", n, err)
	}
	if want := "qom-set /machine/peripheral/vmem0 requested-size=536870912"; len(f.calls) != 1 || f.calls[0] != want {
		t.Errorf("calls %q, want %q", f.calls, want)
	}
	f.follow = 256 << 20 // the guest gives only this much
	n, err := setHotpluggedMemory(ctx, f, 768<<20, 300*time.Millisecond)
	if err == nil || n != 256<<20 || !strings.Contains(err.Error(), "the guest has 256Mi of the 768Mi asked for") {
		t.Fatalf("partial: %d %v", n, err)
	}
}

func TestIncomingShape(t *testing.T) {
	vm := &v1alpha1.VirtualMachine{}
	vm.Spec.CPU = v1alpha1.VirtualMachineCPU{Cores: 5, MaxCores: 6}
	vm.Spec.Memory = v1alpha1.VirtualMachineMemory{Size: "1Gi", MaxSize: "2Gi"}
	// Nothing reported yet: the spec.
	got, rs := incomingShape(vm)
	if got.vm != vm || got.memoryMiB != 0 || got.hotCPUs != 0 || got.padMemory != nil || rs.BootCores != 5 || rs.BootMemory != "1Gi" {
		t.Fatalf("without resources: %+v %+v", got, rs)
	}
	// The source runs 3 of 4 cores, 2 of them hot-added, and 768Mi of 1Gi, booted with 256Mi
	// (the spec asks for more, waiting for a restart): the target boots as the source did,
	// with the 2 hot-added vCPUs as devices and the plugged memory requested.
	vm.Status.Resources = &v1alpha1.VirtualMachineResources{
		CPU:    v1alpha1.VirtualMachineCPUStatus{Cores: 3, MaxCores: 4, BootCores: 1},
		Memory: v1alpha1.VirtualMachineMemoryStatus{Size: "768Mi", MaxSize: "1Gi", BootSize: "256Mi", Hotplugged: "512Mi"},
	}
	got, rs = incomingShape(vm)
	if got.padMemory == nil || *got.padMemory {
		t.Errorf("unpadded source: target pads %v", got.padMemory)
	}
	if b := got.vm.Spec; b.CPU.Cores != 1 || b.CPU.MaxCores != 4 || b.Memory.Size != "256Mi" || b.Memory.MaxSize != "1Gi" || got.memoryMiB != 512 || got.hotCPUs != 2 {
		t.Errorf("build spec %+v requested %d MiB, %d hot vCPUs", b, got.memoryMiB, got.hotCPUs)
	}
	if rs.Spec.CPU.Cores != 3 || rs.Spec.Memory.Size != "768Mi" || rs.BootMemory != "256Mi" || rs.HotpluggedMemory != "512Mi" || rs.BootCores != 1 {
		t.Errorf("run spec %+v", rs)
	}
	// A source with room to grow that did not use it: no device of its own.
	vm.Status.Resources.CPU = v1alpha1.VirtualMachineCPUStatus{Cores: 2, MaxCores: 4, BootCores: 2}
	if got, rs = incomingShape(vm); got.vm.Spec.CPU.Cores != 2 || got.hotCPUs != 0 || rs.BootCores != 2 {
		t.Errorf("unchanged source: build %+v, %d hot vCPUs, boot %d", got.vm.Spec.CPU, got.hotCPUs, rs.BootCores)
	}
	vm.Status.Resources.CPU = v1alpha1.VirtualMachineCPUStatus{Cores: 3, MaxCores: 4, BootCores: 1}
	got, rs = incomingShape(vm)
	if vm.Spec.CPU.Cores != 5 || vm.Spec.Memory.Size != "1Gi" {
		t.Errorf("the VM's own spec changed: %+v", vm.Spec)
	}
	// A padded source: a padded target.
	vm.Status.Resources.Memory.Padding = "8Ki"
	if got, _ := incomingShape(vm); got.padMemory == nil || !*got.padMemory {
		t.Errorf("padded source: target pads %v", got.padMemory)
	}
	// What the target then reports as pending: the spec's cores and memory.
	if p := pendingChanges(&rs.Spec, &vm.Spec); len(p) != 4 {
		t.Errorf("pending %q, want cores, maxCores, memory size and maxSize", p)
	}
}

func TestRunningResources(t *testing.T) {
	rs := liveRunSpec(1, 4, "256Mi", "1Gi")
	rs.Spec.CPU.Cores, rs.Spec.Memory.Size, rs.HotpluggedMemory = 3, "768Mi", "512Mi"
	r := runningResources(rs)
	if r.CPU.Cores != 3 || r.CPU.MaxCores != 4 || r.CPU.Topology != (v1alpha1.VirtualMachineCPUTopology{CoresPerSocket: 4, Sockets: 1}) ||
		r.Memory.Size != "768Mi" || r.Memory.MaxSize != "1Gi" || r.Memory.BootSize != "256Mi" || r.Memory.Hotplugged != "512Mi" {
		t.Errorf("resources %+v", *r)
	}
	// Without room to grow: none of the additions.
	r = runningResources(liveRunSpec(2, 0, "1Gi", ""))
	if r.CPU.Cores != 2 || r.CPU.MaxCores != 0 || r.Memory.MaxSize != "" || r.Memory.BootSize != "" || r.Memory.Hotplugged != "" || r.Memory.Padding != "" {
		t.Errorf("resources %+v", *r)
	}
	rs = liveRunSpec(2, 0, "1Gi", "")
	rs.MemoryPadKiB = 8
	if r = runningResources(rs); r.Memory.Padding != "8Ki" || r.Memory.Size != "1Gi" {
		t.Errorf("padded: resources %+v", r.Memory)
	}
}

func TestLimitsWithRoomToGrow(t *testing.T) {
	vm := &v1alpha1.VirtualMachine{}
	vm.Spec.CPU = v1alpha1.VirtualMachineCPU{Cores: 2, MaxCores: 4, CoreFraction: "50%"}
	vm.Spec.Memory = v1alpha1.VirtualMachineMemory{Size: "1Gi", MaxSize: "4Gi"}
	l := computeLimits(vm, false)
	// The memory limit covers what the guest may plug (maxSize), the CPU quota the cores it has.
	if want := memoryLimit(4<<30, false); l.memoryBytes != want {
		t.Errorf("memory limit %d, want %d (from maxSize)", l.memoryBytes, want)
	}
	if l.cpuQuotaUsec != 2*cfsPeriodUsec/2 {
		t.Errorf("cpu quota %d, want %d", l.cpuQuotaUsec, 2*cfsPeriodUsec/2)
	}
}

// TestCatchUpLive: a change the guest did not finish within the agent's wait is recorded
// once the guest finishes it (vCPUs released late, memory unplugged late), and is then no
// longer failed; nothing is recorded while QEMU still runs what was recorded.
func TestCatchUpLive(t *testing.T) {
	ctx := context.Background()
	const mi = int64(1) << 20
	a := &Agent{log: slog.New(slog.DiscardHandler)}
	f := newFakeHotplugQEMU(4, 1)
	in := &instance{}
	rs := liveRunSpec(1, 4, "256Mi", "1Gi")
	// 1 → 3 vCPUs and 256Mi → 768Mi go through.
	if c, failure := a.applyLiveCores(ctx, f, rs, in, 3, "p/vm"); !c || failure != "" {
		t.Fatalf("grow: changed %t, %s", c, failure)
	}
	if c, failure := a.applyLiveMemory(ctx, f, rs, in, 768*mi, "768Mi", "p/vm"); !c || failure != "" {
		t.Fatalf("plug: changed %t, %s", c, failure)
	}
	// 3 → 2 and 768Mi → 512Mi: the guest is slow, the wait ends first.
	f.release, f.hold = false, true
	timeout := 200 * time.Millisecond
	retired := map[int]bool{}
	have, err := setCPUs(ctx, f, 2, timeout, retired)
	if err == nil || have != 3 {
		t.Fatalf("slow release: %d %v", have, err)
	}
	in.live.failedCores = 2
	plugged, err := setHotpluggedMemory(ctx, f, 256*mi, timeout)
	if err == nil || plugged != 512*mi {
		t.Fatalf("slow unplug: %d %v", plugged, err)
	}
	in.live.failedMemory, in.live.failedAt, in.live.slow = 512*mi, time.Now(), slowGuest(err)
	if !in.live.unfinished() {
		t.Fatalf("a timed-out change is not taken as one the guest may finish: %v", err)
	}
	if a.catchUpLive(ctx, f, rs, in, "p/vm") || rs.Spec.CPU.Cores != 3 || rs.Spec.Memory.Size != "768Mi" {
		t.Fatalf("recorded %d cores, %s while the guest has not moved", rs.Spec.CPU.Cores, rs.Spec.Memory.Size)
	}
	// The guest lets go of the vCPU and the memory.
	f.release, f.size = true, 256*mi
	if !a.catchUpLive(ctx, f, rs, in, "p/vm") {
		t.Fatal("the late finish was not recorded")
	}
	if rs.Spec.CPU.Cores != 2 || memoryBytes(rs.Spec.Memory.Size) != 512*mi || rs.HotpluggedMemory != v1alpha1.BytesQuantity(256*mi) || rs.BootCores != 1 || rs.BootMemory != "256Mi" {
		t.Errorf("run spec after the late finish: cores %d (boot %d), memory %s (boot %s, hot-plugged %s)",
			rs.Spec.CPU.Cores, rs.BootCores, rs.Spec.Memory.Size, rs.BootMemory, rs.HotpluggedMemory)
	}
	if in.live.unfinished() {
		t.Errorf("still failed after the guest finished: %+v", in.live)
	}
	if p := planLive(rs, liveWant(2, "512Mi"), in.live); p.Cores != 0 || p.Memory != 0 || len(p.Refused) != 0 {
		t.Errorf("the spec is met, yet the plan is %+v", p)
	}
}

// liveMonitor is a monitor whose QMP commands the fake hot-plug QEMU answers (applyLive uses
// nothing else).
type liveMonitor struct {
	monitor
	*fakeHotplugQEMU
}

// TestApplyLiveLooksAgain: applyLive asks to be called again while a change the guest was
// too slow for may still be finished and the spec still asks for it, records the guest's late
// finish, and then asks no more; a spec that went back to what runs stops the looking too.
func TestApplyLiveLooksAgain(t *testing.T) {
	oldCPU, oldMem := liveUnplugTimeout, liveMemoryTimeout
	liveUnplugTimeout, liveMemoryTimeout = 200*time.Millisecond, 200*time.Millisecond
	t.Cleanup(func() { liveUnplugTimeout, liveMemoryTimeout = oldCPU, oldMem })
	e := newInternalEnv(t)
	vm := e.createVM("lv", func(v *v1alpha1.VirtualMachine) {
		v.Spec.CPU = v1alpha1.VirtualMachineCPU{Cores: 1, MaxCores: 4}
		v.Spec.Memory = v1alpha1.VirtualMachineMemory{Size: "256Mi", MaxSize: "1Gi"}
	}, `{"status":{"phase":"Running","nodeName":"node1"}}`)
	in := &instance{uid: vm.UID, runDir: t.TempDir()}
	if err := saveRunSpec(in.runDir, liveRunSpec(1, 4, "256Mi", "1Gi")); err != nil {
		t.Fatal(err)
	}
	f := newFakeHotplugQEMU(4, 1)
	mon := liveMonitor{fakeHotplugQEMU: f}
	cores := func() int { return loadRunSpec(in.runDir, vm).Spec.CPU.Cores }

	vm.Spec.CPU.Cores = 3
	if again := e.a.applyLive(e.ctx, vm, in, mon); again != 0 || cores() != 3 {
		t.Fatalf("grow to 3: again %s, runs %d", again, cores())
	}
	// 3 → 2 with a guest that does not let go in time: looked at again.
	f.release = false
	vm.Spec.CPU.Cores = 2
	if again := e.a.applyLive(e.ctx, vm, in, mon); again != liveCatchUpInterval || cores() != 3 || !in.live.unfinished() {
		t.Fatalf("slow guest: again %s, runs %d, state %+v", again, cores(), in.live)
	}
	// Still holding on: looked at again, nothing recorded.
	if again := e.a.applyLive(e.ctx, vm, in, mon); again != liveCatchUpInterval || cores() != 3 {
		t.Fatalf("still slow: again %s, runs %d", again, cores())
	}
	// The guest lets go: recorded, and no more looking.
	f.release = true
	if again := e.a.applyLive(e.ctx, vm, in, mon); again != 0 || cores() != 2 || in.live.unfinished() {
		t.Fatalf("late finish: again %s, runs %d, state %+v", again, cores(), in.live)
	}
	// Memory the guest does not take in time, then the spec goes back to what runs: no
	// more looking.
	f.hold = true
	vm.Spec.Memory.Size = "512Mi"
	if again := e.a.applyLive(e.ctx, vm, in, mon); again != liveCatchUpInterval {
		t.Fatalf("slow memory: again %s, state %+v", again, in.live)
	}
	vm.Spec.Memory.Size = "256Mi"
	if again := e.a.applyLive(e.ctx, vm, in, mon); again != 0 {
		t.Fatalf("spec back to what runs: again %s, state %+v", again, in.live)
	}
	if m := loadRunSpec(in.runDir, vm).Spec.Memory.Size; m != "256Mi" {
		t.Errorf("memory recorded %s, want the 256Mi that runs", m)
	}
}
