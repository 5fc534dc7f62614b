package registry

import (
	"encoding/json"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/objpatch"
)

// --- test helpers shared by the tests of the VM, class, operation, attachment, snapshot,
// node and project strategies ---

// vmtMerge applies the JSON merge patch patch (RFC 7386) to the document base.
func vmtMerge(t testing.TB, base, patch string) string {
	t.Helper()
	var b, p any
	if err := json.Unmarshal([]byte(base), &b); err != nil {
		t.Fatalf("base: %v", err)
	}
	if patch != "" {
		if err := json.Unmarshal([]byte(patch), &p); err != nil {
			t.Fatalf("patch %s: %v", patch, err)
		}
		b = objpatch.Merge(b, p)
	}
	out, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// vmtDecode decodes doc into a new object of kind, rejecting unknown fields as the API does.
func vmtDecode(t testing.TB, kind, doc string) (*Strategy, v1alpha1.Object) {
	t.Helper()
	s, ok := ByKind(kind)
	if !ok {
		t.Fatalf("kind %s is not registered", kind)
	}
	var raw any
	if err := json.Unmarshal([]byte(doc), &raw); err != nil {
		t.Fatalf("decode %s: %v", doc, err)
	}
	obj := s.New()
	if fe := CheckUnknownFields(raw, reflect.TypeOf(obj)); len(fe) > 0 {
		t.Fatalf("unknown fields in %s: %v", doc, fe)
	}
	if err := json.Unmarshal([]byte(doc), obj); err != nil {
		t.Fatalf("decode %s: %v", doc, err)
	}
	return s, obj
}

// vmtValidate decodes doc, defaults it and validates it.
func vmtValidate(t testing.TB, kind, doc string) (v1alpha1.Object, errs.FieldErrors) {
	t.Helper()
	s, obj := vmtDecode(t, kind, doc)
	if s.Default != nil {
		s.Default(obj)
	}
	var fe errs.FieldErrors
	if s.Validate != nil {
		fe = s.Validate(obj)
	}
	return obj, fe
}

// vmtValid is vmtValidate of a document that must be valid: it fails the test on any field
// error and returns the defaulted object as a T.
func vmtValid[T v1alpha1.Object](t testing.TB, kind, doc string) T {
	t.Helper()
	obj, fe := vmtValidate(t, kind, doc)
	if len(fe) > 0 {
		t.Fatalf("%s rejected: %v", kind, fe)
	}
	return obj.(T)
}

// vmtCauses renders field errors as sorted "field Type" strings.
func vmtCauses(fe errs.FieldErrors) []string {
	out := make([]string, 0, len(fe))
	for _, f := range fe {
		out = append(out, f.Field+" "+f.Type)
	}
	sort.Strings(out)
	return out
}

// vmtCase is one validation case: a merge patch on a valid base object and the exact causes
// ("field Type") it must produce; none means valid.
type vmtCase struct {
	name  string
	patch string
	want  []string
	// msg, when set, must appear in the message of the first cause.
	msg string
}

func vmtRunCases(t *testing.T, kind, base string, cases []vmtCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, fe := vmtValidate(t, kind, vmtMerge(t, base, c.patch))
			got := vmtCauses(fe)
			want := append([]string(nil), c.want...)
			sort.Strings(want)
			if len(want) == 0 {
				want = []string{}
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("causes:\n got  %q\n want %q\n errors: %v", got, want, fe)
			}
			if c.msg != "" && !strings.Contains(fe[0].Message, c.msg) {
				t.Fatalf("message %q does not contain %q", fe[0].Message, c.msg)
			}
		})
	}
}

// vmtUpdate validates an update from old to new (both merge patches of base) and returns the
// causes.
func vmtUpdate(t *testing.T, kind, base, oldPatch, newPatch string) []string {
	t.Helper()
	s, old := vmtDecode(t, kind, vmtMerge(t, base, oldPatch))
	_, obj := vmtDecode(t, kind, vmtMerge(t, base, newPatch))
	if s.Default != nil {
		s.Default(old)
		s.Default(obj)
	}
	if s.ValidateUpdate == nil {
		return []string{}
	}
	return vmtCauses(s.ValidateUpdate(obj, old))
}

// --- VirtualMachine ---

const vmtVMBase = `{"apiVersion":"virtualization.rakhsh.io/v1alpha1","kind":"VirtualMachine",
 "metadata":{"name":"vm1","namespace":"p1"},
 "spec":{"cpu":{"cores":2},"memory":{"size":"2Gi"},
  "blockDeviceRefs":[{"kind":"VirtualDisk","name":"root"},{"kind":"ClusterVirtualImage","name":"debian-12"}]}}`

func TestVirtualMachineDefaults(t *testing.T) {
	vm := vmtValid[*v1alpha1.VirtualMachine](t, "VirtualMachine", vmtVMBase)
	s := vm.Spec
	if s.RunPolicy != v1alpha1.RunPolicyAlwaysOnUnlessStoppedManually || s.OSType != v1alpha1.OSTypeGeneric ||
		s.Bootloader != v1alpha1.BootloaderBIOS || s.LiveMigrationPolicy != v1alpha1.LiveMigrationPolicyPreferSafe {
		t.Fatalf("enum defaults: %+v", s)
	}
	if s.EnableParavirtualization == nil || !*s.EnableParavirtualization {
		t.Fatal("enableParavirtualization not defaulted to true")
	}
	if s.Disruptions == nil || s.Disruptions.RestartApprovalMode != v1alpha1.RestartApprovalModeManual {
		t.Fatalf("disruptions: %+v", s.Disruptions)
	}
	if s.TerminationGracePeriodSeconds == nil || *s.TerminationGracePeriodSeconds != 60 {
		t.Fatal("terminationGracePeriodSeconds not defaulted to 60")
	}
	if s.CPU.CoreFraction != "" {
		t.Fatalf("coreFraction without class = %q, want it left to admission", s.CPU.CoreFraction)
	}

	// With a class the core fraction is left to the class; explicit values are kept.
	obj, _ := vmtValidate(t, "VirtualMachine", vmtMerge(t, vmtVMBase, `{"spec":{"virtualMachineClassName":"generic",
		"enableParavirtualization":false,"terminationGracePeriodSeconds":0,"runPolicy":"Manual",
		"provisioning":{"type":"UserDataRef","userDataRef":{"name":"ci"}}}}`))
	s = obj.(*v1alpha1.VirtualMachine).Spec
	if s.CPU.CoreFraction != "" {
		t.Fatalf("coreFraction with class = %q, want empty", s.CPU.CoreFraction)
	}
	if *s.EnableParavirtualization || *s.TerminationGracePeriodSeconds != 0 || s.RunPolicy != v1alpha1.RunPolicyManual {
		t.Fatalf("explicit values overwritten: %+v", s)
	}
	if s.Provisioning.UserDataRef.Kind != "Secret" {
		t.Fatalf("userDataRef.kind = %q", s.Provisioning.UserDataRef.Kind)
	}

	// Default is idempotent.
	st, _ := ByKind("VirtualMachine")
	a, _ := json.Marshal(obj)
	st.Default(obj)
	b, _ := json.Marshal(obj)
	if string(a) != string(b) {
		t.Fatalf("Default not idempotent:\n%s\n%s", a, b)
	}
}

func TestVirtualMachineValidate(t *testing.T) {
	big := strings.Repeat("x", v1alpha1.MaxUserDataBytes+1)
	cases := []vmtCase{
		{name: "base"},
		{name: "full valid", patch: `{"spec":{"virtualMachineClassName":"generic","runPolicy":"AlwaysOn",
			"cpu":{"cores":4,"coreFraction":"50%"},"memory":{"size":"16Mi"},
			"blockDeviceRefs":[{"kind":"VirtualDisk","name":"a","bootOrder":2},{"kind":"VirtualImage","name":"b","bootOrder":1}],
			"networks":[{"type":"Main"},{"type":"ClusterNetwork","name":"lan","virtualMachineMACAddressName":"mac1"},{"type":"Network","name":"lan"}],
			"virtualMachineIPAddressName":"ip1","osType":"Windows","bootloader":"EFIWithSecureBoot",
			"provisioning":{"type":"SysprepRef","sysprepRef":{"kind":"Secret","name":"unattend"}},
			"liveMigrationPolicy":"AlwaysForced","disruptions":{"restartApprovalMode":"Automatic"},
			"nodeSelector":{"kubernetes.io/hostname":"node-1"},
			"tolerations":[{"key":"dedicated","operator":"Equal","value":"vm","effect":"NoSchedule"},{"operator":"Exists"},
				{"key":"node.kubernetes.io/unreachable","operator":"Exists","effect":"NoExecute","tolerationSeconds":30}],
			"affinity":{"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[
				{"matchExpressions":[{"key":"zone","operator":"In","values":["a","b"]},{"key":"gpu","operator":"DoesNotExist"},{"key":"cores","operator":"Gt","values":["8"]}],
				 "matchFields":[{"key":"metadata.name","operator":"NotIn","values":["node-9"]}]}]},
				"preferredDuringSchedulingIgnoredDuringExecution":[{"weight":50,"preference":{"matchExpressions":[{"key":"ssd","operator":"Exists"}]}}]},
				"virtualMachineAndPodAntiAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":[{"topologyKey":"kubernetes.io/hostname",
					"labelSelector":{"matchLabels":{"app":"db"},"matchExpressions":[{"key":"tier","operator":"NotIn","values":["x"]}]},"namespaces":["p1"]}],
				 "preferredDuringSchedulingIgnoredDuringExecution":[{"weight":100,"virtualMachineAndPodAffinityTerm":{"topologyKey":"zone"}}]}},
			"priorityClassName":"high.priority","terminationGracePeriodSeconds":0}}`},
		{name: "userdata", patch: `{"spec":{"provisioning":{"type":"UserData","userData":"#cloud-config\n"}}}`},
		{name: "legacy ok", patch: `{"spec":{"osType":"Legacy","enableParavirtualization":false}}`},

		{name: "cores missing", patch: `{"spec":{"cpu":{"cores":null}}}`, want: []string{"spec.cpu.cores FieldValueRequired"}},
		{name: "cores negative", patch: `{"spec":{"cpu":{"cores":-1}}}`, want: []string{"spec.cpu.cores FieldValueInvalid"}},
		{name: "cores too many", patch: `{"spec":{"cpu":{"cores":1025}}}`, want: []string{"spec.cpu.cores FieldValueInvalid"}},
		{name: "coreFraction no percent", patch: `{"spec":{"cpu":{"coreFraction":"50"}}}`, want: []string{"spec.cpu.coreFraction FieldValueInvalid"}},
		{name: "coreFraction 0", patch: `{"spec":{"cpu":{"coreFraction":"0%"}}}`, want: []string{"spec.cpu.coreFraction FieldValueInvalid"}},
		{name: "coreFraction 101", patch: `{"spec":{"cpu":{"coreFraction":"101%"}}}`, want: []string{"spec.cpu.coreFraction FieldValueInvalid"}},
		{name: "coreFraction Auto", patch: `{"spec":{"cpu":{"coreFraction":"Auto"}}}`, want: []string{"spec.cpu.coreFraction FieldValueInvalid"}, msg: "not supported"},
		{name: "memory missing", patch: `{"spec":{"memory":null}}`, want: []string{"spec.memory.size FieldValueRequired"}},
		{name: "memory bad", patch: `{"spec":{"memory":{"size":"2 GB"}}}`, want: []string{"spec.memory.size FieldValueInvalid"}},
		{name: "memory small", patch: `{"spec":{"memory":{"size":"15Mi"}}}`, want: []string{"spec.memory.size FieldValueInvalid"}, msg: "16Mi"},
		{name: "room to grow", patch: `{"spec":{"cpu":{"cores":2,"maxCores":8},"memory":{"size":"256Mi","maxSize":"2Gi"}}}`},
		{name: "maxCores equal cores", patch: `{"spec":{"cpu":{"cores":2,"maxCores":2}}}`},
		{name: "maxCores below cores", patch: `{"spec":{"cpu":{"cores":4,"maxCores":2}}}`, want: []string{"spec.cpu.maxCores FieldValueInvalid"}, msg: "at least spec.cpu.cores (4)"},
		{name: "maxCores negative", patch: `{"spec":{"cpu":{"maxCores":-1}}}`, want: []string{"spec.cpu.maxCores FieldValueInvalid"}},
		{name: "maxCores too many", patch: `{"spec":{"cpu":{"maxCores":241}}}`, want: []string{"spec.cpu.maxCores FieldValueInvalid"}, msg: "at most 240"},
		{name: "maxSize below size", patch: `{"spec":{"memory":{"size":"1Gi","maxSize":"512Mi"}}}`, want: []string{"spec.memory.maxSize FieldValueInvalid"}, msg: "at least spec.memory.size"},
		{name: "maxSize bad", patch: `{"spec":{"memory":{"maxSize":"lots"}}}`, want: []string{"spec.memory.maxSize FieldValueInvalid"}},
		{name: "maxSize unaligned", patch: `{"spec":{"memory":{"size":"256Mi","maxSize":"1025Mi"}}}`, want: []string{"spec.memory.maxSize FieldValueInvalid"}, msg: "multiple of 2Mi"},
		{name: "size unaligned with maxSize", patch: `{"spec":{"memory":{"size":"257Mi","maxSize":"1Gi"}}}`, want: []string{"spec.memory.size FieldValueInvalid"}, msg: "multiple of 2Mi"},
		{name: "maxSize too big", patch: `{"spec":{"memory":{"size":"256Mi","maxSize":"32Ti"}}}`, want: []string{"spec.memory.maxSize FieldValueInvalid"}, msg: "16Ti"},
		{name: "maxSize legacy", patch: `{"spec":{"osType":"Legacy","memory":{"size":"256Mi","maxSize":"1Gi"}}}`, want: []string{"spec.memory.maxSize FieldValueForbidden"}},
		{name: "maxSize without virtio", patch: `{"spec":{"enableParavirtualization":false,"memory":{"size":"256Mi","maxSize":"1Gi"}}}`, want: []string{"spec.memory.maxSize FieldValueForbidden"}, msg: "enableParavirtualization"},
		{name: "class name", patch: `{"spec":{"virtualMachineClassName":"Generic"}}`, want: []string{"spec.virtualMachineClassName FieldValueInvalid"}},
		{name: "runPolicy", patch: `{"spec":{"runPolicy":"Sometimes"}}`, want: []string{"spec.runPolicy FieldValueNotSupported"}, msg: `"AlwaysOnUnlessStoppedManually"`},
		{name: "osType", patch: `{"spec":{"osType":"Linux"}}`, want: []string{"spec.osType FieldValueNotSupported"}},
		{name: "bootloader", patch: `{"spec":{"bootloader":"UEFI"}}`, want: []string{"spec.bootloader FieldValueNotSupported"}},
		{name: "liveMigrationPolicy", patch: `{"spec":{"liveMigrationPolicy":"Safe"}}`, want: []string{"spec.liveMigrationPolicy FieldValueNotSupported"}},
		{name: "restartApprovalMode", patch: `{"spec":{"disruptions":{"restartApprovalMode":"Auto"}}}`, want: []string{"spec.disruptions.restartApprovalMode FieldValueNotSupported"}},
		{name: "grace negative", patch: `{"spec":{"terminationGracePeriodSeconds":-1}}`, want: []string{"spec.terminationGracePeriodSeconds FieldValueInvalid"}},
		{name: "priority class", patch: `{"spec":{"priorityClassName":"High"}}`, want: []string{"spec.priorityClassName FieldValueInvalid"}},
		{name: "ip name", patch: `{"spec":{"virtualMachineIPAddressName":"ip_1"}}`, want: []string{"spec.virtualMachineIPAddressName FieldValueInvalid"}},

		{name: "block kind", patch: `{"spec":{"blockDeviceRefs":[{"kind":"Disk","name":"a"}]}}`, want: []string{"spec.blockDeviceRefs[0].kind FieldValueNotSupported"}},
		{name: "block kind missing", patch: `{"spec":{"blockDeviceRefs":[{"name":"a"}]}}`, want: []string{"spec.blockDeviceRefs[0].kind FieldValueRequired"}},
		{name: "block name", patch: `{"spec":{"blockDeviceRefs":[{"kind":"VirtualDisk","name":""},{"kind":"VirtualDisk","name":"A"}]}}`,
			want: []string{"spec.blockDeviceRefs[0].name FieldValueRequired", "spec.blockDeviceRefs[1].name FieldValueInvalid"}},
		{name: "block duplicate", patch: `{"spec":{"blockDeviceRefs":[{"kind":"VirtualDisk","name":"a"},{"kind":"VirtualImage","name":"a"},{"kind":"VirtualDisk","name":"a"}]}}`,
			want: []string{"spec.blockDeviceRefs[2] FieldValueDuplicate"}},
		{name: "bootOrder zero and duplicate", patch: `{"spec":{"blockDeviceRefs":[{"kind":"VirtualDisk","name":"a","bootOrder":0},{"kind":"VirtualDisk","name":"b","bootOrder":1},{"kind":"VirtualDisk","name":"c","bootOrder":1}]}}`,
			want: []string{"spec.blockDeviceRefs[0].bootOrder FieldValueInvalid", "spec.blockDeviceRefs[2].bootOrder FieldValueDuplicate"}},
		{name: "too many block devices", patch: `{"spec":{"blockDeviceRefs":[` + vmtDisks(17) + `]}}`, want: []string{"spec.blockDeviceRefs FieldValueInvalid"}},

		{name: "network type", patch: `{"spec":{"networks":[{"type":"Bridge","name":"x"}]}}`, want: []string{"spec.networks[0].type FieldValueNotSupported"}},
		{name: "network type missing", patch: `{"spec":{"networks":[{"name":"x"}]}}`, want: []string{"spec.networks[0].type FieldValueRequired"}},
		{name: "network name required", patch: `{"spec":{"networks":[{"type":"ClusterNetwork"}]}}`, want: []string{"spec.networks[0].name FieldValueRequired"}},
		{name: "main with name", patch: `{"spec":{"networks":[{"type":"Main","name":"x"}]}}`, want: []string{"spec.networks[0].name FieldValueForbidden"}},
		{name: "two mains", patch: `{"spec":{"networks":[{"type":"Main"},{"type":"Main"}]}}`, want: []string{"spec.networks[1].type FieldValueDuplicate"}},
		{name: "network duplicate", patch: `{"spec":{"networks":[{"type":"Network","name":"a"},{"type":"Network","name":"a"}]}}`, want: []string{"spec.networks[1] FieldValueDuplicate"}},
		{name: "network mac", patch: `{"spec":{"networks":[{"type":"Main","virtualMachineMACAddressName":"m"},{"type":"Network","name":"a","virtualMachineMACAddressName":"m"},{"type":"Network","name":"b","virtualMachineMACAddressName":"M"}]}}`,
			want: []string{"spec.networks[1].virtualMachineMACAddressName FieldValueDuplicate", "spec.networks[2].virtualMachineMACAddressName FieldValueInvalid"}},

		{name: "provisioning type", patch: `{"spec":{"provisioning":{"type":"CloudInit"}}}`, want: []string{"spec.provisioning.type FieldValueNotSupported"}},
		{name: "provisioning type missing", patch: `{"spec":{"provisioning":{"userData":"x"}}}`,
			want: []string{"spec.provisioning.type FieldValueRequired", "spec.provisioning.userData FieldValueForbidden"}},
		{name: "userData missing", patch: `{"spec":{"provisioning":{"type":"UserData"}}}`, want: []string{"spec.provisioning.userData FieldValueRequired"}},
		{name: "userData too long", patch: `{"spec":{"provisioning":{"type":"UserData","userData":"` + big + `"}}}`, want: []string{"spec.provisioning.userData FieldValueTooLong"}},
		{name: "userDataRef missing", patch: `{"spec":{"provisioning":{"type":"UserDataRef"}}}`, want: []string{"spec.provisioning.userDataRef FieldValueRequired"}},
		{name: "sysprepRef missing", patch: `{"spec":{"provisioning":{"type":"SysprepRef"}}}`, want: []string{"spec.provisioning.sysprepRef FieldValueRequired"}},
		{name: "provisioning mixed", patch: `{"spec":{"provisioning":{"type":"UserDataRef","userData":"x","userDataRef":{"name":"a"},"sysprepRef":{"name":"b"}}}}`,
			want: []string{"spec.provisioning.userData FieldValueForbidden", "spec.provisioning.sysprepRef FieldValueForbidden"}},
		{name: "userDataRef kind and name", patch: `{"spec":{"provisioning":{"type":"UserDataRef","userDataRef":{"kind":"ConfigMap"}}}}`,
			want: []string{"spec.provisioning.userDataRef.kind FieldValueNotSupported", "spec.provisioning.userDataRef.name FieldValueRequired"}},
		{name: "legacy rules", patch: `{"spec":{"osType":"Legacy","bootloader":"EFI","enableParavirtualization":false,
			"provisioning":{"type":"UserData","userData":"x"},"blockDeviceRefs":[` + vmtDisks(5) + `]}}`,
			want: []string{"spec.bootloader FieldValueInvalid", "spec.provisioning FieldValueForbidden", "spec.blockDeviceRefs FieldValueInvalid"}},

		{name: "nodeSelector", patch: `{"spec":{"nodeSelector":{"-bad":"x","ok":"bad value"}}}`,
			want: []string{"spec.nodeSelector FieldValueInvalid", "spec.nodeSelector.ok FieldValueInvalid"}},
		{name: "tolerations", patch: `{"spec":{"tolerations":[
			{"key":"a","operator":"Matches"},
			{"value":"x"},
			{"key":"a","operator":"Exists","value":"x"},
			{"key":"a","effect":"NoRun"},
			{"key":"a","effect":"NoSchedule","tolerationSeconds":5},
			{"key":"bad key!"},
			{"operator":"Matches"}]}}`,
			want: []string{"spec.tolerations[0].operator FieldValueNotSupported", "spec.tolerations[1].operator FieldValueInvalid",
				"spec.tolerations[2].value FieldValueInvalid", "spec.tolerations[3].effect FieldValueNotSupported",
				"spec.tolerations[4].effect FieldValueInvalid", "spec.tolerations[5].key FieldValueInvalid",
				"spec.tolerations[6].operator FieldValueNotSupported"}},
		{name: "node affinity", patch: `{"spec":{"affinity":{"nodeAffinity":{
			"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchExpressions":[
				{"key":"a","operator":"In"},{"key":"b","operator":"Exists","values":["x"]},{"key":"c","operator":"Gt","values":["x"]},
				{"key":"d","operator":"Like","values":["x"]},{"operator":"Exists"}],
				"matchFields":[{"key":"metadata.labels","operator":"Exists"}]}]},
			"preferredDuringSchedulingIgnoredDuringExecution":[{"weight":0,"preference":{}}]}}}}`,
			want: []string{
				"spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].values FieldValueRequired",
				"spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[1].values FieldValueForbidden",
				"spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[2].values[0] FieldValueInvalid",
				"spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[3].operator FieldValueNotSupported",
				"spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[4].key FieldValueRequired",
				"spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchFields[0].key FieldValueNotSupported",
				"spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchFields[0].operator FieldValueNotSupported",
				"spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchFields[0].values FieldValueInvalid",
				"spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight FieldValueInvalid",
			}},
		{name: "node affinity no terms", patch: `{"spec":{"affinity":{"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[]}}}}}`,
			want: []string{"spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms FieldValueRequired"}},
		{name: "vm affinity", patch: `{"spec":{"affinity":{"virtualMachineAndPodAffinity":{
			"requiredDuringSchedulingIgnoredDuringExecution":[{"labelSelector":{"matchExpressions":[{"key":"a","operator":"Gt","values":["1"]}]},"namespaces":["P"]}],
			"preferredDuringSchedulingIgnoredDuringExecution":[{"weight":101,"virtualMachineAndPodAffinityTerm":{"topologyKey":"zone","namespaceSelector":{"matchLabels":{"a":"b c"}}}}]}}}}`,
			want: []string{
				"spec.affinity.virtualMachineAndPodAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey FieldValueRequired",
				"spec.affinity.virtualMachineAndPodAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].labelSelector.matchExpressions[0].operator FieldValueNotSupported",
				"spec.affinity.virtualMachineAndPodAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].namespaces[0] FieldValueInvalid",
				"spec.affinity.virtualMachineAndPodAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight FieldValueInvalid",
				"spec.affinity.virtualMachineAndPodAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].virtualMachineAndPodAffinityTerm.namespaceSelector.matchLabels.a FieldValueInvalid",
			}},
		{name: "all problems reported", patch: `{"spec":{"cpu":{"cores":0,"coreFraction":"x"},"memory":{"size":"1"},"runPolicy":"x","osType":"x"}}`,
			want: []string{"spec.cpu.cores FieldValueRequired", "spec.cpu.coreFraction FieldValueInvalid", "spec.memory.size FieldValueInvalid",
				"spec.runPolicy FieldValueNotSupported", "spec.osType FieldValueNotSupported"}},
	}
	vmtRunCases(t, "VirtualMachine", vmtVMBase, cases)
}

func vmtDisks(n int) string {
	parts := make([]string, n)
	for i := range parts {
		parts[i] = `{"kind":"VirtualDisk","name":"d` + string(rune('a'+i)) + `"}`
	}
	return strings.Join(parts, ",")
}

func TestVirtualMachineUnknownFieldsRejected(t *testing.T) {
	s, _ := ByKind("VirtualMachine")
	var raw any
	doc := vmtMerge(t, vmtVMBase, `{"spec":{"cpu":{"sockets":2},"affinity":{"podAffinity":{}}}}`)
	if err := json.Unmarshal([]byte(doc), &raw); err != nil {
		t.Fatal(err)
	}
	got := vmtCauses(CheckUnknownFields(raw, reflect.TypeOf(s.New())))
	want := []string{"spec.affinity.podAffinity FieldValueUnknown", "spec.cpu.sockets FieldValueUnknown"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q want %q", got, want)
	}
}

func TestVirtualMachineUpdateAllowed(t *testing.T) {
	// Nothing of a VM spec is immutable.
	got := vmtUpdate(t, "VirtualMachine", vmtVMBase, `{}`,
		`{"spec":{"cpu":{"cores":8},"memory":{"size":"8Gi"},"virtualMachineClassName":"other","osType":"Windows"}}`)
	if len(got) != 0 {
		t.Fatalf("update rejected: %v", got)
	}
}

func FuzzValidateVirtualMachine(f *testing.F) {
	tkFuzzSeeds(f, "VirtualMachine",
		vmtVMBase,
		`{"spec":{"cpu":{"cores":1,"coreFraction":"5%"},"memory":{"size":"1Gi"},"networks":[{"type":"Main"}],"provisioning":{"type":"UserData","userData":"x"},"tolerations":[{"operator":"Exists"}]}}`,
		`{"spec":{"cpu":{"cores":2,"maxCores":4},"memory":{"size":"256Mi","maxSize":"1Gi"}}}`,
		`{"spec":{"virtualMachineClassName":"c","affinity":{"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchExpressions":[{"key":"k","operator":"Lt","values":["3"]}]}]}}},"disruptions":{}}}`,
	)
}

// TestUnknownFieldSuggests: a misspelt field names the field it was likely meant to be.
func TestUnknownFieldSuggests(t *testing.T) {
	var doc any
	if err := json.Unmarshal([]byte(`{"spec":{"memroy":{"size":"1Gi"},"cpu":{"cores":1,"corFraction":"10%"},"zzzzzzzz":1}}`), &doc); err != nil {
		t.Fatal(err)
	}
	fe := CheckUnknownFields(doc, reflect.TypeOf(v1alpha1.VirtualMachine{}))
	want := map[string]string{
		"spec.memroy":          `did you mean "memory"?`,
		"spec.cpu.corFraction": `did you mean "coreFraction"?`,
		"spec.zzzzzzzz":        "Rakhsh does not support it",
	}
	if len(fe) != len(want) {
		t.Fatalf("errors %v, want %d", fe, len(want))
	}
	for _, e := range fe {
		if w, ok := want[e.Field]; !ok || !strings.Contains(e.Message, w) {
			t.Errorf("%s: %q, want %q", e.Field, e.Message, w)
		}
	}
}
