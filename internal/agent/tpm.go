package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// The virtual TPM of a VM is one `swtpm socket --tpm2` process, started by the agent just
// before QEMU and stopped right after it. Its files are in the VM's run directory:
//
//	tpm/              the TPM state (tpm2-00.permall: seeds, NV indexes, the EK certificate);
//	                  it lives as long as the VM, across stops and starts, and is removed with
//	                  the run directory when the VM is deleted
//	tpm.sock          the control socket QEMU connects to (-tpmdev emulator)
//	swtpm.pid         written by swtpm; with /proc/PID/cmdline it identifies the process
//	swtpm.log         swtpm's output (and swtpm_setup's on the first start)
//
// On the first start the state is manufactured with swtpm_setup, as libvirt does: an
// endorsement key with a certificate from the node's local CA (swtpm-localca), a platform
// certificate, and the sha256 PCR bank active. swtpm runs with --terminate, so it also ends
// by itself when QEMU closes the connection. After an agent restart a running swtpm is found
// again through its pid file, like QEMU, and stopped once its QEMU is gone.
const (
	tpmStateDirName = "tpm"
	tpmSocketName   = "tpm.sock"
	tpmPIDName      = "swtpm.pid"
	tpmLogName      = "swtpm.log"
	// tpmStateFile is the file swtpm keeps a TPM 2.0's permanent state in.
	tpmStateFile = "tpm2-00.permall"
)

// needsTPM says whether the VM gets a TPM 2.0: Windows guests do (Windows 11 requires one,
// BitLocker uses it).
func needsTPM(vm *v1alpha1.VirtualMachine) bool { return vm.Spec.OSType == v1alpha1.OSTypeWindows }

// tpmSocketPath is the control socket of the VM's swtpm.
func tpmSocketPath(runDir string) string { return filepath.Join(runDir, tpmSocketName) }

// startTPM starts the VM's swtpm (manufacturing its state on the first start) and waits for
// its control socket. A swtpm left over from an earlier start is stopped first.
func (a *Agent) startTPM(ctx context.Context, runDir string) error {
	if strings.ContainsRune(runDir, ',') {
		// swtpm has no escape for ',' in its option values.
		return fmt.Errorf("the run directory %q contains ',', which swtpm cannot take", runDir)
	}
	swtpm, err := exec.LookPath("swtpm")
	if err != nil {
		return fmt.Errorf("swtpm not found: install swtpm and swtpm-tools for VMs with a TPM (osType Windows)")
	}
	stopTPM(runDir)
	state := filepath.Join(runDir, tpmStateDirName)
	if err := os.MkdirAll(state, 0o700); err != nil {
		return err
	}
	logPath := filepath.Join(runDir, tpmLogName)
	_ = os.Rename(logPath, logPath+".1")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	if _, err := os.Stat(filepath.Join(state, tpmStateFile)); errors.Is(err, os.ErrNotExist) {
		if err := manufactureTPM(ctx, state, logf); err != nil {
			return err
		}
		a.log.Info("manufactured a new TPM state", "dir", state)
	}
	sock := tpmSocketPath(runDir)
	_ = os.Remove(sock)
	args := []string{"socket", "--tpm2",
		"--tpmstate", "dir=" + state + ",mode=0600",
		"--ctrl", "type=unixio,path=" + sock + ",mode=0600",
		"--pid", "file=" + filepath.Join(runDir, tpmPIDName),
		"--log", "fd=1,level=1",
		"--terminate",
	}
	proc, err := startDetached(swtpm, args, runDir, logf, nil)
	if err != nil {
		return fmt.Errorf("starting swtpm: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_, _ = proc.Wait() // reap; swtpm is not tied to the agent's lifetime
		close(exited)
	}()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for {
		// No probe connection: with --terminate swtpm would end when the probe closes.
		if fi, err := os.Stat(sock); err == nil && fi.Mode()&os.ModeSocket != 0 && pidOK(runDir, proc.Pid) {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("swtpm exited during start-up: %s", tail(readFile(logPath), 600))
		case <-deadline.C:
			_ = proc.Kill()
			return fmt.Errorf("swtpm did not open its control socket within 10s")
		case <-ctx.Done():
			_ = proc.Kill()
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// pidOK reports whether swtpm wrote its pid file with pid.
func pidOK(runDir string, pid int) bool { return readTPMPID(runDir) == pid }

func readFile(p string) []byte {
	b, _ := os.ReadFile(p)
	return b
}

// manufactureTPM creates a TPM 2.0 state in dir with swtpm_setup.
func manufactureTPM(ctx context.Context, dir string, log *os.File) error {
	setup, err := exec.LookPath("swtpm_setup")
	if err != nil {
		return fmt.Errorf("swtpm_setup not found: install swtpm-tools for VMs with a TPM (osType Windows)")
	}
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(cctx, setup, "--tpm2", "--tpmstate", dir,
		"--create-ek-cert", "--create-platform-cert", "--lock-nvram", "--not-overwrite", "--pcr-banks", "sha256")
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Run(); err != nil {
		log.Sync()
		return fmt.Errorf("swtpm_setup: %v", err)
	}
	return nil
}

// readTPMPID reads RUNDIR/swtpm.pid.
func readTPMPID(runDir string) int { return readPIDFile(filepath.Join(runDir, tpmPIDName)) }

// isTPMProcess reports whether pid is a live swtpm serving the TPM state of runDir.
func isTPMProcess(pid int, runDir string) bool { return liveProcess(pid, tpmMatch(runDir)) }

// tpmMatch accepts the command line of the swtpm serving the TPM state of runDir.
func tpmMatch(runDir string) func(argv []string) bool {
	want := "dir=" + filepath.Join(runDir, tpmStateDirName) + ","
	return func(argv []string) bool {
		if filepath.Base(argv[0]) != "swtpm" {
			return false
		}
		for _, a := range argv[1:] {
			if strings.HasPrefix(a, want) {
				return true
			}
		}
		return false
	}
}

// findTPM returns the pid of the swtpm of runDir, or 0.
func findTPM(runDir string) int {
	return livePID(filepath.Join(runDir, tpmPIDName), tpmMatch(runDir))
}

// stopTPM ends the swtpm of runDir, if one runs (SIGTERM, SIGKILL after 3 s), and removes its
// socket and pid file. The TPM state stays. Callers make sure QEMU is gone.
func stopTPM(runDir string) {
	if pid := findTPM(runDir); pid > 0 {
		_ = syscall.Kill(pid, syscall.SIGTERM)
		for i := 0; i < 150 && isTPMProcess(pid, runDir); i++ {
			time.Sleep(20 * time.Millisecond)
		}
		if isTPMProcess(pid, runDir) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	_ = os.Remove(tpmSocketPath(runDir))
	_ = os.Remove(filepath.Join(runDir, tpmPIDName))
}

// adoptTPM logs a swtpm found running next to a re-adopted QEMU; it is stopped after that
// QEMU like one this agent started.
func (a *Agent) adoptTPM(runDir, vm string) {
	if pid := findTPM(runDir); pid > 0 {
		a.log.Info("re-adopted running swtpm", "vm", vm, "pid", pid)
	}
}
