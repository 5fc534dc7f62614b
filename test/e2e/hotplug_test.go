package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// TestHotplugDisks hot-plugs a blank VirtualDisk (virtio-blk) and an ISO image (SCSI CD-ROM)
// into a running guest through VirtualMachineBlockDeviceAttachments made by `rakhsh vm
// attach`: the guest sees them, the VM's status lists them as hot-plugged with their slots, the disk's lease
// is taken; a second attachment of the same disk fails with a conflict; `rakhsh vm detach`
// unplugs them and the guest no longer sees them, the lease is given back. Then, with the VM
// stopped: an attachment deleted while the VM is stopped goes at once and leaves nothing, and
// one made while it is stopped waits (Pending) and is plugged when the VM runs again.
func TestHotplugDisks(t *testing.T) {
	sideBySide(t)
	s, base := guestISOServe(t, "hp1=64Mi", "hp2=48Mi")
	applyDocs(s, `apiVersion: virtualization.rakhsh.io/v1alpha1
kind: VirtualImage
metadata: {name: extra-iso}
spec:
  dataSource:
    type: HTTP
    http: {url: "`+base+`/guest.iso"}
`, vmDoc{Name: "hp", Policy: "Manual", Memory: "256Mi", Grace: "30", Refs: []string{cviRef("guest-iso")}}.String())
	s.MustCLI("", "wait", "vi", "extra-iso", "--for", "phase=Ready", "--timeout", "2m")
	vmStartGuest(t, s, "hp")

	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	con := openConsole(t, ctx, s.Client(), "hp")

	// Attach a blank disk and an ISO to the running guest.
	t0 := time.Now()
	s.MustCLI("", "vm", "attach", "hp", "hp1", "--wait", "--timeout", "2m")
	con.run(`while ! [ -e /sys/block/vda ]; do sleep 0.1; done; echo HP-VDA-$(($(cat /sys/block/vda/size)*512))`, "HP-VDA-67108864", 90*time.Second, "the guest sees the hot-plugged disk")
	t.Logf("disk: attach to the guest seeing it: %s", time.Since(t0))
	t0 = time.Now()
	s.MustCLI("", "vm", "attach", "hp", "extra-iso", "--kind", "VirtualImage", "--wait", "--timeout", "2m")
	con.run(`while ! [ -e /sys/block/sr1 ]; do sleep 0.1; done; echo HP-SR1-$(cat /sys/block/sr1/device/type)-$(($(cat /sys/block/sr1/size)>0))`, "HP-SR1-5-1", 90*time.Second, "the guest sees the hot-plugged CD-ROM (SCSI type 5) with its medium")
	t.Logf("CD-ROM: attach to the guest seeing it: %s", time.Since(t0))

	vm := vmWait(t, s, "hp", 30*time.Second, "listing both hot-plugged devices", func(v *v1alpha1.VirtualMachine) bool {
		n := 0
		for _, r := range v.Status.BlockDeviceRefs {
			if r.Hotplugged && r.Attached && r.VirtualMachineBlockDeviceAttachmentName != "" {
				n++
			}
		}
		return n == 2
	})
	if len(vm.Status.BlockDeviceRefs) != 3 || vm.Status.BlockDeviceRefs[0].Name != "guest-iso" || vm.Status.BlockDeviceRefs[0].Hotplugged {
		t.Fatalf("status.blockDeviceRefs: %+v", vm.Status.BlockDeviceRefs)
	}
	// Each hot-plugged device's slot is recorded (a migration's target plugs it there): the
	// disk in the first root port, the CD-ROM at SCSI target id 0.
	slots := map[string]string{}
	for _, r := range vm.Status.BlockDeviceRefs[1:] {
		slots[r.Name] = r.Slot
	}
	if slots["hp1"] != "hotplug0" || slots["extra-iso"] != "scsi-id=0" {
		t.Errorf("slots of the hot-plugged devices: %v", slots)
	}
	var lease v1alpha1.VirtualDiskLease
	if err := s.Client().Get(ctx, "virtualdiskleases", "default", "hp1", &lease); err != nil || lease.Spec.VirtualMachineName != "hp" || lease.Spec.HolderNode == "" {
		t.Fatalf("the lease of the hot-plugged disk: %+v %v", lease.Spec, err)
	}
	b := getObj[v1alpha1.VirtualMachineBlockDeviceAttachment](t, s, "virtualmachineblockdeviceattachments", "hp-hp1")
	for _, typ := range []string{"VirtualMachineReady", "BlockDeviceReady", "Attached"} {
		if c := v1alpha1.FindCondition(b.Status.Conditions, typ); c == nil || c.Status != v1alpha1.ConditionTrue {
			t.Fatalf("attachment condition %s: %+v", typ, b.Status.Conditions)
		}
	}

	// The same writable disk cannot be attached twice.
	r := s.CLI("", "vm", "attach", "hp", "hp1", "--name", "dup", "--wait", "--timeout", "1m")
	if r.Code == 0 || !strings.Contains(r.Stderr, "Conflict") {
		t.Fatalf("a second attachment of a writable disk: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	s.MustCLI("", "delete", "vmbda", "dup", "--wait", "--timeout", "1m")

	// Detach both: the guest no longer sees them, the lease is given back.
	t0 = time.Now()
	s.MustCLI("", "vm", "detach", "hp", "hp1", "--wait", "--timeout", "2m")
	s.MustCLI("", "vm", "detach", "hp", "extra-iso", "--wait", "--timeout", "2m")
	con.run(`while [ -e /sys/block/vda ] || [ -e /sys/block/sr1 ]; do sleep 0.1; done; echo HP-GONE`, "HP-GONE", 60*time.Second, "the guest no longer sees the unplugged devices")
	t.Logf("detach of both to the guest losing them: %s", time.Since(t0))
	vmWait(t, s, "hp", 30*time.Second, "listing no hot-plugged device", func(v *v1alpha1.VirtualMachine) bool {
		return len(v.Status.BlockDeviceRefs) == 1
	})
	lease = v1alpha1.VirtualDiskLease{} // absent fields are not decoded
	if err := s.Client().Get(ctx, "virtualdiskleases", "default", "hp1", &lease); err != nil || lease.Spec.HolderNode != "" {
		t.Fatalf("the lease of the unplugged disk is not given back: %+v %v", lease.Spec, err)
	}
	con.Close()

	// Stopped VM: one attachment is deleted while the VM is stopped, another waits for the
	// next start.
	s.MustCLI("", "vm", "attach", "hp", "hp1", "--wait", "--timeout", "2m")
	s.MustCLI("", "vm", "stop", "hp", "--wait", "--timeout", "2m")
	waitObj(t, s, "virtualmachineblockdeviceattachments", "default", "hp-hp1", "Pending", func(b *v1alpha1.VirtualMachineBlockDeviceAttachment) bool {
		return b.Status.Phase == v1alpha1.VMBDAPhasePending
	})
	s.MustCLI("", "vm", "detach", "hp", "hp1", "--wait", "--timeout", "30s")
	s.MustCLI("", "vm", "attach", "hp", "hp2")
	waitObj(t, s, "virtualmachineblockdeviceattachments", "default", "hp-hp2", "Pending", func(b *v1alpha1.VirtualMachineBlockDeviceAttachment) bool {
		c := v1alpha1.FindCondition(b.Status.Conditions, "VirtualMachineReady")
		return b.Status.Phase == v1alpha1.VMBDAPhasePending && c != nil && c.Reason == "VirtualMachineNotRunning"
	})
	lease = v1alpha1.VirtualDiskLease{}
	if err := s.Client().Get(ctx, "virtualdiskleases", "default", "hp1", &lease); err != nil || lease.Spec.HolderNode != "" {
		t.Fatalf("the lease of the disk detached while stopped: %+v %v", lease.Spec, err)
	}
	s.MustCLI("", "vm", "start", "hp", "--wait", "--timeout", "2m")
	vmWaitSerial(t, s, "hp", "RAKHSH-GUEST: ready", 2)
	waitObj(t, s, "virtualmachineblockdeviceattachments", "default", "hp-hp2", "Attached", func(b *v1alpha1.VirtualMachineBlockDeviceAttachment) bool {
		return b.Status.Phase == v1alpha1.VMBDAPhaseAttached
	})
	con = openConsole(t, ctx, s.Client(), "hp")
	con.run(`while ! [ -e /sys/block/vda ]; do sleep 0.1; done; echo HP-VDA-$(($(cat /sys/block/vda/size)*512))`, "HP-VDA-50331648", 90*time.Second, "the guest sees the disk attached while it was stopped")
	con.Close()
	s.MustCLI("", "delete", "vm", "hp", "--wait", "--timeout", "2m")
	// The attachment of a deleted VM goes when it is deleted (its VM no longer runs).
	s.MustCLI("", "delete", "vmbda", "hp-hp2", "--wait", "--timeout", "1m")
}
