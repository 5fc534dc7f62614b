package scheduler

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// DefaultMaxInbound is the number of migrations a node receives at once.
const DefaultMaxInbound = 2

// scheduleMigration picks the target node of a VM's live migration (phase Scheduling): a node
// other than the source that fits the VM as a new VM would (class, node selector, taints,
// CPU features, capacity with the VM counted there), matches the operation's node selector,
// and receives fewer than MaxInbound migrations. The VM's disks do not pin it: Local disks
// move with it. It writes phase Pending with the target, or Failed when no node fits.
func (s *Scheduler) scheduleMigration(ctx context.Context, vm *v1alpha1.VirtualMachine) (runtime.Result, error) {
	m := vm.Status.MigrationState
	now := s.cfg.Now()
	class, cerr := s.class(vm)
	var target, why string
	if cerr != "" {
		why = cerr
	} else {
		var candidates []*nodeState
		skipped := []string{}
		inbound := s.inbound()
		for _, n := range s.nodeStates() {
			name := n.node.Name
			switch {
			case name == m.Source.Node:
				continue
			case !labelsMatch(n.node.Labels, m.NodeSelector):
				skipped = append(skipped, name+": does not match the operation's node selector "+selectorString(m.NodeSelector))
				continue
			case inbound[name] >= s.maxInbound():
				skipped = append(skipped, fmt.Sprintf("%s: already receives %d migrations", name, inbound[name]))
				continue
			}
			candidates = append(candidates, n)
		}
		var bwhy string
		if candidates, bwhy = s.bridgeNodes(vm, candidates); bwhy != "" {
			why = bwhy
		} else if len(candidates) == 0 {
			why = "no node other than the source " + m.Source.Node
			if len(skipped) > 0 {
				why += " fits: " + strings.Join(skipped, "; ")
			}
		} else {
			target, why = pick(vm, class, candidates, now, s.cfg.NodeStaleAfter, "")
			if target == "" && len(skipped) > 0 {
				why += "; " + strings.Join(skipped, "; ")
			}
		}
	}
	_, err := runtime.PatchVMStatus(ctx, s.C, vm, []string{"migrationState"}, []string{"nodeName"}, func(v *v1alpha1.VirtualMachine) error {
		cur := v.Status.MigrationState
		if !cur.Active() || cur.ID != m.ID || cur.Phase != v1alpha1.MigrationPhaseScheduling {
			return errMigrationMoved
		}
		next := *cur
		next.NodeSelector = maps.Clone(cur.NodeSelector)
		if target == "" {
			t := v1alpha1.NewTime(now)
			next.Phase, next.Result, next.Reason, next.EndTimestamp = v1alpha1.MigrationPhaseFailed, v1alpha1.MigrationResultFailed, v1alpha1.MigrationReasonNoTarget, &t
			next.Message = "no target node: " + why
		} else {
			next.Phase, next.Target.Node, next.Message = v1alpha1.MigrationPhasePending, target, "preparing the target node "+target
		}
		v.Status.MigrationState = &next
		return nil
	})
	if errors.Is(err, errMigrationMoved) {
		return runtime.Result{}, nil
	}
	if err != nil {
		return runtime.Result{}, err
	}
	if target == "" {
		s.Log.Info("no target for a live migration", "vm", vm.Namespace+"/"+vm.Name, "why", why)
		s.Rec.Event(ctx, "VirtualMachine", vm, "Warning", "MigrationNotScheduled", why)
	} else {
		s.Log.Info("live migration target chosen", "vm", vm.Namespace+"/"+vm.Name, "from", m.Source.Node, "to", target)
	}
	return runtime.Result{}, nil
}

var errMigrationMoved = errors.New("the migration moved on")

// inbound counts the migrations each node receives now.
func (s *Scheduler) inbound() map[string]int {
	out := map[string]int{}
	for _, vm := range s.vms.List() {
		if m := vm.Status.MigrationState; m.Active() && m.Target.Node != "" {
			out[m.Target.Node]++
		}
	}
	return out
}

func (s *Scheduler) maxInbound() int {
	if s.cfg.MaxInboundMigrations > 0 {
		return s.cfg.MaxInboundMigrations
	}
	return DefaultMaxInbound
}
