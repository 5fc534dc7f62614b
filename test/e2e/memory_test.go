package e2e

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/testutil"
)

// qemuRSS is the resident memory of a process in bytes (VmRSS).
func qemuRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n << 10
		}
	}
	t.Fatalf("no VmRSS for pid %d", pid)
	return 0
}

// ksmFiles keeps the host's KSM settings and puts them back when the test ends: the agent's
// --ksm on starts ksmd host-wide.
func ksmFiles(t *testing.T) {
	t.Helper()
	for _, name := range []string{"run", "pages_to_scan"} {
		p := "/sys/kernel/mm/ksm/" + name
		old, err := os.ReadFile(p)
		if err != nil {
			t.Fatalf("this host has no KSM (%v): the test needs a kernel with CONFIG_KSM", err)
		}
		t.Cleanup(func() {
			if err := os.WriteFile(p, old, 0o644); err != nil {
				t.Errorf("restoring %s: %v", p, err)
			}
		})
	}
}

// TestMemoryBalloonAndKSM: two VMs (384Mi, class minimum 128Mi) on one node.
//  1. Free page reporting: each guest fills 200 MiB of its memory and frees it again; its
//     QEMU's RSS grows and then, where the node gives reporting (KVM or QEMU 9.0+), falls back
//     (the freed pages go back to the host) with no pressure on the node.
//  2. Serve restarted with --memory-reserve above the host's memory (the node is short) and
//     --ksm on: both balloons go down to the class's 128Mi floor, the guest sees the memory
//     gone, QEMU's RSS is at least 150 MiB below its peak, the Node says it reclaims, and
//     ksmd shares the two identical guests' pages (Node status.memory.ksm).
//  3. Serve restarted without the reserve: the guests get all their memory back.
func TestMemoryBalloonAndKSM(t *testing.T) {
	vmGuestDir(t)
	ksmFiles(t)
	s := vmServe(t, "--ksm", "off")
	vmSetupGuest(t, s, "m1-disk", "m2-disk")
	applyDocs(s, classDoc("balloon", "qemu64", "cores: {min: 1, max: 4}\nmemory: {min: 128Mi, max: 1Gi}"))
	names := []string{"m1", "m2"}
	uids := map[string]string{}
	for _, n := range names {
		s.MustCLI(strings.Replace(classVMWithDisk(n, "balloon", n+"-disk", "{cores: 1}"), "size: 128Mi", "size: 384Mi", 1), "apply", "-f", "-")
	}
	for _, n := range names {
		uids[n] = vmWait(t, s, n, 2*time.Minute, "Running", vmPhase(v1alpha1.VMPhaseRunning)).UID
		vmWaitSerial(t, s, n, "RAKHSH-GUEST: ready", 1)
	}
	pids := testutil.QEMUPIDs(s.DataDir)

	// 1. Free page reporting (where the node gives it: KVM, or QEMU 9.0+).
	peak := map[string]int64{}
	for _, n := range names {
		uid, pid := uids[n], pids[uids[n]]
		b := vmGet(t, s, n).Status.Resources.Memory.Balloon
		if b == nil {
			t.Fatalf("%s has no balloon in its status", n)
		}
		before := qemuRSS(t, pid)
		vmConsoleType(t, s, uid, "")
		vmConsoleType(t, s, uid, "dd if=/dev/zero of=/fill bs=1M count=200 2>/dev/null; echo FILLED-$((40+2))")
		vmWaitSerial(t, s, n, "FILLED-42", 1)
		filled := qemuRSS(t, pid)
		peak[n] = filled
		vmConsoleType(t, s, uid, "rm /fill; echo FREED-$((40+2))")
		vmWaitSerial(t, s, n, "FREED-42", 1)
		if filled < before+64<<20 {
			t.Errorf("%s: RSS %d -> %d MiB while the guest holds 200 MiB more", n, before>>20, filled>>20)
		}
		if !b.FreePageReporting {
			// TCG with QEMU before 9.0: no reporting (docs/live-resources.md); phase 2 shows
			// the balloon taking the freed memory.
			t.Logf("MEMORY %s QEMU RSS: booted %d MiB, guest filled 200 MiB %d MiB; free page reporting is off on this host", n, before>>20, filled>>20)
			continue
		}
		var after int64
		deadline := time.Now().Add(time.Minute)
		for after = qemuRSS(t, pid); after > before+32<<20 && time.Now().Before(deadline); after = qemuRSS(t, pid) {
			time.Sleep(500 * time.Millisecond)
		}
		t.Logf("MEMORY %s QEMU RSS: booted %d MiB, guest filled 200 MiB %d MiB, guest freed it %d MiB", n, before>>20, filled>>20, after>>20)
		// The fill reuses some pages the guest touched while booting: RSS grows by less than
		// 200 MiB. Once freed, the guest's pages go back to the host.
		if after > before+32<<20 {
			t.Errorf("%s: RSS %d -> %d -> %d MiB: want it to fall back once the guest frees them", n, before>>20, filled>>20, after>>20)
		}
	}

	// 2. The node is short of memory: reclaim down to the floors, and KSM.
	s.Kill9()
	s.Args = []string{"--ksm", "on", "--memory-reserve", "100000Gi"}
	s.Start()
	for _, n := range names {
		v := vmWait(t, s, n, 2*time.Minute, "ballooned to 128Mi", func(v *v1alpha1.VirtualMachine) bool {
			r := v.Status.Resources
			return r != nil && r.Memory.Balloon != nil && r.Memory.Balloon.Actual == "128Mi"
		})
		if b := v.Status.Resources.Memory.Balloon; b.Floor != "128Mi" {
			t.Errorf("%s balloon %+v: want floor 128Mi", n, b)
		}
		vmConsoleType(t, s, uids[n], "echo FREE-$((40+2)) $(grep MemFree /proc/meminfo)")
		vmWaitSerial(t, s, n, "FREE-42 ", 1)
	}
	node := waitNodeMemory(t, s, func(m *v1alpha1.NodeMemoryStatus) bool {
		return m.Reclaiming && m.KSM != nil && m.KSM.Running && m.KSM.PagesSharing > 0
	})
	t.Logf("MEMORY node while short: reclaimed %s, KSM %+v", node.Reclaimed, *node.KSM)
	if r, _ := node.Reclaimed.Value(); r < 2*250<<20 {
		t.Errorf("node reclaims %s, want about 2 x 256Mi", node.Reclaimed)
	}
	for _, n := range names {
		log := vmLog(t, s, n)
		i := strings.LastIndex(log, "FREE-42 MemFree:")
		f := strings.Fields(log[i+len("FREE-42 MemFree:"):])
		free, _ := strconv.ParseInt(f[0], 10, 64)
		rss := qemuRSS(t, pids[uids[n]])
		t.Logf("MEMORY %s guest MemFree with its balloon at 128Mi: %d MiB, QEMU RSS %d MiB (%d MiB while the guest held 200 MiB more)", n, free>>10, rss>>20, peak[n]>>20)
		if free<<10 > 128<<20 {
			t.Errorf("%s: the guest has %d MiB free with its balloon at 128Mi of 384Mi", n, free>>10)
		}
		if rss > peak[n]-150<<20 {
			t.Errorf("%s: QEMU RSS %d MiB with the balloon at the floor, %d MiB at the peak: the reclaimed memory did not go back to the host", n, rss>>20, peak[n]>>20)
		}
	}

	// 3. Memory plentiful again: all of it back.
	s.Kill9()
	s.Args = []string{"--ksm", "off"}
	s.Start()
	for _, n := range names {
		vmWait(t, s, n, 2*time.Minute, "given its memory back", func(v *v1alpha1.VirtualMachine) bool {
			r := v.Status.Resources
			return r != nil && r.Memory.Balloon != nil && r.Memory.Balloon.Actual == "384Mi"
		})
	}
	if n := waitNodeMemory(t, s, func(m *v1alpha1.NodeMemoryStatus) bool { return !m.Reclaiming }); n.KSM == nil || n.KSM.Mode != "off" {
		t.Errorf("node memory after the pressure: %+v", n)
	}
	for _, n := range names {
		s.MustCLI("", "delete", "vm", n, "--wait", "--timeout", "90s")
	}
}

// waitNodeMemory waits until the node's status.memory passes ok, and returns it.
func waitNodeMemory(t *testing.T, s *Serve, ok func(m *v1alpha1.NodeMemoryStatus) bool) *v1alpha1.NodeMemoryStatus {
	t.Helper()
	var last *v1alpha1.NodeMemoryStatus
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		var node v1alpha1.Node
		if err := s.Client().Get(context.Background(), "nodes", "", vmGet(t, s, "m1").Status.NodeName, &node); err == nil {
			if last = node.Status.Memory; last != nil && ok(last) {
				return last
			}
		}
		time.Sleep(time.Second)
	}
	t.Fatalf("the node's memory status never became as wanted; last: %+v", last)
	return nil
}
