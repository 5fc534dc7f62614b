package registry

import (
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

func TestValidateBackupTarget(t *testing.T) {
	s := tkStrategy(t, "BackupTarget")
	bt := func(spec v1alpha1.BackupTargetSpec) *v1alpha1.BackupTarget {
		return &v1alpha1.BackupTarget{ObjectMeta: v1alpha1.ObjectMeta{Name: "b"}, Spec: spec}
	}
	dir := func(p string) *v1alpha1.BackupTargetDirectory { return &v1alpha1.BackupTargetDirectory{Path: p} }
	tkCheck(t, s.Validate(bt(v1alpha1.BackupTargetSpec{Type: "Directory", Directory: dir("/srv/backup")})))
	tkCheck(t, s.Validate(bt(v1alpha1.BackupTargetSpec{})), tkRequired("spec.type"))
	tkCheck(t, s.Validate(bt(v1alpha1.BackupTargetSpec{Type: "Directory"})), tkRequired("spec.directory.path"))
	tkCheck(t, s.Validate(bt(v1alpha1.BackupTargetSpec{Type: "Directory", Directory: dir("backup")})), tkInvalid("spec.directory.path"))
	tkCheck(t, s.Validate(bt(v1alpha1.BackupTargetSpec{Type: "Directory", Directory: dir("/srv/a,b")})), tkInvalid("spec.directory.path"))
	tkCheck(t, s.Validate(bt(v1alpha1.BackupTargetSpec{Type: "S3"})), tkNotSupported("spec.type"))

	clean := bt(v1alpha1.BackupTargetSpec{Type: "Directory", Directory: dir("/srv/backup/")})
	s.Default(clean)
	if clean.Spec.Directory.Path != "/srv/backup" {
		t.Errorf("default kept %q", clean.Spec.Directory.Path)
	}
	old := bt(v1alpha1.BackupTargetSpec{Type: "Directory", Directory: dir("/srv/a")})
	moved := bt(v1alpha1.BackupTargetSpec{Type: "Directory", Directory: dir("/srv/b")})
	tkCheck(t, s.ValidateUpdate(moved, old), tkForbidden("spec.directory.path"))
	tkCheck(t, s.ValidateUpdate(old, old))
}

func TestValidateVirtualMachineBackup(t *testing.T) {
	s := tkStrategy(t, "VirtualMachineBackup")
	b := func(spec v1alpha1.VirtualMachineBackupSpec) *v1alpha1.VirtualMachineBackup {
		o := &v1alpha1.VirtualMachineBackup{ObjectMeta: v1alpha1.ObjectMeta{Name: "b", Namespace: "p"}, Spec: spec}
		s.Default(o)
		return o
	}
	ok := b(v1alpha1.VirtualMachineBackupSpec{VirtualMachineName: "vm", BackupTargetName: "nightly"})
	tkCheck(t, s.Validate(ok))
	if ok.Spec.Mode != v1alpha1.BackupModeSnapshot {
		t.Errorf("default mode %q", ok.Spec.Mode)
	}
	tkCheck(t, s.Validate(b(v1alpha1.VirtualMachineBackupSpec{})), tkRequired("spec.virtualMachineName"), tkRequired("spec.backupTargetName"))
	tkCheck(t, s.Validate(b(v1alpha1.VirtualMachineBackupSpec{VirtualMachineName: "vm", BackupTargetName: "t", Mode: "stop"})), tkInvalid("spec.mode"))
	tkCheck(t, s.Validate(b(v1alpha1.VirtualMachineBackupSpec{VirtualMachineName: "vm", BackupTargetName: "t", Mode: "hot"})), tkNotSupported("spec.mode"))
	tkCheck(t, s.Validate(b(v1alpha1.VirtualMachineBackupSpec{VirtualMachineName: "vm", BackupTargetName: "t", BandwidthLimit: "50Mi"})))
	tkCheck(t, s.Validate(b(v1alpha1.VirtualMachineBackupSpec{VirtualMachineName: "vm", BackupTargetName: "t", BandwidthLimit: "100Ki"})), tkInvalid("spec.bandwidthLimit"))
	tkCheck(t, s.Validate(b(v1alpha1.VirtualMachineBackupSpec{VirtualMachineName: "vm", BackupTargetName: "t", BandwidthLimit: "fast"})), tkInvalid("spec.bandwidthLimit"))
	other := b(v1alpha1.VirtualMachineBackupSpec{VirtualMachineName: "vm2", BackupTargetName: "nightly", Mode: "suspend"})
	tkCheck(t, s.ValidateUpdate(other, ok), tkForbidden("spec.virtualMachineName"), tkForbidden("spec.mode"))
}

func FuzzValidateBackups(f *testing.F) {
	for _, s := range []string{
		`{"metadata":{"name":"nightly"},"spec":{"type":"Directory","directory":{"path":"/srv/backup"}}}`,
		`{"metadata":{"name":"x"},"spec":{"type":"Directory","directory":{"path":"../x"}}}`,
		`{"metadata":{"name":"b","namespace":"p"},"spec":{"virtualMachineName":"vm","backupTargetName":"nightly","mode":"suspend"}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		tkFuzz(t, "BackupTarget", data)
		tkFuzz(t, "VirtualMachineBackup", data)
	})
}
