package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/oauth2"

	"github.com/rakhsh/rakhsh/client"
)

// oidcDeviceFlow logs in through the server's OpenID Connect issuer with the device
// authorization grant (RFC 8628): the person opens the printed URL in any browser (on any
// machine), enters the code and logs in there, while the CLI polls the issuer for the
// tokens. It returns the ID token.
func oidcDeviceFlow(cmd *cobra.Command, server, caFile string, insecure bool, issuerCA string) (string, error) {
	ctx := cmd.Context()
	c, err := client.New(client.Config{Server: server, CAFile: caFile, Insecure: insecure})
	if err != nil {
		return "", err
	}
	lc, err := c.OIDCLoginConfig(ctx)
	if err != nil {
		return "", fmt.Errorf("asking the server for its OpenID Connect issuer: %w", err)
	}
	hc, err := issuerClient(issuerCA)
	if err != nil {
		return "", err
	}
	disc, err := discover(ctx, hc, lc.Issuer)
	if err != nil {
		return "", err
	}
	if disc.DeviceAuthorizationEndpoint == "" {
		return "", fmt.Errorf("the issuer %s offers no device authorization (RFC 8628): log in through it another way and pass the ID token with --oidc-id-token-stdin", lc.Issuer)
	}
	conf := &oauth2.Config{ClientID: lc.ClientID, Scopes: []string{"openid", "profile", "email"},
		Endpoint: oauth2.Endpoint{DeviceAuthURL: disc.DeviceAuthorizationEndpoint, TokenURL: disc.TokenEndpoint}}
	ctx = context.WithValue(ctx, oauth2.HTTPClient, hc)
	da, err := conf.DeviceAuth(ctx)
	if err != nil {
		return "", fmt.Errorf("starting the device login at %s: %w", lc.Issuer, err)
	}
	w := cmd.ErrOrStderr()
	fmt.Fprintf(w, "To log in, open %s in a browser and enter the code %s\n", da.VerificationURI, da.UserCode)
	if da.VerificationURIComplete != "" {
		fmt.Fprintf(w, "(or open %s)\n", da.VerificationURIComplete)
	}
	if !da.Expiry.IsZero() {
		fmt.Fprintf(w, "Waiting for the login (the code is valid until %s)...\n", da.Expiry.Format(time.Kitchen))
	}
	tok, err := conf.DeviceAccessToken(ctx, da)
	if err != nil {
		return "", fmt.Errorf("the device login did not complete: %w", err)
	}
	idt, _ := tok.Extra("id_token").(string)
	if idt == "" {
		return "", fmt.Errorf("the issuer %s answered without an ID token (is the openid scope allowed for client %s?)", lc.Issuer, lc.ClientID)
	}
	return idt, nil
}

// issuerClient is the HTTP client for the issuer, trusting caFile when given.
func issuerClient(caFile string) (*http.Client, error) {
	hc := &http.Client{Timeout: 30 * time.Second}
	if caFile == "" {
		return hc, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("--oidc-ca-file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--oidc-ca-file %s holds no PEM certificate", caFile)
	}
	hc.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	return hc, nil
}

// discovery is the part of an issuer's discovery document the device flow needs.
type discovery struct {
	Issuer                      string `json:"issuer"`
	TokenEndpoint               string `json:"token_endpoint"`
	DeviceAuthorizationEndpoint string `json:"device_authorization_endpoint"`
}

// discover reads issuer's discovery document and checks it names the same issuer.
func discover(ctx context.Context, hc *http.Client, issuer string) (*discovery, error) {
	u := strings.TrimSuffix(issuer, "/") + "/.well-known/openid-configuration"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("reading the issuer's discovery document: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("reading the issuer's discovery document %s: %s", u, resp.Status)
	}
	var d discovery
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&d); err != nil {
		return nil, fmt.Errorf("the issuer's discovery document %s: %w", u, err)
	}
	if strings.TrimSuffix(d.Issuer, "/") != strings.TrimSuffix(issuer, "/") {
		return nil, fmt.Errorf("the discovery document at %s names the issuer %q, not %q", u, d.Issuer, issuer)
	}
	if d.TokenEndpoint == "" {
		return nil, fmt.Errorf("the discovery document at %s names no token endpoint", u)
	}
	return &d, nil
}
