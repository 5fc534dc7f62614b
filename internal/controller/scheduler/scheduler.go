// Package scheduler binds virtual machines to nodes. A VM that should run (its power request,
// or before the VM controller wrote one its runPolicy), whose block devices are ready and that
// has no node yet, is bound to the Ready node with the most room left (least allocated)
// among those that fit: fresh heartbeat, schedulable, taints tolerated, nodeSelector and
// required node affinity matched, and enough allocatable cpu and memory (capacity ×
// allocation ratio − the VMs bound to it). The binding is a merge patch of status.nodeName
// guarded by the VM's resourceVersion, so two schedulers never bind one VM twice. A VM that
// fits nowhere gets condition Scheduled=False saying why, node by node.
package scheduler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/controller/runtime"
)

// ConditionScheduled is the VM condition the scheduler owns (a Rakhsh addition, like
// Kubernetes' PodScheduled): True with the node, or False with why no node fits.
const ConditionScheduled = "Scheduled"

// Reasons of the Scheduled condition.
const (
	ReasonScheduled     = "Scheduled"
	ReasonUnschedulable = "Unschedulable"
)

// Config configures the scheduler.
type Config struct {
	Client *client.Client
	Log    *slog.Logger
	// NodeStaleAfter is how old a node's heartbeat may be for it to take new VMs; default 40 s.
	NodeStaleAfter time.Duration
	// RetryInterval is how often unschedulable VMs are tried again (besides on node changes);
	// default 30 s.
	RetryInterval time.Duration
	Now           func() time.Time
}

// Scheduler is the VM scheduler.
type Scheduler struct {
	cfg Config
	c   *client.Client
	log *slog.Logger
	rec *runtime.Recorder

	vms, nodes, disks *runtime.Informer
	queue             *runtime.Queue

	mu      sync.Mutex
	assumed map[runtime.Key]assumption // bindings written but not yet seen by the informer
}

type assumption struct {
	uid, node string
	cpu, mem  int64
	at        time.Time
}

// New returns a scheduler; Run starts it.
func New(cfg Config) (*Scheduler, error) {
	if cfg.Client == nil {
		return nil, errors.New("scheduler: a client is required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.NodeStaleAfter <= 0 {
		cfg.NodeStaleAfter = 40 * time.Second
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = 30 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Log.With("component", "scheduler")
	return &Scheduler{cfg: cfg, c: cfg.Client, log: log, assumed: map[runtime.Key]assumption{},
		rec: &runtime.Recorder{C: cfg.Client, Component: "rakhsh-scheduler", Log: log}}, nil
}

// Run schedules until ctx ends. One worker: decisions see each other's bindings.
func (s *Scheduler) Run(ctx context.Context) error {
	s.queue = runtime.NewQueue("scheduler", s.log)
	s.queue.MaxBackoff = 5 * time.Second
	s.vms = runtime.NewInformer(s.c, "virtualmachines", "", s.log)
	s.nodes = runtime.NewInformer(s.c, "nodes", "", s.log)
	s.disks = runtime.NewInformer(s.c, "virtualdisks", "", s.log)
	s.vms.OnChange(s.queue.Add)
	s.nodes.OnChange(func(runtime.Key) { s.queuePending() })
	for _, inf := range []*runtime.Informer{s.vms, s.nodes, s.disks} {
		go inf.Run(ctx)
	}
	for _, inf := range []*runtime.Informer{s.vms, s.nodes, s.disks} {
		select {
		case <-ctx.Done():
			return nil
		case <-inf.Synced():
		}
	}
	s.queuePending()
	s.queue.Run(ctx, 1, s.reconcile)
	return nil
}

// queuePending queues every VM waiting for a node.
func (s *Scheduler) queuePending() {
	for _, raw := range s.vms.Raw() {
		var vm v1alpha1.VirtualMachine
		if json.Unmarshal(raw, &vm) == nil && vm.Status.NodeName == "" {
			s.queue.Add(runtime.KeyOf(&vm))
		}
	}
}

// wantsNode says whether the VM should be placed now.
func wantsNode(vm *v1alpha1.VirtualMachine) (bool, string) {
	if vm.DeletionTimestamp != nil || vm.Status.NodeName != "" {
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
	ok, err := s.vms.Get(key, &vm)
	if err != nil {
		return runtime.Result{}, err
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
	if want, _ := wantsNode(&vm); !want {
		return runtime.Result{}, nil
	}
	now := s.cfg.Now()
	nodes := s.nodeStates()
	diskNode, derr := s.diskNode(&vm)
	var node, why string
	if derr != "" {
		why = derr
	} else {
		node, why = pick(&vm, nodes, now, s.cfg.NodeStaleAfter, diskNode)
	}
	if node == "" {
		cond := v1alpha1.Condition{Type: ConditionScheduled, Status: v1alpha1.ConditionFalse, Reason: ReasonUnschedulable, Message: why}
		if old := v1alpha1.FindCondition(vm.Status.Conditions, ConditionScheduled); old == nil || old.Status != cond.Status || old.Message != cond.Message {
			conds := append([]v1alpha1.Condition(nil), vm.Status.Conditions...)
			v1alpha1.SetCondition(&conds, cond)
			if err := s.patch(ctx, &vm, map[string]any{"conditions": conds}); err != nil {
				return runtime.Result{}, err
			}
			s.log.Info("VM is unschedulable", "vm", string(key), "why", why)
			s.rec.Event(ctx, "VirtualMachine", &vm, "Warning", "FailedScheduling", why)
		}
		return runtime.Result{RequeueAfter: s.cfg.RetryInterval}, nil
	}
	conds := append([]v1alpha1.Condition(nil), vm.Status.Conditions...)
	v1alpha1.SetCondition(&conds, v1alpha1.Condition{Type: ConditionScheduled, Status: v1alpha1.ConditionTrue, Reason: ReasonScheduled,
		Message: fmt.Sprintf("bound to node %s", node)})
	if err := s.patch(ctx, &vm, map[string]any{"nodeName": node, "conditions": conds}); err != nil {
		return runtime.Result{}, err
	}
	cpu, mem := vmRequest(&vm)
	s.mu.Lock()
	s.assumed[key] = assumption{uid: vm.UID, node: node, cpu: cpu, mem: mem, at: time.Now()}
	s.mu.Unlock()
	s.log.Info("VM scheduled", "vm", string(key), "node", node)
	return runtime.Result{}, nil
}

// errStale says the cached VM is older than the stored one; the informer brings the new one.
var errStale = errors.New("stale")

// patch writes status fields guarded by the cached resourceVersion.
func (s *Scheduler) patch(ctx context.Context, vm *v1alpha1.VirtualMachine, status map[string]any) error {
	body, err := json.Marshal(map[string]any{"metadata": map[string]any{"resourceVersion": vm.ResourceVersion}, "status": status})
	if err != nil {
		return err
	}
	err = s.c.PatchStatus(ctx, "virtualmachines", vm.Namespace, vm.Name, body, nil)
	if client.IsNotFound(err) {
		return nil
	}
	if client.IsConflict(err) {
		// Someone changed the VM since the informer saw it: the change is on its way and
		// queues the VM again; retry soon anyway.
		return fmt.Errorf("binding %s/%s: %w", vm.Namespace, vm.Name, errStale)
	}
	return err
}

// nodeStates returns every node with the resources its VMs use.
func (s *Scheduler) nodeStates() []*nodeState {
	byName := map[string]*nodeState{}
	var out []*nodeState
	for _, k := range s.nodes.Keys() {
		var n v1alpha1.Node
		if ok, err := s.nodes.Get(k, &n); !ok || err != nil {
			continue
		}
		st := newNodeState(&n)
		byName[n.Name] = st
		out = append(out, st)
	}
	seen := map[runtime.Key]bool{}
	for _, raw := range s.vms.Raw() {
		var vm v1alpha1.VirtualMachine
		if json.Unmarshal(raw, &vm) != nil || vm.Status.NodeName == "" {
			continue
		}
		seen[runtime.KeyOf(&vm)] = true
		if n := byName[vm.Status.NodeName]; n != nil {
			cpu, mem := vmRequest(&vm)
			n.usedCPU += cpu
			n.usedMem += mem
		}
	}
	s.mu.Lock()
	for k, a := range s.assumed {
		if seen[k] {
			continue
		}
		if n := byName[a.node]; n != nil {
			n.usedCPU += a.cpu
			n.usedMem += a.mem
		}
	}
	s.mu.Unlock()
	return out
}

// diskNode returns the node that holds the VM's local disks (status.nodeName of its
// VirtualDisks), or why the disks cannot be used together.
func (s *Scheduler) diskNode(vm *v1alpha1.VirtualMachine) (string, string) {
	node := ""
	for _, r := range vm.Spec.BlockDeviceRefs {
		if r.Kind != v1alpha1.BlockDeviceKindVirtualDisk {
			continue
		}
		var d v1alpha1.VirtualDisk
		if ok, err := s.disks.Get(runtime.NewKey(vm.Namespace, r.Name), &d); !ok || err != nil || d.Status.NodeName == "" {
			continue
		}
		if node != "" && node != d.Status.NodeName {
			return "", fmt.Sprintf("the VM's disks are on different nodes (%s, %s)", node, d.Status.NodeName)
		}
		node = d.Status.NodeName
	}
	return node, ""
}
