package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// TestStartFailureBacksOff: a VM whose start fails before QEMU runs (here: its cloud-init
// Secret does not exist) is retried with the crash-loop backoff, not at once and over again,
// and starts once the cause is gone.
func TestStartFailureBacksOff(t *testing.T) {
	sideBySide(t)
	vmGuestDir(t)
	s := vmServe(t)
	applyDocs(s, vmDoc{Name: "nosecret", Policy: "AlwaysOnUnlessStoppedManually", Memory: "64Mi", Grace: "0",
		Extra: "  provisioning:\n    type: UserDataRef\n    userDataRef: {kind: Secret, name: later}\n"}.String())
	v := vmWait(t, s, "nosecret", 30*time.Second, "RestartBackoff", vmCondIs(v1alpha1.VMConditionRestartBackoff, v1alpha1.ConditionTrue))
	if v.Status.LastExit == nil || v.Status.LastExit.Reason != v1alpha1.ExitStartFailed || !strings.Contains(v.Status.LastExit.Message, `Secret "later" not found`) {
		t.Fatalf("lastExit: %+v", v.Status.LastExit)
	}
	// The backoff doubles from one second: in eight seconds a handful of tries, where
	// retrying at once made thousands.
	time.Sleep(8 * time.Second)
	if n := strings.Count(s.Logs(), `msg="VM failed to start"`); n < 2 || n > 8 {
		t.Fatalf("%d failed starts in about 8 s, want a few (backoff 1 s, 2 s, 4 s)", n)
	}
	s.MustCLI(`apiVersion: virtualization.rakhsh.io/v1alpha1
kind: Secret
metadata: {name: later}
stringData:
  userData: |
    #cloud-config
    hostname: nosecret
`, "apply", "-f", "-")
	v = vmWait(t, s, "nosecret", 2*time.Minute, "Running", vmPhase(v1alpha1.VMPhaseRunning))
	if c := v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionRestartBackoff); c != nil {
		t.Errorf("a running VM keeps %+v", c)
	}
	s.MustCLI("", "vm", "stop", "nosecret", "--force", "--wait")
}
