package apiserver

import (
	"bytes"
	"net/http"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// Deckhouse Virtualization's group-version, virtualization.deckhouse.io/v1alpha2, is served
// as a second version of the same objects: its kinds and fields are Rakhsh's (the API was
// built to mirror it), so the conversion is the apiVersion alone. Requests under
// /apis/virtualization.deckhouse.io/v1alpha2 read and write the same stored objects, and
// their answers say that apiVersion. So `kubectl apply -f` of a Deckhouse manifest works.

// DeckhouseGroup and DeckhouseVersion name the second served version.
const (
	DeckhouseGroup   = "virtualization.deckhouse.io"
	DeckhouseVersion = "v1alpha2"
)

var (
	ownAPIVersion       = []byte(`"apiVersion":"` + v1alpha1.APIVersion + `"`)
	deckhouseAPIVersion = []byte(`"apiVersion":"` + v1alpha1.DeckhouseAPI + `"`)
)

// asDeckhouse wraps a handler of objects so that its JSON answers carry the Deckhouse
// apiVersion.
func asDeckhouse(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("sub") != "" && r.PathValue("sub") != "status" {
			h(w, r) // streams (console, VNC, log, data): not objects, and websockets hijack
			return
		}
		rw := &apiVersionWriter{ResponseWriter: w}
		h(rw, r)
		rw.finish()
	}
}

// apiVersionWriter rewrites the apiVersion of the objects written through it. It passes on
// whole lines at a time (a watch writes one event per line), so that a split write never
// hides a match and a watch event is never held back.
type apiVersionWriter struct {
	http.ResponseWriter
	pending []byte
}

func (a *apiVersionWriter) WriteHeader(code int) {
	a.Header().Del("Content-Length") // the rewritten body is longer
	a.ResponseWriter.WriteHeader(code)
}

func (a *apiVersionWriter) Write(p []byte) (int, error) {
	a.pending = append(a.pending, p...)
	if i := bytes.LastIndexByte(a.pending, '\n'); i >= 0 {
		out := bytes.ReplaceAll(a.pending[:i+1], ownAPIVersion, deckhouseAPIVersion)
		a.pending = append(a.pending[:0], a.pending[i+1:]...)
		if _, err := a.ResponseWriter.Write(out); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// Flush passes on complete lines (watch streams flush after each batch of events).
func (a *apiVersionWriter) Flush() {
	if f, ok := a.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (a *apiVersionWriter) finish() {
	if len(a.pending) > 0 {
		_, _ = a.ResponseWriter.Write(bytes.ReplaceAll(a.pending, ownAPIVersion, deckhouseAPIVersion))
		a.pending = nil
	}
}
