package agent

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

func TestTPMProcessIdentity(t *testing.T) {
	dir := t.TempDir()
	if findTPM(dir) != 0 {
		t.Fatal("a TPM found without a pid file")
	}
	// A pid file naming a live process that is not swtpm (this test) is not believed.
	if err := os.WriteFile(filepath.Join(dir, tpmPIDName), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if findTPM(dir) != 0 {
		t.Fatal("the test process was taken for the VM's swtpm")
	}
	for _, junk := range []string{"", "x", "1", "-5", "99999999999999999999"} {
		os.WriteFile(filepath.Join(dir, tpmPIDName), []byte(junk), 0o600)
		if readTPMPID(dir) != 0 {
			t.Errorf("pid file %q read as a pid", junk)
		}
	}
	// stopTPM without a swtpm only cleans up.
	os.WriteFile(tpmSocketPath(dir), nil, 0o600)
	stopTPM(dir)
	for _, n := range []string{tpmSocketName, tpmPIDName} {
		if _, err := os.Stat(filepath.Join(dir, n)); !os.IsNotExist(err) {
			t.Errorf("%s left by stopTPM: %v", n, err)
		}
	}
}

func TestNeedsTPMAndSecondPress(t *testing.T) {
	win := &v1alpha1.VirtualMachine{Spec: v1alpha1.VirtualMachineSpec{OSType: v1alpha1.OSTypeWindows}}
	gen := &v1alpha1.VirtualMachine{Spec: v1alpha1.VirtualMachineSpec{OSType: v1alpha1.OSTypeGeneric}}
	if !needsTPM(win) || needsTPM(gen) {
		t.Error("only Windows VMs get a TPM")
	}
	in := &instance{}
	if d := secondPressAfter(win, in); d != windowsSecondPress || d <= 0 || d > 30*time.Second {
		t.Errorf("second press after %v for Windows", d)
	}
	if d := secondPressAfter(gen, in); d != 0 {
		t.Errorf("a Generic VM gets a second press after %v", d)
	}
	in.powerdown2 = true
	if d := secondPressAfter(win, in); d != 0 {
		t.Error("a third press")
	}
}
