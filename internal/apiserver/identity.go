package apiserver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/registry"
	"github.com/rakhsh/rakhsh/internal/store"
)

// Users' tokens and passwords.
//
// A user authenticates with a bearer token of the form
//
//	rakhsh-user.ID.SECRET   (ID: 12 hex digits, names the stored record)
//
// made by `rakhsh token create` (an API token, 720 hours by default) or by `rakhsh login` (a
// login token, 12 hours by default, from a user name and password). The store keeps only the
// token's SHA-256 (compared in constant time), its user, limits and expiry, under
// /identity/tokens/ID; a revoked token's record stays until a day after its expiry, so that
// its refusal can say it was revoked. Every request with a user token reads the User, so
// disabling or deleting a user refuses their tokens at once.
//
// Passwords are stored as bcrypt hashes under /identity/passwords/NAME, never in the User
// object and never logged.
const (
	userTokenPrefix = "rakhsh-user."

	userTokenKeyPrefix = "/identity/tokens/"
	passwordKeyPrefix  = "/identity/passwords/"

	// DefaultTokenTTL and MaxTokenTTL bound API tokens; DefaultLoginTTL and MaxLoginTTL
	// login tokens.
	DefaultTokenTTL = 720 * time.Hour
	MaxTokenTTL     = 8760 * time.Hour
	DefaultLoginTTL = 12 * time.Hour
	MaxLoginTTL     = 24 * time.Hour

	// minPasswordLen and maxPasswordLen bound passwords (bcrypt reads at most 72 bytes).
	minPasswordLen = 8
	maxPasswordLen = 72
	bcryptCost     = 11
	// keepRevoked is how long a revoked or expired token's record is kept past its expiry.
	keepRevoked = 24 * time.Hour
)

// userTokenRecord is what the store keeps of a user's token.
type userTokenRecord struct {
	ID          string               `json:"id"`
	Hash        string               `json:"hash"`
	User        string               `json:"user"`
	Project     string               `json:"project,omitempty"`
	Role        v1alpha1.ProjectRole `json:"role,omitempty"`
	Created     v1alpha1.Time        `json:"created"`
	Expires     v1alpha1.Time        `json:"expires"`
	Revoked     *v1alpha1.Time       `json:"revoked,omitempty"`
	Login       bool                 `json:"login,omitempty"`
	Description string               `json:"description,omitempty"`
}

func (rec userTokenRecord) public() v1alpha1.Token {
	return v1alpha1.Token{ID: rec.ID, User: rec.User, Project: rec.Project, Role: rec.Role, Created: rec.Created,
		Expires: rec.Expires, Revoked: rec.Revoked, Login: rec.Login, Description: rec.Description}
}

// passwordRecord is what the store keeps of a password.
type passwordRecord struct {
	Hash    string        `json:"hash"`
	Changed v1alpha1.Time `json:"changed"`
}

// ParseUserToken splits a user token into its id and secret; ok is false when the form is
// wrong.
func ParseUserToken(tok string) (id, secret string, ok bool) {
	id, secret, ok = splitToken(tok, userTokenPrefix)
	if !ok || !validJoinID(id) || len(secret) > 128 {
		return "", "", false
	}
	return id, secret, true
}

// authenticateUser checks a user token: form, record, secret, revocation, expiry, then the
// User (it must exist and not be disabled).
func (s *Server) authenticateUser(ctx context.Context, tok string) (Identity, error) {
	id, secret, ok := ParseUserToken(tok)
	if !ok {
		return Identity{}, errBadToken
	}
	rec, err := cachedRecord(ctx, s, userTokenKeyPrefix+id, func(b []byte) (rec userTokenRecord, err error) {
		err = json.Unmarshal(b, &rec)
		return rec, err
	})
	if err != nil {
		if errors.Is(err, errs.ErrNotFound) {
			return Identity{}, errs.New(errs.ErrUnauthorized, "Unauthorized: token %s is not known (it expired more than a day ago, or never existed): log in again or make a new token", id)
		}
		return Identity{}, fmt.Errorf("token %s: %w", id, err)
	}
	if !sameHash(secret, rec.Hash) {
		return Identity{}, errBadToken
	}
	if rec.Revoked != nil {
		return Identity{}, errs.New(errs.ErrUnauthorized, "Unauthorized: token %s of user %q was revoked at %s", id, rec.User, rec.Revoked.UTC().Format(time.RFC3339))
	}
	if !s.now().Before(rec.Expires.Time) {
		return Identity{}, errs.New(errs.ErrUnauthorized, "Unauthorized: token %s of user %q expired at %s: log in again or make a new token", id, rec.User, rec.Expires.UTC().Format(time.RFC3339))
	}
	u, err := s.loadUser(ctx, rec.User)
	if err != nil {
		return Identity{}, err
	}
	ident := userIdentity(u)
	ident.TokenID, ident.TokenProject, ident.TokenRole = rec.ID, rec.Project, rec.Role
	return ident, nil
}

// loadUser reads a User for authentication: a missing or disabled user is 401.
func (s *Server) loadUser(ctx context.Context, name string) (*v1alpha1.User, error) {
	st, _ := registry.ByResource("users")
	u, err := cachedUser(ctx, s, key(st.Info, "", name))
	if err != nil {
		if errors.Is(err, errs.ErrNotFound) {
			return nil, errs.New(errs.ErrUnauthorized, "Unauthorized: user %q does not exist (any more)", name)
		}
		return nil, fmt.Errorf("user %q: %w", name, err)
	}
	return enabledUser(name, u)
}

// cachedUser reads a User through the authCache (shared: not to be changed).
func cachedUser(ctx context.Context, s *Server, k string) (*v1alpha1.User, error) {
	return cachedRecord(ctx, s, k, func(b []byte) (*v1alpha1.User, error) {
		var u v1alpha1.User
		return &u, json.Unmarshal(b, &u)
	})
}

// enabledUser refuses a disabled user (401).
func enabledUser(name string, u *v1alpha1.User) (*v1alpha1.User, error) {
	if u.Spec.Disabled {
		return nil, errs.New(errs.ErrUnauthorized, "Unauthorized: user %q is disabled", name)
	}
	return u, nil
}

func userIdentity(u *v1alpha1.User) Identity {
	return Identity{Name: "user " + u.Name, User: u.Name, Groups: append([]string(nil), u.Spec.Groups...), ClusterRole: u.Spec.ClusterRole}
}

// projectRole is a user's effective role in project p ("" when none or when p does not
// exist).
func (s *Server) projectRole(ctx context.Context, id Identity, p string) (v1alpha1.ProjectRole, error) {
	if p == "" {
		return "", nil
	}
	if id.TokenProject != "" && p != id.TokenProject {
		return "", nil
	}
	st, _ := registry.ByResource("projects")
	members, err := cachedRecord(ctx, s, key(st.Info, "", p), func(b []byte) ([]v1alpha1.ProjectMember, error) {
		var proj struct {
			Spec struct {
				Members []v1alpha1.ProjectMember `json:"members"`
			} `json:"spec"`
		}
		err := json.Unmarshal(b, &proj)
		return proj.Spec.Members, err
	})
	if err != nil {
		if errors.Is(err, errs.ErrNotFound) {
			return "", nil
		}
		return "", fmt.Errorf("project %q: %w", p, err)
	}
	return id.capRole(p, memberRole(members, id.User, id.Groups)), nil
}

// authorizeUserRequest looks up the user's role in the request's project and decides.
func (s *Server) authorizeUserRequest(ctx context.Context, id Identity, a attributes) error {
	p := a.Namespace
	if a.Resource == "projects" {
		p = a.Name
	}
	role, err := s.projectRole(ctx, id, p)
	if err != nil {
		return err
	}
	return authorizeUser(id, a, role)
}

// listFilter returns, for a list or watch of a user, which keys the user may see: nil when
// they may see every object of the resource (a cluster role, a cluster kind every user
// reads, or one project the request already names).
func (s *Server) listFilter(ctx context.Context, t target) (func(key string) bool, error) {
	id := identityOf(ctx)
	if id.User == "" {
		return nil, nil
	}
	info := t.st.Info
	if !info.Namespaced && info.Resource != "projects" {
		return nil, nil
	}
	if info.Namespaced && t.namespace != "" {
		return nil, nil // authorized for this one project
	}
	r := lookupUserRule(info.Resource, "", info.Namespaced)
	switch cr := id.effectiveClusterRole(); {
	case cr == v1alpha1.ClusterRoleAdmin && (r.ClusterRead || r.ClusterWrite):
		return nil, nil
	case cr == v1alpha1.ClusterRoleViewer && r.ClusterRead:
		return nil, nil
	}
	visible, err := s.visibleProjects(ctx, id, r.Read)
	if err != nil {
		return nil, err
	}
	pfx := prefix(info, "")
	return func(k string) bool {
		rest, ok := strings.CutPrefix(k, pfx)
		if !ok {
			return false
		}
		p, _, _ := strings.Cut(rest, "/")
		return visible[p]
	}, nil
}

// visibleProjects lists the projects where the user's role is at least need.
func (s *Server) visibleProjects(ctx context.Context, id Identity, need int) (map[string]bool, error) {
	st, _ := registry.ByResource("projects")
	out := map[string]bool{}
	after := ""
	for {
		res, err := s.store.List(ctx, prefix(st.Info, ""), store.ListOptions{Limit: 500, After: after})
		if err != nil {
			return nil, err
		}
		for _, kv := range res.KVs {
			var proj struct {
				Metadata struct {
					Name string `json:"name"`
				} `json:"metadata"`
				Spec struct {
					Members []v1alpha1.ProjectMember `json:"members"`
				} `json:"spec"`
			}
			if json.Unmarshal(kv.Value, &proj) != nil {
				continue
			}
			p := proj.Metadata.Name
			if roleLevel(id.capRole(p, memberRole(proj.Spec.Members, id.User, id.Groups))) >= need && need < levelNever {
				out[p] = true
			}
		}
		if !res.More || len(res.KVs) == 0 {
			return out, nil
		}
		after = res.KVs[len(res.KVs)-1].Key
	}
}

func (s *Server) identityRoutes(mux *http.ServeMux) {
	mux.HandleFunc(v1alpha1.IdentityPath+"/login", s.serveLogin)
	mux.HandleFunc(v1alpha1.IdentityPath+"/whoami", s.serveWhoAmI)
	mux.HandleFunc(v1alpha1.IdentityPath+"/oidc", s.serveOIDCConfig)
	mux.HandleFunc(v1alpha1.IdentityPath+"/tokens", s.serveTokens)
	mux.HandleFunc(v1alpha1.IdentityPath+"/tokens/{id}", s.serveTokenID)
	mux.HandleFunc(v1alpha1.IdentityPath+"/audit", s.serveAudit) // auditread.go
}

// decodeStrict decodes a JSON body into v, refusing unknown fields.
func decodeStrict(w http.ResponseWriter, r *http.Request, what string, v any) error {
	data, err := readBody(w, r)
	if err != nil {
		return err
	}
	return decodeStrictBody(data, what, v)
}

// decodeStrictBody is decodeStrict of a body already read.
func decodeStrictBody(data []byte, what string, v any) error {
	if len(strings.TrimSpace(string(data))) == 0 {
		return nil
	}
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errs.New(errs.ErrBadRequest, "malformed %s: %v", what, err)
	}
	return nil
}

// dummyHash is compared against when a login names no known password, so that the answer
// takes as long as a wrong password.
var dummyHash, _ = bcrypt.GenerateFromPassword([]byte("rakhsh-no-such-password"), bcryptCost)

var errBadLogin = errs.New(errs.ErrUnauthorized, "Unauthorized: wrong user name or password")

// serveLogin serves POST IdentityPath/login: a user name and password for a login token.
func (s *Server) serveLogin(w http.ResponseWriter, r *http.Request) {
	if !s.allowOnly(w, r, http.MethodPost) {
		return
	}
	var req v1alpha1.LoginRequest
	if err := decodeStrict(w, r, "LoginRequest", &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	ttl := DefaultLoginTTL
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil || d <= 0 || d > MaxLoginTTL {
			s.writeError(w, r, errs.New(errs.ErrBadRequest, "ttl %q: want a positive duration of at most %s, e.g. 8h", req.TTL, MaxLoginTTL))
			return
		}
		ttl = d
	}
	ctx := r.Context()
	hash := dummyHash
	known := false
	if registry.ValidateName(req.Username) == "" {
		if kv, err := s.store.Get(ctx, passwordKeyPrefix+req.Username); err == nil {
			var rec passwordRecord
			if json.Unmarshal(kv.Value, &rec) == nil {
				hash, known = []byte(rec.Hash), true
			}
		} else if !errors.Is(err, errs.ErrNotFound) {
			s.writeError(w, r, err)
			return
		}
	}
	if len(req.Password) > maxPasswordLen {
		req.Password = req.Password[:maxPasswordLen]
	}
	match := bcrypt.CompareHashAndPassword(hash, []byte(req.Password)) == nil
	if !known || !match {
		s.log.Info("login refused", "user", req.Username, "from", r.RemoteAddr)
		s.audit(r, auditEntry{Verb: "login", Resource: "users", Name: req.Username, Code: http.StatusUnauthorized})
		s.writeError(w, r, errBadLogin)
		return
	}
	u, err := s.loadUser(ctx, req.Username)
	if err != nil {
		s.audit(r, auditEntry{Verb: "login", Resource: "users", Name: req.Username, Code: http.StatusUnauthorized})
		s.writeError(w, r, err)
		return
	}
	tok, err := s.issueUserToken(ctx, userTokenRecord{User: u.Name, Login: true, Description: "login"}, ttl)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.audit(r.WithContext(context.WithValue(ctx, identityKey, userIdentity(u))), auditEntry{Verb: "login", Resource: "users", Name: u.Name, Code: http.StatusCreated})
	writeJSON(w, http.StatusCreated, tok)
}

// issueUserToken stores a new token for rec (ID, hash and times are filled in) and returns
// it with its secret.
func (s *Server) issueUserToken(ctx context.Context, rec userTokenRecord, ttl time.Duration) (v1alpha1.Token, error) {
	s.sweepUserTokens(ctx)
	idb := make([]byte, 6)
	if _, err := rand.Read(idb); err != nil {
		return v1alpha1.Token{}, err
	}
	secret, err := randomSecret()
	if err != nil {
		return v1alpha1.Token{}, err
	}
	now := s.now()
	rec.ID, rec.Hash = hex.EncodeToString(idb), hashSecret(secret)
	rec.Created, rec.Expires = v1alpha1.NewTime(now), v1alpha1.NewTime(now.Add(ttl))
	data, _ := json.Marshal(rec)
	if _, err := s.store.Create(ctx, userTokenKeyPrefix+rec.ID, data); err != nil {
		return v1alpha1.Token{}, err
	}
	out := rec.public()
	out.Token = userTokenPrefix + rec.ID + "." + secret
	return out, nil
}

// listUserTokens reads every token record.
func (s *Server) listUserTokens(ctx context.Context) ([]userTokenRecord, error) {
	var out []userTokenRecord
	after := ""
	for {
		res, err := s.store.List(ctx, userTokenKeyPrefix, store.ListOptions{Limit: 500, After: after})
		if err != nil {
			return nil, err
		}
		for _, kv := range res.KVs {
			var rec userTokenRecord
			if json.Unmarshal(kv.Value, &rec) == nil {
				out = append(out, rec)
			}
		}
		if !res.More || len(res.KVs) == 0 {
			return out, nil
		}
		after = res.KVs[len(res.KVs)-1].Key
	}
}

// sweepUserTokens deletes the records of tokens that expired more than keepRevoked ago.
func (s *Server) sweepUserTokens(ctx context.Context) {
	recs, err := s.listUserTokens(ctx)
	if err != nil {
		return
	}
	now := s.now()
	for _, rec := range recs {
		if now.After(rec.Expires.Add(keepRevoked)) {
			_, _, _ = s.store.Delete(ctx, userTokenKeyPrefix+rec.ID, 0)
		}
	}
}

// isClusterAdmin says an identity manages users and tokens: the admin or a ClusterAdmin
// user (not through a project-limited token).
func isClusterAdmin(id Identity) bool {
	return id.Admin || (id.User != "" && id.effectiveClusterRole() == v1alpha1.ClusterRoleAdmin)
}

// serveTokens serves IdentityPath/tokens: POST makes a token, GET lists them (a user's own;
// a ClusterAdmin's: all).
func (s *Server) serveTokens(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	id := identityOf(ctx)
	if !id.Admin && id.User == "" {
		s.writeError(w, r, errs.New(errs.ErrForbidden, "%s may not use API tokens: only users and the admin may", id.describe()))
		return
	}
	switch r.Method {
	case http.MethodGet:
		recs, err := s.listUserTokens(ctx)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		out := v1alpha1.TokenList{Items: []v1alpha1.Token{}}
		for _, rec := range recs {
			if isClusterAdmin(id) || rec.User == id.User {
				out.Items = append(out.Items, rec.public())
			}
		}
		sort.Slice(out.Items, func(i, j int) bool { return out.Items[i].Created.Before(out.Items[j].Created.Time) })
		writeJSON(w, http.StatusOK, out)
	case http.MethodPost:
		var req v1alpha1.TokenRequest
		if err := decodeStrict(w, r, "TokenRequest", &req); err != nil {
			s.writeError(w, r, err)
			return
		}
		tok, err := s.createUserToken(ctx, id, req)
		if err != nil {
			s.audit(r, auditEntry{Verb: verbCreate, Resource: "tokens", Name: req.User, Namespace: req.Project, Code: statusFor(err).Code})
			s.writeError(w, r, err)
			return
		}
		s.log.Info("token created", "id", tok.ID, "user", tok.User, "project", tok.Project, "by", id.Name)
		s.audit(r, auditEntry{Verb: verbCreate, Resource: "tokens", Name: tok.ID, Namespace: tok.Project, Code: http.StatusCreated})
		writeJSON(w, http.StatusCreated, tok)
	default:
		s.methodNotAllowed(w, r, "GET, POST")
	}
}

func (s *Server) createUserToken(ctx context.Context, id Identity, req v1alpha1.TokenRequest) (v1alpha1.Token, error) {
	ttl := DefaultTokenTTL
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil || d <= 0 || d > MaxTokenTTL {
			return v1alpha1.Token{}, errs.New(errs.ErrBadRequest, "ttl %q: want a positive duration of at most %s, e.g. 720h", req.TTL, MaxTokenTTL)
		}
		ttl = d
	}
	if len(req.Description) > 256 {
		return v1alpha1.Token{}, errs.New(errs.ErrBadRequest, "description: at most 256 characters")
	}
	if req.Role != "" && roleLevel(req.Role) == levelNone {
		return v1alpha1.Token{}, errs.New(errs.ErrBadRequest, "role %q: want Admin, User or Viewer", req.Role)
	}
	if req.Role != "" && req.Project == "" {
		return v1alpha1.Token{}, errs.New(errs.ErrBadRequest, "role %q needs a project: a role caps the token's role in one project", req.Role)
	}
	if req.Project != "" {
		if msg := registry.ValidateName(req.Project); msg != "" {
			return v1alpha1.Token{}, errs.New(errs.ErrBadRequest, "project %q: %s", req.Project, msg)
		}
	}
	user := req.User
	switch {
	case user == "" && id.User == "":
		return v1alpha1.Token{}, errs.New(errs.ErrBadRequest, "%s must name the user the token acts as (--user)", id.describe())
	case user == "":
		user = id.User
	case user != id.User && !isClusterAdmin(id):
		return v1alpha1.Token{}, errs.New(errs.ErrForbidden, "%s may not make tokens for user %q: only a ClusterAdmin may", id.describe(), user)
	}
	if msg := registry.ValidateName(user); msg != "" {
		return v1alpha1.Token{}, errs.New(errs.ErrBadRequest, "user %q: %s", user, msg)
	}
	if _, err := s.loadUser(ctx, user); err != nil {
		if errors.Is(err, errs.ErrUnauthorized) {
			return v1alpha1.Token{}, errs.New(errs.ErrBadRequest, "cannot make a token for user %q: %s", user, strings.TrimPrefix(err.Error(), "Unauthorized: "))
		}
		return v1alpha1.Token{}, err
	}
	// A token limited to a project makes only tokens limited as much or more.
	if id.TokenProject != "" {
		if req.Project != id.TokenProject {
			return v1alpha1.Token{}, errs.New(errs.ErrForbidden, "%s holds a token limited to project %q: it may make only tokens limited to that project (--project %s)", id.describe(), id.TokenProject, id.TokenProject)
		}
		if id.TokenRole != "" && (req.Role == "" || roleLevel(req.Role) > roleLevel(id.TokenRole)) {
			return v1alpha1.Token{}, errs.New(errs.ErrForbidden, "%s holds a token limited to role %s: it may make only tokens of that role or less (--role)", id.describe(), id.TokenRole)
		}
	}
	return s.issueUserToken(ctx, userTokenRecord{User: user, Project: req.Project, Role: req.Role, Description: req.Description}, ttl)
}

// serveTokenID serves IdentityPath/tokens/{id}: DELETE revokes the token (the owner's or a
// ClusterAdmin's).
func (s *Server) serveTokenID(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	id := identityOf(ctx)
	if !s.allowOnly(w, r, http.MethodDelete) {
		return
	}
	tid := r.PathValue("id")
	err := func() error {
		if !id.Admin && id.User == "" {
			return errs.New(errs.ErrForbidden, "%s may not revoke tokens", id.describe())
		}
		if !validJoinID(tid) {
			return errs.New(errs.ErrBadRequest, "token id %q: want the 12 hex digits `rakhsh token list` shows", tid)
		}
		k := userTokenKeyPrefix + tid
		for range 10 {
			kv, err := s.store.Get(ctx, k)
			if err != nil {
				if errors.Is(err, errs.ErrNotFound) {
					return errs.New(errs.ErrNotFound, "token %s not found", tid)
				}
				return err
			}
			var rec userTokenRecord
			if err := json.Unmarshal(kv.Value, &rec); err != nil {
				return err
			}
			if rec.User != id.User && !isClusterAdmin(id) {
				return errs.New(errs.ErrNotFound, "token %s not found", tid)
			}
			if rec.Revoked != nil {
				return nil
			}
			now := v1alpha1.NewTime(s.now())
			rec.Revoked = &now
			data, _ := json.Marshal(rec)
			if _, err := s.store.Update(ctx, k, data, kv.ModRevision); err == nil {
				return nil
			} else if !errors.Is(err, errs.ErrConflict) {
				return err
			}
		}
		return conflict(target{})
	}()
	code := http.StatusOK
	if err != nil {
		code = statusFor(err).Code
	}
	s.audit(r, auditEntry{Verb: verbDelete, Resource: "tokens", Name: tid, Code: code})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeSuccess(w)
}

// serveSetPassword serves POST users/NAME/password (authorized before: the user themself or
// a ClusterAdmin). The password is never logged nor audited.
func (s *Server) serveSetPassword(w http.ResponseWriter, r *http.Request, t target) {
	if !s.allowOnly(w, r, http.MethodPost) {
		return
	}
	ctx := r.Context()
	var req v1alpha1.PasswordRequest
	if err := decodeStrict(w, r, "PasswordRequest", &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	switch {
	case len(req.Password) < minPasswordLen:
		s.writeError(w, r, errs.New(errs.ErrBadRequest, "the password is too short: at least %d characters", minPasswordLen))
		return
	case len(req.Password) > maxPasswordLen:
		s.writeError(w, r, errs.New(errs.ErrBadRequest, "the password is too long: at most %d bytes", maxPasswordLen))
		return
	}
	st, _ := registry.ByResource("users")
	if _, err := s.store.Get(ctx, key(st.Info, "", t.name)); err != nil {
		s.writeError(w, r, s.notFound(err, t))
		return
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(req.Password), bcryptCost)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	data, _ := json.Marshal(passwordRecord{Hash: string(hash), Changed: v1alpha1.NewTime(s.now())})
	k := passwordKeyPrefix + t.name
	if _, err := s.store.Create(ctx, k, data); errors.Is(err, errs.ErrAlreadyExists) {
		for range 10 {
			kv, gerr := s.store.Get(ctx, k)
			if gerr != nil {
				err = gerr
				break
			}
			if _, err = s.store.Update(ctx, k, data, kv.ModRevision); !errors.Is(err, errs.ErrConflict) {
				break
			}
		}
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.log.Info("password set", "user", t.name, "by", identityOf(ctx).Name)
	writeSuccess(w)
}

// serveOIDCConfig serves GET IdentityPath/oidc: the issuer and client id a CLI logs in with
// (rakhsh login --oidc). Public, as the issuer's own discovery document is.
func (s *Server) serveOIDCConfig(w http.ResponseWriter, r *http.Request) {
	if !s.allowOnly(w, r, http.MethodGet) {
		return
	}
	if s.oidc == nil {
		s.writeError(w, r, errs.New(errs.ErrNotFound, "this server takes no OpenID Connect logins (serve --oidc-issuer)"))
		return
	}
	writeJSON(w, http.StatusOK, v1alpha1.OIDCLoginConfig{Issuer: s.oidc.cfg.Issuer, ClientID: s.oidc.cfg.ClientID})
}

// serveWhoAmI serves GET IdentityPath/whoami.
func (s *Server) serveWhoAmI(w http.ResponseWriter, r *http.Request) {
	if !s.allowOnly(w, r, http.MethodGet) {
		return
	}
	ctx := r.Context()
	id := identityOf(ctx)
	out := v1alpha1.WhoAmI{Name: id.describe(), User: id.User, Groups: id.Groups, ClusterRole: id.effectiveClusterRole(), Admin: id.Admin, Token: id.TokenID}
	if id.User != "" {
		vis, err := s.visibleProjects(ctx, id, levelViewer)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		out.Projects = map[string]string{}
		for p := range vis {
			role, err := s.projectRole(ctx, id, p)
			if err != nil {
				s.writeError(w, r, err)
				return
			}
			out.Projects[p] = string(role)
		}
	}
	writeJSON(w, http.StatusOK, out)
}
