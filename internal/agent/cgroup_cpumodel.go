package agent

// The virtual CPU a VM's class asks for, as QEMU's -cpu model and feature flags.

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/qemu"
)

// baseFeatureModel is the model that Features and Discovery classes add their flags to: the
// plain x86-64 baseline every host can run.
const baseFeatureModel = "qemu64"

// applyClassCPU sets the QEMU CPU model and features of in from the VM's class:
//
//	Host            -cpu host (KVM); under TCG "max", the closest QEMU can emulate
//	HostPassthrough -cpu host,migratable=off (KVM); "max" under TCG
//	Model           -cpu MODEL
//	Features        -cpu qemu64,+f1,+f2...
//	Discovery       -cpu qemu64 plus the features in the class's status.cpuFeatures.enabled
//
// A VM without a class keeps the builder's default (host under KVM, max under TCG).
func (a *Agent) applyClassCPU(ctx context.Context, vm *v1alpha1.VirtualMachine, in *qemu.Input) (*v1alpha1.VirtualMachineClass, error) {
	name := vm.Spec.VirtualMachineClassName
	if name == "" {
		return nil, nil
	}
	var cl v1alpha1.VirtualMachineClass
	if err := a.c.Get(ctx, "virtualmachineclasses", "", name, &cl); err != nil {
		if client.IsNotFound(err) {
			return nil, fmt.Errorf("VirtualMachineClass %q not found", name)
		}
		return nil, err
	}
	model, feats, err := classCPU(&cl, in.Node.KVM)
	if err != nil {
		return nil, err
	}
	in.CPUModel, in.CPUFeatures = model, feats
	return &cl, nil
}

// classCPU maps a class's CPU to a QEMU model and feature flags.
func classCPU(cl *v1alpha1.VirtualMachineClass, kvm bool) (string, []string, error) {
	switch cl.Spec.CPU.Type {
	case v1alpha1.CPUTypeHost:
		if kvm {
			return "host", nil, nil
		}
		return "max", nil, nil
	case v1alpha1.CPUTypeHostPassthrough:
		if kvm {
			return "host", []string{"-migratable"}, nil
		}
		return "max", nil, nil
	case v1alpha1.CPUTypeModel:
		return cl.Spec.CPU.Model, nil, nil
	case v1alpha1.CPUTypeFeatures:
		return baseFeatureModel, plusFeatures(cl.Spec.CPU.Features), nil
	case v1alpha1.CPUTypeDiscovery:
		if cl.Status.CPUFeatures == nil || len(cl.Status.CPUFeatures.Enabled) == 0 {
			return "", nil, fmt.Errorf("VirtualMachineClass %q has not discovered its CPU features yet", cl.Name)
		}
		return baseFeatureModel, plusFeatures(cl.Status.CPUFeatures.Enabled), nil
	}
	return "", nil, fmt.Errorf("VirtualMachineClass %q has an unknown CPU type %q", cl.Name, cl.Spec.CPU.Type)
}

func plusFeatures(fs []string) []string {
	out := make([]string, len(fs))
	for i, f := range fs {
		out[i] = "+" + f
	}
	return out
}

// qemuKnownFeatures keeps the host CPU flags QEMU knows as CPUID features (the kernel lists
// many, such as constant_tsc, that are not CPUID bits and that -cpu refuses). Without a
// usable QEMU the list is returned as is.
func qemuKnownFeatures(ctx context.Context, binary string, flags []string) []string {
	out, err := exec.CommandContext(ctx, binary, "-cpu", "help").Output()
	if err != nil {
		return flags
	}
	known := parseCPUIDFlags(string(out))
	if len(known) == 0 {
		return flags
	}
	kept := make([]string, 0, len(flags))
	for _, f := range flags {
		if known[f] {
			kept = append(kept, f)
		}
	}
	return kept
}

// parseCPUIDFlags reads the "Recognized CPUID flags:" section of `qemu -cpu help`.
func parseCPUIDFlags(help string) map[string]bool {
	_, rest, ok := strings.Cut(help, "Recognized CPUID flags:")
	if !ok {
		return nil
	}
	known := map[string]bool{}
	for _, line := range strings.Split(rest, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		if !strings.HasPrefix(line, " ") {
			break // the next section
		}
		for _, f := range strings.Fields(line) {
			known[f] = true
		}
	}
	return known
}

// requestedCores is cores × coreFraction as a CPU quantity ("1", "500m"): the CPU time the
// VM's cgroup allows (all of its cores with dedicated cores or at 100%).
func requestedCores(vm *v1alpha1.VirtualMachine) v1alpha1.Quantity {
	lim := computeLimits(vm, false)
	milli := int64(vm.Spec.CPU.Cores) * 1000
	if lim.cpuQuotaUsec > 0 {
		milli = lim.cpuQuotaUsec * 1000 / cfsPeriodUsec
	}
	if milli%1000 == 0 {
		return v1alpha1.Quantity(strconv.FormatInt(milli/1000, 10))
	}
	return v1alpha1.Quantity(strconv.FormatInt(milli, 10) + "m")
}
