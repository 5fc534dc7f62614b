package cli

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

// newVMMigrateCommand returns `rakhsh vm migrate`.
func newVMMigrateCommand(cc *cliContext) *cobra.Command {
	var to string
	var force, cancel bool
	var wf waitFlags
	cmd := &cobra.Command{
		Use:   "migrate NAME",
		Short: "Live-migrate a running virtual machine to another node (--cancel ends a migration under way)",
		Long: `Live-migrate a running virtual machine to another node without stopping its guest.

It creates a VirtualMachineOperation of type Migrate (named NAME-migrate-XXXXX) and prints its
name. The scheduler picks the target unless --to names one. Disks on Shared storage stay where
they are; disks on a node's Local storage are copied to the target while the guest runs.
--force lets QEMU slow the guest's vCPUs down when it writes memory faster than the link
copies it (unless the VM's liveMigrationPolicy says otherwise). With --wait it shows the
progress and fails if the migration fails; the VM then goes on running where it was.
--cancel deletes the operation of the migration under way, which ends it.`,
		Args:    cobra.ExactArgs(1),
		Example: "  rakhsh vm migrate vm1 --wait\n  rakhsh vm migrate vm1 --to node2\n  rakhsh vm migrate vm1 --cancel",
		RunE: func(cmd *cobra.Command, args []string) error {
			if cancel && (to != "" || force) {
				return usageErrorf("--cancel takes no --to or --force")
			}
			c, err := cc.Client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			ns, name := cc.Namespace(), args[0]
			var vm v1alpha1.VirtualMachine
			if err := c.Get(ctx, "virtualmachines", ns, name, &vm); err != nil {
				return err
			}
			if cancel {
				m := vm.Status.MigrationState
				if !m.Active() || m.Operation == "" {
					return fmt.Errorf("virtual machine %q has no migration under way", name)
				}
				if err := c.Delete(ctx, "virtualmachineoperations", ns, m.Operation); err != nil && !client.IsNotFound(err) {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "migration of %s (operation %s) cancelled\n", name, m.Operation)
				return nil
			}
			if to != "" {
				var n v1alpha1.Node
				if err := c.Get(ctx, "nodes", "", to, &n); err != nil {
					return fmt.Errorf("--to %s: %w", to, err)
				}
				if to == vm.Status.NodeName {
					return usageErrorf("--to %s: the virtual machine already runs there", to)
				}
			}
			spec := v1alpha1.VirtualMachineOperationSpec{Type: v1alpha1.VMOPTypeMigrate}
			if to != "" {
				spec.Migrate = &v1alpha1.VMOPMigrateSpec{NodeSelector: map[string]string{v1alpha1.NodeHostnameLabel: to}}
			}
			if cmd.Flags().Changed("force") {
				spec.Force = &force
			}
			out, err := createVMOperation(cmd, c, ns, name, "migrate", spec)
			if err != nil || !wf.wait {
				return err
			}
			return waitOperationDone(ctx, cmd.ErrOrStderr(), c, ns, out.Name, wf.timeout, migrationProgress(cmd.ErrOrStderr(), string(out.UID)))
		},
	}
	f := cmd.Flags()
	f.StringVar(&to, "to", "", "the target node (default: the scheduler picks one)")
	f.BoolVar(&force, "force", false, "allow throttling the guest's vCPUs so that the migration converges (PreferSafe and PreferForced policies follow it)")
	f.BoolVar(&cancel, "cancel", false, "cancel the migration under way")
	wf.add(cmd, "wait until the migration ends, showing its progress; fail if it fails", 30*time.Minute)
	return cmd
}

// migrationProgress prints a line when the migration id's phase or percentage changes.
func migrationProgress(w io.Writer, id string) func(*v1alpha1.VirtualMachine) {
	show := lineChanges(w)
	return func(vm *v1alpha1.VirtualMachine) {
		m := vm.Status.MigrationState
		if m == nil || m.ID != id {
			return
		}
		line := fmt.Sprintf("%s: %s", vm.Name, m.Phase)
		if m.Target.Node != "" {
			line += fmt.Sprintf(" %s -> %s", m.Source.Node, m.Target.Node)
		}
		if p := m.Progress; p != nil {
			line += fmt.Sprintf(" %d%%", p.Percent)
			if p.DiskRemainingBytes > 0 {
				line += fmt.Sprintf(", disks %s left", v1alpha1.BytesQuantity(p.DiskRemainingBytes))
			}
		}
		show(line)
	}
}
