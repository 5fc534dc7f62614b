package agent

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// The node lease: the agent holds a NodeLease named after its node and renews it every
// LeaseRenewInterval. A renewal is a compare-and-swap on the lease's resourceVersion, so a
// write by anyone else (a controller taking the lease over) is seen at the next renewal. See
// fence.go for what happens when it cannot renew, and docs/ha.md.

// leaseStore is where the lease lives: the API (apiLeases), or a fake in tests.
type leaseStore interface {
	get(ctx context.Context) (*v1alpha1.NodeLease, error) // nil, nil: none
	create(ctx context.Context, l *v1alpha1.NodeLease) error
	update(ctx context.Context, l *v1alpha1.NodeLease) error // compare-and-swap on resourceVersion
}

type apiLeases struct {
	c    *client.Client
	name string
}

func (s apiLeases) get(ctx context.Context) (*v1alpha1.NodeLease, error) {
	var l v1alpha1.NodeLease
	err := s.c.Get(ctx, "nodeleases", "", s.name, &l)
	if client.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &l, nil
}

func (s apiLeases) create(ctx context.Context, l *v1alpha1.NodeLease) error {
	return s.c.Create(ctx, "nodeleases", "", l, nil)
}

func (s apiLeases) update(ctx context.Context, l *v1alpha1.NodeLease) error {
	return s.c.Update(ctx, "nodeleases", "", l.Name, l, nil)
}

// leaser renews the node's lease and, when it finds the lease lost, fences the node.
type leaser struct {
	store    leaseStore
	node     string
	duration time.Duration
	timeout  time.Duration // of one request
	now      func() time.Time
	fence    *fence
	log      *slog.Logger
	// acquired is called (on the renewer's goroutine) after the lease was acquired anew.
	acquired func()

	held        bool  // the agent holds the lease (acquired or renewed, and not lost since)
	transitions int32 // the lease's leaseTransitions when the agent acquired it
	started     bool  // a first read of the lease was done
}

// step is one renewal. First the clock: a renewal older than the fence timeout (the agent was
// stopped, or could not reach the API) means the lease is lost, and the fence acts before
// anything else. Then the lease: renewed when still the agent's, else acquired anew (after
// fencing when someone else took it over).
func (l *leaser) step(ctx context.Context) {
	start := l.now()
	if last := l.fence.lastRenew.Load(); l.held && last != nil && start.Sub(*last) >= l.fence.timeout {
		l.lose(fmt.Sprintf("the node lease was last renewed %s ago (the agent was stopped or cut off), and the fence timeout is %s",
			start.Sub(*last).Round(time.Millisecond), l.fence.timeout))
	}
	ctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	cur, err := l.store.get(ctx)
	if err != nil {
		l.log.Debug("reading the node lease failed", "err", err)
		return
	}
	first := !l.started
	l.started = true
	if cur == nil && l.held {
		l.lose("the node lease was deleted")
	}
	if cur == nil {
		nl := &v1alpha1.NodeLease{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "NodeLease"},
			ObjectMeta: v1alpha1.ObjectMeta{Name: l.node}}
		l.fill(nl, start, 0)
		if err := l.store.create(ctx, nl); err != nil {
			if client.IsNotFound(err) && !l.held {
				// The API server does not serve NodeLeases (an older control plane, during
				// an upgrade of the agents first): without a lease there is nothing to fence
				// on, and fencing would kill every HA VM of the node for nothing.
				if l.fence.lastRenew.Swap(nil) != nil {
					l.fence.publish()
					l.log.Error("the control plane serves no NodeLeases: no self-fencing of HA VMs on this node until it does (upgrade the control plane first)", "err", err)
				}
				return
			}
			l.log.Debug("creating the node lease failed", "err", err)
			return
		}
		l.won(start, 0)
		return
	}
	mine := cur.Spec.HolderIdentity == l.node
	switch {
	case l.held && (!mine || cur.Spec.LeaseTransitions != l.transitions):
		l.lose(fmt.Sprintf("the node lease was taken over: holder %q, %d transitions (the agent acquired it at %d)",
			cur.Spec.HolderIdentity, cur.Spec.LeaseTransitions, l.transitions))
	case first && !mine:
		// A restarted agent: its QEMUs ran unguarded while it was away, and someone took the
		// lease over meanwhile (to recover its VMs elsewhere).
		l.lose(fmt.Sprintf("at the agent's start the node lease is held by %q", cur.Spec.HolderIdentity))
	}
	if l.held {
		cur.Spec.RenewTime = ptrTime(start)
		cur.Spec.LeaseDurationSeconds = int32(l.duration / time.Second)
		if err := l.store.update(ctx, cur); err != nil {
			l.log.Debug("renewing the node lease failed", "err", err)
			return
		}
		l.fence.renewed(start)
		l.fence.publish()
		return
	}
	if !mine && cur.Spec.HolderIdentity != "" && !cur.Spec.ExpiredAt(start) {
		l.log.Debug("the node lease is held by someone else: waiting for it to end", "holder", cur.Spec.HolderIdentity)
		return
	}
	t := cur.Spec.LeaseTransitions + 1
	l.fill(cur, start, t)
	if err := l.store.update(ctx, cur); err != nil {
		l.log.Debug("acquiring the node lease failed", "err", err)
		return
	}
	l.won(start, t)
}

func (l *leaser) fill(nl *v1alpha1.NodeLease, at time.Time, transitions int32) {
	nl.Spec = v1alpha1.NodeLeaseSpec{HolderIdentity: l.node, LeaseDurationSeconds: int32(l.duration / time.Second),
		AcquireTime: ptrTime(at), RenewTime: ptrTime(at), LeaseTransitions: transitions}
}

// won: the lease was acquired at at.
func (l *leaser) won(at time.Time, transitions int32) {
	l.held, l.transitions = true, transitions
	l.fence.unfence(at)
	l.fence.publish()
	l.log.Info("node lease acquired", "transitions", transitions, "duration", l.duration)
	if l.acquired != nil {
		l.acquired()
	}
}

// lose: the lease is no longer the agent's; the fence kills the HA QEMUs now, before the
// agent does anything else.
func (l *leaser) lose(why string) {
	l.held = false
	l.fence.trip(why)
	l.fence.publish() // the guard kills too, even if this agent stops right now
}

// run renews every interval until ctx ends.
func (l *leaser) run(ctx context.Context, every time.Duration) {
	runtime.Every(ctx, every, func() { l.step(ctx) })
}

func ptrTime(t time.Time) *v1alpha1.Time {
	v := v1alpha1.NewTime(t)
	return &v
}

// fenceTick is how often the watchdog looks at the clock; haSnapshotEvery how often the
// agent refreshes the watchdog's list of HA QEMUs.
const (
	fenceTick       = 100 * time.Millisecond
	haSnapshotEvery = 200 * time.Millisecond
)

// startLease arms the watchdog, takes the first look at the lease (fencing adopted HA QEMUs
// at once when it was taken over while the agent was away), then renews it and keeps the
// watchdog's snapshot of HA QEMUs fresh until ctx ends. It runs after the adoption of running
// QEMUs, however long that takes, and before any VM is reconciled.
func (a *Agent) startLease(ctx context.Context) {
	// The watchdog runs from here on: the agent has the fence timeout to acquire its lease.
	a.fence.renewed(a.cfg.Now())
	if a.guard != nil {
		// The guard keeps watching the last renewal of the agent before this one (if any)
		// until this one renews: a restart does not extend the time HA QEMUs run unrenewed.
		a.fence.renewMono.Store(a.guard.firstRenewal())
	}
	a.snapshotHA()
	a.fence.publish()
	go a.fence.watch(ctx, fenceTick)
	a.lease.step(ctx)
	go a.lease.run(ctx, a.cfg.LeaseRenewInterval)
	go runtime.Ticks(ctx, haSnapshotEvery, func() {
		a.snapshotHA()
		if a.guard != nil {
			a.guard.ensure(false) // a guard that died is started again (one look a second)
		}
	})
}

// snapshotHA gives the watchdog the pids of the QEMUs of the HA VMs this agent runs. A QEMU
// whose VM the agent does not cache (not bound here any more) counts as HA: fencing must not
// miss it.
func (a *Agent) snapshotHA() {
	ins := a.instances()
	var ps []haProc
	for _, in := range ins {
		if in.pid <= 0 || in.isExited() {
			continue
		}
		if vm, ok := a.vms.Get(in.key); ok && vm.UID == in.uid && !v1alpha1.IsHA(vm) {
			continue
		}
		ps = append(ps, haProc{uid: in.uid, key: string(in.key), pid: in.pid, start: procStartTime(in.pid)})
	}
	a.fence.setProcs(ps)
}

// leaseAcquired runs when the agent acquired its lease anew: the Node reports at once, and
// every VM is looked at again (the HA VMs held back while the node was fenced may start).
func (a *Agent) leaseAcquired() {
	ctx := a.runCtx
	if ctx == nil || a.queue == nil {
		return
	}
	go func() {
		// The QEMUs whose disk leases moved on while the node was away go first.
		a.verifyDiskLeases(ctx)
		if err := a.heartbeat(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn("heartbeat after acquiring the node lease failed", "err", err)
		}
		for _, k := range a.vms.Keys() {
			a.queue.Add(k)
		}
	}()
}

// fencedStart says whether vm may not start here because the node is fenced, and why.
func (a *Agent) fencedStart(vm *v1alpha1.VirtualMachine) (string, bool) {
	if a.fence == nil || a.fence.mayRun() || !v1alpha1.IsHA(vm) {
		return "", false
	}
	return "the node does not hold its lease (self-fenced): HA VMs start here only once it does", true
}

// fencedExit returns the exit record of a QEMU the fence killed, or nil.
func (a *Agent) fencedExit(uid string) *exitRecord {
	if a.fence == nil {
		return nil
	}
	return a.fence.exitOf(uid)
}
