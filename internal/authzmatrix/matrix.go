// Package authzmatrix is the isolation matrix of the API: for every kind of the registry,
// every verb, the status subresource, every role and every scope, whether a user's request
// is allowed. The expectations are written out per class of kind (not computed from the
// authorizer's rules), so that the authorizer's unit test (internal/apiserver) and the
// end-to-end test against a real serve over TLS (test/e2e) check the same table, and
// docs/security.md shows it (Markdown, made by Table).
package authzmatrix

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/registry"
)

// Classes of kinds: who may do what with them.
const (
	ClassProject           = "project"           // customers' objects in a project
	ClassSecret            = "secret"            // project Admins only
	ClassControllerWritten = "controllerWritten" // readable by members, written by components
	ClassClusterReadable   = "clusterReadable"   // read by every user, written by ClusterAdmin
	ClassClusterPrivate    = "clusterPrivate"    // ClusterAdmin (and ClusterViewer reads)
	ClassProjectObject     = "project-object"    // the Project itself
)

// KindClass sorts every kind of the registry. A new kind must be added here (the unit test
// fails until it is), with the class whose expectations fit it.
var KindClass = map[string]string{
	"VirtualMachine": ClassProject, "VirtualDisk": ClassProject, "VirtualImage": ClassProject,
	"VirtualMachineIPAddress": ClassProject, "VirtualMachineMACAddress": ClassProject,
	"VirtualMachineOperation": ClassProject, "VirtualMachineBlockDeviceAttachment": ClassProject,
	"VirtualDiskSnapshot": ClassProject, "VirtualMachineSnapshot": ClassProject, "VirtualMachineBackup": ClassProject,
	"BackupSchedule":      ClassProject,
	"Secret":              ClassSecret,
	"Event":               ClassControllerWritten,
	"VirtualDiskLease":    ClassControllerWritten,
	"ClusterVirtualImage": ClassClusterReadable, "ClusterNetwork": ClassClusterReadable,
	"VirtualMachineClass": ClassClusterReadable, "StorageClass": ClassClusterReadable, "Node": ClassClusterReadable,
	"BackupTarget": ClassClusterReadable,
	"NodeLease":    ClassClusterPrivate, "VirtualMachineIPAddressLease": ClassClusterPrivate,
	"VirtualMachineMACAddressLease": ClassClusterPrivate, "User": ClassClusterPrivate,
	"Project": ClassProjectObject,
}

// Role is one identity of the matrix: a user with a cluster role, or with a role in project
// P1 (the own project). None has a role in P2 (the other project) but the cluster roles.
type Role struct {
	Name        string
	User        string
	ClusterRole v1alpha1.ClusterRole
	P1          v1alpha1.ProjectRole
}

// The projects of the matrix.
const (
	P1 = "p1"
	P2 = "p2"
)

// Roles are the matrix's identities, in the order of the table's columns.
var Roles = []Role{
	{"ClusterAdmin", "ca", v1alpha1.ClusterRoleAdmin, ""},
	{"ClusterViewer", "cv", v1alpha1.ClusterRoleViewer, ""},
	{"Admin", "pa", "", v1alpha1.ProjectRoleAdmin},
	{"User", "pu", "", v1alpha1.ProjectRoleUser},
	{"Viewer", "pv", "", v1alpha1.ProjectRoleViewer},
	{"NoRole", "nobody", "", ""},
}

// Verbs are the verbs of the matrix.
var Verbs = []string{"get", "list", "watch", "create", "update", "patch", "delete"}

// IsRead says verb reads.
func IsRead(verb string) bool { return verb == "get" || verb == "list" || verb == "watch" }

// Scopes: "own" (P1), "other" (P2), "all" (a list or watch across projects) or "cluster" (a
// cluster-scoped kind).
const (
	ScopeOwn     = "own"
	ScopeOther   = "other"
	ScopeAll     = "all"
	ScopeCluster = "cluster"
)

// Expect is the matrix's answer: whether role may do verb on a kind of class in scope (sub:
// "" or "status").
func Expect(class, role, verb, scope, sub string) bool {
	read := IsRead(verb)
	ca, cv := role == "ClusterAdmin", role == "ClusterViewer"
	own := scope == ScopeOwn
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
		return read && Expect(class, role, verb, scope, "")
	}
	switch class {
	case ClassProject, ClassProjectObject:
		switch {
		case ca:
			return true
		case cv:
			return read
		case scope == ScopeAll:
			return read // the list is filtered to the member's projects
		case own && class == ClassProject:
			// Users and Admins of the project write its objects.
			return (read && p1 >= 1) || p1 >= 2
		case own:
			// Admins update the members (nothing else, and not their own entries: checked
			// against the stored object, beyond this table).
			return (read && p1 >= 1) || (p1 >= 3 && (verb == "update" || verb == "patch"))
		}
		return false
	case ClassSecret:
		switch {
		case ca:
			return true
		case scope == ScopeAll:
			return false
		case own:
			return p1 >= 3
		}
		return false
	case ClassControllerWritten:
		switch {
		case ca, cv:
			return read
		case scope == ScopeAll:
			return read
		case own:
			return read && p1 >= 1
		}
		return false
	case ClassClusterReadable:
		return read || ca
	case ClassClusterPrivate:
		return ca || (cv && read)
	}
	panic("unknown class " + class)
}

// Cell is one request of the matrix.
type Cell struct {
	Kind, Resource, Class string
	Role                  Role
	Scope, Verb, Sub      string
	// Namespace and Name address the request ("" for a collection or a cluster kind); for a
	// Project, Name is the project.
	Namespace, Name string
	// ProjectRole is Role's role in the project addressed (none in P2).
	ProjectRole v1alpha1.ProjectRole
	Allowed     bool
}

func (c Cell) String() string {
	where := c.Namespace
	if c.Name != "" {
		where += "/" + c.Name
	}
	s := fmt.Sprintf("%s %s %s", c.Role.Name, c.Verb, c.Resource)
	if c.Sub != "" {
		s += "/" + c.Sub
	}
	return fmt.Sprintf("%s %s (%s, %s)", s, where, c.Class, c.Scope)
}

// Cells are the matrix's requests, for every kind of the registry; missing names kinds that
// have no class in KindClass. name is the object a request names where it names one.
func Cells(name string) (cells []Cell, missing []string) {
	for _, st := range registry.All() {
		info := st.Info
		class, ok := KindClass[info.Kind]
		if !ok {
			missing = append(missing, info.Kind)
			continue
		}
		scopes := []string{ScopeCluster}
		if info.Namespaced || info.Kind == "Project" {
			scopes = []string{ScopeOwn, ScopeOther, ScopeAll}
		}
		subs := []string{""}
		if info.HasStatus {
			subs = append(subs, "status")
		}
		for _, r := range Roles {
			for _, scope := range scopes {
				for _, sub := range subs {
					for _, verb := range Verbs {
						c, ok := cell(info, class, r, scope, sub, verb, name)
						if ok {
							cells = append(cells, c)
						}
					}
				}
			}
		}
	}
	return cells, missing
}

func cell(info *v1alpha1.KindInfo, class string, r Role, scope, sub, verb, name string) (Cell, bool) {
	c := Cell{Kind: info.Kind, Resource: info.Resource, Class: class, Role: r, Scope: scope, Verb: verb, Sub: sub}
	collection := verb == "list" || verb == "watch" || verb == "create"
	if sub != "" && collection {
		if verb != "create" {
			return c, false
		}
		collection = false // a create on a subresource names its object
	}
	switch scope {
	case ScopeOwn, ScopeOther:
		p := P1
		if scope == ScopeOther {
			p = P2
		} else {
			c.ProjectRole = r.P1
		}
		if info.Namespaced {
			c.Namespace = p
			if !collection {
				c.Name = name
			}
		} else { // Project
			if collection && verb != "create" {
				return c, false // a list of projects is scope "all"
			}
			c.Name = p
		}
	case ScopeAll:
		if !collection || verb == "create" {
			return c, false
		}
	case ScopeCluster:
		if !collection {
			c.Name = name
		}
	}
	c.Allowed = Expect(class, r.Name, verb, scope, sub)
	return c, true
}

// Table is the matrix as Markdown: a row per class, scope and subresource, a column per
// role; a cell lists the verbs allowed ("-": none).
func Table() string {
	cells, _ := Cells("x")
	type rowKey struct{ class, scope, sub string }
	allowed := map[rowKey]map[string][]string{}
	kinds := map[rowKey][]string{}
	var rows []rowKey
	for _, c := range cells {
		k := rowKey{c.Class, c.Scope, c.Sub}
		if allowed[k] == nil {
			allowed[k] = map[string][]string{}
			rows = append(rows, k)
		}
		if c.Allowed && !slices.Contains(allowed[k][c.Role.Name], c.Verb) {
			allowed[k][c.Role.Name] = append(allowed[k][c.Role.Name], c.Verb)
		}
		if !slices.Contains(kinds[k], c.Kind) {
			kinds[k] = append(kinds[k], c.Kind)
		}
	}
	order := map[string]int{ClassProject: 0, ClassSecret: 1, ClassControllerWritten: 2, ClassProjectObject: 3, ClassClusterReadable: 4, ClassClusterPrivate: 5}
	scopeOrder := map[string]int{ScopeOwn: 0, ScopeOther: 1, ScopeAll: 2, ScopeCluster: 3}
	sort.SliceStable(rows, func(i, j int) bool {
		a, b := rows[i], rows[j]
		if a.class != b.class {
			return order[a.class] < order[b.class]
		}
		if a.sub != b.sub {
			return a.sub < b.sub
		}
		return scopeOrder[a.scope] < scopeOrder[b.scope]
	})
	var b strings.Builder
	b.WriteString("| kinds | scope |")
	for _, r := range Roles {
		fmt.Fprintf(&b, " %s |", r.Name)
	}
	b.WriteString("\n|---|---|")
	for range Roles {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	for _, k := range rows {
		names := append([]string(nil), kinds[k]...)
		sort.Strings(names)
		what := strings.Join(names, ", ")
		if k.sub != "" {
			what += " (" + k.sub + ")"
		}
		fmt.Fprintf(&b, "| %s | %s |", what, k.scope)
		for _, r := range Roles {
			v := allowed[k][r.Name]
			switch {
			case len(v) == 0:
				b.WriteString(" - |")
			case len(v) == len(Verbs):
				b.WriteString(" all |")
			default:
				fmt.Fprintf(&b, " %s |", strings.Join(v, " "))
			}
		}
		b.WriteString("\n")
	}
	return b.String()
}
