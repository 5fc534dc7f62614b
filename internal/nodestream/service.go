// Package nodestream is the node agent's stream service: it serves the serial console, the
// VNC display and the kept logs of the VMs that run on its node, and the files of disks that
// move to other nodes (diskdata.go), from the node's data dir, to the API servers that proxy
// them to users and other nodes. The API server never reads a node's files.
//
// Service reads the data dir; Handler serves a Service over HTTPS (websockets for console and
// VNC, plain GET for logs) to callers that present a stream ticket, which the agent redeems
// through the API; Remote is the API server's side of that connection, which pins the
// certificate the agent published in its Node status.
package nodestream

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"

	"github.com/rakhsh/rakhsh/internal/console"
	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// The streams of a VM.
const (
	StreamConsole = "console"
	StreamVNC     = "vnc"
	StreamLog     = "log"
)

// Log sources.
const (
	SourceSerial = "serial"
	SourceQEMU   = "qemu"
)

// DefaultLogLimit is how many bytes from the end of a log are served when the request names
// no limit.
const DefaultLogLimit = 1 << 20

// vncSocket is the VNC server's socket in a VM's run directory.
const vncSocket = "vnc.sock"

// Streams opens the streams of VMs on one node.
type Streams interface {
	// ReadLog returns at most limit bytes from the end of a VM's serial log (source "" or
	// "serial") or QEMU's log of its current and previous run (source "qemu").
	ReadLog(ctx context.Context, uid, source string, limit int64) ([]byte, error)
	// Dial connects to a VM's serial console (StreamConsole) or VNC server (StreamVNC).
	Dial(ctx context.Context, uid, stream string) (net.Conn, error)
	// GuestAgent carries out a request for a VM's guest agent (guest.go).
	GuestAgent(ctx context.Context, uid string, req GuestRequest) (GuestResult, error)
	// ServeDiskData answers a GET or HEAD (with ranges) of the data of a disk that moves away
	// from the node (diskdata.go).
	ServeDiskData(w http.ResponseWriter, r *http.Request, disk DiskRef)
}

// Service serves the streams of the VMs whose run directories are under DataDir.
type Service struct {
	DataDir string
}

var _ Streams = (*Service)(nil)

func (s *Service) runDir(uid string) (string, error) {
	if s.DataDir == "" {
		return "", errs.New(errs.ErrUnavailable, "the stream service has no data dir")
	}
	if err := storage.CheckUID(uid); err != nil {
		return "", errs.New(errs.ErrBadRequest, "%v", err)
	}
	return storage.VMRunDir(s.DataDir, uid), nil
}

// CheckSource checks a log source and returns its file name and what it is called.
func CheckSource(source string) (file, what string, err error) {
	switch source {
	case "", SourceSerial:
		return console.LogFile, "serial log", nil
	case SourceQEMU:
		return console.QEMULog, "QEMU log", nil
	}
	return "", "", errs.New(errs.ErrBadRequest, "source %q: want serial or qemu", source)
}

// ReadLog implements Streams.
func (s *Service) ReadLog(ctx context.Context, uid, source string, limit int64) ([]byte, error) {
	file, what, err := CheckSource(source)
	if err != nil {
		return nil, err
	}
	if limit <= 0 {
		limit = DefaultLogLimit
	}
	dir, err := s.runDir(uid)
	if err != nil {
		return nil, err
	}
	data, err := console.ReadLogs(dir, file, limit)
	if errors.Is(err, os.ErrNotExist) {
		return nil, errs.New(errs.ErrNotFound, "no %s yet: the VM has not run on this node", what)
	}
	return data, err
}

// Dial implements Streams.
func (s *Service) Dial(ctx context.Context, uid, stream string) (net.Conn, error) {
	var sock string
	switch stream {
	case StreamConsole:
		sock = console.ConsoleSocket
	case StreamVNC:
		sock = vncSocket
	default:
		return nil, errs.New(errs.ErrBadRequest, "stream %q: want console or vnc", stream)
	}
	dir, err := s.runDir(uid)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", filepath.Join(dir, sock))
	if err != nil {
		return nil, errs.New(errs.ErrUnavailable, "no %s now: is the VM running?", stream)
	}
	return c, nil
}
