package apiserver

import (
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/oidctest"
)

// TestOIDCTokens: with an issuer configured, its ID tokens are credentials. A user known only
// by the token reads the VMs of a project whose members name one of its groups, and no other
// project's; a User object of that name adds its cluster role and refuses when disabled;
// tokens for another audience, from another issuer, signed by another key, expired or naming
// no user are refused.
func TestOIDCTokens(t *testing.T) {
	is, err := oidctest.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer is.Close()
	dir := t.TempDir()
	ca := filepath.Join(dir, "issuer.pem")
	if err := os.WriteFile(ca, is.CAPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := CheckOIDCConfig(OIDCConfig{Issuer: "http://x", ClientID: "c"}); err == nil {
		t.Error("a plain-http issuer was accepted")
	}
	if err := CheckOIDCConfig(OIDCConfig{Issuer: is.URL}); err == nil {
		t.Error("an issuer without a client id was accepted")
	}
	st := boltIn(t, dir)
	s := New(Config{Store: st, AdminToken: "admin-secret", Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		OIDC: &OIDCConfig{Issuer: is.URL, ClientID: "rakhsh", CAFile: ca}})
	defer s.Shutdown()
	ctx := testContext(t)
	for _, p := range []string{"research", "other"} {
		if err := s.EnsureProject(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	hs := httptest.NewTLSServer(s.RemoteHandler())
	defer hs.Close()
	// The issuer and client id, for `rakhsh login --oidc`: public, no credentials.
	var lc v1alpha1.OIDCLoginConfig
	if err := tokenClient(t, hs.URL, "").Do(ctx, "GET", v1alpha1.IdentityPath+"/oidc", nil, "", nil, &lc); err != nil || lc.Issuer != is.URL || lc.ClientID != "rakhsh" {
		t.Errorf("GET /oidc: %+v %v", lc, err)
	}
	admin := tokenClient(t, hs.URL, "admin-secret")
	if err := admin.Do(ctx, "PATCH", client.Path("projects", "", "research"), nil, "application/merge-patch+json",
		[]byte(`{"spec":{"members":[{"name":"group:physics","role":"Viewer"}]}}`), nil); err != nil {
		t.Fatal(err)
	}
	tok := func(aud string, ttl time.Duration, claims map[string]any) string {
		t.Helper()
		s, err := is.Token(aud, ttl, claims)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	list := func(token, project string) error {
		return tokenClient(t, hs.URL, token).Do(ctx, "GET", client.Path("virtualmachines", project, ""), nil, "", nil, nil)
	}
	nora := tok("rakhsh", time.Hour, map[string]any{"preferred_username": "nora", "groups": []string{"physics", "staff"}})
	if err := list(nora, "research"); err != nil {
		t.Fatalf("a physics member lists the research project's VMs: %v", err)
	}
	var who struct {
		User   string   `json:"user"`
		Groups []string `json:"groups"`
	}
	if err := tokenClient(t, hs.URL, nora).Do(ctx, "GET", v1alpha1.IdentityPath+"/whoami", nil, "", nil, &who); err != nil || who.User != "nora" || !strings.Contains(strings.Join(who.Groups, ","), "physics") {
		t.Errorf("whoami with the ID token: %+v %v", who, err)
	}
	if err := list(nora, "other"); client.Reason(err) != v1alpha1.ReasonForbidden && client.Reason(err) != v1alpha1.ReasonNotFound {
		t.Errorf("another project: %v, want Forbidden", err)
	}
	if err := tokenClient(t, hs.URL, nora).Create(ctx, "virtualmachines", "research", map[string]any{"kind": "VirtualMachine", "metadata": map[string]any{"name": "x"},
		"spec": map[string]any{"cpu": map[string]any{"cores": 1}, "memory": map[string]any{"size": "128Mi"}}}, nil); client.Reason(err) != v1alpha1.ReasonForbidden {
		t.Errorf("a Viewer creating a VM: %v, want Forbidden", err)
	}
	// A User object of the name: its cluster role applies, and disabling it refuses the token.
	if err := admin.Create(ctx, "users", "", map[string]any{"kind": "User", "metadata": map[string]any{"name": "nora"},
		"spec": map[string]any{"clusterRole": "ClusterViewer"}}, nil); err != nil {
		t.Fatal(err)
	}
	if err := list(nora, "other"); err != nil {
		t.Errorf("a ClusterViewer lists another project: %v", err)
	}
	if err := admin.Do(ctx, "PATCH", client.Path("users", "", "nora"), nil, "application/merge-patch+json", []byte(`{"spec":{"disabled":true}}`), nil); err != nil {
		t.Fatal(err)
	}
	if err := list(nora, "research"); client.Reason(err) != v1alpha1.ReasonUnauthorized || !strings.Contains(err.Error(), "disabled") {
		t.Errorf("a disabled user's ID token: %v, want Unauthorized", err)
	}
	foreignIss, err := is.ForeignToken("https://elsewhere.example", "rakhsh", time.Hour, map[string]any{"preferred_username": "eve", "groups": []string{"physics"}})
	if err != nil {
		t.Fatal(err)
	}
	forgedKey, err := is.ForeignToken(is.URL, "rakhsh", time.Hour, map[string]any{"preferred_username": "eve", "groups": []string{"physics"}})
	if err != nil {
		t.Fatal(err)
	}
	for name, bad := range map[string]string{
		"another audience": tok("other-app", time.Hour, map[string]any{"preferred_username": "eve", "groups": []string{"physics"}}),
		"another issuer":   foreignIss,
		"another key":      forgedKey,
		"expired":          tok("rakhsh", -time.Minute, map[string]any{"preferred_username": "eve", "groups": []string{"physics"}}),
		"no user name":     tok("rakhsh", time.Hour, map[string]any{"groups": []string{"physics"}}),
	} {
		if err := list(bad, "research"); client.Reason(err) != v1alpha1.ReasonUnauthorized {
			t.Errorf("%s: %v, want Unauthorized", name, err)
		}
	}
}
