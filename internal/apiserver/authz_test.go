package apiserver

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/registry"
)

func TestAuthorizeTable(t *testing.T) {
	n1 := Identity{Name: "node n1", Node: "n1"}
	join := Identity{Name: "join token abc", JoinToken: "rakhsh-join.x.y"}
	admin := Identity{Name: "admin", Admin: true}
	a := func(verb, res, ns, name, sub string) attributes {
		return attributes{Verb: verb, Resource: res, Namespace: ns, Name: name, Sub: sub}
	}
	cases := []struct {
		id    Identity
		a     attributes
		allow bool
		rule  string // part of the refusal's message
	}{
		{admin, a("delete", "nodes", "", "n2", ""), true, ""},
		{admin, a("create", "nodes", "", "n2", "credential"), true, ""},
		// reads
		{n1, a("list", "virtualmachines", "", "", ""), true, ""},
		{n1, a("watch", "virtualmachines", "", "", ""), true, ""},
		{n1, a("get", "virtualmachines", "p", "vm1", ""), true, ""},
		{n1, a("watch", "virtualdisks", "", "", ""), true, ""},
		{n1, a("get", "clustervirtualimages", "", "img", "data"), true, ""},
		{n1, a("get", "virtualimages", "p", "img", "data"), true, ""},
		{n1, a("list", "clusternetworks", "", "", ""), true, ""},
		{n1, a("get", "virtualmachineclasses", "", "generic", ""), true, ""},
		{n1, a("get", "nodes", "", "n2", ""), true, ""},
		{n1, a("list", "virtualmachineipaddressleases", "", "", ""), true, ""},
		{n1, a("get", "events", "p", "e1", ""), true, ""},
		{n1, a("get", "secrets", "p", "s1", ""), true, ""},
		{n1, a("list", "secrets", "p", "", ""), false, "secrets its VMs reference"},
		{n1, a("watch", "secrets", "", "", ""), false, "secrets its VMs reference"},
		{n1, a("list", "projects", "", "", ""), false, "read only what its agent needs"},
		{n1, a("list", "users", "", "", ""), false, "read only what its agent needs"},
		{n1, a("get", "virtualmachines", "p", "vm1", "console"), false, "read only what its agent needs"},
		{n1, a("get", "virtualmachines", "p", "vm1", "log"), false, "read only what its agent needs"},
		// its NodeLease only
		{n1, a("get", "nodeleases", "", "n1", ""), true, ""},
		{n1, a("create", "nodeleases", "", "", ""), true, ""},
		{n1, a("update", "nodeleases", "", "n1", ""), true, ""},
		{n1, a("patch", "nodeleases", "", "n1", ""), true, ""},
		{n1, a("update", "nodeleases", "", "n2", ""), false, "only its own NodeLease"},
		{n1, a("get", "nodeleases", "", "n2", ""), false, "only its own NodeLease"},
		{n1, a("list", "nodeleases", "", "", ""), false, "only its own NodeLease"},
		{n1, a("watch", "nodeleases", "", "", ""), false, "only its own NodeLease"},
		{n1, a("delete", "nodeleases", "", "n1", ""), false, "only its own NodeLease"},
		// its Node
		{n1, a("create", "nodes", "", "", ""), true, ""},
		{n1, a("update", "nodes", "", "n1", ""), true, ""},
		{n1, a("patch", "nodes", "", "n1", "status"), true, ""},
		{n1, a("update", "nodes", "", "n1", "status"), true, ""},
		{n1, a("create", "nodes", "", "n1", "streamtickets"), true, ""},
		{n1, a("create", "nodes", "", "n2", "streamtickets"), false, `its own Node "n1"`},
		{n1, a("patch", "nodes", "", "n2", "status"), false, `its own Node "n1"`},
		{n1, a("patch", "nodes", "", "n2", ""), false, `its own Node "n1"`},
		{n1, a("delete", "nodes", "", "n1", ""), false, "create, update and patch its own Node"},
		{n1, a("create", "nodes", "", "n1", "credential"), false, "create, update and patch its own Node"},
		// VMs and disks
		{n1, a("patch", "virtualmachines", "p", "vm1", "status"), true, ""},
		{n1, a("update", "virtualmachines", "p", "vm1", "status"), true, ""},
		{n1, a("patch", "virtualdisks", "p", "d1", "status"), true, ""},
		{n1, a("patch", "virtualmachines", "p", "vm1", ""), false, "never their spec"},
		{n1, a("update", "virtualmachines", "p", "vm1", ""), false, "never their spec"},
		{n1, a("create", "virtualmachines", "p", "", ""), false, "never their spec"},
		{n1, a("delete", "virtualmachines", "p", "vm1", ""), false, "never their spec"},
		{n1, a("create", "virtualmachines", "p", "vm1", "binding"), false, "never their spec"},
		{n1, a("patch", "virtualdisks", "p", "d1", ""), false, "never their spec"},
		// disk snapshots handed to a node
		{n1, a("watch", "virtualdisksnapshots", "", "", ""), true, ""},
		{n1, a("patch", "virtualdisksnapshots", "p", "s1", "status"), true, ""},
		{n1, a("patch", "virtualdisksnapshots", "p", "s1", ""), false, "never their spec"},
		{n1, a("delete", "virtualdisksnapshots", "p", "s1", ""), false, "never their spec"},
		// events
		{n1, a("create", "events", "p", "", ""), true, ""},
		{n1, a("update", "events", "p", "e1", ""), true, ""},
		{n1, a("delete", "events", "p", "e1", ""), false, "not delete them"},
		// other kinds
		{n1, a("create", "secrets", "p", "", ""), false, "secrets its VMs reference"},
		{n1, a("patch", "virtualimages", "p", "img", "status"), false, "may not write virtualimages"},
		{n1, a("patch", "clusternetworks", "", "net", ""), false, "may not write clusternetworks"},
		{n1, a("create", "projects", "", "", ""), false, "may not write projects"},
		{n1, a("create", "virtualmachineoperations", "p", "", ""), false, "may not write virtualmachineoperations"},
		// join tokens
		{join, a("create", "nodes", "", "n3", "credential"), true, ""},
		{join, a("get", "nodes", "", "n3", ""), false, "only get a node credential"},
		{join, a("list", "virtualmachines", "", "", ""), false, "only get a node credential"},
		{join, a("create", "nodes", "", "", ""), false, "only get a node credential"},
		{Identity{}, a("get", "nodes", "", "n3", ""), false, "no identity"},
	}
	for _, c := range cases {
		err := authorize(c.id, c.a)
		if c.allow {
			if err != nil {
				t.Errorf("%s %s: refused: %v", c.id.Name, c.a, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s %s: allowed, want refused", c.id.Name, c.a)
			continue
		}
		if !errors.Is(err, errs.ErrForbidden) {
			t.Errorf("%s %s: %v, want Forbidden", c.id.Name, c.a, err)
		}
		msg := err.Error()
		if !strings.Contains(msg, c.id.describe()) || !strings.Contains(msg, c.rule) {
			t.Errorf("%s %s: message %q should name the identity and contain %q", c.id.Name, c.a, msg, c.rule)
		}
	}
}

// remoteTestServer runs an API server over TLS with an admin token and a clock the test
// moves; it returns the server's URL, an admin client and the clock's setter.
func remoteTestServer(t *testing.T) (string, *client.Client, func(time.Duration)) {
	t.Helper()
	st := tempBolt(t)
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	s := New(Config{Store: st, AdminToken: "admin-secret", Now: clock, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	t.Cleanup(s.Shutdown)
	if err := s.EnsureProject(context.Background(), DefaultProject); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewTLSServer(s.RemoteHandler())
	t.Cleanup(hs.Close)
	return hs.URL, tokenClient(t, hs.URL, "admin-secret"), advance
}

func tokenClient(t *testing.T, url, token string) *client.Client {
	t.Helper()
	c, err := client.New(client.Config{Server: url, Token: token, Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// joinToken makes a join token through admin, failing the test when it cannot.
func joinToken(t *testing.T, ctx context.Context, admin *client.Client, req v1alpha1.JoinTokenRequest) *v1alpha1.JoinToken {
	t.Helper()
	jt, err := admin.CreateJoinToken(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	return jt
}

func wantReason(t *testing.T, what string, err error, reason string, msgPart string) {
	t.Helper()
	if client.Reason(err) != reason {
		t.Fatalf("%s: %v, want %s", what, err, reason)
	}
	if msgPart != "" && !strings.Contains(err.Error(), msgPart) {
		t.Fatalf("%s: %q does not say %q", what, err, msgPart)
	}
}

// TestNodeJoinAndAuthorization joins a node with a join token and checks what its credential
// may do, over the real handler chain.
func TestNodeJoinAndAuthorization(t *testing.T) {
	url, admin, advance := remoteTestServer(t)
	ctx := testContext(t)

	jt := joinToken(t, ctx, admin, v1alpha1.JoinTokenRequest{TTL: "10m"})
	if !strings.HasPrefix(jt.Token, joinTokenPrefix+jt.ID+".") || jt.UsesLeft != 1 {
		t.Fatalf("join token %+v", jt)
	}
	if _, err := admin.CreateJoinToken(ctx, v1alpha1.JoinTokenRequest{TTL: "soon"}); client.Reason(err) != v1alpha1.ReasonBadRequest {
		t.Fatalf("bad ttl: %v", err)
	}
	joiner := tokenClient(t, url, jt.Token)
	if err := joiner.Get(ctx, "nodes", "", "n1", nil); !client.IsForbidden(err) {
		t.Fatalf("a join token reading a node: %v", err)
	}
	cred, err := joiner.NodeCredential(ctx, "n1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := joiner.NodeCredential(ctx, "n9"); client.Reason(err) != v1alpha1.ReasonUnauthorized || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("a used-up join token: %v", err)
	}
	// The store holds no secret in clear.
	list, err := admin.ListJoinTokens(ctx)
	if err != nil || len(list.Items) != 0 {
		t.Fatalf("join tokens after the only use: %+v %v", list, err)
	}

	n1 := tokenClient(t, url, cred.Token)
	// Registration: only its own Node; the hostname label is set.
	other := v1alpha1.Node{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "Node"}, ObjectMeta: v1alpha1.ObjectMeta{Name: "n2"}}
	wantReason(t, "node n1 creating Node n2", n1.Create(ctx, "nodes", "", &other, nil), v1alpha1.ReasonForbidden, `node n1 may not create Node "n2"`)
	tainted := v1alpha1.Node{TypeMeta: other.TypeMeta, ObjectMeta: v1alpha1.ObjectMeta{Name: "n1"}, Spec: v1alpha1.NodeSpec{AllocationRatios: v1alpha1.AllocationRatios{CPU: 100}}}
	wantReason(t, "node n1 creating its Node with a spec", n1.Create(ctx, "nodes", "", &tainted, nil), v1alpha1.ReasonForbidden, "with a spec")
	labelled := v1alpha1.Node{TypeMeta: other.TypeMeta, ObjectMeta: v1alpha1.ObjectMeta{Name: "n1", Labels: map[string]string{"gpu": "yes"}}}
	wantReason(t, "node n1 creating its Node with a label", n1.Create(ctx, "nodes", "", &labelled, nil), v1alpha1.ReasonForbidden, "may not label its Node gpu=yes")
	var node v1alpha1.Node
	own := v1alpha1.Node{TypeMeta: other.TypeMeta, ObjectMeta: v1alpha1.ObjectMeta{Name: "n1"}}
	if err := n1.Create(ctx, "nodes", "", &own, &node); err != nil {
		t.Fatal(err)
	}
	if node.Labels[v1alpha1.NodeHostnameLabel] != "n1" {
		t.Fatalf("labels of a new node: %v", node.Labels)
	}
	if err := n1.PatchStatus(ctx, "nodes", "", "n1", []byte(`{"status":{"phase":"Ready"}}`), nil); err != nil {
		t.Fatal(err)
	}
	wantReason(t, "node n1 cordoning itself", n1.Patch(ctx, "nodes", "", "n1", []byte(`{"spec":{"unschedulable":true}}`), nil), v1alpha1.ReasonForbidden, "may not change the spec")
	wantReason(t, "node n1 labelling itself", n1.Patch(ctx, "nodes", "", "n1", []byte(`{"metadata":{"labels":{"gpu":"yes"}}}`), nil), v1alpha1.ReasonForbidden, "may not change the labels")
	if err := n1.Patch(ctx, "nodes", "", "n1", []byte(`{"metadata":{"annotations":{"note":"x"}}}`), nil); err != nil {
		t.Fatalf("node n1 annotating itself: %v", err)
	}
	if err := admin.Create(ctx, "nodes", "", &other, nil); err != nil {
		t.Fatal(err)
	}
	wantReason(t, "node n1 patching Node n2", n1.PatchStatus(ctx, "nodes", "", "n2", []byte(`{"status":{"phase":"NotReady"}}`), nil), v1alpha1.ReasonForbidden, "node n1 may not patch nodes/status n2")
	// The admin's labels stay, the hostname label cannot be changed.
	if err := admin.Patch(ctx, "nodes", "", "n1", []byte(`{"metadata":{"labels":{"kubernetes.io/hostname":"x","rack":"a"}}}`), &node); err != nil {
		t.Fatal(err)
	}
	if node.Labels[v1alpha1.NodeHostnameLabel] != "n1" || node.Labels["rack"] != "a" {
		t.Fatalf("labels after an update: %v", node.Labels)
	}

	// VMs: status of those bound to n1 only, never the spec.
	mkVM := func(name, secret string) {
		spec := map[string]any{"runPolicy": "AlwaysOff", "cpu": map[string]any{"cores": 1}, "memory": map[string]any{"size": "128Mi"}}
		if secret != "" {
			spec["provisioning"] = map[string]any{"type": "UserDataRef", "userDataRef": map[string]any{"kind": "Secret", "name": secret}}
		}
		if err := admin.Create(ctx, "virtualmachines", "default", map[string]any{"kind": "VirtualMachine", "metadata": map[string]any{"name": name}, "spec": spec}, nil); err != nil {
			t.Fatal(err)
		}
	}
	mkVM("vm1", "s1")
	mkVM("vm2", "s2")
	for _, s := range []string{"s1", "s2"} {
		if err := admin.Create(ctx, "secrets", "default", map[string]any{"kind": "Secret", "metadata": map[string]any{"name": s}, "stringData": map[string]any{"userData": "#cloud-config\n"}}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := admin.Bind(ctx, "default", "vm1", &v1alpha1.VirtualMachineBinding{NodeName: "n1"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := admin.Bind(ctx, "default", "vm2", &v1alpha1.VirtualMachineBinding{NodeName: "n2"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := n1.Get(ctx, "virtualmachines", "default", "vm2", nil); err != nil {
		t.Fatalf("node reading a VM: %v", err)
	}
	if err := n1.PatchStatus(ctx, "virtualmachines", "default", "vm1", []byte(`{"status":{"phase":"Starting"}}`), nil); err != nil {
		t.Fatalf("node n1 writing the status of its VM: %v", err)
	}
	wantReason(t, "node n1 patching the status of a VM on n2", n1.PatchStatus(ctx, "virtualmachines", "default", "vm2", []byte(`{"status":{"phase":"Running","nodeName":"n1"}}`), nil),
		v1alpha1.ReasonForbidden, `it is bound to node "n2"`)
	wantReason(t, "node n1 patching a VM spec", n1.Patch(ctx, "virtualmachines", "default", "vm1", []byte(`{"spec":{"cpu":{"cores":4}}}`), nil),
		v1alpha1.ReasonForbidden, "never their spec")
	wantReason(t, "node n1 moving its VM to n2", n1.PatchStatus(ctx, "virtualmachines", "default", "vm1", []byte(`{"status":{"nodeName":"n2"}}`), nil),
		v1alpha1.ReasonForbidden, `may not bind virtualmachine "vm1"`)
	wantReason(t, "node n1 binding", n1.Bind(ctx, "default", "vm2", &v1alpha1.VirtualMachineBinding{NodeName: "n1"}, nil), v1alpha1.ReasonForbidden, "node n1")
	wantReason(t, "node n1 deleting a VM", n1.Delete(ctx, "virtualmachines", "default", "vm1"), v1alpha1.ReasonForbidden, "node n1")
	// Secrets: those referenced by its VMs only.
	if err := n1.Get(ctx, "secrets", "default", "s1", nil); err != nil {
		t.Fatalf("node n1 reading the secret of its VM: %v", err)
	}
	wantReason(t, "node n1 reading the secret of a VM on n2", n1.Get(ctx, "secrets", "default", "s2", nil), v1alpha1.ReasonForbidden, `secret "s2"`)
	_, err = n1.List(ctx, "secrets", "default", client.ListOptions{})
	wantReason(t, "node n1 listing secrets", err, v1alpha1.ReasonForbidden, "node n1")
	// Releasing its binding is allowed; afterwards the VM is no longer its own.
	if err := n1.PatchStatus(ctx, "virtualmachines", "default", "vm1", []byte(`{"status":{"nodeName":null}}`), nil); err != nil {
		t.Fatalf("node n1 releasing its VM: %v", err)
	}
	wantReason(t, "node n1 writing a released VM", n1.PatchStatus(ctx, "virtualmachines", "default", "vm1", []byte(`{"status":{"phase":"Running"}}`), nil),
		v1alpha1.ReasonForbidden, "not bound to a node")
	// Join token admin API: not for nodes.
	if _, err := n1.CreateJoinToken(ctx, v1alpha1.JoinTokenRequest{}); !client.IsForbidden(err) {
		t.Fatalf("node n1 making a join token: %v", err)
	}
	// A second join under an existing name is refused; expired tokens are refused and swept.
	jt2 := joinToken(t, ctx, admin, v1alpha1.JoinTokenRequest{TTL: "1m", Uses: 2})
	if _, err := tokenClient(t, url, jt2.Token).NodeCredential(ctx, "n1"); !client.IsAlreadyExists(err) {
		t.Fatalf("joining as an existing node: %v", err)
	}
	advance(2 * time.Minute)
	_, err = tokenClient(t, url, jt2.Token).NodeCredential(ctx, "n3")
	wantReason(t, "an expired join token", err, v1alpha1.ReasonUnauthorized, "")
	if list, err := admin.ListJoinTokens(ctx); err != nil || len(list.Items) != 0 {
		t.Fatalf("expired token not swept: %+v %v", list, err)
	}
	// A wrong secret with a valid id is refused.
	jt3 := joinToken(t, ctx, admin, v1alpha1.JoinTokenRequest{})
	_, err = tokenClient(t, url, joinTokenPrefix+jt3.ID+".wrong").NodeCredential(ctx, "n3")
	wantReason(t, "a forged join token", err, v1alpha1.ReasonUnauthorized, "not valid")
	if err := admin.DeleteJoinToken(ctx, jt3.ID); err != nil {
		t.Fatal(err)
	}
	_, err = tokenClient(t, url, jt3.Token).NodeCredential(ctx, "n3")
	wantReason(t, "a deleted join token", err, v1alpha1.ReasonUnauthorized, "")
	// Removing the node revokes its credential.
	if err := admin.Delete(ctx, "nodes", "", "n1"); err != nil {
		t.Fatal(err)
	}
	wantReason(t, "a removed node", n1.Get(ctx, "nodes", "", "n2", nil), v1alpha1.ReasonUnauthorized, "has no credential")
	wantReason(t, "a forged node credential", tokenClient(t, url, nodeCredPrefix+"n2.abc").Get(ctx, "nodes", "", "n2", nil), v1alpha1.ReasonUnauthorized, "")
}

// TestNodeHostnameLabelOnStatusWrite: a Node stored without the hostname label (made before
// it existed) gets it with its next status write.
func TestNodeHostnameLabelOnStatusWrite(t *testing.T) {
	st := tempBolt(t)
	ctx := context.Background()
	if _, err := st.Create(ctx, "/nodes/old", []byte(`{"apiVersion":"virtualization.rakhsh.io/v1alpha1","kind":"Node","metadata":{"name":"old","uid":"u1","labels":{"rack":"a"}},"spec":{}}`)); err != nil {
		t.Fatal(err)
	}
	s := New(Config{Store: st, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	defer s.Shutdown()
	nodes, _ := registry.ByResource("nodes")
	out, _, _, err := s.Update(ctx, target{st: nodes, name: "old"}, &v1alpha1.Node{Status: v1alpha1.NodeStatus{Phase: v1alpha1.NodePhaseReady}}, true)
	if err != nil {
		t.Fatal(err)
	}
	var n v1alpha1.Node
	if err := json.Unmarshal(out, &n); err != nil {
		t.Fatal(err)
	}
	if n.Labels[v1alpha1.NodeHostnameLabel] != "old" || n.Labels["rack"] != "a" || n.Status.Phase != v1alpha1.NodePhaseReady {
		t.Fatalf("after a status write: labels %v, phase %s", n.Labels, n.Status.Phase)
	}
}

// nodeWriteCase is a write of old to new by node, and whether authorizeNodeWrite allows it.
type nodeWriteCase[P v1alpha1.Object] struct {
	name     string
	node     string
	old, new P
	ok       bool
}

// asNode is the context of a request of node's agent.
func asNode(node string) context.Context {
	return context.WithValue(context.Background(), identityKey, Identity{Name: "node:" + node, Node: node})
}

// checkNodeWrites checks authorizeNodeWrite on each case, of the status or not, to tg.
func checkNodeWrites[P v1alpha1.Object](t *testing.T, tg target, status bool, cases []nodeWriteCase[P]) {
	t.Helper()
	for _, c := range cases {
		err := authorizeNodeWrite(asNode(c.node), tg, c.old, c.new, status)
		if (err == nil) != c.ok {
			t.Errorf("%s: err %v, want ok=%v", c.name, err, c.ok)
		}
	}
}

// TestNodeWriteDuringMigration: the target node of an active live migration may write the
// VM's status and take its binding, but bind it nowhere else; once the migration is over,
// or for another node, the usual rule (only the bound node) holds.
func TestNodeWriteDuringMigration(t *testing.T) {
	vms, _ := registry.ByResource("virtualmachines")
	tg := target{st: vms, namespace: "p", name: "vm1"}
	vm := func(node string, m *v1alpha1.VirtualMachineMigrationState) *v1alpha1.VirtualMachine {
		v := &v1alpha1.VirtualMachine{}
		v.Status.NodeName, v.Status.MigrationState = node, m
		return v
	}
	active := &v1alpha1.VirtualMachineMigrationState{ID: "m1", Phase: v1alpha1.MigrationPhaseTransferring,
		Source: v1alpha1.VirtualMachineLocation{Node: "n1"}, Target: v1alpha1.VirtualMachineLocation{Node: "n2"}}
	done := *active
	done.Phase = v1alpha1.MigrationPhaseFailed
	succeeded := *active
	succeeded.Phase = v1alpha1.MigrationPhaseSucceeded
	succeededFigures := succeeded
	succeededFigures.Progress = &v1alpha1.MigrationProgress{Percent: 100, DowntimeMs: 12}
	checkNodeWrites(t, tg, true, []nodeWriteCase[*v1alpha1.VirtualMachine]{
		{"target writes the migration, keeps the source's binding", "n2", vm("n1", active), vm("n1", active), true},
		{"target takes the binding at the switch-over", "n2", vm("n1", active), vm("n2", active), true},
		{"target may not bind elsewhere", "n2", vm("n1", active), vm("n3", active), false},
		{"a third node may not write", "n3", vm("n1", active), vm("n1", active), false},
		{"the source writes as the bound node", "n1", vm("n1", active), vm("n1", active), true},
		{"after the migration the target has no right", "n2", vm("n1", &done), vm("n2", &done), false},
		{"the source records the final figures", "n1", vm("n2", &succeeded), vm("n2", &succeededFigures), true},
		{"the source may not change anything else", "n1", vm("n2", &succeeded), vm("n1", &succeededFigures), false},
		{"nor the migration's phase", "n1", vm("n2", &succeeded), vm("n2", &done), false},
		{"another node may not record figures", "n3", vm("n2", &succeeded), vm("n2", &succeededFigures), false},
	})
}

// TestNodeWritesStateNode: a node releasing a VM names itself as the keeper of its host state
// (or nobody); it never names another node.
func TestNodeWritesStateNode(t *testing.T) {
	vms, _ := registry.ByResource("virtualmachines")
	tg := target{st: vms, namespace: "p", name: "vm1"}
	vm := func(node, state string) *v1alpha1.VirtualMachine {
		v := &v1alpha1.VirtualMachine{}
		v.Status.NodeName, v.Status.StateNodeName = node, state
		return v
	}
	checkNodeWrites(t, tg, true, []nodeWriteCase[*v1alpha1.VirtualMachine]{
		{"release naming itself", "n1", vm("n1", ""), vm("", "n1"), true},
		{"release after a start elsewhere", "n1", vm("n1", "n2"), vm("", "n1"), true},
		{"release keeping nothing", "n1", vm("n1", "n2"), vm("", ""), true},
		{"a status write that keeps another node's name", "n1", vm("n1", "n2"), vm("n1", "n2"), true},
		{"naming another node", "n1", vm("n1", ""), vm("", "n2"), false},
		{"naming another node while bound", "n1", vm("n1", "n1"), vm("n1", "n3"), false},
		{"a VM not bound to it", "n1", vm("n2", ""), vm("n2", "n1"), false},
	})
}

// TestNodeDiskLeaseWrites: a node takes free disk leases and gives back its own; it never
// takes, gives away or deletes another node's.
func TestNodeDiskLeaseWrites(t *testing.T) {
	st, ok := registry.ByResource("virtualdiskleases")
	if !ok {
		t.Fatal("virtualdiskleases is not registered")
	}
	tg := target{st: st, namespace: "p", name: "d1"}
	lease := func(node string) *v1alpha1.VirtualDiskLease {
		l := &v1alpha1.VirtualDiskLease{}
		l.Name, l.Namespace = "d1", "p"
		if node != "" {
			l.Spec.HolderNode, l.Spec.VirtualMachineUID = node, "u1"
		}
		return l
	}
	checkNodeWrites(t, tg, false, []nodeWriteCase[*v1alpha1.VirtualDiskLease]{
		{"take a free lease", "n1", lease(""), lease("n1"), true},
		{"keep its own", "n1", lease("n1"), lease("n1"), true},
		{"give back its own", "n1", lease("n1"), lease(""), true},
		{"take another node's", "n1", lease("n2"), lease("n1"), false},
		{"free another node's", "n1", lease("n2"), lease(""), false},
		{"give a free one to another node", "n1", lease(""), lease("n2"), false},
		{"give its own to another node", "n1", lease("n1"), lease("n2"), false},
	})
	if err := authorizeNodeCreate(asNode("n1"), st, lease("n1")); err != nil {
		t.Errorf("creating its own lease: %v", err)
	}
	if err := authorizeNodeCreate(asNode("n1"), st, lease("n2")); err == nil {
		t.Error("a node created a lease held by another node")
	}
	n1 := Identity{Name: "node:n1", Node: "n1"}
	for _, verb := range []string{"get", "list", "watch", "create", "update", "patch"} {
		if err := authorize(n1, attributes{Verb: verb, Resource: "virtualdiskleases", Namespace: "p", Name: "d1"}); err != nil {
			t.Errorf("%s of a disk lease: %v", verb, err)
		}
	}
	if err := authorize(n1, attributes{Verb: "delete", Resource: "virtualdiskleases", Namespace: "p", Name: "d1"}); err == nil {
		t.Error("a node may delete a disk lease")
	}
}

// TestNodeWritesHandedSnapshots: a node writes the status of a disk snapshot only while it is
// handed to it, and may only keep or give back the hand-over.
func TestNodeWritesHandedSnapshots(t *testing.T) {
	st, _ := registry.ByResource("virtualdisksnapshots")
	tg := target{st: st, namespace: "p", name: "s1"}
	snap := func(node string) *v1alpha1.VirtualDiskSnapshot {
		s := &v1alpha1.VirtualDiskSnapshot{}
		s.Status.NodeName = node
		return s
	}
	checkNodeWrites(t, tg, true, []nodeWriteCase[*v1alpha1.VirtualDiskSnapshot]{
		{"the node it is handed to reports", "n1", snap("n1"), snap("n1"), true},
		{"and may give it back", "n1", snap("n1"), snap(""), true},
		{"another node may not write it", "n2", snap("n1"), snap("n1"), false},
		{"nor take one handed to nobody", "n2", snap(""), snap("n2"), false},
		{"a node may not hand it elsewhere", "n1", snap("n1"), snap("n2"), false},
	})
}

// TestNodeWritesMovingDisks: the node that copies a disk from another node's Local storage
// writes its status and may clear the move's source, but never names a source itself; the
// source node may not write it; the disk's data is open to nodes at the path level (the
// handler checks the copying node) and never to project users.
func TestNodeWritesMovingDisks(t *testing.T) {
	st, _ := registry.ByResource("virtualdisks")
	tg := target{st: st, namespace: "p", name: "d1"}
	disk := func(node, source string) *v1alpha1.VirtualDisk {
		d := &v1alpha1.VirtualDisk{}
		d.Status.NodeName, d.Status.MoveSourceNodeName = node, source
		return d
	}
	checkNodeWrites(t, tg, true, []nodeWriteCase[*v1alpha1.VirtualDisk]{
		{"the copying node reports", "n2", disk("n2", "n1"), disk("n2", "n1"), true},
		{"and clears the source when done", "n2", disk("n2", "n1"), disk("n2", ""), true},
		{"but may not name another source", "n2", disk("n2", "n1"), disk("n2", "n3"), false},
		{"nor name one on a disk bound to it", "n2", disk("n2", ""), disk("n2", "n3"), false},
		{"the source node may not write it", "n1", disk("n2", "n1"), disk("n2", ""), false},
	})
	if err := authorize(Identity{Name: "node:n2", Node: "n2"}, attributes{Verb: "get", Resource: "virtualdisks", Namespace: "p", Name: "d1", Sub: SubData}); err != nil {
		t.Errorf("a node reading a disk's data (path level): %v", err)
	}
	if err := authorize(Identity{Name: "node:n2", Node: "n2"}, attributes{Verb: "create", Resource: "virtualdisks", Namespace: "p", Name: "d1", Sub: SubData}); err == nil {
		t.Error("a node may write a disk's data")
	}
}
