package v1alpha1

import (
	"fmt"
	"net"
	"strings"
)

// VirtualMachineMACAddress is a project's claim on one MAC address, from the cluster's MAC
// pool or a chosen one. It is backed by a cluster-scoped VirtualMachineMACAddressLease named
// after the address.
type VirtualMachineMACAddress struct {
	TypeMeta   `json:",inline"`
	ObjectMeta `json:"metadata,omitempty"`
	Spec       VirtualMachineMACAddressSpec   `json:"spec"`
	Status     VirtualMachineMACAddressStatus `json:"status,omitempty"`
}

// VirtualMachineMACAddressSpec is the claim. Address is immutable.
type VirtualMachineMACAddressSpec struct {
	// Address is the MAC to claim, "aa:bb:cc:dd:ee:ff" (a unicast 48-bit MAC; defaulting
	// lower-cases it and turns '-' separators into ':'). Empty means Rakhsh allocates one.
	Address string `json:"address,omitempty"`
}

// VirtualMachineMACAddressPhase is the phase of a MAC claim.
type VirtualMachineMACAddressPhase string

// VirtualMachineMACAddressPhase values.
const (
	VirtualMachineMACAddressPhasePending  VirtualMachineMACAddressPhase = "Pending"
	VirtualMachineMACAddressPhaseBound    VirtualMachineMACAddressPhase = "Bound"
	VirtualMachineMACAddressPhaseAttached VirtualMachineMACAddressPhase = "Attached"
)

// VirtualMachineMACAddressStatus is the observed state of a MAC claim.
type VirtualMachineMACAddressStatus struct {
	Address            string                        `json:"address,omitempty"`
	VirtualMachineName string                        `json:"virtualMachineName,omitempty"`
	Phase              VirtualMachineMACAddressPhase `json:"phase,omitempty"`
	Conditions         []Condition                   `json:"conditions,omitempty"`
	ObservedGeneration int64                         `json:"observedGeneration,omitempty"`
}

// VirtualMachineMACAddressLease is the cluster-wide record that one MAC address is taken. Its
// name is the address (see MACLeaseName).
type VirtualMachineMACAddressLease struct {
	TypeMeta   `json:",inline"`
	ObjectMeta `json:"metadata,omitempty"`
	Spec       VirtualMachineMACAddressLeaseSpec   `json:"spec"`
	Status     VirtualMachineMACAddressLeaseStatus `json:"status,omitempty"`
}

// VirtualMachineMACAddressLeaseSpec says which claim holds the lease; it is empty while the
// lease is Released.
type VirtualMachineMACAddressLeaseSpec struct {
	VirtualMachineMACAddressRef *VirtualMachineMACAddressRef `json:"virtualMachineMACAddressRef,omitempty"`
}

// VirtualMachineMACAddressRef points at a VirtualMachineMACAddress.
type VirtualMachineMACAddressRef struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
}

// VirtualMachineMACAddressLeaseStatus is the observed state of a MAC lease (phase Bound or
// Released).
type VirtualMachineMACAddressLeaseStatus struct {
	Phase              LeasePhase  `json:"phase,omitempty"`
	Conditions         []Condition `json:"conditions,omitempty"`
	ObservedGeneration int64       `json:"observedGeneration,omitempty"`
}

const macLeasePrefix = "mac-"

// NormalizeMAC parses a 48-bit MAC written with ':' or '-' separators in either case and
// returns it as lower-case "aa:bb:cc:dd:ee:ff".
func NormalizeMAC(s string) (string, error) {
	// net.ParseMAC also takes the dotted form and 64/160-bit addresses; allow only the
	// six-group forms people write for NICs.
	if len(s) != 17 {
		return "", fmt.Errorf("%q is not a MAC address of the form aa:bb:cc:dd:ee:ff", s)
	}
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return "", fmt.Errorf("%q is not a MAC address of the form aa:bb:cc:dd:ee:ff", s)
	}
	return hw.String(), nil
}

// MACLeaseName returns the name of the lease of mac ("aa:bb:cc:dd:ee:ff" in any case, or with
// '-' separators): "mac-aa-bb-cc-dd-ee-ff".
func MACLeaseName(mac string) (string, error) {
	n, err := NormalizeMAC(mac)
	if err != nil {
		return "", err
	}
	return macLeasePrefix + strings.ReplaceAll(n, ":", "-"), nil
}

// ParseMACLeaseName is the inverse of MACLeaseName: it returns "aa:bb:cc:dd:ee:ff". Only
// names MACLeaseName produces are accepted.
func ParseMACLeaseName(name string) (string, error) {
	rest, ok := strings.CutPrefix(name, macLeasePrefix)
	if !ok {
		return "", fmt.Errorf("lease name %q does not start with %q", name, macLeasePrefix)
	}
	mac, err := NormalizeMAC(strings.ReplaceAll(rest, "-", ":"))
	if err != nil || macLeasePrefix+strings.ReplaceAll(mac, ":", "-") != name {
		return "", fmt.Errorf("lease name %q is not a MAC address in the form mac-aa-bb-cc-dd-ee-ff", name)
	}
	return mac, nil
}
