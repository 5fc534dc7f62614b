package node

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// Labels of the Evict operations that a drain (`rakhsh node drain`) or the maintenance
// controller creates: the node they empty, and which of the two made them.
const (
	LabelEvictNode = "virtualization.rakhsh.io/evict-node"
	LabelEvictBy   = "virtualization.rakhsh.io/evicted-by"
	// EvictByDrain and EvictByMaintenance are the values of LabelEvictBy.
	EvictByDrain       = "drain"
	EvictByMaintenance = "maintenance"
)

// Defaults of an eviction plan.
const (
	// DefaultEvictParallel is how many Evict operations of one node run at a time.
	DefaultEvictParallel = 2
	// DefaultEvictRetryAfter is how long after a transient failure (another operation of the
	// VM was active, the VM was between phases) the VM's eviction is tried again.
	DefaultEvictRetryAfter = 10 * time.Second
	// DefaultEvictAttempts is how many Evict operations of one VM may fail with
	// OperationFailed (the migration itself broke) before the VM is given up on.
	DefaultEvictAttempts = 3
)

// statusLag is how long after an Evict completed its VM may still show on the node (the
// operation and the VM are written one after the other, and read through separate watches)
// before the VM counts as not evicted and gets a new Evict.
const statusLag = 30 * time.Second

// EvictAction is what a plan does about one VM still running on the node.
type EvictAction string

// Evict actions.
const (
	// EvictInFlight: an Evict or Migrate operation of the VM is active; wait for it.
	EvictInFlight EvictAction = "InFlight"
	// EvictCreate: create an Evict operation for the VM now.
	EvictCreate EvictAction = "Create"
	// EvictQueued: the VM waits for a free slot (the parallel limit is reached).
	EvictQueued EvictAction = "Queued"
	// EvictWait: the VM cannot be evicted yet (it is starting or stopping, another operation
	// of it is active, or a transient failure is being backed off); Reason says which.
	EvictWait EvictAction = "Wait"
	// EvictStuck: the VM's eviction failed for good; Reason says why.
	EvictStuck EvictAction = "Stuck"
)

// EvictEntry is one VM running on the node and what to do about it.
type EvictEntry struct {
	Namespace, Name string
	Phase           v1alpha1.VirtualMachinePhase
	Action          EvictAction
	// Op is the active Evict/Migrate operation (InFlight), or the failed one (Stuck, or Wait
	// after a transient failure); nil otherwise.
	Op *v1alpha1.VirtualMachineOperation
	// Reason explains Wait and Stuck.
	Reason string
	// RetryAt is when a Wait after a transient failure ends.
	RetryAt time.Time
}

// Key is "namespace/name".
func (e EvictEntry) Key() string { return e.Namespace + "/" + e.Name }

// EvictPlan is the state of a node's eviction at one moment.
type EvictPlan struct {
	// Entries are the VMs still running on the node, sorted by project and name.
	Entries []EvictEntry
	// InFlight counts the entries whose eviction is under way.
	InFlight int
}

// Drained reports whether no VM runs on the node any more.
func (p *EvictPlan) Drained() bool { return len(p.Entries) == 0 }

// Count returns how many entries have action a.
func (p *EvictPlan) Count(a EvictAction) int {
	n := 0
	for _, e := range p.Entries {
		if e.Action == a {
			n++
		}
	}
	return n
}

// EvictInput is what a plan is computed from.
type EvictInput struct {
	Node string
	// VMs and Ops may hold objects of every project and node; the plan picks its own.
	VMs []*v1alpha1.VirtualMachine
	Ops []*v1alpha1.VirtualMachineOperation
	// Counts says whether a finished (Failed or Superseded) Evict/Migrate operation counts
	// against its VM in this drain: those of an earlier drain are ignored. Nil counts none.
	Counts func(op *v1alpha1.VirtualMachineOperation) bool
	// Parallel is the most evictions under way at a time; 0: DefaultEvictParallel.
	Parallel int
	// RetryAfter: 0 is DefaultEvictRetryAfter. Attempts: 0 is DefaultEvictAttempts.
	RetryAfter time.Duration
	Attempts   int
	Now        time.Time
}

// RunsOn reports whether vm counts as running on node for a drain: bound to it and not
// stopped. A VM that is Stopped but still bound (its agent has not released it yet) holds
// nothing that must move.
func RunsOn(vm *v1alpha1.VirtualMachine, node string) bool {
	return vm.Status.NodeName == node && vm.Status.Phase != v1alpha1.VMPhaseStopped
}

// isEvictOp reports whether op moves its VM off its node.
func isEvictOp(op *v1alpha1.VirtualMachineOperation) bool {
	return op.Spec.Type == v1alpha1.VMOPTypeEvict || op.Spec.Type == v1alpha1.VMOPTypeMigrate
}

// opActive reports whether op has not finished.
func opActive(op *v1alpha1.VirtualMachineOperation) bool {
	if op.DeletionTimestamp != nil {
		return false
	}
	switch op.Status.Phase {
	case "", v1alpha1.VMOPPhasePending, v1alpha1.VMOPPhaseInProgress:
		return true
	}
	return false
}

// OpOutcome returns the reason and message of a finished operation's Completed condition
// (the phase when it has none).
func OpOutcome(op *v1alpha1.VirtualMachineOperation) (reason, message string) {
	if c := v1alpha1.FindCondition(op.Status.Conditions, v1alpha1.VMOPConditionCompleted); c != nil {
		return c.Reason, c.Message
	}
	return string(op.Status.Phase), ""
}

// transient reports whether a failed eviction may simply be tried again: the VM was busy
// with another operation or between phases, or a newer operation took its place.
func transient(op *v1alpha1.VirtualMachineOperation) bool {
	if op.Status.Phase == v1alpha1.VMOPPhaseSuperseded {
		return true
	}
	r, _ := OpOutcome(op)
	switch r {
	case v1alpha1.VMOPReasonOtherOperationInProgress, v1alpha1.VMOPReasonNotApplicableForPhase, v1alpha1.VMOPReasonSuperseded:
		return true
	}
	return false
}

// finishedAt is when op finished, as well as it is known.
func finishedAt(op *v1alpha1.VirtualMachineOperation) time.Time {
	if c := v1alpha1.FindCondition(op.Status.Conditions, v1alpha1.VMOPConditionCompleted); c != nil && c.LastTransitionTime != nil {
		return c.LastTransitionTime.Time
	}
	return CreatedAt(op)
}

// CreatedAt is op's creation time (zero when unknown).
func CreatedAt(op *v1alpha1.VirtualMachineOperation) time.Time {
	if op.CreationTimestamp == nil {
		return time.Time{}
	}
	return op.CreationTimestamp.Time
}

// evictable reports whether a VM in phase p can be asked to leave now: running or paused.
// Any other phase is waited out (a VM Migrating without an operation under way is one whose
// status has not caught up yet; a Degraded one is being dealt with by its agent).
func evictable(p v1alpha1.VirtualMachinePhase) bool {
	switch p {
	case v1alpha1.VMPhaseRunning, v1alpha1.VMPhasePause:
		return true
	}
	return false
}

// PlanEviction decides, for every VM running on in.Node, whether its eviction is under way,
// is to be started now, waits for a slot or for the VM, or has failed for good. It is a pure
// function: the drain command and the maintenance controller both act on its result.
func PlanEviction(in EvictInput) EvictPlan {
	parallel := in.Parallel
	if parallel <= 0 {
		parallel = DefaultEvictParallel
	}
	retryAfter := in.RetryAfter
	if retryAfter <= 0 {
		retryAfter = DefaultEvictRetryAfter
	}
	attempts := in.Attempts
	if attempts <= 0 {
		attempts = DefaultEvictAttempts
	}
	opsOf := map[string][]*v1alpha1.VirtualMachineOperation{}
	for _, op := range in.Ops {
		k := op.Namespace + "/" + op.Spec.VirtualMachineName
		opsOf[k] = append(opsOf[k], op)
	}
	var vms []*v1alpha1.VirtualMachine
	for _, vm := range in.VMs {
		if RunsOn(vm, in.Node) {
			vms = append(vms, vm)
		}
	}
	sort.Slice(vms, func(i, j int) bool {
		if vms[i].Namespace != vms[j].Namespace {
			return vms[i].Namespace < vms[j].Namespace
		}
		return vms[i].Name < vms[j].Name
	})

	var plan EvictPlan
	var candidates []int // entries that could start now, in order
	for _, vm := range vms {
		e := EvictEntry{Namespace: vm.Namespace, Name: vm.Name, Phase: vm.Status.Phase}
		ops := opsOf[vm.Namespace+"/"+vm.Name]
		sort.Slice(ops, func(i, j int) bool {
			ti, tj := CreatedAt(ops[i]), CreatedAt(ops[j])
			if !ti.Equal(tj) {
				return ti.Before(tj)
			}
			return ops[i].Name < ops[j].Name
		})
		var active, other, lastFailed, lastDone *v1alpha1.VirtualMachineOperation
		failures := 0
		for _, op := range ops {
			switch {
			case opActive(op) && isEvictOp(op):
				active = op
			case opActive(op):
				other = op
			case isEvictOp(op) && op.Status.Phase == v1alpha1.VMOPPhaseCompleted:
				lastDone = op
			case isEvictOp(op) && op.Status.Phase != v1alpha1.VMOPPhaseCompleted && in.Counts != nil && in.Counts(op):
				lastFailed = op
				if !transient(op) {
					failures++
				}
			}
		}
		switch {
		case vm.DeletionTimestamp != nil:
			e.Action, e.Reason = EvictWait, "the VM is being deleted"
		case active != nil:
			e.Action, e.Op = EvictInFlight, active
			plan.InFlight++
		case lastFailed != nil && !transient(lastFailed) && failures >= attempts:
			r, m := OpOutcome(lastFailed)
			e.Action, e.Op, e.Reason = EvictStuck, lastFailed, fmt.Sprintf("operation %s %s (%s): %s", lastFailed.Name, lastFailed.Status.Phase, r, m)
			if failures > 1 {
				e.Reason += fmt.Sprintf(" (%d attempts)", failures)
			}
		case lastFailed != nil && !transient(lastFailed) && !retriable(lastFailed):
			r, m := OpOutcome(lastFailed)
			e.Action, e.Op, e.Reason = EvictStuck, lastFailed, fmt.Sprintf("operation %s %s (%s): %s", lastFailed.Name, lastFailed.Status.Phase, r, m)
		case lastDone != nil && in.Now.Before(finishedAt(lastDone).Add(statusLag)) &&
			(lastFailed == nil || !finishedAt(lastDone).Before(finishedAt(lastFailed))):
			// The operation says the VM left, the VM's status does not show it yet.
			e.Action, e.Op, e.RetryAt = EvictWait, lastDone, finishedAt(lastDone).Add(statusLag)
			e.Reason = fmt.Sprintf("operation %s Completed; waiting for the VM's status to follow", lastDone.Name)
		case other != nil:
			e.Action, e.Reason = EvictWait, fmt.Sprintf("operation %s (%s) of the VM is %s", other.Name, other.Spec.Type, orPending(other.Status.Phase))
		case !evictable(vm.Status.Phase):
			e.Action, e.Reason = EvictWait, fmt.Sprintf("the VM is %s", orPending(vm.Status.Phase))
		case lastFailed != nil && in.Now.Before(finishedAt(lastFailed).Add(retryAfter)):
			r, _ := OpOutcome(lastFailed)
			e.Action, e.Op, e.RetryAt = EvictWait, lastFailed, finishedAt(lastFailed).Add(retryAfter)
			e.Reason = fmt.Sprintf("operation %s %s (%s); trying again at %s", lastFailed.Name, lastFailed.Status.Phase, r, e.RetryAt.UTC().Format(time.RFC3339))
		default:
			e.Action = EvictCreate
			candidates = append(candidates, len(plan.Entries))
		}
		plan.Entries = append(plan.Entries, e)
	}
	free := parallel - plan.InFlight
	for _, i := range candidates {
		if free > 0 {
			free--
			continue
		}
		plan.Entries[i].Action = EvictQueued
		plan.Entries[i].Reason = fmt.Sprintf("waiting for a free slot (at most %d evictions at a time)", parallel)
	}
	return plan
}

// retriable reports whether a failed (not transient) eviction may be tried again, up to the
// attempt limit: only when the migration itself broke (reason OperationFailed). Any other
// reason (the VM's policy or disks keep it on the node, the operation type is not carried
// out, ...) will fail the same way again.
func retriable(op *v1alpha1.VirtualMachineOperation) bool {
	r, _ := OpOutcome(op)
	return r == v1alpha1.VMOPReasonOperationFailed
}

func orPending[T ~string](p T) string {
	if p == "" {
		return "Pending"
	}
	return string(p)
}

// Summary describes the entries of a plan in one line, for the Maintenance condition and the
// drain command: "3 VM(s) still run on the node: p/a (evicting: op a-evict-x InProgress), ...".
func (p *EvictPlan) Summary() string {
	if p.Drained() {
		return "no VM runs on the node"
	}
	parts := make([]string, 0, len(p.Entries))
	for _, e := range p.Entries {
		parts = append(parts, e.Key()+" ("+e.Describe()+")")
	}
	return fmt.Sprintf("%d VM(s) still run on the node: %s", len(p.Entries), strings.Join(parts, "; "))
}

// Describe says in a few words where one VM's eviction stands.
func (e EvictEntry) Describe() string {
	switch e.Action {
	case EvictInFlight:
		s := fmt.Sprintf("evicting: operation %s %s", e.Op.Name, orPending(e.Op.Status.Phase))
		if e.Op.Status.Progress != "" {
			s += " " + e.Op.Status.Progress
		}
		return s
	case EvictCreate:
		return "to be evicted"
	case EvictQueued:
		return "queued: " + e.Reason
	case EvictStuck:
		return "cannot leave: " + e.Reason
	default:
		return "waiting: " + e.Reason
	}
}

// NewEvictOp returns the Evict operation of a VM for a drain of node by by (EvictByDrain or
// EvictByMaintenance).
func NewEvictOp(namespace, vmName, node, by string) *v1alpha1.VirtualMachineOperation {
	prefix := vmName
	if len(prefix) > 40 {
		prefix = prefix[:40]
	}
	return &v1alpha1.VirtualMachineOperation{
		TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachineOperation"},
		ObjectMeta: v1alpha1.ObjectMeta{GenerateName: strings.TrimRight(prefix, "-") + "-evict-", Namespace: namespace,
			Labels: map[string]string{LabelEvictNode: node, LabelEvictBy: by}},
		Spec: v1alpha1.VirtualMachineOperationSpec{Type: v1alpha1.VMOPTypeEvict, VirtualMachineName: vmName},
	}
}
