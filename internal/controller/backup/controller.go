// Package backup is the reconciler of VirtualMachineBackups on the control plane. It checks
// a new backup's target and VM and hands the backup to the agent of the VM's node
// (status.nodeName, phase InProgress), which takes it through QEMU (internal/agent/backup.go)
// and writes the outcome. One backup of a VM runs at a time; the others wait, Pending.
//
// The controller writes only a backup's status while it is new or Pending, guarded by its
// resourceVersion; from InProgress on the node's agent is its sole writer.
package backup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// waitRetry is how often a waiting backup is looked at again.
var waitRetry = 2 * time.Second

// nodeDownAfter is how long the agent of the node of a backup in progress may be gone (the
// node's Ready is Unknown: no heartbeat) before the backup fails here: its agent, the
// backup's sole writer, cannot end it. A VM that runs there is moved by HA or not; a stopped
// VM's disks are read by that node only.
var nodeDownAfter = 2 * time.Minute

// Config configures the controller.
type Config struct {
	runtime.Deps
	// NodeName is the control plane's own node: backups of stopped VMs whose disks are all on
	// Shared storage are taken there.
	NodeName string
	// Now is the clock of schedules (default time.Now).
	Now func() time.Time
}

// Controller hands backups to nodes.
type Controller struct {
	runtime.Base
	ctl       *runtime.Controller
	schedCtl  *runtime.Controller
	now       func() time.Time
	schedules *runtime.TypedInformer[v1alpha1.BackupSchedule]
	backups   *runtime.TypedInformer[v1alpha1.VirtualMachineBackup]
	vms       *runtime.TypedInformer[v1alpha1.VirtualMachine]
	disks     *runtime.TypedInformer[v1alpha1.VirtualDisk]
	nodes     *runtime.TypedInformer[v1alpha1.Node]
	targets   *runtime.TypedInformer[v1alpha1.BackupTarget]
	nodeName  string

	mu sync.Mutex
	// nodeMissing holds when this controller first saw a backup's node absent (removed
	// from the cluster), for the wait of nodeDownAfter.
	nodeMissing map[string]time.Time
}

// New returns a controller; Run starts it.
func New(cfg Config) *Controller {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	b := runtime.NewBase(cfg.Deps, "backup-controller", "controller", "backup")
	c := &Controller{Base: b, now: cfg.Now, nodeName: cfg.NodeName}
	f := b.Informers
	c.backups = runtime.For[v1alpha1.VirtualMachineBackup](f, "virtualmachinebackups")
	c.targets = runtime.For[v1alpha1.BackupTarget](f, "backuptargets")
	c.vms, c.disks, c.nodes = f.VirtualMachines(), f.VirtualDisks(), f.Nodes()
	c.ctl = runtime.NewController("virtualmachinebackups", c.Log).
		For(c.backups).
		Watches(c.vms, c.backupsOfVM).
		Watches(c.targets, c.backupsOfTarget).
		Watches(c.nodes, c.backupsOfNode).
		Reads(c.disks).
		Workers(1).
		Build(c.reconcile)
	c.schedules = runtime.For[v1alpha1.BackupSchedule](f, "backupschedules")
	c.schedCtl = runtime.NewController("backupschedules", c.Log).
		For(c.schedules).
		Watches(c.backups, c.scheduleOfBackup).
		Workers(1).
		Build(c.reconcileSchedule)
	return c
}

// Run reconciles until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	if c.C == nil {
		return errors.New("backup controller: Client is required")
	}
	return c.Base.Run(ctx, c.ctl, c.schedCtl)
}

// scheduleOfBackup: a backup's schedule prunes when the backup ends.
func (c *Controller) scheduleOfBackup(k runtime.Key) []runtime.Key {
	b, ok := c.backups.Get(k)
	if !ok || b.Labels[v1alpha1.LabelBackupSchedule] == "" {
		return nil
	}
	return []runtime.Key{runtime.NewKey(b.Namespace, b.Labels[v1alpha1.LabelBackupSchedule])}
}

func waiting(b *v1alpha1.VirtualMachineBackup) bool {
	return b.Status.Phase == "" || b.Status.Phase == v1alpha1.BackupPhasePending
}

func (c *Controller) backupsOfVM(k runtime.Key) []runtime.Key {
	ns, name := k.Split()
	return c.backups.KeysWhere(func(b *v1alpha1.VirtualMachineBackup) bool {
		return b.Namespace == ns && b.Spec.VirtualMachineName == name && (waiting(b) || b.Status.Phase == v1alpha1.BackupPhaseInProgress)
	})
}

func (c *Controller) backupsOfTarget(k runtime.Key) []runtime.Key {
	_, name := k.Split()
	return c.backups.KeysWhere(func(b *v1alpha1.VirtualMachineBackup) bool { return b.Spec.BackupTargetName == name && waiting(b) })
}

// backupsOfNode: the backups in progress on a node are looked at when its readiness changes.
func (c *Controller) backupsOfNode(k runtime.Key) []runtime.Key {
	_, name := k.Split()
	return c.backups.KeysWhere(func(b *v1alpha1.VirtualMachineBackup) bool {
		return b.Status.Phase == v1alpha1.BackupPhaseInProgress && b.Status.NodeName == name
	})
}

// nodeDown says why node's agent has been gone for nodeDownAfter ("" while it is not), or
// how long until it will have been. A node that no longer exists (removed from the cluster,
// its credential revoked) counts as gone from when this controller first found it missing.
func (c *Controller) nodeDown(node string) (why string, wait time.Duration) {
	n, ok := c.nodes.Get(runtime.NewKey("", node))
	c.mu.Lock()
	first, seen := c.nodeMissing[node]
	switch {
	case ok:
		delete(c.nodeMissing, node)
	case !seen:
		if c.nodeMissing == nil {
			c.nodeMissing = map[string]time.Time{}
		}
		first = c.now()
		c.nodeMissing[node] = first
	}
	c.mu.Unlock()
	if !ok {
		if left := nodeDownAfter - c.now().Sub(first); left > 0 {
			return "", left
		}
		return fmt.Sprintf("node %q no longer exists (it was removed from the cluster): its agent cannot finish the backup", node), 0
	}
	// Only a node whose agent is gone: it stopped heartbeating (Unknown, written by the node
	// lifecycle controller). An agent that reports a problem of its own (QEMU unusable) or is
	// fenced (it lost its lease, and says so in its heartbeats) still ends its backups.
	r := v1alpha1.FindCondition(n.Status.Conditions, v1alpha1.NodeConditionReady)
	if r == nil || r.Status != v1alpha1.ConditionUnknown {
		return "", 0
	}
	var since time.Time // since when the agent is gone; zero: not known, long enough
	switch {
	case r.LastTransitionTime != nil:
		since = r.LastTransitionTime.Time
	case n.Status.LastHeartbeatTime != nil:
		since = n.Status.LastHeartbeatTime.Time
	}
	if left := nodeDownAfter - c.now().Sub(since); left > 0 {
		return "", left
	}
	msg := fmt.Sprintf("node %q has not been Ready since %s (%s", node, since.UTC().Format(time.RFC3339), r.Reason)
	if since.IsZero() {
		msg = fmt.Sprintf("node %q is not Ready (%s", node, r.Reason)
	}
	if r.Message != "" {
		msg += ": " + r.Message
	}
	return msg + "): its agent cannot finish the backup", 0
}

func (c *Controller) reconcile(ctx context.Context, key runtime.Key) (runtime.Result, error) {
	b, ok := c.backups.Get(key)
	if !ok || b.DeletionTimestamp != nil {
		return runtime.Result{}, nil
	}
	switch b.Status.Phase {
	case "", v1alpha1.BackupPhasePending:
		return c.handOver(ctx, b)
	case v1alpha1.BackupPhaseCompleted, v1alpha1.BackupPhaseFailed:
		if b.Status.StoppedVM && !b.Status.RestartedVM {
			return c.restartAfterBackup(ctx, b)
		}
	case v1alpha1.BackupPhaseInProgress:
		// The node's agent owns it now. A backup whose VM is gone or left the node fails
		// there; the agent of a node that is gone cannot say so: the backup fails here.
		vm, ok := c.vms.Get(runtime.NewKey(b.Namespace, b.Spec.VirtualMachineName))
		switch {
		case !ok || vm.UID != b.Status.VirtualMachineUID:
			return runtime.Result{}, c.fail(ctx, b, fmt.Sprintf("the VirtualMachine %q is gone", b.Spec.VirtualMachineName))
		case b.Status.Stopped && vm.Status.NodeName != "":
			return runtime.Result{}, c.fail(ctx, b, fmt.Sprintf("the VirtualMachine %q started (on node %q) during the backup of its stopped disks", vm.Name, vm.Status.NodeName))
		case !b.Status.Stopped && vm.Status.NodeName != b.Status.NodeName:
			return runtime.Result{}, c.fail(ctx, b, fmt.Sprintf("the VirtualMachine %q left node %q during the backup", b.Spec.VirtualMachineName, b.Status.NodeName))
		}
		if why, wait := c.nodeDown(b.Status.NodeName); why != "" {
			return runtime.Result{}, c.fail(ctx, b, why)
		} else if wait > 0 {
			return runtime.Result{RequeueAfter: wait}, nil
		}
	}
	return runtime.Result{}, nil
}

// handOver checks a new backup and gives it to the VM's node.
func (c *Controller) handOver(ctx context.Context, b *v1alpha1.VirtualMachineBackup) (runtime.Result, error) {
	if _, ok := c.targets.Get(runtime.NewKey("", b.Spec.BackupTargetName)); !ok {
		return c.wait(ctx, b, fmt.Sprintf("BackupTarget %q does not exist", b.Spec.BackupTargetName))
	}
	vm, ok := c.vms.Get(runtime.NewKey(b.Namespace, b.Spec.VirtualMachineName))
	if !ok {
		return runtime.Result{}, c.fail(ctx, b, fmt.Sprintf("VirtualMachine %q does not exist in project %q", b.Spec.VirtualMachineName, b.Namespace))
	}
	// A backup in mode stop that stopped the VM holds it (stopped) until it has started it
	// again: no other backup of the VM is handed over meanwhile.
	if o := c.vmHeldByBackup(b, vm); o != "" {
		return c.wait(ctx, b, fmt.Sprintf("backup %q (mode stop) holds the VM stopped until it has ended and started it again", o))
	}
	node, stopped := vm.Status.NodeName, false
	switch vm.Status.Phase {
	case v1alpha1.VMPhaseRunning, v1alpha1.VMPhasePause, v1alpha1.VMPhaseStopping:
		if b.Spec.Mode == v1alpha1.BackupModeStop && (vm.Status.Phase != v1alpha1.VMPhaseStopping || b.Status.StoppedVM) {
			return c.stopForBackup(ctx, b, vm)
		}
		if vm.Status.Phase != v1alpha1.VMPhaseRunning {
			return c.wait(ctx, b, fmt.Sprintf("the VirtualMachine is %s; the backup starts once it runs or is stopped", vm.Status.Phase))
		}
		if node == "" {
			return c.wait(ctx, b, "the VirtualMachine is not bound to a node yet")
		}
	case v1alpha1.VMPhaseStopped, "":
		if node != "" {
			return c.wait(ctx, b, fmt.Sprintf("the VirtualMachine is %s but still holds node %q", phaseOr(vm.Status.Phase), node))
		}
		var why string
		if node, why = c.stoppedVMNode(vm); node == "" {
			return runtime.Result{}, c.fail(ctx, b, why)
		}
		stopped = true
	default:
		return c.wait(ctx, b, fmt.Sprintf("the VirtualMachine is %s; the backup starts once it runs or is stopped", vm.Status.Phase))
	}
	if o := c.runningBackupOf(b); o != "" {
		return c.wait(ctx, b, fmt.Sprintf("backup %q of the VM runs; one backup of a VM runs at a time", o))
	}
	st := b.Status
	st.Conditions = slices.Clone(b.Status.Conditions)
	st.Phase = v1alpha1.BackupPhaseInProgress
	st.NodeName = node
	st.Stopped = stopped
	st.VirtualMachineUID = vm.UID
	now := v1alpha1.Now()
	st.StartedAt = &now
	st.ObservedGeneration = b.Generation
	msg := "handed to node " + node
	if stopped {
		msg += " (the VirtualMachine is stopped: its disks are read there without it)"
	}
	setCond(&st, b, v1alpha1.ConditionFalse, v1alpha1.BackupReasonInProgress, msg)
	c.Log.Info("backup handed to node", "backup", b.Namespace+"/"+b.Name, "node", node, "stopped", stopped)
	return runtime.Result{}, c.write(ctx, b, st)
}

// stoppedVMNode is the node that reads a stopped VM's disks: the node of its Local disks, or
// the control plane's own for disks on Shared storage; "" and why when there is none.
func (c *Controller) stoppedVMNode(vm *v1alpha1.VirtualMachine) (string, string) {
	node, n := "", 0
	for _, r := range vm.Spec.BlockDeviceRefs {
		if r.Kind != v1alpha1.BlockDeviceKindVirtualDisk {
			continue
		}
		d, ok := c.disks.Get(runtime.NewKey(vm.Namespace, r.Name))
		if !ok {
			return "", fmt.Sprintf("VirtualDisk %q of the stopped VirtualMachine does not exist", r.Name)
		}
		n++
		if dn := d.Status.NodeName; dn != "" {
			if node != "" && node != dn {
				return "", fmt.Sprintf("the stopped VirtualMachine's disks are on nodes %q and %q: no node reads them all", node, dn)
			}
			node = dn
		}
	}
	switch {
	case n == 0:
		return "", "the VirtualMachine has no VirtualDisk to back up"
	case node == "" && c.nodeName == "":
		return "", "the stopped VirtualMachine's disks are on Shared storage and this control plane runs no node agent to read them"
	case node == "":
		node = c.nodeName
	}
	return node, ""
}

func phaseOr(p v1alpha1.VirtualMachinePhase) string {
	if p == "" {
		return "not started"
	}
	return string(p)
}

func (c *Controller) wait(ctx context.Context, b *v1alpha1.VirtualMachineBackup, why string) (runtime.Result, error) {
	st := b.Status
	st.Conditions = slices.Clone(b.Status.Conditions)
	st.Phase = v1alpha1.BackupPhasePending
	st.ObservedGeneration = b.Generation
	setCond(&st, b, v1alpha1.ConditionFalse, v1alpha1.BackupReasonWaiting, why)
	return runtime.Result{RequeueAfter: waitRetry}, c.write(ctx, b, st)
}

func (c *Controller) fail(ctx context.Context, b *v1alpha1.VirtualMachineBackup, why string) error {
	st := b.Status
	st.Conditions = slices.Clone(b.Status.Conditions)
	st.Phase = v1alpha1.BackupPhaseFailed
	st.ObservedGeneration = b.Generation
	setCond(&st, b, v1alpha1.ConditionFalse, v1alpha1.BackupReasonFailed, why)
	c.Rec.Event(ctx, "VirtualMachineBackup", b, "Warning", v1alpha1.BackupReasonFailed, why)
	return c.write(ctx, b, st)
}

// write replaces the status guarded by the backup's resourceVersion: a node that wrote it
// meanwhile wins, and the backup is looked at again.
func (c *Controller) write(ctx context.Context, b *v1alpha1.VirtualMachineBackup, st v1alpha1.VirtualMachineBackupStatus) error {
	if equalStatus(b.Status, st) {
		return nil
	}
	n := *b
	n.Status = st
	err := c.C.UpdateStatus(ctx, "virtualmachinebackups", b.Namespace, b.Name, &n, nil)
	if client.IsNotFound(err) {
		return nil
	}
	return err
}

func setCond(st *v1alpha1.VirtualMachineBackupStatus, b *v1alpha1.VirtualMachineBackup, status, reason, msg string) {
	v1alpha1.SetCondition(&st.Conditions, v1alpha1.Condition{Type: v1alpha1.BackupConditionCompleted, Status: status, Reason: reason, Message: msg, ObservedGeneration: b.Generation})
}

func equalStatus(a, b v1alpha1.VirtualMachineBackupStatus) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}
