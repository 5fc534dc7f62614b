package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestEnsureSystemUser(t *testing.T) {
	oldLookup, oldAdd := lookupUser, addUser
	t.Cleanup(func() { lookupUser, addUser = oldLookup, oldAdd })
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	users := map[string]*user.User{"present": {Username: "present", Uid: "990", Gid: "990"}}
	lookupUser = func(name string) (*user.User, error) {
		if u, ok := users[name]; ok {
			return u, nil
		}
		return nil, user.UnknownUserError(name)
	}
	var calls [][]string
	addUser = func(_ context.Context, args ...string) ([]byte, error) {
		calls = append(calls, args)
		name := args[len(args)-1]
		if name == "refused" {
			return []byte("useradd: cannot lock /etc/passwd"), errors.New("exit status 1")
		}
		if name != "raced" { // "raced": another agent made it first, useradd says it exists
			users[name] = &user.User{Username: name, Uid: "991", Gid: "991"}
			return nil, nil
		}
		users[name] = &user.User{Username: name, Uid: "992", Gid: "992"}
		return []byte("useradd: user 'raced' already exists"), errors.New("exit status 9")
	}

	if u, err := ensureSystemUser(context.Background(), log, "present"); err != nil || u.Uid != "990" || len(calls) != 0 {
		t.Fatalf("existing user: %v %v, useradd calls %v", u, err, calls)
	}
	u, err := ensureSystemUser(context.Background(), log, "fresh")
	if err != nil || u.Uid != "991" || len(calls) != 1 {
		t.Fatalf("new user: %v %v, useradd calls %v", u, err, calls)
	}
	args := strings.Join(calls[0], " ")
	for _, want := range []string{"--system", "--no-create-home", "--shell /usr/sbin/nologin", " fresh"} {
		if !strings.Contains(args, want) {
			t.Errorf("useradd %s lacks %q", args, want)
		}
	}
	if u, err := ensureSystemUser(context.Background(), log, "raced"); err != nil || u.Uid != "992" {
		t.Fatalf("a user made meanwhile by someone else: %v %v", u, err)
	}
	if _, err := ensureSystemUser(context.Background(), log, "refused"); err == nil || !strings.Contains(err.Error(), "cannot lock") {
		t.Fatalf("a failed useradd gave %v, want its output", err)
	}
}

func TestQEMUIdentityRoot(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, name := range []string{"root", "0"} {
		as, err := qemuIdentity(context.Background(), log, name, "/dev/null")
		if err != nil || as != nil || as.credential() != nil {
			t.Fatalf("%s: %+v %v, want no identity change", name, as, err)
		}
	}
}

func TestQEMUIdentityGroups(t *testing.T) {
	oldLookup := lookupUser
	t.Cleanup(func() { lookupUser = oldLookup })
	lookupUser = func(name string) (*user.User, error) {
		return &user.User{Username: name, Uid: "4242", Gid: "4343"}, nil
	}
	dev := filepath.Join(t.TempDir(), "kvm")
	if err := os.WriteFile(dev, nil, 0o660); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dev, 0o660); err != nil { // past the umask
		t.Fatal(err)
	}
	if err := os.Chown(dev, 0, 4444); err != nil {
		t.Skipf("cannot give the fake KVM device a group (not root?): %v", err)
	}
	as, err := qemuIdentity(context.Background(), slog.New(slog.NewTextHandler(io.Discard, nil)), "vmuser", dev)
	if err != nil {
		t.Fatal(err)
	}
	c := as.credential()
	if c == nil || c.Uid != 4242 || c.Gid != 4343 || !containsGID(c.Groups, 4444) || containsGID(c.Groups, 0) {
		t.Fatalf("credential %+v: want uid 4242, gid 4343, the device's group 4444 and never group 0", c)
	}
	if !canOpenAs(c, dev) {
		t.Errorf("the device's group member cannot open a 0660 device")
	}
	if err := os.Chmod(dev, 0o600); err != nil {
		t.Fatal(err)
	}
	if canOpenAs(c, dev) {
		t.Errorf("a 0600 root device counts as usable by an unprivileged user")
	}
}

func TestCanOpenAs(t *testing.T) {
	f := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if !canOpenAs(nil, f) {
		t.Errorf("root cannot open")
	}
	other := &syscall.Credential{Uid: 4242, Gid: 4242}
	if canOpenAs(other, f) {
		t.Errorf("0600 of another user opens")
	}
	if err := os.Chmod(f, 0o666); err != nil {
		t.Fatal(err)
	}
	if !canOpenAs(other, f) {
		t.Errorf("0666 does not open")
	}
	if canOpenAs(other, filepath.Join(t.TempDir(), "missing")) {
		t.Errorf("a missing file opens")
	}
}

func TestScanQEMUs(t *testing.T) {
	// A process whose argv[0] names qemu and carries -uuid is found by that uuid.
	uid := "3c0ffee0-1111-4222-8333-444455556666"
	// bash takes "-uuid" and uid as $0 and $1; the "; :" keeps it from exec'ing sleep.
	// Two of them, as two agents with different data dirs on one host would run: each is
	// found, and each is tied to the run directory in its environment.
	var cmds []*exec.Cmd
	for _, dir := range []string{"/data-a/run/vms/" + uid, "/data-b/run/vms/" + uid} {
		cmd := exec.Command("/bin/bash", "-c", "sleep 30; :", "-uuid", uid)
		cmd.Args[0] = "qemu-system-fake"
		cmd.Env = append(os.Environ(), runDirEnv+"="+dir)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		cmds = append(cmds, cmd)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if got := scanQEMUs()[uid]; len(got) == 2 {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("scanQEMUs()[%s] = %v, want the pids %d and %d", uid, got, cmds[0].Process.Pid, cmds[1].Process.Pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !startedFor(cmds[0].Process.Pid, "/data-a/run/vms/"+uid) || startedFor(cmds[0].Process.Pid, "/data-b/run/vms/"+uid) ||
		!startedFor(cmds[1].Process.Pid, "/data-b/run/vms/"+uid) {
		t.Errorf("startedFor does not tell the two run directories apart")
	}
	if pids, ok := scanQEMUs()["00000000-0000-4000-8000-000000000000"]; ok {
		t.Fatalf("an unknown uuid maps to %v", pids)
	}
}

func TestStartedWithoutVNC(t *testing.T) {
	for _, c := range []struct {
		args []string
		want bool
	}{
		{[]string{"-vnc", "none", "-uuid", "x"}, true},
		{[]string{"-vnc", "unix:/run/vnc.sock"}, false},
		{[]string{"-name", "none", "-vnc"}, false},
	} {
		cmd := exec.Command("/bin/bash", append([]string{"-c", "sleep 30; :"}, c.args...)...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Right after exec the kernel may not show the new argv yet.
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", cmd.Process.Pid)); len(b) > 0 {
				break
			}
		}
		got := startedWithoutVNC(cmd.Process.Pid)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if got != c.want {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", cmd.Process.Pid))
			t.Errorf("%v: startedWithoutVNC = %v, want %v (cmdline %q)", c.args, got, c.want, b)
		}
	}
	if startedWithoutVNC(1 << 30) {
		t.Error("a missing process was started without VNC")
	}
}
