package qemu

import (
	"bufio"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/internal/testutil"
	"golang.org/x/sys/unix"
)

// realCase is a config case run by TestRealQEMU as root with paths (fds false) or as nobody
// with passed descriptors (fds true).
type realCase struct {
	configCase
	fds bool
}

func realCases() []realCase {
	var out []realCase
	for _, c := range configCases {
		out = append(out, realCase{configCase: c})
	}
	for _, c := range configCases {
		c.name = "fds-" + c.name
		out = append(out, realCase{configCase: c, fds: true})
	}
	return out
}

// nobody is the unprivileged identity the real-QEMU tests run a PassFDs QEMU as.
const nobody = 65534

// startUnprivileged starts cfg's QEMU as nobody with its passed descriptors, from /.
func startUnprivileged(t *testing.T, cfg Config) *child {
	t.Helper()
	files, err := cfg.OpenPassed()
	if err != nil {
		t.Fatalf("OpenPassed: %v", err)
	}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	cmd := exec.Command(cfg.Binary, cfg.Args...)
	cmd.Dir = "/"
	cmd.ExtraFiles = files
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	c := testutil.StartChild(t, cmd)
	if err := WritePIDFile(cfg.PIDFile, c.Cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	return c
}

// checkUnprivileged checks that QEMU runs as nobody and that VNC answers on its socket.
func checkUnprivileged(t *testing.T, p *child, cfg Config) {
	t.Helper()
	b, err := os.ReadFile("/proc/" + itoa(p.Cmd.Process.Pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "Uid:") && !reflect.DeepEqual(strings.Fields(l)[1:], []string{"65534", "65534", "65534", "65534"}) {
			t.Fatalf("QEMU runs with %s, want nobody", l)
		}
	}
	c, err := net.DialTimeout("unix", cfg.VNCSocket, 5*time.Second)
	if err != nil {
		t.Fatalf("VNC: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "RFB ") {
		t.Fatalf("VNC greeting %q, %v", line, err)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// TestBuildFDs checks every config case built with PassFDs, and keeps goldens of a few.
func TestBuildFDs(t *testing.T) {
	golden := map[string]bool{"windows-kvm-tpm": true, "nic-tap": true, "disks-cdrom": true}
	for _, c := range configCases {
		t.Run(c.name, func(t *testing.T) {
			in := c.input(goldenEnv(c))
			in.PassFDs = true
			cfg, err := Build(in)
			if err != nil {
				t.Fatalf("Build: %v", err)
			}
			again := c.input(goldenEnv(c))
			again.PassFDs = true
			if cfg2, err := Build(again); err != nil || !reflect.DeepEqual(cfg, cfg2) {
				t.Fatalf("Build is not deterministic: %v", err)
			}
			if !cfg.PassFDs || len(cfg.Passed) < 2 {
				t.Fatalf("PassFDs %v with %d passed descriptors", cfg.PassFDs, len(cfg.Passed))
			}
			checkInvariants(t, in, cfg)
			if !golden[c.name] {
				return
			}
			got := strings.Join(cfg.Args, "\n") + "\n"
			path := filepath.Join("testdata", "fds-"+c.name+".golden")
			checkGolden(t, path, got)
		})
	}
}

func TestOpenPassed(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(file, []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.raw")
	if err := os.Symlink(file, link); err != nil {
		t.Fatal(err)
	}
	srv := filepath.Join(dir, "srv.sock")
	l, err := net.Listen("unix", srv)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	listen := filepath.Join(dir, "l.sock")
	if err := os.WriteFile(listen, nil, 0o600); err != nil { // a stale file is replaced
		t.Fatal(err)
	}
	cfg := Config{Passed: []Passed{
		{FD: 3, Kind: PassFile, Path: file},
		{FD: 4, Kind: PassFile, Path: file, Write: true},
		{FD: 5, Kind: PassListen, Path: listen},
		{FD: 6, Kind: PassConnect, Path: srv},
	}}
	files, err := cfg.OpenPassed()
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for i, want := range []int{unix.O_RDONLY, unix.O_RDWR} {
		fl, err := unix.FcntlInt(files[i].Fd(), unix.F_GETFL, 0)
		if err != nil || fl&unix.O_ACCMODE != want {
			t.Errorf("file %d: flags %#x, %v; want access mode %#x", i, fl, err, want)
		}
	}
	if fi, err := os.Stat(listen); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("listening socket file: %v %v", fi, err)
	}
	if c, err := net.Dial("unix", listen); err != nil { // queued in the backlog of the passed socket
		t.Errorf("dial the passed listening socket: %v", err)
	} else {
		c.Close()
	}
	acc, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	acc.Close()

	for _, bad := range []Config{
		{Passed: []Passed{{FD: 3, Kind: PassFile, Path: link}}},                    // a symlink
		{Passed: []Passed{{FD: 3, Kind: PassFile, Path: dir}}},                     // not a regular file
		{Passed: []Passed{{FD: 4, Kind: PassFile, Path: file}}},                    // wrong number
		{Passed: []Passed{{FD: 3, Kind: PassFile, Path: filepath.Join(dir, "x")}}}, // missing
		{Passed: []Passed{{FD: 3, Kind: PassFile, Path: file}, {FD: 4, Kind: PassConnect, Path: filepath.Join(dir, "none.sock")}}},
	} {
		if fs, err := bad.OpenPassed(); err == nil {
			for _, f := range fs {
				f.Close()
			}
			t.Errorf("OpenPassed(%+v) succeeded", bad.Passed)
		}
	}
}

// fakeVNCMonitor records what StartVNC asks QEMU.
type fakeVNCMonitor struct {
	fdName string
	fdOK   bool
	cmds   []string
	args   any
	err    error
}

func (m *fakeVNCMonitor) GetFD(_ context.Context, name string, f *os.File) error {
	m.fdName = name
	fi, err := f.Stat()
	m.fdOK = err == nil && fi.Mode()&os.ModeSocket != 0
	return nil
}

func (m *fakeVNCMonitor) Execute(_ context.Context, cmd string, args, _ any) error {
	m.cmds = append(m.cmds, cmd)
	m.args = args
	return m.err
}

func TestStartVNC(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "vnc.sock")
	m := &fakeVNCMonitor{}
	if err := (Config{VNCSocket: sock}).StartVNC(context.Background(), m); err != nil || m.fdName != "" || len(m.cmds) != 0 {
		t.Fatalf("without LateVNC: %v, %+v", err, m)
	}
	if err := (Config{VNCSocket: sock, LateVNC: true}).StartVNC(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"type": "vnc", "addresses": []map[string]string{{"type": "fd", "str": vncFDName}}}
	if m.fdName != vncFDName || !m.fdOK || !reflect.DeepEqual(m.cmds, []string{"display-update"}) || !reflect.DeepEqual(m.args, want) {
		t.Fatalf("StartVNC asked %+v", m)
	}
	m = &fakeVNCMonitor{err: errors.New("no")}
	if err := (Config{VNCSocket: sock, LateVNC: true}).StartVNC(context.Background(), m); err == nil || !strings.Contains(err.Error(), "display-update") {
		t.Fatalf("a failed display-update gave %v", err)
	}
}
