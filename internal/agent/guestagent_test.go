package agent

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/qemu"
	"github.com/rakhsh/rakhsh/internal/qemu/qmp"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/testutil"
	"github.com/rakhsh/rakhsh/internal/testutil/fakeqga"
)

// fakeGuestAgent serves a VM's qga.sock as a guest agent would; mode picks its behaviour.
type fakeGuestAgent struct {
	mu    sync.Mutex
	mode  string // "honest", "silent", "huge", "junk", "late-once"
	calls []string
	pings atomic.Int64
}

func (f *fakeGuestAgent) setMode(m string) { f.mu.Lock(); f.mode = m; f.mu.Unlock() }

func (f *fakeGuestAgent) commands() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func serveFakeGuestAgent(t *testing.T, runDir string) *fakeGuestAgent {
	t.Helper()
	f := &fakeGuestAgent{mode: "honest"}
	testutil.ListenUnix(t, filepath.Join(runDir, qemu.GuestAgentSocketName), func(conn net.Conn) {
		fakeqga.ReadRequests(conn, func(req fakeqga.Request) bool { return f.answer(conn, req) })
	})
	return f
}

// answer answers one request as the mode says; false hangs up.
func (f *fakeGuestAgent) answer(conn net.Conn, req fakeqga.Request) bool {
	f.mu.Lock()
	mode := f.mode
	f.calls = append(f.calls, req.Execute)
	if mode == "late-once" && req.Execute == "guest-ping" {
		f.mode = "honest" // this ping goes unanswered, the next ones are answered
	}
	f.mu.Unlock()
	if req.Execute == "guest-ping" {
		f.pings.Add(1)
	}
	reply := func(v any) { fakeqga.Reply(conn, req, v) }
	if mode == "late-once" && req.Execute == "guest-ping" {
		f.pings.Add(1)
		return true
	}
	if req.Execute == "guest-sync-delimited" && mode != "silent" {
		fakeqga.AnswerSync(conn, req)
		return true
	}
	switch mode {
	case "silent":
		return true
	case "huge":
		err := fakeqga.WriteHugeLine(conn, nil)
		return err == nil
	case "junk":
		_, _ = conn.Write([]byte("{\"return\": {\"name\": [}\n"))
		return true
	}
	switch req.Execute {
	case "guest-ping", "guest-set-user-password":
		reply(map[string]any{})
	case "guest-get-osinfo":
		reply(map[string]any{"name": "Rakhsh test guest", "kernel-release": "6.1.0-57-amd64", "version-id": "1", "id": "rakhsh-guest"})
	case "guest-get-host-name":
		reply(map[string]any{"host-name": "vm1"})
	case "guest-network-get-interfaces":
		reply([]any{
			fakeqga.Interface("lo", "00:00:00:00:00:00", fakeqga.Address("ipv4", "127.0.0.1", 8)),
			fakeqga.Interface("eth0", "52:54:00:AA:BB:CC", fakeqga.Address("ipv4", "192.0.2.7", 24), fakeqga.Address("ipv6", "fe80::1", 64)),
		})
	case "guest-fsfreeze-freeze", "guest-fsfreeze-thaw":
		reply(1)
	case "guest-shutdown":
	}
	return true
}

func setGuestTimings(t *testing.T) {
	t.Helper()
	p, c, i := guestPingEvery, guestCallTimeout, guestInfoEvery
	guestPingEvery, guestCallTimeout, guestInfoEvery = 20*time.Millisecond, 300*time.Millisecond, time.Hour
	t.Cleanup(func() { guestPingEvery, guestCallTimeout, guestInfoEvery = p, c, i })
}

// waitVM polls the VM until ok says it is as wanted (or the test's minute is up).
func (e *internalEnv) waitVM(name, what string, ok func(*v1alpha1.VirtualMachine) bool) *v1alpha1.VirtualMachine {
	e.t.Helper()
	var vm *v1alpha1.VirtualMachine
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if vm = e.getVM(name); ok(vm) {
			return vm
		}
	}
	e.t.Fatalf("%s never happened; status %+v", what, vm.Status)
	return nil
}

func agentReady(vm *v1alpha1.VirtualMachine) *v1alpha1.Condition {
	return v1alpha1.FindCondition(vm.Status.Conditions, v1alpha1.VMConditionAgentReady)
}

// TestGuestAgentWatcher: AgentReady, guestOSInfo and the guest's addresses are written once
// the agent answers, nothing is written while nothing changes, and a silent, a junk-sending
// and a flooding guest agent turn AgentReady False with a reason while the last known OS
// stays.
func TestGuestAgentWatcher(t *testing.T) {
	setGuestTimings(t)
	e := newInternalEnv(t)
	start := v1alpha1.NewTime(time.Now().Add(-10 * time.Second))
	vm := e.createVM("ga", nil, `{"status":{"nodeName":"node1","phase":"Running","networks":[{"type":"Main","macAddress":"52:54:00:aa:bb:cc","ipAddress":"10.0.0.5"}]}}`)
	if _, err := runtime.UpdateVMStatus(e.ctx, e.c, "default", "ga", vm.UID, agentStatusFields, nil, func(v *v1alpha1.VirtualMachine) error {
		v.Status.Stats = &v1alpha1.VirtualMachineStats{LastStartTime: &start}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	runDir := e.a.runDir(vm.UID)
	if err := os.MkdirAll(runDir, 0o700); err != nil {
		t.Fatal(err)
	}
	fake := serveFakeGuestAgent(t, runDir)
	in := &instance{uid: vm.UID, key: runtime.KeyOf(vm), runDir: runDir, exited: make(chan struct{}), guest: newGuestAgent(runDir)}
	e.a.mu.Lock()
	e.a.insts[vm.UID] = in
	e.a.mu.Unlock()
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan struct{})
	go func() { e.a.watchGuestAgent(ctx, in); close(done) }()

	got := e.waitVM("ga", "AgentReady=True with the guest's OS and addresses", func(v *v1alpha1.VirtualMachine) bool {
		c := agentReady(v)
		return c != nil && c.Status == v1alpha1.ConditionTrue && v.Status.GuestOSInfo != nil && len(v.Status.Networks) == 1 &&
			len(v.Status.Networks[0].GuestIPAddresses) > 0
	})
	if os := got.Status.GuestOSInfo; os.KernelRelease != "6.1.0-57-amd64" || os.Hostname != "vm1" || os.ID != "rakhsh-guest" {
		t.Errorf("guestOSInfo %+v", os)
	}
	n := got.Status.Networks[0]
	if n.IPAddress != "10.0.0.5" || n.InterfaceName != "eth0" || !slices.Equal(n.GuestIPAddresses, []string{"192.0.2.7/24"}) {
		t.Errorf("networks[0] %+v: want the platform's address kept, eth0 and 192.0.2.7/24 (no link-local)", n)
	}
	if l := got.Status.Stats.LaunchTimeDuration; l == nil || l.GuestOSAgentStarting == "" {
		t.Errorf("stats.launchTimeDuration.guestOSAgentStarting not set: %+v", got.Status.Stats)
	}

	// Steady: ten more pings, no write.
	rv := got.ResourceVersion
	for p := fake.pings.Load() + 10; fake.pings.Load() < p; time.Sleep(10 * time.Millisecond) {
	}
	if now := e.getVM("ga"); now.ResourceVersion != rv {
		t.Errorf("status written while nothing changed: resourceVersion %s → %s", rv, now.ResourceVersion)
	}
	// One ping without an answer in time, then answers again: AgentReady stays, nothing is
	// written (a busy guest is not a lost agent).
	fake.setMode("late-once")
	for p := fake.pings.Load() + 3; fake.pings.Load() < p; time.Sleep(10 * time.Millisecond) {
	}
	if now := e.getVM("ga"); now.ResourceVersion != rv || agentReady(now).Status != v1alpha1.ConditionTrue {
		t.Errorf("one late answer: AgentReady %+v, resourceVersion %s → %s", agentReady(now), rv, now.ResourceVersion)
	}

	for _, c := range []struct{ mode, reason string }{
		{"silent", ReasonAgentNotResponding}, {"honest", ReasonAgentReady}, {"huge", ReasonAgentProtocolError},
		{"honest", ReasonAgentReady}, {"junk", ReasonAgentProtocolError},
	} {
		fake.setMode(c.mode)
		v := e.waitVM("ga", "AgentReady reason "+c.reason+" for a "+c.mode+" guest agent", func(v *v1alpha1.VirtualMachine) bool {
			cond := agentReady(v)
			return cond != nil && cond.Reason == c.reason
		})
		if want := c.reason == ReasonAgentReady; (agentReady(v).Status == v1alpha1.ConditionTrue) != want {
			t.Errorf("%s: AgentReady %+v", c.mode, agentReady(v))
		}
		if v.Status.GuestOSInfo == nil || v.Status.GuestOSInfo.Hostname != "vm1" {
			t.Errorf("%s: the last known guestOSInfo was lost: %+v", c.mode, v.Status.GuestOSInfo)
		}
	}

	// The internal API for snapshots and set-password.
	fake.setMode("honest")
	if n, err := e.a.GuestFreeze(e.ctx, vm.UID); err != nil || n != 1 {
		t.Errorf("freeze: %d, %v", n, err)
	}
	if n, err := e.a.GuestThaw(e.ctx, vm.UID); err != nil || n != 1 {
		t.Errorf("thaw: %d, %v", n, err)
	}
	if err := e.a.GuestSetPassword(e.ctx, vm.UID, "root", []byte("x\ny")); err == nil {
		t.Error("a password with a line break was accepted")
	}
	if err := e.a.GuestSetPassword(e.ctx, vm.UID, "root", []byte("pw")); err != nil {
		t.Errorf("set password: %v", err)
	}
	if _, err := e.a.GuestFreeze(e.ctx, "no-such-uid"); err != ErrNoGuestAgent {
		t.Errorf("freeze of an unknown VM: %v", err)
	}

	// QEMU exits: the watcher ends.
	in.markExited()
	<-done
	cancel()
}

// TestGracefulStopFallsBackToGuestAgent: a guest that ignored the power button for the
// grace period is asked by its guest agent to shut down, and quit only after that had its
// time; without an answering guest agent the quit comes at once.
func TestGracefulStopFallsBackToGuestAgent(t *testing.T) {
	setGuestTimings(t)
	e := newInternalEnv(t)
	now := time.Now()
	e.a.cfg.Now = func() time.Time { return now }
	grace := 30 * time.Second
	for _, withAgent := range []bool{true, false} {
		runDir := filepath.Join(t.TempDir(), "run")
		if err := os.MkdirAll(runDir, 0o700); err != nil {
			t.Fatal(err)
		}
		var fake *fakeGuestAgent
		if withAgent {
			fake = serveFakeGuestAgent(t, runDir)
		}
		mon := newFakeMonitor(qmp.StatusRunning)
		in := &instance{uid: "u", key: "default/vm", runDir: runDir, exited: make(chan struct{}), mon: mon,
			guest: newGuestAgent(runDir), powerdownAt: now.Add(-grace - time.Second)}
		m := e.a.machine(in)
		wait, _, err := m.Shutdown(e.ctx, shutdown{grace: grace, reason: v1alpha1.ExitStopped})
		if err != nil {
			t.Fatal(err)
		}
		if !withAgent {
			if !slices.Contains(mon.Calls(), "quit") {
				t.Fatalf("no guest agent: QMP %v, want a quit", mon.Calls())
			}
			continue
		}
		if slices.Contains(mon.Calls(), "quit") || wait != agentShutdownWait(grace) {
			t.Fatalf("with a guest agent: QMP %v, wait %v; want no quit yet and a wait of %v", mon.Calls(), wait, agentShutdownWait(grace))
		}
		// The request was written; the fake reads it in its own time.
		for deadline := time.Now().Add(time.Minute); !slices.Contains(fake.commands(), "guest-shutdown") && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
		if !slices.Contains(fake.commands(), "guest-shutdown") {
			t.Fatalf("guest agent commands %v, want guest-shutdown", fake.commands())
		}
		// Still within the wait: no quit, no second request.
		now = now.Add(agentShutdownWait(grace) / 2)
		if _, _, err := m.Shutdown(e.ctx, shutdown{grace: grace, reason: v1alpha1.ExitStopped}); err != nil || slices.Contains(mon.Calls(), "quit") {
			t.Fatalf("half-way: %v, QMP %v", err, mon.Calls())
		}
		// The guest ignored that too: quit.
		now = now.Add(agentShutdownWait(grace))
		if _, _, err := m.Shutdown(e.ctx, shutdown{grace: grace, reason: v1alpha1.ExitStopped}); err != nil || !slices.Contains(mon.Calls(), "quit") {
			t.Fatalf("after the wait: %v, QMP %v", err, mon.Calls())
		}
		n := 0
		for _, c := range fake.commands() {
			if c == "guest-shutdown" {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("guest-shutdown sent %d times", n)
		}
	}
}
