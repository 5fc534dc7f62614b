package registry

import (
	"reflect"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

const vmtVDSBase = `{"apiVersion":"virtualization.rakhsh.io/v1alpha1","kind":"VirtualDiskSnapshot",
 "metadata":{"name":"s1","namespace":"p1"},"spec":{"virtualDiskName":"root"}}`

func TestVirtualDiskSnapshotDefaults(t *testing.T) {
	if rc := vmtValid[*v1alpha1.VirtualDiskSnapshot](t, "VirtualDiskSnapshot", vmtVDSBase).Spec.RequiredConsistency; rc == nil || !*rc {
		t.Fatal("requiredConsistency not defaulted to true")
	}
	obj, _ := vmtValidate(t, "VirtualDiskSnapshot", vmtMerge(t, vmtVDSBase, `{"spec":{"requiredConsistency":false}}`))
	if rc := obj.(*v1alpha1.VirtualDiskSnapshot).Spec.RequiredConsistency; rc == nil || *rc {
		t.Fatal("explicit requiredConsistency=false overwritten")
	}
}

func TestVirtualDiskSnapshotValidate(t *testing.T) {
	vmtRunCases(t, "VirtualDiskSnapshot", vmtVDSBase, []vmtCase{
		{name: "ok"},
		{name: "disk missing", patch: `{"spec":{"virtualDiskName":null}}`, want: []string{"spec.virtualDiskName FieldValueRequired"}},
		{name: "disk bad", patch: `{"spec":{"virtualDiskName":"Root"}}`, want: []string{"spec.virtualDiskName FieldValueInvalid"}},
	})
}

func TestVirtualDiskSnapshotImmutable(t *testing.T) {
	got := vmtUpdate(t, "VirtualDiskSnapshot", vmtVDSBase, `{}`, `{"spec":{"virtualDiskName":"other","requiredConsistency":false}}`)
	want := []string{"spec.requiredConsistency FieldValueForbidden", "spec.virtualDiskName FieldValueForbidden"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q want %q", got, want)
	}
	// Writing out the default is not a change.
	if got := vmtUpdate(t, "VirtualDiskSnapshot", vmtVDSBase, `{}`, `{"spec":{"requiredConsistency":true}}`); len(got) != 0 {
		t.Fatalf("explicit default rejected: %v", got)
	}
}

func FuzzValidateVirtualDiskSnapshot(f *testing.F) {
	tkFuzzSeeds(f, "VirtualDiskSnapshot",
		vmtVDSBase,
		`{"spec":{"virtualDiskName":"d","requiredConsistency":false}}`,
	)
}
