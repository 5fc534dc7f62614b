package server

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/pflag"

	"github.com/rakhsh/rakhsh/internal/apiserver"
	"github.com/rakhsh/rakhsh/internal/ui"
)

// IdentityConfig is serve's configuration of the audit log (and, with OIDC, of the
// identity provider); see docs/identity.md.
type IdentityConfig struct {
	// AuditLog is the audit log's path: empty means DATA-DIR/audit.log, "none" no file.
	AuditLog string
	// AuditLogMaxSize is the size (bytes) at which the audit log rotates; AuditLogKeep how
	// many rotated files are kept.
	AuditLogMaxSize int64
	AuditLogKeep    int
	// AuditStdout copies every audit line to stdout.
	AuditStdout bool
	// OIDC is the OpenID Connect issuer whose ID tokens are credentials (empty Issuer: none).
	OIDC apiserver.OIDCConfig
	// OIDCClientSecretFile holds the client's secret for the web UI's login at the issuer
	// (empty: a public client, with PKCE).
	OIDCClientSecretFile string
	// OIDCScopes are the scopes the web UI's login asks for besides openid (nil: profile and
	// email).
	OIDCScopes []string
}

func addIdentityFlags(f *pflag.FlagSet, c *IdentityConfig) {
	f.StringVar(&c.AuditLog, "audit-log", "", "the audit log: one JSON line per mutating request, console session, login and token (default DATA-DIR/audit.log; none: no file)")
	f.Int64Var(&c.AuditLogMaxSize, "audit-log-max-size", 100<<20, "size in bytes at which the audit log is rotated (audit.log.1, .2, ...)")
	f.IntVar(&c.AuditLogKeep, "audit-log-keep", 10, "how many rotated audit logs are kept")
	f.BoolVar(&c.AuditStdout, "audit-stdout", false, "copy every audit line to stdout")
	f.StringVar(&c.OIDC.Issuer, "oidc-issuer", "", "an OpenID Connect issuer (https URL) whose ID tokens the API takes as bearer tokens")
	f.StringVar(&c.OIDC.ClientID, "oidc-client-id", "", "the client id the ID tokens must be issued for (their audience); required with --oidc-issuer")
	f.StringVar(&c.OIDC.UsernameClaim, "oidc-username-claim", "preferred_username", "the ID token claim that names the user")
	f.StringVar(&c.OIDC.GroupsClaim, "oidc-groups-claim", "groups", "the ID token claim that lists the user's groups")
	f.StringVar(&c.OIDC.CAFile, "oidc-ca-file", "", "CA bundle the issuer's certificate is checked against (default: the system's)")
	f.StringVar(&c.OIDCClientSecretFile, "oidc-client-secret-file", "", "file holding the client secret the web UI's login at the issuer uses (default: none, a public client with PKCE)")
	f.StringSliceVar(&c.OIDCScopes, "oidc-scopes", nil, "scopes the web UI's login asks the issuer for besides openid, comma-separated (default profile,email; add groups where the issuer puts the groups claim only in answer to that scope)")
}

// uiOIDC is the web UI's login at the OIDC issuer of cfg (nil without one): the browser goes
// to the issuer and back to https://HOST:PORT/ui/oidc/callback.
func uiOIDC(c IdentityConfig, cfg *apiserver.OIDCConfig, api http.Handler) (*ui.OIDCLogin, error) {
	if cfg == nil {
		if c.OIDCClientSecretFile != "" || len(c.OIDCScopes) > 0 {
			return nil, errors.New("--oidc-client-secret-file and --oidc-scopes need --oidc-issuer")
		}
		return nil, nil
	}
	for _, sc := range c.OIDCScopes {
		if sc == "" || strings.ContainsAny(sc, " \t\"\\") || sc == "openid" {
			return nil, fmt.Errorf("--oidc-scopes: %q is not a scope to ask for (openid is always asked for; scopes are words without spaces or quotes)", sc)
		}
	}
	client, err := apiserver.OIDCHTTPClient(*cfg)
	if err != nil {
		return nil, err
	}
	o := &ui.OIDCLogin{Issuer: cfg.Issuer, ClientID: cfg.ClientID, HTTPClient: client, API: api, Scopes: c.OIDCScopes}
	if c.OIDCClientSecretFile != "" {
		b, err := os.ReadFile(c.OIDCClientSecretFile)
		if err != nil {
			return nil, fmt.Errorf("--oidc-client-secret-file: %w", err)
		}
		if o.ClientSecret = strings.TrimSpace(string(b)); o.ClientSecret == "" {
			return nil, fmt.Errorf("--oidc-client-secret-file %s is empty", c.OIDCClientSecretFile)
		}
	}
	return o, nil
}

// oidcConfig is the OIDC configuration serve's flags ask for: nil without --oidc-issuer, an
// error when the flags do not make a usable one.
func oidcConfig(c IdentityConfig) (*apiserver.OIDCConfig, error) {
	if c.OIDC.Issuer == "" {
		if c.OIDC.ClientID != "" || c.OIDC.CAFile != "" {
			return nil, errors.New("--oidc-client-id and --oidc-ca-file need --oidc-issuer")
		}
		return nil, nil
	}
	if err := apiserver.CheckOIDCConfig(c.OIDC); err != nil {
		return nil, err
	}
	o := c.OIDC
	return &o, nil
}

// openAuditLog opens the audit log serve's flags ask for; nil when there is none.
func openAuditLog(c IdentityConfig, dataDir string) (*apiserver.AuditLog, error) {
	path := c.AuditLog
	if path == "" {
		path = filepath.Join(dataDir, "audit.log")
	}
	var copyTo io.Writer
	if c.AuditStdout {
		copyTo = os.Stdout
	}
	if path == "none" {
		if copyTo == nil {
			return nil, nil
		}
		path = ""
	}
	if path == "" {
		return apiserver.OpenAuditLog("", 0, 0, copyTo)
	}
	return apiserver.OpenAuditLog(path, c.AuditLogMaxSize, c.AuditLogKeep, copyTo)
}
