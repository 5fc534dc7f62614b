package agent

import (
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/qemu/qmp"
)

func power(state string, force bool, restartID string) *v1alpha1.VMPowerRequest {
	return &v1alpha1.VMPowerRequest{State: state, Force: force, RestartID: restartID}
}

// TestDecide: what the agent does for each combination of what it sees of QEMU and what
// the VM object asks.
func TestDecide(t *testing.T) {
	const (
		running  = v1alpha1.PowerStateRunning
		paused   = v1alpha1.PowerStatePaused
		stopped  = v1alpha1.PowerStateStopped
		stopReas = v1alpha1.ExitStopped
	)
	none := Observed{Process: ProcessNone}
	found := Observed{Process: ProcessFound}
	exited := Observed{Process: ProcessExited}
	qemuRuns := Observed{Process: ProcessRunning}
	up := func(status string) Observed {
		return Observed{Process: ProcessRunning, Monitor: MonitorUp, Status: status}
	}
	here := func(phase v1alpha1.VirtualMachinePhase, pr *v1alpha1.VMPowerRequest) Desired {
		return Desired{Binding: BoundHere, Phase: phase, Power: pr, Exited: true}
	}
	with := func(o Observed, f func(*Observed)) Observed { f(&o); return o }
	want := func(d Desired, f func(*Desired)) Desired { f(&d); return d }
	runningVM := here(v1alpha1.VMPhaseRunning, power(running, false, ""))
	stoppedVM := here(v1alpha1.VMPhaseStopped, power(running, false, ""))

	cases := []struct {
		name string
		o    Observed
		d    Desired
		want Action
	}{
		// Not bound here.
		{"elsewhere, nothing here", none, Desired{Binding: BoundElsewhere}, Action{}},
		{"elsewhere, untracked QEMU is not ours to adopt", found, Desired{Binding: BoundElsewhere}, Action{}},
		{"elsewhere, exited here", exited, Desired{Binding: BoundElsewhere}, Action{Kind: ActForget}},
		{"unbound but runs here", qemuRuns, Desired{Binding: Unbound}, Action{Kind: ActClaim}},
		{"unbound, runs here, deleted", qemuRuns, Desired{Binding: Unbound, Deleting: true}, Action{Kind: ActEvict, Force: true, Reason: stopReas}},
		{"bound elsewhere, runs here", qemuRuns, Desired{Binding: BoundElsewhere}, Action{Kind: ActEvict, Force: true, Reason: stopReas}},

		// Live migration: the target prepares and keeps its QEMU; the source leaves the
		// guest's state to QEMU's migration (never a cont of a QEMU in postmigrate).
		{"migration target, nothing here yet", none, Desired{Binding: BoundElsewhere, MigratingIn: true}, Action{Kind: ActMigrateIn}},
		{"migration target, QEMU waits", qemuRuns, Desired{Binding: BoundElsewhere, MigratingIn: true}, Action{Kind: ActMigrateIn}},
		{"migration target, QEMU gone", exited, Desired{Binding: BoundElsewhere, MigratingIn: true}, Action{Kind: ActMigrateIn}},
		{"migration target, VM deleted", qemuRuns, Desired{Binding: BoundElsewhere, MigratingIn: true, Deleting: true}, Action{Kind: ActEvict, Force: true, Reason: stopReas}},
		{"migration source, transfer under way", up(qmp.StatusRunning), want(runningVM, func(d *Desired) { d.MigratingOut = true }), Action{Kind: ActMigrateOut}},
		{"migration source, stream completed", up(qmp.StatusPostMigrate), want(runningVM, func(d *Desired) { d.MigratingOut = true }), Action{Kind: ActMigrateOut}},

		// Hibernation: the state is saved (whatever QEMU's run state on the way), then QEMU
		// quits; a failed save waits for the controller's answer instead of trying again.
		{"hibernate, running", up(qmp.StatusRunning), want(runningVM, func(d *Desired) { d.Power = &v1alpha1.VMPowerRequest{State: stopped, Hibernate: true, Operation: "h"} }), Action{Kind: ActHibernate}},
		{"hibernate, saving", up(qmp.StatusFinishMigrate), want(runningVM, func(d *Desired) { d.Power = &v1alpha1.VMPowerRequest{State: stopped, Hibernate: true, Operation: "h"} }), Action{Kind: ActHibernate}},
		{"hibernate, saved and quitting", with(up(qmp.StatusPostMigrate), func(o *Observed) { o.Quitting = true }),
			want(runningVM, func(d *Desired) { d.Power = &v1alpha1.VMPowerRequest{State: stopped, Hibernate: true, Operation: "h"} }), Action{Kind: ActStop, Force: true, Reason: stopReas}},
		{"hibernate, failed", with(up(qmp.StatusPaused), func(o *Observed) { o.HibernationFailed = "h" }),
			want(runningVM, func(d *Desired) { d.Power = &v1alpha1.VMPowerRequest{State: stopped, Hibernate: true, Operation: "h"} }), Action{}},
		{"hibernate again after a failed one", with(up(qmp.StatusRunning), func(o *Observed) { o.HibernationFailed = "h" }),
			want(runningVM, func(d *Desired) { d.Power = &v1alpha1.VMPowerRequest{State: stopped, Hibernate: true, Operation: "h2"} }), Action{Kind: ActHibernate}},
		// A snapshot with RAM or a suspend-mode backup pauses the guest for its instant: the
		// reconcile does not resume it under them, but still stops it when asked.
		{"held still for a snapshot", with(up(qmp.StatusPaused), func(o *Observed) { o.HeldStill = true }), runningVM, Action{Kind: ActRequeue, After: 100 * time.Millisecond}},
		{"held still, a stop comes", with(up(qmp.StatusPaused), func(o *Observed) { o.HeldStill = true }), want(runningVM, func(d *Desired) { d.Power = power(stopped, true, "") }),
			Action{Kind: ActStop, Force: true, Reason: stopReas}},
		{"paused, not held: resumed", up(qmp.StatusPaused), runningVM, Action{Kind: ActRun, Phase: v1alpha1.VMPhaseRunning, Resume: true}},
		{"migration over, source paused by it resumes", up(qmp.StatusPostMigrate), runningVM, Action{Kind: ActRun, Phase: v1alpha1.VMPhaseRunning, Resume: true}},
		{"migration source, guest panicked", up(qmp.StatusGuestPanicked), want(runningVM, func(d *Desired) { d.MigratingOut = true }), Action{Kind: ActCrashed, Reason: qmp.StatusGuestPanicked}},

		// Bound here, no QEMU tracked.
		{"exited", exited, runningVM, Action{Kind: ActHandleExit}},
		{"exit recorded", with(none, func(o *Observed) { o.Exit = ExitRecorded }), runningVM, Action{}},
		{"exit recorded, deleted", with(none, func(o *Observed) { o.Exit = ExitRecorded }), want(runningVM, func(d *Desired) { d.Deleting = true }), Action{Kind: ActFinishDelete}},
		{"untracked QEMU", found, runningVM, Action{Kind: ActAdopt}},
		{"untracked QEMU of a deleted VM is adopted first", found, want(runningVM, func(d *Desired) { d.Deleting = true }), Action{Kind: ActAdopt}},
		{"deleted, nothing runs", none, want(stoppedVM, func(d *Desired) { d.Deleting = true }), Action{Kind: ActFinishDelete}},
		{"status says running, no process", none, runningVM, Action{Kind: ActRecordLostExit, Reason: v1alpha1.ExitCrashed}},
		{"status says paused, no process", none, here(v1alpha1.VMPhasePause, power(paused, false, "")), Action{Kind: ActRecordLostExit, Reason: v1alpha1.ExitCrashed}},
		{"status says stopping, no process", none, here(v1alpha1.VMPhaseStopping, power(running, false, "")), Action{Kind: ActRecordLostExit, Reason: stopReas}},
		{"asked to stop, no process", none, here(v1alpha1.VMPhaseRunning, power(stopped, false, "")), Action{Kind: ActRecordLostExit, Reason: stopReas}},
		{"first half of a restart done", with(none, func(o *Observed) { o.Exit = ExitRelaunch }), runningVM, Action{Kind: ActStart}},
		{"no power request yet", none, here(v1alpha1.VMPhasePending, nil), Action{}},
		{"stopped and to stay so", none, here(v1alpha1.VMPhaseStopped, power(stopped, false, "")), Action{Kind: ActRelease}},
		{"never ran", none, want(here(v1alpha1.VMPhasePending, power(running, false, "")), func(d *Desired) { d.Exited = false }), Action{Kind: ActStart}},
		{"never ran, to start paused", none, want(here(v1alpha1.VMPhasePending, power(paused, false, "")), func(d *Desired) { d.Exited = false }), Action{Kind: ActStart}},
		{"exited, no new start asked", none, stoppedVM, Action{}},
		{"exited, new start asked", none, here(v1alpha1.VMPhaseStopped, power(running, false, "r2")), Action{Kind: ActStart}},
		{"start begun, not finished", none, here(v1alpha1.VMPhaseStarting, power(running, false, "")), Action{Kind: ActStart}},

		// Bound here, QEMU runs.
		{"deleted: terminate before looking at QMP", qemuRuns, want(runningVM, func(d *Desired) { d.Deleting = true }), Action{Kind: ActTerminate}},
		{"monitor not looked at", qemuRuns, runningVM, Action{Kind: ActObserveQEMU}},
		{"no QMP, quitting", with(qemuRuns, func(o *Observed) { o.Monitor, o.Quitting = MonitorUnreachable, true }), runningVM, Action{Kind: ActRequeue, After: 250 * time.Millisecond}},
		{"no QMP, gone meanwhile", with(qemuRuns, func(o *Observed) { o.Monitor, o.Ended = MonitorUnreachable, true }), runningVM, Action{Kind: ActRequeue, After: 250 * time.Millisecond}},
		{"no QMP, forced stop", with(qemuRuns, func(o *Observed) { o.Monitor = MonitorUnreachable }), here(v1alpha1.VMPhaseRunning, power(stopped, true, "")), Action{Kind: ActStop, Force: true, Reason: stopReas}},
		{"no QMP, graceful stop waits", with(qemuRuns, func(o *Observed) { o.Monitor = MonitorUnreachable }), here(v1alpha1.VMPhaseRunning, power(stopped, false, "")), Action{Kind: ActRequeue, After: 2 * time.Second}},
		{"no QMP, running", with(qemuRuns, func(o *Observed) { o.Monitor = MonitorUnreachable }), runningVM, Action{Kind: ActRequeue, After: 2 * time.Second}},
		{"query-status: disconnected", with(qemuRuns, func(o *Observed) { o.Monitor, o.Disconnected = MonitorStatusFailed, true }), runningVM, Action{Kind: ActRequeue, After: 250 * time.Millisecond}},
		{"query-status: QEMU gone", with(qemuRuns, func(o *Observed) { o.Monitor, o.Ended = MonitorStatusFailed, true }), runningVM, Action{Kind: ActRequeue, After: 250 * time.Millisecond}},
		{"query-status failed", with(qemuRuns, func(o *Observed) { o.Monitor = MonitorStatusFailed }), runningVM, Action{Kind: ActStatusError}},
		{"guest powered off", up(qmp.StatusShutdown), runningVM, Action{Kind: ActStop, Force: true, Reason: v1alpha1.ExitGuestShutdown}},
		{"guest powered off for a graceful restart", with(up(qmp.StatusShutdown), func(o *Observed) { o.Restarting = true }), runningVM, Action{Kind: ActStop, Force: true, Reason: stopReas}},
		{"guest powered off after a stop", up(qmp.StatusShutdown), here(v1alpha1.VMPhaseStopping, power(stopped, false, "")), Action{Kind: ActStop, Force: true, Reason: stopReas}},
		{"guest powered off, no power request", up(qmp.StatusShutdown), here(v1alpha1.VMPhaseRunning, nil), Action{Kind: ActStop, Force: true, Reason: stopReas}},
		{"guest panicked", up(qmp.StatusGuestPanicked), runningVM, Action{Kind: ActCrashed, Reason: qmp.StatusGuestPanicked}},
		{"internal error", up(qmp.StatusInternalError), runningVM, Action{Kind: ActCrashed, Reason: qmp.StatusInternalError}},
		{"no power request", up(qmp.StatusRunning), here(v1alpha1.VMPhaseRunning, nil), Action{}},
		{"graceful stop", up(qmp.StatusRunning), here(v1alpha1.VMPhaseRunning, power(stopped, false, "")), Action{Kind: ActStop, Reason: stopReas}},
		{"forced stop", up(qmp.StatusRunning), here(v1alpha1.VMPhaseRunning, power(stopped, true, "")), Action{Kind: ActStop, Force: true, Reason: stopReas}},
		{"graceful restart waits", with(up(qmp.StatusRunning), func(o *Observed) { o.Restarting = true }), runningVM, Action{Kind: ActStop, Reason: stopReas}},
		{"forced restart takes over", with(up(qmp.StatusRunning), func(o *Observed) { o.Restarting = true }),
			here(v1alpha1.VMPhaseRunning, power(running, true, "r2")), Action{Kind: ActStop, Force: true, Reason: stopReas, TakeOver: true}},
		{"forced restart took over already", with(up(qmp.StatusRunning), func(o *Observed) { o.Restarting, o.Quitting = true, true }),
			here(v1alpha1.VMPhaseRunning, power(running, true, "r2")), Action{Kind: ActStop, Force: true, Reason: stopReas}},
		{"new restart", up(qmp.StatusRunning), here(v1alpha1.VMPhaseRunning, power(running, false, "r2")), Action{Kind: ActRestart}},
		{"pause", up(qmp.StatusRunning), here(v1alpha1.VMPhaseRunning, power(paused, false, "")), Action{Kind: ActRun, Phase: v1alpha1.VMPhasePause, Pause: true}},
		{"stays paused", up(qmp.StatusPaused), here(v1alpha1.VMPhasePause, power(paused, false, "")), Action{Kind: ActRun, Phase: v1alpha1.VMPhasePause}},
		{"start paused, prelaunch", up(qmp.StatusPrelaunch), here(v1alpha1.VMPhaseStarting, power(paused, false, "")), Action{Kind: ActRun, Phase: v1alpha1.VMPhasePause}},
		{"resume", up(qmp.StatusPaused), here(v1alpha1.VMPhasePause, power(running, false, "")), Action{Kind: ActRun, Phase: v1alpha1.VMPhaseRunning, Resume: true}},
		{"unfinished start", up(qmp.StatusPrelaunch), here(v1alpha1.VMPhaseStarting, power(running, false, "")), Action{Kind: ActRun, Phase: v1alpha1.VMPhaseRunning, Resume: true}},
		{"I/O error", up(qmp.StatusIOError), runningVM, Action{Kind: ActRun, Phase: v1alpha1.VMPhaseRunning, Resume: true}},
		{"runs as asked", up(qmp.StatusRunning), runningVM, Action{Kind: ActRun, Phase: v1alpha1.VMPhaseRunning}},
	}
	for _, c := range cases {
		if got := Decide(c.o, c.d); got != c.want {
			t.Errorf("%s: Decide = %+v, want %+v", c.name, got, c.want)
		}
	}
}

// TestDesiredOf: the binding, deletion and power request are read from the VM object.
func TestDesiredOf(t *testing.T) {
	now := v1alpha1.NewTime(time.Now())
	vm := &v1alpha1.VirtualMachine{}
	vm.Status.NodeName = "node1"
	vm.Status.PowerRequest = power(v1alpha1.PowerStateRunning, false, "r1")
	vm.Status.ObservedRestartID = "r0"
	vm.Status.Phase = v1alpha1.VMPhaseRunning
	d := desiredOf(vm, "node1")
	if d.Binding != BoundHere || d.Deleting || d.Exited || d.Power != vm.Status.PowerRequest || d.ObservedRestartID != "r0" || d.Phase != v1alpha1.VMPhaseRunning {
		t.Errorf("desiredOf = %+v", d)
	}
	vm.DeletionTimestamp = &now
	vm.Status.LastExit = &v1alpha1.VMExit{Reason: v1alpha1.ExitStopped}
	if d := desiredOf(vm, "node2"); d.Binding != BoundElsewhere || !d.Deleting || !d.Exited {
		t.Errorf("desiredOf on another node = %+v", d)
	}
	vm.Status.NodeName = ""
	if d := desiredOf(vm, "node1"); d.Binding != Unbound {
		t.Errorf("desiredOf of an unbound VM = %+v", d)
	}
}
