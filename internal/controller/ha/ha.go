// Package ha is the high-availability controller: it recovers the HA VMs of a failed node.
// When a node's lease has expired (judged as the node lifecycle controller judges it, by
// this process's clock: node.LeaseTracker) and the Node is not Ready (or was removed), and that has lasted the
// safety margin, it
//
//  1. takes the node's lease over (holderIdentity and leaseTransitions, a compare-and-swap on
//     the resourceVersion it read), so that the node's agent, should it come back, finds its
//     lease lost and kills what it still runs of its HA VMs, and cannot acquire the lease
//     again (nor start an HA VM) until this controller's hold has expired;
//  2. for each HA VM bound to the node (v1alpha1.IsHA), highest priority first
//     (v1alpha1.AnnotationHAPriority), then by name: a VM with a VirtualDisk on the node's
//     Local storage gets condition HighAvailability=False (LocalStorageOnFailedNode) and stays;
//     any other is released: one guarded JSON patch of its status clears nodeName, sets phase
//     Stopped and lastExit NodeFailed, and appends to status.recovered. The scheduler then
//     places it on another node and the VM controller's run policy starts it again. Before
//     each release the controller renews its hold on the lease.
//
// VMs that are not HA stay bound to the node and come back with it. Every step is idempotent:
// a leader that takes over midway finds the lease already held (or taken over again), and the
// VMs already released no longer bound to the node. The controller owns status.recovered and
// the HighAvailability condition; it writes nodeName, phase and lastExit of a VM only when it
// releases it from a failed node, whose agent, their other writer, is gone (and whose late
// writes fail the preconditions of their own patches).
package ha

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/controller/node"
	"github.com/rakhsh/rakhsh/internal/placement"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// DefaultIdentity is the holderIdentity the controller writes into a lease it takes over.
const DefaultIdentity = "rakhsh-ha-controller"

// Event reasons.
const (
	ReasonNodeLeaseTakenOver = "NodeLeaseTakenOver"
	ReasonRecovered          = "Recovered"
)

// Config configures the controller.
type Config struct {
	Client client.Interface
	Log    *slog.Logger
	// SafetyMargin is how long a node's lease must have been found expired before its VMs are
	// recovered; default v1alpha1.DefaultHASafetyMargin. Zero means the default; use a
	// negative value for none (tests).
	SafetyMargin time.Duration
	// Interval is how often the leases are looked at; default 1 s.
	Interval time.Duration
	// Identity is the holder written into a taken-over lease; default DefaultIdentity.
	Identity string
	// GroupWait is how long at most a priority group of a failed node's VMs waits for the
	// scheduler to place the group released before it; default 30 s; negative: every group is
	// released at once.
	GroupWait time.Duration
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
}

// Controller is the HA controller.
type Controller struct {
	cfg    Config
	log    *slog.Logger
	rec    *runtime.Recorder
	leases node.LeaseTracker

	mu sync.Mutex
	// expiredSince is when this controller first found each node failed (lease expired and
	// the Node not Ready), by its own clock.
	expiredSince map[string]time.Time
	// cleanup is set when a VM may carry a HighAvailability condition to remove.
	cleanup bool
	// done holds, for each node whose recovery pass completed, the resourceVersion of the
	// lease it left: while the lease stays so there is nothing more to do.
	done map[string]string
	// placing holds, for each node being recovered, the VMs of the priority group released
	// last, and when: the next (lower) group is released only once the scheduler has placed
	// them or found no room for them, so that capacity goes to higher priorities first.
	placing map[string]releasedGroup
}

// releasedGroup is one priority group of a node's HA VMs, released at a time.
type releasedGroup struct {
	at   time.Time
	keys []string // namespace/name
}

// DefaultGroupWait is how long the next priority group waits at most for the scheduler to
// place the previous one.
const DefaultGroupWait = 30 * time.Second

// New returns a controller; Run starts it.
func New(cfg Config) *Controller {
	if cfg.SafetyMargin == 0 {
		cfg.SafetyMargin = v1alpha1.DefaultHASafetyMargin
	}
	if cfg.SafetyMargin < 0 {
		cfg.SafetyMargin = 0
	}
	cfg.Interval = runtime.OrDefault(cfg.Interval, time.Second)
	if cfg.Identity == "" {
		cfg.Identity = DefaultIdentity
	}
	if cfg.GroupWait == 0 {
		cfg.GroupWait = DefaultGroupWait
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Controller{cfg: cfg, log: cfg.Log, expiredSince: map[string]time.Time{}, done: map[string]string{}, cleanup: true,
		placing: map[string]releasedGroup{},
		rec:     &runtime.Recorder{C: cfg.Client, Component: "rakhsh-ha-controller", Log: cfg.Log}}
}

// Run checks every interval until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	runtime.Every(ctx, c.cfg.Interval, func() {
		if err := c.Check(ctx); err != nil && ctx.Err() == nil {
			c.log.Warn("high availability check", "err", err)
		}
	})
	return nil
}

// failedNode is a node whose VMs are to be recovered now.
type failedNode struct {
	name  string
	lease *v1alpha1.NodeLease
	why   string
}

// Check looks at every node once: it recovers the HA VMs of the nodes failed for longer than
// the safety margin, and removes the HighAvailability condition of VMs whose node is back.
func (c *Controller) Check(ctx context.Context) error {
	nodes, err := listAll[v1alpha1.Node](ctx, c.cfg.Client, "nodes", "")
	if err != nil {
		return err
	}
	leases, err := listAll[v1alpha1.NodeLease](ctx, c.cfg.Client, "nodeleases", "")
	if err != nil {
		return err
	}
	now := c.cfg.Now()
	byName := map[string]*v1alpha1.NodeLease{}
	keep := map[string]bool{}
	for _, l := range leases {
		c.leases.Observe(l, now)
		byName[l.Name], keep[l.Name] = l, true
	}
	c.leases.Forget(keep)

	var due []failedNode
	healthy := map[string]bool{}
	known := map[string]bool{}
	c.mu.Lock()
	for _, n := range candidates(nodes, leases) {
		known[n.name] = true
		expired, why := c.leases.Expired(n.name, now)
		if !expired || n.phase == v1alpha1.NodePhaseReady || byName[n.name] == nil {
			delete(c.expiredSince, n.name)
			delete(c.done, n.name)
			delete(c.placing, n.name)
			if !expired && n.phase == v1alpha1.NodePhaseReady {
				healthy[n.name] = true
			}
			continue
		}
		if n.removed {
			why = "the Node was removed; " + why
		}
		since, ok := c.expiredSince[n.name]
		if !ok {
			since = now
			c.expiredSince[n.name] = now
			c.log.Info("node failed: its HA VMs are recovered after the safety margin", "node", n.name, "why", why, "margin", c.cfg.SafetyMargin)
		}
		if rv, ok := c.done[n.name]; ok && rv == byName[n.name].ResourceVersion {
			continue
		}
		if now.Sub(since) >= c.cfg.SafetyMargin {
			due = append(due, failedNode{name: n.name, lease: byName[n.name],
				why: fmt.Sprintf("%s; found failed %s ago (safety margin %s)", why, now.Sub(since).Round(100*time.Millisecond), c.cfg.SafetyMargin)})
		}
	}
	for n := range c.expiredSince {
		if !known[n] {
			delete(c.expiredSince, n)
		}
	}
	cleanup := c.cleanup
	c.mu.Unlock()
	if len(due) == 0 && !cleanup {
		return nil
	}

	vms, err := listAll[v1alpha1.VirtualMachine](ctx, c.cfg.Client, "virtualmachines", "")
	if err != nil {
		return err
	}
	var firstErr error
	note := func(err error) {
		if err != nil && firstErr == nil && ctx.Err() == nil {
			firstErr = err
		}
	}
	if len(due) > 0 {
		disks, err := listAll[v1alpha1.VirtualDisk](ctx, c.cfg.Client, "virtualdisks", "")
		if err != nil {
			return err
		}
		for _, f := range due {
			rv, err := c.recover(ctx, f, vms, disks)
			note(err)
			if err == nil && rv != "" {
				c.mu.Lock()
				c.done[f.name] = rv
				c.mu.Unlock()
			}
		}
	}
	if cleanup {
		left := false
		for _, vm := range vms {
			cond := v1alpha1.FindCondition(vm.Status.Conditions, v1alpha1.VMConditionHighAvailability)
			if cond == nil {
				continue
			}
			if vm.Status.NodeName != "" && !healthy[vm.Status.NodeName] {
				left = true // its node is still away
				continue
			}
			_, err := runtime.PatchVMStatusSoleOwner(ctx, c.cfg.Client, vm, nil, []string{v1alpha1.VMConditionHighAvailability}, func(v *v1alpha1.VirtualMachine) error {
				v1alpha1.RemoveCondition(&v.Status.Conditions, v1alpha1.VMConditionHighAvailability)
				return nil
			})
			if err != nil {
				left = true
				note(err)
				continue
			}
			c.log.Info("the HighAvailability condition is removed: the VM's node is back, or the VM left it", "vm", vm.Namespace+"/"+vm.Name, "node", vm.Status.NodeName)
		}
		c.mu.Lock()
		c.cleanup = left
		c.mu.Unlock()
	}
	return firstErr
}

// candidate is a node the controller judges: a Node, or the lease of a Node that was removed
// (`rakhsh node remove --force` leaves the VMs bound to it; its lease stays and expires, since
// the removed node's credential can no longer renew it, and its HA VMs are recovered like
// those of any failed node).
type candidate struct {
	name    string
	phase   v1alpha1.NodePhase
	removed bool
}

// candidates lists the Nodes, then the leases without a Node.
func candidates(nodes []*v1alpha1.Node, leases []*v1alpha1.NodeLease) []candidate {
	out := make([]candidate, 0, len(nodes))
	have := map[string]bool{}
	for _, n := range nodes {
		out = append(out, candidate{name: n.Name, phase: n.Status.Phase})
		have[n.Name] = true
	}
	for _, l := range leases {
		if !have[l.Name] {
			out = append(out, candidate{name: l.Name, removed: true})
		}
	}
	return out
}

// errLeaseLost stops a recovery: the node's lease changed under the controller.
var errLeaseLost = errors.New("the node lease changed")

// recover takes f's lease over and releases its HA VMs. It returns the resourceVersion of
// the lease as it left it ("" when it stopped early).
func (c *Controller) recover(ctx context.Context, f failedNode, vms []*v1alpha1.VirtualMachine, disks []*v1alpha1.VirtualDisk) (string, error) {
	var todo []*v1alpha1.VirtualMachine
	for _, vm := range vms {
		if vm.Status.NodeName == f.name && vm.DeletionTimestamp == nil && v1alpha1.IsHA(vm) {
			todo = append(todo, vm)
		}
	}
	order(todo, c.log)
	diskNode := map[string]*v1alpha1.VirtualDisk{}
	for _, d := range disks {
		diskNode[d.Namespace+"/"+d.Name] = d
	}
	// The lease is taken over first, even when there is nothing to release: the node's
	// agent, if it comes back, then kills what it still runs of its HA VMs (the Local ones
	// among them).
	lease, err := c.hold(ctx, f)
	if err != nil {
		if errors.Is(err, errLeaseLost) {
			c.log.Info("not recovering: the node lease changed", "node", f.name)
			return "", nil
		}
		return "", err
	}
	heldAt := c.cfg.Now()
	// One priority group at a time: the group released before must be placed (or found not
	// to fit) first.
	if !c.groupPlaced(f.name, vms) {
		// The hold is kept while the group is placed: the node's agent must not take its
		// lease back (and start the VMs still bound to it) halfway through.
		if r := lease.Spec.RenewTime; r == nil || c.cfg.Now().Sub(r.Time) >= time.Second {
			if _, err := c.renew(ctx, f.name, lease); err != nil && !errors.Is(err, errLeaseLost) {
				return "", err
			}
		}
		return "", nil
	}
	var firstErr error
	var group releasedGroup
	groupPrio, first := 0, true
	for _, vm := range todo {
		p, _ := v1alpha1.HAPriority(vm)
		if !first && p != groupPrio && len(group.keys) > 0 && c.cfg.GroupWait > 0 {
			// A lower priority: released once the scheduler has placed this group.
			group.at = c.cfg.Now()
			c.mu.Lock()
			c.placing[f.name] = group
			c.mu.Unlock()
			c.log.Info("HA VMs released; lower priorities wait until they are placed", "node", f.name, "priority", groupPrio, "vms", len(group.keys))
			return "", firstErr
		}
		first, groupPrio = false, p
		if local := localDisks(vm, diskNode, f.name); len(local) > 0 {
			if err := c.stay(ctx, vm, f.name, local); err != nil && firstErr == nil {
				firstErr = err
			}
			continue
		}
		// The hold is renewed when a second has passed since it was written, so that the
		// node's agent cannot acquire the lease (and start an HA VM) while VMs are released.
		if now := c.cfg.Now(); now.Sub(heldAt) >= time.Second {
			lease, err = c.renew(ctx, f.name, lease)
			heldAt = now
		}
		if err != nil {
			if errors.Is(err, errLeaseLost) {
				c.log.Info("recovery stopped: the node lease changed", "node", f.name)
				return "", firstErr
			}
			return "", err
		}
		if err := c.release(ctx, vm, f); err != nil && firstErr == nil {
			firstErr = err
		} else if err == nil {
			group.keys = append(group.keys, vm.Namespace+"/"+vm.Name)
		}
	}
	c.mu.Lock()
	delete(c.placing, f.name)
	c.mu.Unlock()
	return lease.ResourceVersion, firstErr
}

// groupPlaced says whether the priority group last released from node is placed: each of its
// VMs is bound to a node, found no room (condition Scheduled=False), or is gone; or the group
// has waited placeWait.
func (c *Controller) groupPlaced(node string, vms []*v1alpha1.VirtualMachine) bool {
	c.mu.Lock()
	g, ok := c.placing[node]
	c.mu.Unlock()
	if !ok {
		return true
	}
	if c.cfg.Now().Sub(g.at) >= c.cfg.GroupWait {
		c.log.Info("HA recovery goes on with lower priorities: the previous group was not placed in time", "node", node, "waited", c.cfg.GroupWait)
		return true
	}
	byKey := map[string]*v1alpha1.VirtualMachine{}
	for _, vm := range vms {
		byKey[vm.Namespace+"/"+vm.Name] = vm
	}
	for _, k := range g.keys {
		vm := byKey[k]
		if vm == nil || vm.DeletionTimestamp != nil || vm.Status.NodeName != "" {
			continue
		}
		if cond := v1alpha1.FindCondition(vm.Status.Conditions, v1alpha1.VMConditionScheduled); cond != nil && cond.Status == v1alpha1.ConditionFalse {
			continue
		}
		return false
	}
	return true
}

// order sorts vms by priority (higher first), then by class (so that the VMs of one class,
// which share a node selector and CPU model, are placed together), then larger first (cores
// times memory, so that the big ones find room before the small ones fragment it), then by
// name and project.
func order(vms []*v1alpha1.VirtualMachine, log *slog.Logger) {
	prio := map[*v1alpha1.VirtualMachine]int{}
	for _, vm := range vms {
		p, err := v1alpha1.HAPriority(vm)
		if err != nil {
			log.Warn("VM recovered with priority 0", "vm", vm.Namespace+"/"+vm.Name, "err", err)
		}
		prio[vm] = p
	}
	slices.SortStableFunc(vms, func(a, b *v1alpha1.VirtualMachine) int {
		ca, ma := placement.VMQuotaUsage(a)
		cb, mb := placement.VMQuotaUsage(b)
		return cmp.Or(cmp.Compare(prio[b], prio[a]), strings.Compare(a.Spec.VirtualMachineClassName, b.Spec.VirtualMachineClassName),
			cmp.Compare(cb*mb, ca*ma), strings.Compare(a.Name, b.Name), strings.Compare(a.Namespace, b.Namespace))
	})
}

// localDisks returns the VM's VirtualDisks on node's Local storage (status.nodeName), spec
// and hot-plugged ones.
func localDisks(vm *v1alpha1.VirtualMachine, disks map[string]*v1alpha1.VirtualDisk, node string) []string {
	var out []string
	seen := map[string]bool{}
	check := func(kind v1alpha1.BlockDeviceKind, name string) {
		if kind != v1alpha1.BlockDeviceKindVirtualDisk || seen[name] {
			return
		}
		seen[name] = true
		if d := disks[vm.Namespace+"/"+name]; d != nil && d.Status.NodeName == node {
			out = append(out, name)
		}
	}
	for _, r := range vm.Spec.BlockDeviceRefs {
		check(r.Kind, r.Name)
	}
	for _, r := range vm.Status.BlockDeviceRefs {
		check(r.Kind, r.Name)
	}
	return out
}

// hold takes the node's lease over, or finds it already held by this controller (a
// recovery begun before, perhaps by another leader). The write is guarded by the
// resourceVersion read: a renewal by the node's agent in between wins, and the node is not
// recovered.
func (c *Controller) hold(ctx context.Context, f failedNode) (*v1alpha1.NodeLease, error) {
	var cur v1alpha1.NodeLease
	if err := c.cfg.Client.Get(ctx, "nodeleases", "", f.name, &cur); err != nil {
		if client.IsNotFound(err) {
			return nil, errLeaseLost
		}
		return nil, err
	}
	if cur.ResourceVersion != f.lease.ResourceVersion && cur.Spec.HolderIdentity != c.cfg.Identity {
		return nil, errLeaseLost // renewed (or otherwise changed) since it was judged
	}
	if cur.Spec.HolderIdentity == c.cfg.Identity {
		return &cur, nil
	}
	prev := cur.Spec.HolderIdentity
	now := v1alpha1.NewTime(c.cfg.Now())
	cur.Spec.HolderIdentity = c.cfg.Identity
	cur.Spec.LeaseTransitions++
	cur.Spec.AcquireTime, cur.Spec.RenewTime = &now, &now
	if cur.Spec.LeaseDurationSeconds <= 0 {
		cur.Spec.LeaseDurationSeconds = int32(v1alpha1.DefaultNodeLeaseDuration / time.Second)
	}
	var out v1alpha1.NodeLease
	if err := c.cfg.Client.Update(ctx, "nodeleases", "", f.name, &cur, &out); err != nil {
		if client.IsConflict(err) || client.IsNotFound(err) {
			return nil, errLeaseLost
		}
		return nil, fmt.Errorf("taking over the lease of node %s: %w", f.name, err)
	}
	c.leases.Observe(&out, c.cfg.Now())
	c.log.Warn("node lease taken over to recover the node's HA VMs", "node", f.name, "previousHolder", prev, "transitions", out.Spec.LeaseTransitions, "why", f.why)
	c.rec.Event(ctx, "NodeLease", &out, "Warning", ReasonNodeLeaseTakenOver,
		fmt.Sprintf("taken over from %q to recover the HA VMs of node %s: %s", prev, f.name, f.why))
	return &out, nil
}

// renew keeps the controller's hold on the lease fresh (renewTime now, guarded by the
// resourceVersion), so the node's agent cannot acquire it again while VMs are released.
func (c *Controller) renew(ctx context.Context, name string, l *v1alpha1.NodeLease) (*v1alpha1.NodeLease, error) {
	cur := *l
	now := v1alpha1.NewTime(c.cfg.Now())
	cur.Spec.RenewTime = &now
	var out v1alpha1.NodeLease
	if err := c.cfg.Client.Update(ctx, "nodeleases", "", name, &cur, &out); err != nil {
		if client.IsConflict(err) || client.IsNotFound(err) {
			return nil, errLeaseLost
		}
		return nil, fmt.Errorf("renewing the hold on the lease of node %s: %w", name, err)
	}
	if out.Spec.HolderIdentity != c.cfg.Identity {
		return nil, errLeaseLost
	}
	return &out, nil
}

// errSkip: the VM is not to be written (it left the node meanwhile, or nothing changes).
var errSkip = errors.New("skip")

// stay sets the HighAvailability condition of an HA VM that cannot leave the failed node.
func (c *Controller) stay(ctx context.Context, vm *v1alpha1.VirtualMachine, node string, local []string) error {
	quoted := make([]string, len(local))
	for i, d := range local {
		quoted[i] = fmt.Sprintf("VirtualDisk %q", d)
	}
	msg := fmt.Sprintf("%s on node %s's Local storage: the VM cannot run on another node, and runs again when node %s is back",
		strings.Join(quoted, ", "), node, node)
	want := v1alpha1.Condition{Type: v1alpha1.VMConditionHighAvailability, Status: v1alpha1.ConditionFalse,
		Reason: v1alpha1.ReasonLocalStorageOnFailedNode, Message: msg}
	if old := v1alpha1.FindCondition(vm.Status.Conditions, want.Type); old != nil && old.Status == want.Status && old.Reason == want.Reason && old.Message == want.Message {
		return nil
	}
	written, err := runtime.PatchVMStatusSoleOwner(ctx, c.cfg.Client, vm, nil, []string{v1alpha1.VMConditionHighAvailability}, func(v *v1alpha1.VirtualMachine) error {
		if v.Status.NodeName != node {
			return errSkip
		}
		now := v1alpha1.NewTime(c.cfg.Now())
		want.LastTransitionTime = &now
		if old := v1alpha1.FindCondition(v.Status.Conditions, want.Type); old != nil && old.Status == want.Status {
			want.LastTransitionTime = old.LastTransitionTime
		}
		v1alpha1.SetCondition(&v.Status.Conditions, want)
		return nil
	})
	if errors.Is(err, errSkip) {
		return nil
	}
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.cleanup = true
	c.mu.Unlock()
	if written != nil {
		c.log.Warn("HA VM not recovered: Local storage on the failed node", "vm", vm.Namespace+"/"+vm.Name, "node", node, "disks", local)
		c.rec.Event(ctx, "VirtualMachine", vm, "Warning", v1alpha1.ReasonLocalStorageOnFailedNode, msg)
	}
	return nil
}

// releasedFields are the status fields a release writes; releaseGuards those it must find
// as read (the agent's and the VM controller's), so a VM that changed meanwhile is looked
// at again rather than released on stale grounds.
var (
	releasedFields = []string{"nodeName", "phase", "lastExit", "recovered", "conditions"}
	releaseGuards  = []string{"observedRestartID", "powerRequest", "migrationState"}
)

// release unbinds an HA VM from the failed node f: one JSON patch whose tests are the values
// read.
func (c *Controller) release(ctx context.Context, vm *v1alpha1.VirtualMachine, f failedNode) error {
	msg := fmt.Sprintf("node %s failed (%s): released to start on another node", f.name, f.why)
	// The disk leases the failed node holds for the VM are freed first (the node's lease is
	// held by this controller, so its agent, fenced, starts nothing): the node the VM is
	// placed on next takes them under a later token.
	if vm.Status.NodeName == f.name && vm.DeletionTimestamp == nil && v1alpha1.IsHA(vm) {
		for _, d := range runtime.WritableDisks(vm) {
			freed, err := runtime.ReleaseDiskLease(ctx, c.cfg.Client, vm.Namespace, d, f.name, "", "the HA controller: "+msg)
			if err != nil {
				return fmt.Errorf("releasing VM %s/%s from node %s: %w", vm.Namespace, vm.Name, f.name, err)
			}
			if freed {
				c.log.Info("disk lease of a failed node freed", "disk", vm.Namespace+"/"+d, "node", f.name)
			}
		}
	}
	written, err := runtime.PatchVMStatus(ctx, c.cfg.Client, vm, releasedFields, releaseGuards, func(v *v1alpha1.VirtualMachine) error {
		if v.Status.NodeName != f.name || v.DeletionTimestamp != nil || !v1alpha1.IsHA(v) {
			return errSkip
		}
		now := v1alpha1.NewTime(c.cfg.Now())
		count := 1
		if prev := v.Status.LastExit; prev != nil && prev.Reason == v1alpha1.ExitNodeFailed {
			count = prev.Count + 1
		}
		v.Status.NodeName = ""
		v.Status.Phase = v1alpha1.VMPhaseStopped
		v.Status.LastExit = &v1alpha1.VMExit{Reason: v1alpha1.ExitNodeFailed, Message: msg, Time: &now, Count: count}
		rec := append(slices.Clone(v.Status.Recovered), v1alpha1.VMRecovery{FromNode: f.name, Time: &now, Message: f.why})
		if len(rec) > v1alpha1.MaxRecoveredHistory {
			rec = rec[len(rec)-v1alpha1.MaxRecoveredHistory:]
		}
		v.Status.Recovered = rec
		v1alpha1.RemoveCondition(&v.Status.Conditions, v1alpha1.VMConditionHighAvailability)
		return nil
	})
	if errors.Is(err, errSkip) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("releasing VM %s/%s from node %s: %w", vm.Namespace, vm.Name, f.name, err)
	}
	if written == nil {
		return nil
	}
	c.log.Warn("HA VM released from its failed node", "vm", vm.Namespace+"/"+vm.Name, "node", f.name)
	c.rec.Event(ctx, "VirtualMachine", written, "Warning", ReasonRecovered, msg)
	return nil
}

// listAll lists every object of a resource, decoded.
func listAll[T any](ctx context.Context, c client.Interface, resource, ns string) ([]*T, error) {
	l, err := c.ListAll(ctx, resource, ns, client.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", resource, err)
	}
	out := make([]*T, 0, len(l.Items))
	for _, raw := range l.Items {
		v := new(T)
		if err := json.Unmarshal(raw, v); err != nil {
			return nil, fmt.Errorf("decoding %s: %w", resource, err)
		}
		out = append(out, v)
	}
	return out, nil
}
