package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// handleExit deals with a QEMU that is gone: it records lastExit (unless the exit was the
// first half of a restart, then it returns true to start again) and forgets the instance.
// def is the reason to use when neither the agent nor QEMU left one.
func (a *Agent) handleExit(ctx context.Context, vm *v1alpha1.VirtualMachine, in *instance, def *exitRecord) (bool, error) {
	rec := readExitRecord(in.runDir)
	restarting, guestShutdown, panicked := a.machine(in).endState()
	if f := a.fencedExit(in.uid); f != nil {
		// Killed by the fence (fence.go), whatever QEMU was doing; kept in exit.json until
		// the exit is recorded (the API may be out of reach for a while).
		rec = f
		_ = writeExitRecord(in.runDir, *f)
	}
	if rec == nil {
		switch {
		case def != nil:
			rec = def
		case panicked:
			rec = &exitRecord{Reason: v1alpha1.ExitCrashed, Message: "the guest kernel panicked"}
		case guestShutdown:
			rec = &exitRecord{Reason: v1alpha1.ExitGuestShutdown}
		default:
			rec = &exitRecord{Reason: v1alpha1.ExitCrashed, Message: "QEMU exited unexpectedly" + qemuErrorSummary(in.runDir)}
			a.noteQEMUFailure(ctx, vm, qemuLogTail(in.runDir))
		}
	}
	deleting := vm.DeletionTimestamp != nil
	if rec.Reason == v1alpha1.ExitFenced {
		restarting = false
	}
	if restarting && wantsRunning(vm.Status.PowerRequest) && !deleting {
		a.forget(in)
		removeRuntimeFiles(in.runDir)
		return true, nil
	}
	if !deleting {
		if err := a.recordExit(ctx, vm, *rec); err != nil && !errors.Is(err, runtime.ErrVMGone) {
			return false, err
		}
		if rec.Reason == v1alpha1.ExitFenced {
			a.rec.Event(ctx, "VirtualMachine", vm, "Warning", v1alpha1.ExitFenced, rec.Message)
		}
	}
	a.forget(in)
	removeRuntimeFiles(in.runDir)
	return false, nil
}

// finishDelete removes the run directory of a deleted VM whose QEMU is gone, then releases
// the VM (clears status.nodeName) so that the VM controller removes its finalizer.
func (a *Agent) finishDelete(ctx context.Context, vm *v1alpha1.VirtualMachine) error {
	runDir := a.runDir(vm.UID)
	if findQEMU(runDir, vm.UID) > 0 {
		return fmt.Errorf("QEMU of %s/%s still runs", vm.Namespace, vm.Name)
	}
	stopTPM(runDir)
	if err := os.RemoveAll(runDir); err != nil {
		return err
	}
	a.releaseDiskLeases(vm, "the VM was deleted")
	_, err := runtime.UpdateVMStatus(ctx, a.c, vm.Namespace, vm.Name, vm.UID, agentStatusFields, nil, func(v *v1alpha1.VirtualMachine) error {
		if v.Status.NodeName != a.cfg.NodeName {
			return runtime.ErrNoChange
		}
		v.Status.NodeName = ""
		return nil
	})
	if err := ignoreGone(err); err != nil {
		return err
	}
	a.log.Info("VM deleted: QEMU stopped, run directory removed, VM released", "vm", vm.Namespace+"/"+vm.Name)
	return nil
}

// reconcileOrphan stops the QEMU of a run directory whose VM object is gone, and removes the
// directory.
func (a *Agent) reconcileOrphan(ctx context.Context, uid string) (runtime.Result, error) {
	if _, exists := a.vmKeysByUID()[uid]; exists {
		return runtime.Result{}, nil
	}
	runDir := a.runDir(uid)
	// The cache holds only this node's VMs: only a VM the API no longer has is an orphan. A
	// stopped VM that was released keeps its directory (its UEFI variables and TPM state).
	vm, err := a.lookupVM(ctx, uid, runDir)
	if err != nil {
		return runtime.Result{}, err
	}
	if vm != nil {
		if in := a.inst(uid); in != nil && !in.isExited() {
			// Its QEMU runs here: decide on the VM itself, under its own key.
			a.mu.Lock()
			in.key = runtime.KeyOf(vm)
			a.mu.Unlock()
			a.queue.Add(in.key)
			return runtime.Result{}, nil
		}
		if vm.Status.NodeName != a.cfg.NodeName && findQEMU(runDir, uid) == 0 {
			// A VM that moved to another node (or whose migration here failed): what is
			// left of it here goes.
			if in := a.inst(uid); in != nil {
				a.forget(in)
				removeRuntimeFiles(runDir)
			}
			a.cleanupAfterMove(ctx, vm)
		}
		return runtime.Result{}, nil
	}
	in := a.inst(uid)
	if pid := findQEMU(runDir, uid); in == nil && pid > 0 {
		m := a.adoptMachine(orphanKey(uid), uid, runDir, pid)
		_, _ = m.Connect(ctx, 2*time.Second)
		in = m.in
	}
	if in != nil && !in.isExited() && findQEMU(runDir, uid) > 0 {
		a.log.Info("stopping the QEMU of a deleted VM", "uid", uid, "pid", in.pid)
		again, _, err := a.machine(in).Shutdown(ctx, shutdown{force: true, reason: v1alpha1.ExitStopped})
		if err != nil {
			return runtime.Result{}, err
		}
		return runtime.Result{RequeueAfter: again}, nil
	}
	if in != nil {
		a.forget(in)
	}
	if findQEMU(runDir, uid) > 0 {
		return runtime.Result{RequeueAfter: 250 * time.Millisecond}, nil
	}
	stopTPM(runDir)
	if err := os.RemoveAll(runDir); err != nil {
		return runtime.Result{}, err
	}
	a.log.Info("removed the run directory of a deleted VM", "uid", uid)
	return runtime.Result{}, nil
}
