package runtime_test

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/runtime/fake"
)

func statusVM(t *testing.T, fc *fake.Client) *v1alpha1.VirtualMachine {
	t.Helper()
	var vm v1alpha1.VirtualMachine
	if err := fc.Get(context.Background(), "virtualmachines", "default", "vm1", &vm); err != nil {
		t.Fatal(err)
	}
	return &vm
}

func newStatusFake(t *testing.T) *fake.Client {
	t.Helper()
	fc := fake.New()
	vm := &v1alpha1.VirtualMachine{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachine"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: "vm1", Namespace: "default"}}
	vm.Spec.CPU.Cores, vm.Spec.Memory.Size = 1, "1Gi"
	if err := fc.Add(vm); err != nil {
		t.Fatal(err)
	}
	return fc
}

// write builds a status patch from read (the VM as its writer read it) and applies it.
func write(t *testing.T, fc *fake.Client, read *v1alpha1.VirtualMachine, fields, guards []string, mutate func(v *v1alpha1.VirtualMachine)) error {
	t.Helper()
	before, _ := json.Marshal(read.Status)
	var v v1alpha1.VirtualMachine // a deep copy: read stays as it was read
	raw, _ := json.Marshal(read)
	_ = json.Unmarshal(raw, &v)
	mutate(&v)
	body, err := runtime.StatusPatch(read.UID, json.RawMessage(before), v.Status, fields, guards)
	if err != nil {
		t.Fatal(err)
	}
	if body == nil {
		t.Fatal("no patch for a change")
	}
	return fc.JSONPatchStatus(context.Background(), "virtualmachines", "default", "vm1", body, nil)
}

// TestStatusPatchConflictsOnlyOnItsOwnFields: writers of different fields and conditions
// never conflict, whatever order they write in with the same stale read; writers of the same
// field or condition, or of a guard, do.
func TestStatusPatchConflictsOnlyOnItsOwnFields(t *testing.T) {
	fc := newStatusFake(t)
	stale := statusVM(t, fc)
	// Two writers append their first conditions to a VM that has none, from the same read.
	if err := write(t, fc, stale, []string{"conditions"}, nil, func(v *v1alpha1.VirtualMachine) {
		v1alpha1.SetCondition(&v.Status.Conditions, v1alpha1.Condition{Type: "A", Status: v1alpha1.ConditionTrue})
	}); err != nil {
		t.Fatalf("first condition: %v", err)
	}
	if err := write(t, fc, stale, []string{"conditions", "phase"}, nil, func(v *v1alpha1.VirtualMachine) {
		v1alpha1.SetCondition(&v.Status.Conditions, v1alpha1.Condition{Type: "B", Status: v1alpha1.ConditionTrue})
		v.Status.Phase = v1alpha1.VMPhaseRunning
	}); err != nil {
		t.Fatalf("another writer's first condition, from the same read: %v", err)
	}
	if err := write(t, fc, stale, []string{"nodeName"}, nil, func(v *v1alpha1.VirtualMachine) { v.Status.NodeName = "n1" }); err != nil {
		t.Fatalf("a third field from the same stale read: %v", err)
	}
	got := statusVM(t, fc)
	if len(got.Status.Conditions) != 2 || got.Status.Phase != v1alpha1.VMPhaseRunning || got.Status.NodeName != "n1" {
		t.Fatalf("writes lost: %+v", got.Status)
	}

	// The same field from a stale read: a conflict, and nothing written.
	err := write(t, fc, stale, []string{"phase"}, nil, func(v *v1alpha1.VirtualMachine) { v.Status.Phase = v1alpha1.VMPhaseStopped })
	if !client.IsConflict(err) {
		t.Fatalf("a stale write of the phase: got %v, want a conflict", err)
	}
	// A guard changed since the read: a conflict.
	err = write(t, fc, stale, []string{"lastExit"}, []string{"nodeName"}, func(v *v1alpha1.VirtualMachine) {
		v.Status.LastExit = &v1alpha1.VMExit{Reason: "Stopped"}
	})
	if !client.IsConflict(err) {
		t.Fatalf("a write whose guard changed: got %v, want a conflict", err)
	}

	// Change one condition and remove another, from a fresh read; then a stale change of a
	// condition someone else rewrote meanwhile conflicts.
	cur := statusVM(t, fc)
	if err := write(t, fc, cur, []string{"conditions"}, nil, func(v *v1alpha1.VirtualMachine) {
		v1alpha1.RemoveCondition(&v.Status.Conditions, "A")
		v1alpha1.SetCondition(&v.Status.Conditions, v1alpha1.Condition{Type: "B", Status: v1alpha1.ConditionFalse, Reason: "Why"})
		v1alpha1.SetCondition(&v.Status.Conditions, v1alpha1.Condition{Type: "C", Status: v1alpha1.ConditionTrue})
	}); err != nil {
		t.Fatalf("replace, remove and append conditions: %v", err)
	}
	got = statusVM(t, fc)
	if len(got.Status.Conditions) != 2 || got.Status.Conditions[0].Type != "B" || got.Status.Conditions[0].Reason != "Why" || got.Status.Conditions[1].Type != "C" {
		t.Fatalf("conditions after the patch: %+v", got.Status.Conditions)
	}
	err = write(t, fc, cur, []string{"conditions"}, nil, func(v *v1alpha1.VirtualMachine) {
		v1alpha1.SetCondition(&v.Status.Conditions, v1alpha1.Condition{Type: "A", Status: v1alpha1.ConditionFalse})
	})
	if !client.IsConflict(err) {
		t.Fatalf("a stale change of a condition removed meanwhile: got %v, want a conflict", err)
	}
}

func TestStatusPatchNothingChanged(t *testing.T) {
	st := v1alpha1.VirtualMachineStatus{Phase: v1alpha1.VMPhaseRunning}
	body, err := runtime.StatusPatch("u", st, st, []string{"phase", "conditions"}, []string{"nodeName"})
	if err != nil || body != nil {
		t.Fatalf("no change: got %s, %v", body, err)
	}
}
