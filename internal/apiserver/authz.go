package apiserver

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/nodestream"
	"github.com/rakhsh/rakhsh/internal/registry"
	"github.com/rakhsh/rakhsh/internal/store"
)

// Authorization of the identities that are not admin: a node (its agent's credential) and a
// join token. Admin may do everything. The rules are in two steps:
//
//   - authorize, a pure function of the identity and the request (verb, resource, name,
//     subresource), runs for every object path before anything is read;
//   - authorizeNodeWrite and authorizeNodeSecret run where the stored object is at hand,
//     since a node's right to write a VM's or disk's status depends on the stored object's
//     status.nodeName, never on the request body.
//
// A node may:
//   - get, list and watch: virtualmachines, virtualdisks, virtualimages, clustervirtualimages,
//     clusternetworks, virtualmachineclasses, storageclasses, nodes, virtualmachineipaddresses(+leases),
//     virtualmachinemacaddresses(+leases), events; and their status subresources;
//   - get the data subresource of virtualimages and clustervirtualimages (its image cache);
//   - get a secret that a VM bound to it references for provisioning (userDataRef,
//     sysprepRef); no list or watch of secrets;
//   - create its own Node (with no spec and no labels but the hostname label); update and
//     patch its own Node (not its spec nor its labels: cordoning and the labels that steer
//     VMs are the admin's) and its status;
//   - redeem stream tickets at nodes/ITSELF/streamtickets;
//   - update and patch the status of VMs and disks whose stored status.nodeName is itself,
//     leaving nodeName itself or empty (releasing the binding); the same for the status of
//     VirtualDiskSnapshots and VirtualMachineBackups handed to it (get, list and watch them
//     too, and BackupTargets);
//   - update and patch the status of a VM whose stored live migration is active with itself
//     as the target, keeping nodeName or setting it to itself (the switch-over);
//   - create, update and patch events;
//   - get, create, update and patch its own NodeLease (named after it; no list, watch or
//     delete), see authorizeNodeLease.
//   - get, list and watch VirtualDiskLeases; create one it holds; update and patch one that
//     is free or its own, leaving it free or its own (it takes a free lease and gives back
//     its own, never another node's); no delete.
//
// Everything else (any spec, other nodes, deletes, bindings, consoles, other kinds) is
// refused with 403 naming the node and the rule.
//
// A join token may only POST nodes/NAME/credential.

// Verbs of requests.
const (
	verbGet    = "get"
	verbList   = "list"
	verbWatch  = "watch"
	verbCreate = "create"
	verbUpdate = "update"
	verbPatch  = "patch"
	verbDelete = "delete"
)

// attributes are what authorize looks at.
type attributes struct {
	Verb      string
	Resource  string
	Namespace string
	Name      string // "" for collections (list, watch, create)
	Sub       string
}

func (a attributes) String() string {
	s := a.Verb + " " + a.Resource
	if a.Sub != "" {
		s += "/" + a.Sub
	}
	if a.Name != "" {
		s += " " + a.Name
	}
	if a.Namespace != "" {
		s += " in project " + a.Namespace
	}
	return s
}

// nodeReadable are the resources a node may get, list and watch.
var nodeReadable = map[string]bool{
	"virtualmachines": true, "virtualdisks": true, "virtualimages": true, "clustervirtualimages": true,
	"clusternetworks": true, "virtualmachineclasses": true, "nodes": true, "storageclasses": true,
	"virtualmachineipaddresses": true, "virtualmachineipaddressleases": true,
	"virtualmachinemacaddresses": true, "virtualmachinemacaddressleases": true, "events": true,
	"virtualdiskleases":                    true,
	"virtualdisksnapshots":                 true, // live disk snapshots handed to a node (internal/agent/snapshot.go)
	"virtualmachinesnapshots":              true, // which RAM states a node keeps (internal/agent/ramsnap.go)
	"virtualmachineblockdeviceattachments": true, // hot-plug (agent/hotplug_disk.go)
	"virtualmachinebackups":                true, // backups handed to a node (internal/agent/backup.go)
	"backuptargets":                        true,
}

// describe names an identity in messages.
func (id Identity) describe() string {
	if id.Name == "" {
		return "an unauthenticated client"
	}
	return id.Name
}

func identityOf(ctx context.Context) Identity {
	id, _ := ctx.Value(identityKey).(Identity)
	return id
}

func forbidden(id Identity, a attributes, rule string) error {
	return errs.New(errs.ErrForbidden, "%s may not %s: %s", id.describe(), a, rule)
}

// authorize decides a request on its path alone.
func authorize(id Identity, a attributes) error {
	switch {
	case id.Admin:
		return nil
	case id.Node != "":
		return authorizeNode(id, a)
	case id.User != "":
		return authorizeUser(id, a, "")
	case id.JoinToken != "":
		if a.Resource == "nodes" && a.Sub == v1alpha1.SubNodeCredential && a.Verb == verbCreate && a.Name != "" {
			return nil
		}
		return forbidden(id, a, "a join token may only get a node credential (POST nodes/NAME/credential)")
	}
	return forbidden(id, a, "the request has no identity")
}

func authorizeNode(id Identity, a attributes) error {
	read := a.Verb == verbGet || a.Verb == verbList || a.Verb == verbWatch
	if a.Resource == "nodeleases" {
		return authorizeNodeLease(id, a)
	}
	switch {
	case read && a.Sub == "" && nodeReadable[a.Resource]:
		return nil
	case read && a.Sub == "status" && a.Verb == verbGet && nodeReadable[a.Resource]:
		return nil
	case a.Verb == verbGet && a.Sub == SubData && (a.Resource == "virtualimages" || a.Resource == "clustervirtualimages"):
		return nil
	case a.Verb == verbGet && a.Sub == SubData && a.Resource == "virtualdisks":
		return nil // serveDiskData checks that the node copies the disk (status.nodeName)
	case a.Resource == "secrets" && a.Sub == "":
		if a.Verb == verbGet {
			return nil // authorizeNodeSecret checks the reference
		}
		return forbidden(id, a, "a node may only get the secrets its VMs reference for provisioning, one at a time")
	case read:
		return forbidden(id, a, "a node may read only what its agent needs (VMs, disks, images, networks, classes, storage classes, nodes, address claims and leases, events, referenced secrets)")
	}
	switch a.Resource {
	case "nodes":
		switch {
		case a.Verb == verbCreate && a.Sub == "":
			return nil // authorizeNodeWrite checks the name
		case a.Name != id.Node:
			return forbidden(id, a, fmt.Sprintf("a node may write only its own Node %q", id.Node))
		case (a.Verb == verbUpdate || a.Verb == verbPatch) && (a.Sub == "" || a.Sub == "status"):
			return nil // authorizeNodeWrite keeps the spec unchanged
		case a.Verb == verbCreate && a.Sub == nodestream.SubStreamTickets:
			return nil
		}
		return forbidden(id, a, "a node may create, update and patch its own Node and its status, and redeem its own stream tickets")
	case "virtualmachines", "virtualdisks":
		if (a.Verb == verbUpdate || a.Verb == verbPatch) && a.Sub == "status" {
			return nil // authorizeNodeWrite checks the stored binding
		}
		return forbidden(id, a, "a node may write only the status of the VMs and disks bound to it, never their spec")
	case "virtualdisksnapshots":
		if (a.Verb == verbUpdate || a.Verb == verbPatch) && a.Sub == "status" {
			return nil // authorizeNodeWrite checks the stored hand-over (status.nodeName)
		}
		return forbidden(id, a, "a node may write only the status of the disk snapshots handed to it, never their spec")
	case "virtualmachinebackups":
		if (a.Verb == verbUpdate || a.Verb == verbPatch) && a.Sub == "status" {
			return nil // authorizeNodeWrite checks the stored hand-over (status.nodeName)
		}
		return forbidden(id, a, "a node may write only the status of the backups handed to it, never their spec")
	case "virtualdiskleases":
		if (a.Verb == verbCreate || a.Verb == verbUpdate || a.Verb == verbPatch) && a.Sub == "" {
			return nil // authorizeNodeCreate and authorizeNodeWrite check the holder
		}
		return forbidden(id, a, "a node may create, update and patch disk leases (only to take a free one or give back its own), not delete them")
	case "events":
		if a.Verb == verbCreate || a.Verb == verbUpdate || a.Verb == verbPatch {
			return nil
		}
		return forbidden(id, a, "a node may create, update and patch events, not delete them")
	}
	return forbidden(id, a, "a node may not write "+a.Resource)
}

// authorizeNodeLease: a node may get, create, update and patch its own NodeLease (named after
// it), nothing else: no other node's lease, no list or watch, no delete. A lease another node
// could renew would keep a dead node looking alive, and one it could delete or expire would
// fence a healthy node's VMs.
func authorizeNodeLease(id Identity, a attributes) error {
	switch {
	case a.Sub != "":
	case a.Verb == verbCreate:
		return nil // authorizeNodeCreate checks the name
	case a.Name != id.Node:
	case a.Verb == verbGet || a.Verb == verbUpdate || a.Verb == verbPatch:
		return nil
	}
	return forbidden(id, a, fmt.Sprintf("a node may get, create, update and patch only its own NodeLease %q", id.Node))
}

// requestVerb maps a request on an object path to its verb; collection says whether the path
// names a collection (no name).
func requestVerb(r *http.Request, collection bool) string {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		if collection {
			if w := r.URL.Query().Get("watch"); w == "true" || w == "1" {
				return verbWatch
			}
			return verbList
		}
		return verbGet
	case http.MethodPost:
		return verbCreate
	case http.MethodPut:
		return verbUpdate
	case http.MethodPatch:
		return verbPatch
	case http.MethodDelete:
		return verbDelete
	}
	return r.Method
}

// authorizeRequest runs authorize for a request to an object path.
func (s *Server) authorizeRequest(r *http.Request, t target) error {
	id, ok := r.Context().Value(identityKey).(Identity)
	if !ok {
		// Not through LocalHandler or RemoteHandler: a test or an in-process caller.
		return nil
	}
	a := attributes{Verb: requestVerb(r, t.name == ""), Resource: t.st.Info.Resource, Namespace: t.namespace, Name: t.name, Sub: t.sub}
	var err error
	if id.User != "" {
		err = s.authorizeUserRequest(r.Context(), id, a)
	} else {
		err = authorize(id, a)
	}
	if err != nil {
		s.log.Info("request forbidden", "identity", id.Name, "request", a.String())
		return err
	}
	return nil
}

// authorizeNodeCreate checks, for a node, an object it creates: a Node must be its own.
func authorizeNodeCreate(ctx context.Context, st *registry.Strategy, obj v1alpha1.Object) error {
	id := identityOf(ctx)
	if id.Node == "" {
		return nil
	}
	m := obj.GetObjectMeta()
	if st.Info.Kind == "NodeLease" && m.Name != id.Node {
		return errs.New(errs.ErrForbidden, "%s may not create NodeLease %q: a node may create only its own NodeLease %q", id.describe(), m.Name, id.Node)
	}
	if l, ok := obj.(*v1alpha1.VirtualDiskLease); ok && l.Spec.HolderNode != id.Node {
		return errs.New(errs.ErrForbidden, "%s may not create VirtualDiskLease %q held by node %q: a node may create only leases it holds itself", id.describe(), m.Name, l.Spec.HolderNode)
	}
	if st.Info.Kind != "Node" {
		return nil
	}
	if m.Name != id.Node {
		return errs.New(errs.ErrForbidden, "%s may not create Node %q: a node may create only its own Node %q", id.describe(), m.Name, id.Node)
	}
	spec, _ := json.Marshal(obj.(*v1alpha1.Node).Spec)
	empty, _ := json.Marshal(v1alpha1.NodeSpec{})
	if !bytes.Equal(spec, empty) {
		return errs.New(errs.ErrForbidden, "%s may not create its Node with a spec: unschedulable, taints and allocation ratios are the admin's", id.describe())
	}
	for k, v := range m.Labels {
		if k != v1alpha1.NodeHostnameLabel || v != id.Node {
			return errs.New(errs.ErrForbidden, "%s may not label its Node %s=%s: node labels steer VMs and are the admin's", id.describe(), k, v)
		}
	}
	return nil
}

// authorizeNodeWrite checks, for a node, an update of a stored object old to obj.
func authorizeNodeWrite(ctx context.Context, t target, old, obj v1alpha1.Object, status bool) error {
	id := identityOf(ctx)
	if id.Node == "" {
		return nil
	}
	what := fmt.Sprintf("%s %q", t.st.Info.Singular, t.name)
	if t.namespace != "" {
		what += " in project " + t.namespace
	}
	switch o := old.(type) {
	case *v1alpha1.Node:
		if !status && !bytes.Equal(specBytes(obj), specBytes(old)) {
			return errs.New(errs.ErrForbidden, "%s may not change the spec of %s: a node writes only its Node's status (cordoning is an admin's)", id.describe(), what)
		}
		if !status && !reflect.DeepEqual(obj.GetObjectMeta().Labels, o.Labels) {
			return errs.New(errs.ErrForbidden, "%s may not change the labels of %s: node labels steer VMs and are the admin's", id.describe(), what)
		}
	case *v1alpha1.VirtualMachine:
		n := obj.(*v1alpha1.VirtualMachine)
		if m := o.Status.MigrationState; status && m.Active() && m.Target.Node == id.Node && id.Node != o.Status.NodeName {
			// The target of a live migration writes the migration's state, and at the
			// switch-over takes the binding: it may keep the source's binding or take it.
			if n.Status.NodeName != o.Status.NodeName && n.Status.NodeName != id.Node {
				return errs.New(errs.ErrForbidden, "%s may not bind %s to node %q: the target of its migration may only take the binding", id.describe(), what, n.Status.NodeName)
			}
			return nil
		}
		if m := o.Status.MigrationState; status && m != nil && m.Phase == v1alpha1.MigrationPhaseSucceeded && m.Source.Node == id.Node &&
			o.Status.NodeName != id.Node && onlyMigrationChanged(o, n) {
			// The source of a migration that just switched over records the stream's final
			// figures (downtime, transfer time): nothing else.
			return nil
		}
		if err := boundCheck(id, what, o.Status.NodeName, n.Status.NodeName); err != nil {
			return err
		}
		if s := n.Status.StateNodeName; s != o.Status.StateNodeName && s != "" && s != id.Node {
			return errs.New(errs.ErrForbidden, "%s may not name node %q as the keeper of the host state of %s: a node names only itself", id.describe(), s, what)
		}
	case *v1alpha1.VirtualDiskLease:
		// A node takes a free lease or one it holds, and gives back only its own: it can never
		// take a lease from another node (that is the HA and migration controllers' part, once
		// the other node is fenced or the VM has moved).
		n := obj.(*v1alpha1.VirtualDiskLease)
		if o.Spec.HolderNode != "" && o.Spec.HolderNode != id.Node {
			return errs.New(errs.ErrForbidden, "%s may not change %s: it is held by node %q", id.describe(), what, o.Spec.HolderNode)
		}
		if n.Spec.HolderNode != "" && n.Spec.HolderNode != id.Node {
			return errs.New(errs.ErrForbidden, "%s may not give %s to node %q: a node takes leases only for itself", id.describe(), what, n.Spec.HolderNode)
		}
	case *v1alpha1.VirtualDiskSnapshot:
		n := obj.(*v1alpha1.VirtualDiskSnapshot)
		if err := boundCheck(id, what, o.Status.NodeName, n.Status.NodeName); err != nil {
			return err
		}
	case *v1alpha1.VirtualMachineBackup:
		n := obj.(*v1alpha1.VirtualMachineBackup)
		if err := boundCheck(id, what, o.Status.NodeName, n.Status.NodeName); err != nil {
			return err
		}
	case *v1alpha1.VirtualDisk:
		n := obj.(*v1alpha1.VirtualDisk)
		if err := boundCheck(id, what, o.Status.NodeName, n.Status.NodeName); err != nil {
			return err
		}
		if m := n.Status.MoveSourceNodeName; m != "" && m != o.Status.MoveSourceNodeName {
			return errs.New(errs.ErrForbidden, "%s may not name node %q as the source of a move of %s: the disk controller does", id.describe(), m, what)
		}
	}
	return nil
}

// onlyMigrationChanged says the two VMs' statuses differ at most in migrationState.progress.
func onlyMigrationChanged(old, next *v1alpha1.VirtualMachine) bool {
	a, b := old.Status, next.Status
	if a.MigrationState == nil || b.MigrationState == nil {
		return false
	}
	am, bm := *a.MigrationState, *b.MigrationState
	am.Progress, bm.Progress = nil, nil
	a.MigrationState, b.MigrationState = &am, &bm
	ja, err1 := json.Marshal(a)
	jb, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && bytes.Equal(ja, jb)
}

func boundCheck(id Identity, what, stored, next string) error {
	if stored != id.Node {
		bound := "not bound to a node"
		if stored != "" {
			bound = fmt.Sprintf("bound to node %q", stored)
		}
		return errs.New(errs.ErrForbidden, "%s may not write the status of %s: it is %s, and a node writes only the status of what is bound to it", id.describe(), what, bound)
	}
	if next != "" && next != id.Node {
		return errs.New(errs.ErrForbidden, "%s may not bind %s to node %q: a node may only keep or release its own binding", id.describe(), what, next)
	}
	return nil
}

// authorizeNodeSecret checks, for a node, a get of a secret: a VM in the secret's project that
// is bound to the node must reference it for provisioning.
func (s *Server) authorizeNodeSecret(ctx context.Context, t target) error {
	id := identityOf(ctx)
	if id.Node == "" || t.st.Info.Kind != "Secret" {
		return nil
	}
	vms, _ := registry.ByResource("virtualmachines")
	after := ""
	for {
		res, err := s.store.List(ctx, prefix(vms.Info, t.namespace), store.ListOptions{Limit: 500, After: after})
		if err != nil {
			return err
		}
		for _, kv := range res.KVs {
			var vm struct {
				Spec struct {
					Provisioning *v1alpha1.Provisioning `json:"provisioning"`
				} `json:"spec"`
				Status struct {
					NodeName string `json:"nodeName"`
				} `json:"status"`
			}
			if json.Unmarshal(kv.Value, &vm) != nil || vm.Status.NodeName != id.Node || vm.Spec.Provisioning == nil {
				continue
			}
			p := vm.Spec.Provisioning
			if (p.UserDataRef != nil && p.UserDataRef.Name == t.name) || (p.SysprepRef != nil && p.SysprepRef.Name == t.name) {
				return nil
			}
		}
		if len(res.KVs) < 500 {
			break
		}
		after = res.KVs[len(res.KVs)-1].Key
	}
	return errs.New(errs.ErrForbidden, "%s may not get secret %q in project %s: no VM bound to it references the secret for provisioning", id.describe(), t.name, t.namespace)
}
