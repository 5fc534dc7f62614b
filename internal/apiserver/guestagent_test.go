package apiserver

import (
	"context"
	"strings"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/nodestream"
	"github.com/rakhsh/rakhsh/internal/testutil"
)

// TestGuestAgentSubresource: the guestagent subresource takes only POSTs of a valid request,
// for a running VM, and passes it to the agent of the VM's node (here the one in-process).
func TestGuestAgentSubresource(t *testing.T) {
	dir := testutil.ShortTempDir(t, "rk-guest")
	c := localTestServer(t, dir, Config{LocalStreams: &nodestream.Service{DataDir: dir}, NodeName: "n1"})
	ctx := testContext(t)
	vm := createVM1(t, ctx, c)
	path := client.Path("virtualmachines", "default", "vm1", SubGuestAgent)
	post := func(body any) (nodestream.GuestResult, error) {
		var res nodestream.GuestResult
		err := c.Do(ctx, "POST", path, nil, "application/json", body, &res)
		return res, err
	}
	if err := c.Do(ctx, "GET", path, nil, "", nil, nil); client.Reason(err) != v1alpha1.ReasonMethodNotAllowed {
		t.Errorf("GET: %v, want MethodNotAllowed", err)
	}
	if _, err := post(map[string]any{"command": "guest-exec"}); client.Reason(err) != v1alpha1.ReasonBadRequest || !strings.Contains(err.Error(), "guest-exec") {
		t.Errorf("an unknown command: %v, want BadRequest naming it", err)
	}
	if _, err := post(map[string]any{"command": "fsfreeze-freeze"}); client.Reason(err) != v1alpha1.ReasonServiceUnavailable || !strings.Contains(err.Error(), "only while it runs") {
		t.Errorf("a VM that does not run: %v, want ServiceUnavailable", err)
	}
	bindVM(t, c, "vm1", "n1")
	if err := c.Do(ctx, "PATCH", client.Path("virtualmachines", "default", "vm1", "status"), nil, "application/merge-patch+json",
		[]byte(`{"status":{"phase":"Running"}}`), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := post(map[string]any{"command": "fsfreeze-freeze"}); client.Reason(err) != v1alpha1.ReasonServiceUnavailable || !strings.Contains(err.Error(), "no node agent") {
		t.Errorf("no agent registered for the data dir: %v", err)
	}
	var got nodestream.GuestRequest
	defer nodestream.RegisterGuestAgent(dir, func(ctx context.Context, uid string, req nodestream.GuestRequest) (nodestream.GuestResult, error) {
		if uid != vm.UID {
			t.Errorf("uid %s, want %s", uid, vm.UID)
		}
		got = req
		return nodestream.GuestResult{Command: req.Command, FreezeStatus: "thawed"}, nil
	})()
	res, err := post(map[string]any{"command": "set-password", "user": "root", "password": "pw"})
	if err != nil || res.Command != "set-password" || got.User != "root" || got.Password != "pw" {
		t.Fatalf("set-password: %+v %v; the agent saw %+v", res, err, got)
	}
	// Nothing of the request was stored: the VM's object does not carry the password.
	var raw []byte
	if err := c.Do(ctx, "GET", client.Path("virtualmachines", "default", "vm1"), nil, "", nil, &raw); err != nil || strings.Contains(string(raw), `"pw"`) {
		t.Errorf("the VM object after set-password: %s %v", raw, err)
	}
}
