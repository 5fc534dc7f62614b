package qmp

import (
	"context"
	"errors"
	"os"
)

// Run states reported by query-status (QEMU's RunState enum).
const (
	StatusPrelaunch     = "prelaunch" // started with -S, never run
	StatusRunning       = "running"
	StatusPaused        = "paused" // stopped by "stop"
	StatusShutdown      = "shutdown"
	StatusSuspended     = "suspended"
	StatusGuestPanicked = "guest-panicked"
	StatusInternalError = "internal-error"
	StatusIOError       = "io-error"
	StatusWatchdog      = "watchdog"
	StatusDebug         = "debug"
	StatusInMigrate     = "inmigrate"
	StatusPostMigrate   = "postmigrate"
	StatusFinishMigrate = "finish-migrate"
	StatusRestoreVM     = "restore-vm"
	StatusSaveVM        = "save-vm"
	StatusColo          = "colo"
)

// StatusInfo is the reply of query-status.
type StatusInfo struct {
	Status  string `json:"status"` // one of the Status* constants
	Running bool   `json:"running"`
}

// QueryStatus runs query-status.
func (c *Conn) QueryStatus(ctx context.Context) (StatusInfo, error) {
	var s StatusInfo
	err := c.Execute(ctx, "query-status", nil, &s)
	return s, err
}

// Cont runs cont: start or resume the vCPUs.
func (c *Conn) Cont(ctx context.Context) error { return c.Execute(ctx, "cont", nil, nil) }

// Stop runs stop: pause the vCPUs.
func (c *Conn) Stop(ctx context.Context) error { return c.Execute(ctx, "stop", nil, nil) }

// SystemPowerdown runs system_powerdown: press the ACPI power button. The
// guest decides whether to shut down.
func (c *Conn) SystemPowerdown(ctx context.Context) error {
	return c.Execute(ctx, "system_powerdown", nil, nil)
}

// SystemReset runs system_reset: hard reset the machine.
func (c *Conn) SystemReset(ctx context.Context) error {
	return c.Execute(ctx, "system_reset", nil, nil)
}

// Quit runs quit: QEMU exits at once. QEMU replies, emits SHUTDOWN and
// closes the socket; if the socket closes before the reply arrives, Quit
// still succeeds (it fails only if the connection was already down).
func (c *Conn) Quit(ctx context.Context) error {
	if err := c.Err(); err != nil {
		return callErr("quit", err)
	}
	err := c.Execute(ctx, "quit", nil, nil)
	if errors.Is(err, ErrDisconnected) && !errors.Is(err, ErrClosed) {
		return nil
	}
	return err
}

// CPUInfo is one element of the query-cpus-fast reply.
type CPUInfo struct {
	CPUIndex int      `json:"cpu-index"`
	QOMPath  string   `json:"qom-path"`
	ThreadID int      `json:"thread-id"` // host thread (TID) running this vCPU
	Target   string   `json:"target"`    // e.g. "x86_64"
	Props    CPUProps `json:"props"`
}

// CPUProps is the vCPU's place in the topology; absent members are nil.
type CPUProps struct {
	NodeID    *int `json:"node-id,omitempty"`
	SocketID  *int `json:"socket-id,omitempty"`
	DieID     *int `json:"die-id,omitempty"`
	ClusterID *int `json:"cluster-id,omitempty"`
	CoreID    *int `json:"core-id,omitempty"`
	ThreadID  *int `json:"thread-id,omitempty"`
}

// QueryCPUsFast runs query-cpus-fast.
func (c *Conn) QueryCPUsFast(ctx context.Context) ([]CPUInfo, error) {
	var cpus []CPUInfo
	err := c.Execute(ctx, "query-cpus-fast", nil, &cpus)
	return cpus, err
}

// QueryVersion runs query-version.
func (c *Conn) QueryVersion(ctx context.Context) (Version, error) {
	var v Version
	err := c.Execute(ctx, "query-version", nil, &v)
	return v, err
}

// GetFD runs getfd: QEMU keeps a duplicate of f under name, for commands
// that take an fd name (e.g. netdev tap fd=NAME, chardev, migrate "fd:NAME").
func (c *Conn) GetFD(ctx context.Context, name string, f *os.File) error {
	return c.ExecuteWithFiles(ctx, "getfd", map[string]string{"fdname": name}, nil, f)
}

// CloseFD runs closefd: QEMU closes the descriptor stored under name.
func (c *Conn) CloseFD(ctx context.Context, name string) error {
	return c.Execute(ctx, "closefd", map[string]string{"fdname": name}, nil)
}

// AddFDInfo is the reply of add-fd.
type AddFDInfo struct {
	FDSetID int `json:"fdset-id"`
	FD      int `json:"fd"` // QEMU's descriptor number, usable as /dev/fdset/ID
}

// AddFD runs add-fd: QEMU adds a duplicate of f to fd set fdsetID (a new set
// if fdsetID < 0), annotated with opaque if non-empty.
func (c *Conn) AddFD(ctx context.Context, f *os.File, fdsetID int, opaque string) (AddFDInfo, error) {
	args := struct {
		FDSetID *int   `json:"fdset-id,omitempty"`
		Opaque  string `json:"opaque,omitempty"`
	}{Opaque: opaque}
	if fdsetID >= 0 {
		args.FDSetID = &fdsetID
	}
	var info AddFDInfo
	err := c.ExecuteWithFiles(ctx, "add-fd", args, &info, f)
	return info, err
}
