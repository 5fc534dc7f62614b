package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/network"
	"github.com/rakhsh/rakhsh/internal/storage"
	"github.com/rakhsh/rakhsh/internal/testutil"
)

// outsideServer is an HTTP server in the "out" namespace that records the requests it gets.
type outsideServer struct {
	mu   sync.Mutex
	seen map[string]string // path → remote address
}

func (o *outsideServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	o.mu.Lock()
	o.seen[r.URL.Path] = r.RemoteAddr
	o.mu.Unlock()
	fmt.Fprintf(w, "REACHED%s\n", strings.ReplaceAll(r.URL.Path, "/", "-"))
}

func (o *outsideServer) get(path string) (string, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	a, ok := o.seen[path]
	return a, ok
}

// netWaitLine waits until the VM's serial log has a line exactly want.
func netWaitLine(t *testing.T, s *Serve, vm, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if hasLine(vmLog(t, s, vm), want) {
			return
		}
		time.Sleep(300 * time.Millisecond)
	}
	t.Fatalf("serial log of %s: no line %q within %s; log:\n%s", vm, want, timeout, vmLog(t, s, vm))
}

var ipMarker = regexp.MustCompile(`RAKHSH-GUEST: ip=([0-9.]+) iface=(eth[0-9]+)`)

// guestIPs returns the addresses the guest printed after DHCP, in order.
func guestIPs(log string) []string {
	var out []string
	for _, m := range ipMarker.FindAllStringSubmatch(log, -1) {
		out = append(out, m[1]+"/"+m[2])
	}
	return out
}

func netVMManifest(name, disk, extra string) string {
	return vmDoc{Name: name, Policy: "AlwaysOnUnlessStoppedManually", Memory: "192Mi", Grace: "20", Refs: []string{vdRef(disk)}, Extra: extra}.String()
}

// TestNetworkNAT runs `rakhsh serve --vm-networking host` in a network namespace and shows
// on real guests: leased addresses by DHCP, VM-to-VM traffic, NAT to an outside namespace,
// a port forward into a guest, anti-spoofing, the guest attacks of guestAttacks, stable MAC and IP across stop/start and a
// serve restart, a rejected duplicate Static IP and a reported full pool.
func TestNetworkNAT(t *testing.T) {
	sideBySide(t)
	dir := vmGuestDir(t)
	lab := newNetnsLab(t)

	// The outside world: an HTTP server on the far end of the uplink.
	outside := &outsideServer{seen: map[string]string{}}
	oln := listenIn(t, lab.Out, lab.OutIP+":8080")
	go func() { _ = http.Serve(oln, outside) }()
	// The guest image, served inside the serve namespace.
	base := serveGuestIn(t, lab.In, dir)

	// An operator's bridge (say, one holding a second NIC on the public network); the host
	// has an address on it so a dnsmasq of Rakhsh can serve DHCP there.
	run(t, "ip", "-n", lab.In, "link", "add", "br-lab", "type", "bridge")
	run(t, "ip", "-n", lab.In, "addr", "add", "10.68.0.254/24", "dev", "br-lab")
	run(t, "ip", "-n", lab.In, "link", "set", "br-lab", "up")

	s := lab.startServeIn(t, "--vm-networking", "host", "--no-upstream-dns")
	ctx := context.Background()
	c := s.Client()

	s.MustCLI(cviDoc("guest", httpSource(base+"/guest.qcow2"))+"---\n"+vmDiskManifest("d1")+"---\n"+vmDiskManifest("d2")+`---
apiVersion: virtualization.rakhsh.io/v1alpha1
kind: VirtualMachineIPAddress
metadata: {name: fixed}
spec: {type: Static, staticIP: 10.66.0.50}
---
apiVersion: virtualization.rakhsh.io/v1alpha1
kind: ClusterNetwork
metadata: {name: lab}
spec:
  type: Bridge
  bridge: br-lab
  subnet: 10.68.0.0/24
  dhcp: {mode: dnsmasq, rangeStart: 10.68.0.10, rangeEnd: 10.68.0.20}
  mtu: 1400
`, "apply", "-f", "-")
	s.MustCLI("", "wait", "vd", "d1", "--for", "phase=Ready", "--timeout", "2m")
	s.MustCLI("", "wait", "vd", "d2", "--for", "phase=Ready", "--timeout", "2m")

	// The default network exists.
	var mainNet v1alpha1.ClusterNetwork
	if err := c.Get(ctx, "clusternetworks", "", "main", &mainNet); err != nil {
		t.Fatalf("the default network main: %v", err)
	}
	if mainNet.Spec.Type != v1alpha1.ClusterNetworkTypeNAT || mainNet.Spec.Subnet != "10.66.0.0/24" {
		t.Fatalf("main: %+v", mainNet.Spec)
	}

	// A host port outside --port-forward-range (default 20000-32767) is refused at admission:
	// a forward of port 22 would capture the host's sshd.
	if r := s.CLI(netVMManifest("vm-ssh", "d1", `  networks:
  - type: Main
    portForwards:
    - {protocol: TCP, hostPort: 22, port: 22}
`), "apply", "-f", "-"); r.Code == 0 || !strings.Contains(r.Stderr, "must be in 20000-32767, the host ports this cluster gives to port forwards") {
		t.Fatalf("a port forward of host port 22 was not refused: %+v", r)
	}
	// A host service on a port inside the range: vm1's forward of it is left out, the host
	// keeps its service.
	listenIn(t, lab.In, "0.0.0.0:20080")

	// vm1: no networks named (one Main NIC, automatic claims) and a port forward needs the
	// Main NIC spelled out; vm2: the Static claim "fixed" on Main and a second NIC on the
	// Bridge network lab, with paravirtualization off (e1000 NICs). vm2's Main NIC has an
	// inbound policy: ICMP from the subnet and TCP port 80 only.
	s.MustCLI(netVMManifest("vm1", "d1", `  networks:
  - type: Main
    portForwards:
    - {protocol: TCP, hostPort: 20022, port: 80}
    - {protocol: TCP, hostPort: 20080, port: 80}
`)+"---\n"+netVMManifest("vm2", "d2", `  virtualMachineIPAddressName: fixed
  enableParavirtualization: false
  networks:
  - type: Main
    inbound:
      rules:
      - {protocol: ICMP, from: [10.66.0.0/24]}
      - {protocol: TCP, port: 80}
  - {type: ClusterNetwork, name: lab}
`), "apply", "-f", "-")

	v1 := vmWait(t, s, "vm1", 2*time.Minute, "Running with an address", func(v *v1alpha1.VirtualMachine) bool {
		return v != nil && v.Status.Phase == v1alpha1.VMPhaseRunning && v.Status.IPAddress != ""
	})
	v2 := vmWait(t, s, "vm2", 2*time.Minute, "Running with an address", func(v *v1alpha1.VirtualMachine) bool {
		return v != nil && v.Status.Phase == v1alpha1.VMPhaseRunning && v.Status.IPAddress != ""
	})
	if v2.Status.IPAddress != "10.66.0.50" || v2.Status.VirtualMachineIPAddressName != "fixed" {
		t.Fatalf("vm2 status: ip %q claim %q, want the Static 10.66.0.50 of claim fixed", v2.Status.IPAddress, v2.Status.VirtualMachineIPAddressName)
	}
	ip1, ip2 := v1.Status.IPAddress, v2.Status.IPAddress
	mac1 := v1.Status.Networks[0].MACAddress
	mac2 := v2.Status.Networks[0].MACAddress
	if mac1 == "" || mac1 == mac2 || !strings.HasPrefix(mac1, "02:72:6b:") {
		t.Fatalf("MACs %q and %q: want two different addresses from the pool 02:72:6b:...", mac1, mac2)
	}
	t.Logf("vm1 %s %s, vm2 %s %s", mac1, ip1, mac2, ip2)
	// The IPADDRESS column.
	if out := s.MustCLI("", "get", "vm", "vm1"); !strings.Contains(out, "IPADDRESS") || !strings.Contains(out, ip1) {
		t.Errorf("rakhsh get vm:\n%s", out)
	}

	// Both guests got their leased addresses by DHCP.
	vmWaitSerialMatch(t, s, "vm1", ipMarker, 1)
	vmWaitSerialMatch(t, s, "vm2", ipMarker, 1)
	vmWaitSerial(t, s, "vm1", "RAKHSH-GUEST: ready", 1)
	vmWaitSerial(t, s, "vm2", "RAKHSH-GUEST: ready", 1)
	if g := guestIPs(vmLog(t, s, "vm1")); len(g) != 1 || g[0] != ip1+"/eth0" {
		t.Fatalf("vm1 guest addresses %v, want [%s/eth0]", g, ip1)
	}
	vmWaitSerialMatch(t, s, "vm2", ipMarker, 2)
	labIP := v2.Status.Networks[1].IPAddress
	if len(v2.Status.Networks) != 2 || !strings.HasPrefix(labIP, "10.68.0.") || v2.Status.Networks[1].Name != "lab" {
		t.Fatalf("vm2 networks %+v, want a second interface on lab with an address of 10.68.0.10-20", v2.Status.Networks)
	}
	g := guestIPs(vmLog(t, s, "vm2"))
	if len(g) != 2 || !contains(g, ip2+"/eth0") || !contains(g, labIP+"/eth1") {
		t.Fatalf("vm2 guest addresses %v, want %s/eth0 and %s/eth1", g, ip2, labIP)
	}
	if !strings.Contains(vmQEMUArgs(t, s.DataDir, v2.UID), "e1000,") {
		t.Errorf("vm2 has enableParavirtualization: false but its NICs are not e1000: %s", vmQEMUArgs(t, s.DataDir, v2.UID))
	}
	// The lab network's dnsmasq answers on the operator's bridge; the host reaches vm2 there.
	if network.DnsmasqPID(s.DataDir, "lab") <= 0 {
		t.Error("no dnsmasq on the Bridge network lab")
	}

	// VM to VM.
	vmConsoleType(t, s, v1.UID, "")
	vmConsoleType(t, s, v1.UID, fmt.Sprintf("ping -c 2 -W 3 %s >/dev/null && echo PING-$((40+2)) || echo PING-$((40+1))", ip2))
	netWaitLine(t, s, "vm1", "PING-42", time.Minute)
	vmConsoleType(t, s, v2.UID, "")
	vmConsoleType(t, s, v2.UID, fmt.Sprintf("ping -c 2 -W 3 %s >/dev/null && echo PONG-$((40+2)) || echo PONG-$((40+1))", ip1))
	netWaitLine(t, s, "vm2", "PONG-42", time.Minute)

	// NAT to the outside: the outside sees the host's uplink address, not the VM's. (The
	// guest's static busybox wget crashes on name-service lookups; nc speaks HTTP/1.0 fine.)
	vmConsoleType(t, s, v1.UID, fmt.Sprintf(`get() { printf 'GET %%s HTTP/1.0\r\n\r\n' "$1" | nc -w 5 %s 8080; }`, lab.OutIP))
	vmConsoleType(t, s, v1.UID, "get /nat")
	netWaitLine(t, s, "vm1", "REACHED-nat", time.Minute)
	if from, _ := outside.get("/nat"); !strings.HasPrefix(from, lab.InIP+":") {
		t.Errorf("the outside server saw %q, want the masqueraded %s", from, lab.InIP)
	}

	// A port forward: host port 20022 on the uplink reaches the guest's httpd on port 80,
	// from the outside namespace.
	vmConsoleType(t, s, v1.UID, "mkdir -p /www && echo FWD-$((6*7)) > /www/index.html && httpd -p 80 -h /www && echo HTTPD-$((1+1))")
	netWaitLine(t, s, "vm1", "HTTPD-2", 30*time.Second)
	conn, err := dialIn(t, lab.Out, lab.InIP+":20022", 10*time.Second)
	if err != nil {
		t.Fatalf("port forward %s:20022 from the outside: %v", lab.InIP, err)
	}
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(conn, "GET / HTTP/1.0\r\nHost: x\r\n\r\n")
	body, _ := io.ReadAll(conn)
	conn.Close()
	if !strings.Contains(string(body), "FWD-42") {
		t.Fatalf("port forward answered %q, want the guest's FWD-42", body)
	}
	natRules := nsRun(t, lab.In, "nft", "list", "table", "ip", "rakhsh-main")
	if !strings.Contains(natRules, "dport 20022") || strings.Contains(natRules, "dport 20080") {
		t.Errorf("NAT table of main: want the forward of 20022 and none of 20080 (the host listens there):\n%s", natRules)
	}
	if !regexp.MustCompile(`msg="port forward refused: the host already listens on its port" .*network=main hostPort=tcp/20080`).MatchString(s.Logs()) {
		t.Errorf("the serve log does not tell that the forward of 20080 was refused")
	}

	// vm2's inbound policy: port 80 is open, port 81 (also served) is not, and vm2's own
	// connection to vm1 gets its replies. (vm1 pinging vm2 above was the ICMP rule, vm2
	// pinging vm1 the echo replies passing.)
	vmConsoleType(t, s, v2.UID, "mkdir -p /www && echo IN-$((6*7)) > /www/index.html && httpd -p 80 -h /www && httpd -p 81 -h /www && echo HTTPD-$((2+2))")
	netWaitLine(t, s, "vm2", "HTTPD-4", 30*time.Second)
	probe := func(port int, okMark, closedMark string) string {
		return fmt.Sprintf(`printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 5 %s %d | grep -q IN-42 && echo %s || echo %s`, ip2, port, okMark, closedMark)
	}
	vmConsoleType(t, s, v1.UID, probe(80, "P80-$((10+1))", "P80-$((10+2))"))
	netWaitLine(t, s, "vm1", "P80-11", time.Minute)
	vmConsoleType(t, s, v1.UID, probe(81, "P81-$((10+1))", "P81-$((10+2))"))
	netWaitLine(t, s, "vm1", "P81-12", time.Minute)
	vmConsoleType(t, s, v2.UID, fmt.Sprintf(`printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 5 %s 80 | grep -q FWD-42 && echo OUT2-$((20+1)) || echo OUT2-$((20+2))`, ip1))
	netWaitLine(t, s, "vm2", "OUT2-21", time.Minute)
	// The rules are on vm2's tap: a filtered chain for it, none for vm1's.
	rules := nsRun(t, lab.In, "nft", "list", "table", "bridge", "rakhsh-main")
	if !strings.Contains(rules, "chain in-"+network.TapName(v2.UID, 0)) || strings.Contains(rules, "chain in-"+network.TapName(v1.UID, 0)) {
		t.Errorf("bridge table of main: want an inbound chain for vm2's tap only:\n%s", rules)
	}

	// What a guest cannot do to its neighbours and the host (network_attack_test.go).
	guestAttacks(t, lab, s, v1, v2)

	// Anti-spoofing. A spoofed source IP: the request never reaches the outside.
	vmConsoleType(t, s, v1.UID, fmt.Sprintf("ip addr add 10.66.0.99/24 dev eth0; ip route add %s/32 via 10.66.0.1 src 10.66.0.99", lab.OutIP))
	vmConsoleType(t, s, v1.UID, "get /spoof-ip; echo SPOOFIP-$((2+3))")
	netWaitLine(t, s, "vm1", "SPOOFIP-5", time.Minute)
	vmConsoleType(t, s, v1.UID, fmt.Sprintf("ip route del %s/32; ip addr del 10.66.0.99/24 dev eth0", lab.OutIP))
	// A spoofed source MAC: nothing reaches the gateway or the outside either.
	vmConsoleType(t, s, v1.UID, "ip link set eth0 down; ip link set eth0 address 02:00:00:00:00:99; ip link set eth0 up; ip addr add "+ip1+"/24 dev eth0 2>/dev/null; ip route add default via 10.66.0.1 2>/dev/null")
	vmConsoleType(t, s, v1.UID, "get /spoof-mac; echo SPOOFMAC-$((3+3))")
	netWaitLine(t, s, "vm1", "SPOOFMAC-6", time.Minute)
	// Back to the real MAC: the same path works again (so the silence above was the filter).
	vmConsoleType(t, s, v1.UID, "ip link set eth0 down; ip link set eth0 address "+mac1+"; ip link set eth0 up; ip addr add "+ip1+"/24 dev eth0 2>/dev/null; ip route add default via 10.66.0.1 2>/dev/null")
	vmConsoleType(t, s, v1.UID, "get /after-spoof")
	netWaitLine(t, s, "vm1", "REACHED-after-spoof", time.Minute)
	for _, p := range []string{"/spoof-ip", "/spoof-mac"} {
		if from, ok := outside.get(p); ok {
			t.Errorf("a spoofed request %s reached the outside (from %s)", p, from)
		}
	}

	// Duplicate Static IP: the second claim is refused with a clear message, and a VM
	// using it reports it.
	s.MustCLI(`apiVersion: virtualization.rakhsh.io/v1alpha1
kind: VirtualMachineIPAddress
metadata: {name: fixed-again}
spec: {type: Static, staticIP: 10.66.0.50}
`, "apply", "-f", "-")
	dup := waitIPClaim(t, s, "fixed-again", func(ip *v1alpha1.VirtualMachineIPAddress) bool {
		cd := v1alpha1.FindCondition(ip.Status.Conditions, v1alpha1.AddressConditionBound)
		return cd != nil && cd.Status == v1alpha1.ConditionFalse
	})
	cd := v1alpha1.FindCondition(dup.Status.Conditions, v1alpha1.AddressConditionBound)
	if dup.Status.Phase != v1alpha1.VirtualMachineIPAddressPhasePending || cd.Reason != "AddressInUse" ||
		!strings.Contains(cd.Message, "10.66.0.50 is already leased to VirtualMachineIPAddress default/fixed") {
		t.Fatalf("duplicate Static claim: phase %s, condition %+v", dup.Status.Phase, cd)
	}
	t.Logf("duplicate Static IP: %s: %s", cd.Reason, cd.Message)
	// A second VM asking for the same Static IP (through the refused claim) reports it on
	// its IPAddressReady condition and gets no address.
	s.MustCLI(`apiVersion: virtualization.rakhsh.io/v1alpha1
kind: VirtualMachine
metadata: {name: vm3}
spec:
  runPolicy: AlwaysOff
  cpu: {cores: 1}
  memory: {size: 192Mi}
  virtualMachineIPAddressName: fixed-again
  blockDeviceRefs:
  - {kind: VirtualDisk, name: d2}
`, "apply", "-f", "-")
	v3 := vmWait(t, s, "vm3", time.Minute, "IPAddressReady=False", func(v *v1alpha1.VirtualMachine) bool {
		if v == nil {
			return false
		}
		c := v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionIPAddressReady)
		return c != nil && c.Status == v1alpha1.ConditionFalse
	})
	c3 := v1alpha1.FindCondition(v3.Status.Conditions, v1alpha1.VMConditionIPAddressReady)
	if !strings.Contains(c3.Message, "10.66.0.50 is already leased to VirtualMachineIPAddress default/fixed") || v3.Status.IPAddress != "" {
		t.Fatalf("vm3 asking for the taken Static IP: ip %q, condition %+v", v3.Status.IPAddress, c3)
	}
	t.Logf("vm3: IPAddressReady=False %s: %s", c3.Reason, c3.Message)
	s.MustCLI("", "delete", "vm", "vm3")

	// A full pool: a network of two addresses and three claims.
	s.MustCLI(`apiVersion: virtualization.rakhsh.io/v1alpha1
kind: ClusterNetwork
metadata: {name: tiny}
spec:
  type: NAT
  subnet: 10.67.0.0/29
  dhcp: {rangeStart: 10.67.0.2, rangeEnd: 10.67.0.3}
---
apiVersion: virtualization.rakhsh.io/v1alpha1
kind: VirtualMachineIPAddress
metadata: {name: t1}
spec: {network: tiny}
---
apiVersion: virtualization.rakhsh.io/v1alpha1
kind: VirtualMachineIPAddress
metadata: {name: t2}
spec: {network: tiny}
`, "apply", "-f", "-")
	for _, n := range []string{"t1", "t2"} {
		waitIPClaim(t, s, n, func(ip *v1alpha1.VirtualMachineIPAddress) bool { return ip.Status.Address != "" })
	}
	s.MustCLI(`apiVersion: virtualization.rakhsh.io/v1alpha1
kind: VirtualMachineIPAddress
metadata: {name: t3}
spec: {network: tiny}
`, "apply", "-f", "-")
	full := waitIPClaim(t, s, "t3", func(ip *v1alpha1.VirtualMachineIPAddress) bool {
		cd := v1alpha1.FindCondition(ip.Status.Conditions, v1alpha1.AddressConditionBound)
		return cd != nil && cd.Status == v1alpha1.ConditionFalse
	})
	cd = v1alpha1.FindCondition(full.Status.Conditions, v1alpha1.AddressConditionBound)
	if cd.Reason != "PoolExhausted" || !strings.Contains(cd.Message, `the address pool of ClusterNetwork "tiny" is exhausted: all 2 addresses of 10.67.0.2-10.67.0.3 are leased`) {
		t.Fatalf("full pool: condition %+v", cd)
	}
	t.Logf("full pool: %s: %s", cd.Reason, cd.Message)

	// Stop and start: the same MAC and IP, by DHCP again. The serial log outlives a stop, so
	// the new boot's lines are the ones past what the log held before it.
	bootsBefore := strings.Count(vmLog(t, s, "vm1"), "RAKHSH-GUEST: ready")
	leasesBefore := strings.Count(vmLog(t, s, "vm1"), "RAKHSH-GUEST: ip=")
	s.MustCLI("", "vm", "stop", "vm1", "--wait")
	s.MustCLI("", "vm", "start", "vm1", "--wait")
	vmWaitSerial(t, s, "vm1", "RAKHSH-GUEST: ready", bootsBefore+1)
	v1b := vmWait(t, s, "vm1", time.Minute, "Running", vmPhase(v1alpha1.VMPhaseRunning))
	if v1b.Status.Networks[0].MACAddress != mac1 || v1b.Status.IPAddress != ip1 {
		t.Fatalf("after stop/start: %s %s, want %s %s", v1b.Status.Networks[0].MACAddress, v1b.Status.IPAddress, mac1, ip1)
	}
	vmWaitSerial(t, s, "vm1", "RAKHSH-GUEST: ip=", leasesBefore+1)
	if g := guestIPs(vmLog(t, s, "vm1")); len(g) != leasesBefore+1 || g[len(g)-1] != ip1+"/eth0" {
		t.Fatalf("after stop/start the guest got %v, want %s", g, ip1)
	}

	// A serve restart: the VMs keep running and talking, nothing is rebuilt.
	tap1 := network.TapName(v1b.UID, 0)
	dnsPID := network.DnsmasqPID(s.DataDir, "main")
	if dnsPID <= 0 || !nsLinkExists(lab.In, tap1) || !nsLinkExists(lab.In, "rk-main") {
		t.Fatalf("before the restart: dnsmasq pid %d, tap %s exists %v", dnsPID, tap1, nsLinkExists(lab.In, tap1))
	}
	// Least privilege: the leases, DNS and traffic above came from a dnsmasq and QEMUs that
	// run as unprivileged users.
	requireRunsAs(t, "dnsmasq of main", dnsPID, dnsmasqUser)
	qpids := testutil.QEMUPIDs(s.DataDir)
	if len(qpids) < 2 {
		t.Fatalf("QEMU processes %v, want those of vm1 and vm2", qpids)
	}
	for uid, pid := range qpids {
		requireRunsAs(t, "QEMU of "+uid, pid, qemuUser)
	}
	s.Stop()
	if !nsLinkExists(lab.In, tap1) || network.DnsmasqPID(s.DataDir, "main") != dnsPID {
		t.Fatal("stopping serve took down the tap or dnsmasq of a running VM")
	}
	lab.restartServe(s)
	// The re-adopted VM's console socket comes back when the agent has attached to it.
	sock := filepath.Join(storage.VMRunDir(s.DataDir, v1b.UID), "console.sock")
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			break
		}
	}
	// The first characters typed right after the agent re-attaches the console may be lost:
	// type until the answer comes.
	again := fmt.Sprintf("ping -c 2 -W 3 %s >/dev/null && echo AGAIN-$((40+2)) || echo AGAIN-$((40+1))", ip2)
	for i := 0; i < 3 && !hasLine(vmLog(t, s, "vm1"), "AGAIN-42"); i++ {
		vmConsoleType(t, s, v1b.UID, "")
		vmConsoleType(t, s, v1b.UID, again)
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline) && !hasLine(vmLog(t, s, "vm1"), "AGAIN-42"); {
			time.Sleep(500 * time.Millisecond)
		}
	}
	netWaitLine(t, s, "vm1", "AGAIN-42", time.Second)
	time.Sleep(2 * time.Second) // let the restarted agent's first network resync run
	if p := network.DnsmasqPID(s.DataDir, "main"); p != dnsPID {
		t.Errorf("dnsmasq pid %d after the restart, want the re-adopted %d", p, dnsPID)
	}
	// Drift: the anti-spoofing table deleted and the tap taken off the bridge behind the
	// agent's back are repaired by its periodic resync, and traffic flows again.
	run(t, "ip", "netns", "exec", lab.In, "nft", "delete", "table", "bridge", "rakhsh-main")
	run(t, "ip", "-n", lab.In, "link", "set", tap1, "nomaster")
	repaired := false
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline) && !repaired; time.Sleep(500 * time.Millisecond) {
		out, _ := exec.Command("ip", "-n", lab.In, "-o", "link", "show", tap1).Output()
		tables := exec.Command("ip", "netns", "exec", lab.In, "nft", "list", "table", "bridge", "rakhsh-main").Run() == nil
		repaired = tables && strings.Contains(string(out), "master rk-main")
	}
	if !repaired {
		t.Fatal("the agent did not repair the deleted table and the detached tap within a minute")
	}
	vmConsoleType(t, s, v1b.UID, fmt.Sprintf("ping -c 2 -W 3 %s >/dev/null && echo REPAIRED-$((40+2)) || echo REPAIRED-$((40+1))", ip2))
	netWaitLine(t, s, "vm1", "REPAIRED-42", time.Minute)
	if !strings.Contains(s.Logs(), "nftables drift repaired") {
		t.Error("the serve log does not tell of the repair")
	}

	v1c := vmGet(t, s, "vm1")
	if v1c.Status.Networks[0].MACAddress != mac1 || v1c.Status.IPAddress != ip1 {
		t.Fatalf("after the restart: %s %s, want %s %s", v1c.Status.Networks[0].MACAddress, v1c.Status.IPAddress, mac1, ip1)
	}
	if !strings.Contains(s.Logs(), "network") {
		t.Log("no network log lines")
	}

	// Deleting the VMs frees their automatic claims; the Static claim stays.
	s.MustCLI("", "delete", "vm", "vm1", "vm2", "--wait", "--timeout", "90s")
	waitGone(t, s, "virtualmachineipaddresses", "vm1")
	if err := c.Get(ctx, "virtualmachineipaddresses", "default", "fixed", &v1alpha1.VirtualMachineIPAddress{}); err != nil {
		t.Errorf("the Static claim fixed: %v", err)
	}
	// Their leases are Released, not deleted: the MAC is not handed out again before the
	// reuse delay.
	macLease, _ := v1alpha1.MACLeaseName(mac1)
	var ml v1alpha1.VirtualMachineMACAddressLease
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
		ml = v1alpha1.VirtualMachineMACAddressLease{}
		if err := c.Get(ctx, "virtualmachinemacaddressleases", "", macLease, &ml); err == nil && ml.Status.Phase == v1alpha1.LeasePhaseReleased {
			break
		}
	}
	if ml.Status.Phase != v1alpha1.LeasePhaseReleased || ml.Spec.VirtualMachineMACAddressRef != nil {
		t.Errorf("MAC lease %s of the deleted vm1: %+v, want Released without a claim", macLease, ml)
	}
	// With no VM left the host side of main goes away.
	deadline := time.Now().Add(time.Minute)
	for nsLinkExists(lab.In, "rk-main") && time.Now().Before(deadline) {
		time.Sleep(500 * time.Millisecond)
	}
	if nsLinkExists(lab.In, "rk-main") || nsLinkExists(lab.In, tap1) {
		t.Errorf("bridge or tap left after the last VM was deleted")
	}
	if !nsLinkExists(lab.In, "br-lab") {
		t.Errorf("the operator's bridge br-lab was removed with the network lab")
	}
	if network.DnsmasqPID(s.DataDir, "lab") > 0 {
		t.Errorf("the dnsmasq of the unused network lab still runs")
	}
}

func waitIPClaim(t *testing.T, s *Serve, name string, cond func(*v1alpha1.VirtualMachineIPAddress) bool) *v1alpha1.VirtualMachineIPAddress {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	var ip v1alpha1.VirtualMachineIPAddress
	for time.Now().Before(deadline) {
		if err := s.Client().Get(context.Background(), "virtualmachineipaddresses", "default", name, &ip); err == nil && cond(&ip) {
			return &ip
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("VirtualMachineIPAddress %s: condition not reached in a minute: %+v", name, ip.Status)
	return nil
}

func waitGone(t *testing.T, s *Serve, resource, name string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		err := s.Client().Get(context.Background(), resource, "default", name, &struct{}{})
		if client.IsNotFound(err) {
			return
		}
		time.Sleep(300 * time.Millisecond)
	}
	t.Fatalf("%s %s still exists after a minute", resource, name)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// vmQEMUArgs is the command line of the VM's QEMU.
func vmQEMUArgs(t *testing.T, dataDir, uid string) string {
	t.Helper()
	pid := testutil.QEMUPIDs(dataDir)[uid]
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		t.Fatalf("QEMU of %s: %v", uid, err)
	}
	return strings.ReplaceAll(string(b), "\x00", " ")
}
