// Package migration is the live migration controller. It carries out the
// VirtualMachineOperations of type Migrate and Evict: it checks that the VM can move, starts
// a migration in the VM's status.migrationState (phase Scheduling: the scheduler then picks
// the target, the two node agents do the rest, see internal/agent/migrate.go), follows it to
// its end, and writes the outcome on the operation. It also moves the Local disks' node
// after a migration succeeded, ends migrations that take too long or whose operation was
// deleted (a cancel), and keeps the per-node limit of outbound migrations.
//
// It owns status.migrationState while the phase is Scheduling and when it fails a migration
// for a timeout or a cancel; every other phase belongs to the scheduler and the agents.
package migration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// Defaults of Config.
const (
	DefaultMaxOutbound    = 2
	DefaultMaxDowntime    = 300 * time.Millisecond
	DefaultTimeoutPerGiB  = 150 * time.Second
	DefaultMinTimeout     = 2 * time.Minute
	DefaultPrepareTimeout = 2 * time.Minute
)

// Config configures the controller.
type Config struct {
	runtime.Deps
	// MaxOutbound is the number of migrations a node sends at once; default 2.
	MaxOutbound int
	// MaxDowntime is the longest pause QEMU may make at the switch-over; default 300 ms.
	MaxDowntime time.Duration
	// Unencrypted sends migrations' data unencrypted between the agents after their TLS
	// handshake (serve --migration-encryption=false).
	Unencrypted bool
	// BandwidthMiBps caps each migration's stream; 0: no cap.
	BandwidthMiBps int64
	// TimeoutPerGiB is the transfer's time allowed per GiB of memory and mirrored disk
	// (default 150 s), and MinTimeout its floor (default 2 min).
	TimeoutPerGiB, MinTimeout time.Duration
	// PrepareTimeout is how long choosing and preparing the target may take; default 2 min.
	PrepareTimeout time.Duration
	// Now is the clock (tests).
	Now func() time.Time
}

// Controller is the migration controller.
type Controller struct {
	cfg Config
	runtime.Base
	vms   *runtime.TypedInformer[v1alpha1.VirtualMachine]
	ops   *runtime.TypedInformer[v1alpha1.VirtualMachineOperation]
	disks *runtime.TypedInformer[v1alpha1.VirtualDisk]
	// backups: a migration waits for a running backup of its VM (the backup's copy job and
	// dirty bitmaps live in the source QEMU).
	backups *runtime.TypedInformer[v1alpha1.VirtualMachineBackup]
	ctl     *runtime.Controller
}

// New returns a controller; Run starts it.
func New(cfg Config) (*Controller, error) {
	if cfg.Client == nil || cfg.Informers == nil {
		return nil, errors.New("migration controller: a client and informers are required")
	}
	cfg.MaxOutbound = runtime.OrDefault(cfg.MaxOutbound, DefaultMaxOutbound)
	cfg.MaxDowntime = runtime.OrDefault(cfg.MaxDowntime, DefaultMaxDowntime)
	cfg.TimeoutPerGiB = runtime.OrDefault(cfg.TimeoutPerGiB, DefaultTimeoutPerGiB)
	cfg.MinTimeout = runtime.OrDefault(cfg.MinTimeout, DefaultMinTimeout)
	cfg.PrepareTimeout = runtime.OrDefault(cfg.PrepareTimeout, DefaultPrepareTimeout)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	b := runtime.NewBase(cfg.Deps, "rakhsh-migration-controller", "component", "migration-controller")
	c := &Controller{cfg: cfg, Base: b}
	f := b.Informers
	c.vms, c.ops, c.disks = f.VirtualMachines(), f.VirtualMachineOperations(), f.VirtualDisks()
	c.backups = runtime.For[v1alpha1.VirtualMachineBackup](f, "virtualmachinebackups")
	c.ctl = runtime.NewController("migration", c.Log).
		For(c.vms).
		Watches(c.ops, func(k runtime.Key) []runtime.Key {
			if op, ok := c.ops.Get(k); ok {
				return []runtime.Key{runtime.NewKey(op.Namespace, op.Spec.VirtualMachineName)}
			}
			// A deleted operation: its VM is found by the migration that names it.
			ns, name := k.Split()
			for _, vm := range c.vms.List() {
				if m := vm.Status.MigrationState; vm.Namespace == ns && m.Active() && m.Operation == name {
					return []runtime.Key{runtime.KeyOf(vm)}
				}
			}
			return nil
		}).
		Reads(c.disks, c.backups).
		Workers(2).
		MaxBackoff(10 * time.Second).
		Build(c.reconcile)
	return c, nil
}

// Run reconciles until ctx ends.
func (c *Controller) Run(ctx context.Context) error { return c.ctl.Run(ctx) }

func isMigrationOp(op *v1alpha1.VirtualMachineOperation) bool {
	return op.Spec.Type == v1alpha1.VMOPTypeMigrate || op.Spec.Type == v1alpha1.VMOPTypeEvict
}

func isActive(p v1alpha1.VMOPPhase) bool {
	return p == "" || p == v1alpha1.VMOPPhasePending || p == v1alpha1.VMOPPhaseInProgress
}

// opReason is ": REASON: MESSAGE" of op's Completed condition, or "".
func opReason(op *v1alpha1.VirtualMachineOperation) string {
	if c := v1alpha1.FindCondition(op.Status.Conditions, v1alpha1.VMOPConditionCompleted); c != nil && c.Reason != "" {
		return ": " + c.Reason + ": " + c.Message
	}
	return ""
}

// opsFor returns the VM's migration operations that are not finished, oldest first.
func (c *Controller) opsFor(ns, name string) []*v1alpha1.VirtualMachineOperation {
	var out []*v1alpha1.VirtualMachineOperation
	for _, op := range c.ops.List() {
		if op.Namespace == ns && op.Spec.VirtualMachineName == name && isMigrationOp(op) && isActive(op.Status.Phase) && op.DeletionTimestamp == nil {
			out = append(out, runtime.DeepCopy(op))
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].CreatedBefore(&out[j].ObjectMeta) })
	return out
}

func (c *Controller) reconcile(ctx context.Context, key runtime.Key) (runtime.Result, error) {
	ns, name := key.Split()
	ops := c.opsFor(ns, name)
	cached, ok := c.vms.Get(key)
	if !ok {
		for _, op := range ops {
			if err := c.writeOp(ctx, op, v1alpha1.VMOPPhaseFailed, v1alpha1.VMOPReasonVirtualMachineNotFound, fmt.Sprintf("virtual machine %q not found", name)); err != nil {
				return runtime.Result{}, err
			}
		}
		return runtime.Result{}, nil
	}
	vm := runtime.DeepCopy(cached)
	m := vm.Status.MigrationState
	now := c.cfg.Now()

	// The migration under way, if any: its operation, its timeouts.
	if m.Active() {
		var op *v1alpha1.VirtualMachineOperation
		for _, o := range ops {
			if o.Name == m.Operation && string(o.UID) == m.ID {
				op = o
			}
		}
		if op == nil {
			msg := fmt.Sprintf("the operation %q was deleted: migration cancelled", m.Operation)
			if o, ok := c.ops.Get(runtime.NewKey(ns, m.Operation)); ok && string(o.UID) == m.ID && o.DeletionTimestamp == nil {
				// Ended by another writer (its phase says how): not a cancel by a user.
				msg = fmt.Sprintf("the operation %q ended (%s%s): migration cancelled", m.Operation, o.Status.Phase, opReason(o))
			}
			return runtime.Result{}, c.fail(ctx, vm, m.ID, v1alpha1.MigrationReasonCancelled, msg)
		}
		if why := c.overdue(vm, m, now); why != "" {
			return runtime.Result{}, c.fail(ctx, vm, m.ID, v1alpha1.MigrationReasonTimeout, why)
		}
		if !wantsRunning(vm) {
			return runtime.Result{}, c.fail(ctx, vm, m.ID, v1alpha1.MigrationReasonVMStopped, "the virtual machine was asked to stop: migration cancelled")
		}
		if op.Status.Phase != v1alpha1.VMOPPhaseInProgress {
			if err := c.writeOp(ctx, op, v1alpha1.VMOPPhaseInProgress, "InProgress", progressMessage(m)); err != nil {
				return runtime.Result{}, err
			}
		} else if p := progressOf(m); p != op.Status.Progress {
			if err := c.writeProgress(ctx, op, p); err != nil {
				return runtime.Result{}, err
			}
		}
		// Others wait; they are looked at again when this one ends.
		return runtime.Result{RequeueAfter: 5 * time.Second}, nil
	}

	// A finished migration: the operation that started it gets its outcome.
	if m != nil && m.ID != "" {
		for _, op := range ops {
			if string(op.UID) != m.ID {
				continue
			}
			if m.Phase == v1alpha1.MigrationPhaseSucceeded {
				if err := c.moveLocalDisks(ctx, vm, m); err != nil {
					return runtime.Result{}, err
				}
				msg := m.Message
				if p := m.Progress; p != nil && p.TotalTimeMs > 0 {
					msg += fmt.Sprintf(" (transfer %d ms, downtime %d ms)", p.TotalTimeMs, p.DowntimeMs)
				}
				if err := c.writeOp(ctx, op, v1alpha1.VMOPPhaseCompleted, v1alpha1.VMOPReasonOperationCompleted, msg); err != nil {
					return runtime.Result{}, err
				}
			} else {
				msg := m.Message
				if m.Reason != "" {
					msg = m.Reason + ": " + msg
				}
				if err := c.writeOp(ctx, op, v1alpha1.VMOPPhaseFailed, v1alpha1.VMOPReasonOperationFailed, msg); err != nil {
					return runtime.Result{}, err
				}
			}
			ops = remove(ops, op)
		}
	} else if m != nil && m.Phase == v1alpha1.MigrationPhaseSucceeded {
		if err := c.moveLocalDisks(ctx, vm, m); err != nil {
			return runtime.Result{}, err
		}
	}
	if len(ops) == 0 {
		return runtime.Result{}, nil
	}

	// The oldest waiting operation starts; the others wait their turn.
	op := ops[0]
	if isColdEvict(vm, op) {
		return c.coldEvict(ctx, vm, op)
	}
	if op.Status.Phase == v1alpha1.VMOPPhaseInProgress {
		// Its migration is not in the cached VM. The cache may not have the migration this
		// controller just wrote yet (the operation's cache can be ahead of the VM's): only a
		// fresh read decides that it is gone (replaced by hand, or lost).
		var fresh v1alpha1.VirtualMachine
		if err := c.C.Get(ctx, "virtualmachines", ns, name, &fresh); client.IsNotFound(err) {
			return runtime.Result{}, nil // the VM is gone: its deletion brings the operation's end
		} else if err != nil {
			return runtime.Result{}, err
		}
		if fm := fresh.Status.MigrationState; fm != nil && fm.ID == string(op.UID) {
			return runtime.Result{RequeueAfter: 200 * time.Millisecond}, nil // the cache catches up
		}
		return runtime.Result{}, c.writeOp(ctx, op, v1alpha1.VMOPPhaseFailed, v1alpha1.VMOPReasonOperationFailed, "the migration this operation started is no longer in the virtual machine's status")
	}
	phase, reason, msg := c.check(vm, op)
	if phase != "" {
		return runtime.Result{}, c.writeOp(ctx, op, phase, reason, msg)
	}
	// check says nothing (msg is empty) when the operation may start: it may still wait.
	if b := c.runningBackup(vm); b != "" {
		msg = fmt.Sprintf("waiting: backup %q of the virtual machine runs (its copy is in the source's QEMU)", b)
	} else if n := c.outbound(vm.Status.NodeName); n >= c.cfg.MaxOutbound {
		msg = fmt.Sprintf("waiting: node %s already sends %d migrations (the limit is %d)", vm.Status.NodeName, n, c.cfg.MaxOutbound)
	}
	if msg != "" {
		if op.Status.Phase != v1alpha1.VMOPPhasePending || conditionMessage(op) != msg {
			if err := c.writeOp(ctx, op, v1alpha1.VMOPPhasePending, "Waiting", msg); err != nil {
				return runtime.Result{}, err
			}
		}
		return runtime.Result{RequeueAfter: 2 * time.Second}, nil
	}
	if err := c.begin(ctx, vm, op); err != nil {
		return runtime.Result{}, err
	}
	return runtime.Result{}, nil
}

func remove(ops []*v1alpha1.VirtualMachineOperation, op *v1alpha1.VirtualMachineOperation) []*v1alpha1.VirtualMachineOperation {
	var out []*v1alpha1.VirtualMachineOperation
	for _, o := range ops {
		if o != op {
			out = append(out, o)
		}
	}
	return out
}

func wantsRunning(vm *v1alpha1.VirtualMachine) bool {
	pr := vm.Status.PowerRequest
	return pr != nil && (pr.State == v1alpha1.PowerStateRunning || pr.State == v1alpha1.PowerStatePaused) && vm.DeletionTimestamp == nil
}

// check says whether op may start now on vm: an empty phase when it may, else the phase
// (Completed or Failed) with its reason and message.
func (c *Controller) check(vm *v1alpha1.VirtualMachine, op *v1alpha1.VirtualMachineOperation) (v1alpha1.VMOPPhase, string, string) {
	failed := func(reason, msg string) (v1alpha1.VMOPPhase, string, string) {
		return v1alpha1.VMOPPhaseFailed, reason, msg
	}
	if vm.DeletionTimestamp != nil {
		return failed(v1alpha1.VMOPReasonNotApplicableForPhase, "the virtual machine is being deleted")
	}
	if vm.Status.NodeName == "" || !wantsRunning(vm) {
		if op.Spec.Type == v1alpha1.VMOPTypeEvict {
			return v1alpha1.VMOPPhaseCompleted, v1alpha1.VMOPReasonOperationCompleted, "the virtual machine is stopped and holds no node: nothing to evict"
		}
		return failed(v1alpha1.VMOPReasonNotApplicableForPhase, fmt.Sprintf("only a running virtual machine can be live-migrated; it is %s", orPending(vm.Status.Phase)))
	}
	if vm.Status.Phase != v1alpha1.VMPhaseRunning && vm.Status.Phase != v1alpha1.VMPhasePause {
		return failed(v1alpha1.VMOPReasonNotApplicableForPhase, fmt.Sprintf("only a running virtual machine can be live-migrated; it is %s", orPending(vm.Status.Phase)))
	}
	if vm.Spec.LiveMigrationPolicy == v1alpha1.LiveMigrationPolicyNever {
		return failed(v1alpha1.VMOPReasonNotApplicableForLiveMigrationPolicy, "liveMigrationPolicy Never: the virtual machine is never live-migrated; stop it and start it elsewhere, or change its policy")
	}
	// A VM whose vCPUs or memory were changed live migrates too: its target starts with the
	// source's boot vCPUs and the hot-added ones as devices (internal/agent/live.go).
	if c := v1alpha1.FindCondition(vm.Status.Conditions, v1alpha1.VMConditionMigratable); c != nil && c.Status == v1alpha1.ConditionFalse && c.Reason == v1alpha1.VMReasonHotpluggedDevices {
		return failed(v1alpha1.VMOPReasonHotpluggedDevices, "the virtual machine is not migratable: "+c.Message)
	}
	for _, r := range vm.Status.BlockDeviceRefs {
		if r.Hotplugged && r.Slot == "" {
			// The target plugs a hot-plugged device into the slot its source has it in; one
			// of unknown slot would not match, and QEMU's migration would fail on its state
			// (docs/hotplug.md).
			return failed(v1alpha1.VMOPReasonHotpluggedDevices, fmt.Sprintf("%s %q is hot-plugged (attachment %s) in a slot the node did not record: it is not live-migrated; detach it first, or stop the virtual machine and start it elsewhere",
				r.Kind, r.Name, r.VirtualMachineBlockDeviceAttachmentName))
		}
	}
	return "", "", ""
}

func orPending(p v1alpha1.VirtualMachinePhase) string {
	if p == "" {
		return string(v1alpha1.VMPhasePending)
	}
	return string(p)
}

// runningBackup names a backup of vm that runs now ("" when none).
func (c *Controller) runningBackup(vm *v1alpha1.VirtualMachine) string {
	for _, b := range c.backups.List() {
		if b.Namespace == vm.Namespace && b.Status.Phase == v1alpha1.BackupPhaseInProgress && b.Status.VirtualMachineUID == vm.UID {
			return b.Name
		}
	}
	return ""
}

// outbound counts the migrations node sends now.
func (c *Controller) outbound(node string) int {
	n := 0
	for _, vm := range c.vms.List() {
		if m := vm.Status.MigrationState; m.Active() && m.Source.Node == node {
			n++
		}
	}
	return n
}

// begin starts op's migration: phase Scheduling in the VM's status, then the operation
// InProgress.
func (c *Controller) begin(ctx context.Context, vm *v1alpha1.VirtualMachine, op *v1alpha1.VirtualMachineOperation) error {
	sel := map[string]string{}
	for _, s := range []*v1alpha1.VMOPMigrateSpec{op.Spec.Migrate, op.Spec.Evict} {
		if s != nil {
			for k, v := range s.NodeSelector {
				sel[k] = v
			}
		}
	}
	if len(sel) == 0 {
		sel = nil
	}
	disks, diskBytes := c.localDisks(vm)
	mem, _ := vm.Spec.Memory.Size.Value()
	gib := float64(mem+diskBytes) / float64(1<<30)
	timeout := time.Duration(gib * float64(c.cfg.TimeoutPerGiB))
	if timeout < c.cfg.MinTimeout {
		timeout = c.cfg.MinTimeout
	}
	pol := &v1alpha1.MigrationPolicySettings{AutoConverge: autoConverge(vm.Spec.LiveMigrationPolicy, op.Spec.Force),
		MaxDowntimeMs: c.cfg.MaxDowntime.Milliseconds(), BandwidthMiBps: c.cfg.BandwidthMiBps, TimeoutSeconds: int64(timeout / time.Second),
		Unencrypted: c.cfg.Unencrypted}
	now := v1alpha1.NewTime(c.cfg.Now())
	next := &v1alpha1.VirtualMachineMigrationState{ID: string(op.UID), Operation: op.Name, Phase: v1alpha1.MigrationPhaseScheduling,
		StartTimestamp: &now, Source: v1alpha1.VirtualMachineLocation{Node: vm.Status.NodeName}, NodeSelector: sel, Policy: pol, Disks: disks,
		Message: "choosing a target node"}
	err := c.patchMigration(ctx, vm, func(v *v1alpha1.VirtualMachine) error {
		if v.Status.MigrationState.Active() {
			return errBusy
		}
		if v.Status.NodeName != vm.Status.NodeName {
			return errBusy
		}
		v.Status.MigrationState = next
		return nil
	})
	if errors.Is(err, errBusy) {
		return nil // another change came first; the informer brings it back
	}
	if err != nil {
		return err
	}
	c.Log.Info("live migration started", "vm", vm.Namespace+"/"+vm.Name, "op", op.Name, "from", vm.Status.NodeName, "localDisks", len(disks), "autoConverge", pol.AutoConverge)
	return c.writeOp(ctx, op, v1alpha1.VMOPPhaseInProgress, "InProgress", "choosing a target node")
}

// autoConverge says whether the guest may be throttled, from the VM's policy and the
// operation's force.
func autoConverge(p v1alpha1.LiveMigrationPolicy, force *bool) bool {
	switch p {
	case v1alpha1.LiveMigrationPolicyAlwaysForced:
		return true
	case v1alpha1.LiveMigrationPolicyPreferForced:
		return force == nil || *force
	case v1alpha1.LiveMigrationPolicyAlwaysSafe:
		return false
	}
	return force != nil && *force // PreferSafe (the default) and Manual
}

// localDisks are the VM's disks on Local storage (mirrored by the migration), with their
// total size.
func (c *Controller) localDisks(vm *v1alpha1.VirtualMachine) ([]v1alpha1.MigrationDisk, int64) {
	var out []v1alpha1.MigrationDisk
	var total int64
	refs := append([]v1alpha1.BlockDeviceSpecRef(nil), vm.Spec.BlockDeviceRefs...)
	for _, r := range vm.Status.BlockDeviceRefs {
		if r.Hotplugged {
			refs = append(refs, v1alpha1.BlockDeviceSpecRef{Kind: r.Kind, Name: r.Name})
		}
	}
	for _, r := range refs {
		if r.Kind != v1alpha1.BlockDeviceKindVirtualDisk || slices.ContainsFunc(out, func(d v1alpha1.MigrationDisk) bool { return d.Name == r.Name }) {
			continue
		}
		d, ok := c.disks.Get(runtime.NewKey(vm.Namespace, r.Name))
		if !ok || d.Status.NodeName == "" {
			continue // Shared storage: nothing to copy
		}
		size, _ := v1alpha1.ParseQuantity(d.Status.Capacity)
		out = append(out, v1alpha1.MigrationDisk{Name: r.Name, Size: size})
		total += size
	}
	return out, total
}

var errBusy = errors.New("the virtual machine changed")

// overdue says why an active migration has taken too long, or "".
func (c *Controller) overdue(vm *v1alpha1.VirtualMachine, m *v1alpha1.VirtualMachineMigrationState, now time.Time) string {
	if m.StartTimestamp == nil {
		return ""
	}
	age := now.Sub(m.StartTimestamp.Time)
	switch m.Phase {
	case v1alpha1.MigrationPhaseScheduling, v1alpha1.MigrationPhasePending, v1alpha1.MigrationPhaseTargetReady:
		if age > c.cfg.PrepareTimeout {
			return fmt.Sprintf("the target was not ready within %s (phase %s, target node %q)", c.cfg.PrepareTimeout, m.Phase, m.Target.Node)
		}
	case v1alpha1.MigrationPhaseTransferring:
		// The source ends a transfer at its timeout; this is the backstop for a source
		// that cannot (its node is down or cut off).
		limit := c.cfg.PrepareTimeout + time.Minute
		if m.Policy != nil {
			limit += time.Duration(m.Policy.TimeoutSeconds) * time.Second
		}
		if age > limit {
			return fmt.Sprintf("the transfer from node %s did not end within %s", m.Source.Node, limit.Round(time.Second))
		}
	}
	return ""
}

// fail ends the active migration id with reason and message.
func (c *Controller) fail(ctx context.Context, vm *v1alpha1.VirtualMachine, id, reason, msg string) error {
	err := c.patchMigration(ctx, vm, func(v *v1alpha1.VirtualMachine) error {
		m := v.Status.MigrationState
		if !m.Active() || m.ID != id {
			return errBusy
		}
		mm := *m
		now := v1alpha1.NewTime(c.cfg.Now())
		mm.Phase, mm.Result, mm.Reason, mm.Message, mm.EndTimestamp = v1alpha1.MigrationPhaseFailed, v1alpha1.MigrationResultFailed, reason, msg, &now
		v.Status.MigrationState = &mm
		return nil
	})
	if errors.Is(err, errBusy) {
		return nil
	}
	if err == nil {
		c.Log.Info("live migration ended", "vm", vm.Namespace+"/"+vm.Name, "reason", reason, "message", msg)
		c.Rec.Event(ctx, "VirtualMachine", vm, "Warning", "MigrationFailed", msg)
	}
	return err
}

// patchMigration writes status.migrationState as mutate sets it, guarded by the value read
// and by status.nodeName.
func (c *Controller) patchMigration(ctx context.Context, vm *v1alpha1.VirtualMachine, mutate func(v *v1alpha1.VirtualMachine) error) error {
	_, err := runtime.PatchVMStatus(ctx, c.C, vm, []string{"migrationState"}, []string{"nodeName"}, mutate)
	return err
}

// moveLocalDisks records, after a migration succeeded, that its Local disks are on the
// target node now.
func (c *Controller) moveLocalDisks(ctx context.Context, vm *v1alpha1.VirtualMachine, m *v1alpha1.VirtualMachineMigrationState) error {
	// The disk leases follow the VM: the target's QEMU writes its disks now.
	if vm.Status.NodeName == m.Target.Node && m.Target.Node != "" {
		for _, d := range runtime.WritableDisks(vm) {
			moved, err := runtime.MoveDiskLease(ctx, c.C, vm.Namespace, d, m.Source.Node, m.Target.Node, vm.UID,
				fmt.Sprintf("the migration controller: VM %s migrated from node %s to node %s", vm.Name, m.Source.Node, m.Target.Node))
			if err != nil {
				return err
			}
			if moved {
				c.Log.Info("disk lease moved with its VM", "disk", vm.Namespace+"/"+d, "from", m.Source.Node, "to", m.Target.Node)
			}
		}
	}
	for _, d := range m.Disks {
		cur, ok := c.disks.Get(runtime.NewKey(vm.Namespace, d.Name))
		if !ok || cur.Status.NodeName == "" || cur.Status.NodeName == m.Target.Node || cur.Status.NodeName != m.Source.Node {
			continue
		}
		body, _ := json.Marshal([]map[string]any{
			{"op": "test", "path": "/metadata/uid", "value": cur.UID},
			{"op": "test", "path": "/status/nodeName", "value": m.Source.Node},
			{"op": "replace", "path": "/status/nodeName", "value": m.Target.Node},
		})
		err := c.C.JSONPatchStatus(ctx, "virtualdisks", vm.Namespace, d.Name, body, nil)
		if client.IsNotFound(err) || client.IsConflict(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("moving VirtualDisk %s/%s to node %s: %w", vm.Namespace, d.Name, m.Target.Node, err)
		}
		c.Log.Info("local disk moved with its VM", "disk", vm.Namespace+"/"+d.Name, "from", m.Source.Node, "to", m.Target.Node)
	}
	return nil
}

func progressOf(m *v1alpha1.VirtualMachineMigrationState) string {
	if m.Progress == nil {
		return ""
	}
	return fmt.Sprintf("%d%%", m.Progress.Percent)
}

func progressMessage(m *v1alpha1.VirtualMachineMigrationState) string {
	if m.Target.Node != "" {
		return fmt.Sprintf("migrating from node %s to node %s (%s)", m.Source.Node, m.Target.Node, m.Phase)
	}
	return "choosing a target node"
}

func conditionMessage(op *v1alpha1.VirtualMachineOperation) string {
	if c := v1alpha1.FindCondition(op.Status.Conditions, v1alpha1.VMOPConditionCompleted); c != nil {
		return c.Message
	}
	return ""
}

// writeProgress writes an operation's progress.
func (c *Controller) writeProgress(ctx context.Context, op *v1alpha1.VirtualMachineOperation, p string) error {
	_, err := runtime.MergeStatus(ctx, c.C, "virtualmachineoperations", &op.ObjectMeta, map[string]any{"progress": p})
	return err
}

// writeOp writes an operation's phase and Completed condition (and an event when it ends).
func (c *Controller) writeOp(ctx context.Context, op *v1alpha1.VirtualMachineOperation, phase v1alpha1.VMOPPhase, reason, msg string) error {
	conds := append([]v1alpha1.Condition(nil), op.Status.Conditions...)
	st := v1alpha1.ConditionFalse
	if phase == v1alpha1.VMOPPhaseCompleted {
		st = v1alpha1.ConditionTrue
	}
	v1alpha1.SetCondition(&conds, v1alpha1.Condition{Type: v1alpha1.VMOPConditionCompleted, Status: st, Reason: reason, Message: msg})
	status := map[string]any{"phase": phase, "conditions": conds, "observedGeneration": op.Generation}
	if phase == v1alpha1.VMOPPhaseCompleted {
		status["progress"] = "100%"
	}
	if ok, err := runtime.MergeStatus(ctx, c.C, "virtualmachineoperations", &op.ObjectMeta, status); !ok {
		return err
	}
	op.Status.Phase, op.Status.Conditions = phase, conds
	if phase == v1alpha1.VMOPPhaseCompleted || phase == v1alpha1.VMOPPhaseFailed {
		c.Rec.OperationEvent(ctx, op, phase, msg)
	}
	c.Log.Info("operation", "op", op.Namespace+"/"+op.Name, "type", op.Spec.Type, "vm", op.Spec.VirtualMachineName, "phase", phase, "message", msg)
	return nil
}
