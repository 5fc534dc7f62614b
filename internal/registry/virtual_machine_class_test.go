package registry

import (
	"strconv"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// vmtGenericClass is the generic class manifest (YAML in the docs), as JSON. It must validate.
const vmtGenericClass = `{"apiVersion":"virtualization.rakhsh.io/v1alpha1","kind":"VirtualMachineClass","metadata":{"name":"generic"},
"spec":{
  "cpu":{"discovery":{"matchExpressions":[{"key":"node-role.kubernetes.io/control-plane","operator":"DoesNotExist"}]},"type":"Discovery"},
  "nodeSelector":{"matchExpressions":[{"key":"node.deckhouse.io/group","operator":"In","values":["worker"]}]},
  "sizingPolicies":[
    {"cores":{"min":1,"max":4},"memory":{"min":"1Gi","max":"8Gi","step":"512Mi"},"dedicatedCores":[false],"coreFractions":[5,10,20,50,100]},
    {"cores":{"min":5,"max":8},"memory":{"min":"5Gi","max":"16Gi","step":"1Gi"},"dedicatedCores":[false],"coreFractions":[20,50,100]},
    {"cores":{"min":9,"max":16},"memory":{"min":"9Gi","max":"32Gi","step":"1Gi"},"dedicatedCores":[true,false],"coreFractions":[50,100]},
    {"cores":{"min":17,"max":1024},"memory":{"perCore":{"min":"1Gi","max":"2Gi"}},"dedicatedCores":[true],"coreFractions":[100]}
  ]}}`

func TestVirtualMachineClassGenericManifest(t *testing.T) {
	c := vmtValid[*v1alpha1.VirtualMachineClass](t, "VirtualMachineClass", vmtGenericClass)
	if len(c.Spec.SizingPolicies) != 4 || c.Spec.SizingPolicies[3].Memory.PerCore.Max != "2Gi" ||
		c.Spec.SizingPolicies[0].CoreFractions[0] != 5 {
		t.Fatalf("decoded wrongly: %+v", c.Spec.SizingPolicies)
	}
	sel := c.Spec.CPU.Discovery.Selector()
	if len(sel.MatchExpressions) != 1 || sel.MatchExpressions[0].Operator != v1alpha1.SelectorOpDoesNotExist {
		t.Fatalf("discovery selector: %+v", sel)
	}
}

func TestVirtualMachineClassValidate(t *testing.T) {
	cases := []vmtCase{
		{name: "generic"},
		{name: "host", patch: `{"spec":{"cpu":{"type":"Host","discovery":null}}}`},
		{name: "host passthrough", patch: `{"spec":{"cpu":{"type":"HostPassthrough","discovery":null}}}`},
		{name: "model", patch: `{"spec":{"cpu":{"type":"Model","model":"Skylake-Server-v4","discovery":null}}}`},
		{name: "features", patch: `{"spec":{"cpu":{"type":"Features","features":["sse4.2","avx2","x2apic"],"discovery":null}}}`},
		{name: "discovery deckhouse form", patch: `{"spec":{"cpu":{"discovery":{"matchExpressions":null,"nodeSelector":{"matchLabels":{"cpu":"intel"}}}}}}`},
		{name: "discovery empty", patch: `{"spec":{"cpu":{"discovery":null}}}`},
		{name: "core fractions as strings and default", patch: `{"spec":{"sizingPolicies":[{"cores":{"min":1,"max":2,"step":1},"coreFractions":["10%","100%"],"defaultCoreFraction":"10%"}]}}`},
		{name: "tolerations", patch: `{"spec":{"tolerations":[{"key":"dedicated","operator":"Equal","value":"vms","effect":"NoSchedule"}]}}`},
		{name: "no policies", patch: `{"spec":{"sizingPolicies":null,"nodeSelector":null}}`},

		{name: "type missing", patch: `{"spec":{"cpu":{"type":null,"discovery":null}}}`, want: []string{"spec.cpu.type FieldValueRequired"}},
		{name: "type bad", patch: `{"spec":{"cpu":{"type":"Custom","discovery":null}}}`, want: []string{"spec.cpu.type FieldValueNotSupported"}},
		{name: "model required", patch: `{"spec":{"cpu":{"type":"Model","discovery":null}}}`, want: []string{"spec.cpu.model FieldValueRequired"}},
		{name: "model bad", patch: `{"spec":{"cpu":{"type":"Model","model":"Sky lake","discovery":null}}}`, want: []string{"spec.cpu.model FieldValueInvalid"}},
		{name: "features required", patch: `{"spec":{"cpu":{"type":"Features","discovery":null}}}`, want: []string{"spec.cpu.features FieldValueRequired"}},
		{name: "features bad", patch: `{"spec":{"cpu":{"type":"Features","features":["avx","avx","a b"],"discovery":null}}}`,
			want: []string{"spec.cpu.features[1] FieldValueDuplicate", "spec.cpu.features[2] FieldValueInvalid"}},
		{name: "host with extras", patch: `{"spec":{"cpu":{"type":"Host","model":"x","features":["a"]}}}`,
			want: []string{"spec.cpu.model FieldValueForbidden", "spec.cpu.features FieldValueForbidden", "spec.cpu.discovery FieldValueForbidden"}},
		{name: "discovery both forms", patch: `{"spec":{"cpu":{"discovery":{"nodeSelector":{"matchLabels":{"a":"b"}}}}}}`,
			want: []string{"spec.cpu.discovery.nodeSelector FieldValueForbidden"}},
		{name: "discovery operator", patch: `{"spec":{"cpu":{"discovery":{"matchExpressions":[{"key":"a","operator":"Gt","values":["1"]}]}}}}`,
			want: []string{"spec.cpu.discovery.matchExpressions[0].operator FieldValueNotSupported"}},
		{name: "nodeSelector", patch: `{"spec":{"nodeSelector":{"matchLabels":{"a":"-x"},"matchExpressions":[{"key":"a","operator":"In","values":[]},{"key":"n","operator":"Lt","values":["4"]}]}}}`,
			want: []string{"spec.nodeSelector.matchLabels.a FieldValueInvalid", "spec.nodeSelector.matchExpressions[0].values FieldValueRequired"}},
		{name: "tolerations bad", patch: `{"spec":{"tolerations":[{"key":"a","effect":"Never"}]}}`, want: []string{"spec.tolerations[0].effect FieldValueNotSupported"}},
		{name: "overlap", patch: `{"spec":{"sizingPolicies":[{"cores":{"min":1,"max":4}},{"cores":{"min":8,"max":16}},{"cores":{"min":4,"max":8}}]}}`,
			want: []string{"spec.sizingPolicies[2].cores FieldValueInvalid", "spec.sizingPolicies[2].cores FieldValueInvalid"},
			msg:  "spec.sizingPolicies[2] overlaps the range 1-4 of spec.sizingPolicies[0]"},
		{name: "cores bounds", patch: `{"spec":{"sizingPolicies":[{"cores":{"min":0,"max":2000,"step":-1}},{"cores":{"min":5,"max":3}},{}]}}`,
			want: []string{"spec.sizingPolicies[0].cores.min FieldValueInvalid", "spec.sizingPolicies[0].cores.max FieldValueInvalid",
				"spec.sizingPolicies[0].cores.step FieldValueInvalid", "spec.sizingPolicies[1].cores.min FieldValueInvalid",
				"spec.sizingPolicies[2].cores FieldValueRequired"}},
		{name: "memory", patch: `{"spec":{"sizingPolicies":[{"cores":{"min":1,"max":2},"memory":{"min":"8Gi","max":"1Gi","step":"0","perCore":{"min":"x","max":"1Gi"}}}]}}`,
			want: []string{"spec.sizingPolicies[0].memory.min FieldValueInvalid", "spec.sizingPolicies[0].memory.step FieldValueInvalid",
				"spec.sizingPolicies[0].memory.perCore.min FieldValueInvalid"}},
		{name: "core fractions", patch: `{"spec":{"sizingPolicies":[{"cores":{"min":1,"max":2},"coreFractions":[0,50,50,101],"dedicatedCores":[true,true]}]}}`,
			want: []string{"spec.sizingPolicies[0].coreFractions[0] FieldValueInvalid", "spec.sizingPolicies[0].coreFractions[2] FieldValueDuplicate",
				"spec.sizingPolicies[0].coreFractions[3] FieldValueInvalid", "spec.sizingPolicies[0].dedicatedCores[1] FieldValueDuplicate"}},
		{name: "default core fraction", patch: `{"spec":{"sizingPolicies":[{"cores":{"min":1,"max":2},"coreFractions":[50],"defaultCoreFraction":"20%"},{"cores":{"min":3,"max":4},"defaultCoreFraction":"20"}]}}`,
			want: []string{"spec.sizingPolicies[0].defaultCoreFraction FieldValueInvalid", "spec.sizingPolicies[1].defaultCoreFraction FieldValueInvalid"}},
		{name: "too many policies", patch: `{"spec":{"sizingPolicies":[` + vmtPolicies(17) + `]}}`, want: []string{"spec.sizingPolicies FieldValueInvalid"}},
	}
	vmtRunCases(t, "VirtualMachineClass", vmtGenericClass, cases)
}

func vmtPolicies(n int) string {
	s := ""
	for i := 0; i < n; i++ {
		if i > 0 {
			s += ","
		}
		c := i + 1
		s += `{"cores":{"min":` + strconv.Itoa(c) + `,"max":` + strconv.Itoa(c) + `}}`
	}
	return s
}

func TestVirtualMachineClassUpdate(t *testing.T) {
	if got := vmtUpdate(t, "VirtualMachineClass", vmtGenericClass, `{}`,
		`{"spec":{"sizingPolicies":null,"nodeSelector":null,"tolerations":[{"operator":"Exists"}]}}`); len(got) != 0 {
		t.Fatalf("changing policies rejected: %v", got)
	}
	if got := vmtUpdate(t, "VirtualMachineClass", vmtGenericClass, `{}`, `{"spec":{"cpu":{"type":"Host","discovery":null}}}`); len(got) != 1 || got[0] != "spec.cpu.type FieldValueForbidden" {
		t.Fatalf("type change: %v", got)
	}
	if got := vmtUpdate(t, "VirtualMachineClass", vmtGenericClass, `{}`, `{"spec":{"cpu":{"discovery":{"matchLabels":{"a":"b"}}}}}`); len(got) != 1 || got[0] != "spec.cpu FieldValueForbidden" {
		t.Fatalf("discovery change: %v", got)
	}
}

func TestVirtualMachineClassDefaultAnnotations(t *testing.T) {
	if v1alpha1.AnnotationDefaultVirtualMachineClass != "virtualmachineclass.virtualization.rakhsh.io/is-default-class" ||
		v1alpha1.AnnotationDefaultVirtualMachineClassDeckhouse != "virtualmachineclass.virtualization.deckhouse.io/is-default-class" {
		t.Fatal("default class annotation keys changed")
	}
	// They are valid annotation keys.
	for _, k := range []string{v1alpha1.AnnotationDefaultVirtualMachineClass, v1alpha1.AnnotationDefaultVirtualMachineClassDeckhouse} {
		if msg := validQualifiedName(k); msg != "" {
			t.Fatalf("%s: %s", k, msg)
		}
	}
}

func FuzzValidateVirtualMachineClass(f *testing.F) {
	tkFuzzSeeds(f, "VirtualMachineClass",
		vmtGenericClass,
		`{"spec":{"cpu":{"type":"Model","model":"EPYC"},"sizingPolicies":[{"cores":{"min":1,"max":4},"coreFractions":["10%",100],"defaultCoreFraction":"10%"},{"cores":{"min":2,"max":3}}]}}`,
		`{"spec":{"cpu":{"type":"Features","features":["avx"],"discovery":{"nodeSelector":{"matchExpressions":[{"key":"a","operator":"In","values":["b"]}]}}}}}`,
	)
}
