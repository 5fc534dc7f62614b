package apiserver

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/authzmatrix"
	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/registry"
)

// matrixIdentity is the identity of a role of the isolation matrix.
func matrixIdentity(r authzmatrix.Role) Identity {
	return Identity{Name: "user " + r.User, User: r.User, ClusterRole: r.ClusterRole}
}

// TestUserAuthorizeEveryKind asserts, for every kind of the registry, every verb, the status
// subresource, every role and every scope, the answer of the authorizer against the
// isolation matrix (internal/authzmatrix; test/e2e's TestIsolationMatrix asks a real serve
// the same over TLS).
func TestUserAuthorizeEveryKind(t *testing.T) {
	cells, missing := authzmatrix.Cells("x")
	for _, k := range missing {
		t.Errorf("kind %s has no class in authzmatrix.KindClass: add it (and a rule in userRules if its default does not fit)", k)
	}
	var allowed int
	for _, c := range cells {
		a := attributes{Verb: c.Verb, Resource: c.Resource, Namespace: c.Namespace, Name: c.Name, Sub: c.Sub}
		err := authorizeUser(matrixIdentity(c.Role), a, c.ProjectRole)
		if c.Allowed {
			allowed++
		}
		if (err == nil) != c.Allowed {
			t.Errorf("%s: got %v, want allowed=%v", c, err, c.Allowed)
		}
		if err != nil && !errors.Is(err, errs.ErrForbidden) {
			t.Errorf("%s: refusal %v is not Forbidden", c, err)
		}
	}
	if len(cells) < 1000 {
		t.Errorf("only %d cells", len(cells))
	}
	t.Logf("%d cells, %d allowed", len(cells), allowed)
}

// TestUserAuthorizeSubresources covers the subresources with rules of their own.
func TestUserAuthorizeSubresources(t *testing.T) {
	p1 := func(r v1alpha1.ProjectRole) v1alpha1.ProjectRole { return r }
	ca := matrixIdentity(authzmatrix.Roles[0])
	cv := matrixIdentity(authzmatrix.Roles[1])
	u := Identity{Name: "user alice", User: "alice"}
	a := func(verb, res, ns, name, sub string) attributes {
		return attributes{Verb: verb, Resource: res, Namespace: ns, Name: name, Sub: sub}
	}
	cases := []struct {
		id    Identity
		role  v1alpha1.ProjectRole
		a     attributes
		allow bool
		msg   string
	}{
		{u, p1("User"), a("get", "virtualmachines", "p1", "vm", SubConsole), true, ""},
		{u, p1("Admin"), a("get", "virtualmachines", "p1", "vm", SubVNC), true, ""},
		{u, p1("Viewer"), a("get", "virtualmachines", "p1", "vm", SubConsole), false, "consoles"},
		{u, p1("Viewer"), a("get", "virtualmachines", "p1", "vm", SubLog), false, "consoles"},
		{u, p1("Viewer"), a("create", "virtualmachines", "p1", "vm", SubGuestAgent), false, "guest agent"},
		{u, p1("User"), a("create", "virtualmachines", "p1", "vm", SubGuestAgent), true, ""},
		{u, p1("User"), a("create", "virtualmachines", "p1", "vm", v1alpha1.SubConsoleTickets), true, ""},
		{u, p1("Viewer"), a("create", "virtualmachines", "p1", "vm", v1alpha1.SubConsoleTickets), false, "consoles"},
		{cv, "", a("get", "virtualmachines", "p1", "vm", SubConsole), false, "consoles"},
		{ca, "", a("get", "virtualmachines", "p1", "vm", SubConsole), true, ""},
		{u, p1("Admin"), a("create", "virtualmachines", "p1", "vm", SubBinding), false, "scheduler"},
		{ca, "", a("create", "virtualmachines", "p1", "vm", SubBinding), false, "scheduler"},
		{ca, "", a("update", "virtualmachines", "p1", "vm", "status"), false, "controllers and nodes"},
		{u, p1("Viewer"), a("get", "virtualimages", "p1", "img", SubData), true, ""},
		{u, "", a("get", "clustervirtualimages", "", "img", SubData), true, ""},
		{u, p1("Admin"), a("create", "nodes", "", "n1", v1alpha1.SubNodeCredential), false, "node credentials"},
		{ca, "", a("create", "nodes", "", "n1", nodestreamSub), false, "stream tickets"},
		// A new subresource of a project kind: Viewers read, Users use it.
		{u, p1("Viewer"), a("get", "virtualmachines", "p1", "vm", "newsub"), true, ""},
		{u, p1("Viewer"), a("create", "virtualmachines", "p1", "vm", "newsub"), false, "Users and Admins"},
		{u, p1("User"), a("create", "virtualmachines", "p1", "vm", "newsub"), true, ""},
		// Users: own User and own password only.
		{u, "", a("get", "users", "", "alice", ""), true, ""},
		{u, "", a("get", "users", "", "bob", ""), false, "ClusterAdmin"},
		{u, "", a("update", "users", "", "alice", ""), false, "ClusterAdmin"},
		{u, "", a("create", "users", "", "alice", v1alpha1.SubUserPassword), true, ""},
		{u, "", a("create", "users", "", "bob", v1alpha1.SubUserPassword), false, "password"},
		{ca, "", a("create", "users", "", "bob", v1alpha1.SubUserPassword), true, ""},
		{cv, "", a("create", "users", "", "bob", v1alpha1.SubUserPassword), false, "password"},
		// A project Admin cannot change the project (quotas, members: a member cannot raise
		// their own role).
		{u, p1("Admin"), a("update", "projects", "", "p1", ""), true, ""}, // members only: authorizeProjectWrite
		{u, p1("Admin"), a("patch", "projects", "", "p1", ""), true, ""},
		{u, p1("Admin"), a("delete", "projects", "", "p1", ""), false, "ClusterAdmin"},
		{u, p1("User"), a("patch", "projects", "", "p1", ""), false, "Admins change its members"},
		{u, p1("Admin"), a("create", "projects", "", "", ""), false, "ClusterAdmin"},
		{u, "", a("get", "controlplanes", "", "cluster", ""), true, ""},
	}
	for _, c := range cases {
		err := authorizeUser(c.id, c.a, c.role)
		if (err == nil) != c.allow {
			t.Errorf("%s as %q: %s: got %v, want allowed=%v", c.id.Name, c.role, c.a, err, c.allow)
			continue
		}
		if err != nil && !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: %s: refusal %q does not say %q", c.id.Name, c.a, err, c.msg)
		}
	}
}

const nodestreamSub = "streamtickets"

// TestTokenLimits: a token limited to a project keeps only that project's role, capped, and no
// cluster role.
func TestTokenLimits(t *testing.T) {
	members := []v1alpha1.ProjectMember{{Name: "alice", Role: "Admin"}, {Name: "group:staff", Role: "User"}, {Name: "user:bob", Role: "Viewer"}}
	if r := memberRole(members, "alice", nil); r != "Admin" {
		t.Errorf("alice: %q", r)
	}
	if r := memberRole(members, "bob", []string{"staff"}); r != "User" {
		t.Errorf("bob in staff: %q (the highest role wins)", r)
	}
	if r := memberRole(members, "bob", nil); r != "Viewer" {
		t.Errorf("bob: %q", r)
	}
	if r := memberRole(members, "carol", []string{"other"}); r != "" {
		t.Errorf("carol: %q", r)
	}
	if r := memberRole(members, "staff", nil); r != "" {
		t.Errorf("a user named like a group: %q", r)
	}
	id := Identity{User: "alice", ClusterRole: v1alpha1.ClusterRoleAdmin, TokenProject: "p1", TokenRole: "Viewer"}
	if r := id.capRole("p1", "Admin"); r != "Viewer" {
		t.Errorf("capped: %q", r)
	}
	if r := id.capRole("p2", "Admin"); r != "" {
		t.Errorf("other project: %q", r)
	}
	if id.effectiveClusterRole() != "" {
		t.Error("a project token keeps the cluster role")
	}
	if err := authorizeUser(id, attributes{Verb: verbDelete, Resource: "nodes", Name: "n1"}, ""); err == nil {
		t.Error("a project token of a ClusterAdmin deleted a node")
	}
}

// TestUserRulesNameKnownResources: every key of userRules names a served resource, so a
// typo cannot leave a rule unused.
func TestUserRulesNameKnownResources(t *testing.T) {
	var keys []string
	for k := range userRules {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		res, _, _ := strings.Cut(k, "/")
		if _, ok := registry.ByResource(res); !ok && res != controlPlaneResource {
			t.Errorf("userRules[%q]: no resource %q", k, res)
		}
	}
	_ = fmt.Sprint()
}

// TestAuthorizeProjectWrite: a project Admin changes the members of their project, but
// nothing else of it and not the entries that give them (or their group) a role; a
// ClusterAdmin changes anything.
func TestAuthorizeProjectWrite(t *testing.T) {
	st, _ := registry.ByResource("projects")
	tg := target{st: st, name: "p1"}
	base := func() *v1alpha1.Project {
		p := &v1alpha1.Project{}
		p.Name = "p1"
		p.Spec.Description = "lab"
		p.Spec.Members = []v1alpha1.ProjectMember{{Name: "user:ann", Role: v1alpha1.ProjectRoleAdmin}, {Name: "group:lab", Role: v1alpha1.ProjectRoleUser}, {Name: "bob", Role: v1alpha1.ProjectRoleViewer}}
		return p
	}
	ann := Identity{Name: "user ann", User: "ann", Groups: []string{"lab"}}
	ctxOf := func(id Identity) context.Context { return context.WithValue(context.Background(), identityKey, id) }
	cases := []struct {
		name   string
		id     Identity
		change func(p *v1alpha1.Project)
		msg    string // "" allowed
	}{
		{"another member's role", ann, func(p *v1alpha1.Project) { p.Spec.Members[2].Role = v1alpha1.ProjectRoleUser }, ""},
		{"a new member", ann, func(p *v1alpha1.Project) {
			p.Spec.Members = append(p.Spec.Members, v1alpha1.ProjectMember{Name: "user:cid", Role: v1alpha1.ProjectRoleAdmin})
		}, ""},
		{"another member removed", ann, func(p *v1alpha1.Project) { p.Spec.Members = p.Spec.Members[:2] }, ""},
		{"the quota", ann, func(p *v1alpha1.Project) { p.Spec.Quota = &v1alpha1.ProjectQuota{} }, "only spec.members"},
		{"the description", ann, func(p *v1alpha1.Project) { p.Spec.Description = "mine" }, "only spec.members"},
		{"a label", ann, func(p *v1alpha1.Project) { p.Labels = map[string]string{"a": "b"} }, "only spec.members"},
		{"their own entry removed", ann, func(p *v1alpha1.Project) { p.Spec.Members = p.Spec.Members[1:] }, "name them or their groups"},
		{"their group's role raised", ann, func(p *v1alpha1.Project) { p.Spec.Members[1].Role = v1alpha1.ProjectRoleAdmin }, "name them or their groups"},
		{"a second entry for them", ann, func(p *v1alpha1.Project) {
			p.Spec.Members = append(p.Spec.Members, v1alpha1.ProjectMember{Name: "ann", Role: v1alpha1.ProjectRoleViewer})
		}, "name them or their groups"},
		{"a ClusterAdmin changes the quota", Identity{Name: "user root", User: "root", ClusterRole: v1alpha1.ClusterRoleAdmin}, func(p *v1alpha1.Project) { p.Spec.Quota = &v1alpha1.ProjectQuota{} }, ""},
		{"the admin token changes anything", Identity{Name: "admin", Admin: true}, func(p *v1alpha1.Project) { p.Spec.Members = nil }, ""},
	}
	for _, c := range cases {
		n := base()
		c.change(n)
		err := authorizeProjectWrite(ctxOf(c.id), tg, base(), n, false)
		switch {
		case c.msg == "" && err != nil:
			t.Errorf("%s: refused: %v", c.name, err)
		case c.msg != "" && (err == nil || !errors.Is(err, errs.ErrForbidden) || !strings.Contains(err.Error(), c.msg)):
			t.Errorf("%s: got %v, want Forbidden with %q", c.name, err, c.msg)
		}
	}
}
