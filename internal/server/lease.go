package server

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// addLeaseFlags adds --lease-duration and --fence-timeout (of `rakhsh agent`, and of serve
// for its in-process agent: whose says which).
func addLeaseFlags(cmd *cobra.Command, duration, fence *time.Duration, whose string) {
	f := cmd.Flags()
	f.DurationVar(duration, "lease-duration", v1alpha1.DefaultNodeLeaseDuration,
		whose+"node lease duration (whole seconds): the agent renews its NodeLease about every second, and a node whose lease was not renewed for this long is marked NotReady (reason NodeLeaseExpired); see docs/ha.md")
	f.DurationVar(fence, "fence-timeout", v1alpha1.DefaultNodeFenceTimeout,
		fmt.Sprintf("how long %sagent runs its HA VMs without renewing its node lease before it kills their QEMUs (self-fencing); must be shorter than --lease-duration by at least %s", whose, v1alpha1.NodeFenceMargin))
}

// checkLeaseFlags checks that --fence-timeout fits in --lease-duration (zero: the default).
func checkLeaseFlags(duration, fence time.Duration) error {
	if duration == 0 {
		duration = v1alpha1.DefaultNodeLeaseDuration
	}
	if fence == 0 {
		fence = v1alpha1.DefaultNodeFenceTimeout
	}
	if msg := v1alpha1.CheckNodeLeaseTimes(duration, fence); msg != "" {
		return fmt.Errorf("--lease-duration %s, --fence-timeout %s: %s", duration, fence, msg)
	}
	return nil
}

// checkHASafetyMargin checks --ha-safety-margin (zero: none).
func checkHASafetyMargin(margin time.Duration) error {
	if msg := v1alpha1.CheckHASafetyMargin(margin); msg != "" {
		return fmt.Errorf("--ha-safety-margin %s: %s", margin, msg)
	}
	return nil
}
