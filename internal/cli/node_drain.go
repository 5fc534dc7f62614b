package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	nodectl "github.com/rakhsh/rakhsh/internal/controller/node"
)

// drainOptions are the flags of `rakhsh node drain`.
type drainOptions struct {
	timeout  time.Duration
	wait     bool
	parallel int
	interval time.Duration
}

func newNodeDrainCommand(cc *cliContext) *cobra.Command {
	o := drainOptions{timeout: 30 * time.Minute, wait: true, parallel: nodectl.DefaultEvictParallel, interval: time.Second}
	cmd := &cobra.Command{
		Use:   "drain NODE",
		Short: "Cordon a node and move every running VM off it (Evict operations)",
		Long: `Cordon the node (spec.unschedulable), then evict every VM running on it: one Evict
VirtualMachineOperation per VM, at most --parallel at a time. An Evict live-migrates the VM
where its liveMigrationPolicy allows; otherwise the VM is stopped and, if its runPolicy wants it
running, started on another node. A VM that already has an Evict or Migrate under way is not
given a second one.

drain prints a line whenever a VM's eviction changes (operation, phase, migration progress) and
ends when no running VM is bound to the node (exit 0). A VM whose eviction failed and cannot
succeed by trying again (its policy or disks keep it on the node, say) is reported with the
reason; drain goes on with the others and then exits non-zero naming each such VM. An Evict
that failed only because another operation of the VM was under way, or the VM was between
phases, is tried again; one whose migration broke is tried up to 3 times.

Stopped VMs are not moved: they hold nothing on the node but their disks. A stopped VM whose
Local disks are on the node can start only there; drain names such VMs.

With --wait=false drain cordons the node, starts the first evictions and returns; run it again
to go on. 'rakhsh node maintenance on NODE' drains on the control plane, without a client
waiting. See docs/nodes.md.`,
		Example: `  rakhsh node drain h2
  rakhsh node drain h2 --parallel 4 --timeout 1h`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.parallel < 1 {
				return usageErrorf("--parallel %d: must be at least 1", o.parallel)
			}
			if o.timeout < 0 {
				return usageErrorf("--timeout %s: must not be negative (0: no limit)", o.timeout)
			}
			if o.interval <= 0 {
				return usageErrorf("--poll-interval %s: must be positive", o.interval)
			}
			c, err := cc.Client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			ctx, cancel := withTimeout(ctx, o.timeout)
			defer cancel()
			return drainNode(ctx, c, cmd.OutOrStdout(), args[0], o)
		},
	}
	f := cmd.Flags()
	f.DurationVar(&o.timeout, "timeout", o.timeout, "give up after this long, naming the VMs still on the node (0: no limit)")
	f.BoolVar(&o.wait, "wait", o.wait, "wait until the node is empty; with --wait=false start the first evictions and return")
	f.IntVar(&o.parallel, "parallel", o.parallel, "how many evictions may run at a time")
	f.DurationVar(&o.interval, "poll-interval", o.interval, "how often the VMs and operations are read")
	_ = f.MarkHidden("poll-interval")
	return cmd
}

// drainNode cordons node and evicts its VMs until none runs there (see newNodeDrainCommand).
func drainNode(ctx context.Context, c *client.Client, w io.Writer, node string, o drainOptions) error {
	var n v1alpha1.Node
	if err := c.Get(ctx, "nodes", "", node, &n); err != nil {
		return err
	}
	if !n.Spec.Unschedulable {
		if err := c.Patch(ctx, "nodes", "", node, []byte(`{"spec":{"unschedulable":true}}`), nil); err != nil {
			return fmt.Errorf("cordoning node %s: %w", node, err)
		}
		fmt.Fprintf(w, "node/%s cordoned\n", node)
	} else {
		fmt.Fprintf(w, "node/%s already cordoned\n", node)
	}
	if n.Spec.Maintenance {
		fmt.Fprintf(w, "node/%s is in maintenance: the control plane evicts its VMs too; drain waits for those evictions rather than doubling them\n", node)
	}
	if err := reportStoppedPinned(ctx, c, w, node); err != nil {
		return err
	}

	mine := map[string]bool{} // "namespace/name" of the operations this drain created
	shown := map[string]string{}
	var last nodectl.EvictPlan
	lastErr := ""
	// pause waits for the next round; false when ctx ended.
	pause := func() bool {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(o.interval):
			return true
		}
	}
	// retry reports a passing API error (a control plane failing over, say) once and says
	// whether to go on; an error that will not pass ends the drain.
	retry := func(what string, err error) error {
		if !drainRetryable(err) || ctx.Err() != nil {
			return drainErr(ctx, node, &last, fmt.Errorf("%s: %w", what, err))
		}
		if msg := what + ": " + err.Error(); msg != lastErr {
			fmt.Fprintf(w, "node/%s	%s; trying again\n", node, msg)
			lastErr = msg
		}
		if !pause() {
			return drainErr(ctx, node, &last, ctx.Err())
		}
		return nil
	}
	for {
		vms, ops, err := drainState(ctx, c, node)
		if err != nil {
			if err := retry("reading the VMs and operations", err); err != nil {
				return err
			}
			continue
		}
		lastErr = ""
		plan := nodectl.PlanEviction(nodectl.EvictInput{Node: node, VMs: vms, Ops: ops, Parallel: o.parallel, Now: time.Now(),
			Counts: func(op *v1alpha1.VirtualMachineOperation) bool { return mine[op.Namespace+"/"+op.Name] }})
		for i := range plan.Entries {
			e := &plan.Entries[i]
			if e.Action != nodectl.EvictCreate {
				continue
			}
			var out v1alpha1.VirtualMachineOperation
			if err := c.Create(ctx, "virtualmachineoperations", e.Namespace, nodectl.NewEvictOp(e.Namespace, e.Name, node, nodectl.EvictByDrain), &out); err != nil {
				if !drainRetryable(err) {
					return drainErr(ctx, node, &plan, fmt.Errorf("evicting VM %s: %w", e.Key(), err))
				}
				fmt.Fprintf(w, "%s\tcreating its Evict: %v; trying again\n", e.Key(), err)
				e.Action, e.Reason = nodectl.EvictWait, "its Evict could not be created: "+err.Error()
				continue
			}
			mine[out.Namespace+"/"+out.Name] = true
			e.Action, e.Op = nodectl.EvictInFlight, &out
			plan.InFlight++
		}
		// One line per VM whose state changed, and one for each VM that left.
		vmByKey := map[string]*v1alpha1.VirtualMachine{}
		for _, vm := range vms {
			vmByKey[vm.Namespace+"/"+vm.Name] = vm
		}
		now := map[string]bool{}
		for _, e := range plan.Entries {
			now[e.Key()] = true
			line := drainLine(e, vmByKey[e.Key()])
			if shown[e.Key()] != line {
				fmt.Fprintf(w, "%s\t%s\n", e.Key(), line)
				shown[e.Key()] = line
			}
		}
		for _, e := range last.Entries {
			if !now[e.Key()] {
				fmt.Fprintf(w, "%s\t%s\n", e.Key(), leftLine(ctx, c, e, node))
				delete(shown, e.Key())
			}
		}
		last = plan
		if plan.Drained() {
			fmt.Fprintf(w, "node/%s drained: no running VM is bound to it\n", node)
			return nil
		}
		if !o.wait {
			fmt.Fprintf(w, "node/%s: %d VM(s) still run on it; evictions under way: %d (run drain again to go on, or see rakhsh get vmop -A -l %s=%s)\n",
				node, len(plan.Entries), plan.InFlight, nodectl.LabelEvictNode, node)
			return nil
		}
		if stuck := plan.Count(nodectl.EvictStuck); stuck == len(plan.Entries) {
			return fmt.Errorf("node %s is not drained: %s", node, stuckList(&plan))
		}
		if !pause() {
			return drainErr(ctx, node, &plan, ctx.Err())
		}
	}
}

// drainRetryable reports whether an API error may pass by itself (the server unreachable or
// unavailable, a conflict, a rate limit), rather than say the request is wrong or not allowed.
func drainRetryable(err error) bool {
	switch client.Reason(err) {
	case v1alpha1.ReasonForbidden, v1alpha1.ReasonUnauthorized, v1alpha1.ReasonInvalid, v1alpha1.ReasonBadRequest, v1alpha1.ReasonNotFound:
		return false
	}
	return true
}

// drainState reads the VMs bound to node and every operation.
func drainState(ctx context.Context, c *client.Client, node string) ([]*v1alpha1.VirtualMachine, []*v1alpha1.VirtualMachineOperation, error) {
	l, err := c.ListAll(ctx, "virtualmachines", "", client.ListOptions{FieldSelector: "status.nodeName=" + node})
	if err != nil {
		return nil, nil, err
	}
	vms, err := decodeTyped[v1alpha1.VirtualMachine](l)
	if err != nil {
		return nil, nil, err
	}
	l, err = c.ListAll(ctx, "virtualmachineoperations", "", client.ListOptions{})
	if err != nil {
		return nil, nil, err
	}
	ops, err := decodeTyped[v1alpha1.VirtualMachineOperation](l)
	if err != nil {
		return nil, nil, err
	}
	return vms, ops, nil
}

func decodeTyped[T any](l *v1alpha1.List) ([]*T, error) {
	out := make([]*T, 0, len(l.Items))
	for _, raw := range l.Items {
		o := new(T)
		if err := json.Unmarshal(raw, o); err != nil {
			return nil, err
		}
		out = append(out, o)
	}
	return out, nil
}

// drainLine is the progress line of one VM: its operation, the operation's phase and
// progress and, while it migrates, what the VM's status.migrationState says.
func drainLine(e nodectl.EvictEntry, vm *v1alpha1.VirtualMachine) string {
	if e.Action != nodectl.EvictInFlight {
		return e.Describe()
	}
	parts := []string{"operation " + e.Op.Name, orPending(string(e.Op.Status.Phase))}
	if e.Op.Status.Progress != "" {
		parts = append(parts, e.Op.Status.Progress)
	}
	if vm != nil {
		parts = append(parts, "vm "+orPending(string(vm.Status.Phase)))
		if m := drainMigration(vm); m != "" {
			parts = append(parts, m)
		}
	}
	return strings.Join(parts, "\t")
}

// drainMigration renders a VM's status.migrationState: source -> target and every other
// scalar it reports (bytes transferred and remaining, dirty rate, ...), sorted by name.
func drainMigration(vm *v1alpha1.VirtualMachine) string {
	ms := vm.Status.MigrationState
	if ms == nil || ms.EndTimestamp != nil {
		return ""
	}
	s := fmt.Sprintf("%s -> %s", orDash(ms.Source.Node), orDash(ms.Target.Node))
	raw, err := json.Marshal(vm.Status)
	if err != nil {
		return s
	}
	var st struct {
		MigrationState map[string]any `json:"migrationState"`
	}
	if json.Unmarshal(raw, &st) != nil {
		return s
	}
	var keys []string
	for k, v := range st.MigrationState {
		switch v.(type) {
		case string, float64, bool:
			if k != "startTimestamp" && k != "endTimestamp" && k != "result" {
				keys = append(keys, k)
			}
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		s += fmt.Sprintf(" %s=%v", k, st.MigrationState[k])
	}
	return s
}

// leftLine says where a VM that no longer runs on node went.
func leftLine(ctx context.Context, c *client.Client, e nodectl.EvictEntry, node string) string {
	var vm v1alpha1.VirtualMachine
	if err := c.Get(ctx, "virtualmachines", e.Namespace, e.Name, &vm); err != nil {
		if client.IsNotFound(err) {
			return "deleted"
		}
		return "left node " + node
	}
	switch {
	case vm.Status.NodeName != "" && vm.Status.NodeName != node:
		return fmt.Sprintf("left node %s: %s on %s", node, orPending(string(vm.Status.Phase)), vm.Status.NodeName)
	case vm.Status.NodeName == "":
		return fmt.Sprintf("left node %s: %s, bound to no node", node, orPending(string(vm.Status.Phase)))
	}
	return fmt.Sprintf("stopped on node %s (holds nothing there that must move)", node)
}

// stuckList names the VMs whose eviction failed for good, with the reasons.
func stuckList(p *nodectl.EvictPlan) string {
	var parts []string
	for _, e := range p.Entries {
		if e.Action == nodectl.EvictStuck {
			parts = append(parts, fmt.Sprintf("VM %s cannot leave: %s", e.Key(), e.Reason))
		}
	}
	return strings.Join(parts, "; ")
}

// drainErr is err with what is still on the node.
func drainErr(ctx context.Context, node string, p *nodectl.EvictPlan, err error) error {
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil {
		err = errors.New("timed out (--timeout)")
	}
	if p == nil || p.Drained() {
		return fmt.Errorf("draining node %s: %w", node, err)
	}
	return fmt.Errorf("draining node %s: %w; %s", node, err, p.Summary())
}

// reportStoppedPinned names the VMs that are not running and whose Local disks are on node:
// drain leaves them, and they can start only there.
func reportStoppedPinned(ctx context.Context, c *client.Client, w io.Writer, node string) error {
	l, err := c.ListAll(ctx, "virtualdisks", "", client.ListOptions{})
	if err != nil {
		return err
	}
	disks, err := decodeTyped[v1alpha1.VirtualDisk](l)
	if err != nil {
		return err
	}
	here := map[string]bool{}
	for _, d := range disks {
		if d.Status.NodeName == node {
			here[d.Namespace+"/"+d.Name] = true
		}
	}
	if len(here) == 0 {
		return nil
	}
	l, err = c.ListAll(ctx, "virtualmachines", "", client.ListOptions{})
	if err != nil {
		return err
	}
	vms, err := decodeTyped[v1alpha1.VirtualMachine](l)
	if err != nil {
		return err
	}
	sort.Slice(vms, func(i, j int) bool {
		return vms[i].Namespace+"/"+vms[i].Name < vms[j].Namespace+"/"+vms[j].Name
	})
	for _, vm := range vms {
		if nodectl.RunsOn(vm, node) || (vm.Status.NodeName != "" && vm.Status.NodeName != node) {
			continue
		}
		var pinned []string
		for _, r := range vm.Spec.BlockDeviceRefs {
			if r.Kind == v1alpha1.BlockDeviceKindVirtualDisk && here[vm.Namespace+"/"+r.Name] {
				pinned = append(pinned, r.Name)
			}
		}
		if len(pinned) > 0 {
			fmt.Fprintf(w, "%s/%s\tstopped; left in place: its Local disk(s) %s are on node %s, so it can start only there (or move them: rakhsh disk move)\n",
				vm.Namespace, vm.Name, strings.Join(pinned, ", "), node)
		}
	}
	return nil
}

func newNodeMaintenanceCommand(cc *cliContext) *cobra.Command {
	return &cobra.Command{
		Use:   "maintenance on|off NODE...",
		Short: "Put nodes in maintenance (no new VMs; the control plane evicts theirs) or take them out",
		Long: `'maintenance on' sets spec.maintenance on the Node: the scheduler places no new VM there, and
the control plane's node maintenance controller evicts the VMs running there (Evict operations,
at most 2 at a time), as 'rakhsh node drain' does, without a client waiting. The Node's
condition Maintenance says how it goes: reason Draining while VMs remain (naming each, and any
that cannot leave), Drained once none does. Follow it with
  rakhsh node describe NODE      or      rakhsh wait node NODE --for condition=Maintenance
'maintenance off' clears the field: the node takes new VMs again. VMs that were moved away
stay where they are. Only admins may do this: a node's own credential may not change its
spec. See docs/nodes.md.`,
		Example: `  rakhsh node maintenance on h2
  rakhsh node maintenance off h2`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 2 {
				return usageErrorf("give on or off and at least one node, e.g. rakhsh node maintenance on h2")
			}
			if args[0] != "on" && args[0] != "off" {
				return usageErrorf("unknown maintenance mode %q: use on or off", args[0])
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			patch, done := `{"spec":{"maintenance":true}}`, "in maintenance: it takes no new VMs, and the control plane evicts its VMs"
			if args[0] == "off" {
				patch, done = `{"spec":{"maintenance":null}}`, "out of maintenance: it takes new VMs again (moved VMs stay where they are)"
			}
			return patchNodes(cmd, cc, args[1:], patch, done)
		},
	}
}
