package vm

import (
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

func TestAutoRestart(t *testing.T) {
	running := v1alpha1.VMPowerRequest{State: v1alpha1.PowerStateRunning, RestartID: "r1"}
	mk := func(mode v1alpha1.RestartApprovalMode, cond string, condGen int64, mut func(*v1alpha1.VirtualMachine)) *v1alpha1.VirtualMachine {
		vm := &v1alpha1.VirtualMachine{}
		vm.Generation = 5
		vm.Spec.Disruptions = &v1alpha1.Disruptions{RestartApprovalMode: mode}
		pr := running
		vm.Status.PowerRequest = &pr
		vm.Status.ObservedRestartID = "r1"
		vm.Status.Phase = v1alpha1.VMPhaseRunning
		if cond != "" {
			vm.Status.Conditions = []v1alpha1.Condition{{Type: v1alpha1.VMConditionAwaitingRestartToApplyConfiguration, Status: cond, ObservedGeneration: condGen}}
		}
		if mut != nil {
			mut(vm)
		}
		return vm
	}
	restart := v1alpha1.VMPowerRequest{State: v1alpha1.PowerStateRunning, RestartID: "config-5"}
	for _, c := range []struct {
		name string
		vm   *v1alpha1.VirtualMachine
		pr   v1alpha1.VMPowerRequest
		want v1alpha1.VMPowerRequest
	}{
		{"automatic, changes waiting", mk(v1alpha1.RestartApprovalModeAutomatic, v1alpha1.ConditionTrue, 5, nil), running, restart},
		{"manual waits for the user", mk(v1alpha1.RestartApprovalModeManual, v1alpha1.ConditionTrue, 5, nil), running, running},
		{"no disruptions: manual", mk("", v1alpha1.ConditionTrue, 5, func(vm *v1alpha1.VirtualMachine) { vm.Spec.Disruptions = nil }), running, running},
		{"nothing waits", mk(v1alpha1.RestartApprovalModeAutomatic, v1alpha1.ConditionFalse, 5, nil), running, running},
		{"no condition yet", mk(v1alpha1.RestartApprovalModeAutomatic, "", 0, nil), running, running},
		{"condition of an older generation", mk(v1alpha1.RestartApprovalModeAutomatic, v1alpha1.ConditionTrue, 4, nil), running, running},
		{"already restarted for this generation", mk(v1alpha1.RestartApprovalModeAutomatic, v1alpha1.ConditionTrue, 5, func(vm *v1alpha1.VirtualMachine) {
			vm.Status.PowerRequest.RestartID, vm.Status.ObservedRestartID = "config-5", "config-5"
		}), restart, restart},
		{"restart under way", mk(v1alpha1.RestartApprovalModeAutomatic, v1alpha1.ConditionTrue, 5, func(vm *v1alpha1.VirtualMachine) { vm.Status.ObservedRestartID = "r0" }), running, running},
		{"paused", mk(v1alpha1.RestartApprovalModeAutomatic, v1alpha1.ConditionTrue, 5, nil), v1alpha1.VMPowerRequest{State: v1alpha1.PowerStatePaused, RestartID: "r1"}, v1alpha1.VMPowerRequest{State: v1alpha1.PowerStatePaused, RestartID: "r1"}},
		{"stopped", mk(v1alpha1.RestartApprovalModeAutomatic, v1alpha1.ConditionTrue, 5, func(vm *v1alpha1.VirtualMachine) { vm.Status.Phase = v1alpha1.VMPhaseStopped }), running, running},
		{"migrating", mk(v1alpha1.RestartApprovalModeAutomatic, v1alpha1.ConditionTrue, 5, func(vm *v1alpha1.VirtualMachine) {
			vm.Status.MigrationState = &v1alpha1.VirtualMachineMigrationState{Phase: v1alpha1.MigrationPhaseTransferring}
		}), running, running},
	} {
		if got := autoRestart(c.vm, c.pr); got != c.want {
			t.Errorf("%s: %+v, want %+v", c.name, got, c.want)
		}
	}
	// Through decide: no operation, Automatic, changes waiting → a restart is asked for once.
	p := policy{newID: func() string { return "new" }}
	vm := mk(v1alpha1.RestartApprovalModeAutomatic, v1alpha1.ConditionTrue, 5, nil)
	if d := p.decide(vm, nil); d.power == nil || *d.power != restart {
		t.Fatalf("decide: %+v, want %+v", d.power, restart)
	}
}
