package server

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/agent"
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

// memoryFlags are --ksm and --memory-reserve (of `rakhsh agent`, and of serve for its
// in-process agent): how the agent manages the node's memory (docs/live-resources.md).
type memoryFlags struct {
	KSM     string
	Reserve string
}

func addMemoryFlags(cmd *cobra.Command, m *memoryFlags, whose string) {
	f := cmd.Flags()
	f.StringVar(&m.KSM, "ksm", agent.KSMAuto, whose+"kernel same-page merging on the node: auto (the agent starts ksmd while the host's available memory is below twice --memory-reserve, and stops it afterwards), on (keeps it running) or off (leaves KSM alone); with auto or on, do not run ksmtuned beside the agent")
	f.StringVar(&m.Reserve, "memory-reserve", "", whose+"host memory to keep available (a quantity such as 2Gi; default 10% of the host's memory): below it the agent reclaims memory from the VMs' balloons, down to their class's minimum, and gives it back above twice it")
}

// parse checks the flags and returns the KSM mode and the reserve in bytes (0: the default).
func (m memoryFlags) parse() (string, int64, error) {
	switch m.KSM {
	case "", agent.KSMAuto, agent.KSMOn, agent.KSMOff:
	default:
		return "", 0, fmt.Errorf("--ksm %q: want auto, on or off", m.KSM)
	}
	if m.Reserve == "" {
		return m.KSM, 0, nil
	}
	n, err := v1alpha1.Quantity(m.Reserve).Value()
	if err != nil || n <= 0 {
		return "", 0, fmt.Errorf("--memory-reserve %q: want a memory size such as 2Gi", m.Reserve)
	}
	return m.KSM, n, nil
}
