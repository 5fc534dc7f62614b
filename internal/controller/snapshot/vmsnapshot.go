package snapshot

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/storage"
)

func (c *Controller) vmSnapshotOfDiskSnapshot(k runtime.Key) []runtime.Key {
	s, ok := c.snaps.Get(k)
	if !ok {
		return nil
	}
	if name := s.Labels[v1alpha1.LabelVMSnapshot]; name != "" {
		return []runtime.Key{runtime.NewKey(s.Namespace, name)}
	}
	return nil
}

func (c *Controller) vmSnapshotsOfVM(k runtime.Key) []runtime.Key {
	ns, name := k.Split()
	return c.vmsnaps.KeysWhere(func(s *v1alpha1.VirtualMachineSnapshot) bool {
		return s.Namespace == ns && s.Spec.VirtualMachineName == name && s.Status.Phase != v1alpha1.SnapshotPhaseReady && s.Status.Phase != v1alpha1.SnapshotPhaseFailed
	})
}

func (c *Controller) writeVMStatus(ctx context.Context, s *v1alpha1.VirtualMachineSnapshot, st v1alpha1.VirtualMachineSnapshotStatus) error {
	return runtime.ReplaceStatus(ctx, c.C, "virtualmachinesnapshots", s, s.Status, st, func() { s.Status = st })
}

// VMFinalizer keeps a VM snapshot until its disk snapshots are deleted.
const VMFinalizer = "virtualization.rakhsh.io/vm-snapshot-cleanup"

// diskSnapshotName names the disk snapshot of disk in the VM snapshot vmsnap (a DNS label of
// at most 63 characters; a long name is cut and ends with a hash of the whole).
func diskSnapshotName(vmsnap, disk string) string {
	n := vmsnap + "-" + disk
	if len(n) <= 63 {
		return n
	}
	h := fnv.New32a()
	h.Write([]byte(n))
	suffix := fmt.Sprintf("-%08x", h.Sum32())
	return strings.TrimRight(n[:63-len(suffix)], "-") + suffix
}

// reconcileVM takes a VM snapshot: the VM's spec, and a VirtualDiskSnapshot of each of its
// disks (labelled with the VM snapshot, annotated with their count so the node agent copies a
// running VM's disks together, at one instant). It is Ready when they all are.
func (c *Controller) reconcileVM(ctx context.Context, key runtime.Key) (runtime.Result, error) {
	ns, name := key.Split()
	var s v1alpha1.VirtualMachineSnapshot
	if ok, err := runtime.Read(ctx, c.C, "virtualmachinesnapshots", key, &s); !ok {
		return runtime.Result{}, err
	}
	if s.DeletionTimestamp != nil {
		return c.finalizeVM(ctx, &s)
	}
	if !slices.Contains(s.Finalizers, VMFinalizer) {
		if err := runtime.AddFinalizer(ctx, c.C, "virtualmachinesnapshots", &s.ObjectMeta, VMFinalizer); err != nil {
			return runtime.Result{}, err
		}
		return runtime.Result{}, nil
	}
	if s.Status.Phase == v1alpha1.SnapshotPhaseReady || s.Status.Phase == v1alpha1.SnapshotPhaseFailed {
		return runtime.Result{}, nil
	}
	st := s.Status
	st.Conditions = slices.Clone(s.Status.Conditions)
	st.ObservedGeneration = s.Generation
	cond := func(typ, status, reason, msg string) {
		v1alpha1.SetCondition(&st.Conditions, v1alpha1.Condition{Type: typ, Status: status, Reason: reason, Message: msg, ObservedGeneration: s.Generation})
	}
	if st.VirtualMachineSpec == nil {
		// First pass: capture the spec and create the disk snapshots.
		var vm v1alpha1.VirtualMachine
		if err := c.C.Get(ctx, "virtualmachines", ns, s.Spec.VirtualMachineName, &vm); err != nil {
			if !client.IsNotFound(err) {
				return runtime.Result{}, err
			}
			st.Phase = v1alpha1.SnapshotPhasePending
			msg := fmt.Sprintf("waiting for VirtualMachine %q: not found", s.Spec.VirtualMachineName)
			cond(v1alpha1.VMSnapshotConditionVirtualMachineReady, v1alpha1.ConditionFalse, "VirtualMachineNotFound", msg)
			cond(v1alpha1.VMSnapshotConditionReady, v1alpha1.ConditionFalse, "VirtualMachineNotFound", msg)
			return runtime.Result{}, c.writeVMStatus(ctx, &s, st)
		}
		var names []string
		for _, r := range vm.Spec.BlockDeviceRefs {
			if r.Kind == v1alpha1.BlockDeviceKindVirtualDisk {
				names = append(names, r.Name)
			}
		}
		st.VirtualMachineSpec = &vm.Spec
		st.VirtualMachineUID = vm.UID
		st.VirtualDiskSnapshotNames = nil
		st.Resources = []v1alpha1.SnapshotResourceRef{{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachine", Name: vm.Name}}
		for _, d := range names {
			st.VirtualDiskSnapshotNames = append(st.VirtualDiskSnapshotNames, diskSnapshotName(name, d))
			st.Resources = append(st.Resources, v1alpha1.SnapshotResourceRef{APIVersion: v1alpha1.APIVersion, Kind: "VirtualDisk", Name: d})
		}
		st.Phase = v1alpha1.SnapshotPhaseInProgress
		cond(v1alpha1.VMSnapshotConditionVirtualMachineReady, v1alpha1.ConditionTrue, "VirtualMachineReady", "")
		cond(v1alpha1.VMSnapshotConditionReady, v1alpha1.ConditionFalse, v1alpha1.VDSnapshotReasonTaking, fmt.Sprintf("taking %d disk snapshots", len(names)))
		// Status first: a crash after it finds the names and creates what is missing.
		if err := c.writeVMStatus(ctx, &s, st); err != nil {
			return runtime.Result{}, err
		}
	}
	if len(st.VirtualDiskSnapshotNames) == 0 {
		t := true
		st.Consistent = &t
		st.Phase = v1alpha1.SnapshotPhaseReady
		cond(v1alpha1.VMSnapshotConditionReady, v1alpha1.ConditionTrue, v1alpha1.VDSnapshotReasonReady, "the VM has no disks: its spec is kept")
		return runtime.Result{}, c.writeVMStatus(ctx, &s, st)
	}
	disks := make([]string, 0, len(st.Resources))
	for _, r := range st.Resources {
		if r.Kind == "VirtualDisk" {
			disks = append(disks, r.Name)
		}
	}
	consistent, ready := true, 0
	var ram *v1alpha1.SnapshotRAM
	for i, sn := range st.VirtualDiskSnapshotNames {
		var ds v1alpha1.VirtualDiskSnapshot
		err := c.C.Get(ctx, "virtualdisksnapshots", ns, sn, &ds)
		if client.IsNotFound(err) && i < len(disks) {
			req := s.Spec.RequiredConsistency
			ann := map[string]string{v1alpha1.AnnotationVMSnapshotDisks: strconv.Itoa(len(st.VirtualDiskSnapshotNames))}
			if s.Spec.KeepRAM {
				ann[v1alpha1.AnnotationVMSnapshotRAM] = s.UID
			}
			ds = v1alpha1.VirtualDiskSnapshot{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualDiskSnapshot"},
				ObjectMeta: v1alpha1.ObjectMeta{Name: sn, Namespace: ns,
					Labels:      map[string]string{v1alpha1.LabelVMSnapshot: name},
					Annotations: ann},
				Spec: v1alpha1.VirtualDiskSnapshotSpec{VirtualDiskName: disks[i], RequiredConsistency: req}}
			if err := c.C.Create(ctx, "virtualdisksnapshots", ns, &ds, nil); err != nil && !client.IsAlreadyExists(err) {
				return runtime.Result{}, fmt.Errorf("creating disk snapshot %s: %w", sn, err)
			}
			continue
		}
		if err != nil {
			return runtime.Result{}, err
		}
		if ds.Labels[v1alpha1.LabelVMSnapshot] != name {
			st.Phase = v1alpha1.SnapshotPhaseFailed
			cond(v1alpha1.VMSnapshotConditionReady, v1alpha1.ConditionFalse, v1alpha1.VDSnapshotReasonFailed,
				fmt.Sprintf("a VirtualDiskSnapshot %q that is not part of this snapshot exists; delete it or name the snapshot differently", sn))
			return runtime.Result{}, c.writeVMStatus(ctx, &s, st)
		}
		switch ds.Status.Phase {
		case v1alpha1.SnapshotPhaseFailed:
			msg := "disk snapshot " + sn + " failed"
			if rc := v1alpha1.FindCondition(ds.Status.Conditions, v1alpha1.VDSnapshotConditionReady); rc != nil {
				msg += ": " + rc.Message
			}
			st.Phase = v1alpha1.SnapshotPhaseFailed
			cond(v1alpha1.VMSnapshotConditionBlockDevicesReady, v1alpha1.ConditionFalse, v1alpha1.VDSnapshotReasonFailed, msg)
			cond(v1alpha1.VMSnapshotConditionReady, v1alpha1.ConditionFalse, v1alpha1.VDSnapshotReasonFailed, msg)
			c.Rec.Event(ctx, "VirtualMachineSnapshot", &s, "Warning", v1alpha1.VDSnapshotReasonFailed, msg)
			return runtime.Result{}, c.writeVMStatus(ctx, &s, st)
		case v1alpha1.SnapshotPhaseReady:
			ready++
			consistent = consistent && ds.Status.Consistent != nil && *ds.Status.Consistent
			if ds.Status.RAM != nil && ram == nil {
				ram = ds.Status.RAM
			}
		}
	}
	if ready < len(st.VirtualDiskSnapshotNames) {
		cond(v1alpha1.VMSnapshotConditionReady, v1alpha1.ConditionFalse, v1alpha1.VDSnapshotReasonTaking,
			fmt.Sprintf("%d of %d disk snapshots are Ready", ready, len(st.VirtualDiskSnapshotNames)))
		return runtime.Result{}, c.writeVMStatus(ctx, &s, st)
	}
	st.Consistent = &consistent
	st.Phase = v1alpha1.SnapshotPhaseReady
	st.RAM = ram
	msg := ""
	switch {
	case ram != nil:
		msg = fmt.Sprintf("the guest's RAM state (%s) is kept on node %s: a restore resumes the guest", ram.Size, ram.NodeName)
	case s.Spec.KeepRAM:
		msg = "the VM was not running: there was no RAM state to keep"
	}
	cond(v1alpha1.VMSnapshotConditionBlockDevicesReady, v1alpha1.ConditionTrue, v1alpha1.VDSnapshotReasonReady, "")
	cond(v1alpha1.VMSnapshotConditionReady, v1alpha1.ConditionTrue, v1alpha1.VDSnapshotReasonReady, msg)
	c.Rec.Event(ctx, "VirtualMachineSnapshot", &s, "Normal", v1alpha1.VDSnapshotReasonReady, fmt.Sprintf("took %d disk snapshots", ready))
	return runtime.Result{}, c.writeVMStatus(ctx, &s, st)
}

// finalizeVM deletes the VM snapshot's disk snapshots, then its finalizer.
func (c *Controller) finalizeVM(ctx context.Context, s *v1alpha1.VirtualMachineSnapshot) (runtime.Result, error) {
	if !slices.Contains(s.Finalizers, VMFinalizer) {
		return runtime.Result{}, nil
	}
	for _, sn := range s.Status.VirtualDiskSnapshotNames {
		var ds v1alpha1.VirtualDiskSnapshot
		err := c.C.Get(ctx, "virtualdisksnapshots", s.Namespace, sn, &ds)
		if client.IsNotFound(err) {
			continue
		}
		if err != nil {
			return runtime.Result{}, err
		}
		if ds.Labels[v1alpha1.LabelVMSnapshot] != s.Name {
			continue
		}
		if err := c.C.Delete(ctx, "virtualdisksnapshots", s.Namespace, sn); err != nil && !client.IsNotFound(err) {
			return runtime.Result{}, err
		}
	}
	if r := s.Status.RAM; r != nil {
		if r.NodeName == c.cfg.NodeName {
			_ = os.RemoveAll(storage.SnapshotRAMDir(c.cfg.DataDir, s.UID))
		}
		// Elsewhere the node's agent removes it (it prunes RAM states of deleted snapshots).
	}
	rest := slices.DeleteFunc(slices.Clone(s.Finalizers), func(f string) bool { return f == VMFinalizer })
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"finalizers": rest, "resourceVersion": s.ResourceVersion}})
	if err := c.C.Patch(ctx, "virtualmachinesnapshots", s.Namespace, s.Name, patch, nil); err != nil && !client.IsNotFound(err) {
		return runtime.Result{}, fmt.Errorf("removing finalizer: %w", err)
	}
	return runtime.Result{}, nil
}
