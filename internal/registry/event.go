package registry

import (
	"fmt"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
)

func init() {
	registerTyped("Event", typed[*v1alpha1.Event]{
		Default:        defaultEvent,
		Validate:       validateEvent,
		ValidateUpdate: validateEventUpdate,
	})
}

// defaultEvent sets type Normal and count 1, and fills whichever of first/last timestamp is
// missing from the other.
func defaultEvent(e *v1alpha1.Event) {
	if e.Type == "" {
		e.Type = v1alpha1.EventTypeNormal
	}
	if e.Count == 0 {
		e.Count = 1
	}
	if e.FirstTimestamp == nil && e.LastTimestamp == nil && e.CreationTimestamp != nil {
		// An event written without times happened when it was stored.
		t := *e.CreationTimestamp
		e.FirstTimestamp = &t
	}
	if e.FirstTimestamp == nil && e.LastTimestamp != nil {
		t := *e.LastTimestamp
		e.FirstTimestamp = &t
	}
	if e.LastTimestamp == nil && e.FirstTimestamp != nil {
		t := *e.FirstTimestamp
		e.LastTimestamp = &t
	}
}

const (
	maxEventReason = 128
	maxEventField  = 253
)

var eventTypes = []string{string(v1alpha1.EventTypeNormal), string(v1alpha1.EventTypeWarning)}

func validateEvent(e *v1alpha1.Event) errs.FieldErrors {
	var fe errs.FieldErrors
	ref := e.InvolvedObject
	if ref.Kind == "" {
		fe.Required("involvedObject.kind", "")
	} else if len(ref.Kind) > maxEventField {
		fe.Invalid("involvedObject.kind", nil, fmt.Sprintf("must be at most %d characters", maxEventField))
	}
	if ref.Name == "" {
		fe.Required("involvedObject.name", "")
	} else if len(ref.Name) > maxEventField {
		fe.Invalid("involvedObject.name", nil, fmt.Sprintf("must be at most %d characters", maxEventField))
	}
	if ref.Namespace != "" {
		if msg := ValidateName(ref.Namespace); msg != "" {
			fe.Invalid("involvedObject.namespace", ref.Namespace, msg)
		}
	}
	if e.Reason == "" {
		fe.Required("reason", "a short CamelCase reason such as ImportFailed is required")
	} else if len(e.Reason) > maxEventReason {
		fe.Invalid("reason", nil, fmt.Sprintf("must be at most %d characters", maxEventReason))
	}
	if len(e.Message) > v1alpha1.EventMaxMessage {
		fe.Invalid("message", nil, fmt.Sprintf("must be at most %d bytes (has %d)", v1alpha1.EventMaxMessage, len(e.Message)))
	}
	switch e.Type {
	case "", v1alpha1.EventTypeNormal, v1alpha1.EventTypeWarning:
	default:
		fe.NotSupported("type", string(e.Type), eventTypes)
	}
	if e.Count < 0 {
		fe.Invalid("count", e.Count, "must not be negative")
	}
	if e.FirstTimestamp != nil && e.LastTimestamp != nil && e.LastTimestamp.Before(e.FirstTimestamp.Time) {
		fe.Invalid("lastTimestamp", nil, "must not be before firstTimestamp")
	}
	return fe
}

func validateEventUpdate(n, o *v1alpha1.Event) errs.FieldErrors {
	var fe errs.FieldErrors
	chkUnchanged(&fe, "involvedObject", n.InvolvedObject, o.InvolvedObject, "")
	return fe
}
