package server

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rakhsh/rakhsh/internal/apiserver"
	"github.com/rakhsh/rakhsh/internal/store/bolt"
)

// TestUIOverTheRealAPI: the UI's session, in front of the real API handler, logs in with the
// admin token, reads and (with the CSRF token) writes through the API, and a write without
// the CSRF token never reaches it.
func TestUIOverTheRealAPI(t *testing.T) {
	st, err := bolt.Open(filepath.Join(t.TempDir(), "db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	api := apiserver.New(apiserver.Config{Store: st, Log: log, AdminToken: "admin-secret"})
	defer api.Shutdown()
	hs := httptest.NewTLSServer(withUI(api.RemoteHandler(), log))
	defer hs.Close()
	jar, _ := cookiejar.New(nil)
	c := hs.Client()
	c.Jar = jar
	req := func(method, path, body string, hdr map[string]string) (int, string) {
		t.Helper()
		r, _ := http.NewRequest(method, hs.URL+path, strings.NewReader(body))
		for k, v := range hdr {
			r.Header.Set(k, v)
		}
		resp, err := c.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	js := map[string]string{"Content-Type": "application/json"}
	if code, body := req("POST", "/ui/login", `{"method":"token","token":"wrong"}`, js); code != 401 || !strings.Contains(body, "does not accept this token") {
		t.Fatalf("login with a wrong token: %d %s", code, body)
	}
	code, body := req("POST", "/ui/login", `{"method":"token","token":"admin-secret"}`, js)
	if code != 200 {
		t.Fatalf("login: %d %s", code, body)
	}
	var info struct{ CSRFToken string }
	if err := json.Unmarshal([]byte(body), &info); err != nil || info.CSRFToken == "" {
		t.Fatalf("login answer %s: %v", body, err)
	}
	const projects = "/apis/virtualization.rakhsh.io/v1alpha1/projects"
	if code, body := req("GET", projects, "", nil); code != 200 {
		t.Fatalf("list with the session: %d %s", code, body)
	}
	proj := `{"apiVersion":"virtualization.rakhsh.io/v1alpha1","kind":"Project","metadata":{"name":"p1"}}`
	if code, body := req("POST", projects, proj, js); code != 403 || !strings.Contains(body, "CSRF") {
		t.Fatalf("create without the CSRF token: %d %s", code, body)
	}
	if code, _ := req("GET", projects+"/p1", "", nil); code != 404 {
		t.Fatalf("the refused create made the project: %d", code)
	}
	if code, body := req("POST", projects, proj, map[string]string{"Content-Type": "application/json", "X-CSRF-Token": info.CSRFToken}); code != 201 {
		t.Fatalf("create with the CSRF token: %d %s", code, body)
	}
	// The CLI's bearer token still works beside it, without any cookie.
	r, _ := http.NewRequest("GET", hs.URL+projects+"/p1", nil)
	r.Header.Set("Authorization", "Bearer admin-secret")
	resp, err := hs.Client().Do(r)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("bearer GET: %d", resp.StatusCode)
	}
}
