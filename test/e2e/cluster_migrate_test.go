package e2e

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/storage"
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

var tickRe = regexp.MustCompile(`(?m)^RKTICK (\d+)\s*$`)

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
	t.Fatalf("serial log of %s: no tick above %d within %s; log tail:\n%s", name, above, limit, tail(vmLog(t, s, name), 2000))
	return 0
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
// file is gone from the source; (3) the target's QEMU killed during the transfer leaves the
// VM running on the source, the operation Failed with a reason, no process or file left on
// the target, and a retry succeeds.
func TestLiveMigration(t *testing.T) {
	c := sharedCluster(t)
	s := c.Serve(t)
	img := c.GuestImage(t)
	t.Cleanup(func() {
		for _, vm := range []string{"rkm-shared", "rkm-local"} {
			s.CLI("", "delete", "vm", vm, "--ignore-not-found", "--wait")
		}
		for _, d := range []string{"rkm-sd", "rkm-ld"} {
			s.CLI("", "delete", "vd", d, "--ignore-not-found", "--wait")
		}
		s.CLI("", "delete", "storageclass", "rkm-shared", "--ignore-not-found")
	})
	s.MustCLI(fmt.Sprintf("apiVersion: virtualization.rakhsh.io/v1alpha1\nkind: StorageClass\nmetadata: {name: rkm-shared}\nspec:\n  type: Shared\n  shared: {path: %s}\n",
		filepath.Join(c.Shared, "rkm-storage")), "apply", "-f", "-")
	vmYAML := func(name, disk string) string {
		return fmt.Sprintf(`apiVersion: virtualization.rakhsh.io/v1alpha1
kind: VirtualMachine
metadata: {name: %s}
spec:
  runPolicy: AlwaysOn
  cpu: {cores: 1}
  memory: {size: 256Mi}
  terminationGracePeriodSeconds: 5
  blockDeviceRefs:
  - {kind: ClusterVirtualImage, name: %s}
  - {kind: VirtualDisk, name: %s}
`, name, img, disk)
	}
	s.MustCLI(`apiVersion: virtualization.rakhsh.io/v1alpha1
kind: VirtualDisk
metadata: {name: rkm-sd}
spec:
  persistentVolumeClaim: {size: 64Mi, storageClassName: rkm-shared}
---
apiVersion: virtualization.rakhsh.io/v1alpha1
kind: VirtualDisk
metadata: {name: rkm-ld}
spec:
  persistentVolumeClaim: {size: 64Mi}
`, "apply", "-f", "-")
	s.MustCLI("", "wait", "vd", "rkm-sd", "--for", "phase=Ready", "--timeout", "2m")
	s.MustCLI("", "wait", "vd", "rkm-ld", "--for", "phase=Ready", "--timeout", "2m")
	s.MustCLI(vmYAML("rkm-shared", "rkm-sd")+"---\n"+vmYAML("rkm-local", "rkm-ld"), "apply", "-f", "-")

	// (1) Shared storage.
	t.Run("Shared", func(t *testing.T) {
		v := vmWait(t, s, "rkm-shared", vmBootTimeout, "Running", vmPhase(v1alpha1.VMPhaseRunning))
		vmWaitSerial(t, s, "rkm-shared", "RAKHSH-GUEST: ready", 1)
		src := v.Status.NodeName
		migrateConsoleType(t, c.Host(src), v.UID, "(i=0; while true; do i=$((i+1)); echo RKTICK $i; sleep 1; done) &")
		before := waitTick(t, s, "rkm-shared", 2, time.Minute)
		dst := migrateOther(c, src)
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
		if fmt.Sprint(after.Status.Networks) != fmt.Sprint(v.Status.Networks) || after.Status.IPAddress != v.Status.IPAddress {
			t.Errorf("networks changed: before %+v %s, after %+v %s", v.Status.Networks, v.Status.IPAddress, after.Status.Networks, after.Status.IPAddress)
		}
		n := waitTick(t, s, "rkm-shared", before, time.Minute)
		log := vmLog(t, s, "rkm-shared")
		if strings.Contains(log, "RAKHSH-GUEST: booted") {
			t.Errorf("the guest booted again on %s:\n%s", dst, tail(log, 2000))
		}
		t.Logf("ticks: %d before, %d on the target", before, n)
		waitFor(t, "one QEMU of the VM", func() bool { return vmCountQEMU(v.UID) == 1 })
		waitFor(t, "the source's run directory removed", func() bool {
			_, err := os.Stat(storage.VMRunDir(c.Host(src).DataDir, v.UID))
			return os.IsNotExist(err)
		})
		vmWait(t, s, "rkm-shared", time.Minute, "Running on the target", func(v *v1alpha1.VirtualMachine) bool {
			return v.Status.Phase == v1alpha1.VMPhaseRunning && v.Status.NodeName == dst
		})
	})

	// (2) Local storage, then (3) a failure and a retry.
	t.Run("Local", func(t *testing.T) {
		v := vmWait(t, s, "rkm-local", vmBootTimeout, "Running", vmPhase(v1alpha1.VMPhaseRunning))
		vmWaitSerial(t, s, "rkm-local", "RAKHSH-GUEST: ready", 1)
		src := v.Status.NodeName
		d := storageDisk(t, s, "rkm-ld")
		if d.Status.NodeName != src {
			t.Fatalf("the Local disk is on %q, its VM on %q", d.Status.NodeName, src)
		}
		h := c.Host(src)
		migrateConsoleType(t, h, v.UID, "echo RKMARK-4711 > /dev/vda; sync; echo RKWROTE")
		vmWaitSerial(t, s, "rkm-local", "RKWROTE", 1)
		migrateConsoleType(t, h, v.UID, "(i=0; while true; do i=$((i+1)); echo RKTICK $i; sleep 1; done) &")
		before := waitTick(t, s, "rkm-local", 2, time.Minute)
		dst := migrateOther(c, src)
		r := s.CLI("", "vm", "migrate", "rkm-local", "--to", dst, "--wait", "--timeout", "5m")
		t.Logf("migration %s -> %s: %s", src, dst, strings.TrimSpace(r.Stderr))
		if r.Code != 0 {
			t.Fatalf("vm migrate: exit %d: %s %s", r.Code, r.Stdout, r.Stderr)
		}
		after := vmGet(t, s, "rkm-local")
		if after.Status.NodeName != dst {
			t.Fatalf("after the migration the VM is on %q, want %s", after.Status.NodeName, dst)
		}
		n := waitTick(t, s, "rkm-local", before, time.Minute)
		t.Logf("ticks: %d before, %d on the target", before, n)
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
		waitFor(t, "one QEMU of the VM", func() bool { return vmCountQEMU(v.UID) == 1 })

		// (3) The target's QEMU dies during the transfer: the VM stays where it is.
		src, dst = dst, migrateOther(c, dst)
		op := strings.TrimSpace(s.MustCLI("", "vm", "migrate", "rkm-local", "--to", dst))
		killed := false
		deadline := time.Now().Add(2 * time.Minute)
		for !killed && time.Now().Before(deadline) {
			cur := vmGet(t, s, "rkm-local")
			if m := cur.Status.MigrationState; m != nil && m.ID != "" && (m.Phase == v1alpha1.MigrationPhaseTransferring || m.Phase == v1alpha1.MigrationPhaseTargetReady) {
				for uid, pid := range vmQEMUPIDs(c.Host(dst).DataDir) {
					if uid == v.UID {
						_ = syscall.Kill(pid, syscall.SIGKILL)
						killed = true
						t.Logf("killed the target QEMU (pid %d) in phase %s", pid, m.Phase)
					}
				}
			}
			if m := cur.Status.MigrationState; m != nil && !m.Active() && m.Operation == op {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if !killed {
			t.Fatalf("never saw the target QEMU of the migration to %s", dst)
		}
		s.MustCLI("", "wait", "vmop", op, "--for", "phase=Failed", "--timeout", "2m")
		failed := vmGet(t, s, "rkm-local")
		if failed.Status.NodeName != src || failed.Status.MigrationState.Phase != v1alpha1.MigrationPhaseFailed {
			t.Fatalf("after the failed migration: node %q, migration %+v", failed.Status.NodeName, failed.Status.MigrationState)
		}
		t.Logf("failed as expected: %s: %s", failed.Status.MigrationState.Reason, failed.Status.MigrationState.Message)
		tk := waitTick(t, s, "rkm-local", n, time.Minute)
		vmWait(t, s, "rkm-local", time.Minute, "Running on the source", func(v *v1alpha1.VirtualMachine) bool {
			return v.Status.Phase == v1alpha1.VMPhaseRunning && v.Status.NodeName == src
		})
		waitFor(t, "nothing left on the failed target", func() bool {
			_, err1 := os.Stat(storage.VMRunDir(c.Host(dst).DataDir, v.UID))
			_, err2 := os.Stat(storage.ClassDiskPath(c.Host(dst).DataDir, nil, d.UID))
			return os.IsNotExist(err1) && os.IsNotExist(err2) && vmCountQEMU(v.UID) == 1
		})
		// A retry succeeds.
		s.MustCLI("", "vm", "migrate", "rkm-local", "--to", dst, "--wait", "--timeout", "5m")
		waitTick(t, s, "rkm-local", tk, time.Minute)
		migrateConsoleType(t, c.Host(dst), v.UID, "echo 3 > /proc/sys/vm/drop_caches; echo RKREAD2 $(head -c 12 /dev/vda)")
		vmWaitSerial(t, s, "rkm-local", "RKREAD2 RKMARK-4711", 1)
	})
}
