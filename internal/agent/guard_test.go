package agent

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// guardTestEnv makes this test binary, run as `BIN fence-guard --data-dir DIR`, the fence
// guard: the agent's guard link starts it like the rakhsh binary.
const guardTestEnv = "RAKHSH_AGENT_TEST_FENCE_GUARD"

func TestMain(m *testing.M) {
	if os.Getenv(guardTestEnv) == "1" && len(os.Args) == 4 && os.Args[1] == GuardCommand && os.Args[2] == "--data-dir" {
		if err := RunFenceGuard(GuardOptions{DataDir: os.Args[3]}); err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// sleeper is a real process standing in for a QEMU.
type sleeper struct {
	cmd  *exec.Cmd
	done chan struct{}
	uid  string
}

func startSleeper(t *testing.T, uid string) *sleeper {
	t.Helper()
	cmd := exec.Command("sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &sleeper{cmd: cmd, done: make(chan struct{}), uid: uid}
	go func() { _ = cmd.Wait(); close(s.done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-s.done
	})
	return s
}

func (s *sleeper) alive() bool { return !isClosed(s.done) }

func (s *sleeper) entry(t *testing.T) guardQEMU {
	t.Helper()
	st := procStartTime(s.cmd.Process.Pid)
	if st == 0 {
		t.Fatalf("no start time for pid %d", s.cmd.Process.Pid)
	}
	return guardQEMU{PID: s.cmd.Process.Pid, Start: st, UID: s.uid}
}

// waitUntil polls cond for up to 30 s (a loose bound: only the outcome is asserted).
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("%s: not within 30s", what)
}

// ticksPass lets the guard look about twenty times: used where the assertion is that
// something did not happen, or before a change the guard must have seen the state before.
func ticksPass() { time.Sleep(20 * guardTick) }

func TestFenceGuardProcess(t *testing.T) {
	t.Setenv(guardTestEnv, "1")
	dir := t.TempDir()
	log := slog.New(slog.DiscardHandler)
	link := &guardLink{bin: os.Args[0], dir: dir, timeout: 1500 * time.Millisecond, log: log}
	link.begin()
	pid := GuardPID(dir)
	if pid == 0 {
		t.Fatalf("no fence guard runs after begin (pid file %q)", readFileString(filepath.Join(dir, GuardPIDFile)))
	}
	t.Cleanup(func() {
		if p := GuardPID(dir); p != 0 {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
	})
	// A second agent start reuses the live guard of the same executable.
	link.begin()
	if again := GuardPID(dir); again != pid {
		t.Fatalf("a second begin replaced the guard %d by %d", pid, again)
	}

	fresh := func(qs ...guardQEMU) guardState {
		return guardState{Armed: true, RenewedMono: monoNow(), QEMUs: qs}
	}

	// Fresh heartbeat: the listed process lives, while the agent keeps renewing for longer
	// than the fence timeout.
	a := startSleeper(t, "uid-a")
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		link.write(fresh(a.entry(t)))
	}
	if !a.alive() {
		t.Fatal("a process listed with a fresh heartbeat was killed")
	}

	// A reused pid (the start time does not match) is never killed; a stale heartbeat kills
	// the process that matches.
	b := startSleeper(t, "uid-b")
	wrong := b.entry(t)
	wrong.Start++
	stale := guardState{Armed: true, RenewedMono: monoNow() - int64(10*time.Second), QEMUs: []guardQEMU{a.entry(t), wrong}}
	if err := os.MkdirAll(storage.VMRunDir(dir, "uid-a"), 0o700); err != nil {
		t.Fatal(err)
	}
	link.write(stale)
	waitUntil(t, "the process with a stale heartbeat killed", func() bool { return !a.alive() })
	if ws := a.cmd.ProcessState.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Errorf("the process ended with %v, want SIGKILL", a.cmd.ProcessState)
	}
	ticksPass()
	if !b.alive() {
		t.Fatal("a process whose start time does not match its entry (a reused pid) was killed")
	}
	rec := readExitRecord(storage.VMRunDir(dir, "uid-a"))
	if rec == nil || rec.Reason != v1alpha1.ExitFenced || !strings.Contains(rec.Message, "fence timeout is 1.5s") {
		t.Errorf("exit record of the killed VM: %+v", rec)
	}

	// The lease lost: killed at once, whatever the heartbeat.
	c := startSleeper(t, "uid-c")
	lost := fresh(c.entry(t))
	lost.Lost = true
	link.write(lost)
	waitUntil(t, "the process killed with the lease lost", func() bool { return !c.alive() })

	// A missing state file means no HA QEMU: nothing is killed once it is gone, however old
	// the last heartbeat.
	d := startSleeper(t, "uid-d")
	link.write(fresh(d.entry(t)))
	if err := os.Remove(filepath.Join(dir, GuardStateFile)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(link.timeout)
	ticksPass()
	if !d.alive() {
		t.Fatal("a process was killed after the state file was removed")
	}
	// A state of another boot (its clock, pids and start times mean nothing now) counts as
	// missing, however stale.
	other := guardState{Armed: true, RenewedMono: 1, FenceTimeoutMs: 1, Lost: true, BootID: "another-boot", QEMUs: []guardQEMU{d.entry(t)}}
	if b, err := json.Marshal(other); err != nil {
		t.Fatal(err)
	} else if err := writeFileAtomic(filepath.Join(dir, GuardStateFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	ticksPass()
	if !d.alive() {
		t.Fatal("a process listed in the state of another boot was killed")
	}

	// A malformed state file: the last good one holds, so its heartbeat ages and fences.
	// (A longer fence timeout here, so that the guard has surely read the good state before
	// the bad one replaces it.)
	e := startSleeper(t, "uid-e")
	link.timeout = 5 * time.Second
	link.write(fresh(e.entry(t)))
	ticksPass()
	if !e.alive() {
		t.Fatal("a process with a fresh heartbeat was killed")
	}
	if err := os.WriteFile(filepath.Join(dir, GuardStateFile), []byte(`{"armed": tru`), 0o600); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the process of the last good state killed after its heartbeat aged", func() bool { return !e.alive() })
	if !d.alive() {
		t.Error("a process not listed in the last good state was killed")
	}
	link.timeout = 1500 * time.Millisecond
	waitUntil(t, "the guard logging the malformed state", func() bool {
		return strings.Contains(readFileString(filepath.Join(dir, GuardLogFile)), "the state file is unusable")
	})
	logs := readFileString(filepath.Join(dir, GuardLogFile))
	for _, want := range []string{"fence guard started", "the state file is unusable", "QEMU killed", "uid-a", "uid-c", "uid-e"} {
		if !strings.Contains(logs, want) {
			t.Errorf("the guard's log lacks %q:\n%s", want, logs)
		}
	}
	if strings.Contains(logs, "uid-b") || strings.Contains(logs, "uid-d") {
		t.Errorf("the guard's log names a process it must not have killed:\n%s", logs)
	}

	// A signal does not stop a guard that guards HA QEMUs.
	keepFresh := func(d time.Duration, qs ...guardQEMU) {
		for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
			link.write(fresh(qs...))
		}
	}
	keepFresh(2*time.Second, b.entry(t))
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	keepFresh(2*time.Second, b.entry(t))
	if GuardPID(dir) != pid {
		t.Fatal("SIGTERM stopped a guard that guards an HA QEMU")
	}

	// The agent stops cleanly with no HA QEMU: the guard exits.
	link.write(guardState{Stop: true})
	waitUntil(t, "the guard exiting on the agent's stop", func() bool { return !processExists(pid) })
	if !b.alive() {
		t.Error("the guard killed a process on its stop")
	}
	if _, err := os.Stat(filepath.Join(dir, GuardPIDFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the guard left its pid file: %v", err)
	}
}

// A new guard of the same data dir (another executable) takes the old one's place: the old
// one exits once the new one has written its pid file; and a guard exits when its data dir
// is gone.
func TestFenceGuardReplacedAndDataDirGone(t *testing.T) {
	t.Setenv(guardTestEnv, "1")
	dir := t.TempDir()
	log := slog.New(slog.DiscardHandler)
	link := &guardLink{bin: os.Args[0], dir: dir, timeout: time.Second, log: log}
	link.begin()
	old := GuardPID(dir)
	if old == 0 {
		t.Fatal("no guard")
	}
	// Another executable: a copy of this test binary.
	other := filepath.Join(t.TempDir(), "rakhsh-other")
	b, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(other, b, 0o755); err != nil {
		t.Fatal(err)
	}
	link2 := &guardLink{bin: other, dir: dir, timeout: time.Second, log: log}
	link2.begin()
	nu := GuardPID(dir)
	t.Cleanup(func() {
		for _, p := range []int{old, nu} {
			if p > 0 && processExists(p) && liveProcess(p, isGuardOf(dir)) {
				_ = syscall.Kill(p, syscall.SIGKILL)
			}
		}
	})
	if nu == 0 || nu == old {
		t.Fatalf("the guard of another executable was not replaced: %d, then %d", old, nu)
	}
	waitUntil(t, "the old guard exiting", func() bool { return !processExists(old) })
	if GuardPID(dir) != nu {
		t.Fatal("the new guard is gone")
	}
	s := startSleeper(t, "uid-x")
	link2.write(guardState{Armed: true, RenewedMono: monoNow() - int64(time.Minute), QEMUs: []guardQEMU{s.entry(t)}})
	waitUntil(t, "the new guard fencing", func() bool { return !s.alive() })

	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the guard exiting with its data dir gone", func() bool { return !processExists(nu) })
}

func TestFenceGuardStateChecks(t *testing.T) {
	dir := t.TempDir()
	if _, err := readGuardState(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing state: %v", err)
	}
	for _, tc := range []struct{ body, want string }{
		{`{`, "unexpected end"},
		{`{"armed":true,"fenceTimeoutMs":0,"renewedMonotonicNs":5}`, "armed without"},
		{`{"qemus":[{"pid":1,"start":5,"uid":"u"}]}`, "bad QEMU entry"},
		{`{"qemus":[{"pid":100,"start":5,"uid":"../x"}]}`, "bad QEMU entry"},
		{`{"qemus":[{"pid":100,"start":0,"uid":"u"}]}`, "bad QEMU entry"},
		{strings.Repeat(" ", guardMaxState+1), "larger than"},
	} {
		if err := os.WriteFile(filepath.Join(dir, GuardStateFile), []byte(tc.body), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := readGuardState(dir); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("state %.40q: %v, want an error with %q", tc.body, err, tc.want)
		}
	}
	good := guardState{Armed: true, RenewedMono: 7, FenceTimeoutMs: 6000, QEMUs: []guardQEMU{{PID: 100, Start: 9, UID: "u"}}, BootID: bootID()}
	b, _ := json.Marshal(good)
	if err := os.WriteFile(filepath.Join(dir, GuardStateFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	if s, err := readGuardState(dir); err != nil || s.QEMUs[0] != good.QEMUs[0] || s.RenewedMono != 7 {
		t.Fatalf("good state: %+v %v", s, err)
	}
	if procStartTime(os.Getpid()) == 0 || procStartTime(0) != 0 {
		t.Error("procStartTime")
	}
	if monoNow() <= 0 || bootID() == "" {
		t.Error("monoNow, bootID")
	}
}

func processExists(pid int) bool {
	if !liveProcess(pid, func([]string) bool { return true }) {
		return false
	}
	return syscall.Kill(pid, 0) == nil
}

func readFileString(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

// The renewer tells the guard what it must know: the renewal on the monotonic clock, a lost
// lease, the HA QEMUs with their start times.
func TestLeasePublishesGuardState(t *testing.T) {
	r := newLeaseRig(t)
	dir := t.TempDir()
	r.fence.guard = &guardLink{dir: dir, timeout: 6 * time.Second, log: slog.New(slog.DiscardHandler)}
	s := startSleeper(t, "uid-s")
	// 999999 is no process: without a start time it is not listed.
	r.fence.setProcs([]haProc{{uid: "uid-s", key: "default/s", pid: s.cmd.Process.Pid, start: procStartTime(s.cmd.Process.Pid)},
		{uid: "uid-gone", key: "default/g", pid: 999999}})
	read := func() *guardState {
		t.Helper()
		st, err := readGuardState(dir)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	if st := read(); !st.Armed || len(st.QEMUs) != 1 || st.QEMUs[0] != s.entry(t) || st.FenceTimeoutMs != 6000 {
		t.Fatalf("after the snapshot: %+v", st)
	}
	before := monoNow()
	r.lease.step(context.Background())
	after := monoNow()
	st := read()
	if !st.Armed || st.Lost || st.RenewedMono < before || st.RenewedMono > after || st.AgentPID != os.Getpid() {
		t.Fatalf("after the acquisition: %+v (monotonic %d..%d)", st, before, after)
	}
	// Taken over: lost at once.
	r.store.takeOver("rakhsh-ha-controller", r.clock.now())
	r.clock.add(time.Second)
	r.lease.step(context.Background())
	if st := read(); !st.Lost {
		t.Fatalf("after the takeover: %+v", st)
	}
	// An unchanged snapshot writes nothing; a changed one does.
	if err := os.Remove(filepath.Join(dir, GuardStateFile)); err != nil {
		t.Fatal(err)
	}
	r.fence.setProcs([]haProc{{uid: "uid-s", key: "default/s", pid: s.cmd.Process.Pid, start: procStartTime(s.cmd.Process.Pid)}})
	if _, err := os.Stat(filepath.Join(dir, GuardStateFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("an unchanged snapshot rewrote the state: %v", err)
	}
	r.fence.setProcs(nil)
	if st := read(); len(st.QEMUs) != 0 || !st.Lost {
		t.Fatalf("after the HA QEMUs went: %+v", st)
	}
}
