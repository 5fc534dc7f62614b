package qmp

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// VersionTriple is a three-part QEMU version number.
type VersionTriple struct {
	Major int `json:"major"`
	Minor int `json:"minor"`
	Micro int `json:"micro"`
}

// String formats the triple as "major.minor.micro".
func (v VersionTriple) String() string {
	return strconv.Itoa(v.Major) + "." + strconv.Itoa(v.Minor) + "." + strconv.Itoa(v.Micro)
}

// Version is QEMU's version as reported in the greeting and by query-version.
type Version struct {
	QEMU    VersionTriple `json:"qemu"`
	Package string        `json:"package"` // distribution build string, e.g. "Debian 1:7.2+dfsg-7"
}

// String formats the version as "7.2.0" or "7.2.0 (Debian 1:7.2+dfsg-7)".
func (v Version) String() string {
	if v.Package == "" {
		return v.QEMU.String()
	}
	return v.QEMU.String() + " (" + v.Package + ")"
}

// Greeting is the first message QEMU sends on a new QMP connection.
type Greeting struct {
	Version Version `json:"version"`
	// Capabilities the server offers (QEMU 7.2 offers "oob"). This package
	// enables none of them.
	Capabilities []string `json:"capabilities"`
}

// Event is one asynchronous QMP event.
type Event struct {
	// Name is the event name, e.g. "STOP", or EventDisconnected for the
	// synthetic event that ends every subscription.
	Name string
	// Data is the event's "data" member, nil if the event has none.
	Data json.RawMessage
	// Time is when QEMU emitted the event (its wall clock). For the synthetic
	// EventDisconnected it is when the client noticed the disconnect.
	Time time.Time
}

// DecodeData unmarshals the event's data into v. An event without data leaves
// v untouched.
func (e Event) DecodeData(v any) error {
	if len(e.Data) == 0 {
		return nil
	}
	return json.Unmarshal(e.Data, v)
}

// Names of commonly used QEMU events, and the synthetic disconnect event.
const (
	// EventDisconnected is synthesized by this package, never sent by QEMU:
	// it is the last event of every subscription and is delivered when the
	// connection ends (EOF, read or write error, Close). Its Data is
	// {"error": "<reason>"}.
	EventDisconnected = "DISCONNECTED"

	EventShutdown           = "SHUTDOWN"  // data: {"guest": bool, "reason": string}
	EventPowerdown          = "POWERDOWN" // ACPI power button pressed (system_powerdown)
	EventReset              = "RESET"     // data: {"guest": bool, "reason": string}
	EventStop               = "STOP"
	EventResume             = "RESUME"
	EventSuspend            = "SUSPEND"
	EventWakeup             = "WAKEUP"
	EventGuestPanicked      = "GUEST_PANICKED"
	EventGuestCrashloaded   = "GUEST_CRASHLOADED"
	EventWatchdog           = "WATCHDOG"
	EventMigration          = "MIGRATION" // data: {"status": string}
	EventMigrationPass      = "MIGRATION_PASS"
	EventBlockJobCompleted  = "BLOCK_JOB_COMPLETED"
	EventBlockJobError      = "BLOCK_JOB_ERROR"
	EventBlockIOError       = "BLOCK_IO_ERROR"
	EventJobStatusChange    = "JOB_STATUS_CHANGE"
	EventDeviceDeleted      = "DEVICE_DELETED"
	EventNICRxFilterChanged = "NIC_RX_FILTER_CHANGED"
)

// messageKind classifies one message received from the server.
type messageKind int

const (
	kindGreeting messageKind = iota + 1
	kindReturn
	kindError
	kindEvent
)

func (k messageKind) String() string {
	switch k {
	case kindGreeting:
		return "greeting"
	case kindReturn:
		return "return"
	case kindError:
		return "error"
	case kindEvent:
		return "event"
	}
	return "messageKind(" + strconv.Itoa(int(k)) + ")"
}

// message is one decoded server message.
type message struct {
	kind messageKind

	// Replies (kindReturn, kindError). hasID is false when the reply has no
	// id or an id this client cannot have sent (not an unsigned integer);
	// QEMU omits the id when it could not parse the request at all.
	hasID bool
	id    uint64

	ret json.RawMessage // kindReturn: the "return" member, never nil

	errClass, errDesc string // kindError

	event    Event    // kindEvent
	greeting Greeting // kindGreeting
}

// errMalformed is wrapped by every decodeMessage error.
var errMalformed = errors.New("qmp: malformed message")

// decodeMessage decodes and classifies one line received from the server.
// Surrounding whitespace (QEMU ends lines with "\r\n") is ignored. A message
// must be a JSON object with exactly one of the members "QMP", "return",
// "error" or "event".
func decodeMessage(line []byte) (message, error) {
	var m message
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(line, &obj); err != nil {
		return m, fmt.Errorf("%w: %w", errMalformed, err)
	}
	if obj == nil {
		return m, fmt.Errorf("%w: not a JSON object", errMalformed)
	}
	var key string
	n := 0
	for _, k := range [...]string{"QMP", "return", "error", "event"} {
		if _, ok := obj[k]; ok {
			key = k
			n++
		}
	}
	if n != 1 {
		return m, fmt.Errorf("%w: want exactly one of QMP, return, error, event; have %d", errMalformed, n)
	}

	switch key {
	case "QMP":
		m.kind = kindGreeting
		var g *Greeting
		if err := json.Unmarshal(obj["QMP"], &g); err != nil {
			return m, fmt.Errorf("%w: greeting: %w", errMalformed, err)
		}
		if g == nil {
			return m, fmt.Errorf("%w: greeting: null", errMalformed)
		}
		m.greeting = *g

	case "event":
		m.kind = kindEvent
		if err := json.Unmarshal(obj["event"], &m.event.Name); err != nil {
			return m, fmt.Errorf("%w: event name: %w", errMalformed, err)
		}
		if m.event.Name == "" {
			return m, fmt.Errorf("%w: empty event name", errMalformed)
		}
		if d, ok := obj["data"]; ok && !isNull(d) {
			m.event.Data = d
		}
		if ts, ok := obj["timestamp"]; ok && !isNull(ts) {
			var t struct {
				Seconds      int64 `json:"seconds"`
				Microseconds int64 `json:"microseconds"`
			}
			if err := json.Unmarshal(ts, &t); err != nil {
				return m, fmt.Errorf("%w: event timestamp: %w", errMalformed, err)
			}
			// QEMU uses {-1, -1} when it could not read the clock.
			if t.Seconds >= 0 && t.Microseconds >= 0 {
				m.event.Time = time.Unix(t.Seconds, t.Microseconds*int64(time.Microsecond))
			}
		}

	case "return":
		m.kind = kindReturn
		m.ret = obj["return"]
		if m.ret == nil {
			m.ret = json.RawMessage("null")
		}
		m.id, m.hasID = decodeID(obj["id"])

	case "error":
		m.kind = kindError
		var e *struct {
			Class string `json:"class"`
			Desc  string `json:"desc"`
		}
		if err := json.Unmarshal(obj["error"], &e); err != nil {
			return m, fmt.Errorf("%w: error member: %w", errMalformed, err)
		}
		if e == nil {
			return m, fmt.Errorf("%w: error member: null", errMalformed)
		}
		m.errClass, m.errDesc = e.Class, e.Desc
		m.id, m.hasID = decodeID(obj["id"])
	}
	return m, nil
}

// decodeID parses a reply id. Only unsigned integers can match a request of
// ours; anything else reports false.
func decodeID(raw json.RawMessage) (uint64, bool) {
	if raw == nil {
		return 0, false
	}
	id, err := strconv.ParseUint(string(bytes.TrimSpace(raw)), 10, 64)
	if err != nil {
		return 0, false
	}
	return id, true
}

func isNull(raw json.RawMessage) bool {
	return string(bytes.TrimSpace(raw)) == "null"
}
