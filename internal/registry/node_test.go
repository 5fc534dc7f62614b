package registry

import (
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

const vmtNodeBase = `{"apiVersion":"virtualization.rakhsh.io/v1alpha1","kind":"Node","metadata":{"name":"host-1"},"spec":{}}`

func TestNodeDefaults(t *testing.T) {
	r := vmtValid[*v1alpha1.Node](t, "Node", vmtNodeBase).Spec.AllocationRatios
	if r.CPU != 4 || r.Memory != 1 {
		t.Fatalf("ratios %+v", r)
	}
	obj, _ := vmtValidate(t, "Node", vmtMerge(t, vmtNodeBase, `{"spec":{"allocationRatios":{"cpu":1.5,"memory":1.2}}}`))
	if r := obj.(*v1alpha1.Node).Spec.AllocationRatios; r.CPU != 1.5 || r.Memory != 1.2 {
		t.Fatalf("explicit ratios overwritten: %+v", r)
	}
}

func TestNodeValidate(t *testing.T) {
	vmtRunCases(t, "Node", vmtNodeBase, []vmtCase{
		{name: "empty"},
		{name: "full", patch: `{"spec":{"unschedulable":true,"address":"10.0.0.5:8443",
			"taints":[{"key":"dedicated","value":"gpu","effect":"NoSchedule"},{"key":"dedicated","effect":"NoExecute"}],
			"allocationRatios":{"cpu":8,"memory":1.5}},
			"status":{"phase":"Ready","capacity":{"cpu":16,"memory":"64Gi","storage":"1Ti"},"accelerator":"KVM"}}`},
		{name: "address url", patch: `{"spec":{"address":"https://host-1.example.com:9443"}}`},
		{name: "address ipv6", patch: `{"spec":{"address":"[fd00::1]:8443"}}`},
		{name: "address host", patch: `{"spec":{"address":"host-1"}}`},

		{name: "taint key", patch: `{"spec":{"taints":[{"effect":"NoSchedule"},{"key":"a b","effect":"NoSchedule"}]}}`,
			want: []string{"spec.taints[0].key FieldValueRequired", "spec.taints[1].key FieldValueInvalid"}},
		{name: "taint effect", patch: `{"spec":{"taints":[{"key":"a"},{"key":"b","effect":"Evict"}]}}`,
			want: []string{"spec.taints[0].effect FieldValueRequired", "spec.taints[1].effect FieldValueNotSupported"}},
		{name: "taint value", patch: `{"spec":{"taints":[{"key":"a","value":"x y","effect":"NoExecute"}]}}`, want: []string{"spec.taints[0].value FieldValueInvalid"}},
		{name: "taint duplicate", patch: `{"spec":{"taints":[{"key":"a","value":"1","effect":"NoExecute"},{"key":"a","value":"2","effect":"NoExecute"}]}}`,
			want: []string{"spec.taints[1] FieldValueDuplicate"}},
		{name: "ratios negative", patch: `{"spec":{"allocationRatios":{"cpu":-1,"memory":-0.5}}}`,
			want: []string{"spec.allocationRatios.cpu FieldValueInvalid", "spec.allocationRatios.memory FieldValueInvalid"}},
		{name: "address scheme", patch: `{"spec":{"address":"ftp://h"}}`, want: []string{"spec.address FieldValueInvalid"}},
		{name: "address path", patch: `{"spec":{"address":"https://h/x"}}`, want: []string{"spec.address FieldValueInvalid"}},
		{name: "address port", patch: `{"spec":{"address":"h:70000"}}`, want: []string{"spec.address FieldValueInvalid"}},
		{name: "address junk", patch: `{"spec":{"address":"a b"}}`, want: []string{"spec.address FieldValueInvalid"}},
	})
}

func TestNodeKindColumns(t *testing.T) {
	// kinds.go prints these paths; the JSON of a Node must have them.
	_, obj := vmtDecode(t, "Node", vmtMerge(t, vmtNodeBase,
		`{"status":{"phase":"Ready","capacity":{"cpu":8,"memory":"32Gi"},"accelerator":"TCG"}}`))
	n := obj.(*v1alpha1.Node)
	if n.Status.Phase != v1alpha1.NodePhaseReady || n.Status.Capacity.CPU != 8 || n.Status.Capacity.Memory != "32Gi" || n.Status.Accelerator != v1alpha1.AcceleratorTCG {
		t.Fatalf("status %+v", n.Status)
	}
}

func FuzzValidateNode(f *testing.F) {
	tkFuzzSeeds(f, "Node",
		vmtNodeBase,
		`{"spec":{"taints":[{"key":"k","effect":"NoSchedule"}],"allocationRatios":{"cpu":2},"address":"http://[::1]:80"}}`,
		`{"spec":{"address":"h:0","allocationRatios":{"memory":-1}}}`,
	)
}

// TestNodeHostnameLabel: defaulting gives every Node kubernetes.io/hostname=NAME, over a
// different value, keeping the other labels.
func TestNodeHostnameLabel(t *testing.T) {
	if l := vmtValid[*v1alpha1.Node](t, "Node", vmtNodeBase).Labels; l[v1alpha1.NodeHostnameLabel] != "host-1" {
		t.Fatalf("labels %v", l)
	}
	obj, _ := vmtValidate(t, "Node", vmtMerge(t, vmtNodeBase, `{"metadata":{"labels":{"kubernetes.io/hostname":"other","rack":"a"}}}`))
	if l := obj.(*v1alpha1.Node).Labels; l[v1alpha1.NodeHostnameLabel] != "host-1" || l["rack"] != "a" {
		t.Fatalf("labels %v", l)
	}
}
