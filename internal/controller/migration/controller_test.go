package migration

import (
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

func TestAutoConverge(t *testing.T) {
	yes, no := true, false
	cases := []struct {
		p     v1alpha1.LiveMigrationPolicy
		force *bool
		want  bool
	}{
		{"", nil, false}, {"", &yes, true}, {"", &no, false},
		{v1alpha1.LiveMigrationPolicyPreferSafe, &yes, true},
		{v1alpha1.LiveMigrationPolicyAlwaysSafe, &yes, false},
		{v1alpha1.LiveMigrationPolicyAlwaysForced, &no, true},
		{v1alpha1.LiveMigrationPolicyPreferForced, nil, true},
		{v1alpha1.LiveMigrationPolicyPreferForced, &no, false},
		{v1alpha1.LiveMigrationPolicyManual, nil, false},
	}
	for _, c := range cases {
		if got := autoConverge(c.p, c.force); got != c.want {
			t.Errorf("autoConverge(%q, %v) = %v, want %v", c.p, c.force, got, c.want)
		}
	}
}

func runningVM(node string) *v1alpha1.VirtualMachine {
	vm := &v1alpha1.VirtualMachine{}
	vm.Name = "vm1"
	vm.Status.NodeName = node
	vm.Status.Phase = v1alpha1.VMPhaseRunning
	vm.Status.PowerRequest = &v1alpha1.VMPowerRequest{State: v1alpha1.PowerStateRunning}
	return vm
}

func TestCheck(t *testing.T) {
	c := &Controller{}
	op := func(typ v1alpha1.VMOPType) *v1alpha1.VirtualMachineOperation {
		return &v1alpha1.VirtualMachineOperation{Spec: v1alpha1.VirtualMachineOperationSpec{Type: typ}}
	}
	stopped := runningVM("")
	stopped.Status.Phase = v1alpha1.VMPhaseStopped
	stopped.Status.PowerRequest = &v1alpha1.VMPowerRequest{State: v1alpha1.PowerStateStopped}
	starting := runningVM("n1")
	starting.Status.Phase = v1alpha1.VMPhaseStarting
	never := runningVM("n1")
	never.Spec.LiveMigrationPolicy = v1alpha1.LiveMigrationPolicyNever
	grown := runningVM("n1")
	grown.Status.Resources = &v1alpha1.VirtualMachineResources{CPU: v1alpha1.VirtualMachineCPUStatus{Cores: 3, BootCores: 1, MaxCores: 4}}
	plugged := runningVM("n1")
	plugged.Status.Resources = &v1alpha1.VirtualMachineResources{Memory: v1alpha1.VirtualMachineMemoryStatus{Size: "768Mi", BootSize: "256Mi", Hotplugged: "512Mi"}}
	room := runningVM("n1") // room to grow, not used: migratable
	room.Status.Resources = &v1alpha1.VirtualMachineResources{CPU: v1alpha1.VirtualMachineCPUStatus{Cores: 1, BootCores: 1, MaxCores: 4},
		Memory: v1alpha1.VirtualMachineMemoryStatus{Size: "256Mi", BootSize: "256Mi", MaxSize: "1Gi", Hotplugged: "0"}}
	hotDisk := runningVM("n1")
	hotDisk.Status.BlockDeviceRefs = []v1alpha1.BlockDeviceStatusRef{{Kind: v1alpha1.BlockDeviceKindVirtualDisk, Name: "d1", Hotplugged: true,
		VirtualMachineBlockDeviceAttachmentName: "a1", Slot: "hotplug1"}}
	noSlot := runningVM("n1")
	noSlot.Status.BlockDeviceRefs = []v1alpha1.BlockDeviceStatusRef{{Kind: v1alpha1.BlockDeviceKindVirtualDisk, Name: "d1", Hotplugged: true,
		VirtualMachineBlockDeviceAttachmentName: "a1"}}
	hotNIC := runningVM("n1")
	hotNIC.Status.Conditions = []v1alpha1.Condition{{Type: v1alpha1.VMConditionMigratable, Status: v1alpha1.ConditionFalse,
		Reason: v1alpha1.VMReasonHotpluggedDevices, Message: "these hot-plugged devices are not live-migrated: network interface 1"}}
	cases := []struct {
		name      string
		vm        *v1alpha1.VirtualMachine
		op        *v1alpha1.VirtualMachineOperation
		phase     v1alpha1.VMOPPhase
		reason    string
		msgSubstr string
	}{
		{"running VM may move", runningVM("n1"), op(v1alpha1.VMOPTypeMigrate), "", "", ""},
		{"stopped VM cannot be migrated", stopped, op(v1alpha1.VMOPTypeMigrate), v1alpha1.VMOPPhaseFailed, v1alpha1.VMOPReasonNotApplicableForPhase, "only a running"},
		{"stopped VM: evict has nothing to do", stopped, op(v1alpha1.VMOPTypeEvict), v1alpha1.VMOPPhaseCompleted, v1alpha1.VMOPReasonOperationCompleted, "nothing to evict"},
		{"starting VM waits for nobody: refused", starting, op(v1alpha1.VMOPTypeMigrate), v1alpha1.VMOPPhaseFailed, v1alpha1.VMOPReasonNotApplicableForPhase, "it is Starting"},
		{"vCPUs added live: the target starts with them", grown, op(v1alpha1.VMOPTypeMigrate), "", "", ""},
		{"memory plugged live: the target requests it", plugged, op(v1alpha1.VMOPTypeEvict), "", "", ""},
		{"room to grow, unused", room, op(v1alpha1.VMOPTypeMigrate), "", "", ""},
		{"a hot-plugged disk in a recorded slot moves with the VM", hotDisk, op(v1alpha1.VMOPTypeMigrate), "", "", ""},
		{"a hot-plugged disk of unknown slot", noSlot, op(v1alpha1.VMOPTypeMigrate), v1alpha1.VMOPPhaseFailed, v1alpha1.VMOPReasonHotpluggedDevices, "slot the node did not record"},
		{"the node says a hot-plugged NIC keeps it", hotNIC, op(v1alpha1.VMOPTypeMigrate), v1alpha1.VMOPPhaseFailed, v1alpha1.VMOPReasonHotpluggedDevices, "network interface 1"},
		{"policy Never", never, op(v1alpha1.VMOPTypeEvict), v1alpha1.VMOPPhaseFailed, v1alpha1.VMOPReasonNotApplicableForLiveMigrationPolicy, "Never"},
	}
	for _, tc := range cases {
		phase, reason, msg := c.check(tc.vm, tc.op)
		if phase != tc.phase || reason != tc.reason || !strings.Contains(msg, tc.msgSubstr) {
			t.Errorf("%s: got %q %q %q", tc.name, phase, reason, msg)
		}
	}
}

func TestOverdue(t *testing.T) {
	c := &Controller{cfg: Config{PrepareTimeout: time.Minute}}
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	st := v1alpha1.NewTime(start)
	m := &v1alpha1.VirtualMachineMigrationState{StartTimestamp: &st, Phase: v1alpha1.MigrationPhasePending, Target: v1alpha1.VirtualMachineLocation{Node: "n2"},
		Source: v1alpha1.VirtualMachineLocation{Node: "n1"}, Policy: &v1alpha1.MigrationPolicySettings{TimeoutSeconds: 120}}
	vm := runningVM("n1")
	if why := c.overdue(vm, m, start.Add(59*time.Second)); why != "" {
		t.Errorf("within the prepare timeout: %q", why)
	}
	if why := c.overdue(vm, m, start.Add(61*time.Second)); !strings.Contains(why, "not ready within 1m0s") {
		t.Errorf("after the prepare timeout: %q", why)
	}
	m.Phase = v1alpha1.MigrationPhaseTransferring
	// Transferring: prepare timeout + a minute + the policy's timeout.
	if why := c.overdue(vm, m, start.Add(239*time.Second)); why != "" {
		t.Errorf("transfer within its limit: %q", why)
	}
	if why := c.overdue(vm, m, start.Add(241*time.Second)); !strings.Contains(why, "did not end within 4m0s") {
		t.Errorf("transfer beyond its limit: %q", why)
	}
}
