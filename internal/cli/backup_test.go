package cli

import (
	"strings"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// TestBackupCreateCommand: backup create names the backup after the VM unless --name is
// given, sends the target and mode, and refuses a missing target or an unknown mode before it
// sends anything.
func TestBackupCreateCommand(t *testing.T) {
	f := newFakeServer(t)
	putVM(f, "vm1")
	if _, errOut, code := f.run(t, "", "backup", "create", "vm1"); code == 0 || !strings.Contains(errOut, "--target") {
		t.Fatalf("no target: code %d, %q", code, errOut)
	}
	if _, errOut, code := f.run(t, "", "backup", "create", "vm1", "--target", "t", "--mode", "hot"); code == 0 || !strings.Contains(errOut, "--mode") {
		t.Fatalf("mode hot: code %d, %q", code, errOut)
	}
	out, errOut, code := f.run(t, "", "backup", "create", "vm1", "--target", "nightly", "--mode", "suspend", "--name", "b1")
	if code != 0 || strings.TrimSpace(out) != "b1" {
		t.Fatalf("backup create: code %d, out %q, err %q", code, out, errOut)
	}
	b := storedAs[v1alpha1.VirtualMachineBackup](t, f, "virtualmachinebackups", "b1")
	if b.Spec.VirtualMachineName != "vm1" || b.Spec.BackupTargetName != "nightly" || b.Spec.Mode != v1alpha1.BackupModeSuspend {
		t.Errorf("backup %+v", b.Spec)
	}
	if _, errOut, code := f.run(t, "", "backup", "create", "nosuch", "--target", "nightly"); code == 0 || !strings.Contains(errOut, "nosuch") {
		t.Errorf("backup of a missing VM: code %d, %q", code, errOut)
	}
	// Verify refuses a backup that has not completed.
	if _, errOut, code := f.run(t, "", "backup", "verify", "b1"); code == 0 || !strings.Contains(errOut, "only a Completed backup") {
		t.Errorf("verify of a pending backup: code %d, %q", code, errOut)
	}
}
