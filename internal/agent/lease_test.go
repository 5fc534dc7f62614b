package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// fakeClock is a settable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

// fakeLeases is a lease store with compare-and-swap on resourceVersion; it logs every call
// (and kills, through the test's fence) in order.
type fakeLeases struct {
	mu    sync.Mutex
	l     *v1alpha1.NodeLease
	rv    int
	down  bool // every call fails, as when the API is out of reach
	calls *[]string
}

var errDown = errors.New("the API is out of reach")

func (s *fakeLeases) note(c string) { *s.calls = append(*s.calls, c) }

func (s *fakeLeases) get(context.Context) (*v1alpha1.NodeLease, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.note("get")
	if s.down {
		return nil, errDown
	}
	if s.l == nil {
		return nil, nil
	}
	c := *s.l
	return &c, nil
}

func (s *fakeLeases) create(_ context.Context, l *v1alpha1.NodeLease) error {
	return s.write("create", l, func() error {
		if s.l != nil {
			return errors.New("exists")
		}
		return nil
	})
}

func (s *fakeLeases) update(_ context.Context, l *v1alpha1.NodeLease) error {
	return s.write("update", l, func() error {
		if s.l == nil || s.l.ResourceVersion != l.ResourceVersion {
			return errors.New("conflict")
		}
		return nil
	})
}

// write stores a copy of l with the next resourceVersion, as the call named call, when the
// store is up and check (run under the lock) accepts it.
func (s *fakeLeases) write(call string, l *v1alpha1.NodeLease, check func() error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.note(call)
	if s.down {
		return errDown
	}
	if err := check(); err != nil {
		return err
	}
	s.rv++
	c := *l
	c.ResourceVersion = strconv.Itoa(s.rv)
	s.l = &c
	return nil
}

// takeOver writes the lease as someone else would.
func (s *fakeLeases) takeOver(holder string, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rv++
	s.l.ResourceVersion = strconv.Itoa(s.rv)
	s.l.Spec.HolderIdentity = holder
	s.l.Spec.RenewTime = ptrTime(at)
	s.l.Spec.LeaseTransitions++
}

type leaseRig struct {
	clock  *fakeClock
	store  *fakeLeases
	fence  *fence
	lease  *leaser
	calls  []string
	killed []int
	alive  map[int]bool
}

func newLeaseRig(t *testing.T) *leaseRig {
	t.Helper()
	r := &leaseRig{clock: &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}, alive: map[int]bool{101: true, 102: true}}
	r.store = &fakeLeases{calls: &r.calls}
	log := slog.New(slog.DiscardHandler)
	r.fence = newFence(6*time.Second, r.clock.now, log)
	r.fence.kill = func(p haProc) (bool, error) {
		r.store.mu.Lock()
		defer r.store.mu.Unlock()
		if !r.alive[p.pid] {
			return false, nil
		}
		r.alive[p.pid] = false
		r.killed = append(r.killed, p.pid)
		r.store.note(fmt.Sprintf("kill %d", p.pid))
		return true, nil
	}
	r.fence.setProcs([]haProc{{uid: "u1", key: "default/a", pid: 101}, {uid: "u2", key: "default/b", pid: 102}})
	r.lease = &leaser{store: r.store, node: "h2", duration: 10 * time.Second, timeout: time.Second, now: r.clock.now, fence: r.fence, log: log}
	r.fence.renewed(r.clock.now())
	return r
}

// stepAfter moves the clock on by d and runs one step of the leaser.
func (r *leaseRig) stepAfter(d time.Duration) {
	r.clock.add(d)
	r.lease.step(context.Background())
}

func TestLeaseRenewAndExpiry(t *testing.T) {
	r := newLeaseRig(t)
	ctx := context.Background()
	r.lease.step(ctx)
	if r.store.l == nil || r.store.l.Spec.HolderIdentity != "h2" || r.store.l.Spec.LeaseDurationSeconds != 10 || r.store.l.Spec.LeaseTransitions != 0 {
		t.Fatalf("after the first step the lease is %+v", r.store.l)
	}
	// Renewed every second for a minute: never fenced, renewTime follows the clock.
	for range 60 {
		r.stepAfter(time.Second)
		if r.fence.check() || !r.fence.mayRun() {
			t.Fatalf("fenced at %s while renewing", r.clock.now())
		}
	}
	if got := r.store.l.Spec.RenewTime.Time; !got.Equal(r.clock.now()) {
		t.Fatalf("renewTime %s, want %s", got, r.clock.now())
	}
	if r.store.l.Spec.LeaseTransitions != 0 {
		t.Fatalf("renewals changed leaseTransitions to %d", r.store.l.Spec.LeaseTransitions)
	}
	if !r.store.l.Spec.ExpiredAt(r.clock.now().Add(10*time.Second+time.Millisecond)) || r.store.l.Spec.ExpiredAt(r.clock.now().Add(10*time.Second)) {
		t.Fatal("the lease should expire just after its duration")
	}

	// The API goes out of reach: renewals fail, the watchdog fires at the fence timeout,
	// not before, and kills each HA QEMU once.
	r.store.down = true
	for i := 1; i <= 5; i++ {
		r.stepAfter(time.Second)
		if r.fence.check() {
			t.Fatalf("fenced %ds after the last renewal, before the fence timeout", i)
		}
	}
	r.clock.add(time.Second)
	if !r.fence.check() || r.fence.mayRun() {
		t.Fatalf("not fenced at the fence timeout: last renewal %s, now %s, killed %v, mayRun %v", *r.fence.lastRenew.Load(), r.clock.now(), r.killed, r.fence.mayRun())
	}
	if fmt.Sprint(r.killed) != "[101 102]" {
		t.Fatalf("killed %v, want [101 102]", r.killed)
	}
	if r.fence.check() || len(r.killed) != 2 {
		t.Fatalf("a second tick killed again: %v", r.killed)
	}
	if e := r.fence.exitOf("u1"); e == nil || e.Reason != v1alpha1.ExitFenced {
		t.Fatalf("exit of u1: %+v", e)
	}
	if e := r.fence.exitOf("u1"); e != nil {
		t.Fatalf("the exit of u1 was not forgotten: %+v", e)
	}
	// A QEMU started just before (the snapshot caught it late) goes at the next tick.
	r.alive[103] = true
	r.fence.setProcs([]haProc{{uid: "u3", key: "default/c", pid: 103}})
	if !r.fence.check() || r.killed[len(r.killed)-1] != 103 {
		t.Fatalf("the late QEMU was not killed: %v", r.killed)
	}

	// The API is back: the agent acquires the lease anew (one more transition) and may run
	// its HA VMs again.
	r.store.down = false
	r.stepAfter(time.Second)
	if !r.fence.mayRun() || r.store.l.Spec.LeaseTransitions != 1 || !r.store.l.Spec.AcquireTime.Time.Equal(r.clock.now()) {
		t.Fatalf("after the API came back: mayRun %v, lease %+v", r.fence.mayRun(), r.store.l.Spec)
	}
}

// TestLeaseLostOnWake: an agent stopped (SIGSTOP) longer than the lease kills its HA QEMUs
// at its first step after waking, before it sends anything to the API, then acquires the
// lease anew.
func TestLeaseLostOnWake(t *testing.T) {
	r := newLeaseRig(t)
	ctx := context.Background()
	r.lease.step(ctx)
	r.stepAfter(time.Second)
	r.calls = nil
	r.stepAfter(15 * time.Second) // stopped
	if len(r.calls) < 3 || r.calls[0] != "kill 101" || r.calls[1] != "kill 102" || r.calls[2] != "get" {
		t.Fatalf("calls after waking: %v, want the kills first", r.calls)
	}
	if !r.fence.mayRun() || r.store.l.Spec.LeaseTransitions != 1 {
		t.Fatalf("after waking: mayRun %v, transitions %d: want the lease acquired anew", r.fence.mayRun(), r.store.l.Spec.LeaseTransitions)
	}
}

// TestLeaseTakenOver: a lease someone else wrote (another holder, more transitions) is lost:
// the agent fences, and waits for the other holder's lease to end before acquiring it.
func TestLeaseTakenOver(t *testing.T) {
	r := newLeaseRig(t)
	ctx := context.Background()
	r.lease.step(ctx)
	r.clock.add(time.Second)
	r.store.takeOver("rakhsh-ha", r.clock.now())
	r.lease.step(ctx)
	if r.fence.mayRun() || len(r.killed) != 2 {
		t.Fatalf("after the takeover: mayRun %v, killed %v", r.fence.mayRun(), r.killed)
	}
	r.stepAfter(5 * time.Second)
	if r.fence.mayRun() || r.store.l.Spec.HolderIdentity != "rakhsh-ha" {
		t.Fatalf("the agent took back a lease another holder renewed 5s ago: %+v", r.store.l.Spec)
	}
	r.stepAfter(6 * time.Second)
	if !r.fence.mayRun() || r.store.l.Spec.HolderIdentity != "h2" || r.store.l.Spec.LeaseTransitions != 2 {
		t.Fatalf("after the other holder's lease ended: mayRun %v, lease %+v", r.fence.mayRun(), r.store.l.Spec)
	}
}

// TestLeaseRestartedAgent: a restarted agent (a new process) keeps the QEMUs it adopts when
// its lease is still its own, even expired (an agent restart is routine), and fences them
// when someone took the lease over while it was away.
func TestLeaseRestartedAgent(t *testing.T) {
	r := newLeaseRig(t)
	ctx := context.Background()
	r.lease.step(ctx)
	r.clock.add(time.Minute)
	r2 := *r.lease
	r2.held, r2.started, r2.transitions = false, false, 0
	r.fence.renewed(r.clock.now())
	r2.step(ctx)
	if len(r.killed) != 0 || !r.fence.mayRun() || r.store.l.Spec.LeaseTransitions != 1 {
		t.Fatalf("restart with its own lease: killed %v, transitions %d", r.killed, r.store.l.Spec.LeaseTransitions)
	}
	r.store.takeOver("rakhsh-ha", r.clock.now())
	r.clock.add(time.Minute)
	r3 := *r.lease
	r3.held, r3.started, r3.transitions = false, false, 0
	r3.step(ctx)
	if len(r.killed) != 2 {
		t.Fatalf("restart after a takeover: killed %v, want both HA QEMUs", r.killed)
	}
}

// TestFenceKillsByPID: the watchdog's own goroutine kills a real process, found by its pid
// and its QEMU-like command line, with SIGKILL, though the test holds the agent's lock.
func TestFenceKillsByPID(t *testing.T) {
	if os.Getenv("RAKHSH_FENCE_HELPER") == "1" {
		time.Sleep(time.Minute)
		return
	}
	cmd := &exec.Cmd{Path: os.Args[0], Args: []string{"qemu-system-fake", "-test.run=^TestFenceKillsByPID$", "--", "-uuid", "u-fence"},
		Env: append(os.Environ(), "RAKHSH_FENCE_HELPER=1")}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	pid := cmd.Process.Pid
	for i := 0; !isVMProcess(pid, "u-fence"); i++ {
		if i > 100 {
			t.Fatal("the helper does not look like a QEMU of u-fence")
		}
		time.Sleep(10 * time.Millisecond)
	}
	a := &Agent{insts: map[string]*instance{}}
	a.mu.Lock() // the rest of the agent is stuck holding its lock
	defer a.mu.Unlock()
	f := newFence(300*time.Millisecond, time.Now, slog.New(slog.DiscardHandler))
	f.setProcs([]haProc{{uid: "u-fence", key: "default/vm", pid: pid}, {uid: "u-other", key: "default/other", pid: os.Getpid()}})
	f.renewed(time.Now())
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	start := time.Now()
	go f.watch(ctx, 10*time.Millisecond)
	select {
	case err := <-done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("the helper ended with %v, want SIGKILL", err)
		}
		if d := time.Since(start); d < 300*time.Millisecond {
			t.Fatalf("killed after %s, before the fence timeout", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the watchdog did not kill the helper")
	}
	// The test process itself is no QEMU of u-other: it lives on (we are here).
}
