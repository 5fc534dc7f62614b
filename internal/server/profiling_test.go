package server

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestProfilingOnlyWhereAsked(t *testing.T) {
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("api")) })
	h := withProfiling(api)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/debug/pprof/heap?debug=1", nil))
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), "heap profile") {
		t.Fatalf("heap profile: %d %.200s", rec.Code, rec.Body.String())
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/apis/x", nil))
	if rec.Body.String() != "api" {
		t.Fatalf("other paths must reach the API: %q", rec.Body.String())
	}
}
