package agent

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/qemu/qmp"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// Condition reasons the agent writes on the Running condition.
const (
	ReasonStarting    = "Starting"
	ReasonRunning     = "Running"
	ReasonPaused      = "Paused"
	ReasonStartFailed = v1alpha1.ExitStartFailed
)

func (a *Agent) inst(uid string) *instance {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.insts[uid]
}

// instances are the tracked instances now.
func (a *Agent) instances() []*instance {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]*instance, 0, len(a.insts))
	for _, in := range a.insts {
		out = append(out, in)
	}
	return out
}

// forget drops an instance whose process is gone (or that is no longer ours to watch).
func (a *Agent) forget(in *instance) {
	in.detach()
	a.mu.Lock()
	if a.insts[in.uid] == in {
		delete(a.insts, in.uid)
	}
	a.mu.Unlock()
}

func (a *Agent) runDir(uid string) string { return storage.VMRunDir(a.cfg.DataDir, uid) }

// reconcile makes the host match one VM (or cleans up one orphaned run directory).
func (a *Agent) reconcile(ctx context.Context, key runtime.Key) (runtime.Result, error) {
	if uid, ok := strings.CutPrefix(string(key), orphanPrefix); ok {
		return a.reconcileOrphan(ctx, uid)
	}
	var vm v1alpha1.VirtualMachine
	cached, ok := a.vms.Get(key)
	if !ok {
		// A VM migrating to this node, still bound to its source.
		if in, inOK := a.migIn.Get(key); inOK && in.Status.NodeName != a.cfg.NodeName {
			return a.reconcileVM(ctx, runtime.DeepCopy(in), a.inst(in.UID))
		}
	}
	if ok {
		vm = *runtime.DeepCopy(cached) // the cache's object is shared
	} else {
		// Not bound here. A QEMU of this name that still runs here is decided on the API's
		// object (claimed back when unbound, stopped when bound elsewhere or deleted).
		stored, in, err := a.vmOfRunningInstance(ctx, key)
		if err != nil {
			return runtime.Result{}, err
		}
		if stored != nil {
			return a.reconcileVM(ctx, stored, in)
		}
	}
	// Instances of this name that are not this object (deleted, or replaced by a new object
	// of the same name) are orphans.
	a.mu.Lock()
	for uid, in := range a.insts {
		if in.key == key && (!ok || uid != vm.UID) {
			a.queue.Add(orphanKey(uid))
		}
	}
	a.mu.Unlock()
	if !ok {
		// Deleted: its run directory (kept while it was stopped) goes now, not at the next
		// periodic sweep.
		a.queueOrphans()
		return runtime.Result{}, nil
	}
	return a.reconcileVM(ctx, &vm, a.inst(vm.UID))
}

func ignoreGone(err error) error {
	if errors.Is(err, runtime.ErrVMGone) {
		return nil
	}
	return err
}

func wantsRunning(pr *v1alpha1.VMPowerRequest) bool {
	return pr != nil && (pr.State == v1alpha1.PowerStateRunning || pr.State == v1alpha1.PowerStatePaused)
}

// look is one reconcile's view of a VM's QEMU: the tracked instance (nil: none), what was
// observed of it, and what observing it gave.
type look struct {
	in  *instance
	pid int     // with ProcessFound: the untracked QEMU
	mon monitor // with MonitorUp: the QMP connection
	err error   // with MonitorStatusFailed: why query-status failed
	obs Observed
}

// reconcileVM brings one VM's QEMU in line with the VM object (in is the instance the
// agent tracks for it, or nil): it observes, lets Decide pick an action and carries it out,
// until an action ends the reconcile.
func (a *Agent) reconcileVM(ctx context.Context, vm *v1alpha1.VirtualMachine, in *instance) (runtime.Result, error) {
	want := desiredOf(vm, a.cfg.NodeName)
	l := &look{in: in}
	a.observe(l, vm.UID, want.Binding == BoundHere || want.MigratingIn)
	for {
		res, again, err := a.act(ctx, vm, l, Decide(l.obs, want))
		if !again || err != nil {
			return res, err
		}
	}
}

// observe looks at the process of the VM's QEMU (and, bound here, for one it does not
// track yet). What the monitor says is observed later, when Decide asks for it.
func (a *Agent) observe(l *look, uid string, here bool) {
	o := Observed{Exit: l.obs.Exit}
	switch {
	case l.in == nil:
		if here {
			l.pid = findQEMU(a.runDir(uid), uid)
		}
		if l.pid > 0 {
			o.Process = ProcessFound
		}
	case l.in.isExited():
		o.Process = ProcessExited
	default:
		m := a.machine(l.in)
		o.Process, o.Quitting, o.Restarting = ProcessRunning, m.Quitting(), m.Restarting()
	}
	l.obs = o
}

// observeQEMU connects QMP if needed and queries QEMU's run state.
func (a *Agent) observeQEMU(ctx context.Context, l *look) {
	m := a.machine(l.in)
	o := &l.obs
	mon := m.Monitor()
	if mon == nil {
		var err error
		if mon, err = m.Connect(ctx, 2*time.Second); err != nil {
			o.Monitor, o.Quitting, o.Ended = MonitorUnreachable, m.Quitting(), m.Exited()
			if !o.Quitting && !o.Ended {
				a.log.Warn("no QMP connection to a running QEMU", "vm", string(l.in.key), "err", err)
			}
			return
		}
		if mon == nil { // closed again at once: like a broken connection
			o.Monitor, o.Disconnected, l.err = MonitorStatusFailed, true, qmp.ErrDisconnected
			return
		}
	}
	st, err := mon.QueryStatus(ctx)
	l.mon = mon
	if err != nil {
		o.Monitor, o.Ended, o.Disconnected, l.err = MonitorStatusFailed, m.Exited(), errors.Is(err, qmp.ErrDisconnected), err
		return
	}
	o.Monitor, o.Status = MonitorUp, st.Status
	o.Quitting, o.Restarting = m.Quitting(), m.Restarting()
	l.in.mu.Lock()
	o.HibernationFailed = l.in.hibernationFailed
	o.HeldStill = l.in.heldStill > 0
	l.in.mu.Unlock()
}
