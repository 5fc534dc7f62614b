package ui

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"net/http"
	"net/http/httptest"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// OIDCLogin logs a browser in at the API's OpenID Connect issuer: the authorization code flow
// with PKCE (RFC 7636) and a nonce. GET /ui/oidc/login sends the browser to the issuer;
// the issuer sends it back to GET /ui/oidc/callback with a code, which the server exchanges
// for an ID token. The API must accept that token (it verifies it as it does a CLI's, and maps
// the user and groups the same way); the session then sends it on every API request, and ends
// when it expires. The issuer must list https://HOST:PORT/ui/oidc/callback (the address the
// browser uses) as a redirect URI of the client.
type OIDCLogin struct {
	// Issuer and ClientID are the API's (serve --oidc-issuer, --oidc-client-id).
	Issuer, ClientID string
	// ClientSecret is the client's secret at the issuer; empty for a public client, which
	// PKCE protects.
	ClientSecret string
	// HTTPClient reaches the issuer (trusting its CA).
	HTTPClient *http.Client
	// Scopes asked for besides openid; default profile, email.
	Scopes []string
	// API is the API handler: it is asked who the token's user is (whoami).
	API http.Handler
	Now func() time.Time

	mu       sync.Mutex
	provider *oidc.Provider
	lastErr  error // the last failed discovery, tried again after oidcRetry
	lastTry  time.Time
	pending  map[[32]byte]pendingLogin // by SHA-256 of the state
}

// pendingLogin is a browser sent to the issuer and not back yet.
type pendingLogin struct {
	// binding is the SHA-256 of the secret in the browser's cookie: only the browser that
	// started the login can finish it, whoever else learns the callback URL.
	binding                   [32]byte
	verifier, nonce, redirect string
	// oldSession names the session the browser had when it started (ended at the callback,
	// where the Strict cookie is not sent); its key, not its cookie value.
	oldSession SessionKey
	expires    time.Time
}

// oidcLoginTTL is how long a browser may take at the issuer; oidcPendingMax bounds the logins
// in flight (those nearest their end are dropped beyond it); oidcRetry spaces discoveries of
// an issuer that failed.
const (
	oidcLoginTTL   = 10 * time.Minute
	oidcPendingMax = 10000
	oidcRetry      = 10 * time.Second
)

// oidcCookie is the name and path of the cookie that binds a login to its browser: with TLS
// the __Host- prefix keeps other hosts and plain-http pages from setting it.
func oidcCookie(r *http.Request) (name, path string) {
	if r.TLS != nil {
		return "__Host-rakhsh-oidc", "/"
	}
	return "rakhsh-oidc", "/ui/oidc/"
}

func (o *OIDCLogin) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

// discover finds the issuer's endpoints once (outside the lock; a failure is remembered for
// oidcRetry, so an issuer that is down is not asked on every request).
func (o *OIDCLogin) discover(ctx context.Context) (*oidc.Provider, error) {
	o.mu.Lock()
	if p := o.provider; p != nil {
		o.mu.Unlock()
		return p, nil
	}
	if err := o.lastErr; err != nil && o.now().Sub(o.lastTry) < oidcRetry {
		o.mu.Unlock()
		return nil, err
	}
	o.lastTry = o.now()
	o.mu.Unlock()
	p, err := oidc.NewProvider(oidc.ClientContext(context.WithoutCancel(ctx), o.HTTPClient), o.Issuer)
	o.mu.Lock()
	defer o.mu.Unlock()
	if err != nil {
		o.lastErr = fmt.Errorf("the OpenID Connect issuer %s cannot be reached: %w", o.Issuer, err)
		return nil, o.lastErr
	}
	o.provider, o.lastErr = p, nil
	return p, nil
}

func (o *OIDCLogin) oauth(p *oidc.Provider, redirect string) *oauth2.Config {
	scopes := o.Scopes
	if len(scopes) == 0 {
		scopes = []string{"profile", "email"}
	}
	return &oauth2.Config{ClientID: o.ClientID, ClientSecret: o.ClientSecret, Endpoint: p.Endpoint(), RedirectURL: redirect,
		Scopes: append([]string{oidc.ScopeOpenID}, scopes...)}
}

// callbackURL is where the issuer sends the browser back: this server, as the browser named it.
func callbackURL(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host + "/ui/oidc/callback"
}

// start answers GET /ui/oidc/login: a state, a PKCE verifier and a nonce are kept for the
// browser, bound to it by a secret in a cookie (so that only the browser that started the
// login can finish it), and the browser goes to the issuer.
func (o *OIDCLogin) start(w http.ResponseWriter, r *http.Request) {
	p, err := o.discover(r.Context())
	if err != nil {
		loginPage(w, http.StatusBadGateway, err.Error())
		return
	}
	state, nonce, verifier, binding := randomString(32), randomString(32), oauth2.GenerateVerifier(), randomString(32)
	redirect := callbackURL(r)
	now := o.now()
	o.mu.Lock()
	if o.pending == nil {
		o.pending = map[[32]byte]pendingLogin{}
	}
	var first [32]byte
	var firstEnd time.Time
	for k, v := range o.pending {
		if now.After(v.expires) {
			delete(o.pending, k)
		} else if firstEnd.IsZero() || v.expires.Before(firstEnd) {
			first, firstEnd = k, v.expires
		}
	}
	if len(o.pending) >= oidcPendingMax {
		delete(o.pending, first)
	}
	o.pending[sha256.Sum256([]byte(state))] = pendingLogin{binding: sha256.Sum256([]byte(binding)), verifier: verifier, nonce: nonce,
		redirect: redirect, oldSession: KeyOf(sessionCookie(r)), expires: now.Add(oidcLoginTTL)}
	o.mu.Unlock()
	// Lax: the issuer's redirect back is a cross-site navigation, which a Strict cookie misses.
	name, path := oidcCookie(r)
	http.SetCookie(w, &http.Cookie{Name: name, Value: binding, Path: path, MaxAge: int(oidcLoginTTL.Seconds()),
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteLaxMode})
	url := o.oauth(p, redirect).AuthCodeURL(state, oauth2.S256ChallengeOption(verifier), oidc.Nonce(nonce))
	w.Header().Set("Cache-Control", "no-store")
	http.Redirect(w, r, url, http.StatusFound)
}

// errOIDC is a refused callback: said to the browser, logged without the details of a secret.
var errOIDC = errors.New("OpenID Connect login refused")

// oidcDone is a finished login: who, until when, and the session the browser had before.
type oidcDone struct {
	principal  Principal
	notAfter   time.Time
	oldSession SessionKey
}

// finish handles GET /ui/oidc/callback: the state must be pending (any callback naming it
// ends it) and bound to this browser, the code is exchanged (with the PKCE verifier), the ID
// token verified (issuer, audience, expiry, nonce) and then accepted by the API, which names
// the user. The issuer's own error is shown only for a login of this browser.
func (o *OIDCLogin) finish(r *http.Request) (oidcDone, error) {
	q := r.URL.Query()
	state, code := q.Get("state"), q.Get("code")
	key := sha256.Sum256([]byte(state))
	o.mu.Lock()
	pl, ok := o.pending[key]
	delete(o.pending, key)
	o.mu.Unlock()
	if state == "" || !ok || o.now().After(pl.expires) {
		return oidcDone{}, fmt.Errorf("%w: the login is not known, was used already or took longer than %s: start again", errOIDC, oidcLoginTTL)
	}
	name, _ := oidcCookie(r)
	c, err := r.Cookie(name)
	if err != nil {
		return oidcDone{}, fmt.Errorf("%w: this browser did not start this login: start again", errOIDC)
	}
	if sum := sha256.Sum256([]byte(c.Value)); subtle.ConstantTimeCompare(sum[:], pl.binding[:]) != 1 {
		return oidcDone{}, fmt.Errorf("%w: this browser did not start this login: start again", errOIDC)
	}
	if e := q.Get("error"); e != "" {
		return oidcDone{}, fmt.Errorf("%w: the issuer answered %s: %s", errOIDC, e, q.Get("error_description"))
	}
	if code == "" {
		return oidcDone{}, fmt.Errorf("%w: the issuer sent no code", errOIDC)
	}
	p, err := o.discover(r.Context())
	if err != nil {
		return oidcDone{}, err
	}
	ctx := oidc.ClientContext(r.Context(), o.HTTPClient)
	tok, err := o.oauth(p, pl.redirect).Exchange(ctx, code, oauth2.VerifierOption(pl.verifier))
	if err != nil {
		return oidcDone{}, fmt.Errorf("%w: exchanging the code at the issuer: %v", errOIDC, err)
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		return oidcDone{}, fmt.Errorf("%w: the issuer's answer holds no ID token", errOIDC)
	}
	idt, err := p.Verifier(&oidc.Config{ClientID: o.ClientID, Now: o.now}).Verify(ctx, raw)
	if err != nil {
		return oidcDone{}, fmt.Errorf("%w: the ID token is not valid: %v", errOIDC, err)
	}
	if subtle.ConstantTimeCompare([]byte(idt.Nonce), []byte(pl.nonce)) != 1 {
		return oidcDone{}, fmt.Errorf("%w: the ID token's nonce is not this login's", errOIDC)
	}
	authorize := func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+raw) }
	who, err := whoAmI(r.Context(), o.API, authorize)
	if err != nil {
		return oidcDone{}, err
	}
	return oidcDone{principal: Principal{Name: who.User, Authorize: authorize}, notAfter: idt.Expiry, oldSession: pl.oldSession}, nil
}

// whoAmI asks the API who a credential belongs to.
func whoAmI(ctx context.Context, api http.Handler, authorize func(*http.Request)) (v1alpha1.WhoAmI, error) {
	var who v1alpha1.WhoAmI
	r, err := http.NewRequestWithContext(ctx, http.MethodGet, v1alpha1.IdentityPath+"/whoami", nil)
	if err != nil {
		return who, err
	}
	authorize(r)
	rec := httptest.NewRecorder()
	api.ServeHTTP(rec, r)
	switch {
	case rec.Code == http.StatusUnauthorized || rec.Code == http.StatusForbidden:
		return who, fmt.Errorf("%w: the API does not accept the ID token: %s", errOIDC, rec.Body.String())
	case rec.Code != http.StatusOK:
		return who, fmt.Errorf("asking the API who logged in: it answered %d", rec.Code)
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &who); err != nil || who.User == "" {
		return who, fmt.Errorf("asking the API who logged in: no user in its answer (%v)", err)
	}
	return who, nil
}

// loginPage is the small page a failed browser login lands on, with a way back.
func loginPage(w http.ResponseWriter, code int, msg string) {
	setSecurityHeaders(w)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	fmt.Fprintf(w, "<!doctype html><title>Login failed</title><h1>Login failed</h1><p id=\"login-error\">%s</p><p><a href=\"/ui/\">Back to the login page</a></p>\n",
		html.EscapeString(msg))
}
