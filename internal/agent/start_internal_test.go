package agent

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/qemu"
)

// TestStartUndoesEachStep fails a start at each of its steps in turn: the undos of exactly
// the steps before it run, last first, the failure is recorded as StartFailed, and the host
// is left clean (no QEMU, no swtpm, no sockets, pidfile, provisioning medium, NVRAM or
// cgroup of this start). Then a start with no failure runs every step and undoes nothing.
// The VM has every optional part: a provisioning medium, UEFI (an NVRAM made on the first
// start) and a TPM (osType Windows). Without host networking no tap is made.
func TestStartUndoesEachStep(t *testing.T) {
	for _, tool := range []string{"swtpm", "swtpm_setup"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s missing: apt-get install swtpm swtpm-tools", tool)
		}
	}
	e := newInternalEnv(t)
	e.withQEMU()
	vm := e.createVM("steps", func(vm *v1alpha1.VirtualMachine) {
		vm.Spec.OSType = v1alpha1.OSTypeWindows
		vm.Spec.Bootloader = v1alpha1.BootloaderEFI
		vm.Spec.Provisioning = &v1alpha1.Provisioning{Type: v1alpha1.ProvisioningTypeUserData, UserData: "#cloud-config\n"}
	}, `{"status":{"nodeName":"node1","phase":"Pending","powerRequest":{"state":"Paused"}}}`)
	a := e.a
	runDir := a.runDir(vm.UID)
	// The steps that change the host for this VM, so have an undo.
	undoable := map[string]bool{stepProvisioning: true, stepNVRAM: true, stepTPM: true, stepLaunch: true}
	var names []string
	for _, s := range a.startSteps() {
		names = append(names, s.name)
	}
	for i, failAt := range append(slices.Clone(names), "") {
		var want []string
		for j := i - 1; j >= 0; j-- {
			if undoable[names[j]] {
				want = append(want, names[j])
			}
		}
		var undone []string
		a.seams = &startSeams{failAt: failAt, undone: func(step string) { undone = append(undone, step) }}
		_, err := a.start(e.ctx, e.getVM("steps"))
		if err != nil {
			t.Fatalf("fail at %q: start returned %v", failAt, err)
		}
		if failAt == "" {
			if len(undone) != 0 {
				t.Errorf("a start that succeeded undid %v", undone)
			}
			got := e.getVM("steps")
			if got.Status.Phase != v1alpha1.VMPhasePause {
				t.Errorf("after a full start: phase %q, want %q", got.Status.Phase, v1alpha1.VMPhasePause)
			}
			in := a.inst(vm.UID)
			if in == nil || findQEMU(runDir, vm.UID) == 0 || findTPM(runDir) == 0 {
				t.Fatalf("after a full start QEMU or swtpm does not run (instance %v)", in)
			}
			// The provisioning medium and the NVRAM stay with a VM that started; its QEMU,
			// swtpm, sockets and cgroups go with the QEMU.
			a.machine(in).Discard()
			stopTPM(runDir)
			for _, n := range []string{provisioningISOName, nvramFileName, nvramFileName + ".template"} {
				if err := os.Remove(filepath.Join(runDir, n)); err != nil {
					t.Errorf("after a full start: %v", err)
				}
			}
			assertStartLeftNothing(t, a, runDir, vm.UID, "after the full start was discarded")
			continue
		}
		if !slices.Equal(undone, want) {
			t.Errorf("fail at %q: undid %v, want %v", failAt, undone, want)
		}
		got := e.getVM("steps")
		if ex := got.Status.LastExit; ex == nil || ex.Reason != v1alpha1.ExitStartFailed || !strings.Contains(ex.Message, "injected failure at step "+failAt) {
			t.Errorf("fail at %q: lastExit %+v, want StartFailed with the injected failure", failAt, ex)
		}
		assertStartLeftNothing(t, a, runDir, vm.UID, "fail at "+failAt)
	}
}

// assertStartLeftNothing checks that no QEMU or swtpm of the VM runs and that none of the
// files and cgroups a start makes are left.
func assertStartLeftNothing(t *testing.T, a *Agent, runDir, uid, when string) {
	t.Helper()
	if a.inst(uid) != nil {
		t.Errorf("%s: the agent still tracks an instance", when)
	}
	if pids := scanQEMUs()[uid]; len(pids) > 0 {
		t.Errorf("%s: QEMU processes %v still run", when, pids)
	}
	if pid := findTPM(runDir); pid > 0 {
		t.Errorf("%s: swtpm %d still runs", when, pid)
	}
	// A swtpm whose QEMU is gone ends by itself (--terminate), removing its pid file first:
	// it gets a moment to finish.
	if pids := processesWith(filepath.Join(runDir, tpmStateDirName), 3*time.Second); len(pids) > 0 {
		t.Errorf("%s: swtpm processes %v still run", when, pids)
	}
	for _, n := range []string{provisioningISOName, nvramFileName, nvramFileName + ".template", qemu.PIDFileName, qemu.QMPSocketName,
		qemu.SerialSocketName, qemu.VNCSocketName, tpmSocketName, tpmPIDName} {
		if _, err := os.Stat(filepath.Join(runDir, n)); !os.IsNotExist(err) {
			t.Errorf("%s: %s is left in the run directory (stat: %v)", when, n, err)
		}
	}
	if l, err := detectCgroups(); err == nil {
		for ctrl := range l.slices {
			for _, ded := range []bool{false, true} {
				if d := l.vmDir(ctrl, uid, ded); exists(d) {
					t.Errorf("%s: cgroup %s is left", when, d)
				}
			}
		}
	}
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// processesWith lists the live (not zombie) processes whose command line contains s, once
// none is left or after wait.
func processesWith(s string, wait time.Duration) []int {
	deadline := time.Now().Add(wait)
	for {
		var out []int
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			pid, err := strconv.Atoi(e.Name())
			if err == nil && liveProcess(pid, func(argv []string) bool { return strings.Contains(strings.Join(argv, " "), s) }) {
				out = append(out, pid)
			}
		}
		if len(out) == 0 || time.Now().After(deadline) {
			return out
		}
		time.Sleep(50 * time.Millisecond)
	}
}
