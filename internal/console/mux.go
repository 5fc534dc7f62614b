// Package console shares one VM's serial port among a bounded log and any number of
// interactive clients.
//
// QEMU's socket chardev serves one client at a time, so the node agent keeps the only
// connection to RUNDIR/serial.sock and runs a Mux on it: everything the guest prints is
// appended to RUNDIR/serial.log (rotated to serial.log.1 past a size limit) and copied to every
// client of RUNDIR/console.sock; whatever a client types goes to the guest. The API server's
// console websocket connects to console.sock.
package console

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// Files in a VM's run directory.
const (
	SerialSocket  = "serial.sock"
	ConsoleSocket = "console.sock"
	LogFile       = "serial.log"
)

// DefaultLogLimit is the size at which serial.log is rotated.
const DefaultLogLimit = 1 << 20

// Mux multiplexes one serial socket.
type Mux struct {
	RunDir   string
	LogLimit int64
	Log      *slog.Logger
	// OnOutput, when set, is called after each piece of guest output is logged and sent.
	OnOutput func()

	mu      sync.Mutex
	clients map[net.Conn]chan []byte
	serial  net.Conn
	logf    *os.File
	logSize int64
}

// Run connects to the serial socket (retrying while QEMU starts), serves console.sock and
// copies data until ctx ends or QEMU closes the serial socket for good.
func (m *Mux) Run(ctx context.Context) error {
	if m.LogLimit <= 0 {
		m.LogLimit = DefaultLogLimit
	}
	if m.Log == nil {
		m.Log = slog.Default()
	}
	m.clients = map[net.Conn]chan []byte{}
	serial, err := dialRetry(ctx, filepath.Join(m.RunDir, SerialSocket))
	if err != nil {
		return err
	}
	m.serial = serial
	defer serial.Close()
	if err := m.openLog(); err != nil {
		return err
	}
	defer m.logf.Close()

	sockPath := filepath.Join(m.RunDir, ConsoleSocket)
	_ = os.Remove(sockPath)
	old := syscall.Umask(0o177)
	l, err := net.Listen("unix", sockPath)
	syscall.Umask(old)
	if err != nil {
		return err
	}
	defer os.Remove(sockPath)
	defer l.Close()
	go m.accept(l)
	stop := context.AfterFunc(ctx, func() { serial.Close(); l.Close() })
	defer stop()

	buf := make([]byte, 4<<10) // a serial port delivers a few KiB at a time: one buffer per VM
	for {
		n, err := serial.Read(buf)
		if n > 0 {
			m.output(buf[:n])
			if m.OnOutput != nil {
				m.OnOutput()
			}
		}
		if err != nil {
			m.closeClients()
			if ctx.Err() != nil || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
	}
}

func dialRetry(ctx context.Context, path string) (net.Conn, error) {
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			return c, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (m *Mux) openLog() error {
	p := filepath.Join(m.RunDir, LogFile)
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	m.logf, m.logSize = f, st.Size()
	return nil
}

// output appends to the log and hands a copy to every client; a client too slow to keep up
// loses output rather than slowing the guest.
func (m *Mux) output(p []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.logSize+int64(len(p)) > m.LogLimit {
		m.rotate()
	}
	if n, err := m.logf.Write(p); err == nil {
		m.logSize += int64(n)
	}
	for _, ch := range m.clients {
		cp := append([]byte(nil), p...)
		select {
		case ch <- cp:
		default:
		}
	}
}

func (m *Mux) rotate() {
	p := filepath.Join(m.RunDir, LogFile)
	m.logf.Close()
	_ = os.Rename(p, p+".1")
	if err := m.openLog(); err != nil {
		m.Log.Warn("reopening serial log", "err", err)
		m.logf, _ = os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	}
}

func (m *Mux) accept(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		ch := make(chan []byte, 256)
		m.mu.Lock()
		m.clients[c] = ch
		m.mu.Unlock()
		go func() {
			for p := range ch {
				if _, err := c.Write(p); err != nil {
					break
				}
			}
			c.Close()
		}()
		go func() {
			// Input from the client goes to the guest.
			_, _ = io.Copy(m.serial, c)
			m.drop(c)
		}()
	}
}

func (m *Mux) drop(c net.Conn) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if ch, ok := m.clients[c]; ok {
		delete(m.clients, c)
		close(ch)
	}
}

func (m *Mux) closeClients() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for c, ch := range m.clients {
		delete(m.clients, c)
		close(ch)
	}
}

// ReadLog returns the kept serial output (serial.log.1 then serial.log), at most limit bytes
// from the end.
func ReadLog(runDir string, limit int64) ([]byte, error) { return ReadLogs(runDir, LogFile, limit) }

// QEMULog is QEMU's own standard output and error in a VM's run directory (the agent starts
// each run with a fresh one and keeps the previous run's as QEMULog.1).
const QEMULog = "qemu.log"

// ReadLogs returns the previous run's name.1 followed by the current name of runDir, at most
// limit bytes from the end (os.ErrNotExist when neither exists).
func ReadLogs(runDir, name string, limit int64) ([]byte, error) {
	var out []byte
	found := false
	for _, name := range []string{name + ".1", name} {
		data, err := os.ReadFile(filepath.Join(runDir, name))
		if err == nil {
			found = true
			out = append(out, data...)
		} else if !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	if !found {
		return nil, os.ErrNotExist
	}
	if limit > 0 && int64(len(out)) > limit {
		out = out[int64(len(out))-limit:]
	}
	return out, nil
}
