package apiserver

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/store"
)

// statusFor maps an error class to the HTTP code and Status reason at the API edge.
func statusFor(err error) v1alpha1.Status {
	st := v1alpha1.Status{TypeMeta: v1alpha1.TypeMeta{APIVersion: "v1", Kind: "Status"}, Status: "Failure", Message: err.Error()}
	var inv *errs.InvalidError
	if errors.As(err, &inv) {
		st.Code, st.Reason = http.StatusUnprocessableEntity, v1alpha1.ReasonInvalid
		st.Details = &v1alpha1.StatusDetails{Name: inv.Name, Kind: inv.Kind, Group: v1alpha1.Group}
		for _, c := range inv.Causes {
			st.Details.Causes = append(st.Details.Causes, v1alpha1.StatusCause{Type: c.Type, Message: c.Message, Field: c.Field})
		}
		return st
	}
	st.Code, st.Reason = errs.HTTPStatus(err)
	return st
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	writeRaw(w, code, data)
}

func writeRaw(w http.ResponseWriter, code int, data []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(data)
	_, _ = w.Write([]byte("\n"))
}

func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	st := statusFor(err)
	if errors.Is(err, errs.ErrFenced) {
		n := s.fenced.Add(1)
		f, _ := store.FenceFrom(r.Context())
		s.log.Warn("write refused as fenced: the controllers that sent it are no longer the control-plane leader",
			"method", r.Method, "path", r.URL.Path, "userAgent", r.UserAgent(), "term", f.Term, "fenced-writes", n)
		if s.onFenced != nil && !f.IsZero() {
			s.onFenced(f)
		}
	}
	if st.Code >= 500 {
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	} else {
		s.log.Debug("request refused", "method", r.Method, "path", r.URL.Path, "code", st.Code, "err", err, "userAgent", r.UserAgent())
	}
	if st.Code == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="rakhsh"`)
	}
	writeJSON(w, st.Code, st)
}

var _ = slog.LevelDebug
