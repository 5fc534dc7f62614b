package e2e

import (
	"bufio"
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// liveLine is what the test guest prints whenever its online CPUs or MemTotal change.
// The line's end is part of it: a line read while it still arrives must not give a cut
// number.
var liveLine = regexp.MustCompile(`RAKHSH-GUEST: cpus=(\d+) memtotal=(\d+)[\r\n]`)

// liveGuestView is the guest's last report of its online CPUs and MemTotal (KiB), and how
// many reports there were.
func liveGuestView(log string) (cpus int, memKiB int64, n int) {
	all := liveLine.FindAllStringSubmatch(log, -1)
	if len(all) == 0 {
		return 0, 0, 0
	}
	last := all[len(all)-1]
	cpus, _ = strconv.Atoi(last[1])
	memKiB, _ = strconv.ParseInt(last[2], 10, 64)
	return cpus, memKiB, len(all)
}

// liveBootReport waits for the guest's first report of its CPUs and MemTotal after its
// boot-th boot marker and returns it: the guest prints it in the background, often just
// after its ready marker.
func liveBootReport(t *testing.T, s *Serve, name string, boot int) (cpus int, memKiB int64) {
	t.Helper()
	deadline := time.Now().Add(vmBootTimeout)
	for {
		log := vmLog(t, s, name)
		parts := strings.SplitAfterN(log, "RAKHSH-GUEST: booted", boot+1)
		if len(parts) == boot+1 {
			if c, m, n := liveGuestView(parts[boot]); n > 0 {
				return c, m
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no report of the CPUs and memory after boot %d of %s within %s; log:\n%s", boot, name, vmBootTimeout, log)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// liveManifest is a VM of the test guest with 1 core and 256Mi and room to grow to
// maxCores cores and 1Gi.
func liveManifest(name, disk string, maxCores int) string {
	return vmDoc{Name: name, Policy: "Manual", CPU: "{cores: 1, maxCores: " + strconv.Itoa(maxCores) + "}",
		Memory: "{size: 256Mi, maxSize: 1Gi}", Grace: "30", Refs: []string{vdRef(disk)}}.String()
}

// livePatch writes a merge patch to the VM's spec through the API.
func livePatch(t *testing.T, s *Serve, name, patch string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Client().Patch(ctx, "virtualmachines", "default", name, []byte(patch), nil); err != nil {
		t.Fatalf("patch %s: %v", patch, err)
	}
}

// liveWaitGuest waits until the guest's last report shows cpus and a MemTotal wantDelta KiB
// above base (within 1%), and returns the report.
func liveWaitGuest(t *testing.T, s *Serve, name string, cpus int, base, wantDelta int64, timeout time.Duration) (int, int64) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var log string
	for time.Now().Before(deadline) {
		log = vmLog(t, s, name)
		c, m, n := liveGuestView(log)
		d := m - base
		if n > 0 && c == cpus && d >= wantDelta-wantDelta/100-1024 && d <= wantDelta+1024 {
			return c, m
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("the guest did not report %d CPUs and MemTotal %d KiB above %d within %s; log:\n%s", cpus, wantDelta, base, timeout, log)
	return 0, 0
}

func awaitingRestart(v *v1alpha1.VirtualMachine) *v1alpha1.Condition {
	if v == nil {
		return nil
	}
	return v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionAwaitingRestartToApplyConfiguration)
}

// TestLiveResources: one VM of the test guest started with 1 core of 4 and 256Mi of 1Gi.
// Its cores go 1 → 3 → 2 and its memory 256Mi → 768Mi → 512Mi while it runs: after each
// change the guest's own report on its serial console shows the online CPUs and MemTotal,
// status.resources shows the live values, nothing waits for a restart, and the guest booted
// once. A change beyond the room to grow waits for a restart, named in
// AwaitingRestartToApplyConfiguration. A change that needs a restart (maxCores) waits under
// restartApprovalMode Manual, and applies by itself once the mode is Automatic.
func TestLiveResources(t *testing.T) {
	sideBySide(t)
	vmGuestDir(t)
	s := vmServe(t)
	vmSetupGuest(t, s, "root")
	s.MustCLI(liveManifest("vm1", "root", 4), "apply", "-f", "-")
	s.MustCLI("", "vm", "start", "vm1", "--wait")
	vmWaitSerial(t, s, "vm1", "RAKHSH-GUEST: ready", 1)
	cpus, base := liveBootReport(t, s, "vm1", 1)
	if cpus != 1 || base == 0 {
		t.Fatalf("the guest reports cpus=%d memtotal=%d at boot, want 1 CPU; log:\n%s", cpus, base, vmLog(t, s, "vm1"))
	}
	t.Logf("at boot: cpus=1 memtotal=%d KiB", base)

	steps := []struct {
		patch string
		cores int
		mem   v1alpha1.Quantity
	}{
		{`{"spec":{"cpu":{"cores":3}}}`, 3, "256Mi"},
		{`{"spec":{"memory":{"size":"768Mi"}}}`, 3, "768Mi"},
		{`{"spec":{"cpu":{"cores":2}}}`, 2, "768Mi"},
		{`{"spec":{"memory":{"size":"512Mi"}}}`, 2, "512Mi"},
	}
	for _, st := range steps {
		began := time.Now()
		livePatch(t, s, "vm1", st.patch)
		memBytes, _ := st.mem.Value()
		delta := (memBytes - 256<<20) >> 10
		c, m := liveWaitGuest(t, s, "vm1", st.cores, base, delta, vmBootTimeout)
		t.Logf("%s: the guest reports cpus=%d memtotal=%d KiB (+%d) after %s", st.patch, c, m, m-base, time.Since(began).Round(10*time.Millisecond))
		v := vmWait(t, s, "vm1", time.Minute, "showing the live resources", func(v *v1alpha1.VirtualMachine) bool {
			r := v.Status.Resources
			return r != nil && r.CPU.Cores == st.cores && r.Memory.Size == v1alpha1.BytesQuantity(memBytes)
		})
		r := v.Status.Resources
		if r.CPU.MaxCores != 4 || r.Memory.MaxSize != "1Gi" || r.Memory.BootSize != "256Mi" || r.Memory.Hotplugged != v1alpha1.BytesQuantity(memBytes-256<<20) {
			t.Errorf("status.resources %+v: want maxCores 4, maxSize 1Gi, bootSize 256Mi, hotplugged %s", *r, v1alpha1.BytesQuantity(memBytes-256<<20))
		}
		if c := awaitingRestart(v); c == nil || c.Status != v1alpha1.ConditionFalse {
			t.Errorf("after a live change AwaitingRestartToApplyConfiguration is %+v, want False", c)
		}
	}
	if n := strings.Count(vmLog(t, s, "vm1"), "RAKHSH-GUEST: booted"); n != 1 {
		t.Fatalf("%d boot markers after the live changes, want 1", n)
	}

	// Beyond the room to grow: waits for a restart, and says so.
	livePatch(t, s, "vm1", `{"spec":{"cpu":{"cores":5,"maxCores":5}}}`)
	v := vmWait(t, s, "vm1", time.Minute, "awaiting a restart for cores 5", func(v *v1alpha1.VirtualMachine) bool {
		c := awaitingRestart(v)
		return c != nil && c.Status == v1alpha1.ConditionTrue && strings.Contains(c.Message, "spec.cpu.cores (runs with 2)") &&
			strings.Contains(c.Message, "spec.cpu.maxCores (runs with 4)")
	})
	t.Logf("AwaitingRestartToApplyConfiguration: %s", awaitingRestart(v).Message)
	if r := v.Status.Resources; r == nil || r.CPU.Cores != 2 {
		t.Errorf("status.resources %+v: want the 2 cores that run", r)
	}
	// Manual: nothing restarts by itself. (Back to 2 cores, a change that only a restart
	// applies stays: maxCores.)
	livePatch(t, s, "vm1", `{"spec":{"cpu":{"cores":2,"maxCores":3}}}`)
	vmWait(t, s, "vm1", time.Minute, "awaiting a restart for maxCores only", func(v *v1alpha1.VirtualMachine) bool {
		c := awaitingRestart(v)
		return c != nil && c.Status == v1alpha1.ConditionTrue && c.Message == "changed since start, applied at the next restart: spec.cpu.maxCores (runs with 4)"
	})
	if n := strings.Count(vmLog(t, s, "vm1"), "RAKHSH-GUEST: booted"); n != 1 {
		t.Fatalf("%d boot markers under restartApprovalMode Manual, want 1", n)
	}
	// Automatic: the VM restarts to apply it.
	livePatch(t, s, "vm1", `{"spec":{"disruptions":{"restartApprovalMode":"Automatic"}}}`)
	vmWaitSerial(t, s, "vm1", "RAKHSH-GUEST: booted", 2)
	v = vmWait(t, s, "vm1", vmBootTimeout, "running with maxCores 3", func(v *v1alpha1.VirtualMachine) bool {
		c := awaitingRestart(v)
		return v.Status.Phase == v1alpha1.VMPhaseRunning && c != nil && c.Status == v1alpha1.ConditionFalse &&
			v.Status.Resources != nil && v.Status.Resources.CPU.MaxCores == 3
	})
	// After the restart the boot memory is the memory size (512Mi): 2 CPUs from the start.
	vmWaitSerial(t, s, "vm1", "RAKHSH-GUEST: ready", 2)
	if c, _ := liveBootReport(t, s, "vm1", 2); c != 2 {
		t.Errorf("after the restart the guest reports %d CPUs, want 2", c)
	}
	log := vmLog(t, s, "vm1")
	if r := v.Status.Resources; r.Memory.BootSize != "512Mi" || r.Memory.Size != "512Mi" || r.CPU.Cores != 2 {
		t.Errorf("status.resources after the restart %+v", *r)
	}
	if n := strings.Count(log, "RAKHSH-GUEST: booted"); n != 2 {
		t.Errorf("%d boot markers after the automatic restart, want 2", n)
	}
	s.MustCLI("", "vm", "stop", "vm1", "--force", "--wait")
}

// TestLiveResourcesBenchmark measures the time from a spec change (the API write) to the
// guest reporting it on its serial console (its "cpus=N memtotal=KB" line, read from the
// console stream as it comes), for CPU (one vCPU added at a time up to N+1, then removed one
// at a time) and memory (256Mi → 512Mi and back, N times), for docs/benchmarks.md. It runs only when RAKHSH_BENCH_LIVE is set (to the number
// of changes of each kind): its figures are what it is for, not pass or fail.
func TestLiveResourcesBenchmark(t *testing.T) {
	runs := benchCount(t, "RAKHSH_BENCH_LIVE", "changes of each kind")
	vmGuestDir(t)
	s := vmServe(t)
	vmSetupGuest(t, s, "root")
	// Each 1 → 2 takes a vCPU slot never used before (docs/live-resources.md).
	s.MustCLI(liveManifest("vm1", "root", runs+1), "apply", "-f", "-")
	s.MustCLI("", "vm", "start", "vm1", "--wait")
	vmWaitSerial(t, s, "vm1", "RAKHSH-GUEST: ready", 1)
	_, base, _ := liveGuestView(vmLog(t, s, "vm1"))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	conn, err := s.Client().DialStream(ctx, "virtualmachines", "default", "vm1", "console")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	type report struct {
		at   time.Time
		cpus int
		mem  int64
	}
	reports := make(chan report, 64)
	go func() {
		sc := bufio.NewScanner(conn)
		for sc.Scan() {
			if m := liveLine.FindStringSubmatch(sc.Text() + "\n"); m != nil {
				c, _ := strconv.Atoi(m[1])
				n, _ := strconv.ParseInt(m[2], 10, 64)
				reports <- report{time.Now(), c, n}
			}
		}
	}()
	wait := func(cpus int, mem int64) time.Time {
		deadline := time.After(2 * time.Minute)
		for {
			select {
			case r := <-reports:
				if r.cpus == cpus && r.mem == mem {
					return r.at
				}
			case <-deadline:
				t.Fatalf("no report of cpus=%d memtotal=%d within 2m", cpus, mem)
			}
		}
	}
	// vCPUs go up one at a time to runs+1 and then down again: the agent adds none after a
	// removal (docs/live-resources.md). Memory goes up and down runs times.
	var cpuUp, cpuDown, memUp, memDown []float64
	type change struct {
		patch string
		cpus  int
		mem   int64
		out   *[]float64
	}
	var changes []change
	for i := 1; i <= runs; i++ {
		changes = append(changes, change{fmt.Sprintf(`{"spec":{"cpu":{"cores":%d}}}`, i+1), i + 1, base, &cpuUp})
	}
	for i := 0; i < runs; i++ {
		changes = append(changes,
			change{`{"spec":{"memory":{"size":"512Mi"}}}`, runs + 1, base + 256<<10, &memUp},
			change{`{"spec":{"memory":{"size":"256Mi"}}}`, runs + 1, base, &memDown})
	}
	for i := runs; i >= 1; i-- {
		changes = append(changes, change{fmt.Sprintf(`{"spec":{"cpu":{"cores":%d}}}`, i), i, base, &cpuDown})
	}
	for _, c := range changes {
		time.Sleep(time.Second) // the guest settles
		began := time.Now()
		livePatch(t, s, "vm1", c.patch)
		d := wait(c.cpus, c.mem).Sub(began)
		*c.out = append(*c.out, float64(d.Milliseconds()))
		t.Logf("%s: guest reported after %d ms", c.patch, d.Milliseconds())
	}
	for _, x := range []struct {
		what string
		xs   []float64
	}{{"cpu +1", cpuUp}, {"cpu -1", cpuDown}, {"memory 256Mi→512Mi", memUp}, {"memory 512Mi→256Mi", memDown}} {
		med, lo, hi := median(x.xs)
		t.Logf("BENCH live %s: spec write → guest report median %.0f ms [%.0f–%.0f] over %d changes %v", x.what, med, lo, hi, len(x.xs), x.xs)
	}
	conn.Close()
	s.MustCLI("", "vm", "stop", "vm1", "--force", "--wait")
}
