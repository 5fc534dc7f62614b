package e2e

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/network"
)

// TestHotplugNIC runs `rakhsh serve --vm-networking host` in a network namespace: a second
// NIC appended to spec.networks of a running guest (on the NAT network main) is hot-plugged
// with its MAC and IP claims, the guest brings it up and gets its lease by DHCP, and the VM
// runs with its spec (no restart awaited), its root port recorded in status.networks[1].slot
// (live migration takes it along); the entry removed again is unplugged: the guest
// loses the interface, its tap goes and its IP claim is freed.
func TestHotplugNIC(t *testing.T) {
	sideBySide(t)
	dir := vmGuestDir(t)
	lab := newNetnsLab(t)
	base := serveGuestIn(t, lab.In, dir)
	s := lab.startServeIn(t, "--vm-networking", "host", "--no-upstream-dns")
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	c := s.Client()
	s.MustCLI(cviDoc("guest", httpSource(base+"/guest.qcow2"))+"---\n"+vmDiskManifest("n1")+"---\n"+netVMManifest("nic1", "n1", `  networks:
  - type: Main
`), "apply", "-f", "-")
	v := vmWait(t, s, "nic1", 3*time.Minute, "Running with an address", func(v *v1alpha1.VirtualMachine) bool {
		return v != nil && v.Status.Phase == v1alpha1.VMPhaseRunning && v.Status.IPAddress != ""
	})
	vmWaitSerial(t, s, "nic1", "RAKHSH-GUEST: ready", 1)
	vmWaitSerial(t, s, "nic1", "RAKHSH-GUEST: ip=", 1)

	// Add a second NIC on the NAT network, and remove it again; RAKHSH_BENCH_HOTPLUG=N does it
	// N times and prints the medians (docs/benchmarks.md).
	runs, _ := strconv.Atoi(os.Getenv("RAKHSH_BENCH_HOTPLUG"))
	runs = max(runs, 1)
	var addT, delT []float64
	for run := 0; run < runs; run++ {
		// Add a second NIC on the NAT network.
		t0 := time.Now()
		if err := c.Patch(ctx, "virtualmachines", "default", "nic1",
			[]byte(`{"spec":{"networks":[{"type":"Main"},{"type":"ClusterNetwork","name":"main"}]}}`), nil); err != nil {
			t.Fatal(err)
		}
		v = vmWait(t, s, "nic1", time.Minute, "with the second NIC's addresses", func(v *v1alpha1.VirtualMachine) bool {
			return len(v.Status.Networks) == 2 && v.Status.Networks[1].IPAddress != "" && v.Status.Networks[1].MACAddress != ""
		})
		ip2 := v.Status.Networks[1].IPAddress
		// The run+1-th lease on eth1 (each NIC added gets one) is the new NIC's address.
		eth1 := func() []string {
			var out []string
			for _, g := range guestIPs(vmLog(t, s, "nic1")) {
				if strings.HasSuffix(g, "/eth1") {
					out = append(out, g)
				}
			}
			return out
		}
		for deadline := time.Now().Add(vmBootTimeout); len(eth1()) < run+1 && time.Now().Before(deadline); {
			time.Sleep(50 * time.Millisecond)
		}
		addT = append(addT, time.Since(t0).Seconds())
		t.Logf("NIC run %d: spec change to the guest's lease on eth1: %s", run+1, time.Since(t0))
		if g := eth1(); len(g) != run+1 || g[run] != ip2+"/eth1" {
			t.Fatalf("the guest did not get %s on eth1:\n%s", ip2, vmLog(t, s, "nic1"))
		}
		vmWait(t, s, "nic1", 30*time.Second, "running with its spec, the NIC's slot recorded", func(v *v1alpha1.VirtualMachine) bool {
			c := v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionAwaitingRestartToApplyConfiguration)
			m := v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionMigratable)
			return c != nil && c.Status == v1alpha1.ConditionFalse && (m == nil || m.Status != v1alpha1.ConditionFalse) &&
				len(v.Status.Networks) == 2 && v.Status.Networks[0].Slot == "" && strings.HasPrefix(v.Status.Networks[1].Slot, "hotplug")
		})
		if strings.Count(vmLog(t, s, "nic1"), "RAKHSH-GUEST: booted") != 1 {
			t.Fatal("the guest booted again")
		}
		claim := "nic1-ip-1"
		var ipc v1alpha1.VirtualMachineIPAddress
		if err := c.Get(ctx, "virtualmachineipaddresses", "default", claim, &ipc); err != nil || ipc.Status.Address != ip2 {
			t.Fatalf("the second NIC's IP claim %s: %+v %v", claim, ipc.Status, err)
		}

		// Remove it again.
		con := openConsole(t, ctx, c, "nic1")
		con.sh(fmt.Sprintf("while [ -e /sys/class/net/eth1 ]; do sleep 0.1; done; echo NIC-GONE-%d", run))
		t0 = time.Now()
		if err := c.Patch(ctx, "virtualmachines", "default", "nic1", []byte(`{"spec":{"networks":[{"type":"Main"}]}}`), nil); err != nil {
			t.Fatal(err)
		}
		con.wait(fmt.Sprintf("NIC-GONE-%d", run), 90*time.Second, "the guest loses the unplugged NIC")
		delT = append(delT, time.Since(t0).Seconds())
		t.Logf("NIC run %d: spec change to the guest losing eth1: %s", run+1, time.Since(t0))
		deadline := time.Now().Add(time.Minute)
		for {
			err := c.Get(ctx, "virtualmachineipaddresses", "default", claim, &ipc)
			if client.IsNotFound(err) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the IP claim of the removed NIC stays: %+v %v", ipc.Status, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		vmWait(t, s, "nic1", 30*time.Second, "running with its spec", func(v *v1alpha1.VirtualMachine) bool {
			c := v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionAwaitingRestartToApplyConfiguration)
			return len(v.Status.Networks) == 1 && c != nil && c.Status == v1alpha1.ConditionFalse &&
				v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionMigratable) == nil
		})
		con.Close()
		if tap := network.TapName(v.UID, 1); nsLinkExists(lab.In, tap) {
			t.Fatalf("the tap %s of the removed NIC stays", tap)
		}
	}
	if runs > 1 {
		ma, la, ha := median(addT)
		md, ld, hd := median(delT)
		t.Logf("NIC: add median %.2f s (%.2f–%.2f), remove median %.2f s (%.2f–%.2f), %d runs", ma, la, ha, md, ld, hd, runs)
	}
	if log := vmLog(t, s, "nic1"); strings.Count(log, "RAKHSH-GUEST: booted") != 1 {
		t.Fatal("the guest booted again")
	}
	s.MustCLI("", "delete", "vm", "nic1", "--wait", "--timeout", "2m")
}
