package migration

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// An Evict of a VM that is never live-migrated (liveMigrationPolicy Never) moves it cold: the
// VM is stopped (a Stop operation of its own, labelled with v1alpha1.LabelEvictOf, which the
// VM controller carries out even under runPolicy AlwaysOn) and its node released; then it
// starts again wherever the scheduler places it (its node is left out when it is cordoned or
// in maintenance, as drains do): under AlwaysOn by the run policy, under
// AlwaysOnUnlessStoppedManually by a Start operation of its own; under Manual it stays
// stopped. A VM with a disk on its node's Local storage cannot leave: the Evict fails.

// isColdEvict says op evicts vm without live migration.
func isColdEvict(vm *v1alpha1.VirtualMachine, op *v1alpha1.VirtualMachineOperation) bool {
	return op.Spec.Type == v1alpha1.VMOPTypeEvict && vm.Spec.LiveMigrationPolicy == v1alpha1.LiveMigrationPolicyNever
}

// coldEvict carries out one step of a cold eviction.
func (c *Controller) coldEvict(ctx context.Context, vm *v1alpha1.VirtualMachine, op *v1alpha1.VirtualMachineOperation) (runtime.Result, error) {
	stopName, startName := op.Name+"-stop", op.Name+"-start"
	stop, hasStop := c.ops.Get(runtime.NewKey(vm.Namespace, stopName))
	start, hasStart := c.ops.Get(runtime.NewKey(vm.Namespace, startName))
	fail := func(reason, msg string) (runtime.Result, error) {
		return runtime.Result{}, c.writeOp(ctx, op, v1alpha1.VMOPPhaseFailed, reason, msg)
	}
	rp := vm.Spec.RunPolicy
	if rp == "" {
		rp = v1alpha1.RunPolicyAlwaysOnUnlessStoppedManually
	}
	if !hasStop {
		if vm.DeletionTimestamp != nil {
			return fail(v1alpha1.VMOPReasonNotApplicableForPhase, "the virtual machine is being deleted")
		}
		if vm.Status.NodeName == "" || !wantsRunning(vm) {
			return runtime.Result{}, c.writeOp(ctx, op, v1alpha1.VMOPPhaseCompleted, v1alpha1.VMOPReasonOperationCompleted,
				"the virtual machine is stopped and holds no node: nothing to evict")
		}
		if disks, _ := c.localDisks(vm); len(disks) > 0 {
			var names []string
			for _, d := range disks {
				names = append(names, d.Name)
			}
			return fail(v1alpha1.VMOPReasonNotApplicableForLiveMigrationPolicy, fmt.Sprintf(
				"cannot leave node %s: liveMigrationPolicy Never allows only a restart elsewhere, and VirtualDisk %s is on the node's Local storage",
				vm.Status.NodeName, strings.Join(names, ", ")))
		}
		child := c.childOp(vm, op, stopName, v1alpha1.VMOPTypeStop)
		if err := c.C.Create(ctx, "virtualmachineoperations", vm.Namespace, child, nil); err != nil && !client.IsConflict(err) && !client.IsAlreadyExists(err) {
			return runtime.Result{}, err
		}
		return runtime.Result{}, c.writeOp(ctx, op, v1alpha1.VMOPPhaseInProgress, "InProgress", fmt.Sprintf(
			"liveMigrationPolicy Never: stopping the virtual machine on node %s (operation %s) to start it again elsewhere", vm.Status.NodeName, stopName))
	}
	switch stop.Status.Phase {
	case v1alpha1.VMOPPhaseFailed, v1alpha1.VMOPPhaseSuperseded:
		return fail(v1alpha1.VMOPReasonOperationFailed, fmt.Sprintf("stopping the virtual machine (operation %s) %s: %s", stopName, strings.ToLower(string(stop.Status.Phase)), conditionMessage(stop)))
	case v1alpha1.VMOPPhaseCompleted:
	default:
		return runtime.Result{RequeueAfter: 5 * time.Second}, nil
	}
	switch rp {
	case v1alpha1.RunPolicyManual, v1alpha1.RunPolicyAlwaysOff:
		return runtime.Result{}, c.writeOp(ctx, op, v1alpha1.VMOPPhaseCompleted, v1alpha1.VMOPReasonOperationCompleted,
			fmt.Sprintf("the virtual machine was stopped; its runPolicy %s leaves it stopped", rp))
	case v1alpha1.RunPolicyAlwaysOnUnlessStoppedManually:
		if !hasStart {
			if err := c.C.Create(ctx, "virtualmachineoperations", vm.Namespace, c.childOp(vm, op, startName, v1alpha1.VMOPTypeStart), nil); err != nil &&
				!client.IsConflict(err) && !client.IsAlreadyExists(err) {
				return runtime.Result{}, err
			}
			return runtime.Result{RequeueAfter: 5 * time.Second}, nil
		}
		switch start.Status.Phase {
		case v1alpha1.VMOPPhaseFailed, v1alpha1.VMOPPhaseSuperseded:
			return fail(v1alpha1.VMOPReasonOperationFailed, fmt.Sprintf("starting the virtual machine again (operation %s) %s: %s", startName, strings.ToLower(string(start.Status.Phase)), conditionMessage(start)))
		case v1alpha1.VMOPPhaseCompleted:
		default:
			return runtime.Result{RequeueAfter: 5 * time.Second}, nil
		}
	}
	// AlwaysOn (started again by its run policy) and AlwaysOnUnlessStoppedManually: done
	// once it runs on a node again.
	if vm.Status.NodeName == "" || (vm.Status.Phase != v1alpha1.VMPhaseRunning && vm.Status.Phase != v1alpha1.VMPhasePause) {
		return runtime.Result{RequeueAfter: 5 * time.Second}, nil
	}
	return runtime.Result{}, c.writeOp(ctx, op, v1alpha1.VMOPPhaseCompleted, v1alpha1.VMOPReasonOperationCompleted,
		fmt.Sprintf("stopped and started again on node %s (liveMigrationPolicy Never)", vm.Status.NodeName))
}

// childOp is a Stop or Start operation that carries out a step of the eviction op.
func (c *Controller) childOp(vm *v1alpha1.VirtualMachine, op *v1alpha1.VirtualMachineOperation, name string, typ v1alpha1.VMOPType) *v1alpha1.VirtualMachineOperation {
	child := &v1alpha1.VirtualMachineOperation{
		TypeMeta:   v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachineOperation"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: name, Namespace: vm.Namespace, Labels: map[string]string{v1alpha1.LabelEvictOf: op.Name}},
		Spec:       v1alpha1.VirtualMachineOperationSpec{Type: typ, VirtualMachineName: vm.Name},
	}
	if typ == v1alpha1.VMOPTypeStop && op.Spec.Force != nil {
		f := *op.Spec.Force
		child.Spec.Force = &f
	}
	return child
}
