package v1alpha1

// The node credential API: join tokens (made by an admin) and the per-node credential a
// joining agent gets for one of them. These are not kinds: they live beside the object API.

// NodeAuthPath is the path prefix of the join-token API (admin only).
const NodeAuthPath = "/nodeauth/v1alpha1"

// SubNodeCredential is the Node subresource a joining agent POSTs to, with a join token as its
// bearer token, to get the credential of that node.
const SubNodeCredential = "credential"

// NodeHostnameLabel is the label every Node carries, with the node's name as value.
const NodeHostnameLabel = "kubernetes.io/hostname"

// JoinTokenRequest asks for a join token.
type JoinTokenRequest struct {
	// TTL is how long the token is valid, as a Go duration ("1h"); empty: one hour.
	TTL string `json:"ttl,omitempty"`
	// Uses is how many nodes may join with the token; 0 means 1.
	Uses int `json:"uses,omitempty"`
	// Description is a note for `rakhsh node token list`.
	Description string `json:"description,omitempty"`
}

// JoinToken describes a join token. Token (the secret) is only in the answer that creates it.
type JoinToken struct {
	ID          string `json:"id"`
	Token       string `json:"token,omitempty"`
	Expires     Time   `json:"expires"`
	Created     Time   `json:"created"`
	UsesLeft    int    `json:"usesLeft"`
	Description string `json:"description,omitempty"`
}

// JoinTokenList is the answer of a list of join tokens.
type JoinTokenList struct {
	Items []JoinToken `json:"items"`
}

// NodeCredential is the answer of the credential subresource: the bearer token the node's
// agent uses from then on.
type NodeCredential struct {
	Node  string `json:"node"`
	Token string `json:"token"`
}
