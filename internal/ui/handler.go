package ui

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sort"
	"strings"
)

// HeaderCSRF carries a session's CSRF token on every mutating request the UI makes.
const HeaderCSRF = "X-CSRF-Token"

// Cookie names: with TLS the __Host- prefix makes the browser insist on Secure, Path=/ and no
// Domain, so no other host or plain-http page can set or shadow it.
const (
	cookieTLS   = "__Host-rakhsh-session"
	cookiePlain = "rakhsh-session"
)

// ErrLogin is wrapped by a login method's error for a refused credential (401); other errors
// are the server's (500).
var ErrLogin = errors.New("login refused")

// LoginRequest is the body of POST /ui/login. Each method reads its own fields.
type LoginRequest struct {
	Method string `json:"method"`
	// Token is an API bearer token (method "token").
	Token string `json:"token,omitempty"`
	// Ticket is a one-time login ticket (method "ticket", printed by `rakhsh ui`).
	Ticket string `json:"ticket,omitempty"`
	// Username and Password are a user's local password login (method "password").
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
	// Remote is the browser's address (set by the handler, never read from the body), for
	// what the API records of the login.
	Remote string `json:"-"`
}

// LoginMethod checks one kind of credential and says who it belongs to.
type LoginMethod interface {
	Login(ctx context.Context, req LoginRequest) (Principal, error)
}

// Config configures the UI handler.
type Config struct {
	// API is the API handler (what the CLI talks to); the gate forwards every request that is
	// not the UI's own to it.
	API      http.Handler
	Sessions *Sessions
	// Methods are the login methods offered, by name.
	Methods map[string]LoginMethod
	// SessionOnly refuses every API request without a live session and ignores Authorization
	// headers: for `rakhsh ui`, whose upstream is the admin socket.
	SessionOnly bool
	// OIDC, when set, offers the login at the API's OpenID Connect issuer (method "oidc",
	// started by GET /ui/oidc/login; oidc.go).
	OIDC *OIDCLogin
	Log  *slog.Logger
}

// Handler serves /ui/ and gates the API behind it.
type Handler struct {
	cfg    Config
	assets *assets
}

// New returns the handler: /ui/... is the UI, everything else goes to cfg.API.
func New(cfg Config) *Handler {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Sessions == nil {
		cfg.Sessions = NewSessions()
	}
	return &Handler{cfg: cfg, assets: loadAssets()}
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch p := r.URL.Path; {
	case p == "/ui":
		http.Redirect(w, r, "/ui/", http.StatusMovedPermanently)
	case p == "/ui/session":
		h.session(w, r)
	case p == "/ui/login":
		h.login(w, r)
	case p == "/ui/logout":
		h.logout(w, r)
	case p == "/ui/oidc/login" && h.cfg.OIDC != nil && r.Method == http.MethodGet:
		h.cfg.OIDC.start(w, r)
	case p == "/ui/oidc/callback" && h.cfg.OIDC != nil && r.Method == http.MethodGet:
		h.oidcCallback(w, r)
	case strings.HasPrefix(p, "/ui/"):
		h.assets.serve(w, r)
	default:
		h.gate(w, r)
	}
}

func cookieName(r *http.Request) string {
	if r.TLS != nil {
		return cookieTLS
	}
	return cookiePlain
}

func sessionCookie(r *http.Request) string {
	c, err := r.Cookie(cookieName(r))
	if err != nil {
		return ""
	}
	return c.Value
}

func mutating(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return false
	}
	return true
}

// gate forwards an API request, authorized as its session's principal when it carries a
// session cookie and no Authorization header of its own.
func (h *Handler) gate(w http.ResponseWriter, r *http.Request) {
	if h.cfg.SessionOnly {
		r.Header.Del("Authorization")
	}
	if r.Header.Get("Authorization") != "" && !h.cfg.SessionOnly {
		h.cfg.API.ServeHTTP(w, r)
		return
	}
	id := sessionCookie(r)
	if id == "" {
		if h.cfg.SessionOnly {
			writeStatus(w, http.StatusUnauthorized, "Unauthorized", "log in first: open the login URL `rakhsh ui` printed")
			return
		}
		h.cfg.API.ServeHTTP(w, r)
		return
	}
	sess := h.cfg.Sessions.Get(id)
	if sess == nil {
		writeStatus(w, http.StatusUnauthorized, "Unauthorized", "the session has ended: log in again")
		return
	}
	if mutating(r.Method) && !sess.CSRFValid(r.Header.Get(HeaderCSRF)) {
		writeStatus(w, http.StatusForbidden, "Forbidden", "the request has no valid "+HeaderCSRF+" header: a session's mutating calls must carry its CSRF token")
		return
	}
	if !sameOrigin(r) {
		writeStatus(w, http.StatusForbidden, "Forbidden", "the request comes from another origin ("+r.Header.Get("Origin")+")")
		return
	}
	r2 := r.Clone(r.Context())
	r2.Header.Del("Cookie")
	if sess.Principal.Authorize != nil {
		sess.Principal.Authorize(r2)
	}
	h.cfg.API.ServeHTTP(w, r2)
}

// sameOrigin says whether a browser's Origin header, when sent, names the host the request
// was sent to.
func sameOrigin(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" {
		return true
	}
	u, err := url.Parse(o)
	if err != nil {
		return false
	}
	return strings.EqualFold(u.Host, r.Host)
}

type sessionInfo struct {
	LoggedIn  bool     `json:"loggedIn"`
	User      string   `json:"user,omitempty"`
	Method    string   `json:"method,omitempty"`
	CSRFToken string   `json:"csrfToken,omitempty"`
	Methods   []string `json:"methods"`
}

func (h *Handler) methods() []string {
	m := make([]string, 0, len(h.cfg.Methods)+1)
	for k := range h.cfg.Methods {
		m = append(m, k)
	}
	if h.cfg.OIDC != nil {
		m = append(m, "oidc")
	}
	sort.Strings(m)
	return m
}

func (h *Handler) info(sess *Session) sessionInfo {
	in := sessionInfo{Methods: h.methods()}
	if sess != nil {
		in.LoggedIn, in.User, in.Method, in.CSRFToken = true, sess.Principal.Name, sess.Principal.Method, sess.CSRF
	}
	return in
}

// session answers GET /ui/session: whether the browser is logged in, as whom, its CSRF token,
// and the login methods offered.
func (h *Handler) session(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		writeStatus(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "use GET")
		return
	}
	setSecurityHeaders(w)
	writeJSON(w, http.StatusOK, h.info(h.cfg.Sessions.Get(sessionCookie(r))))
}

// login answers POST /ui/login: a JSON LoginRequest in, a session cookie out. Only JSON is
// accepted (a cross-site form cannot send it without a CORS preflight the server never
// grants), and a browser's Origin must be this host.
func (h *Handler) login(w http.ResponseWriter, r *http.Request) {
	setSecurityHeaders(w)
	if r.Method != http.MethodPost {
		writeStatus(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "use POST")
		return
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		writeStatus(w, http.StatusUnsupportedMediaType, "UnsupportedMediaType", "the login body must be JSON (Content-Type: application/json)")
		return
	}
	if !sameOrigin(r) {
		writeStatus(w, http.StatusForbidden, "Forbidden", "login from another origin ("+r.Header.Get("Origin")+") is refused")
		return
	}
	var req LoginRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeStatus(w, http.StatusBadRequest, "BadRequest", "the login body is not valid: "+err.Error())
		return
	}
	m := h.cfg.Methods[req.Method]
	if m == nil {
		writeStatus(w, http.StatusBadRequest, "BadRequest", fmt.Sprintf("unknown login method %q (offered: %s)", req.Method, strings.Join(h.methods(), ", ")))
		return
	}
	req.Remote = r.RemoteAddr
	p, err := m.Login(r.Context(), req)
	if err != nil {
		if errors.Is(err, ErrLogin) {
			h.cfg.Log.Info("ui login refused", "method", req.Method, "remote", r.RemoteAddr)
			writeStatus(w, http.StatusUnauthorized, "Unauthorized", err.Error())
			return
		}
		h.cfg.Log.Error("ui login failed", "method", req.Method, "err", err)
		writeStatus(w, http.StatusInternalServerError, "InternalError", err.Error())
		return
	}
	p.Method = req.Method
	h.end(r.Context(), KeyOf(sessionCookie(r)))
	id, sess := h.cfg.Sessions.Create(p)
	http.SetCookie(w, &http.Cookie{Name: cookieName(r), Value: id, Path: "/", HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
	h.cfg.Log.Info("ui login", "method", req.Method, "user", p.Name, "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, h.info(sess))
}

// oidcCallback answers GET /ui/oidc/callback, where the issuer sends the browser back: a
// session of the user the API says the ID token is, then the UI; or a page saying why not.
func (h *Handler) oidcCallback(w http.ResponseWriter, r *http.Request) {
	name, path := oidcCookie(r)
	http.SetCookie(w, &http.Cookie{Name: name, Value: "", Path: path, MaxAge: -1, HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteLaxMode})
	done, err := h.cfg.OIDC.finish(r)
	if err != nil {
		if errors.Is(err, errOIDC) {
			h.cfg.Log.Info("ui login refused", "method", "oidc", "remote", r.RemoteAddr, "err", err)
			loginPage(w, http.StatusUnauthorized, err.Error())
			return
		}
		h.cfg.Log.Error("ui login failed", "method", "oidc", "err", err)
		loginPage(w, http.StatusBadGateway, err.Error())
		return
	}
	p := done.principal
	p.Method, p.NotAfter = "oidc", done.notAfter
	h.end(r.Context(), KeyOf(sessionCookie(r)))
	h.end(r.Context(), done.oldSession)
	id, _ := h.cfg.Sessions.Create(p)
	http.SetCookie(w, &http.Cookie{Name: cookieName(r), Value: id, Path: "/", HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
	h.cfg.Log.Info("ui login", "method", "oidc", "user", p.Name, "remote", r.RemoteAddr)
	w.Header().Set("Cache-Control", "no-store")
	http.Redirect(w, r, "/ui/", http.StatusSeeOther)
}

// logout answers POST /ui/logout (with the CSRF header): the session ends.
func (h *Handler) logout(w http.ResponseWriter, r *http.Request) {
	setSecurityHeaders(w)
	if r.Method != http.MethodPost {
		writeStatus(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "use POST")
		return
	}
	id := sessionCookie(r)
	if sess := h.cfg.Sessions.Get(id); sess != nil {
		if !sess.CSRFValid(r.Header.Get(HeaderCSRF)) {
			writeStatus(w, http.StatusForbidden, "Forbidden", "logout needs the session's "+HeaderCSRF+" header")
			return
		}
		h.end(r.Context(), KeyOf(id))
	}
	http.SetCookie(w, &http.Cookie{Name: cookieName(r), Value: "", Path: "/", MaxAge: -1, HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
	writeJSON(w, http.StatusOK, h.info(nil))
}

// end ends the session id, if it lives, and runs its principal's Logout.
func (h *Handler) end(ctx context.Context, k SessionKey) {
	sess := h.cfg.Sessions.Take(k)
	if sess != nil && sess.Principal.Logout != nil {
		sess.Principal.Logout(ctx)
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// writeStatus answers with a Kubernetes-style Status, as the API does.
func writeStatus(w http.ResponseWriter, code int, reason, msg string) {
	writeJSON(w, code, map[string]any{"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason, "message": msg})
}
