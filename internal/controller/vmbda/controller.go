// Package vmbda holds the VirtualMachineBlockDeviceAttachment controller.
//
// It accepts or holds back each attachment and reports its phase; the node agent running the
// VM does the hot-plug (internal/agent/hotplug_disk.go) and lists what it plugged in the VM's
// status.blockDeviceRefs, from which this controller derives the phase Attached. An
// attachment is:
//   - Pending while its VM is missing or not running (it is hot-plugged when the VM runs, at
//     every start, for as long as the attachment exists), while the VM migrates, or while its
//     device is not Ready;
//   - Failed when it can never be carried out as it is: the VM has no paravirtualization, or
//     the VirtualDisk is in another VM's spec or attached by another attachment (a writable
//     disk belongs to one VM at a time; images may be attached to many);
//   - InProgress once accepted, until the agent reports the device attached: Attached;
//   - Terminating once deleted, until the device is unplugged (or the VM does not run): then
//     the finalizer goes and the object with it.
package vmbda

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/qemu"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// Finalizer keeps an attachment until its device is unplugged.
const Finalizer = "virtualization.rakhsh.io/vmbda-unplug"

// Resource is the REST resource of attachments.
const Resource = "virtualmachineblockdeviceattachments"

// Condition reasons.
const (
	ReasonVirtualMachineNotFound   = "VirtualMachineNotFound"
	ReasonVirtualMachineNotRunning = "VirtualMachineNotRunning"
	ReasonBlockedByMigration       = "BlockedByMigration"
	ReasonNotSupported             = "HotplugNotSupported"
	ReasonVirtualMachineReady      = "VirtualMachineReady"
	ReasonBlockDeviceNotFound      = "BlockDeviceNotFound"
	ReasonBlockDeviceNotReady      = "BlockDeviceNotReady"
	ReasonBlockDeviceReady         = "BlockDeviceReady"
	ReasonConflict                 = "Conflict"
	ReasonAttached                 = "Attached"
	ReasonNotAttached              = "NotAttached"
	ReasonAttaching                = "AttachmentRequestSent"
)

// Config configures the controller.
type Config struct {
	runtime.Deps
}

// Controller is the attachment controller.
type Controller struct {
	runtime.Base
	bdas  *runtime.TypedInformer[v1alpha1.VirtualMachineBlockDeviceAttachment]
	vms   *runtime.TypedInformer[v1alpha1.VirtualMachine]
	disks *runtime.TypedInformer[v1alpha1.VirtualDisk]
	vis   *runtime.TypedInformer[v1alpha1.VirtualImage]
	cvis  *runtime.TypedInformer[v1alpha1.ClusterVirtualImage]
	ctl   *runtime.Controller
}

// New returns a controller; Run starts it.
func New(cfg Config) (*Controller, error) {
	if cfg.Client == nil {
		return nil, errors.New("vmbda: a client is required")
	}
	b := runtime.NewBase(cfg.Deps, "vmbda-controller")
	c := &Controller{Base: b}
	f := b.Informers
	c.bdas = runtime.For[v1alpha1.VirtualMachineBlockDeviceAttachment](f, Resource)
	c.vms, c.disks, c.vis, c.cvis = f.VirtualMachines(), f.VirtualDisks(), f.VirtualImages(), f.ClusterVirtualImages()
	inProject := func(k runtime.Key) []runtime.Key {
		ns, _ := k.Split()
		return c.bdas.KeysWhere(func(b *v1alpha1.VirtualMachineBlockDeviceAttachment) bool { return b.Namespace == ns })
	}
	c.ctl = runtime.NewController("vmbda", c.Log).
		For(c.bdas).
		Watches(c.vms, inProject).
		Watches(c.disks, inProject).
		Watches(c.vis, inProject).
		Watches(c.cvis, func(runtime.Key) []runtime.Key { return c.bdas.Keys() }).
		Workers(2).
		MaxBackoff(10 * time.Second).
		Build(c.reconcile)
	return c, nil
}

// Run works until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	return c.Base.Run(ctx, c.ctl)
}

func (c *Controller) reconcile(ctx context.Context, key runtime.Key) (runtime.Result, error) {
	cached, ok := c.bdas.Get(key)
	if !ok {
		return runtime.Result{}, nil
	}
	b := runtime.DeepCopy(cached)
	vm, _ := c.vms.Get(runtime.NewKey(b.Namespace, b.Spec.VirtualMachineName))
	if b.DeletionTimestamp != nil {
		return runtime.Result{}, c.finish(ctx, b, vm)
	}
	if !slices.Contains(b.Finalizers, Finalizer) {
		b.Finalizers = append(b.Finalizers, Finalizer)
		var out v1alpha1.VirtualMachineBlockDeviceAttachment
		if err := c.C.Update(ctx, Resource, b.Namespace, b.Name, b, &out); err != nil {
			if client.IsNotFound(err) {
				return runtime.Result{}, nil
			}
			return runtime.Result{}, err
		}
		b = &out
	}
	st := c.evaluate(b, vm)
	return runtime.Result{}, c.writeStatus(ctx, b, st)
}

// attached says whether vm's status lists the device of attachment name as attached.
func attached(vm *v1alpha1.VirtualMachine, name string) bool {
	if vm == nil || !running(vm) {
		return false
	}
	for _, r := range vm.Status.BlockDeviceRefs {
		if r.Hotplugged && r.VirtualMachineBlockDeviceAttachmentName == name && r.Attached {
			return true
		}
	}
	return false
}

func running(vm *v1alpha1.VirtualMachine) bool {
	switch vm.Status.Phase {
	case v1alpha1.VMPhaseRunning, v1alpha1.VMPhasePause, v1alpha1.VMPhaseMigrating, v1alpha1.VMPhaseStopping, v1alpha1.VMPhaseDegraded:
		return true
	}
	return false
}

// finish removes the finalizer of a deleted attachment once its device is unplugged (or its
// VM does not run, or is gone).
func (c *Controller) finish(ctx context.Context, b *v1alpha1.VirtualMachineBlockDeviceAttachment, vm *v1alpha1.VirtualMachine) error {
	if attached(vm, b.Name) {
		st := b.Status
		st.Phase = v1alpha1.VMBDAPhaseTerminating
		v1alpha1.SetCondition(&st.Conditions, v1alpha1.Condition{Type: v1alpha1.VMBDAConditionAttached, Status: v1alpha1.ConditionTrue,
			Reason: ReasonAttached, Message: "waiting for the node agent to unplug the device (the guest must release it)"})
		return c.writeStatus(ctx, b, st)
	}
	if !slices.Contains(b.Finalizers, Finalizer) {
		return nil
	}
	b.Finalizers = slices.DeleteFunc(b.Finalizers, func(f string) bool { return f == Finalizer })
	err := c.C.Update(ctx, Resource, b.Namespace, b.Name, b, nil)
	if client.IsNotFound(err) {
		return nil
	}
	return err
}

// evaluate computes the status of a live attachment.
func (c *Controller) evaluate(b *v1alpha1.VirtualMachineBlockDeviceAttachment, vm *v1alpha1.VirtualMachine) v1alpha1.VirtualMachineBlockDeviceAttachmentStatus {
	st := b.Status
	st.ObservedGeneration = b.Generation
	st.VirtualMachineName = b.Spec.VirtualMachineName
	set := func(typ string, ok bool, reason, msg string) {
		s := v1alpha1.ConditionFalse
		if ok {
			s = v1alpha1.ConditionTrue
		}
		v1alpha1.SetCondition(&st.Conditions, v1alpha1.Condition{Type: typ, Status: s, Reason: reason, Message: msg, ObservedGeneration: b.Generation})
	}
	notAttached := func(msg string) { set(v1alpha1.VMBDAConditionAttached, false, ReasonNotAttached, msg) }
	ref := b.Spec.BlockDeviceRef
	// The device.
	devOK, devReason, devMsg := c.device(b.Namespace, ref)
	set(v1alpha1.VMBDAConditionBlockDeviceReady, devOK, devReason, devMsg)
	// The VM.
	switch {
	case vm == nil:
		set(v1alpha1.VMBDAConditionVirtualMachineReady, false, ReasonVirtualMachineNotFound, fmt.Sprintf("VirtualMachine %q does not exist (yet)", b.Spec.VirtualMachineName))
		st.Phase = v1alpha1.VMBDAPhasePending
		notAttached("waiting for the virtual machine")
		return st
	}
	if ok, _ := qemu.Hotplug(vm); !ok {
		set(v1alpha1.VMBDAConditionVirtualMachineReady, false, ReasonNotSupported,
			"the virtual machine has no paravirtualization (enableParavirtualization false or osType Legacy): it takes no hot-plugged device; add the device to spec.blockDeviceRefs instead")
		st.Phase = v1alpha1.VMBDAPhaseFailed
		notAttached("hot-plug is not supported by this virtual machine")
		return st
	}
	if msg := c.conflict(b); msg != "" {
		set(v1alpha1.VMBDAConditionBlockDeviceReady, false, ReasonConflict, msg)
		st.Phase = v1alpha1.VMBDAPhaseFailed
		notAttached(msg)
		return st
	}
	if attached(vm, b.Name) {
		set(v1alpha1.VMBDAConditionVirtualMachineReady, true, ReasonVirtualMachineReady, "the virtual machine runs")
		set(v1alpha1.VMBDAConditionAttached, true, ReasonAttached, "the device is attached to the running virtual machine on node "+vm.Status.NodeName)
		st.Phase = v1alpha1.VMBDAPhaseAttached
		return st
	}
	switch {
	case vm.Status.Phase == v1alpha1.VMPhaseMigrating || vm.Status.MigrationState.Active():
		set(v1alpha1.VMBDAConditionVirtualMachineReady, false, ReasonBlockedByMigration, "the virtual machine is migrating: the device is attached once the migration ends")
		st.Phase = v1alpha1.VMBDAPhasePending
		notAttached("blocked by the migration")
		return st
	case vm.Status.Phase != v1alpha1.VMPhaseRunning && vm.Status.Phase != v1alpha1.VMPhasePause:
		set(v1alpha1.VMBDAConditionVirtualMachineReady, false, ReasonVirtualMachineNotRunning,
			fmt.Sprintf("the virtual machine is %s: the device is hot-plugged when it runs", orPending(vm.Status.Phase)))
		st.Phase = v1alpha1.VMBDAPhasePending
		notAttached("waiting for the virtual machine to run")
		return st
	}
	set(v1alpha1.VMBDAConditionVirtualMachineReady, true, ReasonVirtualMachineReady, "the virtual machine runs")
	if !devOK {
		st.Phase = v1alpha1.VMBDAPhasePending
		notAttached("waiting for the block device")
		return st
	}
	st.Phase = v1alpha1.VMBDAPhaseInProgress
	set(v1alpha1.VMBDAConditionAttached, false, ReasonAttaching, "the node agent of "+vm.Status.NodeName+" hot-plugs the device (its events on this attachment say why when it fails)")
	return st
}

func orPending(p v1alpha1.VirtualMachinePhase) string {
	if p == "" {
		return string(v1alpha1.VMPhasePending)
	}
	return string(p)
}

// device says whether the referenced disk or image is ready.
func (c *Controller) device(ns string, ref v1alpha1.VMBDAObjectRef) (bool, string, string) {
	what := fmt.Sprintf("%s %q", ref.Kind, ref.Name)
	var phase string
	var found bool
	switch ref.Kind {
	case v1alpha1.BlockDeviceKindVirtualDisk:
		if d, ok := c.disks.Get(runtime.NewKey(ns, ref.Name)); ok {
			found, phase = true, string(d.Status.Phase)
		}
	case v1alpha1.BlockDeviceKindVirtualImage:
		if d, ok := c.vis.Get(runtime.NewKey(ns, ref.Name)); ok {
			found, phase = true, string(d.Status.Phase)
		}
	case v1alpha1.BlockDeviceKindClusterVirtualImage:
		if d, ok := c.cvis.Get(runtime.NewKey("", ref.Name)); ok {
			found, phase = true, string(d.Status.Phase)
		}
	default:
		return false, ReasonBlockDeviceNotFound, fmt.Sprintf("kind %q is not VirtualDisk, VirtualImage or ClusterVirtualImage", ref.Kind)
	}
	switch {
	case !found:
		return false, ReasonBlockDeviceNotFound, what + " does not exist (yet)"
	case phase != "Ready":
		return false, ReasonBlockDeviceNotReady, fmt.Sprintf("%s is %s, not Ready", what, orPending(v1alpha1.VirtualMachinePhase(phase)))
	}
	return true, ReasonBlockDeviceReady, what + " is Ready"
}

// conflict says why a VirtualDisk cannot be attached: it is in a VM's spec, or another
// attachment (made earlier) has it. Images are read-only and shared.
func (c *Controller) conflict(b *v1alpha1.VirtualMachineBlockDeviceAttachment) string {
	ref := b.Spec.BlockDeviceRef
	if ref.Kind != v1alpha1.BlockDeviceKindVirtualDisk {
		return ""
	}
	for _, vm := range c.vms.List() {
		if vm.Namespace != b.Namespace {
			continue
		}
		for _, r := range vm.Spec.BlockDeviceRefs {
			if r.Kind == v1alpha1.BlockDeviceKindVirtualDisk && r.Name == ref.Name {
				return fmt.Sprintf("VirtualDisk %q is in the spec.blockDeviceRefs of VirtualMachine %q: a writable disk is attached to one virtual machine at a time", ref.Name, vm.Name)
			}
		}
	}
	for _, o := range c.bdas.List() {
		if o.Namespace != b.Namespace || o.UID == b.UID || o.Spec.BlockDeviceRef != ref {
			continue
		}
		if earlier(o, b) {
			return fmt.Sprintf("VirtualDisk %q is attached by VirtualMachineBlockDeviceAttachment %q (to VirtualMachine %q): a writable disk is attached to one virtual machine at a time",
				ref.Name, o.Name, o.Spec.VirtualMachineName)
		}
	}
	return ""
}

// earlier orders attachments by creation, then name.
func earlier(a, b *v1alpha1.VirtualMachineBlockDeviceAttachment) bool {
	ta, tb := a.CreationTimestamp, b.CreationTimestamp
	if ta != nil && tb != nil && !ta.Equal(tb.Time) {
		return ta.Before(tb.Time)
	}
	return a.Name < b.Name
}

func (c *Controller) writeStatus(ctx context.Context, b *v1alpha1.VirtualMachineBlockDeviceAttachment, st v1alpha1.VirtualMachineBlockDeviceAttachmentStatus) error {
	x, _ := json.Marshal(b.Status)
	y, _ := json.Marshal(st)
	if string(x) == string(y) {
		return nil
	}
	b.Status = st
	err := c.C.UpdateStatus(ctx, Resource, b.Namespace, b.Name, b, nil)
	if client.IsNotFound(err) || client.IsConflict(err) {
		// Gone, or changed meanwhile: the change brings another reconcile.
		return nil
	}
	return err
}
