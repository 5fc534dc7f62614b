package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/rakhsh/rakhsh/internal/qemu"
	"github.com/rakhsh/rakhsh/internal/qemu/qmp"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// Machine is one VM's QEMU on this host, started by this agent or adopted: the process, its
// QMP connection and the watchers of its events and serial console (an instance). The
// reconcile and the start steps ask it what QEMU does and tell it to start, wait or shut
// down; the process, its pidfile, signals and QMP stay behind it.
type Machine struct {
	a  *Agent
	in *instance // nil until Start
}

// machine is the Machine of a tracked instance.
func (a *Agent) machine(in *instance) *Machine { return &Machine{a: a, in: in} }

// Start launches QEMU for cfg (it starts paused, -S) in its own session, and tracks and
// watches it under the VM's uid from then on.
func (m *Machine) Start(key runtime.Key, uid, runDir string, cfg qemu.Config) error {
	in, err := m.a.launch(key, uid, runDir, cfg)
	if err != nil {
		return err
	}
	m.a.mu.Lock()
	m.a.insts[uid] = in
	m.a.mu.Unlock()
	m.a.startWatchers(in)
	m.in = in
	return nil
}

// adoptMachine tracks and watches a QEMU (pid) that this agent did not start: one an
// earlier agent left running. Connect follows.
func (a *Agent) adoptMachine(key runtime.Key, uid, runDir string, pid int) *Machine {
	in := &instance{uid: uid, key: key, runDir: runDir, pid: pid, accel: accelOf(pid), exited: make(chan struct{}), restarting: restartMarked(runDir)}
	a.mu.Lock()
	a.insts[uid] = in
	a.mu.Unlock()
	a.startWatchers(in)
	return a.machine(in)
}

// PID is QEMU's process id.
func (m *Machine) PID() int { return m.in.pid }

// Connect opens QMP unless it is open, retrying for up to wait. It returns the monitor; nil
// when QEMU closed it again at once.
func (m *Machine) Connect(ctx context.Context, wait time.Duration) (monitor, error) {
	if err := m.a.attach(ctx, m.in, wait); err != nil {
		return nil, err
	}
	return m.in.monitor(), nil
}

// Monitor is the open QMP connection, or nil.
func (m *Machine) Monitor() monitor { return m.in.monitor() }

// Exited says whether QEMU is gone.
func (m *Machine) Exited() bool { return m.in.isExited() }

// Wait waits up to d for QEMU to be gone and says whether it is.
func (m *Machine) Wait(d time.Duration) bool {
	select {
	case <-m.in.exited:
	case <-time.After(d):
	}
	return m.in.isExited()
}

// Quitting says whether the agent has asked QEMU to quit.
func (m *Machine) Quitting() bool {
	m.in.mu.Lock()
	defer m.in.mu.Unlock()
	return !m.in.quitAt.IsZero()
}

// Restarting says whether a graceful restart waits for QEMU to end.
func (m *Machine) Restarting() bool {
	m.in.mu.Lock()
	defer m.in.mu.Unlock()
	return m.in.restarting
}

// endState says how QEMU came to end: a graceful restart was under way, the guest powered
// itself off, or the guest panicked.
func (m *Machine) endState() (restarting, guestShutdown, panicked bool) {
	m.in.mu.Lock()
	defer m.in.mu.Unlock()
	return m.in.restarting, m.in.guestShutdown, m.in.panicked
}

// CancelShutdown forgets a graceful stop that is no longer wanted (the button press cannot
// be undone).
func (m *Machine) CancelShutdown() {
	m.in.mu.Lock()
	m.in.powerdownAt = time.Time{}
	m.in.powerdown2 = false
	m.in.agentShutdownAt, m.in.agentShutdownSent = time.Time{}, false
	m.in.mu.Unlock()
}

// MarkRestarting notes that QEMU, once it ends, starts again (in the run directory too, so
// that the intent outlives an agent restart).
func (m *Machine) MarkRestarting() error {
	if err := os.WriteFile(filepath.Join(m.in.runDir, restartFileName), nil, 0o600); err != nil {
		return err
	}
	m.in.mu.Lock()
	m.in.restarting = true
	m.in.mu.Unlock()
	return nil
}

// Reset resets the guest (system_reset); it has not written to its serial console since.
func (m *Machine) Reset(ctx context.Context, mon monitor) error {
	m.in.guestOutput.Store(false)
	if err := mon.SystemReset(ctx); err != nil {
		return fmt.Errorf("system_reset: %w", err)
	}
	return nil
}

// GuestSpoke says whether the guest has written to its serial console since QEMU started
// or was reset.
func (m *Machine) GuestSpoke() bool { return m.in.guestOutput.Load() }

// Discard ends the QEMU of a failed start: it gets a moment to finish writing its error,
// then is killed. The agent forgets it; its sockets, pidfile and cgroups are removed, its
// log stays.
func (m *Machine) Discard() {
	in := m.in
	if !m.Wait(2 * time.Second) {
		_ = signalVM(in.pid, in.uid, syscall.SIGKILL)
		m.Wait(m.a.cfg.KillTimeout)
	}
	m.a.forget(in)
	removeQEMUFiles(in.runDir)
	removeVMCgroups(in.uid)
}

// Quit records why QEMU ends (exit.json; a reason recorded earlier stays) and asks QEMU to
// quit: over QMP, else (no connection, or quit failed) with SIGTERM.
func (m *Machine) Quit(ctx context.Context, rec exitRecord) error {
	in := m.in
	if readExitRecord(in.runDir) == nil {
		if err := writeExitRecord(in.runDir, rec); err != nil {
			return err
		}
	}
	in.mu.Lock()
	in.quitAt = m.a.cfg.Now()
	in.mu.Unlock()
	if mon := in.monitor(); mon != nil {
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := mon.Quit(qctx)
		cancel()
		if err == nil {
			return nil
		}
		m.a.log.Warn("quit failed; sending SIGTERM", "vm", string(in.key), "err", err)
	}
	return signalVM(in.pid, in.uid, syscall.SIGTERM)
}

// shutdown says how a Machine is to end.
type shutdown struct {
	force  bool          // quit at once, without asking the guest
	grace  time.Duration // how long the guest gets after the power button before QEMU quits
	second time.Duration // when a Windows guest gets its second press after the first; 0: none
	reason string        // why it ends (exit.json)
}

// Shutdown moves QEMU's end on by one step without blocking, and says when to look again.
// Gracefully it presses the ACPI power button (pressed reports the first press) and quits
// QEMU once the grace period is over; with force, when the guest does not run, or without a
// grace period it quits QEMU at once. QEMU that does not quit within the kill timeout is
// killed.
func (m *Machine) Shutdown(ctx context.Context, s shutdown) (again time.Duration, pressed bool, err error) {
	in := m.in
	now := m.a.cfg.Now()
	in.mu.Lock()
	quitAt, powerdownAt := in.quitAt, in.powerdownAt
	in.mu.Unlock()
	if !quitAt.IsZero() {
		if now.Sub(quitAt) > m.a.cfg.KillTimeout {
			m.a.log.Warn("QEMU did not quit: killing it", "vm", string(in.key), "pid", in.pid)
			if err := signalVM(in.pid, in.uid, syscall.SIGKILL); err != nil {
				return 0, false, err
			}
		}
		return 250 * time.Millisecond, false, nil
	}
	mon := in.monitor()
	running := false
	if mon != nil && !s.force {
		st, err := mon.QueryStatus(ctx)
		running = err == nil && st.Status == qmp.StatusRunning
	}
	if running && !s.force && s.grace > 0 && !powerdownAt.IsZero() && now.Sub(powerdownAt) >= s.grace {
		// The power button was ignored: the guest agent, when it answers, gets to shut the
		// guest down before the quit (guestagent.go).
		if wait, ok := m.agentShutdown(ctx, now, s.grace); ok {
			return wait, false, nil
		}
	}
	if s.force || !running || (!powerdownAt.IsZero() && now.Sub(powerdownAt) >= s.grace) || s.grace == 0 {
		return 250 * time.Millisecond, false, m.Quit(ctx, exitRecord{Reason: s.reason})
	}
	if powerdownAt.IsZero() {
		if err := mon.SystemPowerdown(ctx); err != nil {
			return 0, false, fmt.Errorf("system_powerdown: %w", err)
		}
		in.mu.Lock()
		in.powerdownAt = now
		in.mu.Unlock()
		m.a.log.Info("pressed the ACPI power button", "vm", string(in.key), "grace", s.grace)
		if s.second > 0 && s.second < s.grace {
			return s.second, true, nil
		}
		return s.grace, true, nil
	}
	if s.second > 0 {
		if now.Sub(powerdownAt) < s.second {
			return s.second - now.Sub(powerdownAt), false, nil
		}
		// Windows ignores the first press while its display is off or no one is logged on
		// (the first press only wakes it); the second one starts the shutdown.
		if err := mon.SystemPowerdown(ctx); err != nil {
			return 0, false, fmt.Errorf("system_powerdown: %w", err)
		}
		in.mu.Lock()
		in.powerdown2 = true
		in.mu.Unlock()
		m.a.log.Info("pressed the ACPI power button a second time (Windows)", "vm", string(in.key))
	}
	return s.grace - now.Sub(powerdownAt), false, nil
}

// stepLaunch starts QEMU, paused; undone by discarding it (Machine.Discard).
func (a *Agent) stepLaunch(_ context.Context, r *startRun) error {
	m := &Machine{a: a}
	if err := m.Start(r.key, r.vm.UID, r.runDir, r.cfg); err != nil {
		return failStart(fmt.Sprintf("starting %s: %v", r.cfg.Binary, err))
	}
	r.m, r.in = m, m.in
	r.undo.add(stepLaunch, m.Discard)
	return nil
}

// stepQMP connects QMP (and with it the event watcher). The connection closes when the
// Machine is discarded: nothing of its own to undo.
func (a *Agent) stepQMP(ctx context.Context, r *startRun) error {
	mon, err := r.m.Connect(ctx, 30*time.Second)
	if err != nil {
		if r.m.Wait(time.Second) {
			return failStart("QEMU exited during start-up")
		}
		return failStart("QEMU did not open its QMP socket: " + err.Error())
	}
	if mon == nil {
		return failStart("QEMU closed its QMP socket")
	}
	r.mon = mon
	return nil
}
