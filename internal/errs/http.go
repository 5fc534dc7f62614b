package errs

import (
	"errors"
	"net/http"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

type httpStatus struct {
	class  error
	code   int
	reason string
}

// httpStatuses maps the error classes to their HTTP code and Status reason at an API edge
// (the API server, the node stream service), in the order they are tested: an error that
// wraps several classes takes the first.
var httpStatuses = []httpStatus{
	{ErrNotFound, http.StatusNotFound, v1alpha1.ReasonNotFound},
	{ErrAlreadyExists, http.StatusConflict, v1alpha1.ReasonAlreadyExists},
	{ErrFenced, http.StatusConflict, v1alpha1.ReasonLeaderFenced},
	{ErrConflict, http.StatusConflict, v1alpha1.ReasonConflict},
	{ErrInvalid, http.StatusUnprocessableEntity, v1alpha1.ReasonInvalid},
	{ErrForbidden, http.StatusForbidden, v1alpha1.ReasonForbidden},
	{ErrUnauthorized, http.StatusUnauthorized, v1alpha1.ReasonUnauthorized},
	{ErrCompacted, http.StatusGone, v1alpha1.ReasonExpired},
	{ErrTooLarge, http.StatusRequestEntityTooLarge, v1alpha1.ReasonRequestTooLarge},
	{ErrBadRequest, http.StatusBadRequest, v1alpha1.ReasonBadRequest},
	{ErrUnavailable, http.StatusServiceUnavailable, v1alpha1.ReasonServiceUnavailable},
}

// Class returns err's class: the first class of httpStatuses that err wraps, or nil.
func Class(err error) error {
	if s := statusOf(err); s != nil {
		return s.class
	}
	return nil
}

// HTTPStatus returns the HTTP code and Status reason of err's class (Class), or 500
// InternalError for an error of no class.
func HTTPStatus(err error) (code int, reason string) {
	if s := statusOf(err); s != nil {
		return s.code, s.reason
	}
	return http.StatusInternalServerError, v1alpha1.ReasonInternalError
}

// statusOf returns the entry of httpStatuses of err's class, or nil.
func statusOf(err error) *httpStatus {
	for i := range httpStatuses {
		if errors.Is(err, httpStatuses[i].class) {
			return &httpStatuses[i]
		}
	}
	return nil
}

// ClassOf returns the class of an error answer with this HTTP code and Status reason: the
// class of the reason when it is known, else of the code alone (409 alone is a conflict), or
// nil for an answer of no class (500, say).
func ClassOf(code int, reason string) error {
	for _, s := range httpStatuses {
		if reason != "" && s.reason == reason {
			return s.class
		}
	}
	if code == http.StatusConflict {
		return ErrConflict
	}
	for _, s := range httpStatuses {
		if s.code == code {
			return s.class
		}
	}
	return nil
}
