package ui

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// TokenLogin logs in with an API bearer token. The token is checked by asking the API itself
// (discovery, which needs a valid token), and the session then sends it on every API request,
// so the API authorizes the browser exactly as it would a CLI holding that token.
type TokenLogin struct {
	API http.Handler
}

// discoveryPath is what a token login asks the API to check the token.
const discoveryPath = "/apis/virtualization.rakhsh.io/v1alpha1"

// statusRecorder keeps only the status code of an answer.
type statusRecorder struct {
	h    http.Header
	code int
}

func (s *statusRecorder) Header() http.Header { return s.h }
func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.code == 0 {
		s.code = http.StatusOK
	}
	return len(b), nil
}
func (s *statusRecorder) WriteHeader(code int) {
	if s.code == 0 {
		s.code = code
	}
}

// Login implements LoginMethod.
func (t TokenLogin) Login(ctx context.Context, req LoginRequest) (Principal, error) {
	if req.Token == "" {
		return Principal{}, fmt.Errorf("%w: the token is empty", ErrLogin)
	}
	tok := req.Token
	authorize := func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+tok) }
	r, err := http.NewRequestWithContext(ctx, http.MethodGet, discoveryPath, nil)
	if err != nil {
		return Principal{}, err
	}
	authorize(r)
	rec := &statusRecorder{h: http.Header{}}
	t.API.ServeHTTP(rec, r)
	switch {
	case rec.code == http.StatusOK:
		return Principal{Name: "token", Authorize: authorize}, nil
	case rec.code == http.StatusUnauthorized || rec.code == http.StatusForbidden:
		return Principal{}, fmt.Errorf("%w: the API does not accept this token", ErrLogin)
	default:
		return Principal{}, fmt.Errorf("checking the token: the API answered %d", rec.code)
	}
}

// TicketLogin is a one-time login: `rakhsh ui` makes one ticket, prints it in the login URL,
// and the first login with it (within its lifetime) makes a session as Name.
type TicketLogin struct {
	Name string
	Now  func() time.Time

	mu      sync.Mutex
	sum     [32]byte
	expires time.Time
	used    bool
}

// NewTicketLogin returns a method and its ticket, valid once within ttl.
func NewTicketLogin(name string, ttl time.Duration) (*TicketLogin, string) {
	tk := randomString(32)
	return &TicketLogin{Name: name, Now: time.Now, sum: sha256.Sum256([]byte(tk)), expires: time.Now().Add(ttl)}, tk
}

// Login implements LoginMethod.
func (t *TicketLogin) Login(ctx context.Context, req LoginRequest) (Principal, error) {
	sum := sha256.Sum256([]byte(req.Ticket))
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case req.Ticket == "" || subtle.ConstantTimeCompare(sum[:], t.sum[:]) != 1:
		return Principal{}, fmt.Errorf("%w: the login ticket is not valid", ErrLogin)
	case t.used:
		return Principal{}, fmt.Errorf("%w: the login ticket was used already: run `rakhsh ui` again for a new one", ErrLogin)
	case t.Now().After(t.expires):
		return Principal{}, fmt.Errorf("%w: the login ticket has expired: run `rakhsh ui` again for a new one", ErrLogin)
	}
	t.used = true
	return Principal{Name: t.Name}, nil
}

// PasswordLogin logs a user in with the local password an administrator set (rakhsh user
// passwd): it asks the API's login endpoint, exactly as `rakhsh login` does, for a login token
// valid as long as a session may last (TTL), and the session sends that token on every API
// request; logging out revokes it. The API's answer to a wrong name or password is the same
// for both, and as slow.
type PasswordLogin struct {
	API http.Handler
	// TTL is the lifetime asked for the login token: the sessions' MaxAge.
	TTL time.Duration
}

// Login implements LoginMethod.
func (p PasswordLogin) Login(ctx context.Context, req LoginRequest) (Principal, error) {
	if req.Username == "" || req.Password == "" {
		return Principal{}, fmt.Errorf("%w: enter a user name and a password", ErrLogin)
	}
	body, err := json.Marshal(v1alpha1.LoginRequest{Username: req.Username, Password: req.Password, TTL: p.TTL.String()})
	if err != nil {
		return Principal{}, err
	}
	r, err := http.NewRequestWithContext(ctx, http.MethodPost, v1alpha1.IdentityPath+"/login", bytes.NewReader(body))
	if err != nil {
		return Principal{}, err
	}
	r.Header.Set("Content-Type", "application/json")
	r.RemoteAddr = req.Remote // the API's audit log names the browser's address
	rec := httptest.NewRecorder()
	p.API.ServeHTTP(rec, r)
	switch {
	case rec.Code == http.StatusUnauthorized:
		return Principal{}, fmt.Errorf("%w: wrong user name or password", ErrLogin)
	case rec.Code != http.StatusCreated && rec.Code != http.StatusOK:
		return Principal{}, fmt.Errorf("logging in: the API answered %d: %s", rec.Code, bytes.TrimSpace(rec.Body.Bytes()))
	}
	var tok v1alpha1.Token
	if err := json.Unmarshal(rec.Body.Bytes(), &tok); err != nil || tok.Token == "" {
		return Principal{}, fmt.Errorf("logging in: the API's answer holds no token (%v)", err)
	}
	secret := tok.Token
	authorize := func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+secret) }
	logout := func(ctx context.Context) {
		// The token goes with the session (it would otherwise stay valid until its TTL).
		r, err := http.NewRequestWithContext(ctx, http.MethodDelete, v1alpha1.IdentityPath+"/tokens/"+tok.ID, nil)
		if err == nil {
			authorize(r)
			p.API.ServeHTTP(httptest.NewRecorder(), r)
		}
	}
	return Principal{Name: req.Username, Authorize: authorize, Logout: logout}, nil
}
