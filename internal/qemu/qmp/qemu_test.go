package qmp

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/internal/testutil"
)

// qemuProc is a QEMU started by a test.
type qemuProc struct {
	*testutil.Child
	sock string
}

// startQEMU starts a paused (-S) TCG machine with a QMP socket and no
// devices. Without qemu-system-x86_64 the test is skipped, or fails if the
// CI environment variable is set.
func startQEMU(t *testing.T) *qemuProc {
	t.Helper()
	bin := testutil.NeedTool(t, "qemu-system-x86_64", "qemu-system-x86")
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	p := &qemuProc{sock: sock}
	// registered before StartChild's cleanup, so it runs after QEMU is gone
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("QEMU (pid %d) output:\n%s", p.Cmd.Process.Pid, p.Out.String())
		}
	})
	p.Child = testutil.StartChild(t, exec.Command(bin,
		"-machine", "q35,accel=tcg",
		"-nodefaults", "-no-user-config",
		"-display", "none",
		"-S",
		"-qmp", "unix:"+sock+",server=on,wait=off",
		"-m", "64",
	))
	return p
}

// dial connects to QEMU's socket, retrying until it exists.
func (p *qemuProc) dial(ctx context.Context, t *testing.T) *Conn {
	t.Helper()
	var c *Conn
	p.Retry(ctx, t, "connecting to QEMU", func() (err error) { c, err = Dial(ctx, p.sock); return err })
	t.Cleanup(func() { c.Close() })
	return c
}

// waitEvent returns the next event called name, failing on a disconnect
// (unless that is what we wait for) or after 30 s.
func waitEvent(t *testing.T, ch <-chan Event, name string) Event {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatalf("event channel closed while waiting for %s", name)
			}
			if ev.Name == name {
				return ev
			}
			if ev.Name == EventDisconnected {
				t.Fatalf("disconnected while waiting for %s: %s", name, ev.Data)
			}
			t.Logf("(event %s %s while waiting for %s)", ev.Name, ev.Data, name)
		case <-timeout:
			t.Fatalf("no %s event within 30s", name)
		}
	}
}

func TestRealQEMU(t *testing.T) {
	p := startQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c := p.dial(ctx, t)
	t.Logf("QEMU %s, capabilities %v", c.Version(), c.Greeting().Capabilities)

	if v := c.Version(); v.QEMU.Major < 1 {
		t.Errorf("greeting version %+v", v)
	}
	v, err := c.QueryVersion(ctx)
	if err != nil || v != c.Version() {
		t.Errorf("query-version = %+v, %v; greeting said %+v", v, err, c.Version())
	}

	events, cancelEvents := c.Subscribe(16)
	defer cancelEvents()

	st, err := c.QueryStatus(ctx)
	if err != nil || st.Status != StatusPrelaunch || st.Running {
		t.Fatalf("query-status = %+v, %v; want prelaunch, not running", st, err)
	}

	err = c.Execute(ctx, "no-such-command", nil, nil)
	if !IsCommandError(err, ClassCommandNotFound) {
		t.Errorf("unknown command: %v, want CommandNotFound", err)
	}
	err = c.Execute(ctx, "query-status", map[string]int{"bogus": 1}, nil)
	var ce *CommandError
	if !errors.As(err, &ce) || ce.Class != ClassGenericError {
		t.Errorf("bad argument: %v, want GenericError", err)
	}

	cpus, err := c.QueryCPUsFast(ctx)
	if err != nil || len(cpus) != 1 || cpus[0].ThreadID <= 0 || cpus[0].Target != "x86_64" {
		t.Fatalf("query-cpus-fast = %+v, %v", cpus, err)
	}
	taskDir := fmt.Sprintf("/proc/%d/task/%d", p.Cmd.Process.Pid, cpus[0].ThreadID)
	if _, err := os.Stat(taskDir); err != nil {
		t.Errorf("vCPU thread-id %d is not a QEMU thread: %v", cpus[0].ThreadID, err)
	}

	// Many concurrent commands on the one monitor.
	var wg sync.WaitGroup
	for range 40 {
		wg.Go(func() {
			if _, err := c.QueryStatus(ctx); err != nil {
				t.Errorf("concurrent query-status: %v", err)
			}
		})
	}
	wg.Wait()

	// cont: RESUME, running.
	if err := c.Cont(ctx); err != nil {
		t.Fatalf("cont: %v", err)
	}
	waitEvent(t, events, EventResume)
	if st, err := c.QueryStatus(ctx); err != nil || st.Status != StatusRunning || !st.Running {
		t.Errorf("after cont: %+v, %v", st, err)
	}

	// system_reset: RESET.
	if err := c.SystemReset(ctx); err != nil {
		t.Fatalf("system_reset: %v", err)
	}
	ev := waitEvent(t, events, EventReset)
	var reset struct {
		Guest  bool
		Reason string
	}
	if err := ev.DecodeData(&reset); err != nil || reset.Guest || reset.Reason != "host-qmp-system-reset" {
		t.Errorf("RESET data %s (%v)", ev.Data, err)
	}
	if d := time.Since(ev.Time); d < -time.Minute || d > time.Minute {
		t.Errorf("RESET timestamp %v is not now", ev.Time)
	}

	// system_powerdown: POWERDOWN (the guest firmware ignores it).
	if err := c.SystemPowerdown(ctx); err != nil {
		t.Fatalf("system_powerdown: %v", err)
	}
	waitEvent(t, events, EventPowerdown)

	// stop: STOP, paused.
	if err := c.Stop(ctx); err != nil {
		t.Fatalf("stop: %v", err)
	}
	waitEvent(t, events, EventStop)
	if st, err := c.QueryStatus(ctx); err != nil || st.Status != StatusPaused || st.Running {
		t.Errorf("after stop: %+v, %v", st, err)
	}

	// fd passing: getfd and add-fd with real descriptors over SCM_RIGHTS.
	f, err := os.CreateTemp(t.TempDir(), "passed-*")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	qemuHas := func() []string { return fdsPointingAt(t, p.Cmd.Process.Pid, f.Name()) }
	if fds := qemuHas(); len(fds) != 0 {
		t.Fatalf("QEMU already has the file open: %v", fds)
	}
	if err := c.GetFD(ctx, "passed", f); err != nil {
		t.Fatalf("getfd: %v", err)
	}
	if fds := qemuHas(); len(fds) != 1 {
		t.Errorf("after getfd QEMU has the file as fds %v, want exactly one", fds)
	}
	if err := c.Execute(ctx, "getfd", map[string]string{"fdname": "nofile"}, nil); !IsCommandError(err, ClassGenericError) {
		t.Errorf("getfd without a descriptor: %v, want GenericError", err)
	}
	if err := c.CloseFD(ctx, "passed"); err != nil {
		t.Errorf("closefd: %v", err)
	}
	if fds := qemuHas(); len(fds) != 0 {
		t.Errorf("after closefd QEMU still has the file as fds %v", fds)
	}
	info, err := c.AddFD(ctx, f, -1, "rakhsh-test")
	if err != nil {
		t.Fatalf("add-fd: %v", err)
	}
	if fds := qemuHas(); len(fds) != 1 || fds[0] != strconv.Itoa(info.FD) {
		t.Errorf("add-fd said fd %d; QEMU has the file as fds %v", info.FD, fds)
	}
	if err := c.Execute(ctx, "remove-fd", map[string]int{"fdset-id": info.FDSetID}, nil); err != nil {
		t.Errorf("remove-fd: %v", err)
	}

	// quit: SHUTDOWN, then the disconnect, then the channel closes.
	if err := c.Quit(ctx); err != nil {
		t.Fatalf("quit: %v", err)
	}
	ev = waitEvent(t, events, EventShutdown)
	var shutdown struct {
		Guest  bool
		Reason string
	}
	if err := ev.DecodeData(&shutdown); err != nil || shutdown.Guest || shutdown.Reason != "host-qmp-quit" {
		t.Errorf("SHUTDOWN data %s (%v)", ev.Data, err)
	}
	waitEvent(t, events, EventDisconnected)
	expectClosed(t, events)
	<-c.Done()
	if err := c.Err(); !errors.Is(err, ErrDisconnected) {
		t.Errorf("Err() = %v", err)
	}
	t.Logf("after quit: %v", c.Err())
	if _, err := c.QueryStatus(ctx); !errors.Is(err, ErrDisconnected) {
		t.Errorf("query-status after quit: %v", err)
	}
	select {
	case <-p.Exited:
		if p.Err != nil {
			t.Errorf("QEMU exit: %v", p.Err)
		}
	case <-time.After(30 * time.Second):
		t.Error("QEMU still running 30s after quit")
	}
}

// TestRealQEMUTimeout checks that a command timing out does not disturb the
// others on a real monitor (QEMU answers quickly, so the caller gives up
// before even sending).
func TestRealQEMUTimeout(t *testing.T) {
	p := startQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := p.dial(ctx, t)

	expired, cancelExpired := context.WithTimeout(ctx, time.Nanosecond)
	defer cancelExpired()
	<-expired.Done()
	if _, err := c.QueryStatus(expired); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("expired ctx: %v", err)
	}
	if st, err := c.QueryStatus(ctx); err != nil || st.Status != StatusPrelaunch {
		t.Errorf("after a timeout: %+v, %v", st, err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	// QEMU keeps running and accepts a new client.
	c2 := p.dial(ctx, t)
	if st, err := c2.QueryStatus(ctx); err != nil || st.Status != StatusPrelaunch {
		t.Errorf("second connection: %+v, %v", st, err)
	}
}

// fdsPointingAt lists the descriptors of process pid that refer to path.
func fdsPointingAt(t *testing.T, pid int, path string) []string {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("reading %s: %v", dir, err)
	}
	var fds []string
	for _, e := range entries {
		if target, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && target == path {
			fds = append(fds, e.Name())
		}
	}
	return fds
}
