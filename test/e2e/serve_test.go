// Package e2e holds end-to-end tests against a real `rakhsh serve` process, driven through
// the CLI binary and the Go client.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/server"
	"github.com/rakhsh/rakhsh/internal/testutil"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// rakhshBin returns the binary under test: $RAKHSH_BIN, or one built once for this run.
func rakhshBin(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		if p := os.Getenv("RAKHSH_BIN"); p != "" {
			binPath = p
			return
		}
		dir, err := os.MkdirTemp("", "rakhsh-e2e-bin")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "rakhsh")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/rakhsh/rakhsh/cmd/rakhsh").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("building rakhsh: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// Serve is one running `rakhsh serve`: a process of the binary under test, or, with
// InProcess, the same serve command run inside the test process (the same component wiring,
// flags and data dir layout), so that one test body can run against both.
type Serve struct {
	t       *testing.T
	DataDir string
	Args    []string
	// InProcess runs the serve command in the test process instead of the binary. Stop and
	// Kill9 then both end it through its context: a test that needs a real crash runs only
	// against a process.
	InProcess bool
	cmd       *exec.Cmd
	cancel    context.CancelFunc
	logs      *lockedBuffer
	done      chan struct{}
	Listen    string   // TCP address when started with --listen
	Env       []string // extra environment of the process (e.g. a PATH with a QEMU shim first)
	// NoImportAllowList leaves out the default --allow-import-from of loopback (the tests'
	// image servers listen there), so imports get the production policy.
	NoImportAllowList bool
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// StartServe starts `rakhsh serve` on a new data dir and waits until it is ready.
func StartServe(t *testing.T, extra ...string) *Serve {
	t.Helper()
	return startServe(t, ServeProcess, extra...)
}

// ServeMode says how a test runs `rakhsh serve`.
type ServeMode string

// The two ways a test body can run the server.
const (
	ServeProcess   ServeMode = "process"
	ServeInProcess ServeMode = "inprocess"
)

// eachServeMode runs body once against a serve process and once against the serve command
// run in the test process, as two side-by-side tests. The parent is parallel too: were it
// sequential, its two subtests would run while the sequential tests wait, and once the shorter
// one ended a slot would stand idle until the longer one did.
func eachServeMode(t *testing.T, body func(t *testing.T, mode ServeMode)) {
	t.Parallel()
	for _, m := range []ServeMode{ServeProcess, ServeInProcess} {
		t.Run(string(m), func(t *testing.T) {
			sideBySide(t)
			body(t, m)
		})
	}
}

// The e2e tests run in lanes (docs/testing.md):
//
//   - sequential: a test that calls neither sideBySide nor clusterLane runs alone, before the
//     others start; for tests that measure CPU time or change something host-wide (KSM,
//     pinned cores, others' cgroups), and for benchmarks;
//   - side by side: tests that run their own single-host serve;
//   - cluster: the multi-host tests (the shared cluster or one of their own), one at a time.
//
// After the sequential tests, two tests run at once: two side by side, or one of each. Most
// of a test's time is a guest booting or an operation waiting, so two at once take little
// more time than one; a third would not (the guests are emulated on two cores, and boot
// times grow past the tests' bounds). go test's -parallel is raised in TestMain so that
// these slots, not go test's, decide what runs.

// sideBySide puts a test in the side-by-side lane: top-level tests run after the sequential
// ones, the subtests of one test together once their parent's body ends. Only for a test that
// runs its own single-host serve, either in the root network namespace with VMs that have no
// host network (none, or user-mode) or inside network namespaces of its own (newNetnsLab);
// that reads only its own data dir, processes and metrics; that measures no CPU time; that
// changes nothing host-wide (KSM, pinned cores, nftables of the root namespace, others'
// cgroups); and whose time bounds are lower bounds or generous.
func sideBySide(t *testing.T) {
	t.Helper()
	t.Parallel()
	lanes.take(t, 0)
}

// clusterLane puts a multi-host test in the cluster lane: it runs after the sequential tests,
// one cluster test at a time (they share the cluster "rkh" or build their own, whose
// namespaces have other names), beside a side-by-side test. The cluster tests run in the
// order of their files, as they did one after another: some leave the shared cluster as the
// next one expects it.
func clusterLane(t *testing.T) {
	t.Helper()
	turn := lanes.queue() // before t.Parallel: in the order the tests start
	t.Parallel()
	lanes.take(t, turn)
}

// lanes hands out the two running slots. The first waiting cluster test has the next free
// slot while no cluster test runs, so that the cluster lane (whose tests must run one after
// another) never waits behind a queue of side-by-side tests; side by side, tests take any
// slot left.
var lanes = newLaneSlots(2)

type laneSlots struct {
	mu             sync.Mutex
	cond           *sync.Cond
	free           int
	turns          int   // cluster tests queued so far
	clusterWaiting []int // their turns, in order
	clusterRunning bool
}

func newLaneSlots(n int) *laneSlots {
	l := &laneSlots{free: n}
	l.cond = sync.NewCond(&l.mu)
	return l
}

// queue gives a cluster test its turn (from 1), in the order they call it.
func (l *laneSlots) queue() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.turns++
	l.clusterWaiting = append(l.clusterWaiting, l.turns)
	return l.turns
}

// take waits for a slot for a cluster test (its turn) or a side-by-side one (turn 0), and
// gives it back when the test ends.
func (l *laneSlots) take(t *testing.T, turn int) {
	cluster := turn > 0
	asked := time.Now()
	l.mu.Lock()
	for !l.mayRun(turn) {
		l.cond.Wait()
	}
	l.free--
	if cluster {
		l.clusterWaiting = l.clusterWaiting[1:]
		l.clusterRunning = true
	}
	l.mu.Unlock()
	// testreport ranks the test by its time without this wait.
	t.Logf("lane: slot taken after waiting %s", time.Since(asked).Round(time.Second))
	t.Cleanup(func() {
		l.mu.Lock()
		l.free++
		if cluster {
			l.clusterRunning = false
		}
		l.cond.Broadcast()
		l.mu.Unlock()
	})
}

// mayRun says whether a test with the turn (0: side by side) may take a slot now (l.mu
// held).
func (l *laneSlots) mayRun(turn int) bool {
	switch {
	case l.free == 0:
		return false
	case turn > 0:
		return !l.clusterRunning && l.clusterWaiting[0] == turn
	case len(l.clusterWaiting) > 0 && !l.clusterRunning:
		return l.free > 1 // one stays for the cluster test
	}
	return true
}

// shortTempDir is a temporary directory whose path does not grow with the test's name: a VM's
// sockets live under the data dir, and a unix socket path holds at most 107 bytes.
func shortTempDir(t *testing.T) string {
	t.Helper()
	return testutil.ShortTempDir(t, "rk-e2e-")
}

func startServe(t *testing.T, mode ServeMode, extra ...string) *Serve {
	t.Helper()
	s := &Serve{t: t, DataDir: shortTempDir(t), Args: extra, InProcess: mode == ServeInProcess}
	s.Start()
	t.Cleanup(func() {
		s.Stop()
		killFenceGuard(s.DataDir) // one left by a Kill9, or guarding HA VMs (docs/ha.md)
		if t.Failed() {
			t.Logf("rakhsh serve log:\n%s", s.logs.String())
		}
	})
	return s
}

// Start (re)starts the process on the same data dir.
func (s *Serve) Start() {
	s.t.Helper()
	// User-mode networking unless a test asks for more: host networking builds bridges and
	// nftables tables, which only tests inside their own network namespaces may do.
	args := []string{"serve", "--data-dir", s.DataDir, "--log-level", "debug", "--vm-networking", "user"}
	if !s.NoImportAllowList {
		// The tests' image servers and registries listen on loopback, which imports may not
		// reach by default.
		args = append(args, "--allow-import-from", "127.0.0.0/8,::1/128")
	}
	args = append(args, s.Args...)
	if s.logs == nil {
		s.logs = &lockedBuffer{}
	}
	if s.InProcess {
		s.startInProcess(args[1:])
	} else {
		s.startProcess(args)
	}
	s.waitReady()
}

func (s *Serve) startProcess(args []string) {
	s.t.Helper()
	cmd := exec.Command(rakhshBin(s.t), args...)
	if len(s.Env) > 0 {
		cmd.Env = append(os.Environ(), s.Env...)
	}
	cmd.Stdout = s.logs
	cmd.Stderr = s.logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("starting rakhsh serve: %v", err)
	}
	s.cmd = cmd
	s.done = make(chan struct{})
	go func() { _ = cmd.Wait(); close(s.done) }()
}

// startInProcess runs the serve command of the binary's own code in this process.
func (s *Serve) startInProcess(args []string) {
	s.t.Helper()
	if len(s.Env) > 0 {
		s.t.Fatalf("an in-process server cannot have its own environment %v", s.Env)
	}
	cmd := server.NewServeCommand()
	cmd.SetArgs(args)
	cmd.SetOut(s.logs)
	cmd.SetErr(s.logs)
	cmd.SilenceUsage = true
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.done = make(chan struct{})
	go func() {
		if err := cmd.ExecuteContext(ctx); err != nil {
			fmt.Fprintf(s.logs, "serve command ended: %v\n", err)
		}
		close(s.done)
	}()
}

// running says whether the server (process or in-process command) was started and not stopped.
func (s *Serve) running() bool { return s.cmd != nil || s.cancel != nil }

func (s *Serve) waitReady() {
	s.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			s.t.Fatalf("rakhsh serve exited early:\n%s", s.logs.String())
		default:
		}
		if c, err := net.DialTimeout("unix", s.Socket(), 200*time.Millisecond); err == nil {
			c.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			var out []byte
			err := s.Client().Do(ctx, "GET", "/readyz", nil, "", nil, &out)
			cancel()
			if err == nil {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.t.Fatalf("rakhsh serve did not become ready in 30s:\n%s", s.logs.String())
}

// Stop sends SIGTERM (or ends the in-process command's context) and waits for a graceful exit.
func (s *Serve) Stop() {
	if !s.running() {
		return
	}
	if s.cancel != nil {
		s.cancel()
		select {
		case <-s.done:
		case <-time.After(20 * time.Second):
			s.t.Errorf("the in-process rakhsh serve did not stop within 20s")
		}
		s.cancel = nil
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(20 * time.Second):
		s.t.Errorf("rakhsh serve did not stop within 20s of SIGTERM")
		_ = s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd = nil
}

// Kill9 kills the process with SIGKILL, as a crash would. An in-process server cannot crash
// without its test: it is stopped instead.
func (s *Serve) Kill9() {
	if !s.running() {
		return
	}
	if s.cancel != nil {
		s.Stop()
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}

// ExitCode returns the exit code after Stop.
func (s *Serve) Logs() string { return s.logs.String() }

// Socket is the unix socket path.
func (s *Serve) Socket() string { return filepath.Join(s.DataDir, "rakhsh.sock") }

// Server is the --server value for the unix socket.
func (s *Serve) Server() string { return "unix://" + s.Socket() }

// Client returns an API client over the unix socket.
func (s *Serve) Client() *client.Client {
	c, err := client.New(client.Config{Server: s.Server()})
	if err != nil {
		s.t.Fatal(err)
	}
	return c
}

// CLIResult is the outcome of one CLI run.
type CLIResult struct {
	Stdout, Stderr string
	Code           int
}

// CLI runs the rakhsh CLI against this server with optional standard input.
func (s *Serve) CLI(stdin string, args ...string) CLIResult {
	s.t.Helper()
	return runCLI(s.t, s.Server(), "", stdin, args...)
}

func runCLI(t *testing.T, server, token, stdin string, args ...string) CLIResult {
	t.Helper()
	return runCLIWith(t, nil, []string{"RAKHSH_SERVER=" + server, "RAKHSH_TOKEN=" + token}, stdin, args...)
}

// runCLIWith runs the CLI binary with env added to the test's environment, behind the
// command prefix when one is given (e.g. nsenter --net=... to run it in a network namespace).
func runCLIWith(t *testing.T, prefix, env []string, stdin string, args ...string) CLIResult {
	t.Helper()
	r, err := execCLI(rakhshBin(t), prefix, env, stdin, args...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// cliLimit is how long a CLI call may run before the test ends it: 2 minutes, or a minute
// more than the call's own positive --timeout, so that such a call is stopped by its own
// timeout with its message rather than killed by the test; 10 minutes for a --wait without
// one (or with a timeout of 0: none), a bound of the test's own, shorter than some of the
// CLI's defaults.
func cliLimit(args []string) time.Duration {
	limit, wait := 2*time.Minute, false
	for i, a := range args {
		v, ok := strings.CutPrefix(a, "--timeout=")
		if a == "--timeout" && i+1 < len(args) {
			v, ok = args[i+1], true
		}
		if d, err := time.ParseDuration(v); ok && err == nil && d > 0 {
			return max(limit, d+time.Minute)
		}
		wait = wait || a == "--wait"
	}
	if wait {
		return 10 * time.Minute
	}
	return limit
}

// execCLI runs the CLI binary bin (see runCLIWith); err is set only when it could not run.
func execCLI(bin string, prefix, env []string, stdin string, args ...string) (CLIResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cliLimit(args))
	defer cancel()
	argv := append(append(append([]string{}, prefix...), bin), args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	err := cmd.Run()
	code := 0
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else {
			return CLIResult{}, fmt.Errorf("running rakhsh %v: %w", args, err)
		}
	}
	return CLIResult{Stdout: out.String(), Stderr: errb.String(), Code: code}, nil
}

// MustCLI runs the CLI and fails the test on a non-zero exit.
func (s *Serve) MustCLI(stdin string, args ...string) string {
	s.t.Helper()
	r := s.CLI(stdin, args...)
	if r.Code != 0 {
		s.t.Fatalf("rakhsh %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.Code, r.Stdout, r.Stderr)
	}
	return r.Stdout
}

// readLines returns a scanner-fed channel of lines from r (for watch output).
func readLines(r io.Reader) <-chan string {
	ch := make(chan string, 100)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			ch <- sc.Text()
		}
	}()
	return ch
}
