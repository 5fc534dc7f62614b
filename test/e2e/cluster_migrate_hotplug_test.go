package e2e

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/storage"
	"github.com/rakhsh/rakhsh/internal/testutil"
)

// TestLiveMigrationHotplugged, on the three-host cluster: a running VM gets a blank disk on
// its node's Local storage and an ISO as a CD-ROM hot-plugged (`rakhsh vm attach`) and a
// second NIC on the NAT network (spec.networks), the guest writes a marker on the disk, and
// the VM is live-migrated: the target plugs the three devices into the slots the source
// recorded before the stream comes, the disk is mirrored to the target and moves there with
// its lease, the guest goes on without a reboot, reads its marker back from the copy, still
// sees the CD-ROM and reaches the gateway through the NIC with the same MAC; the attachments stay Attached, and the disk is
// detached on the target (the guest loses it, the lease is given back).
func TestLiveMigrationHotplugged(t *testing.T) {
	c, s, img := clusterStart(t, sharedCluster)
	t.Cleanup(func() {
		s.CLI("", "delete", "vm", "rkp-vm", "--ignore-not-found", "--wait")
		s.CLI("", "delete", "vmbda", "rkp-vm-rkp-hd", "rkp-vm-"+img, "--ignore-not-found", "--wait")
		s.CLI("", "delete", "vd", "rkp-hd", "--ignore-not-found", "--wait")
	})
	clusterApply(s, clusterVMManifest{Name: "rkp-vm", Image: img}.YAML())
	v := clusterBoot(t, s, "rkp-vm", "")
	src := v.Status.NodeName
	h := c.Host(src)
	clusterApply(s, clusterDiskManifest{Name: "rkp-hd", Node: src, Size: "64Mi"}.YAML())
	clusterWaitDisks(s, "rkp-hd")
	if d := storageDisk(t, s, "rkp-hd"); d.Status.NodeName != src {
		t.Fatalf("the Local disk is on %q, the VM on %q", d.Status.NodeName, src)
	}
	s.MustCLI("", "vm", "attach", "rkp-vm", "rkp-hd", "--wait", "--timeout", "2m")
	s.MustCLI("", "vm", "attach", "rkp-vm", img, "--kind", "ClusterVirtualImage", "--wait", "--timeout", "2m")
	migrateConsoleType(t, h, v.UID, "while ! [ -e /sys/block/vda ] || ! [ -e /sys/block/sr1 ]; do sleep 0.1; done; echo RKHOT-4711 > /dev/vda; sync; echo RKP''WROTE")
	vmWaitSerial(t, s, "rkp-vm", "RKPWROTE", 1)
	// A second NIC on the NAT network, hot-plugged: the guest takes its lease on eth1.
	if err := s.Client().Patch(context.Background(), "virtualmachines", "default", "rkp-vm",
		[]byte(`{"spec":{"networks":[{"type":"Main"},{"type":"ClusterNetwork","name":"main"}]}}`), nil); err != nil {
		t.Fatal(err)
	}
	v = vmWait(t, s, "rkp-vm", time.Minute, "both hot-plugged devices and the NIC in its status with a slot", func(v *v1alpha1.VirtualMachine) bool {
		n := 0
		for _, r := range v.Status.BlockDeviceRefs {
			if r.Hotplugged && r.Slot != "" {
				n++
			}
		}
		return n == 2 && len(v.Status.Networks) == 2 && v.Status.Networks[0].Slot == "" && v.Status.Networks[1].Slot != "" && v.Status.Networks[1].IPAddress != ""
	})
	nic := v.Status.Networks[1]
	vmWaitSerial(t, s, "rkp-vm", "RAKHSH-GUEST: ip="+nic.IPAddress+" iface=eth1", 1)
	if c := v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionMigratable); c != nil && c.Status == v1alpha1.ConditionFalse {
		t.Fatalf("with hot-plugged devices in slots: Migratable %+v", c)
	}
	before := map[string]string{}
	for _, r := range v.Status.BlockDeviceRefs {
		if r.Hotplugged {
			before[r.Name] = r.Target + "@" + r.Slot
		}
	}
	dst, _ := migrateTicking(t, c, s, "rkp-vm", v.UID, src)
	// The log is the target QEMU's serial output now: a boot there would print the marker.
	if log := vmLog(t, s, "rkp-vm"); strings.Contains(log, "RAKHSH-GUEST: booted") {
		t.Errorf("the guest booted again:\n%s", tail(log, 2000))
	}
	migrateConsoleType(t, c.Host(dst), v.UID, "echo 3 > /proc/sys/vm/drop_caches; echo RKPREAD $(head -c 10 /dev/vda) RKPCD $(cat /sys/block/sr1/device/type)")
	vmWaitSerial(t, s, "rkp-vm", "RKPREAD RKHOT-4711 RKPCD 5", 1)
	// The hot-plugged NIC came along: the same MAC in the guest, and its tap on the target's
	// network carries the guest's traffic (the NAT gateway answers on eth1).
	migrateConsoleType(t, c.Host(dst), v.UID, "echo RKPNIC $(cat /sys/class/net/eth1/address) $(ping -I eth1 -c 3 -W 2 $(ip route | awk '/default/ {print $3; exit}') | grep -o '[0-9]* packets received')")
	// The line is printed once ping ended; wait for all of it (it can arrive in pieces).
	nicLine := regexp.MustCompile(`RKPNIC ` + regexp.QuoteMeta(strings.ToLower(nic.MACAddress)) + ` (\d+) packets received`)
	vmWaitSerialMatch(t, s, "rkp-vm", nicLine, 1)
	if m := nicLine.FindStringSubmatch(vmLog(t, s, "rkp-vm")); m == nil || m[1] == "0" {
		t.Errorf("the hot-plugged NIC carries no traffic on the target:\n%s", tail(vmLog(t, s, "rkp-vm"), 1500))
	}
	after := vmWait(t, s, "rkp-vm", time.Minute, "the same hot-plugged devices in the target's status", func(v *v1alpha1.VirtualMachine) bool {
		got := map[string]string{}
		for _, r := range v.Status.BlockDeviceRefs {
			if r.Hotplugged {
				got[r.Name] = r.Target + "@" + r.Slot
			}
		}
		return v.Status.NodeName == dst && fmt.Sprint(got) == fmt.Sprint(before) &&
			len(v.Status.Networks) == 2 && v.Status.Networks[1].Slot == nic.Slot && v.Status.Networks[1].MACAddress == nic.MACAddress && v.Status.Networks[1].IPAddress == nic.IPAddress
	})
	if c := v1alpha1.FindCondition(after.Status.Conditions, v1alpha1.VMConditionMigratable); c != nil && c.Status == v1alpha1.ConditionFalse {
		t.Errorf("after the migration: Migratable %+v", c)
	}
	for _, b := range []string{"rkp-vm-rkp-hd", "rkp-vm-" + img} {
		waitObj(t, s, "virtualmachineblockdeviceattachments", "default", b, "Attached", func(o *v1alpha1.VirtualMachineBlockDeviceAttachment) bool {
			return o.Status.Phase == v1alpha1.VMBDAPhaseAttached
		})
	}
	d := storageDisk(t, s, "rkp-hd")
	waitFor(t, "the hot-plugged disk on the target node", func() bool { return storageDisk(t, s, "rkp-hd").Status.NodeName == dst })
	waitFor(t, "the hot-plugged disk's lease handed to the target", func() bool {
		l := diskLease(t, s, "rkp-hd")
		return l.Spec.HolderNode == dst && l.Spec.VirtualMachineUID == v.UID
	})
	waitFor(t, "the disk file gone from the source", func() bool {
		_, err := os.Stat(storage.ClassDiskPath(h.DataDir, nil, d.UID))
		return os.IsNotExist(err)
	})
	waitFor(t, "one QEMU of the VM", func() bool { return testutil.CountQEMU(v.UID) == 1 })

	// Detached on the target: the guest loses the disk, the lease is given back.
	s.MustCLI("", "vm", "detach", "rkp-vm", "rkp-hd", "--wait", "--timeout", "2m")
	migrateConsoleType(t, c.Host(dst), v.UID, "while [ -e /sys/block/vda ]; do sleep 0.1; done; echo RKP''GONE")
	vmWaitSerial(t, s, "rkp-vm", "RKPGONE", 1)
	waitFor(t, "the lease given back after the detach", func() bool {
		l := diskLease(t, s, "rkp-hd")
		return l.Spec.HolderNode == "" || l.Spec.VirtualMachineUID != v.UID
	})
}
