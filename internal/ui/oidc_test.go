package ui

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/oidctest"
)

// whoAmIAPI answers whoami for any bearer JWT of the issuer's audience as user "alice" and
// records the tokens it saw.
type whoAmIAPI struct {
	mu     sync.Mutex
	tokens []string
}

func (a *whoAmIAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || strings.Count(tok, ".") != 2 {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	a.mu.Lock()
	a.tokens = append(a.tokens, tok)
	a.mu.Unlock()
	if r.URL.Path == v1alpha1.IdentityPath+"/whoami" {
		_ = json.NewEncoder(w).Encode(v1alpha1.WhoAmI{Name: "user alice", User: "alice"})
		return
	}
	w.Write([]byte(`{}`))
}

// TestOIDCLogin runs the authorization code flow through a real test issuer with a browser-like
// client (cookie jar, following redirects): the session is the API's user, ends with the ID
// token, and the callback refuses another browser, a replay and a refusal by the issuer.
func TestOIDCLogin(t *testing.T) {
	is, err := oidctest.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer is.Close()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(is.CAPEM)
	issuerClient := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	api := &whoAmIAPI{}
	h := New(Config{API: api, OIDC: &OIDCLogin{Issuer: is.URL, ClientID: "rakhsh-ui", HTTPClient: issuerClient, API: api}})
	srv := httptest.NewTLSServer(h)
	defer srv.Close()
	pool.AddCert(srv.Certificate())
	browser := func() *http.Client {
		jar, _ := cookiejar.New(nil)
		return &http.Client{Jar: jar, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	}
	session := func(c *http.Client) sessionInfo {
		t.Helper()
		res, err := c.Get(srv.URL + "/ui/session")
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var in sessionInfo
		_ = json.NewDecoder(res.Body).Decode(&in)
		return in
	}

	b := browser()
	if in := session(b); in.LoggedIn || !strings.Contains(strings.Join(in.Methods, ","), "oidc") {
		t.Fatalf("before the login: %+v (the oidc method must be offered)", in)
	}
	// Nobody logged in at the issuer: it sends the browser back with access_denied.
	res, err := b.Get(srv.URL + "/ui/oidc/login")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusUnauthorized || !strings.Contains(string(body), "access_denied") {
		t.Errorf("refused at the issuer: %d %s", res.StatusCode, body)
	}

	is.SetLogin(map[string]any{"preferred_username": "alice"})
	var callback string
	b.CheckRedirect = func(r *http.Request, via []*http.Request) error {
		if r.URL.Path == "/ui/oidc/callback" {
			callback = r.URL.String()
		}
		return nil
	}
	res, err = b.Get(srv.URL + "/ui/oidc/login")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK || res.Request.URL.Path != "/ui/" {
		t.Fatalf("after the login the browser is at %s with %d, want /ui/", res.Request.URL, res.StatusCode)
	}
	in := session(b)
	if !in.LoggedIn || in.User != "alice" || in.Method != "oidc" || in.CSRFToken == "" {
		t.Fatalf("session after the OIDC login: %+v", in)
	}
	// The session's API requests carry the ID token.
	req, _ := http.NewRequest("GET", srv.URL+"/apis/"+v1alpha1.APIVersion, nil)
	if res, err = b.Do(req); err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("an API request of the session: %v %v", err, res)
	}
	res.Body.Close()

	// The same callback again (a replay), and from a browser that did not start it.
	for name, c := range map[string]*http.Client{"replay": b, "another browser": browser()} {
		refusedAt(t, c, callback, name+" of the callback")
	}
	if session(browser()).LoggedIn {
		t.Error("another browser is logged in")
	}

	// A callback URL that leaks (history, logs) is of no use to another browser, and its use
	// there ends the login for its own browser too.
	// untilCallback starts a login in c and returns the callback URL the issuer sends it to,
	// without following it (c stops there from now on).
	untilCallback := func(c *http.Client, what string) string {
		t.Helper()
		var callback string
		c.CheckRedirect = func(r *http.Request, via []*http.Request) error {
			if r.URL.Path == "/ui/oidc/callback" {
				callback = r.URL.String()
				return http.ErrUseLastResponse
			}
			return nil
		}
		res, err := c.Get(srv.URL + "/ui/oidc/login")
		if err != nil || callback == "" {
			t.Fatalf("%s did not reach the callback: %v", what, err)
		}
		res.Body.Close()
		return callback
	}
	b2 := browser()
	leaked := untilCallback(b2, "a second login")
	for _, try := range []struct {
		name string
		c    *http.Client
	}{{"a thief", browser()}, {"its own browser, after the thief", b2}} {
		name, c := try.name, try.c
		c.CheckRedirect = nil
		refusedAt(t, c, leaked, name+" with the leaked callback")
		if session(c).LoggedIn {
			t.Errorf("%s is logged in", name)
		}
	}

	// A login started in a browser that has a session ends that session at the callback, which
	// comes from the issuer's site and so carries no (SameSite=Strict) session cookie: the
	// pending login names the old session by its key.
	u, _ := url.Parse(srv.URL + "/ui/")
	var oldID string
	for _, c := range b.Jar.Cookies(u) {
		if c.Name == cookieTLS {
			oldID = c.Value
		}
	}
	if oldID == "" || h.cfg.Sessions.Get(oldID) == nil {
		t.Fatalf("no live session cookie %s in the browser", cookieTLS)
	}
	again := untilCallback(b, "a second login of the same browser")
	req, _ = http.NewRequest("GET", again, nil)
	for _, c := range b.Jar.Cookies(u) {
		if c.Name != cookieTLS {
			req.AddCookie(c) // the login's binding cookie only
		}
	}
	plain := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	if res, err = plain.Do(req); err != nil || res.StatusCode != http.StatusSeeOther {
		t.Fatalf("the callback without the session cookie: %v %v", err, res)
	}
	res.Body.Close()
	if h.cfg.Sessions.Get(oldID) != nil {
		t.Error("the session the browser had before the new login still lives")
	}
	var fresh string
	for _, c := range res.Cookies() {
		if c.Name == cookieTLS {
			fresh = c.Value
		}
	}
	if fresh == "" || fresh == oldID || h.cfg.Sessions.Get(fresh) == nil {
		t.Fatalf("the new login's session cookie %q (old %q)", fresh, oldID)
	}
	b.Jar.SetCookies(u, []*http.Cookie{{Name: cookieTLS, Value: fresh, Path: "/"}})

	// The session ends with its ID token (an hour here).
	h.cfg.Sessions.Now = func() time.Time { return time.Now().Add(61 * time.Minute) }
	h.cfg.Sessions.IdleTimeout = 2 * time.Hour
	if session(b).LoggedIn {
		t.Error("the session outlived its ID token")
	}
}

// refusedAt fetches url with browser c and wants the refused-login page (401).
func refusedAt(t *testing.T, c *http.Client, url, what string) {
	t.Helper()
	res, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusUnauthorized || !strings.Contains(string(body), "login-error") {
		t.Errorf("%s: %d %s", what, res.StatusCode, body)
	}
}
