package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// TestDiskResize grows a disk that no VM uses (qemu-img) and a disk of a running VM (QMP
// block_resize through the node agent): the guest sees the new size without a reboot.
// Shrinking is refused at admission.
func TestDiskResize(t *testing.T) {
	sideBySide(t)
	s, _ := guestISOServe(t, "data=64Mi", "cold=32Mi")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	patchSize := func(name, size string) error {
		return s.Client().Patch(ctx, "virtualdisks", "default", name,
			[]byte(`{"spec":{"persistentVolumeClaim":{"size":"`+size+`"}}}`), nil)
	}

	// A disk no VM uses grows with qemu-img.
	if err := patchSize("cold", "48Mi"); err != nil {
		t.Fatal(err)
	}
	cold := waitObj(t, s, "virtualdisks", "default", "cold", "grown", func(d *v1alpha1.VirtualDisk) bool {
		return d.Status.Phase == v1alpha1.DiskPhaseReady && d.Status.Capacity == "48Mi"
	})
	if info, err := storage.InfoShared(ctx, storage.DiskPath(s.DataDir, "default", cold.UID), "qcow2"); err != nil || info.VirtualSize != 48<<20 {
		t.Fatalf("cold disk file after the resize: %+v %v", info, err)
	}
	if c := v1alpha1.FindCondition(cold.Status.Conditions, "Resizing"); c == nil || c.Reason != "Resized" {
		t.Fatalf("cold disk conditions: %+v", cold.Status.Conditions)
	}
	// Shrinking is refused.
	if err := patchSize("cold", "16Mi"); err == nil || !strings.Contains(err.Error(), "shrinking") {
		t.Fatalf("shrinking a disk: %v", err)
	}

	applyDocs(s, isoBootVM("rs1", "data"))
	vmWait(t, s, "rs1", time.Minute, "Running", vmPhase(v1alpha1.VMPhaseRunning))
	vmWaitSerial(t, s, "rs1", "RAKHSH-GUEST: ready", 1)
	if log := vmLog(t, s, "rs1"); !hasLine(log, "RAKHSH-GUEST: disk vda 67108864") {
		t.Fatalf("the guest does not see the 64 MiB disk as vda; serial log:\n%s", log)
	}

	// Grow the disk of the running VM.
	if err := patchSize("data", "96Mi"); err != nil {
		t.Fatal(err)
	}
	d := waitObj(t, s, "virtualdisks", "default", "data", "grown", func(d *v1alpha1.VirtualDisk) bool {
		return d.Status.Phase == v1alpha1.DiskPhaseReady && d.Status.Capacity == "96Mi"
	})
	if c := v1alpha1.FindCondition(d.Status.Conditions, "Resizing"); c == nil || c.Reason != "Resized" {
		t.Fatalf("disk conditions: %+v", d.Status.Conditions)
	}
	if a := d.Status.AttachedToVirtualMachines; len(a) != 1 || a[0].Name != "rs1" || !a[0].Mounted {
		t.Fatalf("status.attachedToVirtualMachines of a disk of a running VM: %+v", a)
	}
	if !strings.Contains(s.Logs(), "grew a disk in a running VM") {
		t.Fatal("the disk was not grown through the running VM")
	}
	// The guest sees the new size at once: ask it on its serial console.
	con := openConsole(t, ctx, s.Client(), "rs1")
	con.run("echo VDA-SIZE-$(($(cat /sys/block/vda/size)*512))", "VDA-SIZE-100663296", 60*time.Second, "the guest's size of vda after the resize")
	con.Close()

	s.MustCLI("", "delete", "vm", "rs1", "--wait", "--timeout", "2m")
	waitObj(t, s, "virtualdisks", "default", "data", "detached", func(d *v1alpha1.VirtualDisk) bool {
		return len(d.Status.AttachedToVirtualMachines) == 0
	})
}
