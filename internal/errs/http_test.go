package errs

import (
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// TestHTTPStatusRoundTrip: every class maps to its code and reason, and back to itself, so
// an error that crosses a node stream or the API keeps its class.
func TestHTTPStatusRoundTrip(t *testing.T) {
	for _, s := range httpStatuses {
		err := New(s.class, "something about %s", "x")
		code, reason := HTTPStatus(fmt.Errorf("wrapped: %w", err))
		if code != s.code || reason != s.reason {
			t.Errorf("%v: got %d %s, want %d %s", s.class, code, reason, s.code, s.reason)
		}
		if c := Class(fmt.Errorf("wrapped: %w", err)); c != s.class {
			t.Errorf("%v: Class = %v", s.class, c)
		}
		if back := ClassOf(code, reason); back != s.class {
			t.Errorf("%v: ClassOf(%d, %s) = %v", s.class, code, reason, back)
		}
	}
	if c := Class(errors.New("boom")); c != nil {
		t.Errorf("an error of no class has class %v", c)
	}
	if code, reason := HTTPStatus(errors.New("boom")); code != http.StatusInternalServerError || reason != v1alpha1.ReasonInternalError {
		t.Errorf("an error of no class: %d %s", code, reason)
	}
	// An error of two classes takes the first of the table: a fenced write is not a plain conflict.
	both := fmt.Errorf("%w: %w", ErrConflict, ErrFenced)
	if _, reason := HTTPStatus(both); reason != v1alpha1.ReasonLeaderFenced {
		t.Errorf("fenced and conflict: reason %s", reason)
	}
}

func TestClassOfCodeAlone(t *testing.T) {
	for code, want := range map[int]error{
		http.StatusConflict:            ErrConflict,
		http.StatusNotFound:            ErrNotFound,
		http.StatusServiceUnavailable:  ErrUnavailable,
		http.StatusInternalServerError: nil,
		http.StatusTeapot:              nil,
	} {
		if got := ClassOf(code, ""); got != want {
			t.Errorf("ClassOf(%d) = %v, want %v", code, got, want)
		}
	}
	if got := ClassOf(http.StatusConflict, "SomeReasonOfTheFuture"); got != ErrConflict {
		t.Errorf("an unknown reason falls back on the code: %v", got)
	}
}
