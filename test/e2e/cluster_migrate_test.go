package e2e

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/nodestream"
	"github.com/rakhsh/rakhsh/internal/storage"
	"github.com/rakhsh/rakhsh/internal/testutil"
)

// migrateConsoleType types a line on the serial console of a VM running on host h.
func migrateConsoleType(t *testing.T, h *ClusterHost, uid, line string) {
	t.Helper()
	c, err := net.Dial("unix", filepath.Join(storage.VMRunDir(h.DataDir, uid), "console.sock"))
	if err != nil {
		t.Fatalf("console of the VM on %s: %v", h.Name, err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(line + "\n")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
}

var tickRe = regexp.MustCompile(`(?m)^RKTICK (\d+)[ \t\r]*\n`) // a whole line: one still arriving would give a cut number

// lastTick is the highest tick counter in a serial log (0: none).
func lastTick(log string) int {
	n := 0
	for _, m := range tickRe.FindAllStringSubmatch(log, -1) {
		if v, _ := strconv.Atoi(m[1]); v > n {
			n = v
		}
	}
	return n
}

// waitTick waits until the VM's serial log shows a tick above above, and returns it.
func waitTick(t *testing.T, s *Serve, name string, above int, limit time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if n := lastTick(vmLog(t, s, name)); n > above {
			return n
		}
		time.Sleep(500 * time.Millisecond)
	}
	log := vmLog(t, s, name)
	// A guest that crashed: its oops, from its first line, says more than the tail.
	if i := strings.LastIndex(log, "RKTICK "); i >= 0 {
		log = log[i:]
	}
	t.Fatalf("serial log of %s: no tick above %d within %s; log since the last tick:\n%s", name, above, limit, tail(log, 16000))
	return 0
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// migrateOther returns a cluster host other than node.
func migrateOther(c *Cluster, node string) string {
	for _, h := range c.HostNames() {
		if h != node {
			return h
		}
	}
	return ""
}

// TestLiveMigration, on the three-host cluster: (1) a VM whose disk is on a Shared class
// moves to another node while its guest runs: the tick counter the guest prints every second
// goes on from where it was, without a reboot (no boot marker on the target), with the same
// MAC and IP, and one QEMU of it is left; (2) a VM with a disk on the source's Local storage
// moves too: the disk is copied while the guest runs, the marker the guest wrote on it before
// is read back after (with the page cache dropped), the disk's node is the target and its
// file is gone from the source.
//
// A third part migrates the Local-disk VM again with serve --migration-encryption=false.
func TestLiveMigration(t *testing.T) {
	c, s, img := clusterStart(t, clusterForMigration)
	t.Cleanup(func() {
		for _, vm := range []string{"rkm-shared", "rkm-local", "rkm-peer"} {
			s.CLI("", "delete", "vm", vm, "--ignore-not-found", "--wait")
		}
		for _, d := range []string{"rkm-sd", "rkm-ld"} {
			s.CLI("", "delete", "vd", d, "--ignore-not-found", "--wait")
		}
		s.CLI("", "delete", "storageclass", "rkm-shared", "--ignore-not-found")
	})
	clusterApply(s, clusterSharedClassYAML("rkm-shared", filepath.Join(c.Shared, "rkm-storage")))
	clusterApply(s, clusterDiskManifest{Name: "rkm-sd", Size: "64Mi", StorageClass: "rkm-shared"}.YAML(), clusterDiskManifest{Name: "rkm-ld", Size: "64Mi"}.YAML())
	clusterWaitDisks(s, "rkm-sd", "rkm-ld")
	clusterApply(s, migrateVMYAML("rkm-shared", img, "rkm-sd", ""), migrateVMYAML("rkm-local", img, "rkm-ld", ""))

	// (1) Shared storage.
	t.Run("Shared", func(t *testing.T) {
		v := clusterBoot(t, s, "rkm-shared", "")
		src := v.Status.NodeName
		migrateConsoleType(t, c.Host(src), v.UID, clusterTickLoop)
		before := waitTick(t, s, "rkm-shared", 2, time.Minute)
		dst := migrateOther(c, src)
		// A peer on the third node pings the VM across the migration.
		third := ""
		for _, h := range c.HostNames() {
			if h != src && h != dst {
				third = h
			}
		}
		clusterApply(s, clusterVMManifest{Name: "rkm-peer", Host: third, Image: img}.YAML())
		peer := clusterBoot(t, s, "rkm-peer", "")
		vmWaitSerial(t, s, "rkm-peer", "RAKHSH-GUEST: ip=", 1)
		migrateConsoleType(t, c.Host(third), peer.UID, fmt.Sprintf("ping -c 2 %s >/dev/null; (ping -i 0.5 -w 20 %s | tail -2 | sed 's/^/RKPING /') &", v.Status.IPAddress, v.Status.IPAddress))
		time.Sleep(3 * time.Second)
		started := time.Now()
		r := s.CLI("", "vm", "migrate", "rkm-shared", "--to", dst, "--wait", "--timeout", "5m")
		t.Logf("migration %s -> %s took %s: %s", src, dst, time.Since(started).Round(time.Millisecond), strings.TrimSpace(r.Stderr))
		if r.Code != 0 {
			t.Fatalf("vm migrate: exit %d: %s %s", r.Code, r.Stdout, r.Stderr)
		}
		after := vmGet(t, s, "rkm-shared")
		m := after.Status.MigrationState
		if after.Status.NodeName != dst || m == nil || m.Phase != v1alpha1.MigrationPhaseSucceeded || m.Source.Node != src || m.Target.Node != dst {
			t.Fatalf("after the migration: node %q, migration %+v", after.Status.NodeName, m)
		}
		if m.Progress != nil {
			t.Logf("QEMU: transfer %d ms, downtime %d ms, %d bytes", m.Progress.TotalTimeMs, m.Progress.DowntimeMs, m.Progress.TransferredBytes)
		}
		// The platform's fields of each NIC (what the guest agent reports may differ in time).
		platform := func(ns []v1alpha1.NetworkStatus) string {
			var out []string
			for _, n := range ns {
				out = append(out, fmt.Sprint(n.Type, n.Name, n.MACAddress, n.VirtualMachineMACAddressName, n.IPAddress))
			}
			return strings.Join(out, ";")
		}
		if platform(after.Status.Networks) != platform(v.Status.Networks) || after.Status.IPAddress != v.Status.IPAddress {
			t.Errorf("networks changed: before %+v %s, after %+v %s", v.Status.Networks, v.Status.IPAddress, after.Status.Networks, after.Status.IPAddress)
		}
		n := waitTick(t, s, "rkm-shared", before, time.Minute)
		vmWaitSerial(t, s, "rkm-peer", "packets received", 1)
		pingRe := regexp.MustCompile(`RKPING (\d+) packets transmitted, (\d+) packets received`)
		if m := pingRe.FindStringSubmatch(vmLog(t, s, "rkm-peer")); m == nil {
			t.Errorf("no ping summary from the peer:\n%s", tail(vmLog(t, s, "rkm-peer"), 1500))
		} else {
			sent, got := atoi(m[1]), atoi(m[2])
			t.Logf("a peer on %s pinged the VM every 0.5 s across the migration: %d sent, %d answered", third, sent, got)
			if sent == 0 || sent-got > 1 {
				t.Errorf("the peer lost %d of %d pings across the migration (at most 1 allowed)", sent-got, sent)
			}
		}
		log := vmLog(t, s, "rkm-shared")
		if strings.Contains(log, "RAKHSH-GUEST: booted") {
			t.Errorf("the guest booted again on %s:\n%s", dst, tail(log, 2000))
		}
		t.Logf("ticks: %d before, %d on the target", before, n)
		waitFor(t, "one QEMU of the VM", func() bool { return testutil.CountQEMU(v.UID) == 1 })
		waitFor(t, "the source's run directory removed", func() bool {
			_, err := os.Stat(storage.VMRunDir(c.Host(src).DataDir, v.UID))
			return os.IsNotExist(err)
		})
		vmWait(t, s, "rkm-shared", time.Minute, "Running on the target", clusterRunningOn(dst))
		if st := vmGet(t, s, "rkm-shared").Status.Stats; st == nil || len(st.PhasesTransitions) < 2 ||
			st.PhasesTransitions[len(st.PhasesTransitions)-1].Phase != v1alpha1.VMPhaseRunning ||
			st.PhasesTransitions[len(st.PhasesTransitions)-2].Phase != v1alpha1.VMPhaseMigrating {
			t.Errorf("the phase history after the migration does not end Migrating, Running: %+v", st)
		}
		waitFor(t, "the disk lease handed to the target", func() bool {
			l := diskLease(t, s, "rkm-sd")
			return l.Spec.HolderNode == dst && l.Spec.VirtualMachineUID == v.UID
		})
	})

	// (2) Local storage.
	t.Run("Local", func(t *testing.T) {
		v := clusterBoot(t, s, "rkm-local", "")
		src := v.Status.NodeName
		d := storageDisk(t, s, "rkm-ld")
		if d.Status.NodeName != src {
			t.Fatalf("the Local disk is on %q, its VM on %q", d.Status.NodeName, src)
		}
		h := c.Host(src)
		migrateConsoleType(t, h, v.UID, "echo RKMARK-4711 > /dev/vda; sync; echo RK''WROTE")
		vmWaitSerial(t, s, "rkm-local", "RKWROTE", 1)
		dst, _ := migrateTicking(t, c, s, "rkm-local", v.UID, src)
		migrateConsoleType(t, c.Host(dst), v.UID, "echo 3 > /proc/sys/vm/drop_caches; echo RKREAD $(head -c 12 /dev/vda)")
		vmWaitSerial(t, s, "rkm-local", "RKREAD RKMARK-4711", 1)
		waitFor(t, "the disk on the target node", func() bool {
			return storageDisk(t, s, "rkm-ld").Status.NodeName == dst
		})
		oldFile := storage.ClassDiskPath(h.DataDir, nil, d.UID)
		waitFor(t, "the disk file gone from the source", func() bool {
			_, err := os.Stat(oldFile)
			return os.IsNotExist(err)
		})
		if _, err := os.Stat(storage.ClassDiskPath(c.Host(dst).DataDir, nil, d.UID)); err != nil {
			t.Errorf("the disk file on the target: %v", err)
		}
		waitFor(t, "one QEMU of the VM", func() bool { return testutil.CountQEMU(v.UID) == 1 })
		waitFor(t, "the disk lease handed to the target", func() bool {
			l := diskLease(t, s, "rkm-ld")
			return l.Spec.HolderNode == dst && l.Spec.VirtualMachineUID == v.UID
		})
	})

	// (3) Local storage again, with the cluster setting serve --migration-encryption=false:
	// the agents check each other with TLS and then send the stream and the disk mirror in
	// the clear.
	t.Run("LocalUnencrypted", func(t *testing.T) {
		c.Host("h1").RestartWithArgs(t, "--migration-encryption=false")
		v := vmWait(t, s, "rkm-local", time.Minute, "Running", vmPhase(v1alpha1.VMPhaseRunning))
		src := v.Status.NodeName
		migrateConsoleType(t, c.Host(src), v.UID, "echo RKPLAIN-0815 > /dev/vda; sync; echo RKP''WROTE")
		vmWaitSerial(t, s, "rkm-local", "RKPWROTE", 1)
		dst, after := migrateTicking(t, c, s, "rkm-local", v.UID, src)
		if p := after.Status.MigrationState.Policy; p == nil || !p.Unencrypted {
			t.Errorf("the migration's policy: %+v, want unencrypted", p)
		}
		migrateConsoleType(t, c.Host(dst), v.UID, "echo 3 > /proc/sys/vm/drop_caches; echo RKPREAD $(head -c 12 /dev/vda)")
		vmWaitSerial(t, s, "rkm-local", "RKPREAD RKPLAIN-0815", 1)
		waitFor(t, "the disk on the target node", func() bool { return storageDisk(t, s, "rkm-ld").Status.NodeName == dst })
		waitFor(t, "one QEMU of the VM", func() bool { return testutil.CountQEMU(v.UID) == 1 })
	})
}

// clusterForMigration is the cluster of a migration test: the shared one, or with RKM_OWN
// set, a cluster of its own (rkm).
func clusterForMigration(t *testing.T) *Cluster {
	t.Helper()
	if os.Getenv("RKM_OWN") != "" {
		return newCluster(t, ClusterOptions{Name: "rkm"})
	}
	return sharedCluster(t)
}

// migrateTicking has the guest of name (uid, on node src) print a tick every second, moves it
// to another node, checks that the migration succeeded and that the ticks go on there, and
// returns that node and the VM after the move.
func migrateTicking(t *testing.T, c *Cluster, s *Serve, name, uid, src string) (string, *v1alpha1.VirtualMachine) {
	t.Helper()
	migrateConsoleType(t, c.Host(src), uid, clusterTickLoop)
	before := waitTick(t, s, name, 2, time.Minute)
	dst := migrateOther(c, src)
	r := s.CLI("", "vm", "migrate", name, "--to", dst, "--wait", "--timeout", "5m")
	t.Logf("migration %s -> %s: %s", src, dst, strings.TrimSpace(r.Stderr))
	if r.Code != 0 {
		t.Fatalf("vm migrate %s: exit %d: %s %s", name, r.Code, r.Stdout, r.Stderr)
	}
	after := vmGet(t, s, name)
	if m := after.Status.MigrationState; after.Status.NodeName != dst || m == nil || m.Phase != v1alpha1.MigrationPhaseSucceeded {
		t.Fatalf("after the migration: node %q (want %s), migration %+v", after.Status.NodeName, dst, m)
	}
	n := waitTick(t, s, name, before, time.Minute)
	t.Logf("ticks: %d before, %d on the target", before, n)
	return dst, after
}

// TestLiveMigrationTPMAndEFI, on the three-host cluster: a VM with a vTPM (osType Windows)
// and UEFI moves to another node while its guest runs: the guest reads the same TPM PCR
// values after the move as before (the TPM's state came with the stream: a new TPM would be
// reset), and the target's UEFI variable store ends up with the contents the source's had
// (written back from the migrated flash), not a fresh template.
func TestLiveMigrationTPMAndEFI(t *testing.T) {
	c, s, img := clusterStart(t, clusterForMigration)
	t.Cleanup(func() { s.CLI("", "delete", "vm", "rkm-efi", "--ignore-not-found", "--wait") })
	clusterApply(s, clusterVMManifest{Name: "rkm-efi", Image: img, Spec: []string{"osType: Windows", "bootloader: EFI"}}.YAML())
	v := clusterBoot(t, s, "rkm-efi", "")
	if !strings.Contains(vmLog(t, s, "rkm-efi"), "RAKHSH-GUEST: tpm=present") {
		t.Fatal("the guest sees no TPM")
	}
	src := v.Status.NodeName
	h := c.Host(src)
	pcrRe := regexp.MustCompile(`(?m)^RKPCR-([AB]) ([0-9A-Fa-f]{64}) ([0-9A-Fa-f]{64})\s*$`)
	pcrs := func(which string) string {
		for _, m := range pcrRe.FindAllStringSubmatch(vmLog(t, s, "rkm-efi"), -1) {
			if m[1] == which {
				return m[2] + " " + m[3]
			}
		}
		return ""
	}
	// The console echoes the typed command at once; its output line comes later (seconds on
	// a loaded machine): wait for the output line itself.
	migrateConsoleType(t, h, v.UID, "echo RKPCR-A $(cat /sys/class/tpm/tpm0/pcr-sha256/0) $(cat /sys/class/tpm/tpm0/pcr-sha256/7)")
	waitFor(t, "the PCR values before the migration", func() bool { return pcrs("A") != "" })
	before := pcrs("A")
	vars, err := os.ReadFile(filepath.Join(storage.VMRunDir(h.DataDir, v.UID), "efivars.fd"))
	if err != nil {
		t.Fatal(err)
	}
	dst := migrateOther(c, src)
	if r := s.CLI("", "vm", "migrate", "rkm-efi", "--to", dst, "--wait", "--timeout", "5m"); r.Code != 0 {
		t.Fatalf("vm migrate: exit %d: %s %s", r.Code, r.Stdout, r.Stderr)
	}
	migrateConsoleType(t, c.Host(dst), v.UID, "echo RKPCR-B $(cat /sys/class/tpm/tpm0/pcr-sha256/0) $(cat /sys/class/tpm/tpm0/pcr-sha256/7)")
	waitFor(t, "the PCR values after the migration", func() bool { return pcrs("B") != "" })
	if after := pcrs("B"); after != before {
		t.Errorf("TPM PCRs 0 and 7: %q before the migration, %q after", before, after)
	}
	target := filepath.Join(storage.VMRunDir(c.Host(dst).DataDir, v.UID), "efivars.fd")
	waitFor(t, "the target's UEFI variables written back from the migrated flash", func() bool {
		got, err := os.ReadFile(target)
		return err == nil && string(got) == string(vars)
	})
}

// migrateVMYAML is a VM of the guest image and one disk, pinned to host when host is not "".
func migrateVMYAML(name, img, disk, host string) string {
	return clusterVMManifest{Name: name, Host: host, Image: img, Disks: []string{disk}}.YAML()
}

// migrateAwaitTransfer starts a migration of name to dst and waits until its transfer runs;
// it returns the operation.
func migrateAwaitTransfer(t *testing.T, s *Serve, name, dst string) string {
	t.Helper()
	// A target whose link was just cut and restored may still be NotReady (its lease
	// expired meanwhile): a migration to it would fail to find a target, not mid-transfer.
	waitNodePhase(t, s.Client(), dst, v1alpha1.NodePhaseReady, 2*time.Minute)
	op := strings.TrimSpace(s.MustCLI("", "vm", "migrate", name, "--to", dst))
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		v := vmGet(t, s, name)
		if m := v.Status.MigrationState; m != nil && m.Operation == op {
			if m.Phase == v1alpha1.MigrationPhaseTransferring && m.Progress != nil && m.Progress.TransferredBytes > 0 {
				return op
			}
			if !m.Active() {
				t.Fatalf("migration %s ended before its transfer was seen: %+v", op, m)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("migration %s: no transfer within 2 minutes", op)
	return ""
}

// migrateExpectFailed waits for op to fail, and checks that the VM runs on src, that nothing
// of it is left on dst, that the guest still ticks (above tick, the last it returns), and that
// the failure's reason is one of reasons (what names the failure in the error).
func migrateExpectFailed(t *testing.T, c *Cluster, s *Serve, name, op, src, dst string, uid string, tick int, what string, reasons ...string) int {
	t.Helper()
	s.MustCLI("", "wait", "vmop", op, "--for", "phase=Failed", "--timeout", "3m")
	v := vmGet(t, s, name)
	m := v.Status.MigrationState
	if v.Status.NodeName != src || m == nil || m.Phase != v1alpha1.MigrationPhaseFailed || m.Reason == "" {
		t.Fatalf("after the failed migration: node %q, migration %+v", v.Status.NodeName, m)
	}
	t.Logf("failed as expected: %s: %s", m.Reason, m.Message)
	vmWait(t, s, name, time.Minute, "Running on the source", clusterRunningOn(src))
	waitFor(t, "nothing of the VM left on the target", func() bool {
		_, err := os.Stat(storage.VMRunDir(c.Host(dst).DataDir, uid))
		return os.IsNotExist(err) && testutil.CountQEMU(uid) == 1
	})
	tick = waitTick(t, s, name, tick, time.Minute)
	if !slices.Contains(reasons, m.Reason) {
		t.Errorf("%s: reason %s", what, m.Reason)
	}
	return tick
}

// clusterKillTargetQEMU kills the QEMU of the VM uid on h, the target of a migration in its
// transfer (what prefixes the error when there is none).
func clusterKillTargetQEMU(t *testing.T, h *ClusterHost, uid, what string) {
	t.Helper()
	pid := testutil.QEMUPIDs(h.DataDir)[uid]
	if pid == 0 {
		t.Fatalf("%sno target QEMU on %s during the transfer", what, h.Name)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

// TestLiveMigrationFailures, on a cluster of its own whose migrations are capped at 8 MiB/s
// (so that a transfer lasts several seconds): each failure in the middle of a transfer
// leaves the VM running on the source (its guest ticking on), fails the operation with a
// reason, and leaves no QEMU or run directory on the target; a retry then succeeds. The
// failures: the target's QEMU killed; the target's underlay link cut (the stream stalls,
// the source ends it); the source node's agent killed with SIGKILL and left dead until the
// operation failed (the stream goes through it: it breaks, the target fails the migration
// with StreamBroken, the source QEMU runs on), then started again (the VM is Running on the
// source); the source's agent killed and started again while the target's agent hangs (the
// new agent process records SourceAgentRestarted for the transfer it cannot follow). During
// the retry the target's migration port is probed: it speaks only TLS, with
// the target node's published certificate, and refuses clients without the source node's.
// Then, unencrypted (QEMU holds the TCP connection itself), the target's QEMU killed and the
// source's agent killed fail the same way, and a retry succeeds.
func TestLiveMigrationFailures(t *testing.T) {
	clusterLane(t)
	c := newCluster(t, ClusterOptions{Name: "rkf", ServeArgs: []string{"--migration-bandwidth", "8"}})
	s := c.Serve(t)
	img := c.GuestImage(t)
	clusterSharedDisk(s, "rkf-shared", filepath.Join(c.Shared, "rkf-storage"), "rkf-d")
	// Started on h2 (an agent-only host), then free to move.
	clusterApply(s, migrateVMYAML("rkf-vm", img, "rkf-d", "h2"))
	v := clusterBoot(t, s, "rkf-vm", "")
	clusterUnpin(s, "rkf-vm")
	migrateConsoleType(t, c.Host("h2"), v.UID, clusterTickLoop)
	tick := waitTick(t, s, "rkf-vm", 2, time.Minute)

	// The target's QEMU is killed.
	op := migrateAwaitTransfer(t, s, "rkf-vm", "h3")
	clusterKillTargetQEMU(t, c.Host("h3"), v.UID, "")
	tick = migrateExpectFailed(t, c, s, "rkf-vm", op, "h2", "h3", v.UID, tick, "target killed",
		v1alpha1.MigrationReasonTransferFailed, v1alpha1.MigrationReasonTargetFailed)

	// The target's link is cut during the transfer; it comes back after the failure.
	op = migrateAwaitTransfer(t, s, "rkf-vm", "h3")
	h3 := c.Host("h3")
	h3.LinkDown(t)
	s.MustCLI("", "wait", "vmop", op, "--for", "phase=Failed", "--timeout", "3m")
	h3.LinkUp(t)
	tick = migrateExpectFailed(t, c, s, "rkf-vm", op, "h2", "h3", v.UID, tick, "link cut", v1alpha1.MigrationReasonTransferFailed)

	// The source's agent is killed during the transfer and stays dead: the stream goes
	// through it, so the stream breaks, the target's QEMU ends and its agent fails the
	// migration; the source QEMU goes on running the guest without its agent.
	op = migrateAwaitTransfer(t, s, "rkf-vm", "h3")
	h2 := c.Host("h2")
	h2.Kill9(t)
	tick = clusterSourceAgentDead(t, s, "rkf-vm", op, h2, c.Host("h3"), v.UID, tick, "")

	// The source's agent is killed while the target's agent hangs (SIGSTOP), and started
	// again before the target's comes back: the new source agent finds the transfer its
	// predecessor started, its QEMU's stream failed, and records SourceAgentRestarted.
	op = migrateAwaitTransfer(t, s, "rkf-vm", "h3")
	h3.Pause(t)
	h2.Kill9(t)
	h2.Restart(t)
	s.MustCLI("", "wait", "vmop", op, "--for", "phase=Failed", "--timeout", "3m")
	h3.Resume(t)
	tick = migrateExpectFailed(t, c, s, "rkf-vm", op, "h2", "h3", v.UID, tick, "source agent restarted while the target hung", v1alpha1.MigrationReasonSourceRestarted)

	// A retry succeeds. During its transfer, the target's migration port speaks only TLS
	// with the node's published certificate, and refuses whoever is not the source node.
	op = migrateAwaitTransfer(t, s, "rkf-vm", "h3")
	migrateProbeTLS(t, c, s, "rkf-vm")
	s.MustCLI("", "wait", "vmop", op, "--for", "phase=Completed", "--timeout", "5m")
	if v := vmGet(t, s, "rkf-vm"); v.Status.NodeName != "h3" {
		t.Fatalf("retry: the VM is on %q, want h3", v.Status.NodeName)
	}
	waitTick(t, s, "rkf-vm", tick, time.Minute)
	if log := vmLog(t, s, "rkf-vm"); strings.Contains(log, "RAKHSH-GUEST: booted") {
		t.Errorf("the guest booted again on h3")
	}
	waitFor(t, "one QEMU of the VM", func() bool { return testutil.CountQEMU(v.UID) == 1 })
	tick = waitTick(t, s, "rkf-vm", tick, time.Minute)

	// Unencrypted (serve --migration-encryption=false), back from h3 to h2: each agent hands
	// the TCP connection itself to its QEMU, so the stream no longer passes through them.
	// The target's QEMU killed still breaks it; the source's agent killed and left dead ends
	// it through the watch connection (the target ends its QEMU: StreamBroken); a retry
	// then succeeds.
	c.Host("h1").RestartWithArgs(t, "--migration-encryption=false")
	op = migrateAwaitTransfer(t, s, "rkf-vm", "h2")
	clusterKillTargetQEMU(t, h2, v.UID, "unencrypted: ")
	tick = migrateExpectFailed(t, c, s, "rkf-vm", op, "h3", "h2", v.UID, tick, "unencrypted, target killed",
		v1alpha1.MigrationReasonTransferFailed, v1alpha1.MigrationReasonTargetFailed)
	op = migrateAwaitTransfer(t, s, "rkf-vm", "h2")
	if m := vmGet(t, s, "rkf-vm").Status.MigrationState; m == nil || m.Policy == nil || !m.Policy.Unencrypted {
		t.Fatalf("the migration is not unencrypted: %+v", m)
	}
	h3.Kill9(t)
	tick = clusterSourceAgentDead(t, s, "rkf-vm", op, h3, h2, v.UID, tick, "unencrypted, ")
	op = migrateAwaitTransfer(t, s, "rkf-vm", "h2")
	s.MustCLI("", "wait", "vmop", op, "--for", "phase=Completed", "--timeout", "5m")
	if v := vmGet(t, s, "rkf-vm"); v.Status.NodeName != "h2" {
		t.Fatalf("unencrypted retry: the VM is on %q, want h2", v.Status.NodeName)
	}
	waitTick(t, s, "rkf-vm", tick, time.Minute)
	waitFor(t, "one QEMU of the VM", func() bool { return testutil.CountQEMU(v.UID) == 1 })
}

// clusterSourceAgentDead follows the migration op of the VM name (uid) from src to dst whose
// source agent was killed during the transfer and stays dead: the operation fails with
// StreamBroken, nothing of the VM is left on dst, the source QEMU lives and its guest ticks on
// above tick (read from its serial socket); then src's agent is started again, the VM is
// Running on src and ticks on. It returns the last tick; what prefixes its messages.
func clusterSourceAgentDead(t *testing.T, s *Serve, name, op string, src, dst *ClusterHost, uid string, tick int, what string) int {
	t.Helper()
	s.MustCLI("", "wait", "vmop", op, "--for", "phase=Failed", "--timeout", "3m")
	if m := vmGet(t, s, name).Status.MigrationState; m == nil || m.Phase != v1alpha1.MigrationPhaseFailed || m.Reason != v1alpha1.MigrationReasonStreamBroken {
		t.Errorf("%ssource agent killed: migration %+v, want Failed with reason %s", what, m, v1alpha1.MigrationReasonStreamBroken)
	} else {
		t.Logf("%ssource agent killed: %s: %s", what, m.Reason, m.Message)
	}
	waitFor(t, what+"nothing of the VM left on the target while the source agent is dead", func() bool {
		_, err := os.Stat(storage.VMRunDir(dst.DataDir, uid))
		return os.IsNotExist(err) && testutil.CountQEMU(uid) == 1
	})
	if pid := testutil.QEMUPIDs(src.DataDir)[uid]; pid == 0 || syscall.Kill(pid, 0) != nil {
		t.Fatalf("the source QEMU on %s is gone after its agent was killed (pid %d)", src.Name, pid)
	}
	serialTick(t, src, uid, tick) // the guest ticks on, read from QEMU's serial socket
	src.Restart(t)
	vmWait(t, s, name, time.Minute, "Running on "+src.Name+" after its agent came back", clusterRunningOn(src.Name))
	return waitTick(t, s, name, tick, time.Minute)
}

// serialTick reads the serial socket of the VM uid's QEMU on h (its agent is not running, so
// nothing else reads it) until the guest prints a tick above above.
func serialTick(t *testing.T, h *ClusterHost, uid string, above int) {
	t.Helper()
	c, err := net.Dial("unix", filepath.Join(storage.VMRunDir(h.DataDir, uid), "serial.sock"))
	if err != nil {
		t.Fatalf("serial socket of the VM on %s: %v", h.Name, err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(time.Minute))
	var out []byte
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		out = append(out, buf[:n]...)
		if tk := lastTick(string(out)); tk > above {
			t.Logf("the guest ticks on %s without its agent: RKTICK %d", h.Name, tk)
			return
		}
		if err != nil {
			t.Fatalf("serial socket of the VM on %s: no tick above %d: %v; read:\n%s", h.Name, above, err, tail(string(out), 2000))
		}
	}
}

// migrateProbeTLS probes, from another host's namespace, the migration port the target of
// name's active migration published: a plain TCP client gets nothing but a TLS alert and
// the end of its connection, and a TLS client with a certificate of its own is refused; the
// server's certificate is the one the target's Node publishes.
func migrateProbeTLS(t *testing.T, c *Cluster, s *Serve, name string) {
	t.Helper()
	v := vmGet(t, s, name)
	m := v.Status.MigrationState
	if !m.Active() || m.Target.Port == 0 {
		t.Fatalf("no active migration with a published port: %+v", m)
	}
	addr := net.JoinHostPort(m.Target.Address, strconv.Itoa(m.Target.Port))
	var node v1alpha1.Node
	if err := c.Host("h1").Client(t).Get(context.Background(), "nodes", "", m.Target.Node, &node); err != nil {
		t.Fatal(err)
	}
	if node.Status.StreamEndpoint == nil || node.Status.StreamEndpoint.CertificateSHA256 == "" {
		t.Fatalf("node %s publishes no certificate", m.Target.Node)
	}
	fp := node.Status.StreamEndpoint.CertificateSHA256
	from := c.Host("h1").NS

	// Plain TCP, as QEMU's own migration client would speak.
	conn, err := nsDial(from, "tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatalf("plain TCP to the migration port %s: %v", addr, err)
	}
	_ = conn.SetDeadline(time.Now().Add(time.Minute))
	_, _ = conn.Write([]byte("QEVM\x00\x00\x00\x03"))
	b, err := io.ReadAll(conn)
	conn.Close()
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("plain TCP to the migration port: %v, want the connection closed", err)
	}
	if len(b) > 0 && b[0] != 0x15 { // 0x15: a TLS alert record
		t.Errorf("plain TCP to the migration port read %q, want at most a TLS alert", b)
	}

	// TLS with a certificate of its own: the server shows the node's published certificate,
	// then refuses the client's.
	own, _, err := nodestream.SelfSignedCertificate("intruder")
	if err != nil {
		t.Fatal(err)
	}
	tc, err := nodestream.PinnedTLSConfig(fp)
	if err != nil {
		t.Fatal(err)
	}
	tc.Certificates = []tls.Certificate{own}
	tc.NextProtos = []string{"rakhsh-migration"}
	raw, err := nsDial(from, "tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	tlsc := tls.Client(raw, tc)
	_ = tlsc.SetDeadline(time.Now().Add(time.Minute))
	err = tlsc.Handshake()
	if err == nil {
		_, _ = tlsc.Write([]byte("QEVM"))
		_, err = tlsc.Read(make([]byte, 1))
	}
	tlsc.Close()
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("TLS with another certificate to the migration port: %v, want the certificate refused", err)
	} else {
		t.Logf("the migration port refused a client certificate of its own: %v", err)
	}
}
