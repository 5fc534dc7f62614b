package agent

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/qemu"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// release writes a stopped VM's phase and gives its node binding back, so the scheduler
// places it again when it is started.
func (a *Agent) release(ctx context.Context, vm *v1alpha1.VirtualMachine) error {
	if vm.Status.NodeName == a.cfg.NodeName && !wantsRunning(vm.Status.PowerRequest) && vm.DeletionTimestamp == nil {
		// The disk leases go first, so that a node the VM is placed on next finds them free.
		a.releaseDiskLeases(vm, "the VM stopped")
	}
	_, err := runtime.UpdateVMStatus(ctx, a.c, vm.Namespace, vm.Name, vm.UID, agentStatusFields, nil, func(v *v1alpha1.VirtualMachine) error {
		if v.Status.NodeName != a.cfg.NodeName || wantsRunning(v.Status.PowerRequest) || v.DeletionTimestamp != nil {
			return runtime.ErrNoChange
		}
		now := a.now()
		v.SetPhase(v1alpha1.VMPhaseStopped, now)
		v.Status.NodeName = ""
		v.Status.StateNodeName = a.hostStateNode(v.UID)
		setRunningCond(v, v1alpha1.ConditionFalse, "Stopped", "the VM is stopped")
		if ex := v.Status.LastExit; ex != nil {
			answerCrashWithStop(v, ex.Reason, now)
		}
		return nil
	})
	if err == nil {
		a.log.Info("VM stopped and released", "vm", vm.Namespace+"/"+vm.Name)
	}
	return ignoreGone(err)
}

// answerCrashWithStop records lastExit Stopped for a VM whose unplanned exit (reason) is
// answered by a user's stop operation (not a hibernation, whose failure the operation
// reports): the crash count and message belong to the events then, not to a VM that was asked
// to stop. A run policy that keeps a crashed VM stopped keeps its lastExit.
func answerCrashWithStop(v *v1alpha1.VirtualMachine, reason string, now v1alpha1.Time) {
	pr := v.Status.PowerRequest
	if unplanned(reason) && pr != nil && pr.Operation != "" && !wantsRunning(pr) && !pr.Hibernate {
		v.Status.LastExit = &v1alpha1.VMExit{Reason: v1alpha1.ExitStopped, Time: &now}
	}
}

// setRunningCond sets the Running condition; a VM whose QEMU does not run has no GuestReady
// or AgentReady, and no guest-reported addresses.
func setRunningCond(vm *v1alpha1.VirtualMachine, status, reason, msg string) {
	v1alpha1.SetCondition(&vm.Status.Conditions, v1alpha1.Condition{Type: v1alpha1.VMConditionRunning, Status: status, Reason: reason, Message: msg})
	if status != v1alpha1.ConditionTrue {
		v1alpha1.RemoveCondition(&vm.Status.Conditions, v1alpha1.VMConditionGuestReady)
		v1alpha1.RemoveCondition(&vm.Status.Conditions, v1alpha1.VMConditionAgentReady)
		clearGuestNetworks(vm.Status.Networks)
	}
}

func (a *Agent) writePhase(ctx context.Context, vm *v1alpha1.VirtualMachine, p v1alpha1.VirtualMachinePhase, more func(v *v1alpha1.VirtualMachine)) (*v1alpha1.VirtualMachine, error) {
	return runtime.UpdateVMStatus(ctx, a.c, vm.Namespace, vm.Name, vm.UID, agentStatusFields, nil, func(v *v1alpha1.VirtualMachine) error {
		if v.Status.NodeName != a.cfg.NodeName {
			return runtime.ErrNoChange
		}
		v.SetPhase(p, a.now())
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
	var startToRunning, createToRunning time.Duration // for the start histograms (metrics.go)
	out, err := runtime.UpdateVMStatus(ctx, a.c, vm.Namespace, vm.Name, vm.UID, agentStatusFields, nil, func(v *v1alpha1.VirtualMachine) error {
		startToRunning, createToRunning = 0, 0
		if v.Status.NodeName != a.cfg.NodeName {
			return runtime.ErrNoChange
		}
		now := a.now()
		was := v.Status.Phase
		v.SetPhase(phase, now)
		if was == v1alpha1.VMPhaseStarting && phase == v1alpha1.VMPhaseRunning {
			st := v.Status.Stats
			start := lastTransition(v, v1alpha1.VMPhaseStarting)
			if st.LaunchTimeDuration == nil {
				st.LaunchTimeDuration = &v1alpha1.VirtualMachineLaunchTimeDuration{}
			}
			if !start.IsZero() {
				st.LaunchTimeDuration.VirtualMachineStarting = now.Sub(start.Time).String()
				startToRunning = now.Sub(start.Time)
				if p := lastTransition(v, v1alpha1.VMPhasePending); !p.IsZero() && p.Before(start.Time) {
					st.LaunchTimeDuration.WaitingForDependencies = start.Sub(p.Time).String()
				} else if v.CreationTimestamp != nil && v.CreationTimestamp.Before(start.Time) && len(st.PhasesTransitions) <= 3 {
					st.LaunchTimeDuration.WaitingForDependencies = start.Sub(v.CreationTimestamp.Time).String()
				}
			}
			if st.LastStartTime == nil && v.CreationTimestamp != nil {
				createToRunning = now.Sub(v.CreationTimestamp.Time)
			}
			st.LastStartTime = &now
		}
		if phase == v1alpha1.VMPhasePause {
			setRunningCond(v, v1alpha1.ConditionTrue, ReasonPaused, "QEMU runs; the guest is paused")
		} else {
			setRunningCond(v, v1alpha1.ConditionTrue, ReasonRunning, "QEMU runs the guest")
		}
		v1alpha1.SetCondition(&v.Status.Conditions, a.emulationCondition(kvm))
		removeHibernatedCondition(v) // a running guest is not hibernated, resumed or not
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
		rs := loadRunSpec(in.runDir, v)
		running := &rs.Spec
		if res := runningResources(rs); res != nil {
			if old := v.Status.Resources; old != nil && old.Memory.Balloon != nil && res.Memory.Balloon != nil {
				res.Memory.Balloon.Actual = old.Memory.Balloon.Actual // memory.go keeps it
			}
			v.Status.Resources = res
		}
		rc := restartCondition(pendingChanges(running, &v.Spec))
		rc.ObservedGeneration = v.Generation // the VM controller restarts for this generation only
		v1alpha1.SetCondition(&v.Status.Conditions, rc)
		return nil
	})
	if err == nil {
		a.observeStart(startToRunning, createToRunning)
	}
	return out, err
}

// recordExit writes lastExit, phase Stopped and the Running condition; a VM that should stay
// stopped also gives its node binding back.
func (a *Agent) recordExit(ctx context.Context, vm *v1alpha1.VirtualMachine, rec exitRecord) error {
	now := a.now()
	v, err := runtime.UpdateVMStatus(ctx, a.c, vm.Namespace, vm.Name, vm.UID, agentStatusFields, nil, func(v *v1alpha1.VirtualMachine) error {
		if v.Status.NodeName != a.cfg.NodeName {
			return runtime.ErrNoChange
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
		v.SetPhase(v1alpha1.VMPhaseStopped, now)
		clearBlockDeviceRefs(v) // hotplug_disk.go
		msg := rec.Message
		if msg == "" {
			msg = exitMessage(rec.Reason)
		}
		setRunningCond(v, v1alpha1.ConditionFalse, rec.Reason, msg)
		switch {
		case rec.Hibernated:
			v1alpha1.SetCondition(&v.Status.Conditions, v1alpha1.Condition{Type: v1alpha1.VMConditionHibernated, Status: v1alpha1.ConditionTrue,
				Reason: ReasonHibernationSaved, Message: rec.Message})
		case rec.Reason != v1alpha1.ExitStartFailed:
			// A QEMU that ran (a resumed one whose Running was never written included): what
			// was saved before is spent.
			removeHibernatedCondition(v)
		}
		if pr := v.Status.PowerRequest; !wantsRunning(pr) {
			v.Status.NodeName = ""
			v.Status.StateNodeName = a.hostStateNode(v.UID)
			// A user's stop may have come while this start or run of a crash-looping VM was
			// under way.
			answerCrashWithStop(v, rec.Reason, now)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if v.Status.NodeName == "" {
		a.releaseDiskLeases(vm, "the VM exited ("+rec.Reason+")")
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
	_, err := runtime.UpdateVMStatus(ctx, a.c, ns, name, in.uid, agentStatusFields, nil, func(v *v1alpha1.VirtualMachine) error {
		if v.Status.NodeName != a.cfg.NodeName || !in.guestOutput.Load() {
			return runtime.ErrNoChange
		}
		v1alpha1.SetCondition(&v.Status.Conditions, guestReadyCondition(true))
		return nil
	})
	if err := ignoreGone(err); err != nil && ctx.Err() == nil {
		a.log.Warn("could not set GuestReady", "vm", string(in.key), "err", err)
	}
}

// runningResources is status.resources of a VM that runs as rs says (with the live changes
// made since its start); nil when rs has no valid CPU count.
func runningResources(rs *runSpec) *v1alpha1.VirtualMachineResources {
	running := &rs.Spec
	topo, err := qemu.HotplugTopology(rs.bootCores(), running.CPU.MaxCores)
	if err != nil {
		return nil
	}
	ran := &v1alpha1.VirtualMachine{Spec: *running}
	res := &v1alpha1.VirtualMachineResources{
		CPU: v1alpha1.VirtualMachineCPUStatus{Cores: running.CPU.Cores, CoreFraction: running.CPU.CoreFraction,
			RequestedCores: requestedCores(ran), Topology: v1alpha1.VirtualMachineCPUTopology{CoresPerSocket: topo.CoresPerSocket, Sockets: topo.Sockets}},
		Memory: v1alpha1.VirtualMachineMemoryStatus{Size: running.Memory.Size},
	}
	if running.CPU.MaxCores > rs.bootCores() {
		res.CPU.MaxCores, res.CPU.BootCores = running.CPU.MaxCores, rs.bootCores()
	}
	if boot := rs.bootMemory(); memoryBytes(running.Memory.MaxSize) > memoryBytes(boot) {
		res.Memory.MaxSize = running.Memory.MaxSize
		res.Memory.BootSize = boot
		res.Memory.Hotplugged = rs.HotpluggedMemory
		if res.Memory.Hotplugged == "" {
			res.Memory.Hotplugged = "0"
		}
	}
	if rs.MemoryPadKiB > 0 {
		res.Memory.Padding = v1alpha1.Quantity(strconv.FormatInt(rs.MemoryPadKiB, 10) + "Ki")
	}
	if rs.Balloon {
		// Until memory.go reads the balloon: the guest has all it booted with.
		res.Memory.Balloon = &v1alpha1.VirtualMachineBalloonStatus{Actual: canonicalMemory(rs.bootMemory()), Floor: rs.BalloonFloor,
			FreePageReporting: rs.BalloonReporting}
	}
	return res
}
