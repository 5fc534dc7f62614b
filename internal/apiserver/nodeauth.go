package apiserver

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/registry"
	"github.com/rakhsh/rakhsh/internal/store"
)

// Node credentials.
//
// An admin makes a join token (POST NodeAuthPath/jointokens); the store keeps only its
// SHA-256, its expiry and how many uses it has left. A joining agent POSTs to
// nodes/NAME/credential with the join token as its bearer token and gets a node credential:
// a random bearer token whose SHA-256 the store keeps bound to the node's name. From then on
// the agent authenticates as "node NAME" and may do only what authorizeNode allows. Deleting
// the Node revokes its credential.
//
// Token forms (the parts are split on '.'; node names are DNS labels and hold no '.'):
//
//	join token:      rakhsh-join.ID.SECRET   (ID: 12 hex digits, names the stored record)
//	node credential: rakhsh-node.NODE.SECRET
//
// SECRET is 32 random bytes, base64url. Tokens are compared by their hashes in constant time
// and never logged.
const (
	joinTokenPrefix = "rakhsh-join."
	nodeCredPrefix  = "rakhsh-node."

	joinTokenKeyPrefix = "/nodeauth/jointokens/"
	nodeCredKeyPrefix  = "/nodeauth/credentials/"

	// DefaultJoinTokenTTL is the life of a join token made without a TTL.
	DefaultJoinTokenTTL = time.Hour
	// MaxJoinTokenTTL bounds the life of a join token.
	MaxJoinTokenTTL = 30 * 24 * time.Hour
)

// joinTokenRecord is what the store keeps of a join token.
type joinTokenRecord struct {
	ID          string        `json:"id"`
	Hash        string        `json:"hash"`
	Created     v1alpha1.Time `json:"created"`
	Expires     v1alpha1.Time `json:"expires"`
	UsesLeft    int           `json:"usesLeft"`
	Description string        `json:"description,omitempty"`
}

// nodeCredRecord is what the store keeps of a node credential.
type nodeCredRecord struct {
	Node    string        `json:"node"`
	Hash    string        `json:"hash"`
	Created v1alpha1.Time `json:"created"`
	// JoinToken is the ID of the join token it was issued for; empty when an admin asked.
	JoinToken string `json:"joinToken,omitempty"`
}

func hashSecret(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

// sameHash compares a secret's hash with a stored one in constant time.
func sameHash(secret, stored string) bool {
	return subtle.ConstantTimeCompare([]byte(hashSecret(secret)), []byte(stored)) == 1
}

func randomSecret() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// splitToken splits PREFIX.ID.SECRET; ok is false when the form is wrong.
func splitToken(tok, prefix string) (id, secret string, ok bool) {
	rest, found := strings.CutPrefix(tok, prefix)
	if !found {
		return "", "", false
	}
	id, secret, ok = strings.Cut(rest, ".")
	if !ok || id == "" || secret == "" || strings.Contains(secret, ".") {
		return "", "", false
	}
	return id, secret, true
}

func validJoinID(id string) bool {
	if len(id) != 12 {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil
}

var errBadToken = errs.New(errs.ErrUnauthorized, "Unauthorized: the bearer token is not valid")

// authenticateNode checks a node credential.
func (s *Server) authenticateNode(ctx context.Context, tok string) (Identity, error) {
	node, secret, ok := splitToken(tok, nodeCredPrefix)
	if !ok || registry.ValidateName(node) != "" {
		return Identity{}, errBadToken
	}
	kv, err := s.store.Get(ctx, nodeCredKeyPrefix+node)
	if err != nil {
		if errors.Is(err, errs.ErrNotFound) {
			return Identity{}, errs.New(errs.ErrUnauthorized, "Unauthorized: node %q has no credential (it was removed, or never joined): join it again with a new join token", node)
		}
		return Identity{}, err
	}
	var rec nodeCredRecord
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return Identity{}, fmt.Errorf("credential of node %q: %w", node, err)
	}
	if !sameHash(secret, rec.Hash) {
		return Identity{}, errBadToken
	}
	return Identity{Name: "node " + node, Node: node}, nil
}

// authenticateJoin checks a join token without using it up.
func (s *Server) authenticateJoin(ctx context.Context, tok string) (Identity, error) {
	rec, _, err := s.checkJoinToken(ctx, tok)
	if err != nil {
		return Identity{}, err
	}
	return Identity{Name: "join token " + rec.ID, JoinToken: tok}, nil
}

// checkJoinToken finds the join token's record and checks the secret, the expiry and the
// uses left. It returns the record and its revision.
func (s *Server) checkJoinToken(ctx context.Context, tok string) (joinTokenRecord, int64, error) {
	id, secret, ok := splitToken(tok, joinTokenPrefix)
	if !ok || !validJoinID(id) {
		return joinTokenRecord{}, 0, errBadToken
	}
	kv, err := s.store.Get(ctx, joinTokenKeyPrefix+id)
	if err != nil {
		if errors.Is(err, errs.ErrNotFound) {
			return joinTokenRecord{}, 0, errs.New(errs.ErrUnauthorized, "Unauthorized: join token %s does not exist (it expired, was used up or deleted): make a new one with `rakhsh node token create`", id)
		}
		return joinTokenRecord{}, 0, err
	}
	var rec joinTokenRecord
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return joinTokenRecord{}, 0, fmt.Errorf("join token %s: %w", id, err)
	}
	if !sameHash(secret, rec.Hash) {
		return joinTokenRecord{}, 0, errBadToken
	}
	if !s.now().Before(rec.Expires.Time) {
		_, _, _ = s.store.Delete(ctx, joinTokenKeyPrefix+id, kv.ModRevision)
		return joinTokenRecord{}, 0, errs.New(errs.ErrUnauthorized, "Unauthorized: join token %s expired at %s: make a new one with `rakhsh node token create`", id, rec.Expires.Format(time.RFC3339))
	}
	if rec.UsesLeft <= 0 {
		return joinTokenRecord{}, 0, errs.New(errs.ErrUnauthorized, "Unauthorized: join token %s is used up: make a new one with `rakhsh node token create`", id)
	}
	return rec, kv.ModRevision, nil
}

// useJoinToken takes one use of a join token (deleting it with its last use).
func (s *Server) useJoinToken(ctx context.Context, tok string) (joinTokenRecord, error) {
	for attempt := 0; ; attempt++ {
		rec, rev, err := s.checkJoinToken(ctx, tok)
		if err != nil {
			return rec, err
		}
		rec.UsesLeft--
		if rec.UsesLeft <= 0 {
			_, _, err = s.store.Delete(ctx, joinTokenKeyPrefix+rec.ID, rev)
		} else {
			data, _ := json.Marshal(rec)
			_, err = s.store.Update(ctx, joinTokenKeyPrefix+rec.ID, data, rev)
		}
		if err == nil {
			return rec, nil
		}
		if !(errors.Is(err, errs.ErrConflict) || errors.Is(err, errs.ErrNotFound)) || attempt >= 5 {
			return rec, err
		}
	}
}

// sweepJoinTokens deletes the expired join tokens.
func (s *Server) sweepJoinTokens(ctx context.Context) ([]joinTokenRecord, error) {
	res, err := s.store.List(ctx, joinTokenKeyPrefix, store.ListOptions{})
	if err != nil {
		return nil, err
	}
	var live []joinTokenRecord
	now := s.now()
	for _, kv := range res.KVs {
		var rec joinTokenRecord
		if err := json.Unmarshal(kv.Value, &rec); err != nil {
			continue
		}
		if !now.Before(rec.Expires.Time) || rec.UsesLeft <= 0 {
			_, _, _ = s.store.Delete(ctx, kv.Key, kv.ModRevision)
			continue
		}
		live = append(live, rec)
	}
	return live, nil
}

func publicJoinToken(rec joinTokenRecord) v1alpha1.JoinToken {
	return v1alpha1.JoinToken{ID: rec.ID, Expires: rec.Expires, Created: rec.Created, UsesLeft: rec.UsesLeft, Description: rec.Description}
}

func requireAdmin(r *http.Request, what string) error {
	id := identityOf(r.Context())
	if id.Admin {
		return nil
	}
	return errs.New(errs.ErrForbidden, "%s may not %s: only an admin may", id.describe(), what)
}

// serveJoinTokens serves NodeAuthPath/jointokens: POST makes one, GET lists them.
func (s *Server) serveJoinTokens(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	switch r.Method {
	case http.MethodGet:
		if err := requireAdmin(r, "list join tokens"); err != nil {
			s.writeError(w, r, err)
			return
		}
		live, err := s.sweepJoinTokens(ctx)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		out := v1alpha1.JoinTokenList{Items: []v1alpha1.JoinToken{}}
		for _, rec := range live {
			out.Items = append(out.Items, publicJoinToken(rec))
		}
		writeJSON(w, http.StatusOK, out)
	case http.MethodPost:
		if err := requireAdmin(r, "create join tokens"); err != nil {
			s.writeError(w, r, err)
			return
		}
		var req v1alpha1.JoinTokenRequest
		if err := decodeStrict(w, r, "JoinTokenRequest", &req); err != nil {
			s.writeError(w, r, err)
			return
		}
		tok, err := s.createJoinToken(ctx, req)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		s.log.Info("join token created", "id", tok.ID, "expires", tok.Expires.Format(time.RFC3339), "uses", tok.UsesLeft)
		writeJSON(w, http.StatusCreated, tok)
	default:
		s.methodNotAllowed(w, r, "GET, POST")
	}
}

func (s *Server) createJoinToken(ctx context.Context, req v1alpha1.JoinTokenRequest) (v1alpha1.JoinToken, error) {
	ttl := DefaultJoinTokenTTL
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil || d <= 0 || d > MaxJoinTokenTTL {
			return v1alpha1.JoinToken{}, errs.New(errs.ErrBadRequest, "ttl %q: want a positive duration of at most %s, e.g. 1h or 30m", req.TTL, MaxJoinTokenTTL)
		}
		ttl = d
	}
	uses := req.Uses
	if uses == 0 {
		uses = 1
	}
	if uses < 0 || uses > 1000 {
		return v1alpha1.JoinToken{}, errs.New(errs.ErrBadRequest, "uses %d: want 1..1000 (how many nodes may join with the token)", req.Uses)
	}
	if len(req.Description) > 256 {
		return v1alpha1.JoinToken{}, errs.New(errs.ErrBadRequest, "description: at most 256 characters")
	}
	if _, err := s.sweepJoinTokens(ctx); err != nil {
		return v1alpha1.JoinToken{}, err
	}
	idb := make([]byte, 6)
	if _, err := rand.Read(idb); err != nil {
		return v1alpha1.JoinToken{}, err
	}
	secret, err := randomSecret()
	if err != nil {
		return v1alpha1.JoinToken{}, err
	}
	now := s.now()
	rec := joinTokenRecord{ID: hex.EncodeToString(idb), Hash: hashSecret(secret), Created: v1alpha1.NewTime(now),
		Expires: v1alpha1.NewTime(now.Add(ttl)), UsesLeft: uses, Description: req.Description}
	data, _ := json.Marshal(rec)
	if _, err := s.store.Create(ctx, joinTokenKeyPrefix+rec.ID, data); err != nil {
		return v1alpha1.JoinToken{}, err
	}
	out := publicJoinToken(rec)
	out.Token = joinTokenPrefix + rec.ID + "." + secret
	return out, nil
}

// serveJoinToken serves NodeAuthPath/jointokens/{id}: DELETE.
func (s *Server) serveJoinToken(w http.ResponseWriter, r *http.Request) {
	if !s.allowOnly(w, r, http.MethodDelete) {
		return
	}
	if err := requireAdmin(r, "delete join tokens"); err != nil {
		s.writeError(w, r, err)
		return
	}
	id := r.PathValue("id")
	if !validJoinID(id) {
		s.writeError(w, r, errs.New(errs.ErrBadRequest, "join token id %q: want the 12 hex digits `rakhsh node token list` shows", id))
		return
	}
	if _, _, err := s.store.Delete(r.Context(), joinTokenKeyPrefix+id, 0); err != nil {
		if errors.Is(err, errs.ErrNotFound) {
			err = errs.New(errs.ErrNotFound, "join token %s not found", id)
		}
		s.writeError(w, r, err)
		return
	}
	writeSuccess(w)
}

// serveNodeCredential serves POST nodes/{name}/credential: a joining agent (bearer: a join
// token, which this uses up) or an admin gets a new credential for the node. A node that
// already has a credential must be removed first when a join token asks.
func (s *Server) serveNodeCredential(w http.ResponseWriter, r *http.Request, t target) {
	if !s.allowOnly(w, r, http.MethodPost) {
		return
	}
	ctx := r.Context()
	id := identityOf(ctx)
	if !id.Admin && id.JoinToken == "" {
		s.writeError(w, r, errs.New(errs.ErrForbidden, "%s may not get a node credential: only a join token or an admin may", id.describe()))
		return
	}
	k := nodeCredKeyPrefix + t.name
	if id.JoinToken != "" {
		if _, err := s.store.Get(ctx, k); err == nil {
			s.writeError(w, r, errs.New(errs.ErrAlreadyExists, "node %q has already joined: remove it first (rakhsh node remove %s) or join under another --node-name", t.name, t.name))
			return
		} else if !errors.Is(err, errs.ErrNotFound) {
			s.writeError(w, r, err)
			return
		}
	}
	secret, err := randomSecret()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	rec := nodeCredRecord{Node: t.name, Hash: hashSecret(secret), Created: v1alpha1.NewTime(s.now())}
	if id.JoinToken != "" {
		jt, err := s.useJoinToken(ctx, id.JoinToken)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		rec.JoinToken = jt.ID
	}
	data, _ := json.Marshal(rec)
	if id.Admin {
		_, _, _ = s.store.Delete(ctx, k, 0)
	}
	if _, err := s.store.Create(ctx, k, data); err != nil {
		if errors.Is(err, errs.ErrAlreadyExists) {
			err = errs.New(errs.ErrAlreadyExists, "node %q has already joined: remove it first (rakhsh node remove %s)", t.name, t.name)
		}
		s.writeError(w, r, err)
		return
	}
	s.log.Info("node credential issued", "node", t.name, "by", id.Name)
	writeJSON(w, http.StatusCreated, v1alpha1.NodeCredential{Node: t.name, Token: nodeCredPrefix + t.name + "." + secret})
}

// revokeNodeCredential deletes the credential of a node (when its Node is deleted).
func (s *Server) revokeNodeCredential(ctx context.Context, node string) error {
	_, _, err := s.store.Delete(ctx, nodeCredKeyPrefix+node, 0)
	if err != nil && !errors.Is(err, errs.ErrNotFound) {
		return err
	}
	if err == nil {
		s.log.Info("node credential revoked", "node", node)
	}
	return nil
}
