package registry

import (
	"reflect"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

const vmtVMSBase = `{"apiVersion":"virtualization.rakhsh.io/v1alpha1","kind":"VirtualMachineSnapshot",
 "metadata":{"name":"s1","namespace":"p1"},"spec":{"virtualMachineName":"vm1"}}`

func TestVirtualMachineSnapshotDefaults(t *testing.T) {
	s := vmtValid[*v1alpha1.VirtualMachineSnapshot](t, "VirtualMachineSnapshot", vmtVMSBase).Spec
	if s.RequiredConsistency == nil || !*s.RequiredConsistency || s.KeepIPAddress != v1alpha1.KeepIPAddressAlways {
		t.Fatalf("defaults: %+v", s)
	}
}

func TestVirtualMachineSnapshotValidate(t *testing.T) {
	vmtRunCases(t, "VirtualMachineSnapshot", vmtVMSBase, []vmtCase{
		{name: "ok"},
		{name: "never", patch: `{"spec":{"keepIPAddress":"Never","requiredConsistency":false}}`},
		{name: "vm missing", patch: `{"spec":{"virtualMachineName":null}}`, want: []string{"spec.virtualMachineName FieldValueRequired"}},
		{name: "keep bad", patch: `{"spec":{"keepIPAddress":"Sometimes"}}`, want: []string{"spec.keepIPAddress FieldValueNotSupported"}},
	})
}

func TestVirtualMachineSnapshotImmutable(t *testing.T) {
	got := vmtUpdate(t, "VirtualMachineSnapshot", vmtVMSBase, `{}`, `{"spec":{"virtualMachineName":"vm2","requiredConsistency":false,"keepIPAddress":"Never"}}`)
	want := []string{"spec.keepIPAddress FieldValueForbidden", "spec.requiredConsistency FieldValueForbidden", "spec.virtualMachineName FieldValueForbidden"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q want %q", got, want)
	}
	if got := vmtUpdate(t, "VirtualMachineSnapshot", vmtVMSBase, `{}`, `{"spec":{"keepIPAddress":"Always"}}`); len(got) != 0 {
		t.Fatalf("explicit default rejected: %v", got)
	}
}

func FuzzValidateVirtualMachineSnapshot(f *testing.F) {
	tkFuzzSeeds(f, "VirtualMachineSnapshot",
		vmtVMSBase,
		`{"spec":{"virtualMachineName":"v","keepIPAddress":"Never","requiredConsistency":true}}`,
	)
}
