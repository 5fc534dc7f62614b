package cli

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

// storedAs decodes the object the fake server keeps under resource/default/name into a T.
func storedAs[T any](t *testing.T, f *fakeServer, resource, name string) T {
	t.Helper()
	b, _ := json.Marshal(f.get(resource, "default", name))
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// putVM stores a bare VirtualMachine of the default project.
func putVM(f *fakeServer, name string) {
	f.put("virtualmachines", object{"apiVersion": v1alpha1.APIVersion, "kind": "VirtualMachine",
		"metadata": map[string]any{"name": name, "namespace": "default"}})
}

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
	op := storedAs[v1alpha1.VirtualMachineOperation](t, f, "virtualmachineoperations", name)
	if op.Spec.Type != v1alpha1.VMOPTypeRestore || op.Spec.VirtualMachineName != "vm1" || op.Spec.Restore == nil ||
		op.Spec.Restore.VirtualMachineSnapshotName != "snap1" || op.Spec.Restore.Mode != v1alpha1.SnapshotOperationModeBestEffort {
		t.Errorf("operation %+v", op.Spec)
	}
}

// TestVMSnapshotCommand: vm snapshot names the snapshot after the VM unless --name is given,
// and --crash-consistent turns off required consistency.
func TestVMSnapshotCommand(t *testing.T) {
	f := newFakeServer(t)
	putVM(f, "vm1")
	out, errOut, code := f.run(t, "", "vm", "snapshot", "vm1", "--name", "s1", "--crash-consistent")
	if code != 0 || strings.TrimSpace(out) != "s1" {
		t.Fatalf("vm snapshot: code %d, out %q, err %q", code, out, errOut)
	}
	s := storedAs[v1alpha1.VirtualMachineSnapshot](t, f, "virtualmachinesnapshots", "s1")
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
	op := storedAs[v1alpha1.VirtualMachineOperation](t, f, "virtualmachineoperations", strings.TrimSpace(out))
	cl := op.Spec.Clone
	if op.Spec.Type != v1alpha1.VMOPTypeClone || op.Spec.VirtualMachineName != "tpl" || cl == nil || cl.Mode != v1alpha1.SnapshotOperationModeStrict ||
		len(cl.NameReplacement) != 1 || cl.NameReplacement[0].To != "web1" || cl.Customization == nil || cl.Customization.NamePrefix != "web1-" {
		t.Errorf("operation %+v", op.Spec)
	}
}

// TestPollPhase: pollPhase reads the object until done says it is done, and when the wait ends
// first, says what it waited for and the phase it last saw.
func TestPollPhase(t *testing.T) {
	f := newFakeServer(t)
	f.put("virtualmachinesnapshots", object{"apiVersion": v1alpha1.APIVersion, "kind": "VirtualMachineSnapshot",
		"metadata": map[string]any{"name": "s1", "namespace": "default"}, "status": map[string]any{"phase": "InProgress"}})
	c, err := client.New(client.Config{Server: f.URL()})
	if err != nil {
		t.Fatal(err)
	}
	phase := func(s *v1alpha1.VirtualMachineSnapshot) string { return string(s.Status.Phase) }
	calls := 0
	err = pollPhase(context.Background(), c, "virtualmachinesnapshots", "snapshot", "default", "s1", time.Millisecond, phase,
		func(s *v1alpha1.VirtualMachineSnapshot) (bool, error) {
			calls++
			return calls == 3, nil
		})
	if err != nil || calls != 3 {
		t.Fatalf("done on the third read: err %v, %d reads", err, calls)
	}
	// The wait ends between two reads (ended from inside the second, so that it never ends
	// during a read, whose own error would be returned as it is).
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	calls = 0
	err = pollPhase(ctx, c, "virtualmachinesnapshots", "snapshot", "default", "s1", time.Millisecond, phase,
		func(*v1alpha1.VirtualMachineSnapshot) (bool, error) {
			if calls++; calls == 2 {
				cancel()
			}
			return false, nil
		})
	if err == nil || err.Error() != "snapshot s1: context canceled (it is InProgress)" || !errors.Is(err, context.Canceled) || calls != 2 {
		t.Errorf("ended: %v after %d reads", err, calls)
	}
	if err := pollPhase(context.Background(), c, "virtualmachinesnapshots", "snapshot", "default", "nosuch", time.Millisecond, phase,
		func(*v1alpha1.VirtualMachineSnapshot) (bool, error) { return true, nil }); err == nil {
		t.Errorf("a missing object must fail")
	}
}
