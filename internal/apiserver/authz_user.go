package apiserver

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/nodestream"
	"github.com/rakhsh/rakhsh/internal/registry"
)

// Authorization of users (people and robot accounts with API tokens, see identity.go).
//
// A user's rights come from two places:
//   - spec.clusterRole of their User: ClusterAdmin or ClusterViewer, across the cluster;
//   - their role in each project: the highest role of the project's spec.members entries
//     that name them (user:NAME, or a bare NAME) or one of their groups (group:NAME).
//
// A token limited to a project (token create --project, --role) keeps only that project's
// role, capped by --role, and no cluster role.
//
// Every request is decided by one rule, looked up by resource and subresource in userRules
// (exact "resource/sub", then "resource"); a resource or subresource without a rule gets a
// default by its scope (defaultUserRule). To give a new kind or subresource other rights,
// add a line to userRules; TestUserAuthorizeEveryKind lists every kind of the registry, so a
// new kind shows up in the table of that test.

// Project role levels, in order; levelNever is above every role (no project role suffices).
const (
	levelNone   = 0
	levelViewer = 1
	levelUser   = 2
	levelAdmin  = 3
	levelNever  = 4
)

func roleLevel(r v1alpha1.ProjectRole) int {
	switch r {
	case v1alpha1.ProjectRoleViewer:
		return levelViewer
	case v1alpha1.ProjectRoleUser:
		return levelUser
	case v1alpha1.ProjectRoleAdmin:
		return levelAdmin
	}
	return levelNone
}

func levelRole(l int) v1alpha1.ProjectRole {
	switch l {
	case levelViewer:
		return v1alpha1.ProjectRoleViewer
	case levelUser:
		return v1alpha1.ProjectRoleUser
	case levelAdmin:
		return v1alpha1.ProjectRoleAdmin
	}
	return ""
}

// userRule says who among users may read (get, list, watch) and write (create, update,
// patch, delete; and every verb of a stream subresource) a resource or subresource.
type userRule struct {
	// Read and Write are the least project role that may, in the object's project. For a
	// cluster-scoped kind, Read levelViewer means: every user, and on Project objects, a
	// member of that project.
	Read, Write int
	// Update, when set, is the least role that may update and patch (not create or delete),
	// where it differs from Write.
	Update int
	// ClusterRead: a ClusterViewer (and ClusterAdmin) may read it in every project.
	ClusterRead bool
	// ClusterWrite: a ClusterAdmin may write it (and read it, even without ClusterRead).
	ClusterWrite bool
	// Why is said in the refusal.
	Why string
}

// userRules are the rules that differ from defaultUserRule. Keys are "resource" or
// "resource/subresource".
var userRules = map[string]userRule{
	// Secrets hold passwords and cloud-init user data: project Admins only.
	"secrets": {Read: levelAdmin, Write: levelAdmin, ClusterWrite: true,
		Why: "secrets are read and written by the project's Admins only"},
	// Events and disk leases are written by controllers and nodes.
	"events": {Read: levelViewer, Write: levelNever, ClusterRead: true,
		Why: "events are written by the controllers and nodes"},
	"virtualdiskleases": {Read: levelViewer, Write: levelNever, ClusterRead: true,
		Why: "disk leases are taken and given back by the nodes and controllers"},
	// Consoles, VNC, logs and the guest agent act on a running guest: project Users.
	"virtualmachines/" + SubConsole:    streamRule,
	"virtualmachines/" + SubVNC:        streamRule,
	"virtualmachines/" + SubLog:        streamRule,
	"virtualmachines/" + SubGuestAgent: streamRule,
	// A console ticket opens a console: made by those who may open one.
	"virtualmachines/" + v1alpha1.SubConsoleTickets: streamRule,
	"virtualmachines/" + SubBinding: {Read: levelNever, Write: levelNever,
		Why: "bindings are made by the scheduler"},
	// Cluster objects a user needs to create a VM: everybody reads, ClusterAdmin writes.
	"clustervirtualimages":                 clusterReadable,
	"clustervirtualimages/data":            {Read: levelViewer, Write: levelNever, ClusterRead: true, Why: "image data is read only"},
	"virtualdisks/data":                    {Read: levelNever, Write: levelNever, Why: "a disk's data is read by the node that moves it"},
	"clusternetworks":                      clusterReadable,
	"virtualmachineclasses":                clusterReadable,
	"storageclasses":                       clusterReadable,
	"backuptargets":                        clusterReadable,
	"nodes":                                clusterReadable,
	controlPlaneResource:                   clusterReadable,
	"nodes/" + v1alpha1.SubNodeCredential:  {Read: levelNever, Write: levelNever, Why: "node credentials are issued by the admin (rakhsh node token)"},
	"nodes/" + nodestream.SubStreamTickets: {Read: levelNever, Write: levelNever, Why: "stream tickets are redeemed by nodes"},
	// Projects: a member reads their project; a project Admin updates it, which
	// authorizeProjectWrite limits to its members; the rest is the ClusterAdmin's.
	"projects": {Read: levelViewer, Write: levelNever, Update: levelAdmin, ClusterRead: true, ClusterWrite: true,
		Why: "projects and their quotas are changed by a ClusterAdmin; a project's Admins change its members"},
	// Users: ClusterAdmin; a user reads their own User (see authorizeUser).
	"users":                             {Read: levelNever, Write: levelNever, ClusterRead: true, ClusterWrite: true, Why: "users are managed by a ClusterAdmin"},
	"users/" + v1alpha1.SubUserPassword: {Read: levelNever, Write: levelNever, ClusterWrite: true, Why: "a password is set by its user or a ClusterAdmin"},
}

var (
	streamRule = userRule{Read: levelUser, Write: levelUser, ClusterWrite: true,
		Why: "consoles, VNC, logs and the guest agent are for the project's Users and Admins"}
	clusterReadable = userRule{Read: levelViewer, Write: levelNever, ClusterRead: true, ClusterWrite: true,
		Why: "cluster objects are written by a ClusterAdmin"}
)

// defaultUserRule is the rule of a resource or subresource userRules does not list.
//   - project-scoped kind: Viewer reads, User writes (the project's own objects);
//   - its status: read like the object, written by controllers and nodes only;
//   - another subresource: read by Viewers, used by Users;
//   - cluster-scoped kind: ClusterViewer reads, ClusterAdmin writes; its status likewise
//     read, written by controllers and nodes only.
func defaultUserRule(resource, sub string, namespaced bool) userRule {
	if sub == "status" {
		base := lookupUserRule(resource, "", namespaced)
		return userRule{Read: base.Read, Write: levelNever, ClusterRead: base.ClusterRead || base.ClusterWrite,
			Why: "status is written by the controllers and nodes"}
	}
	if namespaced {
		return userRule{Read: levelViewer, Write: levelUser, ClusterRead: true, ClusterWrite: true,
			Why: "a project's objects are written by its Users and Admins"}
	}
	return userRule{Read: levelNever, Write: levelNever, ClusterRead: true, ClusterWrite: true,
		Why: "cluster objects are read by cluster viewers and written by a ClusterAdmin"}
}

func lookupUserRule(resource, sub string, namespaced bool) userRule {
	if sub != "" {
		if r, ok := userRules[resource+"/"+sub]; ok {
			return r
		}
		return defaultUserRule(resource, sub, namespaced)
	}
	if r, ok := userRules[resource]; ok {
		return r
	}
	return defaultUserRule(resource, "", namespaced)
}

// actsOnGuest says a subresource is a stream or guest command: every verb counts as a write.
func actsOnGuest(sub string) bool {
	return sub == SubConsole || sub == SubVNC || sub == SubLog || sub == SubGuestAgent || sub == v1alpha1.SubConsoleTickets
}

// authorizeUser decides a user's request. role is the user's effective role in the
// request's project (a.Namespace, or the Project named by a request on projects/NAME); it is
// ignored for cluster-wide requests (lists across projects are filtered by listFilter).
func authorizeUser(id Identity, a attributes, role v1alpha1.ProjectRole) error {
	namespaced := false
	if st, ok := registry.ByResource(a.Resource); ok {
		namespaced = st.Info.Namespaced
	}
	r := lookupUserRule(a.Resource, a.Sub, namespaced)
	write := !(a.Verb == verbGet || a.Verb == verbList || a.Verb == verbWatch) || actsOnGuest(a.Sub)
	cr := id.effectiveClusterRole()
	// Cluster roles first.
	switch {
	case cr == v1alpha1.ClusterRoleAdmin && (r.ClusterWrite || (!write && r.ClusterRead)):
		return nil
	case cr == v1alpha1.ClusterRoleViewer && !write && r.ClusterRead:
		return nil
	}
	// A user reads and sets the password of their own User.
	if a.Resource == "users" && a.Name == id.User && id.TokenProject == "" {
		if (a.Sub == "" && a.Verb == verbGet) || (a.Sub == v1alpha1.SubUserPassword && a.Verb == verbCreate) {
			return nil
		}
	}
	need := r.Read
	switch {
	case r.Update != levelNone && (a.Verb == verbUpdate || a.Verb == verbPatch):
		need = r.Update
	case write:
		need = r.Write
	}
	switch {
	case need >= levelNever:
	case namespaced && a.Namespace == "":
		// A list or watch across projects: allowed, filtered to the user's projects.
		if !write && need <= levelViewer {
			return nil
		}
	case namespaced || a.Resource == "projects":
		if a.Resource == "projects" && a.Name == "" {
			if !write && need <= levelViewer {
				return nil // filtered to the user's projects
			}
			break
		}
		if roleLevel(role) >= need {
			return nil
		}
		if roleLevel(role) == levelNone {
			p := a.Namespace
			if p == "" {
				p = a.Name
			}
			return forbidden(id, a, fmt.Sprintf("%s has no role in project %q", id.describe(), p)+"; "+r.Why)
		}
		return forbidden(id, a, fmt.Sprintf("%s is %s in project %q, and %s needs %s", id.describe(), role, projectOf(a), a.verbPhrase(write), levelRole(need))+"; "+r.Why)
	default:
		// Cluster-scoped: levelViewer means every user reads.
		if need <= levelViewer {
			return nil
		}
	}
	return forbidden(id, a, r.Why)
}

func projectOf(a attributes) string {
	if a.Namespace != "" {
		return a.Namespace
	}
	return a.Name
}

func (a attributes) verbPhrase(write bool) string {
	if write {
		return "writing"
	}
	return "reading"
}

// effectiveClusterRole is the cluster role a request acts with: none for a token limited to
// a project.
func (id Identity) effectiveClusterRole() v1alpha1.ClusterRole {
	if id.TokenProject != "" {
		return ""
	}
	return id.ClusterRole
}

// memberRole is the role a project's members list gives a user with the given groups: the
// highest of the entries that name the user (NAME or user:NAME) or one of the groups
// (group:NAME).
func memberRole(members []v1alpha1.ProjectMember, user string, groups []string) v1alpha1.ProjectRole {
	best := levelNone
	for _, m := range members {
		match := false
		switch {
		case strings.HasPrefix(m.Name, "group:"):
			g := m.Name[len("group:"):]
			for _, x := range groups {
				if x == g {
					match = true
					break
				}
			}
		case strings.HasPrefix(m.Name, "user:"):
			match = m.Name[len("user:"):] == user
		default:
			match = m.Name == user
		}
		if match && roleLevel(m.Role) > best {
			best = roleLevel(m.Role)
		}
	}
	return levelRole(best)
}

// capRole applies a token's project limit to a role in project p.
func (id Identity) capRole(p string, role v1alpha1.ProjectRole) v1alpha1.ProjectRole {
	if id.TokenProject == "" {
		return role
	}
	if p != id.TokenProject {
		return ""
	}
	if id.TokenRole != "" && roleLevel(id.TokenRole) < roleLevel(role) {
		return id.TokenRole
	}
	return role
}

// authorizeProjectWrite checks an update of a Project by a user who is not a ClusterAdmin (a
// project Admin: the rule's Update level): only spec.members may change, and not the entries that name
// the user or one of their groups, so that nobody raises, lowers or removes their own role.
func authorizeProjectWrite(ctx context.Context, t target, old, obj v1alpha1.Object, status bool) error {
	id := identityOf(ctx)
	if id.User == "" || status || t.st.Info.Kind != "Project" || id.effectiveClusterRole() == v1alpha1.ClusterRoleAdmin {
		return nil
	}
	o, n := old.(*v1alpha1.Project), obj.(*v1alpha1.Project)
	rest := func(p *v1alpha1.Project) string {
		spec := p.Spec
		spec.Members = nil
		b, _ := json.Marshal([]any{spec, p.Labels, p.Annotations, p.Finalizers})
		return string(b)
	}
	if rest(o) != rest(n) {
		return errs.New(errs.ErrForbidden, "%s may change only spec.members of project %q: its description, quota, defaults, labels, annotations and finalizers are a ClusterAdmin's", id.describe(), o.Name)
	}
	if own := ownEntries(o.Spec.Members, id); !slices.Equal(own, ownEntries(n.Spec.Members, id)) {
		return errs.New(errs.ErrForbidden, "%s may not change the entries of project %q's members that name them or their groups (%s): another Admin or a ClusterAdmin does", id.describe(), o.Name, strings.Join(own, ", "))
	}
	return nil
}

// ownEntries are the member entries that give id a role, as sorted "NAME=ROLE" strings.
func ownEntries(members []v1alpha1.ProjectMember, id Identity) []string {
	var out []string
	for _, m := range members {
		if memberRole([]v1alpha1.ProjectMember{m}, id.User, id.Groups) != "" {
			out = append(out, m.Name+"="+string(m.Role))
		}
	}
	slices.Sort(out)
	return out
}
