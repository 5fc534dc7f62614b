// Package accel chooses how QEMU runs guest code on a host: KVM or TCG (software emulation).
//
// A usable /dev/kvm is not proof that KVM runs guests. Nested virtualization is often
// incomplete: the outer hypervisor may refuse MSRs that `-cpu host` sets, refuse Hyper-V
// registers, kill guests with "KVM internal error ... emulation failure" on code it cannot
// emulate (real mode, big real mode, string I/O), or run them hundreds of times slower than
// software emulation. So, in mode auto, the choice is made by booting real guest code under
// KVM: SeaBIOS to its disk boot, then a boot sector (probe.S) that goes from real mode through
// protected mode to long mode, works on 16 MiB of memory, and comes back to real mode for a
// BIOS call. Any failure, or a run much slower than the same code under TCG, means TCG.
//
// The Windows Hyper-V enlightenments are probed the same way, and only those the host kernel
// allows are used.
package accel

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Mode is the operator's choice of accelerator (--accelerator).
type Mode string

// Modes.
const (
	// ModeAuto uses KVM when the probe boots real guest code under it, and TCG otherwise; a
	// KVM failure of a VM at run time switches the node to TCG.
	ModeAuto Mode = "auto"
	// ModeKVM always uses KVM; VMs fail with QEMU's own error where it does not work.
	ModeKVM Mode = "kvm"
	// ModeTCG always uses software emulation.
	ModeTCG Mode = "tcg"
)

// ParseMode checks an --accelerator value.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(strings.ToLower(strings.TrimSpace(s))); m {
	case ModeAuto, ModeKVM, ModeTCG:
		return m, nil
	case "":
		return ModeAuto, nil
	}
	return "", fmt.Errorf("accelerator %q: want auto, kvm or tcg", s)
}

// Reasons of a Choice, as they appear on the Node's KVM condition.
const (
	ReasonProbed          = "ProbeBooted"     // auto: the probe booted under KVM
	ReasonForced          = "Forced"          // --accelerator kvm
	ReasonDisabled        = "Disabled"        // --accelerator tcg
	ReasonNoDevice        = "NoDevice"        // no usable /dev/kvm
	ReasonProbeFailed     = "ProbeFailed"     // auto: the probe failed or was too slow under KVM
	ReasonFailedAtRuntime = "FailedAtRuntime" // auto: a VM's QEMU died of a KVM error
)

// Choice is the accelerator a node uses and why.
type Choice struct {
	Mode Mode
	// KVM says VMs run under KVM; otherwise under TCG.
	KVM bool
	// Reason is one of the Reason constants; Message says it in a sentence.
	Reason, Message string
	// HypervRefused are the Hyper-V enlightenments (of HypervEnlightenments) that the host
	// refuses; Windows guests get the others under KVM.
	HypervRefused []string
	// Conclusive says the choice rests on a probe that ran to its end (not on an error
	// starting it, nor on a missing device), so it holds for as long as the host, its
	// /dev/kvm and the QEMU binary stay the same.
	Conclusive bool
}

// HypervEnlightenments are the Hyper-V features a Windows guest gets under KVM when the host
// allows them all, in an order where each comes after those it depends on (hv_synic needs
// hv_vpindex; hv_stimer needs hv_synic and hv_time; hv_tlbflush and hv_ipi need hv_vpindex).
var HypervEnlightenments = []string{
	"hv_relaxed", "hv_vapic", "hv_spinlocks=0x1fff", "hv_vpindex", "hv_runtime", "hv_time",
	"hv_synic", "hv_stimer", "hv_frequencies", "hv_reset", "hv_tlbflush", "hv_ipi",
}

//go:embed probe.bin
var payload []byte

// PayloadDigest identifies the probe payload (a short SHA-256), so that a remembered probe
// result is not reused once the payload changes.
func PayloadDigest() string {
	sum := sha256.Sum256(payload)
	return hex.EncodeToString(sum[:8])
}

// The probe's markers (see probe.S).
const (
	banner     = "RAKHSH-PROBE:"
	allStages  = "rplwub"
	exitPassed = 67 // isa-debug-exit: (0x21 << 1) | 1
)

var stageNames = map[byte]string{
	'r': "real mode", 'p': "protected mode", 'l': "long mode", 'w': "the memory test in long mode",
	'u': "the return to big real mode", 'b': "the BIOS call after the round trip",
}

// Prober boots the probe payload with a QEMU binary.
type Prober struct {
	// Binary is qemu-system-x86_64 (or a path to it).
	Binary string
	// Dir is a scratch directory for the boot disk and the firmware log; default a new
	// temporary directory.
	Dir string
	// Timeout bounds one boot of the payload; default 10 s.
	Timeout time.Duration
	// DevKVM is the KVM device to check before probing; default /dev/kvm.
	DevKVM string
	// SlowFactor: a KVM run that takes longer than SlowFactor times the TCG run (and more
	// than a second) counts as failed; default 4.
	SlowFactor float64
}

// Run is the outcome of one boot of the payload.
type Run struct {
	// Stages are the markers the payload printed ("rplwub" when it passed).
	Stages string
	// Firmware says SeaBIOS wrote its log (it ran up to loading the boot sector or further).
	Firmware bool
	// ExitCode is QEMU's exit status (-1 when it was killed).
	ExitCode int
	// Stderr is the tail of QEMU's standard error.
	Stderr string
	// Took is the wall time of the run.
	Took time.Duration
	// KVMError says QEMU printed a KVM internal error (it would otherwise wait paused).
	KVMError bool
	// TimedOut says the run was killed at the timeout.
	TimedOut bool
}

// Passed says the payload ran to its end.
func (r Run) Passed() bool { return r.ExitCode == exitPassed && r.Stages == allStages }

// Explain says in a sentence where the run stopped and what QEMU said.
func (r Run) Explain() string {
	var where string
	switch {
	case r.Passed():
		return fmt.Sprintf("the probe ran to its end in %s", r.Took.Round(time.Millisecond))
	case r.Stages == "" && !r.Firmware:
		where = "QEMU stopped before the firmware ran"
	case r.Stages == "":
		where = "the firmware ran but did not start the probe's boot sector"
	default:
		last := r.Stages[len(r.Stages)-1]
		where = "the probe's guest code stopped after " + stageNames[last]
		if last == 'X' {
			where = "the probe's guest code failed a check after " + stageNames[r.Stages[len(r.Stages)-2]]
		}
	}
	if r.TimedOut {
		where += fmt.Sprintf(" (killed after %s)", r.Took.Round(time.Millisecond))
	}
	if r.Stderr != "" {
		where += ": " + r.Stderr
	} else if r.ExitCode >= 0 && !r.TimedOut {
		where += fmt.Sprintf(": QEMU exited with status %d", r.ExitCode)
	}
	return where
}

func (p *Prober) defaults() {
	if p.Binary == "" {
		p.Binary = "qemu-system-x86_64"
	}
	if p.Timeout <= 0 {
		p.Timeout = 10 * time.Second
	}
	if p.DevKVM == "" {
		p.DevKVM = "/dev/kvm"
	}
	if p.SlowFactor <= 0 {
		p.SlowFactor = 4
	}
}

// Choose decides the accelerator for mode. It never fails: every problem becomes a reason.
func (p Prober) Choose(ctx context.Context, mode Mode) Choice {
	p.defaults()
	c := Choice{Mode: mode}
	switch mode {
	case ModeTCG:
		c.Reason, c.Message = ReasonDisabled, "--accelerator tcg: QEMU emulates the CPU in software"
		return c
	case ModeKVM:
		c.KVM, c.Reason = true, ReasonForced
		if err := p.checkDevice(); err != nil {
			c.Message = "--accelerator kvm, but " + err.Error() + ": VMs will fail to start"
			return c
		}
		r, err := p.Boot(ctx, "kvm", "host")
		switch {
		case err != nil:
			c.Message = "--accelerator kvm; the probe could not run: " + err.Error()
		case r.Passed():
			c.HypervRefused = p.hypervRefused(ctx)
			c.Message = "--accelerator kvm; " + r.Explain() + " under KVM" + refusedNote(c.HypervRefused)
			c.Conclusive = true
		default:
			c.Message = "--accelerator kvm, although under KVM " + r.Explain()
			c.Conclusive = true
		}
		return c
	}
	c.Mode = ModeAuto
	if err := p.checkDevice(); err != nil {
		c.Reason, c.Message = ReasonNoDevice, err.Error()+": QEMU emulates the CPU in software (TCG)"
		return c
	}
	r, err := p.Boot(ctx, "kvm", "host")
	if err != nil {
		c.Reason, c.Message = ReasonProbeFailed, "the KVM probe could not run: "+err.Error()
		return c
	}
	c.Conclusive = true
	if !r.Passed() {
		c.Reason, c.Message = ReasonProbeFailed, "/dev/kvm is present, but under KVM "+r.Explain()+"; QEMU emulates the CPU in software (TCG)"
		return c
	}
	if r.Took > time.Second {
		// Nested KVM can run guests, yet hundreds of times slower than emulation (every
		// first touch of a page a round trip through the outer hypervisor).
		t, err := p.Boot(ctx, "tcg", "max")
		if err == nil && t.Passed() && float64(r.Took) > p.SlowFactor*float64(t.Took) {
			c.Reason = ReasonProbeFailed
			c.Message = fmt.Sprintf("/dev/kvm is present, but the probe took %s under KVM and %s under TCG; QEMU emulates the CPU in software (TCG)",
				r.Took.Round(time.Millisecond), t.Took.Round(time.Millisecond))
			return c
		}
	}
	c.KVM, c.Reason = true, ReasonProbed
	c.HypervRefused = p.hypervRefused(ctx)
	c.Message = "under KVM " + r.Explain() + " (firmware, real, protected and long mode)" + refusedNote(c.HypervRefused)
	return c
}

func refusedNote(refused []string) string {
	if len(refused) == 0 {
		return ""
	}
	return "; Hyper-V enlightenments the host refuses are left out: " + strings.Join(refused, ", ")
}

func (p Prober) checkDevice() error {
	f, err := os.OpenFile(p.DevKVM, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("%s is not usable (%v)", p.DevKVM, errors.Unwrap(err))
	}
	return f.Close()
}

// hypervRefused returns the Hyper-V enlightenments the host refuses: none when the probe
// boots with them all, else those that do not boot when added one by one in dependency order.
func (p Prober) hypervRefused(ctx context.Context) []string {
	try := func(flags []string) bool {
		r, err := p.Boot(ctx, "kvm", strings.Join(append([]string{"host"}, flags...), ","))
		return err == nil && r.Passed()
	}
	if try(HypervEnlightenments) {
		return nil
	}
	var ok, refused []string
	for _, f := range HypervEnlightenments {
		if try(append(ok[:len(ok):len(ok)], f)) {
			ok = append(ok, f)
		} else {
			refused = append(refused, f)
		}
	}
	return refused
}

// Boot boots the payload once under accel ("kvm" or "tcg") with the -cpu value cpu. The
// error is for problems of the probe itself (no scratch directory, no binary); a guest that
// does not get through is a Run that did not pass.
func (p Prober) Boot(ctx context.Context, accel, cpu string) (Run, error) {
	p.defaults()
	dir := p.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "rakhsh-accel-")
		if err != nil {
			return Run{}, err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	disk, log := filepath.Join(dir, "probe-disk.raw"), filepath.Join(dir, "probe-debugcon.log")
	os.Remove(log)
	if err := writeDisk(disk); err != nil {
		return Run{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, p.Timeout)
	defer cancel()
	cmd := exec.Command(p.Binary, Args(accel, cpu, disk, log)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return Run{}, err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return Run{}, fmt.Errorf("starting %s: %w", p.Binary, err)
	}
	var (
		mu       sync.Mutex
		errOut   bytes.Buffer
		kvmError = make(chan struct{})
		once     sync.Once
		readDone = make(chan struct{})
	)
	go func() {
		defer close(readDone)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			mu.Lock()
			errOut.WriteString(line + "\n")
			mu.Unlock()
			if IsKVMFailure(line) {
				once.Do(func() { close(kvmError) })
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
	}()
	waited := make(chan error, 1)
	go func() { <-readDone; waited <- cmd.Wait() }()
	var r Run
	select {
	case <-waited:
	case <-kvmError:
		// QEMU stops the guest and waits after a KVM internal error: it will not exit. The
		// lines after the first one say more (e.g. "emulation failure").
		r.KVMError = true
		select {
		case <-waited:
			waited <- nil
		case <-time.After(300 * time.Millisecond):
		}
		_ = cmd.Process.Kill()
		<-waited
	case <-ctx.Done():
		r.TimedOut = ctx.Err() == context.DeadlineExceeded
		_ = cmd.Process.Kill()
		<-waited
	}
	r.Took = time.Since(start)
	r.ExitCode = cmd.ProcessState.ExitCode()
	mu.Lock()
	r.Stderr = ErrorLines(errOut.String(), 3)
	mu.Unlock()
	out, _ := os.ReadFile(log)
	r.Firmware = len(bytes.TrimSpace(out)) > 0
	if i := bytes.LastIndex(out, []byte(banner)); i >= 0 {
		rest := out[i+len(banner):]
		if j := bytes.IndexAny(rest, "\r\n"); j >= 0 {
			rest = rest[:j]
		}
		r.Stages = string(rest)
	}
	if r.Stages == allStages && r.ExitCode != exitPassed && !r.TimedOut && !r.KVMError && r.ExitCode >= 0 {
		r.Stderr = strings.TrimSpace(r.Stderr + fmt.Sprintf(" (exit status %d)", r.ExitCode))
	}
	return r, nil
}

// Args is QEMU's command line for one boot of the payload.
func Args(accel, cpu, disk, log string) []string {
	return []string{
		"-machine", "q35,accel=" + accel, "-cpu", cpu, "-smp", "2", "-m", "64",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-drive", "file=" + disk + ",format=raw,if=none,id=probe",
		"-device", "ide-hd,drive=probe,bus=ide.0",
		"-chardev", "file,id=dbg,path=" + log,
		"-device", "isa-debugcon,iobase=0x402,chardev=dbg",
		"-device", "isa-debug-exit,iobase=0xf4,iosize=4",
	}
}

// writeDisk writes the payload as the first sector of a 1 MiB raw disk (SeaBIOS does not
// boot a disk of one sector).
func writeDisk(path string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(payload); err != nil {
		f.Close()
		return err
	}
	if err := f.Truncate(1 << 20); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// IsKVMFailure says whether a line of QEMU's output reports KVM failing the guest: an
// internal error (QEMU then stops the guest), an emulation failure, or a failed KVM_RUN.
func IsKVMFailure(line string) bool {
	return strings.Contains(line, "KVM internal error") || strings.Contains(line, "emulation failure") ||
		strings.Contains(line, "kvm run failed") || strings.Contains(line, "KVM: entry failed")
}

// ErrorLines returns the last n lines of QEMU's output s that report an error (a KVM
// failure, "error", "failed", a failed assertion), joined by "; "; without such lines, the
// last n lines. Register dumps that follow a KVM internal error are left out.
func ErrorLines(s string, n int) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		l = strings.TrimSpace(l)
		low := strings.ToLower(l)
		if IsKVMFailure(l) || strings.Contains(low, "error") || strings.Contains(low, "failed") || strings.Contains(low, "assertion") {
			keep = append(keep, l)
		}
	}
	if len(keep) == 0 {
		return LastLines(s, n)
	}
	if len(keep) > n {
		keep = keep[len(keep)-n:]
	}
	return strings.Join(keep, "; ")
}

// HasKVMFailure says whether any line of QEMU's output s reports a KVM failure.
func HasKVMFailure(s string) bool {
	for _, l := range strings.Split(s, "\n") {
		if IsKVMFailure(l) {
			return true
		}
	}
	return false
}

// LastLines returns the last n non-empty lines of s joined by "; ", without monitor prompts
// and QEMU's banner.
func LastLines(s string, n int) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "(qemu)") || strings.HasPrefix(l, "QEMU ") {
			continue
		}
		keep = append(keep, l)
	}
	if len(keep) > n {
		keep = keep[len(keep)-n:]
	}
	return strings.Join(keep, "; ")
}
