package qemu

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// VhostNetDevice is the vhost-net device a tap NIC under KVM is accelerated with.
const VhostNetDevice = "/dev/vhost-net"

// connectRetry is how long a refused PassConnect connection is retried.
const connectRetry = 3 * time.Second

// firstPassedFD is the descriptor of Config.Passed[0] in QEMU: 0-2 are stdin, stdout, stderr.
const firstPassedFD = 3

// PassKind says what the caller opens for a passed descriptor.
type PassKind int

const (
	// PassFile is the file at Path, opened read-write when Write, else read-only. QEMU opens
	// it as /dev/fdset/FD (-add-fd), which needs the same access mode.
	PassFile PassKind = iota
	// PassListen is a unix socket the caller binds at Path and listens on (a stale socket
	// file is replaced).
	PassListen
	// PassConnect is a unix socket connected to Path.
	PassConnect
	// PassTap is the existing tap device named Path, attached through /dev/net/tun with the
	// flags QEMU itself would use (IFF_TAP, IFF_NO_PI, IFF_VNET_HDR).
	PassTap
	// PassVhost is Path (VhostNetDevice) opened read-write.
	PassVhost
)

func (k PassKind) String() string {
	switch k {
	case PassFile:
		return "file"
	case PassListen:
		return "listening socket"
	case PassConnect:
		return "socket"
	case PassTap:
		return "tap"
	case PassVhost:
		return "vhost device"
	}
	return "kind " + strconv.Itoa(int(k))
}

// Passed is one descriptor QEMU inherits (Config.Passed).
type Passed struct {
	FD    int // the descriptor number in QEMU
	Kind  PassKind
	Path  string // a file or socket path, or a tap name
	Write bool   // PassFile: read-write
}

// pass records a descriptor QEMU inherits and returns its number.
func (b *build) pass(kind PassKind, path string, write bool) int {
	fd := firstPassedFD + len(b.cfg.Passed)
	b.cfg.Passed = append(b.cfg.Passed, Passed{FD: fd, Kind: kind, Path: path, Write: write})
	return fd
}

// file returns the filename a "file" block node opens for path: path itself, or with
// PassFDs the fd set holding the descriptor the caller opens ("-add-fd fd=N,set=N"; the
// opaque string names the node and the path, for query-fdsets).
func (b *build) file(path, node string, write bool) string {
	if !b.in.PassFDs {
		return path
	}
	fd := b.pass(PassFile, path, write)
	n := strconv.Itoa(fd)
	b.add("-add-fd", newOpts("").set("fd", n).set("set", n).set("opaque", node+":"+path).String())
	return FDSetPath(fd)
}

// FDSetPath is the name QEMU opens a passed file by.
func FDSetPath(set int) string { return "/dev/fdset/" + strconv.Itoa(set) }

// serverSocket is the -chardev of a listening unix socket at path: QEMU binds it, or with
// PassFDs takes the socket the caller bound.
func (b *build) serverSocket(id, path string) string {
	if !b.in.PassFDs {
		return serverSocket(id, path)
	}
	fd := b.pass(PassListen, path, false)
	return newOpts("socket").set("id", id).set("fd", strconv.Itoa(fd)).set("server", "on").set("wait", "off").String()
}

// OpenPassed opens every descriptor of c.Passed, in order: element i becomes descriptor 3+i
// of QEMU (os.ProcAttr.Files[3+i], exec.Cmd.ExtraFiles[i]). The caller closes them once QEMU
// has started (QEMU keeps its copies). On error, what was opened is closed.
func (c Config) OpenPassed() ([]*os.File, error) {
	files := make([]*os.File, 0, len(c.Passed))
	fail := func(err error) ([]*os.File, error) {
		for _, f := range files {
			_ = f.Close()
		}
		return nil, err
	}
	for i, p := range c.Passed {
		if p.FD != firstPassedFD+i {
			return fail(fmt.Errorf("passed descriptor %d is number %d, want %d", i, p.FD, firstPassedFD+i))
		}
		f, err := openPassed(p)
		if err != nil {
			return fail(fmt.Errorf("opening %s %s for QEMU: %w", p.Kind, p.Path, err))
		}
		files = append(files, f)
	}
	return files, nil
}

func openPassed(p Passed) (*os.File, error) {
	switch p.Kind {
	case PassFile:
		flag := os.O_RDONLY
		if p.Write {
			flag = os.O_RDWR
		}
		// No symlink is followed in the last component, and only regular files are taken:
		// the paths are the agent's own, so anything else was planted.
		f, err := os.OpenFile(p.Path, flag|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
		if err != nil {
			return nil, err
		}
		if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
			f.Close()
			if err == nil {
				err = errors.New("not a regular file")
			}
			return nil, err
		}
		return f, nil
	case PassListen:
		_ = os.Remove(p.Path)
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: p.Path, Net: "unix"})
		if err != nil {
			return nil, err
		}
		l.SetUnlinkOnClose(false) // the socket file stays for QEMU's lifetime
		defer l.Close()
		return l.File()
	case PassConnect:
		// A server's socket file appears at bind(), a moment before it listens: a refused
		// connection is retried briefly.
		var conn *net.UnixConn
		var err error
		for deadline := time.Now().Add(connectRetry); ; time.Sleep(20 * time.Millisecond) {
			conn, err = net.DialUnix("unix", nil, &net.UnixAddr{Name: p.Path, Net: "unix"})
			if err == nil || !errors.Is(err, syscall.ECONNREFUSED) || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		return conn.File()
	case PassTap:
		return openTap(p.Path)
	case PassVhost:
		return os.OpenFile(p.Path, os.O_RDWR|syscall.O_CLOEXEC, 0)
	}
	return nil, fmt.Errorf("unknown kind %d", p.Kind)
}

// openTap attaches to the persistent tap name as QEMU's tap backend would (net/tap-linux.c).
func openTap(name string) (*os.File, error) {
	if name == "" || len(name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("tap name %q", name)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	var req [unix.IFNAMSIZ + 64]byte
	copy(req[:unix.IFNAMSIZ-1], name)
	flags := uint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	*(*uint16)(unsafe.Pointer(&req[unix.IFNAMSIZ])) = flags
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(unix.TUNSETIFF), uintptr(unsafe.Pointer(&req[0]))); e != 0 {
		unix.Close(fd)
		return nil, fmt.Errorf("TUNSETIFF: %w", e)
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun:"+name), nil
}

// WritePIDFile writes pid to path (0600, atomically): with PassFDs QEMU writes no pidfile of
// its own, the caller does right after starting it.
func WritePIDFile(path string, pid int) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(pid)+"\n"), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// VNCMonitor is the part of a QMP connection StartVNC needs (*qmp.Conn implements it).
type VNCMonitor interface {
	GetFD(ctx context.Context, name string, f *os.File) error
	Execute(ctx context.Context, command string, args, result any) error
}

// vncFDName is the name the VNC listening socket is handed over under.
const vncFDName = "vnc-listen"

// StartVNC binds c.VNCSocket and makes QEMU (started with LateVNC, -vnc none) serve VNC on
// it: getfd hands the listening socket over, display-update makes it the VNC server's.
func (c Config) StartVNC(ctx context.Context, m VNCMonitor) error {
	if !c.LateVNC {
		return nil
	}
	f, err := openPassed(Passed{Kind: PassListen, Path: c.VNCSocket})
	if err != nil {
		return fmt.Errorf("binding the VNC socket: %w", err)
	}
	defer f.Close()
	if err := m.GetFD(ctx, vncFDName, f); err != nil {
		return fmt.Errorf("getfd: %w", err)
	}
	args := map[string]any{"type": "vnc", "addresses": []map[string]string{{"type": "fd", "str": vncFDName}}}
	if err := m.Execute(ctx, "display-update", args, nil); err != nil {
		return fmt.Errorf("display-update: %w", err)
	}
	return nil
}
