package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/qemu"
	"github.com/rakhsh/rakhsh/internal/qemu/accel"
)

// kvmUnreliableFile, in the data dir's run directory, remembers that a VM died of a KVM error
// under --accelerator auto, so that a restarted agent does not start VMs under KVM again
// while the QEMU version and the kernel are the same.
const kvmUnreliableFile = "kvm-unreliable.json"

type kvmUnreliable struct {
	QEMUVersion   string        `json:"qemuVersion"`
	KernelVersion string        `json:"kernelVersion"`
	Message       string        `json:"message"`
	Time          v1alpha1.Time `json:"time"`
}

// chooseAccelerator decides, once at start, whether VMs run under KVM (package accel), and
// records the choice.
func (a *Agent) chooseAccelerator(ctx context.Context) {
	mode := a.cfg.Accelerator
	closed := "" // why the QEMU user cannot open the KVM device
	if a.qemuAs != nil {
		closed = a.kvmDeviceClosedTo(a.qemuAs)
	}
	var c accel.Choice
	switch {
	case a.facts.qemuErr != nil:
		c = accel.Choice{Mode: mode, Reason: accel.ReasonProbeFailed, Message: a.facts.qemuErr.Error()}
	case mode == accel.ModeAuto && closed != "":
		// The probe runs as root; VMs run as the QEMU user, who must be able to open the device.
		c = accel.Choice{Mode: mode, Reason: accel.ReasonNoDevice, Message: closed + "; QEMU emulates the CPU in software (TCG)"}
	case mode == accel.ModeAuto && a.rememberedKVMFailure() != nil:
		m := a.rememberedKVMFailure()
		c = accel.Choice{Mode: mode, Reason: accel.ReasonFailedAtRuntime,
			Message: fmt.Sprintf("%s (since %s; remembered in %s until QEMU or the kernel changes)",
				m.Message, m.Time.UTC().Format(time.RFC3339), a.kvmUnreliablePath())}
	default:
		key := a.probeKey(mode)
		if r := a.rememberedChoice(key); r != nil {
			c = r.Choice
			c.Message += fmt.Sprintf(" (probed at %s; kept in %s until the host reboots or QEMU or the KVM device changes)",
				r.Time.UTC().Format(time.RFC3339), a.acceleratorPath())
			break
		}
		dir := filepath.Join(a.cfg.DataDir, "run")
		c = accel.Prober{Binary: a.facts.qemu.QEMUBinary, Dir: dir, DevKVM: a.kvmDevice()}.Choose(ctx, mode)
		if c.Conclusive && ctx.Err() == nil {
			a.rememberChoice(key, c)
		}
	}
	a.accelMu.Lock()
	a.choice = c
	a.accelMu.Unlock()
	if c.KVM {
		a.log.Info("VMs run under KVM", "mode", c.Mode, "reason", c.Reason, "detail", c.Message)
	} else {
		a.log.Warn("VMs run under TCG (software emulation)", "mode", c.Mode, "reason", c.Reason, "detail", c.Message)
	}
}

// acceleratorFile, in the data dir's run directory, keeps the last conclusive probe result, so
// that a restarted agent re-adopts its VMs and registers at once instead of probing again
// (up to ten seconds on a host whose KVM is broken). The result is reused only on the same
// boot of the host, with the same QEMU binary, KVM device, probe payload and agent version.
const acceleratorFile = "accelerator.json"

// probeIdentity names what a probe result depends on.
type probeIdentity struct {
	Mode         accel.Mode `json:"mode"`
	BootID       string     `json:"bootID"`
	QEMU         string     `json:"qemu"`
	KVMDevice    string     `json:"kvmDevice"`
	Payload      string     `json:"payload"`
	AgentVersion string     `json:"agentVersion"`
}

type rememberedChoice struct {
	Identity probeIdentity `json:"identity"`
	Choice   accel.Choice  `json:"choice"`
	Time     v1alpha1.Time `json:"time"`
}

func (a *Agent) acceleratorPath() string {
	return filepath.Join(a.cfg.DataDir, "run", acceleratorFile)
}

func (a *Agent) kvmDevice() string {
	if a.cfg.KVMDevice != "" {
		return a.cfg.KVMDevice
	}
	return "/dev/kvm"
}

// probeKey identifies this host, QEMU and KVM device; an empty BootID means none could be
// read, and then nothing is remembered.
func (a *Agent) probeKey(mode accel.Mode) probeIdentity {
	id := probeIdentity{Mode: mode, Payload: accel.PayloadDigest(), AgentVersion: Version}
	if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
		id.BootID = strings.TrimSpace(string(b))
	}
	bin := a.facts.qemu.QEMUBinary
	if p, err := exec.LookPath(bin); err == nil {
		bin = p
	}
	id.QEMU = fileIdentity(bin)
	id.KVMDevice = fileIdentity(a.kvmDevice())
	return id
}

// fileIdentity is a file's path, device, inode, size and change time; "" when it is missing.
func fileIdentity(path string) string {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return ""
	}
	return fmt.Sprintf("%s dev=%d ino=%d rdev=%d size=%d ctime=%d.%09d", path, st.Dev, st.Ino, st.Rdev, st.Size, st.Ctim.Sec, st.Ctim.Nsec)
}

func (a *Agent) rememberedChoice(key probeIdentity) *rememberedChoice {
	if key.BootID == "" || key.QEMU == "" {
		return nil
	}
	b, err := os.ReadFile(a.acceleratorPath())
	if err != nil {
		return nil
	}
	var r rememberedChoice
	if json.Unmarshal(b, &r) != nil || r.Identity != key || !r.Choice.Conclusive {
		return nil
	}
	return &r
}

func (a *Agent) rememberChoice(key probeIdentity, c accel.Choice) {
	if key.BootID == "" || key.QEMU == "" {
		return
	}
	b, err := json.MarshalIndent(rememberedChoice{Identity: key, Choice: c, Time: a.now()}, "", "  ")
	if err == nil {
		tmp := a.acceleratorPath() + ".tmp"
		if err = os.WriteFile(tmp, b, 0o600); err == nil {
			err = os.Rename(tmp, a.acceleratorPath())
		}
	}
	if err != nil {
		a.log.Warn("could not keep the accelerator probe's result", "err", err)
	}
}

func (a *Agent) kvmUnreliablePath() string {
	return filepath.Join(a.cfg.DataDir, "run", kvmUnreliableFile)
}

// rememberedKVMFailure returns the recorded KVM failure of this QEMU and kernel, if any.
func (a *Agent) rememberedKVMFailure() *kvmUnreliable {
	b, err := os.ReadFile(a.kvmUnreliablePath())
	if err != nil {
		return nil
	}
	var m kvmUnreliable
	if json.Unmarshal(b, &m) != nil || m.QEMUVersion != a.facts.qemu.QEMUVersion || m.KernelVersion != a.facts.kernelVersion {
		return nil
	}
	return &m
}

// accelerator returns the node's current choice.
func (a *Agent) accelerator() accel.Choice {
	a.accelMu.Lock()
	defer a.accelMu.Unlock()
	return a.choice
}

// kvm says whether VMs start under KVM now.
func (a *Agent) kvm() bool { return a.accelerator().KVM }

// nodeFacts are the host facts for the QEMU command line, with the current accelerator.
func (a *Agent) nodeFacts() qemu.NodeFacts {
	c := a.accelerator()
	f := a.facts.qemu
	f.KVM, f.HypervRefused = c.KVM, c.HypervRefused
	if !c.KVM {
		f.HypervRefused = nil
	}
	return f
}

// noteQEMUFailure looks at what a failed or crashed QEMU wrote. When it is a KVM failure on
// a node that chose KVM by itself (--accelerator auto), the node switches to TCG for later
// starts, remembers it, and says so on the Node and in an event of the VM. It returns true
// when it switched.
func (a *Agent) noteQEMUFailure(ctx context.Context, vm *v1alpha1.VirtualMachine, qemuOutput string) bool {
	if !accel.HasKVMFailure(qemuOutput) {
		return false
	}
	lines := accel.ErrorLines(qemuOutput, 3)
	a.accelMu.Lock()
	c := a.choice
	if c.Mode != accel.ModeAuto || !c.KVM {
		a.accelMu.Unlock()
		return false
	}
	now := a.now()
	msg := fmt.Sprintf("VM %s/%s died under KVM: %s; VMs start under TCG (software emulation) from now on", vm.Namespace, vm.Name, lines)
	a.choice = accel.Choice{Mode: c.Mode, Reason: accel.ReasonFailedAtRuntime, Message: msg}
	a.accelMu.Unlock()
	rec := kvmUnreliable{QEMUVersion: a.facts.qemu.QEMUVersion, KernelVersion: a.facts.kernelVersion, Message: msg, Time: now}
	if b, err := json.Marshal(rec); err == nil {
		if err := os.WriteFile(a.kvmUnreliablePath(), b, 0o600); err != nil {
			a.log.Warn("could not remember that KVM is unreliable", "err", err)
		}
	}
	a.log.Error("KVM failed a guest: the node switches to TCG", "vm", vm.Namespace+"/"+vm.Name, "qemu", lines)
	a.rec.Event(ctx, "VirtualMachine", vm, "Warning", "KVMUnreliable",
		"QEMU died under KVM on node "+a.cfg.NodeName+" ("+lines+"); the node now uses software emulation (TCG) and the VM starts again under it")
	if err := a.heartbeat(ctx); err != nil {
		a.log.Warn("heartbeat after the switch to TCG failed", "err", err)
	}
	return true
}

// kvmCondition is the Node's KVM condition for the current choice.
func (a *Agent) kvmCondition() v1alpha1.Condition {
	c := a.accelerator()
	st := v1alpha1.ConditionFalse
	if c.KVM {
		st = v1alpha1.ConditionTrue
	}
	msg := c.Message
	if !strings.HasPrefix(msg, "--accelerator ") {
		msg = fmt.Sprintf("--accelerator %s: %s", c.Mode, msg)
	}
	return v1alpha1.Condition{Type: v1alpha1.NodeConditionKVM, Status: st, Reason: c.Reason, Message: msg}
}

// emulationCondition is a running VM's SoftwareEmulation condition.
func (a *Agent) emulationCondition(kvm bool) v1alpha1.Condition {
	if kvm {
		return v1alpha1.Condition{Type: v1alpha1.VMConditionSoftwareEmulation, Status: v1alpha1.ConditionFalse, Reason: "KVM", Message: "hardware virtualization (KVM)"}
	}
	c := a.accelerator()
	return v1alpha1.Condition{Type: v1alpha1.VMConditionSoftwareEmulation, Status: v1alpha1.ConditionTrue, Reason: "NoKVM",
		Message: "the node uses software emulation (TCG), much slower than KVM: " + c.Message}
}

// kvmDeviceClosedTo says why the user as cannot open the KVM device, or "" when it can (or
// when there is no device: the probe says so itself).
func (a *Agent) kvmDeviceClosedTo(as *runAs) string {
	dev := a.kvmDevice()
	fi, err := os.Stat(dev)
	if err != nil || canOpenAs(as.cred, dev) {
		return ""
	}
	owner := ""
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		owner = fmt.Sprintf(", owner %d:%d", st.Uid, st.Gid)
	}
	return fmt.Sprintf("%s is present, but the QEMU user %s cannot open it (mode %04o%s): give it to group %s with mode 0660, as udev does (chgrp %s %s; chmod 0660 %s)",
		dev, as.name, fi.Mode().Perm(), owner, kvmGroup, kvmGroup, dev, dev)
}
