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
	tkCheck(t, s.Validate(b(v1alpha1.VirtualMachineBackupSpec{VirtualMachineName: "vm", BackupTargetName: "t", Mode: "stop"})))
	tkCheck(t, s.Validate(b(v1alpha1.VirtualMachineBackupSpec{VirtualMachineName: "vm", BackupTargetName: "t", Mode: "hot"})), tkNotSupported("spec.mode"))
	tkCheck(t, s.Validate(b(v1alpha1.VirtualMachineBackupSpec{VirtualMachineName: "vm", BackupTargetName: "t", BandwidthLimit: "50Mi"})))
	tkCheck(t, s.Validate(b(v1alpha1.VirtualMachineBackupSpec{VirtualMachineName: "vm", BackupTargetName: "t", BandwidthLimit: "100Ki"})), tkInvalid("spec.bandwidthLimit"))
	tkCheck(t, s.Validate(b(v1alpha1.VirtualMachineBackupSpec{VirtualMachineName: "vm", BackupTargetName: "t", BandwidthLimit: "fast"})), tkInvalid("spec.bandwidthLimit"))
	other := b(v1alpha1.VirtualMachineBackupSpec{VirtualMachineName: "vm2", BackupTargetName: "nightly", Mode: "suspend"})
	tkCheck(t, s.ValidateUpdate(other, ok), tkForbidden("spec.virtualMachineName"), tkForbidden("spec.mode"))
}

func TestValidateBackupSchedule(t *testing.T) {
	s := tkStrategy(t, "BackupSchedule")
	b := func(spec v1alpha1.BackupScheduleSpec) *v1alpha1.BackupSchedule {
		o := &v1alpha1.BackupSchedule{ObjectMeta: v1alpha1.ObjectMeta{Name: "s", Namespace: "p"}, Spec: spec}
		s.Default(o)
		return o
	}
	base := v1alpha1.BackupScheduleSpec{VirtualMachineName: "vm", BackupTargetName: "nightly", Schedule: "0 2 * * *"}
	tkCheck(t, s.Validate(b(base)))
	for _, ok := range []string{"@daily", "@every 6h", "*/15 * * * 1-5"} {
		sp := base
		sp.Schedule = ok
		tkCheck(t, s.Validate(b(sp)))
	}
	for _, bad := range []string{"every day", "0 2 * *", "@every 10s", "CRON_TZ=Europe/Berlin 0 2 * * *", "61 * * * *"} {
		sp := base
		sp.Schedule = bad
		tkCheck(t, s.Validate(b(sp)), tkInvalid("spec.schedule"))
	}
	sp := base
	sp.Schedule, sp.Mode, sp.Retention.KeepDaily = "", "halt", -1
	tkCheck(t, s.Validate(b(sp)), tkRequired("spec.schedule"), tkNotSupported("spec.mode"), tkInvalid("spec.retention.keepDaily"))
	moved := base
	moved.VirtualMachineName = "other"
	tkCheck(t, s.ValidateUpdate(b(moved), b(base)), tkForbidden("spec.virtualMachineName"))
	changed := base
	changed.Schedule, changed.Retention.KeepLast = "@hourly", 3
	tkCheck(t, s.ValidateUpdate(b(changed), b(base)))
}

func FuzzValidateBackups(f *testing.F) {
	for _, s := range []string{
		`{"metadata":{"name":"nightly"},"spec":{"type":"Directory","directory":{"path":"/srv/backup"}}}`,
		`{"metadata":{"name":"x"},"spec":{"type":"Directory","directory":{"path":"../x"}}}`,
		`{"metadata":{"name":"b","namespace":"p"},"spec":{"virtualMachineName":"vm","backupTargetName":"nightly","mode":"suspend"}}`,
		`{"metadata":{"name":"s","namespace":"p"},"spec":{"virtualMachineName":"vm","backupTargetName":"nightly","schedule":"@every 1h","retention":{"keepLast":3}}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		tkFuzz(t, "BackupTarget", data)
		tkFuzz(t, "VirtualMachineBackup", data)
		tkFuzz(t, "BackupSchedule", data)
	})
}
