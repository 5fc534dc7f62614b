package v1alpha1

// User is a person (or a robot account) who uses the API (cluster-scoped). What a user may do
// in a project comes from the project's spec.members (user:NAME or group:NAME); what a user
// may do across the cluster comes from spec.clusterRole. A user's password is not part of
// the object: `rakhsh user set-password` stores only its bcrypt hash, beside the objects.
type User struct {
	TypeMeta   `json:",inline"`
	ObjectMeta `json:"metadata,omitempty"`

	Spec UserSpec `json:"spec"`
}

// ClusterRole is what a user may do across the cluster, whatever the projects say.
type ClusterRole string

// Cluster roles.
const (
	// ClusterRoleAdmin may do everything a person may: every project, every cluster object,
	// users. Status writes and bindings stay the controllers' and nodes'.
	ClusterRoleAdmin ClusterRole = "ClusterAdmin"
	// ClusterRoleViewer reads every object but secrets, and opens no console.
	ClusterRoleViewer ClusterRole = "ClusterViewer"
)

// UserSpec describes a user.
type UserSpec struct {
	// DisplayName is the name shown to people.
	DisplayName string `json:"displayName,omitempty"`
	// Email is the user's address, for people.
	Email string `json:"email,omitempty"`
	// ClusterRole is ClusterAdmin, ClusterViewer or empty (project roles only).
	ClusterRole ClusterRole `json:"clusterRole,omitempty"`
	// Disabled refuses every token of the user and every login, at once.
	Disabled bool `json:"disabled,omitempty"`
	// Groups the user belongs to (besides those an OIDC ID token names); a project member
	// group:NAME applies to them.
	Groups []string `json:"groups,omitempty"`
}

// The identity API: logins, API tokens and who-am-I. These are not kinds: they live beside
// the object API, like the node credential API.

// IdentityPath is the path prefix of the identity API.
const IdentityPath = "/identity/v1alpha1"

// SubUserPassword is the User subresource that sets a local password (POST, body
// PasswordRequest): the user themself or a ClusterAdmin.
const SubUserPassword = "password"

// PasswordRequest sets a user's password.
type PasswordRequest struct {
	Password string `json:"password"`
}

// LoginRequest exchanges a user name and password for a short-lived token.
type LoginRequest struct {
	Username string `json:"username"`
	Password string `json:"password"`
	// TTL is how long the token is valid ("8h"); empty: 12 hours; at most 24 hours.
	TTL string `json:"ttl,omitempty"`
}

// TokenRequest asks for an API token.
type TokenRequest struct {
	// User the token acts as; empty: the caller. Only a ClusterAdmin (or the admin) may name
	// another user.
	User string `json:"user,omitempty"`
	// Project, when set, limits the token to that project: no other project and no cluster
	// role (cluster objects every user may read stay readable).
	Project string `json:"project,omitempty"`
	// Role, when set, caps the token's role in Project (Admin, User or Viewer); it never
	// raises the user's own role.
	Role ProjectRole `json:"role,omitempty"`
	// TTL is how long the token is valid ("720h"); empty: 720 hours.
	TTL string `json:"ttl,omitempty"`
	// Description is a note for `rakhsh token list`.
	Description string `json:"description,omitempty"`
}

// Token describes an API token. Token (the secret) is only in the answer that makes it.
type Token struct {
	ID          string      `json:"id"`
	Token       string      `json:"token,omitempty"`
	User        string      `json:"user"`
	Project     string      `json:"project,omitempty"`
	Role        ProjectRole `json:"role,omitempty"`
	Created     Time        `json:"created"`
	Expires     Time        `json:"expires"`
	Revoked     *Time       `json:"revoked,omitempty"`
	Login       bool        `json:"login,omitempty"`
	Description string      `json:"description,omitempty"`
}

// TokenList is the answer of a list of tokens.
type TokenList struct {
	Items []Token `json:"items"`
}

// OIDCLoginConfig is what a client needs to log in through the server's OpenID Connect
// issuer (GET IdentityPath/oidc, no credentials needed): the issuer and the client id its ID
// tokens must be issued for.
type OIDCLoginConfig struct {
	Issuer   string `json:"issuer"`
	ClientID string `json:"clientID"`
}

// WhoAmI says who the server takes the caller for.
type WhoAmI struct {
	Name        string            `json:"name"`
	User        string            `json:"user,omitempty"`
	Groups      []string          `json:"groups,omitempty"`
	ClusterRole ClusterRole       `json:"clusterRole,omitempty"`
	Admin       bool              `json:"admin,omitempty"`
	Token       string            `json:"token,omitempty"` // the token's id
	Projects    map[string]string `json:"projects,omitempty"`
}
