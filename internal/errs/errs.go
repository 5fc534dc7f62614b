// Package errs holds the small set of error classes every Rakhsh component uses.
//
// Errors are wrapped with %w where they happen and classified with errors.Is against the
// sentinels below; only the API edges (the API server, the node stream service) map a class
// to an HTTP status and a Kubernetes Status reason, with HTTPStatus, and back, with ClassOf.
// Nothing matches on error strings.
package errs

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel classes.
var (
	ErrNotFound      = errors.New("not found")
	ErrAlreadyExists = errors.New("already exists")
	ErrConflict      = errors.New("conflict")
	ErrInvalid       = errors.New("invalid")
	ErrForbidden     = errors.New("forbidden")
	ErrUnauthorized  = errors.New("unauthorized")
	ErrUnavailable   = errors.New("unavailable")
	// ErrCompacted means a watch asked for a revision the store no longer keeps:
	// the caller must list again and watch from the list's revision.
	ErrCompacted = errors.New("revision compacted, relist")
	// ErrTooLarge means a request body or value is over its limit.
	ErrTooLarge = errors.New("too large")
	// ErrBadRequest means the request could not be decoded at all.
	ErrBadRequest = errors.New("bad request")
	// ErrFenced means a write carried the fence of a leadership term that has ended (see
	// store.Fence): the process that sent it no longer runs the controllers, and the store
	// refused the write.
	ErrFenced = errors.New("fenced: not the leader any more")
)

// Cause types for FieldError.Type, as in Kubernetes field causes.
const (
	FieldValueRequired     = "FieldValueRequired"
	FieldValueInvalid      = "FieldValueInvalid"
	FieldValueNotSupported = "FieldValueNotSupported"
	FieldValueDuplicate    = "FieldValueDuplicate"
	FieldValueForbidden    = "FieldValueForbidden"
	FieldValueTooLong      = "FieldValueTooLong"
	FieldUnknown           = "FieldValueUnknown"
)

// FieldError is one problem with one field of an object.
type FieldError struct {
	Field   string // dotted path, e.g. spec.cpu.cores
	Type    string // one of the Field* cause types
	Message string
}

func (f FieldError) Error() string {
	if f.Field == "" {
		return f.Message
	}
	return f.Field + ": " + f.Message
}

// FieldErrors is a list of field problems; a nil or empty list means valid.
type FieldErrors []FieldError

// Required records a missing field.
func (l *FieldErrors) Required(field, msg string) {
	if msg == "" {
		msg = "Required value"
	}
	*l = append(*l, FieldError{Field: field, Type: FieldValueRequired, Message: msg})
}

// Invalid records a field whose value is wrong.
func (l *FieldErrors) Invalid(field string, value any, msg string) {
	m := msg
	if value != nil {
		m = fmt.Sprintf("Invalid value: %s: %s", quote(value), msg)
	}
	*l = append(*l, FieldError{Field: field, Type: FieldValueInvalid, Message: m})
}

// NotSupported records a value outside an enum.
func (l *FieldErrors) NotSupported(field string, value any, allowed []string) {
	qs := make([]string, len(allowed))
	for i, a := range allowed {
		qs[i] = fmt.Sprintf("%q", a)
	}
	*l = append(*l, FieldError{Field: field, Type: FieldValueNotSupported,
		Message: fmt.Sprintf("Unsupported value: %s: supported values: %s", quote(value), strings.Join(qs, ", "))})
}

// Forbidden records a field that may not be set or changed.
func (l *FieldErrors) Forbidden(field, msg string) {
	*l = append(*l, FieldError{Field: field, Type: FieldValueForbidden, Message: "Forbidden: " + msg})
}

// Duplicate records a repeated value.
func (l *FieldErrors) Duplicate(field string, value any) {
	*l = append(*l, FieldError{Field: field, Type: FieldValueDuplicate, Message: fmt.Sprintf("Duplicate value: %s", quote(value))})
}

// Unknown records a field the schema does not have; didYouMean, when not empty, is the
// known field it is likely a typo of.
func (l *FieldErrors) Unknown(field, didYouMean string) {
	msg := "unknown field; Rakhsh does not support it"
	if didYouMean != "" {
		msg = fmt.Sprintf("unknown field; did you mean %q?", didYouMean)
	}
	*l = append(*l, FieldError{Field: field, Type: FieldUnknown, Message: msg})
}

func quote(v any) string {
	if s, ok := v.(string); ok {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("%v", v)
}

// InvalidError is an ErrInvalid carrying one cause per field.
type InvalidError struct {
	Kind   string
	Name   string
	Causes FieldErrors
}

func (e *InvalidError) Error() string {
	parts := make([]string, len(e.Causes))
	for i, c := range e.Causes {
		parts[i] = c.Error()
	}
	name := e.Name
	if name == "" {
		name = "(no name)"
	}
	return fmt.Sprintf("%s %q is invalid: %s", e.Kind, name, strings.Join(parts, "; "))
}

// Is makes errors.Is(err, ErrInvalid) true.
func (e *InvalidError) Is(target error) bool { return target == ErrInvalid }

// NewInvalid returns nil when causes is empty, else an *InvalidError.
func NewInvalid(kind, name string, causes FieldErrors) error {
	if len(causes) == 0 {
		return nil
	}
	return &InvalidError{Kind: kind, Name: name, Causes: causes}
}

// Classed wraps msg so that errors.Is(err, class) holds and Error() returns msg alone.
type classed struct {
	class error
	msg   string
}

func (c *classed) Error() string        { return c.msg }
func (c *classed) Is(target error) bool { return target == c.class }

// New returns an error of the given class whose message is exactly the formatted text.
func New(class error, format string, args ...any) error {
	return &classed{class: class, msg: fmt.Sprintf(format, args...)}
}
