package registry

import (
	"fmt"
	"regexp"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/placement"
)

func init() {
	registerTyped("VirtualMachineClass", typed[*v1alpha1.VirtualMachineClass]{
		Validate:       validateVMClass,
		ValidateUpdate: validateVMClassUpdate,
	})
}

const maxClassCores = 1024

var (
	cpuModelRE   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)
	cpuFeatureRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)
)

func validateVMClass(c *v1alpha1.VirtualMachineClass) errs.FieldErrors {
	var fe errs.FieldErrors
	validateClassCPU(&fe, &c.Spec.CPU)
	if ns := c.Spec.NodeSelector; ns != nil {
		chkLabelMap(&fe, "spec.nodeSelector.matchLabels", ns.MatchLabels)
		for i, r := range ns.MatchExpressions {
			chkSelectorRequirement(&fe, fmt.Sprintf("spec.nodeSelector.matchExpressions[%d]", i), r.Key, r.Operator, r.Values, true)
		}
	}
	chkTolerations(&fe, "spec.tolerations", c.Spec.Tolerations)
	validateSizingPolicies(&fe, c.Spec.SizingPolicies)
	return fe
}

func validateClassCPU(fe *errs.FieldErrors, cpu *v1alpha1.VirtualMachineClassCPU) {
	chkEnum(fe, "spec.cpu.type", cpu.Type, true, v1alpha1.CPUTypeHost, v1alpha1.CPUTypeHostPassthrough,
		v1alpha1.CPUTypeDiscovery, v1alpha1.CPUTypeModel, v1alpha1.CPUTypeFeatures)
	if cpu.Type == v1alpha1.CPUTypeModel {
		if cpu.Model == "" {
			fe.Required("spec.cpu.model", "type Model needs a CPU model name (e.g. Skylake-Server)")
		} else if !cpuModelRE.MatchString(cpu.Model) {
			fe.Invalid("spec.cpu.model", cpu.Model, "must be a CPU model name: letters, digits, '-', '_' or '.', at most 64 characters")
		}
	} else if cpu.Model != "" {
		fe.Forbidden("spec.cpu.model", "only allowed with type Model")
	}
	if cpu.Type == v1alpha1.CPUTypeFeatures {
		if len(cpu.Features) == 0 {
			fe.Required("spec.cpu.features", "type Features needs at least one CPU feature (e.g. sse4.2, avx2)")
		}
		seen := map[string]bool{}
		for i, f := range cpu.Features {
			p := fmt.Sprintf("spec.cpu.features[%d]", i)
			if !cpuFeatureRE.MatchString(f) {
				fe.Invalid(p, f, "must be a CPU feature name: letters, digits, '-', '_' or '.', at most 64 characters")
			} else if seen[f] {
				fe.Duplicate(p, f)
			}
			seen[f] = true
		}
	} else if len(cpu.Features) > 0 {
		fe.Forbidden("spec.cpu.features", "only allowed with type Features")
	}
	if d := cpu.Discovery; d != nil {
		if cpu.Type != v1alpha1.CPUTypeDiscovery {
			fe.Forbidden("spec.cpu.discovery", "only allowed with type Discovery")
		}
		if d.NodeSelector != nil && (len(d.MatchLabels) > 0 || len(d.MatchExpressions) > 0) {
			fe.Forbidden("spec.cpu.discovery.nodeSelector", "give the node selector either inline (matchLabels, matchExpressions) or under nodeSelector, not both")
		}
		chkLabelMap(fe, "spec.cpu.discovery.matchLabels", d.MatchLabels)
		for i, r := range d.MatchExpressions {
			chkSelectorRequirement(fe, fmt.Sprintf("spec.cpu.discovery.matchExpressions[%d]", i), r.Key, r.Operator, r.Values, false)
		}
		chkLabelSelector(fe, "spec.cpu.discovery.nodeSelector", d.NodeSelector)
	}
}

func validateSizingPolicies(fe *errs.FieldErrors, ps []v1alpha1.SizingPolicy) {
	if len(ps) > v1alpha1.MaxSizingPolicies {
		fe.Invalid("spec.sizingPolicies", nil, fmt.Sprintf("a class may have at most %d sizing policies (has %d)", v1alpha1.MaxSizingPolicies, len(ps)))
	}
	validCores := make([]bool, len(ps))
	for i, p := range ps {
		path := fmt.Sprintf("spec.sizingPolicies[%d]", i)
		validCores[i] = validateSizingCores(fe, path+".cores", p.Cores)
		if p.Memory != nil {
			validateSizingMemory(fe, path+".memory", p.Memory)
		}
		seen := map[v1alpha1.CoreFractionValue]bool{}
		for j, f := range p.CoreFractions {
			fp := fmt.Sprintf("%s.coreFractions[%d]", path, j)
			if f < 1 || f > 100 {
				fe.Invalid(fp, int(f), "must be a percentage from 1 to 100")
			} else if seen[f] {
				fe.Duplicate(fp, int(f))
			}
			seen[f] = true
		}
		dseen := map[bool]bool{}
		for j, d := range p.DedicatedCores {
			if dseen[d] {
				fe.Duplicate(fmt.Sprintf("%s.dedicatedCores[%d]", path, j), d)
			}
			dseen[d] = true
		}
		if p.DefaultCoreFraction != "" {
			n, msg := placement.ParseCoreFraction(p.DefaultCoreFraction)
			switch {
			case msg != "":
				fe.Invalid(path+".defaultCoreFraction", p.DefaultCoreFraction, msg)
			case len(p.CoreFractions) > 0 && !seen[v1alpha1.CoreFractionValue(n)]:
				fe.Invalid(path+".defaultCoreFraction", p.DefaultCoreFraction, "must be one of the policy's coreFractions")
			}
		}
	}
	// Core ranges must not overlap, or a VM would match two policies.
	for j := range ps {
		if !validCores[j] {
			continue
		}
		for i := 0; i < j; i++ {
			if !validCores[i] {
				continue
			}
			a, b := ps[i].Cores, ps[j].Cores
			if a.Min <= b.Max && b.Min <= a.Max {
				fe.Invalid(fmt.Sprintf("spec.sizingPolicies[%d].cores", j), nil,
					fmt.Sprintf("the cores range %d-%d of spec.sizingPolicies[%d] overlaps the range %d-%d of spec.sizingPolicies[%d]; core ranges of sizing policies must not overlap",
						b.Min, b.Max, j, a.Min, a.Max, i))
			}
		}
	}
}

// validateSizingCores reports problems and says whether the range is usable for the
// overlap check.
func validateSizingCores(fe *errs.FieldErrors, path string, c *v1alpha1.SizingPolicyCores) bool {
	if c == nil {
		fe.Required(path, "every sizing policy needs a cores range {min, max}")
		return false
	}
	ok := true
	if c.Min < 1 {
		fe.Invalid(path+".min", c.Min, "must be at least 1")
		ok = false
	}
	if c.Max < 1 || c.Max > maxClassCores {
		fe.Invalid(path+".max", c.Max, fmt.Sprintf("must be in the range 1-%d", maxClassCores))
		ok = false
	}
	if ok && c.Min > c.Max {
		fe.Invalid(path+".min", c.Min, fmt.Sprintf("must not be greater than max (%d)", c.Max))
		ok = false
	}
	if c.Step < 0 {
		fe.Invalid(path+".step", c.Step, "must be greater than 0")
	}
	return ok
}

func validateSizingMemory(fe *errs.FieldErrors, path string, m *v1alpha1.SizingPolicyMemory) {
	chkMinMax(fe, path, m.Min, m.Max)
	if m.Step != "" {
		if v, ok := chkQuantity(fe, path+".step", m.Step); ok && v == 0 {
			fe.Invalid(path+".step", string(m.Step), "must be greater than 0")
		}
	}
	if m.PerCore != nil {
		chkMinMax(fe, path+".perCore", m.PerCore.Min, m.PerCore.Max)
	}
}

func chkMinMax(fe *errs.FieldErrors, path string, lo, hi v1alpha1.Quantity) {
	var a, b int64
	var okA, okB bool
	if lo != "" {
		a, okA = chkQuantity(fe, path+".min", lo)
	}
	if hi != "" {
		b, okB = chkQuantity(fe, path+".max", hi)
	}
	if okA && okB && a > b {
		fe.Invalid(path+".min", string(lo), fmt.Sprintf("must not be greater than max (%s)", hi))
	}
}

// chkQuantity parses q, reporting a parse error at path.
func chkQuantity(fe *errs.FieldErrors, path string, q v1alpha1.Quantity) (int64, bool) {
	v, err := q.Value()
	if err != nil {
		fe.Invalid(path, string(q), err.Error())
		return 0, false
	}
	return v, true
}

func validateVMClassUpdate(c, old *v1alpha1.VirtualMachineClass) errs.FieldErrors {
	var fe errs.FieldErrors
	if c.Spec.CPU.Type != old.Spec.CPU.Type {
		fe.Forbidden("spec.cpu.type", fmt.Sprintf("the CPU type of a class cannot be changed (it is %s); create a new class", old.Spec.CPU.Type))
	} else if !jsonEqual(c.Spec.CPU, old.Spec.CPU) {
		fe.Forbidden("spec.cpu", "the CPU of a class cannot be changed; create a new class")
	}
	return fe
}
