package registry

import (
	"fmt"
	"net/mail"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
)

// Limits of a User.
const (
	maxUserDisplayName = 256
	maxUserEmail       = 254
	maxUserGroups      = 256
	maxGroupName       = 253
)

func init() {
	registerTyped("User", typed[*v1alpha1.User]{Validate: validateUser})
}

func validateUser(u *v1alpha1.User) errs.FieldErrors {
	var fe errs.FieldErrors
	s := u.Spec
	if len(s.DisplayName) > maxUserDisplayName {
		fe.Invalid("spec.displayName", s.DisplayName, fmt.Sprintf("must be at most %d bytes", maxUserDisplayName))
	}
	if s.Email != "" {
		if a, err := mail.ParseAddress(s.Email); err != nil || a.Address != s.Email || len(s.Email) > maxUserEmail {
			fe.Invalid("spec.email", s.Email, "must be a plain e-mail address such as alice@example.com")
		}
	}
	chkEnum(&fe, "spec.clusterRole", s.ClusterRole, false, v1alpha1.ClusterRoleAdmin, v1alpha1.ClusterRoleViewer)
	if len(s.Groups) > maxUserGroups {
		fe.Invalid("spec.groups", nil, fmt.Sprintf("a user may be in at most %d groups (has %d)", maxUserGroups, len(s.Groups)))
	}
	seen := map[string]int{}
	for i, g := range s.Groups {
		path := fmt.Sprintf("spec.groups[%d]", i)
		switch {
		case g == "":
			fe.Invalid(path, g, "must not be empty")
		case len(g) > maxGroupName || !printableNoSpace(g):
			fe.Invalid(path, g, fmt.Sprintf("must be at most %d printable characters without spaces", maxGroupName))
		default:
			if j, dup := seen[g]; dup {
				fe.Duplicate(path, fmt.Sprintf("%s (also spec.groups[%d])", g, j))
			}
			seen[g] = i
		}
	}
	return fe
}
