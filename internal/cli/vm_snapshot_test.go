package cli

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// TestVMRestoreCommand: vm restore creates a Restore operation for the VM and the snapshot,
// in the mode asked for, and refuses an unknown mode before it sends anything.
func TestVMRestoreCommand(t *testing.T) {
	f := newFakeServer(t)
	if _, errOut, code := f.run(t, "", "vm", "restore", "vm1", "snap1", "--mode", "Sloppy"); code == 0 || !strings.Contains(errOut, "--mode") {
		t.Fatalf("bad mode: code %d, %q", code, errOut)
	}
	out, errOut, code := f.run(t, "", "vm", "restore", "vm1", "snap1", "--mode", "BestEffort")
	if code != 0 {
		t.Fatalf("vm restore: code %d, %q", code, errOut)
	}
	name := strings.TrimSpace(out)
	if !strings.HasPrefix(name, "vm1-restore-") {
		t.Fatalf("operation name %q", name)
	}
	b, _ := json.Marshal(f.get("virtualmachineoperations", "default", name))
	var op v1alpha1.VirtualMachineOperation
	if err := json.Unmarshal(b, &op); err != nil {
		t.Fatal(err)
	}
	if op.Spec.Type != v1alpha1.VMOPTypeRestore || op.Spec.VirtualMachineName != "vm1" || op.Spec.Restore == nil ||
		op.Spec.Restore.VirtualMachineSnapshotName != "snap1" || op.Spec.Restore.Mode != v1alpha1.SnapshotOperationModeBestEffort {
		t.Errorf("operation %+v", op.Spec)
	}
}

// TestVMSnapshotCommand: vm snapshot names the snapshot after the VM unless --name is given,
// and --crash-consistent turns off required consistency.
func TestVMSnapshotCommand(t *testing.T) {
	f := newFakeServer(t)
	f.put("virtualmachines", object{"apiVersion": v1alpha1.APIVersion, "kind": "VirtualMachine",
		"metadata": map[string]any{"name": "vm1", "namespace": "default"}})
	out, errOut, code := f.run(t, "", "vm", "snapshot", "vm1", "--name", "s1", "--crash-consistent")
	if code != 0 || strings.TrimSpace(out) != "s1" {
		t.Fatalf("vm snapshot: code %d, out %q, err %q", code, out, errOut)
	}
	b, _ := json.Marshal(f.get("virtualmachinesnapshots", "default", "s1"))
	var s v1alpha1.VirtualMachineSnapshot
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	if s.Spec.VirtualMachineName != "vm1" || s.Spec.RequiredConsistency == nil || *s.Spec.RequiredConsistency {
		t.Errorf("snapshot %+v", s.Spec)
	}
	if _, errOut, code := f.run(t, "", "vm", "snapshot", "nosuch"); code == 0 || !strings.Contains(errOut, "nosuch") {
		t.Errorf("snapshot of a missing VM: code %d, %q", code, errOut)
	}
}

// TestVMCloneCommand: vm clone renames the VM to NEW and its disks to NEW-DISK.
func TestVMCloneCommand(t *testing.T) {
	f := newFakeServer(t)
	if _, errOut, code := f.run(t, "", "vm", "clone", "a", "a"); code == 0 || !strings.Contains(errOut, "other than") {
		t.Fatalf("clone onto itself: %d %q", code, errOut)
	}
	out, errOut, code := f.run(t, "", "vm", "clone", "tpl", "web1")
	if code != 0 {
		t.Fatalf("vm clone: %d %q", code, errOut)
	}
	b, _ := json.Marshal(f.get("virtualmachineoperations", "default", strings.TrimSpace(out)))
	var op v1alpha1.VirtualMachineOperation
	if err := json.Unmarshal(b, &op); err != nil {
		t.Fatal(err)
	}
	cl := op.Spec.Clone
	if op.Spec.Type != v1alpha1.VMOPTypeClone || op.Spec.VirtualMachineName != "tpl" || cl == nil || cl.Mode != v1alpha1.SnapshotOperationModeStrict ||
		len(cl.NameReplacement) != 1 || cl.NameReplacement[0].To != "web1" || cl.Customization == nil || cl.Customization.NamePrefix != "web1-" {
		t.Errorf("operation %+v", op.Spec)
	}
}
