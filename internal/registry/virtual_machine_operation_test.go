package registry

import (
	"reflect"
	"testing"
)

const vmtVMOPBase = `{"apiVersion":"virtualization.rakhsh.io/v1alpha1","kind":"VirtualMachineOperation",
 "metadata":{"name":"op1","namespace":"p1"},"spec":{"type":"Restart","virtualMachineName":"vm1"}}`

func TestVirtualMachineOperationValidate(t *testing.T) {
	cases := []vmtCase{
		{name: "restart"},
		{name: "stop forced", patch: `{"spec":{"type":"Stop","force":true}}`},
		{name: "start", patch: `{"spec":{"type":"Start","force":false}}`},
		{name: "start forced", patch: `{"spec":{"type":"Start","force":true}}`},
		{name: "hibernate", patch: `{"spec":{"type":"Hibernate"}}`},
		{name: "migrate", patch: `{"spec":{"type":"Migrate","force":true,"migrate":{"nodeSelector":{"zone":"a"}}}}`},
		{name: "evict", patch: `{"spec":{"type":"Evict","evict":{"nodeSelector":{"zone":"a"}}}}`},
		{name: "restore", patch: `{"spec":{"type":"Restore","restore":{"mode":"DryRun","virtualMachineSnapshotName":"snap1"}}}`},
		{name: "clone", patch: `{"spec":{"type":"Clone","clone":{"mode":"BestEffort","customization":{"namePrefix":"copy-","nameSuffix":"-2"},
			"nameReplacement":[{"from":{"kind":"VirtualDisk","name":"root"},"to":"root-copy"},{"from":{"name":"vm1"},"to":"vm2"}]}}}`},

		{name: "type missing", patch: `{"spec":{"type":null}}`, want: []string{"spec.type FieldValueRequired"}},
		{name: "type bad", patch: `{"spec":{"type":"Reboot"}}`, want: []string{"spec.type FieldValueNotSupported"}},
		{name: "vm missing", patch: `{"spec":{"virtualMachineName":null}}`, want: []string{"spec.virtualMachineName FieldValueRequired"}},
		{name: "vm bad", patch: `{"spec":{"virtualMachineName":"VM"}}`, want: []string{"spec.virtualMachineName FieldValueInvalid"}},
		{name: "hibernate forced", patch: `{"spec":{"type":"Hibernate","force":true}}`, want: []string{"spec.force FieldValueForbidden"}},
		{name: "restore missing", patch: `{"spec":{"type":"Restore"}}`, want: []string{"spec.restore FieldValueRequired"}},
		{name: "restore fields", patch: `{"spec":{"type":"Restore","restore":{"mode":"Loose"}}}`,
			want: []string{"spec.restore.mode FieldValueNotSupported", "spec.restore.virtualMachineSnapshotName FieldValueRequired"}},
		{name: "restore from backup", patch: `{"spec":{"type":"Restore","restore":{"mode":"Strict","virtualMachineBackupName":"monday"}}}`},
		{name: "restore from both", patch: `{"spec":{"type":"Restore","restore":{"mode":"Strict","virtualMachineSnapshotName":"s","virtualMachineBackupName":"b"}}}`,
			want: []string{"spec.restore.virtualMachineBackupName FieldValueForbidden"}},
		{name: "restore backup bad", patch: `{"spec":{"type":"Restore","restore":{"mode":"Strict","virtualMachineBackupName":"B"}}}`,
			want: []string{"spec.restore.virtualMachineBackupName FieldValueInvalid"}},
		{name: "restore on restart", patch: `{"spec":{"restore":{"mode":"Strict","virtualMachineSnapshotName":"s"}}}`, want: []string{"spec.restore FieldValueForbidden"}},
		{name: "clone missing", patch: `{"spec":{"type":"Clone"}}`, want: []string{"spec.clone FieldValueRequired"}},
		{name: "clone no names", patch: `{"spec":{"type":"Clone","clone":{"mode":"Strict","customization":{}}}}`, want: []string{"spec.clone FieldValueRequired"}},
		{name: "clone bad", patch: `{"spec":{"type":"Clone","clone":{"customization":{"namePrefix":"-x","nameSuffix":"x-"},
			"nameReplacement":[{"from":{"kind":"disk","name":""},"to":"` + vmtLong(60) + `"}]}}}`,
			want: []string{"spec.clone.mode FieldValueRequired", "spec.clone.customization.namePrefix FieldValueInvalid",
				"spec.clone.customization.nameSuffix FieldValueInvalid", "spec.clone.nameReplacement[0].from.kind FieldValueInvalid",
				"spec.clone.nameReplacement[0].from.name FieldValueRequired", "spec.clone.nameReplacement[0].to FieldValueInvalid"}},
		{name: "clone on stop", patch: `{"spec":{"type":"Stop","clone":{"mode":"Strict","customization":{"namePrefix":"a"}}}}`, want: []string{"spec.clone FieldValueForbidden"}},
		{name: "migrate on start", patch: `{"spec":{"type":"Start","migrate":{}}}`, want: []string{"spec.migrate FieldValueForbidden"}},
		{name: "migrate and evict", patch: `{"spec":{"type":"Evict","migrate":{},"evict":{"nodeSelector":{"a b":"c"}}}}`,
			want: []string{"spec.evict FieldValueForbidden", "spec.evict.nodeSelector FieldValueInvalid"}},
	}
	vmtRunCases(t, "VirtualMachineOperation", vmtVMOPBase, cases)
}

func vmtLong(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = 'a'
	}
	return string(b)
}

func TestVirtualMachineOperationImmutable(t *testing.T) {
	base := `{"metadata":{"name":"op","namespace":"p"},"spec":{"type":"Evict","virtualMachineName":"vm1","evict":{"nodeSelector":{"a":"b"}}}}`
	if got := vmtUpdate(t, "VirtualMachineOperation", base, `{}`, `{"metadata":{"labels":{"x":"y"}}}`); len(got) != 0 {
		t.Fatalf("metadata change rejected: %v", got)
	}
	got := vmtUpdate(t, "VirtualMachineOperation", base, `{}`,
		`{"spec":{"type":"Migrate","virtualMachineName":"vm2","force":true,"evict":{"nodeSelector":{"a":"c"}}}}`)
	want := []string{"spec.evict FieldValueForbidden", "spec.force FieldValueForbidden", "spec.type FieldValueForbidden", "spec.virtualMachineName FieldValueForbidden"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q want %q", got, want)
	}
}

func FuzzValidateVirtualMachineOperation(f *testing.F) {
	tkFuzzSeeds(f, "VirtualMachineOperation",
		vmtVMOPBase,
		`{"spec":{"type":"Clone","virtualMachineName":"a","clone":{"mode":"DryRun","nameReplacement":[{"from":{"name":"a"},"to":"b"}]}}}`,
		`{"spec":{"type":"Restore","virtualMachineName":"a","force":true,"restore":{"mode":"Strict","virtualMachineSnapshotName":"s"},"migrate":{"nodeSelector":{"k":"v"}}}}`,
	)
}
