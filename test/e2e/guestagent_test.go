package e2e

import (
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/storage"
	"github.com/rakhsh/rakhsh/internal/testutil"
	"github.com/rakhsh/rakhsh/internal/testutil/fakeqga"
)

func agentReadyCond(v *v1alpha1.VirtualMachine) *v1alpha1.Condition {
	if v == nil {
		return nil
	}
	return v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionAgentReady)
}

var kernelMarker = regexp.MustCompile(`RAKHSH-GUEST: kernel (\S+)`)

// gaBoot starts vm1 from the test guest and waits for AgentReady=True.
func gaBoot(t *testing.T, s *Serve) *v1alpha1.VirtualMachine {
	t.Helper()
	vmSetupGuest(t, s, "root")
	s.MustCLI(vmManifest("vm1", "root", "Manual", "256Mi"), "apply", "-f", "-")
	s.MustCLI("", "vm", "start", "vm1", "--wait")
	vmWait(t, s, "vm1", vmBootTimeout, "Running", vmPhase(v1alpha1.VMPhaseRunning))
	vmWaitSerial(t, s, "vm1", "RAKHSH-GUEST: ready", 1)
	return vmWait(t, s, "vm1", vmBootTimeout, "AgentReady=True", func(v *v1alpha1.VirtualMachine) bool {
		c := agentReadyCond(v)
		return c != nil && c.Status == v1alpha1.ConditionTrue
	})
}

// TestGuestAgent: the test guest's qemu-ga answers the node agent: AgentReady becomes True,
// status.guestOSInfo shows the guest's kernel (the one it prints) and host name, its DHCP
// address shows in status.networks next to the platform's own fields, and stopping the VM
// removes AgentReady and the guest's addresses.
func TestGuestAgent(t *testing.T) {
	sideBySide(t)
	vmGuestDir(t)
	s := vmServe(t)
	v := gaBoot(t, s)
	// The guest prints its DHCP address when the lease comes, which may be after ready.
	vmWaitSerialMatch(t, s, "vm1", ipMarker, 1)
	log := vmLog(t, s, "vm1")
	m := kernelMarker.FindStringSubmatch(log)
	ipm := ipMarker.FindStringSubmatch(log)
	if m == nil || ipm == nil {
		t.Fatalf("serial log without kernel or ip markers:\n%s", log)
	}
	// The addresses come with the first answers; the OS info too.
	v = vmWait(t, s, "vm1", time.Minute, "showing the guest's addresses", func(v *v1alpha1.VirtualMachine) bool {
		return v != nil && v.Status.GuestOSInfo != nil && len(v.Status.Networks) > 0 && len(v.Status.Networks[0].GuestIPAddresses) > 0
	})
	os := v.Status.GuestOSInfo
	t.Logf("guestOSInfo %+v", *os)
	if os.KernelRelease != m[1] || os.Hostname != "rakhsh-guest" || os.ID != "rakhsh-guest" || os.PrettyName != "Rakhsh test guest 1" || os.Machine != "x86_64" {
		t.Errorf("guestOSInfo %+v: want kernel %s (the guest's own marker), hostname rakhsh-guest, id rakhsh-guest", *os, m[1])
	}
	n := v.Status.Networks[0]
	t.Logf("networks[0] %+v", n)
	if !slices.Contains(n.GuestIPAddresses, ipm[1]+"/24") || n.InterfaceName != ipm[2] || n.MACAddress == "" || n.Type != v1alpha1.NetworkTypeMain {
		t.Errorf("networks[0] %+v: want %s/24 on %s, with the platform's type and MAC kept", n, ipm[1], ipm[2])
	}
	if st := v.Status.Stats; st == nil || st.LaunchTimeDuration == nil || st.LaunchTimeDuration.GuestOSAgentStarting == "" {
		t.Errorf("stats.launchTimeDuration.guestOSAgentStarting missing: %+v", v.Status.Stats)
	} else {
		t.Logf("Running → AgentReady: %s (VirtualMachineStarting %s)", st.LaunchTimeDuration.GuestOSAgentStarting, st.LaunchTimeDuration.VirtualMachineStarting)
	}
	c := agentReadyCond(v)
	if c.Reason != "AgentReady" {
		t.Errorf("AgentReady %+v", c)
	}
	// fs-freeze and thaw round-trip through the API, the node agent and qemu-ga. The test
	// guest runs from its initramfs (rootfs and tmpfs, which cannot be frozen): qemu-ga
	// freezes 0 filesystems, and says so.
	if out := s.MustCLI("", "vm", "freeze", "vm1"); !strings.Contains(out, "froze 0 filesystems") {
		t.Errorf("vm freeze: %q", out)
	}
	if out := s.MustCLI("", "vm", "freeze-status", "vm1"); strings.TrimSpace(out) != "thawed" {
		t.Errorf("vm freeze-status: %q (nothing was freezable)", out)
	}
	if out := s.MustCLI("", "vm", "unfreeze", "vm1"); !strings.Contains(out, "thawed 0 filesystems") {
		t.Errorf("vm unfreeze: %q", out)
	}
	// set-password: the guest's /etc/shadow entry of root changes (its chpasswd hook says so
	// on the console, without the password).
	if out := s.MustCLI("n3w-Passw0rd\n", "vm", "set-password", "vm1", "--user", "root", "--password-stdin"); !strings.Contains(out, "password of root set") {
		t.Errorf("vm set-password: %q", out)
	}
	vmWaitSerial(t, s, "vm1", "RAKHSH-GUEST: password-changed user=root", 1)
	// Refusals name the problem; nothing reaches the guest.
	if r := s.CLI("a\nb\n", "vm", "set-password", "vm1", "--user", "no:body", "--password-stdin"); r.Code == 0 || !strings.Contains(r.Stderr, "user name") {
		t.Errorf("set-password of a bad user name: %d %q", r.Code, r.Stderr)
	}
	if r := s.CLI("pw\n", "vm", "set-password", "vm1", "--user", "nosuchuser", "--password-stdin"); r.Code == 0 || !strings.Contains(r.Stderr, "guest refused") {
		t.Errorf("set-password of a user the guest lacks: %d %q", r.Code, r.Stderr)
	}
	if strings.Contains(vmLog(t, s, "vm1"), "n3w-Passw0rd") || strings.Contains(s.Logs(), "n3w-Passw0rd") {
		t.Error("the password shows in the serial log or serve's log")
	}

	// Steady state: pings every 5 s write nothing.
	rv := v.ResourceVersion
	time.Sleep(12 * time.Second)
	if now := vmGet(t, s, "vm1"); now.ResourceVersion != rv {
		t.Errorf("the VM's status was written while the guest agent said the same: resourceVersion %s → %s", rv, now.ResourceVersion)
	}

	// A guest that ignores the power button (its acpid is gone): after the grace period
	// (30 s) the node agent asks the guest agent to shut it down, and it powers off itself.
	vmConsoleType(t, s, v.UID, "kill $(cat /run/acpid.pid)")
	s.MustCLI("", "vm", "stop", "vm1", "--wait")
	v = vmWait(t, s, "vm1", 2*time.Minute, "Stopped", vmPhase(v1alpha1.VMPhaseStopped))
	log = vmLog(t, s, "vm1")
	if !strings.Contains(log, "RAKHSH-GUEST: agent-shutdown") || strings.Contains(log, "RAKHSH-GUEST: powerdown") {
		t.Errorf("the guest was not shut down by its guest agent (or saw the power button); log:\n%s", log)
	}
	if !strings.Contains(s.Logs(), "asked its guest agent to shut it down") {
		t.Error("serve's log does not say it asked the guest agent")
	}
	if c := agentReadyCond(v); c != nil {
		t.Errorf("a stopped VM has AgentReady %+v", c)
	}
	if len(v.Status.Networks) > 0 && len(v.Status.Networks[0].GuestIPAddresses) > 0 {
		t.Errorf("a stopped VM keeps the guest's addresses: %+v", v.Status.Networks[0])
	}
}

// hostileAgent serves a VM's guest agent socket in place of QEMU: it answers the sync, then
// misbehaves as its mode says.
type hostileAgent struct {
	mu   sync.Mutex
	mode string // "huge": a 100 MB line; "junk": malformed JSON; "silent": nothing at all
	sent int64
}

func (h *hostileAgent) setMode(m string) { h.mu.Lock(); h.mode = m; h.mu.Unlock() }

func (h *hostileAgent) serve(conn net.Conn) {
	fakeqga.ReadRequests(conn, func(req fakeqga.Request) bool {
		h.mu.Lock()
		mode := h.mode
		h.mu.Unlock()
		if req.Execute == "guest-sync-delimited" && mode != "silent" {
			fakeqga.AnswerSync(conn, req)
			return true
		}
		switch mode {
		case "huge":
			err := fakeqga.WriteHugeLine(conn, func(n int) {
				h.mu.Lock()
				h.sent += int64(n)
				h.mu.Unlock()
			})
			if err != nil {
				return false
			}
			_, _ = conn.Write([]byte("\n"))
		case "junk":
			_, _ = conn.Write([]byte("{\"return\": {\"name\": \"x\", ]]]\x00\xff garbage\n"))
		}
		return true
	})
}

// TestGuestAgentHostile: the socket the node agent reaches the guest agent through is taken
// over by the test, which plays a hostile guest: a 100 MB line, junk JSON, then silence.
// Each turns AgentReady False with a reason, serve's memory stays bounded, its API answers,
// and the last known OS info stays.
func TestGuestAgentHostile(t *testing.T) {
	sideBySide(t)
	vmGuestDir(t)
	s := vmServe(t)
	v := gaBoot(t, s)
	pid := s.PID()
	hwm0 := procStatusKB(t, pid, "VmHWM")

	// Take the socket path over, then stop the guest's own agent: the node agent's pings time
	// out, and it dials the path again, reaching the test.
	sock := filepath.Join(storage.VMRunDir(s.DataDir, v.UID), "qga.sock")
	if err := os.Remove(sock); err != nil {
		t.Fatal(err)
	}
	h := &hostileAgent{mode: "huge"}
	testutil.ListenUnix(t, sock, h.serve)
	vmConsoleType(t, s, v.UID, "kill $(cat /run/qemu-ga.pid)")

	for _, c := range []struct{ mode, reason, msg string }{
		{"huge", "AgentProtocolError", "larger than"},
		{"junk", "AgentProtocolError", "malformed"},
		{"silent", "AgentNotResponding", "did not answer"},
	} {
		h.setMode(c.mode)
		got := vmWait(t, s, "vm1", 2*time.Minute, "AgentReady False for a "+c.mode+" guest agent", func(v *v1alpha1.VirtualMachine) bool {
			cond := agentReadyCond(v)
			return cond != nil && cond.Status == v1alpha1.ConditionFalse && cond.Reason == c.reason && strings.Contains(cond.Message, c.msg)
		})
		t.Logf("%s guest agent: AgentReady %s %s: %s", c.mode, agentReadyCond(got).Status, agentReadyCond(got).Reason, agentReadyCond(got).Message)
		if got.Status.GuestOSInfo == nil || got.Status.GuestOSInfo.Hostname != "rakhsh-guest" {
			t.Errorf("%s: the last known guestOSInfo is gone: %+v", c.mode, got.Status.GuestOSInfo)
		}
		if r := s.CLI("", "get", "vm", "vm1"); r.Code != 0 || !strings.Contains(r.Stdout, "Running") {
			t.Fatalf("%s: the API does not answer: %d %s %s", c.mode, r.Code, r.Stdout, r.Stderr)
		}
	}
	h.mu.Lock()
	sent := h.sent
	h.mu.Unlock()
	rss, hwm := procStatusKB(t, pid, "VmRSS"), procStatusKB(t, pid, "VmHWM")
	t.Logf("hostile guest agent wrote %d MiB of a 100 MiB line before serve hung up; serve VmRSS %d MiB, VmHWM %d MiB (before: %d MiB)", sent>>20, rss>>10, hwm>>10, hwm0>>10)
	if sent >= 50<<20 {
		t.Errorf("serve read %d MiB of the 100 MiB line; it should stop at the 1 MiB limit", sent>>20)
	}
	if hwm-hwm0 > 32<<10 {
		t.Errorf("serve's peak memory grew by %d MiB against a hostile guest agent; want under 32 MiB", (hwm-hwm0)>>10)
	}
	// The VM itself is untouched.
	if now := vmGet(t, s, "vm1"); now.Status.Phase != v1alpha1.VMPhaseRunning {
		t.Errorf("phase %s after the hostile agent", now.Status.Phase)
	}
	s.MustCLI("", "vm", "stop", "vm1", "--force", "--wait")
	vmWait(t, s, "vm1", time.Minute, "Stopped", vmPhase(v1alpha1.VMPhaseStopped))
}
