package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rakhsh/rakhsh/internal/console"
	"github.com/rakhsh/rakhsh/internal/qemu"
	"github.com/rakhsh/rakhsh/internal/qemu/accel"
	"github.com/rakhsh/rakhsh/internal/qemu/qmp"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// Files the agent keeps in a VM's run directory next to QEMU's sockets and pidfile.
const (
	// qemuLogName receives QEMU's stdout and stderr; the previous start's is qemuLogName+".1".
	qemuLogName = console.QEMULog
	// exitFileName records why the agent is about to end QEMU, so the reason survives an
	// agent restart between the quit and the status write.
	exitFileName = "exit.json"
	// restartFileName marks a graceful restart under way: the next exit starts QEMU again.
	// It lives in the run directory so that an agent restart in the middle keeps the intent.
	restartFileName = "restarting"
)

// monitor is the part of a QMP connection the agent uses (*qmp.Conn implements it).
type monitor interface {
	QueryStatus(ctx context.Context) (qmp.StatusInfo, error)
	Cont(ctx context.Context) error
	Stop(ctx context.Context) error
	SystemPowerdown(ctx context.Context) error
	SystemReset(ctx context.Context) error
	Quit(ctx context.Context) error
	Subscribe(buffer int) (<-chan qmp.Event, func())
	Done() <-chan struct{}
	Close() error
}

// instance is the agent's handle on one QEMU process (started or adopted).
type instance struct {
	uid    string
	key    runtime.Key
	runDir string
	pid    int
	child  bool   // started by this agent (reaped by cmd.Wait), else adopted (polled)
	accel  string // "kvm" or "tcg": what this QEMU runs under

	exited   chan struct{} // closed once the process is gone
	exitOnce sync.Once
	cancel   context.CancelFunc // ends the watchers (events, serial mux, poller), never QEMU

	mu            sync.Mutex
	mon           monitor
	guestShutdown bool
	panicked      bool
	powerdownAt   time.Time // when a graceful stop pressed the power button
	powerdown2    bool      // the second press a Windows guest gets was made
	// agentShutdownAt is when a graceful stop whose power button was ignored asked the guest
	// agent for a shutdown (agentShutdownSent: the request was delivered).
	agentShutdownAt   time.Time
	agentShutdownSent bool
	quitAt            time.Time // when the agent asked QEMU to quit
	restarting        bool      // a graceful restart: start again once QEMU is gone

	// Live migration (migrate.go): the target's watch of an incoming stream, the id of the
	// migration whose source side runs, and the hook QMP MIGRATION events go to.
	incoming *incomingWatch
	// incomingFate is decided once for a target QEMU: switched over (fateSwitchOver) or
	// ended because its source went away (fateEnded); whichever comes first excludes the
	// other (migrate.go).
	incomingFate atomic.Int32
	outgoing     string
	migHook      func(status string)
	// proxy is the target's migration proxy of this QEMU (migproxy.go), closed when QEMU
	// ends or the migration is over.
	proxy *migrationProxy
	// stoppedAt is QEMU's time of its last STOP event (a migration's switch-over pause).
	stoppedAt time.Time
	// hibernation names the operation whose hibernation this QEMU's stream is saving, and
	// hibernationFailed the last one that could not save it (hibernate.go).
	hibernation, hibernationFailed string
	// hibernationWasPaused: the guest was paused before the save paused it.
	hibernationWasPaused bool
	// heldStill counts the snapshots and backups that hold the guest's vCPUs paused for
	// their instant; the reconcile does not resume them meanwhile.
	heldStill int

	// guestOutput says the guest wrote to its serial console since this agent watched it,
	// or since the last reset; the first output sets the GuestReady condition.
	guestOutput atomic.Bool

	// guest is the connection to the guest agent (guestagent.go); set by startWatchers.
	guest *guestAgent

	// live is what the last live CPU and memory changes came to (live.go); used by the
	// reconciles of the VM only, one at a time.
	live liveState
	// balloonTarget is the balloon target last set (0: none, the guest has all its memory)
	// and balloonWritten the guest memory last written to the status (memory.go).
	balloonTarget, balloonWritten atomic.Int64
	// balloonHold is when (Unix ns) the node may reclaim from the guest again after it took
	// memory back from its balloon (memory.go).
	balloonHold atomic.Int64
	// balloonSeen is the guest memory the balloon reported at the last look.
	balloonSeen atomic.Int64
}

func (in *instance) markExited() { in.exitOnce.Do(func() { close(in.exited) }) }

func (in *instance) isExited() bool { return isClosed(in.exited) }

// isClosed says whether ch is closed (or has a value ready), without waiting.
func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func (in *instance) monitor() monitor {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.mon == nil {
		return nil
	}
	select {
	case <-in.mon.Done():
		return nil
	default:
		return in.mon
	}
}

// exitRecord is the content of exit.json.
type exitRecord struct {
	Reason  string `json:"reason"`
	Message string `json:"message,omitempty"`
	// Hibernated: QEMU ended after its RAM state was saved (hibernate.go).
	Hibernated bool `json:"hibernated,omitempty"`
}

func writeExitRecord(runDir string, r exitRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(runDir, exitFileName), b, 0o600)
}

func readExitRecord(runDir string) *exitRecord {
	b, err := os.ReadFile(filepath.Join(runDir, exitFileName))
	if err != nil {
		return nil
	}
	var r exitRecord
	if json.Unmarshal(b, &r) != nil || r.Reason == "" {
		return nil
	}
	return &r
}

// isVMProcess reports whether pid is a live (not zombie) QEMU process of the VM with uid:
// its command line names a qemu binary and carries -uuid UID.
func isVMProcess(pid int, uid string) bool { return liveProcess(pid, qemuMatch(uid)) }

// qemuMatch accepts the command line of the QEMU of the VM with uid: it names a qemu binary
// and carries -uuid UID.
func qemuMatch(uid string) func(argv []string) bool {
	return func(argv []string) bool {
		return strings.Contains(filepath.Base(argv[0]), "qemu") && qemu.MatchesCmdline([]byte(strings.Join(argv, "\x00")), uid)
	}
}

// accelOf returns the -accel of a running QEMU ("kvm" or "tcg"), read from its command line.
func accelOf(pid int) string {
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return ""
	}
	args := strings.Split(string(cmdline), "\x00")
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "-accel" {
			name, _, _ := strings.Cut(args[i+1], ",")
			return name
		}
	}
	return ""
}

// findQEMU returns the pid of the running QEMU of the VM with uid, or 0.
func findQEMU(runDir, uid string) int {
	return livePID(filepath.Join(runDir, qemu.PIDFileName), qemuMatch(uid))
}

// scanQEMUs maps the -uuid of every QEMU process in /proc to their pids (agents with other
// data dirs on the same host may run QEMUs of the same uid).
func scanQEMUs() map[string][]int {
	out := map[string][]int{}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 1 {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		argv := strings.Split(string(b), "\x00")
		if !strings.Contains(filepath.Base(argv[0]), "qemu") {
			continue
		}
		for i := 0; i+1 < len(argv); i++ {
			if argv[i] == "-uuid" {
				out[argv[i+1]] = append(out[argv[i+1]], pid)
			}
		}
	}
	return out
}

// startedFor says whether the process pid was started for runDir (its environment names it).
func startedFor(pid int, runDir string) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return false
	}
	want := runDirEnv + "=" + runDir
	for _, kv := range strings.Split(string(b), "\x00") {
		if kv == want {
			return true
		}
	}
	return false
}

// signalVM sends sig to pid only if it is still the VM's QEMU.
func signalVM(pid int, uid string, sig syscall.Signal) error {
	if !isVMProcess(pid, uid) {
		return nil
	}
	if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	return nil
}

// watchProcess closes in.exited when an adopted process is gone (it is not our child, so it
// is polled).
func (a *Agent) watchProcess(ctx context.Context, in *instance) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		if !isVMProcess(in.pid, in.uid) {
			in.markExited()
			a.queue.Add(in.key)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// attach connects QMP (retrying for up to wait), subscribes to its events and starts the
// serial mux. It is called for new and adopted processes; a failed QMP connect is retried
// by later reconciles.
func (a *Agent) attach(ctx context.Context, in *instance, wait time.Duration) error {
	if in.monitor() != nil {
		return nil
	}
	sock := filepath.Join(in.runDir, qemu.QMPSocketName)
	deadline := time.Now().Add(wait)
	var conn *qmp.Conn
	var err error
	for {
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err = qmp.Dial(dctx, sock, qmp.WithLogger(a.log))
		cancel()
		if err == nil {
			break
		}
		if in.isExited() || time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("connecting QMP at %s: %w", sock, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	in.mu.Lock()
	in.mon = conn
	in.mu.Unlock()
	// On the connection's own reader: no goroutine or queue per VM. The handler only notes
	// and queues; it never waits.
	conn.OnEvent(func(ev qmp.Event) { a.onQMPEvent(in, ev) })
	return nil
}

// onQMPEvent turns a QMP event into a reconcile.
func (a *Agent) onQMPEvent(in *instance, ev qmp.Event) {
	switch ev.Name {
	case qmp.EventShutdown:
		var d struct {
			Guest  bool   `json:"guest"`
			Reason string `json:"reason"`
		}
		_ = ev.DecodeData(&d)
		if d.Guest {
			in.mu.Lock()
			in.guestShutdown = true
			in.mu.Unlock()
		}
		a.log.Info("QMP event", "vm", string(in.key), "event", ev.Name, "guest", d.Guest, "reason", d.Reason)
	case qmp.EventGuestPanicked:
		in.mu.Lock()
		in.panicked = true
		in.mu.Unlock()
		a.log.Warn("guest panicked", "vm", string(in.key))
	case qmp.EventDisconnected:
		if !in.child && !isVMProcess(in.pid, in.uid) {
			in.markExited()
		}
	case qmp.EventMigration:
		in.onMigrationEvent(ev)
	case qmp.EventStop:
		in.mu.Lock()
		in.stoppedAt = ev.Time
		in.mu.Unlock()
		a.log.Debug("QMP event", "vm", string(in.key), "event", ev.Name)
	case qmp.EventResume, qmp.EventReset, qmp.EventPowerdown:
		a.log.Debug("QMP event", "vm", string(in.key), "event", ev.Name)
	default:
		return
	}
	a.queue.Add(in.key)
}

// startWatchers starts the serial mux, the guest agent watcher and, for adopted processes,
// the liveness poller.
func (a *Agent) startWatchers(in *instance) {
	ctx, cancel := context.WithCancel(a.runCtx)
	in.cancel = cancel
	if !in.child {
		go a.watchProcess(ctx, in)
	}
	in.guest = newGuestAgent(in.runDir)
	go a.watchGuestAgent(ctx, in)
	go func() {
		m := &console.Mux{RunDir: in.runDir, Log: a.log.With("vm", string(in.key)), OnOutput: func() {
			if !in.guestOutput.Swap(true) {
				go a.noteGuestOutput(ctx, in)
			}
		}}
		if err := m.Run(ctx); err != nil && ctx.Err() == nil {
			a.log.Debug("serial console ended", "vm", string(in.key), "err", err)
		}
	}()
}

// detach stops watching an instance (QEMU keeps running).
func (in *instance) detach() {
	if in.cancel != nil {
		in.cancel()
	}
	in.mu.Lock()
	m := in.mon
	in.mon = nil
	in.mu.Unlock()
	if m != nil {
		_ = m.Close()
	}
}

// adoptAll re-adopts the QEMU processes found in the run directories. It runs once at start,
// before any reconcile, with the VM informer synced.
func (a *Agent) adoptAll(ctx context.Context) {
	root := filepath.Join(a.cfg.DataDir, "run", "vms")
	entries, err := os.ReadDir(root)
	if err != nil {
		return
	}
	byUID := a.vmKeysByUID()
	var scanned map[string][]int // QEMU pids by -uuid, read from /proc once if needed
	for _, e := range entries {
		uid := e.Name()
		if !e.IsDir() || !uidRe.MatchString(uid) {
			continue
		}
		runDir := filepath.Join(root, uid)
		pid := findQEMU(runDir, uid)
		if pid == 0 {
			// An agent that ended between starting QEMU and writing its pidfile (QEMU writes
			// none of its own when it runs unprivileged) leaves it without one.
			if scanned == nil {
				scanned = scanQEMUs()
			}
			for _, p := range scanned[uid] {
				if isVMProcess(p, uid) && startedFor(p, runDir) {
					pid = p
				}
			}
			if pid == 0 {
				continue
			}
			if err := qemu.WritePIDFile(filepath.Join(runDir, qemu.PIDFileName), pid); err != nil {
				a.log.Warn("writing the pidfile of a QEMU found without one", "uid", uid, "pid", pid, "err", err)
			}
		}
		key, ok := byUID[uid]
		if o, owned := readRunOwner(runDir); !ok && owned && o.UID == uid {
			// Its VM is not bound here (released, or bound elsewhere): the reconcile of
			// that name asks the API about it.
			key, ok = runtime.NewKey(o.Namespace, o.Name), true
		}
		if !ok {
			key = orphanKey(uid)
		}
		m := a.adoptMachine(key, uid, runDir, pid)
		if _, err := m.Connect(ctx, 3*time.Second); err != nil {
			a.log.Warn("re-adopted QEMU without QMP (will retry)", "vm", string(key), "pid", pid, "err", err)
		} else {
			a.log.Info("re-adopted running QEMU", "vm", string(key), "pid", pid)
		}
		a.adoptTPM(runDir, string(key))
	}
}

// launch starts QEMU for cfg in its own session, detached from the agent: stdin is
// /dev/null, stdout and stderr go to RUNDIR/qemu.log. It returns the new instance.
func (a *Agent) launch(key runtime.Key, uid, runDir string, cfg qemu.Config) (*instance, error) {
	logPath := filepath.Join(runDir, qemuLogName)
	_ = os.Rename(logPath, logPath+".1")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	// With an unprivileged QEMU (cfg.PassFDs) the agent opens what QEMU uses, as root, and
	// QEMU inherits the descriptors; it starts in / since it may not enter the run directory.
	extra, err := cfg.OpenPassed()
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, f := range extra {
			_ = f.Close()
		}
	}()
	dir := runDir
	var cred *syscall.Credential
	if cfg.PassFDs {
		dir, cred = "/", a.qemuAs.credential()
	}
	proc, err := startDetachedEnv(cfg.Binary, cfg.Args, dir, []string{runDirEnv + "=" + runDir, qemuMallocTunables}, logf, cred, extra...)
	if err != nil {
		return nil, err
	}
	if cfg.PassFDs {
		// QEMU writes no pidfile in this mode; re-adoption finds it by this one.
		if err := qemu.WritePIDFile(cfg.PIDFile, proc.Pid); err != nil {
			_ = proc.Kill()
			_, _ = proc.Wait()
			return nil, fmt.Errorf("writing the pidfile: %w", err)
		}
	}
	in := &instance{uid: uid, key: key, runDir: runDir, pid: proc.Pid, child: true, accel: cfg.Accelerator, exited: make(chan struct{})}
	go func() {
		// Reap the child; QEMU is not tied to any context and outlives the agent.
		_, _ = proc.Wait()
		in.markExited()
		a.queue.Add(in.key)
	}()
	return in, nil
}

// startDetached starts binary in a new session (so signals to the agent's process group
// never reach it), as cred (nil: as the agent), with extra as descriptors 3, 4, ...
func startDetached(binary string, args []string, dir string, out *os.File, cred *syscall.Credential, extra ...*os.File) (*os.Process, error) {
	return startDetachedEnv(binary, args, dir, nil, out, cred, extra...)
}

// runDirEnv, in a QEMU's environment, names the run directory of the agent that started it:
// a QEMU found in /proc without a pidfile is adopted only by the agent whose run directory it
// names (another agent on the same host, with another data dir, may run the same VM uid).
const runDirEnv = "RAKHSH_RUN_DIR"

// qemuMallocTunables, in the environment of QEMU and its storage daemon, keeps glibc from
// serving allocations under 32 MiB with a fresh mmap (and giving the memory back at each
// free): QEMU allocates a bounce buffer per NBD request (a backup's reads of its export, the
// disk copy of a migration), and with glibc's defaults every 4 MiB request faulted in 1,024
// new pages, which made QEMU's NBD server serve 275 MiB/s from the page cache, CPU-bound;
// with these 1.4 GiB/s (docs/benchmarks.md, "Backups"). The cost is heap that stays
// allocated after a burst of such requests: the size of the requests in flight.
const qemuMallocTunables = "GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=67108864"

// startDetachedEnv is startDetached with env added to the child's environment.
func startDetachedEnv(binary string, args []string, dir string, env []string, out *os.File, cred *syscall.Credential, extra ...*os.File) (*os.Process, error) {
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, err
	}
	defer devnull.Close()
	attr := &os.ProcAttr{
		Dir:   dir,
		Env:   append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"}, env...),
		Files: append([]*os.File{devnull, out, out}, extra...),
		Sys:   &syscall.SysProcAttr{Setsid: true, Credential: cred},
	}
	return os.StartProcess(binary, append([]string{binary}, args...), attr)
}

// qemuLogTail returns the last lines of QEMU's stderr for the current start.
func qemuLogTail(runDir string) string {
	b, err := os.ReadFile(filepath.Join(runDir, qemuLogName))
	if err != nil {
		return ""
	}
	return tail(b, 16<<10) // a KVM internal error is followed by some 2 KiB of register dump
}

// qemuErrorSummary is ": " and QEMU's own error lines of the current start (after a KVM
// failure its error lines without the register dump, else its last lines), or "" when QEMU
// wrote nothing.
func qemuErrorSummary(runDir string) string {
	t := qemuLogTail(runDir)
	s := accel.LastLines(t, 3)
	if accel.HasKVMFailure(t) {
		s = accel.ErrorLines(t, 3)
	}
	if s == "" {
		return ""
	}
	return ": " + s
}

// removeRuntimeFiles removes what a dead QEMU left behind (sockets, pidfile, exit record),
// keeping the logs, and stops its swtpm (tpm.go).
func removeRuntimeFiles(runDir string) {
	stopTPM(runDir)
	removeQEMUFiles(runDir)
}

// removeQEMUFiles removes the sockets, pidfile and markers of a QEMU that is gone, keeping
// its log.
func removeQEMUFiles(runDir string) {
	for _, n := range []string{qemu.PIDFileName, qemu.QMPSocketName, qemu.SerialSocketName, qemu.VNCSocketName,
		qemu.GuestAgentSocketName, console.ConsoleSocket, exitFileName, restartFileName, snapshotRAMCopy} {
		_ = os.Remove(filepath.Join(runDir, n))
	}
}

func restartMarked(runDir string) bool {
	_, err := os.Stat(filepath.Join(runDir, restartFileName))
	return err == nil
}

// holdStill marks the guest as paused on purpose by a snapshot or backup (or not any more);
// a nil instance is nothing to mark.
func (in *instance) holdStill(on bool) {
	if in == nil {
		return
	}
	in.mu.Lock()
	if on {
		in.heldStill++
	} else if in.heldStill > 0 {
		in.heldStill--
	}
	in.mu.Unlock()
}
