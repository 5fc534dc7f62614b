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
	var out v1alpha1.JoinToken
	if err := c.Do(ctx, http.MethodPost, v1alpha1.NodeAuthPath+"/jointokens", nil, "", req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ListJoinTokens lists the join tokens that are still valid (admin only), without secrets.
func (c *Client) ListJoinTokens(ctx context.Context) (*v1alpha1.JoinTokenList, error) {
	var out v1alpha1.JoinTokenList
	if err := c.Do(ctx, http.MethodGet, v1alpha1.NodeAuthPath+"/jointokens", nil, "", nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// DeleteJoinToken deletes the join token with the given id (admin only).
func (c *Client) DeleteJoinToken(ctx context.Context, id string) error {
	return c.Do(ctx, http.MethodDelete, v1alpha1.NodeAuthPath+"/jointokens/"+url.PathEscape(id), nil, "", nil, nil)
}

// NodeCredential asks for the credential of node: the client's token is a join token (which
// this uses up) or an admin's.
func (c *Client) NodeCredential(ctx context.Context, node string) (*v1alpha1.NodeCredential, error) {
	var out v1alpha1.NodeCredential
	if err := c.Do(ctx, http.MethodPost, Path("nodes", "", node, v1alpha1.SubNodeCredential), nil, "", map[string]string{}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}
