package e2e

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/testutil"
)

// guestAttacks runs inside TestNetworkNAT, on its running VMs: vm1 (unfiltered, on main) is
// the attacker, vm2 (with an inbound policy) and a neighbour namespace plugged into main's
// bridge are the victims. It shows what a guest with no API access cannot do to the network
// and the host:
//   - a rogue DHCP server in vm1 answers a neighbour's DISCOVER, and no OFFER of it reaches the
//     bridge;
//   - vm1 cannot reach a TCP service the host runs on every address, through the gateway;
//   - vm1 cannot reach 169.254.169.254 (a server in the outside namespace listens there, and the
//     host itself reaches it);
//   - UDP from source port 53 does not reach a closed port of the filtered vm2 (which would
//     answer ICMP port unreachable), while it does reach the unfiltered vm1.
func guestAttacks(t *testing.T, lab *netnsLab, s *Serve, v1, v2 *v1alpha1.VirtualMachine) {
	ip1, ip2 := v1.Status.IPAddress, v2.Status.IPAddress

	// A neighbour: a namespace with a veth port on main's bridge, outside any VM port's rules.
	nb := "rk-nb" + strings.TrimPrefix(lab.In, "rk-in")
	run(t, "ip", "netns", "add", nb)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", nb).Run() })
	run(t, "ip", "-n", lab.In, "link", "add", "rkvnb", "type", "veth", "peer", "name", "nb0", "netns", nb)
	run(t, "ip", "-n", lab.In, "link", "set", "rkvnb", "master", "rk-main", "up")
	run(t, "ip", "-n", nb, "addr", "add", "10.66.0.250/24", "dev", "nb0")
	run(t, "ip", "-n", nb, "link", "set", "nb0", "up")
	run(t, "ip", "-n", nb, "link", "set", "lo", "up")
	run(t, "ip", "-n", nb, "route", "add", "default", "via", "10.66.0.1")

	// 1. Rogue DHCP: vm1 runs busybox udhcpd on eth0, announcing itself as router and DNS.
	vmConsoleType(t, s, v1.UID, "")
	vmConsoleType(t, s, v1.UID, fmt.Sprintf(`printf 'interface eth0\nstart 10.66.0.200\nend 10.66.0.210\nlease_file /tmp/udhcpd.leases\noption router %s\noption dns %s\n' > /tmp/udhcpd.conf && touch /tmp/udhcpd.leases && udhcpd /tmp/udhcpd.conf && pidof udhcpd >/dev/null && echo ROGUE-$((5+5))`, ip1, ip1))
	netWaitLine(t, s, "vm1", "ROGUE-10", 30*time.Second)
	offers := dhcpDiscover(t, nb, 8*time.Second)
	for _, o := range offers {
		t.Logf("the neighbour got a DHCP OFFER from %s (server id %s)", o.from, o.serverID)
		if o.from == ip1 || o.serverID == ip1 {
			t.Errorf("a rogue DHCP OFFER of vm1 (%s) reached the neighbour: %+v", ip1, o)
		}
	}
	vmConsoleType(t, s, v1.UID, "kill $(pidof udhcpd)")

	// 2. A host service on every address (as sshd, the API or a plaintext etcd would be).
	var accepted atomic.Int32
	hln := listenIn(t, lab.In, "0.0.0.0:7777")
	go func() {
		for {
			c, err := hln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	if c, err := dialIn(t, lab.Out, lab.InIP+":7777", 5*time.Second); err != nil {
		t.Fatalf("control: the host service is not reachable from the outside: %v", err)
	} else {
		c.Close()
	}
	for deadline := time.Now().Add(5 * time.Second); accepted.Load() == 0 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	if accepted.Load() != 1 {
		t.Fatalf("control: the host service accepted %d connections, want 1", accepted.Load())
	}
	vmConsoleType(t, s, v1.UID, "echo x | nc -w 3 10.66.0.1 7777 >/dev/null 2>&1 && echo HOSTTCP-$((1+1)) || echo HOSTTCP-$((1+2))")
	netWaitLine(t, s, "vm1", "HOSTTCP-3", 30*time.Second)
	if n := accepted.Load(); n != 1 {
		t.Errorf("vm1 reached a host service through the gateway (%d connections)", n-1)
	}

	// 3. The cloud metadata address, served beyond the uplink.
	run(t, "ip", "-n", lab.Out, "addr", "add", "169.254.169.254/32", "dev", "lo")
	meta := &outsideServer{seen: map[string]string{}}
	mln := listenIn(t, lab.Out, "169.254.169.254:80")
	go func() { _ = http.Serve(mln, meta) }()
	if c, err := dialIn(t, lab.In, "169.254.169.254:80", 5*time.Second); err != nil {
		t.Fatalf("control: the host does not reach the metadata server: %v", err)
	} else {
		c.Close()
	}
	vmConsoleType(t, s, v1.UID, `printf 'GET /metadata HTTP/1.0\r\n\r\n' | nc -w 5 169.254.169.254 80; echo META-$((3+4))`)
	netWaitLine(t, s, "vm1", "META-7", 30*time.Second)
	if from, ok := meta.get("/metadata"); ok {
		t.Errorf("vm1 reached 169.254.169.254 (seen from %s)", from)
	}
	if hasLine(vmLog(t, s, "vm1"), "REACHED-metadata") {
		t.Error("vm1 read the metadata server's answer")
	}

	// 4. UDP from source port 53 to a closed port: the unfiltered vm1 answers with ICMP port
	// unreachable (the control), the filtered vm2 never sees it.
	if got := udpProbeFrom53(t, nb, ip1); !errors.Is(got, syscall.ECONNREFUSED) {
		t.Fatalf("control: UDP from port 53 to vm1's closed port: %v, want connection refused (ICMP port unreachable)", got)
	}
	if got := udpProbeFrom53(t, nb, ip2); errors.Is(got, syscall.ECONNREFUSED) {
		t.Errorf("UDP from port 53 of a neighbour reached a closed port of the filtered vm2")
	}
}

type dhcpOffer struct{ from, serverID string }

// dhcpDiscover broadcasts a DHCP DISCOVER from the namespace's nb0 and returns the OFFERs it
// gets within wait.
func dhcpDiscover(t *testing.T, ns string, wait time.Duration) []dhcpOffer {
	t.Helper()
	var conn *net.UDPConn
	var mac net.HardwareAddr
	var err error
	testutil.InNetns(t, ns, func() {
		var ifc *net.Interface
		if ifc, err = net.InterfaceByName("nb0"); err != nil {
			return
		}
		mac = ifc.HardwareAddr
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			_ = c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_BROADCAST, 1)
			})
			return serr
		}}
		var pc net.PacketConn
		if pc, err = lc.ListenPacket(t.Context(), "udp4", "0.0.0.0:68"); err == nil {
			conn = pc.(*net.UDPConn)
		}
	})
	if err != nil {
		t.Fatalf("DHCP client socket in %s: %v", ns, err)
	}
	defer conn.Close()
	const xid = 0x52414b48
	p := make([]byte, 300)
	p[0], p[1], p[2] = 1, 1, 6 // BOOTREQUEST, Ethernet, 6-byte address
	binary.BigEndian.PutUint32(p[4:], xid)
	binary.BigEndian.PutUint16(p[10:], 0x8000) // answer by broadcast
	copy(p[28:], mac)
	copy(p[236:], []byte{99, 130, 83, 99, 53, 1, 1, 255}) // magic cookie, DISCOVER, end
	if _, err := conn.WriteToUDP(p, &net.UDPAddr{IP: net.IPv4bcast, Port: 67}); err != nil {
		t.Fatalf("sending a DHCP DISCOVER: %v", err)
	}
	var out []dhcpOffer
	buf := make([]byte, 1500)
	_ = conn.SetReadDeadline(time.Now().Add(wait))
	for {
		n, from, err := conn.ReadFromUDP(buf)
		if err != nil {
			return out
		}
		r := buf[:n]
		if n < 240 || r[0] != 2 || binary.BigEndian.Uint32(r[4:]) != xid || !bytes.Equal(r[236:240], []byte{99, 130, 83, 99}) {
			continue
		}
		o := dhcpOffer{from: from.IP.String()}
		for i := 240; i+1 < n && r[i] != 255; {
			if r[i] == 0 {
				i++
				continue
			}
			l := int(r[i+1])
			if r[i] == 54 && l == 4 && i+6 <= n {
				o.serverID = net.IP(r[i+2 : i+6]).String()
			}
			i += 2 + l
		}
		out = append(out, o)
	}
}

// udpProbeFrom53 sends a datagram from the namespace's 10.66.0.250 port 53 to port 9 of ip
// and returns what reading the answer gives: ECONNREFUSED when ICMP port unreachable came back,
// a timeout when nothing did.
func udpProbeFrom53(t *testing.T, ns, ip string) error {
	t.Helper()
	var conn *net.UDPConn
	var err error
	testutil.InNetns(t, ns, func() {
		conn, err = net.DialUDP("udp4", &net.UDPAddr{IP: net.ParseIP("10.66.0.250"), Port: 53}, &net.UDPAddr{IP: net.ParseIP(ip), Port: 9})
	})
	if err != nil {
		t.Fatalf("UDP socket on port 53 in %s: %v", ns, err)
	}
	defer conn.Close()
	var last error
	for range 3 {
		if _, err := conn.Write([]byte("probe")); err != nil {
			last = err
		} else {
			_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
			_, last = conn.Read(make([]byte, 64))
		}
		if errors.Is(last, syscall.ECONNREFUSED) {
			return last
		}
	}
	return last
}
