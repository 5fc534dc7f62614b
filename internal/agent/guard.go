package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// The fence guard: a small process per node (`rakhsh fence-guard --data-dir DIR`) that kills
// the QEMUs of the node's HA VMs when the agent has not renewed its lease for the fence
// timeout, even when the agent is stopped (SIGSTOP) or dead (kill -9). The agent's own
// watchdog (fence.go) lives in the agent's process and stops with it; the guard does not.
//
// The agent starts the guard in a session of its own (it outlives the agent, as QEMUs do) and
// tells it what to guard through one file in the data dir, written atomically (temp file and
// rename) at every renewal and whenever the set of HA QEMUs changes: the time of the last
// renewal on CLOCK_MONOTONIC (the same clock for every process of the host, and blind to
// changes of the wall clock), the fence timeout, whether the lease is lost, and each HA QEMU
// as pid, process start time and VM uid. The guard reads the file every 100 ms and needs
// nothing else: no API, no lock shared with the agent. See docs/ha.md.

// Files of the guard, in the data dir.
const (
	GuardStateFile = "fence-guard.json" // written by the agent, read by the guard
	GuardPIDFile   = "fence-guard.pid"  // written by the guard
	GuardLogFile   = "fence-guard.log"  // the guard's log (the last two megabytes: .log and .log.1)

	// GuardCommand is the (hidden) subcommand that runs the guard.
	GuardCommand = "fence-guard"

	guardTick        = 100 * time.Millisecond
	guardMaxState    = 1 << 20 // bytes of state file read at most
	guardMaxQEMUs    = 4096    // QEMUs listed at most
	guardMaxLogBytes = 1 << 20 // the log is rotated beyond this
)

// guardState is the content of the state file.
type guardState struct {
	// Armed: the agent holds (or held) a lease whose renewal the guard must watch. False
	// before the agent armed its watchdog, and against a control plane without NodeLeases.
	Armed bool `json:"armed"`
	// RenewedMono is the last renewal (its time taken before the request was sent), in
	// nanoseconds of CLOCK_MONOTONIC.
	RenewedMono int64 `json:"renewedMonotonicNs"`
	// FenceTimeoutMs is the agent's fence timeout.
	FenceTimeoutMs int64 `json:"fenceTimeoutMs"`
	// Lost: the agent found its lease lost: kill now.
	Lost bool `json:"lost"`
	// Stop: the agent stopped cleanly with no HA QEMU: the guard exits.
	Stop bool `json:"stop,omitempty"`
	// AgentPID is the pid of the agent that wrote the file (for the log).
	AgentPID int `json:"agentPID"`
	// BootID is the kernel's boot id when the file was written: the monotonic clock, pids and
	// start times of another boot mean nothing (a state of another boot counts as missing).
	BootID string `json:"bootID"`
	// QEMUs are the HA QEMUs of the node.
	QEMUs []guardQEMU `json:"qemus"`
}

type guardQEMU struct {
	PID int `json:"pid"`
	// Start is the process's start time (field 22 of /proc/PID/stat, clock ticks since
	// boot): a pid reused by another process has another start time.
	Start uint64 `json:"start"`
	UID   string `json:"uid"`
}

// monoNow is the time on CLOCK_MONOTONIC, in nanoseconds.
func monoNow() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return ts.Nano()
}

// bootID is the kernel's boot id ("" when unknown).
func bootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// procStartTime returns the start time of pid (field 22 of /proc/PID/stat), or 0 when there
// is no such process.
func procStartTime(pid int) uint64 {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// The command name (field 2) is in parentheses and may hold spaces and parentheses:
	// the fields after the last ")" start with field 3 (state).
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0
	}
	v, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return 0
	}
	return v
}

// --- the guard process ---

// GuardOptions configure RunFenceGuard.
type GuardOptions struct {
	DataDir string
	// Tick is how often the guard looks (default 100 ms).
	Tick time.Duration
}

// RunFenceGuard runs the fence guard of the data dir until the data dir is gone, the agent
// asks it to stop (a clean stop with no HA QEMU), or another guard of the data dir took its
// place (its pid file names another live guard).
func RunFenceGuard(o GuardOptions) error {
	if o.DataDir == "" {
		return errors.New("fence-guard: --data-dir is required")
	}
	dir, err := filepath.Abs(o.DataDir)
	if err != nil {
		return err
	}
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return fmt.Errorf("fence-guard: data dir %s: not a directory (%v)", dir, err)
	}
	if o.Tick <= 0 {
		o.Tick = guardTick
	}
	g := &guard{dir: dir, pid: os.Getpid(), boot: bootID(), logw: &rotatingLog{path: filepath.Join(dir, GuardLogFile)}, killed: map[guardQEMU]bool{}}
	g.log = slog.New(slog.NewTextHandler(g.logw, nil)).With("pid", g.pid)
	if err := writeFileAtomic(filepath.Join(dir, GuardPIDFile), []byte(strconv.Itoa(g.pid)+"\n"), 0o600); err != nil {
		return fmt.Errorf("fence-guard: writing its pid file: %w", err)
	}
	// The out-of-memory killer should take anything but the guard (it fails silently when
	// not privileged: the guard then runs as any process).
	_ = os.WriteFile("/proc/self/oom_score_adj", []byte("-1000"), 0o644)
	g.log.Info("fence guard started", "data-dir", dir)
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	t := time.NewTicker(o.Tick)
	defer t.Stop()
	for {
		if done := g.tick(); done {
			return nil
		}
		select {
		case s := <-sig:
			if len(g.state.QEMUs) == 0 {
				g.log.Info("fence guard stopped by a signal: it guards no HA QEMU", "signal", s.String())
				g.removePIDFile()
				return nil
			}
			g.log.Warn("fence guard: signal ignored, it guards HA QEMUs (they would run unguarded); the agent stops it when none runs",
				"signal", s.String(), "qemus", len(g.state.QEMUs))
		case <-t.C:
		}
	}
}

type guard struct {
	dir    string
	pid    int
	boot   string
	log    *slog.Logger
	logw   *rotatingLog
	state  guardState // the last good state
	badErr string     // the last error reading the state (logged once)
	// killed remembers the QEMUs already killed (logged once); bounded by the listed QEMUs.
	killed map[guardQEMU]bool
	fenced bool
}

// tick is one look: it reports whether the guard must exit.
func (g *guard) tick() bool {
	if _, err := os.Stat(g.dir); errors.Is(err, os.ErrNotExist) {
		return true // the data dir is gone: nothing left to guard, and nowhere to log
	}
	if other := readPIDFile(filepath.Join(g.dir, GuardPIDFile)); other != 0 && other != g.pid && liveProcess(other, isGuardOf(g.dir)) {
		g.log.Info("fence guard replaced by another guard of this data dir: exiting", "by", other)
		return true
	}
	g.readState()
	if g.state.Stop && len(g.state.QEMUs) == 0 {
		g.log.Info("fence guard stopped by the agent: no HA QEMU runs")
		g.removePIDFile()
		return true
	}
	why := g.fenceReason()
	if why == "" {
		if g.fenced {
			g.log.Info("the agent renews its lease again: fence guard at rest")
		}
		g.fenced = false
		clear(g.killed)
		return false
	}
	if !g.fenced {
		g.log.Error("fencing: killing the QEMUs of the HA VMs of this node", "why", why, "qemus", len(g.state.QEMUs))
	}
	g.fenced = true
	for _, q := range g.state.QEMUs {
		if g.killed[q] || q.PID <= 1 || procStartTime(q.PID) != q.Start {
			continue // already killed, or gone, or the pid now belongs to another process
		}
		// The agent records the VM's lastExit from this file when it sees the QEMU gone.
		if b, err := json.Marshal(exitRecord{Reason: v1alpha1.ExitFenced,
			Message: "the node's fence guard killed QEMU to fence the VM: " + why}); err == nil {
			_ = writeFileAtomic(filepath.Join(storage.VMRunDir(g.dir, q.UID), exitFileName), b, 0o600)
		}
		if err := syscall.Kill(q.PID, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			g.log.Error("fencing: killing QEMU failed", "vm-uid", q.UID, "qemu-pid", q.PID, "err", err)
			continue
		}
		g.killed[q] = true
		g.log.Error("fencing: QEMU killed", "vm-uid", q.UID, "qemu-pid", q.PID)
	}
	return false
}

// fenceReason says why the HA QEMUs must die now, or "".
func (g *guard) fenceReason() string {
	s := g.state
	if s.Lost {
		return "the agent found the node lease lost"
	}
	if !s.Armed || s.FenceTimeoutMs <= 0 {
		return ""
	}
	since := time.Duration(monoNow() - s.RenewedMono)
	timeout := time.Duration(s.FenceTimeoutMs) * time.Millisecond
	if since < timeout {
		return ""
	}
	return fmt.Sprintf("the node lease was last renewed %s ago (the agent is stopped, dead or cut off), and the fence timeout is %s",
		since.Round(time.Millisecond), timeout)
}

// readState reads the state file: missing means no HA QEMU; a malformed one is logged and
// the last good state kept.
func (g *guard) readState() {
	s, err := readGuardState(g.dir)
	switch {
	case errors.Is(err, os.ErrNotExist), err == nil && s.BootID != g.boot:
		g.state = guardState{}
		g.badErr = ""
	case err != nil:
		if msg := err.Error(); msg != g.badErr {
			g.badErr = msg
			g.log.Error("fence guard: the state file is unusable: keeping the last good one", "err", err)
		}
	default:
		g.state = *s
		g.badErr = ""
	}
	// Forget kills of QEMUs no longer listed (bounded memory).
	for q := range g.killed {
		listed := false
		for _, l := range g.state.QEMUs {
			if l == q {
				listed = true
				break
			}
		}
		if !listed {
			delete(g.killed, q)
		}
	}
}

func readGuardState(dir string) (*guardState, error) {
	f, err := os.Open(filepath.Join(dir, GuardStateFile))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, guardMaxState+1))
	if err != nil {
		return nil, err
	}
	if len(b) > guardMaxState {
		return nil, fmt.Errorf("%s: larger than %d bytes", GuardStateFile, guardMaxState)
	}
	var s guardState
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", GuardStateFile, err)
	}
	if len(s.QEMUs) > guardMaxQEMUs {
		return nil, fmt.Errorf("%s: %d QEMUs listed, at most %d", GuardStateFile, len(s.QEMUs), guardMaxQEMUs)
	}
	if s.Armed && (s.FenceTimeoutMs <= 0 || s.RenewedMono <= 0) {
		return nil, fmt.Errorf("%s: armed without a renewal time and a fence timeout", GuardStateFile)
	}
	for _, q := range s.QEMUs {
		if q.PID <= 1 || q.Start == 0 || q.UID == "" || strings.ContainsAny(q.UID, "/\x00") || q.UID == ".." || q.UID == "." {
			return nil, fmt.Errorf("%s: bad QEMU entry %+v", GuardStateFile, q)
		}
	}
	return &s, nil
}

func (g *guard) removePIDFile() {
	p := filepath.Join(g.dir, GuardPIDFile)
	if readPIDFile(p) == g.pid {
		_ = os.Remove(p)
	}
}

// isGuardOf matches the command line of a fence guard of dir.
func isGuardOf(dir string) func(argv []string) bool {
	return func(argv []string) bool {
		if len(argv) < 4 || argv[1] != GuardCommand {
			return false
		}
		for i := 2; i+1 < len(argv); i++ {
			if argv[i] == "--data-dir" && argv[i+1] == dir {
				return true
			}
		}
		return false
	}
}

// rotatingLog appends to a file, and moves it to .1 beyond guardMaxLogBytes.
type rotatingLog struct {
	path string
	mu   sync.Mutex
}

func (r *rotatingLog) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if st, err := os.Stat(r.path); err == nil && st.Size() > guardMaxLogBytes {
		_ = os.Rename(r.path, r.path+".1")
	}
	f, err := os.OpenFile(r.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return len(p), nil // a guard that cannot log still guards
	}
	defer f.Close()
	_, _ = f.Write(p)
	return len(p), nil
}

// writeFileAtomic writes path by a temp file in the same directory and a rename.
func writeFileAtomic(path string, b []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	name := tmp.Name()
	_, werr := tmp.Write(b)
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr, os.Chmod(name, mode)); err != nil {
		_ = os.Remove(name)
		return err
	}
	if err := os.Rename(name, path); err != nil {
		_ = os.Remove(name)
		return err
	}
	return nil
}

// --- the agent's side ---

// guardLink is the agent's end of the guard: it keeps one running and writes its state.
type guardLink struct {
	bin     string // the executable that runs `fence-guard`
	dir     string
	timeout time.Duration
	log     *slog.Logger

	mu        sync.Mutex // only guardLink code takes it
	prev      *guardState
	lastProcs []guardQEMU
	lastCheck time.Time
}

// GuardPID returns the pid of the live fence guard of dataDir (found by its pid file and
// checked against its command line), or 0.
func GuardPID(dataDir string) int {
	return livePID(filepath.Join(dataDir, GuardPIDFile), isGuardOf(dataDir))
}

// begin runs at the agent's start: it remembers the state its predecessor left (so that the
// guard keeps watching the predecessor's last renewal until this agent renews) and makes
// sure a guard runs.
func (g *guardLink) begin() {
	g.mu.Lock()
	if s, err := readGuardState(g.dir); err == nil && s.Armed && s.BootID == bootID() {
		g.prev = s
	}
	g.mu.Unlock()
	g.ensure(true)
}

// firstRenewal is the renewal the guard watches until the agent renews: its predecessor's
// last one, or now when there was none.
func (g *guardLink) firstRenewal() int64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.prev != nil && g.prev.RenewedMono > 0 {
		return g.prev.RenewedMono
	}
	return monoNow()
}

// ensure starts a guard when none of this data dir runs, or when the one that runs is of
// another executable (another version). The old guard gives way once the new one has written
// its pid file, so there is no moment without a guard. force: check now, else at most once a
// second.
func (g *guardLink) ensure(force bool) {
	g.mu.Lock()
	if !force && time.Since(g.lastCheck) < time.Second {
		g.mu.Unlock()
		return
	}
	g.lastCheck = time.Now()
	g.mu.Unlock()
	pid := GuardPID(g.dir)
	if pid != 0 {
		if sameExecutable(pid, g.bin) {
			return
		}
		g.log.Info("the fence guard runs another executable: starting one of this agent's in its place", "old-pid", pid)
	}
	cmd := exec.Command(g.bin, GuardCommand, "--data-dir", g.dir)
	// A session of its own, as QEMU: it outlives the agent, and no terminal's signal reaches it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Dir = "/"
	if err := cmd.Start(); err != nil {
		g.log.Error("starting the fence guard failed: the HA VMs of this node are fenced only while the agent runs", "err", err)
		return
	}
	go func() { _ = cmd.Wait() }() // reaped when it exits while the agent runs
	for i := 0; i < 50; i++ {
		if readPIDFile(filepath.Join(g.dir, GuardPIDFile)) == cmd.Process.Pid {
			g.log.Info("fence guard started", "pid", cmd.Process.Pid)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	g.log.Warn("the fence guard did not write its pid file within a second", "pid", cmd.Process.Pid)
}

// sameExecutable says whether pid runs the file bin (a replaced file reads "... (deleted)").
func sameExecutable(pid int, bin string) bool {
	exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	if err != nil {
		return false
	}
	abs, err := filepath.Abs(bin)
	if err != nil {
		return false
	}
	want, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return false
	}
	return exe == want
}

// write publishes the state to the guard.
func (g *guardLink) write(s guardState) {
	s.FenceTimeoutMs = g.timeout.Milliseconds()
	s.AgentPID = os.Getpid()
	s.BootID = bootID()
	if s.QEMUs == nil {
		s.QEMUs = []guardQEMU{}
	}
	b, err := json.Marshal(s)
	if err != nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := writeFileAtomic(filepath.Join(g.dir, GuardStateFile), b, 0o600); err != nil {
		g.log.Error("writing the fence guard's state failed", "err", err)
		return
	}
	g.lastProcs = s.QEMUs
}

// procsChanged says whether ps differs from the QEMUs last written.
func (g *guardLink) procsChanged(ps []guardQEMU) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(ps) != len(g.lastProcs) {
		return true
	}
	for i := range ps {
		if ps[i] != g.lastProcs[i] {
			return true
		}
	}
	return false
}

// stopGuard runs when the agent stops cleanly: with no HA QEMU left it asks the guard to
// exit; otherwise the guard stays and keeps fencing them by the last renewal (a new agent
// must renew within the fence timeout, or they are killed).
func (a *Agent) stopGuard() {
	if a.guard == nil {
		return
	}
	a.snapshotHA()
	ps := a.fence.guardQEMUs()
	if len(ps) > 0 {
		a.log.Info("the fence guard keeps guarding the HA VMs' QEMUs: they are killed unless an agent renews the node lease within the fence timeout",
			"qemus", len(ps), "fence-timeout", a.cfg.FenceTimeout)
		return
	}
	s := guardState{Stop: true, QEMUs: ps, Lost: a.fence.fenced.Load()}
	if a.fence.lastRenew.Load() != nil {
		s.Armed, s.RenewedMono = true, a.fence.renewMono.Load()
	}
	pid := GuardPID(a.cfg.DataDir)
	a.guard.write(s)
	// The guard exits at its next look (guardTick): the agent ends after it, so that a clean
	// stop leaves no process of the node behind and nothing writes to the data dir any more.
	for deadline := time.Now().Add(2 * time.Second); pid != 0 && liveProcess(pid, isGuardOf(a.cfg.DataDir)) && time.Now().Before(deadline); {
		time.Sleep(guardTick / 4)
	}
}
