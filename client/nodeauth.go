package client

import (
	"context"
	"net/http"
	"net/url"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// CreateJoinToken makes a join token (admin only). The answer holds the token's secret; it is
// not shown again.
func (c *Client) CreateJoinToken(ctx context.Context, req v1alpha1.JoinTokenRequest) (*v1alpha1.JoinToken, error) {
	return doJSON[v1alpha1.JoinToken](ctx, c, http.MethodPost, v1alpha1.NodeAuthPath+"/jointokens", req)
}

// ListJoinTokens lists the join tokens that are still valid (admin only), without secrets.
func (c *Client) ListJoinTokens(ctx context.Context) (*v1alpha1.JoinTokenList, error) {
	return doJSON[v1alpha1.JoinTokenList](ctx, c, http.MethodGet, v1alpha1.NodeAuthPath+"/jointokens", nil)
}

// DeleteJoinToken deletes the join token with the given id (admin only).
func (c *Client) DeleteJoinToken(ctx context.Context, id string) error {
	return c.Do(ctx, http.MethodDelete, v1alpha1.NodeAuthPath+"/jointokens/"+url.PathEscape(id), nil, "", nil, nil)
}

// NodeCredential asks for the credential of node: the client's token is a join token (which
// this uses up) or an admin's.
func (c *Client) NodeCredential(ctx context.Context, node string) (*v1alpha1.NodeCredential, error) {
	return doJSON[v1alpha1.NodeCredential](ctx, c, http.MethodPost, Path("nodes", "", node, v1alpha1.SubNodeCredential), map[string]string{})
}
