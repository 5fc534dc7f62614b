package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// DefaultQEMUUser is the unprivileged system user QEMU runs as unless Config.QEMUUser says
// otherwise. The agent creates it when it is missing (ensureSystemUser).
const DefaultQEMUUser = "rakhsh-qemu"

// kvmGroup is the group that may open /dev/kvm on Debian and most distributions.
const kvmGroup = "kvm"

// runAs is the identity a child process gets; nil runs it as the agent (root).
type runAs struct {
	name string
	cred *syscall.Credential
}

func (r *runAs) credential() *syscall.Credential {
	if r == nil {
		return nil
	}
	return r.cred
}

// lookupUser and addUser are variables so tests can stand in for /etc/passwd and useradd.
var (
	lookupUser = user.Lookup
	addUser    = func(ctx context.Context, args ...string) ([]byte, error) {
		return exec.CommandContext(ctx, "useradd", args...).CombinedOutput()
	}
)

// ensureSystemUser returns the user name, creating it as a system user without a home or a
// login shell when it does not exist (useradd --system), in group kvm when that group exists.
func ensureSystemUser(ctx context.Context, log *slog.Logger, name string) (*user.User, error) {
	u, err := lookupUser(name)
	if err == nil {
		return u, nil
	}
	var unknown user.UnknownUserError
	if !errors.As(err, &unknown) {
		return nil, fmt.Errorf("looking up user %s: %w", name, err)
	}
	args := []string{"--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
		"--comment", "Rakhsh unprivileged service user"}
	if _, err := user.LookupGroup(kvmGroup); err == nil {
		args = append(args, "--groups", kvmGroup)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, aerr := addUser(ctx, append(args, name)...)
	// Another agent on this host may have created it meanwhile: look again either way.
	if u, err := lookupUser(name); err == nil {
		if aerr == nil {
			log.Info("created the system user", "user", name, "uid", u.Uid)
		}
		return u, nil
	}
	if aerr == nil {
		aerr = errors.New("it is still unknown afterwards")
	}
	return nil, fmt.Errorf("creating system user %s (useradd %s): %v: %s", name, strings.Join(args, " "), aerr, strings.TrimSpace(string(out)))
}

// qemuIdentity resolves the user QEMU runs as: its uid, primary gid and, as supplementary
// groups, the group kvm and the group owning kvmDevice (so /dev/kvm opens when it is 0660).
// "root" means no change (QEMU runs as the agent, as before).
func qemuIdentity(ctx context.Context, log *slog.Logger, name, kvmDevice string) (*runAs, error) {
	if name == "root" || name == "0" {
		return nil, nil
	}
	u, err := ensureSystemUser(ctx, log, name)
	if err != nil {
		return nil, err
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("user %s has uid %q gid %q", name, u.Uid, u.Gid)
	}
	if uid == 0 {
		return nil, nil
	}
	groups := map[uint32]bool{}
	if g, err := user.LookupGroup(kvmGroup); err == nil {
		if n, err := strconv.ParseUint(g.Gid, 10, 32); err == nil {
			groups[uint32(n)] = true
		}
	}
	if fi, err := os.Stat(kvmDevice); err == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Gid != 0 {
			groups[st.Gid] = true
		}
	}
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	for g := range groups {
		cred.Groups = append(cred.Groups, g)
	}
	return &runAs{name: name, cred: cred}, nil
}

// canOpenAs says whether a process with cred may open path for reading and writing by its
// permission bits (no ACLs); nil is root.
func canOpenAs(cred *syscall.Credential, path string) bool {
	if cred == nil {
		return true
	}
	fi, err := os.Stat(path)
	if err != nil {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return false
	}
	mode := uint32(fi.Mode().Perm())
	switch {
	case st.Uid == cred.Uid:
		return mode&0o600 == 0o600
	case st.Gid == cred.Gid || containsGID(cred.Groups, st.Gid):
		return mode&0o060 == 0o060
	default:
		return mode&0o006 == 0o006
	}
}

func containsGID(gs []uint32, g uint32) bool {
	for _, x := range gs {
		if x == g {
			return true
		}
	}
	return false
}
