package vm

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// PausedAnnotation pauses a VM: with "true" the controller asks for power state Paused
// (the vCPUs stop, memory stays), without it (or with any other value) Running again.
// VirtualMachineOperation has no pause type, and users do not write status, so pausing is
// an annotation on the VM (`rakhsh vm pause|resume NAME` sets and removes it).
const PausedAnnotation = "virtualization.rakhsh.io/paused"

// Backoff bounds of restarts after crashes and failed starts: BaseBackoff doubling per
// consecutive failure (lastExit.count) up to MaxBackoff.
const (
	DefaultBaseBackoff = time.Second
	DefaultMaxBackoff  = 5 * time.Minute
)

// opUpdate is a new status for one operation.
type opUpdate struct {
	name    string
	phase   v1alpha1.VMOPPhase
	reason  string // reason of the Completed condition
	message string
	// signal sets SignalSent=True, with signalAt (the decision's time) as its transition
	// time: the power request is written after the decision and before the operation, so
	// an agent that fails the start at once reports an exit later than signalAt (on one
	// clock; progress compares the two), not between the two writes.
	signal   bool
	signalAt time.Time
}

// decision is what the policy wants written.
type decision struct {
	power   *v1alpha1.VMPowerRequest
	requeue time.Duration
	ops     []opUpdate
	// backoff is set while a crashed VM waits for its automatic restart.
	backoff *backoffState
}

// backoffState is a pending automatic restart after unplanned exits.
type backoffState struct {
	until time.Time
	exit  v1alpha1.VMExit
}

// condition is the VM's RestartBackoff condition for b.
func (b *backoffState) condition() v1alpha1.Condition {
	msg := fmt.Sprintf("restart at %s after %d unplanned exit(s) in a row",
		b.until.UTC().Format(time.RFC3339), b.exit.Count)
	if b.exit.Message != "" {
		msg += "; last: " + b.exit.Message
	}
	return v1alpha1.Condition{Type: v1alpha1.VMConditionRestartBackoff, Status: v1alpha1.ConditionTrue, Reason: "CrashLoopBackOff", Message: msg}
}

// policy holds the knobs of decide.
type policy struct {
	now         time.Time
	newID       func() string
	baseBackoff time.Duration
	maxBackoff  time.Duration
}

func isPowerOp(t v1alpha1.VMOPType) bool {
	return t == v1alpha1.VMOPTypeStart || t == v1alpha1.VMOPTypeStop || t == v1alpha1.VMOPTypeRestart || t == v1alpha1.VMOPTypeHibernate
}

// isMigrationOp says the migration controller carries out operations of type t.
func isMigrationOp(t v1alpha1.VMOPType) bool {
	return t == v1alpha1.VMOPTypeMigrate || t == v1alpha1.VMOPTypeEvict
}

func isActive(p v1alpha1.VMOPPhase) bool {
	return p == "" || p == v1alpha1.VMOPPhasePending || p == v1alpha1.VMOPPhaseInProgress
}

func wantsRunning(pr *v1alpha1.VMPowerRequest) bool {
	return pr != nil && (pr.State == v1alpha1.PowerStateRunning || pr.State == v1alpha1.PowerStatePaused)
}

// opRestartID is the RestartID an operation asks for: deterministic, so applying an
// operation twice (after a crash between two writes) asks for the same thing.
func opRestartID(op *v1alpha1.VirtualMachineOperation) string { return "op-" + op.UID }

// backoff is the delay before restart number count (1, 2, ...) after unplanned exits.
func (p policy) backoff(count int) time.Duration {
	if count < 1 {
		count = 1
	}
	d := p.baseBackoff
	for i := 1; i < count && d < p.maxBackoff; i++ {
		d *= 2
	}
	if d > p.maxBackoff {
		d = p.maxBackoff
	}
	return d
}

// isRunningNow says the VM runs as its power request asks (nothing pending).
func isRunningNow(vm *v1alpha1.VirtualMachine) bool {
	pr := vm.Status.PowerRequest
	return wantsRunning(pr) && pr.RestartID == vm.Status.ObservedRestartID &&
		(vm.Status.Phase == v1alpha1.VMPhaseRunning || vm.Status.Phase == v1alpha1.VMPhasePause)
}

func isStoppedNow(vm *v1alpha1.VirtualMachine) bool {
	switch vm.Status.Phase {
	case "", v1alpha1.VMPhasePending, v1alpha1.VMPhaseStopped:
		return !wantsRunning(vm.Status.PowerRequest) || vm.Status.NodeName == ""
	}
	return false
}

// decide computes the VM's next power request and the operations' new statuses from the
// VM (spec.runPolicy, status.powerRequest, status.lastExit, the paused annotation) and its
// power operations. It is pure: the same input always gives the same decision.
//
// Order: (1) in-progress operations are checked against the status the agent reported;
// (2) the run policy (initial state, AlwaysOff/AlwaysOn, what to do after an exit);
// (3) operations: the newest active one wins, older active ones are superseded;
// (4) the paused annotation.
func (p policy) decide(vm *v1alpha1.VirtualMachine, ops []*v1alpha1.VirtualMachineOperation) decision {
	var d decision
	st := &vm.Status
	var pr v1alpha1.VMPowerRequest
	if st.PowerRequest != nil {
		pr = *st.PowerRequest
	}
	rp := vm.Spec.RunPolicy
	if rp == "" {
		rp = v1alpha1.RunPolicyAlwaysOnUnlessStoppedManually
	}

	// Active power operations, oldest first.
	var active []*v1alpha1.VirtualMachineOperation
	for _, op := range ops {
		if isPowerOp(op.Spec.Type) && isActive(op.Status.Phase) {
			active = append(active, op)
		}
	}
	// Creation order is the store revision of each create (creationRevision): exact, where
	// timestamps of requests made within one second tie.
	sort.SliceStable(active, func(i, j int) bool { return active[i].CreatedBefore(&active[j].ObjectMeta) })

	// (1) In-progress operations: done, failed or still going.
	var newest *v1alpha1.VirtualMachineOperation
	if len(active) > 0 {
		newest = active[len(active)-1]
	}
	for _, op := range active {
		if op.Status.Phase != v1alpha1.VMOPPhaseInProgress {
			continue
		}
		if op != newest {
			continue // superseded below
		}
		if u, done := p.progress(vm, op); done {
			d.ops = append(d.ops, u)
			active = active[:len(active)-1]
			newest = nil
			if op.Spec.Type == v1alpha1.VMOPTypeHibernate && u.phase == v1alpha1.VMOPPhaseFailed && pr.Operation == op.Name &&
				(st.Phase == v1alpha1.VMPhaseRunning || st.Phase == v1alpha1.VMPhasePause) {
				// The state could not be saved and the guest runs on: it is to keep running
				// (the same RestartID: no restart).
				pr = v1alpha1.VMPowerRequest{State: v1alpha1.PowerStateRunning, RestartID: pr.RestartID}
			}
		}
	}

	// (2) Run policy.
	if st.PowerRequest == nil {
		switch rp {
		case v1alpha1.RunPolicyAlwaysOn, v1alpha1.RunPolicyAlwaysOnUnlessStoppedManually:
			pr = v1alpha1.VMPowerRequest{State: v1alpha1.PowerStateRunning}
		default:
			pr = v1alpha1.VMPowerRequest{State: v1alpha1.PowerStateStopped}
		}
	}
	// The stop of a cold eviction (a VM that is never live-migrated, moved by a stop and a
	// start elsewhere) holds against runPolicy AlwaysOn while it runs; AlwaysOn starts the VM
	// again once it is over.
	evicting := false
	for _, op := range active {
		if op.Status.Phase == v1alpha1.VMOPPhaseInProgress && op.Labels[v1alpha1.LabelEvictOf] != "" && pr.Operation == op.Name {
			evicting = true
		}
	}
	switch rp {
	case v1alpha1.RunPolicyAlwaysOff:
		if wantsRunning(&pr) {
			pr = v1alpha1.VMPowerRequest{State: v1alpha1.PowerStateStopped}
		}
	case v1alpha1.RunPolicyAlwaysOn:
		if !wantsRunning(&pr) && !evicting {
			pr = v1alpha1.VMPowerRequest{State: v1alpha1.PowerStateRunning, RestartID: p.newID()}
		}
	}
	// An exit the policy has not answered yet: the agent reported it (phase Stopped with
	// lastExit) while the request still says run, and no new start was asked for since.
	if ex := st.LastExit; ex != nil && wantsRunning(&pr) && st.PowerRequest != nil && wantsRunning(st.PowerRequest) &&
		pr.RestartID == st.ObservedRestartID && st.Phase == v1alpha1.VMPhaseStopped {
		restart, stop := false, false
		switch ex.Reason {
		case v1alpha1.ExitGuestShutdown:
			if rp == v1alpha1.RunPolicyAlwaysOn {
				restart = true
			} else {
				stop = true
			}
		case v1alpha1.ExitCrashed, v1alpha1.ExitStartFailed:
			if rp == v1alpha1.RunPolicyManual {
				stop = true
			} else {
				due := p.now
				if ex.Time != nil {
					due = ex.Time.Add(p.backoff(ex.Count))
				}
				if !p.now.Before(due) {
					restart = true
				} else {
					d.requeue = due.Sub(p.now)
					d.backoff = &backoffState{until: due, exit: *ex}
				}
			}
		default: // Stopped while a start was wanted (a race between operations): start.
			restart = true
		}
		if stop {
			pr = v1alpha1.VMPowerRequest{State: v1alpha1.PowerStateStopped}
		}
		if restart {
			pr = v1alpha1.VMPowerRequest{State: v1alpha1.PowerStateRunning, RestartID: p.newID()}
		}
	}

	// (3) Operations: the newest active one wins.
	for _, op := range active {
		if op == newest {
			continue
		}
		d.ops = append(d.ops, opUpdate{name: op.Name, phase: v1alpha1.VMOPPhaseSuperseded, reason: v1alpha1.VMOPReasonSuperseded,
			message: fmt.Sprintf("superseded by the newer operation %q (creation revision %s, after this one's %s)",
				newest.Name, orUnknown(newest.CreationRevision), orUnknown(op.CreationRevision))})
	}
	if newest != nil && newest.Status.Phase != v1alpha1.VMOPPhaseInProgress && v1alpha1.IsTemplate(vm) &&
		(newest.Spec.Type == v1alpha1.VMOPTypeStart || newest.Spec.Type == v1alpha1.VMOPTypeRestart) {
		d.ops = append(d.ops, opUpdate{name: newest.Name, phase: v1alpha1.VMOPPhaseFailed, reason: v1alpha1.VMOPReasonVirtualMachineIsTemplate,
			message: fmt.Sprintf("virtual machine %q is a template (label %s=true): it cannot run; clone it, or remove the label", vm.Name, v1alpha1.LabelTemplate)})
		newest = nil
	}
	if newest != nil && newest.Status.Phase != v1alpha1.VMOPPhaseInProgress {
		u, next := p.begin(vm, rp, newest, pr)
		pr = next
		d.ops = append(d.ops, u)
	}
	// An in-progress operation keeps the request it made; if the policy replaced it (e.g.
	// runPolicy became AlwaysOff), the next check fails the operation.
	if newest == nil {
		pr = autoRestart(vm, pr)
	}

	// A template never runs, whatever its run policy.
	if v1alpha1.IsTemplate(vm) && wantsRunning(&pr) {
		pr = v1alpha1.VMPowerRequest{State: v1alpha1.PowerStateStopped}
	}

	// (4) Pause.
	paused := vm.Annotations[PausedAnnotation] == "true"
	switch {
	case paused && pr.State == v1alpha1.PowerStateRunning:
		pr.State = v1alpha1.PowerStatePaused
	case !paused && pr.State == v1alpha1.PowerStatePaused:
		pr.State = v1alpha1.PowerStateRunning
	}
	d.power = &pr
	return d
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func creation(op *v1alpha1.VirtualMachineOperation) time.Time {
	if op.CreationTimestamp == nil {
		return time.Time{}
	}
	return op.CreationTimestamp.Time
}

// apply returns the power request an operation asks for.
func (p policy) apply(vm *v1alpha1.VirtualMachine, op *v1alpha1.VirtualMachineOperation, pr v1alpha1.VMPowerRequest) v1alpha1.VMPowerRequest {
	force := op.Spec.Force != nil && *op.Spec.Force
	switch op.Spec.Type {
	case v1alpha1.VMOPTypeStart:
		if pr.Operation == op.Name {
			return pr
		}
		if wantsRunning(&pr) && !isStoppedNow(vm) && vm.Status.Phase != v1alpha1.VMPhaseStopped {
			// Already on its way up: adopt the start under way rather than restart it.
			return v1alpha1.VMPowerRequest{State: v1alpha1.PowerStateRunning, RestartID: pr.RestartID, Operation: op.Name}
		}
		// A forced start boots a hibernated VM from its disks, discarding its saved RAM.
		return v1alpha1.VMPowerRequest{State: v1alpha1.PowerStateRunning, Force: force, RestartID: opRestartID(op), Operation: op.Name}
	case v1alpha1.VMOPTypeHibernate:
		return v1alpha1.VMPowerRequest{State: v1alpha1.PowerStateStopped, Hibernate: true, RestartID: pr.RestartID, Operation: op.Name}
	case v1alpha1.VMOPTypeStop:
		return v1alpha1.VMPowerRequest{State: v1alpha1.PowerStateStopped, Force: force, RestartID: pr.RestartID, Operation: op.Name}
	case v1alpha1.VMOPTypeRestart:
		return v1alpha1.VMPowerRequest{State: v1alpha1.PowerStateRunning, Force: force, RestartID: opRestartID(op), Operation: op.Name}
	}
	return pr
}

// begin validates a pending operation against the VM and returns its new status and the
// power request it leads to.
func (p policy) begin(vm *v1alpha1.VirtualMachine, rp v1alpha1.RunPolicy, op *v1alpha1.VirtualMachineOperation, pr v1alpha1.VMPowerRequest) (opUpdate, v1alpha1.VMPowerRequest) {
	fail := func(reason, msg string) (opUpdate, v1alpha1.VMPowerRequest) {
		return opUpdate{name: op.Name, phase: v1alpha1.VMOPPhaseFailed, reason: reason, message: msg}, pr
	}
	done := func(msg string) (opUpdate, v1alpha1.VMPowerRequest) {
		return opUpdate{name: op.Name, phase: v1alpha1.VMOPPhaseCompleted, reason: v1alpha1.VMOPReasonOperationCompleted, message: msg}, pr
	}
	if vm.DeletionTimestamp != nil {
		return fail(v1alpha1.VMOPReasonNotApplicableForPhase, "the virtual machine is being deleted")
	}
	applied := pr.Operation == op.Name // a crash came between the two writes: just continue
	switch op.Spec.Type {
	case v1alpha1.VMOPTypeStart:
		if rp == v1alpha1.RunPolicyAlwaysOff {
			return fail(v1alpha1.VMOPReasonNotApplicableForPolicy, "runPolicy AlwaysOff keeps the virtual machine stopped; change the runPolicy to start it")
		}
		if !applied && isRunningNow(vm) && wantsRunning(&pr) {
			if force := op.Spec.Force; force != nil && *force {
				return fail(v1alpha1.VMOPReasonNotApplicableForPhase, "the virtual machine runs: a forced start only boots a stopped one from its disks")
			}
			return done("the virtual machine is already running")
		}
	case v1alpha1.VMOPTypeStop:
		if rp == v1alpha1.RunPolicyAlwaysOn && op.Labels[v1alpha1.LabelEvictOf] == "" {
			return fail(v1alpha1.VMOPReasonNotApplicableForPolicy, "runPolicy AlwaysOn keeps the virtual machine running; change the runPolicy to AlwaysOnUnlessStoppedManually or Manual to stop it")
		}
		if !applied && isStoppedNow(vm) && !wantsRunning(&pr) {
			return done("the virtual machine is already stopped")
		}
	case v1alpha1.VMOPTypeRestart:
		if rp == v1alpha1.RunPolicyAlwaysOff {
			return fail(v1alpha1.VMOPReasonNotApplicableForPolicy, "runPolicy AlwaysOff keeps the virtual machine stopped")
		}
	case v1alpha1.VMOPTypeHibernate:
		if rp == v1alpha1.RunPolicyAlwaysOn {
			return fail(v1alpha1.VMOPReasonNotApplicableForPolicy, "runPolicy AlwaysOn keeps the virtual machine running; change the runPolicy to AlwaysOnUnlessStoppedManually or Manual to hibernate it")
		}
		if !applied {
			if !isRunningNow(vm) || !wantsRunning(&pr) {
				return fail(v1alpha1.VMOPReasonNotApplicableForPhase, fmt.Sprintf("only a running or paused virtual machine can be hibernated (phase %s)", orUnknown(string(vm.Status.Phase))))
			}
			if why := hibernationBlocker(vm); why != "" {
				return fail(v1alpha1.VMOPReasonNotHibernatable, why)
			}
		}
	}
	return opUpdate{name: op.Name, phase: v1alpha1.VMOPPhaseInProgress, signal: true, signalAt: p.now,
		message: fmt.Sprintf("asked the node agent to %s the virtual machine", opVerb(op.Spec.Type))}, p.apply(vm, op, pr)
}

func opVerb(t v1alpha1.VMOPType) string {
	switch t {
	case v1alpha1.VMOPTypeStart:
		return "start"
	case v1alpha1.VMOPTypeStop:
		return "stop"
	case v1alpha1.VMOPTypeHibernate:
		return "hibernate"
	}
	return "restart"
}

// hibernationBlocker says why the running vm cannot be hibernated now ("" when it can): what
// resumes is built from the spec, so hot-plugged devices and changes that wait for a restart
// would not match the saved state.
func hibernationBlocker(vm *v1alpha1.VirtualMachine) string {
	var hot []string
	for _, r := range vm.Status.BlockDeviceRefs {
		if r.Hotplugged {
			hot = append(hot, fmt.Sprintf("%s %q", r.Kind, r.Name))
		}
	}
	for _, n := range vm.Status.Networks {
		if n.Slot != "" {
			hot = append(hot, fmt.Sprintf("the NIC %s", n.MACAddress))
		}
	}
	if len(hot) > 0 {
		return fmt.Sprintf("hot-plugged devices are not kept by a hibernation: detach %s first, or stop the virtual machine", strings.Join(hot, ", "))
	}
	if c := v1alpha1.FindCondition(vm.Status.Conditions, v1alpha1.VMConditionAwaitingRestartToApplyConfiguration); c != nil && c.Status == v1alpha1.ConditionTrue {
		return "changes wait for a restart (" + c.Message + "): restart the virtual machine first, so that what resumes matches its spec"
	}
	if vm.Status.MigrationState.Active() {
		return "a live migration of the virtual machine is under way"
	}
	return ""
}

// progress checks an in-progress operation against the VM's status.
func (p policy) progress(vm *v1alpha1.VirtualMachine, op *v1alpha1.VirtualMachineOperation) (opUpdate, bool) {
	st := &vm.Status
	pr := st.PowerRequest
	completed := func(msg string) (opUpdate, bool) {
		return opUpdate{name: op.Name, phase: v1alpha1.VMOPPhaseCompleted, reason: v1alpha1.VMOPReasonOperationCompleted, message: msg}, true
	}
	failed := func(msg string) (opUpdate, bool) {
		return opUpdate{name: op.Name, phase: v1alpha1.VMOPPhaseFailed, reason: v1alpha1.VMOPReasonOperationFailed, message: msg}, true
	}
	if vm.DeletionTimestamp != nil {
		return failed("the virtual machine is being deleted")
	}
	signalled := signalTime(op)
	if pr == nil || pr.Operation != op.Name {
		// A start that failed since this operation was signalled is what ended it, even when
		// the power request moved on meanwhile (a failed start of a Manual VM leaves it
		// stopped): its reason says more than the change of request.
		if ex := st.LastExit; (op.Spec.Type == v1alpha1.VMOPTypeStart || op.Spec.Type == v1alpha1.VMOPTypeRestart) && ex != nil &&
			ex.Reason == v1alpha1.ExitStartFailed && st.Phase == v1alpha1.VMPhaseStopped && ex.Time != nil && !ex.Time.Before(signalled) {
			msg := "QEMU failed to start"
			if ex.Message != "" {
				msg += ": " + ex.Message
			}
			return failed(msg)
		}
		return failed("the power request was changed (by the runPolicy or another request) before the operation finished")
	}
	switch op.Spec.Type {
	case v1alpha1.VMOPTypeStart, v1alpha1.VMOPTypeRestart:
		if st.ObservedRestartID != pr.RestartID {
			return opUpdate{}, false
		}
		graceful := op.Spec.Type == v1alpha1.VMOPTypeRestart && !pr.Force
		startedSince := st.Stats != nil && st.Stats.LastStartTime != nil && !st.Stats.LastStartTime.Before(signalled)
		if (st.Phase == v1alpha1.VMPhaseRunning || st.Phase == v1alpha1.VMPhasePause) && (!graceful || startedSince) {
			return completed(fmt.Sprintf("the virtual machine runs (%s)", opVerb(op.Spec.Type)))
		}
		if ex := st.LastExit; ex != nil && st.Phase == v1alpha1.VMPhaseStopped && ex.Time != nil && !ex.Time.Before(signalled) {
			msg := "the virtual machine did not start"
			if ex.Reason == v1alpha1.ExitStartFailed {
				msg = "QEMU failed to start"
			}
			if ex.Message != "" {
				msg += ": " + ex.Message
			}
			return failed(msg)
		}
	case v1alpha1.VMOPTypeStop:
		if st.Phase == v1alpha1.VMPhaseStopped || (st.NodeName == "" && st.Phase != v1alpha1.VMPhaseRunning) {
			return completed("the virtual machine is stopped")
		}
	case v1alpha1.VMOPTypeHibernate:
		c := v1alpha1.FindCondition(st.Conditions, v1alpha1.VMConditionHibernated)
		switch {
		case st.Phase == v1alpha1.VMPhaseStopped && c != nil && c.Status == v1alpha1.ConditionTrue:
			return completed(c.Message)
		case c != nil && c.Status == v1alpha1.ConditionFalse && c.LastTransitionTime != nil && !c.LastTransitionTime.Before(signalled):
			return failed(c.Message)
		case st.Phase == v1alpha1.VMPhaseStopped && st.LastExit != nil && st.LastExit.Time != nil && !st.LastExit.Time.Before(signalled):
			msg := "the virtual machine stopped without saving its RAM state"
			if st.LastExit.Message != "" {
				msg += ": " + st.LastExit.Message
			}
			return failed(msg)
		}
	}
	return opUpdate{}, false
}

// signalTime is when the operation's request was handed to the agent.
func signalTime(op *v1alpha1.VirtualMachineOperation) time.Time {
	if c := v1alpha1.FindCondition(op.Status.Conditions, v1alpha1.VMOPConditionSignalSent); c != nil && c.LastTransitionTime != nil {
		return c.LastTransitionTime.Time
	}
	return creation(op)
}

// autoRestartPrefix starts the RestartID of a restart that applies spec changes under
// restartApprovalMode Automatic; the VM's generation follows, so each spec generation is
// restarted for at most once.
const autoRestartPrefix = "config-"

// autoRestart is the power request that restarts a running VM to apply the spec changes
// its node agent reports as waiting for a restart (AwaitingRestartToApplyConfiguration True
// for the VM's current generation), when spec.disruptions.restartApprovalMode is Automatic;
// otherwise pr unchanged. Under Manual the changes wait for `rakhsh vm restart`.
func autoRestart(vm *v1alpha1.VirtualMachine, pr v1alpha1.VMPowerRequest) v1alpha1.VMPowerRequest {
	d := vm.Spec.Disruptions
	if d == nil || d.RestartApprovalMode != v1alpha1.RestartApprovalModeAutomatic || vm.DeletionTimestamp != nil {
		return pr
	}
	c := v1alpha1.FindCondition(vm.Status.Conditions, v1alpha1.VMConditionAwaitingRestartToApplyConfiguration)
	if c == nil || c.Status != v1alpha1.ConditionTrue || c.ObservedGeneration != vm.Generation {
		return pr
	}
	if pr.State != v1alpha1.PowerStateRunning || !isRunningNow(vm) || vm.Status.MigrationState.Active() {
		return pr // stopped, paused, starting, restarting or migrating: not now
	}
	id := autoRestartPrefix + strconv.FormatInt(vm.Generation, 10)
	if pr.RestartID == id {
		return pr
	}
	return v1alpha1.VMPowerRequest{State: v1alpha1.PowerStateRunning, RestartID: id}
}
