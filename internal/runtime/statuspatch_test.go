package runtime_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
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

// TestUpdateVMStatus: the one status writer of the agent and the controllers returns the VM
// as written, or as read when nothing changed, says when the VM is gone, and retries a write
// another writer raced; PatchVMStatus, on top of it, answers nil for "nothing written".
func TestUpdateVMStatus(t *testing.T) {
	ctx := context.Background()
	fc := newStatusFake(t)
	vm := statusVM(t, fc)
	running := func(v *v1alpha1.VirtualMachine) error { v.Status.Phase = v1alpha1.VMPhaseRunning; return nil }
	countWrites := func() int {
		n := 0
		for _, a := range fc.Actions() {
			if a.Verb != "get" && a.Verb != "list" && a.Verb != "watch" {
				n++
			}
		}
		return n
	}

	out, err := runtime.UpdateVMStatus(ctx, fc, "default", "vm1", vm.UID, []string{"phase"}, nil, running)
	if err != nil || out == nil || out.Status.Phase != v1alpha1.VMPhaseRunning || statusVM(t, fc).Status.Phase != v1alpha1.VMPhaseRunning {
		t.Fatalf("a change of an owned field: got %+v, %v", out, err)
	}

	// Nothing to write: mutate says so, changes nothing, or changes only fields it does not own.
	fc.ClearActions()
	for name, mutate := range map[string]func(v *v1alpha1.VirtualMachine) error{
		"ErrNoChange":     func(*v1alpha1.VirtualMachine) error { return runtime.ErrNoChange },
		"same value":      running,
		"not owned field": func(v *v1alpha1.VirtualMachine) error { v.Status.NodeName = "n9"; return nil },
	} {
		out, err := runtime.UpdateVMStatus(ctx, fc, "default", "vm1", vm.UID, []string{"phase"}, nil, mutate)
		if err != nil || out == nil || out.Status.Phase != v1alpha1.VMPhaseRunning || out.UID != vm.UID {
			t.Errorf("%s: UpdateVMStatus should return the VM as read: got %+v, %v", name, out, err)
		}
		if out, err := runtime.PatchVMStatus(ctx, fc, vm, []string{"phase"}, nil, mutate); out != nil || err != nil {
			t.Errorf("%s: PatchVMStatus should return nil, nil: got %+v, %v", name, out, err)
		}
	}
	if n := countWrites(); n != 0 {
		t.Fatalf("%d writes made with nothing to write", n)
	}

	// A VM of another uid with the name, and no VM at all: ErrVMGone, and nil from PatchVMStatus.
	other := *vm
	other.UID = "another-uid"
	if _, err := runtime.UpdateVMStatus(ctx, fc, "default", "vm1", other.UID, []string{"phase"}, nil, running); !errors.Is(err, runtime.ErrVMGone) {
		t.Errorf("another uid: got %v, want ErrVMGone", err)
	}
	if out, err := runtime.PatchVMStatus(ctx, fc, &other, []string{"phase"}, nil, running); out != nil || err != nil {
		t.Errorf("another uid: PatchVMStatus got %+v, %v", out, err)
	}
	if _, err := runtime.UpdateVMStatus(ctx, fc, "default", "nosuchvm", "", []string{"phase"}, nil, running); !errors.Is(err, runtime.ErrVMGone) {
		t.Errorf("no such VM: got %v, want ErrVMGone", err)
	}

	// A mutate error comes back as it is, and nothing is written.
	boom := errors.New("boom")
	if _, err := runtime.UpdateVMStatus(ctx, fc, "default", "vm1", "", []string{"phase"}, nil, func(*v1alpha1.VirtualMachine) error { return boom }); err != boom {
		t.Errorf("mutate error: got %v", err)
	}

	// A conflict is retried with a fresh read; conflicts without end are given up, named.
	conflicts := 1
	fc.SetHook(func(a fake.Action) error {
		if a.Verb == "jsonpatchstatus" && conflicts > 0 {
			conflicts--
			return fake.Conflict("virtualmachines", "vm1")
		}
		return nil
	})
	stopped := func(v *v1alpha1.VirtualMachine) error { v.Status.Phase = v1alpha1.VMPhaseStopped; return nil }
	if out, err := runtime.PatchVMStatus(ctx, fc, vm, []string{"phase"}, nil, stopped); err != nil || out == nil || out.Status.Phase != v1alpha1.VMPhaseStopped {
		t.Fatalf("after one conflict: got %+v, %v", out, err)
	}
	conflicts = 1000
	_, err = runtime.UpdateVMStatus(ctx, fc, "default", "vm1", "", []string{"phase"}, nil, running)
	if !client.IsConflict(err) || !strings.Contains(err.Error(), "updating status of default/vm1") {
		t.Fatalf("endless conflicts: got %v, want a named conflict", err)
	}
}
