package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/testutil"
)

// accelNode waits until the serve's Node reports its KVM condition with a reason in want.
func accelNode(t *testing.T, s *Serve, want ...string) (*v1alpha1.Node, *v1alpha1.Condition) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var last v1alpha1.Node
	for time.Now().Before(deadline) {
		l, err := s.Client().List(context.Background(), "nodes", "", client.ListOptions{})
		if err == nil && len(l.Items) == 1 && json.Unmarshal(l.Items[0], &last) == nil {
			if c := v1alpha1.FindCondition(last.Status.Conditions, v1alpha1.NodeConditionKVM); c != nil {
				for _, w := range want {
					if c.Reason == w {
						return &last, c
					}
				}
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("node KVM condition not one of %v within 60s: %+v", want, last.Status.Conditions)
	return nil, nil
}

// accelCheckEmulation checks that a running VM's SoftwareEmulation condition agrees with its
// node's accelerator.
func accelCheckEmulation(t *testing.T, v *v1alpha1.VirtualMachine, n *v1alpha1.Node) {
	t.Helper()
	want := v1alpha1.ConditionTrue
	if n.Status.Accelerator == v1alpha1.AcceleratorKVM {
		want = v1alpha1.ConditionFalse
	}
	if c := v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionSoftwareEmulation); c == nil || c.Status != want {
		t.Errorf("SoftwareEmulation = %+v, want %s on a %s node", c, want, n.Status.Accelerator)
	}
}

// TestAcceleratorChoice runs the same VM under --accelerator auto, kvm and auto again on this
// host, whatever its KVM is like. auto reports its finding on the Node. kvm then either boots
// the guest (where auto found KVM working) or shows QEMU's own KVM error in the VM's status,
// describe and events (no /dev/kvm, one that cannot start a vCPU, one that fails guests).
// Back under auto, the guest boots.
func TestAcceleratorChoice(t *testing.T) {
	sideBySide(t)
	vmGuestDir(t)
	s := vmServe(t)
	vmSetupGuest(t, s, "root")
	node, cond := accelNode(t, s, "ProbeBooted", "NoDevice", "ProbeFailed")
	autoKVM := cond.Reason == "ProbeBooted"
	if autoKVM != (node.Status.Accelerator == v1alpha1.AcceleratorKVM) || autoKVM != (cond.Status == v1alpha1.ConditionTrue) {
		t.Fatalf("node accelerator %s with KVM condition %+v", node.Status.Accelerator, cond)
	}
	t.Logf("auto on this host: %s (%s)", node.Status.Accelerator, cond.Message)
	autoFinding := cond.Message
	desc := s.MustCLI("", "describe", "node", node.Name)
	for _, w := range []string{string(node.Status.Accelerator), cond.Reason, "--accelerator auto"} {
		if !strings.Contains(desc, w) {
			t.Errorf("describe node lacks %q:\n%s", w, desc)
		}
	}

	s.Stop()
	s.Args = []string{"--accelerator", "kvm"}
	s.Start()
	node, cond = accelNode(t, s, "Forced")
	if node.Status.Accelerator != v1alpha1.AcceleratorKVM || cond.Status != v1alpha1.ConditionTrue {
		t.Fatalf("forced KVM: node accelerator %s, condition %+v", node.Status.Accelerator, cond)
	}
	s.MustCLI(vmManifest("vm1", "root", "AlwaysOnUnlessStoppedManually", "256Mi"), "apply", "-f", "-")
	if autoKVM {
		v := vmWait(t, s, "vm1", time.Minute, "Running", vmPhase(v1alpha1.VMPhaseRunning))
		accelCheckEmulation(t, v, node)
		vmWaitSerial(t, s, "vm1", "RAKHSH-GUEST: ready", 1)
	} else {
		// QEMU fails at start (no /dev/kvm, a vCPU KVM refuses) or crashes the guest (KVM
		// internal error): either way its own words reach the VM. On a host where auto found
		// KVM only too slow, the guest instead runs under KVM, slowly: it must then keep
		// running, and say it runs under KVM.
		var runningSince time.Time
		v := vmWait(t, s, "vm1", 2*time.Minute, "failed under KVM, or running under a slow KVM", func(v *v1alpha1.VirtualMachine) bool {
			if v == nil {
				return false
			}
			if v.Status.LastExit != nil && v.Status.LastExit.Reason != v1alpha1.ExitStopped {
				return true
			}
			if v.Status.Phase != v1alpha1.VMPhaseRunning {
				runningSince = time.Time{}
				return false
			}
			if runningSince.IsZero() {
				runningSince = time.Now()
			}
			return time.Since(runningSince) > 30*time.Second
		})
		if v.Status.LastExit == nil || v.Status.LastExit.Reason == v1alpha1.ExitStopped {
			if !strings.Contains(autoFinding, "killed after") && !strings.Contains(autoFinding, "under TCG") {
				t.Fatalf("under forced KVM the guest runs, yet auto found KVM failing rather than slow: %s", autoFinding)
			}
			accelCheckEmulation(t, v, node)
			t.Logf("under forced KVM the guest runs (slowly): auto had found %s", autoFinding)
			slowKVMVM(t, s, v)
			return
		}
		msg := v.Status.LastExit.Message
		if !strings.Contains(strings.ToLower(msg), "kvm") {
			t.Fatalf("lastExit under forced KVM does not carry QEMU's KVM error: %+v", v.Status.LastExit)
		}
		qemuLine := msg[strings.Index(msg, ": ")+2:]
		if len(qemuLine) > 60 {
			qemuLine = qemuLine[:60]
		}
		desc := s.MustCLI("", "describe", "vm", "vm1")
		if !strings.Contains(desc, qemuLine) {
			t.Errorf("describe vm lacks QEMU's error %q:\n%s", qemuLine, desc)
		}
		events := s.MustCLI("", "get", "events")
		if !strings.Contains(events, qemuLine) {
			t.Errorf("events lack QEMU's error %q:\n%s", qemuLine, events)
		}
		t.Logf("under forced KVM: %s", msg)
	}

	s.Stop()
	s.Args = nil
	s.Start()
	node, _ = accelNode(t, s, "ProbeBooted", "NoDevice", "ProbeFailed")
	if (node.Status.Accelerator == v1alpha1.AcceleratorKVM) != autoKVM {
		t.Fatalf("auto chose %s the second time", node.Status.Accelerator)
	}
	if !autoKVM {
		// The VM failed under KVM: its restart policy starts it again, now under TCG.
		v := vmWait(t, s, "vm1", 2*time.Minute, "Running under auto", vmPhase(v1alpha1.VMPhaseRunning))
		accelCheckEmulation(t, v, node)
		vmWaitSerial(t, s, "vm1", "RAKHSH-GUEST: ready", 1)
	}
	s.MustCLI("", "delete", "vm", "vm1")
	vmWait(t, s, "vm1", time.Minute, "deleted", func(v *v1alpha1.VirtualMachine) bool { return v == nil })
}

// slowKVMVM finishes TestAcceleratorChoice on a host whose KVM runs guests too slowly for
// auto: back under auto, the VM started under forced KVM keeps running under KVM (QEMU
// outlives serve and is adopted as it is); a stop and start moves it to TCG (a reset would
// keep the same QEMU).
func slowKVMVM(t *testing.T, s *Serve, v *v1alpha1.VirtualMachine) {
	t.Helper()
	s.Stop()
	s.Args = nil
	s.Start()
	node, _ := accelNode(t, s, "ProbeFailed")
	if node.Status.Accelerator == v1alpha1.AcceleratorKVM {
		t.Fatalf("auto chose KVM the second time")
	}
	v = vmWait(t, s, "vm1", time.Minute, "Running, adopted", vmPhase(v1alpha1.VMPhaseRunning))
	if c := v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionSoftwareEmulation); c == nil || c.Status != v1alpha1.ConditionFalse {
		t.Fatalf("the adopted VM started under KVM reports SoftwareEmulation %+v", c)
	}
	s.MustCLI("", "vm", "stop", "vm1", "--force", "--wait")
	s.MustCLI("", "vm", "start", "vm1", "--wait")
	v = vmWait(t, s, "vm1", 2*time.Minute, "Running under TCG", func(v *v1alpha1.VirtualMachine) bool {
		c := v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionSoftwareEmulation)
		return v.Status.Phase == v1alpha1.VMPhaseRunning && c != nil && c.Status == v1alpha1.ConditionTrue
	})
	accelCheckEmulation(t, v, node)
	vmWaitSerial(t, s, "vm1", "RAKHSH-GUEST: ready", 1)
	s.MustCLI("", "delete", "vm", "vm1")
	vmWait(t, s, "vm1", time.Minute, "deleted", func(v *v1alpha1.VirtualMachine) bool { return v == nil })
}

// accelShim writes a stand-in for qemu-system-x86_64 that plays a host whose KVM passes the
// probe but fails guests (nested KVM without full emulation): the probe and TCG runs go to
// the real QEMU under TCG; a VM started with -accel kvm dies with QEMU's KVM internal error.
func accelShim(t *testing.T) string {
	t.Helper()
	real, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		skipOrFail(t, "qemu-system-x86_64 missing: apt-get install qemu-system-x86")
	}
	// QEMU runs as the unprivileged QEMU user, which must reach the stand-in: not in
	// t.TempDir(), whose parent is root's (0700).
	dir, err := os.MkdirTemp("", "rakhsh-accel-shim")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	script := `#!/bin/bash
# A host whose KVM boots the probe but kills guests (test stand-in; see accel_test.go).
args=("$@")
for i in "${!args[@]}"; do
  case "${args[$i]}" in
    q35,accel=kvm) args[$i]=q35,accel=tcg ;;
    host|host,*) args[$i]=max ;;
    -accel) if [ "${args[$((i+1))]}" = kvm ]; then
        echo "KVM internal error. Suberror: 1" >&2
        echo "extra data[0]: 0x0000000000000001" >&2
        echo "emulation failure" >&2
        echo "EAX=00000000 EBX=00000000 ECX=00000000 EDX=000206a1" >&2
        exit 1
      fi ;;
  esac
done
exec ` + real + ` "${args[@]}"
`
	if err := os.WriteFile(filepath.Join(dir, "qemu-system-x86_64"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestAcceleratorRuntimeFallback: on a host whose KVM passes the probe but kills guests,
// auto first chooses KVM; the first VM's KVM failure switches the node to TCG (the Node's KVM
// condition and an event say why), the VM starts again under TCG and boots, and a restarted
// server remembers the switch.
func TestAcceleratorRuntimeFallback(t *testing.T) {
	sideBySide(t)
	vmGuestDir(t)
	shim := accelShim(t)
	// A KVM device that opens, so that the probe runs on hosts without one too (the shim
	// never lets QEMU use it).
	dev := filepath.Join(t.TempDir(), "kvm")
	// Open to the QEMU user, as /dev/kvm of group kvm with mode 0660 is on a host where KVM works.
	if err := os.WriteFile(dev, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dev, 0o666); err != nil { // past the umask
		t.Fatal(err)
	}
	s := &Serve{t: t, DataDir: t.TempDir(), Env: []string{"PATH=" + shim + ":" + os.Getenv("PATH")}, Args: []string{"--kvm-device", dev}}
	s.Start()
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("rakhsh serve log:\n%s", s.Logs())
		}
		for uid, pid := range testutil.QEMUPIDs(s.DataDir) {
			t.Errorf("QEMU of %s (pid %d) still runs at the end of the test", uid, pid)
		}
	})
	node, _ := accelNode(t, s, "ProbeBooted")
	if node.Status.Accelerator != v1alpha1.AcceleratorKVM {
		t.Fatalf("the probe passed, yet the node reports %s", node.Status.Accelerator)
	}
	vmSetupGuest(t, s, "root")
	s.MustCLI(vmManifest("vm1", "root", "AlwaysOnUnlessStoppedManually", "256Mi"), "apply", "-f", "-")

	node, cond := accelNode(t, s, "FailedAtRuntime")
	if node.Status.Accelerator != v1alpha1.AcceleratorTCG || cond.Status != v1alpha1.ConditionFalse ||
		!strings.Contains(cond.Message, "KVM internal error. Suberror: 1; emulation failure") || !strings.Contains(cond.Message, "default/vm1") {
		t.Fatalf("after the KVM failure: node accelerator %s, condition %+v", node.Status.Accelerator, cond)
	}
	v := vmWait(t, s, "vm1", 2*time.Minute, "Running under TCG", vmPhase(v1alpha1.VMPhaseRunning))
	accelCheckEmulation(t, v, node)
	vmWaitSerial(t, s, "vm1", "RAKHSH-GUEST: ready", 1)
	events := s.MustCLI("", "get", "events")
	for _, w := range []string{"KVMUnreliable", "emulation failure"} {
		if !strings.Contains(events, w) {
			t.Errorf("events lack %q:\n%s", w, events)
		}
	}

	s.Stop()
	s.Start()
	// The restarted agent's first heartbeat replaces the condition the old one left.
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, cond := accelNode(t, s, "FailedAtRuntime")
		if strings.Contains(cond.Message, "remembered in") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after a restart the node forgot the KVM failure: %+v", cond)
		}
		time.Sleep(200 * time.Millisecond)
	}
	s.MustCLI("", "delete", "vm", "vm1")
	vmWait(t, s, "vm1", time.Minute, "deleted", func(v *v1alpha1.VirtualMachine) bool { return v == nil })
}
