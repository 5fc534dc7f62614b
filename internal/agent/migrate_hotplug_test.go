package agent

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/qemu"
)

// TestIncomingFilesOfOneMigration: the files a failed incoming migration made are removed,
// never those another (earlier, switched-over) migration's list names; a new list starts for
// a new migration.
func TestIncomingFilesOfOneMigration(t *testing.T) {
	dir := t.TempDir()
	a := &Agent{}
	old := filepath.Join(dir, "old-disk")
	mine := filepath.Join(dir, "new-disk")
	for _, f := range []string{old, mine} {
		if err := os.WriteFile(f, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	a.recordIncomingFile(dir, "m1", old)
	a.removeIncomingFiles(dir, "m2") // another migration fails: m1's file stays
	if _, err := os.Stat(old); err != nil {
		t.Fatalf("a file of migration m1 removed for m2: %v", err)
	}
	a.recordIncomingFile(dir, "m2", mine) // m2's list replaces m1's
	a.removeIncomingFiles(dir, "m2")
	if _, err := os.Stat(mine); !os.IsNotExist(err) {
		t.Errorf("m2's own file left: %v", err)
	}
	if _, err := os.Stat(old); err != nil {
		t.Errorf("m1's file removed with m2's: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, migrationInFile)); !os.IsNotExist(err) {
		t.Errorf("the list left after its files were removed: %v", err)
	}
}

// TestIncomingNICs: a migration's target starts its QEMU with the NICs that have no slot in
// status.networks, and plugs each one with a slot into that root port with the ids the source
// gave it (by its index in spec.networks); the source's slots come from its hot-plug state,
// matched by MAC.
func TestIncomingNICs(t *testing.T) {
	cn := &v1alpha1.ClusterNetwork{}
	cn.Spec.MTU = 1400
	plan := []plannedNIC{
		{index: 0, netName: "main", net: cn, tap: "rk-a0", mac: "52:54:00:00:00:0a"},
		{index: 1, netName: "main", net: cn, tap: "rk-a1", mac: "52:54:00:00:00:0b"},
	}
	nics := []qemu.NIC{{ID: "net0", MAC: plan[0].mac, Tap: plan[0].tap}, {ID: "net1", MAC: plan[1].mac, Tap: plan[1].tap}}
	// The source's status, as writeBlockDeviceRefs records it.
	src := hotplugState{BootNICs: 1, NICs: []pluggedNIC{hotNIC(plan[1], qemu.HotplugPort(2))}}
	nets := nicSlots([]v1alpha1.NetworkStatus{
		{Type: v1alpha1.NetworkTypeMain, MACAddress: "52:54:00:00:00:0A", Slot: "stale"},
		{Type: v1alpha1.NetworkTypeClusterNetwork, Name: "main", MACAddress: plan[1].mac},
	}, src)
	if nets[0].Slot != "" || nets[1].Slot != qemu.HotplugPort(2) {
		t.Fatalf("slots in status.networks: %+v", nets)
	}
	vm := &v1alpha1.VirtualMachine{}
	vm.Status.Networks = nets
	boot, hot := splitIncomingNICs(vm, plan, nics)
	if len(boot) != 1 || boot[0].ID != "net0" {
		t.Errorf("the target's QEMU starts with %+v, want net0 only", boot)
	}
	want := incomingNIC{nic: pluggedNIC{Index: 1, Network: "main", MAC: plan[1].mac, Tap: "rk-a1", Device: "hpnic1", Netdev: "hpnet1", Port: qemu.HotplugPort(2)}, mtu: 1400}
	if len(hot) != 1 || hot[0] != want {
		t.Errorf("plugged after the start: %+v, want %+v", hot, want)
	}
	// Without slots (no hot-plugged NIC, or a source that records none) every NIC is a boot NIC.
	vm.Status.Networks = nicSlots(nets, hotplugState{})
	if boot, hot := splitIncomingNICs(vm, plan, nics); len(boot) != 2 || len(hot) != 0 {
		t.Errorf("no slots: boot %+v, hot %+v", boot, hot)
	}
}
