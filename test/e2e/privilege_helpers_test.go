package e2e

import (
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// qemuUser and dnsmasqUser are the users `rakhsh serve` runs QEMU and dnsmasq as by default.
const (
	qemuUser    = "rakhsh-qemu"
	dnsmasqUser = "dnsmasq"
)

// requireRunsAs fails unless process pid runs with every uid (real, effective, saved,
// filesystem) of user name, which is not root, and with no root group.
func requireRunsAs(t *testing.T, what string, pid int, name string) {
	t.Helper()
	if pid <= 0 {
		t.Fatalf("%s: no process", what)
	}
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatalf("%s: user %s: %v", what, name, err)
	}
	if u.Uid == "0" {
		t.Fatalf("%s: user %s is root", what, name)
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatalf("%s (pid %d): %v", what, pid, err)
	}
	fields := map[string][]string{}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if ok {
			fields[k] = strings.Fields(v)
		}
	}
	for _, k := range []string{"Uid", "Gid"} {
		if len(fields[k]) != 4 {
			t.Fatalf("%s (pid %d): %s: %v", what, pid, k, fields[k])
		}
		for _, v := range fields[k] {
			// The gid is the user's own, or one the program picks (dnsmasq's default group
			// is "dip"), never root's.
			if (k == "Uid" && v != u.Uid) || (k == "Gid" && (v == "0" || v != fields[k][0])) {
				t.Fatalf("%s (pid %d) runs with %s: %v, want all %s of user %s", what, pid, k, fields[k], k, name)
			}
		}
	}
	for _, g := range fields["Groups"] {
		if g == "0" {
			t.Fatalf("%s (pid %d) keeps the root group: Groups: %v", what, pid, fields["Groups"])
		}
	}
}

// requireDeniedTo fails unless user name is refused every path: a process of that user
// cannot open them (the QEMU user reaches the VM's files only through what it was handed).
func requireDeniedTo(t *testing.T, name string, paths ...string) {
	t.Helper()
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	for _, p := range paths {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		cmd := exec.Command("head", "-c", "1", p)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "Permission denied") {
			t.Fatalf("user %s may open %s (%v: %s)", name, p, err, out)
		}
	}
}
