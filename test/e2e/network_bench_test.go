package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/internal/storage"
)

// TestNetworkBenchFirstLease measures the time from creating a VM to the guest's first DHCP
// lease (its "RAKHSH-GUEST: ip=" line), with Rakhsh (`--vm-networking host`) and with the
// same guest booted by hand on a plain bridge with dnsmasq, in alternating rounds. It only
// prints figures (docs/benchmarks.md records them) and runs when RAKHSH_NET_BENCH=1, since
// it boots six guests one after the other.
func TestNetworkBenchFirstLease(t *testing.T) {
	if os.Getenv("RAKHSH_NET_BENCH") != "1" {
		t.Skip("a benchmark: run with RAKHSH_NET_BENCH=1 go test ./test/e2e -run TestNetworkBenchFirstLease -v")
	}
	dir := vmGuestDir(t)
	lab := newNetnsLab(t)
	base := serveGuestIn(t, lab.In, dir)
	s := lab.startServeIn(t, "--vm-networking", "host", "--no-upstream-dns")
	const rounds = 3
	m := cviDoc("guest", httpSource(base+"/guest.qcow2"))
	for i := 0; i < rounds; i++ {
		m += "---\n" + vmDiskManifest(fmt.Sprintf("b%d", i))
	}
	s.MustCLI(m, "apply", "-f", "-")
	for i := 0; i < rounds; i++ {
		s.MustCLI("", "wait", "vd", fmt.Sprintf("b%d", i), "--for", "phase=Ready", "--timeout", "2m")
	}

	// The hand-made side: a bridge, dnsmasq with one static host, a tap, plain QEMU.
	bare := t.TempDir()
	run(t, "ip", "-n", lab.In, "link", "add", "br-bare", "type", "bridge")
	run(t, "ip", "-n", lab.In, "addr", "add", "10.70.0.1/24", "dev", "br-bare")
	run(t, "ip", "-n", lab.In, "link", "set", "br-bare", "up")
	run(t, "ip", "-n", lab.In, "tuntap", "add", "dev", "tap-bare", "mode", "tap")
	run(t, "ip", "-n", lab.In, "link", "set", "tap-bare", "master", "br-bare", "up")
	const bareMAC = "02:00:00:70:00:02"
	dns := exec.Command("ip", "netns", "exec", lab.In, "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
		"--interface=br-bare", "--bind-interfaces", "--except-interface=lo", "--user=root",
		"--dhcp-range=10.70.0.0,static,255.255.255.0,1h", "--dhcp-host="+bareMAC+",10.70.0.2",
		"--dhcp-leasefile="+filepath.Join(bare, "leases"), "--pid-file="+filepath.Join(bare, "pid"))
	if err := dns.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dns.Process.Kill(); _ = dns.Wait() })

	var rk, hand []time.Duration
	for i := 0; i < rounds; i++ {
		measure := []func(){
			func() { rk = append(rk, rakhshFirstLease(t, s, i)) },
			func() { hand = append(hand, bareFirstLease(t, lab, s.DataDir, bare, bareMAC, i)) },
		}
		if i%2 == 1 {
			measure[0], measure[1] = measure[1], measure[0]
		}
		for _, f := range measure {
			f()
			time.Sleep(2 * time.Second)
		}
	}
	t.Logf("create → first DHCP lease, Rakhsh: %v (p50 %v)", rk, p50(rk))
	t.Logf("exec → first DHCP lease, by hand:  %v (p50 %v)", hand, p50(hand))
	t.Logf("overhead p50: %v", p50(rk)-p50(hand))
}

func p50(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[(len(s)-1)/2]
}

// rakhshFirstLease creates a VM on disk b<i> and returns the time until its serial log has
// the DHCP marker; the VM is deleted afterwards (untimed).
func rakhshFirstLease(t *testing.T, s *Serve, i int) time.Duration {
	t.Helper()
	name := fmt.Sprintf("bench%d", i)
	start := time.Now()
	s.MustCLI(netVMManifest(name, fmt.Sprintf("b%d", i), ""), "apply", "-f", "-")
	var uid string
	for uid == "" && time.Since(start) < time.Minute {
		if v := vmGet(t, s, name); v != nil {
			uid = v.UID
		}
	}
	logPath := filepath.Join(storage.VMRunDir(s.DataDir, uid), "serial.log")
	d := waitFileMarker(t, logPath, "RAKHSH-GUEST: ip=", start)
	s.MustCLI("", "delete", "vm", name, "--wait", "--timeout", "90s")
	return d
}

// bareFirstLease boots a copy of disk b<i>'s image by hand on the plain bridge.
func bareFirstLease(t *testing.T, lab *netnsLab, dataDir, dir, mac string, i int) time.Duration {
	t.Helper()
	disk := filepath.Join(dir, fmt.Sprintf("bare%d.qcow2", i))
	guest := filepath.Join(vmGuestDir(t), "guest.qcow2")
	abs, _ := filepath.Abs(guest)
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", abs, disk, "1G")
	serial := filepath.Join(dir, fmt.Sprintf("serial%d.log", i))
	start := time.Now()
	cmd := exec.Command("nsenter", "--net=/run/netns/"+lab.In, "qemu-system-x86_64", "-machine", "q35", "-accel", "tcg",
		"-m", "192", "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none",
		"-serial", "file:"+serial, "-drive", "file="+disk+",if=virtio,format=qcow2",
		"-netdev", "tap,id=n0,ifname=tap-bare,script=no,downscript=no", "-device", "virtio-net-pci,netdev=n0,mac="+mac)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	return waitFileMarker(t, serial, "RAKHSH-GUEST: ip=", start)
}

func waitFileMarker(t *testing.T, path, marker string, start time.Time) time.Duration {
	t.Helper()
	for time.Since(start) < 3*time.Minute {
		if b, err := os.ReadFile(path); err == nil && strings.Contains(string(b), marker) {
			return time.Since(start)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: no %q within 3 minutes", path, marker)
	return 0
}
