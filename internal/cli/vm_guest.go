package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/apiserver"
	"github.com/rakhsh/rakhsh/internal/nodestream"
)

// guestAgentCall posts one request to the VM's guestagent subresource.
func guestAgentCall(cmd *cobra.Command, cc *cliContext, name string, req nodestream.GuestRequest) (nodestream.GuestResult, error) {
	var res nodestream.GuestResult
	c, err := cc.Client()
	if err != nil {
		return res, err
	}
	path := client.Path("virtualmachines", cc.Namespace(), name, apiserver.SubGuestAgent)
	err = c.Do(cmd.Context(), "POST", path, nil, "application/json", req, &res)
	return res, err
}

// newVMSetPasswordCommand returns `rakhsh vm set-password NAME --user U`.
func newVMSetPasswordCommand(cc *cliContext) *cobra.Command {
	var user string
	var fromStdin bool
	cmd := &cobra.Command{
		Use:   "set-password NAME --user USER",
		Short: "Set the password of a user inside a running virtual machine through its guest agent",
		Long: "Sets the password of USER in the guest through qemu-guest-agent (guest-set-user-password;\n" +
			"the guest hashes it). The password is read from the terminal without echo, or with\n" +
			"--password-stdin as the first line of standard input; it is never put on the command line.\n" +
			"It travels in the request body to the VM's node and is not stored anywhere by Rakhsh.",
		Example: "  rakhsh vm set-password vm1 --user root\n  printf '%s\\n' \"$PW\" | rakhsh vm set-password vm1 --user admin --password-stdin",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if user == "" {
				return usageErrorf("--user is required")
			}
			pw, err := readPassword(cmd, fromStdin)
			if err != nil {
				return err
			}
			if _, err := guestAgentCall(cmd, cc, args[0], nodestream.GuestRequest{Command: nodestream.GuestSetPassword, User: user, Password: pw}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "password of %s set in virtual machine %s\n", user, args[0])
			return nil
		},
	}
	cmd.Flags().StringVar(&user, "user", "", "the guest user whose password is set")
	cmd.Flags().BoolVar(&fromStdin, "password-stdin", false, "read the password from the first line of standard input")
	return cmd
}

// newVMFreezeCommand returns `rakhsh vm freeze NAME`, `unfreeze NAME` or `freeze-status NAME`.
func newVMFreezeCommand(cc *cliContext, command string) *cobra.Command {
	d := map[string][2]string{
		nodestream.GuestFreeze:       {"freeze", "Freeze the filesystems of a running virtual machine through its guest agent (fs-freeze; thaw with unfreeze)"},
		nodestream.GuestThaw:         {"unfreeze", "Thaw the filesystems of a virtual machine frozen with freeze"},
		nodestream.GuestFreezeStatus: {"freeze-status", "Show whether the guest's filesystems are frozen (thawed or frozen)"},
	}[command]
	use, short := d[0], d[1]
	return &cobra.Command{
		Use:   use + " NAME",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			res, err := guestAgentCall(cmd, cc, args[0], nodestream.GuestRequest{Command: command})
			if err != nil {
				return err
			}
			switch {
			case res.FreezeStatus != "":
				fmt.Fprintln(cmd.OutOrStdout(), res.FreezeStatus)
			case res.Count != nil && command == nodestream.GuestFreeze:
				fmt.Fprintf(cmd.OutOrStdout(), "froze %d filesystems\n", *res.Count)
			case res.Count != nil:
				fmt.Fprintf(cmd.OutOrStdout(), "thawed %d filesystems\n", *res.Count)
			}
			return nil
		},
	}
}
