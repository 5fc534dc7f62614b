package vm

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/runtime/fake"
)

// TestRunsAgainstFake runs the controller on a shared factory and the fake client: a new
// AlwaysOn VM gets its power request, its block devices checked and phase Pending; a disk it
// waits for turns the condition when it becomes Ready.
func TestRunsAgainstFake(t *testing.T) {
	fc := fake.New()
	log := fake.Logger(t, slog.LevelInfo)
	_, ctx := fake.Start(t, fc, log, func(f *runtime.Factory) (*Controller, error) {
		return New(Config{Deps: runtime.Deps{Client: fc, Informers: f, Log: log}})
	})

	vm := &v1alpha1.VirtualMachine{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachine"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: "web", Namespace: "p1"}}
	vm.Spec.CPU.Cores = 1
	vm.Spec.Memory.Size = "1Gi"
	vm.Spec.RunPolicy = v1alpha1.RunPolicyAlwaysOn
	vm.Spec.BlockDeviceRefs = []v1alpha1.BlockDeviceSpecRef{{Kind: v1alpha1.BlockDeviceKindVirtualDisk, Name: "root"}}
	if err := fc.Create(ctx, "virtualmachines", "p1", vm, nil); err != nil {
		t.Fatal(err)
	}
	var got v1alpha1.VirtualMachine
	fc.WaitFor(t, 10*time.Second, "virtualmachines", "p1", "web", &got, func() bool {
		c := v1alpha1.FindCondition(got.Status.Conditions, v1alpha1.VMConditionBlockDevicesReady)
		return got.Status.PowerRequest != nil && c != nil && c.Status == v1alpha1.ConditionFalse
	})
	if got.Status.PowerRequest.State != v1alpha1.PowerStateRunning || got.Status.Phase != v1alpha1.VMPhasePending {
		t.Errorf("power request %+v, phase %s", got.Status.PowerRequest, got.Status.Phase)
	}
	if c := v1alpha1.FindCondition(got.Status.Conditions, v1alpha1.VMConditionBlockDevicesReady); !strings.Contains(c.Message, `VirtualDisk "root" not found`) {
		t.Errorf("BlockDevicesReady %+v", c)
	}
	d := &v1alpha1.VirtualDisk{ObjectMeta: v1alpha1.ObjectMeta{Name: "root", Namespace: "p1"}}
	d.Status.Phase = v1alpha1.DiskPhaseReady
	if err := fc.Add(d); err != nil {
		t.Fatal(err)
	}
	fc.WaitFor(t, 10*time.Second, "virtualmachines", "p1", "web", &got, func() bool {
		c := v1alpha1.FindCondition(got.Status.Conditions, v1alpha1.VMConditionBlockDevicesReady)
		return c != nil && c.Status == v1alpha1.ConditionTrue
	})
}

// TestEveryOperationTypeIsCarriedOut: no type of the API is left to the NotImplemented
// failure: power types here, Migrate and Evict in the migration controller, Restore and Clone
// in the snapshot controller.
func TestEveryOperationTypeIsCarriedOut(t *testing.T) {
	c := &Controller{}
	for _, typ := range []v1alpha1.VMOPType{v1alpha1.VMOPTypeStart, v1alpha1.VMOPTypeStop, v1alpha1.VMOPTypeRestart,
		v1alpha1.VMOPTypeMigrate, v1alpha1.VMOPTypeEvict, v1alpha1.VMOPTypeRestore, v1alpha1.VMOPTypeClone, v1alpha1.VMOPTypeHibernate} {
		if c.notImplemented(typ) {
			t.Errorf("operation type %s is failed as not implemented", typ)
		}
	}
	if !c.notImplemented("Teleport") {
		t.Error("a type nothing carries out is not failed")
	}
}

// TestSignalTimeIsTheDecisionTime: an operation's SignalSent time is when the controller
// decided on the power request, which it writes before the operation. A node agent that
// fails the start at once (a check before QEMU runs) reports an exit no earlier than that
// time; with the time of the operation's own write the exit could look older than the
// signal, and the operation ended as "the power request was changed" instead of with the
// agent's reason.
func TestSignalTimeIsTheDecisionTime(t *testing.T) {
	fc := fake.New()
	log := fake.Logger(t, slog.LevelInfo)
	decided := time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)
	_, ctx := fake.Start(t, fc, log, func(f *runtime.Factory) (*Controller, error) {
		return New(Config{Deps: runtime.Deps{Client: fc, Informers: f, Log: log}, Now: func() time.Time { return decided }})
	})
	vm := &v1alpha1.VirtualMachine{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachine"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: "web", Namespace: "p1"}}
	vm.Spec.CPU.Cores = 1
	vm.Spec.Memory.Size = "1Gi"
	vm.Spec.RunPolicy = v1alpha1.RunPolicyManual
	if err := fc.Create(ctx, "virtualmachines", "p1", vm, nil); err != nil {
		t.Fatal(err)
	}
	op := &v1alpha1.VirtualMachineOperation{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachineOperation"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: "start", Namespace: "p1"}}
	op.Spec.Type = v1alpha1.VMOPTypeStart
	op.Spec.VirtualMachineName = "web"
	if err := fc.Create(ctx, "virtualmachineoperations", "p1", op, nil); err != nil {
		t.Fatal(err)
	}
	var got v1alpha1.VirtualMachineOperation
	fc.WaitFor(t, 10*time.Second, "virtualmachineoperations", "p1", "start", &got, func() bool {
		return v1alpha1.FindCondition(got.Status.Conditions, v1alpha1.VMOPConditionSignalSent) != nil
	})
	if c := v1alpha1.FindCondition(got.Status.Conditions, v1alpha1.VMOPConditionSignalSent); c.LastTransitionTime == nil || !c.LastTransitionTime.Equal(decided) {
		t.Fatalf("SignalSent at %v, want the decision's time %v", c.LastTransitionTime, decided)
	}
	var v v1alpha1.VirtualMachine
	if err := fc.Get(ctx, "virtualmachines", "p1", "web", &v); err != nil {
		t.Fatal(err)
	}
	if v.Status.PowerRequest == nil || v.Status.PowerRequest.Operation != "start" {
		t.Fatalf("power request %+v does not name the operation", v.Status.PowerRequest)
	}
}
