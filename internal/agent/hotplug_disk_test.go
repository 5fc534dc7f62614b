package agent

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/qemu"
	"github.com/rakhsh/rakhsh/internal/qemu/qmp"
)

// fakeHotplugMon records the QMP commands and answers them as scripted.
type fakeHotplugMon struct {
	mu     sync.Mutex
	calls  []string
	events chan qmp.Event
	// reply, when set, answers a command (nil: success).
	reply func(cmd string, args map[string]any) error
}

func (f *fakeHotplugMon) Execute(_ context.Context, cmd string, args, _ any) error {
	var m map[string]any
	b, _ := json.Marshal(args)
	_ = json.Unmarshal(b, &m)
	f.mu.Lock()
	f.calls = append(f.calls, cmd+" "+string(b))
	f.mu.Unlock()
	if f.reply != nil {
		return f.reply(cmd, m)
	}
	return nil
}

func (f *fakeHotplugMon) AddFD(context.Context, *os.File, int, string) (qmp.AddFDInfo, error) {
	return qmp.AddFDInfo{FDSetID: 9}, nil
}

func (f *fakeHotplugMon) Subscribe(int) (<-chan qmp.Event, func()) { return f.events, func() {} }

// notFoundOn is a reply of fakeHotplugMon: QEMU's DeviceNotFound error with desc to the
// command failing, success to every other.
func notFoundOn(failing, desc string) func(string, map[string]any) error {
	return func(cmd string, _ map[string]any) error {
		if cmd == failing {
			return &qmp.CommandError{Command: cmd, Class: qmp.ClassDeviceNotFound, Desc: desc}
		}
		return nil
	}
}

func (f *fakeHotplugMon) names() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, c := range f.calls {
		out = append(out, strings.Fields(c)[0])
	}
	return out
}

// TestUnplugDiskSequence: device_del, then (after DEVICE_DELETED of that device, another
// device's event being ignored) blockdev-del of every node top first and remove-fd of its fd
// sets.
func TestUnplugDiskSequence(t *testing.T) {
	f := &fakeHotplugMon{events: make(chan qmp.Event, 4)}
	f.reply = func(cmd string, _ map[string]any) error {
		if cmd == "device_del" {
			f.events <- qmp.Event{Name: "DEVICE_DELETED", Data: json.RawMessage(`{"device":"other"}`)}
			f.events <- qmp.Event{Name: "DEVICE_DELETED", Data: json.RawMessage(`{"device":"hpdisk-1"}`)}
		}
		return nil
	}
	d := pluggedDisk{Device: "hpdisk-1", Nodes: []string{"hp-1", "hp-1.b1"}, FDSets: []int{7, 8}}
	if err := unplugDisk(context.Background(), f, d); err != nil {
		t.Fatal(err)
	}
	want := []string{`device_del {"id":"hpdisk-1"}`, `blockdev-del {"node-name":"hp-1"}`, `blockdev-del {"node-name":"hp-1.b1"}`,
		`remove-fd {"fdset-id":7}`, `remove-fd {"fdset-id":8}`}
	if !reflect.DeepEqual(f.calls, want) {
		t.Fatalf("QMP calls:\n got %q\nwant %q", f.calls, want)
	}
}

// TestUnplugDiskGone: a device QEMU no longer has is not waited for; its nodes still go.
func TestUnplugDiskGone(t *testing.T) {
	f := &fakeHotplugMon{events: make(chan qmp.Event)}
	f.reply = notFoundOn("device_del", "Device 'hpdisk-1' not found")
	if err := unplugDisk(context.Background(), f, pluggedDisk{Device: "hpdisk-1", Nodes: []string{"hp-1"}}); err != nil {
		t.Fatal(err)
	}
	if got := f.names(); !reflect.DeepEqual(got, []string{"device_del", "blockdev-del"}) {
		t.Fatalf("QMP calls: %q", got)
	}
}

// TestWaitDeviceDeletedPolls: without the event (sent before the subscription), the device's
// absence in QOM ends the wait; a device that stays ends it with a timeout naming it.
func TestWaitDeviceDeletedPolls(t *testing.T) {
	f := &fakeHotplugMon{events: make(chan qmp.Event)}
	f.reply = notFoundOn("qom-get", "Device '/machine/peripheral/x' not found")
	if err := waitDeviceDeleted(context.Background(), f, f.events, "x", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	f.reply = nil
	err := waitDeviceDeleted(context.Background(), f, f.events, "x", 1500*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "did not release device x") {
		t.Fatalf("a device that stays: %v", err)
	}
}

// TestFreePort: the first root port no device uses.
func TestFreePort(t *testing.T) {
	disks := []pluggedDisk{{Port: qemu.HotplugPort(0)}, {Port: ""}, {Port: qemu.HotplugPort(2)}}
	if p := freePort(disks); p != qemu.HotplugPort(1) {
		t.Fatalf("free port: %q", p)
	}
	for i := 0; i < qemu.HotplugPorts; i++ {
		disks = append(disks, pluggedDisk{Port: qemu.HotplugPort(i)})
	}
	if p := freePort(disks); p != "" {
		t.Fatalf("free port of a full VM: %q", p)
	}
}

// TestHotplugStateOfAnotherQEMU: the state recorded for an earlier QEMU counts as empty.
func TestHotplugStateOfAnotherQEMU(t *testing.T) {
	dir := t.TempDir()
	if err := writeHotplugState(dir, hotplugState{PID: 10, Disks: []pluggedDisk{{Attachment: "a"}}}); err != nil {
		t.Fatal(err)
	}
	if s := readHotplugState(dir, 10); len(s.Disks) != 1 {
		t.Fatalf("state of the same QEMU: %+v", s)
	}
	if s := readHotplugState(dir, 11); len(s.Disks) != 0 || s.PID != 11 {
		t.Fatalf("state of another QEMU: %+v", s)
	}
}

// TestUnplugNICSequence: device_del, DEVICE_DELETED, then netdev_del.
func TestUnplugNICSequence(t *testing.T) {
	f := &fakeHotplugMon{events: make(chan qmp.Event, 1)}
	f.reply = func(cmd string, _ map[string]any) error {
		if cmd == "device_del" {
			f.events <- qmp.Event{Name: "DEVICE_DELETED", Data: json.RawMessage(`{"device":"hpnic1","path":"/machine/peripheral/hpnic1"}`)}
		}
		return nil
	}
	if err := unplugNIC(context.Background(), f, pluggedNIC{Index: 1, Device: "hpnic1", Netdev: "hpnet1"}); err != nil {
		t.Fatal(err)
	}
	want := []string{`device_del {"id":"hpnic1"}`, `netdev_del {"id":"hpnet1"}`}
	if !reflect.DeepEqual(f.calls, want) {
		t.Fatalf("QMP calls:\n got %q\nwant %q", f.calls, want)
	}
}

// TestFreePortOfSharesPorts: disks and NICs share the root ports.
func TestFreePortOfSharesPorts(t *testing.T) {
	st := &hotplugState{Disks: []pluggedDisk{{Port: qemu.HotplugPort(0)}}, NICs: []pluggedNIC{{Port: qemu.HotplugPort(1)}}}
	if p := freePortOf(st); p != qemu.HotplugPort(2) {
		t.Fatalf("free port: %q", p)
	}
}

// TestSameNICPrefix: no networks is one Main interface; a changed interface is not the same.
func TestSameNICPrefix(t *testing.T) {
	main := v1alpha1.NetworkSpec{Type: v1alpha1.NetworkTypeMain}
	extra := v1alpha1.NetworkSpec{Type: v1alpha1.NetworkTypeClusterNetwork, Name: "main"}
	if !sameNICPrefix(nil, []v1alpha1.NetworkSpec{main, extra}, 1) {
		t.Fatal("no networks and [Main, extra] share their first interface")
	}
	if sameNICPrefix([]v1alpha1.NetworkSpec{extra}, []v1alpha1.NetworkSpec{main, extra}, 1) {
		t.Fatal("a changed first interface is not the same")
	}
	if sameNICPrefix(nil, nil, 2) {
		t.Fatal("one interface has no prefix of two")
	}
}

// TestHotplugSlots: a device's slot (status.blockDeviceRefs[].slot) names its root port or
// SCSI target id, parses back to the same place, and a CD-ROM is plugged at the id chosen.
func TestHotplugSlots(t *testing.T) {
	two := 2
	for _, p := range []pluggedDisk{{Port: qemu.HotplugPort(3)}, {SCSIID: &two}} {
		var back pluggedDisk
		if err := parseSlot(p.slot(), &back); err != nil || back.slot() != p.slot() {
			t.Errorf("slot %q parsed back as %q (%v)", p.slot(), back.slot(), err)
		}
	}
	if s := (pluggedDisk{}).slot(); s != "" {
		t.Errorf("a device without a recorded place has slot %q", s)
	}
	for _, bad := range []string{"", "pcie.0", "hotplug9", "scsi-id=x", "scsi-id=-1", "scsi-id=256"} {
		if err := parseSlot(bad, &pluggedDisk{}); err == nil {
			t.Errorf("slot %q accepted", bad)
		}
	}
	zero := 0
	st := &hotplugState{Disks: []pluggedDisk{{SCSIID: &zero}, {SCSIID: &two}, {Port: qemu.HotplugPort(0)}}}
	if id := freeSCSIID(st); id != 1 {
		t.Errorf("free SCSI id = %d, want 1", id)
	}
	dev := hotplugDevice(&pluggedDisk{Device: "hpdisk-1", SCSIID: &two}, &qemu.Disk{CDROM: true}, "1")
	if dev["driver"] != "scsi-cd" || dev["scsi-id"] != 2 || dev["lun"] != 0 || dev["bus"] != qemu.HotplugSCSI+".0" {
		t.Errorf("CD-ROM device_add: %v", dev)
	}
	dev = hotplugDevice(&pluggedDisk{Device: "hpdisk-1", Port: qemu.HotplugPort(1)}, &qemu.Disk{}, "1")
	if dev["driver"] != "virtio-blk-pci" || dev["bus"] != qemu.HotplugPort(1) {
		t.Errorf("disk device_add: %v", dev)
	}
}

// scsiIDMon answers qom-get scsi-id of CD-ROMs by device.
type scsiIDMon struct {
	fakeHotplugMon
	ids map[string]int
}

func (m *scsiIDMon) Execute(ctx context.Context, cmd string, args, result any) error {
	a, _ := args.(map[string]any)
	if cmd == "qom-get" {
		path, _ := a["path"].(string)
		id, ok := m.ids[strings.TrimPrefix(path, "/machine/peripheral/")]
		if !ok {
			return errors.New("Property 'virtio-blk-pci.scsi-id' not found")
		}
		*(result.(*int)) = id
		return nil
	}
	return m.fakeHotplugMon.Execute(ctx, cmd, args, result)
}

// TestLearnSCSIIDs: CD-ROMs plugged before ids were given learn theirs from QEMU (and so get a
// slot, and a new CD-ROM is not given a used id); disks and known ids are left alone.
func TestLearnSCSIIDs(t *testing.T) {
	one := 1
	st := hotplugState{Disks: []pluggedDisk{{Device: "hpdisk-a"}, {Device: "hpdisk-b", SCSIID: &one}, {Device: "hpdisk-c", Port: qemu.HotplugPort(0)}, {Device: "hpdisk-d"},
		{Device: "hpdisk-e", Kind: v1alpha1.BlockDeviceKindVirtualDisk}}}
	m := &scsiIDMon{ids: map[string]int{"hpdisk-a": 0, "hpdisk-b": 7, "hpdisk-e": 3}}
	if !learnSCSIIDs(context.Background(), m, &st) {
		t.Fatal("nothing learnt")
	}
	if st.Disks[0].slot() != "scsi-id=0" || st.Disks[1].slot() != "scsi-id=1" || st.Disks[2].slot() != qemu.HotplugPort(0) || st.Disks[3].slot() != "" {
		t.Errorf("slots after learning: %q %q %q %q", st.Disks[0].slot(), st.Disks[1].slot(), st.Disks[2].slot(), st.Disks[3].slot())
	}
	if st.Disks[4].SCSIID != nil {
		t.Error("a VirtualDisk (never a CD-ROM) was asked its SCSI id")
	}
	if id := freeSCSIID(&st); id != 2 {
		t.Errorf("the next CD-ROM's id = %d, want 2", id)
	}
	if learnSCSIIDs(context.Background(), m, &st) {
		t.Error("learnt again what was known")
	}
}

// TestUpdateRunSpecNetworksKeepsTheRest: recording a hot-plugged NIC's network in
// runspec.json changes only the networks: the memory padding, boot shape, retired vCPU slots
// and balloon facts stay (they were dropped, and the next migration's target then started
// with unpadded RAM and QEMU refused the stream: "Size mismatch: pc.ram").
func TestUpdateRunSpecNetworksKeepsTheRest(t *testing.T) {
	dir := t.TempDir()
	vm := &v1alpha1.VirtualMachine{}
	rs := &runSpec{BootMemory: "256Mi", BootCores: 1, RetiredCPUSlots: []int{2}, HotpluggedMemory: "128Mi", Balloon: true,
		BalloonFloor: "64Mi", BalloonReporting: true, MemoryPadKiB: 8}
	rs.Spec.CPU.Cores = 2
	if err := saveRunSpec(dir, rs); err != nil {
		t.Fatal(err)
	}
	nets := []v1alpha1.NetworkSpec{{Type: v1alpha1.NetworkTypeMain}, {Type: v1alpha1.NetworkTypeClusterNetwork, Name: "main"}}
	if err := updateRunSpecNetworks(dir, vm, nets); err != nil {
		t.Fatal(err)
	}
	got := loadRunSpec(dir, vm)
	want := *rs
	want.Spec.Networks = nets
	if !reflect.DeepEqual(*got, want) {
		t.Fatalf("runspec after the NIC:\n got %+v\nwant %+v", *got, want)
	}
}
