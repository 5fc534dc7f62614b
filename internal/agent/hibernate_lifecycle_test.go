package agent_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/agent"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// TestHibernationSaveFails, with real QEMU: a hibernation that cannot save (the node's disk is
// full) fails its operation with the reason, the guest runs on (phase Running, asked to run,
// its serial output goes on), and nothing is left in the run directory; a hibernation that can
// save then completes, and a start resumes the guest without a boot.
func TestHibernationSaveFails(t *testing.T) {
	img := guestImage(t)
	e := newEnv(t)
	uid := e.runGuest(img).UID
	e.waitSerial(uid, "RAKHSH-GUEST: ready", 1, bootTimeout)

	restore := agent.SetHibernationFreeSpace(1 << 20)
	op := e.op("vm1", v1alpha1.VMOPTypeHibernate, false)
	failed := e.waitOp(op, v1alpha1.VMOPPhaseFailed, time.Minute)
	restore()
	if c := v1alpha1.FindCondition(failed.Status.Conditions, v1alpha1.VMOPConditionCompleted); c == nil || !strings.Contains(c.Message, "not enough free space") {
		t.Fatalf("the failed hibernation says %+v", c)
	}
	v := e.waitVM("vm1", 30*time.Second, "running on, asked to run", func(v *v1alpha1.VirtualMachine) bool {
		pr := v.Status.PowerRequest
		return v.Status.Phase == v1alpha1.VMPhaseRunning && pr != nil && pr.State == v1alpha1.PowerStateRunning && !pr.Hibernate
	})
	if c := v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionHibernated); c != nil && c.Status == v1alpha1.ConditionTrue {
		t.Errorf("Hibernated after the failed save: %+v", c)
	}
	if _, err := os.Stat(filepath.Join(storage.VMRunDir(e.dir, uid), "hibernation")); !os.IsNotExist(err) {
		t.Errorf("the failed save left its directory: %v", err)
	}
	e.typeOnConsole(uid, "echo STILL-$((40+2))")
	e.waitSerial(uid, "STILL-42", 1, time.Minute)

	// Now it saves, and a start resumes.
	e.waitOp(e.op("vm1", v1alpha1.VMOPTypeHibernate, false), v1alpha1.VMOPPhaseCompleted, 2*time.Minute)
	e.waitVM("vm1", 30*time.Second, "hibernated", func(v *v1alpha1.VirtualMachine) bool {
		c := v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionHibernated)
		return v.Status.Phase == v1alpha1.VMPhaseStopped && c != nil && c.Status == v1alpha1.ConditionTrue
	})
	e.waitOp(e.op("vm1", v1alpha1.VMOPTypeStart, false), v1alpha1.VMOPPhaseCompleted, 2*time.Minute)
	e.typeOnConsole(uid, "echo RESUMED-$((40+3))")
	e.waitSerial(uid, "RESUMED-43", 1, time.Minute)
	if n := strings.Count(e.serialLog(uid), "RAKHSH-GUEST: ready"); n != 1 {
		t.Errorf("%d boot markers: the resumed guest booted", n)
	}
	if err := e.c.Delete(context.Background(), "virtualmachines", "default", "vm1"); err != nil {
		t.Fatal(err)
	}
	e.waitVM("vm1", time.Minute, "deleted", func(v *v1alpha1.VirtualMachine) bool { return v == nil })
}
