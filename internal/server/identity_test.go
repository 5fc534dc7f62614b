package server

import (
	"slices"
	"strings"
	"testing"

	"github.com/rakhsh/rakhsh/internal/apiserver"
)

// TestUIOIDCScopes: --oidc-scopes reaches the web UI's login, needs --oidc-issuer, and a
// scope that is not one word (or openid, always asked for) is refused naming it.
func TestUIOIDCScopes(t *testing.T) {
	cfg := &apiserver.OIDCConfig{Issuer: "https://issuer.example", ClientID: "rakhsh"}
	o, err := uiOIDC(IdentityConfig{OIDCScopes: []string{"profile", "groups"}}, cfg, nil)
	if err != nil || o == nil || !slices.Equal(o.Scopes, []string{"profile", "groups"}) {
		t.Fatalf("uiOIDC with scopes: %+v, %v", o, err)
	}
	if o, err := uiOIDC(IdentityConfig{}, cfg, nil); err != nil || len(o.Scopes) != 0 {
		t.Fatalf("uiOIDC without scopes: %+v, %v", o, err)
	}
	if _, err := uiOIDC(IdentityConfig{OIDCScopes: []string{"groups"}}, nil, nil); err == nil || !strings.Contains(err.Error(), "need --oidc-issuer") {
		t.Errorf("scopes without an issuer: %v", err)
	}
	for _, bad := range []string{"", "two words", `quo"te`, "openid"} {
		if _, err := uiOIDC(IdentityConfig{OIDCScopes: []string{"email", bad}}, cfg, nil); err == nil || !strings.Contains(err.Error(), "--oidc-scopes") {
			t.Errorf("scope %q: %v", bad, err)
		}
	}
}
