package network

import (
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/rakhsh/rakhsh/internal/testutil"
)

func TestDnsmasqConfigUser(t *testing.T) {
	base := dnsmasqInput{Dir: "/d", Bridge: "rk-main", Subnet: netip.MustParsePrefix("10.0.0.0/24"), Gateway: netip.MustParseAddr("10.0.0.1")}
	for _, tc := range []struct{ user, want string }{
		{"dnsmasq", "user=dnsmasq\n"},
		{"rakhsh-dns", "user=rakhsh-dns\n"},
		{"root", "user=root\n"},
		{"", "user=root\n"},
	} {
		in := base
		in.User = tc.user
		c := dnsmasqConfig(in)
		if !strings.Contains(c, "\n"+tc.want) || strings.Count(c, "\nuser=") != 1 {
			t.Errorf("user %q: config lacks %q:\n%s", tc.user, tc.want, c)
		}
	}
}

func TestDnsmasqConfigHosts(t *testing.T) {
	hosts := []Host{
		{MAC: "02:00:00:00:00:02", IP: netip.MustParseAddr("10.0.0.2"), Hostname: "vm2"},
		{MAC: "02:00:00:00:00:01", IP: netip.MustParseAddr("10.0.0.1")},
		{MAC: "02:00:00:00:00:03", IP: netip.MustParseAddr("10.0.0.3"), Hostname: "x\ndhcp-script=/bin/sh"},
	}
	hosts = append(hosts, Host{MAC: "02:00:00:00:00:04", IP: netip.MustParseAddr("10.0.0.4"), Hostname: "ignore"},
		Host{MAC: "02:00:00:00:00:05", IP: netip.MustParseAddr("10.0.0.5"), Hostname: "3600"},
		Host{MAC: "02:00:00:00:00:06", IP: netip.MustParseAddr("10.0.0.6"), Hostname: "1h"},
		Host{MAC: "02:00:00:00:00:07", IP: netip.MustParseAddr("10.0.0.7"), Hostname: "h1"})
	if got, want := hostsFile(hosts), "02:00:00:00:00:01,10.0.0.1\n02:00:00:00:00:02,10.0.0.2,vm2\n"+
		"02:00:00:00:00:04,10.0.0.4\n02:00:00:00:00:05,10.0.0.5\n02:00:00:00:00:06,10.0.0.6\n02:00:00:00:00:07,10.0.0.7,h1\n"; got != want {
		t.Errorf("hosts file %q, want %q (an entry that could carry a line is left out; a name dnsmasq reads as a keyword or lease time is dropped)", got, want)
	}
	in := dnsmasqInput{Dir: "/d", Bridge: "rk-main", Subnet: netip.MustParsePrefix("10.0.0.0/24"), User: "dnsmasq", Group: "nogroup", HostsFile: "/run/rakhsh-dnsmasq/ab/dhcp-hosts"}
	if c := dnsmasqConfig(in); !strings.Contains(c, "\ndhcp-hostsfile=/run/rakhsh-dnsmasq/ab/dhcp-hosts\n") || !strings.Contains(c, "\ngroup=nogroup\n") {
		t.Errorf("config does not name its hosts file and the group that reads it:\n%s", c)
	}
	in.User, in.HostsFile = "root", ""
	if c := dnsmasqConfig(in); !strings.Contains(c, "\ndhcp-hostsfile=/d/dhcp-hosts\n") {
		t.Errorf("root config does not use the hosts file in its state dir:\n%s", c)
	}
}

// TestHostsPathShared: an unprivileged dnsmasq reads its hosts file (at start and on SIGHUP)
// after dropping privileges, from a directory of its group outside the root-only data dir;
// other users cannot read it.
func TestHostsPathShared(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root (chown)")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Fatalf("no user nobody: %v", err)
	}
	share := testutil.ShortTempDir(t, "rakhsh-dnsmasq-share")
	if err := os.Chmod(share, 0o755); err != nil {
		t.Fatal(err)
	}
	old := dnsmasqShareDir
	dnsmasqShareDir = share
	t.Cleanup(func() { dnsmasqShareDir = old })

	m := NewManager(Config{DataDir: "/d", DnsmasqUser: "nobody"})
	dir := t.TempDir() // root-only, as the data dir is
	path, gid, err := m.hostsPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasPrefix(path, dir) || filepath.Dir(filepath.Dir(path)) != share || strconv.Itoa(gid) != nobody.Gid {
		t.Fatalf("hosts path %s group %d: want a directory of group %s under %s", path, gid, nobody.Gid, share)
	}
	if fi, err := os.Stat(filepath.Dir(path)); err != nil || fi.Mode().Perm() != 0o750 {
		t.Fatalf("hosts directory: %v %v, want mode 0750", fi, err)
	}
	if err := os.WriteFile(path, []byte("02:00:00:00:00:01,10.0.0.1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, 0, gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	read := func(g uint32) error {
		cmd := exec.Command("cat", path)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: g}}
		return cmd.Run()
	}
	if err := read(uint32(gid)); err != nil {
		t.Errorf("the dnsmasq user cannot read its hosts file: %v", err)
	}
	if err := read(4242); err == nil {
		t.Errorf("a user of another group reads the hosts file")
	}
	// A second network, or another data dir, gets its own directory; Remove's cleanup takes it.
	if p2, _, _ := m.hostsPath(t.TempDir()); filepath.Dir(p2) == filepath.Dir(path) {
		t.Errorf("two state dirs share a hosts directory")
	}
	removeShare(dir)
	if _, err := os.Stat(filepath.Dir(path)); !os.IsNotExist(err) {
		t.Errorf("removeShare left %s", filepath.Dir(path))
	}
	// As root, the hosts file stays in the state dir.
	if p, g, err := NewManager(Config{DataDir: "/d", DnsmasqUser: "root"}).hostsPath(dir); err != nil || p != filepath.Join(dir, dnsmasqHosts) || g != -1 {
		t.Errorf("root: %s %d %v", p, g, err)
	}
}

func TestManagerDefaultDnsmasqUser(t *testing.T) {
	if u := NewManager(Config{DataDir: "/d"}).cfg.DnsmasqUser; u != DefaultDnsmasqUser {
		t.Fatalf("default dnsmasq user %q, want %q", u, DefaultDnsmasqUser)
	}
	if u := NewManager(Config{DataDir: "/d", DnsmasqUser: "root"}).cfg.DnsmasqUser; u != "root" {
		t.Fatalf("explicit root became %q", u)
	}
}
