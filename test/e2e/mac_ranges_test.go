package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// TestExplicitMACOutsideRanges: a claim of an explicit MAC outside the cluster's MAC ranges is
// refused with a reason and a message that names the ranges and how an administrator grants
// it; a MAC inside the ranges, and one whose lease an administrator made for the claim, bind.
func TestExplicitMACOutsideRanges(t *testing.T) {
	s := StartServe(t)
	s.MustCLI(`apiVersion: virtualization.rakhsh.io/v1alpha1
kind: VirtualMachineMACAddress
metadata: {name: router}
spec: {address: "52:54:00:aa:bb:01"}
---
apiVersion: virtualization.rakhsh.io/v1alpha1
kind: VirtualMachineMACAddress
metadata: {name: inside}
spec: {address: "02:72:6b:00:42:42"}
---
apiVersion: virtualization.rakhsh.io/v1alpha1
kind: VirtualMachineMACAddressLease
metadata: {name: mac-52-54-00-aa-bb-02}
spec:
  virtualMachineMACAddressRef: {name: granted, namespace: default}
---
apiVersion: virtualization.rakhsh.io/v1alpha1
kind: VirtualMachineMACAddress
metadata: {name: granted}
spec: {address: "52:54:00:aa:bb:02"}
`, "apply", "-f", "-")
	bound := func(name string) (*v1alpha1.VirtualMachineMACAddress, *v1alpha1.Condition) {
		var m v1alpha1.VirtualMachineMACAddress
		for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			m = v1alpha1.VirtualMachineMACAddress{}
			if err := s.Client().Get(context.Background(), "virtualmachinemacaddresses", "default", name, &m); err == nil {
				if c := v1alpha1.FindCondition(m.Status.Conditions, v1alpha1.AddressConditionBound); c != nil {
					return &m, c
				}
			}
		}
		t.Fatalf("VirtualMachineMACAddress %s: no Bound condition in a minute: %+v", name, m.Status)
		return nil, nil
	}
	m, c := bound("router")
	if c.Status != v1alpha1.ConditionFalse || c.Reason != "OutsideMACRanges" || m.Status.Address != "" ||
		!strings.Contains(c.Message, "MAC address 52:54:00:aa:bb:01 is outside the cluster's MAC ranges (02:72:6b:00:00:00-02:72:6b:ff:ff:ff)") ||
		!strings.Contains(c.Message, "VirtualMachineMACAddressLease mac-52-54-00-aa-bb-01") {
		t.Errorf("a MAC outside the ranges: address %q, condition %+v", m.Status.Address, c)
	}
	var l v1alpha1.VirtualMachineMACAddressLease
	if err := s.Client().Get(context.Background(), "virtualmachinemacaddressleases", "", "mac-52-54-00-aa-bb-01", &l); err == nil {
		t.Errorf("a lease was made for the refused address: %+v", l.Spec)
	}
	for _, name := range []string{"inside", "granted"} {
		if m, c := bound(name); c.Status != v1alpha1.ConditionTrue || m.Status.Address == "" {
			t.Errorf("%s: address %q, condition %+v, want Bound", name, m.Status.Address, c)
		}
	}

	// Granted after the refusal: the lease an administrator makes binds the waiting claim.
	s.MustCLI(`apiVersion: virtualization.rakhsh.io/v1alpha1
kind: VirtualMachineMACAddressLease
metadata: {name: mac-52-54-00-aa-bb-01}
spec:
  virtualMachineMACAddressRef: {name: router, namespace: default}
`, "apply", "-f", "-")
	waitFor(t, "the claim router bound after its lease was made", func() bool {
		m, c := bound("router")
		return c.Status == v1alpha1.ConditionTrue && m.Status.Address == "52:54:00:aa:bb:01"
	})
	// A bound claim's lease deleted by hand is made again (the address stays taken).
	s.MustCLI("", "delete", "vmmacl", "mac-02-72-6b-00-42-42")
	waitFor(t, "the lease of the bound claim inside made again", func() bool {
		var l v1alpha1.VirtualMachineMACAddressLease
		err := s.Client().Get(context.Background(), "virtualmachinemacaddressleases", "", "mac-02-72-6b-00-42-42", &l)
		return err == nil && l.DeletionTimestamp == nil && l.Spec.VirtualMachineMACAddressRef != nil && l.Spec.VirtualMachineMACAddressRef.Name == "inside"
	})
}

// waitFor polls cond for up to a minute.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("%s: not within a minute", what)
}
