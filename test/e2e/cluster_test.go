package e2e

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

// TestClusterNodesReady: in the three-host cluster (serve with its own agent on h1, joined
// agents on h2 and h3, a three-member etcd on the underlay) every host's Node is Ready, each
// joined agent holds its own node credential, and the CLI on every host reaches the API
// server on h1 over the underlay.
func TestClusterNodesReady(t *testing.T) {
	c := sharedCluster(t)
	ctx := ctxT(t)
	list, err := c.Serve(t).Client().List(ctx, "nodes", "", client.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ready := map[string]bool{}
	for _, raw := range list.Items {
		var n v1alpha1.Node
		if err := json.Unmarshal(raw, &n); err != nil {
			t.Fatal(err)
		}
		ready[n.Name] = n.Status.Phase == v1alpha1.NodePhaseReady
	}
	for _, name := range c.HostNames() {
		if !ready[name] {
			t.Errorf("node %s is not Ready (nodes: %v)", name, ready)
		}
	}
	if len(list.Items) != len(c.Hosts) {
		t.Errorf("%d nodes, want %d: %v", len(list.Items), len(c.Hosts), ready)
	}
	for _, h := range c.Hosts {
		out := h.MustCLI(t, "", "get", "nodes", "-o", "name")
		for _, name := range c.HostNames() {
			if !contains(strings.Fields(out), "node/"+name) && !contains(strings.Fields(out), name) {
				t.Errorf("rakhsh get nodes on %s does not list %s:\n%s", h.Name, name, out)
			}
		}
		if h.IsServe {
			continue
		}
		var n v1alpha1.Node
		if err := h.NodeClient(t).Get(ctx, "nodes", "", h.Name, &n); err != nil {
			t.Errorf("%s's node credential cannot read its Node: %v", h.Name, err)
		}
	}
}
