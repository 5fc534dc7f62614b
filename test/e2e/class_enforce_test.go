package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/testutil"
)

// qemuCgroup returns the cgroup path of pid in the hierarchy that has controller ("" for
// the cgroup v2 unified hierarchy) and the directory of that hierarchy's mount.
func qemuCgroup(t *testing.T, pid int, controller string) (path, mount string) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if controller == "" && parts[1] == "" {
			return parts[2], "/sys/fs/cgroup"
		}
		for _, c := range strings.Split(parts[1], ",") {
			if c == controller {
				m := filepath.Join("/sys/fs/cgroup", parts[1])
				if _, err := os.Stat(m); err != nil {
					m = filepath.Join("/sys/fs/cgroup", controller)
				}
				return parts[2], m
			}
		}
	}
	t.Fatalf("QEMU %d has no cgroup with controller %q:\n%s", pid, controller, b)
	return "", ""
}

// cgroupV2 says whether the host uses the unified hierarchy only.
func cgroupV2() bool {
	_, err := os.Stat("/sys/fs/cgroup/cgroup.controllers")
	return err == nil
}

// cpuUsageUsec reads the CPU time used by the cgroup of pid: cpu.stat usage_usec (v2) or
// cpuacct.usage (v1, nanoseconds), and the number of throttled periods.
func cpuUsageUsec(t *testing.T, pid int) (usage, throttled int64) {
	t.Helper()
	stat := func(dir string) map[string]int64 {
		b, err := os.ReadFile(filepath.Join(dir, "cpu.stat"))
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]int64{}
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) == 2 {
				m[f[0]], _ = strconv.ParseInt(f[1], 10, 64)
			}
		}
		return m
	}
	if cgroupV2() {
		p, m := qemuCgroup(t, pid, "")
		st := stat(filepath.Join(m, p))
		return st["usage_usec"], st["nr_throttled"]
	}
	p, m := qemuCgroup(t, pid, "cpuacct")
	b, err := os.ReadFile(filepath.Join(m, p, "cpuacct.usage"))
	if err != nil {
		t.Fatal(err)
	}
	ns, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	cp, cm := qemuCgroup(t, pid, "cpu")
	return ns / 1000, stat(filepath.Join(cm, cp))["nr_throttled"]
}

// vcpuAffinity returns the allowed CPU list of each vCPU thread of QEMU pid (threads named
// "CPU n/TCG" or "CPU n/KVM").
func vcpuAffinity(t *testing.T, pid int) map[string]string {
	t.Helper()
	out := map[string]string{}
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range tasks {
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/comm", pid, e.Name()))
		if err != nil || !strings.HasPrefix(string(comm), "CPU ") {
			continue
		}
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, e.Name()))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(st), "\n") {
			if v, ok := strings.CutPrefix(line, "Cpus_allowed_list:"); ok {
				out[strings.TrimSpace(string(comm))] = strings.TrimSpace(v)
			}
		}
	}
	if len(out) == 0 {
		t.Fatalf("QEMU %d has no vCPU threads", pid)
	}
	return out
}

// classVMWithDisk is a VM of a class booting the test guest from disk.
func classVMWithDisk(name, class, disk, cpu string) string {
	return vmDoc{Name: name, Class: class, Policy: "AlwaysOn", CPU: cpu, Memory: "128Mi", Grace: "5", Refs: []string{vdRef(disk)}}.String()
}

// TestClassCoreFractionLimit: a 1-core VM with coreFraction 20% running a busy loop gets at
// most 25% of a host core over 10 s, measured from its QEMU cgroup's usage counter; the
// class's CPU model reaches QEMU's -cpu.
func TestClassCoreFractionLimit(t *testing.T) {
	vmGuestDir(t)
	s := vmServe(t)
	vmSetupGuest(t, s, "root")
	applyDocs(s, classDoc("slow", "Nehalem", "cores: {min: 1, max: 2}\ncoreFractions: [20, 100]\ndefaultCoreFraction: \"100%\""))
	applyDocs(s, classVMWithDisk("busy", "slow", "root", `{cores: 1, coreFraction: "20%"}`))
	v := vmWait(t, s, "busy", 2*time.Minute, "Running", vmPhase(v1alpha1.VMPhaseRunning))
	vmWaitSerial(t, s, "busy", "RAKHSH-GUEST: ready", 1)
	pid := testutil.QEMUPIDs(s.DataDir)[v.UID]
	if pid == 0 {
		t.Fatal("no QEMU found for the VM")
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if !strings.Contains(string(cmdline), "-cpu\x00Nehalem") {
		t.Errorf("QEMU command line lacks -cpu Nehalem: %q", cmdline)
	}
	cg, _ := qemuCgroup(t, pid, "cpu")
	if cgroupV2() {
		cg, _ = qemuCgroup(t, pid, "")
	}
	if !strings.HasSuffix(cg, "rakhsh.slice/vm-"+v.UID) {
		t.Fatalf("QEMU runs in cgroup %q, want .../rakhsh.slice/vm-%s", cg, v.UID)
	}

	vmConsoleType(t, s, v.UID, "")
	vmConsoleType(t, s, v.UID, "while :; do :; done &")
	time.Sleep(2 * time.Second) // let the loop start
	u0, th0 := cpuUsageUsec(t, pid)
	start := time.Now()
	time.Sleep(10 * time.Second)
	u1, th1 := cpuUsageUsec(t, pid)
	share := float64(u1-u0) / float64(time.Since(start).Microseconds())
	t.Logf("QEMU CPU use with coreFraction 20%% and a busy guest: %.1f%% of a core over %s (throttled periods %d)",
		100*share, time.Since(start).Round(time.Millisecond), th1-th0)
	if share > 0.25 {
		t.Errorf("QEMU used %.1f%% of a core, want at most 25%%", 100*share)
	}
	if th1-th0 == 0 {
		t.Errorf("the cgroup was never throttled: the busy loop did not hit the limit (use %.1f%%)", 100*share)
	}

	// The operator drops 20% from the class: the running VM is out of policy, says so, and
	// keeps running; an edit that keeps it out is refused, one that fixes it is taken.
	applyDocs(s, classDoc("slow", "Nehalem", "cores: {min: 1, max: 2}\ncoreFractions: [50, 100]\ndefaultCoreFraction: \"100%\""))
	out := vmWait(t, s, "busy", time.Minute, "SizingPolicyMatched=False", vmCondIs(v1alpha1.VMConditionSizingPolicyMatched, v1alpha1.ConditionFalse))
	if out.Status.Phase != v1alpha1.VMPhaseRunning || testutil.QEMUPIDs(s.DataDir)[v.UID] != pid {
		t.Fatalf("a VM put out of policy by its class was disturbed: phase %s, QEMU pid %d (was %d)", out.Status.Phase, testutil.QEMUPIDs(s.DataDir)[v.UID], pid)
	}
	ctx := context.Background()
	err := s.Client().Patch(ctx, "virtualmachines", "default", "busy", []byte(`{"spec":{"terminationGracePeriodSeconds":6}}`), nil)
	if !client.IsInvalid(err) || !strings.Contains(err.Error(), "spec.cpu.coreFraction") {
		t.Fatalf("an edit that leaves the VM out of policy: got %v, want Invalid naming spec.cpu.coreFraction", err)
	}
	if err := s.Client().Patch(ctx, "virtualmachines", "default", "busy", []byte(`{"spec":{"cpu":{"coreFraction":"50%"}}}`), nil); err != nil {
		t.Fatalf("an edit that brings the VM back into policy was refused: %v", err)
	}
	vmWait(t, s, "busy", time.Minute, "SizingPolicyMatched=True", vmCondIs(v1alpha1.VMConditionSizingPolicyMatched, v1alpha1.ConditionTrue))
	s.MustCLI("", "delete", "vm", "busy", "--wait", "--timeout", "1m")
}

// TestClassDedicatedCores: VMs with dedicated cores get vCPU threads pinned to one host core
// each, never the same core for two VMs; a third does not fit the two-core host and stays
// Pending with the reason; the pinning survives a restart of `rakhsh serve`.
func TestClassDedicatedCores(t *testing.T) {
	vmGuestDir(t)
	s := vmServe(t)
	vmSetupGuest(t, s, "r1", "r2", "r3")
	applyDocs(s, classDoc("pinned", "Nehalem", "cores: {min: 1, max: 1}\ndedicatedCores: [true]\ncoreFractions: [100]"))
	applyDocs(s, classVMWithDisk("d1", "pinned", "r1", "{cores: 1}"), classVMWithDisk("d2", "pinned", "r2", "{cores: 1}"))
	v1 := vmWait(t, s, "d1", 2*time.Minute, "Running", vmPhase(v1alpha1.VMPhaseRunning))
	v2 := vmWait(t, s, "d2", 2*time.Minute, "Running", vmPhase(v1alpha1.VMPhaseRunning))
	if !v1.Spec.CPU.DedicatedCores {
		t.Fatal("d1 did not get dedicatedCores from its class's policy")
	}
	affinity := func() (string, string) {
		pids := testutil.QEMUPIDs(s.DataDir)
		a1, a2 := vcpuAffinity(t, pids[v1.UID]), vcpuAffinity(t, pids[v2.UID])
		t.Logf("vCPU affinity: d1 %v, d2 %v", a1, a2)
		if len(a1) != 1 || len(a2) != 1 {
			t.Fatalf("want one vCPU thread per VM: %v %v", a1, a2)
		}
		var c1, c2 string
		for _, c := range a1 {
			c1 = c
		}
		for _, c := range a2 {
			c2 = c
		}
		for _, c := range []string{c1, c2} {
			if _, err := strconv.Atoi(c); err != nil {
				t.Fatalf("vCPU affinity %q is not one core", c)
			}
		}
		if c1 == c2 {
			t.Fatalf("both VMs' vCPUs are pinned to core %s", c1)
		}
		return c1, c2
	}
	c1, c2 := affinity()

	// A third dedicated VM finds no free core.
	s.MustCLI(classVMWithDisk("d3", "pinned", "r3", "{cores: 1}"), "apply", "-f", "-")
	v3 := vmWait(t, s, "d3", time.Minute, "unschedulable", vmCondIs("Scheduled", v1alpha1.ConditionFalse))
	c := v1alpha1.FindCondition(v3.Status.Conditions, "Scheduled")
	if !strings.Contains(c.Message, "insufficient free cores for dedicated cores") || v3.Status.NodeName != "" {
		t.Errorf("d3: node %q, Scheduled message %q", v3.Status.NodeName, c.Message)
	}
	if v3.Status.Phase != v1alpha1.VMPhasePending {
		t.Errorf("d3 phase %s, want Pending", v3.Status.Phase)
	}

	// Re-adoption: the pinning stays across a restart of serve.
	s.Stop()
	s.Start()
	vmWait(t, s, "d1", time.Minute, "Running after the restart", vmPhase(v1alpha1.VMPhaseRunning))
	if n1, n2 := affinity(); n1 != c1 || n2 != c2 {
		t.Errorf("after the restart the cores changed: %s,%s -> %s,%s", c1, c2, n1, n2)
	}

	// Freeing a core lets the third VM in, on d1's core.
	s.MustCLI("", "delete", "vm", "d1", "--wait", "--timeout", "1m")
	v3 = vmWait(t, s, "d3", 2*time.Minute, "Running", vmPhase(v1alpha1.VMPhaseRunning))
	a3 := vcpuAffinity(t, testutil.QEMUPIDs(s.DataDir)[v3.UID])
	for _, c := range a3 {
		if c != c1 {
			t.Errorf("d3 pinned to %s, want the freed core %s", c, c1)
		}
	}
	s.MustCLI("", "delete", "vm", "d2", "d3", "--wait", "--timeout", "1m")
}
