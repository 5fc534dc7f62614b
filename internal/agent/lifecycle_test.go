package agent_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/storage"
	"github.com/rakhsh/rakhsh/internal/testutil"
)

const bootTimeout = 3 * time.Minute

// TestLifecycle drives one VM through start, stop, start, restart, pause, resume, an agent
// restart (re-adoption), a guest-initiated power-off and deletion, with real QEMU.
func TestLifecycle(t *testing.T) {
	img := guestImage(t)
	e := newEnv(t)
	v := e.runGuest(img)
	uid := v.UID

	if v.Status.NodeName != "node1" {
		t.Fatalf("nodeName = %q", v.Status.NodeName)
	}
	// SoftwareEmulation says what the node chose (KVM where the probe boots under it).
	var node v1alpha1.Node
	if err := e.c.Get(context.Background(), "nodes", "", "node1", &node); err != nil {
		t.Fatal(err)
	}
	kvmCond := v1alpha1.FindCondition(node.Status.Conditions, v1alpha1.NodeConditionKVM)
	if kvmCond == nil || (kvmCond.Status == v1alpha1.ConditionTrue) != (node.Status.Accelerator == v1alpha1.AcceleratorKVM) || kvmCond.Message == "" {
		t.Fatalf("node accelerator %q with KVM condition %+v", node.Status.Accelerator, kvmCond)
	}
	wantEmu := v1alpha1.ConditionTrue
	if node.Status.Accelerator == v1alpha1.AcceleratorKVM {
		wantEmu = v1alpha1.ConditionFalse
	}
	if c := v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionSoftwareEmulation); c == nil || c.Status != wantEmu {
		t.Errorf("SoftwareEmulation condition = %+v, want %s on a node with accelerator %s (%s)", c, wantEmu, node.Status.Accelerator, kvmCond.Message)
	}
	e.waitSerial(uid, "RAKHSH-GUEST: ready", 1, bootTimeout)
	pid1 := testutil.QEMUPIDs(e.dir)[uid]
	requireQEMUUser(t, pid1) // it booted as the unprivileged user, with passed descriptors

	// Stop: the guest powers off on the ACPI button; the VM is released from its node.
	op := e.op("vm1", v1alpha1.VMOPTypeStop, false)
	e.waitOp(op, v1alpha1.VMOPPhaseCompleted, time.Minute)
	v = e.waitVM("vm1", 30*time.Second, "Stopped and released", func(v *v1alpha1.VirtualMachine) bool {
		return v.Status.Phase == v1alpha1.VMPhaseStopped && v.Status.NodeName == ""
	})
	if v.Status.LastExit == nil || v.Status.LastExit.Reason != v1alpha1.ExitStopped {
		t.Errorf("lastExit = %+v, want Stopped", v.Status.LastExit)
	}
	if !strings.Contains(e.serialLog(uid), "RAKHSH-GUEST: powerdown") {
		t.Errorf("the guest did not see the power button")
	}
	if n := testutil.CountQEMU(uid); n != 0 {
		t.Fatalf("%d QEMU processes after stop", n)
	}

	// Start again.
	op = e.op("vm1", v1alpha1.VMOPTypeStart, false)
	e.waitOp(op, v1alpha1.VMOPPhaseCompleted, time.Minute)
	e.waitSerial(uid, "RAKHSH-GUEST: ready", 2, bootTimeout)

	// Graceful restart: a new QEMU process boots again.
	pid2 := testutil.QEMUPIDs(e.dir)[uid]
	if pid2 == pid1 || pid2 == 0 {
		t.Fatalf("pid after start = %d (before stop %d)", pid2, pid1)
	}
	op = e.op("vm1", v1alpha1.VMOPTypeRestart, false)
	e.waitOp(op, v1alpha1.VMOPPhaseCompleted, 2*time.Minute)
	e.waitSerial(uid, "RAKHSH-GUEST: ready", 3, bootTimeout)

	// Pause and resume through the annotation.
	e.annotate("vm1", "true")
	e.waitVM("vm1", 30*time.Second, "Pause", phaseIs(v1alpha1.VMPhasePause))
	e.annotate("vm1", "")
	e.waitVM("vm1", 30*time.Second, "Running", phaseIs(v1alpha1.VMPhaseRunning))

	// The agent goes away and comes back: the same QEMU is adopted.
	pid3 := testutil.QEMUPIDs(e.dir)[uid]
	e.stopAgent()
	// The unprivileged QEMU writes no pidfile: the agent does, right after starting it. An
	// agent killed in between finds the QEMU by its -uuid (and writes the pidfile then).
	pidfile := filepath.Join(e.dir, "run", "vms", uid, "qemu.pid")
	if err := os.Remove(pidfile); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	e.startAgent()
	time.Sleep(2 * time.Second)
	if got := testutil.QEMUPIDs(e.dir)[uid]; got != pid3 || testutil.CountQEMU(uid) != 1 {
		t.Fatalf("after the agent restart: pid %d (was %d), %d processes", got, pid3, testutil.CountQEMU(uid))
	}
	e.waitVM("vm1", 5*time.Second, "Running", phaseIs(v1alpha1.VMPhaseRunning))

	// The guest powers itself off: AlwaysOnUnlessStoppedManually keeps it stopped.
	e.typeOnConsole(uid, "")
	e.typeOnConsole(uid, "poweroff -f")
	v = e.waitVM("vm1", time.Minute, "Stopped after guest power-off", func(v *v1alpha1.VirtualMachine) bool {
		return v.Status.Phase == v1alpha1.VMPhaseStopped && v.Status.NodeName == ""
	})
	if v.Status.LastExit == nil || v.Status.LastExit.Reason != v1alpha1.ExitGuestShutdown {
		t.Fatalf("lastExit = %+v, want GuestShutdown", v.Status.LastExit)
	}
	if v.Status.PowerRequest == nil || v.Status.PowerRequest.State != v1alpha1.PowerStateStopped {
		t.Fatalf("powerRequest = %+v, want Stopped", v.Status.PowerRequest)
	}

	// Start, then delete: QEMU stops and the run directory goes.
	op = e.op("vm1", v1alpha1.VMOPTypeStart, false)
	e.waitOp(op, v1alpha1.VMOPPhaseCompleted, time.Minute)
	if err := e.c.Delete(e.ctx(), "virtualmachines", "default", "vm1"); err != nil {
		t.Fatal(err)
	}
	e.waitVM("vm1", time.Minute, "deleted", func(v *v1alpha1.VirtualMachine) bool { return v == nil })
	if n := testutil.CountQEMU(uid); n != 0 {
		t.Fatalf("%d QEMU processes after delete", n)
	}
	if _, err := os.Stat(storage.VMRunDir(e.dir, uid)); !isGone(err) {
		t.Fatalf("run dir left after delete: %v", err)
	}
}

func (e *env) annotate(name, paused string) {
	e.t.Helper()
	var val any = paused
	if paused == "" {
		val = nil
	}
	body := map[string]any{"metadata": map[string]any{"annotations": map[string]any{"virtualization.rakhsh.io/paused": val}}}
	if err := e.c.Patch(e.ctx(), "virtualmachines", "default", name, mustJSON(body), nil); err != nil {
		e.t.Fatal(err)
	}
}

// TestEFIBoot boots the test guest with UEFI firmware: the agent creates the VM's variable
// store from the OVMF template.
func TestEFIBoot(t *testing.T) {
	img := guestImage(t)
	if _, err := os.Stat("/usr/share/OVMF/OVMF_CODE_4M.fd"); err != nil {
		skipOrFail(t, "OVMF missing: apt-get install ovmf")
	}
	e := newEnv(t)
	e.readyDisk("efi", img)
	v := e.createVMWith("efi", v1alpha1.RunPolicyAlwaysOnUnlessStoppedManually, func(v *v1alpha1.VirtualMachine) {
		v.Spec.Bootloader = v1alpha1.BootloaderEFI
	}, "efi")
	e.waitVM("efi", 30*time.Second, "Running", phaseIs(v1alpha1.VMPhaseRunning))
	e.waitSerial(v.UID, "RAKHSH-GUEST: ready", 1, bootTimeout)
	if _, err := os.Stat(storage.VMRunDir(e.dir, v.UID) + "/efivars.fd"); err != nil {
		t.Fatalf("no variable store: %v", err)
	}
}
