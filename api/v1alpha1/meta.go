// Package v1alpha1 holds the public types of the Rakhsh API, group virtualization.rakhsh.io,
// version v1alpha1. Kinds, field names, enums and phases mirror Deckhouse Virtualization
// (virtualization.deckhouse.io/v1alpha2) so that manifests move between the two with only the
// apiVersion changed.
package v1alpha1

import (
	"encoding/json"
	"strconv"
	"time"
)

// Group, version and the apiVersion strings the API accepts.
const (
	Group        = "virtualization.rakhsh.io"
	Version      = "v1alpha1"
	APIVersion   = Group + "/" + Version
	DeckhouseAPI = "virtualization.deckhouse.io/v1alpha2"
	// CoreAPIVersion is what Kubernetes uses for Secret and Event; accepted for those kinds.
	CoreAPIVersion = "v1"
)

// TypeMeta names the kind of an object.
type TypeMeta struct {
	APIVersion string `json:"apiVersion,omitempty"`
	Kind       string `json:"kind,omitempty"`
}

// Time is a timestamp serialised as RFC 3339 in UTC with microseconds, as Kubernetes'
// MicroTime is (its metav1.Time has seconds): events and transitions within one second keep
// their order for the people who read them. Readers of RFC 3339 accept the fraction.
type Time struct{ time.Time }

// TimeFormat is how Time is written.
const TimeFormat = "2006-01-02T15:04:05.000000Z07:00"

// Now returns the current time truncated to microseconds.
func Now() Time { return NewTime(time.Now()) }

// NewTime wraps t, in UTC, truncated to microseconds (what the JSON form keeps).
func NewTime(t time.Time) Time { return Time{t.UTC().Truncate(time.Microsecond)} }

// MarshalJSON writes RFC 3339 with microseconds, or null for the zero time.
func (t Time) MarshalJSON() ([]byte, error) {
	if t.IsZero() {
		return []byte("null"), nil
	}
	return json.Marshal(t.UTC().Format(TimeFormat))
}

// UnmarshalJSON reads RFC 3339 (with or without fractional seconds) or null.
func (t *Time) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		t.Time = time.Time{}
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	if s == "" {
		t.Time = time.Time{}
		return nil
	}
	p, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return err
	}
	t.Time = p.UTC()
	return nil
}

// ObjectMeta is the metadata every stored object carries.
type ObjectMeta struct {
	Name            string `json:"name,omitempty"`
	GenerateName    string `json:"generateName,omitempty"`
	Namespace       string `json:"namespace,omitempty"`
	UID             string `json:"uid,omitempty"`
	ResourceVersion string `json:"resourceVersion,omitempty"`
	// CreationRevision is the store revision that created the object, set by the server.
	// Revisions are totally ordered, so it orders objects by creation exactly where
	// creationTimestamp may tie (a user's Stop and Start within one second).
	CreationRevision  string `json:"creationRevision,omitempty"`
	Generation        int64  `json:"generation,omitempty"`
	CreationTimestamp *Time  `json:"creationTimestamp,omitempty"`
	DeletionTimestamp *Time  `json:"deletionTimestamp,omitempty"`
	// DeletionGracePeriodSeconds is the grace period a delete asked for (?gracePeriodSeconds=N,
	// or 0 with --force): a VM being deleted gets at most this long to shut down.
	DeletionGracePeriodSeconds *int64            `json:"deletionGracePeriodSeconds,omitempty"`
	Labels                     map[string]string `json:"labels,omitempty"`
	Annotations                map[string]string `json:"annotations,omitempty"`
	Finalizers                 []string          `json:"finalizers,omitempty"`
	OwnerReferences            []OwnerReference  `json:"ownerReferences,omitempty"`
}

// CreatedBefore says whether m was created before o: by creationRevision when both have
// one, else by creationTimestamp, and by name when those tie.
func (m *ObjectMeta) CreatedBefore(o *ObjectMeta) bool {
	mr, merr := strconv.ParseInt(m.CreationRevision, 10, 64)
	or, oerr := strconv.ParseInt(o.CreationRevision, 10, 64)
	if merr == nil && oerr == nil && mr != or {
		return mr < or
	}
	var mt, ot time.Time
	if m.CreationTimestamp != nil {
		mt = m.CreationTimestamp.Time
	}
	if o.CreationTimestamp != nil {
		ot = o.CreationTimestamp.Time
	}
	if !mt.Equal(ot) {
		return mt.Before(ot)
	}
	return m.Name < o.Name
}

// GetObjectMeta lets every kind that embeds ObjectMeta satisfy Object.
func (m *ObjectMeta) GetObjectMeta() *ObjectMeta { return m }

// OwnerReference points at the object that owns this one.
type OwnerReference struct {
	APIVersion         string `json:"apiVersion"`
	Kind               string `json:"kind"`
	Name               string `json:"name"`
	UID                string `json:"uid"`
	Controller         *bool  `json:"controller,omitempty"`
	BlockOwnerDeletion *bool  `json:"blockOwnerDeletion,omitempty"`
}

// Object is implemented by every kind.
type Object interface {
	GetObjectMeta() *ObjectMeta
}

// Condition is one observed aspect of an object's state, as in Kubernetes.
type Condition struct {
	Type               string `json:"type"`
	Status             string `json:"status"` // True, False, Unknown
	Reason             string `json:"reason,omitempty"`
	Message            string `json:"message,omitempty"`
	LastTransitionTime *Time  `json:"lastTransitionTime,omitempty"`
	ObservedGeneration int64  `json:"observedGeneration,omitempty"`
}

// Condition status values.
const (
	ConditionTrue    = "True"
	ConditionFalse   = "False"
	ConditionUnknown = "Unknown"
)

// FindCondition returns the condition of type t, or nil.
func FindCondition(conds []Condition, t string) *Condition {
	for i := range conds {
		if conds[i].Type == t {
			return &conds[i]
		}
	}
	return nil
}

// SetCondition adds or replaces the condition of c.Type, keeping LastTransitionTime when the
// status did not change. It returns true when anything changed.
func SetCondition(conds *[]Condition, c Condition) bool {
	old := FindCondition(*conds, c.Type)
	if old == nil {
		if c.LastTransitionTime == nil {
			now := Now()
			c.LastTransitionTime = &now
		}
		*conds = append(*conds, c)
		return true
	}
	if old.Status == c.Status && old.Reason == c.Reason && old.Message == c.Message && old.ObservedGeneration == c.ObservedGeneration {
		return false
	}
	if old.Status == c.Status {
		c.LastTransitionTime = old.LastTransitionTime
	} else if c.LastTransitionTime == nil {
		now := Now()
		c.LastTransitionTime = &now
	}
	*old = c
	return true
}

// RemoveCondition drops the condition of type t; it returns true when there was one.
func RemoveCondition(conds *[]Condition, t string) bool {
	for i := range *conds {
		if (*conds)[i].Type == t {
			*conds = append((*conds)[:i], (*conds)[i+1:]...)
			return true
		}
	}
	return false
}

// LocalObjectReference names an object in the same project.
type LocalObjectReference struct {
	Name string `json:"name"`
}

// ListMeta is the metadata of a list.
type ListMeta struct {
	ResourceVersion    string `json:"resourceVersion,omitempty"`
	Continue           string `json:"continue,omitempty"`
	RemainingItemCount *int64 `json:"remainingItemCount,omitempty"`
}

// List is the generic list every list call returns; Items are full objects.
type List struct {
	TypeMeta `json:",inline"`
	Metadata ListMeta          `json:"metadata"`
	Items    []json.RawMessage `json:"items"`
}

// StatusCause is one field problem in a Status.
type StatusCause struct {
	Type    string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
	Field   string `json:"field,omitempty"`
}

// StatusDetails says which object an error is about.
type StatusDetails struct {
	Name   string        `json:"name,omitempty"`
	Group  string        `json:"group,omitempty"`
	Kind   string        `json:"kind,omitempty"`
	UID    string        `json:"uid,omitempty"`
	Causes []StatusCause `json:"causes,omitempty"`
}

// Status is the Kubernetes-style result of a failed (or some successful) call.
type Status struct {
	TypeMeta `json:",inline"`
	Status   string         `json:"status"` // Success or Failure
	Message  string         `json:"message,omitempty"`
	Reason   string         `json:"reason,omitempty"`
	Details  *StatusDetails `json:"details,omitempty"`
	Code     int            `json:"code"`
}

// Status reasons.
const (
	ReasonNotFound           = "NotFound"
	ReasonAlreadyExists      = "AlreadyExists"
	ReasonConflict           = "Conflict"
	ReasonInvalid            = "Invalid"
	ReasonForbidden          = "Forbidden"
	ReasonUnauthorized       = "Unauthorized"
	ReasonTooManyRequests    = "TooManyRequests"
	ReasonServiceUnavailable = "ServiceUnavailable"
	ReasonBadRequest         = "BadRequest"
	ReasonMethodNotAllowed   = "MethodNotAllowed"
	ReasonRequestTooLarge    = "RequestEntityTooLarge"
	ReasonExpired            = "Expired"
	// ReasonLeaderFenced (409) refuses a controller's write made under a leadership term that
	// has ended: the serve process that sent it is no longer the control-plane leader.
	ReasonLeaderFenced     = "LeaderFenced"
	ReasonInternalError    = "InternalError"
	ReasonUnsupportedMedia = "UnsupportedMediaType"
)

// Watch event types.
const (
	WatchAdded    = "ADDED"
	WatchModified = "MODIFIED"
	WatchDeleted  = "DELETED"
	WatchBookmark = "BOOKMARK"
	WatchError    = "ERROR"
)

// WatchEvent is one line of a watch stream.
type WatchEvent struct {
	Type   string          `json:"type"`
	Object json.RawMessage `json:"object"`
}
