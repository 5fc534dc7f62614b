package network

import (
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// TestRemovedInterfaceGivesBackItsClaims: a second interface appended to a VM's networks gets
// its automatic MAC and IP claims; removed again, they are deleted (and their leases released)
// while the first interface keeps its own.
func TestRemovedInterfaceGivesBackItsClaims(t *testing.T) {
	vm := testVM("web")
	vm.Spec.Networks = []v1alpha1.NetworkSpec{{Type: v1alpha1.NetworkTypeMain}, {Type: v1alpha1.NetworkTypeClusterNetwork, Name: "main"}}
	e := newEnv(t, nil, vm)
	var got v1alpha1.VirtualMachine
	e.wait("two interfaces with addresses", "virtualmachines", "p1", "web", &got, func() bool {
		return len(got.Status.Networks) == 2 && got.Status.Networks[1].IPAddress != ""
	})
	var ip v1alpha1.VirtualMachineIPAddress
	e.wait("the second claim attached", "virtualmachineipaddresses", "p1", "web-ip-1", &ip, func() bool {
		return ip.Status.Phase == v1alpha1.VirtualMachineIPAddressPhaseAttached
	})
	if err := e.fc.Patch(e.ctx, "virtualmachines", "p1", "web", []byte(`{"spec":{"networks":[{"type":"Main"}]}}`), nil); err != nil {
		t.Fatal(err)
	}
	e.waitGone("virtualmachineipaddresses", "p1", "web-ip-1")
	e.waitGone("virtualmachinemacaddresses", "p1", "web-mac-1")
	e.wait("one interface", "virtualmachines", "p1", "web", &got, func() bool { return len(got.Status.Networks) == 1 })
	if err := e.fc.Get(e.ctx, "virtualmachineipaddresses", "p1", "web", &ip); err != nil {
		t.Fatalf("the first interface's IP claim: %v", err)
	}
	var mac v1alpha1.VirtualMachineMACAddress
	if err := e.fc.Get(e.ctx, "virtualmachinemacaddresses", "p1", "web-mac-0", &mac); err != nil {
		t.Fatalf("the first interface's MAC claim: %v", err)
	}
}
