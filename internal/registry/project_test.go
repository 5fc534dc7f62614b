package registry

import (
	"strings"
	"testing"
)

const vmtProjectBase = `{"apiVersion":"virtualization.rakhsh.io/v1alpha1","kind":"Project","metadata":{"name":"research"},"spec":{}}`

func TestProjectValidate(t *testing.T) {
	vmtRunCases(t, "Project", vmtProjectBase, []vmtCase{
		{name: "empty"},
		{name: "full", patch: `{"spec":{"description":"Lab of Dr. X","quota":{"cores":64,"memory":"256Gi","disk":"2Ti","virtualMachines":0,"images":10},
			"defaults":{"virtualMachineClassName":"generic"},
			"members":[{"name":"alice@example.com","role":"Admin"},{"name":"bob","role":"User"},{"name":"ci-bot","role":"Viewer"}]}}`},
		{name: "description long", patch: `{"spec":{"description":"` + strings.Repeat("x", 4097) + `"}}`, want: []string{"spec.description FieldValueTooLong"}},
		{name: "quota negative", patch: `{"spec":{"quota":{"cores":-1,"virtualMachines":-2,"images":-3}}}`,
			want: []string{"spec.quota.cores FieldValueInvalid", "spec.quota.virtualMachines FieldValueInvalid", "spec.quota.images FieldValueInvalid"}},
		{name: "quota quantities", patch: `{"spec":{"quota":{"memory":"lots","disk":"-1Gi"}}}`,
			want: []string{"spec.quota.memory FieldValueInvalid", "spec.quota.disk FieldValueInvalid"}},
		{name: "default class", patch: `{"spec":{"defaults":{"virtualMachineClassName":"Big_One"}}}`, want: []string{"spec.defaults.virtualMachineClassName FieldValueInvalid"}},
		{name: "members", patch: `{"spec":{"members":[{"role":"User"},{"name":"a b","role":"Owner"},{"name":"c"},{"name":"d","role":"Admin"},{"name":"d","role":"User"}]}}`,
			want: []string{"spec.members[0].name FieldValueRequired", "spec.members[1].name FieldValueInvalid", "spec.members[1].role FieldValueNotSupported",
				"spec.members[2].role FieldValueRequired", "spec.members[4].name FieldValueDuplicate"}},
	})
}

func FuzzValidateProject(f *testing.F) {
	tkFuzzSeeds(f, "Project",
		vmtProjectBase,
		`{"spec":{"quota":{"cores":1,"memory":"1Gi"},"members":[{"name":"a","role":"Admin"}],"defaults":{}}}`,
	)
}
