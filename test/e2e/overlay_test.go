package e2e

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/network"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// overlayOutside is a namespace on the cluster's underlay standing in for the world beyond
// the hosts: the underlay bridge reaches it on 10.231.0.250, where an outsideServer records
// who asked.
func overlayOutside(t *testing.T, c *Cluster) (*outsideServer, string) {
	t.Helper()
	ns := fmt.Sprintf("rko-out%d", os.Getpid()%100000)
	const ip = "10.231.0.250"
	run(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	port := "rkoout"
	// The highest unicast MAC: a Linux bridge without a MAC of its own takes its ports'
	// lowest, and a new lower one would change the MAC of the etcd members' addresses under
	// the hosts' ARP caches.
	run(t, "ip", "-n", c.Underlay, "link", "add", port, "address", "fe:ff:ff:ff:ff:fe", "type", "veth", "peer", "name", "eth0", "netns", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "-n", c.Underlay, "link", "del", port).Run() })
	run(t, "ip", "-n", c.Underlay, "link", "set", port, "master", c.Bridge, "up")
	run(t, "ip", "-n", ns, "addr", "add", ip+"/24", "dev", "eth0")
	run(t, "ip", "-n", ns, "link", "set", "eth0", "up")
	run(t, "ip", "-n", ns, "link", "set", "lo", "up")
	o := &outsideServer{seen: map[string]string{}}
	ln := listenIn(t, ns, ip+":8080")
	go func() { _ = http.Serve(ln, o) }()
	return o, ip
}

// hostConsoleType types a line on the serial console of a VM that runs on host h.
func hostConsoleType(t *testing.T, h *ClusterHost, uid, line string) {
	t.Helper()
	c, err := net.Dial("unix", filepath.Join(storage.VMRunDir(h.DataDir, uid), "console.sock"))
	if err != nil {
		t.Fatalf("console of %s on %s: %v", uid, h.Name, err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(line + "\n")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
}

func overlayVM(name, node string) string {
	return vmDoc{Name: name, Policy: "AlwaysOnUnlessStoppedManually", Memory: "192Mi", Grace: "5", Node: hostSelector(node),
		Refs: []string{cviRef("cluster-guest")}, Extra: "  networks:\n  - {type: ClusterNetwork, name: rko}\n"}.String()
}

// TestOverlayAcrossHosts: one NAT network spans the cluster's hosts. A VM on h2 and a VM on
// h3 get their addresses from the central IPAM by DHCP from their own node, ping each other
// across the VXLAN overlay, each reach a server outside through its own node's NAT (the
// server sees that node's underlay address), and after a stop and a start on the other node
// each keeps its MAC and IP and everything works again. The nodes publish their underlay
// addresses, the network has a VNI, and the forwarding tables follow the VMs.
func TestOverlayAcrossHosts(t *testing.T) {
	clusterLane(t)
	c := sharedCluster(t)
	s := c.Serve(t)
	ctx := ctxT(t)
	h2, h3 := c.Host("h2"), c.Host("h3")
	guest := c.GuestImage(t)
	if guest != "cluster-guest" {
		t.Fatalf("guest image %q", guest)
	}
	outside, outIP := overlayOutside(t, c)

	// Every node publishes its underlay address (detected: the source of its route toward
	// the API server or the etcd store).
	for _, h := range c.Hosts {
		var n v1alpha1.Node
		if err := s.Client().Get(ctx, "nodes", "", h.Name, &n); err != nil {
			t.Fatal(err)
		}
		if got := n.Status.InternalIP(); got != h.IP {
			t.Fatalf("node %s: InternalIP %q, want %s (addresses %+v)", h.Name, got, h.IP, n.Status.Addresses)
		}
	}

	s.MustCLI(`apiVersion: virtualization.rakhsh.io/v1alpha1
kind: ClusterNetwork
metadata: {name: rko}
spec: {type: NAT, subnet: 10.233.0.0/24}
`, "apply", "-f", "-")
	t.Cleanup(func() {
		s.CLI("", "delete", "vm", "rko-a", "rko-b", "--wait", "--timeout", "90s")
		s.CLI("", "delete", "clusternetwork", "rko")
	})
	var cn v1alpha1.ClusterNetwork
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
		if err := s.Client().Get(ctx, "clusternetworks", "", "rko", &cn); err == nil && cn.Status.VNI > 0 {
			break
		}
	}
	if cn.Status.VNI <= 0 {
		t.Fatalf("ClusterNetwork rko got no VNI: %+v", cn.Status)
	}
	vni := cn.Status.VNI
	vx := network.VXLANName(vni)
	t.Logf("network rko: VNI %d, VXLAN device %s", vni, vx)

	s.MustCLI(overlayVM("rko-a", "h2")+"---\n"+overlayVM("rko-b", "h3"), "apply", "-f", "-")
	running := func(node string) func(v *v1alpha1.VirtualMachine) bool {
		return func(v *v1alpha1.VirtualMachine) bool {
			return v != nil && v.Status.Phase == v1alpha1.VMPhaseRunning && v.Status.NodeName == node &&
				len(v.Status.Networks) == 1 && v.Status.Networks[0].IPAddress != ""
		}
	}
	va := vmWait(t, s, "rko-a", 3*time.Minute, "Running on h2", running("h2"))
	vb := vmWait(t, s, "rko-b", 3*time.Minute, "Running on h3", running("h3"))
	ipA, macA := va.Status.Networks[0].IPAddress, va.Status.Networks[0].MACAddress
	ipB, macB := vb.Status.Networks[0].IPAddress, vb.Status.Networks[0].MACAddress
	t.Logf("rko-a on h2: %s %s; rko-b on h3: %s %s", macA, ipA, macB, ipB)

	// Each guest got its central address by DHCP from its own node's dnsmasq.
	vmWaitSerial(t, s, "rko-a", "RAKHSH-GUEST: ready", 1)
	vmWaitSerial(t, s, "rko-b", "RAKHSH-GUEST: ready", 1)
	vmWaitSerialMatch(t, s, "rko-a", ipMarker, 1)
	vmWaitSerialMatch(t, s, "rko-b", ipMarker, 1)
	if g := guestIPs(vmLog(t, s, "rko-a")); len(g) != 1 || g[0] != ipA+"/eth0" {
		t.Fatalf("rko-a guest addresses %v, want [%s/eth0]", g, ipA)
	}
	if g := guestIPs(vmLog(t, s, "rko-b")); len(g) != 1 || g[0] != ipB+"/eth0" {
		t.Fatalf("rko-b guest addresses %v, want [%s/eth0]", g, ipB)
	}

	// The host side: the VXLAN device on each node's bridge, flood entries toward the other
	// nodes and an entry for the VM on the other node.
	checkFDB := func(h *ClusterHost, wantMAC, wantDst string) {
		t.Helper()
		var fdb string
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
			fdb = h.Exec(t, "bridge", "fdb", "show", "dev", vx)
			if strings.Contains(fdb, wantMAC+" dst "+wantDst+" self permanent") {
				break
			}
		}
		for _, other := range c.Hosts {
			if other != h && !strings.Contains(fdb, "00:00:00:00:00:00 dst "+other.IP+" self permanent") {
				t.Errorf("%s: no flood entry toward %s:\n%s", h.Name, other.Name, fdb)
			}
		}
		if !strings.Contains(fdb, wantMAC+" dst "+wantDst+" self permanent") {
			t.Errorf("%s: no entry %s → %s:\n%s", h.Name, wantMAC, wantDst, fdb)
		}
		link := h.Exec(t, "ip", "-d", "link", "show", vx)
		for _, want := range []string{"master rk-rko", "vxlan id " + fmt.Sprint(vni), "local " + h.IP, "dstport 4789", "nolearning", "mtu 1450"} {
			if !strings.Contains(link, want) {
				t.Errorf("%s: VXLAN device lacks %q:\n%s", h.Name, want, link)
			}
		}
	}
	checkFDB(h2, macB, h3.IP)
	checkFDB(h3, macA, h2.IP)

	// Across hosts, both ways, and out through each node's own NAT.
	var uidA, uidB string
	var hostA, hostB *ClusterHost
	connectivity := func(round string) {
		t.Helper()
		hostConsoleType(t, hostA, uidA, "")
		hostConsoleType(t, hostA, uidA, fmt.Sprintf("ping -c 3 -W 3 %s >/dev/null && echo XA%s-$((40+2)) || echo XA%s-$((40+1))", ipB, round, round))
		netWaitLine(t, s, "rko-a", "XA"+round+"-42", time.Minute)
		hostConsoleType(t, hostB, uidB, "")
		hostConsoleType(t, hostB, uidB, fmt.Sprintf("ping -c 3 -W 3 %s >/dev/null && echo XB%s-$((40+2)) || echo XB%s-$((40+1))", ipA, round, round))
		netWaitLine(t, s, "rko-b", "XB"+round+"-42", time.Minute)
		for _, g := range []struct {
			name string
			h    *ClusterHost
			uid  string
		}{{"rko-a", hostA, uidA}, {"rko-b", hostB, uidB}} {
			path := "/" + g.name + "-" + round
			hostConsoleType(t, g.h, g.uid, fmt.Sprintf(`printf 'GET %s HTTP/1.0\r\n\r\n' | nc -w 5 %s 8080`, path, outIP))
			netWaitLine(t, s, g.name, "REACHED-"+g.name+"-"+round, time.Minute)
			if from, _ := outside.get(path); !strings.HasPrefix(from, g.h.IP+":") {
				t.Errorf("%s from %s on %s: the outside server saw %q, want that node's own address %s (each node NATs its own VMs)", path, g.name, g.h.Name, from, g.h.IP)
			}
		}
	}
	uidA, uidB, hostA, hostB = va.UID, vb.UID, h2, h3
	connectivity("1")
	// The guest's MTU leaves room for the VXLAN headers on the 1500-byte underlay.
	hostConsoleType(t, h2, va.UID, "echo MTU-$(cat /sys/class/net/eth0/mtu)")
	netWaitLine(t, s, "rko-a", "MTU-1450", 30*time.Second)

	// The gateway is each node's own: the guests' DHCP and the frames the node itself sends
	// from the gateway MAC (its ARP requests, IPv6 neighbour discovery) were kept off the
	// overlay, and the drops were counted, so no node answered another's VM.
	gwMAC := network.GatewayMAC("rk-rko").String()
	for _, h := range []*ClusterHost{h2, h3} {
		for _, what := range []struct{ chain, name, re string }{
			{"overlay-forward", "the guest's DHCP", `udp dport \{ 67, 68 \} counter packets ([0-9]+)`},
			{"overlay-output", "the node's frames from the gateway MAC", `ether saddr ` + gwMAC + ` counter packets ([0-9]+)`},
		} {
			rules := h.Exec(t, "nft", "list", "chain", "bridge", "rakhsh-rko", what.chain)
			m := regexp.MustCompile(what.re).FindStringSubmatch(rules)
			if m == nil || m[1] == "0" {
				t.Errorf("%s: %s not kept off the overlay:\n%s", h.Name, what.name, rules)
			}
		}
	}

	// Stop both, swap their nodes, start them: same MAC, same IP, on the other node.
	s.MustCLI("", "vm", "stop", "rko-a", "--wait")
	s.MustCLI("", "vm", "stop", "rko-b", "--wait")
	s.MustCLI(overlayVM("rko-a", "h3")+"---\n"+overlayVM("rko-b", "h2"), "apply", "-f", "-")
	s.MustCLI("", "vm", "start", "rko-a")
	s.MustCLI("", "vm", "start", "rko-b")
	va2 := vmWait(t, s, "rko-a", 3*time.Minute, "Running on h3", running("h3"))
	vb2 := vmWait(t, s, "rko-b", 3*time.Minute, "Running on h2", running("h2"))
	if va2.Status.Networks[0].IPAddress != ipA || va2.Status.Networks[0].MACAddress != macA {
		t.Fatalf("rko-a on h3: %s %s, want %s %s", va2.Status.Networks[0].MACAddress, va2.Status.Networks[0].IPAddress, macA, ipA)
	}
	if vb2.Status.Networks[0].IPAddress != ipB || vb2.Status.Networks[0].MACAddress != macB {
		t.Fatalf("rko-b on h2: %s %s, want %s %s", vb2.Status.Networks[0].MACAddress, vb2.Status.Networks[0].IPAddress, macB, ipB)
	}
	// The serial log is kept by the node that runs the VM: on the new node it starts anew.
	vmWaitSerial(t, s, "rko-a", "RAKHSH-GUEST: ready", 1)
	vmWaitSerial(t, s, "rko-b", "RAKHSH-GUEST: ready", 1)
	if g := guestIPs(vmLog(t, s, "rko-a")); len(g) == 0 || g[len(g)-1] != ipA+"/eth0" {
		t.Fatalf("rko-a on h3 got %v by DHCP, want %s", g, ipA)
	}
	if g := guestIPs(vmLog(t, s, "rko-b")); len(g) == 0 || g[len(g)-1] != ipB+"/eth0" {
		t.Fatalf("rko-b on h2 got %v by DHCP, want %s", g, ipB)
	}
	// The forwarding tables followed the VMs.
	checkFDB(h2, macA, h3.IP)
	checkFDB(h3, macB, h2.IP)
	if fdb := h2.Exec(t, "bridge", "fdb", "show", "dev", vx); strings.Contains(fdb, macB+" dst") {
		t.Errorf("h2 still sends rko-b's MAC over the overlay though rko-b runs on h2:\n%s", fdb)
	}
	uidA, uidB, hostA, hostB = va2.UID, vb2.UID, h3, h2
	connectivity("2")
}
