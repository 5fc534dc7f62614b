package registry

import (
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

func TestVirtualMachineMACAddress(t *testing.T) {
	s := tkStrategy(t, "VirtualMachineMACAddress")
	mk := func(a string) *v1alpha1.VirtualMachineMACAddress {
		return &v1alpha1.VirtualMachineMACAddress{Spec: v1alpha1.VirtualMachineMACAddressSpec{Address: a}}
	}
	m := mk("02-AB-cd-00-00-01")
	s.Default(m)
	s.Default(m)
	if m.Spec.Address != "02:ab:cd:00:00:01" {
		t.Errorf("default = %q", m.Spec.Address)
	}
	tests := []struct {
		addr string
		want []tkCause
	}{
		{"", nil},
		{"02:00:00:00:00:01", nil},
		{"52:54:00:12:34:56", nil},
		{"00:16:3E:00:00:01", nil},
		{"01:00:5e:00:00:01", []tkCause{tkInvalid("spec.address")}},
		{"ff:ff:ff:ff:ff:ff", []tkCause{tkInvalid("spec.address")}},
		{"00:00:00:00:00:00", []tkCause{tkInvalid("spec.address")}},
		{"02:00:00:00:00", []tkCause{tkInvalid("spec.address")}},
		{"0200.0000.0001", []tkCause{tkInvalid("spec.address")}},
		{"02:00:00:00:00:01:02:03", []tkCause{tkInvalid("spec.address")}},
		{"not a mac", []tkCause{tkInvalid("spec.address")}},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			o := mk(tt.addr)
			s.Default(o)
			tkCheck(t, s.Validate(o), tt.want...)
		})
	}
	tkCheck(t, s.ValidateUpdate(mk("02:00:00:00:00:01"), mk("02:00:00:00:00:01")))
	tkCheck(t, s.ValidateUpdate(mk("02:00:00:00:00:02"), mk("02:00:00:00:00:01")), tkForbidden("spec.address"))
	tkCheck(t, s.ValidateUpdate(mk("02:00:00:00:00:02"), mk("")), tkForbidden("spec.address"))
}

func TestVirtualMachineMACAddressLease(t *testing.T) {
	s := tkStrategy(t, "VirtualMachineMACAddressLease")
	mk := func(name string, ref *v1alpha1.VirtualMachineMACAddressRef) *v1alpha1.VirtualMachineMACAddressLease {
		return &v1alpha1.VirtualMachineMACAddressLease{ObjectMeta: v1alpha1.ObjectMeta{Name: name},
			Spec: v1alpha1.VirtualMachineMACAddressLeaseSpec{VirtualMachineMACAddressRef: ref}}
	}
	tkCheck(t, s.Validate(mk("mac-02-00-00-00-00-01", &v1alpha1.VirtualMachineMACAddressRef{Name: "m", Namespace: "p"})))
	tkCheck(t, s.Validate(mk("mac-02-00-00-00-00-01", nil)))
	tkCheck(t, s.Validate(mk("mac-02-00-00-00-00", nil)), tkInvalid("metadata.name"))
	tkCheck(t, s.Validate(mk("mac-02-00-00-00-00-01", &v1alpha1.VirtualMachineMACAddressRef{Name: "m"})),
		tkRequired("spec.virtualMachineMACAddressRef.namespace"))
}

func FuzzValidateVirtualMachineMACAddress(f *testing.F) {
	tkFuzzSeeds(f, "VirtualMachineMACAddress",
		`{"spec":{}}`,
		`{"spec":{"address":"02-AB-CD-EF-00-01"}}`,
		`{"spec":{"address":"01:00:5e:00:00:01"},"status":{"phase":"Bound","address":"01:00:5e:00:00:01"}}`,
	)
}

func FuzzValidateVirtualMachineMACAddressLease(f *testing.F) {
	tkFuzzSeeds(f, "VirtualMachineMACAddressLease",
		`{"metadata":{"name":"mac-02-00-00-00-00-01"},"spec":{"virtualMachineMACAddressRef":{"name":"a","namespace":"b"}}}`,
		`{"metadata":{"name":"mac-02"},"spec":{"virtualMachineMACAddressRef":{}}}`,
	)
}
