// Package qemu builds QEMU command lines for Rakhsh VMs and (in other files) starts, adopts and
// stops QEMU processes.
//
// # Configuration
//
// [Build] turns a VirtualMachine, the facts of the node it runs on, and the host resources the
// agent prepared for it (disk files, taps, firmware variables, a swtpm socket) into the argv of
// one qemu-system-x86_64 process. Build is a pure function: no I/O, no clock, no randomness, and
// the same Input always gives the same Config, byte for byte. Everything it needs from the host
// comes in through [NodeFacts]; every file it names must be prepared by the caller.
//
// The generated machine:
//
//   - q35 (i440fx "pc" for osType Legacy), accelerated by KVM when the node has it and by
//     multi-threaded TCG otherwise; -nodefaults -no-user-config, so only the devices listed here
//     exist. vmport and guest-memory core dumps are off; S3/S4 are disabled.
//   - Started paused (-S): the agent connects QMP, applies cgroups and pinning, then sends cont.
//     QEMU is not daemonized (the agent starts it detached) and writes RunDir/qemu.pid.
//   - On guest shutdown or panic QEMU pauses instead of exiting (-action
//     shutdown=pause,panic=pause): the VM's state stays observable over QMP (status "shutdown" or
//     "guest-panicked") even while the agent is down, and the agent applies the run policy and
//     sends quit.
//   - Unix sockets only, all in RunDir: qmp.sock (QMP), serial.sock (first serial port),
//     vnc.sock (VNC, no TCP listener) and, with paravirtualization, qga.sock (the
//     qemu-guest-agent channel). Serial output is not logged by QEMU: a logfile= would grow
//     without bound, so the agent reads serial.sock and keeps a bounded ring itself.
//   - With [Input.PassFDs] (the agent's default: QEMU runs as an unprivileged user) QEMU opens
//     no host path of the VM: every file node opens /dev/fdset/N of a descriptor passed with
//     -add-fd, taps and /dev/vhost-net come as fd=, the sockets above are bound by the caller
//     and passed listening (VNC over QMP after start, see [Config.StartVNC]), the swtpm
//     connection is passed connected, and the caller writes the pidfile. See [Config.Passed].
//   - The VM is identified on the command line by -name guest=PROJECT_NAME and -uuid UID (the
//     object's metadata.uid, also the SMBIOS system UUID); see [MatchesCmdline].
//   - Every disk is opened with -blockdev in JSON form: a "file" protocol node and an explicit
//     format node (raw or qcow2; formats are never probed). qcow2 nodes get the backing chain
//     listed in [Disk.Backing], and "backing": null when there is none, so a backing file named
//     inside a (possibly hostile) image header is never opened.
//   - Devices: standard VGA (works without drivers in every guest, BIOS and UEFI), a USB tablet
//     for absolute VNC pointing (xHCI on q35, UHCI on i440fx), pvpanic (GUEST_PANICKED for
//     Linux guests), and with paravirtualization virtio-rng, the guest-agent channel and a
//     memory balloon (free page reporting under KVM or QEMU 9.0+: freed guest pages go back
//     to the host; the node agent inflates it only when the node is short of memory, never
//     below the class's minimum). Devices are listed fixed devices first, NICs next and disks last (the
//     hot-plug ports and the balloon after them), so adding a disk never moves a NIC to
//     another PCI slot.
//   - The accelerator is given with -accel (QEMU refuses -accel together with -machine
//     accel=).
//
// Option values that QEMU parses as key=value lists have every ',' doubled (QEMU's escape),
// and input data never stands in the implied first position (QEMU would read "unix:/a=b" as
// a key "unix:/a"): hence -vnc vnc=unix:PATH. -blockdev uses JSON; -pidfile and -uuid take their
// argument verbatim. Names that cannot be escaped safely (CPU models, tap names, MACs,
// serials) are validated against strict patterns.
package qemu

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/qemu/accel"
)

// DefaultBinary is the QEMU binary used when NodeFacts.QEMUBinary is empty; the caller looks it
// up in PATH.
const DefaultBinary = "qemu-system-x86_64"

// MinQEMUVersion is the oldest QEMU whose option syntax Build produces (Debian 12's).
const MinQEMUVersion = "7.2"

// Limits enforced by Build.
const (
	// MaxCores is the largest vCPU count: 8 sockets × 30 cores keeps every APIC ID below 255,
	// so neither machine type needs x2APIC with interrupt remapping.
	MaxCores = 240
	// MinMemoryMiB and MaxMemoryMiB bound spec.memory.size.
	MinMemoryMiB = 16
	MaxMemoryMiB = 16 << 20 // 16 TiB
	// MaxBackingDepth bounds the backing chain of one disk.
	MaxBackingDepth = 16
	// maxUnixPath is the longest unix socket path (sun_path is 108 bytes with its NUL).
	maxUnixPath = 107
)

// Files QEMU creates in Input.RunDir.
const (
	PIDFileName          = "qemu.pid"
	QMPSocketName        = "qmp.sock"
	SerialSocketName     = "serial.sock"
	VNCSocketName        = "vnc.sock"
	GuestAgentSocketName = "qga.sock"
)

// GuestAgentChannel is the virtio-serial port name qemu-guest-agent looks for.
const GuestAgentChannel = "org.qemu.guest_agent.0"

// Disk bus names.
const (
	BusVirtio = "virtio" // virtio-blk-pci
	BusSATA   = "sata"   // ide-hd / ide-cd on the q35 ICH9 AHCI controller (6 ports)
	BusIDE    = "ide"    // ide-hd / ide-cd on the i440fx PIIX3 IDE controller (2 buses × 2 units)
)

// Disk formats.
const (
	FormatQCOW2 = "qcow2"
	FormatRaw   = "raw"
)

// NIC models.
const (
	ModelVirtioNet = "virtio-net-pci"
	ModelE1000     = "e1000"
)

// NodeFacts are the facts about the host that shape the command line. The agent probes them
// once at start-up.
type NodeFacts struct {
	// KVM says VMs run under KVM; otherwise under TCG (software emulation). The agent
	// decides it with package accel.
	KVM bool
	// HypervRefused are the Hyper-V enlightenments the host's KVM refuses (see
	// accel.Choice); Windows guests get the others.
	HypervRefused []string
	// VhostNet says /dev/vhost-net is usable; tap NICs then get vhost=on (KVM only).
	VhostNet bool
	// HostCPUs is the number of logical CPUs of the host; under KVM a VM may not have more
	// vCPUs than this (0: unknown, not checked). Under TCG it is not checked.
	HostCPUs int
	// QEMUVersion is the version of QEMUBinary, e.g. "7.2.22"; Build refuses versions older than
	// MinQEMUVersion. Empty: unknown, assumed recent enough.
	QEMUVersion string
	// QEMUBinary is the path or name of qemu-system-x86_64; empty means DefaultBinary.
	QEMUBinary string
	// HasSandbox says QEMU was built with seccomp (-sandbox); Debian's is.
	HasSandbox bool
	// OVMFCode and OVMFVars are the OVMF firmware without Secure Boot and its variable store
	// template (Debian: /usr/share/OVMF/OVMF_CODE_4M.fd, OVMF_VARS_4M.fd).
	OVMFCode, OVMFVars string
	// OVMFSecureCode and OVMFSecureVarsTemplate are the SMM-enabled Secure Boot firmware and a
	// variable store with the Microsoft keys enrolled (Debian: OVMF_CODE_4M.secboot.fd,
	// OVMF_VARS_4M.ms.fd).
	OVMFSecureCode, OVMFSecureVarsTemplate string
}

// Disk is one block device the agent prepared for the VM.
type Disk struct {
	// ID identifies the disk within the VM (e.g. the VirtualDisk or image name). Device ids and
	// node names are derived from it; see [Config.Disks].
	ID string
	// Path is the absolute path of the image file.
	Path string
	// Format is "qcow2" or "raw"; required, never probed.
	Format string
	// Backing is the backing chain of a qcow2 image, nearest first (Backing[0] is Path's
	// backing file, the last entry the base image). It must match what the image headers name:
	// QEMU opens exactly these files and never follows a backing file name from a header.
	Backing []BackingFile
	// ReadOnly opens the image read-only (always for CD-ROMs). Read-only disks need the virtio
	// bus: ide-hd cannot use a read-only image.
	ReadOnly bool
	// CDROM attaches the image as a CD-ROM (ide-cd on the AHCI or IDE controller).
	CDROM bool
	// BootOrder is the boot priority, 1 first; 0 leaves the device out of the boot list.
	BootOrder int
	// Serial is the serial number the guest sees (at most 20 of [A-Za-z0-9_.-]); optional.
	Serial string
	// Bus is virtio, sata or ide. Empty: virtio with paravirtualization, otherwise sata on q35
	// and ide on i440fx; CD-ROMs always sit on sata (q35) or ide (i440fx).
	Bus string
}

// BackingFile is one layer of a qcow2 backing chain.
type BackingFile struct {
	// Path is the absolute path of the layer.
	Path string
	// Format is "qcow2" or "raw"; only qcow2 layers may have further layers below them.
	Format string
}

// NIC is one network interface the agent prepared for the VM.
type NIC struct {
	// ID identifies the interface within the VM; netdev and device ids are derived from it.
	ID string
	// MAC is the unicast MAC address, e.g. 52:54:00:12:34:56; required.
	MAC string
	// Tap is the host tap device (created by the agent, at most 15 of [A-Za-z0-9_.-]). Empty:
	// QEMU user-mode networking with restrict=on (the guest reaches neither the host nor the
	// outside; for tests and isolated VMs).
	Tap string
	// Model is virtio-net-pci or e1000. Empty: virtio-net-pci with paravirtualization,
	// otherwise e1000.
	Model string
	// MTU is the MTU announced to a virtio-net guest (host_mtu); 0: QEMU's default. e1000 has
	// no such property: its guest learns the MTU from DHCP, so MTU is not used there.
	MTU int
	// BootOrder is the network boot priority; 0 leaves the NIC out of the boot list and then
	// no option ROM is loaded for it.
	BootOrder int
}

// Input is everything Build needs.
type Input struct {
	// VM is the virtual machine; metadata name, namespace and uid are required.
	VM *v1alpha1.VirtualMachine
	// Node are the facts about the host.
	Node NodeFacts
	// RunDir is the per-VM directory, absolute, created by the caller with tight permissions.
	// Its pidfile and sockets are there (made by QEMU, or with PassFDs by the caller); see the
	// *Name constants.
	RunDir string
	// Disks are the block devices in command-line order (which fixes their PCI addresses).
	Disks []Disk
	// NICs are the network interfaces in command-line order.
	NICs []NIC
	// CPUModel is the QEMU CPU model (later from the VM class). Empty: "host" under KVM,
	// "max" (every feature TCG can emulate) under TCG. "host" needs KVM.
	CPUModel string
	// CPUFeatures adjust the model: "name" or "+name" enables, "-name" disables a feature.
	CPUFeatures []string
	// NVRAMPath is the VM's writable UEFI variable store; required with an EFI bootloader. The
	// caller creates it from Config.NVRAMTemplate before the first start.
	NVRAMPath string
	// TPMSocket is the control socket of the VM's swtpm (TPM 2.0 emulator). Empty: no TPM.
	// Any osType may have one; Windows 11 needs it.
	TPMSocket string
	// PassFDs makes QEMU open no host path of the VM itself, so that it can run as an
	// unprivileged user with no access to the data directory: disk and firmware files, the
	// UEFI variable store, taps and /dev/vhost-net are passed as descriptors, QMP, serial and
	// guest-agent sockets as listening sockets the caller binds, the TPM socket as a connected
	// one (Config.Passed); VNC is handed over after start (Config.LateVNC); and QEMU writes no
	// pidfile (the caller writes Config.PIDFile).
	PassFDs bool
	// Incoming makes QEMU the target of a live migration (-incoming defer): it starts with
	// the same devices as the source and waits for migrate-incoming.
	Incoming bool
	// MemoryRequestedMiB is the virtio-mem device's requested size at start (VMs with a
	// spec.memory.maxSize): 0 for a new start, whose guest boots with spec.memory.size; a
	// migration target gets its source's, so both have the same device state.
	MemoryRequestedMiB int64
	// HotCPUs are vCPUs hot-added after the start, beyond the spec.cpu.cores the VM booted
	// with: a migration's target gets them as -device arguments in the slots right after the
	// boot vCPUs (where the source's agent added them, with the same ids, CPUDeviceID), so
	// that both QEMUs have the same devices. Booting the target with them in -smp instead
	// changes device defaults that follow the vCPU count (virtio-blk queues), and QEMU refuses
	// the stream.
	HotCPUs int
	// NoBalloon leaves out the memory balloon a VM with paravirtualization gets: for a
	// migration's target whose source has none.
	NoBalloon bool
	// BalloonReporting sets the balloon's free page reporting: nil decides by the host (on
	// under KVM or with QEMU 9.0 or later; off under TCG with older QEMU, whose dirty tracking
	// loses the writes of a guest whose freed pages are being discarded while it migrates:
	// migrated guests crashed with corrupted page lists); a migration's target copies its
	// source's.
	BalloonReporting *bool
	// PadMemory adds MemoryPadKiB to the boot memory: nil decides by the host (under TCG with
	// QEMU older than 9.0, see MemoryPadKiB); a migration's target copies its source's, so
	// both have the same RAM size.
	PadMemory *bool
}

// MemoryPadKiB is what a VM under TCG with QEMU older than 9.0 gets beyond its boot memory,
// so that its RAM is not a whole number of 256 KiB (64 pages, one word of QEMU's dirty
// bitmap). Those QEMUs sync a RAM block's dirty bitmap a word at a time when the block is
// whole words long, and that path clears dirty bits without making TCG's TLB trap the next
// write to those pages: a guest write right after a sync was never sent, and migrated guests
// crashed with corrupted memory (fixed in QEMU 9.0, "physmem: Fix migration dirty bitmap
// coherency with TCG memory access"). A block of any other length is synced page by page,
// and that path resets the TLB. The guest sees 8 KiB more memory than it asked for.
const MemoryPadKiB = 8

// BalloonDevice is the qdev id of the memory balloon.
const BalloonDevice = "balloon0"

// CPUDeviceID is the qdev id of a hot-added vCPU in slot i (slots in topology order:
// socket, core, thread).
func CPUDeviceID(i int) string { return fmt.Sprintf("vcpu%d", i) }

// Config is the result of Build.
type Config struct {
	// Binary is the QEMU program to run.
	Binary string
	// Balloon says the VM has the memory balloon (BalloonDevice), and BalloonReporting that
	// it reports free pages (Input.BalloonReporting).
	Balloon, BalloonReporting bool
	// Args are its arguments (without argv[0]).
	Args []string
	// Files are files the caller must write into RunDir before starting QEMU, by name. Build
	// currently needs none; the map is always empty.
	Files map[string][]byte

	// PIDFile, QMPSocket, SerialSocket and VNCSocket are the pidfile and sockets in RunDir
	// (made by QEMU, or with PassFDs by the caller).
	PIDFile, QMPSocket, SerialSocket, VNCSocket string
	// GuestAgentSocket is the qemu-guest-agent channel; empty without paravirtualization.
	GuestAgentSocket string
	// NVRAMTemplate is the variable store template the caller copies to Input.NVRAMPath when that
	// file does not exist yet; empty for BIOS.
	NVRAMTemplate string
	// Accelerator is "kvm" or "tcg".
	Accelerator string
	// Topology is the CPU topology given to the guest.
	Topology Topology
	// MemoryMiB is the guest's boot memory (spec.memory.size), and MemoryPadKiB what QEMU
	// gives it beyond that (0 or MemoryPadKiB, Input.PadMemory).
	MemoryMiB    int64
	MemoryPadKiB int64
	// Hotplug is the memory hot-plug device (VMs with a spec.memory.maxSize); nil without.
	Hotplug *MemoryHotplug
	// Passed are the descriptors QEMU inherits with Input.PassFDs, in descriptor order: the
	// caller opens each (see OpenPassed) and starts QEMU with Passed[i] as descriptor
	// Passed[i].FD (3+i). Empty without PassFDs.
	Passed []Passed
	// LateVNC says QEMU starts with -vnc none: the caller binds VNCSocket and hands it to QEMU
	// over QMP (see StartVNC) before the guest runs.
	LateVNC bool
	// PassFDs is Input.PassFDs: the caller opens Passed, and writes PIDFile itself.
	PassFDs bool
	// Disks and NICs map each Input disk and NIC to the QEMU objects made for it, in input order.
	Disks []DiskObjects
	NICs  []NICObjects
}

// DiskObjects names the QEMU objects of one Disk.
type DiskObjects struct {
	ID string // Disk.ID
	// Device is the qdev id (for device_del and query-block's "qdev").
	Device string
	// Node is the format node name (for block_resize, snapshots, blockdev-del); FileNode is the
	// protocol node under it.
	Node, FileNode string
	// Bus is the bus used (virtio, sata or ide); Driver the device driver (virtio-blk-pci,
	// ide-hd, ide-cd).
	Bus, Driver string
}

// MemoryHotplug is the virtio-mem device of a VM that may grow its memory while it runs:
// QEMU has MaxMiB of memory space (-m maxmem), MemoryMiB of it boot memory, the rest
// (RegionMiB) a virtio-mem device whose requested-size the agent sets (qom-set) to what the
// spec asks beyond the boot memory.
type MemoryHotplug struct {
	// Device is the virtio-mem-pci qdev id, Backend its memory backend object id.
	Device, Backend string
	// MaxMiB is -m maxmem; RegionMiB the device's region (MaxMiB - boot memory).
	MaxMiB, RegionMiB int64
	// BlockMiB is the device's block size: requested sizes are multiples of it.
	BlockMiB int64
}

// Memory hot-plug objects.
const (
	MemoryHotplugDevice  = "vmem0"
	MemoryHotplugBackend = "vmem0mem"
	// MemoryHotplugBlockMiB is the virtio-mem block size (x86's transparent huge page).
	MemoryHotplugBlockMiB = 2
)

// NICObjects names the QEMU objects of one NIC.
type NICObjects struct {
	ID     string // NIC.ID
	Netdev string // -netdev id
	Device string // qdev id
	Model  string // device driver
}

// Topology is a guest CPU topology: Sockets × CoresPerSocket slots (one thread per core), of
// which the first Cores are present.
type Topology struct {
	Cores, Sockets, CoresPerSocket int
}

// MaxCPUs is the number of vCPU slots, Sockets × CoresPerSocket (≥ Cores).
func (t Topology) MaxCPUs() int { return t.Sockets * t.CoresPerSocket }

// CPUTopology returns the topology for cores vCPUs: one socket up to 16 cores, two up to 32,
// four up to 64, eight above; each socket has ceil(cores/sockets) cores. When cores is not a
// multiple of the socket count the last socket is partly empty: QEMU gets
// -smp cores,maxcpus=sockets×coresPerSocket, so the guest sees exactly cores vCPUs in a
// regular topology (the empty slots are unplugged, not offline).
func CPUTopology(cores int) (Topology, error) {
	if cores < 1 || cores > MaxCores {
		return Topology{}, fmt.Errorf("cpu.cores %d out of range 1..%d", cores, MaxCores)
	}
	var s int
	switch {
	case cores <= 16:
		s = 1
	case cores <= 32:
		s = 2
	case cores <= 64:
		s = 4
	default:
		s = 8
	}
	return Topology{Cores: cores, Sockets: s, CoresPerSocket: (cores + s - 1) / s}, nil
}

// HotplugTopology is the topology of a VM with cores vCPUs that may grow to maxCores while
// it runs: the slots of CPUTopology(maxCores), of which the first cores are present. A
// maxCores of 0 (or not above cores) gives CPUTopology(cores).
func HotplugTopology(cores, maxCores int) (Topology, error) {
	if maxCores <= cores {
		return CPUTopology(cores)
	}
	if cores < 1 {
		return Topology{}, fmt.Errorf("cpu.cores %d out of range 1..%d", cores, MaxCores)
	}
	if maxCores > MaxCores {
		return Topology{}, fmt.Errorf("cpu.maxCores %d out of range 1..%d", maxCores, MaxCores)
	}
	t, err := CPUTopology(maxCores)
	if err != nil {
		return Topology{}, err
	}
	t.Cores = cores
	return t, nil
}

// hotCPUs adds Input.HotCPUs vCPUs as devices into the slots after the boot vCPUs. A CPU
// device's type is the -cpu model's (its features and flags apply to it as to the others).
func (b *build) hotCPUs(topo Topology, cpu string) error {
	n := b.in.HotCPUs
	if n == 0 {
		return nil
	}
	if n < 0 || topo.Cores+n > topo.MaxCPUs() {
		return fmt.Errorf("%d hot-added vCPUs do not fit beside %d boot vCPUs in %d slots (spec.cpu.maxCores)", n, topo.Cores, topo.MaxCPUs())
	}
	model, _, _ := strings.Cut(cpu, ",")
	for i := topo.Cores; i < topo.Cores+n; i++ {
		b.add("-device", newOpts(model+"-x86_64-cpu").set("id", CPUDeviceID(i)).
			set("socket-id", strconv.Itoa(i/topo.CoresPerSocket)).set("core-id", strconv.Itoa(i%topo.CoresPerSocket)).set("thread-id", "0").String())
	}
	return nil
}

// memoryHotplug derives the virtio-mem device from spec.memory.maxSize.
func (b *build) memoryHotplug() error {
	q := b.vm.Spec.Memory.MaxSize
	if q == "" {
		if b.in.MemoryRequestedMiB != 0 {
			return fmt.Errorf("a hot-plugged memory size without spec.memory.maxSize")
		}
		return nil
	}
	n, err := q.Value()
	if err != nil {
		return fmt.Errorf("spec.memory.maxSize: %w", err)
	}
	if n%(MemoryHotplugBlockMiB<<20) != 0 {
		return fmt.Errorf("spec.memory.maxSize %q is not a multiple of %dMi", q, MemoryHotplugBlockMiB)
	}
	maxMiB := n >> 20
	mem := b.cfg.MemoryMiB
	if maxMiB > MaxMemoryMiB {
		return fmt.Errorf("spec.memory.maxSize %q is above %dMi", q, MaxMemoryMiB)
	}
	if maxMiB < mem {
		return fmt.Errorf("spec.memory.maxSize %q is below spec.memory.size %q", q, b.vm.Spec.Memory.Size)
	}
	if mem%MemoryHotplugBlockMiB != 0 {
		return fmt.Errorf("spec.memory.size %q is not a multiple of %dMi, as memory hot-plug needs", b.vm.Spec.Memory.Size, MemoryHotplugBlockMiB)
	}
	if !b.paravirt {
		return fmt.Errorf("spec.memory.maxSize needs a virtio-mem device, and paravirtualization is off")
	}
	if maxMiB == mem {
		if b.in.MemoryRequestedMiB != 0 {
			return fmt.Errorf("a hot-plugged memory size without room for it")
		}
		return nil // no room to grow: no device
	}
	region := maxMiB - mem
	if r := b.in.MemoryRequestedMiB; r < 0 || r > region || r%MemoryHotplugBlockMiB != 0 {
		return fmt.Errorf("hot-plugged memory %dMi is not a multiple of %dMi within 0..%dMi", r, MemoryHotplugBlockMiB, region)
	}
	b.cfg.Hotplug = &MemoryHotplug{Device: MemoryHotplugDevice, Backend: MemoryHotplugBackend, MaxMiB: maxMiB, RegionMiB: region, BlockMiB: MemoryHotplugBlockMiB}
	return nil
}

// machine is the machine family.
type machine int

const (
	machineQ35 machine = iota
	machinePC
)

// build carries the state of one Build call.
type build struct {
	in        Input
	vm        *v1alpha1.VirtualMachine
	m         machine
	kvm       bool
	paravirt  bool
	windows   bool
	efi       bool
	secure    bool
	args      []string
	cfg       Config
	bootIndex map[int]string // boot order -> who uses it
	idePort   int            // next free AHCI port / IDE slot
}

func (b *build) add(args ...string) { b.args = append(b.args, args...) }

// Build returns the QEMU configuration for in, or an error saying which input is invalid.
func Build(in Input) (Config, error) {
	b := &build{in: in, bootIndex: map[int]string{}}
	if err := b.run(); err != nil {
		return Config{}, fmt.Errorf("qemu config: %w", err)
	}
	b.cfg.Args = b.args
	return b.cfg, nil
}

func (b *build) run() error {
	if err := b.validateBase(); err != nil {
		return err
	}
	vm := b.vm
	b.cfg.Binary = b.in.Node.QEMUBinary
	if b.cfg.Binary == "" {
		b.cfg.Binary = DefaultBinary
	}
	b.cfg.Files = map[string][]byte{}
	b.cfg.PassFDs = b.in.PassFDs
	b.cfg.PIDFile = b.in.RunDir + "/" + PIDFileName
	b.cfg.QMPSocket = b.in.RunDir + "/" + QMPSocketName
	b.cfg.SerialSocket = b.in.RunDir + "/" + SerialSocketName
	b.cfg.VNCSocket = b.in.RunDir + "/" + VNCSocketName
	if b.paravirt {
		b.cfg.GuestAgentSocket = b.in.RunDir + "/" + GuestAgentSocketName
	}

	topo, err := HotplugTopology(vm.Spec.CPU.Cores, vm.Spec.CPU.MaxCores)
	if err != nil {
		return err
	}
	if b.kvm && b.in.Node.HostCPUs > 0 && topo.Cores > b.in.Node.HostCPUs {
		return fmt.Errorf("cpu.cores %d exceeds the %d CPUs of the host", topo.Cores, b.in.Node.HostCPUs)
	}
	b.cfg.Topology = topo
	mem, err := memoryMiB(vm.Spec.Memory.Size)
	if err != nil {
		return err
	}
	b.cfg.MemoryMiB = mem
	if err := b.memoryHotplug(); err != nil {
		return err
	}

	// Identity and machine.
	b.add("-name", newOpts("").set("guest", vm.Namespace+"_"+vm.Name).set("debug-threads", "on").String())
	b.add("-uuid", vm.UID)
	if err := b.machine(); err != nil {
		return err
	}
	if b.kvm {
		b.cfg.Accelerator = "kvm"
		b.add("-accel", "kvm")
	} else {
		b.cfg.Accelerator = "tcg"
		b.add("-accel", "tcg,thread=multi")
	}
	cpu, err := b.cpu()
	if err != nil {
		return err
	}
	b.add("-cpu", cpu)
	smp := newOpts(strconv.Itoa(topo.Cores))
	if topo.MaxCPUs() != topo.Cores {
		smp.set("maxcpus", strconv.Itoa(topo.MaxCPUs()))
	}
	smp.set("sockets", strconv.Itoa(topo.Sockets)).set("cores", strconv.Itoa(topo.CoresPerSocket)).set("threads", "1")
	b.add("-smp", smp.String())
	if err := b.hotCPUs(topo, cpu); err != nil {
		return err
	}
	b.memory(mem)

	// Process behaviour.
	b.add("-nodefaults", "-no-user-config", "-S")
	if b.in.Incoming {
		// The target of a live migration: QEMU waits for migrate-incoming over QMP.
		b.add("-incoming", "defer")
	}
	if !b.in.PassFDs {
		b.add("-pidfile", b.cfg.PIDFile)
	}
	b.add("-action", "shutdown=pause,panic=pause")
	if b.in.Node.HasSandbox {
		b.add("-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny")
	}
	b.add("-msg", "timestamp=on")

	// Clock and platform globals.
	if b.windows {
		b.add("-rtc", "base=localtime,driftfix=slew")
	} else {
		b.add("-rtc", "base=utc")
	}
	pm := "ICH9-LPC"
	if b.m == machinePC {
		pm = "PIIX4_PM"
	}
	b.add("-global", pm+".disable_s3=1", "-global", pm+".disable_s4=1")
	if b.windows && b.kvm {
		b.add("-global", "kvm-pit.lost_tick_policy=delay")
	}
	if b.secure {
		b.add("-global", "driver=cfi.pflash01,property=secure,value=on")
	}

	// Consoles and monitor: unix sockets in RunDir only.
	b.add("-display", "none")
	// The path goes under the explicit key "vnc": as an implied first value, a path with an
	// '=' before any ',' would be read as key=value.
	if b.in.PassFDs {
		b.cfg.LateVNC = true
		b.add("-vnc", "none")
	} else {
		b.add("-vnc", newOpts("").set("vnc", "unix:"+b.cfg.VNCSocket).String())
	}
	b.add("-chardev", b.serverSocket("qmp", b.cfg.QMPSocket))
	b.add("-mon", "chardev=qmp,mode=control")
	b.add("-chardev", b.serverSocket("serial0", b.cfg.SerialSocket))
	b.add("-serial", "chardev:serial0")

	if err := b.firmware(); err != nil {
		return err
	}

	// Devices. Order fixes PCI addresses: fixed devices first, NICs next, disks last, so adding
	// a disk never moves a NIC (Windows binds network settings to the NIC's slot).
	b.add("-device", "VGA,id=video0,vgamem_mb=16")
	if err := b.nics(); err != nil {
		return err
	}
	if b.m == machineQ35 {
		b.add("-device", "qemu-xhci,id=usb")
	} else {
		b.add("-device", "piix3-usb-uhci,id=usb")
	}
	b.add("-device", "usb-tablet,id=tablet0,bus=usb.0")
	if b.paravirt {
		b.add("-device", "virtio-serial-pci,id=vserial0")
		b.add("-chardev", b.serverSocket("qga0", b.cfg.GuestAgentSocket))
		b.add("-device", "virtserialport,id=qga0port,bus=vserial0.0,chardev=qga0,name="+GuestAgentChannel)
		b.add("-object", "rng-random,id=rng0,filename=/dev/urandom")
		b.add("-device", "virtio-rng-pci,id=rng0dev,rng=rng0")
	}
	b.add("-device", "pvpanic,id=pvpanic0")
	if h := b.cfg.Hotplug; h != nil {
		// Anonymous memory, taken from the host only as the guest plugs blocks and given back
		// when it unplugs them.
		b.add("-object", newOpts("memory-backend-ram").set("id", h.Backend).set("size", strconv.FormatInt(h.RegionMiB, 10)+"M").String())
		b.add("-device", newOpts("virtio-mem-pci").set("id", h.Device).set("memdev", h.Backend).
			set("block-size", strconv.FormatInt(h.BlockMiB, 10)+"M").
			set("requested-size", strconv.FormatInt(b.in.MemoryRequestedMiB, 10)+"M").String())
	}
	if b.in.TPMSocket != "" {
		if b.in.PassFDs {
			fd := b.pass(PassConnect, b.in.TPMSocket, false)
			b.add("-chardev", newOpts("socket").set("id", "chrtpm").set("fd", strconv.Itoa(fd)).String())
		} else {
			b.add("-chardev", newOpts("socket").set("id", "chrtpm").set("path", b.in.TPMSocket).String())
		}
		b.add("-tpmdev", "emulator,id=tpm0,chardev=chrtpm")
		if b.m == machineQ35 {
			b.add("-device", "tpm-crb,id=tpm0dev,tpmdev=tpm0")
		} else {
			b.add("-device", "tpm-tis,id=tpm0dev,tpmdev=tpm0")
		}
	}
	if err := b.disks(); err != nil {
		return err
	}
	b.hotplugRoom() // config_hotplug.go
	if b.paravirt && !b.in.NoBalloon {
		// Last, so that no device before it moves. Free page reporting gives the host the
		// pages the guest frees; deflate-on-oom lets a guest short of memory take back what
		// the node reclaimed rather than kill its processes.
		fpr := !LosesDirtyWrites(b.kvm, b.in.Node.QEMUVersion)
		if b.in.BalloonReporting != nil {
			fpr = *b.in.BalloonReporting
		}
		b.add("-device", "virtio-balloon-pci,id="+BalloonDevice+",free-page-reporting="+map[bool]string{true: "on", false: "off"}[fpr]+",deflate-on-oom=on")
		b.cfg.Balloon, b.cfg.BalloonReporting = true, fpr
	}
	if len(b.bootIndex) > 0 {
		// Boot only from the listed devices, never fall through to others (e.g. PXE).
		b.add("-boot", "strict=on")
	}
	return nil
}

// memory gives the guest its boot memory of mem MiB (and the hot-plug room), padded under
// TCG with QEMU older than 9.0 (MemoryPadKiB).
func (b *build) memory(mem int64) {
	pad := LosesDirtyWrites(b.kvm, b.in.Node.QEMUVersion)
	if b.in.PadMemory != nil {
		pad = *b.in.PadMemory
	}
	size := func(mib int64) string {
		if pad {
			return strconv.FormatInt(mib<<10+MemoryPadKiB, 10) + "K"
		}
		return strconv.FormatInt(mib, 10) + "M"
	}
	if pad {
		b.cfg.MemoryPadKiB = MemoryPadKiB
	}
	switch h := b.cfg.Hotplug; {
	case h != nil:
		b.add("-m", newOpts("").set("size", size(mem)).set("maxmem", size(h.MaxMiB)).String())
	case pad:
		b.add("-m", size(mem))
	default:
		b.add("-m", strconv.FormatInt(mem, 10)) // MiB
	}
}

// validateBase checks the VM, node facts and paths, and derives the machine flavour.
func (b *build) validateBase() error {
	in := b.in
	if in.VM == nil {
		return fmt.Errorf("no VirtualMachine")
	}
	vm := in.VM
	b.vm = vm
	if err := checkDNSLabel("metadata.namespace", vm.Namespace); err != nil {
		return err
	}
	if err := checkDNSLabel("metadata.name", vm.Name); err != nil {
		return err
	}
	if !isUUID(vm.UID) {
		return fmt.Errorf("metadata.uid %q is not a UUID", vm.UID)
	}
	if err := checkQEMUVersion(in.Node.QEMUVersion); err != nil {
		return err
	}
	if in.Node.QEMUBinary != "" {
		if err := checkPath("node QEMU binary", in.Node.QEMUBinary, false); err != nil {
			return err
		}
	}
	if err := checkPath("run directory", in.RunDir, true); err != nil {
		return err
	}
	// The longest socket name must fit in sun_path.
	if l := len(in.RunDir) + 1 + len(SerialSocketName); l > maxUnixPath {
		return fmt.Errorf("run directory %q is too long for unix sockets (%d > %d bytes)", in.RunDir, l, maxUnixPath)
	}
	if in.TPMSocket != "" {
		if err := checkPath("TPM socket", in.TPMSocket, true); err != nil {
			return err
		}
		if len(in.TPMSocket) > maxUnixPath {
			return fmt.Errorf("TPM socket path %q is longer than %d bytes", in.TPMSocket, maxUnixPath)
		}
	}

	switch vm.Spec.OSType {
	case "", v1alpha1.OSTypeGeneric:
	case v1alpha1.OSTypeWindows:
		b.windows = true
	case v1alpha1.OSTypeLegacy:
		b.m = machinePC
	default:
		return fmt.Errorf("spec.osType %q is not one of Generic, Windows, Legacy", vm.Spec.OSType)
	}
	switch vm.Spec.Bootloader {
	case "", v1alpha1.BootloaderBIOS:
	case v1alpha1.BootloaderEFI:
		b.efi = true
	case v1alpha1.BootloaderEFIWithSecureBoot:
		b.efi, b.secure = true, true
	default:
		return fmt.Errorf("spec.bootloader %q is not one of BIOS, EFI, EFIWithSecureBoot", vm.Spec.Bootloader)
	}
	if b.efi && b.m == machinePC {
		return fmt.Errorf("spec.osType Legacy supports only the BIOS bootloader")
	}
	// Paravirtualization defaults to on, except for Legacy guests, which by definition have no
	// virtio drivers; an explicit value always wins.
	b.paravirt = b.m != machinePC
	if p := vm.Spec.EnableParavirtualization; p != nil {
		b.paravirt = *p
	}
	b.kvm = in.Node.KVM
	return nil
}

// machine adds -machine.
func (b *build) machine() error {
	var o *opts
	if b.m == machinePC {
		o = newOpts("pc")
	} else {
		o = newOpts("q35")
	}
	o.set("vmport", "off").set("dump-guest-core", "off")
	if b.windows {
		// Windows keeps time with the Hyper-V reference clock (KVM) or the RTC; HPET only
		// costs exits.
		o.set("hpet", "off")
	}
	if b.secure {
		o.set("smm", "on")
	}
	if b.efi {
		o.set("pflash0", "fw-code").set("pflash1", "fw-vars")
	}
	b.add("-machine", o.String())
	return nil
}

// hyperv returns the Hyper-V enlightenments a Windows guest gets under KVM: all of
// accel.HypervEnlightenments but those the node refuses. TCG implements none of them.
func (b *build) hyperv() []string {
	var out []string
	for _, f := range accel.HypervEnlightenments {
		if !slices.Contains(b.in.Node.HypervRefused, f) {
			out = append(out, f)
		}
	}
	return out
}

// cpu returns the -cpu value.
func (b *build) cpu() (string, error) {
	model := b.in.CPUModel
	if model == "" {
		if b.kvm {
			model = "host"
		} else {
			model = "max"
		}
	}
	if !isCPUName(model) {
		return "", fmt.Errorf("CPU model %q must be 1-64 of [A-Za-z0-9_.-]", model)
	}
	if model == "host" && !b.kvm {
		return "", fmt.Errorf("CPU model host needs KVM, which this node lacks")
	}
	parts := []string{model}
	for _, f := range b.in.CPUFeatures {
		val := "on"
		name := f
		switch {
		case strings.HasPrefix(f, "+"):
			name = f[1:]
		case strings.HasPrefix(f, "-"):
			name, val = f[1:], "off"
		}
		if !isCPUName(name) {
			return "", fmt.Errorf("CPU feature %q must be [+|-] and 1-64 of [A-Za-z0-9_.-]", f)
		}
		parts = append(parts, name+"="+val)
	}
	if b.windows && b.kvm {
		parts = append(parts, b.hyperv()...)
	}
	return strings.Join(parts, ","), nil
}

// firmware adds the UEFI flash devices.
func (b *build) firmware() error {
	if !b.efi {
		return nil
	}
	code, tmpl := b.in.Node.OVMFCode, b.in.Node.OVMFVars
	what := "OVMF code"
	if b.secure {
		code, tmpl = b.in.Node.OVMFSecureCode, b.in.Node.OVMFSecureVarsTemplate
		what = "OVMF Secure Boot code"
	}
	if code == "" {
		return fmt.Errorf("bootloader %s needs %s, which this node lacks", b.vm.Spec.Bootloader, what)
	}
	if err := checkPath(what, code, true); err != nil {
		return err
	}
	if b.in.NVRAMPath == "" {
		return fmt.Errorf("bootloader %s needs an NVRAM path", b.vm.Spec.Bootloader)
	}
	if err := checkPath("NVRAM", b.in.NVRAMPath, true); err != nil {
		return err
	}
	b.cfg.NVRAMTemplate = tmpl
	// The firmware code is read-only; the variable store is the VM's own raw file.
	for _, bd := range []any{
		fileNode{Driver: "file", NodeName: "fw-code-file", Filename: b.file(code, "fw-code-file", false), AIO: "threads", Cache: defaultCache, ReadOnly: true},
		formatNode{Driver: FormatRaw, NodeName: "fw-code", File: "fw-code-file", Cache: defaultCache, ReadOnly: true},
		fileNode{Driver: "file", NodeName: "fw-vars-file", Filename: b.file(b.in.NVRAMPath, "fw-vars-file", true), AIO: "threads", Cache: defaultCache},
		formatNode{Driver: FormatRaw, NodeName: "fw-vars", File: "fw-vars-file", Cache: defaultCache},
	} {
		b.add("-blockdev", mustJSON(bd))
	}
	return nil
}

// claimBoot records a boot order for who, rejecting negatives and duplicates.
func (b *build) claimBoot(order int, who string) error {
	if order < 0 {
		return fmt.Errorf("%s: boot order %d is negative", who, order)
	}
	if order == 0 {
		return nil
	}
	if other, ok := b.bootIndex[order]; ok {
		return fmt.Errorf("%s: boot order %d is already used by %s", who, order, other)
	}
	b.bootIndex[order] = who
	return nil
}

// nics adds -netdev/-device pairs.
func (b *build) nics() error {
	seen := map[string]string{}
	macs := map[string]string{}
	for i, n := range b.in.NICs {
		who := fmt.Sprintf("NIC %d (%q)", i, n.ID)
		id, err := uniqueID(seen, n.ID, who, "NIC")
		if err != nil {
			return err
		}
		mac, err := normalizeMAC(n.MAC)
		if err != nil {
			return fmt.Errorf("%s: %w", who, err)
		}
		if other, ok := macs[mac]; ok {
			return fmt.Errorf("%s: MAC %s is also used by NIC %q", who, mac, other)
		}
		macs[mac] = n.ID
		model := n.Model
		if model == "" {
			model = ModelE1000
			if b.paravirt {
				model = ModelVirtioNet
			}
		}
		if model != ModelVirtioNet && model != ModelE1000 {
			return fmt.Errorf("%s: model %q is not one of %s, %s", who, model, ModelVirtioNet, ModelE1000)
		}
		if n.MTU != 0 && (n.MTU < 68 || n.MTU > 65535) {
			return fmt.Errorf("%s: MTU %d out of range 68..65535", who, n.MTU)
		}
		if err := b.claimBoot(n.BootOrder, who); err != nil {
			return err
		}
		netdev, dev := "net-"+id, "nic-"+id
		var nd *opts
		if n.Tap == "" {
			nd = newOpts("user").set("id", netdev).set("restrict", "on")
		} else {
			if !isIfName(n.Tap) {
				return fmt.Errorf("%s: tap name %q must be 1-15 of [A-Za-z0-9_.-]", who, n.Tap)
			}
			switch {
			case b.in.PassFDs:
				// QEMU takes the tap the caller opened (and /dev/vhost-net): an unprivileged
				// QEMU may open neither /dev/net/tun nor the vhost device.
				nd = newOpts("tap").set("id", netdev).set("fd", strconv.Itoa(b.pass(PassTap, n.Tap, true)))
				if b.kvm && b.in.Node.VhostNet {
					nd.set("vhost", "on").set("vhostfd", strconv.Itoa(b.pass(PassVhost, VhostNetDevice, true)))
				}
			default:
				nd = newOpts("tap").set("id", netdev).set("ifname", n.Tap).set("script", "no").set("downscript", "no")
				if b.kvm && b.in.Node.VhostNet {
					nd.set("vhost", "on")
				}
			}
		}
		b.add("-netdev", nd.String())
		d := newOpts(model).set("id", dev).set("netdev", netdev).set("mac", mac)
		if model == ModelVirtioNet && n.MTU != 0 {
			d.set("host_mtu", strconv.Itoa(n.MTU))
		}
		if n.BootOrder > 0 {
			d.set("bootindex", strconv.Itoa(n.BootOrder))
		} else {
			// No network boot: skip the iPXE option ROM (less guest-visible code, faster boot).
			d.set("romfile", "")
		}
		b.add("-device", d.String())
		b.cfg.NICs = append(b.cfg.NICs, NICObjects{ID: n.ID, Netdev: netdev, Device: dev, Model: model})
	}
	return nil
}

// checkQEMUVersion rejects versions older than MinQEMUVersion.
func checkQEMUVersion(v string) error {
	if v == "" {
		return nil
	}
	maj, mnr, ok := parseVersion(v)
	if !ok {
		return fmt.Errorf("QEMU version %q does not start with MAJOR.MINOR", v)
	}
	wmaj, wmin, _ := parseVersion(MinQEMUVersion)
	if maj < wmaj || (maj == wmaj && mnr < wmin) {
		return fmt.Errorf("QEMU %s is older than %s", v, MinQEMUVersion)
	}
	return nil
}

// LosesDirtyWrites says a QEMU of version qemuVersion loses guest writes while it migrates
// (see MemoryPadKiB): under TCG (kvm false) before QEMU 9.0, or of an unknown version. Such a
// host pads boot memory, gives no free page reporting, and pauses a guest with plugged memory
// for its migration stream (internal/agent).
func LosesDirtyWrites(kvm bool, qemuVersion string) bool {
	return !kvm && !versionAtLeast(qemuVersion, 9, 0)
}

// versionAtLeast says v is maj.mnr or later (false when v is empty or unparsable).
func versionAtLeast(v string, maj, mnr int) bool {
	a, b, ok := parseVersion(v)
	return ok && (a > maj || (a == maj && b >= mnr))
}

func parseVersion(v string) (maj, mnr int, ok bool) {
	num := func(s string) (int, string, bool) {
		i := 0
		for i < len(s) && i < 6 && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		if i == 0 {
			return 0, s, false
		}
		n, _ := strconv.Atoi(s[:i])
		return n, s[i:], true
	}
	maj, rest, ok := num(v)
	if !ok || !strings.HasPrefix(rest, ".") {
		return 0, 0, false
	}
	mnr, _, ok = num(rest[1:])
	return maj, mnr, ok
}

// memoryMiB converts spec.memory.size to MiB, rounding up.
func memoryMiB(q v1alpha1.Quantity) (int64, error) {
	n, err := q.Value()
	if err != nil {
		return 0, fmt.Errorf("spec.memory.size: %w", err)
	}
	mib := n >> 20
	if n&(1<<20-1) != 0 {
		mib++
	}
	if mib < MinMemoryMiB || mib > MaxMemoryMiB {
		return 0, fmt.Errorf("spec.memory.size %q out of range %dMi..%dMi", q, MinMemoryMiB, MaxMemoryMiB)
	}
	return mib, nil
}

// MatchesCmdline reports whether cmdline (the NUL-separated contents of /proc/PID/cmdline) is
// that of a QEMU built by Build for the VM with this uid: it holds the consecutive arguments
// "-uuid" and uid. The agent uses it to re-adopt running VMs and to make sure a pidfile's PID
// was not reused by another process.
func MatchesCmdline(cmdline []byte, uid string) bool {
	if uid == "" {
		return false
	}
	args := strings.Split(strings.TrimSuffix(string(cmdline), "\x00"), "\x00")
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "-uuid" && args[i+1] == uid {
			return true
		}
	}
	return false
}
