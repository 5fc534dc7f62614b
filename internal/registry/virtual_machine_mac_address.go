package registry

import (
	"net"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
)

func init() {
	registerTyped("VirtualMachineMACAddress", typed[*v1alpha1.VirtualMachineMACAddress]{
		Default: func(m *v1alpha1.VirtualMachineMACAddress) {
			if n, err := v1alpha1.NormalizeMAC(m.Spec.Address); err == nil {
				m.Spec.Address = n
			}
		},
		Validate: func(m *v1alpha1.VirtualMachineMACAddress) errs.FieldErrors {
			var fe errs.FieldErrors
			if m.Spec.Address != "" {
				if msg := checkVMMAC(m.Spec.Address); msg != "" {
					fe.Invalid("spec.address", m.Spec.Address, msg)
				}
			}
			return fe
		},
		ValidateUpdate: func(n, o *v1alpha1.VirtualMachineMACAddress) errs.FieldErrors {
			var fe errs.FieldErrors
			chkUnchanged(&fe, "spec.address", n.Spec.Address, o.Spec.Address, "")
			return fe
		},
	})
	registerTyped("VirtualMachineMACAddressLease", typed[*v1alpha1.VirtualMachineMACAddressLease]{
		Validate: func(l *v1alpha1.VirtualMachineMACAddressLease) errs.FieldErrors {
			var fe errs.FieldErrors
			if l.Name != "" {
				if _, err := v1alpha1.ParseMACLeaseName(l.Name); err != nil {
					fe.Invalid("metadata.name", l.Name, "must be the leased MAC in dashed form, e.g. mac-02-00-00-00-00-01")
				}
			}
			if r := l.Spec.VirtualMachineMACAddressRef; r != nil {
				validateLeaseRef(&fe, r.Name, r.Namespace, "spec.virtualMachineMACAddressRef")
			}
			return fe
		},
	})
}

// checkVMMAC returns why s is not a MAC a VM's NIC can have, or "".
func checkVMMAC(s string) string {
	n, err := v1alpha1.NormalizeMAC(s)
	if err != nil {
		return "must be a MAC address of the form aa:bb:cc:dd:ee:ff"
	}
	hw, _ := net.ParseMAC(n)
	// The low bit of the first octet marks group (multicast and broadcast) addresses.
	if hw[0]&1 != 0 {
		return "must be a unicast address (the low bit of the first octet must be 0)"
	}
	if n == "00:00:00:00:00:00" {
		return "must not be all zeros"
	}
	return ""
}
