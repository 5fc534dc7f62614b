package agent

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// Self-fencing. The agent holds its node's lease (lease.go). An agent that has not renewed it
// for the fence timeout (shorter than the lease's duration by a margin) kills the QEMUs of its
// HA VMs, and starts none of them, before anyone may find the lease expired and start them on
// another node. The watchdog that does it is a goroutine of its own with its own timer: it
// reads only atomics (the time of the last renewal, a snapshot of the HA QEMUs' pids) and
// /proc, takes no lock the rest of the agent holds, and kills by pid with SIGKILL, so it acts
// even when the rest of the agent is stuck. See docs/ha.md.

// haProc is one QEMU of an HA VM that runs on this node.
type haProc struct {
	uid, key string
	pid      int
	start    uint64 // the process's start time (procStartTime), for the fence guard
}

// fence is the self-fencing state shared by the watchdog, the lease renewer and the agent.
type fence struct {
	timeout time.Duration
	now     func() time.Time
	log     *slog.Logger
	// kill ends the QEMU p and says whether it still ran (default: SIGKILL when p.pid is
	// still a QEMU of p.uid, read from /proc).
	kill func(p haProc) (bool, error)

	// lastRenew is when the lease was last renewed or acquired (the time taken before the
	// write was sent); nil before the watchdog is armed.
	lastRenew atomic.Pointer[time.Time]
	// fenced is set while the node has lost its lease (or could not renew it for the fence
	// timeout): HA VMs must not run here. Only the renewer clears it, on a new acquisition.
	fenced atomic.Bool
	// procs is the agent's latest snapshot of its HA VMs' QEMUs.
	procs atomic.Pointer[[]haProc]
	// renewMono is lastRenew on CLOCK_MONOTONIC, for the fence guard (guard.go).
	renewMono atomic.Int64
	// guard is the fence guard's link (guard.go); nil: no guard, the watchdog alone.
	guard *guardLink

	mu     sync.Mutex            // guards the fields below; only fence code takes it
	why    string                // why the node is fenced
	killed map[string]exitRecord // by VM uid: why its QEMU was killed, until the agent records it
	notify chan struct{}         // a QEMU was killed (capacity 1)
}

func newFence(timeout time.Duration, now func() time.Time, log *slog.Logger) *fence {
	f := &fence{timeout: timeout, now: now, log: log, killed: map[string]exitRecord{}, notify: make(chan struct{}, 1)}
	f.kill = func(p haProc) (bool, error) {
		if !isVMProcess(p.pid, p.uid) {
			return false, nil
		}
		if err := syscall.Kill(p.pid, syscall.SIGKILL); err != nil && err != syscall.ESRCH {
			return false, err
		}
		return true, nil
	}
	f.procs.Store(&[]haProc{})
	return f
}

// renewed restarts the fence timeout from at (the agent's start, or a renewal).
func (f *fence) renewed(at time.Time) {
	f.renewMono.Store(monoNow() - int64(f.now().Sub(at)))
	f.lastRenew.Store(&at)
}

// setProcs replaces the snapshot of HA QEMUs, and tells the guard when they changed.
func (f *fence) setProcs(ps []haProc) {
	f.procs.Store(&ps)
	if f.guard != nil && f.guard.procsChanged(f.guardQEMUs()) {
		f.publish()
	}
}

func (f *fence) guardQEMUs() []guardQEMU {
	ps := *f.procs.Load()
	out := make([]guardQEMU, 0, len(ps))
	for _, p := range ps {
		if p.start != 0 {
			out = append(out, guardQEMU{PID: p.pid, Start: p.start, UID: p.uid})
		}
	}
	return out
}

// publish writes the fence's state for the fence guard (guard.go): the last renewal, whether
// the lease is lost, the HA QEMUs. The watchdog never calls it (it takes the guard link's
// lock); the renewer and the snapshot do.
func (f *fence) publish() {
	if f.guard == nil {
		return
	}
	s := guardState{Lost: f.fenced.Load(), QEMUs: f.guardQEMUs()}
	if f.lastRenew.Load() != nil {
		s.Armed, s.RenewedMono = true, f.renewMono.Load()
	}
	f.guard.write(s)
}

// mayRun says whether HA VMs may run (and start) here: the node holds its lease.
func (f *fence) mayRun() bool { return !f.fenced.Load() }

// check is one tick of the watchdog: when the lease was not renewed for the fence timeout the
// node is fenced; while it is fenced every HA QEMU of the snapshot is killed (again at every
// tick, so that one started just before the fence, or adopted late, goes too). It returns
// whether it killed something.
func (f *fence) check() bool {
	if !f.fenced.Load() {
		last := f.lastRenew.Load()
		if last == nil {
			return false
		}
		since := f.now().Sub(*last)
		if since < f.timeout {
			return false
		}
		return f.trip(fmt.Sprintf("the node lease was last renewed %s ago, and the fence timeout is %s", since.Round(time.Millisecond), f.timeout))
	}
	return f.killAll()
}

// trip fences the node for why (a lost or unrenewable lease) and kills its HA QEMUs.
func (f *fence) trip(why string) bool {
	f.mu.Lock()
	first := !f.fenced.Load()
	if first {
		f.why = why
		f.fenced.Store(true)
	}
	f.mu.Unlock()
	if first {
		f.log.Error("self-fencing: killing the QEMUs of the HA VMs on this node, and starting none until the node holds its lease again", "why", why)
	}
	return f.killAll()
}

// unfence ends the fence: the renewer acquired the lease anew.
func (f *fence) unfence(at time.Time) {
	f.renewed(at)
	f.mu.Lock()
	was := f.fenced.Swap(false)
	f.why = ""
	f.mu.Unlock()
	if was {
		f.log.Warn("the node holds its lease again: its HA VMs may run here again")
	}
}

func (f *fence) killAll() bool {
	ps := *f.procs.Load()
	if len(ps) == 0 {
		return false
	}
	f.mu.Lock()
	why := f.why
	f.mu.Unlock()
	any := false
	for _, p := range ps {
		ran, again := f.killFor(p, "self-fencing", why)
		if ran && !again {
			f.log.Error("self-fencing: QEMU killed", "vm", p.key, "pid", p.pid)
		}
		any = any || ran
	}
	if any {
		f.wake()
	}
	return any
}

// killOne kills the QEMU p now, whatever the node lease says (its disk lease moved on), and
// keeps why for its exit record.
func (f *fence) killOne(p haProc, why string) {
	if ran, _ := f.killFor(p, "fencing", why); ran {
		f.wake()
	}
}

// killFor kills the QEMU p and keeps why for its exit record; what names the fencing in the
// log. ran says the process was running; again, that an earlier kill had recorded its exit.
func (f *fence) killFor(p haProc, what, why string) (ran, again bool) {
	ran, err := f.kill(p)
	if err != nil {
		f.log.Error(what+": killing QEMU failed", "vm", p.key, "pid", p.pid, "err", err)
		return false, false
	}
	if !ran {
		return false, false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	_, again = f.killed[p.uid]
	f.killed[p.uid] = exitRecord{Reason: v1alpha1.ExitFenced, Message: "the node's agent killed QEMU to fence the VM: " + why}
	return true, again
}

// wake tells the agent (without waiting) that the fence killed QEMUs.
func (f *fence) wake() {
	select {
	case f.notify <- struct{}{}:
	default:
	}
}

// exitOf returns (and forgets) why the fence killed the QEMU of the VM uid, or nil.
func (f *fence) exitOf(uid string) *exitRecord {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.killed[uid]
	if !ok {
		return nil
	}
	delete(f.killed, uid)
	return &r
}

// watch runs the watchdog until ctx ends: a check every tick.
func (f *fence) watch(ctx context.Context, tick time.Duration) {
	runtime.Ticks(ctx, tick, func() { f.check() })
}
