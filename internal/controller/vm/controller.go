// Package vm is the VirtualMachine controller: it applies the lifecycle policy. From
// spec.runPolicy, the VM's VirtualMachineOperations (Start, Stop, Restart), the paused
// annotation and what the node agent reported (status.lastExit) it writes
// status.powerRequest, which the agent of the VM's node carries out. It also checks the
// VM's block devices (condition BlockDevicesReady), writes the phase of VMs not bound to a
// node (Pending, Stopped, Terminating), keeps the cleanup finalizer and drives the
// operations' phases.
//
// It owns these VM status fields: powerRequest, the BlockDevicesReady condition, and phase
// while status.nodeName is empty. Writes are merge patches of those fields guarded by the
// resourceVersion.
package vm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// Finalizer keeps a VM object until its node agent has stopped its QEMU and removed its run
// directory; this controller alone adds and removes it.
const Finalizer = v1alpha1.VMCleanupFinalizer

// Reasons of the BlockDevicesReady condition.
const (
	ReasonBlockDevicesReady    = "BlockDevicesReady"
	ReasonBlockDevicesNotReady = "BlockDevicesNotReady"
)

// Config configures the controller.
type Config struct {
	runtime.Deps
	// Workers is the number of VMs reconciled at once; default 4.
	Workers int
	// BaseBackoff and MaxBackoff bound the delay of restarts after crashes; defaults 1 s, 5 min.
	BaseBackoff, MaxBackoff time.Duration
	// Now and NewID are injected for tests; defaults time.Now and random hex.
	Now   func() time.Time
	NewID func() string
}

// Controller is the VM controller.
type Controller struct {
	cfg Config

	runtime.Base
	vms     *runtime.TypedInformer[v1alpha1.VirtualMachine]
	ops     *runtime.TypedInformer[v1alpha1.VirtualMachineOperation]
	disks   *runtime.TypedInformer[v1alpha1.VirtualDisk]
	images  *runtime.TypedInformer[v1alpha1.VirtualImage]
	cimages *runtime.TypedInformer[v1alpha1.ClusterVirtualImage]
	ctl     *runtime.Controller
}

// New returns a controller; Run starts it.
func New(cfg Config) (*Controller, error) {
	if cfg.Client == nil {
		return nil, errors.New("vm controller: a client is required")
	}
	cfg.Workers = runtime.OrDefault(cfg.Workers, 4)
	cfg.BaseBackoff = runtime.OrDefault(cfg.BaseBackoff, DefaultBaseBackoff)
	cfg.MaxBackoff = runtime.OrDefault(cfg.MaxBackoff, DefaultMaxBackoff)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.NewID == nil {
		cfg.NewID = randomID
	}
	b := runtime.NewBase(cfg.Deps, "rakhsh-vm-controller", "component", "vm-controller")
	c := &Controller{cfg: cfg, Base: b}
	f := b.Informers
	c.vms, c.ops, c.disks = f.VirtualMachines(), f.VirtualMachineOperations(), f.VirtualDisks()
	c.images, c.cimages = f.VirtualImages(), f.ClusterVirtualImages()
	c.ctl = runtime.NewController("vm", c.Log).
		For(c.vms).
		Watches(c.ops, func(k runtime.Key) []runtime.Key {
			if op, ok := c.ops.Get(k); ok {
				return []runtime.Key{runtime.NewKey(op.Namespace, op.Spec.VirtualMachineName)}
			}
			return nil
		}).
		Watches(c.disks, c.usersOf(v1alpha1.BlockDeviceKindVirtualDisk)).
		Watches(c.images, c.usersOf(v1alpha1.BlockDeviceKindVirtualImage)).
		Watches(c.cimages, c.usersOf(v1alpha1.BlockDeviceKindClusterVirtualImage)).
		Workers(cfg.Workers).
		MaxBackoff(10 * time.Second).
		Build(c.reconcile)
	return c, nil
}

func randomID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Run reconciles until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	return c.Base.Run(ctx, c.ctl)
}

// usersOf maps a changed disk or image to the VMs that reference it.
func (c *Controller) usersOf(kind v1alpha1.BlockDeviceKind) runtime.MapFunc {
	return func(k runtime.Key) []runtime.Key {
		ns, name := k.Split()
		var out []runtime.Key
		for _, vm := range c.vms.List() {
			if kind != v1alpha1.BlockDeviceKindClusterVirtualImage && vm.Namespace != ns {
				continue
			}
			for _, r := range vm.Spec.BlockDeviceRefs {
				if r.Kind == kind && r.Name == name {
					out = append(out, runtime.KeyOf(vm))
					break
				}
			}
		}
		return out
	}
}

// opsFor returns the operations naming the VM.
func (c *Controller) opsFor(ns, name string) []*v1alpha1.VirtualMachineOperation {
	var out []*v1alpha1.VirtualMachineOperation
	for _, op := range c.ops.List() {
		if op.Namespace == ns && op.Spec.VirtualMachineName == name && op.DeletionTimestamp == nil {
			out = append(out, runtime.DeepCopy(op))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (c *Controller) reconcile(ctx context.Context, key runtime.Key) (runtime.Result, error) {
	ns, name := key.Split()
	cached, ok := c.vms.Get(key)
	if !ok {
		for _, op := range c.opsFor(ns, name) {
			// Power operations, and the types this controller fails as not implemented,
			// fail when their VM does not exist: nothing else would ever give them a phase.
			if (isPowerOp(op.Spec.Type) || c.notImplemented(op.Spec.Type)) && isActive(op.Status.Phase) {
				if err := c.writeOp(ctx, op, opUpdate{name: op.Name, phase: v1alpha1.VMOPPhaseFailed,
					reason: v1alpha1.VMOPReasonVirtualMachineNotFound, message: fmt.Sprintf("virtual machine %q not found", name)}); err != nil {
					return runtime.Result{}, err
				}
			}
		}
		return runtime.Result{}, nil
	}
	vm := *runtime.DeepCopy(cached) // the reconciler changes its copy
	if vm.DeletionTimestamp != nil {
		return runtime.Result{}, c.finishDelete(ctx, &vm)
	}
	if !hasFinalizer(&vm) {
		if err := c.addFinalizer(ctx, &vm); err != nil {
			return runtime.Result{}, err
		}
	}

	ops := c.opsFor(ns, name)
	for _, op := range ops {
		// A type no controller carries out (see notImplemented) is failed at once rather
		// than left without a phase.
		if c.notImplemented(op.Spec.Type) && op.Status.Phase == "" {
			if err := c.writeOp(ctx, op, opUpdate{name: op.Name, phase: v1alpha1.VMOPPhaseFailed, reason: v1alpha1.VMOPReasonNotImplemented,
				message: fmt.Sprintf("operation type %s is not implemented in this version of Rakhsh yet; only Start, Stop, Restart, Migrate and Evict are", op.Spec.Type)}); err != nil {
				return runtime.Result{}, err
			}
		}
	}
	var d decision
	var bdCond v1alpha1.Condition
	written, err := c.patchStatus(ctx, &vm, func(v *v1alpha1.VirtualMachine) error {
		pol := policy{now: c.cfg.Now(), newID: c.cfg.NewID, baseBackoff: c.cfg.BaseBackoff, maxBackoff: c.cfg.MaxBackoff}
		d = pol.decide(v, ops)
		v.Status.PowerRequest = d.power
		bdCond = c.blockDevicesCondition(v)
		v1alpha1.SetCondition(&v.Status.Conditions, bdCond)
		if d.backoff != nil && wantsRunning(d.power) {
			v1alpha1.SetCondition(&v.Status.Conditions, d.backoff.condition())
		} else {
			v1alpha1.RemoveCondition(&v.Status.Conditions, v1alpha1.VMConditionRestartBackoff)
		}
		if v.Status.NodeName == "" {
			p := v1alpha1.VMPhaseStopped
			if wantsRunning(d.power) {
				p = v1alpha1.VMPhasePending
			}
			v.SetPhase(p, v1alpha1.NewTime(c.cfg.Now()))
		}
		return nil
	})
	if err != nil {
		return runtime.Result{}, err
	}
	for _, u := range d.ops {
		for _, op := range ops {
			if op.Name == u.name {
				if err := c.writeOp(ctx, op, u); err != nil {
					return runtime.Result{}, err
				}
			}
		}
	}
	if written != nil && bdCond.Status == v1alpha1.ConditionFalse {
		c.Log.Debug("block devices not ready", "vm", string(key), "why", bdCond.Message)
	}
	return runtime.Result{RequeueAfter: d.requeue}, nil
}

// blockDevicesCondition checks that every referenced disk and image exists and is Ready.
func (c *Controller) blockDevicesCondition(vm *v1alpha1.VirtualMachine) v1alpha1.Condition {
	var problems []string
	for _, r := range vm.Spec.BlockDeviceRefs {
		k := runtime.NewKey(vm.Namespace, r.Name)
		var phase string
		var found bool
		switch r.Kind {
		case v1alpha1.BlockDeviceKindVirtualDisk:
			var d *v1alpha1.VirtualDisk
			if d, found = c.disks.Get(k); found {
				phase = string(d.Status.Phase)
			}
		case v1alpha1.BlockDeviceKindVirtualImage:
			var i *v1alpha1.VirtualImage
			if i, found = c.images.Get(k); found {
				phase = string(i.Status.Phase)
			}
		case v1alpha1.BlockDeviceKindClusterVirtualImage:
			var i *v1alpha1.ClusterVirtualImage
			if i, found = c.cimages.Get(runtime.NewKey("", r.Name)); found {
				phase = string(i.Status.Phase)
			}
		default:
			problems = append(problems, fmt.Sprintf("%s %q: unsupported kind", r.Kind, r.Name))
			continue
		}
		switch {
		case !found:
			problems = append(problems, fmt.Sprintf("%s %q not found", r.Kind, r.Name))
		case phase != "Ready":
			ph := phase
			if ph == "" {
				ph = "Pending"
			}
			problems = append(problems, fmt.Sprintf("%s %q is %s, not Ready", r.Kind, r.Name, ph))
		}
	}
	if len(problems) > 0 {
		return v1alpha1.Condition{Type: v1alpha1.VMConditionBlockDevicesReady, Status: v1alpha1.ConditionFalse,
			Reason: ReasonBlockDevicesNotReady, Message: strings.Join(problems, "; "), ObservedGeneration: vm.Generation}
	}
	return v1alpha1.Condition{Type: v1alpha1.VMConditionBlockDevicesReady, Status: v1alpha1.ConditionTrue,
		Reason: ReasonBlockDevicesReady, Message: fmt.Sprintf("all %d block devices are ready", len(vm.Spec.BlockDeviceRefs)), ObservedGeneration: vm.Generation}
}

// controllerFields are the status fields this controller writes (phase and stats only for
// VMs without a node; the mutate function leaves them alone otherwise).
var controllerFields = []string{"powerRequest", "conditions", "phase", "stats"}

// controllerGuards are status fields this controller's decisions read but do not write: it
// writes the phase of a VM only while no node has it.
var controllerGuards = []string{"nodeName"}

// patchStatus reads the VM fresh, applies mutate, and writes the owned fields it changed,
// each guarded by the value it read (and nodeName); it retries conflicts. It returns nil
// when nothing changed.
func (c *Controller) patchStatus(ctx context.Context, vm *v1alpha1.VirtualMachine, mutate func(v *v1alpha1.VirtualMachine) error) (*v1alpha1.VirtualMachine, error) {
	return runtime.PatchVMStatus(ctx, c.C, vm, controllerFields, controllerGuards, mutate)
}

func hasFinalizer(vm *v1alpha1.VirtualMachine) bool {
	for _, f := range vm.Finalizers {
		if f == Finalizer {
			return true
		}
	}
	return false
}

func (c *Controller) addFinalizer(ctx context.Context, vm *v1alpha1.VirtualMachine) error {
	// A JSON patch whose tests are the preconditions (the same object, the finalizers as the
	// cache saw them: null when there are none) instead of the cached resourceVersion, which
	// the status writes of the first milliseconds of a VM make stale.
	var seen any
	if len(vm.Finalizers) > 0 {
		seen = vm.Finalizers
	}
	fins := append(append([]string{}, vm.Finalizers...), Finalizer)
	body, _ := json.Marshal([]map[string]any{
		{"op": "test", "path": "/metadata/uid", "value": vm.UID},
		{"op": "test", "path": "/metadata/finalizers", "value": seen},
		{"op": "add", "path": "/metadata/finalizers", "value": fins},
	})
	err := c.C.JSONPatch(ctx, "virtualmachines", vm.Namespace, vm.Name, body, nil)
	if client.IsConflict(err) || client.IsNotFound(err) {
		return nil // a newer version is on its way through the informer
	}
	return err
}

// finishDelete handles a VM being deleted: operations fail; a VM bound to no node loses its
// finalizer here (a bound one is cleaned up by its node's agent).
func (c *Controller) finishDelete(ctx context.Context, vm *v1alpha1.VirtualMachine) error {
	for _, op := range c.opsFor(vm.Namespace, vm.Name) {
		if isPowerOp(op.Spec.Type) && isActive(op.Status.Phase) {
			if err := c.writeOp(ctx, op, opUpdate{name: op.Name, phase: v1alpha1.VMOPPhaseFailed,
				reason: v1alpha1.VMOPReasonNotApplicableForPhase, message: "the virtual machine is being deleted"}); err != nil {
				return err
			}
		}
	}
	if vm.Status.NodeName != "" || !hasFinalizer(vm) {
		return nil
	}
	if vm.Status.Phase != v1alpha1.VMPhaseTerminating {
		_, err := c.patchStatus(ctx, vm, func(v *v1alpha1.VirtualMachine) error {
			if v.Status.NodeName == "" {
				v.SetPhase(v1alpha1.VMPhaseTerminating, v1alpha1.NewTime(c.cfg.Now()))
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	// Remove the finalizer only while no node holds the VM: the patch is guarded by the
	// resourceVersion of a read that saw no node, so a concurrent binding makes it fail.
	var v v1alpha1.VirtualMachine
	if err := c.C.Get(ctx, "virtualmachines", vm.Namespace, vm.Name, &v); err != nil {
		if client.IsNotFound(err) {
			return nil
		}
		return err
	}
	if v.UID != vm.UID || v.Status.NodeName != "" {
		return nil
	}
	var fins []string
	for _, f := range v.Finalizers {
		if f != Finalizer {
			fins = append(fins, f)
		}
	}
	if fins == nil {
		fins = []string{}
	}
	body, _ := json.Marshal(map[string]any{"metadata": map[string]any{"resourceVersion": v.ResourceVersion, "finalizers": fins}})
	err := c.C.Patch(ctx, "virtualmachines", v.Namespace, v.Name, body, nil)
	if client.IsNotFound(err) {
		return nil
	}
	if client.IsConflict(err) {
		return fmt.Errorf("removing the finalizer of %s/%s: %w", v.Namespace, v.Name, err)
	}
	return err
}

// writeOp writes an operation's phase and conditions.
func (c *Controller) writeOp(ctx context.Context, op *v1alpha1.VirtualMachineOperation, u opUpdate) error {
	st := op.Status
	st.Conditions = append([]v1alpha1.Condition(nil), st.Conditions...)
	st.Phase = u.phase
	st.ObservedGeneration = op.Generation
	switch u.phase {
	case v1alpha1.VMOPPhaseInProgress:
		v1alpha1.SetCondition(&st.Conditions, v1alpha1.Condition{Type: v1alpha1.VMOPConditionCompleted, Status: v1alpha1.ConditionFalse, Reason: "InProgress", Message: u.message})
	case v1alpha1.VMOPPhaseCompleted:
		v1alpha1.SetCondition(&st.Conditions, v1alpha1.Condition{Type: v1alpha1.VMOPConditionCompleted, Status: v1alpha1.ConditionTrue, Reason: u.reason, Message: u.message})
	default:
		v1alpha1.SetCondition(&st.Conditions, v1alpha1.Condition{Type: v1alpha1.VMOPConditionCompleted, Status: v1alpha1.ConditionFalse, Reason: u.reason, Message: u.message})
	}
	if u.signal {
		sc := v1alpha1.Condition{Type: v1alpha1.VMOPConditionSignalSent, Status: v1alpha1.ConditionTrue, Reason: "SignalSent", Message: u.message}
		if !u.signalAt.IsZero() {
			at := v1alpha1.NewTime(u.signalAt)
			sc.LastTransitionTime = &at
		}
		v1alpha1.SetCondition(&st.Conditions, sc)
	}
	status := map[string]any{"phase": st.Phase, "conditions": st.Conditions, "observedGeneration": st.ObservedGeneration}
	if ok, err := runtime.MergeStatus(ctx, c.C, "virtualmachineoperations", &op.ObjectMeta, status); !ok {
		return err
	}
	if u.phase != v1alpha1.VMOPPhaseInProgress {
		c.Rec.OperationEvent(ctx, op, u.phase, u.message)
	}
	c.Log.Info("operation", "op", op.Namespace+"/"+op.Name, "type", op.Spec.Type, "vm", op.Spec.VirtualMachineName, "phase", u.phase, "message", u.message)
	return nil
}

// notImplemented says no controller carries out operations of type t, so this one fails them
// with reason NotImplemented. Migrate and Evict belong to the migration controller.
// Restore and Clone belong to the snapshot controller.
func (c *Controller) notImplemented(t v1alpha1.VMOPType) bool {
	return !isPowerOp(t) && !isMigrationOp(t) && t != v1alpha1.VMOPTypeRestore && t != v1alpha1.VMOPTypeClone
}
