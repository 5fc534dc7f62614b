package agent

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/internal/qemu/accel"
)

// fakeProbeQEMU writes a stand-in for qemu-system-x86_64 that passes the accelerator probe
// and counts its runs in the file it returns.
func fakeProbeQEMU(t *testing.T, dir string) (bin, runs string) {
	t.Helper()
	bin, runs = filepath.Join(dir, "qemu-system-x86_64"), filepath.Join(dir, "runs")
	script := `#!/bin/bash
echo run >>` + runs + `
for a in "$@"; do
  case "$a" in *path=*) log=${a#*path=} ;; esac
done
printf 'SeaBIOS (version fake)\nRAKHSH-PROBE:rplwub\n' >"$log"
exit 67
`
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin, runs
}

// probeSetup makes a scratch dir with a fake QEMU (fakeProbeQEMU), a KVM device file (0600)
// and a data dir.
func probeSetup(t *testing.T) (dir, bin, runs, dev string) {
	t.Helper()
	dir = t.TempDir()
	bin, runs = fakeProbeQEMU(t, dir)
	dev = filepath.Join(dir, "kvm")
	if err := os.WriteFile(dev, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "data", "run"), 0o700); err != nil {
		t.Fatal(err)
	}
	return dir, bin, runs, dev
}

// probeAgent is an agent of probeSetup's dir that has chosen its accelerator in mode; QEMU
// runs as as (nil: root).
func probeAgent(dir, bin, dev string, mode accel.Mode, as *runAs) *Agent {
	a := &Agent{cfg: Config{DataDir: filepath.Join(dir, "data"), KVMDevice: dev, Accelerator: mode, Now: time.Now},
		log: slog.New(slog.NewTextHandler(io.Discard, nil)), qemuAs: as}
	a.facts.qemu.QEMUBinary = bin
	a.chooseAccelerator(context.Background())
	return a
}

func countRuns(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "run\n")
}

// TestAcceleratorChoiceRemembered: a restarted agent reuses the probe's result while the host,
// QEMU and the KVM device are the same, and probes again when one of them changes.
func TestAcceleratorChoiceRemembered(t *testing.T) {
	if _, err := os.Stat("/proc/sys/kernel/random/boot_id"); err != nil {
		t.Fatalf("no boot id on this host: %v", err)
	}
	dir, bin, runs, dev := probeSetup(t)
	data := filepath.Join(dir, "data")
	newAgent := func(mode accel.Mode) *Agent { return probeAgent(dir, bin, dev, mode, nil) }

	a := newAgent(accel.ModeAuto)
	first := countRuns(t, runs)
	if c := a.accelerator(); !c.KVM || c.Reason != accel.ReasonProbed || first == 0 {
		t.Fatalf("first start: %+v after %d QEMU runs", c, first)
	}
	a = newAgent(accel.ModeAuto)
	if n := countRuns(t, runs); n != first {
		t.Fatalf("the restarted agent probed again: %d QEMU runs, want %d", n, first)
	}
	if c := a.accelerator(); !c.KVM || c.Reason != accel.ReasonProbed || !strings.Contains(c.Message, "probed at") {
		t.Fatalf("remembered choice: %+v", c)
	}

	// Another mode is another question.
	newAgent(accel.ModeKVM)
	afterKVM := countRuns(t, runs)
	if afterKVM == first {
		t.Fatalf("--accelerator kvm reused the auto probe")
	}
	// A replaced KVM device (module reloaded) is probed again.
	time.Sleep(10 * time.Millisecond)
	if err := os.Remove(dev); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dev, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	newAgent(accel.ModeAuto)
	afterDev := countRuns(t, runs)
	if afterDev == afterKVM {
		t.Fatalf("a new KVM device did not cause a new probe")
	}
	// So is a replaced QEMU.
	if err := os.Remove(bin); err != nil {
		t.Fatal(err)
	}
	fakeProbeQEMU(t, dir)
	newAgent(accel.ModeAuto)
	if countRuns(t, runs) == afterDev {
		t.Fatalf("a new QEMU binary did not cause a new probe")
	}

	// A missing device is not remembered: it may appear.
	if err := os.Remove(dev); err != nil {
		t.Fatal(err)
	}
	before := countRuns(t, runs)
	if c := newAgent(accel.ModeAuto).accelerator(); c.KVM || c.Reason != accel.ReasonNoDevice {
		t.Fatalf("without the device: %+v", c)
	}
	if err := os.WriteFile(dev, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if c := newAgent(accel.ModeAuto).accelerator(); !c.KVM || countRuns(t, runs) == before {
		t.Fatalf("the device came back: %+v, %d runs (was %d)", c, countRuns(t, runs), before)
	}

	// A cancelled probe is not remembered.
	if err := os.Remove(filepath.Join(data, "run", acceleratorFile)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	a = &Agent{cfg: Config{DataDir: data, KVMDevice: dev, Accelerator: accel.ModeAuto, Now: time.Now},
		log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	a.facts.qemu.QEMUBinary = bin
	a.chooseAccelerator(ctx)
	if _, err := os.Stat(filepath.Join(data, "run", acceleratorFile)); !os.IsNotExist(err) {
		t.Fatalf("a cancelled probe was kept: %v", err)
	}
}

// TestAcceleratorDeviceClosedToQEMUUser: the probe runs as root, but VMs run as the QEMU user;
// when that user cannot open the device, auto picks TCG without probing and says how to give
// the user the device. Forced kvm stays forced.
func TestAcceleratorDeviceClosedToQEMUUser(t *testing.T) {
	dir, bin, runs, dev := probeSetup(t)
	as := &runAs{name: "rakhsh-qemu", cred: &syscall.Credential{Uid: 4242, Gid: 4242}}
	newAgent := func(mode accel.Mode) *Agent { return probeAgent(dir, bin, dev, mode, as) }
	c := newAgent(accel.ModeAuto).accelerator()
	if c.KVM || c.Reason != accel.ReasonNoDevice || !strings.Contains(c.Message, "the QEMU user rakhsh-qemu cannot open it (mode 0600") ||
		!strings.Contains(c.Message, "chmod 0660") || countRuns(t, runs) != 0 {
		t.Fatalf("a device only root opens: %+v, %d probe runs", c, countRuns(t, runs))
	}
	if c := newAgent(accel.ModeKVM).accelerator(); !c.KVM || c.Reason != accel.ReasonForced {
		t.Fatalf("forced kvm: %+v", c)
	}
	// Open to the user (mode 0666 here stands for group kvm with 0660): the probe decides.
	if err := os.Chmod(dev, 0o666); err != nil {
		t.Fatal(err)
	}
	if c := newAgent(accel.ModeAuto).accelerator(); !c.KVM || c.Reason != accel.ReasonProbed || countRuns(t, runs) == 0 {
		t.Fatalf("a device the user opens: %+v", c)
	}
}
