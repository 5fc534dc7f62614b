package e2e

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/storage"
	"github.com/rakhsh/rakhsh/internal/testutil"
)

// vmBootTimeout bounds QEMU start to the guest's ready marker under TCG. A liveness bound:
// the guest boots in about 3 s alone, but beside the suite on 2 loaded cores (load 10-15) a
// boot was seen to take over 3 minutes.
const vmBootTimeout = 5 * time.Minute

// vmGuestDir returns the directory of the test guest built by test/guest/build.sh.
func vmGuestDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("RAKHSH_GUEST_DIR")
	if dir == "" {
		wd, _ := os.Getwd()
		dir = filepath.Join(wd, "..", "guest", "out")
	}
	if _, err := os.Stat(filepath.Join(dir, "guest.qcow2")); err != nil {
		skipOrFail(t, "test guest missing (%v): build it with test/guest/build.sh %s", err, dir)
	}
	for _, tool := range []string{"qemu-system-x86_64", "qemu-img", "prlimit"} {
		if _, err := exec.LookPath(tool); err != nil {
			skipOrFail(t, "%s missing: apt-get install qemu-system-x86 qemu-utils util-linux", tool)
		}
	}
	return dir
}

// vmServe starts `rakhsh serve` for VM tests; at the end it stops it and then kills (by
// pid, verified by the VM uid on the command line) any QEMU its agent left running.
func vmServe(t *testing.T, extra ...string) *Serve {
	t.Helper()
	return vmServeMode(t, ServeProcess, extra...)
}

// vmServeMode is vmServe with the server run as mode says.
func vmServeMode(t *testing.T, mode ServeMode, extra ...string) *Serve {
	t.Helper()
	s := startServe(t, mode, extra...)
	t.Cleanup(func() {
		s.Stop()
		for uid, pid := range testutil.QEMUPIDs(s.DataDir) {
			t.Errorf("QEMU of %s (pid %d) still runs at the end of the test: killing it", uid, pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	return s
}

// vmImageServer serves the test guest over HTTP on 127.0.0.1.
func vmImageServer(t *testing.T, dir string) string {
	srv := httptest.NewServer(http.FileServer(http.Dir(dir)))
	t.Cleanup(srv.Close)
	return srv.URL
}

func vmGet(t *testing.T, s *Serve, name string) *v1alpha1.VirtualMachine {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var v v1alpha1.VirtualMachine
	if err := s.Client().Get(ctx, "virtualmachines", "default", name, &v); err != nil {
		if client.IsNotFound(err) {
			return nil
		}
		t.Fatal(err)
	}
	return &v
}

// vmWait polls the VM until cond holds (v is nil once the VM is gone).
func vmWait(t *testing.T, s *Serve, name string, timeout time.Duration, what string, cond func(v *v1alpha1.VirtualMachine) bool) *v1alpha1.VirtualMachine {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var v *v1alpha1.VirtualMachine
	for time.Now().Before(deadline) {
		v = vmGet(t, s, name)
		if cond(v) {
			return v
		}
		time.Sleep(100 * time.Millisecond)
	}
	b, _ := json.MarshalIndent(v, "", "  ")
	t.Fatalf("VM %s not %s within %s; last seen:\n%s", name, what, timeout, b)
	return nil
}

func vmPhase(p v1alpha1.VirtualMachinePhase) func(v *v1alpha1.VirtualMachine) bool {
	return func(v *v1alpha1.VirtualMachine) bool { return v != nil && v.Status.Phase == p }
}

// vmLog returns the VM's serial log through `rakhsh logs vm NAME`.
func vmLog(t *testing.T, s *Serve, name string) string {
	t.Helper()
	r := s.CLI("", "logs", "vm", name)
	return r.Stdout
}

// vmWaitSerial waits until marker appears at least n times in the VM's serial log.
func vmWaitSerial(t *testing.T, s *Serve, name, marker string, n int) {
	t.Helper()
	deadline := time.Now().Add(vmBootTimeout)
	for time.Now().Before(deadline) {
		if strings.Count(vmLog(t, s, name), marker) >= n {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("serial log of %s: %q not seen %d times within %s; log:\n%s", name, marker, n, vmBootTimeout, vmLog(t, s, name))
}

// vmWaitSerialMatch waits until re matches at least n times in the VM's serial log: for a
// marker with values, which must be read whole (a line can arrive in pieces).
func vmWaitSerialMatch(t *testing.T, s *Serve, name string, re *regexp.Regexp, n int) {
	t.Helper()
	deadline := time.Now().Add(vmBootTimeout)
	for time.Now().Before(deadline) {
		if len(re.FindAllString(vmLog(t, s, name), -1)) >= n {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("serial log of %s: %s not matched %d times within %s; log:\n%s", name, re, n, vmBootTimeout, vmLog(t, s, name))
}

// vmConsoleType types a line on the guest's serial console through the agent's console
// socket (the guest has a root shell on ttyS0).
func vmConsoleType(t *testing.T, s *Serve, uid, line string) {
	t.Helper()
	c, err := net.Dial("unix", filepath.Join(storage.VMRunDir(s.DataDir, uid), "console.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(line + "\n")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
}

// vmManifest is a VM with one disk and the given run policy.
func vmManifest(name, disk, policy, memory string) string {
	return vmDoc{Name: name, Policy: policy, Memory: memory, Grace: "30", Refs: []string{vdRef(disk)}}.String()
}

func vmDiskManifest(name string) string {
	return diskDoc(name, "1Gi", objectRefSource("{kind: ClusterVirtualImage, name: guest}"))
}

// vmSetupGuest imports the test guest as ClusterVirtualImage "guest" and clones the named
// disks from it.
func vmSetupGuest(t *testing.T, s *Serve, disks ...string) {
	t.Helper()
	base := vmImageServer(t, vmGuestDir(t))
	m := cviDoc("guest", httpSource(base+"/guest.qcow2"))
	for _, d := range disks {
		m += "---\n" + vmDiskManifest(d)
	}
	s.MustCLI(m, "apply", "-f", "-")
	for _, d := range disks {
		s.MustCLI("", "wait", "vd", d, "--for", "phase=Ready", "--timeout", "2m")
	}
}

// TestVMLifecycle drives VMs of a real `rakhsh serve` through the CLI: start from an
// imported image, stop, start, restart, pause, resume, force stop, guest-initiated power-off
// under both AlwaysOn policies, and deletion.
func TestVMLifecycle(t *testing.T) { eachServeMode(t, testVMLifecycle) }

func testVMLifecycle(t *testing.T, mode ServeMode) {
	vmGuestDir(t)
	s := vmServeMode(t, mode)
	vmSetupGuest(t, s, "root", "root2")
	s.MustCLI(vmManifest("vm1", "root", "AlwaysOnUnlessStoppedManually", "256Mi"), "apply", "-f", "-")
	v := vmWait(t, s, "vm1", time.Minute, "Running", vmPhase(v1alpha1.VMPhaseRunning))
	uid := v.UID
	if v.Status.NodeName == "" || v.Status.PowerRequest == nil || v.Status.PowerRequest.State != v1alpha1.PowerStateRunning {
		t.Fatalf("running VM status: %+v", v.Status)
	}
	if c := v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionBlockDevicesReady); c == nil || c.Status != "True" {
		t.Fatalf("BlockDevicesReady = %+v", c)
	}
	if v.Status.Stats == nil || v.Status.Stats.LaunchTimeDuration == nil || v.Status.Stats.LaunchTimeDuration.VirtualMachineStarting == "" {
		t.Errorf("no launch timings: %+v", v.Status.Stats)
	}
	// GuestReady: the guest's own code writes to the serial console.
	s.MustCLI("", "wait", "vm", "vm1", "--for", "condition=GuestReady", "--timeout", "2m")
	vmWaitSerial(t, s, "vm1", "RAKHSH-GUEST: ready", 1)
	// Least privilege: the guest boots under a QEMU that runs as an unprivileged user and
	// got its disk and sockets as descriptors: that user cannot open the disk files by path.
	requireRunsAs(t, "QEMU", testutil.QEMUPIDs(s.DataDir)[uid], qemuUser)
	var disks []string
	_ = filepath.WalkDir(filepath.Join(s.DataDir, "pools"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			disks = append(disks, p)
		}
		return nil
	})
	if len(disks) == 0 {
		t.Fatalf("no disk files under %s/pools", s.DataDir)
	}
	requireDeniedTo(t, qemuUser, append(disks, filepath.Join(storage.VMRunDir(s.DataDir, uid), "qemu.log"))...)
	if out := s.MustCLI("", "get", "vm", "vm1"); !strings.Contains(out, "Running") {
		t.Errorf("rakhsh get vm:\n%s", out)
	}

	// Graceful stop: the guest sees the ACPI power button and powers off.
	opName := strings.TrimSpace(s.MustCLI("", "vm", "stop", "vm1", "--wait"))
	if !strings.HasPrefix(opName, "vm1-stop-") {
		t.Errorf("rakhsh vm stop printed %q, want the operation name", opName)
	}
	v = vmWait(t, s, "vm1", 30*time.Second, "Stopped", vmPhase(v1alpha1.VMPhaseStopped))
	if v.Status.LastExit == nil || v.Status.LastExit.Reason != v1alpha1.ExitStopped {
		t.Errorf("lastExit after stop: %+v", v.Status.LastExit)
	}
	if c := v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionGuestReady); c != nil {
		t.Errorf("a stopped VM has GuestReady %+v", c)
	}
	if !strings.Contains(vmLog(t, s, "vm1"), "RAKHSH-GUEST: powerdown") {
		t.Errorf("the guest did not see the power button; log:\n%s", vmLog(t, s, "vm1"))
	}
	if n := testutil.CountQEMU(uid); n != 0 {
		t.Fatalf("%d QEMU processes after stop", n)
	}

	// Start, restart (a new boot), pause, resume.
	s.MustCLI("", "vm", "start", "vm1", "--wait")
	vmWaitSerial(t, s, "vm1", "RAKHSH-GUEST: ready", 2)
	pid := testutil.QEMUPIDs(s.DataDir)[uid]
	s.MustCLI("", "vm", "restart", "vm1", "--wait")
	vmWaitSerial(t, s, "vm1", "RAKHSH-GUEST: ready", 3)
	if p := testutil.QEMUPIDs(s.DataDir)[uid]; p == pid || p == 0 {
		t.Errorf("graceful restart kept pid %d (now %d)", pid, p)
	}
	s.MustCLI("", "vm", "pause", "vm1", "--wait")
	s.MustCLI("", "vm", "resume", "vm1", "--wait")

	// A forced restart resets the machine in place; GuestReady goes False at the reset and
	// True again when the guest writes anew.
	pid = testutil.QEMUPIDs(s.DataDir)[uid]
	resetAt := time.Now()
	s.MustCLI("", "vm", "restart", "vm1", "--force", "--wait")
	vmWaitSerial(t, s, "vm1", "RAKHSH-GUEST: ready", 4)
	vmWait(t, s, "vm1", time.Minute, "GuestReady again after the reset", func(v *v1alpha1.VirtualMachine) bool {
		c := v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionGuestReady)
		return c != nil && c.Status == v1alpha1.ConditionTrue && c.LastTransitionTime != nil && !c.LastTransitionTime.Before(resetAt)
	})
	if p := testutil.QEMUPIDs(s.DataDir)[uid]; p != pid {
		t.Errorf("forced restart changed the pid %d -> %d", pid, p)
	}

	// Force stop: no guest shutdown.
	before := strings.Count(vmLog(t, s, "vm1"), "RAKHSH-GUEST: powerdown")
	s.MustCLI("", "vm", "stop", "vm1", "--force", "--wait")
	vmWait(t, s, "vm1", 30*time.Second, "Stopped", vmPhase(v1alpha1.VMPhaseStopped))
	if n := strings.Count(vmLog(t, s, "vm1"), "RAKHSH-GUEST: powerdown"); n != before {
		t.Errorf("a forced stop went through the guest (%d -> %d powerdown markers)", before, n)
	}
	if n := testutil.CountQEMU(uid); n != 0 {
		t.Fatalf("%d QEMU processes after force stop", n)
	}

	// The guest powers itself off: AlwaysOnUnlessStoppedManually leaves it stopped.
	s.MustCLI("", "vm", "start", "vm1", "--wait")
	vmWaitSerial(t, s, "vm1", "RAKHSH-GUEST: ready", 5)
	vmConsoleType(t, s, uid, "")
	vmConsoleType(t, s, uid, "poweroff -f")
	v = vmWait(t, s, "vm1", time.Minute, "Stopped after the guest powered off", vmPhase(v1alpha1.VMPhaseStopped))
	if v.Status.LastExit == nil || v.Status.LastExit.Reason != v1alpha1.ExitGuestShutdown {
		t.Fatalf("lastExit after guest power-off: %+v", v.Status.LastExit)
	}
	time.Sleep(3 * time.Second)
	if v = vmGet(t, s, "vm1"); v.Status.Phase != v1alpha1.VMPhaseStopped || testutil.CountQEMU(uid) != 0 {
		t.Fatalf("AlwaysOnUnlessStoppedManually restarted a VM the guest powered off: %+v", v.Status)
	}

	// AlwaysOn: the guest powers off, the VM comes back.
	s.MustCLI(vmManifest("vm2", "root2", "AlwaysOn", "256Mi"), "apply", "-f", "-")
	v2 := vmWait(t, s, "vm2", time.Minute, "Running", vmPhase(v1alpha1.VMPhaseRunning))
	vmWaitSerial(t, s, "vm2", "RAKHSH-GUEST: ready", 1)
	vmConsoleType(t, s, v2.UID, "")
	vmConsoleType(t, s, v2.UID, "poweroff -f")
	vmWaitSerial(t, s, "vm2", "RAKHSH-GUEST: ready", 2)
	v2 = vmWait(t, s, "vm2", time.Minute, "Running again", vmPhase(v1alpha1.VMPhaseRunning))
	if v2.Status.LastExit == nil || v2.Status.LastExit.Reason != v1alpha1.ExitGuestShutdown {
		t.Errorf("AlwaysOn lastExit: %+v", v2.Status.LastExit)
	}
	// A Stop operation is refused for AlwaysOn.
	r := s.CLI("", "vm", "stop", "vm2", "--wait")
	if r.Code == 0 || !strings.Contains(r.Stderr, "AlwaysOn") {
		t.Errorf("rakhsh vm stop of an AlwaysOn VM: exit %d, stderr %q", r.Code, r.Stderr)
	}

	// Deletion stops QEMU and removes the run directory; the disks stay.
	s.MustCLI("", "delete", "vm", "vm1", "vm2", "--wait", "--timeout", "90s")
	for _, u := range []string{uid, v2.UID} {
		if n := testutil.CountQEMU(u); n != 0 {
			t.Errorf("%d QEMU processes of %s after delete", n, u)
		}
		// vm2 ran: its agent removes the directory before the object goes. vm1 was stopped
		// (on no node): the agent removes its directory when it sees the object gone.
		deadline := time.Now().Add(10 * time.Second)
		for {
			_, err := os.Stat(storage.VMRunDir(s.DataDir, u))
			if os.IsNotExist(err) {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("run directory of %s left after delete (%v)", u, err)
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	s.MustCLI("", "get", "vd", "root", "root2")
}

// TestVMKill9 kills `rakhsh serve` with SIGKILL ten times while three VMs run: the VMs keep
// running, the restarted agent re-adopts the same QEMU processes (no second QEMU ever), the
// phases stay Running, and the VMs are still controllable afterwards.
func TestVMKill9(t *testing.T) {
	sideBySide(t)
	vmGuestDir(t)
	s := vmServe(t)
	names := []string{"k1", "k2", "k3"}
	var disks []string
	for _, n := range names {
		disks = append(disks, n+"-disk")
	}
	vmSetupGuest(t, s, disks...)
	for i, n := range names {
		s.MustCLI(vmManifest(n, disks[i], "AlwaysOnUnlessStoppedManually", "192Mi"), "apply", "-f", "-")
	}
	uids := map[string]string{}
	for _, n := range names {
		uids[n] = vmWait(t, s, n, time.Minute, "Running", vmPhase(v1alpha1.VMPhaseRunning)).UID
	}
	pids := testutil.QEMUPIDs(s.DataDir)
	if len(pids) != 3 {
		t.Fatalf("QEMU pids: %v", pids)
	}
	for cycle := 1; cycle <= 10; cycle++ {
		s.Kill9()
		for uid, pid := range pids {
			if !testutil.IsQEMUOf(pid, uid) {
				t.Fatalf("cycle %d: QEMU %d of %s died with serve", cycle, pid, uid)
			}
		}
		s.Start()
		deadline := time.Now().Add(5 * time.Second)
		for _, n := range names {
			vmWait(t, s, n, time.Until(deadline)+100*time.Millisecond, "Running after restart", vmPhase(v1alpha1.VMPhaseRunning))
		}
		time.Sleep(time.Second)
		for _, n := range names {
			uid := uids[n]
			if got := testutil.QEMUPIDs(s.DataDir)[uid]; got != pids[uid] {
				t.Fatalf("cycle %d: %s runs as pid %d, was %d", cycle, n, got, pids[uid])
			}
			if c := testutil.CountQEMU(uid); c != 1 {
				t.Fatalf("cycle %d: %d QEMU processes for %s", cycle, c, n)
			}
			if v := vmGet(t, s, n); v.Status.Phase != v1alpha1.VMPhaseRunning {
				t.Fatalf("cycle %d: %s is %s", cycle, n, v.Status.Phase)
			}
		}
	}
	// The re-adopted VMs still boot to the end, log, and obey.
	for _, n := range names {
		vmWaitSerial(t, s, n, "RAKHSH-GUEST: ready", 1)
	}
	s.MustCLI("", "vm", "stop", "k1", "--wait")
	if !strings.Contains(vmLog(t, s, "k1"), "RAKHSH-GUEST: powerdown") {
		t.Errorf("k1 did not get the power button after re-adoption")
	}
	s.MustCLI("", "delete", "vm", "k1", "k2", "k3", "--wait", "--timeout", "90s")
	for n, uid := range uids {
		if c := testutil.CountQEMU(uid); c != 0 {
			t.Errorf("%d QEMU processes of %s after delete", c, n)
		}
	}
}

// TestVMCannotStart covers VMs that must not or cannot start: a missing disk (Pending, with
// a condition naming it), a VM larger than any node (Pending, Scheduled=False saying why),
// and a disk QEMU refuses (StartFailed, with QEMU's stderr in the condition).
func TestVMCannotStart(t *testing.T) { eachServeMode(t, testVMCannotStart) }

func testVMCannotStart(t *testing.T, mode ServeMode) {
	vmGuestDir(t)
	s := vmServeMode(t, mode)

	s.MustCLI(vmManifest("nodisk", "missing", "AlwaysOnUnlessStoppedManually", "128Mi"), "apply", "-f", "-")
	v := vmWait(t, s, "nodisk", 30*time.Second, "BlockDevicesReady=False", func(v *v1alpha1.VirtualMachine) bool {
		c := v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionBlockDevicesReady)
		return c != nil && c.Status == "False"
	})
	c := v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionBlockDevicesReady)
	if !strings.Contains(c.Message, `VirtualDisk "missing" not found`) || v.Status.Phase != v1alpha1.VMPhasePending || v.Status.NodeName != "" {
		t.Fatalf("VM with a missing disk: phase %s node %q condition %+v", v.Status.Phase, v.Status.NodeName, c)
	}
	// The same for a missing image.
	s.MustCLI(`apiVersion: virtualization.rakhsh.io/v1alpha1
kind: VirtualMachine
metadata: {name: noimage}
spec:
  runPolicy: AlwaysOnUnlessStoppedManually
  cpu: {cores: 1}
  memory: {size: 128Mi}
  blockDeviceRefs:
  - {kind: ClusterVirtualImage, name: not-published}
`, "apply", "-f", "-")
	v = vmWait(t, s, "noimage", 30*time.Second, "BlockDevicesReady=False", func(v *v1alpha1.VirtualMachine) bool {
		c := v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionBlockDevicesReady)
		return c != nil && c.Status == "False"
	})
	c = v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionBlockDevicesReady)
	if !strings.Contains(c.Message, `ClusterVirtualImage "not-published" not found`) || v.Status.Phase != v1alpha1.VMPhasePending || v.Status.NodeName != "" {
		t.Fatalf("VM with a missing image: phase %s node %q condition %+v", v.Status.Phase, v.Status.NodeName, c)
	}
	s.MustCLI("", "delete", "vm", "noimage")

	vmSetupGuest(t, s, "big-disk", "bad-disk")
	s.MustCLI(vmManifest("huge", "big-disk", "AlwaysOnUnlessStoppedManually", "64Ti"), "apply", "-f", "-")
	// Until the node has registered (its accelerator probe can take ten seconds on a host
	// whose KVM is broken), the VM is unschedulable for want of a node: wait for the memory.
	v = vmWait(t, s, "huge", 90*time.Second, "Scheduled=False for memory", func(v *v1alpha1.VirtualMachine) bool {
		c := v1alpha1.FindCondition(v.Status.Conditions, "Scheduled")
		return c != nil && c.Status == "False" && !strings.Contains(c.Message, "no node is registered")
	})
	if c := v1alpha1.FindCondition(v.Status.Conditions, "Scheduled"); !strings.Contains(c.Message, "insufficient memory") || v.Status.Phase != v1alpha1.VMPhasePending {
		t.Fatalf("VM too big: phase %s, Scheduled %+v", v.Status.Phase, c)
	}

	// Mark the disk's qcow2 corrupt (incompatible feature bit 1): qemu-img still reads it,
	// QEMU refuses to open it read-write.
	d := struct {
		Metadata v1alpha1.ObjectMeta `json:"metadata"`
	}{}
	if err := s.Client().Get(context.Background(), "virtualdisks", "default", "bad-disk", &d); err != nil {
		t.Fatal(err)
	}
	vmMarkCorrupt(t, storage.DiskPath(s.DataDir, "default", d.Metadata.UID))
	s.MustCLI(vmManifest("bad", "bad-disk", "AlwaysOnUnlessStoppedManually", "128Mi"), "apply", "-f", "-")
	v = vmWait(t, s, "bad", time.Minute, "StartFailed", func(v *v1alpha1.VirtualMachine) bool {
		c := v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionRunning)
		return c != nil && c.Reason == v1alpha1.ExitStartFailed
	})
	c = v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionRunning)
	if v.Status.LastExit == nil || v.Status.LastExit.Reason != v1alpha1.ExitStartFailed || !strings.Contains(c.Message, "Image is corrupt") {
		t.Fatalf("failed start: Running condition %+v, lastExit %+v", c, v.Status.LastExit)
	}
	// The policy retries with backoff: the failure count grows, and while the VM waits the
	// RestartBackoff condition says when the next attempt comes and why the last one failed.
	v = vmWait(t, s, "bad", time.Minute, "a second failed start, waiting", func(v *v1alpha1.VirtualMachine) bool {
		c := v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionRestartBackoff)
		return v.Status.LastExit != nil && v.Status.LastExit.Count >= 2 && c != nil && c.Status == v1alpha1.ConditionTrue
	})
	bo := v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionRestartBackoff)
	if bo.Reason != "CrashLoopBackOff" || !strings.Contains(bo.Message, "restart at ") || !strings.Contains(bo.Message, "Image is corrupt") {
		t.Errorf("RestartBackoff = %+v", bo)
	}
	desc := s.MustCLI("", "describe", "vm", "bad")
	for _, w := range []string{"RestartBackoff", "CrashLoopBackOff", "Image is corrupt"} {
		if !strings.Contains(desc, w) {
			t.Errorf("describe vm bad lacks %q:\n%s", w, desc)
		}
	}
	if ev := s.MustCLI("", "get", "events"); !strings.Contains(ev, "Image is corrupt") {
		t.Errorf("events lack QEMU's error:\n%s", ev)
	}
	// QEMU's own log of this and the previous run (a retry that is starting right now has
	// an empty log of its own for a moment: look again).
	for deadline := time.Now().Add(15 * time.Second); ; {
		ql := s.MustCLI("", "logs", "vm", "bad", "--qemu")
		if strings.Count(ql, "Image is corrupt") >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("logs --qemu does not hold both runs' error:\n%s", ql)
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	// A stop ends the loop and the crash noise.
	s.MustCLI("", "vm", "stop", "bad", "--wait")
	v = vmWait(t, s, "bad", 30*time.Second, "stopped for good", func(v *v1alpha1.VirtualMachine) bool {
		return v.Status.Phase == v1alpha1.VMPhaseStopped && v.Status.NodeName == "" &&
			v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionRestartBackoff) == nil
	})
	if ex := v.Status.LastExit; ex == nil || ex.Reason != v1alpha1.ExitStopped || ex.Count != 0 || ex.Message != "" {
		t.Errorf("lastExit after a stop of a crash-looping VM: %+v", ex)
	}
	s.MustCLI("", "delete", "vm", "nodisk", "huge", "bad", "--wait", "--timeout", "90s")
	if pids := testutil.QEMUPIDs(s.DataDir); len(pids) != 0 {
		t.Fatalf("QEMU left: %v", pids)
	}
}

// vmMarkCorrupt sets the "corrupt" incompatible feature bit of a qcow2 v3 header.
func vmMarkCorrupt(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [8]byte
	if _, err := f.ReadAt(b[:], 72); err != nil {
		t.Fatal(err)
	}
	binary.BigEndian.PutUint64(b[:], binary.BigEndian.Uint64(b[:])|2)
	if _, err := f.WriteAt(b[:], 72); err != nil {
		t.Fatal(err)
	}
}

// skipOrFail skips a test whose tool or file is missing, except in CI (CI set), where
// everything is installed and a missing piece is a failure.
func skipOrFail(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}
