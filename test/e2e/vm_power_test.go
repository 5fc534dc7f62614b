package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/qemu"
	"github.com/rakhsh/rakhsh/internal/testutil"
)

// powerIgnoreACPI stops the guest's acpid through its serial console, so the ACPI power
// button does nothing: a guest that ignores graceful requests.
func powerIgnoreACPI(t *testing.T, s *Serve, name, uid string, n int) {
	t.Helper()
	vmConsoleType(t, s, uid, "")
	vmConsoleType(t, s, uid, "kill $(cat /run/acpid.pid) && echo ACPI-$((40+2))-IGNORED")
	vmWaitSerial(t, s, name, "ACPI-42-IGNORED", n)
}

// timedCLI runs a CLI command that must succeed and returns how long it took.
func timedCLI(t *testing.T, s *Serve, args ...string) time.Duration {
	t.Helper()
	start := time.Now()
	s.MustCLI("", args...)
	return time.Since(start)
}

// TestPowerGracefulStaysGraceful: with a guest that ignores the ACPI power button and a grace
// period of 6 s, a graceful stop waits out the grace period, a forced stop does not, and a
// graceful stop after a forced one waits again (a forced request once made every later
// graceful one forced: a guest that is never asked loses data). A graceful restart returns
// only once the new QEMU runs; a forced restart during a pending graceful one resets at once.
func TestPowerGracefulStaysGraceful(t *testing.T) {
	sideBySide(t)
	vmGuestDir(t)
	s := vmServe(t)
	vmSetupGuest(t, s, "root")
	m := strings.Replace(vmManifest("vm1", "root", "AlwaysOnUnlessStoppedManually", "256Mi"), "terminationGracePeriodSeconds: 30", "terminationGracePeriodSeconds: 6", 1)
	s.MustCLI(m, "apply", "-f", "-")
	v := vmWait(t, s, "vm1", time.Minute, "Running", vmPhase(v1alpha1.VMPhaseRunning))
	uid := v.UID
	boots := 1
	up := func() {
		t.Helper()
		vmWaitSerial(t, s, "vm1", "RAKHSH-GUEST: ready", boots)
		powerIgnoreACPI(t, s, "vm1", uid, boots)
	}
	const grace = 6 * time.Second
	up()

	// logs -f follows the live console.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	follow := exec.CommandContext(ctx, rakhshBin(t), "logs", "vm", "vm1", "-f")
	follow.Env = append(os.Environ(), "RAKHSH_SERVER="+s.Server())
	var followed lockedBuffer
	follow.Stdout = &followed
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	vmConsoleType(t, s, uid, "echo FOLLOW-$((40+2))-LIVE")
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(followed.String(), "FOLLOW-42-LIVE") && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	cancel()
	_ = follow.Wait()
	if out := followed.String(); !strings.Contains(out, "RAKHSH-GUEST: ready") || !strings.Contains(out, "FOLLOW-42-LIVE") {
		t.Errorf("logs -f lacks the kept log or the live line:\n%s", out)
	}

	if d := timedCLI(t, s, "vm", "stop", "vm1", "--wait"); d < grace-time.Second {
		t.Errorf("graceful stop of a guest that ignores ACPI took %s, want the grace period %s", d, grace)
	}
	s.MustCLI("", "vm", "start", "vm1", "--wait")
	boots++
	up()
	if d := timedCLI(t, s, "vm", "stop", "vm1", "--force", "--wait"); d >= grace {
		t.Errorf("forced stop took %s: it waited for the guest", d)
	}
	s.MustCLI("", "vm", "start", "vm1", "--wait")
	boots++
	up()
	if v := vmGet(t, s, "vm1"); v.Status.PowerRequest == nil || v.Status.PowerRequest.Force {
		t.Errorf("after a start the power request is %+v: a forced stop's force stayed", v.Status.PowerRequest)
	}
	if d := timedCLI(t, s, "vm", "stop", "vm1", "--wait"); d < grace-time.Second {
		t.Errorf("graceful stop after a forced one took %s, want the grace period %s: it was forced", d, grace)
	}

	// Graceful restart: the operation completes after the new QEMU runs, not before.
	s.MustCLI("", "vm", "start", "vm1", "--wait")
	boots++
	up()
	pid := testutil.QEMUPIDs(s.DataDir)[uid]
	if d := timedCLI(t, s, "vm", "restart", "vm1", "--wait"); d < grace-time.Second {
		t.Errorf("graceful restart of a guest that ignores ACPI completed after %s, before its grace period %s ended", d, grace)
	}
	if p := testutil.QEMUPIDs(s.DataDir)[uid]; p == pid || p == 0 {
		t.Errorf("graceful restart completed with QEMU pid %d (before: %d): no new run", p, pid)
	}
	boots++
	up()

	// A forced restart during a pending graceful one takes over at once.
	pid = testutil.QEMUPIDs(s.DataDir)[uid]
	s.MustCLI("", "vm", "restart", "vm1")
	time.Sleep(500 * time.Millisecond) // the graceful restart has pressed the button
	if d := timedCLI(t, s, "vm", "restart", "vm1", "--force", "--wait"); d >= grace {
		t.Errorf("forced restart during a graceful one took %s: it waited out the grace period", d)
	}
	boots++
	vmWaitSerial(t, s, "vm1", "RAKHSH-GUEST: ready", boots)
	if p := testutil.QEMUPIDs(s.DataDir)[uid]; p == 0 {
		t.Errorf("no QEMU after the forced restart (before: %d)", pid)
	}
	s.MustCLI("", "vm", "stop", "vm1", "--force", "--wait")
	s.MustCLI("", "delete", "vm", "vm1")
	vmWait(t, s, "vm1", time.Minute, "deleted", func(v *v1alpha1.VirtualMachine) bool { return v == nil })
}

// opsOf returns the VM's operations by name.
func opsOf(t *testing.T, s *Serve, names ...string) []v1alpha1.VirtualMachineOperation {
	t.Helper()
	var out []v1alpha1.VirtualMachineOperation
	for _, n := range names {
		var op v1alpha1.VirtualMachineOperation
		if err := s.Client().Get(context.Background(), "virtualmachineoperations", "default", n, &op); err != nil {
			t.Fatal(err)
		}
		out = append(out, op)
	}
	return out
}

func finalPhase(p v1alpha1.VMOPPhase) bool {
	return p == v1alpha1.VMOPPhaseCompleted || p == v1alpha1.VMOPPhaseFailed || p == v1alpha1.VMOPPhaseSuperseded
}

// TestOperationOrderBackToBack: two power operations made back to back (within one second,
// where their timestamps tie and their names sort either way) end in the state of the later
// one, and only the earlier one is ever superseded. 20 rounds of each pair on a VM without a
// disk and a grace period of 0, so each round takes a moment.
func TestOperationOrderBackToBack(t *testing.T) {
	sideBySide(t)
	vmGuestDir(t)
	s := vmServe(t)
	applyDocs(s, vmDoc{Name: "o", Policy: "AlwaysOnUnlessStoppedManually", Memory: "64Mi", Grace: "0"}.String())
	v := vmWait(t, s, "o", time.Minute, "Running", vmPhase(v1alpha1.VMPhaseRunning))
	uid := v.UID
	settle := func(round int, pair string, want v1alpha1.VirtualMachinePhase, ops []string) {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for {
			all := opsOf(t, s, ops...)
			done := true
			for _, op := range all {
				done = done && finalPhase(op.Status.Phase)
			}
			v := vmGet(t, s, "o")
			if done && v.Status.Phase == want {
				// The later operation is never the superseded one; the earlier one may be.
				if all[1].Status.Phase == v1alpha1.VMOPPhaseSuperseded {
					t.Fatalf("round %d %s: the later operation %s was superseded (by the earlier %s, created at revision %s vs %s)",
						round, pair, all[1].Name, all[0].Name, all[0].CreationRevision, all[1].CreationRevision)
				}
				if all[1].Status.Phase != v1alpha1.VMOPPhaseCompleted {
					b, _ := json.Marshal(all[1].Status)
					t.Fatalf("round %d %s: the later operation %s: %s", round, pair, all[1].Name, b)
				}
				if a, b := all[0].CreationRevision, all[1].CreationRevision; a == "" || b == "" || !all[0].CreatedBefore(&all[1].ObjectMeta) {
					t.Fatalf("round %d %s: creation revisions %q and %q do not order the operations", round, pair, a, b)
				}
				n := testutil.CountQEMU(uid)
				if (want == v1alpha1.VMPhaseRunning) != (n == 1) || n > 1 {
					t.Fatalf("round %d %s: %d QEMU processes with the VM %s", round, pair, n, want)
				}
				return
			}
			if time.Now().After(deadline) {
				b, _ := json.MarshalIndent(map[string]any{"vm": v.Status, "ops": all}, "", "  ")
				t.Fatalf("round %d %s: not settled in %s within a minute:\n%s", round, pair, want, b)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	pairs := []struct {
		first, second string
		want          v1alpha1.VirtualMachinePhase
	}{
		{"stop", "start", v1alpha1.VMPhaseRunning},
		{"start", "stop", v1alpha1.VMPhaseStopped},
		{"restart", "stop", v1alpha1.VMPhaseStopped},
	}
	for _, p := range pairs {
		for round := 1; round <= 20; round++ {
			// Each round starts from a running VM.
			if v := vmGet(t, s, "o"); v.Status.Phase != v1alpha1.VMPhaseRunning {
				s.MustCLI("", "vm", "start", "o", "--wait")
			}
			a := strings.TrimSpace(s.MustCLI("", "vm", p.first, "o"))
			b := strings.TrimSpace(s.MustCLI("", "vm", p.second, "o"))
			settle(round, p.first+"→"+p.second, p.want, []string{a, b})
		}
	}
	// Superseded operations name the one that superseded them and its creation revision.
	l, err := s.Client().List(context.Background(), "virtualmachineoperations", "default", client.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	superseded := 0
	for _, raw := range l.Items {
		var op v1alpha1.VirtualMachineOperation
		if err := json.Unmarshal(raw, &op); err != nil {
			t.Fatal(err)
		}
		if op.Status.Phase != v1alpha1.VMOPPhaseSuperseded {
			continue
		}
		superseded++
		c := v1alpha1.FindCondition(op.Status.Conditions, v1alpha1.VMOPConditionCompleted)
		if c == nil || !strings.Contains(c.Message, "superseded by the newer operation") || !strings.Contains(c.Message, fmt.Sprintf("after this one's %s", op.CreationRevision)) {
			t.Errorf("superseded %s: condition %+v", op.Name, c)
		}
	}
	t.Logf("%d of %d operations were superseded", superseded, len(l.Items))

	// A dry-run clone changes nothing and says what it would make.
	s.MustCLI(`apiVersion: virtualization.rakhsh.io/v1alpha1
kind: VirtualMachineOperation
metadata: {name: o-clone}
spec: {type: Clone, virtualMachineName: o, clone: {mode: DryRun, customization: {namePrefix: c-}}}
`, "apply", "-f", "-")
	s.MustCLI("", "wait", "vmop", "o-clone", "--for", "phase=Completed", "--timeout", "30s")
	op := opsOf(t, s, "o-clone")[0]
	if c := v1alpha1.FindCondition(op.Status.Conditions, v1alpha1.VMOPConditionCompleted); c == nil ||
		!strings.Contains(c.Message, "dry run") || vmGet(t, s, "c-o") != nil {
		t.Errorf("dry-run Clone operation: %+v", op.Status)
	}
	s.MustCLI("", "delete", "vm", "o")
	vmWait(t, s, "o", time.Minute, "deleted", func(v *v1alpha1.VirtualMachine) bool { return v == nil })
}

// TestPendingChangesShown: a change that needs a restart shows in the status as pending, and
// status.resources keeps saying what runs, until the restart applies it.
func TestPendingChangesShown(t *testing.T) { eachServeMode(t, testPendingChangesShown) }

func testPendingChangesShown(t *testing.T, mode ServeMode) {
	vmGuestDir(t)
	s := vmServeMode(t, mode)
	manifest := func(mem string, cores int) string {
		return vmDoc{Name: "p", Policy: "AlwaysOnUnlessStoppedManually", CPU: fmt.Sprintf("{cores: %d}", cores), Memory: mem, Grace: "0"}.String()
	}
	s.MustCLI(manifest("64Mi", 1), "apply", "-f", "-")
	v := vmWait(t, s, "p", time.Minute, "Running", vmPhase(v1alpha1.VMPhaseRunning))
	uid := v.UID
	// cmdlineMem is QEMU's -m in MiB, without the padding a TCG host with QEMU < 9.0 adds
	// (qemu.MemoryPadKiB), which status.resources.memory.padding must then show.
	cmdlineMem := func() string {
		t.Helper()
		pid := testutil.QEMUPIDs(s.DataDir)[uid]
		args := strings.Split(readCmdline(t, pid), "\x00")
		for i := range args {
			if args[i] == "-m" && i+1 < len(args) {
				m := args[i+1]
				kib, err := strconv.ParseInt(strings.TrimSuffix(m, "K"), 10, 64)
				if !strings.HasSuffix(m, "K") || err != nil || kib%1024 != qemu.MemoryPadKiB {
					return m
				}
				v := vmGet(t, s, "p")
				if r := v.Status.Resources; r == nil || r.Memory.Padding != "8Ki" {
					t.Errorf("QEMU runs with -m %s, and status.resources = %+v does not say padding 8Ki", m, r)
				}
				return strconv.FormatInt(kib>>10, 10)
			}
		}
		t.Fatalf("no -m in QEMU's command line %q", args)
		return ""
	}
	s.MustCLI(manifest("96Mi", 2), "apply", "-f", "-")
	v = vmWait(t, s, "p", 30*time.Second, "AwaitingRestartToApplyConfiguration=True", vmCondIs(v1alpha1.VMConditionAwaitingRestartToApplyConfiguration, v1alpha1.ConditionTrue))
	c := v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionAwaitingRestartToApplyConfiguration)
	for _, w := range []string{"spec.memory.size (runs with 64Mi)", "spec.cpu.cores (runs with 1)"} {
		if !strings.Contains(c.Message, w) {
			t.Errorf("AwaitingRestartToApplyConfiguration message %q lacks %q", c.Message, w)
		}
	}
	if r := v.Status.Resources; r == nil || r.Memory.Size != "64Mi" || r.CPU.Cores != 1 {
		t.Errorf("status.resources = %+v, want what runs (64Mi, 1 core)", r)
	}
	if m := cmdlineMem(); m != "64" {
		t.Errorf("QEMU runs with -m %s", m)
	}
	s.MustCLI("", "vm", "restart", "p", "--wait")
	v = vmWait(t, s, "p", time.Minute, "restarted with the new spec", func(v *v1alpha1.VirtualMachine) bool {
		c := v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionAwaitingRestartToApplyConfiguration)
		return v.Status.Phase == v1alpha1.VMPhaseRunning && c != nil && c.Status == v1alpha1.ConditionFalse
	})
	if r := v.Status.Resources; r == nil || r.Memory.Size != "96Mi" || r.CPU.Cores != 2 {
		t.Errorf("status.resources after the restart = %+v, want 96Mi and 2 cores", r)
	}
	if m := cmdlineMem(); m != "96" {
		t.Errorf("after the restart QEMU runs with -m %s, want 96", m)
	}
	s.MustCLI("", "delete", "vm", "p")
	vmWait(t, s, "p", time.Minute, "deleted", func(v *v1alpha1.VirtualMachine) bool { return v == nil })
}

func readCmdline(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
