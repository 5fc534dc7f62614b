package migration

import (
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/runtime/fake"
)

// TestMigrationWaitsForBackup: a migration of a VM whose backup runs waits, Pending with a
// message naming the backup, and starts once the backup ended.
func TestMigrationWaitsForBackup(t *testing.T) {
	fc := fake.New()
	vm := runningVM("h1")
	vm.Namespace, vm.UID = "p1", "uid-vm1"
	vm.Spec.CPU.Cores, vm.Spec.Memory.Size = 1, "256Mi"
	op := &v1alpha1.VirtualMachineOperation{ObjectMeta: v1alpha1.ObjectMeta{Name: "vm1-migrate", Namespace: "p1"},
		Spec: v1alpha1.VirtualMachineOperationSpec{Type: v1alpha1.VMOPTypeMigrate, VirtualMachineName: "vm1"}}
	b := &v1alpha1.VirtualMachineBackup{ObjectMeta: v1alpha1.ObjectMeta{Name: "nightly-1", Namespace: "p1"},
		Spec: v1alpha1.VirtualMachineBackupSpec{VirtualMachineName: "vm1", BackupTargetName: "t"}}
	b.Status.Phase, b.Status.VirtualMachineUID, b.Status.NodeName = v1alpha1.BackupPhaseInProgress, "uid-vm1", "h1"
	if err := fc.Add(vm, op, b); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	_, ctx := fake.Start(t, fc, log, func(f *runtime.Factory) (*Controller, error) {
		return New(Config{Deps: runtime.Deps{Client: fc, Informers: f, Log: log}})
	})
	var got v1alpha1.VirtualMachineOperation
	fc.WaitFor(t, 10*time.Second, "virtualmachineoperations", "p1", "vm1-migrate", &got, func() bool {
		return got.Status.Phase == v1alpha1.VMOPPhasePending && strings.Contains(conditionMessage(&got), `backup "nightly-1"`)
	})
	var cur v1alpha1.VirtualMachineBackup
	if err := fc.Get(ctx, "virtualmachinebackups", "p1", "nightly-1", &cur); err != nil {
		t.Fatal(err)
	}
	cur.Status.Phase = v1alpha1.BackupPhaseCompleted
	if err := fc.UpdateStatus(ctx, "virtualmachinebackups", "p1", "nightly-1", &cur, nil); err != nil {
		t.Fatal(err)
	}
	fc.WaitFor(t, 10*time.Second, "virtualmachineoperations", "p1", "vm1-migrate", &got, func() bool {
		return got.Status.Phase == v1alpha1.VMOPPhaseInProgress
	})
}
