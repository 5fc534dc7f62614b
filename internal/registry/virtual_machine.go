package registry

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/placement"
)

func init() {
	registerTyped("VirtualMachine", typed[*v1alpha1.VirtualMachine]{
		// The VM controller removes it once the VM's node has cleaned up (and puts it back on
		// a VM that lacks it); here it is on before the scheduler can see the VM.
		Finalizers: []string{v1alpha1.VMCleanupFinalizer},
		Default:    defaultVirtualMachine,
		Validate:   validateVirtualMachine,
		// Nothing of a VM's spec is immutable (as in Deckhouse): changes that need a restart
		// are reported in status.restartAwaitingChanges.
	})
}

// VM limits.
const (
	minVMMemory          = 16 << 20
	maxVMCores           = 1024
	maxVMBlockDevices    = 16
	maxVMNetworks        = 16
	maxLegacyBlockDevs   = 4
	defaultVMGracePeriod = int64(60)
)

func defaultVirtualMachine(vm *v1alpha1.VirtualMachine) {
	s := &vm.Spec
	if s.RunPolicy == "" {
		s.RunPolicy = v1alpha1.RunPolicyAlwaysOnUnlessStoppedManually
	}
	if s.OSType == "" {
		s.OSType = v1alpha1.OSTypeGeneric
	}
	if s.Bootloader == "" {
		s.Bootloader = v1alpha1.BootloaderBIOS
	}
	if s.EnableParavirtualization == nil {
		t := true
		s.EnableParavirtualization = &t
	}
	if s.LiveMigrationPolicy == "" {
		s.LiveMigrationPolicy = v1alpha1.LiveMigrationPolicyPreferSafe
	}
	if s.Disruptions == nil {
		s.Disruptions = &v1alpha1.Disruptions{}
	}
	if s.Disruptions.RestartApprovalMode == "" {
		s.Disruptions.RestartApprovalMode = v1alpha1.RestartApprovalModeManual
	}
	if s.TerminationGracePeriodSeconds == nil {
		g := defaultVMGracePeriod
		s.TerminationGracePeriodSeconds = &g
	}
	// The core fraction is left empty here: admission (internal/apiserver) first gives a
	// classless VM the default class, then takes the fraction from the class's sizing policy
	// (defaultCoreFraction), or 100% without a class.
	if p := s.Provisioning; p != nil {
		if p.UserDataRef != nil && p.UserDataRef.Kind == "" {
			p.UserDataRef.Kind = v1alpha1.ProvisioningSecretKind
		}
		if p.SysprepRef != nil && p.SysprepRef.Kind == "" {
			p.SysprepRef.Kind = v1alpha1.ProvisioningSecretKind
		}
	}
}

func validateVirtualMachine(vm *v1alpha1.VirtualMachine) errs.FieldErrors {
	var fe errs.FieldErrors
	s := &vm.Spec
	chkRefName(&fe, "spec.virtualMachineClassName", s.VirtualMachineClassName, false)
	chkEnum(&fe, "spec.runPolicy", s.RunPolicy, false,
		v1alpha1.RunPolicyAlwaysOnUnlessStoppedManually, v1alpha1.RunPolicyAlwaysOn, v1alpha1.RunPolicyAlwaysOff, v1alpha1.RunPolicyManual)

	// CPU and memory.
	if s.CPU.Cores < 1 {
		if s.CPU.Cores == 0 {
			fe.Required("spec.cpu.cores", "the number of cores is required (at least 1)")
		} else {
			fe.Invalid("spec.cpu.cores", s.CPU.Cores, "must be at least 1")
		}
	} else if s.CPU.Cores > maxVMCores {
		fe.Invalid("spec.cpu.cores", s.CPU.Cores, fmt.Sprintf("must be at most %d", maxVMCores))
	}
	if s.CPU.CoreFraction != "" {
		if _, msg := placement.ParseCoreFraction(s.CPU.CoreFraction); msg != "" {
			fe.Invalid("spec.cpu.coreFraction", s.CPU.CoreFraction, msg)
		}
	}
	if s.Memory.Size == "" {
		fe.Required("spec.memory.size", "the memory size is required (e.g. 2Gi)")
	} else if v, err := s.Memory.Size.Value(); err != nil {
		fe.Invalid("spec.memory.size", string(s.Memory.Size), err.Error())
	} else if v < minVMMemory {
		fe.Invalid("spec.memory.size", string(s.Memory.Size), "must be at least 16Mi")
	}
	validateVMGrowth(&fe, s)

	validateVMBlockDevices(&fe, s)
	validateVMNetworks(&fe, s.Networks)
	chkRefName(&fe, "spec.virtualMachineIPAddressName", s.VirtualMachineIPAddressName, false)

	chkEnum(&fe, "spec.osType", s.OSType, false, v1alpha1.OSTypeGeneric, v1alpha1.OSTypeWindows, v1alpha1.OSTypeLegacy)
	chkEnum(&fe, "spec.bootloader", s.Bootloader, false,
		v1alpha1.BootloaderBIOS, v1alpha1.BootloaderEFI, v1alpha1.BootloaderEFIWithSecureBoot)
	if s.OSType == v1alpha1.OSTypeLegacy {
		if s.Bootloader != "" && s.Bootloader != v1alpha1.BootloaderBIOS {
			fe.Invalid("spec.bootloader", string(s.Bootloader), "the Legacy osType requires the BIOS bootloader")
		}
		if s.Provisioning != nil {
			fe.Forbidden("spec.provisioning", "the Legacy osType does not support provisioning (such guests have no cloud-init or sysprep)")
		}
		if s.EnableParavirtualization != nil && !*s.EnableParavirtualization && len(s.BlockDeviceRefs) > maxLegacyBlockDevs {
			fe.Invalid("spec.blockDeviceRefs", nil, fmt.Sprintf("the Legacy osType without paravirtualization supports at most %d block devices (IDE)", maxLegacyBlockDevs))
		}
	}
	if s.Provisioning != nil {
		validateProvisioning(&fe, s.Provisioning)
	}
	chkEnum(&fe, "spec.liveMigrationPolicy", s.LiveMigrationPolicy, false,
		v1alpha1.LiveMigrationPolicyAlwaysSafe, v1alpha1.LiveMigrationPolicyPreferSafe,
		v1alpha1.LiveMigrationPolicyAlwaysForced, v1alpha1.LiveMigrationPolicyPreferForced,
		v1alpha1.LiveMigrationPolicyManual, v1alpha1.LiveMigrationPolicyNever)
	if s.Disruptions != nil {
		chkEnum(&fe, "spec.disruptions.restartApprovalMode", s.Disruptions.RestartApprovalMode, false,
			v1alpha1.RestartApprovalModeManual, v1alpha1.RestartApprovalModeAutomatic)
	}

	// Placement.
	chkLabelMap(&fe, "spec.nodeSelector", s.NodeSelector)
	if s.Affinity != nil {
		validateVMAffinity(&fe, "spec.affinity", s.Affinity)
	}
	chkTolerations(&fe, "spec.tolerations", s.Tolerations)
	if s.PriorityClassName != "" && (len(s.PriorityClassName) > 253 || !dnsSubdomain.MatchString(s.PriorityClassName)) {
		fe.Invalid("spec.priorityClassName", s.PriorityClassName, "must be a DNS subdomain (lower case alphanumerics, '-' and '.')")
	}
	if g := s.TerminationGracePeriodSeconds; g != nil && *g < 0 {
		fe.Invalid("spec.terminationGracePeriodSeconds", *g, "must be 0 or more")
	}
	return fe
}

var blockDeviceKinds = []v1alpha1.BlockDeviceKind{
	v1alpha1.BlockDeviceKindVirtualDisk, v1alpha1.BlockDeviceKindVirtualImage, v1alpha1.BlockDeviceKindClusterVirtualImage,
}

func validateVMBlockDevices(fe *errs.FieldErrors, s *v1alpha1.VirtualMachineSpec) {
	if len(s.BlockDeviceRefs) > maxVMBlockDevices {
		fe.Invalid("spec.blockDeviceRefs", nil, fmt.Sprintf("a VM may have at most %d block devices (has %d)", maxVMBlockDevices, len(s.BlockDeviceRefs)))
	}
	seen := map[string]int{}
	boot := map[int]int{}
	for i, r := range s.BlockDeviceRefs {
		p := fmt.Sprintf("spec.blockDeviceRefs[%d]", i)
		chkEnum(fe, p+".kind", r.Kind, true, blockDeviceKinds...)
		chkRefName(fe, p+".name", r.Name, true)
		if r.Kind != "" && r.Name != "" {
			k := string(r.Kind) + "/" + r.Name
			if _, dup := seen[k]; dup {
				fe.Duplicate(p, k)
			} else {
				seen[k] = i
			}
		}
		if r.BootOrder != nil {
			if *r.BootOrder < 1 {
				fe.Invalid(p+".bootOrder", *r.BootOrder, "must be at least 1")
			} else if j, dup := boot[*r.BootOrder]; dup {
				fe.Duplicate(p+".bootOrder", fmt.Sprintf("%d (also the bootOrder of spec.blockDeviceRefs[%d])", *r.BootOrder, j))
			} else {
				boot[*r.BootOrder] = i
			}
		}
	}
}

func validateVMNetworks(fe *errs.FieldErrors, nets []v1alpha1.NetworkSpec) {
	if len(nets) > maxVMNetworks {
		fe.Invalid("spec.networks", nil, fmt.Sprintf("a VM may have at most %d network interfaces (has %d)", maxVMNetworks, len(nets)))
	}
	mainAt := -1
	seen := map[string]bool{}
	macs := map[string]bool{}
	fwds := map[string]string{}
	for i, n := range nets {
		p := fmt.Sprintf("spec.networks[%d]", i)
		chkEnum(fe, p+".type", n.Type, true,
			v1alpha1.NetworkTypeMain, v1alpha1.NetworkTypeNetwork, v1alpha1.NetworkTypeClusterNetwork)
		switch n.Type {
		case v1alpha1.NetworkTypeMain:
			if mainAt >= 0 {
				fe.Duplicate(p+".type", fmt.Sprintf("Main (spec.networks[%d] is already the Main network; a VM has at most one)", mainAt))
			} else {
				mainAt = i
			}
			if n.Name != "" {
				fe.Forbidden(p+".name", "the Main network has no name")
			}
		case v1alpha1.NetworkTypeNetwork, v1alpha1.NetworkTypeClusterNetwork:
			if n.Name == "" {
				fe.Required(p+".name", fmt.Sprintf("a network of type %s needs the name of the network", n.Type))
			} else {
				chkRefName(fe, p+".name", n.Name, true)
				k := string(n.Type) + "/" + n.Name
				if seen[k] {
					fe.Duplicate(p, k)
				}
				seen[k] = true
			}
		}
		validatePortForwards(fe, p, n, fwds)
		validateInbound(fe, p, n)
		if m := n.VirtualMachineMACAddressName; m != "" {
			chkRefName(fe, p+".virtualMachineMACAddressName", m, false)
			if macs[m] {
				fe.Duplicate(p+".virtualMachineMACAddressName", m)
			}
			macs[m] = true
		}
	}
}

func validateProvisioning(fe *errs.FieldErrors, p *v1alpha1.Provisioning) {
	chkEnum(fe, "spec.provisioning.type", p.Type, true,
		v1alpha1.ProvisioningTypeUserData, v1alpha1.ProvisioningTypeUserDataRef, v1alpha1.ProvisioningTypeSysprepRef)
	want := func(set bool, t v1alpha1.ProvisioningType, field string) {
		switch {
		case p.Type == t && !set:
			fe.Required("spec.provisioning."+field, fmt.Sprintf("provisioning type %s needs %s", t, field))
		case p.Type != t && set:
			fe.Forbidden("spec.provisioning."+field, fmt.Sprintf("only allowed with provisioning type %s", t))
		}
	}
	want(p.UserData != "", v1alpha1.ProvisioningTypeUserData, "userData")
	want(p.UserDataRef != nil, v1alpha1.ProvisioningTypeUserDataRef, "userDataRef")
	want(p.SysprepRef != nil, v1alpha1.ProvisioningTypeSysprepRef, "sysprepRef")
	if len(p.UserData) > v1alpha1.MaxUserDataBytes {
		*fe = append(*fe, errs.FieldError{Field: "spec.provisioning.userData", Type: errs.FieldValueTooLong,
			Message: fmt.Sprintf("Too long: may have at most %d bytes (has %d); keep larger user data in a Secret (userDataRef)", v1alpha1.MaxUserDataBytes, len(p.UserData))})
	}
	for _, r := range []struct {
		ref  *v1alpha1.ProvisioningSecret
		path string
	}{{p.UserDataRef, "spec.provisioning.userDataRef"}, {p.SysprepRef, "spec.provisioning.sysprepRef"}} {
		if r.ref == nil {
			continue
		}
		chkEnum(fe, r.path+".kind", r.ref.Kind, false, v1alpha1.ProvisioningSecretKind)
		chkRefName(fe, r.path+".name", r.ref.Name, true)
	}
}

func validateVMAffinity(fe *errs.FieldErrors, path string, a *v1alpha1.VMAffinity) {
	if na := a.NodeAffinity; na != nil {
		np := path + ".nodeAffinity"
		if req := na.RequiredDuringSchedulingIgnoredDuringExecution; req != nil {
			rp := np + ".requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms"
			if len(req.NodeSelectorTerms) == 0 {
				fe.Required(rp, "at least one node selector term is required")
			}
			for i, t := range req.NodeSelectorTerms {
				chkNodeSelectorTerm(fe, fmt.Sprintf("%s[%d]", rp, i), t)
			}
		}
		for i, t := range na.PreferredDuringSchedulingIgnoredDuringExecution {
			pp := fmt.Sprintf("%s.preferredDuringSchedulingIgnoredDuringExecution[%d]", np, i)
			chkWeight(fe, pp+".weight", t.Weight)
			chkNodeSelectorTerm(fe, pp+".preference", t.Preference)
		}
	}
	for _, x := range []struct {
		aff  *v1alpha1.VirtualMachineAffinity
		path string
	}{
		{a.VirtualMachineAndPodAffinity, path + ".virtualMachineAndPodAffinity"},
		{a.VirtualMachineAndPodAntiAffinity, path + ".virtualMachineAndPodAntiAffinity"},
	} {
		if x.aff == nil {
			continue
		}
		for i, t := range x.aff.RequiredDuringSchedulingIgnoredDuringExecution {
			chkAffinityTerm(fe, fmt.Sprintf("%s.requiredDuringSchedulingIgnoredDuringExecution[%d]", x.path, i), t)
		}
		for i, t := range x.aff.PreferredDuringSchedulingIgnoredDuringExecution {
			pp := fmt.Sprintf("%s.preferredDuringSchedulingIgnoredDuringExecution[%d]", x.path, i)
			chkWeight(fe, pp+".weight", t.Weight)
			chkAffinityTerm(fe, pp+".virtualMachineAndPodAffinityTerm", t.VirtualMachineAndPodAffinityTerm)
		}
	}
}

func chkWeight(fe *errs.FieldErrors, path string, w int32) {
	if w < 1 || w > 100 {
		fe.Invalid(path, w, "must be in the range 1-100")
	}
}

func chkNodeSelectorTerm(fe *errs.FieldErrors, path string, t v1alpha1.NodeSelectorTerm) {
	for i, r := range t.MatchExpressions {
		chkSelectorRequirement(fe, fmt.Sprintf("%s.matchExpressions[%d]", path, i), r.Key, r.Operator, r.Values, true)
	}
	for i, r := range t.MatchFields {
		p := fmt.Sprintf("%s.matchFields[%d]", path, i)
		if r.Key != "metadata.name" {
			fe.NotSupported(p+".key", r.Key, []string{"metadata.name"})
		}
		chkEnum(fe, p+".operator", r.Operator, true, v1alpha1.SelectorOpIn, v1alpha1.SelectorOpNotIn)
		if len(r.Values) != 1 {
			fe.Invalid(p+".values", nil, "must have exactly one value (a node name)")
		} else if msg := ValidateName(r.Values[0]); msg != "" {
			fe.Invalid(p+".values[0]", r.Values[0], msg)
		}
	}
}

func chkAffinityTerm(fe *errs.FieldErrors, path string, t v1alpha1.VirtualMachineAffinityTerm) {
	if t.TopologyKey == "" {
		fe.Required(path+".topologyKey", "a node label key such as kubernetes.io/hostname is required")
	} else if msg := validQualifiedName(t.TopologyKey); msg != "" {
		fe.Invalid(path+".topologyKey", t.TopologyKey, msg)
	}
	chkLabelSelector(fe, path+".labelSelector", t.LabelSelector)
	chkLabelSelector(fe, path+".namespaceSelector", t.NamespaceSelector)
	for i, ns := range t.Namespaces {
		chkRefName(fe, fmt.Sprintf("%s.namespaces[%d]", path, i), ns, true)
	}
}

// --- helpers shared by the VM, class, operation, snapshot, node and project strategies ---

// chkEnum checks that v is one of allowed; an empty v is Required when required, else fine.
func chkEnum[T ~string](fe *errs.FieldErrors, path string, v T, required bool, allowed ...T) bool {
	if v == "" {
		if required {
			fe.Required(path, "")
			return false
		}
		return true
	}
	for _, a := range allowed {
		if v == a {
			return true
		}
	}
	as := make([]string, len(allowed))
	for i, a := range allowed {
		as[i] = string(a)
	}
	fe.NotSupported(path, string(v), as)
	return false
}

// chkRefName checks a reference to an object by name (a DNS-1123 label).
func chkRefName(fe *errs.FieldErrors, path, name string, required bool) {
	if name == "" {
		if required {
			fe.Required(path, "a name is required")
		}
		return
	}
	if msg := ValidateName(name); msg != "" {
		fe.Invalid(path, name, msg)
	}
}

// chkLabelMap checks a map of label keys to label values (nodeSelector, matchLabels).
func chkLabelMap(fe *errs.FieldErrors, path string, m map[string]string) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if msg := validQualifiedName(k); msg != "" {
			fe.Invalid(path, k, "label key: "+msg)
		}
		if v := m[k]; len(v) > 63 || !labelValue.MatchString(v) {
			fe.Invalid(path+"."+k, v, "a label value must be empty or at most 63 characters of alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric")
		}
	}
}

// chkSelectorRequirement checks one matchExpressions entry. node allows Gt and Lt.
func chkSelectorRequirement(fe *errs.FieldErrors, path, key string, op v1alpha1.SelectorOperator, values []string, node bool) {
	if key == "" {
		fe.Required(path+".key", "a label key is required")
	} else if msg := validQualifiedName(key); msg != "" {
		fe.Invalid(path+".key", key, msg)
	}
	ops := []v1alpha1.SelectorOperator{v1alpha1.SelectorOpIn, v1alpha1.SelectorOpNotIn, v1alpha1.SelectorOpExists, v1alpha1.SelectorOpDoesNotExist}
	if node {
		ops = append(ops, v1alpha1.SelectorOpGt, v1alpha1.SelectorOpLt)
	}
	if !chkEnum(fe, path+".operator", op, true, ops...) {
		return
	}
	switch op {
	case v1alpha1.SelectorOpIn, v1alpha1.SelectorOpNotIn:
		if len(values) == 0 {
			fe.Required(path+".values", fmt.Sprintf("operator %s needs at least one value", op))
		}
		for i, v := range values {
			if len(v) > 63 || !labelValue.MatchString(v) {
				fe.Invalid(fmt.Sprintf("%s.values[%d]", path, i), v, "a label value must be empty or at most 63 characters of alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric")
			}
		}
	case v1alpha1.SelectorOpExists, v1alpha1.SelectorOpDoesNotExist:
		if len(values) > 0 {
			fe.Forbidden(path+".values", fmt.Sprintf("operator %s takes no values", op))
		}
	case v1alpha1.SelectorOpGt, v1alpha1.SelectorOpLt:
		if len(values) != 1 {
			fe.Invalid(path+".values", nil, fmt.Sprintf("operator %s needs exactly one value, an integer", op))
		} else if _, err := strconv.ParseInt(values[0], 10, 64); err != nil {
			fe.Invalid(path+".values[0]", values[0], "must be an integer")
		}
	}
}

// chkLabelSelector checks a label selector (nil is fine).
func chkLabelSelector(fe *errs.FieldErrors, path string, s *v1alpha1.LabelSelector) {
	if s == nil {
		return
	}
	chkLabelMap(fe, path+".matchLabels", s.MatchLabels)
	for i, r := range s.MatchExpressions {
		chkSelectorRequirement(fe, fmt.Sprintf("%s.matchExpressions[%d]", path, i), r.Key, r.Operator, r.Values, false)
	}
}

var taintEffects = []v1alpha1.TaintEffect{v1alpha1.TaintEffectNoSchedule, v1alpha1.TaintEffectPreferNoSchedule, v1alpha1.TaintEffectNoExecute}

// chkTolerations checks Kubernetes-shaped tolerations.
func chkTolerations(fe *errs.FieldErrors, path string, ts []v1alpha1.Toleration) {
	for i, t := range ts {
		p := fmt.Sprintf("%s[%d]", path, i)
		opOK := chkEnum(fe, p+".operator", t.Operator, false, v1alpha1.TolerationOpEqual, v1alpha1.TolerationOpExists)
		if t.Key == "" {
			if opOK && t.Operator != v1alpha1.TolerationOpExists {
				fe.Invalid(p+".operator", string(t.Operator), "a toleration with an empty key must use operator Exists (it then tolerates every taint)")
			}
		} else if msg := validQualifiedName(t.Key); msg != "" {
			fe.Invalid(p+".key", t.Key, msg)
		}
		if t.Operator == v1alpha1.TolerationOpExists {
			if t.Value != "" {
				fe.Invalid(p+".value", t.Value, "must be empty with operator Exists")
			}
		} else if len(t.Value) > 63 || !labelValue.MatchString(t.Value) {
			fe.Invalid(p+".value", t.Value, "a taint value must be empty or at most 63 characters of alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric")
		}
		if t.Effect != "" {
			chkEnum(fe, p+".effect", t.Effect, false, taintEffects...)
		}
		if t.TolerationSeconds != nil && t.Effect != v1alpha1.TaintEffectNoExecute {
			fe.Invalid(p+".effect", string(t.Effect), "must be NoExecute when tolerationSeconds is set")
		}
	}
}

// jsonEqual compares two values by their JSON form (so nil and empty slices are equal).
func jsonEqual(a, b any) bool {
	x, err1 := json.Marshal(a)
	y, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && string(x) == string(y)
}

// Limits of the room a VM has to grow while it runs (spec.cpu.maxCores, spec.memory.maxSize).
const (
	// maxVMHotplugCores is the most vCPU slots a VM may have (the QEMU config builder's limit).
	maxVMHotplugCores = 240
	// vmMemoryHotplugAlign is the virtio-mem block size: with a maxSize, sizes are multiples.
	vmMemoryHotplugAlign = 2 << 20
	// maxVMMemoryBytes bounds spec.memory.maxSize (the QEMU config builder's limit, 16Ti).
	maxVMMemoryBytes = int64(16) << 40
)

// validateVMGrowth checks spec.cpu.maxCores and spec.memory.maxSize against the cores and
// memory size, and that the hardware can hot-plug memory (virtio-mem needs a virtio guest).
func validateVMGrowth(fe *errs.FieldErrors, s *v1alpha1.VirtualMachineSpec) {
	if m := s.CPU.MaxCores; m != 0 {
		switch {
		case m < 0:
			fe.Invalid("spec.cpu.maxCores", m, "must not be negative (leave it out for no room to grow)")
		case m > maxVMHotplugCores:
			fe.Invalid("spec.cpu.maxCores", m, fmt.Sprintf("must be at most %d", maxVMHotplugCores))
		case s.CPU.Cores > 0 && m < s.CPU.Cores:
			fe.Invalid("spec.cpu.maxCores", m, fmt.Sprintf("must be at least spec.cpu.cores (%d)", s.CPU.Cores))
		}
	}
	if s.Memory.MaxSize == "" {
		return
	}
	maxSize, err := s.Memory.MaxSize.Value()
	if err != nil {
		fe.Invalid("spec.memory.maxSize", string(s.Memory.MaxSize), err.Error())
		return
	}
	if maxSize%vmMemoryHotplugAlign != 0 {
		fe.Invalid("spec.memory.maxSize", string(s.Memory.MaxSize), "must be a multiple of 2Mi (the memory hot-plug block)")
	}
	if maxSize > maxVMMemoryBytes {
		fe.Invalid("spec.memory.maxSize", string(s.Memory.MaxSize), "must be at most 16Ti")
	}
	if size, err := s.Memory.Size.Value(); err == nil && s.Memory.Size != "" {
		if size > maxSize {
			fe.Invalid("spec.memory.maxSize", string(s.Memory.MaxSize), fmt.Sprintf("must be at least spec.memory.size (%s)", s.Memory.Size))
		}
		if size%vmMemoryHotplugAlign != 0 {
			fe.Invalid("spec.memory.size", string(s.Memory.Size), "must be a multiple of 2Mi when spec.memory.maxSize is set (the memory hot-plug block)")
		}
	}
	if s.OSType == v1alpha1.OSTypeLegacy {
		fe.Forbidden("spec.memory.maxSize", "memory hot-plug uses virtio-mem, which the Legacy osType (no virtio) cannot have")
	} else if s.EnableParavirtualization != nil && !*s.EnableParavirtualization {
		fe.Forbidden("spec.memory.maxSize", "memory hot-plug uses virtio-mem, a virtio device: it needs enableParavirtualization")
	}
}
