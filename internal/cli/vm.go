package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/nodestream"
)

// vmPausedAnnotation is the annotation the VM controller turns into power state Paused.
const vmPausedAnnotation = "virtualization.rakhsh.io/paused"

// newVMCommand returns `rakhsh vm`: shortcuts for power operations on a VM.
func newVMCommand(cc *cliContext) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "vm",
		Short: "Start, stop, restart, pause, resume or live-migrate a virtual machine; guest agent actions",
		Long: "Shortcuts for power actions on a virtual machine.\n\n" +
			"start, stop and restart create a VirtualMachineOperation (named NAME-start-XXXXX etc.)\n" +
			"and print its name; with --wait they wait until it completes and fail if it fails.\n" +
			"pause and resume set or remove the annotation " + vmPausedAnnotation + " on the VM.",
		Args: cobra.NoArgs,
		Run:  func(cmd *cobra.Command, _ []string) { _ = cmd.Help() },
	}
	for _, t := range []v1alpha1.VMOPType{v1alpha1.VMOPTypeStart, v1alpha1.VMOPTypeStop, v1alpha1.VMOPTypeRestart, v1alpha1.VMOPTypeHibernate} {
		cmd.AddCommand(newVMOpCommand(cc, t))
	}
	cmd.AddCommand(newVMPauseCommand(cc, true), newVMPauseCommand(cc, false), newVMMigrateCommand(cc))
	cmd.AddCommand(newVMSetPasswordCommand(cc), newVMFreezeCommand(cc, nodestream.GuestFreeze),
		newVMFreezeCommand(cc, nodestream.GuestThaw), newVMFreezeCommand(cc, nodestream.GuestFreezeStatus))
	cmd.AddCommand(newVMSnapshotCommand(cc), newVMRestoreCommand(cc), newVMCloneCommand(cc)) // vm_snapshot.go
	cmd.AddCommand(newVMAttachCommand(cc), newVMDetachCommand(cc))                           // vm_attach.go
	return cmd
}

func newVMOpCommand(cc *cliContext, typ v1alpha1.VMOPType) *cobra.Command {
	var force bool
	var wf waitFlags
	verb := strings.ToLower(string(typ))
	short := map[v1alpha1.VMOPType]string{
		v1alpha1.VMOPTypeStart:     "Start a virtual machine (a hibernated one resumes; --force boots it from its disks instead)",
		v1alpha1.VMOPTypeStop:      "Stop a virtual machine (ACPI power button, then power off after its grace period; --force powers off at once)",
		v1alpha1.VMOPTypeRestart:   "Restart a virtual machine (graceful stop and start; --force resets at once)",
		v1alpha1.VMOPTypeHibernate: "Save a running virtual machine's RAM on its node and stop it; the next start resumes the guest",
	}[typ]
	cmd := &cobra.Command{
		Use:     verb + " NAME",
		Short:   short,
		Args:    cobra.ExactArgs(1),
		Example: fmt.Sprintf("  rakhsh vm %s vm1 --wait", verb),
		RunE: func(cmd *cobra.Command, args []string) error {
			ns, name := cc.Namespace(), args[0]
			c, err := clientForVM(cmd, cc, name)
			if err != nil {
				return err
			}
			spec := v1alpha1.VirtualMachineOperationSpec{Type: typ}
			if force {
				spec.Force = &force
			}
			out, err := createVMOperation(cmd, c, ns, name, verb, spec)
			if err != nil || !wf.wait {
				return err
			}
			var progress func(*v1alpha1.VirtualMachine)
			if (typ == v1alpha1.VMOPTypeStop || typ == v1alpha1.VMOPTypeRestart) && !force {
				progress = graceCountdown(cmd.ErrOrStderr(), name, verb)
			}
			return waitOperationDone(cmd.Context(), cmd.ErrOrStderr(), c, ns, out.Name, wf.timeout, progress)
		},
	}
	switch typ {
	case v1alpha1.VMOPTypeStart:
		cmd.Flags().BoolVar(&force, "force", false, "boot a hibernated VM from its disks, discarding its saved RAM state")
	case v1alpha1.VMOPTypeStop, v1alpha1.VMOPTypeRestart:
		cmd.Flags().BoolVar(&force, "force", false, "power off (stop) or reset (restart) at once instead of asking the guest")
	}
	wf.add(cmd, "wait until the operation completes; fail if it fails", 5*time.Minute)
	return cmd
}

// clientForVM returns the client once it found the virtual machine vm in the current project.
func clientForVM(cmd *cobra.Command, cc *cliContext, vm string) (*client.Client, error) {
	c, err := cc.Client()
	if err != nil {
		return nil, err
	}
	if err := c.Get(cmd.Context(), "virtualmachines", cc.Namespace(), vm, nil); err != nil {
		return nil, err
	}
	return c, nil
}

// createVMOperation creates the operation spec on the virtual machine vm, named
// VM-VERB-XXXXX, and prints its name.
func createVMOperation(cmd *cobra.Command, c *client.Client, ns, vm, verb string, spec v1alpha1.VirtualMachineOperationSpec) (*v1alpha1.VirtualMachineOperation, error) {
	spec.VirtualMachineName = vm
	return createAndPrint(cmd, c, "virtualmachineoperations", ns, &v1alpha1.VirtualMachineOperation{
		TypeMeta:   v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachineOperation"},
		ObjectMeta: vmObjectMeta(ns, vm, verb, ""),
		Spec:       spec,
	})
}

// vmObjectMeta is the metadata of an object made for the virtual machine vm: named name, or
// VM-WHAT-XXXXX by the server when name is "".
func vmObjectMeta(ns, vm, what, name string) v1alpha1.ObjectMeta {
	m := v1alpha1.ObjectMeta{Name: name, Namespace: ns}
	if name == "" {
		m.GenerateName = vm + "-" + what + "-"
	}
	return m
}

// waitOperationDone waits (up to timeout; 0: no limit) for the operation name to end, says
// so on w, and fails unless it completed.
func waitOperationDone(ctx context.Context, w io.Writer, c *client.Client, ns, name string, timeout time.Duration, progress func(*v1alpha1.VirtualMachine)) error {
	ctx, cancel := withTimeout(ctx, timeout)
	defer cancel()
	final, err := waitOperation(ctx, c, ns, name, progress)
	if err != nil {
		return err
	}
	msg := conditionMessage(final.Status.Conditions, v1alpha1.VMOPConditionCompleted)
	if final.Status.Phase != v1alpha1.VMOPPhaseCompleted {
		return fmt.Errorf("operation %s %s: %s", name, final.Status.Phase, msg)
	}
	fmt.Fprintf(w, "%s completed: %s\n", name, msg)
	return nil
}

// waitOperation polls an operation until it reaches a final phase.
// progress, when set, sees the VM at each poll.
func waitOperation(ctx context.Context, c *client.Client, ns, name string, progress func(*v1alpha1.VirtualMachine)) (*v1alpha1.VirtualMachineOperation, error) {
	var op v1alpha1.VirtualMachineOperation
	err := poll(ctx, 250*time.Millisecond, func() (bool, error) {
		op = v1alpha1.VirtualMachineOperation{}
		if err := c.Get(ctx, "virtualmachineoperations", ns, name, &op); err != nil {
			return false, err
		}
		switch op.Status.Phase {
		case v1alpha1.VMOPPhaseCompleted, v1alpha1.VMOPPhaseFailed, v1alpha1.VMOPPhaseSuperseded:
			return true, nil
		}
		if progress != nil {
			var vm v1alpha1.VirtualMachine
			if err := c.Get(ctx, "virtualmachines", ns, op.Spec.VirtualMachineName, &vm); err == nil {
				progress(&vm)
			}
		}
		return false, nil
	}, func(err error) error {
		return fmt.Errorf("waiting for operation %s (phase %s): %w", name, orPending(string(op.Status.Phase)), err)
	})
	if err != nil {
		return nil, err
	}
	return &op, nil
}

// graceCountdown returns a progress function that, while the guest is asked to shut down
// (phase Stopping), says every 10 s how long the grace period has left and how to cut it.
func graceCountdown(w io.Writer, name, verb string) func(*v1alpha1.VirtualMachine) {
	var last time.Time
	return func(vm *v1alpha1.VirtualMachine) {
		if vm.Status.Phase != v1alpha1.VMPhaseStopping || time.Since(last) < 10*time.Second {
			return
		}
		last = time.Now()
		grace := int64(60)
		if g := vm.Spec.TerminationGracePeriodSeconds; g != nil {
			grace = *g
		}
		since := time.Duration(0)
		if t := stoppingSince(vm); !t.IsZero() {
			since = time.Since(t)
		}
		left := time.Duration(grace)*time.Second - since
		if left < 0 {
			left = 0
		}
		fmt.Fprintf(w, "waiting for the guest of %s to shut down: %s left of its %ds grace period (rakhsh vm %s %s --force does it now)\n",
			name, left.Round(time.Second), grace, verb, name)
	}
}

// stoppingSince is when the VM last entered phase Stopping (zero when unknown).
func stoppingSince(vm *v1alpha1.VirtualMachine) time.Time {
	if vm.Status.Stats == nil {
		return time.Time{}
	}
	tr := vm.Status.Stats.PhasesTransitions
	for i := len(tr) - 1; i >= 0; i-- {
		if tr[i].Phase == v1alpha1.VMPhaseStopping && !tr[i].Timestamp.IsZero() {
			return tr[i].Timestamp.Time
		}
	}
	return time.Time{}
}

func orPending(s string) string {
	if s == "" {
		return "Pending"
	}
	return s
}

func newVMPauseCommand(cc *cliContext, pause bool) *cobra.Command {
	var wf waitFlags
	use, short, want := "resume NAME", "Resume a paused virtual machine", v1alpha1.VMPhaseRunning
	if pause {
		use, short, want = "pause NAME", "Pause a running virtual machine (its vCPUs stop; memory is kept)", v1alpha1.VMPhasePause
	}
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: cc.withClient(func(cmd *cobra.Command, args []string, c *client.Client) error {
			ctx := cmd.Context()
			ns, name := cc.Namespace(), args[0]
			var val any
			if pause {
				val = "true"
			}
			body, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]any{vmPausedAnnotation: val}}})
			if err != nil {
				return err
			}
			if err := c.Patch(ctx, "virtualmachines", ns, name, body, nil); err != nil {
				return err
			}
			verb := "resumed"
			if pause {
				verb = "paused"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "virtualmachine/%s %s\n", name, verb)
			if !wf.wait {
				return nil
			}
			ctx, cancel := withTimeout(ctx, wf.timeout)
			defer cancel()
			var phase v1alpha1.VirtualMachinePhase
			return poll(ctx, 250*time.Millisecond, func() (bool, error) {
				var vm v1alpha1.VirtualMachine
				err := c.Get(ctx, "virtualmachines", ns, name, &vm)
				phase = vm.Status.Phase
				return err == nil && phase == want, err
			}, func(err error) error {
				return fmt.Errorf("waiting for %s to be %s (phase %s): %w", name, want, phase, err)
			})
		}),
	}
	wf.add(cmd, "wait until the VM's phase is "+string(want), 2*time.Minute)
	return cmd
}
