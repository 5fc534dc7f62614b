package disk

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// attachedVMs lists the VMs of the disk's project whose spec.blockDeviceRefs name it, sorted
// by name; Mounted is true while the VM's QEMU may have the disk open (Starting, Running,
// Pause, Stopping, Migrating, Degraded).
func (c *Controller) attachedVMs(d *v1alpha1.VirtualDisk) []v1alpha1.AttachedVirtualMachine {
	var out []v1alpha1.AttachedVirtualMachine
	for _, vm := range c.vms.List() {
		if vm.Namespace != d.Namespace {
			continue
		}
		for _, b := range vm.Spec.BlockDeviceRefs {
			if b.Kind == v1alpha1.BlockDeviceKindVirtualDisk && b.Name == d.Name {
				switch vm.Status.Phase {
				case v1alpha1.VMPhaseStarting, v1alpha1.VMPhaseRunning, v1alpha1.VMPhasePause, v1alpha1.VMPhaseStopping,
					v1alpha1.VMPhaseMigrating, v1alpha1.VMPhaseDegraded:
					out = append(out, v1alpha1.AttachedVirtualMachine{Name: vm.Name, Mounted: true})
				default:
					out = append(out, v1alpha1.AttachedVirtualMachine{Name: vm.Name})
				}
				break
			}
		}
		if hotplugged(vm, d.Name) {
			out = append(out, v1alpha1.AttachedVirtualMachine{Name: vm.Name, Mounted: true})
		}
	}
	slices.SortFunc(out, func(a, b v1alpha1.AttachedVirtualMachine) int {
		if a.Name < b.Name {
			return -1
		}
		if a.Name > b.Name {
			return 1
		}
		return 0
	})
	return out
}

// syncAttached writes status.attachedToVirtualMachines when it changed (a merge patch of that
// field only) and keeps d's copy current for the status writes that follow.
func (c *Controller) syncAttached(ctx context.Context, d *v1alpha1.VirtualDisk) error {
	now := c.attachedVMs(d)
	if slices.Equal(now, d.Status.AttachedToVirtualMachines) {
		return nil
	}
	val := any(now)
	if len(now) == 0 {
		val = nil // removes the field
	}
	patch, _ := json.Marshal(map[string]any{"status": map[string]any{"attachedToVirtualMachines": val}})
	if err := c.C.PatchStatus(ctx, "virtualdisks", d.Namespace, d.Name, patch, nil); err != nil {
		return err
	}
	d.Status.AttachedToVirtualMachines = now
	return nil
}

// projectDisks returns every disk of the VM's project: a VM that changes may attach, detach,
// mount or unmount any of them, or let go of one being deleted.
func (c *Controller) projectDisks(vmKey runtime.Key) []runtime.Key {
	ns, _ := vmKey.Split()
	var out []runtime.Key
	for _, k := range c.disks.Keys() {
		if dns, _ := k.Split(); dns == ns {
			out = append(out, k)
		}
	}
	return out
}

// diskSource returns the VirtualDisk of the same project a disk is copied from, or why it
// waits: the source must be Ready and no running VM may have it open (the copy would not be
// consistent).
func (c *Controller) diskSource(d *v1alpha1.VirtualDisk) (src *source, reason, msg string) {
	r := d.Spec.DataSource.ObjectRef
	if r.Namespace != "" && r.Namespace != d.Namespace {
		return nil, ReasonNotSupported, fmt.Sprintf("a disk may copy only disks of its own project %q, not %q", d.Namespace, r.Namespace)
	}
	what := fmt.Sprintf("VirtualDisk %q", r.Name)
	if r.Name == d.Name {
		return nil, ReasonNotSupported, "a disk cannot be copied from itself"
	}
	sd, found := c.disks.Get(runtime.NewKey(d.Namespace, r.Name)) // shared with the cache: only read
	switch {
	case !found:
		return nil, ReasonImageNotFound, fmt.Sprintf("waiting for %s: not found", what)
	case sd.DeletionTimestamp != nil:
		return nil, ReasonImageNotReady, what + " is being deleted"
	case sd.Status.Phase != v1alpha1.DiskPhaseReady:
		phase := string(sd.Status.Phase)
		if phase == "" {
			phase = "not provisioned yet"
		}
		return nil, ReasonImageNotReady, fmt.Sprintf("waiting for %s to be Ready (it is %s)", what, phase)
	case storage.CheckUID(sd.UID) != nil:
		return nil, ReasonImageNotReady, what + " has no valid uid"
	}
	for _, a := range sd.Status.AttachedToVirtualMachines {
		if a.Mounted {
			return nil, ReasonImageNotReady, fmt.Sprintf("waiting for VirtualMachine %q to stop: %s is in use, and a copy of a disk in use would not be consistent", a.Name, what)
		}
	}
	size, err := v1alpha1.Quantity(sd.Status.Capacity).Value()
	if err != nil || size <= 0 {
		return nil, ReasonImageNotReady, what + " reports no capacity"
	}
	if sc := c.homeClass(sd); isLocal(sc) && sd.Status.NodeName != "" && sd.Status.NodeName != c.cfg.NodeName {
		return nil, ReasonNotSupported, fmt.Sprintf("%s is on node %s's local storage, which this controller (on %s) cannot read", what, sd.Status.NodeName, c.cfg.NodeName)
	}
	return &source{path: c.diskPath(c.homeClass(sd), sd.UID), format: "qcow2", virtualSize: size, fromDisk: true}, "", ""
}

// hotplugged says whether the VM's status lists the disk as hot-plugged and attached (a
// VirtualMachineBlockDeviceAttachment; docs/hotplug.md).
func hotplugged(vm *v1alpha1.VirtualMachine, disk string) bool {
	for _, r := range vm.Status.BlockDeviceRefs {
		if r.Hotplugged && r.Attached && r.Kind == v1alpha1.BlockDeviceKindVirtualDisk && r.Name == disk {
			return true
		}
	}
	return false
}
