package network

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Host is one static DHCP entry: the NIC with MAC always gets IP.
type Host struct {
	MAC      string
	IP       netip.Addr
	Hostname string // a DNS label or ""
}

// dnsmasqInput is what the dnsmasq of one network is configured from.
type dnsmasqInput struct {
	Dir        string // state directory of the network
	Bridge     string
	Subnet     netip.Prefix
	Gateway    netip.Addr // announced router; invalid: none
	DNS        []netip.Addr
	LeaseTime  time.Duration
	MTU        int
	Upstreams  []string // resolvers dnsmasq forwards to; none: it answers local names only
	ListenAddr netip.Addr
	User       string // the user dnsmasq drops to after binding; "" or "root": it stays root
	// HostsFile is the dhcp-hostsfile with the static leases; default Dir/dnsmasqHosts. An
	// unprivileged dnsmasq reads it (at start and on SIGHUP) after dropping privileges, so
	// it lives where that user may read it (Manager.hostsPath).
	HostsFile string
	// Group is the group dnsmasq drops to with User: the one its hosts file is readable by
	// (dnsmasq's own default is "dip"). Empty: dnsmasq's default.
	Group string
}

const (
	dnsmasqConf  = "dnsmasq.conf"
	dnsmasqPid   = "dnsmasq.pid"
	dnsmasqHosts = "dhcp-hosts"
	dnsmasqLease = "dnsmasq.leases"
	dnsmasqLog   = "dnsmasq.log"
)

// dnsmasqConfig returns the configuration file. Addresses are only handed out to the MACs
// in the hosts file ("static" range), so an unknown NIC never takes an address of the
// pool: the address a VM gets is always its VirtualMachineIPAddress.
func dnsmasqConfig(in dnsmasqInput) string {
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	w("# Written by rakhsh; rewritten on every change.")
	w("interface=%s", in.Bridge)
	w("bind-interfaces")
	w("except-interface=lo")
	w("no-resolv")
	w("no-hosts")
	w("no-poll")
	// dnsmasq reads this file and opens its pid, lease and log files as root, then drops to
	// this user (keeping only the capabilities DHCP needs). It opens no path under the
	// root-only data directory afterwards: the lease file is rewritten through the descriptor
	// it opened. The dhcp-hostsfile is read after the drop (and again on SIGHUP), so an
	// unprivileged dnsmasq's lives in a directory of its group outside the data directory.
	user := in.User
	if user == "" {
		user = "root"
	}
	w("user=%s", user)
	if in.Group != "" && user != "root" {
		w("group=%s", in.Group)
	}
	for _, u := range in.Upstreams {
		w("server=%s", u)
	}
	w("pid-file=%s", filepath.Join(in.Dir, dnsmasqPid))
	w("dhcp-leasefile=%s", filepath.Join(in.Dir, dnsmasqLease))
	hostsFile := in.HostsFile
	if hostsFile == "" {
		hostsFile = filepath.Join(in.Dir, dnsmasqHosts)
	}
	w("dhcp-hostsfile=%s", hostsFile)
	w("log-facility=%s", filepath.Join(in.Dir, dnsmasqLog))
	w("dhcp-authoritative")
	lt := int(in.LeaseTime / time.Second)
	if lt < 120 {
		lt = 3600
	}
	w("dhcp-range=%s,static,%s,%d", in.Subnet.Masked().Addr(), maskOf(in.Subnet), lt)
	if in.Gateway.IsValid() {
		w("dhcp-option=option:router,%s", in.Gateway)
	} else {
		w("dhcp-option=option:router")
	}
	if len(in.DNS) > 0 {
		s := make([]string, len(in.DNS))
		for i, d := range in.DNS {
			s[i] = d.String()
		}
		w("dhcp-option=option:dns-server,%s", strings.Join(s, ","))
	}
	if in.MTU > 0 {
		w("dhcp-option=option:mtu,%d", in.MTU)
	}
	return b.String()
}

// hostsFile returns the dhcp-hostsfile: "mac,ip[,hostname]" per line, sorted.
func hostsFile(hosts []Host) string {
	lines := hostLines(hosts)
	if len(lines) == 0 {
		return ""
	}
	return strings.Join(lines, "\n") + "\n"
}

// hostLines returns "mac,ip[,hostname]" per host, sorted.
func hostLines(hosts []Host) []string {
	lines := make([]string, 0, len(hosts))
	for _, h := range hosts {
		// A line ends an entry (and, as dhcp-host, a configuration option): an entry that
		// could carry one is left out.
		if !safeHostField(h.MAC) || !safeHostField(h.Hostname) || !h.IP.IsValid() {
			continue
		}
		l := h.MAC + "," + h.IP.String()
		if h.Hostname != "" && !dhcpHostKeyword(h.Hostname) {
			l += "," + h.Hostname
		}
		lines = append(lines, l)
	}
	sort.Strings(lines)
	return lines
}

// dhcpHostKeyword says whether dnsmasq would read name, in a dhcp-host entry, as something
// other than a host name: "ignore" (no DHCP at all), "infinite" or a lease time (3600, 1h).
// Such a VM gets its address without a name.
func dhcpHostKeyword(name string) bool {
	n := strings.ToLower(name)
	if n == "ignore" || n == "infinite" {
		return true
	}
	n = strings.TrimRight(n, "smhdw")
	if n == "" || len(strings.TrimRight(n, "0123456789")) != 0 {
		return false
	}
	return true
}

// safeHostField says s has only the characters of a MAC or a DNS label.
func safeHostField(s string) bool {
	for _, r := range s {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r == ':' || r == '-' || r == '.') {
			return false
		}
	}
	return true
}

func maskOf(p netip.Prefix) string {
	bits := p.Bits()
	m := uint32(0xffffffff) << (32 - bits)
	if bits == 0 {
		m = 0
	}
	return fmt.Sprintf("%d.%d.%d.%d", byte(m>>24), byte(m>>16), byte(m>>8), byte(m))
}

// writeIfChanged writes data to path atomically and reports whether the content changed.
func writeIfChanged(path string, data []byte) (bool, error) {
	old, err := os.ReadFile(path)
	if err == nil && bytes.Equal(old, data) {
		return false, nil
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return false, err
	}
	return true, os.Rename(tmp, path)
}

// dnsmasqPID returns the pid of the dnsmasq serving the network whose state is in dir, or 0.
// A pid counts only when the process is a dnsmasq started with this directory's
// configuration, so a recycled pid is never signalled.
func dnsmasqPID(dir string) int {
	data, err := os.ReadFile(filepath.Join(dir, dnsmasqPid))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return 0
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return 0
	}
	want := "--conf-file=" + filepath.Join(dir, dnsmasqConf)
	for _, arg := range strings.Split(string(cmdline), "\x00") {
		if arg == want {
			return pid
		}
	}
	return 0
}

// dnsmasqShareDir holds, per network of each data dir, the hosts file of an unprivileged
// dnsmasq: /run/rakhsh-dnsmasq/HASH/hosts, the directory 0750 and the file 0640, both root's
// and of the dnsmasq user's group.
var dnsmasqShareDir = "/run/rakhsh-dnsmasq"

// hostsPath returns the hosts file of the dnsmasq of the network whose state is in dir, and
// the group that must read it (-1: root's own, in dir).
func (m *Manager) hostsPath(dir string) (string, int, error) {
	if m.cfg.DnsmasqUser == "" || m.cfg.DnsmasqUser == "root" {
		return filepath.Join(dir, dnsmasqHosts), -1, nil
	}
	u, err := user.Lookup(m.cfg.DnsmasqUser)
	if err != nil {
		return "", 0, fmt.Errorf("the dnsmasq user: %w", err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return "", 0, fmt.Errorf("the dnsmasq user's group %q: %w", u.Gid, err)
	}
	sum := sha256.Sum256([]byte(dir))
	share := filepath.Join(dnsmasqShareDir, hex.EncodeToString(sum[:8]))
	if err := os.MkdirAll(dnsmasqShareDir, 0o755); err != nil {
		return "", 0, err
	}
	if err := os.Mkdir(share, 0o750); err != nil && !os.IsExist(err) {
		return "", 0, err
	}
	if err := os.Chown(share, 0, gid); err != nil {
		return "", 0, err
	}
	if err := os.Chmod(share, 0o750); err != nil {
		return "", 0, err
	}
	return filepath.Join(share, dnsmasqHosts), gid, nil
}

// removeShare removes the hosts directory of the network whose state is in dir.
func removeShare(dir string) {
	sum := sha256.Sum256([]byte(dir))
	_ = os.RemoveAll(filepath.Join(dnsmasqShareDir, hex.EncodeToString(sum[:8])))
}

// DnsmasqPID returns the pid of the dnsmasq of a network (0 when none runs). Tests use it to
// stop the daemons their `rakhsh serve` left behind.
func DnsmasqPID(dataDir, network string) int { return dnsmasqPID(stateDir(dataDir, network)) }

// startDnsmasq starts dnsmasq as a daemon (it forks and leaves this process's session, so it
// outlives `rakhsh serve`) and waits for its pid file.
func (m *Manager) startDnsmasq(ctx context.Context, dir string) (int, error) {
	_ = os.Remove(filepath.Join(dir, dnsmasqPid))
	cmd := exec.CommandContext(ctx, m.dnsmasqBin, "--conf-file="+filepath.Join(dir, dnsmasqConf))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("starting dnsmasq: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	for i := 0; i < 100; i++ {
		if pid := dnsmasqPID(dir); pid > 0 {
			return pid, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return 0, errors.New("dnsmasq started but wrote no pid file")
}

// stopDnsmasq ends the network's dnsmasq (if it runs) and waits for it to go.
func stopDnsmasq(dir string) {
	pid := dnsmasqPID(dir)
	if pid <= 0 {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	for i := 0; i < 100 && dnsmasqPID(dir) == pid; i++ {
		time.Sleep(20 * time.Millisecond)
	}
	if dnsmasqPID(dir) == pid {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}
