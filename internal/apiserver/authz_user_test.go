package apiserver

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/registry"
)

// kindClass sorts every kind of the registry for TestUserAuthorizeEveryKind. A new kind must
// be added here (the test fails until it is), with the class whose expectations fit it.
var kindClass = map[string]string{
	"VirtualMachine": "project", "VirtualDisk": "project", "VirtualImage": "project",
	"VirtualMachineIPAddress": "project", "VirtualMachineMACAddress": "project",
	"VirtualMachineOperation": "project", "VirtualMachineBlockDeviceAttachment": "project",
	"VirtualDiskSnapshot": "project", "VirtualMachineSnapshot": "project",
	"Secret":              "secret",
	"Event":               "controllerWritten",
	"VirtualDiskLease":    "controllerWritten",
	"ClusterVirtualImage": "clusterReadable", "ClusterNetwork": "clusterReadable",
	"VirtualMachineClass": "clusterReadable", "StorageClass": "clusterReadable", "Node": "clusterReadable",
	"NodeLease": "clusterPrivate", "VirtualMachineIPAddressLease": "clusterPrivate",
	"VirtualMachineMACAddressLease": "clusterPrivate", "User": "clusterPrivate",
	"Project": "project-object",
}

// The roles of the matrix: what each identity is in project p1 (the own project); none of
// them has a role in p2 (the other project) but the cluster roles.
type matrixRole struct {
	name string
	id   Identity
	p1   v1alpha1.ProjectRole
}

var matrixRoles = []matrixRole{
	{"ClusterAdmin", Identity{Name: "user ca", User: "ca", ClusterRole: v1alpha1.ClusterRoleAdmin}, ""},
	{"ClusterViewer", Identity{Name: "user cv", User: "cv", ClusterRole: v1alpha1.ClusterRoleViewer}, ""},
	{"Admin", Identity{Name: "user pa", User: "pa"}, v1alpha1.ProjectRoleAdmin},
	{"User", Identity{Name: "user pu", User: "pu"}, v1alpha1.ProjectRoleUser},
	{"Viewer", Identity{Name: "user pv", User: "pv"}, v1alpha1.ProjectRoleViewer},
	{"NoRole", Identity{Name: "user nobody", User: "nobody"}, ""},
}

var allVerbs = []string{verbGet, verbList, verbWatch, verbCreate, verbUpdate, verbPatch, verbDelete}

func isRead(v string) bool { return v == verbGet || v == verbList || v == verbWatch }

// expectUser is the matrix's expectation, written out per class (not computed from
// userRules): scope is "own" (p1), "other" (p2), "all" (a list across projects) or
// "cluster".
func expectUser(class, role, verb, scope, sub string) bool {
	read := isRead(verb)
	ca, cv := role == "ClusterAdmin", role == "ClusterViewer"
	own := scope == "own"
	var p1 int
	switch role {
	case "Admin":
		p1 = 3
	case "User":
		p1 = 2
	case "Viewer":
		p1 = 1
	}
	if sub == "status" {
		// status is read like the object and written by nobody but controllers and nodes
		return read && expectUser(class, role, verb, scope, "")
	}
	switch class {
	case "project":
		switch {
		case ca:
			return true
		case cv:
			return read
		case scope == "all":
			return read // filtered
		case own:
			return (read && p1 >= 1) || p1 >= 2
		}
		return false
	case "secret":
		switch {
		case ca:
			return true
		case scope == "all":
			return false
		case own:
			return p1 >= 3
		}
		return false
	case "controllerWritten":
		switch {
		case ca, cv:
			return read
		case scope == "all":
			return read
		case own:
			return read && p1 >= 1
		}
		return false
	case "clusterReadable":
		return read || ca
	case "clusterPrivate":
		return ca || (cv && read)
	case "project-object":
		switch {
		case ca:
			return true
		case cv:
			return read
		case scope == "all":
			return read // the list is filtered to the member's projects
		case own:
			return read && p1 >= 1
		}
		return false
	}
	panic("unknown class " + class)
}

// TestUserAuthorizeEveryKind asserts, for every kind of the registry, every verb, the status
// subresource, every role and every scope, the answer of the authorizer.
func TestUserAuthorizeEveryKind(t *testing.T) {
	var cells, allowed int
	for _, st := range registry.All() {
		info := st.Info
		class, ok := kindClass[info.Kind]
		if !ok {
			t.Errorf("kind %s has no class in kindClass: add it (and a rule in userRules if its default does not fit)", info.Kind)
			continue
		}
		var scopes []string
		switch {
		case info.Namespaced:
			scopes = []string{"own", "other", "all"}
		case info.Kind == "Project":
			scopes = []string{"own", "other", "all"}
		default:
			scopes = []string{"cluster"}
		}
		subs := []string{""}
		if info.HasStatus {
			subs = append(subs, "status")
		}
		for _, mr := range matrixRoles {
			for _, scope := range scopes {
				for _, sub := range subs {
					for _, verb := range allVerbs {
						a := attributes{Verb: verb, Resource: info.Resource, Sub: sub}
						var role v1alpha1.ProjectRole
						collection := verb == verbList || verb == verbWatch || verb == verbCreate
						if sub != "" && collection {
							if verb != verbCreate {
								continue
							}
							collection = false // a create on a subresource names its object
						}
						switch scope {
						case "own", "other":
							p := "p1"
							if scope == "other" {
								p = "p2"
							} else {
								role = mr.p1
							}
							if info.Namespaced {
								a.Namespace = p
								if !collection {
									a.Name = "x"
								}
							} else { // Project
								if collection && verb != verbCreate {
									continue // a list of projects is scope "all"
								}
								a.Name = p
							}
						case "all":
							if !collection || verb == verbCreate {
								continue
							}
						case "cluster":
							if !collection {
								a.Name = "x"
							}
						}
						want := expectUser(class, mr.name, verb, scope, sub)
						err := authorizeUser(mr.id, a, role)
						cells++
						if want {
							allowed++
						}
						if (err == nil) != want {
							t.Errorf("%s %s (%s, %s): got %v, want allowed=%v", mr.name, a, class, scope, err, want)
						}
						if err != nil && !errors.Is(err, errs.ErrForbidden) {
							t.Errorf("%s %s: refusal %v is not Forbidden", mr.name, a, err)
						}
					}
				}
			}
		}
	}
	t.Logf("%d cells, %d allowed", cells, allowed)
}

// TestUserAuthorizeSubresources covers the subresources with rules of their own.
func TestUserAuthorizeSubresources(t *testing.T) {
	p1 := func(r v1alpha1.ProjectRole) v1alpha1.ProjectRole { return r }
	ca := matrixRoles[0].id
	cv := matrixRoles[1].id
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
		{u, p1("Admin"), a("update", "projects", "", "p1", ""), false, "ClusterAdmin"},
		{u, p1("Admin"), a("patch", "projects", "", "p1", ""), false, "ClusterAdmin"},
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
