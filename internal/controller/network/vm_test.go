package network

import (
	"reflect"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

func TestInterfaces(t *testing.T) {
	vm := &v1alpha1.VirtualMachine{ObjectMeta: v1alpha1.ObjectMeta{Name: "web"}}
	managed := func(n string) bool { return n != "lan" }
	got, err := Interfaces(vm, managed)
	if err != nil {
		t.Fatal(err)
	}
	want := []Iface{{Index: 0, Type: v1alpha1.NetworkTypeMain, Network: "main", MACClaim: "web-mac-0", IPClaim: "web", AutoMAC: true, AutoIP: true}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("no networks: %+v", got)
	}
	vm.Spec.VirtualMachineIPAddressName = "fixed"
	vm.Spec.Networks = []v1alpha1.NetworkSpec{{Type: v1alpha1.NetworkTypeClusterNetwork, Name: "lan", VirtualMachineMACAddressName: "mine"},
		{Type: v1alpha1.NetworkTypeMain}, {Type: v1alpha1.NetworkTypeClusterNetwork, Name: "dmz"}}
	got, err = Interfaces(vm, managed)
	if err != nil {
		t.Fatal(err)
	}
	want = []Iface{
		{Index: 0, Type: v1alpha1.NetworkTypeClusterNetwork, Network: "lan", MACClaim: "mine"},
		{Index: 1, Type: v1alpha1.NetworkTypeMain, Network: "main", MACClaim: "web-mac-1", AutoMAC: true, IPClaim: "fixed"},
		{Index: 2, Type: v1alpha1.NetworkTypeClusterNetwork, Network: "dmz", MACClaim: "web-mac-2", AutoMAC: true, IPClaim: "web-ip-2", AutoIP: true},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("three networks:\n got %+v\nwant %+v", got, want)
	}
	vm.Spec.Networks = []v1alpha1.NetworkSpec{{Type: v1alpha1.NetworkTypeNetwork, Name: "p"}}
	if _, err := Interfaces(vm, managed); err == nil {
		t.Fatal("a project network was accepted")
	}
}
