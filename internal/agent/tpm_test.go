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

// TestEnsureNVRAM: the variable store is copied once, kept across starts, and made anew when
// the template (the bootloader) changes.
func TestEnsureNVRAM(t *testing.T) {
	dir := t.TempDir()
	plain, secure := filepath.Join(dir, "VARS.fd"), filepath.Join(dir, "VARS.ms.fd")
	if err := os.WriteFile(plain, []byte("plain"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(secure, []byte("secure-keys"), 0o644); err != nil {
		t.Fatal(err)
	}
	nv := filepath.Join(dir, "vm", "nvram.fd")
	if err := os.MkdirAll(filepath.Dir(nv), 0o700); err != nil {
		t.Fatal(err)
	}
	read := func() string { b, _ := os.ReadFile(nv); return string(b) }
	if r, err := ensureNVRAM(plain, nv); err != nil || r || read() != "plain" {
		t.Fatalf("first boot: replaced %v err %v content %q", r, err, read())
	}
	// The guest writes its variables; the next start keeps them.
	if err := os.WriteFile(nv, []byte("plain+boot-entries"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r, err := ensureNVRAM(plain, nv); err != nil || r || read() != "plain+boot-entries" {
		t.Fatalf("second boot: replaced %v err %v content %q", r, err, read())
	}
	// EFI -> EFIWithSecureBoot: a new store with the keys.
	if r, err := ensureNVRAM(secure, nv); err != nil || !r || read() != "secure-keys" {
		t.Fatalf("bootloader change: replaced %v err %v content %q", r, err, read())
	}
	// A store from before the marker: kept, and the marker written.
	if err := os.Remove(nv + ".template"); err != nil {
		t.Fatal(err)
	}
	if r, err := ensureNVRAM(secure, nv); err != nil || r || read() != "secure-keys" {
		t.Fatalf("no marker: replaced %v err %v content %q", r, err, read())
	}
	if b, _ := os.ReadFile(nv + ".template"); string(b) != secure {
		t.Fatalf("marker %q", b)
	}
}
