package registry

import (
	"net/netip"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
)

func init() {
	registerTyped("VirtualMachineIPAddress", typed[*v1alpha1.VirtualMachineIPAddress]{
		Default:        defaultVMIP,
		Validate:       validateVMIP,
		ValidateUpdate: validateVMIPUpdate,
	})
	registerTyped("VirtualMachineIPAddressLease", typed[*v1alpha1.VirtualMachineIPAddressLease]{Validate: validateVMIPLease})
}

func defaultVMIP(ip *v1alpha1.VirtualMachineIPAddress) {
	if ip.Spec.Type == "" {
		ip.Spec.Type = v1alpha1.VirtualMachineIPAddressTypeAuto
	}
	if ip.Spec.Network == "" {
		ip.Spec.Network = v1alpha1.DefaultClusterNetworkName
	}
	// Canonical text (lower-case, shortest IPv6 form, IPv4-mapped IPv6 as IPv4), so that
	// equal addresses compare equal.
	if a, err := netip.ParseAddr(ip.Spec.StaticIP); err == nil && a.Zone() == "" {
		ip.Spec.StaticIP = a.Unmap().String()
	}
}

var vmipTypes = []string{string(v1alpha1.VirtualMachineIPAddressTypeAuto), string(v1alpha1.VirtualMachineIPAddressTypeStatic)}

func validateVMIP(ip *v1alpha1.VirtualMachineIPAddress) errs.FieldErrors {
	var fe errs.FieldErrors
	switch ip.Spec.Type {
	case "", v1alpha1.VirtualMachineIPAddressTypeAuto:
		if ip.Spec.StaticIP != "" {
			fe.Forbidden("spec.staticIP", "may only be set when spec.type is Static")
		}
	case v1alpha1.VirtualMachineIPAddressTypeStatic:
		if ip.Spec.StaticIP == "" {
			fe.Required("spec.staticIP", "required when spec.type is Static")
		} else if msg := checkVMAddress(ip.Spec.StaticIP); msg != "" {
			fe.Invalid("spec.staticIP", ip.Spec.StaticIP, msg)
		}
	default:
		fe.NotSupported("spec.type", string(ip.Spec.Type), vmipTypes)
	}
	if ip.Spec.Network != "" {
		if msg := ValidateName(ip.Spec.Network); msg != "" {
			fe.Invalid("spec.network", ip.Spec.Network, msg)
		}
	}
	return fe
}

// checkVMAddress returns why s is not an address a VM's interface can hold, or "".
func checkVMAddress(s string) string {
	a, err := netip.ParseAddr(s)
	switch {
	case err != nil:
		return "must be an IPv4 or IPv6 address"
	case a.Zone() != "":
		return "must not carry an IPv6 zone"
	case a.IsUnspecified(), a.IsLoopback(), a.IsMulticast(), a.IsLinkLocalUnicast(),
		a.Unmap() == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "must be a unicast address a VM can use (not unspecified, loopback, link-local, multicast or broadcast)"
	}
	return ""
}

func validateVMIPUpdate(n, o *v1alpha1.VirtualMachineIPAddress) errs.FieldErrors {
	var fe errs.FieldErrors
	chkUnchanged(&fe, "spec.type", n.Spec.Type, o.Spec.Type, "")
	chkUnchanged(&fe, "spec.staticIP", n.Spec.StaticIP, o.Spec.StaticIP, "")
	chkUnchanged(&fe, "spec.network", n.Spec.Network, o.Spec.Network, "")
	return fe
}

func validateVMIPLease(l *v1alpha1.VirtualMachineIPAddressLease) errs.FieldErrors {
	var fe errs.FieldErrors
	if l.Name != "" {
		if _, err := v1alpha1.ParseIPLeaseName(l.Name); err != nil {
			fe.Invalid("metadata.name", l.Name, "must be the leased address in dashed form, e.g. ip-10-66-10-1")
		}
	}
	if r := l.Spec.VirtualMachineIPAddressRef; r != nil {
		validateLeaseRef(&fe, r.Name, r.Namespace, "spec.virtualMachineIPAddressRef")
	}
	return fe
}

// validateLeaseRef checks the {name, namespace} reference of a lease to its claim.
func validateLeaseRef(fe *errs.FieldErrors, name, namespace, path string) {
	for _, f := range []struct{ field, v string }{{"name", name}, {"namespace", namespace}} {
		if msg := ValidateName(f.v); msg != "" {
			if f.v == "" {
				fe.Required(path+"."+f.field, "")
			} else {
				fe.Invalid(path+"."+f.field, f.v, msg)
			}
		}
	}
}
