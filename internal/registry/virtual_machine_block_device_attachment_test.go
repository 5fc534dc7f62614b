package registry

import (
	"reflect"
	"testing"
)

const vmtVMBDABase = `{"apiVersion":"virtualization.rakhsh.io/v1alpha1","kind":"VirtualMachineBlockDeviceAttachment",
 "metadata":{"name":"att1","namespace":"p1"},"spec":{"virtualMachineName":"vm1","blockDeviceRef":{"kind":"VirtualDisk","name":"data"}}}`

func TestVirtualMachineBlockDeviceAttachmentValidate(t *testing.T) {
	vmtRunCases(t, "VirtualMachineBlockDeviceAttachment", vmtVMBDABase, []vmtCase{
		{name: "disk"},
		{name: "image", patch: `{"spec":{"blockDeviceRef":{"kind":"VirtualImage"}}}`},
		{name: "cluster image", patch: `{"spec":{"blockDeviceRef":{"kind":"ClusterVirtualImage"}}}`},
		{name: "vm missing", patch: `{"spec":{"virtualMachineName":null}}`, want: []string{"spec.virtualMachineName FieldValueRequired"}},
		{name: "vm bad", patch: `{"spec":{"virtualMachineName":"a.b"}}`, want: []string{"spec.virtualMachineName FieldValueInvalid"}},
		{name: "ref missing", patch: `{"spec":{"blockDeviceRef":null}}`,
			want: []string{"spec.blockDeviceRef.kind FieldValueRequired", "spec.blockDeviceRef.name FieldValueRequired"}},
		{name: "ref bad", patch: `{"spec":{"blockDeviceRef":{"kind":"Disk","name":"-x"}}}`,
			want: []string{"spec.blockDeviceRef.kind FieldValueNotSupported", "spec.blockDeviceRef.name FieldValueInvalid"}},
	})
}

func TestVirtualMachineBlockDeviceAttachmentImmutable(t *testing.T) {
	got := vmtUpdate(t, "VirtualMachineBlockDeviceAttachment", vmtVMBDABase, `{}`,
		`{"spec":{"virtualMachineName":"vm2","blockDeviceRef":{"name":"other"}}}`)
	want := []string{"spec.blockDeviceRef FieldValueForbidden", "spec.virtualMachineName FieldValueForbidden"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q want %q", got, want)
	}
	if got := vmtUpdate(t, "VirtualMachineBlockDeviceAttachment", vmtVMBDABase, `{}`, `{"metadata":{"labels":{"a":"b"}}}`); len(got) != 0 {
		t.Fatalf("metadata change rejected: %v", got)
	}
}

func FuzzValidateVirtualMachineBlockDeviceAttachment(f *testing.F) {
	tkFuzzSeeds(f, "VirtualMachineBlockDeviceAttachment",
		vmtVMBDABase,
		`{"spec":{"virtualMachineName":"","blockDeviceRef":{"kind":"ClusterVirtualImage","name":"x"}}}`,
	)
}
