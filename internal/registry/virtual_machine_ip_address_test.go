package registry

import (
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

func TestVirtualMachineIPAddressDefault(t *testing.T) {
	s := tkStrategy(t, "VirtualMachineIPAddress")
	ip := &v1alpha1.VirtualMachineIPAddress{}
	s.Default(ip)
	if ip.Spec.Type != v1alpha1.VirtualMachineIPAddressTypeAuto || ip.Spec.Network != "main" || ip.Spec.StaticIP != "" {
		t.Errorf("defaults: %+v", ip.Spec)
	}
	st := &v1alpha1.VirtualMachineIPAddress{Spec: v1alpha1.VirtualMachineIPAddressSpec{Type: "Static", StaticIP: "2001:DB8:0::1", Network: "lab"}}
	s.Default(st)
	s.Default(st)
	if st.Spec.StaticIP != "2001:db8::1" || st.Spec.Network != "lab" {
		t.Errorf("static: %+v", st.Spec)
	}
	mapped := &v1alpha1.VirtualMachineIPAddress{Spec: v1alpha1.VirtualMachineIPAddressSpec{Type: "Static", StaticIP: "::ffff:10.0.0.5"}}
	s.Default(mapped)
	if mapped.Spec.StaticIP != "10.0.0.5" {
		t.Errorf("mapped: %q", mapped.Spec.StaticIP)
	}
}

func TestVirtualMachineIPAddressValidate(t *testing.T) {
	s := tkStrategy(t, "VirtualMachineIPAddress")
	mk := func(typ, ip, network string) *v1alpha1.VirtualMachineIPAddress {
		return &v1alpha1.VirtualMachineIPAddress{Spec: v1alpha1.VirtualMachineIPAddressSpec{
			Type: v1alpha1.VirtualMachineIPAddressType(typ), StaticIP: ip, Network: network}}
	}
	tkRunCases(t, s, []tkCase[*v1alpha1.VirtualMachineIPAddress]{
		{"auto", mk("", "", ""), nil},
		{"static v4", mk("Static", "10.66.10.7", "main"), nil},
		{"static v6", mk("Static", "fd00::7", "lab"), nil},
		{"bad type", mk("DHCP", "", ""), []tkCause{tkNotSupported("spec.type")}},
		{"static without ip", mk("Static", "", ""), []tkCause{tkRequired("spec.staticIP")}},
		{"auto with ip", mk("Auto", "10.0.0.1", ""), []tkCause{tkForbidden("spec.staticIP")}},
		{"not an ip", mk("Static", "10.0.0.256", ""), []tkCause{tkInvalid("spec.staticIP")}},
		{"cidr", mk("Static", "10.0.0.1/24", ""), []tkCause{tkInvalid("spec.staticIP")}},
		{"zone", mk("Static", "fe80::1%eth0", ""), []tkCause{tkInvalid("spec.staticIP")}},
		{"loopback", mk("Static", "127.0.0.1", ""), []tkCause{tkInvalid("spec.staticIP")}},
		{"unspecified", mk("Static", "0.0.0.0", ""), []tkCause{tkInvalid("spec.staticIP")}},
		{"multicast", mk("Static", "224.0.0.1", ""), []tkCause{tkInvalid("spec.staticIP")}},
		{"broadcast", mk("Static", "255.255.255.255", ""), []tkCause{tkInvalid("spec.staticIP")}},
		{"link-local", mk("Static", "169.254.1.1", ""), []tkCause{tkInvalid("spec.staticIP")}},
		{"bad network", mk("Static", "10.0.0.300", "Main_Net"), []tkCause{tkInvalid("spec.staticIP"), tkInvalid("spec.network")}},
	})
}

func TestVirtualMachineIPAddressUpdate(t *testing.T) {
	s := tkStrategy(t, "VirtualMachineIPAddress")
	old := &v1alpha1.VirtualMachineIPAddress{Spec: v1alpha1.VirtualMachineIPAddressSpec{Type: "Static", StaticIP: "10.0.0.5", Network: "main"}}
	same := *old
	tkCheck(t, s.ValidateUpdate(&same, old))
	n := &v1alpha1.VirtualMachineIPAddress{Spec: v1alpha1.VirtualMachineIPAddressSpec{Type: "Auto", Network: "lab"}}
	tkCheck(t, s.ValidateUpdate(n, old), tkForbidden("spec.type"), tkForbidden("spec.staticIP"), tkForbidden("spec.network"))
}

func TestVirtualMachineIPAddressLeaseValidate(t *testing.T) {
	s := tkStrategy(t, "VirtualMachineIPAddressLease")
	mk := func(name string, ref *v1alpha1.VirtualMachineIPAddressRef) *v1alpha1.VirtualMachineIPAddressLease {
		return &v1alpha1.VirtualMachineIPAddressLease{ObjectMeta: v1alpha1.ObjectMeta{Name: name},
			Spec: v1alpha1.VirtualMachineIPAddressLeaseSpec{VirtualMachineIPAddressRef: ref}}
	}
	tkCheck(t, s.Validate(mk("ip-10-66-10-1", &v1alpha1.VirtualMachineIPAddressRef{Name: "vm-ip", Namespace: "proj"})))
	tkCheck(t, s.Validate(mk("ip-10-66-10-1", nil)))
	tkCheck(t, s.Validate(mk("ip-2001-0db8-0000-0000-0000-0000-0000-0001", nil)))
	tkCheck(t, s.Validate(mk("lease-1", nil)), tkInvalid("metadata.name"))
	tkCheck(t, s.Validate(mk("ip-10-66-10-1", &v1alpha1.VirtualMachineIPAddressRef{})),
		tkRequired("spec.virtualMachineIPAddressRef.name"), tkRequired("spec.virtualMachineIPAddressRef.namespace"))
	tkCheck(t, s.Validate(mk("ip-10-66-10-1", &v1alpha1.VirtualMachineIPAddressRef{Name: "A", Namespace: "b."})),
		tkInvalid("spec.virtualMachineIPAddressRef.name"), tkInvalid("spec.virtualMachineIPAddressRef.namespace"))
}

func FuzzValidateVirtualMachineIPAddress(f *testing.F) {
	tkFuzzSeeds(f, "VirtualMachineIPAddress",
		`{"spec":{"type":"Auto"}}`,
		`{"spec":{"type":"Static","staticIP":"2001:DB8::1","network":"lab"}}`,
		`{"spec":{"staticIP":"::ffff:10.1.2.3"},"status":{"address":"10.1.2.3","phase":"Bound"}}`,
	)
}

func FuzzValidateVirtualMachineIPAddressLease(f *testing.F) {
	tkFuzzSeeds(f, "VirtualMachineIPAddressLease",
		`{"metadata":{"name":"ip-10-0-0-1"},"spec":{"virtualMachineIPAddressRef":{"name":"a","namespace":"b"}}}`,
		`{"metadata":{"name":"ip-1-2-3"},"spec":{}}`,
	)
}
