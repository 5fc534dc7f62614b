package e2e

import (
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/rakhsh/rakhsh/internal/testutil"
)

// applyGuestISO applies the ClusterVirtualImage guest-iso, the test guest's ISO served from
// base (vmImageServer), and a blank VirtualDisk for each "name=size" of disks, then waits
// until all of them are Ready.
func applyGuestISO(t *testing.T, s *Serve, base string, disks ...string) {
	t.Helper()
	docs := []string{fmt.Sprintf("apiVersion: virtualization.rakhsh.io/v1alpha1\nkind: ClusterVirtualImage\nmetadata: {name: guest-iso}\n"+
		"spec:\n  dataSource:\n    type: HTTP\n    http: {url: %q}\n", base+"/guest.iso")}
	for _, d := range disks {
		name, size, ok := strings.Cut(d, "=")
		if !ok {
			t.Fatalf("applyGuestISO: disk %q is not name=size", d)
		}
		docs = append(docs, fmt.Sprintf("apiVersion: virtualization.rakhsh.io/v1alpha1\nkind: VirtualDisk\nmetadata: {name: %s}\n"+
			"spec:\n  persistentVolumeClaim: {size: %s}\n", name, size))
	}
	s.MustCLI(strings.Join(docs, "---\n"), "apply", "-f", "-")
	s.MustCLI("", "wait", "cvi", "guest-iso", "--for", "phase=Ready", "--timeout", "2m")
	for _, d := range disks {
		name, _, _ := strings.Cut(d, "=")
		s.MustCLI("", "wait", "vd", name, "--for", "phase=Ready", "--timeout", "1m")
	}
}

// joinedAgent is the `rakhsh agent` process of a host that joined a control plane.
type joinedAgent struct {
	t    *testing.T
	cmd  *exec.Cmd
	argv []string
	env  []string
	dir  string
	logs *lockedBuffer
}

// startJoinedAgent starts `rakhsh agent` against the API server at addr (its CA in the file
// ca) with data dir dir, 1 s heartbeats, user networking and a stream port on loopback, plus
// args, in environment env. At the end of the test it is stopped (SIGTERM); a QEMU left of
// it is an error (and killed), and its log is printed when the test failed.
func startJoinedAgent(t *testing.T, addr, ca, dir string, env []string, args ...string) *joinedAgent {
	t.Helper()
	a := &joinedAgent{t: t, env: env, dir: dir, logs: &lockedBuffer{},
		argv: []string{"agent", "--server", "https://" + addr, "--ca-file", ca, "--data-dir", dir,
			"--heartbeat-interval", "1s", "--vm-networking", "user", "--stream-listen", "127.0.0.1:0"}}
	a.start(args...)
	t.Cleanup(func() {
		a.stop()
		for uid, pid := range testutil.QEMUPIDs(dir) {
			t.Errorf("QEMU of %s (pid %d) still runs at the end of the test: killing it", uid, pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		if t.Failed() {
			t.Logf("agent log:\n%s", a.logs.String())
		}
	})
	return a
}

func (a *joinedAgent) start(args ...string) {
	a.t.Helper()
	a.cmd = exec.Command(rakhshBin(a.t), append(append([]string{}, a.argv...), args...)...)
	a.cmd.Env = a.env
	a.cmd.Stdout, a.cmd.Stderr = a.logs, a.logs
	if err := a.cmd.Start(); err != nil {
		a.t.Fatal(err)
	}
}

// stop ends the agent with SIGTERM and waits for it (its QEMUs go on).
func (a *joinedAgent) stop() {
	if a.cmd != nil && a.cmd.Process != nil {
		_ = a.cmd.Process.Signal(syscall.SIGTERM)
		_ = a.cmd.Wait()
	}
}

// restart stops the agent and starts it again with the common flags plus args.
func (a *joinedAgent) restart(args ...string) {
	a.t.Helper()
	a.stop()
	a.start(args...)
}
