package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/storage"
	"github.com/rakhsh/rakhsh/internal/testutil"
)

// TestHibernate: `rakhsh vm hibernate` saves a running guest's RAM on its node and stops
// QEMU; `rakhsh vm start` resumes it: the guest's tick counter goes on from where it was (no
// boot: one boot marker in the whole log), and a shell variable set before is still set. A
// forced start boots from the disk instead and discards the saved state. A hibernated VM is
// not hibernated again, a start after a change of its devices fails and says why, and a
// delete removes the state.
func TestHibernate(t *testing.T) {
	sideBySide(t)
	s := vmServe(t)
	vmSetupGuest(t, s, "hib-root")
	s.MustCLI(vmManifest("hib", "hib-root", "AlwaysOnUnlessStoppedManually", "256Mi"), "apply", "-f", "-")
	t.Cleanup(func() { s.CLI("", "delete", "vm", "hib", "--ignore-not-found", "--wait") })
	vmWaitSerial(t, s, "hib", "RAKHSH-GUEST: ready", 1)
	uid := vmGet(t, s, "hib").UID
	stateDir := filepath.Join(storage.VMRunDir(s.DataDir, uid), "hibernation")

	vmConsoleType(t, s, uid, "RKVAR=kept-in-ram; (i=0; while true; do i=$((i+1)); echo RKTICK $i; sleep 1; done) &")
	before := waitTick(t, s, "hib", 2, time.Minute)

	r := s.CLI("", "vm", "hibernate", "hib", "--wait", "--timeout", "3m")
	t.Logf("hibernate: %s", strings.TrimSpace(r.Stderr))
	if r.Code != 0 {
		t.Fatalf("vm hibernate: exit %d: %s %s\n%s", r.Code, r.Stdout, r.Stderr, s.Logs())
	}
	v := vmGet(t, s, "hib")
	c := v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionHibernated)
	if v.Status.Phase != v1alpha1.VMPhaseStopped || c == nil || c.Status != v1alpha1.ConditionTrue || v.Status.StateNodeName == "" || v.Status.NodeName != "" {
		t.Fatalf("after the hibernation: phase %s, Hibernated %+v, stateNodeName %q, nodeName %q", v.Status.Phase, c, v.Status.StateNodeName, v.Status.NodeName)
	}
	if n := testutil.CountQEMU(uid); n != 0 {
		t.Fatalf("%d QEMU processes of the hibernated VM run", n)
	}
	fi, err := os.Stat(filepath.Join(stateDir, "state"))
	if err != nil || fi.Size() < 1<<20 {
		t.Fatalf("the saved state: %v (size %d)", err, sizeOf(fi))
	}
	saved := lastTick(vmLog(t, s, "hib"))
	t.Logf("ticks: %d when asked, %d when saved; state %d MiB; %s", before, saved, fi.Size()>>20, c.Message)

	s.MustCLI("", "vm", "start", "hib", "--wait", "--timeout", "3m")
	waitTick(t, s, "hib", saved, time.Minute)
	vmConsoleType(t, s, uid, "echo VAR-$RKVAR")
	vmWaitSerial(t, s, "hib", "VAR-kept-in-ram", 1)
	log := vmLog(t, s, "hib")
	if n := strings.Count(log, "RAKHSH-GUEST: ready"); n != 1 {
		t.Errorf("%d boot markers after the resume, want 1 (the guest booted again)", n)
	}
	assertTicksRise(t, log)
	v = vmGet(t, s, "hib")
	if c := v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionHibernated); c != nil || v.Status.Phase != v1alpha1.VMPhaseRunning {
		t.Errorf("after the resume: phase %s, Hibernated %+v", v.Status.Phase, c)
	}
	if _, err := os.Stat(stateDir); !os.IsNotExist(err) {
		t.Errorf("the saved state is still there after the resume: %v", err)
	}
	if ev := s.MustCLI("", "get", "events"); !strings.Contains(ev, "Resumed") {
		t.Errorf("no Resumed event:\n%s", ev)
	}

	// Hibernated again, then started with --force: a boot, and the saved state is gone.
	s.MustCLI("", "vm", "hibernate", "hib", "--wait", "--timeout", "3m")
	if _, err := os.Stat(filepath.Join(stateDir, "meta.json")); err != nil {
		t.Fatalf("no saved state after the second hibernation: %v", err)
	}
	s.MustCLI("", "vm", "start", "hib", "--force", "--wait", "--timeout", "3m")
	vmWaitSerial(t, s, "hib", "RAKHSH-GUEST: ready", 2)
	if _, err := os.Stat(stateDir); !os.IsNotExist(err) {
		t.Errorf("a forced start left the saved state: %v", err)
	}
	if c := v1alpha1.FindCondition(vmGet(t, s, "hib").Status.Conditions, v1alpha1.VMConditionHibernated); c != nil {
		t.Errorf("after a forced start: Hibernated %+v", c)
	}
	if ev := s.MustCLI("", "get", "events"); !strings.Contains(ev, "SavedStateDiscarded") {
		t.Errorf("no SavedStateDiscarded event:\n%s", ev)
	}

	// Hibernated once more: a hibernated VM is not hibernated again, and a start after a
	// change that gives QEMU other devices fails and names it (the state stays); deleting
	// the VM removes the state.
	s.MustCLI("", "vm", "hibernate", "hib", "--wait", "--timeout", "3m")
	r = s.CLI("", "vm", "hibernate", "hib", "--wait", "--timeout", "1m")
	if r.Code == 0 || !strings.Contains(r.Stderr, "only a running or paused virtual machine can be hibernated") {
		t.Errorf("hibernate of a hibernated VM: exit %d: %s", r.Code, r.Stderr)
	}
	s.MustCLI("", "patch", "vm", "hib", "-p", `{"spec":{"osType":"Windows"}}`)
	r = s.CLI("", "vm", "start", "hib", "--wait", "--timeout", "2m")
	if r.Code == 0 || !strings.Contains(r.Stderr, "the spec changed since the VM was hibernated: spec.osType") {
		t.Errorf("start after a change of osType: exit %d: %s", r.Code, r.Stderr)
	}
	if _, err := os.Stat(filepath.Join(stateDir, "meta.json")); err != nil {
		t.Errorf("the failed start removed the saved state: %v", err)
	}
	s.MustCLI("", "delete", "vm", "hib", "--wait", "--timeout", "2m")
	if _, err := os.Stat(stateDir); !os.IsNotExist(err) {
		t.Errorf("deleting the VM left the saved state: %v", err)
	}
}

// assertTicksRise fails when the tick counter in a serial log ever starts again (a reboot
// or a lost RAM state): every tick is above the one before.
func assertTicksRise(t *testing.T, log string) {
	t.Helper()
	prev := 0
	for _, m := range tickRe.FindAllStringSubmatch(log, -1) {
		n, _ := strconv.Atoi(m[1])
		if n <= prev {
			t.Errorf("the tick counter went from %d to %d: the guest's RAM did not survive", prev, n)
			return
		}
		prev = n
	}
}

func sizeOf(fi os.FileInfo) int64 {
	if fi == nil {
		return 0
	}
	return fi.Size()
}
