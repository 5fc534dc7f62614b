package e2e

import (
	"bytes"
	"crypto/x509"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/storage"
	"github.com/rakhsh/rakhsh/internal/testutil"
)

// winNeed fails the test with an install hint when a program is missing.
func winNeed(t *testing.T, prog, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(prog); err != nil {
		t.Fatalf("%s not found: install %s (scripts/install-deps.sh)", prog, pkg)
	}
}

// winTPMPID returns the pid of the swtpm serving the run directory runDir, or 0: it reads
// swtpm.pid and checks /proc/PID/cmdline.
func winTPMPID(runDir string) int {
	b, err := os.ReadFile(filepath.Join(runDir, "swtpm.pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if pid <= 1 {
		return 0
	}
	cmd, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil || !strings.Contains(string(cmd), "swtpm\x00socket") || !strings.Contains(string(cmd), "dir="+filepath.Join(runDir, "tpm")+",") {
		return 0
	}
	return pid
}

// winEKCert finds the first X.509 certificate stored in a TPM state file: swtpm_setup puts
// the endorsement key certificate in an NV index, which swtpm keeps in the clear in
// tpm2-00.permall. A TPM with the same certificate is the same TPM.
func winEKCert(t *testing.T, state []byte) *x509.Certificate {
	t.Helper()
	for i := 0; i+4 < len(state); i++ {
		if state[i] != 0x30 || state[i+1] != 0x82 {
			continue
		}
		n := int(state[i+2])<<8 | int(state[i+3])
		if i+4+n > len(state) {
			continue
		}
		if c, err := x509.ParseCertificate(state[i : i+4+n]); err == nil {
			return c
		}
	}
	t.Fatalf("no certificate in the TPM state (%d bytes)", len(state))
	return nil
}

func winInode(t *testing.T, p string) uint64 {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

// TestWindowsTPMAndNVRAM boots the test guest as an osType Windows VM with the EFI
// bootloader: it gets a TPM 2.0 from a per-VM swtpm, and a UEFI variable store of its own.
// Both survive a stop and start (the same TPM identity: its endorsement certificate; the same
// variable store file) and a kill -9 of serve (swtpm is re-adopted, not restarted), and both
// are gone after the VM is deleted.
func TestWindowsTPMAndNVRAM(t *testing.T) {
	sideBySide(t)
	vmGuestDir(t)
	winNeed(t, "swtpm", "swtpm")
	winNeed(t, "swtpm_setup", "swtpm-tools")
	if _, err := os.Stat("/usr/share/OVMF/OVMF_CODE_4M.fd"); err != nil {
		t.Fatal("OVMF missing: install ovmf")
	}
	s := vmServe(t)
	t.Cleanup(func() {
		for _, e := range mustReadDir(filepath.Join(s.DataDir, "run", "vms")) {
			if pid := winTPMPID(filepath.Join(s.DataDir, "run", "vms", e)); pid > 0 {
				t.Errorf("swtpm %d still runs at the end of the test: killing it", pid)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	vmSetupGuest(t, s, "win-root")
	applyDocs(s, vmDoc{Name: "win1", Policy: "AlwaysOnUnlessStoppedManually", OSType: "Windows", Boot: "EFI", Memory: "256Mi", Grace: "20",
		Refs: []string{vdRef("win-root")}}.String())
	v := vmWait(t, s, "win1", time.Minute, "Running", vmPhase(v1alpha1.VMPhaseRunning))
	uid := v.UID
	runDir := storage.VMRunDir(s.DataDir, uid)
	vmWaitSerial(t, s, "win1", "RAKHSH-GUEST: ready", 1)
	if !strings.Contains(vmLog(t, s, "win1"), "RAKHSH-GUEST: tpm=present") {
		t.Fatalf("the Windows VM has no TPM; log:\n%s", vmLog(t, s, "win1"))
	}
	tpmPID := winTPMPID(runDir)
	if tpmPID == 0 {
		t.Fatal("no swtpm runs for the VM")
	}
	cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(testutil.QEMUPIDs(s.DataDir)[uid]) + "/cmdline")
	for _, want := range []string{"base=localtime", "tpm-crb", "OVMF_CODE_4M.fd"} {
		if !strings.Contains(string(cmdline), want) {
			t.Errorf("QEMU command line lacks %q", want)
		}
	}
	nvram := filepath.Join(runDir, "efivars.fd")
	nvIno := winInode(t, nvram)

	// serve dies and comes back: the same swtpm keeps serving the same QEMU.
	s.Kill9()
	if winTPMPID(runDir) != tpmPID {
		t.Fatal("swtpm died with serve")
	}
	s.Start()
	vmWait(t, s, "win1", 30*time.Second, "Running after the restart", vmPhase(v1alpha1.VMPhaseRunning))
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(s.Logs(), "re-adopted running swtpm") && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.Contains(s.Logs(), "re-adopted running swtpm") {
		t.Error("serve did not report re-adopting swtpm")
	}
	if got := winTPMPID(runDir); got != tpmPID {
		t.Fatalf("swtpm pid %d after the restart, was %d", got, tpmPID)
	}

	// Stop: QEMU and then swtpm end; the TPM state and the variable store stay.
	s.MustCLI("", "vm", "stop", "win1", "--wait")
	stopped := vmWait(t, s, "win1", time.Minute, "Stopped", vmPhase(v1alpha1.VMPhaseStopped))
	if stopped.Status.NodeName != "" || stopped.Status.StateNodeName != v.Status.NodeName {
		t.Errorf("stopped VM: nodeName %q, stateNodeName %q; want released, its state kept on %q",
			stopped.Status.NodeName, stopped.Status.StateNodeName, v.Status.NodeName)
	}
	if !strings.Contains(vmLog(t, s, "win1"), "RAKHSH-GUEST: powerdown") {
		t.Error("the guest did not see the power button")
	}
	deadline = time.Now().Add(10 * time.Second)
	for winTPMPID(runDir) != 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if pid := winTPMPID(runDir); pid != 0 {
		t.Fatalf("swtpm %d still runs after the VM stopped", pid)
	}
	state1, err := os.ReadFile(filepath.Join(runDir, "tpm", "tpm2-00.permall"))
	if err != nil {
		t.Fatalf("TPM state after stop: %v", err)
	}
	ek1 := winEKCert(t, state1)
	t.Logf("TPM endorsement certificate: serial %s, subject %q", ek1.SerialNumber, ek1.Subject)
	vars1, err := os.ReadFile(nvram)
	if err != nil {
		t.Fatalf("NVRAM after stop: %v", err)
	}
	tmpl, _ := os.ReadFile("/usr/share/OVMF/OVMF_VARS_4M.fd")
	if bytes.Equal(vars1, tmpl) {
		t.Error("the firmware stored no variable during the boot (the store equals the template)")
	}

	// Start again: the same TPM (same endorsement certificate) and the same variable store.
	s.MustCLI("", "vm", "start", "win1", "--wait")
	vmWaitSerial(t, s, "win1", "RAKHSH-GUEST: ready", 2)
	if strings.Count(vmLog(t, s, "win1"), "RAKHSH-GUEST: tpm=present") < 2 {
		t.Error("no TPM at the second boot")
	}
	if ino := winInode(t, nvram); ino != nvIno {
		t.Errorf("the variable store was re-created from the template (inode %d -> %d)", nvIno, ino)
	}
	// A guest that ignores the power button (as Windows does with its display off): the agent
	// presses it a second time, then ends QEMU when the grace period is over.
	vmConsoleType(t, s, uid, "")
	vmConsoleType(t, s, uid, "kill $(pidof acpid) && echo ACPID-$((2*21))-GONE")
	vmWaitSerial(t, s, "win1", "ACPID-42-GONE", 1)
	s.MustCLI("", "vm", "stop", "win1", "--wait", "--timeout", "2m")
	if n := strings.Count(s.Logs(), "pressed the ACPI power button a second time (Windows)"); n != 1 {
		t.Errorf("the second power-button press was logged %d times, want 1", n)
	}
	if n := strings.Count(vmLog(t, s, "win1"), "RAKHSH-GUEST: powerdown"); n != 1 {
		t.Errorf("%d powerdown markers, want 1 (the guest ignored the button the second time)", n)
	}
	state2, err := os.ReadFile(filepath.Join(runDir, "tpm", "tpm2-00.permall"))
	if err != nil {
		t.Fatal(err)
	}
	if ek2 := winEKCert(t, state2); !ek2.Equal(ek1) {
		t.Errorf("the TPM has a new endorsement certificate after stop/start (serial %s, was %s): its state was not kept", ek2.SerialNumber, ek1.SerialNumber)
	}
	if strings.Count(s.Logs(), "manufactured a new TPM state") != 1 {
		t.Errorf("TPM state manufactured %d times, want once", strings.Count(s.Logs(), "manufactured a new TPM state"))
	}

	// Delete: the VM's directory with the TPM state and the NVRAM goes.
	s.MustCLI("", "delete", "vm", "win1", "--wait", "--timeout", "90s")
	deadline = time.Now().Add(10 * time.Second)
	for {
		_, err := os.Stat(runDir)
		if os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the VM's directory (TPM state, NVRAM) is left after delete: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func mustReadDir(dir string) []string {
	es, _ := os.ReadDir(dir)
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}

// secureBootVM is a VM of memory mem booting from disk with bootloader EFIWithSecureBoot.
func secureBootVM(name, mem, disk string) string {
	return vmDoc{Name: name, Policy: "AlwaysOnUnlessStoppedManually", Boot: "EFIWithSecureBoot", Memory: mem, Grace: "0",
		Refs: []string{vdRef(disk)}}.String()
}

// TestWinSecureBoot boots the test guest (unsigned GRUB and kernel image) with bootloader
// EFIWithSecureBoot: OVMF with SMM and the Microsoft keys enrolled refuses to load it ("Access
// Denied" on the serial console), so the guest never gets to /init. (The same disk boots with
// bootloader EFI: TestWindowsTPMAndNVRAM.) The guest's kernel behind Debian's signed shim and
// GRUB (test/guest/build-secureboot.sh) then boots with Secure Boot enforced.
func TestWinSecureBoot(t *testing.T) {
	sideBySide(t)
	vmGuestDir(t)
	if _, err := os.Stat("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"); err != nil {
		t.Fatal("OVMF Secure Boot firmware missing: install ovmf")
	}
	s := vmServe(t)
	vmSetupGuest(t, s, "sb-root")
	applyDocs(s, secureBootVM("sb1", "256Mi", "sb-root"))
	v := vmWait(t, s, "sb1", time.Minute, "Running", vmPhase(v1alpha1.VMPhaseRunning))
	cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(testutil.QEMUPIDs(s.DataDir)[v.UID]) + "/cmdline")
	for _, want := range []string{"smm=on", "OVMF_CODE_4M.secboot.fd", "property=secure,value=on"} {
		if !strings.Contains(string(cmdline), want) {
			t.Errorf("QEMU command line lacks %q", want)
		}
	}
	vmWaitSerial(t, s, "sb1", "Access Denied", 1)
	log := vmLog(t, s, "sb1")
	if strings.Contains(log, "RAKHSH-GUEST:") {
		t.Fatalf("the unsigned guest ran under Secure Boot; log:\n%s", log)
	}
	t.Logf("firmware output:\n%s", log)
	s.MustCLI("", "delete", "vm", "sb1", "--wait", "--timeout", "90s")

	// The signed chain (Microsoft-signed shim, Debian-signed GRUB and kernel) is accepted:
	// the same kernel and initramfs boot, and the kernel sees Secure Boot enabled.
	signed := filepath.Join(vmGuestDir(t), "guest-secureboot.img")
	if _, err := os.Stat(signed); err != nil {
		t.Fatalf("%v: build it with test/guest/build-secureboot.sh %s", err, vmGuestDir(t))
	}
	base := vmImageServer(t, vmGuestDir(t))
	applyDocs(s, cviDoc("guest-signed", httpSource(base+"/guest-secureboot.img")),
		diskDoc("sb-signed", "", objectRefSource("{kind: ClusterVirtualImage, name: guest-signed}")))
	s.MustCLI("", "wait", "vd", "sb-signed", "--for", "phase=Ready", "--timeout", "2m")
	// GRUB 2.06 cannot place the kernel with 256 MiB under OVMF; 320 MiB is enough.
	applyDocs(s, secureBootVM("sb2", "320Mi", "sb-signed"))
	vmWait(t, s, "sb2", time.Minute, "Running", vmPhase(v1alpha1.VMPhaseRunning))
	vmWaitSerial(t, s, "sb2", "RAKHSH-GUEST: ready", 1)
	log = vmLog(t, s, "sb2")
	if !strings.Contains(log, "secureboot: Secure boot enabled") {
		t.Errorf("the signed guest booted without Secure Boot; log:\n%s", log)
	}
	s.MustCLI("", "delete", "vm", "sb2", "--wait", "--timeout", "90s")
}
