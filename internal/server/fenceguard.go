package server

import (
	"os"
	"sync/atomic"

	"github.com/spf13/cobra"

	"github.com/rakhsh/rakhsh/internal/agent"
)

// NewFenceGuardCommand returns the hidden `rakhsh fence-guard` command: the node's fence
// guard, started by the agent (docs/ha.md), never by hand.
func NewFenceGuardCommand() *cobra.Command {
	hasFenceGuard.Store(true)
	var dataDir string
	cmd := &cobra.Command{
		Use:    agent.GuardCommand + " --data-dir DIR",
		Short:  "Kill the node's HA QEMUs when its agent stops renewing the node lease (started by the agent)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return agent.RunFenceGuard(agent.GuardOptions{DataDir: dataDir})
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "the agent's data directory")
	return cmd
}

// hasFenceGuard: this executable has the fence-guard command (the rakhsh binary registers it;
// a test binary of this package does not, and its agents run without a guard).
var hasFenceGuard atomic.Bool

// fenceGuardBinary is the executable the agent starts its fence guard from: this one, when it
// has the command; "" otherwise.
func fenceGuardBinary() (string, error) {
	if !hasFenceGuard.Load() {
		return "", nil
	}
	return os.Executable()
}
