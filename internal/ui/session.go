// Package ui serves the web UI: the embedded bundle under /ui/, the login and logout endpoints,
// and the gate that turns a browser's session cookie into an authorized API request.
//
// A session is made by a login method (an API token today; a one-time ticket for `rakhsh ui`;
// passwords and OIDC plug in as more methods) and holds a Principal: who logged in and how their
// API requests are authorized. The gate hands every API request that carries the session cookie
// to the same API handler the CLI talks to, authorized as the principal, after checking the
// session's CSRF token on every mutating method. The UI has no other way into the API.
package ui

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"sync"
	"time"
)

// Principal is who a session belongs to and how its API requests are authorized.
type Principal struct {
	// Name is shown in the UI ("admin", a user name).
	Name string
	// Method is the login method that made the session ("token", "ticket", ...).
	Method string
	// Authorize prepares a request for the API handler behind the gate, e.g. sets the bearer
	// token the user logged in with. Nil leaves the request as it is (the unix socket is admin).
	Authorize func(r *http.Request)
	// Logout, when set, runs when the user logs out: e.g. it revokes the login token the
	// session held.
	Logout func(ctx context.Context)
	// NotAfter, when set, ends the session then (the expiry of the ID token it holds).
	NotAfter time.Time
}

// Session is one browser's login.
type Session struct {
	Principal Principal
	// CSRF is sent by the UI in HeaderCSRF on every mutating call.
	CSRF    string
	created time.Time
	seen    time.Time
}

// Sessions keeps the sessions of one process in memory: only the SHA-256 of each cookie value
// is kept, and a session ends after IdleTimeout without a request or MaxAge after login.
type Sessions struct {
	IdleTimeout time.Duration
	MaxAge      time.Duration
	// Max bounds the number of live sessions; the oldest is dropped beyond it.
	Max int
	Now func() time.Time

	mu   sync.Mutex
	byID map[[32]byte]*Session
}

// NewSessions returns a store with the defaults: 1 h idle, 12 h at most, 10,000 sessions.
func NewSessions() *Sessions {
	return &Sessions{IdleTimeout: time.Hour, MaxAge: 12 * time.Hour, Max: 10000, Now: time.Now, byID: map[[32]byte]*Session{}}
}

func randomString(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic("crypto/rand: " + err.Error())
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// Create starts a session for p and returns the cookie value and the session.
func (s *Sessions) Create(p Principal) (string, *Session) {
	id := randomString(32)
	now := s.Now()
	sess := &Session{Principal: p, CSRF: randomString(32), created: now, seen: now}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked(now)
	if s.Max > 0 && len(s.byID) >= s.Max {
		var oldest [32]byte
		var at time.Time
		for k, v := range s.byID {
			if at.IsZero() || v.created.Before(at) {
				oldest, at = k, v.created
			}
		}
		delete(s.byID, oldest)
	}
	s.byID[sha256.Sum256([]byte(id))] = sess
	return id, sess
}

func (s *Sessions) expireLocked(now time.Time) {
	for k, v := range s.byID {
		if s.expired(v, now) {
			delete(s.byID, k)
		}
	}
}

func (s *Sessions) expired(v *Session, now time.Time) bool {
	return now.Sub(v.seen) > s.IdleTimeout || now.Sub(v.created) > s.MaxAge || (!v.Principal.NotAfter.IsZero() && !now.Before(v.Principal.NotAfter))
}

// Get returns the live session of a cookie value and marks it used, or nil.
func (s *Sessions) Get(id string) *Session {
	if id == "" {
		return nil
	}
	k := sha256.Sum256([]byte(id))
	now := s.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.byID[k]
	if v == nil {
		return nil
	}
	if s.expired(v, now) {
		delete(s.byID, k)
		return nil
	}
	v.seen = now
	return v
}

// Delete ends the session of a cookie value.
func (s *Sessions) Delete(id string) { s.Take(KeyOf(id)) }

// SessionKey names a session without being its cookie value: the SHA-256 of that value, what
// the store keeps.
type SessionKey [32]byte

// KeyOf is the key of a cookie value ("": the zero key, no session).
func KeyOf(id string) SessionKey {
	if id == "" {
		return SessionKey{}
	}
	return sha256.Sum256([]byte(id))
}

// Take ends the session of key and returns it (nil: none).
func (s *Sessions) Take(k SessionKey) *Session {
	if k == (SessionKey{}) {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.byID[k]
	delete(s.byID, k)
	return v
}

// Len is the number of sessions held (live or not yet swept).
func (s *Sessions) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byID)
}

// CSRFValid says whether token is the session's CSRF token (constant time).
func (v *Session) CSRFValid(token string) bool {
	return token != "" && subtle.ConstantTimeCompare([]byte(token), []byte(v.CSRF)) == 1
}
