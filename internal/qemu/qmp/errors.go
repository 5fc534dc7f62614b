package qmp

import (
	"errors"
	"fmt"
)

var (
	// ErrDisconnected is matched (errors.Is) by every error caused by the end
	// of the connection: calls pending when it ended, calls made after it,
	// and Conn.Err. The underlying cause (io.EOF, a syscall error,
	// ErrClosed, ...) is wrapped as well.
	ErrDisconnected = errors.New("qmp: disconnected")

	// ErrClosed is the cause recorded when the connection was ended by
	// Conn.Close.
	ErrClosed = errors.New("qmp: connection closed by client")

	// ErrMessageTooLarge is the cause recorded when the server sent a line
	// longer than the configured maximum (WithMaxMessageSize).
	ErrMessageTooLarge = errors.New("qmp: message too large")

	// ErrProtocol is wrapped by errors about the server violating the
	// protocol during the handshake (no greeting, unexpected message).
	ErrProtocol = errors.New("qmp: protocol error")
)

// Error classes QEMU uses in {"error": {"class": ...}} replies.
const (
	ClassGenericError    = "GenericError"
	ClassCommandNotFound = "CommandNotFound"
	ClassDeviceNotActive = "DeviceNotActive"
	ClassDeviceNotFound  = "DeviceNotFound"
	ClassKVMMissingCap   = "KVMMissingCap"
)

// CommandError is an {"error": {"class", "desc"}} reply to a command.
type CommandError struct {
	Command string // the command that failed, e.g. "device_add"
	Class   string // QEMU's error class, e.g. ClassGenericError
	Desc    string // QEMU's human readable description
}

func (e *CommandError) Error() string {
	return fmt.Sprintf("qmp: %s: %s: %s", e.Command, e.Class, e.Desc)
}

// IsCommandError reports whether err is (or wraps) a *CommandError with the
// given class.
func IsCommandError(err error, class string) bool {
	var ce *CommandError
	return errors.As(err, &ce) && ce.Class == class
}
