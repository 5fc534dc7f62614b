package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/qemu/qmp"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// stopVM ends a running QEMU: gracefully (ACPI power button, then quit after the VM's
// termination grace period) or, with force or when the guest is not running, at once
// (quit, then SIGKILL after KillTimeout). It does not block: it requeues itself.
func (a *Agent) stopVM(ctx context.Context, vm *v1alpha1.VirtualMachine, in *instance, force bool, reason string) (runtime.Result, error) {
	again, pressed, err := a.machine(in).Shutdown(ctx, shutdown{force: force, grace: graceOf(vm), second: secondPressAfter(vm, in), reason: reason})
	if err != nil {
		return runtime.Result{}, err
	}
	if pressed && vm.Status.Phase != v1alpha1.VMPhaseTerminating {
		if _, err := a.writePhase(ctx, vm, v1alpha1.VMPhaseStopping, nil); err != nil && !errors.Is(err, runtime.ErrVMGone) {
			return runtime.Result{}, err
		}
	}
	return runtime.Result{RequeueAfter: again}, nil
}

// graceOf is how long the guest gets between the ACPI power button and the quit: the VM's
// termination grace period (default 60 s), shortened by a delete's grace period.
func graceOf(vm *v1alpha1.VirtualMachine) time.Duration {
	grace := 60 * time.Second
	if g := vm.Spec.TerminationGracePeriodSeconds; g != nil && *g >= 0 {
		grace = time.Duration(*g) * time.Second
	}
	if g := vm.DeletionGracePeriodSeconds; vm.DeletionTimestamp != nil && g != nil && time.Duration(*g)*time.Second < grace {
		// `delete --grace-period N` (or --force, N=0) shortens the wait.
		grace = time.Duration(*g) * time.Second
	}
	return grace
}

// windowsSecondPress is how long after the first ACPI power button press a Windows guest gets
// the second one.
const windowsSecondPress = 5 * time.Second

// secondPressAfter is, for a Windows VM whose graceful stop has pressed the power button only
// once, the delay of the second press after the first; 0 otherwise.
func secondPressAfter(vm *v1alpha1.VirtualMachine, in *instance) time.Duration {
	in.mu.Lock()
	done := in.powerdown2
	in.mu.Unlock()
	if done || vm.Spec.OSType != v1alpha1.OSTypeWindows {
		return 0
	}
	return windowsSecondPress
}

// quitWith records why QEMU ends (exit.json) and asks it to quit; SIGTERM when there is no
// QMP connection.
func (a *Agent) quitWith(ctx context.Context, in *instance, rec exitRecord) (runtime.Result, error) {
	if err := a.machine(in).Quit(ctx, rec); err != nil {
		return runtime.Result{}, err
	}
	return runtime.Result{RequeueAfter: 250 * time.Millisecond}, nil
}

// restart carries out a new RestartID on a running VM: a hard reset with force, else a
// graceful stop followed by a start.
func (a *Agent) restart(ctx context.Context, vm *v1alpha1.VirtualMachine, in *instance, pr *v1alpha1.VMPowerRequest, st qmp.StatusInfo) (runtime.Result, error) {
	_, err := runtime.UpdateVMStatus(ctx, a.c, vm.Namespace, vm.Name, vm.UID, agentStatusFields, nil, func(v *v1alpha1.VirtualMachine) error {
		if v.Status.PowerRequest == nil || v.Status.PowerRequest.RestartID != pr.RestartID {
			return errors.New("the power request changed")
		}
		v.Status.ObservedRestartID = pr.RestartID
		return nil
	})
	if err != nil {
		return runtime.Result{}, ignoreGone(err)
	}
	a.rec.Event(ctx, "VirtualMachine", vm, "Normal", "Restarting", fmt.Sprintf("restarting the VM (force=%t)", pr.Force))
	m := a.machine(in)
	if mon := m.Monitor(); pr.Force && mon != nil {
		if err := m.Reset(ctx, mon); err != nil {
			return runtime.Result{}, err
		}
		if _, err := runtime.UpdateVMStatus(ctx, a.c, vm.Namespace, vm.Name, vm.UID, agentStatusFields, nil, func(v *v1alpha1.VirtualMachine) error {
			if m.GuestSpoke() {
				return runtime.ErrNoChange // the guest has spoken again already
			}
			v1alpha1.SetCondition(&v.Status.Conditions, guestReadyCondition(false))
			return nil
		}); ignoreGone(err) != nil {
			return runtime.Result{}, err
		}
		if st.Status != qmp.StatusRunning && pr.State == v1alpha1.PowerStateRunning {
			if err := mon.Cont(ctx); err != nil {
				return runtime.Result{}, err
			}
		}
		return runtime.Result{RequeueAfter: 10 * time.Millisecond}, nil
	}
	if err := m.MarkRestarting(); err != nil {
		return runtime.Result{}, err
	}
	return a.stopVM(ctx, vm, in, pr.Force, v1alpha1.ExitStopped)
}
