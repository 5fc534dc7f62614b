package runtime

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"strings"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

// Recorder writes Events about objects, which `rakhsh describe` shows.
type Recorder struct {
	C         client.Interface
	Component string
	Host      string
	Log       *slog.Logger
}

// Event records an event of type Normal or Warning about the object of the given kind.
// Repeats of the same event (same object, type, reason, message and source) are merged into
// one Event whose count grows and whose lastTimestamp moves, as Kubernetes does, so a crash
// loop makes one line with a count rather than a page. Failures to record are logged, never
// returned: events are advisory.
func (r *Recorder) Event(ctx context.Context, kind string, obj v1alpha1.Object, typ, reason, message string) {
	m := obj.GetObjectMeta()
	ns := m.Namespace
	if ns == "" {
		ns = "default" // events about cluster-scoped objects live in the default project
	}
	if len(message) > 4000 {
		message = message[:4000]
	}
	now := v1alpha1.Now()
	name := eventName(m.Name, kind, m.UID, typ, reason, message, r.Component)
	for attempt := 0; attempt < 3; attempt++ {
		var cur v1alpha1.Event
		err := r.C.Get(ctx, "events", ns, name, &cur)
		if err == nil {
			cur.Count++
			cur.LastTimestamp = &now
			if err = r.C.Update(ctx, "events", ns, name, &cur, nil); err == nil || !client.IsConflict(err) {
				break
			}
			continue
		}
		if !client.IsNotFound(err) {
			break
		}
		ev := v1alpha1.Event{
			TypeMeta:   v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "Event"},
			ObjectMeta: v1alpha1.ObjectMeta{Name: name, Namespace: ns},
			InvolvedObject: v1alpha1.EventObjectReference{Kind: kind, Name: m.Name, Namespace: m.Namespace,
				UID: m.UID, APIVersion: v1alpha1.APIVersion},
			Reason: reason, Message: message, Type: v1alpha1.EventType(typ), Count: 1,
			FirstTimestamp: &now, LastTimestamp: &now,
			Source: v1alpha1.EventSource{Component: r.Component, Host: r.Host},
		}
		if err = r.C.Create(ctx, "events", ns, &ev, nil); err == nil || !client.IsAlreadyExists(err) {
			break
		}
	}
	if err := ctx.Err(); err != nil && r.Log != nil {
		r.Log.Debug("recording event failed", "reason", reason, "err", err)
	}
}

// eventName is the name of the Event that collects the repeats of one event: the object's
// name and a hash of what makes two events the same.
func eventName(objName string, parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	prefix := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '-'
	}, strings.ToLower(objName))
	if len(prefix) > 40 {
		prefix = prefix[:40]
	}
	prefix = strings.Trim(prefix, "-")
	if prefix == "" {
		prefix = "event"
	}
	return prefix + "-" + hex.EncodeToString(h.Sum(nil))[:16]
}

// OperationEvent records the event of an operation that reached phase: Warning when it
// failed, Normal otherwise.
func (r *Recorder) OperationEvent(ctx context.Context, op *v1alpha1.VirtualMachineOperation, phase v1alpha1.VMOPPhase, msg string) {
	typ := "Normal"
	if phase == v1alpha1.VMOPPhaseFailed {
		typ = "Warning"
	}
	r.Event(ctx, "VirtualMachineOperation", op, typ, string(phase), msg)
}
