package qmp

import (
	"encoding/json"
	"errors"
	"testing"
)

// FuzzDecodeMessage feeds arbitrary lines to the decoder that classifies
// every message from the server. It must never panic, must reject what it
// cannot classify with errMalformed, and what it accepts must be
// self-consistent.
func FuzzDecodeMessage(f *testing.F) {
	for _, s := range []string{
		fakeGreeting + "\r\n",
		`{"return": {}, "id": 1}`,
		`{"return": {"status": "prelaunch", "singlestep": false, "running": false}, "id": 2}`,
		`{"id": 9, "error": {"class": "GenericError", "desc": "Parameter 'fdname' is missing"}}`,
		`{"error": {"class": "GenericError", "desc": "JSON parse error, expecting value"}}`,
		`{"timestamp": {"seconds": 1795321188, "microseconds": 292482}, "event": "RESET", "data": {"guest": false, "reason": "host-qmp-system-reset"}}`,
		`{"timestamp": {"seconds": -1, "microseconds": -1}, "event": "STOP"}`,
		`{"return": {}, "id": "x"}`,
		`{"return": null, "id": 18446744073709551615}`,
		`[1]`,
		`null`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		m, err := decodeMessage(line)
		if err != nil {
			if !errors.Is(err, errMalformed) {
				t.Fatalf("error %v does not wrap errMalformed", err)
			}
			return
		}
		switch m.kind {
		case kindGreeting:
		case kindReturn:
			if !json.Valid(m.ret) {
				t.Fatalf("return member %q is not valid JSON", m.ret)
			}
		case kindError:
			if len(m.ret) != 0 {
				t.Fatal("error reply with a return value")
			}
		case kindEvent:
			if m.event.Name == "" {
				t.Fatal("event without a name")
			}
			if m.event.Data != nil && !json.Valid(m.event.Data) {
				t.Fatalf("event data %q is not valid JSON", m.event.Data)
			}
		default:
			t.Fatalf("accepted with kind %v", m.kind)
		}
		if m.hasID && m.kind != kindReturn && m.kind != kindError {
			t.Fatalf("%v has an id", m.kind)
		}
		// Decoding must be deterministic.
		m2, err := decodeMessage(line)
		if err != nil || m2.kind != m.kind || m2.id != m.id || m2.hasID != m.hasID {
			t.Fatalf("second decode differs: %+v vs %+v (%v)", m2, m, err)
		}
	})
}

func TestDecodeMessage(t *testing.T) {
	cases := []struct {
		in    string
		kind  messageKind
		id    uint64
		hasID bool
	}{
		{fakeGreeting, kindGreeting, 0, false},
		{`{"return": {}, "id": 1}` + "\r\n", kindReturn, 1, true},
		{`{"return": [], "id": "x"}`, kindReturn, 0, false},
		{`{"return": 1, "id": -1}`, kindReturn, 0, false},
		{`{"return": 1, "id": 1.5}`, kindReturn, 0, false},
		{`{"return": null, "id": 3}`, kindReturn, 3, true},
		{`{"id": 4, "error": {"class": "CommandNotFound", "desc": "d"}}`, kindError, 4, true},
		{`{"error": {"class": "GenericError", "desc": "JSON parse error"}}`, kindError, 0, false},
		{`{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}`, kindEvent, 0, false},
	}
	for _, c := range cases {
		m, err := decodeMessage([]byte(c.in))
		if err != nil {
			t.Errorf("%s: %v", c.in, err)
			continue
		}
		if m.kind != c.kind || m.id != c.id || m.hasID != c.hasID {
			t.Errorf("%s: got kind %v id %d/%v", c.in, m.kind, m.id, m.hasID)
		}
	}
	for _, bad := range []string{
		``, `null`, `[]`, `"x"`, `{}`, `{"id": 1}`,
		`{"return": {}, "error": {"class": "x"}, "id": 1}`,
		`{"event": "", "timestamp": {}}`, `{"event": 5}`, `{"event": null}`,
		`{"error": null}`, `{"error": "x"}`, `{"QMP": null}`, `{"QMP": 1}`,
		`{"event": "X", "timestamp": "now"}`, `{"return": {}`,
	} {
		if m, err := decodeMessage([]byte(bad)); err == nil {
			t.Errorf("%q accepted as %v", bad, m.kind)
		}
	}

	m, err := decodeMessage([]byte(`{"event": "STOP", "timestamp": {"seconds": 1795321188, "microseconds": 297469}}`))
	if err != nil || m.event.Time.UnixMicro() != 1795321188297469 || m.event.Data != nil {
		t.Errorf("event: %+v %v", m.event, err)
	}
	m, err = decodeMessage([]byte(`{"event": "STOP", "timestamp": {"seconds": -1, "microseconds": -1}, "data": null}`))
	if err != nil || !m.event.Time.IsZero() || m.event.Data != nil {
		t.Errorf("event without clock: %+v %v", m.event, err)
	}
}
