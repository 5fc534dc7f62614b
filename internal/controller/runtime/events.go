package runtime

import (
	"context"
	"log/slog"
	"strings"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

// Recorder writes Events about objects, which `rakhsh describe` shows.
type Recorder struct {
	C         *client.Client
	Component string
	Host      string
	Log       *slog.Logger
}

// Event records an event of type Normal or Warning about the object of the given kind.
// Failures to record are logged, never returned: events are advisory.
func (r *Recorder) Event(ctx context.Context, kind string, obj v1alpha1.Object, typ, reason, message string) {
	m := obj.GetObjectMeta()
	ns := m.Namespace
	if ns == "" {
		ns = "default" // events about cluster-scoped objects live in the default project
	}
	now := v1alpha1.Now()
	ev := v1alpha1.Event{
		TypeMeta:   v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "Event"},
		ObjectMeta: v1alpha1.ObjectMeta{GenerateName: strings.ToLower(m.Name) + "-", Namespace: ns},
		InvolvedObject: v1alpha1.EventObjectReference{Kind: kind, Name: m.Name, Namespace: m.Namespace,
			UID: m.UID, APIVersion: v1alpha1.APIVersion},
		Reason: reason, Message: message, Type: v1alpha1.EventType(typ), Count: 1,
		FirstTimestamp: &now, LastTimestamp: &now,
		Source: v1alpha1.EventSource{Component: r.Component, Host: r.Host},
	}
	if len(ev.Message) > 4000 {
		ev.Message = ev.Message[:4000]
	}
	if err := r.C.Create(ctx, "events", ns, &ev, nil); err != nil && r.Log != nil {
		r.Log.Debug("recording event failed", "reason", reason, "err", err)
	}
}
