package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/qemu"
	"github.com/rakhsh/rakhsh/internal/testutil"
)

// TestLiveMigrationAfterLiveChange: a VM whose vCPUs and memory were changed while it ran
// (1 → 2 vCPUs, 256Mi → 512Mi) live-migrates from h2 to h3 without a reboot; the guest keeps
// its 2 CPUs and 512Mi on h3, and h3 then takes live changes: a vCPU into a slot never used,
// then back to the boot vCPU and memory, which removes what h2 added (the vCPU h2 hot-added
// is a device of its own on the target too).
func TestLiveMigrationAfterLiveChange(t *testing.T) {
	c, s, img := clusterStart(t, sharedCluster)
	const name = "rkm-live"
	t.Cleanup(func() { s.CLI("", "delete", "vm", name, "--ignore-not-found", "--wait") })
	clusterApply(s, clusterVMManifest{Name: name, Host: "h2", CPU: "{cores: 1, maxCores: 4}", Memory: "{size: 256Mi, maxSize: 1Gi}", Image: img}.YAML())
	v0 := clusterBoot(t, s, name, "")
	cpus, base := liveBootReport(t, s, name, 1)
	if cpus != 1 || base == 0 {
		t.Fatalf("the guest reports cpus=%d memtotal=%d at boot", cpus, base)
	}
	livePatch(t, s, name, `{"spec":{"cpu":{"cores":2},"memory":{"size":"512Mi"}}}`)
	liveWaitGuest(t, s, name, 2, base, 256<<10, vmBootTimeout)
	vmWait(t, s, name, time.Minute, "showing 2 vCPUs, 1 at boot", func(v *v1alpha1.VirtualMachine) bool {
		r := v.Status.Resources
		return r != nil && r.CPU.Cores == 2 && r.CPU.BootCores == 1 && r.Memory.Hotplugged == "256Mi"
	})

	// Under TCG with QEMU before 9.0 a guest with plugged memory is paused for the whole
	// transfer (docs/migration.md); let it finish with the memory just plugged (onlining it)
	// before it moves.
	waitQEMUQuiet(t, testutil.QEMUPIDs(c.Host("h2").DataDir)[v0.UID], 30*time.Second)
	s.MustCLI("", "patch", "vm", name, "--type", "json", "-p", `[{"op":"remove","path":"/spec/nodeSelector"}]`)
	began := time.Now()
	s.MustCLI("", "vm", "migrate", name, "--to", "h3", "--wait")
	v := vmGet(t, s, name)
	if v.Status.NodeName != "h3" || v.Status.Phase != v1alpha1.VMPhaseRunning {
		t.Fatalf("after the migration: node %q phase %s", v.Status.NodeName, v.Status.Phase)
	}
	t.Logf("migrated with 2 vCPUs (1 hot-added) and 512Mi (256Mi plugged) in %s", time.Since(began).Round(10*time.Millisecond))
	var h2 v1alpha1.Node
	if err := s.Client().Get(context.Background(), "nodes", "", "h2", &h2); err != nil {
		t.Fatal(err)
	}
	paused := qemu.LosesDirtyWrites(h2.Status.Accelerator == v1alpha1.AcceleratorKVM, h2.Status.QemuVersion)
	// The source records its figures as the target switches over: wait for them.
	v = vmWait(t, s, name, time.Minute, "the source's figures", func(v *v1alpha1.VirtualMachine) bool {
		m := v.Status.MigrationState
		return m != nil && m.Progress != nil && m.Progress.TotalTimeMs > 0
	})
	if p := v.Status.MigrationState.Progress; paused != (p.DowntimeMs == p.TotalTimeMs) {
		t.Errorf("source under %s with QEMU %s (paused transfer %v): progress %+v", h2.Status.Accelerator, h2.Status.QemuVersion, paused, p)
	} else {
		t.Logf("paused transfer %v: downtime %d ms of %d ms", paused, p.DowntimeMs, p.TotalTimeMs)
	}
	if r := v.Status.Resources; r == nil || r.CPU.Cores != 2 || r.CPU.BootCores != 1 || r.Memory.Size != "512Mi" || r.Memory.BootSize != "256Mi" {
		t.Errorf("status.resources on the target: %+v", r)
	}

	// On h3: a vCPU into a slot h2 never used, then down to the one vCPU the VM booted with
	// (the vCPU h2 added goes too) and memory back to 256Mi; the guest still booted once.
	livePatch(t, s, name, `{"spec":{"cpu":{"cores":3}}}`)
	liveWaitGuest(t, s, name, 3, base, 256<<10, vmBootTimeout)
	livePatch(t, s, name, `{"spec":{"cpu":{"cores":1},"memory":{"size":"256Mi"}}}`)
	liveWaitGuest(t, s, name, 1, base, 0, vmBootTimeout)
	// The log is h3's (a serial log stays on its node): a reboot there would show.
	if log := vmLog(t, s, name); strings.Contains(log, "RAKHSH-GUEST: booted") || !strings.Contains(log, "cpus=3") {
		t.Errorf("h3's serial log shows a boot, or lacks the guest's reports:\n%s", log)
	}
	// The agent records the change after QEMU has let go of the vCPUs and the memory, which
	// can be after the guest's report.
	vmWait(t, s, name, time.Minute, "1 vCPU and 256Mi on h3", func(v *v1alpha1.VirtualMachine) bool {
		r := v.Status.Resources
		return v.Status.NodeName == "h3" && r != nil && r.CPU.Cores == 1 && r.Memory.Size == "256Mi"
	})
}

// waitQEMUQuiet waits (up to limit) until a QEMU's resident memory has stayed within 2 MiB
// for three seconds: its guest no longer touches or gives back memory.
func waitQEMUQuiet(t *testing.T, pid int, limit time.Duration) {
	t.Helper()
	if pid == 0 {
		t.Fatal("no QEMU to wait for")
	}
	last, still := qemuRSS(t, pid), 0
	for deadline := time.Now().Add(limit); still < 3 && time.Now().Before(deadline); {
		time.Sleep(time.Second)
		now := qemuRSS(t, pid)
		if d := now - last; d > -2<<20 && d < 2<<20 {
			still++
		} else {
			still = 0
		}
		last = now
	}
}
