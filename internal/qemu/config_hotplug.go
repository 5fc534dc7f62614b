package qemu

import (
	"os"
	"strconv"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// Room for hot-plugged devices (docs/hotplug.md). A VM with paravirtualization gets a
// virtio-scsi controller for hot-plugged CD-ROMs and, on q35, HotplugPorts empty PCIe root
// ports: the q35 root bus takes no hot-plugged device, a root port takes one. They come after
// every other device, so they move no address a guest has seen. The i440fx machine (osType
// Legacy) hot-plugs onto its root bus through ACPI.
const (
	// HotplugPorts is the number of empty root ports of a q35 VM.
	HotplugPorts = 4
	// HotplugSCSI is the qdev id of the virtio-scsi controller hot-plugged CD-ROMs go to.
	HotplugSCSI = "hpscsi0"
)

// HotplugPort is the qdev id of empty root port i (0 ≤ i < HotplugPorts).
func HotplugPort(i int) string { return "hotplug" + strconv.Itoa(i) }

// Hotplug says whether vm is started with room for hot-plugged devices: it has
// paravirtualization (a guest without virtio drivers would not see them). The second result
// says it hot-plugs into root ports (q35) rather than onto the root bus (i440fx).
func Hotplug(vm *v1alpha1.VirtualMachine) (ok, rootPorts bool) {
	legacy := vm.Spec.OSType == v1alpha1.OSTypeLegacy
	para := !legacy
	if p := vm.Spec.EnableParavirtualization; p != nil {
		para = *p
	}
	return para, !legacy
}

// hotplugRoom adds the hot-plug controller and ports.
func (b *build) hotplugRoom() {
	if !b.paravirt {
		return
	}
	b.add("-device", "virtio-scsi-pci,id="+HotplugSCSI)
	if b.m != machineQ35 {
		return
	}
	for i := 0; i < HotplugPorts; i++ {
		b.add("-device", newOpts("pcie-root-port").set("id", HotplugPort(i)).set("chassis", strconv.Itoa(i+1)).String())
	}
}

// OpenTap attaches to the existing tap device name as QEMU's tap netdev would (IFF_TAP,
// IFF_NO_PI, IFF_VNET_HDR), for a NIC hot-plugged with netdev_add: the caller passes the
// descriptor to QEMU with getfd.
func OpenTap(name string) (*os.File, error) {
	return openPassed(Passed{Kind: PassTap, Path: name, Write: true})
}
