package qemu

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// The matrix cases cover every valid osType × bootloader × enableParavirtualization ×
// accelerator combination with the same hardware: a qcow2 root disk, a raw data disk, an
// install ISO that boots first, a second (driver) ISO and one NIC. Windows VMs also get a TPM.
// Legacy allows only BIOS, so there are (2×3×2 + 2) × 2 = 28 cases, each with a golden file
// testdata/matrix-OSTYPE-BOOTLOADER-pvon|pvoff[-tcg].golden (no suffix: KVM, the production
// setting; the real-QEMU test runs the KVM cases under TCG where the host's KVM fails the
// accelerator probe).

type matrixCombo struct {
	os   v1alpha1.OSType
	boot v1alpha1.Bootloader
	pv   bool
	tcg  bool
}

func (m matrixCombo) name() string {
	pv := "pvoff"
	if m.pv {
		pv = "pvon"
	}
	accel := ""
	if m.tcg {
		accel = "-tcg"
	}
	return fmt.Sprintf("matrix-%s-%s-%s%s", strings.ToLower(string(m.os)), strings.ToLower(string(m.boot)), pv, accel)
}

func matrixCombos() []matrixCombo {
	var out []matrixCombo
	for _, os := range []v1alpha1.OSType{v1alpha1.OSTypeGeneric, v1alpha1.OSTypeWindows, v1alpha1.OSTypeLegacy} {
		for _, boot := range []v1alpha1.Bootloader{v1alpha1.BootloaderBIOS, v1alpha1.BootloaderEFI, v1alpha1.BootloaderEFIWithSecureBoot} {
			if os == v1alpha1.OSTypeLegacy && boot != v1alpha1.BootloaderBIOS {
				continue
			}
			for _, pv := range []bool{true, false} {
				for _, tcg := range []bool{false, true} {
					out = append(out, matrixCombo{os, boot, pv, tcg})
				}
			}
		}
	}
	return out
}

func (m matrixCombo) input(e caseEnv) Input {
	in := Input{
		VM: testVM(func(vm *v1alpha1.VirtualMachine) {
			vm.Spec.OSType = m.os
			vm.Spec.Bootloader = m.boot
			vm.Spec.EnableParavirtualization = ptr(m.pv)
			vm.Spec.CPU.Cores = 2
			vm.Spec.Memory.Size = "1Gi"
		}),
		Node: kvmNode(), RunDir: e.run,
		Disks: []Disk{
			{ID: "vd-root", Path: e.disk("root.qcow2"), Format: FormatQCOW2, BootOrder: 2, Serial: "root"},
			{ID: "vd-data", Path: e.disk("data.raw"), Format: FormatRaw},
			{ID: "cvi-install", Path: e.disk("install.iso"), Format: FormatRaw, CDROM: true, ReadOnly: true, BootOrder: 1},
			{ID: "cvi-drivers", Path: e.disk("drivers.iso"), Format: FormatRaw, CDROM: true, ReadOnly: true},
		},
		NICs: []NIC{userNIC()},
	}
	if m.tcg {
		in.Node = tcgNode()
	}
	if m.boot != v1alpha1.BootloaderBIOS {
		in.NVRAMPath = e.disk("efivars.fd")
	}
	if m.os == v1alpha1.OSTypeWindows {
		in.TPMSocket = filepath.Join(e.run, "swtpm.sock")
	}
	return in
}

func init() {
	for _, m := range matrixCombos() {
		configCases = append(configCases, configCase{name: m.name(), input: m.input})
	}
}

// TestMatrixProperties checks, beyond the golden text, what each combination must and must not
// contain.
func TestMatrixProperties(t *testing.T) {
	combos := matrixCombos()
	if len(combos) != 28 {
		t.Fatalf("%d combinations, want 28", len(combos))
	}
	for _, m := range combos {
		t.Run(m.name(), func(t *testing.T) {
			in := m.input(goldenEnv(configCase{}))
			cfg, err := Build(in)
			if err != nil {
				t.Fatalf("Build: %v", err)
			}
			args := strings.Join(cfg.Args, "\n")
			has := func(s string) bool { return strings.Contains(args, s) }
			want := func(cond bool, s string) {
				t.Helper()
				if cond != has(s) {
					t.Errorf("contains %q = %v, want %v", s, has(s), cond)
				}
			}
			win := m.os == v1alpha1.OSTypeWindows
			legacy := m.os == v1alpha1.OSTypeLegacy
			efi := m.boot != v1alpha1.BootloaderBIOS
			secure := m.boot == v1alpha1.BootloaderEFIWithSecureBoot

			want(legacy, "-machine\npc,")
			want(!legacy, "-machine\nq35,")
			// Windows: Hyper-V enlightenments (KVM only), local-time RTC, TPM, no HPET.
			cpu := argValues(cfg.Args, "-cpu")
			for _, hv := range []string{"hv_relaxed", "hv_vapic", "hv_spinlocks=0x1fff", "hv_vpindex", "hv_runtime",
				"hv_time", "hv_synic", "hv_stimer", "hv_frequencies", "hv_reset", "hv_tlbflush", "hv_ipi"} {
				if got := len(cpu) == 1 && strings.Contains(","+cpu[0]+",", ","+hv+","); got != (win && !m.tcg) {
					t.Errorf("-cpu %v: %s present = %v, want %v", cpu, hv, got, win && !m.tcg)
				}
			}
			want(!m.tcg, "-accel\nkvm")
			want(m.tcg, "-accel\ntcg,thread=multi")
			want(win, "-rtc\nbase=localtime,driftfix=slew")
			want(!win, "-rtc\nbase=utc")
			want(win, "hpet=off")
			want(win, "-tpmdev\nemulator,id=tpm0,chardev=chrtpm")
			want(win, "tpm-crb,")
			// Firmware.
			want(efi, "pflash0=fw-code")
			want(secure, "smm=on")
			want(secure, "driver=cfi.pflash01,property=secure,value=on")
			want(secure, ovmfSecureCode)
			want(efi && !secure, ovmfCode)
			if efi && cfg.NVRAMTemplate == "" {
				t.Error("EFI without an NVRAM template")
			}
			if secure && cfg.NVRAMTemplate != ovmfSecureVars {
				t.Errorf("NVRAM template %q, want the Microsoft-keys store %q", cfg.NVRAMTemplate, ovmfSecureVars)
			}
			// Paravirtualization.
			want(m.pv, "virtio-blk-pci,")
			want(!m.pv, "ide-hd,")
			want(m.pv, "virtio-net-pci,")
			want(!m.pv, "e1000,")
			want(m.pv, "virtio-rng-pci")
			want(m.pv, GuestAgentChannel)
			// Two CD-ROMs, the install ISO first in the boot order, the root disk second.
			if n := strings.Count(args, "\nide-cd,"); n != 2 {
				t.Errorf("%d CD-ROMs, want 2", n)
			}
			for _, d := range cfg.Disks {
				if d.ID == "cvi-install" && !strings.Contains(args, "ide-cd,id="+d.Device+",drive="+d.Node) {
					t.Errorf("install ISO device %s missing", d.Device)
				}
			}
			want(true, "id=disk-cvi-install,drive=fmt-cvi-install,bus=ide.")
			if !strings.Contains(args, "bootindex=1") || !strings.Contains(args, "bootindex=2") {
				t.Error("boot order not applied")
			}
			want(true, "-boot\nstrict=on")
		})
	}
}
