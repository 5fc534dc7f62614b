package agent

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/qemu"
	"github.com/rakhsh/rakhsh/internal/qemu/qmp"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// act carries out one action Decide picked for vm. again says the reconcile observes and
// decides once more (the action only looked, or handled an exit).
func (a *Agent) act(ctx context.Context, vm *v1alpha1.VirtualMachine, l *look, act Action) (res runtime.Result, again bool, err error) {
	in := l.in
	switch act.Kind {
	case ActRequeue:
		return runtime.Result{RequeueAfter: act.After}, false, nil
	case ActObserveQEMU:
		a.observeQEMU(ctx, l)
		return runtime.Result{}, true, nil
	case ActHandleExit:
		relaunch, err := a.handleExit(ctx, vm, in, nil)
		if err != nil {
			return runtime.Result{}, false, err
		}
		l.in = nil
		l.obs.Exit = ExitRecorded
		if relaunch {
			l.obs.Exit = ExitRelaunch
		}
		a.observe(l, vm.UID, true)
		return runtime.Result{}, true, nil
	case ActForget:
		a.forget(in)
		removeRuntimeFiles(in.runDir)
		a.cleanupAfterMove(ctx, vm)
	case ActMigrateIn:
		res, err = a.migrateIn(ctx, vm, l)
	case ActClaim:
		err = a.claim(ctx, vm)
	case ActEvict:
		if a.outgoingEnding(vm, in) {
			// The source of a migration that just switched over: its watch records the
			// stream's figures first (a moment; QEMU is paused).
			return runtime.Result{RequeueAfter: 100 * time.Millisecond}, false, nil
		}
		a.log.Warn("VM bound to another node runs here: stopping it", "vm", string(runtime.KeyOf(vm)), "boundTo", vm.Status.NodeName)
		res, err = a.stopVM(ctx, vm, in, true, v1alpha1.ExitStopped)
	case ActFinishDelete:
		err = a.finishDelete(ctx, vm)
	case ActAdopt:
		res = a.adopt(ctx, vm, l.pid)
	case ActRecordLostExit:
		err = a.recordLostExit(ctx, vm, act.Reason)
	case ActRelease:
		err = a.release(ctx, vm)
	case ActStart:
		if why, fenced := a.fencedStart(vm); fenced {
			a.log.Info("not starting the VM", "vm", string(runtime.KeyOf(vm)), "why", why)
			return runtime.Result{RequeueAfter: time.Second}, false, nil
		}
		res, err = a.start(ctx, vm)
	default:
		res, err = a.actRunning(ctx, vm, l, act)
	}
	return res, false, err
}

// actRunning carries out the actions on a running QEMU.
func (a *Agent) actRunning(ctx context.Context, vm *v1alpha1.VirtualMachine, l *look, act Action) (runtime.Result, error) {
	in := l.in
	switch act.Kind {
	case ActTerminate:
		if vm.Status.Phase != v1alpha1.VMPhaseTerminating {
			if _, err := a.writePhase(ctx, vm, v1alpha1.VMPhaseTerminating, nil); err != nil {
				return runtime.Result{}, err
			}
		}
		return a.stopVM(ctx, vm, in, false, v1alpha1.ExitStopped)
	case ActStop:
		if act.TakeOver {
			a.rec.Event(ctx, "VirtualMachine", vm, "Normal", "Restarting", "a forced restart takes over the graceful one: QEMU quits now and starts again")
		}
		return a.stopVM(ctx, vm, in, act.Force, act.Reason)
	case ActCrashed:
		if act.Reason == qmp.StatusGuestPanicked {
			return a.quitWith(ctx, in, exitRecord{Reason: v1alpha1.ExitCrashed, Message: "the guest kernel panicked"})
		}
		// A KVM internal error stops the guest; QEMU's own lines say what it was.
		a.noteQEMUFailure(ctx, vm, qemuLogTail(in.runDir))
		return a.quitWith(ctx, in, exitRecord{Reason: v1alpha1.ExitCrashed, Message: "QEMU reported an internal error" + qemuErrorSummary(in.runDir)})
	case ActStatusError:
		return runtime.Result{}, fmt.Errorf("query-status: %w", l.err)
	case ActRestart:
		return a.restart(ctx, vm, in, vm.Status.PowerRequest, qmp.StatusInfo{Status: l.obs.Status})
	case ActRun:
		return a.runAsAsked(ctx, vm, l, act)
	case ActMigrateOut:
		return a.migrateOut(ctx, vm, l)
	case ActHibernate:
		return a.hibernate(ctx, vm, in)
	}
	return runtime.Result{}, nil
}

// claim binds an unbound VM whose QEMU runs here to this node again (guarded, so a
// concurrent binding wins).
func (a *Agent) claim(ctx context.Context, vm *v1alpha1.VirtualMachine) error {
	_, err := runtime.UpdateVMStatus(ctx, a.c, vm.Namespace, vm.Name, vm.UID, agentStatusFields, nil, func(v *v1alpha1.VirtualMachine) error {
		if v.Status.NodeName != "" {
			return runtime.ErrNoChange
		}
		v.Status.NodeName = a.cfg.NodeName
		return nil
	})
	return ignoreGone(err)
}

// adopt tracks the QEMU (pid) an earlier agent started for vm.
func (a *Agent) adopt(ctx context.Context, vm *v1alpha1.VirtualMachine, pid int) runtime.Result {
	m := a.adoptMachine(runtime.KeyOf(vm), vm.UID, a.runDir(vm.UID), pid)
	_, _ = m.Connect(ctx, 3*time.Second)
	a.log.Info("adopted running QEMU", "vm", string(runtime.KeyOf(vm)), "pid", pid)
	return runtime.Result{RequeueAfter: 10 * time.Millisecond}
}

// recordLostExit records the end of a QEMU that ended while no agent watched it.
func (a *Agent) recordLostExit(ctx context.Context, vm *v1alpha1.VirtualMachine, reason string) error {
	// The cache may be behind the API: an exit this agent has just recorded (a QEMU killed by
	// the fence while the API was out of reach, recorded once it was back) still looks like a
	// running VM without a process. Ask the API before recording a second, wrong exit.
	var fresh v1alpha1.VirtualMachine
	if err := a.c.Get(ctx, "virtualmachines", vm.Namespace, vm.Name, &fresh); err == nil && fresh.UID == vm.UID && !runsPhase(fresh.Status.Phase) {
		return nil // the status write brings the next reconcile
	}
	runDir := a.runDir(vm.UID)
	dead := &instance{uid: vm.UID, key: runtime.KeyOf(vm), runDir: runDir, exited: make(chan struct{})}
	dead.markExited()
	def := &exitRecord{Reason: reason}
	if reason == v1alpha1.ExitCrashed {
		def.Message = "QEMU ended while the node agent was not running" + qemuErrorSummary(runDir)
		a.noteQEMUFailure(ctx, vm, qemuLogTail(runDir))
	}
	_, err := a.handleExit(ctx, vm, dead, def)
	return err
}

// runAsAsked keeps a running QEMU as the power request asks (paused or running) and records
// it. A stop that is no longer wanted is forgotten (the button press cannot be undone).
func (a *Agent) runAsAsked(ctx context.Context, vm *v1alpha1.VirtualMachine, l *look, act Action) (runtime.Result, error) {
	in := l.in
	a.machine(in).CancelShutdown()
	if act.Pause {
		if err := l.mon.Stop(ctx); err != nil {
			return runtime.Result{}, err
		}
	}
	if act.Resume {
		// A start cut short before VNC was handed over (QEMU started with -vnc none) gets it
		// now, or the VM would have no graphical console for the rest of its life.
		if l.obs.Status == qmp.StatusPrelaunch && startedWithoutVNC(in.pid) {
			cfg := qemu.Config{LateVNC: true, VNCSocket: filepath.Join(in.runDir, qemu.VNCSocketName)}
			if vmon, ok := l.mon.(qemu.VNCMonitor); !ok {
				a.log.Warn("the adopted VM has no VNC: the monitor cannot pass descriptors", "vm", vm.Namespace+"/"+vm.Name)
			} else if err := cfg.StartVNC(ctx, vmon); err != nil {
				a.log.Warn("handing VNC to the adopted VM failed", "vm", vm.Namespace+"/"+vm.Name, "err", err)
			}
		}
		if err := l.mon.Cont(ctx); err != nil {
			return runtime.Result{}, fmt.Errorf("cont: %w", err)
		}
	}
	var again time.Duration
	if act.Phase == v1alpha1.VMPhaseRunning {
		// CPU and memory changes of the spec that can be made while the guest runs (live.go).
		again = a.applyLive(ctx, vm, in, l.mon)
	}
	_, err := a.markRunning(ctx, vm, in, act.Phase)
	if err != nil {
		return runtime.Result{}, ignoreGone(err)
	}
	if h := a.syncHotplug(ctx, vm, in); h > 0 && (again == 0 || h < again) { // hotplug_disk.go
		again = h
	}
	return runtime.Result{RequeueAfter: again}, nil
}
