package v1alpha1

import (
	"fmt"
	"net/netip"
	"strings"
)

// VirtualMachineIPAddress is a project's claim on one IP address of a ClusterNetwork, Auto
// (allocated by Rakhsh) or Static (a chosen address). It is backed by a cluster-scoped
// VirtualMachineIPAddressLease named after the address.
type VirtualMachineIPAddress struct {
	TypeMeta   `json:",inline"`
	ObjectMeta `json:"metadata,omitempty"`
	Spec       VirtualMachineIPAddressSpec   `json:"spec"`
	Status     VirtualMachineIPAddressStatus `json:"status,omitempty"`
}

// VirtualMachineIPAddressType says how the address is chosen.
type VirtualMachineIPAddressType string

// VirtualMachineIPAddressType values.
const (
	VirtualMachineIPAddressTypeAuto   VirtualMachineIPAddressType = "Auto"
	VirtualMachineIPAddressTypeStatic VirtualMachineIPAddressType = "Static"
)

// VirtualMachineIPAddressSpec is the claim. Type, StaticIP and Network are immutable.
type VirtualMachineIPAddressSpec struct {
	// Type is Auto (default) or Static.
	Type VirtualMachineIPAddressType `json:"type,omitempty"`
	// StaticIP is the address to claim; required when Type is Static and forbidden otherwise.
	StaticIP string `json:"staticIP,omitempty"`
	// Network is the ClusterNetwork the address belongs to (a Rakhsh addition); it defaults
	// to DefaultClusterNetworkName ("main"), the network of a VM's Main interface.
	Network string `json:"network,omitempty"`
}

// VirtualMachineIPAddressPhase is the phase of an IP claim.
type VirtualMachineIPAddressPhase string

// VirtualMachineIPAddressPhase values.
const (
	VirtualMachineIPAddressPhasePending  VirtualMachineIPAddressPhase = "Pending"
	VirtualMachineIPAddressPhaseBound    VirtualMachineIPAddressPhase = "Bound"
	VirtualMachineIPAddressPhaseAttached VirtualMachineIPAddressPhase = "Attached"
)

// Condition types of VirtualMachineIPAddress and VirtualMachineMACAddress (and their leases).
const (
	AddressConditionBound    = "Bound"
	AddressConditionAttached = "Attached"
)

// VirtualMachineIPAddressStatus is the observed state of an IP claim.
type VirtualMachineIPAddressStatus struct {
	Address            string                       `json:"address,omitempty"`
	VirtualMachineName string                       `json:"virtualMachineName,omitempty"`
	Phase              VirtualMachineIPAddressPhase `json:"phase,omitempty"`
	Conditions         []Condition                  `json:"conditions,omitempty"`
	ObservedGeneration int64                        `json:"observedGeneration,omitempty"`
}

// VirtualMachineIPAddressLease is the cluster-wide record that one IP address is taken. Its
// name is the address (see IPLeaseName), so two claims on one address cannot both succeed.
type VirtualMachineIPAddressLease struct {
	TypeMeta   `json:",inline"`
	ObjectMeta `json:"metadata,omitempty"`
	Spec       VirtualMachineIPAddressLeaseSpec   `json:"spec"`
	Status     VirtualMachineIPAddressLeaseStatus `json:"status,omitempty"`
}

// VirtualMachineIPAddressLeaseSpec says which claim holds the lease; it is empty while the
// lease is Released.
type VirtualMachineIPAddressLeaseSpec struct {
	VirtualMachineIPAddressRef *VirtualMachineIPAddressRef `json:"virtualMachineIPAddressRef,omitempty"`
}

// VirtualMachineIPAddressRef points at a VirtualMachineIPAddress.
type VirtualMachineIPAddressRef struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
}

// LeasePhase is the phase of an IP or MAC lease.
type LeasePhase string

// LeasePhase values.
const (
	LeasePhaseBound    LeasePhase = "Bound"
	LeasePhaseReleased LeasePhase = "Released"
)

// VirtualMachineIPAddressLeaseStatus is the observed state of an IP lease.
type VirtualMachineIPAddressLeaseStatus struct {
	Phase              LeasePhase  `json:"phase,omitempty"`
	Conditions         []Condition `json:"conditions,omitempty"`
	ObservedGeneration int64       `json:"observedGeneration,omitempty"`
}

const ipLeasePrefix = "ip-"

// IPLeaseName returns the name of the lease of addr: "ip-" and the address with its
// separators replaced by '-'. IPv4 is dotted ("ip-10-66-10-1", as Deckhouse names them);
// IPv6 is written fully expanded in lower case ("ip-2001-0db8-0000-0000-0000-0000-0000-0001")
// so that the name is unique and reversible. An IPv4-mapped IPv6 address gets the name of its
// IPv4 address, and a zone is dropped. The result is always a DNS-1123 label.
func IPLeaseName(addr netip.Addr) string {
	addr = addr.Unmap().WithZone("")
	if addr.Is4() {
		return ipLeasePrefix + strings.ReplaceAll(addr.String(), ".", "-")
	}
	return ipLeasePrefix + strings.ReplaceAll(addr.StringExpanded(), ":", "-")
}

// ParseIPLeaseName is the inverse of IPLeaseName. It accepts only names IPLeaseName
// produces, so every address has exactly one lease name.
func ParseIPLeaseName(name string) (netip.Addr, error) {
	rest, ok := strings.CutPrefix(name, ipLeasePrefix)
	if !ok {
		return netip.Addr{}, fmt.Errorf("lease name %q does not start with %q", name, ipLeasePrefix)
	}
	var text string
	switch strings.Count(rest, "-") {
	case 3:
		text = strings.ReplaceAll(rest, "-", ".")
	case 7:
		text = strings.ReplaceAll(rest, "-", ":")
	default:
		return netip.Addr{}, fmt.Errorf("lease name %q is not an IPv4 or IPv6 address in dashed form", name)
	}
	addr, err := netip.ParseAddr(text)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("lease name %q is not an IPv4 or IPv6 address in dashed form", name)
	}
	if IPLeaseName(addr) != name {
		return netip.Addr{}, fmt.Errorf("lease name %q is not in canonical form (want %q)", name, IPLeaseName(addr))
	}
	return addr, nil
}
