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

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/apiserver"
	"github.com/rakhsh/rakhsh/internal/store/bolt"
)

// uiTestServer serves the UI in front of the real API handler (bolt store, admin token
// "admin-secret") over TLS, and returns it with a request function of one browser (its cookie
// jar kept across calls).
func uiTestServer(t *testing.T) (*httptest.Server, func(method, path, body string, hdr map[string]string) (int, string)) {
	t.Helper()
	st, err := bolt.Open(filepath.Join(t.TempDir(), "db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	api := apiserver.New(apiserver.Config{Store: st, Log: log, AdminToken: "admin-secret"})
	t.Cleanup(api.Shutdown)
	hs := httptest.NewTLSServer(withUI(api.RemoteHandler(), nil, log))
	t.Cleanup(hs.Close)
	jar, _ := cookiejar.New(nil)
	c := hs.Client()
	c.Jar = jar
	return hs, func(method, path, body string, hdr map[string]string) (int, string) {
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
}

// TestUIOverTheRealAPI: the UI's session, in front of the real API handler, logs in with the
// admin token, reads and (with the CSRF token) writes through the API, and a write without
// the CSRF token never reaches it.
func TestUIOverTheRealAPI(t *testing.T) {
	hs, req := uiTestServer(t)
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

// TestUIPasswordLogin: a user with a local password logs into the UI with it; the session acts
// as that user (whoami through the session names them, and the admin's projects list is
// refused), and a wrong password or an unknown user gets one and the same answer.
func TestUIPasswordLogin(t *testing.T) {
	_, req := uiTestServer(t)
	admin := map[string]string{"Content-Type": "application/json", "Authorization": "Bearer admin-secret"}
	user := `{"apiVersion":"virtualization.rakhsh.io/v1alpha1","kind":"User","metadata":{"name":"alice"},"spec":{"displayName":"Alice"}}`
	if code, body := req("POST", "/apis/virtualization.rakhsh.io/v1alpha1/users", user, admin); code != 201 {
		t.Fatalf("creating the user: %d %s", code, body)
	}
	if code, body := req("POST", "/apis/virtualization.rakhsh.io/v1alpha1/users/alice/password", `{"password":"correct horse battery"}`, admin); code/100 != 2 {
		t.Fatalf("setting the password: %d %s", code, body)
	}
	js := map[string]string{"Content-Type": "application/json"}
	code, wrong := req("POST", "/ui/login", `{"method":"password","username":"alice","password":"wrong"}`, js)
	if code != 401 || !strings.Contains(wrong, "wrong user name or password") {
		t.Fatalf("login with a wrong password: %d %s", code, wrong)
	}
	if code, body := req("POST", "/ui/login", `{"method":"password","username":"nobody","password":"wrong"}`, js); code != 401 || body != wrong {
		t.Fatalf("login of an unknown user: %d %s, want the answer to a wrong password (%s)", code, body, wrong)
	}
	if code, body := req("POST", "/ui/login", `{"method":"password","username":"alice"}`, js); code != 401 || !strings.Contains(body, "enter a user name and a password") {
		t.Fatalf("login without a password: %d %s", code, body)
	}
	code, body := req("POST", "/ui/login", `{"method":"password","username":"alice","password":"correct horse battery"}`, js)
	if code != 200 || !strings.Contains(body, `"alice"`) {
		t.Fatalf("password login: %d %s", code, body)
	}
	if code, body := req("GET", "/identity/v1alpha1/whoami", "", nil); code != 200 || !strings.Contains(body, "alice") {
		t.Fatalf("whoami through the session: %d %s", code, body)
	}
	if code, body := req("GET", "/apis/virtualization.rakhsh.io/v1alpha1/projects/default", "", nil); code != 403 && code != 404 {
		t.Fatalf("a user without roles read a project through the session: %d %s", code, body)
	}
	var info struct {
		Methods []string `json:"methods"`
	}
	_, sess := req("GET", "/ui/session", "", nil)
	if err := json.Unmarshal([]byte(sess), &info); err != nil || !strings.Contains(strings.Join(info.Methods, ","), "password") {
		t.Fatalf("the session info does not offer the password method: %s (%v)", sess, err)
	}
	// Logging out revokes the session's login token.
	var csrf struct{ CSRFToken string }
	_ = json.Unmarshal([]byte(sess), &csrf)
	if code, body := req("POST", "/ui/logout", "", map[string]string{"X-CSRF-Token": csrf.CSRFToken}); code != 200 {
		t.Fatalf("logout: %d %s", code, body)
	}
	code, body = req("GET", "/identity/v1alpha1/tokens", "", admin)
	var toks v1alpha1.TokenList
	if err := json.Unmarshal([]byte(body), &toks); code != 200 || err != nil || len(toks.Items) != 1 {
		t.Fatalf("tokens after the logout: %d %s (%v)", code, body, err)
	}
	if tk := toks.Items[0]; tk.User != "alice" || !tk.Login || tk.Revoked == nil {
		t.Fatalf("the session's login token after the logout: %+v, want alice's login token, revoked", tk)
	}
}
