package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/qemu"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// Hot-plugged devices of a migrating VM (docs/hotplug.md). The source records where each
// hot-plugged disk or CD-ROM sits (status.blockDeviceRefs[].slot: its root port, or its SCSI
// target id), and each hot-plugged NIC (status.networks[].slot); the target plugs the same
// devices, with the same qdev ids and block node names, into the same slots of its QEMU
// while it waits for the stream (-incoming defer), so that the device state the stream
// carries finds them. A hot-plugged disk on Local storage gets an
// empty copy here that the source mirrors into, as the spec's Local disks do; its lease
// follows the VM at the switch-over like theirs. The devices are recorded in the target's
// hotplug.json, so that after the switch-over this agent's hot-plug finds them plugged.

// stepIncomingHotplug plugs the source's hot-plugged devices into the target QEMU.
func (a *Agent) stepIncomingHotplug(ctx context.Context, r *startRun) error {
	var hot []v1alpha1.BlockDeviceStatusRef
	for _, ref := range r.vm.Status.BlockDeviceRefs {
		if ref.Hotplugged {
			hot = append(hot, ref)
		}
	}
	if len(hot) == 0 && len(r.hotNICs) == 0 {
		return nil
	}
	mon, ok := r.mon.(nicMonitor)
	if !ok {
		return failStart("the monitor cannot hot-plug devices")
	}
	mirrored := map[string]bool{}
	for _, d := range r.vm.Status.MigrationState.Disks {
		mirrored[d.Name] = true
	}
	st := hotplugState{PID: r.m.PID()}
	for _, ref := range hot {
		p, d, err := a.incomingDevice(ctx, r, ref, mirrored[ref.Name])
		if err != nil {
			return err
		}
		p, err = a.plugResolved(ctx, mon, r.vm, r.in, p, &d, false)
		if err != nil {
			return failStart(fmt.Sprintf("plugging %s %q (attachment %s) into slot %s: %v", ref.Kind, ref.Name, ref.VirtualMachineBlockDeviceAttachmentName, ref.Slot, err))
		}
		st.Disks = append(st.Disks, p)
		if mirrored[ref.Name] {
			if r.hotNodes == nil {
				r.hotNodes = map[string]string{}
			}
			r.hotNodes[ref.Name] = p.Nodes[0]
		}
	}
	if len(r.hotNICs) > 0 {
		st.BootNICs = len(r.nics)
	}
	for _, n := range r.hotNICs {
		if err := qemuPlugNIC(ctx, mon, n.nic, n.mtu); err != nil {
			return failStart(fmt.Sprintf("plugging network interface %d (%s) into slot %s: %v", n.nic.Index, n.nic.MAC, n.nic.Port, err))
		}
		st.NICs = append(st.NICs, n.nic)
	}
	if err := writeHotplugState(r.runDir, st); err != nil {
		return failStart("recording the hot-plugged devices: " + err.Error())
	}
	a.log.Info("migration target: hot-plugged devices plugged", "vm", string(r.key), "devices", len(st.Disks), "nics", len(st.NICs))
	return nil
}

// incomingNIC is a NIC the migration's source hot-plugged: the target's QEMU starts without it
// and gets it plugged into the same root port (stepIncomingHotplug).
type incomingNIC struct {
	nic pluggedNIC
	mtu int
}

// splitIncomingNICs divides the NICs of a migration's target (nics, made for plan) into those
// its QEMU starts with and those the source hot-plugged: status.networks gives the slot of
// each hot-plugged one (by MAC).
func splitIncomingNICs(vm *v1alpha1.VirtualMachine, plan []plannedNIC, nics []qemu.NIC) (boot []qemu.NIC, hot []incomingNIC) {
	for i, p := range plan {
		slot := ""
		for _, ns := range vm.Status.Networks {
			if ns.MACAddress != "" && strings.EqualFold(ns.MACAddress, p.mac) {
				slot = ns.Slot
			}
		}
		if slot == "" {
			boot = append(boot, nics[i])
			continue
		}
		hot = append(hot, incomingNIC{nic: hotNIC(p, slot), mtu: p.net.Spec.MTU})
	}
	return boot, hot
}

// incomingDevice is the device of the source's hot-plugged ref and its disk on this node: the
// attachment's uid gives the device's ids, ref's slot its place; a mirrored Local disk gets
// its empty copy here.
func (a *Agent) incomingDevice(ctx context.Context, r *startRun, ref v1alpha1.BlockDeviceStatusRef, mirrored bool) (pluggedDisk, qemu.Disk, error) {
	var d qemu.Disk
	what := fmt.Sprintf("hot-plugged %s %q (attachment %s)", ref.Kind, ref.Name, ref.VirtualMachineBlockDeviceAttachmentName)
	if a.bdas == nil {
		return pluggedDisk{}, d, failStart(what + ": this agent does not hot-plug devices")
	}
	// An agent that just started may not have the attachment in its cache yet: it waits a
	// little for it.
	key := runtime.NewKey(r.vm.Namespace, ref.VirtualMachineBlockDeviceAttachmentName)
	b, ok := a.bdas.Get(key)
	for end := time.Now().Add(10 * time.Second); !ok && time.Now().Before(end) && ctx.Err() == nil; b, ok = a.bdas.Get(key) {
		time.Sleep(100 * time.Millisecond)
	}
	if !ok {
		return pluggedDisk{}, d, failStart(what + ": its attachment is not known here")
	}
	if b.Spec.VirtualMachineName != r.vm.Name || b.Spec.BlockDeviceRef.Kind != ref.Kind || b.Spec.BlockDeviceRef.Name != ref.Name {
		return pluggedDisk{}, d, failStart(what + ": its attachment names another VM or device")
	}
	p := pluggedDisk{Attachment: b.Name, UID: b.UID, Kind: ref.Kind, Name: ref.Name, Device: "hpdisk-" + hotplugID(b.UID)}
	if ref.Target != "" && ref.Target != p.Device {
		return pluggedDisk{}, d, failStart(fmt.Sprintf("%s: the source has it as device %s, not %s", what, ref.Target, p.Device))
	}
	if err := parseSlot(ref.Slot, &p); err != nil {
		return pluggedDisk{}, d, failStart(what + ": " + err.Error())
	}
	if !mirrored {
		var err error
		if d, err = a.resolveAttached(ctx, r.vm.Namespace, ref.Kind, ref.Name); err != nil {
			return pluggedDisk{}, d, failStart(what + ": " + err.Error())
		}
		if d.CDROM != (p.SCSIID != nil) {
			return pluggedDisk{}, d, failStart(fmt.Sprintf("%s: slot %s does not fit the device (CD-ROM: %v)", what, ref.Slot, d.CDROM))
		}
		return p, d, nil
	}
	if p.SCSIID != nil {
		return pluggedDisk{}, d, failStart(fmt.Sprintf("%s: slot %s does not fit a disk", what, ref.Slot))
	}
	path, err := a.makeIncomingDisk(ctx, r.vm.Namespace, ref.Name, &d)
	if path != "" {
		a.recordIncomingFile(r.runDir, r.vm.Status.MigrationState.ID, path)
	}
	if err != nil {
		return pluggedDisk{}, d, failStart(what + ": " + err.Error())
	}
	return p, d, nil
}

// recordIncomingFile adds path to the files the incoming migration id made (migrationInFile),
// to be removed if it fails; a list of another migration is replaced.
func (a *Agent) recordIncomingFile(runDir, id, path string) {
	var rec migrationIn
	if b, err := os.ReadFile(filepath.Join(runDir, migrationInFile)); err == nil {
		_ = json.Unmarshal(b, &rec)
	}
	if rec.ID != id {
		rec = migrationIn{ID: id} // another migration's list: not this one's files
	}
	rec.Files = append(rec.Files, path)
	_ = writeJSONFile(filepath.Join(runDir, migrationInFile), rec)
}
