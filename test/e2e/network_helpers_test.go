package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/internal/network"
	"github.com/rakhsh/rakhsh/internal/testutil"
)

// netnsLab is a pair of network namespaces made for one test: "in", where `rakhsh serve`
// runs (its VMs' bridges, taps, nftables and dnsmasq live there), and "out", a stand-in for
// the world beyond the host's uplink, joined to "in" by a veth pair. Nothing of the host's
// own network is touched; the namespaces are deleted at the end.
type netnsLab struct {
	In, Out       string
	InIP, OutIP   string // the two ends of the veth pair
	InLink        string
	servesStarted []*Serve
}

func needNetTools(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("network tests make network namespaces and need root")
	}
	for _, p := range []string{"ip", "nft", "dnsmasq", "nsenter"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Fatalf("%s is missing: run scripts/install-deps.sh (apt-get install iproute2 nftables dnsmasq-base util-linux)", p)
		}
	}
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// newNetnsLab makes the namespaces: in has 172.31.250.1/30 and a default route to out's
// 172.31.250.2.
func newNetnsLab(t *testing.T) *netnsLab {
	t.Helper()
	needNetTools(t)
	// Two labs of one test run side by side (sideBySide): the namespaces' names differ.
	id := fmt.Sprintf("%d-%d", os.Getpid()%100000, netnsLabs.Add(1))
	l := &netnsLab{In: "rk-in" + id, Out: "rk-out" + id, InIP: "172.31.250.1", OutIP: "172.31.250.2",
		InLink: "rkvin"}
	run(t, "ip", "netns", "add", l.In)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", l.In).Run() })
	run(t, "ip", "netns", "add", l.Out)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", l.Out).Run() })
	run(t, "ip", "-n", l.In, "link", "add", l.InLink, "type", "veth", "peer", "name", "rkvout", "netns", l.Out)
	run(t, "ip", "-n", l.In, "addr", "add", l.InIP+"/30", "dev", l.InLink)
	run(t, "ip", "-n", l.Out, "addr", "add", l.OutIP+"/30", "dev", "rkvout")
	for _, ns := range []string{l.In, l.Out} {
		run(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	run(t, "ip", "-n", l.In, "link", "set", l.InLink, "up")
	run(t, "ip", "-n", l.Out, "link", "set", "rkvout", "up")
	run(t, "ip", "-n", l.In, "route", "add", "default", "via", l.OutIP)
	return l
}

// netnsLabs counts the labs made by this test process.
var netnsLabs atomic.Int64

// listenIn opens a TCP listener inside a namespace.
func listenIn(t *testing.T, ns, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	var err error
	testutil.InNetns(t, ns, func() { ln, err = net.Listen("tcp", addr) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// dialIn connects to addr from inside a namespace.
func dialIn(t *testing.T, ns, addr string, timeout time.Duration) (net.Conn, error) {
	t.Helper()
	var c net.Conn
	var err error
	testutil.InNetns(t, ns, func() {
		d := net.Dialer{Timeout: timeout}
		c, err = d.DialContext(context.Background(), "tcp", addr)
	})
	return c, err
}

// startServeIn starts `rakhsh serve` inside the lab's "in" namespace (the same harness as
// StartServe, with `ip netns exec` in front). At the end of the test it stops serve, kills
// the QEMUs and the dnsmasq daemons it left (by pid, verified by command line).
func (l *netnsLab) startServeIn(t *testing.T, extra ...string) *Serve {
	t.Helper()
	s := &Serve{t: t, DataDir: t.TempDir(), Args: extra}
	l.restartServe(s)
	t.Cleanup(func() {
		s.Stop()
		for uid, pid := range testutil.QEMUPIDs(s.DataDir) {
			_ = uid
			_ = syscall.Kill(pid, syscall.SIGKILL)
			for i := 0; i < 100 && syscall.Kill(pid, 0) == nil; i++ {
				time.Sleep(50 * time.Millisecond)
			}
		}
		entries, _ := os.ReadDir(s.DataDir + "/run/networks")
		for _, e := range entries {
			if pid := network.DnsmasqPID(s.DataDir, e.Name()); pid > 0 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		if t.Failed() {
			t.Logf("rakhsh serve log:\n%s", s.logs.String())
		}
	})
	return s
}

// restartServe (re)starts the process of s in the "in" namespace.
func (l *netnsLab) restartServe(s *Serve) {
	t := s.t
	t.Helper()
	// nsenter switches only the network namespace: `ip netns exec` would also remount /sys,
	// hiding the cgroup hierarchy the agent puts VMs in.
	// The guest image is served on the namespace's loopback.
	args := append([]string{"--net=/run/netns/" + l.In, rakhshBin(t), "serve", "--data-dir", s.DataDir, "--log-level", "debug",
		"--allow-import-from", "127.0.0.0/8"}, s.Args...)
	cmd := exec.Command("nsenter", args...)
	if s.logs == nil {
		s.logs = &lockedBuffer{}
	}
	cmd.Stdout, cmd.Stderr = s.logs, s.logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting rakhsh serve: %v", err)
	}
	s.cmd = cmd
	s.done = make(chan struct{})
	go func() { _ = cmd.Wait(); close(s.done) }()
	s.waitReady()
}

// nsLinkExists says whether an interface exists in a namespace.
func nsLinkExists(ns, name string) bool {
	return exec.Command("ip", "-n", ns, "link", "show", name).Run() == nil
}

// nsRun runs a command inside a namespace and returns its output.
func nsRun(t *testing.T, ns string, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("in %s: %s: %v: %s", ns, strings.Join(args, " "), err, out)
	}
	return string(out)
}
