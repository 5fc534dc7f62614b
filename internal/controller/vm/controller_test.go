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

type tlog struct{ t *testing.T }

func (w tlog) Write(p []byte) (int, error) { w.t.Log(strings.TrimSpace(string(p))); return len(p), nil }

// TestRunsAgainstFake runs the controller on a shared factory and the fake client: a new
// AlwaysOn VM gets its power request, its block devices checked and phase Pending; a disk it
// waits for turns the condition when it becomes Ready.
func TestRunsAgainstFake(t *testing.T) {
	fc := fake.New()
	log := slog.New(slog.NewTextHandler(tlog{t}, nil))
	_, ctx := fake.Start(t, fc, log, func(f *runtime.Factory) (*Controller, error) {
		return New(Config{Client: fc, Informers: f, Log: log})
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
