package agent

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/metrics"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// Node memory (docs/live-resources.md). Every memoryEvery the agent reads the host's
// MemAvailable and:
//
//   - balloons: while MemAvailable is below the reserve (Config.MemoryReserve) it reclaims the
//     shortfall from the running VMs' balloons, each in proportion to what it can give (its
//     memory above its class's minimum; a VM without one gives nothing); once MemAvailable is
//     above twice the reserve it gives all of it back. In between it holds. Freed guest pages
//     go back to the host by free page reporting at any time, without any of this.
//   - KSM (Config.KSM): "on" keeps ksmd merging; "auto" starts it while MemAvailable is below
//     twice the reserve and stops it afterwards, if it started it; "off" leaves KSM alone.
//     With on or auto, ksmtuned must not run beside the agent.
//
// What it sees and does is published in the Node's status.memory and in the VMs'
// status.resources.memory.balloon.

// KSM modes (agent --ksm).
const (
	KSMAuto = "auto"
	KSMOn   = "on"
	KSMOff  = "off"
)

var (
	memoryEvery = 2 * time.Second
	// sysRoot and meminfoPath are where the kernel's files are (tests point them elsewhere).
	sysRoot     = "/sys"
	meminfoPath = "/proc/meminfo"
)

// balloonOOMHold is how long a guest that took memory back from its balloon is not reclaimed
// from.
const balloonOOMHold = time.Minute

// ksmPagesToScan is how many pages ksmd scans per wake-up while the agent runs it (the
// kernel's default of 100 takes hours on a host with many guests).
const ksmPagesToScan = 1000

// mib rounds down to whole MiB.
func mib(n int64) int64 { return n &^ (1<<20 - 1) }

// readMeminfo returns MemTotal and MemAvailable in bytes.
func readMeminfo(path string) (total, avail int64, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "MemTotal:":
			total = n << 10
		case "MemAvailable:":
			avail = n << 10
		}
	}
	if total == 0 || avail == 0 {
		return 0, 0, fmt.Errorf("%s has no MemTotal or MemAvailable", path)
	}
	return total, avail, nil
}

// balloonVM is one running VM with a balloon, as the planner sees it: the memory it booted
// with (the balloon's whole range), its floor (0: never reclaimed from) and what the guest
// has now.
type balloonVM struct {
	full, floor, actual int64
}

// planBalloons says what each VM's balloon target becomes (-1: leave it). Short of memory
// (avail below reserve): the shortfall, at least 64 MiB, is taken from the VMs that can give,
// in proportion to what each can give, never below a floor. Plenty (avail above twice the
// reserve): every VM gets all its memory back. It is pure.
func planBalloons(vms []balloonVM, avail, reserve int64) []int64 {
	out := make([]int64, len(vms))
	for i := range out {
		out[i] = -1
	}
	switch {
	case avail < reserve:
		want := max(reserve-avail, 64<<20)
		var room int64
		for _, v := range vms {
			if v.floor > 0 && v.actual > v.floor {
				room += v.actual - v.floor
			}
		}
		if room == 0 {
			return out
		}
		for i, v := range vms {
			if v.floor <= 0 || v.actual <= v.floor {
				continue
			}
			share := float64(want) * float64(v.actual-v.floor) / float64(room) // in float: bytes × bytes overflows int64
			give := min(int64(share)+1<<20, v.actual-v.floor)
			out[i] = max(mib(v.actual-give), v.floor)
		}
	case avail > 2*reserve:
		for i, v := range vms {
			if v.actual < v.full {
				out[i] = v.full
			}
		}
	}
	return out
}

// tookBack says a guest took memory back from its balloon: what it has grew by more than
// 16 MiB since the last look (last) while the node asked for less (target; 0: never asked).
// A balloon on its way down to the target shrinks what the guest has; one that the node let
// out is not asked for less.
func tookBack(target, last, actual int64) bool {
	return target > 0 && target < actual && last > 0 && actual > last+16<<20
}

// memoryManager is the agent's state of the node's memory.
type memoryManager struct {
	status atomic.Pointer[v1alpha1.NodeMemoryStatus]
}

// runMemory manages the node's memory until ctx ends.
func (a *Agent) runMemory(ctx context.Context) {
	runtime.Every(ctx, memoryEvery, func() { a.memoryTick(ctx) })
}

func (a *Agent) memoryTick(ctx context.Context) {
	total, avail, err := readMeminfo(meminfoPath)
	if err != nil {
		a.log.Debug("reading the host's memory", "err", err)
		return
	}
	reserve := a.cfg.MemoryReserve
	if reserve <= 0 {
		reserve = total / 10
	}
	st := &v1alpha1.NodeMemoryStatus{Available: v1alpha1.BytesQuantity(avail), Reserve: v1alpha1.BytesQuantity(reserve)}
	st.Reclaiming, st.Reclaimed = a.balanceBalloons(ctx, avail, reserve)
	st.KSM = a.tuneKSM(avail < 2*reserve)
	a.mem.status.Store(st)
}

// balanceBalloons reads the balloons of the running VMs, sets their targets as planBalloons
// says, and writes each VM's status.resources.memory.balloon when it changed. It returns
// whether memory is being reclaimed and how much the balloons hold.
func (a *Agent) balanceBalloons(ctx context.Context, avail, reserve int64) (bool, v1alpha1.Quantity) {
	type vmBalloon struct {
		in        *instance
		mon       qmpExecutor
		floor     v1alpha1.Quantity
		reporting bool
	}
	var ins []vmBalloon
	var plan []balloonVM
	now := time.Now()
	for _, in := range a.instances() {
		if in.isExited() {
			continue
		}
		if vm, ok := a.vms.Get(in.key); ok && vm.Status.MigrationState.Active() {
			continue // its memory is being copied: the balloon rests until the migration ends
		}
		rs := loadRunSpec(in.runDir, &v1alpha1.VirtualMachine{})
		mon, ok := in.monitor().(qmpExecutor)
		if !rs.Balloon || !ok {
			continue
		}
		var info struct {
			Actual int64 `json:"actual"`
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := mon.Execute(cctx, "query-balloon", nil, &info)
		cancel()
		if err != nil || info.Actual <= 0 {
			continue
		}
		floor := memoryBytes(rs.BalloonFloor)
		last := in.balloonSeen.Swap(info.Actual)
		if t := in.balloonTarget.Load(); tookBack(t, last, info.Actual) {
			// The guest took memory back from its balloon while asked for less (deflate-on-oom:
			// it ran out): it is left alone for balloonOOMHold rather than squeezed again.
			if in.balloonHold.Load() < now.UnixNano() {
				a.log.Warn("the guest took memory back from its balloon: not reclaimed from for a while", "vm", string(in.key),
					"asked", v1alpha1.BytesQuantity(t), "has", v1alpha1.BytesQuantity(mib(info.Actual)), "for", balloonOOMHold)
			}
			in.balloonHold.Store(now.Add(balloonOOMHold).UnixNano())
			in.balloonTarget.Store(mib(info.Actual))
		}
		if in.balloonHold.Load() > now.UnixNano() {
			floor = info.Actual // gives nothing while held
		}
		ins = append(ins, vmBalloon{in, mon, rs.BalloonFloor, rs.BalloonReporting})
		plan = append(plan, balloonVM{full: memoryBytes(rs.bootMemory()), floor: floor, actual: info.Actual})
	}
	var held int64
	targets := planBalloons(plan, avail, reserve)
	for i, v := range ins {
		held += max(plan[i].full-plan[i].actual, 0)
		if t := targets[i]; t >= 0 && t != v.in.balloonTarget.Load() {
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			err := v.mon.Execute(cctx, "balloon", map[string]any{"value": t}, nil)
			cancel()
			if err != nil {
				a.log.Warn("setting the memory balloon", "vm", string(v.in.key), "err", err)
				continue
			}
			v.in.balloonTarget.Store(t)
			a.log.Info("memory balloon set", "vm", string(v.in.key), "guest-memory", v1alpha1.BytesQuantity(t), "available", v1alpha1.BytesQuantity(avail), "reserve", v1alpha1.BytesQuantity(reserve))
		}
		a.writeBalloonStatus(ctx, v.in, plan[i].actual, v.floor, v.reporting)
	}
	return avail < reserve && held > 0, v1alpha1.BytesQuantity(mib(held))
}

// writeBalloonStatus writes what the guest has of its boot memory when it moved (in whole
// MiB) since the last write: a few writes while a balloon moves, none while it rests.
func (a *Agent) writeBalloonStatus(ctx context.Context, in *instance, actual int64, floor v1alpha1.Quantity, reporting bool) {
	actual = mib(actual)
	if in.balloonWritten.Load() == actual {
		return
	}
	ns, name := in.key.Split()
	want := &v1alpha1.VirtualMachineBalloonStatus{Actual: v1alpha1.BytesQuantity(actual), Floor: floor, FreePageReporting: reporting}
	_, err := runtime.UpdateVMStatus(ctx, a.c, ns, name, in.uid, agentStatusFields, nil, func(v *v1alpha1.VirtualMachine) error {
		if v.Status.NodeName != a.cfg.NodeName || v.Status.Resources == nil || reflect.DeepEqual(v.Status.Resources.Memory.Balloon, want) {
			return runtime.ErrNoChange
		}
		v.Status.Resources.Memory.Balloon = want
		return nil
	})
	if err == nil {
		in.balloonWritten.Store(actual)
	} else if ctx.Err() == nil {
		a.log.Debug("writing the balloon status", "vm", string(in.key), "err", err)
	}
}

// ksmMarkerName, in the data directory, says this agent started ksmd in auto mode (so that it
// stops it again, after a restart too, and stops only what it started).
const ksmMarkerName = "ksm-started-by-agent"

// tuneKSM starts or stops ksmd as the mode says (short: memory is short enough for auto to
// run it), and reads its counters. Nil: the kernel has no KSM. "on" keeps it running; "auto"
// starts it while memory is short and stops it afterwards if it was the one to start it;
// "off" leaves it as it is (the agent does not manage KSM).
func (a *Agent) tuneKSM(short bool) *v1alpha1.NodeKSMStatus {
	mode := a.cfg.KSM
	if mode == "" {
		mode = KSMAuto
	}
	ksmDir := filepath.Join(sysRoot, "kernel", "mm", "ksm")
	read := func(name string) int64 {
		b, err := os.ReadFile(filepath.Join(ksmDir, name))
		if err != nil {
			return -1
		}
		n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		return n
	}
	run := read("run")
	if run < 0 {
		return nil
	}
	marker := filepath.Join(a.cfg.DataDir, ksmMarkerName)
	_, err := os.Stat(marker)
	ours := err == nil
	set := func(on bool) {
		val := map[bool]string{true: "1", false: "0"}[on]
		if on && read("pages_to_scan") < ksmPagesToScan {
			_ = os.WriteFile(filepath.Join(ksmDir, "pages_to_scan"), []byte(strconv.Itoa(ksmPagesToScan)), 0o644)
		}
		if err := os.WriteFile(filepath.Join(ksmDir, "run"), []byte(val), 0o644); err != nil {
			a.log.Warn("setting KSM", "mode", mode, "run", val, "err", err)
			return
		}
		a.log.Info("KSM "+map[bool]string{true: "started", false: "stopped"}[on], "mode", mode, "memory-short", short)
		run = map[bool]int64{true: 1, false: 0}[on]
		if on && mode == KSMAuto {
			_ = os.WriteFile(marker, nil, 0o600)
		} else {
			_ = os.Remove(marker)
		}
	}
	switch {
	case mode == KSMOn && run != 1:
		set(true)
	case mode == KSMAuto && short && run != 1:
		set(true)
	case mode == KSMAuto && !short && run == 1 && ours:
		set(false)
	case ours && run != 1:
		_ = os.Remove(marker) // stopped by someone else: no longer ours
	}
	st := &v1alpha1.NodeKSMStatus{Mode: mode, Running: run == 1}
	if shared, sharing, err := metrics.ReadKSM(sysRoot); err == nil { // the counters /metrics reports too
		st.PagesShared, st.PagesSharing = int64(shared), int64(sharing)
	}
	st.Saved = v1alpha1.BytesQuantity(st.PagesSharing * int64(os.Getpagesize()))
	return st
}
