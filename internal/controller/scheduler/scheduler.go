// Package scheduler binds virtual machines to nodes. A VM that should run (its power request,
// or before the VM controller wrote one its runPolicy), whose block devices are ready and that
// has no node yet, is bound to the Ready node with the most room left (least allocated)
// among those that fit: fresh heartbeat, schedulable, taints tolerated, nodeSelector and
// required node affinity matched, the VM class's nodeSelector, tolerations and CPU features
// honoured, and enough allocatable cpu and memory (capacity × allocation ratio − the VMs bound
// to it) and, for dedicated cores, free physical cores (never overcommitted). Nodes and VMs
// are decoded once per change into caches with per-node usage sums, so a placement costs
// O(nodes). The binding is a merge patch of status.nodeName
// guarded by the VM's resourceVersion, so two schedulers never bind one VM twice. A VM that
// fits nowhere gets condition Scheduled=False saying why, node by node.
package scheduler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// ConditionScheduled is the VM condition the scheduler owns (a Rakhsh addition, like
// Kubernetes' PodScheduled): True with the node, or False with why no node fits.
const ConditionScheduled = v1alpha1.VMConditionScheduled

// Reasons of the Scheduled condition.
const (
	ReasonScheduled     = "Scheduled"
	ReasonUnschedulable = "Unschedulable"
)

// Config configures the scheduler.
type Config struct {
	runtime.Deps
	// NodeStaleAfter is how old a node's heartbeat may be for it to take new VMs; default 40 s.
	NodeStaleAfter time.Duration
	// RetryInterval is how often unschedulable VMs are tried again (besides on node changes);
	// default 30 s.
	RetryInterval time.Duration
	// MaxInboundMigrations is the number of live migrations a node receives at once; default 2.
	MaxInboundMigrations int
	Now                  func() time.Time
}

// Scheduler is the VM scheduler.
type Scheduler struct {
	cfg Config

	runtime.Base
	vms     *runtime.TypedInformer[v1alpha1.VirtualMachine]
	nodes   *runtime.TypedInformer[v1alpha1.Node]
	disks   *runtime.TypedInformer[v1alpha1.VirtualDisk]
	classes *runtime.TypedInformer[v1alpha1.VirtualMachineClass]
	cnets   *runtime.TypedInformer[v1alpha1.ClusterNetwork]
	ctl     *runtime.Controller
	queue   *runtime.Queue

	mu      sync.Mutex
	assumed map[runtime.Key]assumption // bindings written but not yet seen by the informer
	// The informers' objects decoded once per change, so a placement costs no JSON decoding:
	// the nodes by name, what each bound VM holds of its node, and the VMs without a node.
	nodeCache map[string]*nodeState // allocatable computed, nothing used
	bound     map[runtime.Key]boundVM
	usage     map[string]*usageSum // by node: the sum of bound
	pending   map[runtime.Key]bool
}

// boundVM is a VM with a node and what it holds there.
type boundVM struct {
	node string
	req  request
	// migTarget is the target node of the VM's live migration under way: it holds the VM's
	// resources there too until the migration ends.
	migTarget string
}

type assumption struct {
	uid, node string
	req       request
	at        time.Time
}

// New returns a scheduler; Run starts it.
func New(cfg Config) (*Scheduler, error) {
	if cfg.Client == nil {
		return nil, errors.New("scheduler: a client is required")
	}
	cfg.NodeStaleAfter = runtime.OrDefault(cfg.NodeStaleAfter, 40*time.Second)
	cfg.RetryInterval = runtime.OrDefault(cfg.RetryInterval, 30*time.Second)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	b := runtime.NewBase(cfg.Deps, "rakhsh-scheduler", "component", "scheduler")
	s := &Scheduler{cfg: cfg, Base: b, assumed: map[runtime.Key]assumption{},
		nodeCache: map[string]*nodeState{}, bound: map[runtime.Key]boundVM{}, usage: map[string]*usageSum{}, pending: map[runtime.Key]bool{}}
	f := b.Informers
	s.vms, s.nodes, s.disks, s.classes = f.VirtualMachines(), f.Nodes(), f.VirtualDisks(), f.VirtualMachineClasses()
	s.cnets = f.ClusterNetworks()
	// One worker: decisions see each other's bindings. VMs are queued by their own changes
	// (after the caches took them in) and, when nodes or classes change, every pending VM.
	s.ctl = runtime.NewController("scheduler", s.Log).
		Watches(s.vms, func(k runtime.Key) []runtime.Key {
			s.noteVM(k)
			return []runtime.Key{k}
		}).
		Watches(s.nodes, func(k runtime.Key) []runtime.Key {
			s.noteNode(k)
			return s.pendingKeys()
		}).
		Watches(s.classes, func(runtime.Key) []runtime.Key { return s.pendingKeys() }).
		Watches(s.cnets, func(runtime.Key) []runtime.Key { return s.pendingKeys() }).
		Reads(s.disks).
		Workers(1).
		MaxBackoff(5 * time.Second).
		Build(s.reconcile)
	s.queue = s.ctl.Queue()
	return s, nil
}

// Run schedules until ctx ends.
func (s *Scheduler) Run(ctx context.Context) error {
	s.Base.StartInformers(ctx)
	go func() {
		// Once synced, every VM waiting for a node is tried.
		if runtime.WaitForSync(ctx, s.vms, s.nodes, s.disks, s.classes, s.cnets) {
			s.queuePending()
		}
	}()
	return s.ctl.Run(ctx)
}

// pendingKeys returns every VM waiting for a node.
func (s *Scheduler) pendingKeys() []runtime.Key {
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := make([]runtime.Key, 0, len(s.pending))
	for k := range s.pending {
		keys = append(keys, k)
	}
	return keys
}

// queuePending queues every VM waiting for a node.
func (s *Scheduler) queuePending() {
	for _, k := range s.pendingKeys() {
		s.queue.Add(k)
	}
}

// noteVM updates the caches from the informer's copy of one VM.
func (s *Scheduler) noteVM(k runtime.Key) {
	vm, ok := s.vms.Get(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if !ok {
		s.setBoundLocked(k, nil)
		return
	}
	s.setBoundLocked(k, vm)
}

// setBoundLocked records vm (nil: gone) under k, keeping the per-node sums.
func (s *Scheduler) setBoundLocked(k runtime.Key, vm *v1alpha1.VirtualMachine) {
	if old, had := s.bound[k]; had {
		if u := s.usage[old.node]; u != nil {
			u.add(old.req, -1)
		}
		if u := s.usage[old.migTarget]; old.migTarget != "" && u != nil {
			u.add(old.req, -1)
		}
		delete(s.bound, k)
	}
	delete(s.pending, k)
	switch {
	case vm == nil:
	case vm.Status.NodeName != "":
		b := boundVM{node: vm.Status.NodeName, req: requestOf(vm)}
		if m := vm.Status.MigrationState; m.Active() && m.Target.Node != "" && m.Target.Node != b.node {
			b.migTarget = m.Target.Node
		}
		s.bound[k] = b
		for _, n := range []string{b.node, b.migTarget} {
			if n == "" {
				continue
			}
			u := s.usage[n]
			if u == nil {
				u = &usageSum{}
				s.usage[n] = u
			}
			u.add(b.req, 1)
		}
	default:
		s.pending[k] = true
	}
}

// noteNode updates the node cache from the informer.
func (s *Scheduler) noteNode(k runtime.Key) {
	n, ok := s.nodes.Get(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	_, name := k.Split()
	if !ok {
		delete(s.nodeCache, name)
		return
	}
	s.nodeCache[name] = newNodeState(n) // the cached node is shared: the state only reads it
}

// wantsNode says whether the VM should be placed now.
func wantsNode(vm *v1alpha1.VirtualMachine) (bool, string) {
	if vm.DeletionTimestamp != nil || vm.Status.NodeName != "" {
		return false, ""
	}
	if !hasCleanupFinalizer(vm) {
		// The API server puts it on at create (the VM controller restores a removed one): a
		// VM bound without it could be deleted while its QEMU runs.
		return false, ""
	}
	run := false
	if pr := vm.Status.PowerRequest; pr != nil {
		run = pr.State == v1alpha1.PowerStateRunning || pr.State == v1alpha1.PowerStatePaused
	} else {
		run = vm.Spec.RunPolicy == v1alpha1.RunPolicyAlwaysOn || vm.Spec.RunPolicy == v1alpha1.RunPolicyAlwaysOnUnlessStoppedManually || vm.Spec.RunPolicy == ""
	}
	if !run {
		return false, ""
	}
	if c := v1alpha1.FindCondition(vm.Status.Conditions, v1alpha1.VMConditionBlockDevicesReady); c == nil || c.Status != v1alpha1.ConditionTrue {
		return false, "block devices not ready"
	}
	return true, ""
}

func (s *Scheduler) reconcile(ctx context.Context, key runtime.Key) (runtime.Result, error) {
	var vm v1alpha1.VirtualMachine
	cached, ok := s.vms.Get(key)
	if ok {
		vm = *cached // a shallow copy: the scheduler only reads it
	}
	s.mu.Lock()
	if a, has := s.assumed[key]; has && (!ok || vm.UID != a.uid || vm.Status.NodeName != "" || time.Since(a.at) > time.Minute) {
		delete(s.assumed, key)
	}
	_, pending := s.assumed[key]
	s.mu.Unlock()
	if !ok || pending {
		return runtime.Result{}, nil
	}
	if m := vm.Status.MigrationState; m.Active() && m.Phase == v1alpha1.MigrationPhaseScheduling {
		return s.scheduleMigration(ctx, &vm)
	}
	if want, _ := wantsNode(&vm); !want {
		return runtime.Result{}, nil
	}
	// Decide on the cached VM: the binding subresource's preconditions (the same uid, not
	// bound, not being deleted, the power request the decision saw) refuse a binding that a
	// newer write has made wrong, and writes of other status fields do not stand in its way.
	now := s.cfg.Now()
	nodes := s.nodeStates()
	pin, derr := s.diskNode(&vm)
	class, cerr := s.class(&vm)
	var node, why string
	switch {
	case derr != "":
		why = derr
	case cerr != "":
		why = cerr
	default:
		if nodes, why = s.bridgeNodes(&vm, nodes); why == "" {
			node, why = pick(&vm, class, nodes, now, s.cfg.NodeStaleAfter, pin.node)
			if node == "" && pin.node != "" {
				why = pinnedWhy(&vm, class, nodes, now, s.cfg.NodeStaleAfter, pin) + "; " + why
			}
		}
	}
	if node == "" {
		cond := v1alpha1.Condition{Type: ConditionScheduled, Status: v1alpha1.ConditionFalse, Reason: ReasonUnschedulable, Message: why}
		if old := v1alpha1.FindCondition(vm.Status.Conditions, ConditionScheduled); old == nil || old.Status != cond.Status || old.Message != cond.Message {
			// The Scheduled condition is the scheduler's alone, and one VM is reconciled at a
			// time, so its binding cannot pass this write: no resourceVersion guard.
			conds := runtime.ConditionsPatch(vm.Status.Conditions, []v1alpha1.Condition{cond}, nil, v1alpha1.NewTime(now))
			body, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": conds}})
			if err != nil {
				return runtime.Result{}, err
			}
			if err := s.C.PatchStatusStrategic(ctx, "virtualmachines", vm.Namespace, vm.Name, body, nil); err != nil {
				if client.IsNotFound(err) {
					return runtime.Result{}, nil
				}
				return runtime.Result{}, err
			}
			s.Log.Info("VM is unschedulable", "vm", string(key), "why", why)
			s.Rec.Event(ctx, "VirtualMachine", &vm, "Warning", "FailedScheduling", why)
		}
		return runtime.Result{RequeueAfter: s.cfg.RetryInterval}, nil
	}
	b := v1alpha1.VirtualMachineBinding{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachineBinding"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: vm.Name, Namespace: vm.Namespace, UID: vm.UID},
		NodeName:   node, PowerRequest: vm.Status.PowerRequest, Message: fmt.Sprintf("bound to node %s", node)}
	if err := s.C.Bind(ctx, vm.Namespace, vm.Name, &b, nil); err != nil {
		if client.IsNotFound(err) {
			// The VM or the node went in between: look again.
			return runtime.Result{RequeueAfter: s.cfg.RetryInterval}, nil
		}
		if client.IsConflict(err) {
			// A precondition failed (a stop, a deletion, another binding): the change is on
			// its way to the cache and queues the VM again; retry soon anyway.
			return runtime.Result{}, fmt.Errorf("binding %s/%s: %w (%v)", vm.Namespace, vm.Name, errStale, err)
		}
		return runtime.Result{}, err
	}
	s.mu.Lock()
	s.assumed[key] = assumption{uid: vm.UID, node: node, req: requestOf(&vm), at: time.Now()}
	s.mu.Unlock()
	s.Log.Info("VM scheduled", "vm", string(key), "node", node)
	return runtime.Result{}, nil
}

// errStale says a binding's precondition failed: the VM changed since the decision; the
// informer brings the change.
var errStale = errors.New("stale")

// nodeStates returns every node with the resources its VMs use, from the caches.
func (s *Scheduler) nodeStates() []*nodeState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nodeStatesLocked()
}

func (s *Scheduler) nodeStatesLocked() []*nodeState {
	out := make([]*nodeState, 0, len(s.nodeCache))
	var byName map[string]*nodeState
	if len(s.assumed) > 0 {
		byName = make(map[string]*nodeState, len(s.nodeCache))
	}
	states := make([]nodeState, len(s.nodeCache)) // one allocation for all nodes
	i := 0
	for name, base := range s.nodeCache {
		st := &states[i]
		i++
		*st = *base
		if u := s.usage[name]; u != nil {
			st.takeSum(*u)
		}
		out = append(out, st)
		if byName != nil {
			byName[name] = st
		}
	}
	for k, a := range s.assumed {
		if _, seen := s.bound[k]; seen {
			continue
		}
		if n := byName[a.node]; n != nil {
			n.takeRequest(a.req)
		}
	}
	return out
}

// diskPin is the node a VM's Local disks pin it to: the node and the disks there.
type diskPin struct {
	node  string
	disks []string // "VirtualDisk NAME (StorageClass C)"
}

// diskNode returns the node that holds the VM's disks on Local storage (their
// status.nodeName; disks on Shared storage have none and place no constraint), or why the
// disks cannot be used together: which disk is on which node.
func (s *Scheduler) diskNode(vm *v1alpha1.VirtualMachine) (diskPin, string) {
	var pin diskPin
	byNode := map[string][]string{}
	var order []string
	for _, r := range vm.Spec.BlockDeviceRefs {
		if r.Kind != v1alpha1.BlockDeviceKindVirtualDisk {
			continue
		}
		d, ok := s.disks.Get(runtime.NewKey(vm.Namespace, r.Name))
		if !ok || d.Status.NodeName == "" {
			continue
		}
		n := d.Status.NodeName
		if _, seen := byNode[n]; !seen {
			order = append(order, n)
		}
		what := fmt.Sprintf("VirtualDisk %q", r.Name)
		if d.Status.StorageClassName != "" {
			what += fmt.Sprintf(" (StorageClass %q)", d.Status.StorageClassName)
		}
		byNode[n] = append(byNode[n], what)
	}
	if n := hibernatedOn(vm); n != "" {
		// The saved RAM of a hibernated VM resumes only where it was saved (a forced start
		// boots from the disks anywhere instead).
		if _, seen := byNode[n]; !seen {
			order = append(order, n)
		}
		byNode[n] = append(byNode[n], "the saved RAM state of the hibernated VM")
	}
	switch len(order) {
	case 0:
		return pin, ""
	case 1:
		return diskPin{node: order[0], disks: byNode[order[0]]}, ""
	}
	parts := make([]string, len(order))
	for i, n := range order {
		parts[i] = strings.Join(byNode[n], ", ") + " on node " + n
	}
	return pin, "the VM's disks are on different nodes' local storage (" + strings.Join(parts, "; ") +
		"): a VM runs on one node, so move its disks to one node or to a Shared storage class while it is stopped"
}

// hibernatedOn is the node that holds the saved RAM state a start of vm resumes from, or "".
func hibernatedOn(vm *v1alpha1.VirtualMachine) string {
	if !v1alpha1.IsHibernated(vm) {
		return ""
	}
	if pr := vm.Status.PowerRequest; pr != nil && pr.Force && pr.State == v1alpha1.PowerStateRunning {
		return ""
	}
	return vm.Status.StateNodeName
}

// class returns the VM's class (nil without one), or why the VM cannot be placed.
func (s *Scheduler) class(vm *v1alpha1.VirtualMachine) (*v1alpha1.VirtualMachineClass, string) {
	name := vm.Spec.VirtualMachineClassName
	if name == "" {
		return nil, ""
	}
	c, ok := s.classes.Get(runtime.NewKey("", name))
	if !ok {
		return nil, fmt.Sprintf("VirtualMachineClass %q not found", name)
	}
	if c.Spec.CPU.Type == v1alpha1.CPUTypeDiscovery && (c.Status.CPUFeatures == nil || len(c.Status.CPUFeatures.Enabled) == 0) {
		return nil, fmt.Sprintf("VirtualMachineClass %q has not discovered its CPU features yet (no node matches its discovery selector, or the nodes report no CPU features)", name)
	}
	return c, "" // shared with the cache: placement only reads it
}

// bridgeNodes keeps the nodes that have the bridges of the VM's Bridge networks (those whose
// labels match each network's spec.nodeSelector), or says why none is left.
func (s *Scheduler) bridgeNodes(vm *v1alpha1.VirtualMachine, nodes []*nodeState) ([]*nodeState, string) {
	return filterBridgeNodes(vm, func(name string) (*v1alpha1.ClusterNetwork, bool) {
		return s.cnets.Get(runtime.NewKey("", name))
	}, nodes)
}

func filterBridgeNodes(vm *v1alpha1.VirtualMachine, cnet func(string) (*v1alpha1.ClusterNetwork, bool), nodes []*nodeState) ([]*nodeState, string) {
	total := len(nodes)
	for _, n := range vm.Spec.Networks {
		if n.Type != v1alpha1.NetworkTypeClusterNetwork {
			continue
		}
		c, ok := cnet(n.Name)
		if !ok || c.Spec.Type != v1alpha1.ClusterNetworkTypeBridge || len(c.Spec.NodeSelector) == 0 {
			continue
		}
		var keep []*nodeState
		for _, ns := range nodes {
			if labelsMatch(ns.node.Labels, c.Spec.NodeSelector) {
				keep = append(keep, ns)
			}
		}
		if len(keep) == 0 {
			return nil, fmt.Sprintf("0/%d nodes are available: none has the bridge of ClusterNetwork %q (its spec.nodeSelector %s matches no node)",
				total, n.Name, selectorString(c.Spec.NodeSelector))
		}
		nodes = keep
	}
	return nodes, ""
}

func labelsMatch(labels, sel map[string]string) bool {
	for k, v := range sel {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

func selectorString(sel map[string]string) string {
	keys := make([]string, 0, len(sel))
	for k := range sel {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for i, k := range keys {
		keys[i] = k + "=" + sel[k]
	}
	return strings.Join(keys, ",")
}

func hasCleanupFinalizer(vm *v1alpha1.VirtualMachine) bool {
	for _, f := range vm.Finalizers {
		if f == v1alpha1.VMCleanupFinalizer {
			return true
		}
	}
	return false
}
