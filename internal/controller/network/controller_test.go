package network

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/runtime/fake"
)

type env struct {
	t   *testing.T
	fc  *fake.Client
	ctx context.Context
}

// newEnv runs the network controller against a fake client holding objs.
func newEnv(t *testing.T, mod func(*Config), objs ...v1alpha1.Object) *env {
	t.Helper()
	e := &env{t: t, fc: fake.New()}
	if err := e.fc.Add(objs...); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Deps: runtime.Deps{Client: e.fc, Log: fake.Logger(t, slog.LevelDebug)}, SweepInterval: 50 * time.Millisecond, IPReuseDelay: time.Hour, MACReuseDelay: time.Hour}
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.ctx = fake.Run(t, c)
	return e
}

func testVM(name string) *v1alpha1.VirtualMachine {
	vm := &v1alpha1.VirtualMachine{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachine"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: name, Namespace: "p1", UID: "uid-" + name}}
	vm.Spec.CPU.Cores = 1
	vm.Spec.Memory.Size = "1Gi"
	return vm
}

func ipClaim(name, static, network string) *v1alpha1.VirtualMachineIPAddress {
	ip := &v1alpha1.VirtualMachineIPAddress{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachineIPAddress"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: name, Namespace: "p1"},
		Spec:       v1alpha1.VirtualMachineIPAddressSpec{Type: v1alpha1.VirtualMachineIPAddressTypeAuto, Network: network}}
	if static != "" {
		ip.Spec.Type, ip.Spec.StaticIP = v1alpha1.VirtualMachineIPAddressTypeStatic, static
	}
	return ip
}

func cnet(name, subnet string) *v1alpha1.ClusterNetwork {
	return &v1alpha1.ClusterNetwork{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "ClusterNetwork"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: name},
		Spec:       v1alpha1.ClusterNetworkSpec{Type: v1alpha1.ClusterNetworkTypeNAT, Subnet: subnet}}
}

// wait polls resource ns/name into out until ok says yes.
func (e *env) wait(what, resource, ns, name string, out any, ok func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		// A fresh value each time: decoding over the last one would keep pointers that the
		// newer object no longer has.
		reflect.ValueOf(out).Elem().SetZero()
		err := e.fc.Get(e.ctx, resource, ns, name, out)
		if err == nil && ok() {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s %s/%s: timed out waiting for %s (err %v, now %+v)", resource, ns, name, what, err, out)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (e *env) waitGone(resource, ns, name string) {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !client.IsNotFound(e.fc.Get(e.ctx, resource, ns, name, nil)) {
		if time.Now().After(deadline) {
			e.t.Fatalf("%s %s/%s is still there", resource, ns, name)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func boundCond(conds []v1alpha1.Condition) *v1alpha1.Condition {
	return v1alpha1.FindCondition(conds, v1alpha1.AddressConditionBound)
}

func TestVMGetsClaimsLeasesAndAddresses(t *testing.T) {
	e := newEnv(t, nil, testVM("web"))
	// The controller made the default network.
	var n v1alpha1.ClusterNetwork
	e.wait("the main network", "clusternetworks", "", v1alpha1.DefaultClusterNetworkName, &n, func() bool { return n.Spec.Subnet == DefaultSubnet })

	var vm v1alpha1.VirtualMachine
	e.wait("addresses in the VM status", "virtualmachines", "p1", "web", &vm, func() bool {
		ipc := v1alpha1.FindCondition(vm.Status.Conditions, v1alpha1.VMConditionIPAddressReady)
		macc := v1alpha1.FindCondition(vm.Status.Conditions, v1alpha1.VMConditionMACAddressReady)
		return vm.Status.IPAddress != "" && ipc != nil && ipc.Status == v1alpha1.ConditionTrue && macc != nil && macc.Status == v1alpha1.ConditionTrue
	})
	if c := v1alpha1.FindCondition(vm.Status.Conditions, v1alpha1.VMConditionMACAddressReady); c == nil || c.Status != v1alpha1.ConditionTrue {
		t.Errorf("MACAddressReady %+v", c)
	}
	if len(vm.Status.Networks) != 1 || vm.Status.Networks[0].MACAddress == "" || vm.Status.Networks[0].IPAddress != vm.Status.IPAddress {
		t.Fatalf("networks status %+v", vm.Status.Networks)
	}
	addr := netip.MustParseAddr(vm.Status.IPAddress)
	if !netip.MustParsePrefix(DefaultSubnet).Contains(addr) {
		t.Errorf("address %s outside %s", addr, DefaultSubnet)
	}

	// The automatic IP claim is named like the VM, attached to it, and holds the lease of
	// the address, whose name is the address.
	var ip v1alpha1.VirtualMachineIPAddress
	e.wait("the claim attached", "virtualmachineipaddresses", "p1", "web", &ip, func() bool {
		return ip.Status.Phase == v1alpha1.VirtualMachineIPAddressPhaseAttached
	})
	if ip.Status.Address != addr.String() || ip.Status.VirtualMachineName != "web" || ip.Labels[LabelVM] != "web" || ip.Annotations[AnnotationAutoFor] != vm.UID {
		t.Errorf("automatic claim %+v %+v", ip.ObjectMeta, ip.Status)
	}
	var l v1alpha1.VirtualMachineIPAddressLease
	e.wait("the lease bound", "virtualmachineipaddressleases", "", v1alpha1.IPLeaseName(addr), &l, func() bool {
		return l.Status.Phase == v1alpha1.LeasePhaseBound
	})
	if r := l.Spec.VirtualMachineIPAddressRef; r == nil || r.Name != "web" || r.Namespace != "p1" {
		t.Errorf("lease ref %+v", r)
	}
	macName, err := v1alpha1.MACLeaseName(vm.Status.Networks[0].MACAddress)
	if err != nil {
		t.Fatal(err)
	}
	var ml v1alpha1.VirtualMachineMACAddressLease
	e.wait("the MAC lease", "virtualmachinemacaddressleases", "", macName, &ml, func() bool {
		r := ml.Spec.VirtualMachineMACAddressRef
		return r != nil && r.Name == "web-mac-0"
	})

	// The VM goes: the sweep deletes its automatic claims, then releases their leases
	// (kept, without a claim, for the reuse delay).
	if err := e.fc.Delete(e.ctx, "virtualmachines", "p1", "web"); err != nil {
		t.Fatal(err)
	}
	e.waitGone("virtualmachineipaddresses", "p1", "web")
	e.waitGone("virtualmachinemacaddresses", "p1", "web-mac-0")
	e.wait("the lease released", "virtualmachineipaddressleases", "", v1alpha1.IPLeaseName(addr), &l, func() bool {
		return l.Status.Phase == v1alpha1.LeasePhaseReleased && l.Spec.VirtualMachineIPAddressRef == nil && l.Annotations[AnnotationReleasedAt] != ""
	})
}

func TestReleasedLeaseIsDeletedAfterReuseDelay(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.IPReuseDelay = 2 * time.Second /* released-at has a resolution of a second */ }, ipClaim("a", "", ""))
	var ip v1alpha1.VirtualMachineIPAddress
	e.wait("bound", "virtualmachineipaddresses", "p1", "a", &ip, func() bool {
		return ip.Status.Phase == v1alpha1.VirtualMachineIPAddressPhaseBound
	})
	lease := v1alpha1.IPLeaseName(netip.MustParseAddr(ip.Status.Address))
	if err := e.fc.Delete(e.ctx, "virtualmachineipaddresses", "p1", "a"); err != nil {
		t.Fatal(err)
	}
	var l v1alpha1.VirtualMachineIPAddressLease
	e.wait("released", "virtualmachineipaddressleases", "", lease, &l, func() bool { return l.Status.Phase == v1alpha1.LeasePhaseReleased })
	e.waitGone("virtualmachineipaddressleases", "", lease)
}

func TestStaticAddressInUseAndFreed(t *testing.T) {
	e := newEnv(t, nil, ipClaim("first", "10.66.0.50", ""))
	var first v1alpha1.VirtualMachineIPAddress
	e.wait("bound", "virtualmachineipaddresses", "p1", "first", &first, func() bool {
		return first.Status.Address == "10.66.0.50" && first.Status.Phase == v1alpha1.VirtualMachineIPAddressPhaseBound
	})
	if err := e.fc.Create(e.ctx, "virtualmachineipaddresses", "p1", ipClaim("second", "10.66.0.50", ""), nil); err != nil {
		t.Fatal(err)
	}
	var second v1alpha1.VirtualMachineIPAddress
	e.wait("refused", "virtualmachineipaddresses", "p1", "second", &second, func() bool {
		c := boundCond(second.Status.Conditions)
		return c != nil && c.Reason == ReasonAddressInUse
	})
	if c := boundCond(second.Status.Conditions); !strings.Contains(c.Message, "p1/first") || second.Status.Address != "" {
		t.Errorf("second claim: %+v, address %q", c, second.Status.Address)
	}
	// The first claim goes: its lease is released, and a Static claim may take a released
	// address at once.
	if err := e.fc.Delete(e.ctx, "virtualmachineipaddresses", "p1", "first"); err != nil {
		t.Fatal(err)
	}
	var l v1alpha1.VirtualMachineIPAddressLease
	leaseName := v1alpha1.IPLeaseName(netip.MustParseAddr("10.66.0.50"))
	e.wait("the lease released (or taken by the second claim)", "virtualmachineipaddressleases", "", leaseName, &l, func() bool {
		r := l.Spec.VirtualMachineIPAddressRef
		return r == nil || r.Name == "second"
	})
	// Nothing queues a claim waiting for an address when the address's lease is released (it
	// waits for its next reconcile, as it did before the shared runtime): a change of the
	// claim is one.
	if err := e.fc.Patch(e.ctx, "virtualmachineipaddresses", "p1", "second", []byte(`{"metadata":{"labels":{"retry":"1"}}}`), nil); err != nil {
		t.Fatal(err)
	}
	e.wait("bound after the release", "virtualmachineipaddresses", "p1", "second", &second, func() bool {
		return second.Status.Address == "10.66.0.50" && second.Status.Phase == v1alpha1.VirtualMachineIPAddressPhaseBound
	})
	e.wait("the lease moved", "virtualmachineipaddressleases", "", leaseName, &l, func() bool {
		r := l.Spec.VirtualMachineIPAddressRef
		return r != nil && r.Name == "second" && l.Status.Phase == v1alpha1.LeasePhaseBound
	})
}

func TestPoolExhaustedAndInvalidStatic(t *testing.T) {
	// A /30 has two host addresses besides the gateway... the pool says how many.
	e := newEnv(t, nil, cnet("tiny", "10.67.0.0/29"),
		ipClaim("a", "", "tiny"), ipClaim("b", "", "tiny"), ipClaim("c", "", "tiny"), ipClaim("d", "", "tiny"),
		ipClaim("e", "", "tiny"), ipClaim("f", "", "tiny"), ipClaim("outside", "10.99.0.1", "tiny"))
	bound, exhausted := 0, 0
	deadline := time.Now().Add(10 * time.Second)
	seen := map[string]bool{}
	for {
		bound, exhausted = 0, 0
		clear(seen)
		for _, n := range []string{"a", "b", "c", "d", "e", "f"} {
			var ip v1alpha1.VirtualMachineIPAddress
			if err := e.fc.Get(e.ctx, "virtualmachineipaddresses", "p1", n, &ip); err != nil {
				t.Fatal(err)
			}
			switch c := boundCond(ip.Status.Conditions); {
			case c != nil && c.Reason == ReasonBound:
				if seen[ip.Status.Address] {
					t.Fatalf("address %s given twice", ip.Status.Address)
				}
				seen[ip.Status.Address] = true
				bound++
			case c != nil && c.Reason == ReasonPoolExhausted:
				exhausted++
			}
		}
		if bound+exhausted == 6 && exhausted > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bound %d, exhausted %d of 6 claims on a /29", bound, exhausted)
		}
		time.Sleep(10 * time.Millisecond)
	}
	var out v1alpha1.VirtualMachineIPAddress
	e.wait("refused", "virtualmachineipaddresses", "p1", "outside", &out, func() bool {
		c := boundCond(out.Status.Conditions)
		return c != nil && c.Reason == ReasonInvalidAddress
	})
	// The network's status counts its leases.
	var n v1alpha1.ClusterNetwork
	e.wait("the count of leases", "clusternetworks", "", "tiny", &n, func() bool {
		return n.Status.Phase == v1alpha1.ClusterNetworkPhaseReady && n.Status.AllocatedIPs == bound
	})
}

func TestLostLeaseRaceTakesAnotherAddress(t *testing.T) {
	e := newEnv(t, nil)
	var mu sync.Mutex
	stolen := ""
	// The first lease the controller tries to create is taken by someone else between its
	// cache read and its create (another controller, or an administrator): the create meets
	// AlreadyExists, and the claim must bind another address.
	e.fc.SetHook(func(a fake.Action) error {
		if a.Verb != "create" || a.Resource != "virtualmachineipaddressleases" {
			return nil
		}
		mu.Lock()
		defer mu.Unlock()
		if stolen != "" {
			return nil
		}
		var l v1alpha1.VirtualMachineIPAddressLease
		if err := json.Unmarshal(a.Body, &l); err != nil {
			return err
		}
		stolen = l.Name
		other := &v1alpha1.VirtualMachineIPAddressLease{ObjectMeta: v1alpha1.ObjectMeta{Name: l.Name},
			Spec: v1alpha1.VirtualMachineIPAddressLeaseSpec{VirtualMachineIPAddressRef: &v1alpha1.VirtualMachineIPAddressRef{Name: "other", Namespace: "p2"}}}
		if err := e.fc.Add(other); err != nil {
			return err
		}
		return fake.AlreadyExists(a.Resource, l.Name)
	})
	if err := e.fc.Create(e.ctx, "virtualmachineipaddresses", "p1", ipClaim("a", "", ""), nil); err != nil {
		t.Fatal(err)
	}
	var ip v1alpha1.VirtualMachineIPAddress
	e.wait("bound", "virtualmachineipaddresses", "p1", "a", &ip, func() bool {
		return ip.Status.Phase == v1alpha1.VirtualMachineIPAddressPhaseBound
	})
	mu.Lock()
	defer mu.Unlock()
	if stolen == "" || v1alpha1.IPLeaseName(netip.MustParseAddr(ip.Status.Address)) == stolen {
		t.Fatalf("claim bound %s; the stolen lease was %q", ip.Status.Address, stolen)
	}
}

func TestStatusConflictIsRetriedOnTheNewerObject(t *testing.T) {
	e := newEnv(t, nil)
	var mu sync.Mutex
	conflicts := 0
	e.fc.SetHook(func(a fake.Action) error {
		if (a.Verb != "patchstatus" && a.Verb != "jsonpatchstatus") || a.Resource != "virtualmachineipaddresses" {
			return nil
		}
		mu.Lock()
		first := conflicts == 0
		if first {
			conflicts++
		}
		mu.Unlock()
		if !first {
			return nil
		}
		// Another writer changes the claim first: the controller's write is stale.
		go func() {
			_ = e.fc.Patch(e.ctx, "virtualmachineipaddresses", a.Namespace, a.Name, []byte(`{"metadata":{"labels":{"touched":"yes"}}}`), nil)
		}()
		return fake.Conflict(a.Resource, a.Name)
	})
	if err := e.fc.Create(e.ctx, "virtualmachineipaddresses", "p1", ipClaim("a", "", ""), nil); err != nil {
		t.Fatal(err)
	}
	var ip v1alpha1.VirtualMachineIPAddress
	e.wait("bound", "virtualmachineipaddresses", "p1", "a", &ip, func() bool {
		return ip.Status.Phase == v1alpha1.VirtualMachineIPAddressPhaseBound && ip.Labels["touched"] == "yes"
	})
	mu.Lock()
	defer mu.Unlock()
	if conflicts != 1 {
		t.Errorf("%d conflicts, want 1", conflicts)
	}
}

func TestExplicitMACOutsideRangesNeedsAdminLease(t *testing.T) {
	m := &v1alpha1.VirtualMachineMACAddress{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachineMACAddress"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: "fixed", Namespace: "p1"},
		Spec:       v1alpha1.VirtualMachineMACAddressSpec{Address: "52:54:00:12:34:56"}}
	e := newEnv(t, nil, m)
	var got v1alpha1.VirtualMachineMACAddress
	e.wait("refused", "virtualmachinemacaddresses", "p1", "fixed", &got, func() bool {
		c := boundCond(got.Status.Conditions)
		return c != nil && c.Reason == ReasonOutsideMACRanges
	})
	// An administrator grants the address with its lease: the claim binds.
	name, err := v1alpha1.MACLeaseName("52:54:00:12:34:56")
	if err != nil {
		t.Fatal(err)
	}
	l := &v1alpha1.VirtualMachineMACAddressLease{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachineMACAddressLease"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: name},
		Spec: v1alpha1.VirtualMachineMACAddressLeaseSpec{VirtualMachineMACAddressRef: &v1alpha1.VirtualMachineMACAddressRef{
			Name: "fixed", Namespace: "p1"}}}
	if err := e.fc.Create(e.ctx, "virtualmachinemacaddressleases", "", l, nil); err != nil {
		t.Fatal(err)
	}
	e.wait("bound", "virtualmachinemacaddresses", "p1", "fixed", &got, func() bool {
		return got.Status.Address == "52:54:00:12:34:56" && got.Status.Phase == v1alpha1.VirtualMachineMACAddressPhaseBound
	})
}

// TestGuestAddressesSurviveRewrites: the network controller keeps what the node agent wrote
// (from the guest agent: interfaceName, guestIPAddresses; from hot-plug: slot) when it
// rewrites status.networks.
func TestGuestAddressesSurviveRewrites(t *testing.T) {
	e := newEnv(t, nil, testVM("web"))
	var vm v1alpha1.VirtualMachine
	// Both addresses: the IP can come before the MAC (the MAC claim is made and then bound),
	// and the node agent's fields belong to the entry of a MAC.
	e.wait("addresses in the VM status", "virtualmachines", "p1", "web", &vm, func() bool {
		return vm.Status.IPAddress != "" && len(vm.Status.Networks) == 1 && vm.Status.Networks[0].MACAddress != ""
	})
	vm.Status.Networks[0].InterfaceName = "eth0"
	vm.Status.Networks[0].GuestIPAddresses = []string{"192.0.2.9/24"}
	vm.Status.Networks[0].Slot = "hotplug1"
	// A stale platform field too, so that the controller has something to rewrite.
	vm.Status.Networks[0].IPAddress = ""
	if err := e.fc.UpdateStatus(e.ctx, "virtualmachines", "p1", "web", &vm, nil); err != nil {
		t.Fatal(err)
	}
	e.wait("the platform's address written again", "virtualmachines", "p1", "web", &vm, func() bool {
		return len(vm.Status.Networks) == 1 && vm.Status.Networks[0].IPAddress != ""
	})
	if n := vm.Status.Networks[0]; n.InterfaceName != "eth0" || !reflect.DeepEqual(n.GuestIPAddresses, []string{"192.0.2.9/24"}) || n.Slot != "hotplug1" {
		t.Fatalf("networks[0] after the controller's rewrite: %+v (the node agent's fields are gone)", n)
	}
}
