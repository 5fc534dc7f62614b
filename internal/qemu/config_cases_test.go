package qemu

import (
	"path/filepath"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// The configuration cases shared by the golden test, the real-QEMU test and the fuzz seed
// corpus. Each case builds its Input from a caseEnv, so that the golden files use fixed paths
// and the real-QEMU test uses files it created.

const testUID = "6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f"

// Debian's OVMF files (package ovmf).
const (
	ovmfCode       = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	ovmfVars       = "/usr/share/OVMF/OVMF_VARS_4M.fd"
	ovmfSecureCode = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
	ovmfSecureVars = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"
)

// caseEnv are the directories a case puts its files in.
type caseEnv struct {
	run  string // RunDir
	data string // disk images, NVRAM
}

func (e caseEnv) disk(name string) string { return filepath.Join(e.data, name) }

type configCase struct {
	name string
	// weirdDirs asks for directories whose names hold ',' and '='.
	weirdDirs bool
	input     func(e caseEnv) Input
}

func ptr[T any](v T) *T { return &v }

func testVM(mut func(*v1alpha1.VirtualMachine)) *v1alpha1.VirtualMachine {
	vm := &v1alpha1.VirtualMachine{
		TypeMeta:   v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachine"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: "vm1", Namespace: "proj-a", UID: testUID},
		Spec: v1alpha1.VirtualMachineSpec{
			CPU:    v1alpha1.VirtualMachineCPU{Cores: 1},
			Memory: v1alpha1.VirtualMachineMemory{Size: "512Mi"},
		},
	}
	if mut != nil {
		mut(vm)
	}
	return vm
}

func tcgNode() NodeFacts {
	return NodeFacts{
		HostCPUs: 32, QEMUVersion: "7.2.22", HasSandbox: true,
		OVMFCode: ovmfCode, OVMFVars: ovmfVars, OVMFSecureCode: ovmfSecureCode, OVMFSecureVarsTemplate: ovmfSecureVars,
	}
}

func kvmNode() NodeFacts {
	n := tcgNode()
	n.KVM, n.VhostNet = true, true
	return n
}

func rootDisk(e caseEnv) Disk {
	return Disk{ID: "root", Path: e.disk("root.qcow2"), Format: FormatQCOW2, BootOrder: 1, Serial: "root"}
}

func userNIC() NIC { return NIC{ID: "main", MAC: "52:54:00:aa:bb:01"} }

var configCases = []configCase{
	{name: "minimal-tcg", input: func(e caseEnv) Input {
		return Input{VM: testVM(nil), Node: tcgNode(), RunDir: e.run, Disks: []Disk{rootDisk(e)}}
	}},
	{name: "kvm", input: func(e caseEnv) Input {
		return Input{
			VM: testVM(func(vm *v1alpha1.VirtualMachine) {
				vm.Spec.CPU.Cores = 4
				vm.Spec.Memory.Size = "2Gi"
			}),
			Node: kvmNode(), RunDir: e.run, Disks: []Disk{rootDisk(e)},
			NICs: []NIC{{ID: "main", MAC: "52:54:00:AA:BB:01", Tap: "rk-tap-1", MTU: 1450}},
		}
	}},
	{name: "disks-cdrom", input: func(e caseEnv) Input {
		return Input{
			VM: testVM(func(vm *v1alpha1.VirtualMachine) { vm.Spec.Memory.Size = "1G" }), Node: tcgNode(), RunDir: e.run,
			Disks: []Disk{
				{ID: "vd-root", Path: e.disk("vd-root.qcow2"), Format: FormatQCOW2, BootOrder: 2, Serial: "vd-root",
					Backing: []BackingFile{{Path: e.disk("image-layer.qcow2"), Format: FormatQCOW2}, {Path: e.disk("image-base.raw"), Format: FormatRaw}}},
				{ID: "vd-data", Path: e.disk("vd-data.raw"), Format: FormatRaw, Serial: "data-1"},
				{ID: "debian.iso", Path: e.disk("debian.iso"), Format: FormatRaw, CDROM: true, BootOrder: 1},
				{ID: "vi-tools", Path: e.disk("tools.qcow2"), Format: FormatQCOW2, ReadOnly: true},
			},
			NICs: []NIC{userNIC()},
		}
	}},
	{name: "paravirt-off", input: func(e caseEnv) Input {
		return Input{
			VM:   testVM(func(vm *v1alpha1.VirtualMachine) { vm.Spec.EnableParavirtualization = ptr(false) }),
			Node: tcgNode(), RunDir: e.run,
			Disks: []Disk{
				rootDisk(e),
				{ID: "install", Path: e.disk("install.iso"), Format: FormatRaw, CDROM: true, BootOrder: 2},
			},
			NICs: []NIC{userNIC()},
		}
	}},
	{name: "legacy", input: func(e caseEnv) Input {
		return Input{
			VM:   testVM(func(vm *v1alpha1.VirtualMachine) { vm.Spec.OSType = v1alpha1.OSTypeLegacy }),
			Node: tcgNode(), RunDir: e.run,
			Disks: []Disk{
				{ID: "root", Path: e.disk("root.raw"), Format: FormatRaw, BootOrder: 1},
				{ID: "data", Path: e.disk("data.qcow2"), Format: FormatQCOW2},
				{ID: "cd", Path: e.disk("dos.iso"), Format: FormatRaw, CDROM: true, BootOrder: 2},
			},
			NICs: []NIC{userNIC()},
		}
	}},
	{name: "efi", input: func(e caseEnv) Input {
		return Input{
			VM:   testVM(func(vm *v1alpha1.VirtualMachine) { vm.Spec.Bootloader = v1alpha1.BootloaderEFI }),
			Node: tcgNode(), RunDir: e.run, Disks: []Disk{rootDisk(e)}, NVRAMPath: e.disk("nvram.fd"),
		}
	}},
	{name: "efi-secureboot", input: func(e caseEnv) Input {
		return Input{
			VM:   testVM(func(vm *v1alpha1.VirtualMachine) { vm.Spec.Bootloader = v1alpha1.BootloaderEFIWithSecureBoot }),
			Node: tcgNode(), RunDir: e.run, Disks: []Disk{rootDisk(e)}, NVRAMPath: e.disk("nvram.fd"),
		}
	}},
	{name: "windows-kvm-tpm", input: func(e caseEnv) Input {
		return Input{
			VM: testVM(func(vm *v1alpha1.VirtualMachine) {
				vm.Spec.OSType = v1alpha1.OSTypeWindows
				vm.Spec.Bootloader = v1alpha1.BootloaderEFIWithSecureBoot
				vm.Spec.CPU.Cores = 8
				vm.Spec.Memory.Size = "8Gi"
			}),
			Node: kvmNode(), RunDir: e.run, Disks: []Disk{rootDisk(e)},
			NICs:      []NIC{{ID: "main", MAC: "52:54:00:aa:bb:02", Tap: "rk-win-1"}},
			NVRAMPath: e.disk("nvram.fd"), TPMSocket: filepath.Join(e.run, "tpm.sock"),
		}
	}},
	{name: "windows-kvm-hyperv-refused", input: func(e caseEnv) Input {
		// A host whose KVM refuses VP_INDEX (and so what depends on it) keeps the others.
		n := kvmNode()
		n.HypervRefused = []string{"hv_vpindex", "hv_synic", "hv_stimer", "hv_tlbflush", "hv_ipi"}
		return Input{
			VM:   testVM(func(vm *v1alpha1.VirtualMachine) { vm.Spec.OSType = v1alpha1.OSTypeWindows }),
			Node: n, RunDir: e.run, Disks: []Disk{rootDisk(e)},
		}
	}},
	{name: "windows-tcg-install", input: func(e caseEnv) Input {
		return Input{
			VM: testVM(func(vm *v1alpha1.VirtualMachine) {
				vm.Spec.OSType = v1alpha1.OSTypeWindows
				vm.Spec.EnableParavirtualization = ptr(false)
				vm.Spec.CPU.Cores = 2
				vm.Spec.Memory.Size = "4Gi"
			}),
			Node: tcgNode(), RunDir: e.run,
			Disks: []Disk{
				{ID: "root", Path: e.disk("win.qcow2"), Format: FormatQCOW2, BootOrder: 2},
				{ID: "win-iso", Path: e.disk("win.iso"), Format: FormatRaw, CDROM: true, BootOrder: 1},
				{ID: "virtio-win", Path: e.disk("virtio-win.iso"), Format: FormatRaw, CDROM: true},
			},
			NICs: []NIC{userNIC()},
		}
	}},
	{name: "cores-20", input: func(e caseEnv) Input {
		return Input{
			VM:   testVM(func(vm *v1alpha1.VirtualMachine) { vm.Spec.CPU.Cores = 20 }),
			Node: tcgNode(), RunDir: e.run, Disks: []Disk{rootDisk(e)},
		}
	}},
	{name: "cores-17", input: func(e caseEnv) Input {
		return Input{
			VM:   testVM(func(vm *v1alpha1.VirtualMachine) { vm.Spec.CPU.Cores = 17 }),
			Node: tcgNode(), RunDir: e.run, Disks: []Disk{rootDisk(e)},
		}
	}},
	{name: "hotplug", input: func(e caseEnv) Input {
		return Input{
			VM: testVM(func(vm *v1alpha1.VirtualMachine) {
				vm.Spec.CPU.Cores, vm.Spec.CPU.MaxCores = 2, 6
				vm.Spec.Memory.Size, vm.Spec.Memory.MaxSize = "512Mi", "2Gi"
			}),
			Node: tcgNode(), RunDir: e.run, Disks: []Disk{rootDisk(e)},
		}
	}},
	{name: "nic-tap", input: func(e caseEnv) Input {
		return Input{
			VM: testVM(nil), Node: tcgNode(), RunDir: e.run, Disks: []Disk{rootDisk(e)},
			NICs: []NIC{
				{ID: "main", MAC: "52:54:00:aa:bb:01", Tap: "rk-tap-1", MTU: 1400},
				{ID: "pxe", MAC: "52:54:00:aa:bb:02", Tap: "rk-tap-2", Model: ModelE1000, BootOrder: 2},
			},
		}
	}},
	{name: "nic-user", input: func(e caseEnv) Input {
		return Input{
			VM: testVM(nil), Node: tcgNode(), RunDir: e.run, Disks: []Disk{rootDisk(e)},
			NICs: []NIC{userNIC(), {ID: "second", MAC: "52:54:00:aa:bb:03", BootOrder: 2}},
		}
	}},
	{name: "cpu-model", input: func(e caseEnv) Input {
		n := tcgNode()
		n.HasSandbox = false
		n.QEMUBinary = "/usr/bin/qemu-system-x86_64"
		return Input{
			VM: testVM(nil), Node: n, RunDir: e.run, Disks: []Disk{rootDisk(e)},
			CPUModel: "Nehalem", CPUFeatures: []string{"+aes", "-x2apic", "pdpe1gb"},
		}
	}},
	{name: "comma-escaping", weirdDirs: true, input: func(e caseEnv) Input {
		return Input{
			VM:   testVM(func(vm *v1alpha1.VirtualMachine) { vm.Spec.Bootloader = v1alpha1.BootloaderEFI }),
			Node: tcgNode(), RunDir: e.run,
			Disks: []Disk{
				{ID: "root,1", Path: e.disk("root,1=x.qcow2"), Format: FormatQCOW2, BootOrder: 1,
					Backing: []BackingFile{{Path: e.disk("base,\"b\".qcow2"), Format: FormatQCOW2}}},
				{ID: "cd", Path: e.disk("c,d.iso"), Format: FormatRaw, CDROM: true},
			},
			NICs:      []NIC{userNIC()},
			NVRAMPath: e.disk("nv,ram.fd"), TPMSocket: filepath.Join(e.run, "tpm,0.sock"),
		}
	}},
}

// goldenEnv are the fixed directories of the golden files.
func goldenEnv(c configCase) caseEnv {
	if c.weirdDirs {
		return caseEnv{run: "/run/rakhsh/vm,s=x/" + testUID, data: "/var/lib/rakhsh/pool,a=b"}
	}
	return caseEnv{run: "/run/rakhsh/vms/" + testUID, data: "/var/lib/rakhsh/pools/default"}
}
