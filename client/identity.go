package client

import (
	"context"
	"net/http"
	"net/url"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// Login exchanges a user name and password for a login token. It needs no token.
func (c *Client) Login(ctx context.Context, req v1alpha1.LoginRequest) (*v1alpha1.Token, error) {
	return doJSON[v1alpha1.Token](ctx, c, http.MethodPost, v1alpha1.IdentityPath+"/login", req)
}

// WhoAmI says who the server takes the client for.
func (c *Client) WhoAmI(ctx context.Context) (*v1alpha1.WhoAmI, error) {
	return doJSON[v1alpha1.WhoAmI](ctx, c, http.MethodGet, v1alpha1.IdentityPath+"/whoami", nil)
}

// CreateToken makes an API token; the answer holds its secret, which is not shown again.
func (c *Client) CreateToken(ctx context.Context, req v1alpha1.TokenRequest) (*v1alpha1.Token, error) {
	return doJSON[v1alpha1.Token](ctx, c, http.MethodPost, v1alpha1.IdentityPath+"/tokens", req)
}

// ListTokens lists the caller's tokens (a ClusterAdmin's: everybody's), without secrets.
func (c *Client) ListTokens(ctx context.Context) (*v1alpha1.TokenList, error) {
	return doJSON[v1alpha1.TokenList](ctx, c, http.MethodGet, v1alpha1.IdentityPath+"/tokens", nil)
}

// RevokeToken revokes the token with the given id.
func (c *Client) RevokeToken(ctx context.Context, id string) error {
	return c.Do(ctx, http.MethodDelete, v1alpha1.IdentityPath+"/tokens/"+url.PathEscape(id), nil, "", nil, nil)
}

// SetPassword sets a user's local password.
func (c *Client) SetPassword(ctx context.Context, user, password string) error {
	return c.Do(ctx, http.MethodPost, Path("users", "", user, v1alpha1.SubUserPassword), nil, "", v1alpha1.PasswordRequest{Password: password}, nil)
}

// OIDCLoginConfig asks the server which OpenID Connect issuer and client id it logs users in
// with (no credentials needed).
func (c *Client) OIDCLoginConfig(ctx context.Context) (*v1alpha1.OIDCLoginConfig, error) {
	return doJSON[v1alpha1.OIDCLoginConfig](ctx, c, http.MethodGet, v1alpha1.IdentityPath+"/oidc", nil)
}
