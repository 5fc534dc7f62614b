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
	// Cores and memory size change live within maxCores and maxSize (live.go): runspec.json
	// follows each live change, so they are listed here only while one could not be made.
	{"spec.cpu.cores", func(s *v1alpha1.VirtualMachineSpec) any { return s.CPU.Cores }},
	{"spec.cpu.maxCores", func(s *v1alpha1.VirtualMachineSpec) any { return s.CPU.MaxCores }},
	{"spec.cpu.coreFraction", func(s *v1alpha1.VirtualMachineSpec) any { return s.CPU.CoreFraction }},
	{"spec.memory.size", func(s *v1alpha1.VirtualMachineSpec) any { return canonicalMemory(s.Memory.Size) }},
	{"spec.memory.maxSize", func(s *v1alpha1.VirtualMachineSpec) any { return canonicalMemory(s.Memory.MaxSize) }},
	{"spec.virtualMachineClassName", func(s *v1alpha1.VirtualMachineSpec) any { return s.VirtualMachineClassName }},
	{"spec.blockDeviceRefs", func(s *v1alpha1.VirtualMachineSpec) any { return s.BlockDeviceRefs }},
	{"spec.networks", func(s *v1alpha1.VirtualMachineSpec) any { return s.Networks }},
	{"spec.osType", func(s *v1alpha1.VirtualMachineSpec) any { return s.OSType }},
	{"spec.bootloader", func(s *v1alpha1.VirtualMachineSpec) any { return s.Bootloader }},
	{"spec.enableParavirtualization", func(s *v1alpha1.VirtualMachineSpec) any { return s.EnableParavirtualization }},
	{"spec.provisioning", func(s *v1alpha1.VirtualMachineSpec) any { return s.Provisioning }},
}

// memoryBytes is a memory quantity in bytes (0 when empty or invalid).
func memoryBytes(q v1alpha1.Quantity) int64 {
	n, _ := q.Value()
	return n
}

// canonicalMemory writes a memory quantity one way, so that "1Gi" and "1024Mi" compare
// equal; empty stays empty.
func canonicalMemory(q v1alpha1.Quantity) v1alpha1.Quantity {
	if n := memoryBytes(q); n > 0 {
		return v1alpha1.BytesQuantity(n)
	}
	return q
}

// runSpec is what runspec.json holds.
type runSpec struct {
	// Spec is the VM spec at start (only restartFields matter), with spec.cpu.cores and
	// spec.memory.size following the live changes made since.
	Spec v1alpha1.VirtualMachineSpec `json:"spec"`
	// BootMemory is the memory the guest booted with (the memory size at start); empty: the
	// spec's memory size (a QEMU started before memory hot-plug). With a maxSize, the rest
	// of the memory size is the virtio-mem device's requested size.
	BootMemory v1alpha1.Quantity `json:"bootMemory,omitempty"`
	// BootCores is the vCPU count the VM started with; 0: Spec.CPU.Cores.
	BootCores int `json:"bootCores,omitempty"`
	// RetiredCPUSlots are the vCPU slots (by topology index) whose hot-added vCPU was
	// removed: they are not used again by this QEMU (live.go, setCPUs).
	RetiredCPUSlots []int `json:"retiredCPUSlots,omitempty"`
	// HotpluggedMemory is what the guest had taken through virtio-mem at the last look.
	HotpluggedMemory v1alpha1.Quantity `json:"hotpluggedMemory,omitempty"`
	// Balloon says QEMU has the memory balloon, and BalloonFloor is what the node may
	// reclaim the guest down to with it (empty: nothing is reclaimed; memory.go).
	Balloon      bool              `json:"balloon,omitempty"`
	BalloonFloor v1alpha1.Quantity `json:"balloonFloor,omitempty"`
	// BalloonReporting says the balloon reports free pages.
	BalloonReporting bool `json:"balloonReporting,omitempty"`
	// MemoryPadKiB is what QEMU gives the guest beyond its boot memory (qemu.MemoryPadKiB).
	MemoryPadKiB int64 `json:"memoryPadKiB,omitempty"`
}

// bootMemory is the memory the guest booted with.
func (rs *runSpec) bootMemory() v1alpha1.Quantity {
	if rs.BootMemory != "" {
		return rs.BootMemory
	}
	return rs.Spec.Memory.Size
}

func newRunSpec(vm *v1alpha1.VirtualMachine) *runSpec {
	return &runSpec{Spec: vm.Spec, BootMemory: vm.Spec.Memory.Size, BootCores: vm.Spec.CPU.Cores}
}

func saveRunSpec(runDir string, rs *runSpec) error {
	return writeJSONAtomic(runDir, runSpecFileName, rs)
}

// writeJSONAtomic writes v as JSON to the file name in dir: whole, into name.tmp first and then
// renamed, so a reader never sees half of it.
func writeJSONAtomic(dir, name string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, name+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, name))
}

// loadRunSpec returns what runs; a run directory without runspec.json (a QEMU started by
// an older agent) counts as started with the current spec.
func loadRunSpec(runDir string, vm *v1alpha1.VirtualMachine) *runSpec {
	var rs runSpec
	if b, err := os.ReadFile(filepath.Join(runDir, runSpecFileName)); err == nil && json.Unmarshal(b, &rs) == nil {
		return &rs
	}
	return &runSpec{Spec: vm.Spec}
}

// readRunSpec returns the spec the running QEMU runs with (see loadRunSpec).
func readRunSpec(runDir string, vm *v1alpha1.VirtualMachine) *v1alpha1.VirtualMachineSpec {
	return &loadRunSpec(runDir, vm).Spec
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
