package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/qemu"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// NIC hot-plug (docs/hotplug.md). With host networking, entries appended to spec.networks of
// a running VM are hot-plugged once the network controller has given them their MAC (and IP)
// claims, which the VM's status.networks then lists: the agent makes the tap as at start
// (and the network's static DHCP entry and anti-spoofing rules with it), passes the tap to
// QEMU (getfd) and adds netdev_add + device_add of a virtio-net-pci with the claimed MAC in
// an empty root port. An entry removed again is unplugged: device_del, DEVICE_DELETED,
// netdev_del, the tap deleted; the network controller releases its claims and the network's
// DHCP entry goes with the next resync. The interfaces the QEMU started with are never
// unplugged: removing one waits for a restart (AwaitingRestartToApplyConfiguration).

// pluggedNIC is one hot-plugged NIC.
type pluggedNIC struct {
	Index   int    `json:"index"`
	Network string `json:"network"`
	MAC     string `json:"mac"`
	Tap     string `json:"tap"`
	Device  string `json:"device"`
	Netdev  string `json:"netdev"`
	Port    string `json:"port,omitempty"`
}

// nicMonitor is what NIC hot-plug needs of the QMP connection beyond disks.
type nicMonitor interface {
	hotplugMonitor
	GetFD(ctx context.Context, name string, f *os.File) error
}

// syncHotplugNICs makes the NICs hot-plugged into vm's running QEMU match the entries of
// spec.networks beyond those it started with. It returns when to look again (0: no need).
func (a *Agent) syncHotplugNICs(ctx context.Context, vm *v1alpha1.VirtualMachine, in *instance, st *hotplugState) time.Duration {
	if a.net == nil || a.net.tools != nil {
		return 0 // user-mode networking: a change of spec.networks waits for a restart
	}
	running := readRunSpec(in.runDir, vm)
	if st.BootNICs == 0 {
		st.BootNICs = len(effectiveNetworks(running.Networks))
		if len(st.NICs) > 0 {
			st.BootNICs = st.NICs[0].Index
		}
	}
	specCount := max(1, len(vm.Spec.Networks))
	if ok, _ := qemu.Hotplug(vm); !ok {
		return 0
	}
	var plan []plannedNIC
	if specCount > st.BootNICs {
		var err error
		if plan, err = a.planNICs(vm); err != nil {
			return time.Second // the network controller is still allocating addresses
		}
	}
	var mon nicMonitor
	need := len(plan) > st.BootNICs || len(st.NICs) > 0
	if need {
		m, ok := in.monitor().(nicMonitor)
		if !ok {
			return hotplugRetry
		}
		mon = m
	}
	retry, unplugged := a.unplugStaleNICs(ctx, vm, in, st, plan, specCount, mon)
	for _, p := range plan {
		if p.index < st.BootNICs || slices.ContainsFunc(st.NICs, func(n pluggedNIC) bool { return n.Index == p.index }) {
			continue
		}
		n, err := a.plugNIC(ctx, mon, st, p)
		if err != nil {
			a.log.Warn("NIC hot-plug failed; tried again", "vm", string(runtime.KeyOf(vm)), "nic", p.index, "err", err)
			a.rec.Event(ctx, "VirtualMachine", vm, "Warning", "HotplugFailed", fmt.Sprintf("network interface %d: %v", p.index, err))
			retry = hotplugRetry
			continue
		}
		st.NICs = append(st.NICs, n)
		_ = writeHotplugState(in.runDir, *st)
		a.log.Info("NIC hot-plugged", "vm", string(runtime.KeyOf(vm)), "nic", p.index, "mac", p.mac, "device", n.Device)
	}
	if unplugged {
		go a.resyncNetworks(a.runCtx) // the network's DHCP entry and rules of the NIC go
	}
	// What runs now: the NICs QEMU started with and the hot-plugged ones, in order. When that
	// is the spec, the spec's networks are applied (runspec.json says what runs).
	if len(st.NICs) == specCount-st.BootNICs && sameNICPrefix(running.Networks, vm.Spec.Networks, st.BootNICs) {
		contiguous := true
		for i, n := range st.NICs {
			contiguous = contiguous && n.Index == st.BootNICs+i
		}
		a1, _ := json.Marshal(running.Networks)
		a2, _ := json.Marshal(vm.Spec.Networks)
		if contiguous && string(a1) != string(a2) {
			if err := updateRunSpecNetworks(in.runDir, vm, vm.Spec.Networks); err == nil {
				retry = min(nonZero(retry), 200*time.Millisecond) // the status says so at once
			}
		}
	}
	return retry
}

// unplugStaleNICs unplugs the hot-plugged NICs that plan (the NICs spec.networks asks for,
// empty while addresses are being allocated) no longer has as they are. It says when to try
// again (0: no need) and whether it unplugged any.
func (a *Agent) unplugStaleNICs(ctx context.Context, vm *v1alpha1.VirtualMachine, in *instance, st *hotplugState, plan []plannedNIC, specCount int, mon nicMonitor) (retry time.Duration, unplugged bool) {
	for i := 0; i < len(st.NICs); {
		n := st.NICs[i]
		if n.Index < len(plan) && plan[n.Index].mac == n.MAC && plan[n.Index].netName == n.Network && n.Index < specCount {
			i++
			continue
		}
		if n.Index < specCount && len(plan) == 0 {
			i++ // addresses being allocated: nothing is decided now
			continue
		}
		if err := unplugNIC(ctx, mon, n); err != nil {
			a.log.Warn("NIC hot-unplug failed; tried again", "vm", string(runtime.KeyOf(vm)), "nic", n.Index, "err", err)
			a.rec.Event(ctx, "VirtualMachine", vm, "Warning", "HotUnplugFailed", fmt.Sprintf("unplugging network interface %d: %v", n.Index, err))
			retry = hotplugRetry
			i++
			continue
		}
		a.deleteTaps([]string{n.Tap})
		st.NICs = slices.Delete(st.NICs, i, i+1)
		_ = writeHotplugState(in.runDir, *st)
		unplugged = true
		a.log.Info("NIC hot-unplugged", "vm", string(runtime.KeyOf(vm)), "nic", n.Index, "mac", n.MAC)
	}
	return retry, unplugged
}

// effectiveNetworks is nets, or the one Main interface a VM without networks has.
func effectiveNetworks(nets []v1alpha1.NetworkSpec) []v1alpha1.NetworkSpec {
	if len(nets) == 0 {
		return []v1alpha1.NetworkSpec{{Type: v1alpha1.NetworkTypeMain}}
	}
	return nets
}

// sameNICPrefix says whether the first n interfaces of a and b are the same.
func sameNICPrefix(a, b []v1alpha1.NetworkSpec, n int) bool {
	a, b = effectiveNetworks(a), effectiveNetworks(b)
	if len(a) < n || len(b) < n {
		return false
	}
	x, _ := json.Marshal(a[:n])
	y, _ := json.Marshal(b[:n])
	return string(x) == string(y)
}

func nonZero(d time.Duration) time.Duration {
	if d == 0 {
		return time.Hour
	}
	return d
}

// updateRunSpecNetworks records in runspec.json that the QEMU now runs with networks; the
// rest of what it records (boot shape, memory padding, balloon) stays.
func updateRunSpecNetworks(runDir string, vm *v1alpha1.VirtualMachine, networks []v1alpha1.NetworkSpec) error {
	rs := loadRunSpec(runDir, vm)
	rs.Spec.Networks = networks
	return saveRunSpec(runDir, rs)
}

// plugNIC hot-plugs planned NIC p.
func (a *Agent) plugNIC(ctx context.Context, mon nicMonitor, st *hotplugState, p plannedNIC) (pluggedNIC, error) {
	port := freePortOf(st)
	if port == "" {
		return pluggedNIC{}, fmt.Errorf("all %d hot-plug slots of the VM are in use: detach a device first", qemu.HotplugPorts)
	}
	n := hotNIC(p, port)
	// The network and tap, as prepareNICs makes them at start.
	a.net.mu.Lock()
	active, _ := a.activeVMs()
	v := a.view()
	err := a.ensureNetwork(ctx, v, p.netName, p.net, active)
	created := false
	if err == nil {
		if _, e := net.InterfaceByName(p.tap); e != nil {
			created = true
		}
		err = a.net.m.EnsureTap(p.tap, p.net.Spec.Bridge, p.net.Spec.MTU, p.mac)
	}
	a.net.mu.Unlock()
	if err != nil {
		return pluggedNIC{}, fmt.Errorf("network %s: %w", p.netName, err)
	}
	if err := qemuPlugNIC(ctx, mon, n, p.net.Spec.MTU); err != nil {
		if created {
			a.deleteTaps([]string{p.tap})
		}
		return pluggedNIC{}, err
	}
	return n, nil
}

// qemuPlugNIC passes n's tap to QEMU (getfd) and adds its netdev and its virtio-net-pci
// device in root port n.Port; a failure takes back what it added.
func qemuPlugNIC(ctx context.Context, mon nicMonitor, n pluggedNIC, mtu int) error {
	fail := func(err error) error {
		_ = mon.Execute(context.Background(), "netdev_del", map[string]any{"id": n.Netdev}, nil)
		_ = mon.Execute(context.Background(), "closefd", map[string]any{"fdname": n.Netdev}, nil)
		return err
	}
	f, err := qemu.OpenTap(n.Tap)
	if err != nil {
		return fail(fmt.Errorf("opening tap %s: %w", n.Tap, err))
	}
	err = mon.GetFD(ctx, n.Netdev, f)
	_ = f.Close()
	if err != nil {
		return fail(fmt.Errorf("getfd: %w", err))
	}
	if err := mon.Execute(ctx, "netdev_add", map[string]any{"type": "tap", "id": n.Netdev, "fd": n.Netdev}, nil); err != nil {
		return fail(fmt.Errorf("netdev_add: %w", err))
	}
	dev := map[string]any{"driver": "virtio-net-pci", "id": n.Device, "netdev": n.Netdev, "mac": n.MAC, "bus": n.Port, "romfile": ""}
	if mtu != 0 {
		dev["host_mtu"] = mtu
	}
	if err := mon.Execute(ctx, "device_add", dev, nil); err != nil {
		return fail(fmt.Errorf("device_add: %w", err))
	}
	return nil
}

// hotNIC is planned NIC p hot-plugged into root port port: its qdev and netdev ids follow
// its index in spec.networks.
func hotNIC(p plannedNIC, port string) pluggedNIC {
	return pluggedNIC{Index: p.index, Network: p.netName, MAC: p.mac, Tap: p.tap, Device: "hpnic" + strconv.Itoa(p.index), Netdev: "hpnet" + strconv.Itoa(p.index), Port: port}
}

// freePortOf is the first root port neither a hot-plugged disk nor a NIC uses.
func freePortOf(st *hotplugState) string {
	used := func(p string) bool {
		return slices.ContainsFunc(st.Disks, func(d pluggedDisk) bool { return d.Port == p }) ||
			slices.ContainsFunc(st.NICs, func(n pluggedNIC) bool { return n.Port == p })
	}
	for i := 0; i < qemu.HotplugPorts; i++ {
		if p := qemu.HotplugPort(i); !used(p) {
			return p
		}
	}
	return ""
}

// unplugNIC removes a hot-plugged NIC: device_del, DEVICE_DELETED, netdev_del.
func unplugNIC(ctx context.Context, mon hotplugMonitor, n pluggedNIC) error {
	if err := unplugDevice(ctx, mon, n.Device); err != nil {
		return err
	}
	if err := mon.Execute(ctx, "netdev_del", map[string]any{"id": n.Netdev}, nil); err != nil && !isNotFound(err) {
		return fmt.Errorf("netdev_del %s: %w", n.Netdev, err)
	}
	return nil
}
