package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/qemu"
	"github.com/rakhsh/rakhsh/internal/qemu/qmp"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// Disk hot-plug (docs/hotplug.md). A VirtualMachineBlockDeviceAttachment the VMBDA controller
// has accepted (phase InProgress or Attached) names a device the running VM should have; the
// agent running the VM makes QEMU match: blockdev-add + device_add for a device it lacks,
// device_del (waiting for DEVICE_DELETED) + blockdev-del for one whose attachment is gone. A
// VirtualDisk is a read-write virtio-blk disk in an empty PCIe root port (on the root bus of
// an i440fx VM); an image is read-only: a SCSI CD-ROM on the hot-plug virtio-scsi controller
// when it is an ISO, otherwise a read-only virtio-blk disk. What is plugged into which QEMU is
// kept in the run directory (hotplugFileName), so an agent restart finds it again. The VM's
// status.blockDeviceRefs lists the spec's devices and the hot-plugged ones; the VMBDA
// controller derives the attachments' phases from it.

// hotplugFileName, in a VM's run directory, records the devices hot-plugged into its QEMU.
const hotplugFileName = "hotplug.json"

// unplugTimeout is how long device_del waits for the guest to release a device.
const unplugTimeout = 30 * time.Second

// hotplugRetry is how soon a failed plug or unplug is tried again.
const hotplugRetry = 5 * time.Second

// hotplugState is the content of hotplugFileName.
type hotplugState struct {
	// PID is the QEMU the devices were plugged into: a state of another QEMU (one that
	// ended; this one started without them) counts as empty.
	PID   int           `json:"pid"`
	Disks []pluggedDisk `json:"disks,omitempty"`
	// BootNICs is the number of NICs the QEMU started with; NICs the hot-plugged ones
	// (hotplug_nic.go).
	BootNICs int          `json:"bootNICs,omitempty"`
	NICs     []pluggedNIC `json:"nics,omitempty"`
}

// pluggedDisk is one hot-plugged device.
type pluggedDisk struct {
	// Attachment names the VMBDA; UID is its uid.
	Attachment string                   `json:"attachment"`
	UID        string                   `json:"uid"`
	Kind       v1alpha1.BlockDeviceKind `json:"kind"`
	Name       string                   `json:"name"`
	// Device is the qdev id; Nodes the block nodes, top first; FDSets the fd sets of their
	// files (an unprivileged QEMU).
	Device string   `json:"device"`
	Nodes  []string `json:"nodes"`
	FDSets []int    `json:"fdsets,omitempty"`
	// Port is the root port the device sits in ("" on a bus); Lease says a disk lease was
	// taken for it.
	Port  string `json:"port,omitempty"`
	Lease bool   `json:"lease,omitempty"`
	// Size is the device's size in bytes.
	Size int64 `json:"size,omitempty"`
	// SCSIID is a CD-ROM's target id on the hot-plug SCSI bus (nil: chosen by QEMU, as
	// before ids were given).
	SCSIID *int `json:"scsiID,omitempty"`
}

// slot is where p sits in QEMU, as status.blockDeviceRefs[].slot says it ("": not known,
// so not live-migrated).
func (p pluggedDisk) slot() string {
	switch {
	case p.Port != "":
		return p.Port
	case p.SCSIID != nil:
		return fmt.Sprintf("scsi-id=%d", *p.SCSIID)
	}
	return ""
}

// parseSlot fills p's port or SCSI id from a slot as slot() writes it.
func parseSlot(s string, p *pluggedDisk) error {
	if v, ok := strings.CutPrefix(s, "scsi-id="); ok {
		id, err := strconv.Atoi(v)
		if err != nil || id < 0 || id > 255 {
			return fmt.Errorf("slot %q: not a SCSI target id", s)
		}
		p.SCSIID = &id
		return nil
	}
	for i := 0; i < qemu.HotplugPorts; i++ {
		if s == qemu.HotplugPort(i) {
			p.Port = s
			return nil
		}
	}
	return fmt.Errorf("slot %q is not a hot-plug slot", s)
}

// learnSCSIIDs asks QEMU the SCSI target ids of CD-ROMs plugged before ids were given at the
// plug (QEMU chose them), so that a new one is not given a used id and they get a slot. It
// says whether it learnt any. Only images can be CD-ROMs; a VirtualDisk is never asked.
func learnSCSIIDs(ctx context.Context, mon hotplugMonitor, st *hotplugState) bool {
	learnt := false
	for i := range st.Disks {
		d := &st.Disks[i]
		if d.SCSIID != nil || d.Port != "" || d.Kind == v1alpha1.BlockDeviceKindVirtualDisk {
			continue
		}
		var id int
		if err := mon.Execute(ctx, "qom-get", map[string]any{"path": "/machine/peripheral/" + d.Device, "property": "scsi-id"}, &id); err == nil {
			d.SCSIID = &id
			learnt = true
		}
	}
	return learnt
}

// freeSCSIID is the lowest SCSI target id no hot-plugged CD-ROM of st uses.
func freeSCSIID(st *hotplugState) int {
	for id := 0; ; id++ {
		if !slices.ContainsFunc(st.Disks, func(d pluggedDisk) bool { return d.SCSIID != nil && *d.SCSIID == id }) {
			return id
		}
	}
}

// hotplugMonitor is what hot-plug needs of the QMP connection (*qmp.Conn).
type hotplugMonitor interface {
	Execute(ctx context.Context, command string, args, result any) error
	AddFD(ctx context.Context, f *os.File, fdsetID int, opaque string) (qmp.AddFDInfo, error)
	Subscribe(buffer int) (<-chan qmp.Event, func())
}

func readHotplugState(runDir string, pid int) hotplugState {
	var s hotplugState
	if b, err := os.ReadFile(filepath.Join(runDir, hotplugFileName)); err == nil && json.Unmarshal(b, &s) == nil && s.PID == pid {
		return s
	}
	return hotplugState{PID: pid}
}

func writeHotplugState(runDir string, s hotplugState) error {
	return writeJSONAtomic(runDir, hotplugFileName, s)
}

// startHotplug watches the VMBDAs: a change queues the VMs of its project that run here.
func (a *Agent) startHotplug(ctx context.Context) {
	a.bdas = runtime.NewTypedInformer[v1alpha1.VirtualMachineBlockDeviceAttachment](a.c, "virtualmachineblockdeviceattachments", client.ListOptions{}, a.log)
	a.bdas.OnChange(func(k runtime.Key) {
		ns, _ := k.Split()
		for _, vm := range a.vms.List() {
			if vm.Namespace == ns {
				a.queue.Add(runtime.KeyOf(vm))
			}
		}
	})
	go a.bdas.Run(ctx)
}

// wantedAttachments are the accepted, live attachments of vm, by name.
func (a *Agent) wantedAttachments(vm *v1alpha1.VirtualMachine) map[string]*v1alpha1.VirtualMachineBlockDeviceAttachment {
	out := map[string]*v1alpha1.VirtualMachineBlockDeviceAttachment{}
	if a.bdas == nil {
		return out
	}
	for _, b := range a.bdas.List() {
		if b.Namespace != vm.Namespace || b.Spec.VirtualMachineName != vm.Name || b.DeletionTimestamp != nil {
			continue
		}
		if b.Status.Phase == v1alpha1.VMBDAPhaseInProgress || b.Status.Phase == v1alpha1.VMBDAPhaseAttached {
			out[b.Name] = b
		}
	}
	return out
}

// syncHotplug makes the devices hot-plugged into the running QEMU of vm match its accepted
// attachments, and records them in status.blockDeviceRefs. It returns when to look again
// (0: no need).
func (a *Agent) syncHotplug(ctx context.Context, vm *v1alpha1.VirtualMachine, in *instance) time.Duration {
	if in == nil || in.isExited() {
		return 0
	}
	st := readHotplugState(in.runDir, in.pid)
	want := a.wantedAttachments(vm)
	if len(want) > 0 || len(st.Disks) > 0 {
		mon, ok := in.monitor().(hotplugMonitor)
		if !ok {
			return hotplugRetry // QMP not connected (yet)
		}
		return a.syncHotplugWith(ctx, vm, in, mon, st, want)
	}
	return a.syncHotplugWith(ctx, vm, in, nil, st, want)
}

// syncHotplugWith is syncHotplug with the monitor (nil when there is nothing to plug or
// unplug), the recorded state and the wanted attachments.
func (a *Agent) syncHotplugWith(ctx context.Context, vm *v1alpha1.VirtualMachine, in *instance, mon hotplugMonitor, st hotplugState,
	want map[string]*v1alpha1.VirtualMachineBlockDeviceAttachment) time.Duration {
	var retry time.Duration
	if mon != nil && learnSCSIIDs(ctx, mon, &st) {
		_ = writeHotplugState(in.runDir, st)
	}
	// Unplug first: it frees ports.
	for i := 0; i < len(st.Disks); {
		d := st.Disks[i]
		if w, ok := want[d.Attachment]; ok && w.UID == d.UID {
			i++
			continue
		}
		if err := unplugDisk(ctx, mon, d); err != nil {
			a.log.Warn("hot-unplug failed; tried again", "vm", string(runtime.KeyOf(vm)), "attachment", d.Attachment, "err", err)
			a.rec.Event(ctx, "VirtualMachine", vm, "Warning", "HotUnplugFailed", fmt.Sprintf("unplugging %s %q (attachment %s): %v", d.Kind, d.Name, d.Attachment, err))
			retry = hotplugRetry
			i++
			continue
		}
		if d.Lease {
			a.releaseDiskLease(vm, d.Name, "hot-unplugged from VM "+vm.Name)
			a.dropDiskLeaseLine(in.runDir, d.Name)
		}
		st.Disks = slices.Delete(st.Disks, i, i+1)
		_ = writeHotplugState(in.runDir, st)
		a.log.Info("hot-unplugged", "vm", string(runtime.KeyOf(vm)), "attachment", d.Attachment, "device", d.Device)
	}
	names := make([]string, 0, len(want))
	for n := range want {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		b := want[n]
		if slices.ContainsFunc(st.Disks, func(d pluggedDisk) bool { return d.Attachment == n }) {
			continue
		}
		d, err := a.plugDisk(ctx, mon, vm, in, b, &st)
		if err != nil {
			a.log.Warn("hot-plug failed; tried again", "vm", string(runtime.KeyOf(vm)), "attachment", n, "err", err)
			a.rec.Event(ctx, "VirtualMachineBlockDeviceAttachment", b, "Warning", "HotplugFailed", err.Error())
			retry = hotplugRetry
			continue
		}
		st.Disks = append(st.Disks, d)
		if err := writeHotplugState(in.runDir, st); err != nil {
			a.log.Warn("recording a hot-plugged device", "vm", string(runtime.KeyOf(vm)), "err", err)
		}
		a.log.Info("hot-plugged", "vm", string(runtime.KeyOf(vm)), "attachment", n, "device", d.Device)
	}
	if r := a.syncHotplugNICs(ctx, vm, in, &st); r > 0 { // hotplug_nic.go
		retry = min(nonZero(retry), r)
	}
	if err := a.writeBlockDeviceRefs(ctx, vm, st); err != nil {
		a.log.Warn("writing status.blockDeviceRefs", "vm", string(runtime.KeyOf(vm)), "err", err)
		retry = hotplugRetry
	}
	return retry
}

// hotplugID is the short id of an attachment's QEMU objects (node names have at most 31
// bytes).
func hotplugID(uid string) string {
	h := fnv.New32a()
	h.Write([]byte(uid))
	return fmt.Sprintf("%08x", h.Sum32())
}

// plugDisk hot-plugs the device of attachment b.
func (a *Agent) plugDisk(ctx context.Context, mon hotplugMonitor, vm *v1alpha1.VirtualMachine, in *instance, b *v1alpha1.VirtualMachineBlockDeviceAttachment, st *hotplugState) (pluggedDisk, error) {
	okHP, rootPorts := qemu.Hotplug(vm)
	if !okHP {
		return pluggedDisk{}, errors.New("the VM has no paravirtualization (enableParavirtualization false or osType Legacy): it takes no hot-plugged device")
	}
	ref := b.Spec.BlockDeviceRef
	d, err := a.resolveAttached(ctx, vm.Namespace, ref.Kind, ref.Name)
	if err != nil {
		return pluggedDisk{}, err
	}
	p := pluggedDisk{Attachment: b.Name, UID: b.UID, Kind: ref.Kind, Name: ref.Name, Device: "hpdisk-" + hotplugID(b.UID)}
	switch {
	case d.CDROM:
		id := freeSCSIID(st)
		p.SCSIID = &id
	case rootPorts:
		p.Port = freePortOf(st)
		if p.Port == "" {
			return pluggedDisk{}, fmt.Errorf("all %d hot-plug slots of the VM are in use: detach a device first", qemu.HotplugPorts)
		}
	}
	return a.plugResolved(ctx, mon, vm, in, p, &d, true)
}

// resolveAttached is the disk of a hot-plugged device: a VirtualDisk or an image, whose file
// must be here.
func (a *Agent) resolveAttached(ctx context.Context, ns string, kind v1alpha1.BlockDeviceKind, name string) (qemu.Disk, error) {
	var d qemu.Disk
	var err error
	switch kind {
	case v1alpha1.BlockDeviceKindVirtualDisk:
		err = a.resolveVirtualDisk(ctx, ns, name, &d)
	case v1alpha1.BlockDeviceKindVirtualImage, v1alpha1.BlockDeviceKindClusterVirtualImage:
		err = a.resolveImage(ctx, ns, kind, name, &d)
	default:
		err = fmt.Errorf("block device kind %q is not supported", kind)
	}
	if err != nil {
		return d, err
	}
	if _, err := os.Stat(d.Path); err != nil {
		return d, fmt.Errorf("%s %q: its file is missing: %w", kind, name, err)
	}
	return d, nil
}

// plugResolved plugs device p (its slot chosen) of disk d into the QEMU of in: its block
// nodes, then the device. takeLease takes the disk lease of a writable VirtualDisk first (a
// migration's target does not: the leases follow the VM when it switches over, and p.Lease
// says the lease is the VM's to give back).
func (a *Agent) plugResolved(ctx context.Context, mon hotplugMonitor, vm *v1alpha1.VirtualMachine, in *instance, p pluggedDisk, d *qemu.Disk, takeLease bool) (pluggedDisk, error) {
	id := strings.TrimPrefix(p.Device, "hpdisk-")
	writable := p.Kind == v1alpha1.BlockDeviceKindVirtualDisk && !d.ReadOnly
	if writable && takeLease {
		l, err := runtime.AcquireDiskLease(ctx, a.c, vm.Namespace, p.Name, a.cfg.NodeName, vm.Name, vm.UID, a.cfg.Now(), a.mayTakeDiskLease)
		if err != nil {
			return pluggedDisk{}, fmt.Errorf("the lease of VirtualDisk %q: %w", p.Name, err)
		}
		a.addDiskLeaseLine(in.runDir, p.Name, l.ResourceVersion)
	}
	p.Lease = writable
	undo := func() {
		for _, n := range p.Nodes {
			_ = mon.Execute(context.Background(), "blockdev-del", map[string]any{"node-name": n}, nil)
		}
		for _, s := range p.FDSets {
			_ = mon.Execute(context.Background(), "remove-fd", map[string]any{"fdset-id": s}, nil)
		}
		if writable && takeLease {
			a.releaseDiskLease(vm, p.Name, "hot-plug into VM "+vm.Name+" failed")
			a.dropDiskLeaseLine(in.runDir, p.Name)
		}
	}
	if err := a.addHotplugLayers(ctx, mon, id, d, writable, &p); err != nil {
		undo()
		return pluggedDisk{}, err
	}
	if err := mon.Execute(ctx, "device_add", hotplugDevice(&p, d, id), nil); err != nil {
		undo()
		if strings.Contains(err.Error(), "not found") && (p.Port != "" || d.CDROM) {
			return pluggedDisk{}, fmt.Errorf("device_add: %w (the VM was started without hot-plug slots: restart it once)", err)
		}
		return pluggedDisk{}, fmt.Errorf("device_add: %w", err)
	}
	var nodes []blockNode
	if err := mon.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err == nil {
		for _, n := range nodes {
			if n.NodeName == "hp-"+id {
				p.Size = n.Image.VirtualSize
			}
		}
	}
	return p, nil
}

// addHotplugLayers adds the block nodes of a hot-plugged device: its backing layers base
// first, read-only, then its own image (node "hp-"+id), each file passed as a descriptor when
// QEMU runs unprivileged. What it added is in p.Nodes and p.FDSets, for the caller's undo.
func (a *Agent) addHotplugLayers(ctx context.Context, mon hotplugMonitor, id string, d *qemu.Disk, writable bool, p *pluggedDisk) error {
	pass := a.qemuAs != nil
	type layer struct {
		path, format, node string
		ro                 bool
	}
	layers := make([]layer, 0, len(d.Backing)+1)
	for j := len(d.Backing) - 1; j >= 0; j-- {
		layers = append(layers, layer{d.Backing[j].Path, d.Backing[j].Format, "hp-" + id + ".b" + strconv.Itoa(j+1), true})
	}
	layers = append(layers, layer{d.Path, d.Format, "hp-" + id, !writable})
	backing := any(nil)
	for _, l := range layers {
		filename := l.path
		if pass {
			mode := os.O_RDONLY
			if !l.ro {
				mode = os.O_RDWR
			}
			f, err := os.OpenFile(l.path, mode, 0)
			if err != nil {
				return fmt.Errorf("opening %s: %w", l.path, err)
			}
			info, err := mon.AddFD(ctx, f, -1, l.node+":"+l.path)
			_ = f.Close()
			if err != nil {
				return fmt.Errorf("add-fd: %w", err)
			}
			p.FDSets = append(p.FDSets, info.FDSetID)
			filename = qemu.FDSetPath(info.FDSetID)
		}
		file := map[string]any{"driver": "file", "filename": filename, "aio": "threads", "read-only": l.ro}
		node := map[string]any{"driver": l.format, "node-name": l.node, "file": file, "read-only": l.ro}
		if !l.ro {
			file["discard"] = "unmap"
			node["discard"] = "unmap"
			node["detect-zeroes"] = "unmap"
		}
		if l.format == qemu.FormatQCOW2 {
			node["backing"] = backing
		}
		if err := mon.Execute(ctx, "blockdev-add", node, nil); err != nil {
			return fmt.Errorf("blockdev-add %s: %w", l.node, err)
		}
		p.Nodes = append([]string{l.node}, p.Nodes...)
		backing = l.node
	}
	return nil
}

// hotplugDevice is the device_add of a hot-plugged device: a SCSI CD-ROM for an ISO, else a
// virtio-blk disk (in its root port on q35).
func hotplugDevice(p *pluggedDisk, d *qemu.Disk, id string) map[string]any {
	dev := map[string]any{"id": p.Device, "drive": "hp-" + id}
	if d.CDROM {
		dev["driver"] = "scsi-cd"
		dev["bus"] = qemu.HotplugSCSI + ".0"
		if p.SCSIID != nil {
			dev["channel"], dev["scsi-id"], dev["lun"] = 0, *p.SCSIID, 0
		}
		return dev
	}
	dev["driver"] = "virtio-blk-pci"
	dev["write-cache"] = "on"
	if d.Serial != "" {
		dev["serial"] = d.Serial
	}
	if p.Port != "" {
		dev["bus"] = p.Port
	}
	return dev
}

// freePort is the first root port no hot-plugged device uses.
func freePort(disks []pluggedDisk) string {
	for i := 0; i < qemu.HotplugPorts; i++ {
		p := qemu.HotplugPort(i)
		if !slices.ContainsFunc(disks, func(d pluggedDisk) bool { return d.Port == p }) {
			return p
		}
	}
	return ""
}

// unplugDisk removes a hot-plugged device: device_del, then waits for DEVICE_DELETED (the
// guest gives a PCI device back), then deletes its block nodes and fd sets.
func unplugDisk(ctx context.Context, mon hotplugMonitor, d pluggedDisk) error {
	if err := unplugDevice(ctx, mon, d.Device); err != nil {
		return err
	}
	for _, n := range d.Nodes {
		if err := mon.Execute(ctx, "blockdev-del", map[string]any{"node-name": n}, nil); err != nil && !isNotFound(err) {
			return fmt.Errorf("blockdev-del %s: %w", n, err)
		}
	}
	for _, s := range d.FDSets {
		_ = mon.Execute(ctx, "remove-fd", map[string]any{"fdset-id": s}, nil)
	}
	return nil
}

// unplugDevice asks QEMU to unplug device id and waits for its DEVICE_DELETED (a device
// already gone is not waited for).
func unplugDevice(ctx context.Context, mon hotplugMonitor, id string) error {
	events, cancel := mon.Subscribe(16)
	defer cancel()
	err := mon.Execute(ctx, "device_del", map[string]any{"id": id}, nil)
	switch {
	case err == nil:
	case qmp.IsCommandError(err, qmp.ClassDeviceNotFound):
		return nil
	case strings.Contains(err.Error(), "in the process of unplug"):
		// Asked before (by an earlier try or agent): wait for it.
	default:
		return fmt.Errorf("device_del %s: %w", id, err)
	}
	return waitDeviceDeleted(ctx, mon, events, id, unplugTimeout)
}

// isNotFound says a QMP error is about an object QEMU does not have.
func isNotFound(err error) bool {
	return qmp.IsCommandError(err, qmp.ClassDeviceNotFound) || strings.Contains(err.Error(), "not found")
}

// waitDeviceDeleted waits for the DEVICE_DELETED event of device id. While it waits it also
// asks QEMU whether the device still exists (an event sent before the subscription, or to
// an earlier agent, is not seen again).
func waitDeviceDeleted(ctx context.Context, mon hotplugMonitor, events <-chan qmp.Event, id string, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case ev, ok := <-events:
			if !ok || ev.Name == qmp.EventDisconnected {
				return errors.New("the QMP connection ended while waiting for DEVICE_DELETED")
			}
			if ev.Name == "DEVICE_DELETED" {
				var data struct {
					Device string `json:"device"`
				}
				if json.Unmarshal(ev.Data, &data) == nil && data.Device == id {
					return nil
				}
			}
		case <-tick.C:
			var out any
			err := mon.Execute(ctx, "qom-get", map[string]any{"path": "/machine/peripheral/" + id, "property": "type"}, &out)
			if err != nil && (qmp.IsCommandError(err, qmp.ClassDeviceNotFound) || strings.Contains(err.Error(), "not found")) {
				return nil
			}
		case <-deadline.C:
			return fmt.Errorf("the guest did not release device %s within %s (DEVICE_DELETED never came): is the device in use?", id, timeout)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// addDiskLeaseLine records a hot-plugged disk's lease token with the leases the QEMU runs
// under (disklease.go), so a lease that moves away fences it like a start-time disk.
func (a *Agent) addDiskLeaseLine(runDir, disk, token string) {
	m := readDiskLeases(runDir)
	if m == nil {
		m = map[string]string{}
	}
	m[disk] = token
	a.writeDiskLeases(runDir, m)
}

func (a *Agent) dropDiskLeaseLine(runDir, disk string) {
	m := readDiskLeases(runDir)
	if _, ok := m[disk]; !ok {
		return
	}
	delete(m, disk)
	a.writeDiskLeases(runDir, m)
}

// writeBlockDeviceRefs records the spec's devices and the hot-plugged ones in
// status.blockDeviceRefs.
func (a *Agent) writeBlockDeviceRefs(ctx context.Context, vm *v1alpha1.VirtualMachine, st hotplugState) error {
	refs := make([]v1alpha1.BlockDeviceStatusRef, 0, len(vm.Spec.BlockDeviceRefs)+len(st.Disks))
	for _, r := range vm.Spec.BlockDeviceRefs {
		refs = append(refs, v1alpha1.BlockDeviceStatusRef{Kind: r.Kind, Name: r.Name, Attached: true, BootOrder: r.BootOrder})
	}
	for _, d := range st.Disks {
		r := v1alpha1.BlockDeviceStatusRef{Kind: d.Kind, Name: d.Name, Target: d.Device, Attached: true, Hotplugged: true,
			VirtualMachineBlockDeviceAttachmentName: d.Attachment, Slot: d.slot()}
		if d.Size > 0 {
			r.Size = v1alpha1.Quantity(strconv.FormatInt(d.Size, 10))
		}
		refs = append(refs, r)
	}
	// Hot-plugged disks, CD-ROMs and NICs migrate with their slot (the target plugs them into
	// the same one); a VM with a hot-plugged device of unknown slot (a disk on the root bus of
	// an i440fx VM, a CD-ROM plugged before slots were recorded) is not live-migrated
	// (docs/hotplug.md): the condition Migratable says so while it has any.
	var hot []string
	for _, d := range st.Disks {
		if d.slot() == "" {
			hot = append(hot, fmt.Sprintf("%s %s (attachment %s)", d.Kind, d.Name, d.Attachment))
		}
	}
	for _, n := range st.NICs {
		if n.Port == "" {
			hot = append(hot, fmt.Sprintf("network interface %d (%s)", n.Index, n.MAC))
		}
	}
	migratable := func(v *v1alpha1.VirtualMachine) bool {
		c := v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionMigratable)
		if len(hot) == 0 {
			return c == nil || c.Reason != v1alpha1.VMReasonHotpluggedDevices
		}
		return c != nil && c.Status == v1alpha1.ConditionFalse && c.Message == hotMessage(hot)
	}
	same := func(v *v1alpha1.VirtualMachine) bool {
		x, _ := json.Marshal(v.Status.BlockDeviceRefs)
		y, _ := json.Marshal(refs)
		n1, _ := json.Marshal(v.Status.Networks)
		n2, _ := json.Marshal(nicSlots(v.Status.Networks, st))
		return string(x) == string(y) && v.Status.BlockDevicesCount == len(refs) && migratable(v) && string(n1) == string(n2)
	}
	if same(vm) {
		return nil
	}
	_, err := runtime.UpdateVMStatus(ctx, a.c, vm.Namespace, vm.Name, vm.UID, hotplugStatusFields, nil, func(v *v1alpha1.VirtualMachine) error {
		if v.Status.NodeName != a.cfg.NodeName || same(v) {
			return runtime.ErrNoChange
		}
		v.Status.BlockDeviceRefs = refs
		v.Status.BlockDevicesCount = len(refs)
		v.Status.Networks = nicSlots(v.Status.Networks, st)
		if len(hot) > 0 {
			v1alpha1.SetCondition(&v.Status.Conditions, v1alpha1.Condition{Type: v1alpha1.VMConditionMigratable, Status: v1alpha1.ConditionFalse,
				Reason: v1alpha1.VMReasonHotpluggedDevices, Message: hotMessage(hot)})
		} else if !migratable(v) {
			v.Status.Conditions = slices.DeleteFunc(v.Status.Conditions, func(c v1alpha1.Condition) bool { return c.Type == v1alpha1.VMConditionMigratable })
		}
		return nil
	})
	return ignoreGone(err)
}

func hotMessage(hot []string) string {
	return "these hot-plugged devices are not live-migrated: " + strings.Join(hot, ", ") + "; detach them, or stop the VM and start it elsewhere"
}

// nicSlots is nets with the root port of each NIC hot-plugged into the running QEMU (st) as
// its slot, matched by MAC, and no slot on the others.
func nicSlots(nets []v1alpha1.NetworkStatus, st hotplugState) []v1alpha1.NetworkStatus {
	out := slices.Clone(nets)
	for i := range out {
		out[i].Slot = ""
		for _, n := range st.NICs {
			if out[i].MACAddress != "" && strings.EqualFold(n.MAC, out[i].MACAddress) {
				out[i].Slot = n.Port
			}
		}
	}
	return out
}

// hotplugStatusFields are the VM status fields hot-plug writes (of networks, only the slots).
var hotplugStatusFields = []string{"blockDeviceRefs", "blockDevicesCount", "conditions", "networks"}

// clearBlockDeviceRefs empties status.blockDeviceRefs of a VM whose QEMU ended: nothing is
// attached to a stopped VM (recordExit).
func clearBlockDeviceRefs(v *v1alpha1.VirtualMachine) {
	v.Status.BlockDeviceRefs = nil
	v.Status.BlockDevicesCount = 0
	if c := v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionMigratable); c != nil && c.Reason == v1alpha1.VMReasonHotpluggedDevices {
		v.Status.Conditions = slices.DeleteFunc(v.Status.Conditions, func(c v1alpha1.Condition) bool { return c.Type == v1alpha1.VMConditionMigratable })
	}
}
