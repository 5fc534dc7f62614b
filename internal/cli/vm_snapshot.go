package cli

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

// newVMSnapshotCommand returns `rakhsh vm snapshot`.
func newVMSnapshotCommand(cc *cliContext) *cobra.Command {
	var name string
	var crash, keepRAM bool
	var wf waitFlags
	cmd := &cobra.Command{
		Use:   "snapshot NAME",
		Short: "Take a snapshot of a virtual machine: its spec and all its disks at one instant",
		Long: `Take a VirtualMachineSnapshot of a virtual machine: its spec and a VirtualDiskSnapshot of each
of its disks. A running VM is not stopped: its guest's filesystems are frozen through the guest
agent for the instant the copies start. The snapshot is named NAME-snapshot-XXXXX unless --name
is given; its name is printed. By default the snapshot of a running VM waits for the VM's guest
agent (a consistent snapshot); --crash-consistent takes it at once. --keep-ram also keeps the
running guest's RAM state (its vCPUs pause while it is written, no guest agent needed): a
restore then leaves the VM hibernated, and its next start resumes the guest. With --wait it
waits until the snapshot is Ready and fails if it fails. See docs/snapshots.md.`,
		Args:    cobra.ExactArgs(1),
		Example: "  rakhsh vm snapshot vm1 --name before-upgrade --wait\n  rakhsh vm restore vm1 before-upgrade --wait",
		RunE: func(cmd *cobra.Command, args []string) error {
			ns, vm := cc.Namespace(), args[0]
			c, err := clientForVM(cmd, cc, vm)
			if err != nil {
				return err
			}
			s := v1alpha1.VirtualMachineSnapshot{
				TypeMeta:   v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachineSnapshot"},
				ObjectMeta: vmObjectMeta(ns, vm, "snapshot", name),
				Spec:       v1alpha1.VirtualMachineSnapshotSpec{VirtualMachineName: vm},
			}
			if crash {
				f := false
				s.Spec.RequiredConsistency = &f
			}
			s.Spec.KeepRAM = keepRAM
			out, err := createAndPrint(cmd, c, "virtualmachinesnapshots", ns, &s)
			if err != nil || !wf.wait {
				return err
			}
			ctx, cancel := withTimeout(cmd.Context(), wf.timeout)
			defer cancel()
			show := lineChanges(cmd.ErrOrStderr())
			return pollPhase(ctx, c, "virtualmachinesnapshots", "snapshot", ns, out.Name, 300*time.Millisecond,
				func(s *v1alpha1.VirtualMachineSnapshot) string { return string(s.Status.Phase) },
				func(s *v1alpha1.VirtualMachineSnapshot) (bool, error) {
					msg := conditionMessage(s.Status.Conditions, v1alpha1.VMSnapshotConditionReady)
					switch s.Status.Phase {
					case v1alpha1.SnapshotPhaseReady:
						consistent := s.Status.Consistent != nil && *s.Status.Consistent
						fmt.Fprintf(cmd.ErrOrStderr(), "%s: Ready (%d disks, consistent: %t)\n", s.Name, len(s.Status.VirtualDiskSnapshotNames), consistent)
						return true, nil
					case v1alpha1.SnapshotPhaseFailed:
						return true, fmt.Errorf("snapshot %s failed: %s", s.Name, msg)
					}
					if s.Status.Phase != "" {
						show(s.Name + ": " + string(s.Status.Phase) + ": " + msg)
					}
					return false, nil
				})
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "the snapshot's name (default: NAME-snapshot-XXXXX)")
	f.BoolVar(&crash, "crash-consistent", false, "do not wait for the guest agent of a running VM (spec.requiredConsistency: false)")
	f.BoolVar(&keepRAM, "keep-ram", false, "also keep the running guest's RAM state (spec.keepRAM): a restore resumes the guest")
	wf.add(cmd, "wait until the snapshot is Ready; fail if it fails", 30*time.Minute)
	return cmd
}

// newVMRestoreCommand returns `rakhsh vm restore`.
func newVMRestoreCommand(cc *cliContext) *cobra.Command {
	var mode, fromBackup string
	var wf waitFlags
	cmd := &cobra.Command{
		Use:   "restore NAME (SNAPSHOT | --backup BACKUP)",
		Short: "Return a stopped virtual machine to one of its VirtualMachineSnapshots or VirtualMachineBackups (disks and spec)",
		Long: `Return a stopped virtual machine to one of its VirtualMachineSnapshots, or with --backup to one of
its VirtualMachineBackups: each disk's content and the VM's spec become the snapshot's (the
backup's). It creates a VirtualMachineOperation of type Restore (named NAME-restore-XXXXX) and
prints its name. --mode DryRun only reports what would be restored; Strict (the default) fails
when a disk of the snapshot or backup is gone or was made again since; BestEffort restores the
rest. With --wait it waits until the restore ends and fails if it fails.`,
		Args: cobra.RangeArgs(1, 2),
		Example: `  rakhsh vm stop vm1 --wait && rakhsh vm restore vm1 before-upgrade --wait
  rakhsh vm stop vm1 --wait && rakhsh vm restore vm1 --backup vm1-monday --wait`,
		RunE: func(cmd *cobra.Command, args []string) error {
			m := v1alpha1.SnapshotOperationMode(mode)
			if m != v1alpha1.SnapshotOperationModeStrict && m != v1alpha1.SnapshotOperationModeBestEffort && m != v1alpha1.SnapshotOperationModeDryRun {
				return usageErrorf("--mode %q: want Strict, BestEffort or DryRun", mode)
			}
			rs := &v1alpha1.VMOPRestoreSpec{Mode: m, VirtualMachineBackupName: fromBackup}
			switch {
			case len(args) == 2 && fromBackup != "":
				return usageErrorf("give either a SNAPSHOT or --backup, not both")
			case len(args) == 1 && fromBackup == "":
				return usageErrorf("name the SNAPSHOT to restore from (or the backup, with --backup)")
			case len(args) == 2:
				rs.VirtualMachineSnapshotName = args[1]
			}
			c, err := cc.Client()
			if err != nil {
				return err
			}
			ns := cc.Namespace()
			out, err := createVMOperation(cmd, c, ns, args[0], "restore", v1alpha1.VirtualMachineOperationSpec{Type: v1alpha1.VMOPTypeRestore, Restore: rs})
			if err != nil || !wf.wait {
				return err
			}
			return waitOperationDone(cmd.Context(), cmd.ErrOrStderr(), c, ns, out.Name, wf.timeout, nil)
		},
	}
	f := cmd.Flags()
	f.StringVar(&mode, "mode", string(v1alpha1.SnapshotOperationModeStrict), "Strict, BestEffort or DryRun")
	f.StringVar(&fromBackup, "backup", "", "restore from this VirtualMachineBackup of the VM instead of a snapshot")
	wf.add(cmd, "wait until the restore ends; fail if it fails", 30*time.Minute)
	return cmd
}

// newVMCloneCommand returns `rakhsh vm clone`.
func newVMCloneCommand(cc *cliContext) *cobra.Command {
	var dryRun, full bool
	var wf waitFlags
	cmd := &cobra.Command{
		Use:   "clone SRC NEW",
		Short: "Make a new virtual machine NEW from SRC (running, stopped or a template), with linked clones or copies of its disks",
		Long: `Make a new virtual machine NEW from the virtual machine SRC: a snapshot of SRC is taken (a running
SRC is not stopped), each disk DISK of SRC becomes a new disk NEW-DISK, a linked clone of the
snapshot's file (made at once; the snapshot is kept while the clone's disks exist), or with
--full a standalone copy, and NEW gets SRC's
spec with its own identity: a new uid (its SMBIOS UUID and cloud-init instance-id), a new MAC and
a new IP address claim, and no template label. It creates a VirtualMachineOperation of type Clone
(named SRC-clone-XXXXX) and prints its name. NEW is created stopped or started as its run policy
says. With --wait it waits until the disks are copied; --dry-run only checks the names.`,
		Args:    cobra.ExactArgs(2),
		Example: "  rakhsh vm clone ubuntu-template web1 --wait\n  rakhsh vm start web1",
		RunE: cc.withClient(func(cmd *cobra.Command, args []string, c *client.Client) error {
			ns, src, dst := cc.Namespace(), args[0], args[1]
			if src == dst {
				return usageErrorf("the clone needs a name other than %q", src)
			}
			cloneMode := v1alpha1.CloneModeLinked
			if full {
				cloneMode = v1alpha1.CloneModeFull
			}
			mode := v1alpha1.SnapshotOperationModeStrict
			if dryRun {
				mode = v1alpha1.SnapshotOperationModeDryRun
			}
			out, err := createVMOperation(cmd, c, ns, src, "clone", v1alpha1.VirtualMachineOperationSpec{Type: v1alpha1.VMOPTypeClone,
				Clone: &v1alpha1.VMOPCloneSpec{Mode: mode, CloneMode: cloneMode,
					NameReplacement: []v1alpha1.NameReplacement{{From: v1alpha1.NameReplacementFrom{Kind: "VirtualMachine", Name: src}, To: dst}},
					Customization:   &v1alpha1.VMOPCloneCustomization{NamePrefix: dst + "-"}}})
			if err != nil || (!wf.wait && !dryRun) {
				return err
			}
			return waitOperationDone(cmd.Context(), cmd.ErrOrStderr(), c, ns, out.Name, wf.timeout, nil)
		}),
	}
	f := cmd.Flags()
	f.BoolVar(&dryRun, "dry-run", false, "only check that the clone's names are free (mode DryRun)")
	f.BoolVar(&full, "full", false, "copy the disks whole instead of making linked clones of the snapshot")
	wf.add(cmd, "wait until the clone is made; fail if it fails", 30*time.Minute)
	return cmd
}
