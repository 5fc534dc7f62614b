package agent

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/qemu"
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
	ok, err := a.vms.Get(key, &vm)
	if err != nil {
		return runtime.Result{}, err
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
	in := a.inst(vm.UID)
	if vm.Status.NodeName != a.cfg.NodeName {
		if in == nil {
			return runtime.Result{}, nil
		}
		if in.isExited() {
			a.forget(in)
			removeRuntimeFiles(in.runDir)
			return runtime.Result{}, nil
		}
		if vm.Status.NodeName == "" && vm.DeletionTimestamp == nil {
			// It runs here: say so again (guarded, so a concurrent binding wins).
			_, err := patchVMStatus(ctx, a.c, vm.Namespace, vm.Name, vm.UID, agentStatusFields, func(v *v1alpha1.VirtualMachine) error {
				if v.Status.NodeName != "" {
					return errNoChange
				}
				v.Status.NodeName = a.cfg.NodeName
				return nil
			})
			return runtime.Result{}, ignoreGone(err)
		}
		a.log.Warn("VM bound to another node runs here: stopping it", "vm", string(key), "boundTo", vm.Status.NodeName)
		return a.stopVM(ctx, &vm, in, true, v1alpha1.ExitStopped)
	}
	return a.reconcileBound(ctx, &vm, in)
}

func ignoreGone(err error) error {
	if errors.Is(err, errGone) {
		return nil
	}
	return err
}

func wantsRunning(pr *v1alpha1.VMPowerRequest) bool {
	return pr != nil && (pr.State == v1alpha1.PowerStateRunning || pr.State == v1alpha1.PowerStatePaused)
}

// reconcileBound handles a VM bound to this node.
func (a *Agent) reconcileBound(ctx context.Context, vm *v1alpha1.VirtualMachine, in *instance) (runtime.Result, error) {
	deleting := vm.DeletionTimestamp != nil
	pr := vm.Status.PowerRequest
	runDir := a.runDir(vm.UID)
	relaunch := false

	if in != nil && in.isExited() {
		r, err := a.handleExit(ctx, vm, in, nil)
		if err != nil {
			return runtime.Result{}, err
		}
		if !r {
			if deleting {
				// No status write happened (the object is going away), so no event would
				// bring another reconcile: finish the deletion now.
				return runtime.Result{}, a.finishDelete(ctx, vm)
			}
			return runtime.Result{}, nil // the status write brings the next reconcile
		}
		relaunch, in = true, nil
	}

	if in == nil {
		// Never a second QEMU: a process we do not know yet is adopted first.
		if pid := findQEMU(runDir, vm.UID); pid > 0 {
			in = &instance{uid: vm.UID, key: runtime.KeyOf(vm), runDir: runDir, pid: pid, accel: accelOf(pid), exited: make(chan struct{}), restarting: restartMarked(runDir)}
			a.mu.Lock()
			a.insts[vm.UID] = in
			a.mu.Unlock()
			a.startWatchers(in)
			_ = a.attach(ctx, in, 3*time.Second)
			a.log.Info("adopted running QEMU", "vm", string(in.key), "pid", pid)
			return runtime.Result{RequeueAfter: 10 * time.Millisecond}, nil
		}
		if deleting {
			return runtime.Result{}, a.finishDelete(ctx, vm)
		}
		switch vm.Status.Phase {
		case v1alpha1.VMPhaseRunning, v1alpha1.VMPhasePause, v1alpha1.VMPhaseStopping, v1alpha1.VMPhaseMigrating, v1alpha1.VMPhaseDegraded:
			if !relaunch {
				// The status says it runs, but there is no process: it ended while no agent
				// watched it.
				dead := &instance{uid: vm.UID, key: runtime.KeyOf(vm), runDir: runDir, exited: make(chan struct{})}
				dead.markExited()
				def := &exitRecord{Reason: v1alpha1.ExitCrashed, Message: "QEMU ended while the node agent was not running"}
				if vm.Status.Phase == v1alpha1.VMPhaseStopping || (pr != nil && pr.State == v1alpha1.PowerStateStopped) {
					def = &exitRecord{Reason: v1alpha1.ExitStopped}
				}
				if def.Reason == v1alpha1.ExitCrashed {
					def.Message += qemuErrorSummary(runDir)
					a.noteQEMUFailure(ctx, vm, qemuLogTail(runDir))
				}
				_, err := a.handleExit(ctx, vm, dead, def)
				return runtime.Result{}, err
			}
		}
		if pr == nil {
			return runtime.Result{}, nil
		}
		if !wantsRunning(pr) {
			return runtime.Result{}, a.release(ctx, vm)
		}
		if relaunch || needStart(vm) {
			return a.start(ctx, vm)
		}
		return runtime.Result{}, nil // it exited; the VM controller decides what comes next
	}

	// QEMU runs.
	if deleting {
		if vm.Status.Phase != v1alpha1.VMPhaseTerminating {
			if _, err := a.writePhase(ctx, vm, v1alpha1.VMPhaseTerminating, nil); err != nil {
				return runtime.Result{}, err
			}
		}
		return a.stopVM(ctx, vm, in, false, v1alpha1.ExitStopped)
	}
	mon := in.monitor()
	if mon == nil {
		if err := a.attach(ctx, in, 2*time.Second); err != nil {
			in.mu.Lock()
			quitting := !in.quitAt.IsZero()
			in.mu.Unlock()
			if quitting || in.isExited() {
				return runtime.Result{RequeueAfter: 250 * time.Millisecond}, nil
			}
			a.log.Warn("no QMP connection to a running QEMU", "vm", string(in.key), "err", err)
			if pr != nil && pr.State == v1alpha1.PowerStateStopped && pr.Force {
				return a.stopVM(ctx, vm, in, true, v1alpha1.ExitStopped)
			}
			return runtime.Result{RequeueAfter: 2 * time.Second}, nil
		}
		mon = in.monitor()
	}
	st, err := mon.QueryStatus(ctx)
	if err != nil {
		if in.isExited() || errors.Is(err, qmp.ErrDisconnected) {
			// QEMU is going away (or the socket broke): the exit or a reconnect follows.
			return runtime.Result{RequeueAfter: 250 * time.Millisecond}, nil
		}
		return runtime.Result{}, fmt.Errorf("query-status: %w", err)
	}
	in.mu.Lock()
	restarting := in.restarting
	in.mu.Unlock()

	switch st.Status {
	case qmp.StatusShutdown:
		// The guest powered off (QEMU waits, paused, with -action shutdown=pause).
		reason := v1alpha1.ExitGuestShutdown
		if restarting || !wantsRunning(pr) {
			reason = v1alpha1.ExitStopped
		}
		return a.stopVM(ctx, vm, in, true, reason)
	case qmp.StatusGuestPanicked:
		return a.quitWith(ctx, in, exitRecord{Reason: v1alpha1.ExitCrashed, Message: "the guest kernel panicked"})
	case qmp.StatusInternalError:
		// A KVM internal error stops the guest; QEMU's own lines say what it was.
		a.noteQEMUFailure(ctx, vm, qemuLogTail(in.runDir))
		return a.quitWith(ctx, in, exitRecord{Reason: v1alpha1.ExitCrashed, Message: "QEMU reported an internal error" + qemuErrorSummary(in.runDir)})
	}
	if pr == nil {
		return runtime.Result{}, nil
	}
	if !wantsRunning(pr) {
		return a.stopVM(ctx, vm, in, pr.Force, v1alpha1.ExitStopped)
	}
	if restarting {
		// A graceful restart waits for the guest; a forced restart asked for meanwhile (a new
		// RestartID with force) ends the wait at once: QEMU quits and starts again.
		force := pr.Force && pr.RestartID != vm.Status.ObservedRestartID
		in.mu.Lock()
		quitting := !in.quitAt.IsZero()
		in.mu.Unlock()
		if force && !quitting {
			a.rec.Event(ctx, "VirtualMachine", vm, "Normal", "Restarting", "a forced restart takes over the graceful one: QEMU quits now and starts again")
		}
		return a.stopVM(ctx, vm, in, force, v1alpha1.ExitStopped)
	}
	if pr.RestartID != vm.Status.ObservedRestartID {
		return a.restart(ctx, vm, in, pr, st)
	}
	in.mu.Lock()
	in.powerdownAt = time.Time{} // a stop that is no longer wanted (the button press cannot be undone)
	in.powerdown2 = false
	in.mu.Unlock()

	phase := v1alpha1.VMPhaseRunning
	switch {
	case pr.State == v1alpha1.PowerStatePaused && st.Status == qmp.StatusRunning:
		if err := mon.Stop(ctx); err != nil {
			return runtime.Result{}, err
		}
		phase = v1alpha1.VMPhasePause
	case pr.State == v1alpha1.PowerStatePaused:
		phase = v1alpha1.VMPhasePause
	case st.Status != qmp.StatusRunning:
		// prelaunch (a start the agent did not finish), paused by us, or stopped for another
		// reason (e.g. an I/O error): resume. A start cut short before VNC was handed over
		// (QEMU started with -vnc none) gets it now, or the VM would have no graphical console
		// for the rest of its life.
		if st.Status == qmp.StatusPrelaunch && startedWithoutVNC(in.pid) {
			cfg := qemu.Config{LateVNC: true, VNCSocket: filepath.Join(in.runDir, qemu.VNCSocketName)}
			if vmon, ok := mon.(qemu.VNCMonitor); !ok {
				a.log.Warn("the adopted VM has no VNC: the monitor cannot pass descriptors", "vm", vm.Namespace+"/"+vm.Name)
			} else if err := cfg.StartVNC(ctx, vmon); err != nil {
				a.log.Warn("handing VNC to the adopted VM failed", "vm", vm.Namespace+"/"+vm.Name, "err", err)
			}
		}
		if err := mon.Cont(ctx); err != nil {
			return runtime.Result{}, fmt.Errorf("cont: %w", err)
		}
	}
	_, err = a.markRunning(ctx, vm, in, phase)
	return runtime.Result{}, ignoreGone(err)
}

// needStart says whether a stopped VM that should run may be started: it never ran, the
// controller asked for a new start (a RestartID the agent has not carried out), or a start
// was begun but not finished.
func needStart(vm *v1alpha1.VirtualMachine) bool {
	pr := vm.Status.PowerRequest
	return vm.Status.LastExit == nil || pr.RestartID != vm.Status.ObservedRestartID || vm.Status.Phase == v1alpha1.VMPhaseStarting
}
