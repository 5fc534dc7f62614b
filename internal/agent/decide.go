package agent

import (
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/qemu/qmp"
)

// The reconcile of a VM is a loop: look at the host (Observed) and at the VM object
// (Desired), let Decide pick the next Action, carry it out (reconcile.go). Decide is pure:
// everything it needs is in its arguments, so it is tested by tables (decide_test.go).

// Process is what the agent sees of a VM's QEMU process.
type Process int

const (
	// ProcessNone: no QEMU of the VM runs, and the agent tracks none.
	ProcessNone Process = iota
	// ProcessFound: a QEMU of the VM runs that the agent does not track (an earlier agent
	// started it).
	ProcessFound
	// ProcessExited: the QEMU the agent tracks is gone, and its exit is not handled yet.
	ProcessExited
	// ProcessRunning: the QEMU the agent tracks runs.
	ProcessRunning
)

// Exit says what handling an exit came to, within one reconcile.
type Exit int

const (
	// ExitNotHandled: no exit was handled.
	ExitNotHandled Exit = iota
	// ExitRecorded: lastExit was written (or the VM is being deleted): QEMU stays stopped.
	ExitRecorded
	// ExitRelaunch: the exit was the first half of a restart: QEMU starts again.
	ExitRelaunch
)

// Monitor is what the agent knows of QEMU's QMP connection and run state.
type Monitor int

const (
	// MonitorUnknown: not looked at yet.
	MonitorUnknown Monitor = iota
	// MonitorUnreachable: no QMP connection could be made.
	MonitorUnreachable
	// MonitorStatusFailed: connected, but query-status failed.
	MonitorStatusFailed
	// MonitorUp: connected; Observed.Status holds the run state.
	MonitorUp
)

// Observed is what the agent sees of one VM's QEMU on this host.
type Observed struct {
	Process Process
	Exit    Exit
	// Quitting: the agent has asked QEMU to quit.
	Quitting bool
	// Restarting: a graceful restart waits for the guest to power off.
	Restarting bool
	Monitor    Monitor
	// Ended: QEMU was gone by the time the monitor was looked at.
	Ended bool
	// Disconnected: query-status failed because the QMP connection broke.
	Disconnected bool
	// Status is QEMU's run state (qmp.Status*) with MonitorUp.
	Status string
	// HibernationFailed names the operation whose hibernation of this QEMU could not save
	// the guest's state (the guest runs on until the VM controller answers).
	HibernationFailed string
	// HeldStill: a snapshot or backup has paused the guest for its instant (it resumes it).
	HeldStill bool
}

// Binding is where the VM object says the VM runs.
type Binding int

const (
	BoundHere Binding = iota
	Unbound
	BoundElsewhere
)

// Desired is what the VM object asks of this node.
type Desired struct {
	Binding  Binding
	Deleting bool
	Phase    v1alpha1.VirtualMachinePhase
	// Power is status.powerRequest (nil: the VM controller has not decided yet).
	Power             *v1alpha1.VMPowerRequest
	ObservedRestartID string
	// Exited: status.lastExit is set.
	Exited bool
	// MigratingIn: a live migration to this node is under way; MigratingOut: one from this
	// node has its target ready (or is transferring).
	MigratingIn, MigratingOut bool
}

// desiredOf reads a VM object for the agent of node.
func desiredOf(vm *v1alpha1.VirtualMachine, node string) Desired {
	d := Desired{Deleting: vm.DeletionTimestamp != nil, Phase: vm.Status.Phase, Power: vm.Status.PowerRequest,
		ObservedRestartID: vm.Status.ObservedRestartID, Exited: vm.Status.LastExit != nil}
	switch vm.Status.NodeName {
	case node:
		d.Binding = BoundHere
	case "":
		d.Binding = Unbound
	default:
		d.Binding = BoundElsewhere
	}
	if m := vm.Status.MigrationState; m.Active() {
		switch {
		case d.Binding == BoundElsewhere && m.Target.Node == node && m.Phase != v1alpha1.MigrationPhaseScheduling:
			d.MigratingIn = true
		case d.Binding == BoundHere && m.Source.Node == node && (m.Phase == v1alpha1.MigrationPhaseTargetReady || m.Phase == v1alpha1.MigrationPhaseTransferring):
			d.MigratingOut = true
		}
	}
	return d
}

// ActionKind is what the agent does next for a VM.
type ActionKind int

const (
	ActNone           ActionKind = iota
	ActRequeue                   // look again after Action.After
	ActObserveQEMU               // connect QMP if needed and query QEMU's run state, then decide again
	ActForget                    // stop tracking an exited QEMU of a VM that is not bound here
	ActClaim                     // an unbound VM runs here: bind it to this node again
	ActEvict                     // a VM bound to another node runs here: stop it at once
	ActHandleExit                // record the exit of QEMU, then decide again
	ActFinishDelete              // remove the run directory of a deleted VM and release it
	ActAdopt                     // track a QEMU an earlier agent started
	ActRecordLostExit            // QEMU ended while no agent watched it: record it with Action.Reason
	ActRelease                   // a stopped VM gives its node binding back
	ActStart                     // start QEMU (start.go)
	ActTerminate                 // a deleted VM: phase Terminating, then a graceful stop
	ActStop                      // stop QEMU (Action.Force, Action.Reason)
	ActCrashed                   // the guest panicked or QEMU failed: quit, recorded as crashed
	ActStatusError               // query-status failed: return its error
	ActRestart                   // carry out a new restartID
	ActRun                       // QEMU runs as asked: pause or resume it and record it
	ActMigrateIn                 // be the target of a live migration (migrate.go)
	ActMigrateOut                // be the source of a live migration (migrate.go)
	ActHibernate                 // save the guest's RAM state, then end QEMU (hibernate.go)
)

// Action is Decide's answer.
type Action struct {
	Kind ActionKind
	// After is the delay of ActRequeue.
	After time.Duration
	// Force and Reason qualify ActStop (Reason also ActRecordLostExit and ActCrashed, whose
	// Reason is the QEMU run state that says what failed).
	Force  bool
	Reason string
	// TakeOver: the stop is a forced restart taking over a graceful one (an event says so).
	TakeOver bool
	// Phase, Pause and Resume qualify ActRun: the phase to record, and whether to stop or
	// resume the guest first.
	Phase         v1alpha1.VirtualMachinePhase
	Pause, Resume bool
}

// Decide picks what the agent does next for one VM.
func Decide(o Observed, d Desired) Action {
	switch {
	case d.Binding != BoundHere:
		return decideNotHere(o, d)
	case o.Process == ProcessExited:
		return Action{Kind: ActHandleExit}
	case o.Process == ProcessRunning:
		return decideRunning(o, d)
	}
	return decideStopped(o, d)
}

// decideNotHere handles a VM not bound to this node.
func decideNotHere(o Observed, d Desired) Action {
	switch {
	case d.MigratingIn && !d.Deleting:
		return Action{Kind: ActMigrateIn}
	case o.Process == ProcessNone || o.Process == ProcessFound:
		return Action{}
	case o.Process == ProcessExited:
		return Action{Kind: ActForget}
	case d.Binding == Unbound && !d.Deleting:
		return Action{Kind: ActClaim}
	}
	return Action{Kind: ActEvict, Force: true, Reason: v1alpha1.ExitStopped}
}

// decideStopped handles a VM bound here whose QEMU the agent does not run.
func decideStopped(o Observed, d Desired) Action {
	pr := d.Power
	switch {
	case o.Exit == ExitRecorded && d.Deleting:
		// No status write happened (the object is going away), so no event would bring
		// another reconcile: finish the deletion now.
		return Action{Kind: ActFinishDelete}
	case o.Exit == ExitRecorded:
		return Action{} // the status write brings the next reconcile
	case o.Process == ProcessFound:
		return Action{Kind: ActAdopt} // never a second QEMU
	case d.Deleting:
		return Action{Kind: ActFinishDelete}
	case o.Exit != ExitRelaunch && runsPhase(d.Phase):
		// The status says it runs, but there is no process: it ended while no agent
		// watched it.
		if d.Phase == v1alpha1.VMPhaseStopping || (pr != nil && pr.State == v1alpha1.PowerStateStopped) {
			return Action{Kind: ActRecordLostExit, Reason: v1alpha1.ExitStopped}
		}
		return Action{Kind: ActRecordLostExit, Reason: v1alpha1.ExitCrashed}
	case pr == nil:
		return Action{}
	case !wantsRunning(pr):
		return Action{Kind: ActRelease}
	case o.Exit == ExitRelaunch || needStart(d):
		return Action{Kind: ActStart}
	}
	return Action{} // it exited; the VM controller decides what comes next
}

// runsPhase says whether a phase says that QEMU runs.
func runsPhase(p v1alpha1.VirtualMachinePhase) bool {
	switch p {
	case v1alpha1.VMPhaseRunning, v1alpha1.VMPhasePause, v1alpha1.VMPhaseStopping, v1alpha1.VMPhaseMigrating, v1alpha1.VMPhaseDegraded:
		return true
	}
	return false
}

// needStart says whether a stopped VM that should run may be started: it never ran, the
// controller asked for a new start (a RestartID the agent has not carried out), or a start
// was begun but not finished.
func needStart(d Desired) bool {
	return !d.Exited || d.Power.RestartID != d.ObservedRestartID || d.Phase == v1alpha1.VMPhaseStarting
}

// decideRunning handles a VM bound here whose QEMU runs.
func decideRunning(o Observed, d Desired) Action {
	pr := d.Power
	switch {
	case d.Deleting:
		return Action{Kind: ActTerminate}
	case o.Monitor == MonitorUnknown:
		return Action{Kind: ActObserveQEMU}
	case o.Monitor == MonitorUnreachable && (o.Quitting || o.Ended):
		return Action{Kind: ActRequeue, After: 250 * time.Millisecond}
	case o.Monitor == MonitorUnreachable && pr != nil && pr.State == v1alpha1.PowerStateStopped && pr.Force:
		return Action{Kind: ActStop, Force: true, Reason: v1alpha1.ExitStopped}
	case o.Monitor == MonitorUnreachable:
		return Action{Kind: ActRequeue, After: 2 * time.Second}
	case o.Monitor == MonitorStatusFailed && (o.Ended || o.Disconnected):
		// QEMU is going away (or the socket broke): the exit or a reconnect follows.
		return Action{Kind: ActRequeue, After: 250 * time.Millisecond}
	case o.Monitor == MonitorStatusFailed:
		return Action{Kind: ActStatusError}
	}
	switch o.Status {
	case qmp.StatusShutdown:
		// The guest powered off (QEMU waits, paused, with -action shutdown=pause).
		if o.Restarting || !wantsRunning(pr) {
			return Action{Kind: ActStop, Force: true, Reason: v1alpha1.ExitStopped}
		}
		return Action{Kind: ActStop, Force: true, Reason: v1alpha1.ExitGuestShutdown}
	case qmp.StatusGuestPanicked, qmp.StatusInternalError:
		return Action{Kind: ActCrashed, Reason: o.Status}
	}
	if d.MigratingOut {
		// The guest's state is QEMU's migration's until it ends: no pause, resume or stop.
		return Action{Kind: ActMigrateOut}
	}
	switch {
	case pr == nil:
		return Action{}
	case !wantsRunning(pr) && pr.Hibernate && !o.Quitting:
		if o.HibernationFailed != "" && o.HibernationFailed == pr.Operation {
			return Action{} // reported; the VM controller asks for Running again
		}
		return Action{Kind: ActHibernate}
	case !wantsRunning(pr) && pr.Hibernate:
		// QEMU quits (the state is saved): wait for it, killed after the kill timeout.
		return Action{Kind: ActStop, Force: true, Reason: v1alpha1.ExitStopped}
	case !wantsRunning(pr):
		return Action{Kind: ActStop, Force: pr.Force, Reason: v1alpha1.ExitStopped}
	case o.Restarting:
		// A graceful restart waits for the guest; a forced restart asked for meanwhile (a new
		// RestartID with force) ends the wait at once: QEMU quits and starts again.
		force := pr.Force && pr.RestartID != d.ObservedRestartID
		return Action{Kind: ActStop, Force: force, Reason: v1alpha1.ExitStopped, TakeOver: force && !o.Quitting}
	case pr.RestartID != d.ObservedRestartID:
		return Action{Kind: ActRestart}
	case pr.State == v1alpha1.PowerStatePaused:
		return Action{Kind: ActRun, Phase: v1alpha1.VMPhasePause, Pause: o.Status == qmp.StatusRunning}
	case o.HeldStill && o.Status != qmp.StatusRunning:
		// Paused for a snapshot's or backup's instant: whoever paused it resumes it.
		return Action{Kind: ActRequeue, After: 100 * time.Millisecond}
	}
	// prelaunch (a start the agent did not finish), paused by us, or stopped for another
	// reason (e.g. an I/O error): resume.
	return Action{Kind: ActRun, Phase: v1alpha1.VMPhaseRunning, Resume: o.Status != qmp.StatusRunning}
}
