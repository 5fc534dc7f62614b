package runtime

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

// OwnedPatch returns the JSON merge patch (RFC 7386) that turns before into after for the
// given top-level keys only, or nil when they are equal. Each writer of a status (scheduler,
// VM controller, node agent) patches only the fields it owns, so none overwrites another's.
// Within an owned key the patch is a true diff: a nested field that after lacks is sent as
// null, so the server drops it instead of merging the old value back in (a merge patch of
// {"powerRequest":{"state":"Stopped"}} would keep an earlier "force":true).
func OwnedPatch(before, after []byte, keys []string) (map[string]any, error) {
	var b, a map[string]json.RawMessage
	if err := json.Unmarshal(before, &b); err != nil {
		return nil, err
	}
	if err := json.Unmarshal(after, &a); err != nil {
		return nil, err
	}
	patch := map[string]any{}
	for _, k := range keys {
		av, aok := a[k]
		bv, bok := b[k]
		switch {
		case aok && !bok:
			patch[k] = av
		case aok && !bytes.Equal(av, bv):
			d, err := mergeDiff(bv, av)
			if err != nil {
				return nil, err
			}
			patch[k] = d
		case !aok && bok:
			patch[k] = nil
		}
	}
	if len(patch) == 0 {
		return nil, nil
	}
	return patch, nil
}

// mergeDiff returns the merge patch turning the JSON value before into after: for two
// objects, the changed keys (recursively) and null for removed ones; otherwise after itself
// (a merge patch replaces arrays and scalars whole).
func mergeDiff(before, after json.RawMessage) (any, error) {
	var b, a map[string]json.RawMessage
	if json.Unmarshal(before, &b) != nil || json.Unmarshal(after, &a) != nil || b == nil || a == nil {
		return after, nil
	}
	out := map[string]any{}
	for k, av := range a {
		bv, ok := b[k]
		switch {
		case !ok:
			out[k] = av
		case !bytes.Equal(av, bv):
			d, err := mergeDiff(bv, av)
			if err != nil {
				return nil, err
			}
			out[k] = d
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			out[k] = nil
		}
	}
	return out, nil
}

// getVM reads the VM ns/name: ErrVMGone when it is gone or, uid set, a VM of another uid now
// has its name.
func getVM(ctx context.Context, c client.Interface, ns, name, uid string) (*v1alpha1.VirtualMachine, error) {
	var v v1alpha1.VirtualMachine
	if err := c.Get(ctx, "virtualmachines", ns, name, &v); err != nil {
		if client.IsNotFound(err) {
			return nil, ErrVMGone
		}
		return nil, err
	}
	if uid != "" && v.UID != uid {
		return nil, ErrVMGone
	}
	return &v, nil
}

// ErrVMGone says the VM object went away or was replaced by another with the same name.
var ErrVMGone = errors.New("virtual machine is gone")

// ErrNoChange, returned by a mutate function of UpdateVMStatus or PatchVMStatus, skips the
// write.
var ErrNoChange = errors.New("no change")

// UpdateVMStatus reads the VM ns/name, lets mutate change it, and writes the changed owned
// status fields as a JSON patch whose preconditions are the values it read of those fields
// and of guards (see StatusPatch): writes of other fields by other components never conflict
// with it. It retries a few times when another writer changed one of them. uid, when set,
// must match. It returns the VM as written, or as read when nothing changed, and ErrVMGone
// when the VM is gone or a VM of another uid now has its name.
func UpdateVMStatus(ctx context.Context, c client.Interface, ns, name, uid string, owned, guards []string, mutate func(v *v1alpha1.VirtualMachine) error) (*v1alpha1.VirtualMachine, error) {
	v, _, err := updateVMStatus(ctx, c, ns, name, uid, owned, guards, mutate)
	return v, err
}

// PatchVMStatus is UpdateVMStatus for a VM the caller holds: it returns the written VM, or
// nil (and no error) when nothing changed, the VM is gone, or a VM of another uid now has
// its name.
func PatchVMStatus(ctx context.Context, c client.Interface, vm *v1alpha1.VirtualMachine, owned, guards []string, mutate func(v *v1alpha1.VirtualMachine) error) (*v1alpha1.VirtualMachine, error) {
	v, written, err := updateVMStatus(ctx, c, vm.Namespace, vm.Name, vm.UID, owned, guards, mutate)
	switch {
	case errors.Is(err, ErrVMGone):
		return nil, nil
	case err != nil || !written:
		return nil, err
	}
	return v, nil
}

// updateVMStatus is UpdateVMStatus; written says whether it wrote.
func updateVMStatus(ctx context.Context, c client.Interface, ns, name, uid string, owned, guards []string, mutate func(v *v1alpha1.VirtualMachine) error) (*v1alpha1.VirtualMachine, bool, error) {
	var last error
	for attempt := 0; attempt < 8; attempt++ {
		v, err := getVM(ctx, c, ns, name, uid)
		if err != nil {
			return nil, false, err
		}
		// A copy as JSON: mutate may change what the status points to.
		before, err := json.Marshal(v.Status)
		if err != nil {
			return nil, false, err
		}
		if err := mutate(v); err != nil {
			if errors.Is(err, ErrNoChange) {
				return v, false, nil
			}
			return nil, false, err
		}
		body, err := StatusPatch(v.UID, json.RawMessage(before), v.Status, owned, guards)
		if err != nil {
			return nil, false, err
		}
		if body == nil {
			return v, false, nil
		}
		var out v1alpha1.VirtualMachine
		err = c.JSONPatchStatus(ctx, "virtualmachines", ns, name, body, &out)
		if err == nil {
			return &out, true, nil
		}
		if client.IsNotFound(err) {
			return nil, false, ErrVMGone
		}
		if !client.IsConflict(err) {
			return nil, false, err
		}
		last = err
	}
	return nil, false, fmt.Errorf("updating status of %s/%s: %w", ns, name, last)
}

// PatchVMStatusSoleOwner writes status fields and condition types that no other component
// writes: it reads the VM, lets mutate change it, and sends only the changed fields and
// conditions as a strategic merge patch without a resourceVersion (conditions merge by type
// on the server). With no other writer of these fields there is nothing to guard against, so
// the write never meets a 409, whatever the other writers of the VM do at the same moment.
// It returns the VM as written, or nil when it is gone or nothing changed.
func PatchVMStatusSoleOwner(ctx context.Context, c client.Interface, vm *v1alpha1.VirtualMachine, fields, conditions []string, mutate func(v *v1alpha1.VirtualMachine) error) (*v1alpha1.VirtualMachine, error) {
	v, err := getVM(ctx, c, vm.Namespace, vm.Name, vm.UID)
	if errors.Is(err, ErrVMGone) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	beforeConds := append([]v1alpha1.Condition(nil), v.Status.Conditions...)
	before, _ := json.Marshal(v.Status)
	if err := mutate(v); err != nil {
		return nil, err
	}
	after, _ := json.Marshal(v.Status)
	patch, err := OwnedPatch(before, after, fields)
	if err != nil {
		return nil, err
	}
	if cp := ConditionsDiff(beforeConds, v.Status.Conditions, conditions); cp != nil {
		if patch == nil {
			patch = map[string]any{}
		}
		patch["conditions"] = cp
	}
	if patch == nil {
		return nil, nil
	}
	body, _ := json.Marshal(map[string]any{"status": patch})
	var out v1alpha1.VirtualMachine
	err = c.PatchStatusStrategic(ctx, "virtualmachines", v.Namespace, v.Name, body, &out)
	if client.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("status of %s/%s: %w", vm.Namespace, vm.Name, err)
	}
	return &out, nil
}

// ConditionsDiff returns the conditions list of a strategic merge patch turning the owned
// condition types of before into those of after (each changed or new one whole, a delete
// directive for each one gone), or nil when they are the same.
func ConditionsDiff(before, after []v1alpha1.Condition, owned []string) []any {
	var out []any
	for _, t := range owned {
		b, a := v1alpha1.FindCondition(before, t), v1alpha1.FindCondition(after, t)
		switch {
		case a == nil && b != nil:
			out = append(out, map[string]string{"type": t, "$patch": "delete"})
		case a == nil:
		case b == nil || !reflect.DeepEqual(*a, *b):
			out = append(out, *a)
		}
	}
	return out
}

// ConditionsPatch returns the conditions list of a strategic merge patch (see
// client.PatchStatusStrategic) that makes the conditions of the owned types in current equal
// to want: each wanted condition that is new or changed (keeping its last transition time
// while its status stays), and {"type": T, "$patch": "delete"} for each owned type present
// but no longer wanted. Conditions of other types are not sent, so writers of different types
// never overwrite each other and need no resourceVersion guard. It returns nil when nothing
// changes.
func ConditionsPatch(current, want []v1alpha1.Condition, owned []string, now v1alpha1.Time) []any {
	var out []any
	wanted := map[string]bool{}
	for _, w := range want {
		wanted[w.Type] = true
		old := v1alpha1.FindCondition(current, w.Type)
		switch {
		case old == nil || old.Status != w.Status:
			t := now
			w.LastTransitionTime = &t
		case old.Reason == w.Reason && old.Message == w.Message && old.ObservedGeneration == w.ObservedGeneration:
			continue
		default:
			w.LastTransitionTime = old.LastTransitionTime
		}
		out = append(out, w)
	}
	for _, t := range owned {
		if !wanted[t] && v1alpha1.FindCondition(current, t) != nil {
			out = append(out, map[string]string{"type": t, "$patch": "delete"})
		}
	}
	return out
}

// ReplaceStatus writes the status of obj (of resource) as its sole owner: when after differs
// from before (as JSON), set puts after into obj and obj's status is replaced whatever its
// resourceVersion (the owner's view wins; nobody else writes it). An object deleted meanwhile
// is not an error: its reconcile ends.
func ReplaceStatus(ctx context.Context, c client.Interface, resource string, obj v1alpha1.Object, before, after any, set func()) error {
	x, _ := json.Marshal(before)
	y, _ := json.Marshal(after)
	if string(x) == string(y) {
		return nil
	}
	set()
	m := obj.GetObjectMeta()
	m.ResourceVersion = ""
	err := c.UpdateStatus(ctx, resource, m.Namespace, m.Name, obj, nil)
	if client.IsNotFound(err) {
		return nil
	}
	return err
}
