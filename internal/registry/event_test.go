package registry

import (
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

func TestEventDefault(t *testing.T) {
	s := tkStrategy(t, "Event")
	ts := v1alpha1.NewTime(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC))
	e := &v1alpha1.Event{LastTimestamp: &ts}
	s.Default(e)
	s.Default(e)
	if e.Type != v1alpha1.EventTypeNormal || e.Count != 1 || e.FirstTimestamp == nil || !e.FirstTimestamp.Equal(ts.Time) {
		t.Errorf("defaults: %+v", e)
	}
	w := &v1alpha1.Event{Type: "Warning", Count: 7, FirstTimestamp: &ts}
	s.Default(w)
	if w.Type != "Warning" || w.Count != 7 || w.LastTimestamp == nil || !w.LastTimestamp.Equal(ts.Time) {
		t.Errorf("kept: %+v", w)
	}
}

func TestEventValidate(t *testing.T) {
	s := tkStrategy(t, "Event")
	t1 := v1alpha1.NewTime(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC))
	t0 := v1alpha1.NewTime(t1.Add(-time.Hour))
	mk := func(mod func(*v1alpha1.Event)) *v1alpha1.Event {
		e := &v1alpha1.Event{InvolvedObject: v1alpha1.EventObjectReference{Kind: "VirtualMachine", Name: "vm1", Namespace: "proj"},
			Reason: "Started", Message: "the VM started", Source: v1alpha1.EventSource{Component: "rakhsh-agent", Host: "node1"}}
		mod(e)
		return e
	}
	tkRunCases(t, s, []tkCase[*v1alpha1.Event]{
		{"valid", mk(func(*v1alpha1.Event) {}), nil},
		{"valid warning with times", mk(func(e *v1alpha1.Event) { e.Type, e.FirstTimestamp, e.LastTimestamp, e.Count = "Warning", &t0, &t1, 3 }), nil},
		{"missing everything", mk(func(e *v1alpha1.Event) { *e = v1alpha1.Event{} }),
			[]tkCause{tkRequired("involvedObject.kind"), tkRequired("involvedObject.name"), tkRequired("reason")}},
		{"bad type", mk(func(e *v1alpha1.Event) { e.Type = "Error" }), []tkCause{tkNotSupported("type")}},
		{"long message", mk(func(e *v1alpha1.Event) { e.Message = strings.Repeat("m", 4097) }), []tkCause{tkInvalid("message")}},
		{"message at the limit", mk(func(e *v1alpha1.Event) { e.Message = strings.Repeat("m", 4096) }), nil},
		{"long reason", mk(func(e *v1alpha1.Event) { e.Reason = strings.Repeat("R", 129) }), []tkCause{tkInvalid("reason")}},
		{"bad namespace", mk(func(e *v1alpha1.Event) { e.InvolvedObject.Namespace = "Proj" }), []tkCause{tkInvalid("involvedObject.namespace")}},
		{"negative count", mk(func(e *v1alpha1.Event) { e.Count = -2 }), []tkCause{tkInvalid("count")}},
		{"last before first", mk(func(e *v1alpha1.Event) { e.FirstTimestamp, e.LastTimestamp = &t1, &t0 }), []tkCause{tkInvalid("lastTimestamp")}},
	})
	old := mk(func(*v1alpha1.Event) {})
	n := mk(func(e *v1alpha1.Event) { e.Count, e.Message = 2, "again" })
	tkCheck(t, s.ValidateUpdate(n, old))
	n.InvolvedObject.Name = "vm2"
	tkCheck(t, s.ValidateUpdate(n, old), tkForbidden("involvedObject"))
}

func FuzzValidateEvent(f *testing.F) {
	tkFuzzSeeds(f, "Event",
		`{"involvedObject":{"kind":"VirtualMachine","name":"vm","namespace":"p"},"reason":"Started","message":"ok"}`,
		`{"involvedObject":{"kind":"VirtualDisk"},"type":"Warning","count":3,"lastTimestamp":"2025-01-01T00:00:00Z"}`,
		`{"reason":"X","firstTimestamp":"2025-01-02T00:00:00Z","lastTimestamp":"2025-01-01T00:00:00.5Z","count":-1}`,
	)
}
