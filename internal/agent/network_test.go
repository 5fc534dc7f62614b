package agent

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

func TestDesiredNetwork(t *testing.T) {
	nat := &v1alpha1.ClusterNetwork{Spec: v1alpha1.ClusterNetworkSpec{Type: v1alpha1.ClusterNetworkTypeNAT, Bridge: "rk-main", Subnet: "10.66.0.0/24"}}
	lan := &v1alpha1.ClusterNetwork{Spec: v1alpha1.ClusterNetworkSpec{Type: v1alpha1.ClusterNetworkTypeBridge, Bridge: "br0"}}
	active := map[string][]plannedNIC{
		"a/web": {{index: 0, netName: "main", net: nat, tap: "rkt1", mac: "02:00:00:00:00:01", ip: netip.MustParseAddr("10.66.0.2"),
			forwards: []v1alpha1.PortForward{{HostPort: 2201, Port: 22}, {Protocol: "UDP", HostPort: 53, Port: 53}}},
			{index: 1, netName: "lan", net: lan, tap: "rkt2", mac: "02:00:00:00:00:02", forwards: []v1alpha1.PortForward{{HostPort: 80, Port: 80}}}},
		"b/web": {{index: 0, netName: "main", net: nat, tap: "rkt3", mac: "02:00:00:00:00:03", ip: netip.MustParseAddr("10.66.0.3"),
			forwards: []v1alpha1.PortForward{{Protocol: "TCP", HostPort: 2201, Port: 22}}}},
	}
	var warnings []string
	d := desired("main", nat, active, func(s string) { warnings = append(warnings, s) })
	if len(d.Ports) != 2 || len(d.Hosts) != 2 {
		t.Fatalf("ports %v hosts %v", d.Ports, d.Hosts)
	}
	// Two VMs named web in different projects: neither gets the ambiguous host name.
	for _, h := range d.Hosts {
		if h.Hostname != "" {
			t.Errorf("host %v has a name shared by two VMs", h)
		}
	}
	if len(d.Forwards) != 2 || d.Forwards[0].Protocol != "tcp" || d.Forwards[0].GuestIP.String() != "10.66.0.2" || d.Forwards[1].Protocol != "udp" {
		t.Errorf("forwards %+v: want a/web's tcp 2201 and udp 53 (b/web's tcp 2201 loses)", d.Forwards)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "b/web: host port tcp/2201 is already forwarded to a/web") {
		t.Errorf("warnings %q", warnings)
	}
	warnings = nil
	d = desired("lan", lan, active, func(s string) { warnings = append(warnings, s) })
	if len(d.Ports) != 1 || len(d.Ports[0].IPs) != 0 || len(d.Hosts) != 0 || len(d.Forwards) != 0 {
		t.Errorf("lan: %+v", d)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "not a NAT network") {
		t.Errorf("lan warnings %q", warnings)
	}
}

func TestPlanNICsWaitsForAddresses(t *testing.T) {
	a := &Agent{net: &netState{}}
	vm := &v1alpha1.VirtualMachine{ObjectMeta: v1alpha1.ObjectMeta{UID: "u"}}
	if _, err := a.planNICs(vm); err == nil || !strings.Contains(err.Error(), "0 of 1 interfaces") {
		t.Fatalf("no status.networks: %v", err)
	}
}

// TestNetworkedVMs: the target of an active migration keeps its taps before its QEMU exists
// (a resync deleted a target's fresh tap between the NIC and launch steps once); the VMs
// bound here keep theirs while asked to run or while their QEMU lives; nothing else does.
func TestNetworkedVMs(t *testing.T) {
	running := &v1alpha1.VMPowerRequest{State: v1alpha1.PowerStateRunning}
	stopped := &v1alpha1.VMPowerRequest{State: v1alpha1.PowerStateStopped}
	vm := func(uid, node string, pr *v1alpha1.VMPowerRequest, mig *v1alpha1.VirtualMachineMigrationState) *v1alpha1.VirtualMachine {
		v := &v1alpha1.VirtualMachine{ObjectMeta: v1alpha1.ObjectMeta{UID: uid, Name: uid, Namespace: "p"}}
		v.Status.NodeName, v.Status.PowerRequest, v.Status.MigrationState = node, pr, mig
		return v
	}
	migrating := func(phase v1alpha1.MigrationPhase, target string) *v1alpha1.VirtualMachineMigrationState {
		m := &v1alpha1.VirtualMachineMigrationState{Phase: phase}
		m.Target.Node = target
		return m
	}
	bound := []*v1alpha1.VirtualMachine{
		vm("run", "h1", running, nil),
		vm("stopped", "h1", stopped, nil),
		vm("stopped-alive", "h1", stopped, nil),
		vm("other-node", "h2", running, nil),
		vm("leaving", "h1", running, migrating(v1alpha1.MigrationPhaseTransferring, "h2")),
	}
	incoming := []*v1alpha1.VirtualMachine{
		vm("arriving", "h2", running, migrating(v1alpha1.MigrationPhasePending, "h1")),
		vm("arrived-failed", "h2", running, migrating(v1alpha1.MigrationPhaseFailed, "h1")),
		vm("to-h3", "h2", running, migrating(v1alpha1.MigrationPhasePending, "h3")),
	}
	alive := func(uid string) bool { return uid == "stopped-alive" || uid == "leaving" }
	var got []string
	for _, v := range networkedVMs("h1", bound, incoming, alive) {
		got = append(got, v.UID)
	}
	want := []string{"arriving", "run", "stopped-alive", "leaving"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("networked VMs %v, want %v", got, want)
	}
}
