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
	pending  map[[32]byte]pendingLogin // by SHA-256 of the state
}

// pendingLogin is a browser sent to the issuer and not back yet.
type pendingLogin struct {
	verifier, nonce, redirect string
	expires                   time.Time
}

// oidcLoginTTL is how long a browser may take at the issuer; oidcPendingMax bounds the logins
// in flight (the oldest are dropped beyond it).
const (
	oidcLoginTTL   = 10 * time.Minute
	oidcPendingMax = 10000
	oidcCookie     = "rakhsh-oidc-state"
)

func (o *OIDCLogin) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

// discover finds the issuer's endpoints once.
func (o *OIDCLogin) discover(ctx context.Context) (*oidc.Provider, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.provider != nil {
		return o.provider, nil
	}
	p, err := oidc.NewProvider(oidc.ClientContext(context.WithoutCancel(ctx), o.HTTPClient), o.Issuer)
	if err != nil {
		return nil, fmt.Errorf("the OpenID Connect issuer %s cannot be reached: %w", o.Issuer, err)
	}
	o.provider = p
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
// browser (the state also in a cookie, so that only the browser that started the login can
// finish it), and the browser goes to the issuer.
func (o *OIDCLogin) start(w http.ResponseWriter, r *http.Request) {
	p, err := o.discover(r.Context())
	if err != nil {
		loginPage(w, http.StatusBadGateway, err.Error())
		return
	}
	state, nonce, verifier := randomString(32), randomString(32), oauth2.GenerateVerifier()
	redirect := callbackURL(r)
	now := o.now()
	o.mu.Lock()
	if o.pending == nil {
		o.pending = map[[32]byte]pendingLogin{}
	}
	for k, v := range o.pending {
		if now.After(v.expires) || len(o.pending) >= oidcPendingMax {
			delete(o.pending, k)
		}
	}
	o.pending[sha256.Sum256([]byte(state))] = pendingLogin{verifier: verifier, nonce: nonce, redirect: redirect, expires: now.Add(oidcLoginTTL)}
	o.mu.Unlock()
	// Lax: the issuer's redirect back is a cross-site navigation, which a Strict cookie misses.
	http.SetCookie(w, &http.Cookie{Name: oidcCookie, Value: state, Path: "/ui/oidc/", MaxAge: int(oidcLoginTTL.Seconds()),
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteLaxMode})
	url := o.oauth(p, redirect).AuthCodeURL(state, oauth2.S256ChallengeOption(verifier), oidc.Nonce(nonce))
	w.Header().Set("Cache-Control", "no-store")
	http.Redirect(w, r, url, http.StatusFound)
}

// errOIDC is a refused callback: said to the browser, logged without the details of a secret.
var errOIDC = errors.New("OpenID Connect login refused")

// finish handles GET /ui/oidc/callback: the state must be the browser's own and pending, the
// code is exchanged (with the PKCE verifier), the ID token verified (issuer, audience, expiry,
// nonce) and then accepted by the API, which names the user.
func (o *OIDCLogin) finish(r *http.Request) (Principal, time.Time, error) {
	q := r.URL.Query()
	if e := q.Get("error"); e != "" {
		return Principal{}, time.Time{}, fmt.Errorf("%w: the issuer answered %s: %s", errOIDC, e, q.Get("error_description"))
	}
	state, code := q.Get("state"), q.Get("code")
	c, err := r.Cookie(oidcCookie)
	if state == "" || code == "" || err != nil || subtle.ConstantTimeCompare([]byte(c.Value), []byte(state)) != 1 {
		return Principal{}, time.Time{}, fmt.Errorf("%w: this browser did not start this login (no or another state): start again", errOIDC)
	}
	key := sha256.Sum256([]byte(state))
	o.mu.Lock()
	pl, ok := o.pending[key]
	delete(o.pending, key)
	o.mu.Unlock()
	if !ok || o.now().After(pl.expires) {
		return Principal{}, time.Time{}, fmt.Errorf("%w: the login was used already or took longer than %s: start again", errOIDC, oidcLoginTTL)
	}
	p, err := o.discover(r.Context())
	if err != nil {
		return Principal{}, time.Time{}, err
	}
	ctx := oidc.ClientContext(r.Context(), o.HTTPClient)
	tok, err := o.oauth(p, pl.redirect).Exchange(ctx, code, oauth2.VerifierOption(pl.verifier))
	if err != nil {
		return Principal{}, time.Time{}, fmt.Errorf("%w: exchanging the code at the issuer: %v", errOIDC, err)
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		return Principal{}, time.Time{}, fmt.Errorf("%w: the issuer's answer holds no ID token", errOIDC)
	}
	idt, err := p.Verifier(&oidc.Config{ClientID: o.ClientID, Now: o.now}).Verify(ctx, raw)
	if err != nil {
		return Principal{}, time.Time{}, fmt.Errorf("%w: the ID token is not valid: %v", errOIDC, err)
	}
	if subtle.ConstantTimeCompare([]byte(idt.Nonce), []byte(pl.nonce)) != 1 {
		return Principal{}, time.Time{}, fmt.Errorf("%w: the ID token's nonce is not this login's", errOIDC)
	}
	authorize := func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+raw) }
	who, err := whoAmI(r.Context(), o.API, authorize)
	if err != nil {
		return Principal{}, time.Time{}, err
	}
	return Principal{Name: who.User, Authorize: authorize}, idt.Expiry, nil
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
