package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/storage"
	"github.com/rakhsh/rakhsh/internal/testutil"
)

// TestProvisioning gives three VMs of the test guest their provisioning medium: inline
// cloud-init user data, user data from a Secret (a script the guest runs), and a sysprep
// Secret. The guest reads the NoCloud seed (markers on the console); the sysprep ISO is read
// back with isoinfo. The Secrets' contents appear nowhere in the VM objects, events or logs.
// A VM whose Secret is missing does not start and says which Secret.
func TestProvisioning(t *testing.T) {
	sideBySide(t)
	vmGuestDir(t)
	winNeed(t, "isoinfo", "genisoimage")
	s := vmServe(t)
	vmSetupGuest(t, s, "pv-inline", "pv-ref", "pv-sysprep")
	const (
		secretScriptLine = "echo secret-$((6*7))"
		secretPassword   = "Adm1n-P4ss-in-unattend"
	)
	s.MustCLI(`apiVersion: v1
kind: Secret
metadata: {name: ci-script}
type: provisioning.virtualization.deckhouse.io/cloud-init
stringData:
  userData: |
    #!/bin/sh
    # RAKHSH-MARKER from-secret
    `+secretScriptLine+`
---
apiVersion: v1
kind: Secret
metadata: {name: sysprep}
type: provisioning.virtualization.deckhouse.io/sysprep
stringData:
  autounattend.xml: |
    <unattend><AdministratorPassword>`+secretPassword+`</AdministratorPassword></unattend>
  unattend.xml: |
    <unattend><ComputerName>pv-sysprep</ComputerName></unattend>
---
`+pvVM("pv-inline", "192Mi", "0", "pv-inline", "type: UserData\nuserData: |\n  #cloud-config\n  # RAKHSH-MARKER inline-7")+`---
`+pvVM("pv-ref", "192Mi", "0", "pv-ref", "type: UserDataRef\nuserDataRef: {kind: Secret, name: ci-script}")+`---
`+pvVM("pv-sysprep", "192Mi", "0", "pv-sysprep", "type: SysprepRef\nsysprepRef: {name: sysprep}")+`---
`+pvVM("pv-missing", "128Mi", "", "pv-inline", "type: UserDataRef\nuserDataRef: {name: no-such-secret}"), "apply", "-f", "-")

	// The missing Secret: the start fails, naming it.
	v := vmWait(t, s, "pv-missing", time.Minute, "failed to start", func(v *v1alpha1.VirtualMachine) bool {
		return v != nil && v.Status.LastExit != nil && v.Status.LastExit.Reason == v1alpha1.ExitStartFailed
	})
	if !strings.Contains(v.Status.LastExit.Message, `Secret "no-such-secret" not found`) {
		t.Errorf("start failure message %q does not name the missing Secret", v.Status.LastExit.Message)
	}
	s.MustCLI("", "delete", "vm", "pv-missing", "--wait", "--timeout", "60s")

	inline := vmWait(t, s, "pv-inline", time.Minute, "Running", vmPhase(v1alpha1.VMPhaseRunning))
	ref := vmWait(t, s, "pv-ref", time.Minute, "Running", vmPhase(v1alpha1.VMPhaseRunning))
	sp := vmWait(t, s, "pv-sysprep", time.Minute, "Running", vmPhase(v1alpha1.VMPhaseRunning))

	// Inline user data and the NoCloud meta-data.
	vmWaitSerial(t, s, "pv-inline", "RAKHSH-GUEST: ready", 1)
	log := vmLog(t, s, "pv-inline")
	for _, want := range []string{"RAKHSH-GUEST: userdata # RAKHSH-MARKER inline-7", "RAKHSH-GUEST: instance-id " + inline.UID, "RAKHSH-GUEST: hostname pv-inline"} {
		if !hasLine(log, want) {
			t.Errorf("pv-inline: no line %q; log:\n%s", want, log)
		}
	}
	// User data from the Secret: the marker, and the script ran.
	vmWaitSerial(t, s, "pv-ref", "RAKHSH-GUEST: ready", 1)
	log = vmLog(t, s, "pv-ref")
	for _, want := range []string{"RAKHSH-GUEST: userdata # RAKHSH-MARKER from-secret", "RAKHSH-GUEST: userscript secret-42", "RAKHSH-GUEST: instance-id " + ref.UID} {
		if !hasLine(log, want) {
			t.Errorf("pv-ref: no line %q; log:\n%s", want, log)
		}
	}
	// The sysprep medium is attached as a CD-ROM and holds both answer files.
	vmWaitSerial(t, s, "pv-sysprep", "RAKHSH-GUEST: ready", 1)
	iso := filepath.Join(storage.VMRunDir(s.DataDir, sp.UID), "provisioning.iso")
	cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(testutil.QEMUPIDs(s.DataDir)[sp.UID]) + "/cmdline")
	if !strings.Contains(string(cmdline), iso) || !strings.Contains(string(cmdline), "ide-cd,id=disk-provisioning") {
		t.Errorf("the sysprep ISO is not a CD-ROM of the VM: %q", strings.ReplaceAll(string(cmdline), "\x00", " "))
	}
	out, err := exec.Command("isoinfo", "-J", "-f", "-i", iso).CombinedOutput()
	if err != nil {
		t.Fatalf("isoinfo -f: %v: %s", err, out)
	}
	if got := strings.Fields(string(out)); strings.Join(got, " ") != "/autounattend.xml /unattend.xml" {
		t.Errorf("sysprep ISO lists %q", got)
	}
	for name, want := range map[string]string{
		"autounattend.xml": "<unattend><AdministratorPassword>" + secretPassword + "</AdministratorPassword></unattend>\n",
		"unattend.xml":     "<unattend><ComputerName>pv-sysprep</ComputerName></unattend>\n",
	} {
		got, err := exec.Command("isoinfo", "-J", "-i", iso, "-x", "/"+name).Output()
		if err != nil || !bytes.Equal(got, []byte(want)) {
			t.Errorf("%s on the sysprep ISO: %v: %q, want %q", name, err, got, want)
		}
	}
	if fi, err := os.Stat(iso); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("sysprep ISO mode: %v %v", fi, err)
	}

	// The Secrets' contents stay out of the VMs, the events and the logs.
	leaks := []string{secretPassword, secretScriptLine, "from-secret"}
	var seen strings.Builder
	for _, n := range []string{"pv-inline", "pv-ref", "pv-sysprep"} {
		seen.WriteString(s.MustCLI("", "get", "vm", n, "-o", "yaml"))
		seen.WriteString(s.MustCLI("", "get", "vm", n, "-o", "json"))
	}
	seen.WriteString(s.MustCLI("", "get", "events", "-A", "-o", "yaml"))
	seen.WriteString(s.Logs())
	for _, l := range leaks {
		if strings.Contains(seen.String(), l) {
			t.Errorf("Secret content %q appears in a VM object, an event or the serve log", l)
		}
	}
	s.MustCLI("", "delete", "vm", "pv-inline", "pv-ref", "pv-sysprep", "--wait", "--timeout", "90s")
}

// pvVM is a VM of the test guest booting from disk, of memory mem and the given grace period
// (none if empty), whose spec.provisioning is the YAML lines of provisioning.
func pvVM(name, mem, grace, disk, provisioning string) string {
	return vmDoc{Name: name, Policy: "AlwaysOnUnlessStoppedManually", Memory: mem, Grace: grace, Refs: []string{vdRef(disk)},
		Extra: "  provisioning:\n" + indentLines(provisioning, "    ")}.String()
}
