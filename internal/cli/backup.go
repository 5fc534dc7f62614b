package cli

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

// newBackupCommand returns `rakhsh backup`.
func newBackupCommand(cc *cliContext) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "backup",
		Short: "Back up virtual machines into a BackupTarget and check the backups",
		Long: `Back up virtual machines into a BackupTarget (a chunk store shared by all backups kept there) and
check stored backups. List them with "rakhsh get vmbackup"; restore a disk with a VirtualDisk whose
dataSource is an objectRef of kind VirtualMachineBackup. See docs/backups.md.`,
	}
	cmd.AddCommand(newBackupCreateCommand(cc), newBackupVerifyCommand(cc))
	return cmd
}

// backupWait polls the backup name in the current project until done says it is done (or
// ctx ends).
func backupWait(ctx context.Context, cc *cliContext, c *client.Client, name string, every time.Duration, done func(b *v1alpha1.VirtualMachineBackup) (bool, error)) error {
	return pollPhase(ctx, c, "virtualmachinebackups", "backup", cc.Namespace(), name, every,
		func(b *v1alpha1.VirtualMachineBackup) string { return string(b.Status.Phase) }, done)
}

// newBackupCreateCommand returns `rakhsh backup create`.
func newBackupCreateCommand(cc *cliContext) *cobra.Command {
	var name, target, mode, bwlimit string
	var wf waitFlags
	cmd := &cobra.Command{
		Use:   "create VM --target TARGET",
		Short: "Back up a virtual machine, running or stopped: all its disks at one instant",
		Long: `Create a VirtualMachineBackup of a virtual machine (running or stopped) into a BackupTarget and print its name
(VM-backup-XXXXX unless --name is given). The first backup of a VM in a target reads its disks
whole; later ones read only the blocks written since the previous backup. --mode snapshot (the
default) freezes the guest's filesystems through the guest agent for the instant the copy
starts (crash-consistent without an agent); suspend pauses the guest's vCPUs for that instant;
stop shuts a running VM down for the backup and starts it again when the backup ends. With
--wait it waits until the backup ends and fails if it fails.`,
		Args:    cobra.ExactArgs(1),
		Example: "  rakhsh backup create vm1 --target nightly --wait\n  rakhsh get vmbackup",
		RunE: func(cmd *cobra.Command, args []string) error {
			if target == "" {
				return usageErrorf("--target is required: the BackupTarget to store the backup in (rakhsh get backuptarget)")
			}
			m := v1alpha1.BackupMode(mode)
			if m != v1alpha1.BackupModeSnapshot && m != v1alpha1.BackupModeSuspend && m != v1alpha1.BackupModeStop {
				return usageErrorf("--mode %q: want snapshot, suspend or stop", mode)
			}
			ns, vm := cc.Namespace(), args[0]
			c, err := clientForVM(cmd, cc, vm)
			if err != nil {
				return err
			}
			b := v1alpha1.VirtualMachineBackup{
				TypeMeta:   v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachineBackup"},
				ObjectMeta: vmObjectMeta(ns, vm, "backup", name),
				Spec: v1alpha1.VirtualMachineBackupSpec{VirtualMachineName: vm, BackupTargetName: target, Mode: m,
					BandwidthLimit: v1alpha1.Quantity(bwlimit)},
			}
			out, err := createAndPrint(cmd, c, "virtualmachinebackups", ns, &b)
			if err != nil || !wf.wait {
				return err
			}
			ctx, cancel := withTimeout(cmd.Context(), wf.timeout)
			defer cancel()
			show := lineChanges(cmd.ErrOrStderr())
			return backupWait(ctx, cc, c, out.Name, 500*time.Millisecond, func(b *v1alpha1.VirtualMachineBackup) (bool, error) {
				msg := conditionMessage(b.Status.Conditions, v1alpha1.BackupConditionCompleted)
				switch b.Status.Phase {
				case v1alpha1.BackupPhaseCompleted:
					fmt.Fprintf(cmd.ErrOrStderr(), "%s: Completed: %s\n", b.Name, msg)
					return true, nil
				case v1alpha1.BackupPhaseFailed:
					return true, fmt.Errorf("backup %s failed: %s", b.Name, msg)
				}
				if b.Status.Phase != "" {
					show(b.Name + ": " + string(b.Status.Phase) + " " + b.Status.Progress + ": " + msg)
				}
				return false, nil
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "the backup's name (default: VM-backup-XXXXX)")
	f.StringVar(&target, "target", "", "the BackupTarget to store the backup in (required)")
	f.StringVar(&mode, "mode", string(v1alpha1.BackupModeSnapshot), "how the guest is held still for the backup's instant: snapshot, suspend or stop")
	f.StringVar(&bwlimit, "bandwidth-limit", "", "bytes per second the backup may read from the disks, e.g. 50Mi (default: no limit)")
	wf.add(cmd, "wait until the backup ends; fail if it fails", time.Hour)
	return cmd
}

// newBackupVerifyCommand returns `rakhsh backup verify`.
func newBackupVerifyCommand(cc *cliContext) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "verify NAME",
		Short: "Read back every chunk of a completed backup and check its hash",
		Long: `Ask the node that took a completed backup to read back every chunk of it from the target and
check each against its sha256 name. It prints the result and exits non-zero when a chunk is
missing or corrupted. A corrupted chunk is put aside (renamed SUM.bad), so that the next backup
with the same data stores it again. The result stays in the backup's Verified condition.`,
		Args:    cobra.ExactArgs(1),
		Example: "  rakhsh backup verify vm1-backup-x7k2p",
		RunE: cc.withClient(func(cmd *cobra.Command, args []string, c *client.Client) error {
			ctx, cancel := withTimeout(cmd.Context(), timeout)
			defer cancel()
			ns, name := cc.Namespace(), args[0]
			var b v1alpha1.VirtualMachineBackup
			if err := c.Get(ctx, "virtualmachinebackups", ns, name, &b); err != nil {
				return err
			}
			if b.Status.Phase != v1alpha1.BackupPhaseCompleted {
				return fmt.Errorf("backup %s is %s: only a Completed backup can be verified", name, phaseOr(string(b.Status.Phase)))
			}
			req := strconv.FormatInt(time.Now().UnixNano(), 36)
			patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, v1alpha1.AnnotationVerifyRequest, req)
			if err := c.Patch(ctx, "virtualmachinebackups", ns, name, []byte(patch), nil); err != nil {
				return err
			}
			tag := "(request " + req + ")"
			return backupWait(ctx, cc, c, name, 300*time.Millisecond, func(b *v1alpha1.VirtualMachineBackup) (bool, error) {
				cond := v1alpha1.FindCondition(b.Status.Conditions, v1alpha1.BackupConditionVerified)
				if cond == nil || len(cond.Message) < len(tag) || cond.Message[len(cond.Message)-len(tag):] != tag {
					return false, nil
				}
				msg := cond.Message[:len(cond.Message)-len(tag)-1]
				if cond.Status != v1alpha1.ConditionTrue {
					return true, fmt.Errorf("backup %s: %s", name, msg)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: verified: %s\n", name, msg)
				return true, nil
			})
		}),
	}
	cmd.Flags().DurationVar(&timeout, "timeout", time.Hour, "how long to wait for the result (0: no limit)")
	return cmd
}

func phaseOr(p string) string {
	if p == "" {
		return "Pending"
	}
	return p
}
