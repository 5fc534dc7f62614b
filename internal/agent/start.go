package agent

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/qemu"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// start resolves the VM's block devices, builds the QEMU command line, launches QEMU paused,
// connects QMP and the serial console, and resumes the guest.
func (a *Agent) start(ctx context.Context, vm *v1alpha1.VirtualMachine) (runtime.Result, error) {
	key := runtime.KeyOf(vm)
	if a.facts.qemuErr != nil {
		return runtime.Result{}, a.startFailed(ctx, vm, nil, a.facts.qemuErr.Error())
	}
	runDir := a.runDir(vm.UID)
	if err := os.MkdirAll(runDir, 0o700); err != nil {
		return runtime.Result{}, err
	}
	_ = os.Chmod(runDir, 0o700)
	disks, err := a.resolveDisks(ctx, vm)
	if err != nil {
		if ctx.Err() != nil {
			return runtime.Result{}, ctx.Err()
		}
		return runtime.Result{}, a.startFailed(ctx, vm, nil, err.Error())
	}
	if d, err := a.provisioningDisk(ctx, vm, runDir); err != nil { // cloud-init/sysprep CD-ROM (provision.go)
		return runtime.Result{}, a.startFailed(ctx, vm, nil, err.Error())
	} else if d != nil {
		disks = append(disks, *d)
	}
	nics, res, err := a.prepareNICs(ctx, vm) // network.go
	if nics == nil {
		return res, err
	}
	removeRuntimeFiles(runDir)
	in0 := qemu.Input{VM: vm, Node: a.nodeFacts(), RunDir: runDir, Disks: disks, NICs: nics, PassFDs: a.qemuAs != nil}
	if err := a.applyClassCPU(ctx, vm, &in0); err != nil { // the class's CPU model (cgroup_cpumodel.go)
		return runtime.Result{}, a.startFailed(ctx, vm, nil, err.Error())
	}
	if vm.Spec.Bootloader == v1alpha1.BootloaderEFI || vm.Spec.Bootloader == v1alpha1.BootloaderEFIWithSecureBoot {
		// The UEFI variable store lives as long as the VM: in its run directory.
		in0.NVRAMPath = filepath.Join(runDir, nvramFileName)
	}
	if needsTPM(vm) {
		in0.TPMSocket = tpmSocketPath(runDir) // swtpm starts right before QEMU (tpm.go)
	}
	cfg, err := qemu.Build(in0)
	if err != nil {
		return runtime.Result{}, a.startFailed(ctx, vm, nil, err.Error())
	}
	if in0.NVRAMPath != "" && cfg.NVRAMTemplate != "" {
		replaced, err := ensureNVRAM(cfg.NVRAMTemplate, in0.NVRAMPath)
		if err != nil {
			return runtime.Result{}, a.startFailed(ctx, vm, nil, "creating the UEFI variable store: "+err.Error())
		}
		if replaced {
			a.log.Info("the bootloader changed: the UEFI variable store was made anew from its template", "vm", string(key), "template", cfg.NVRAMTemplate)
			a.rec.Event(ctx, "VirtualMachine", vm, "Normal", "NVRAMReset",
				"spec.bootloader changed: the UEFI variables were reset from "+filepath.Base(cfg.NVRAMTemplate)+" (boot entries are found again on the next boot)")
		}
	}
	if err := writeRunSpec(runDir, vm); err != nil {
		return runtime.Result{}, err
	}
	for name, data := range cfg.Files {
		if err := os.WriteFile(filepath.Join(runDir, name), data, 0o600); err != nil {
			return runtime.Result{}, err
		}
	}
	pr := vm.Status.PowerRequest
	fresh, err := a.writePhase(ctx, vm, v1alpha1.VMPhaseStarting, func(v *v1alpha1.VirtualMachine) {
		v.Status.ObservedRestartID = pr.RestartID
		setRunningCond(v, v1alpha1.ConditionFalse, ReasonStarting, "starting QEMU")
	})
	if err != nil {
		return runtime.Result{}, ignoreGone(err)
	}
	if fresh.Status.NodeName != a.cfg.NodeName || !wantsRunning(fresh.Status.PowerRequest) {
		return runtime.Result{}, nil
	}
	started := time.Now()
	if in0.TPMSocket != "" {
		if err := a.startTPM(ctx, runDir); err != nil {
			return runtime.Result{}, a.startFailed(ctx, vm, nil, "starting the TPM: "+err.Error())
		}
	}
	in, err := a.launch(key, vm.UID, runDir, cfg)
	if err != nil {
		return runtime.Result{}, a.startFailed(ctx, vm, nil, fmt.Sprintf("starting %s: %v", cfg.Binary, err))
	}
	a.mu.Lock()
	a.insts[vm.UID] = in
	a.mu.Unlock()
	a.startWatchers(in)
	if err := a.attach(ctx, in, 30*time.Second); err != nil {
		select {
		case <-in.exited:
		case <-time.After(time.Second):
		}
		if in.isExited() {
			return runtime.Result{}, a.startFailed(ctx, vm, in, "QEMU exited during start-up")
		}
		return runtime.Result{}, a.startFailed(ctx, vm, in, "QEMU did not open its QMP socket: "+err.Error())
	}
	mon := in.monitor()
	if mon == nil {
		return runtime.Result{}, a.startFailed(ctx, vm, in, "QEMU closed its QMP socket")
	}
	if cfg.LateVNC {
		vmon, ok := mon.(qemu.VNCMonitor)
		if !ok {
			return runtime.Result{}, a.startFailed(ctx, vm, in, "starting VNC: the monitor cannot pass descriptors")
		}
		if err := cfg.StartVNC(ctx, vmon); err != nil {
			return runtime.Result{}, a.startFailed(ctx, vm, in, "starting VNC: "+err.Error())
		}
	}
	if err := a.enforceLimits(ctx, vm, in); err != nil { // cgroup limits and pinning (cgroup.go)
		// A CPU share below 100 % or dedicated cores are what the VM's class sells: without
		// them the VM does not start. A VM that asks for neither only loses its memory cap,
		// so it runs, and the node says why it is not confined.
		if lim := computeLimits(vm, in.accel != "kvm"); lim.cpuQuotaUsec > 0 || lim.dedicated > 0 {
			return runtime.Result{}, a.startFailed(ctx, vm, in, "applying the VM's CPU and memory limits: "+err.Error())
		}
		a.log.Warn("the VM runs without its cgroup memory limit", "vm", string(key), "err", err)
		a.rec.Event(ctx, "VirtualMachine", vm, "Warning", "LimitsNotApplied",
			"the VM runs without a cgroup memory limit on node "+a.cfg.NodeName+": "+err.Error())
	}
	phase := v1alpha1.VMPhaseRunning
	if pr.State == v1alpha1.PowerStatePaused {
		phase = v1alpha1.VMPhasePause
	} else if err := mon.Cont(ctx); err != nil {
		return runtime.Result{}, a.startFailed(ctx, vm, in, "cont: "+err.Error())
	}
	a.log.Info("VM started", "vm", string(key), "pid", in.pid, "accel", cfg.Accelerator, "took", time.Since(started).Round(time.Millisecond))
	v, err := a.markRunning(ctx, vm, in, phase)
	if err != nil {
		return runtime.Result{}, ignoreGone(err)
	}
	a.rec.Event(ctx, "VirtualMachine", v, "Normal", "Started", fmt.Sprintf("QEMU started on node %s (pid %d, %s)", a.cfg.NodeName, in.pid, cfg.Accelerator))
	return runtime.Result{}, nil
}

// startFailed stops what a failed start left running and records StartFailed with QEMU's
// stderr tail.
func (a *Agent) startFailed(ctx context.Context, vm *v1alpha1.VirtualMachine, in *instance, msg string) error {
	runDir := a.runDir(vm.UID)
	if in != nil {
		// Give QEMU a moment to finish writing its error, then make sure it is gone.
		select {
		case <-in.exited:
		case <-time.After(2 * time.Second):
		}
		if !in.isExited() {
			_ = signalVM(in.pid, in.uid, syscall.SIGKILL)
			select {
			case <-in.exited:
			case <-time.After(a.cfg.KillTimeout):
			}
		}
		msg += qemuErrorSummary(runDir)
		a.noteQEMUFailure(ctx, vm, qemuLogTail(runDir))
		a.forget(in)
	}
	removeRuntimeFiles(runDir)
	a.log.Warn("VM failed to start", "vm", vm.Namespace+"/"+vm.Name, "err", msg)
	return ignoreGone(a.recordExit(ctx, vm, exitRecord{Reason: v1alpha1.ExitStartFailed, Message: msg}))
}

// defaultNICs gives the VM one user-mode (isolated, restrict=on) interface until the network
// controllers provide taps on bridges. Its MAC is the one in status.networks when known, else
// derived from the VM uid.
func defaultNICs(vm *v1alpha1.VirtualMachine) []qemu.NIC {
	mac := ""
	if len(vm.Status.Networks) > 0 {
		mac = vm.Status.Networks[0].MACAddress
	}
	if mac == "" {
		h := sha256.Sum256([]byte(vm.UID))
		mac = fmt.Sprintf("52:54:00:%02x:%02x:%02x", h[0], h[1], h[2])
	}
	return []qemu.NIC{{ID: "main", MAC: mac}}
}

// startedWithoutVNC says whether the QEMU process pid was started with -vnc none (VNC is then
// handed over by the agent after start).
func startedWithoutVNC(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	return err == nil && strings.Contains("\x00"+string(b), "\x00-vnc\x00none\x00")
}
