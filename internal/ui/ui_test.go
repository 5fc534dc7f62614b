package ui

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// fakeAPI accepts the bearer token "good" and records what reached it.
type fakeAPI struct {
	got []*http.Request
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.got = append(f.got, r)
	if r.Header.Get("Authorization") != "Bearer good" {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	w.Write([]byte(`{}`))
}

func newTestHandler(t *testing.T) (*Handler, *fakeAPI) {
	t.Helper()
	api := &fakeAPI{}
	return New(Config{API: api, Methods: map[string]LoginMethod{"token": TokenLogin{API: api}}}), api
}

func do(h http.Handler, method, path, body string, hdr map[string]string, cookies ...*http.Cookie) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, "https://rakhsh.test"+path, strings.NewReader(body))
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	for _, c := range cookies {
		r.AddCookie(c)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func login(t *testing.T, h http.Handler, token string) (*http.Cookie, sessionInfo, int) {
	t.Helper()
	w := do(h, "POST", "/ui/login", `{"method":"token","token":"`+token+`"}`, map[string]string{"Content-Type": "application/json", "Origin": "https://rakhsh.test"})
	var in sessionInfo
	_ = json.Unmarshal(w.Body.Bytes(), &in)
	for _, c := range w.Result().Cookies() {
		return c, in, w.Code
	}
	return nil, in, w.Code
}

func TestTokenLoginSessionAndCSRF(t *testing.T) {
	h, api := newTestHandler(t)
	if c, _, code := login(t, h, "bad"); code != http.StatusUnauthorized || c != nil {
		t.Fatalf("login with a bad token: %d, cookie %v", code, c)
	}
	c, in, code := login(t, h, "good")
	if code != http.StatusOK || c == nil {
		t.Fatalf("login: %d", code)
	}
	if c.Name != cookieTLS || !c.HttpOnly || !c.Secure || c.SameSite != http.SameSiteStrictMode || c.Path != "/" {
		t.Errorf("cookie %+v: want __Host-, HttpOnly, Secure, SameSite=Strict, Path=/", c)
	}
	if !in.LoggedIn || in.CSRFToken == "" {
		t.Fatalf("login answer %+v", in)
	}

	// A read with the cookie reaches the API with the token and without the cookie.
	api.got = nil
	if w := do(h, "GET", "/apis/x", "", nil, c); w.Code != 200 {
		t.Fatalf("GET with the session: %d %s", w.Code, w.Body)
	}
	if r := api.got[0]; r.Header.Get("Authorization") != "Bearer good" || r.Header.Get("Cookie") != "" {
		t.Errorf("forwarded headers: %v", r.Header)
	}
	// A write without the CSRF header, or with a wrong one, never reaches the API.
	api.got = nil
	for _, hdr := range []map[string]string{nil, {HeaderCSRF: "wrong"}} {
		if w := do(h, "POST", "/apis/x", "{}", hdr, c); w.Code != http.StatusForbidden || !strings.Contains(w.Body.String(), HeaderCSRF) {
			t.Errorf("POST with %v: %d %s", hdr, w.Code, w.Body)
		}
	}
	// Nor does a write from another origin, even with the token.
	if w := do(h, "DELETE", "/apis/x", "", map[string]string{HeaderCSRF: in.CSRFToken, "Origin": "https://evil.test"}, c); w.Code != http.StatusForbidden {
		t.Errorf("cross-origin DELETE: %d", w.Code)
	}
	if len(api.got) != 0 {
		t.Fatalf("%d refused writes reached the API", len(api.got))
	}
	if w := do(h, "POST", "/apis/x", "{}", map[string]string{HeaderCSRF: in.CSRFToken, "Origin": "https://rakhsh.test"}, c); w.Code != 200 {
		t.Errorf("POST with the CSRF token: %d %s", w.Code, w.Body)
	}

	// Logout needs the CSRF token too, and ends the session.
	if w := do(h, "POST", "/ui/logout", "", nil, c); w.Code != http.StatusForbidden {
		t.Errorf("logout without CSRF: %d", w.Code)
	}
	if w := do(h, "POST", "/ui/logout", "", map[string]string{HeaderCSRF: in.CSRFToken}, c); w.Code != 200 {
		t.Errorf("logout: %d", w.Code)
	}
	if w := do(h, "GET", "/apis/x", "", nil, c); w.Code != http.StatusUnauthorized || !strings.Contains(w.Body.String(), "session has ended") {
		t.Errorf("GET after logout: %d %s", w.Code, w.Body)
	}
}

func TestLoginRefusesFormsAndOtherOrigins(t *testing.T) {
	h, _ := newTestHandler(t)
	body := `{"method":"token","token":"good"}`
	cases := []struct {
		name string
		hdr  map[string]string
		want int
	}{
		{"form post", map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, http.StatusUnsupportedMediaType},
		{"text/plain", map[string]string{"Content-Type": "text/plain"}, http.StatusUnsupportedMediaType},
		{"other origin", map[string]string{"Content-Type": "application/json", "Origin": "https://evil.test"}, http.StatusForbidden},
	}
	for _, c := range cases {
		w := do(h, "POST", "/ui/login", body, c.hdr)
		if w.Code != c.want || len(w.Result().Cookies()) != 0 {
			t.Errorf("%s: %d (want %d), cookies %v", c.name, w.Code, c.want, w.Result().Cookies())
		}
	}
	if w := do(h, "POST", "/ui/login", `{"method":"password"}`, map[string]string{"Content-Type": "application/json"}); w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), "offered: token") {
		t.Errorf("unknown method: %d %s", w.Code, w.Body)
	}
}

func TestBearerRequestsPassThrough(t *testing.T) {
	h, api := newTestHandler(t)
	if w := do(h, "POST", "/apis/x", "{}", map[string]string{"Authorization": "Bearer good"}); w.Code != 200 || len(api.got) != 1 {
		t.Fatalf("a CLI request with a token: %d", w.Code)
	}
	if w := do(h, "GET", "/apis/x", "", nil); w.Code != http.StatusUnauthorized {
		t.Fatalf("no token, no session: %d", w.Code)
	}
}

func TestSessionOnlyForwarder(t *testing.T) {
	api := &fakeAPI{}
	m, ticket := NewTicketLogin("local-admin", time.Minute)
	h := New(Config{API: api, Methods: map[string]LoginMethod{"ticket": m}, SessionOnly: true})
	// Without a session nothing reaches the admin socket, not even with a token.
	if w := do(h, "GET", "/apis/x", "", map[string]string{"Authorization": "Bearer good"}); w.Code != http.StatusUnauthorized || len(api.got) != 0 {
		t.Fatalf("no session: %d, %d requests reached the API", w.Code, len(api.got))
	}
	post := func(tk string) *httptest.ResponseRecorder {
		return do(h, "POST", "/ui/login", `{"method":"ticket","ticket":"`+tk+`"}`, map[string]string{"Content-Type": "application/json"})
	}
	if w := post("nope"); w.Code != http.StatusUnauthorized {
		t.Fatalf("wrong ticket: %d", w.Code)
	}
	w := post(ticket)
	if w.Code != 200 {
		t.Fatalf("ticket login: %d %s", w.Code, w.Body)
	}
	c := w.Result().Cookies()[0]
	if w := post(ticket); w.Code != http.StatusUnauthorized || !strings.Contains(w.Body.String(), "used already") {
		t.Fatalf("second use of the ticket: %d %s", w.Code, w.Body)
	}
	// With the session, requests go through without a token (the socket is admin).
	do(h, "GET", "/apis/x", "", nil, c)
	if len(api.got) != 1 || api.got[0].Header.Get("Authorization") != "" {
		t.Fatalf("forwarded: %d requests", len(api.got))
	}
}

func TestTicketExpires(t *testing.T) {
	m, ticket := NewTicketLogin("a", time.Minute)
	m.Now = func() time.Time { return time.Now().Add(2 * time.Minute) }
	if _, err := m.Login(t.Context(), LoginRequest{Ticket: ticket}); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired ticket: %v", err)
	}
}

func TestSessionsExpireAndAreBounded(t *testing.T) {
	s := NewSessions()
	now := time.Now()
	s.Now = func() time.Time { return now }
	id, _ := s.Create(Principal{Name: "a"})
	now = now.Add(59 * time.Minute)
	if s.Get(id) == nil {
		t.Fatal("a session used within the idle timeout ended")
	}
	now = now.Add(61 * time.Minute)
	if s.Get(id) != nil {
		t.Fatal("an idle session lives on")
	}
	s.Max = 3
	for i := 0; i < 5; i++ {
		s.Create(Principal{})
		now = now.Add(time.Second)
	}
	if s.Len() != 3 {
		t.Fatalf("%d sessions held, want at most 3", s.Len())
	}
}

func TestAssetsAndSecurityHeaders(t *testing.T) {
	h, _ := newTestHandler(t)
	for path, ctype := range map[string]string{"/ui/": "text/html", "/ui/app.js": "javascript", "/ui/app.css": "text/css"} {
		w := do(h, "GET", path, "", nil)
		if w.Code != 200 || !strings.Contains(w.Header().Get("Content-Type"), ctype) {
			t.Errorf("%s: %d %s", path, w.Code, w.Header().Get("Content-Type"))
		}
		csp := w.Header().Get("Content-Security-Policy")
		for _, want := range []string{"script-src 'self';", "frame-ancestors 'none'", "default-src 'none'"} {
			if !strings.Contains(csp, want) {
				t.Errorf("%s: CSP %q lacks %q", path, csp, want)
			}
		}
		if strings.Contains(csp, "unsafe-eval") || strings.Contains(strings.Split(csp, "script-src")[1], "unsafe-inline;") {
			t.Errorf("%s: CSP allows inline or eval'd script: %q", path, csp)
		}
		if w.Header().Get("X-Frame-Options") != "DENY" || w.Header().Get("X-Content-Type-Options") != "nosniff" || w.Header().Get("Referrer-Policy") != "no-referrer" {
			t.Errorf("%s: headers %v", path, w.Header())
		}
		if etag := w.Header().Get("ETag"); etag == "" || do(h, "GET", path, "", map[string]string{"If-None-Match": etag}).Code != http.StatusNotModified {
			t.Errorf("%s: no revalidation with ETag %q", path, etag)
		}
	}
	if w := do(h, "GET", "/ui/", "", nil); strings.Contains(w.Body.String(), "<script>") || !strings.Contains(w.Body.String(), `src="app.js"`) {
		t.Errorf("index.html has inline script or no bundle:\n%s", w.Body)
	}
	if w := do(h, "GET", "/ui/nope.js", "", nil); w.Code != 404 {
		t.Errorf("missing asset: %d", w.Code)
	}
	if w := do(h, "GET", "/ui", "", nil); w.Code != http.StatusMovedPermanently {
		t.Errorf("/ui: %d", w.Code)
	}
}

func TestAssetsGzip(t *testing.T) {
	h, _ := newTestHandler(t)
	plain := do(h, "GET", "/ui/app.js", "", nil)
	gz := do(h, "GET", "/ui/app.js", "", map[string]string{"Accept-Encoding": "gzip, deflate"})
	if gz.Header().Get("Content-Encoding") != "gzip" || gz.Body.Len() >= plain.Body.Len() || plain.Header().Get("Content-Encoding") != "" {
		t.Fatalf("gzip: %q %d bytes, plain %d bytes", gz.Header().Get("Content-Encoding"), gz.Body.Len(), plain.Body.Len())
	}
	if gz.Header().Get("ETag") == plain.Header().Get("ETag") || gz.Header().Get("Vary") != "Accept-Encoding" {
		t.Errorf("ETags %q and %q, Vary %q", gz.Header().Get("ETag"), plain.Header().Get("ETag"), gz.Header().Get("Vary"))
	}
	if r := do(h, "GET", "/ui/app.js", "", map[string]string{"Accept-Encoding": "gzip;q=0"}); r.Header().Get("Content-Encoding") != "" {
		t.Errorf("gzip;q=0 got gzip")
	}
}

// TestPasswordLoginAsksTheAPI: the password method posts the name and password to the API's
// login endpoint (as from the browser's address), and the session then sends the token it got;
// logout revokes that token.
func TestPasswordLoginAsksTheAPI(t *testing.T) {
	var got []*http.Request
	var body string
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r)
		switch {
		case r.URL.Path == "/identity/v1alpha1/login":
			b := new(strings.Builder)
			_, _ = io.Copy(b, r.Body)
			body = b.String()
			if !strings.Contains(body, `"password":"pw"`) {
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			w.WriteHeader(http.StatusCreated)
			w.Write([]byte(`{"id":"0123456789ab","token":"rakhsh-user.0123456789ab.secret","user":"ann"}`))
		default:
			w.Write([]byte(`{}`))
		}
	})
	h := New(Config{API: api, Methods: map[string]LoginMethod{"password": PasswordLogin{API: api, TTL: time.Hour}}})
	js := map[string]string{"Content-Type": "application/json", "Origin": "https://rakhsh.test"}
	if w := do(h, "POST", "/ui/login", `{"method":"password","username":"ann","password":"bad"}`, js); w.Code != http.StatusUnauthorized {
		t.Fatalf("a wrong password: %d %s", w.Code, w.Body)
	}
	w := do(h, "POST", "/ui/login", `{"method":"password","username":"ann","password":"pw"}`, js)
	if w.Code != http.StatusOK {
		t.Fatalf("login: %d %s", w.Code, w.Body)
	}
	login := got[len(got)-1]
	if login.Method != "POST" || login.RemoteAddr != "192.0.2.1:1234" || !strings.Contains(body, `"ttl":"1h0m0s"`) || !strings.Contains(body, `"username":"ann"`) {
		t.Fatalf("the login request: %s %s from %q, body %s", login.Method, login.URL.Path, login.RemoteAddr, body)
	}
	var in sessionInfo
	_ = json.Unmarshal(w.Body.Bytes(), &in)
	c := w.Result().Cookies()[0]
	do(h, "GET", "/apis/virtualization.rakhsh.io/v1alpha1/projects", "", nil, c)
	if a := got[len(got)-1].Header.Get("Authorization"); a != "Bearer rakhsh-user.0123456789ab.secret" {
		t.Fatalf("the session's API request carries %q", a)
	}
	do(h, "POST", "/ui/logout", "", map[string]string{HeaderCSRF: in.CSRFToken}, c)
	if last := got[len(got)-1]; last.Method != "DELETE" || last.URL.Path != "/identity/v1alpha1/tokens/0123456789ab" || last.Header.Get("Authorization") != "Bearer rakhsh-user.0123456789ab.secret" {
		t.Fatalf("logout sent %s %s (%q), want the token's revocation", last.Method, last.URL.Path, last.Header.Get("Authorization"))
	}
}
