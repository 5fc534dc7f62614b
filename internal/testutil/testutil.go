// Package testutil holds helpers shared by the tests of several packages (the node agent,
// QEMU, QMP, storage, network, streams, e2e): a buffer safe for concurrent writers, skipping a
// test whose tools are missing (failing instead in CI), a child process that a test starts and
// kills, short temporary directories, unix-socket servers, network namespaces, finding a VM's
// QEMU, and copying files. Only tests import it (and its sub-packages), never product code.
package testutil

import (
	"bytes"
	"context"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// LockedBuffer is a bytes.Buffer that a process's output goroutines and a test may use at
// the same time.
type LockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *LockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// SkipOrFail skips a test whose tool or file is missing, except in CI (CI set), where
// everything is installed and a missing piece is a failure.
func SkipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

// NeedTool returns the path of the program name, skipping the test without it (failing if CI
// is set); pkg is what installs it.
func NeedTool(t testing.TB, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		SkipOrFail(t, "%s not found: install %s to run this test", name, pkg)
	}
	return p
}

// Child is a process started by a test, its output (stdout and stderr) kept in Out. The test's
// cleanup kills it (by its PID, only it) if it still runs.
type Child struct {
	Cmd    *exec.Cmd
	Out    *LockedBuffer
	Exited chan struct{} // closed once Wait has returned
	Err    error         // Wait's result, valid once Exited is closed
}

// StartChild starts cmd, failing the test if it cannot.
func StartChild(t testing.TB, cmd *exec.Cmd) *Child {
	t.Helper()
	c := &Child{Cmd: cmd, Out: &LockedBuffer{}, Exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = c.Out, c.Out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", cmd.Path, err)
	}
	go func() { c.Err = cmd.Wait(); close(c.Exited) }()
	t.Cleanup(func() { c.Stop(t) })
	return c
}

// Stop kills the process if it still runs and waits for it to end.
func (c *Child) Stop(t testing.TB) {
	select {
	case <-c.Exited:
		return
	default:
	}
	_ = c.Cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-c.Exited:
	case <-time.After(10 * time.Second):
		t.Errorf("process %d did not exit after SIGKILL", c.Cmd.Process.Pid)
	}
}

// CertPool reads the PEM certificates in path into a pool, failing the test when the file
// cannot be read or holds none.
func CertPool(t testing.TB, path string) *x509.CertPool {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		t.Fatalf("%s holds no certificate", path)
	}
	return pool
}

// Retry calls try every 20 ms until it succeeds, such as a dial of a socket the process
// opens. It fails the test when the process exits or ctx ends first; what names the attempt.
func (c *Child) Retry(ctx context.Context, t testing.TB, what string, try func() error) {
	t.Helper()
	for {
		err := try()
		if err == nil {
			return
		}
		select {
		case <-c.Exited:
			t.Fatalf("%s exited (%v) before %s succeeded (last error: %v); output:\n%s", c.Cmd.Path, c.Err, what, err, c.Out.String())
		case <-ctx.Done():
			t.Fatalf("%s: %v (last error: %v); output of %s:\n%s", what, ctx.Err(), err, c.Cmd.Path, c.Out.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// ShortTempDir makes a directory named by pattern under the system's temporary directory,
// removed at the end of the test. Its path is short, unlike t.TempDir's, for unix sockets
// (at most 107 bytes).
func ShortTempDir(t testing.TB, pattern string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", pattern)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// InNetns runs f on a thread switched into the network namespace named ns: sockets f opens,
// netlink calls it makes and programs it starts belong there.
func InNetns(t testing.TB, ns string, f func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	h, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			panic("cannot return to the original network namespace: " + err.Error())
		}
	}()
	f()
}

// QEMUPIDs maps the uid of every VM run directory of dataDir (run/vms/UID, with its qemu.pid)
// whose QEMU is alive to that QEMU's pid.
func QEMUPIDs(dataDir string) map[string]int {
	out := map[string]int{}
	root := filepath.Join(dataDir, "run", "vms")
	entries, _ := os.ReadDir(root)
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(root, e.Name(), "qemu.pid"))
		if err != nil {
			continue
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		if pid > 1 && IsQEMUOf(pid, e.Name()) {
			out[e.Name()] = pid
		}
	}
	return out
}

// IsQEMUOf says whether the process pid is a QEMU of the VM uid (its command line has
// -uuid uid).
func IsQEMUOf(pid int, uid string) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	return err == nil && strings.Contains(string(b), "qemu") && strings.Contains(string(b), "-uuid\x00"+uid+"\x00")
}

// CountQEMU counts every live process on the host that is a QEMU of the VM uid.
func CountQEMU(uid string) int {
	n := 0
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil && IsQEMUOf(pid, uid) {
			n++
		}
	}
	return n
}

// GetStatus sends hc a GET of url, with the bearer token when it is not empty, and returns
// the status code of the answer.
func GetStatus(ctx context.Context, t testing.TB, hc *http.Client, url, bearer string) int {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// CopyFile copies the file src to dst, made (or truncated) with the permissions perm, failing
// the test if it cannot.
func CopyFile(t testing.TB, src, dst string, perm os.FileMode) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
}

// ListenUnix listens on the unix socket path until the end of the test and calls serve, in a
// goroutine of its own, with each connection.
func ListenUnix(t testing.TB, path string, serve func(conn net.Conn)) {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go serve(conn)
		}
	}()
}

// TailFile returns the last n lines of the file at path (or why it cannot be read), for the
// report of a failed test.
func TailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
