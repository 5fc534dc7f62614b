package apiserver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"

	"github.com/rakhsh/rakhsh/internal/errs"
)

// OIDC login: the API takes an OpenID Connect ID token as a bearer token (as Kubernetes does)
// when serve is given an issuer. The token's signature (the issuer's published keys), issuer,
// audience (the client id) and expiry are checked by github.com/coreos/go-oidc; the user name
// and groups come from its claims. A User object of that name is optional: when there is one,
// its cluster role and groups apply and a disabled one is refused; project roles come from
// Project.spec.members (user:NAME, group:NAME) as for every user.

// OIDCConfig configures OIDC ID tokens as credentials.
type OIDCConfig struct {
	// Issuer is the issuer URL (https), as in the tokens' "iss" claim.
	Issuer string
	// ClientID is the audience the tokens must be issued for.
	ClientID string
	// UsernameClaim names the user; default "preferred_username".
	UsernameClaim string
	// GroupsClaim lists the user's groups; default "groups". A missing claim is no groups.
	GroupsClaim string
	// CAFile, when set, is the CA bundle the issuer's certificate is checked against
	// (instead of the system's).
	CAFile string
}

// oidcRetry is how soon a failed discovery of the issuer is tried again.
const oidcRetry = 10 * time.Second

// oidcAuth verifies ID tokens of one issuer. The issuer is discovered at the first token (and
// again after a failure, at most every oidcRetry), so a serve starts while its issuer is down.
type oidcAuth struct {
	cfg    OIDCConfig
	client *http.Client

	mu       sync.Mutex
	verifier *oidc.IDTokenVerifier
	lastErr  error
	lastTry  time.Time
}

// CheckOIDCConfig says what is wrong with cfg (serve's flags), if anything.
func CheckOIDCConfig(cfg OIDCConfig) error {
	_, err := newOIDCAuth(cfg)
	return err
}

func newOIDCAuth(cfg OIDCConfig) (*oidcAuth, error) {
	if !strings.HasPrefix(cfg.Issuer, "https://") {
		return nil, fmt.Errorf("oidc issuer %q: want an https:// URL", cfg.Issuer)
	}
	if cfg.ClientID == "" {
		return nil, errors.New("oidc: a client id (the tokens' audience) is required")
	}
	if cfg.UsernameClaim == "" {
		cfg.UsernameClaim = "preferred_username"
	}
	if cfg.GroupsClaim == "" {
		cfg.GroupsClaim = "groups"
	}
	client, err := OIDCHTTPClient(cfg)
	if err != nil {
		return nil, err
	}
	return &oidcAuth{cfg: cfg, client: client}, nil
}

// OIDCHTTPClient is the HTTP client that reaches the issuer of cfg: trusting cfg.CAFile when
// set (else the system's CAs).
func OIDCHTTPClient(cfg OIDCConfig) (*http.Client, error) {
	tcfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("oidc CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("oidc CA file %s: no PEM certificate in it", cfg.CAFile)
		}
		tcfg.RootCAs = pool
	}
	return &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{TLSClientConfig: tcfg, Proxy: http.ProxyFromEnvironment}}, nil
}

// verifierFor discovers the issuer once.
func (o *oidcAuth) verifierFor(ctx context.Context) (*oidc.IDTokenVerifier, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.verifier != nil {
		return o.verifier, nil
	}
	if o.lastErr != nil && time.Since(o.lastTry) < oidcRetry {
		return nil, o.lastErr
	}
	o.lastTry = time.Now()
	// The key set lives as long as the server: its refreshes must not end with this request.
	pctx := oidc.ClientContext(context.WithoutCancel(ctx), o.client)
	dctx, cancel := context.WithTimeout(pctx, 15*time.Second)
	defer cancel()
	p, err := oidc.NewProvider(dctx, o.cfg.Issuer)
	if err != nil {
		o.lastErr = fmt.Errorf("the OIDC issuer %s cannot be reached: %w", o.cfg.Issuer, err)
		return nil, o.lastErr
	}
	keys := oidc.NewRemoteKeySet(pctx, jwksURL(p))
	o.verifier = oidc.NewVerifier(o.cfg.Issuer, keys, &oidc.Config{ClientID: o.cfg.ClientID})
	o.lastErr = nil
	return o.verifier, nil
}

func jwksURL(p *oidc.Provider) string {
	var c struct {
		JWKS string `json:"jwks_uri"`
	}
	_ = p.Claims(&c)
	return c.JWKS
}

// looksLikeJWT says tok has the three dot-separated parts of a JWT.
func looksLikeJWT(tok string) bool {
	return strings.Count(tok, ".") == 2 && !strings.ContainsAny(tok, " \t")
}

// authenticateOIDC checks an ID token and returns the user it names.
func (s *Server) authenticateOIDC(ctx context.Context, tok string) (Identity, error) {
	v, err := s.oidc.verifierFor(ctx)
	if err != nil {
		return Identity{}, errs.New(errs.ErrUnavailable, "%v", err)
	}
	idt, err := v.Verify(ctx, tok)
	if err != nil {
		return Identity{}, errs.New(errs.ErrUnauthorized, "Unauthorized: the OIDC ID token is not valid: %v", err)
	}
	var claims map[string]any
	if err := idt.Claims(&claims); err != nil {
		return Identity{}, errs.New(errs.ErrUnauthorized, "Unauthorized: the OIDC ID token's claims: %v", err)
	}
	name, _ := claims[s.oidc.cfg.UsernameClaim].(string)
	if name == "" {
		return Identity{}, errs.New(errs.ErrUnauthorized, "Unauthorized: the OIDC ID token has no %q claim naming the user", s.oidc.cfg.UsernameClaim)
	}
	var groups []string
	switch g := claims[s.oidc.cfg.GroupsClaim].(type) {
	case []any:
		for _, x := range g {
			if gs, ok := x.(string); ok && gs != "" {
				groups = append(groups, gs)
			}
		}
	case string:
		groups = []string{g}
	}
	id := Identity{Name: "user " + name, User: name, Groups: groups}
	st := mustStrategy("users")
	u, err := cachedUser(ctx, s, key(st.Info, "", name))
	switch {
	case errors.Is(err, errs.ErrNotFound):
		// No User object: the token's name and groups are all there is.
	case err != nil:
		return Identity{}, err
	default:
		if _, err := enabledUser(name, u); err != nil {
			return Identity{}, err
		}
		id.ClusterRole = u.Spec.ClusterRole
		for _, g := range u.Spec.Groups {
			if !slices.Contains(id.Groups, g) {
				id.Groups = append(id.Groups, g)
			}
		}
	}
	return id, nil
}
