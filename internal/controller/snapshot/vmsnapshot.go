package snapshot

import (
	"context"
	"encoding/json"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/runtime"
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
	var out []runtime.Key
	for _, s := range c.vmsnaps.List() {
		if s.Namespace == ns && s.Spec.VirtualMachineName == name && s.Status.Phase != v1alpha1.SnapshotPhaseReady && s.Status.Phase != v1alpha1.SnapshotPhaseFailed {
			out = append(out, runtime.NewKey(s.Namespace, s.Name))
		}
	}
	return out
}

func (c *Controller) writeVMStatus(ctx context.Context, s *v1alpha1.VirtualMachineSnapshot, st v1alpha1.VirtualMachineSnapshotStatus) error {
	old, _ := json.Marshal(s.Status)
	now, _ := json.Marshal(st)
	if string(old) == string(now) {
		return nil
	}
	s.Status = st
	s.ResourceVersion = ""
	err := c.c.UpdateStatus(ctx, "virtualmachinesnapshots", s.Namespace, s.Name, s, nil)
	if client.IsNotFound(err) {
		return nil
	}
	return err
}

// reconcileVM: VM snapshots are not taken by this version yet; they fail with a reason
// rather than stay without a phase.
func (c *Controller) reconcileVM(ctx context.Context, key runtime.Key) (runtime.Result, error) {
	ns, name := key.Split()
	var s v1alpha1.VirtualMachineSnapshot
	if err := c.c.Get(ctx, "virtualmachinesnapshots", ns, name, &s); err != nil {
		if client.IsNotFound(err) {
			return runtime.Result{}, nil
		}
		return runtime.Result{}, err
	}
	if s.DeletionTimestamp != nil || s.Status.Phase != "" {
		return runtime.Result{}, nil
	}
	st := s.Status
	st.Phase = v1alpha1.SnapshotPhaseFailed
	st.ObservedGeneration = s.Generation
	v1alpha1.SetCondition(&st.Conditions, v1alpha1.Condition{Type: v1alpha1.VMSnapshotConditionReady, Status: v1alpha1.ConditionFalse,
		Reason: "NotImplemented", Message: "VirtualMachineSnapshot is not carried out by this version of Rakhsh yet; take a VirtualDiskSnapshot of each disk", ObservedGeneration: s.Generation})
	return runtime.Result{}, c.writeVMStatus(ctx, &s, st)
}
