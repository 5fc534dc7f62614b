package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rakhsh/rakhsh/internal/qemu/qmp"
)

// deviceModel is what the source and every target share: the QEMU arguments
// that describe the machine (not the per-process sockets and names).
type deviceModel struct {
	qemu     string   // binary
	memory   string   // -m
	guestDir string   // test/guest/out
	boot     string   // "cdrom" (guest.iso on AHCI) or "kernel" (-kernel/-initrd)
	extra    []string // appended verbatim
	// replace, if set, is the whole device model instead of the built-in
	// one (read with -model-file); extra is still appended.
	replace []string
	// netns, if set, is the network namespace (/run/netns/NAME) QEMU runs in
	// (-underlay).
	netns string
	// pskDir, if set (-tls-psk), is a directory with keys.psk: each QEMU gets two
	// tls-creds-psk objects on it, "migtls-s" (server: used as a target) and
	// "migtls-c" (client: used as a source, as a target becomes along the chain).
	pskDir string
}

// args returns the device-model arguments.
func (d deviceModel) args() []string {
	if d.replace != nil {
		return append(append([]string(nil), d.replace...), d.extra...)
	}
	a := []string{
		"-machine", "q35,vmport=off",
		"-accel", "tcg,thread=multi",
		"-cpu", "max",
		"-smp", "1",
		"-m", d.memory,
		"-nodefaults", "-no-user-config",
		"-nic", "none",
		"-display", "none",
		"-rtc", "base=utc",
	}
	switch d.boot {
	case "kernel":
		a = append(a,
			"-kernel", filepath.Join(d.guestDir, "vmlinuz"),
			"-initrd", filepath.Join(d.guestDir, "initrd.img"),
			"-append", "console=ttyS0")
	default:
		iso := filepath.Join(d.guestDir, "guest.iso")
		a = append(a,
			"-blockdev", "driver=file,node-name=file-cd0,filename="+iso+",read-only=on",
			"-blockdev", "driver=raw,node-name=fmt-cd0,file=file-cd0,read-only=on",
			"-device", "ide-cd,id=cd0,drive=fmt-cd0,bus=ide.0,bootindex=1")
	}
	return append(a, d.extra...)
}

// vm is one QEMU process with its QMP connection and serial console.
type vm struct {
	side int // 0 or 1: which -underlay host it runs on
	name string
	dir  string
	cmd  *exec.Cmd
	argv []string
	qmp  *qmp.Conn
	con  *console
	done chan struct{} // closed when the process has exited
	werr error         // Wait's result, valid after done
}

// startVM starts QEMU with the device model plus its own sockets (and
// -incoming defer for a target), then connects the serial console and QMP.
// The console is connected before the guest can print anything: a source is
// started with -S and continued by the caller; a target only runs once the
// migration completes (QEMU then resumes it by itself).
func startVM(ctx context.Context, dm deviceModel, dir, name string, incoming bool) (*vm, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	qmpSock := filepath.Join(dir, "qmp.sock")
	serSock := filepath.Join(dir, "serial.sock")
	os.Remove(qmpSock)
	os.Remove(serSock)
	argv := []string{
		"-name", "guest=" + name + ",debug-threads=on",
		"-chardev", "socket,id=qmp,path=" + qmpSock + ",server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
		"-chardev", "socket,id=serial0,path=" + serSock + ",server=on,wait=off",
		"-serial", "chardev:serial0",
	}
	argv = append(argv, dm.args()...)
	if dm.pskDir != "" {
		argv = append(argv, "-object", "tls-creds-psk,id=migtls-s,endpoint=server,dir="+dm.pskDir,
			"-object", "tls-creds-psk,id=migtls-c,endpoint=client,dir="+dm.pskDir+",username=qemu")
	}
	if incoming {
		// No -S: the target runs the guest as soon as the migration completes.
		argv = append(argv, "-incoming", "defer")
	} else {
		argv = append(argv, "-S")
	}
	logf, err := os.Create(filepath.Join(dir, "qemu.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(dm.qemu, argv...)
	if dm.netns != "" {
		// nsenter execs QEMU in the namespace: the process started is QEMU itself.
		cmd = exec.Command("nsenter", append([]string{"--net=/run/netns/" + dm.netns, "--", dm.qemu}, argv...)...)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	v := &vm{name: name, dir: dir, cmd: cmd, argv: append([]string{dm.qemu}, argv...), done: make(chan struct{})}
	go func() { v.werr = cmd.Wait(); logf.Close(); close(v.done) }()

	fail := func(err error) (*vm, error) {
		v.kill()
		b, _ := os.ReadFile(filepath.Join(dir, "qemu.log"))
		return nil, fmt.Errorf("%s: %w (qemu output: %s)", name, err, strings.TrimSpace(string(b)))
	}
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := dialRetry(dctx, v, serSock)
	if err != nil {
		return fail(fmt.Errorf("serial console: %w", err))
	}
	v.con = newConsole(conn, filepath.Join(dir, "serial.log"))
	for {
		v.qmp, err = qmp.Dial(dctx, qmpSock)
		if err == nil {
			break
		}
		select {
		case <-v.done:
			return fail(errors.New("exited"))
		case <-dctx.Done():
			return fail(fmt.Errorf("QMP: %w", err))
		case <-time.After(20 * time.Millisecond):
		}
	}
	return v, nil
}

func dialRetry(ctx context.Context, v *vm, path string) (net.Conn, error) {
	for {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			return c, nil
		}
		select {
		case <-v.done:
			return nil, errors.New("qemu exited")
		case <-ctx.Done():
			return nil, err
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// quit asks QEMU to quit and waits for it; it kills it if that fails.
func (v *vm) quit() {
	if v == nil {
		return
	}
	if v.qmp != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = v.qmp.Quit(ctx)
		cancel()
	}
	select {
	case <-v.done:
	case <-time.After(10 * time.Second):
	}
	v.kill()
}

// kill ends the process (if still there) and releases the connections.
func (v *vm) kill() {
	if v == nil {
		return
	}
	select {
	case <-v.done:
	default:
		_ = v.cmd.Process.Kill()
		<-v.done
	}
	if v.qmp != nil {
		v.qmp.Close()
	}
	if v.con != nil {
		v.con.close()
	}
}

// query runs a QMP command with a short timeout.
func (v *vm) exec(ctx context.Context, command string, args, result any) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := v.qmp.Execute(ctx, command, args, result); err != nil {
		return fmt.Errorf("%s: %w", v.name, err)
	}
	return nil
}

// escapes matches the terminal control sequences busybox's line editor sends
// (the cursor position query ESC [6n among them).
var escapes = regexp.MustCompile(`\x1b\[[0-9;?]*[A-Za-z]`)

// console is a guest serial console on a unix socket: every line it prints is
// kept (without CR and escape sequences) and written to a log file; commands
// can be typed into it.
type console struct {
	conn net.Conn
	log  *os.File

	mu      sync.Mutex
	lines   []string
	partial []byte
	changed chan struct{} // closed and replaced when a line arrives
	ended   bool
}

func newConsole(conn net.Conn, logPath string) *console {
	f, _ := os.Create(logPath)
	c := &console{conn: conn, log: f, changed: make(chan struct{})}
	go c.read()
	return c
}

func (c *console) read() {
	buf := make([]byte, 4096)
	for {
		n, err := c.conn.Read(buf)
		if n > 0 {
			if c.log != nil {
				c.log.Write(buf[:n])
			}
			c.mu.Lock()
			c.partial = append(c.partial, buf[:n]...)
			added := false
			for {
				i := bytes.IndexByte(c.partial, '\n')
				if i < 0 {
					break
				}
				c.lines = append(c.lines, clean(c.partial[:i]))
				c.partial = c.partial[i+1:]
				added = true
			}
			if added {
				close(c.changed)
				c.changed = make(chan struct{})
			}
			c.mu.Unlock()
		}
		if err != nil {
			c.mu.Lock()
			if len(c.partial) > 0 {
				c.lines = append(c.lines, clean(c.partial))
				c.partial = nil
			}
			c.ended = true
			close(c.changed)
			c.changed = make(chan struct{})
			c.mu.Unlock()
			return
		}
	}
}

func clean(b []byte) string {
	s := escapes.ReplaceAllString(string(b), "")
	return strings.TrimRight(strings.ReplaceAll(s, "\r", ""), " \t")
}

// snapshot returns the lines received so far.
func (c *console) snapshot() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.lines...)
}

// waitFor waits until a line at index from or later satisfies match and
// returns its index.
func (c *console) waitFor(ctx context.Context, from int, match func(string) bool) (int, string, error) {
	for {
		c.mu.Lock()
		for i := from; i < len(c.lines); i++ {
			if match(c.lines[i]) {
				l := c.lines[i]
				c.mu.Unlock()
				return i, l, nil
			}
		}
		if len(c.lines) > from {
			from = len(c.lines)
		}
		ch, ended := c.changed, c.ended
		c.mu.Unlock()
		if ended {
			return -1, "", errors.New("serial console closed")
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return -1, "", ctx.Err()
		}
	}
}

// typeLine types one line into the guest shell.
func (c *console) typeLine(s string) error {
	_, err := c.conn.Write([]byte(s + "\n"))
	return err
}

func (c *console) close() {
	c.conn.Close()
	if c.log != nil {
		c.log.Close()
	}
}
