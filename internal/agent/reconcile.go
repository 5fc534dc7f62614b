package agent

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
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

// release writes a stopped VM's phase and gives its node binding back, so the scheduler
// places it again when it is started.
func (a *Agent) release(ctx context.Context, vm *v1alpha1.VirtualMachine) error {
	_, err := patchVMStatus(ctx, a.c, vm.Namespace, vm.Name, vm.UID, agentStatusFields, func(v *v1alpha1.VirtualMachine) error {
		if v.Status.NodeName != a.cfg.NodeName || wantsRunning(v.Status.PowerRequest) || v.DeletionTimestamp != nil {
			return errNoChange
		}
		now := a.now()
		setPhase(v, v1alpha1.VMPhaseStopped, now)
		v.Status.NodeName = ""
		setRunningCond(v, v1alpha1.ConditionFalse, "Stopped", "the VM is stopped")
		if ex := v.Status.LastExit; ex != nil && unplanned(ex.Reason) && v.Status.PowerRequest != nil && v.Status.PowerRequest.Operation != "" {
			// Stopped by a user's operation while it waited to restart after crashes: the
			// crash count and message belong to the events now, not to a VM that was asked
			// to stop. (A run policy that keeps a crashed VM stopped keeps its lastExit.)
			v.Status.LastExit = &v1alpha1.VMExit{Reason: v1alpha1.ExitStopped, Time: &now}
		}
		return nil
	})
	if err == nil {
		a.log.Info("VM stopped and released", "vm", vm.Namespace+"/"+vm.Name)
	}
	return ignoreGone(err)
}

// setRunningCond sets the Running condition; a VM whose QEMU does not run has no GuestReady.
func setRunningCond(vm *v1alpha1.VirtualMachine, status, reason, msg string) {
	v1alpha1.SetCondition(&vm.Status.Conditions, v1alpha1.Condition{Type: v1alpha1.VMConditionRunning, Status: status, Reason: reason, Message: msg})
	if status != v1alpha1.ConditionTrue {
		v1alpha1.RemoveCondition(&vm.Status.Conditions, v1alpha1.VMConditionGuestReady)
	}
}

func (a *Agent) writePhase(ctx context.Context, vm *v1alpha1.VirtualMachine, p v1alpha1.VirtualMachinePhase, more func(v *v1alpha1.VirtualMachine)) (*v1alpha1.VirtualMachine, error) {
	return patchVMStatus(ctx, a.c, vm.Namespace, vm.Name, vm.UID, agentStatusFields, func(v *v1alpha1.VirtualMachine) error {
		if v.Status.NodeName != a.cfg.NodeName {
			return errNoChange
		}
		setPhase(v, p, a.now())
		if more != nil {
			more(v)
		}
		return nil
	})
}

// markRunning records a running (or paused) VM: phase, conditions, versions, resources and
// launch timings.
func (a *Agent) markRunning(ctx context.Context, vm *v1alpha1.VirtualMachine, in *instance, phase v1alpha1.VirtualMachinePhase) (*v1alpha1.VirtualMachine, error) {
	kvm := in.accel == "kvm"
	return patchVMStatus(ctx, a.c, vm.Namespace, vm.Name, vm.UID, agentStatusFields, func(v *v1alpha1.VirtualMachine) error {
		if v.Status.NodeName != a.cfg.NodeName {
			return errNoChange
		}
		now := a.now()
		was := v.Status.Phase
		setPhase(v, phase, now)
		if was == v1alpha1.VMPhaseStarting && phase == v1alpha1.VMPhaseRunning {
			st := v.Status.Stats
			start := lastTransition(v, v1alpha1.VMPhaseStarting)
			if st.LaunchTimeDuration == nil {
				st.LaunchTimeDuration = &v1alpha1.VirtualMachineLaunchTimeDuration{}
			}
			if !start.IsZero() {
				st.LaunchTimeDuration.VirtualMachineStarting = now.Sub(start.Time).String()
				if p := lastTransition(v, v1alpha1.VMPhasePending); !p.IsZero() && p.Before(start.Time) {
					st.LaunchTimeDuration.WaitingForDependencies = start.Sub(p.Time).String()
				} else if v.CreationTimestamp != nil && v.CreationTimestamp.Before(start.Time) && len(st.PhasesTransitions) <= 3 {
					st.LaunchTimeDuration.WaitingForDependencies = start.Sub(v.CreationTimestamp.Time).String()
				}
			}
			st.LastStartTime = &now
		}
		if phase == v1alpha1.VMPhasePause {
			setRunningCond(v, v1alpha1.ConditionTrue, ReasonPaused, "QEMU runs; the guest is paused")
		} else {
			setRunningCond(v, v1alpha1.ConditionTrue, ReasonRunning, "QEMU runs the guest")
		}
		v1alpha1.SetCondition(&v.Status.Conditions, a.emulationCondition(kvm))
		switch {
		case in.guestOutput.Load():
			v1alpha1.SetCondition(&v.Status.Conditions, guestReadyCondition(true))
		case in.child || v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionGuestReady) == nil:
			// Started by this agent and silent so far. (An adopted QEMU keeps what an
			// earlier agent saw: its guest need not write again.)
			v1alpha1.SetCondition(&v.Status.Conditions, guestReadyCondition(false))
		}
		if a.facts.qemu.QEMUVersion != "" {
			v.Status.Versions = &v1alpha1.VirtualMachineVersions{Qemu: a.facts.qemu.QEMUVersion}
		}
		// What runs, which may differ from the spec until a restart.
		running := readRunSpec(in.runDir, v)
		if topo, err := qemu.CPUTopology(running.CPU.Cores); err == nil {
			ran := &v1alpha1.VirtualMachine{Spec: *running}
			v.Status.Resources = &v1alpha1.VirtualMachineResources{
				CPU: v1alpha1.VirtualMachineCPUStatus{Cores: running.CPU.Cores, CoreFraction: running.CPU.CoreFraction,
					RequestedCores: requestedCores(ran), Topology: v1alpha1.VirtualMachineCPUTopology{CoresPerSocket: topo.CoresPerSocket, Sockets: topo.Sockets}},
				Memory: v1alpha1.VirtualMachineMemoryStatus{Size: running.Memory.Size},
			}
		}
		v1alpha1.SetCondition(&v.Status.Conditions, restartCondition(pendingChanges(running, &v.Spec)))
		return nil
	})
}

// stopVM ends a running QEMU: gracefully (ACPI power button, then quit after the VM's
// termination grace period) or, with force or when the guest is not running, at once
// (quit, then SIGKILL after KillTimeout). It does not block: it requeues itself.
func (a *Agent) stopVM(ctx context.Context, vm *v1alpha1.VirtualMachine, in *instance, force bool, reason string) (runtime.Result, error) {
	now := a.cfg.Now()
	in.mu.Lock()
	quitAt, powerdownAt := in.quitAt, in.powerdownAt
	in.mu.Unlock()
	if !quitAt.IsZero() {
		if now.Sub(quitAt) > a.cfg.KillTimeout {
			a.log.Warn("QEMU did not quit: killing it", "vm", string(in.key), "pid", in.pid)
			if err := signalVM(in.pid, in.uid, syscall.SIGKILL); err != nil {
				return runtime.Result{}, err
			}
		}
		return runtime.Result{RequeueAfter: 250 * time.Millisecond}, nil
	}
	grace := 60 * time.Second
	if g := vm.Spec.TerminationGracePeriodSeconds; g != nil && *g >= 0 {
		grace = time.Duration(*g) * time.Second
	}
	if g := vm.DeletionGracePeriodSeconds; vm.DeletionTimestamp != nil && g != nil && time.Duration(*g)*time.Second < grace {
		// `delete --grace-period N` (or --force, N=0) shortens the wait.
		grace = time.Duration(*g) * time.Second
	}
	mon := in.monitor()
	running := false
	if mon != nil && !force {
		st, err := mon.QueryStatus(ctx)
		running = err == nil && st.Status == qmp.StatusRunning
	}
	if force || !running || (!powerdownAt.IsZero() && now.Sub(powerdownAt) >= grace) || grace == 0 {
		return a.quitWith(ctx, in, exitRecord{Reason: reason})
	}
	if powerdownAt.IsZero() {
		if err := mon.SystemPowerdown(ctx); err != nil {
			return runtime.Result{}, fmt.Errorf("system_powerdown: %w", err)
		}
		in.mu.Lock()
		in.powerdownAt = now
		in.mu.Unlock()
		a.log.Info("pressed the ACPI power button", "vm", string(in.key), "grace", grace)
		if vm.Status.Phase != v1alpha1.VMPhaseTerminating {
			if _, err := a.writePhase(ctx, vm, v1alpha1.VMPhaseStopping, nil); err != nil && !errors.Is(err, errGone) {
				return runtime.Result{}, err
			}
		}
		if d := secondPressAfter(vm, in); d > 0 && d < grace {
			return runtime.Result{RequeueAfter: d}, nil
		}
		return runtime.Result{RequeueAfter: grace}, nil
	}
	if d := secondPressAfter(vm, in); d > 0 {
		if now.Sub(powerdownAt) < d {
			return runtime.Result{RequeueAfter: d - now.Sub(powerdownAt)}, nil
		}
		// Windows ignores the first press while its display is off or no one is logged on
		// (the first press only wakes it); the second one starts the shutdown.
		if err := mon.SystemPowerdown(ctx); err != nil {
			return runtime.Result{}, fmt.Errorf("system_powerdown: %w", err)
		}
		in.mu.Lock()
		in.powerdown2 = true
		in.mu.Unlock()
		a.log.Info("pressed the ACPI power button a second time (Windows)", "vm", string(in.key))
	}
	return runtime.Result{RequeueAfter: grace - now.Sub(powerdownAt)}, nil
}

// windowsSecondPress is how long after the first ACPI power button press a Windows guest gets
// the second one.
const windowsSecondPress = 5 * time.Second

// secondPressAfter is, for a Windows VM whose graceful stop has pressed the power button only
// once, the delay of the second press after the first; 0 otherwise.
func secondPressAfter(vm *v1alpha1.VirtualMachine, in *instance) time.Duration {
	in.mu.Lock()
	done := in.powerdown2
	in.mu.Unlock()
	if done || vm.Spec.OSType != v1alpha1.OSTypeWindows {
		return 0
	}
	return windowsSecondPress
}

// quitWith records why QEMU ends (exit.json) and asks it to quit; SIGTERM when there is no
// QMP connection.
func (a *Agent) quitWith(ctx context.Context, in *instance, rec exitRecord) (runtime.Result, error) {
	if readExitRecord(in.runDir) == nil {
		if err := writeExitRecord(in.runDir, rec); err != nil {
			return runtime.Result{}, err
		}
	}
	in.mu.Lock()
	in.quitAt = a.cfg.Now()
	in.mu.Unlock()
	if mon := in.monitor(); mon != nil {
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := mon.Quit(qctx)
		cancel()
		if err == nil {
			return runtime.Result{RequeueAfter: 250 * time.Millisecond}, nil
		}
		a.log.Warn("quit failed; sending SIGTERM", "vm", string(in.key), "err", err)
	}
	if err := signalVM(in.pid, in.uid, syscall.SIGTERM); err != nil {
		return runtime.Result{}, err
	}
	return runtime.Result{RequeueAfter: 250 * time.Millisecond}, nil
}

// restart carries out a new RestartID on a running VM: a hard reset with force, else a
// graceful stop followed by a start.
func (a *Agent) restart(ctx context.Context, vm *v1alpha1.VirtualMachine, in *instance, pr *v1alpha1.VMPowerRequest, st qmp.StatusInfo) (runtime.Result, error) {
	_, err := patchVMStatus(ctx, a.c, vm.Namespace, vm.Name, vm.UID, agentStatusFields, func(v *v1alpha1.VirtualMachine) error {
		if v.Status.PowerRequest == nil || v.Status.PowerRequest.RestartID != pr.RestartID {
			return errors.New("the power request changed")
		}
		v.Status.ObservedRestartID = pr.RestartID
		return nil
	})
	if err != nil {
		return runtime.Result{}, ignoreGone(err)
	}
	a.rec.Event(ctx, "VirtualMachine", vm, "Normal", "Restarting", fmt.Sprintf("restarting the VM (force=%t)", pr.Force))
	mon := in.monitor()
	if pr.Force && mon != nil {
		in.guestOutput.Store(false)
		if err := mon.SystemReset(ctx); err != nil {
			return runtime.Result{}, fmt.Errorf("system_reset: %w", err)
		}
		if _, err := patchVMStatus(ctx, a.c, vm.Namespace, vm.Name, vm.UID, agentStatusFields, func(v *v1alpha1.VirtualMachine) error {
			if in.guestOutput.Load() {
				return errNoChange // the guest has spoken again already
			}
			v1alpha1.SetCondition(&v.Status.Conditions, guestReadyCondition(false))
			return nil
		}); ignoreGone(err) != nil {
			return runtime.Result{}, err
		}
		if st.Status != qmp.StatusRunning && pr.State == v1alpha1.PowerStateRunning {
			if err := mon.Cont(ctx); err != nil {
				return runtime.Result{}, err
			}
		}
		return runtime.Result{RequeueAfter: 10 * time.Millisecond}, nil
	}
	if err := os.WriteFile(filepath.Join(in.runDir, restartFileName), nil, 0o600); err != nil {
		return runtime.Result{}, err
	}
	in.mu.Lock()
	in.restarting = true
	in.mu.Unlock()
	return a.stopVM(ctx, vm, in, pr.Force, v1alpha1.ExitStopped)
}

// handleExit deals with a QEMU that is gone: it records lastExit (unless the exit was the
// first half of a restart, then it returns true to start again) and forgets the instance.
// def is the reason to use when neither the agent nor QEMU left one.
func (a *Agent) handleExit(ctx context.Context, vm *v1alpha1.VirtualMachine, in *instance, def *exitRecord) (bool, error) {
	rec := readExitRecord(in.runDir)
	in.mu.Lock()
	restarting, guestShutdown, panicked := in.restarting, in.guestShutdown, in.panicked
	in.mu.Unlock()
	if rec == nil {
		switch {
		case def != nil:
			rec = def
		case panicked:
			rec = &exitRecord{Reason: v1alpha1.ExitCrashed, Message: "the guest kernel panicked"}
		case guestShutdown:
			rec = &exitRecord{Reason: v1alpha1.ExitGuestShutdown}
		default:
			rec = &exitRecord{Reason: v1alpha1.ExitCrashed, Message: "QEMU exited unexpectedly" + qemuErrorSummary(in.runDir)}
			a.noteQEMUFailure(ctx, vm, qemuLogTail(in.runDir))
		}
	}
	deleting := vm.DeletionTimestamp != nil
	if restarting && wantsRunning(vm.Status.PowerRequest) && !deleting {
		a.forget(in)
		removeRuntimeFiles(in.runDir)
		return true, nil
	}
	if !deleting {
		if err := a.recordExit(ctx, vm, *rec); err != nil && !errors.Is(err, errGone) {
			return false, err
		}
	}
	a.forget(in)
	removeRuntimeFiles(in.runDir)
	return false, nil
}

// recordExit writes lastExit, phase Stopped and the Running condition; a VM that should stay
// stopped also gives its node binding back.
func (a *Agent) recordExit(ctx context.Context, vm *v1alpha1.VirtualMachine, rec exitRecord) error {
	now := a.now()
	v, err := patchVMStatus(ctx, a.c, vm.Namespace, vm.Name, vm.UID, agentStatusFields, func(v *v1alpha1.VirtualMachine) error {
		if v.Status.NodeName != a.cfg.NodeName {
			return errNoChange
		}
		count := 0
		if unplanned(rec.Reason) {
			count = 1
			prev := v.Status.LastExit
			ranLong := v.Status.Stats != nil && v.Status.Stats.LastStartTime != nil && now.Sub(v.Status.Stats.LastStartTime.Time) > 10*time.Minute
			if prev != nil && unplanned(prev.Reason) && !ranLong {
				count = prev.Count + 1
			}
		}
		v.Status.LastExit = &v1alpha1.VMExit{Reason: rec.Reason, Message: rec.Message, Time: &now, Count: count}
		if rec.Reason == v1alpha1.ExitStartFailed && vm.Status.PowerRequest != nil {
			// The attempt carried out its restart request even when it failed before the
			// Starting write: the next try waits for the controller's backoff and new request.
			v.Status.ObservedRestartID = vm.Status.PowerRequest.RestartID
		}
		setPhase(v, v1alpha1.VMPhaseStopped, now)
		msg := rec.Message
		if msg == "" {
			msg = exitMessage(rec.Reason)
		}
		setRunningCond(v, v1alpha1.ConditionFalse, rec.Reason, msg)
		if !wantsRunning(v.Status.PowerRequest) {
			v.Status.NodeName = ""
		}
		return nil
	})
	if err != nil {
		return err
	}
	typ := "Normal"
	if unplanned(rec.Reason) {
		typ = "Warning"
	}
	msg := exitMessage(rec.Reason)
	if rec.Message != "" {
		msg += ": " + rec.Message
	}
	a.log.Info("VM exited", "vm", vm.Namespace+"/"+vm.Name, "reason", rec.Reason, "message", rec.Message)
	a.rec.Event(ctx, "VirtualMachine", v, typ, rec.Reason, msg)
	return nil
}

func unplanned(reason string) bool {
	return reason == v1alpha1.ExitCrashed || reason == v1alpha1.ExitStartFailed
}

func exitMessage(reason string) string {
	switch reason {
	case v1alpha1.ExitGuestShutdown:
		return "the guest powered itself off"
	case v1alpha1.ExitStopped:
		return "the VM was stopped"
	case v1alpha1.ExitCrashed:
		return "the VM crashed"
	case v1alpha1.ExitStartFailed:
		return "QEMU failed to start"
	}
	return reason
}

// finishDelete removes the run directory of a deleted VM whose QEMU is gone, then releases
// the VM (clears status.nodeName) so that the VM controller removes its finalizer.
func (a *Agent) finishDelete(ctx context.Context, vm *v1alpha1.VirtualMachine) error {
	runDir := a.runDir(vm.UID)
	if findQEMU(runDir, vm.UID) > 0 {
		return fmt.Errorf("QEMU of %s/%s still runs", vm.Namespace, vm.Name)
	}
	stopTPM(runDir)
	if err := os.RemoveAll(runDir); err != nil {
		return err
	}
	_, err := patchVMStatus(ctx, a.c, vm.Namespace, vm.Name, vm.UID, agentStatusFields, func(v *v1alpha1.VirtualMachine) error {
		if v.Status.NodeName != a.cfg.NodeName {
			return errNoChange
		}
		v.Status.NodeName = ""
		return nil
	})
	if err := ignoreGone(err); err != nil {
		return err
	}
	a.log.Info("VM deleted: QEMU stopped, run directory removed, VM released", "vm", vm.Namespace+"/"+vm.Name)
	return nil
}

// reconcileOrphan stops the QEMU of a run directory whose VM object is gone, and removes the
// directory.
func (a *Agent) reconcileOrphan(ctx context.Context, uid string) (runtime.Result, error) {
	if _, exists := a.vmKeysByUID()[uid]; exists {
		return runtime.Result{}, nil
	}
	runDir := a.runDir(uid)
	in := a.inst(uid)
	pid := findQEMU(runDir, uid)
	if in == nil && pid > 0 {
		in = &instance{uid: uid, key: orphanKey(uid), runDir: runDir, pid: pid, exited: make(chan struct{})}
		a.mu.Lock()
		a.insts[uid] = in
		a.mu.Unlock()
		a.startWatchers(in)
		_ = a.attach(ctx, in, 2*time.Second)
	}
	if in != nil && !in.isExited() && findQEMU(runDir, uid) > 0 {
		a.log.Info("stopping the QEMU of a deleted VM", "uid", uid, "pid", in.pid)
		in.mu.Lock()
		quitAt := in.quitAt
		in.mu.Unlock()
		if quitAt.IsZero() {
			return a.quitWith(ctx, in, exitRecord{Reason: v1alpha1.ExitStopped})
		}
		if a.cfg.Now().Sub(quitAt) > a.cfg.KillTimeout {
			_ = signalVM(in.pid, uid, syscall.SIGKILL)
		}
		return runtime.Result{RequeueAfter: 250 * time.Millisecond}, nil
	}
	if in != nil {
		a.forget(in)
	}
	if findQEMU(runDir, uid) > 0 {
		return runtime.Result{RequeueAfter: 250 * time.Millisecond}, nil
	}
	stopTPM(runDir)
	if err := os.RemoveAll(runDir); err != nil {
		return runtime.Result{}, err
	}
	a.log.Info("removed the run directory of a deleted VM", "uid", uid)
	return runtime.Result{}, nil
}

// start resolves the VM's block devices, builds the QEMU command line, launches QEMU paused,
// connects QMP and the serial console, and resumes the guest.
func (a *Agent) start(ctx context.Context, vm *v1alpha1.VirtualMachine) (runtime.Result, error) {
	key := runtime.KeyOf(vm)
	if a.facts.qemuErr != nil {
		return runtime.Result{}, a.startFailed(ctx, vm, nil, a.facts.qemuErr.Error())
	}
	runDir := a.runDir(vm.UID)
	if err := os.MkdirAll(runDir, 0o700); err != nil {
		return runtime.Result{}, err
	}
	_ = os.Chmod(runDir, 0o700)
	disks, err := a.resolveDisks(ctx, vm)
	if err != nil {
		if ctx.Err() != nil {
			return runtime.Result{}, ctx.Err()
		}
		return runtime.Result{}, a.startFailed(ctx, vm, nil, err.Error())
	}
	if d, err := a.provisioningDisk(ctx, vm, runDir); err != nil { // cloud-init/sysprep CD-ROM (provision.go)
		return runtime.Result{}, a.startFailed(ctx, vm, nil, err.Error())
	} else if d != nil {
		disks = append(disks, *d)
	}
	nics, res, err := a.prepareNICs(ctx, vm) // network.go
	if nics == nil {
		return res, err
	}
	removeRuntimeFiles(runDir)
	in0 := qemu.Input{VM: vm, Node: a.nodeFacts(), RunDir: runDir, Disks: disks, NICs: nics, PassFDs: a.qemuAs != nil}
	if err := a.applyClassCPU(ctx, vm, &in0); err != nil { // the class's CPU model (cgroup_cpumodel.go)
		return runtime.Result{}, a.startFailed(ctx, vm, nil, err.Error())
	}
	if vm.Spec.Bootloader == v1alpha1.BootloaderEFI || vm.Spec.Bootloader == v1alpha1.BootloaderEFIWithSecureBoot {
		// The UEFI variable store lives as long as the VM: in its run directory.
		in0.NVRAMPath = filepath.Join(runDir, nvramFileName)
	}
	if needsTPM(vm) {
		in0.TPMSocket = tpmSocketPath(runDir) // swtpm starts right before QEMU (tpm.go)
	}
	cfg, err := qemu.Build(in0)
	if err != nil {
		return runtime.Result{}, a.startFailed(ctx, vm, nil, err.Error())
	}
	if in0.NVRAMPath != "" && cfg.NVRAMTemplate != "" {
		replaced, err := ensureNVRAM(cfg.NVRAMTemplate, in0.NVRAMPath)
		if err != nil {
			return runtime.Result{}, a.startFailed(ctx, vm, nil, "creating the UEFI variable store: "+err.Error())
		}
		if replaced {
			a.log.Info("the bootloader changed: the UEFI variable store was made anew from its template", "vm", string(key), "template", cfg.NVRAMTemplate)
			a.rec.Event(ctx, "VirtualMachine", vm, "Normal", "NVRAMReset",
				"spec.bootloader changed: the UEFI variables were reset from "+filepath.Base(cfg.NVRAMTemplate)+" (boot entries are found again on the next boot)")
		}
	}
	if err := writeRunSpec(runDir, vm); err != nil {
		return runtime.Result{}, err
	}
	for name, data := range cfg.Files {
		if err := os.WriteFile(filepath.Join(runDir, name), data, 0o600); err != nil {
			return runtime.Result{}, err
		}
	}
	pr := vm.Status.PowerRequest
	fresh, err := a.writePhase(ctx, vm, v1alpha1.VMPhaseStarting, func(v *v1alpha1.VirtualMachine) {
		v.Status.ObservedRestartID = pr.RestartID
		setRunningCond(v, v1alpha1.ConditionFalse, ReasonStarting, "starting QEMU")
	})
	if err != nil {
		return runtime.Result{}, ignoreGone(err)
	}
	if fresh.Status.NodeName != a.cfg.NodeName || !wantsRunning(fresh.Status.PowerRequest) {
		return runtime.Result{}, nil
	}
	started := time.Now()
	if in0.TPMSocket != "" {
		if err := a.startTPM(ctx, runDir); err != nil {
			return runtime.Result{}, a.startFailed(ctx, vm, nil, "starting the TPM: "+err.Error())
		}
	}
	in, err := a.launch(key, vm.UID, runDir, cfg)
	if err != nil {
		return runtime.Result{}, a.startFailed(ctx, vm, nil, fmt.Sprintf("starting %s: %v", cfg.Binary, err))
	}
	a.mu.Lock()
	a.insts[vm.UID] = in
	a.mu.Unlock()
	a.startWatchers(in)
	if err := a.attach(ctx, in, 30*time.Second); err != nil {
		select {
		case <-in.exited:
		case <-time.After(time.Second):
		}
		if in.isExited() {
			return runtime.Result{}, a.startFailed(ctx, vm, in, "QEMU exited during start-up")
		}
		return runtime.Result{}, a.startFailed(ctx, vm, in, "QEMU did not open its QMP socket: "+err.Error())
	}
	mon := in.monitor()
	if mon == nil {
		return runtime.Result{}, a.startFailed(ctx, vm, in, "QEMU closed its QMP socket")
	}
	if cfg.LateVNC {
		vmon, ok := mon.(qemu.VNCMonitor)
		if !ok {
			return runtime.Result{}, a.startFailed(ctx, vm, in, "starting VNC: the monitor cannot pass descriptors")
		}
		if err := cfg.StartVNC(ctx, vmon); err != nil {
			return runtime.Result{}, a.startFailed(ctx, vm, in, "starting VNC: "+err.Error())
		}
	}
	if err := a.enforceLimits(ctx, vm, in); err != nil { // cgroup limits and pinning (cgroup.go)
		// A CPU share below 100 % or dedicated cores are what the VM's class sells: without
		// them the VM does not start. A VM that asks for neither only loses its memory cap,
		// so it runs, and the node says why it is not confined.
		if lim := computeLimits(vm, in.accel != "kvm"); lim.cpuQuotaUsec > 0 || lim.dedicated > 0 {
			return runtime.Result{}, a.startFailed(ctx, vm, in, "applying the VM's CPU and memory limits: "+err.Error())
		}
		a.log.Warn("the VM runs without its cgroup memory limit", "vm", string(key), "err", err)
		a.rec.Event(ctx, "VirtualMachine", vm, "Warning", "LimitsNotApplied",
			"the VM runs without a cgroup memory limit on node "+a.cfg.NodeName+": "+err.Error())
	}
	phase := v1alpha1.VMPhaseRunning
	if pr.State == v1alpha1.PowerStatePaused {
		phase = v1alpha1.VMPhasePause
	} else if err := mon.Cont(ctx); err != nil {
		return runtime.Result{}, a.startFailed(ctx, vm, in, "cont: "+err.Error())
	}
	a.log.Info("VM started", "vm", string(key), "pid", in.pid, "accel", cfg.Accelerator, "took", time.Since(started).Round(time.Millisecond))
	v, err := a.markRunning(ctx, vm, in, phase)
	if err != nil {
		return runtime.Result{}, ignoreGone(err)
	}
	a.rec.Event(ctx, "VirtualMachine", v, "Normal", "Started", fmt.Sprintf("QEMU started on node %s (pid %d, %s)", a.cfg.NodeName, in.pid, cfg.Accelerator))
	return runtime.Result{}, nil
}

// startFailed stops what a failed start left running and records StartFailed with QEMU's
// stderr tail.
func (a *Agent) startFailed(ctx context.Context, vm *v1alpha1.VirtualMachine, in *instance, msg string) error {
	runDir := a.runDir(vm.UID)
	if in != nil {
		// Give QEMU a moment to finish writing its error, then make sure it is gone.
		select {
		case <-in.exited:
		case <-time.After(2 * time.Second):
		}
		if !in.isExited() {
			_ = signalVM(in.pid, in.uid, syscall.SIGKILL)
			select {
			case <-in.exited:
			case <-time.After(a.cfg.KillTimeout):
			}
		}
		msg += qemuErrorSummary(runDir)
		a.noteQEMUFailure(ctx, vm, qemuLogTail(runDir))
		a.forget(in)
	}
	removeRuntimeFiles(runDir)
	a.log.Warn("VM failed to start", "vm", vm.Namespace+"/"+vm.Name, "err", msg)
	return ignoreGone(a.recordExit(ctx, vm, exitRecord{Reason: v1alpha1.ExitStartFailed, Message: msg}))
}

// defaultNICs gives the VM one user-mode (isolated, restrict=on) interface until the network
// controllers provide taps on bridges. Its MAC is the one in status.networks when known, else
// derived from the VM uid.
func defaultNICs(vm *v1alpha1.VirtualMachine) []qemu.NIC {
	mac := ""
	if len(vm.Status.Networks) > 0 {
		mac = vm.Status.Networks[0].MACAddress
	}
	if mac == "" {
		h := sha256.Sum256([]byte(vm.UID))
		mac = fmt.Sprintf("52:54:00:%02x:%02x:%02x", h[0], h[1], h[2])
	}
	return []qemu.NIC{{ID: "main", MAC: mac}}
}

// resolveDisks turns spec.blockDeviceRefs into files: a VirtualDisk is its qcow2 in the
// default pool (with its backing chain), an image is its imported file, read-only (a CD-ROM
// when the image is one).
func (a *Agent) resolveDisks(ctx context.Context, vm *v1alpha1.VirtualMachine) ([]qemu.Disk, error) {
	anyOrder := false
	for _, r := range vm.Spec.BlockDeviceRefs {
		if r.BootOrder != nil {
			anyOrder = true
		}
	}
	var out []qemu.Disk
	for i, ref := range vm.Spec.BlockDeviceRefs {
		d := qemu.Disk{}
		switch {
		case ref.BootOrder != nil:
			d.BootOrder = *ref.BootOrder
		case !anyOrder:
			d.BootOrder = i + 1
		}
		switch ref.Kind {
		case v1alpha1.BlockDeviceKindVirtualDisk:
			var vd v1alpha1.VirtualDisk
			if err := a.c.Get(ctx, "virtualdisks", vm.Namespace, ref.Name, &vd); err != nil {
				if client.IsNotFound(err) {
					return nil, fmt.Errorf("VirtualDisk %q not found", ref.Name)
				}
				return nil, err
			}
			if vd.Status.Phase != v1alpha1.DiskPhaseReady {
				return nil, fmt.Errorf("VirtualDisk %q is %s, not Ready", ref.Name, orNone(string(vd.Status.Phase)))
			}
			if err := storage.CheckUID(vd.UID); err != nil {
				return nil, err
			}
			d.ID = "vd-" + ref.Name
			d.Path = storage.DiskPath(a.cfg.DataDir, storage.DefaultPool, vd.UID)
			d.Format = qemu.FormatQCOW2
			chain, err := a.backingChain(ctx, d.Path)
			if err != nil {
				return nil, fmt.Errorf("VirtualDisk %q: %w", ref.Name, err)
			}
			d.Backing = chain
			d.Serial = serialOf(vd.UID)
		case v1alpha1.BlockDeviceKindVirtualImage, v1alpha1.BlockDeviceKindClusterVirtualImage:
			resource, ns, short := "virtualimages", vm.Namespace, "vi-"
			if ref.Kind == v1alpha1.BlockDeviceKindClusterVirtualImage {
				resource, ns, short = "clustervirtualimages", "", "cvi-"
			}
			var img struct {
				Metadata v1alpha1.ObjectMeta  `json:"metadata"`
				Status   v1alpha1.ImageStatus `json:"status"`
			}
			if err := a.c.Get(ctx, resource, ns, ref.Name, &img); err != nil {
				if client.IsNotFound(err) {
					return nil, fmt.Errorf("%s %q not found", ref.Kind, ref.Name)
				}
				return nil, err
			}
			if img.Status.Phase != v1alpha1.ImagePhaseReady {
				return nil, fmt.Errorf("%s %q is %s, not Ready", ref.Kind, ref.Name, orNone(string(img.Status.Phase)))
			}
			if err := storage.CheckUID(img.Metadata.UID); err != nil {
				return nil, err
			}
			d.ID = short + ref.Name
			p, err := a.imageFile(ctx, resource, ns, ref.Name, img.Metadata.UID, img.Status.SHA256)
			if err != nil {
				return nil, fmt.Errorf("%s %q: %w", ref.Kind, ref.Name, err)
			}
			d.Path = p
			d.Format = storage.DriveFormat(img.Status.Format)
			if d.Format == "" {
				d.Format = qemu.FormatRaw
			}
			d.ReadOnly = true
			d.CDROM = img.Status.CDROM
		default:
			return nil, fmt.Errorf("block device kind %q is not supported", ref.Kind)
		}
		if _, err := os.Stat(d.Path); err != nil {
			return nil, fmt.Errorf("%s %q: its file is missing: %w", ref.Kind, ref.Name, err)
		}
		out = append(out, d)
	}
	return out, nil
}

func orNone(s string) string {
	if s == "" {
		return "not provisioned yet"
	}
	return s
}

func serialOf(uid string) string {
	s := strings.ReplaceAll(uid, "-", "")
	if len(s) > 20 {
		s = s[:20]
	}
	return s
}

// backingChain reads the backing chain of a disk the disk controller made. Only files
// inside the data dir's images and pools directories are accepted as layers.
func (a *Agent) backingChain(ctx context.Context, path string) ([]qemu.BackingFile, error) {
	var chain []qemu.BackingFile
	cur, format := path, qemu.FormatQCOW2
	for depth := 0; ; depth++ {
		if format != qemu.FormatQCOW2 {
			return chain, nil
		}
		info, err := readQCOW2Link(cur)
		if err != nil {
			return nil, err
		}
		if info.DataFile {
			return nil, fmt.Errorf("%s has an external data file, which is not allowed", cur)
		}
		if info.BackingFile == "" {
			return chain, nil
		}
		if depth >= qemu.MaxBackingDepth {
			return nil, fmt.Errorf("%s: backing chain deeper than %d", path, qemu.MaxBackingDepth)
		}
		b := filepath.Clean(info.BackingFile)
		if !filepath.IsAbs(b) {
			b = filepath.Join(filepath.Dir(cur), b)
		}
		if !a.insideDataDir(b) {
			return nil, fmt.Errorf("%s names backing file %q outside the data directory", cur, info.BackingFile)
		}
		bf := info.BackingFormat
		if bf != qemu.FormatQCOW2 && bf != qemu.FormatRaw {
			return nil, fmt.Errorf("%s: backing file format %q is not qcow2 or raw", cur, bf)
		}
		chain = append(chain, qemu.BackingFile{Path: b, Format: bf})
		cur, format = b, bf
	}
}

func (a *Agent) insideDataDir(p string) bool {
	for _, dir := range []string{filepath.Join(a.cfg.DataDir, "images"), filepath.Join(a.cfg.DataDir, "pools")} {
		if rel, err := filepath.Rel(dir, p); err == nil && !strings.HasPrefix(rel, "..") && rel != "." {
			return true
		}
	}
	return false
}

// nvramFileName is a VM's UEFI variable store in its run directory.
const nvramFileName = "efivars.fd"

// ensureNVRAM makes the VM's UEFI variable store from template on first boot and remembers
// which template it came from (path + ".template"). When the template changes (EFI to
// EFIWithSecureBoot or back), the store is made anew: a store from the plain template has no
// Secure Boot keys, so keeping it would silently leave Secure Boot off. A store made before
// the marker existed is taken to come from the current template.
func ensureNVRAM(template, path string) (replaced bool, err error) {
	marker := path + ".template"
	prev, merr := os.ReadFile(marker)
	_, serr := os.Stat(path)
	switch {
	case serr == nil && merr == nil && string(prev) == template:
		return false, nil
	case serr == nil && merr == nil:
		if err := os.Remove(path); err != nil {
			return false, err
		}
		replaced = true
	case serr == nil: // no marker yet
		return false, os.WriteFile(marker, []byte(template), 0o600)
	}
	if err := copyIfMissing(template, path); err != nil {
		return false, err
	}
	return replaced, os.WriteFile(marker, []byte(template), 0o600)
}

// copyIfMissing copies src to dst (0600) unless dst exists, through a temporary file.
func copyIfMissing(src, dst string) error {
	if _, err := os.Stat(dst); err == nil {
		return nil
	}
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	tmp := dst + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// guestReadyCondition is the GuestReady condition: whether the guest has written to its
// serial console since QEMU started or was reset.
func guestReadyCondition(spoke bool) v1alpha1.Condition {
	if spoke {
		return v1alpha1.Condition{Type: v1alpha1.VMConditionGuestReady, Status: v1alpha1.ConditionTrue, Reason: "SerialOutput",
			Message: "the guest has written to its serial console"}
	}
	return v1alpha1.Condition{Type: v1alpha1.VMConditionGuestReady, Status: v1alpha1.ConditionFalse, Reason: "NoSerialOutputYet",
		Message: "QEMU runs, but the guest has not written to its serial console yet (a guest that never uses it, such as Windows, stays so)"}
}

// noteGuestOutput sets GuestReady once the guest of a running instance writes to its serial
// console.
func (a *Agent) noteGuestOutput(ctx context.Context, in *instance) {
	if strings.HasPrefix(string(in.key), orphanPrefix) {
		return
	}
	ns, name := in.key.Split()
	_, err := patchVMStatus(ctx, a.c, ns, name, in.uid, agentStatusFields, func(v *v1alpha1.VirtualMachine) error {
		if v.Status.NodeName != a.cfg.NodeName || !in.guestOutput.Load() {
			return errNoChange
		}
		v1alpha1.SetCondition(&v.Status.Conditions, guestReadyCondition(true))
		return nil
	})
	if err := ignoreGone(err); err != nil && ctx.Err() == nil {
		a.log.Warn("could not set GuestReady", "vm", string(in.key), "err", err)
	}
}

// startedWithoutVNC says whether the QEMU process pid was started with -vnc none (VNC is then
// handed over by the agent after start).
func startedWithoutVNC(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	return err == nil && strings.Contains("\x00"+string(b), "\x00-vnc\x00none\x00")
}
