package v1alpha1

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// Annotations that mark the default VirtualMachineClass (value "true"): VMs without
// virtualMachineClassName get it. Rakhsh honours both its own key and the Deckhouse one.
const (
	AnnotationDefaultVirtualMachineClass          = "virtualmachineclass.virtualization.rakhsh.io/is-default-class"
	AnnotationDefaultVirtualMachineClassDeckhouse = "virtualmachineclass.virtualization.deckhouse.io/is-default-class"
)

// MaxSizingPolicies is the largest number of sizing policies a class may have.
const MaxSizingPolicies = 16

// VirtualMachineClass is a cluster-wide VM class: the virtual CPU model, the nodes its VMs may
// run on, and the sizing policies (allowed cores, memory and core fractions) of its VMs.
type VirtualMachineClass struct {
	TypeMeta   `json:",inline"`
	ObjectMeta `json:"metadata,omitempty"`

	Spec   VirtualMachineClassSpec   `json:"spec"`
	Status VirtualMachineClassStatus `json:"status,omitempty"`
}

// VirtualMachineClassSpec is the desired state of a class.
type VirtualMachineClassSpec struct {
	// CPU is the virtual CPU model policy; immutable.
	CPU VirtualMachineClassCPU `json:"cpu"`
	// NodeSelector restricts the nodes the class's VMs run on.
	NodeSelector *VirtualMachineClassNodeSelector `json:"nodeSelector,omitempty"`
	// Tolerations are merged with each VM's own (the VM's win).
	Tolerations []Toleration `json:"tolerations,omitempty"`
	// SizingPolicies are the allowed resources per core range (at most 16; core ranges must not
	// overlap).
	SizingPolicies []SizingPolicy `json:"sizingPolicies,omitempty"`
}

// CPUType is the way a class defines its virtual CPU.
type CPUType string

// CPU types.
const (
	// CPUTypeHost: a virtual CPU close to the node's CPU ("-cpu host" with migratable features).
	CPUTypeHost CPUType = "Host"
	// CPUTypeHostPassthrough: the node's physical CPU as is.
	CPUTypeHostPassthrough CPUType = "HostPassthrough"
	// CPUTypeDiscovery: the features common to the CPUs of the nodes selected by discovery.
	CPUTypeDiscovery CPUType = "Discovery"
	// CPUTypeModel: a named QEMU CPU model (model).
	CPUTypeModel CPUType = "Model"
	// CPUTypeFeatures: a CPU with at least the listed features.
	CPUTypeFeatures CPUType = "Features"
)

// VirtualMachineClassCPU is the virtual CPU policy of a class.
type VirtualMachineClassCPU struct {
	Type CPUType `json:"type"`
	// Model is the CPU model name; required for (and only allowed with) type Model.
	Model string `json:"model,omitempty"`
	// Features are the required CPU features; required for (and only allowed with) type Features.
	Features []string `json:"features,omitempty"`
	// Discovery selects the nodes whose common CPU features make the model; only with type
	// Discovery (empty: all nodes).
	Discovery *CPUDiscovery `json:"discovery,omitempty"`
}

// CPUDiscovery selects the nodes a Discovery CPU model is built from. The selector may be given
// inline (matchLabels/matchExpressions) or, as in Deckhouse, under nodeSelector — not both.
type CPUDiscovery struct {
	MatchLabels      map[string]string          `json:"matchLabels,omitempty"`
	MatchExpressions []LabelSelectorRequirement `json:"matchExpressions,omitempty"`
	NodeSelector     *LabelSelector             `json:"nodeSelector,omitempty"`
}

// Selector returns the discovery node selector, whichever form it was written in.
func (d *CPUDiscovery) Selector() LabelSelector {
	if d == nil {
		return LabelSelector{}
	}
	if d.NodeSelector != nil {
		return *d.NodeSelector
	}
	return LabelSelector{MatchLabels: d.MatchLabels, MatchExpressions: d.MatchExpressions}
}

// VirtualMachineClassNodeSelector selects nodes by labels (node selector operators, Gt and Lt
// included).
type VirtualMachineClassNodeSelector struct {
	MatchLabels      map[string]string         `json:"matchLabels,omitempty"`
	MatchExpressions []NodeSelectorRequirement `json:"matchExpressions,omitempty"`
}

// SizingPolicy is the resources allowed to VMs whose core count falls in Cores.
type SizingPolicy struct {
	Cores  *SizingPolicyCores  `json:"cores,omitempty"`
	Memory *SizingPolicyMemory `json:"memory,omitempty"`
	// CoreFractions are the allowed core fractions in percent, 1..100.
	CoreFractions []CoreFractionValue `json:"coreFractions,omitempty"`
	// DedicatedCores are the allowed values of dedicated (pinned) cores.
	DedicatedCores []bool `json:"dedicatedCores,omitempty"`
	// DefaultCoreFraction is given to VMs that set none, e.g. "10%"; it must be one of
	// CoreFractions when those are listed.
	DefaultCoreFraction string `json:"defaultCoreFraction,omitempty"`
}

// CoreFractionValue is a core fraction in percent (1..100). In JSON it is a number; the
// string form "10%" is accepted on input.
type CoreFractionValue int

// UnmarshalJSON accepts 10 or "10%".
func (c *CoreFractionValue) UnmarshalJSON(b []byte) error {
	if s, isString, err := jsonString(b); isString {
		if err != nil {
			return err
		}
		n, err := strconv.Atoi(strings.TrimSuffix(s, "%"))
		if err != nil || !strings.HasSuffix(s, "%") {
			return fmt.Errorf("a core fraction must be a number of percent such as 10 or \"10%%\", not %q", s)
		}
		*c = CoreFractionValue(n)
		return nil
	}
	var n int
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("a core fraction must be a number of percent such as 10 or \"10%%\"")
	}
	*c = CoreFractionValue(n)
	return nil
}

// SizingPolicyCores is a range of core counts, with an optional step from Min.
type SizingPolicyCores struct {
	Min int `json:"min"`
	Max int `json:"max"`
	// Step, when set, allows only Min, Min+Step, ... up to Max.
	Step int `json:"step,omitempty"`
}

// SizingPolicyMemory bounds a VM's memory, in total and per core, with an optional step.
type SizingPolicyMemory struct {
	Min Quantity `json:"min,omitempty"`
	Max Quantity `json:"max,omitempty"`
	// Step, when set, allows only Min, Min+Step, ... up to Max.
	Step    Quantity                   `json:"step,omitempty"`
	PerCore *SizingPolicyMemoryPerCore `json:"perCore,omitempty"`
}

// SizingPolicyMemoryPerCore bounds memory divided by cores.
type SizingPolicyMemoryPerCore struct {
	Min Quantity `json:"min,omitempty"`
	Max Quantity `json:"max,omitempty"`
}

// VirtualMachineClassPhase is the phase of a class.
type VirtualMachineClassPhase string

// Class phases.
const (
	VMClassPhasePending     VirtualMachineClassPhase = "Pending"
	VMClassPhaseReady       VirtualMachineClassPhase = "Ready"
	VMClassPhaseTerminating VirtualMachineClassPhase = "Terminating"
)

// Class condition types.
const (
	// VMClassConditionDiscovered is True when suitable nodes (and, for Discovery, the common
	// CPU features) were found.
	VMClassConditionDiscovered = "Discovered"
	// VMClassConditionInUse is True while VMs use the class.
	VMClassConditionInUse = "InUse"
)

// VirtualMachineClassStatus is the observed state of a class.
type VirtualMachineClassStatus struct {
	Phase       VirtualMachineClassPhase `json:"phase,omitempty"`
	CPUFeatures *CPUFeatures             `json:"cpuFeatures,omitempty"`
	// AvailableNodes are the nodes that can run the class's VMs.
	AvailableNodes []string `json:"availableNodes,omitempty"`
	// MaxAllocatableResources is the most free CPU ("cpu": cores) and memory ("memory") seen on
	// one available node.
	MaxAllocatableResources map[string]Quantity `json:"maxAllocatableResources,omitempty"`
	Conditions              []Condition         `json:"conditions,omitempty"`
	ObservedGeneration      int64               `json:"observedGeneration,omitempty"`
}

// CPUFeatures are the CPU features of a Discovery or Features class.
type CPUFeatures struct {
	// Enabled are the features of the model.
	Enabled []string `json:"enabled,omitempty"`
	// NotEnabledCommon are further features all available nodes have.
	NotEnabledCommon []string `json:"notEnabledCommon,omitempty"`
}
