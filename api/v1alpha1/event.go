package v1alpha1

// Event records something that happened to an object, for `rakhsh describe`. It has a subset
// of the Kubernetes core/v1 Event shape (no spec or status) and is also accepted with
// apiVersion v1.
type Event struct {
	TypeMeta       `json:",inline"`
	ObjectMeta     `json:"metadata,omitempty"`
	InvolvedObject EventObjectReference `json:"involvedObject"`
	// Reason is a short CamelCase machine-readable cause, e.g. "ImportFailed".
	Reason string `json:"reason"`
	// Message is for people, at most 4 KiB.
	Message string `json:"message,omitempty"`
	// Type is Normal (default) or Warning.
	Type EventType `json:"type,omitempty"`
	// Count is how many times the event happened (default 1).
	Count          int32       `json:"count,omitempty"`
	FirstTimestamp *Time       `json:"firstTimestamp,omitempty"`
	LastTimestamp  *Time       `json:"lastTimestamp,omitempty"`
	Source         EventSource `json:"source,omitempty"`
	// ReportingComponent names the controller that wrote the event, e.g. "rakhsh-image-controller".
	ReportingComponent string `json:"reportingComponent,omitempty"`
}

// EventObjectReference points at the object an event is about.
type EventObjectReference struct {
	Kind            string `json:"kind"`
	Name            string `json:"name"`
	Namespace       string `json:"namespace,omitempty"`
	UID             string `json:"uid,omitempty"`
	APIVersion      string `json:"apiVersion,omitempty"`
	ResourceVersion string `json:"resourceVersion,omitempty"`
}

// EventType is Normal or Warning.
type EventType string

// EventType values.
const (
	EventTypeNormal  EventType = "Normal"
	EventTypeWarning EventType = "Warning"
)

// EventSource is the component (and host) that wrote an event.
type EventSource struct {
	Component string `json:"component,omitempty"`
	Host      string `json:"host,omitempty"`
}

// EventMaxMessage is the longest message an Event may carry, in bytes.
const EventMaxMessage = 4 << 10
