package node

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
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// MaintenanceConfig configures the node maintenance controller.
type MaintenanceConfig struct {
	runtime.Deps
	// Parallel is how many Evict operations of one node run at a time; default
	// DefaultEvictParallel.
	Parallel int
	// RetryAfter and Attempts: see EvictInput; defaults DefaultEvictRetryAfter and
	// DefaultEvictAttempts.
	RetryAfter time.Duration
	Attempts   int
	// Resync is how often every node in maintenance is looked at again besides on changes;
	// default 15 s.
	Resync time.Duration
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
}

// Maintenance is the node maintenance controller. For every Node with spec.maintenance it
// evicts the VMs running there, through Evict operations (at most Parallel at a time per
// node, one per VM, never while another Evict or Migrate of the VM is active), and keeps the
// Node's condition Maintenance: True with reason Draining while VMs remain (its message names
// each and where its eviction stands), reason Drained once none does. When spec.maintenance
// is cleared it removes the condition and starts nothing more; VMs that left stay where they
// are.
type Maintenance struct {
	cfg MaintenanceConfig
	runtime.Base
	nodes *runtime.TypedInformer[v1alpha1.Node]
	vms   *runtime.TypedInformer[v1alpha1.VirtualMachine]
	ops   *runtime.TypedInformer[v1alpha1.VirtualMachineOperation]
	ctl   *runtime.Controller

	mu sync.Mutex
	// created remembers the operations this controller created and the cache may not show
	// yet, so that a reconcile in between does not create a second one: VM key → op name
	// and when it was created.
	created map[string]createdOp
}

type createdOp struct {
	name string
	at   time.Time
}

// createdGrace is how long a created operation that the cache does not show counts as in
// flight (the cache normally catches up in milliseconds).
const createdGrace = 30 * time.Second

// NewMaintenance returns the controller; Run starts it.
func NewMaintenance(cfg MaintenanceConfig) (*Maintenance, error) {
	if cfg.Client == nil {
		return nil, errors.New("node maintenance: a client is required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	cfg.Parallel = runtime.OrDefault(cfg.Parallel, DefaultEvictParallel)
	cfg.RetryAfter = runtime.OrDefault(cfg.RetryAfter, DefaultEvictRetryAfter)
	cfg.Attempts = runtime.OrDefault(cfg.Attempts, DefaultEvictAttempts)
	cfg.Resync = runtime.OrDefault(cfg.Resync, 15*time.Second)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	b := runtime.NewBase(cfg.Deps, "node-maintenance")
	m := &Maintenance{cfg: cfg, Base: b, created: map[string]createdOp{}}
	f := b.Informers
	m.nodes, m.vms, m.ops = f.Nodes(), f.VirtualMachines(), f.VirtualMachineOperations()
	// A VM or operation change may concern any node in maintenance (a VM that left a node
	// names its new one), and there are few such nodes: look at all of them.
	all := func(runtime.Key) []runtime.Key { return m.maintenanceNodes() }
	m.ctl = runtime.NewController("node-maintenance", m.Log).
		Watches(m.nodes, func(k runtime.Key) []runtime.Key { return []runtime.Key{k} }).
		Watches(m.vms, all).
		Watches(m.ops, all).
		Every(cfg.Resync, func(_ context.Context, q *runtime.Queue) {
			for _, k := range m.maintenanceNodes() {
				q.Add(k)
			}
		}).
		Workers(1).
		MaxBackoff(30 * time.Second).
		Build(m.reconcile)
	return m, nil
}

// Run works until ctx ends.
func (m *Maintenance) Run(ctx context.Context) error {
	return m.Base.Run(ctx, m.ctl)
}

// maintenanceNodes returns the keys of the nodes in maintenance or still carrying the
// condition (to be removed).
func (m *Maintenance) maintenanceNodes() []runtime.Key {
	return m.nodes.KeysWhere(func(n *v1alpha1.Node) bool {
		return n.Spec.Maintenance || v1alpha1.FindCondition(n.Status.Conditions, v1alpha1.NodeConditionMaintenance) != nil
	})
}

func (m *Maintenance) reconcile(ctx context.Context, key runtime.Key) (runtime.Result, error) {
	cached, ok := m.nodes.Get(key)
	if !ok {
		return runtime.Result{}, nil
	}
	n := runtime.DeepCopy(cached)
	now := m.cfg.Now()
	if !n.Spec.Maintenance {
		return runtime.Result{}, m.writeCondition(ctx, n, nil, now)
	}
	// The drain began when the condition turned True; failures of earlier drains do not count.
	since := now
	if c := v1alpha1.FindCondition(n.Status.Conditions, v1alpha1.NodeConditionMaintenance); c != nil && c.Status == v1alpha1.ConditionTrue && c.LastTransitionTime != nil {
		since = c.LastTransitionTime.Time
	}
	ops := m.ops.List()
	plan := PlanEviction(EvictInput{
		Node: n.Name, VMs: m.vms.List(), Ops: ops, Parallel: m.cfg.Parallel, RetryAfter: m.cfg.RetryAfter,
		Attempts: m.cfg.Attempts, Now: now,
		Counts: func(op *v1alpha1.VirtualMachineOperation) bool {
			return op.Labels[LabelEvictNode] == n.Name && op.Labels[LabelEvictBy] == EvictByMaintenance &&
				!CreatedAt(op).Before(since.Truncate(time.Second))
		},
	})
	m.pending(&plan, ops, now)

	var firstErr error
	for i := range plan.Entries {
		e := &plan.Entries[i]
		if e.Action != EvictCreate {
			continue
		}
		op := NewEvictOp(e.Namespace, e.Name, n.Name, EvictByMaintenance)
		var out v1alpha1.VirtualMachineOperation
		if err := m.C.Create(ctx, "virtualmachineoperations", e.Namespace, op, &out); err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("evicting VM %s from node %s: %w", e.Key(), n.Name, err)
			}
			continue
		}
		m.mu.Lock()
		m.created[e.Key()] = createdOp{name: out.Name, at: now}
		m.mu.Unlock()
		e.Action, e.Op = EvictInFlight, &out
		plan.InFlight++
		m.Log.Info("evicting VM from node in maintenance", "node", n.Name, "vm", e.Key(), "operation", out.Name)
	}

	want := &v1alpha1.Condition{Type: v1alpha1.NodeConditionMaintenance, Status: v1alpha1.ConditionTrue,
		Reason: v1alpha1.NodeReasonDrained, Message: "the node is in maintenance: it takes no new VMs, and no VM runs on it", ObservedGeneration: n.Generation}
	if !plan.Drained() {
		want.Reason = v1alpha1.NodeReasonDraining
		want.Message = "the node is in maintenance: it takes no new VMs; " + plan.Summary()
	}
	if err := m.writeCondition(ctx, n, want, now); err != nil && firstErr == nil {
		firstErr = err
	}
	res := runtime.Result{}
	for _, e := range plan.Entries {
		if !e.RetryAt.IsZero() {
			if d := e.RetryAt.Sub(now) + time.Second; res.RequeueAfter == 0 || d < res.RequeueAfter {
				res.RequeueAfter = d
			}
		}
	}
	return res, firstErr
}

// pending turns Create entries of VMs whose operation this controller just created, and the
// cache does not show yet, into InFlight ones (and lets the parallel limit count them), and
// forgets operations the cache shows or that are older than createdGrace.
func (m *Maintenance) pending(plan *EvictPlan, ops []*v1alpha1.VirtualMachineOperation, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	seen := map[string]bool{}
	for _, op := range ops {
		seen[op.Namespace+"/"+op.Name] = true
	}
	for k, c := range m.created {
		ns, _ := runtime.Key(k).Split()
		if seen[ns+"/"+c.name] || now.Sub(c.at) > createdGrace {
			delete(m.created, k)
		}
	}
	extra := 0
	for i := range plan.Entries {
		e := &plan.Entries[i]
		if c, ok := m.created[e.Key()]; ok && e.Action != EvictInFlight {
			e.Action, e.Reason = EvictInFlight, ""
			e.Op = &v1alpha1.VirtualMachineOperation{ObjectMeta: v1alpha1.ObjectMeta{Name: c.name, Namespace: e.Namespace}}
			extra++
		}
	}
	if extra == 0 {
		return
	}
	// Re-apply the limit with the operations the cache does not show yet.
	free := m.cfg.Parallel - plan.InFlight - extra
	plan.InFlight += extra
	for i := range plan.Entries {
		e := &plan.Entries[i]
		if e.Action != EvictCreate {
			continue
		}
		if free > 0 {
			free--
			continue
		}
		e.Action = EvictQueued
		e.Reason = fmt.Sprintf("waiting for a free slot (at most %d evictions at a time)", m.cfg.Parallel)
	}
}

// writeCondition makes the Node's Maintenance condition want (nil: absent), with a strategic
// merge patch that touches no other condition.
func (m *Maintenance) writeCondition(ctx context.Context, n *v1alpha1.Node, want *v1alpha1.Condition, now time.Time) error {
	var wants []v1alpha1.Condition
	if want != nil {
		wants = []v1alpha1.Condition{*want}
	}
	conds := runtime.ConditionsPatch(n.Status.Conditions, wants, []string{v1alpha1.NodeConditionMaintenance}, v1alpha1.NewTime(now))
	if conds == nil {
		return nil
	}
	body, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": conds}})
	if err != nil {
		return err
	}
	if err := m.C.PatchStatusStrategic(ctx, "nodes", "", n.Name, body, nil); err != nil {
		if client.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("writing the Maintenance condition of node %s: %w", n.Name, err)
	}
	if want != nil && want.Reason == v1alpha1.NodeReasonDrained {
		if old := v1alpha1.FindCondition(n.Status.Conditions, v1alpha1.NodeConditionMaintenance); old == nil || old.Reason != v1alpha1.NodeReasonDrained {
			m.Log.Info("node in maintenance is drained", "node", n.Name)
		}
	}
	return nil
}
