package placement

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
)

// IsDefaultClass says whether the class carries the default-class annotation (Rakhsh's or
// Deckhouse's key) with the value "true".
func IsDefaultClass(c *v1alpha1.VirtualMachineClass) bool {
	a := c.Annotations
	return a[v1alpha1.AnnotationDefaultVirtualMachineClass] == "true" ||
		a[v1alpha1.AnnotationDefaultVirtualMachineClassDeckhouse] == "true"
}

// FindSizingPolicy returns the policy whose cores range contains cores, or nil.
func FindSizingPolicy(c *v1alpha1.VirtualMachineClass, cores int) *v1alpha1.SizingPolicy {
	for i := range c.Spec.SizingPolicies {
		p := &c.Spec.SizingPolicies[i]
		if p.Cores != nil && cores >= p.Cores.Min && cores <= p.Cores.Max {
			return p
		}
	}
	return nil
}

// DefaultFromClass fills in what the VM leaves to its class: the core fraction (the policy's
// defaultCoreFraction, else 100%) and dedicated cores (true when the policy allows only
// dedicated cores).
func DefaultFromClass(vm *v1alpha1.VirtualMachine, c *v1alpha1.VirtualMachineClass) {
	p := FindSizingPolicy(c, vm.Spec.CPU.Cores)
	if vm.Spec.CPU.CoreFraction == "" {
		vm.Spec.CPU.CoreFraction = DefaultCoreFraction
		if p != nil && p.DefaultCoreFraction != "" {
			vm.Spec.CPU.CoreFraction = p.DefaultCoreFraction
			if !strings.HasSuffix(p.DefaultCoreFraction, "%") {
				vm.Spec.CPU.CoreFraction += "%"
			}
		}
	}
	if p != nil && len(p.DedicatedCores) == 1 && p.DedicatedCores[0] && !vm.Spec.CPU.DedicatedCores {
		vm.Spec.CPU.DedicatedCores = true
	}
}

// CheckSizing checks the VM's cores, memory, core fraction and dedicated cores against the
// sizing policy of the class whose cores range contains spec.cpu.cores. It returns one cause
// per broken rule. A class without sizing policies allows any size.
func CheckSizing(vm *v1alpha1.VirtualMachine, c *v1alpha1.VirtualMachineClass) errs.FieldErrors {
	var fe errs.FieldErrors
	if len(c.Spec.SizingPolicies) == 0 {
		return nil
	}
	cores := vm.Spec.CPU.Cores
	p := FindSizingPolicy(c, cores)
	if p == nil {
		ranges := make([]string, 0, len(c.Spec.SizingPolicies))
		for _, sp := range c.Spec.SizingPolicies {
			if sp.Cores != nil {
				ranges = append(ranges, fmt.Sprintf("%d-%d", sp.Cores.Min, sp.Cores.Max))
			}
		}
		fe.Invalid("spec.cpu.cores", cores, fmt.Sprintf("no sizing policy of class %q covers %d cores (allowed core ranges: %s)",
			c.Name, cores, strings.Join(ranges, ", ")))
		return fe
	}
	where := fmt.Sprintf("the sizing policy for %d-%d cores of class %q", p.Cores.Min, p.Cores.Max, c.Name)
	if p.Cores.Step > 0 && (cores-p.Cores.Min)%p.Cores.Step != 0 {
		fe.Invalid("spec.cpu.cores", cores, fmt.Sprintf("%s allows cores from %d in steps of %d", where, p.Cores.Min, p.Cores.Step))
	}
	mem, err := vm.Spec.Memory.Size.Value()
	if m := p.Memory; m != nil && err == nil {
		lo, _ := m.Min.Value()
		if m.Min != "" && mem < lo {
			fe.Invalid("spec.memory.size", string(vm.Spec.Memory.Size), fmt.Sprintf("%s needs at least %s of memory", where, m.Min))
		}
		if hi, _ := m.Max.Value(); m.Max != "" && mem > hi {
			fe.Invalid("spec.memory.size", string(vm.Spec.Memory.Size), fmt.Sprintf("%s allows at most %s of memory", where, m.Max))
		}
		if step, _ := m.Step.Value(); step > 0 && (mem-lo)%step != 0 {
			from := "0"
			if m.Min != "" {
				from = string(m.Min)
			}
			fe.Invalid("spec.memory.size", string(vm.Spec.Memory.Size), fmt.Sprintf("%s allows memory from %s in steps of %s", where, from, m.Step))
		}
		if pc := m.PerCore; pc != nil && cores > 0 {
			per := mem / int64(cores)
			if lo, _ := pc.Min.Value(); pc.Min != "" && per < lo {
				fe.Invalid("spec.memory.size", string(vm.Spec.Memory.Size), fmt.Sprintf("%s needs at least %s of memory per core (%d cores: at least %s)",
					where, pc.Min, cores, v1alpha1.BytesQuantity(lo*int64(cores))))
			}
			if hi, _ := pc.Max.Value(); pc.Max != "" && per > hi {
				fe.Invalid("spec.memory.size", string(vm.Spec.Memory.Size), fmt.Sprintf("%s allows at most %s of memory per core (%d cores: at most %s)",
					where, pc.Max, cores, v1alpha1.BytesQuantity(hi*int64(cores))))
			}
		}
	}
	if len(p.CoreFractions) > 0 && vm.Spec.CPU.CoreFraction != "" {
		n, msg := ParseCoreFraction(vm.Spec.CPU.CoreFraction)
		ok := msg != ""
		allowed := make([]string, len(p.CoreFractions))
		for i, f := range p.CoreFractions {
			allowed[i] = fmt.Sprintf("%d%%", f)
			if int(f) == n {
				ok = true
			}
		}
		if !ok {
			fe.Invalid("spec.cpu.coreFraction", vm.Spec.CPU.CoreFraction, fmt.Sprintf("%s allows the core fractions %s", where, strings.Join(allowed, ", ")))
		}
	}
	if len(p.DedicatedCores) > 0 {
		ok := false
		for _, d := range p.DedicatedCores {
			if d == vm.Spec.CPU.DedicatedCores {
				ok = true
			}
		}
		if !ok {
			if vm.Spec.CPU.DedicatedCores {
				fe.Invalid("spec.cpu.dedicatedCores", true, where+" does not allow dedicated cores")
			} else {
				fe.Invalid("spec.cpu.dedicatedCores", false, where+" requires dedicated cores (set spec.cpu.dedicatedCores: true)")
			}
		}
	}
	checkGrowthSizing(&fe, vm, c)
	return fe
}

// DefaultCoreFraction is the core fraction of a VM whose class policy names none.
const DefaultCoreFraction = "100%"

var coreFractionRE = regexp.MustCompile(`^(100|[1-9][0-9]?)%$`)

// ParseCoreFraction parses "1%".."100%"; it returns the percentage or a message.
func ParseCoreFraction(s string) (int, string) {
	if s == "Auto" {
		return 0, "Auto (autoscaled core fraction) is not supported; give a percentage from 1% to 100%"
	}
	if !coreFractionRE.MatchString(s) {
		return 0, "must be a percentage from 1% to 100%, such as \"10%\""
	}
	n, _ := strconv.Atoi(s[:len(s)-1])
	return n, ""
}

// checkGrowthSizing checks the room a VM has to grow while it runs against the class: the
// cores it may grow to (spec.cpu.maxCores) must be covered by a sizing policy, and the memory
// it may grow to (spec.memory.maxSize) must be within that policy's memory maximum, so that
// a live change up to them can pass the sizing check every spec update goes through.
func checkGrowthSizing(fe *errs.FieldErrors, vm *v1alpha1.VirtualMachine, c *v1alpha1.VirtualMachineClass) {
	maxCores := max(vm.Spec.CPU.MaxCores, vm.Spec.CPU.Cores)
	p := FindSizingPolicy(c, maxCores)
	if vm.Spec.CPU.MaxCores > vm.Spec.CPU.Cores && p == nil {
		fe.Invalid("spec.cpu.maxCores", vm.Spec.CPU.MaxCores, fmt.Sprintf("no sizing policy of class %q covers %d cores, so the VM could never grow to them", c.Name, maxCores))
		return
	}
	if p == nil || p.Memory == nil || p.Memory.Max == "" || vm.Spec.Memory.MaxSize == "" {
		return
	}
	want, err1 := vm.Spec.Memory.MaxSize.Value()
	hi, err2 := p.Memory.Max.Value()
	if err1 == nil && err2 == nil && want > hi {
		fe.Invalid("spec.memory.maxSize", string(vm.Spec.Memory.MaxSize), fmt.Sprintf("the sizing policy for %d-%d cores of class %q allows at most %s of memory",
			p.Cores.Min, p.Cores.Max, c.Name, p.Memory.Max))
	}
}

// MemoryFloor is the least memory the class allows a VM of cores to have (its sizing
// policy's memory minimum, and its per-core minimum times cores, whichever is more): what
// the node may reclaim a running VM's memory down to with its balloon. 0: the class sets no
// minimum for such a VM.
func MemoryFloor(c *v1alpha1.VirtualMachineClass, cores int) int64 {
	p := FindSizingPolicy(c, cores)
	if p == nil || p.Memory == nil {
		return 0
	}
	var floor int64
	if n, err := p.Memory.Min.Value(); err == nil && n > 0 {
		floor = n
	}
	if p.Memory.PerCore != nil {
		if n, err := p.Memory.PerCore.Min.Value(); err == nil && n*int64(cores) > floor {
			floor = n * int64(cores)
		}
	}
	return floor
}
