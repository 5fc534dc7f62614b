package agent

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// runSpecFileName, in a VM's run directory, keeps the spec fields the running QEMU was
// started with, so the status shows what runs (not what the spec asks for) and names the
// changes that wait for a restart, across agent restarts too.
const runSpecFileName = "runspec.json"

// restartFields are the spec fields a running QEMU takes only at start.
var restartFields = []struct {
	path string
	get  func(s *v1alpha1.VirtualMachineSpec) any
}{
	{"spec.cpu.cores", func(s *v1alpha1.VirtualMachineSpec) any { return s.CPU.Cores }},
	{"spec.cpu.coreFraction", func(s *v1alpha1.VirtualMachineSpec) any { return s.CPU.CoreFraction }},
	{"spec.memory.size", func(s *v1alpha1.VirtualMachineSpec) any { return s.Memory.Size }},
	{"spec.virtualMachineClassName", func(s *v1alpha1.VirtualMachineSpec) any { return s.VirtualMachineClassName }},
	{"spec.blockDeviceRefs", func(s *v1alpha1.VirtualMachineSpec) any { return s.BlockDeviceRefs }},
	{"spec.networks", func(s *v1alpha1.VirtualMachineSpec) any { return s.Networks }},
	{"spec.osType", func(s *v1alpha1.VirtualMachineSpec) any { return s.OSType }},
	{"spec.bootloader", func(s *v1alpha1.VirtualMachineSpec) any { return s.Bootloader }},
	{"spec.enableParavirtualization", func(s *v1alpha1.VirtualMachineSpec) any { return s.EnableParavirtualization }},
	{"spec.provisioning", func(s *v1alpha1.VirtualMachineSpec) any { return s.Provisioning }},
}

// runSpec is what runspec.json holds.
type runSpec struct {
	// Spec is the VM spec at start (only restartFields matter).
	Spec v1alpha1.VirtualMachineSpec `json:"spec"`
}

func writeRunSpec(runDir string, vm *v1alpha1.VirtualMachine) error {
	b, err := json.Marshal(runSpec{Spec: vm.Spec})
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(runDir, runSpecFileName), b, 0o600)
}

// readRunSpec returns the spec the running QEMU was started with; a run directory without
// one (a QEMU started by an older agent) counts as started with the current spec.
func readRunSpec(runDir string, vm *v1alpha1.VirtualMachine) *v1alpha1.VirtualMachineSpec {
	var rs runSpec
	if b, err := os.ReadFile(filepath.Join(runDir, runSpecFileName)); err == nil && json.Unmarshal(b, &rs) == nil {
		return &rs.Spec
	}
	s := vm.Spec
	return &s
}

// pendingChanges lists the restart-only fields whose spec differs from what runs, each as
// "PATH (runs with VALUE)".
func pendingChanges(running, want *v1alpha1.VirtualMachineSpec) []string {
	var out []string
	for _, f := range restartFields {
		a, _ := json.Marshal(f.get(running))
		b, _ := json.Marshal(f.get(want))
		if string(a) != string(b) {
			out = append(out, fmt.Sprintf("%s (runs with %s)", f.path, shortJSON(a)))
		}
	}
	return out
}

func shortJSON(b []byte) string {
	s := strings.Trim(string(b), `"`)
	if s == "null" || s == "" {
		return "none"
	}
	if len(s) > 80 {
		s = s[:77] + "..."
	}
	return s
}

// restartCondition is the AwaitingRestartToApplyConfiguration condition for pending changes.
func restartCondition(pending []string) v1alpha1.Condition {
	if len(pending) == 0 {
		return v1alpha1.Condition{Type: v1alpha1.VMConditionAwaitingRestartToApplyConfiguration, Status: v1alpha1.ConditionFalse,
			Reason: "ConfigurationApplied", Message: "the VM runs with its spec"}
	}
	return v1alpha1.Condition{Type: v1alpha1.VMConditionAwaitingRestartToApplyConfiguration, Status: v1alpha1.ConditionTrue,
		Reason: "RestartRequired", Message: "changed since start, applied at the next restart: " + strings.Join(pending, ", ")}
}
