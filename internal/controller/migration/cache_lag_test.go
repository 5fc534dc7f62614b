package migration

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/runtime/fake"
)

// TestOperationKeptWhileTheVMCacheLags: an operation in progress whose migration the cached
// VM does not show yet (the operation's cache ahead of the VM's, right after the controller
// started the migration) is not failed as "no longer in the status" when a fresh read shows
// its migration; it is when the fresh read does not either. (The informers here read a
// client whose VM still has the previous migration; the controller writes to another that
// has the new one.)
func TestOperationKeptWhileTheVMCacheLags(t *testing.T) {
	for _, lagging := range []bool{true, false} {
		stale, fresh := fake.New(), fake.New()
		op := &v1alpha1.VirtualMachineOperation{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachineOperation"},
			ObjectMeta: v1alpha1.ObjectMeta{Name: "vm1-migrate-2", Namespace: "p1", UID: "op-2"},
			Spec:       v1alpha1.VirtualMachineOperationSpec{Type: v1alpha1.VMOPTypeMigrate, VirtualMachineName: "vm1"}}
		op.Status.Phase = v1alpha1.VMOPPhaseInProgress
		vm := runningVM("h2")
		vm.TypeMeta = v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachine"}
		vm.Namespace, vm.UID = "p1", "uid-vm1"
		vm.Status.MigrationState = &v1alpha1.VirtualMachineMigrationState{ID: "op-1", Operation: "vm1-migrate-1", Phase: v1alpha1.MigrationPhaseSucceeded}
		if err := stale.Add(runtime.DeepCopy(vm), runtime.DeepCopy(op)); err != nil {
			t.Fatal(err)
		}
		if lagging {
			vm.Status.MigrationState = &v1alpha1.VirtualMachineMigrationState{ID: "op-2", Operation: "vm1-migrate-2", Phase: v1alpha1.MigrationPhaseTransferring}
		}
		if err := fresh.Add(vm, op); err != nil {
			t.Fatal(err)
		}
		log := slog.New(slog.NewTextHandler(io.Discard, nil))
		f := runtime.NewFactory(stale, log)
		c, err := New(Config{Deps: runtime.Deps{Client: fresh, Informers: f, Log: log}})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		f.Start(ctx)
		go func() { defer close(done); _ = c.Run(ctx) }()
		var got v1alpha1.VirtualMachineOperation
		deadline := time.Now().Add(2 * time.Second)
		for ; time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if err := fresh.Get(ctx, "virtualmachineoperations", "p1", "vm1-migrate-2", &got); err != nil {
				t.Fatal(err)
			}
			if got.Status.Phase != v1alpha1.VMOPPhaseInProgress {
				break
			}
		}
		cancel()
		<-done
		if lagging && got.Status.Phase != v1alpha1.VMOPPhaseInProgress {
			t.Errorf("the VM's cache lags: the operation became %s (%+v)", got.Status.Phase, got.Status.Conditions)
		}
		if !lagging && got.Status.Phase != v1alpha1.VMOPPhaseFailed {
			t.Errorf("the migration is gone: the operation is %s, want Failed", got.Status.Phase)
		}
	}
}
