package qemu

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// ProbeKVM tells whether QEMU can really run a guest under KVM on this host. Opening
// /dev/kvm is not enough: nested virtualization is often incomplete (a host CPU whose MSRs
// the outer hypervisor refuses, Hyper-V registers it does not emulate), and then QEMU aborts
// at the first vCPU reset. So the probe starts the binary once with the accelerator and
// `-cpu host`, paused and without devices, lets it reach its main loop (the first reset is
// done before that) and asks it to quit. A nil error means KVM works; otherwise the error
// says why, and the caller falls back to TCG.
func ProbeKVM(ctx context.Context, binary string) error {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("/dev/kvm is not usable: %w", err)
	}
	f.Close()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary,
		"-machine", "q35,accel=kvm", "-cpu", "host", "-smp", "1", "-m", "16",
		"-nodefaults", "-no-user-config", "-display", "none", "-S",
		"-monitor", "stdio")
	cmd.Stdin = strings.NewReader("quit\n")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("/dev/kvm is present but QEMU cannot run a vCPU under KVM (%v): %s",
			err, lastLines(out.String(), 2))
	}
	return nil
}

// lastLines returns the last n non-empty lines of s, joined by "; ", without monitor
// prompts and terminal escapes.
func lastLines(s string, n int) string {
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
