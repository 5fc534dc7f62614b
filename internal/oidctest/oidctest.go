// Package oidctest is an OpenID Connect issuer for tests: a TLS server on loopback with a
// real RSA signing key, serving discovery and its key set, and signing ID tokens with any
// claims.
package oidctest

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// Issuer is a running test issuer.
type Issuer struct {
	// URL is the issuer URL (https://127.0.0.1:PORT).
	URL string
	// CAPEM is the PEM of the server's certificate, to trust it.
	CAPEM []byte

	srv *httptest.Server
	key *rsa.PrivateKey
	kid string

	mu      sync.Mutex
	devices map[string]*device // by device code
	codes   map[string]*authCode
	login   map[string]any // the claims of who is logged in at the issuer (SetLogin)
}

// authCode is an authorization code the issuer gave a browser (authorization code flow).
type authCode struct {
	clientID, redirect, challenge, nonce string
	claims                               map[string]any
}

// device is a pending device authorization (RFC 8628).
type device struct {
	clientID, userCode string
	claims             map[string]any // set by Approve
}

// Start starts an issuer; Close stops it.
func Start() (*Issuer, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	is := &Issuer{key: key, kid: "test-key-1", devices: map[string]*device{}, codes: map[string]*authCode{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]any{
			"issuer": is.URL, "jwks_uri": is.URL + "/keys", "authorization_endpoint": is.URL + "/auth",
			"token_endpoint": is.URL + "/token", "id_token_signing_alg_values_supported": []string{"RS256"},
			"response_types_supported": []string{"code"}, "subject_types_supported": []string{"public"},
			"device_authorization_endpoint": is.URL + "/device",
		})
	})
	mux.HandleFunc("POST /device", is.serveDevice)
	mux.HandleFunc("GET /auth", is.serveAuth)
	mux.HandleFunc("POST /token", is.serveToken)
	mux.HandleFunc("GET /keys", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &is.key.PublicKey, KeyID: is.kid, Algorithm: "RS256", Use: "sig"}}})
	})
	is.srv = httptest.NewTLSServer(mux)
	is.URL = is.srv.URL
	is.CAPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: is.srv.Certificate().Raw})
	return is, nil
}

// Close stops the issuer.
func (is *Issuer) Close() { is.srv.Close() }

// Token signs an ID token of this issuer for audience, valid for ttl (negative: expired),
// with the extra claims.
func (is *Issuer) Token(audience string, ttl time.Duration, claims map[string]any) (string, error) {
	return is.sign(is.key, is.URL, audience, ttl, claims)
}

// ForeignToken is a token that claims to come from iss but is signed by another key.
func (is *Issuer) ForeignToken(iss, audience string, ttl time.Duration, claims map[string]any) (string, error) {
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return "", err
	}
	return is.sign(other, iss, audience, ttl, claims)
}

func (is *Issuer) sign(key *rsa.PrivateKey, iss, audience string, ttl time.Duration, claims map[string]any) (string, error) {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: key, KeyID: is.kid}}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return "", err
	}
	now := time.Now()
	c := map[string]any{"iss": iss, "aud": audience, "sub": "subject-1", "iat": now.Unix(), "exp": now.Add(ttl).Unix()}
	for k, v := range claims {
		c[k] = v
	}
	payload, err := json.Marshal(c)
	if err != nil {
		return "", err
	}
	obj, err := signer.Sign(payload)
	if err != nil {
		return "", err
	}
	return obj.CompactSerialize()
}

// serveDevice starts a device authorization: a device code for the client, a user code for
// the person, polled every second.
func (is *Issuer) serveDevice(w http.ResponseWriter, r *http.Request) {
	client := r.PostFormValue("client_id")
	if client == "" {
		oauthError(w, "invalid_client")
		return
	}
	dc, uc := randomHex(16), fmt.Sprintf("%s-%s", randomHex(2), randomHex(2))
	is.mu.Lock()
	is.devices[dc] = &device{clientID: client, userCode: uc}
	is.mu.Unlock()
	writeJSON(w, map[string]any{"device_code": dc, "user_code": uc, "verification_uri": is.URL + "/activate",
		"verification_uri_complete": is.URL + "/activate?user_code=" + uc, "expires_in": 300, "interval": 1})
}

// SetLogin plays a person logged in at the issuer with these claims: the authorization
// endpoint then sends every browser straight back with a code for them (nil: nobody, and
// browsers are sent back with access_denied).
func (is *Issuer) SetLogin(claims map[string]any) {
	is.mu.Lock()
	is.login = claims
	is.mu.Unlock()
}

// serveAuth is the authorization endpoint: a code for who is logged in (SetLogin), bound to
// the client, redirect URI, PKCE challenge (S256 only) and nonce, sent back to the redirect URI
// with the state.
func (is *Issuer) serveAuth(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	redirect, err := url.Parse(q.Get("redirect_uri"))
	if err != nil || redirect.Scheme == "" || q.Get("client_id") == "" || q.Get("response_type") != "code" {
		http.Error(w, "invalid authorization request", http.StatusBadRequest)
		return
	}
	back := redirect.Query()
	back.Set("state", q.Get("state"))
	is.mu.Lock()
	login := is.login
	switch {
	case login == nil:
		back.Set("error", "access_denied")
	case q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "":
		back.Set("error", "invalid_request")
		back.Set("error_description", "PKCE with S256 is required")
	default:
		code := randomHex(16)
		is.codes[code] = &authCode{clientID: q.Get("client_id"), redirect: redirect.String(), challenge: q.Get("code_challenge"), nonce: q.Get("nonce"), claims: login}
		back.Set("code", code)
	}
	is.mu.Unlock()
	redirect.RawQuery = back.Encode()
	http.Redirect(w, r, redirect.String(), http.StatusFound)
}

// serveCode answers the authorization code grant: the code once, for its client and redirect
// URI, with the verifier of its challenge; an ID token with the nonce.
func (is *Issuer) serveCode(w http.ResponseWriter, r *http.Request) {
	client := r.PostFormValue("client_id")
	if u, _, ok := r.BasicAuth(); ok {
		client, _ = url.QueryUnescape(u)
	}
	code := r.PostFormValue("code")
	is.mu.Lock()
	c := is.codes[code]
	delete(is.codes, code)
	is.mu.Unlock()
	sum := sha256.Sum256([]byte(r.PostFormValue("code_verifier")))
	switch {
	case c == nil || c.clientID != client || c.redirect != r.PostFormValue("redirect_uri"):
		oauthError(w, "invalid_grant")
		return
	case base64.RawURLEncoding.EncodeToString(sum[:]) != c.challenge:
		oauthError(w, "invalid_grant")
		return
	}
	claims := map[string]any{"nonce": c.nonce}
	for k, v := range c.claims {
		claims[k] = v
	}
	idt, err := is.Token(c.clientID, time.Hour, claims)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	writeJSON(w, map[string]any{"access_token": "at-" + randomHex(8), "token_type": "Bearer", "expires_in": 3600, "id_token": idt})
}

// serveToken answers the device code grant (authorization_pending until Approve, then an ID
// token for the client) and the authorization code grant (serveCode).
func (is *Issuer) serveToken(w http.ResponseWriter, r *http.Request) {
	switch r.PostFormValue("grant_type") {
	case "authorization_code":
		is.serveCode(w, r)
		return
	case "urn:ietf:params:oauth:grant-type:device_code":
	default:
		oauthError(w, "unsupported_grant_type")
		return
	}
	is.mu.Lock()
	d := is.devices[r.PostFormValue("device_code")]
	is.mu.Unlock()
	switch {
	case d == nil || d.clientID != r.PostFormValue("client_id"):
		oauthError(w, "invalid_grant")
		return
	case d.claims == nil:
		oauthError(w, "authorization_pending")
		return
	}
	idt, err := is.Token(d.clientID, time.Hour, d.claims)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	writeJSON(w, map[string]any{"access_token": "at-" + randomHex(8), "token_type": "Bearer", "expires_in": 3600, "id_token": idt})
}

// Approve plays the person who entered userCode at the verification page and logged in: the
// device's next poll gets an ID token with claims.
func (is *Issuer) Approve(userCode string, claims map[string]any) error {
	is.mu.Lock()
	defer is.mu.Unlock()
	for _, d := range is.devices {
		if d.userCode == userCode {
			d.claims = claims
			return nil
		}
	}
	return fmt.Errorf("no device authorization with user code %q", userCode)
}

func oauthError(w http.ResponseWriter, code string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusBadRequest)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": code})
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
