package network

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// vmStatusFields are the VM status fields this controller writes, with its two condition
// types. Of networks it owns the platform's fields of each entry; the node agent writes the
// guest's (interfaceName, guestIPAddresses) and hot-plug's slot in the same entries, so
// writes of networks are guarded by the value read (runtime.PatchVMStatus).
var vmStatusFields = []string{"networks", "ipAddress", "virtualMachineIPAddressName", "conditions"}

// Iface is one network interface of a VM as the control plane resolves it.
type Iface struct {
	Index   int
	Type    v1alpha1.NetworkType
	Network string // the ClusterNetwork
	// MACClaim and IPClaim name the claims; AutoMAC/AutoIP say they are made by Rakhsh.
	MACClaim, IPClaim string
	AutoMAC, AutoIP   bool
}

// Interfaces resolves a VM's spec.networks (one Main interface when empty) to networks and
// claim names. hasSubnet says whether a ClusterNetwork manages addresses. The first
// interface with address management uses spec.virtualMachineIPAddressName (default: a
// claim named after the VM); the others get "<vm>-ip-<index>". MAC claims not named in the
// spec are "<vm>-mac-<index>".
func Interfaces(vm *v1alpha1.VirtualMachine, hasSubnet func(network string) bool) ([]Iface, error) {
	nets := vm.Spec.Networks
	if len(nets) == 0 {
		nets = []v1alpha1.NetworkSpec{{Type: v1alpha1.NetworkTypeMain}}
	}
	var out []Iface
	firstIP := true
	for i, n := range nets {
		f := Iface{Index: i, Type: n.Type}
		switch n.Type {
		case v1alpha1.NetworkTypeMain:
			f.Network = v1alpha1.DefaultClusterNetworkName
		case v1alpha1.NetworkTypeClusterNetwork:
			f.Network = n.Name
		default:
			return nil, fmt.Errorf("spec.networks[%d]: networks of type %s are not supported yet; use Main or ClusterNetwork", i, n.Type)
		}
		f.MACClaim = n.VirtualMachineMACAddressName
		if f.MACClaim == "" {
			f.MACClaim, f.AutoMAC = fmt.Sprintf("%s-mac-%d", vm.Name, i), true
		}
		if hasSubnet(f.Network) {
			if firstIP {
				firstIP = false
				f.IPClaim = vm.Spec.VirtualMachineIPAddressName
				if f.IPClaim == "" {
					f.IPClaim, f.AutoIP = vm.Name, true
				}
			} else {
				f.IPClaim, f.AutoIP = fmt.Sprintf("%s-ip-%d", vm.Name, i), true
			}
		}
		out = append(out, f)
	}
	return out, nil
}

// reconcileVM makes sure every interface of the VM has its claims, attaches them to the VM
// and reports the addresses in the VM status.
func (c *Controller) reconcileVM(ctx context.Context, key runtime.Key) (runtime.Result, error) {
	vm, ok := get(c.vms, key)
	if !ok {
		c.queue.Add(sweep)
		return runtime.Result{}, nil
	}
	if vm.DeletionTimestamp != nil {
		return runtime.Result{}, nil
	}
	ifaces, ierr := Interfaces(&vm, func(name string) bool {
		n, ok := c.network(name)
		return ok && n.Spec.Subnet != ""
	})
	macOK, ipOK := true, true
	macMsg, ipMsg := "", ""
	macReason, ipReason := ReasonAddressesReady, ReasonAddressesReady
	fail := func(isMAC bool, reason, msg string) {
		if isMAC && macOK {
			macOK, macReason, macMsg = false, reason, msg
		}
		if !isMAC && ipOK {
			ipOK, ipReason, ipMsg = false, reason, msg
		}
	}
	if ierr != nil {
		fail(true, ReasonUnsupported, ierr.Error())
		fail(false, ReasonUnsupported, ierr.Error())
	} else if err := c.dropRemovedClaims(ctx, &vm, ifaces); err != nil { // hotplug.go
		return runtime.Result{}, err
	}
	var statuses []v1alpha1.NetworkStatus
	mainIP, mainClaim := "", ""
	for _, f := range ifaces {
		ns := v1alpha1.NetworkStatus{Type: f.Type, VirtualMachineMACAddressName: f.MACClaim}
		if f.Type != v1alpha1.NetworkTypeMain {
			ns.Name = f.Network
		}
		if _, ok := c.network(f.Network); !ok {
			fail(false, ReasonNetworkNotFound, fmt.Sprintf("spec.networks[%d]: ClusterNetwork %q does not exist", f.Index, f.Network))
		}
		// MAC claim.
		mac, reason, msg, err := c.useMAC(ctx, &vm, f)
		if err != nil {
			return runtime.Result{}, err
		}
		if mac == "" {
			fail(true, reason, msg)
		}
		ns.MACAddress = mac
		// IP claim.
		if f.IPClaim != "" {
			ip, reason, msg, err := c.useIP(ctx, &vm, f)
			if err != nil {
				return runtime.Result{}, err
			}
			if ip == "" {
				fail(false, reason, msg)
			}
			ns.IPAddress = ip
			if mainClaim == "" {
				mainIP, mainClaim = ip, f.IPClaim
			}
		}
		statuses = append(statuses, ns)
	}
	if ipOK && mainClaim == "" && ierr == nil {
		ipReason, ipMsg = ReasonNoAddressing, "no interface is on a network with address management"
	}
	if macOK {
		macMsg = "every interface has a MAC address"
	}
	if ipOK && ipMsg == "" {
		ipMsg = "every interface on a managed network has an IP address"
	}
	_, err := c.patchVM(ctx, &vm, func(v *v1alpha1.VirtualMachine) {
		v.Status.Networks = keepAgentFields(statuses, v.Status.Networks)
		v.Status.IPAddress = mainIP
		v.Status.VirtualMachineIPAddressName = mainClaim
		v1alpha1.SetCondition(&v.Status.Conditions, cond(v1alpha1.VMConditionMACAddressReady, macOK, macReason, macMsg, v.Generation))
		v1alpha1.SetCondition(&v.Status.Conditions, cond(v1alpha1.VMConditionIPAddressReady, ipOK, ipReason, ipMsg, v.Generation))
	})
	return runtime.Result{}, err
}

// useMAC returns the address of the interface's MAC claim (creating an automatic claim and
// attaching it to the VM), or why there is none.
func (c *Controller) useMAC(ctx context.Context, vm *v1alpha1.VirtualMachine, f Iface) (string, string, string, error) {
	m, ok := get(c.macs, runtime.NewKey(vm.Namespace, f.MACClaim))
	if !ok {
		if !f.AutoMAC {
			return "", ReasonClaimNotFound, fmt.Sprintf("VirtualMachineMACAddress %q (spec.networks[%d]) does not exist", f.MACClaim, f.Index), nil
		}
		m = v1alpha1.VirtualMachineMACAddress{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachineMACAddress"},
			ObjectMeta: autoMeta(vm, f.MACClaim)}
		if err := c.C.Create(ctx, "virtualmachinemacaddresses", vm.Namespace, &m, nil); err != nil && !client.IsAlreadyExists(err) {
			return "", "", "", err
		}
		return "", ReasonClaimPending, fmt.Sprintf("VirtualMachineMACAddress %q was created and waits for an address", f.MACClaim), nil
	}
	if by := m.Status.VirtualMachineName; by != "" && by != vm.Name {
		return "", ReasonClaimInUse, fmt.Sprintf("VirtualMachineMACAddress %q is used by VirtualMachine %q", f.MACClaim, by), nil
	}
	if err := c.adopt(ctx, "virtualmachinemacaddresses", vm, &m.ObjectMeta, f.AutoMAC); err != nil {
		return "", "", "", err
	}
	if m.Status.Address == "" || m.Status.Phase == v1alpha1.VirtualMachineMACAddressPhasePending || m.Status.Phase == "" {
		msg := fmt.Sprintf("VirtualMachineMACAddress %q waits for an address", f.MACClaim)
		if cd := v1alpha1.FindCondition(m.Status.Conditions, v1alpha1.AddressConditionBound); cd != nil && cd.Message != "" && cd.Status == v1alpha1.ConditionFalse {
			msg = fmt.Sprintf("VirtualMachineMACAddress %q: %s", f.MACClaim, cd.Message)
			return "", cd.Reason, msg, nil
		}
		return "", ReasonClaimPending, msg, nil
	}
	if m.Status.VirtualMachineName != vm.Name {
		st := m.Status
		st.VirtualMachineName, st.Phase = vm.Name, v1alpha1.VirtualMachineMACAddressPhaseAttached
		if err := c.attachClaim(ctx, "virtualmachinemacaddresses", &m.ObjectMeta, m.Status, st); err != nil {
			return "", "", "", err
		}
	}
	return m.Status.Address, "", "", nil
}

// attachClaim records the VM as the user of an address claim (before -> after: its
// virtualMachineName and phase), guarded by the user and address as read rather than by the
// resourceVersion, which adopting the claim has just changed. A claim taken meanwhile by
// another VM is a conflict, left to the next reconcile.
func (c *Controller) attachClaim(ctx context.Context, resource string, md *v1alpha1.ObjectMeta, before, after any) error {
	body, err := runtime.StatusPatch(md.UID, before, after, []string{"virtualMachineName", "phase"}, []string{"address"})
	if err != nil || body == nil {
		return err
	}
	if err := c.C.JSONPatchStatus(ctx, resource, md.Namespace, md.Name, body, nil); err != nil && !client.IsConflict(err) {
		return err
	}
	return nil
}

// useIP is useMAC for the interface's IP claim.
func (c *Controller) useIP(ctx context.Context, vm *v1alpha1.VirtualMachine, f Iface) (string, string, string, error) {
	ip, ok := get(c.ips, runtime.NewKey(vm.Namespace, f.IPClaim))
	if !ok {
		if !f.AutoIP {
			return "", ReasonClaimNotFound, fmt.Sprintf("VirtualMachineIPAddress %q (spec.virtualMachineIPAddressName) does not exist", f.IPClaim), nil
		}
		ip = v1alpha1.VirtualMachineIPAddress{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachineIPAddress"},
			ObjectMeta: autoMeta(vm, f.IPClaim),
			Spec:       v1alpha1.VirtualMachineIPAddressSpec{Type: v1alpha1.VirtualMachineIPAddressTypeAuto, Network: f.Network}}
		if err := c.C.Create(ctx, "virtualmachineipaddresses", vm.Namespace, &ip, nil); err != nil && !client.IsAlreadyExists(err) {
			return "", "", "", err
		}
		return "", ReasonClaimPending, fmt.Sprintf("VirtualMachineIPAddress %q was created and waits for an address", f.IPClaim), nil
	}
	netName := ip.Spec.Network
	if netName == "" {
		netName = v1alpha1.DefaultClusterNetworkName
	}
	if netName != f.Network {
		return "", ReasonInvalidAddress, fmt.Sprintf("VirtualMachineIPAddress %q is on ClusterNetwork %q, but interface %d is on %q", f.IPClaim, netName, f.Index, f.Network), nil
	}
	if by := ip.Status.VirtualMachineName; by != "" && by != vm.Name {
		return "", ReasonClaimInUse, fmt.Sprintf("VirtualMachineIPAddress %q is used by VirtualMachine %q", f.IPClaim, by), nil
	}
	if err := c.adopt(ctx, "virtualmachineipaddresses", vm, &ip.ObjectMeta, f.AutoIP); err != nil {
		return "", "", "", err
	}
	if ip.Status.Address == "" || ip.Status.Phase == v1alpha1.VirtualMachineIPAddressPhasePending || ip.Status.Phase == "" {
		if cd := v1alpha1.FindCondition(ip.Status.Conditions, v1alpha1.AddressConditionBound); cd != nil && cd.Message != "" && cd.Status == v1alpha1.ConditionFalse {
			return "", cd.Reason, fmt.Sprintf("VirtualMachineIPAddress %q: %s", f.IPClaim, cd.Message), nil
		}
		return "", ReasonClaimPending, fmt.Sprintf("VirtualMachineIPAddress %q waits for an address", f.IPClaim), nil
	}
	if ip.Status.VirtualMachineName != vm.Name {
		st := ip.Status
		st.VirtualMachineName, st.Phase = vm.Name, v1alpha1.VirtualMachineIPAddressPhaseAttached
		if err := c.attachClaim(ctx, "virtualmachineipaddresses", &ip.ObjectMeta, ip.Status, st); err != nil {
			return "", "", "", err
		}
	}
	return ip.Status.Address, "", "", nil
}

func autoMeta(vm *v1alpha1.VirtualMachine, name string) v1alpha1.ObjectMeta {
	return v1alpha1.ObjectMeta{Name: name, Namespace: vm.Namespace, Labels: map[string]string{LabelVM: vm.Name},
		Annotations: map[string]string{AnnotationAutoFor: vm.UID}}
}

// adopt points an automatic claim at the current VM of its name (a VM deleted and created
// again under the same name before the sweep removed its claims keeps them).
func (c *Controller) adopt(ctx context.Context, resource string, vm *v1alpha1.VirtualMachine, meta *v1alpha1.ObjectMeta, auto bool) error {
	if !auto {
		return nil
	}
	if uid, ok := meta.Annotations[AnnotationAutoFor]; !ok || uid == vm.UID {
		return nil
	}
	body, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{AnnotationAutoFor: vm.UID}}})
	if err := c.C.Patch(ctx, resource, vm.Namespace, meta.Name, body, nil); err != nil && !client.IsNotFound(err) {
		return err
	}
	return nil
}

// keepAgentFields returns statuses with what the node agent wrote in the stored entries of the
// same MAC address: the interface the guest agent reported and its addresses, and the slot
// the NIC was hot-plugged into (the agent's fields, docs/guest-agent.md, docs/hotplug.md).
// stored must be the VM as read for the write, not the informer's copy, which may predate
// the agent's last write.
func keepAgentFields(statuses, stored []v1alpha1.NetworkStatus) []v1alpha1.NetworkStatus {
	out := make([]v1alpha1.NetworkStatus, len(statuses))
	for i, ns := range statuses {
		for _, old := range stored {
			if ns.MACAddress != "" && strings.EqualFold(old.MACAddress, ns.MACAddress) {
				ns.InterfaceName, ns.GuestIPAddresses, ns.Slot = old.InterfaceName, old.GuestIPAddresses, old.Slot
			}
		}
		out[i] = ns
	}
	return out
}

// patchVM writes this controller's status fields of a VM as read fresh, each guarded by the
// value read (the node agent writes networks too), retrying on a conflict.
func (c *Controller) patchVM(ctx context.Context, vm *v1alpha1.VirtualMachine, mutate func(v *v1alpha1.VirtualMachine)) (*v1alpha1.VirtualMachine, error) {
	return runtime.PatchVMStatus(ctx, c.C, vm, vmStatusFields, nil, func(v *v1alpha1.VirtualMachine) error { mutate(v); return nil })
}
