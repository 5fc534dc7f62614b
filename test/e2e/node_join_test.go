package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

// agentEnv is the environment of a joining agent: no admin token from the test's own
// environment.
func agentEnv() []string {
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "RAKHSH_TOKEN") && !strings.HasPrefix(e, "RAKHSH_SERVER") {
			env = append(env, e)
		}
	}
	return env
}

// TestNodeJoin: a host joins a control plane with a join token (from `rakhsh node token
// create`, given in a file), keeps the node credential it got in its data dir, and runs a VM
// with it alone (its console log comes through the stream tickets its credential redeems).
// The credential may not write another node's VM, a VM's spec or another Node (403 naming
// the node); a used-up and an expired join token are refused; a restarted agent needs no join
// token; `rakhsh node cordon|uncordon|remove` work, and removal revokes the credential.
func TestNodeJoin(t *testing.T) {
	sideBySide(t)
	dir := vmGuestDir(t)
	base := vmImageServer(t, dir)
	addr := freeAddr(t)
	s := StartServe(t, "--no-agent", "--listen", addr)
	ca := filepath.Join(s.DataDir, "tls.crt")
	applyGuestISO(t, s, base)

	tok := strings.TrimSpace(s.MustCLI("", "node", "token", "create", "--ttl", "10m"))
	if !strings.HasPrefix(tok, "rakhsh-join.") {
		t.Fatalf("node token create printed %q", tok)
	}
	tokFile := filepath.Join(t.TempDir(), "join")
	if err := os.WriteFile(tokFile, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	agentDir := t.TempDir()
	agent := startJoinedAgent(t, addr, ca, agentDir, agentEnv(), "--node-name", "joined-host", "--join-token-file", tokFile)
	logs := agent.logs
	waitNodePhase(t, s.Client(), "joined-host", v1alpha1.NodePhaseReady, time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// The credential: kept 0600, a node token, not the join token.
	credPath := filepath.Join(agentDir, "node-credential.json")
	fi, err := os.Stat(credPath)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("node credential file: %v %v", fi, err)
	}
	data, err := os.ReadFile(credPath)
	if err != nil {
		t.Fatal(err)
	}
	var cred struct{ Node, Token string }
	if err := json.Unmarshal(data, &cred); err != nil || cred.Node != "joined-host" || !strings.HasPrefix(cred.Token, "rakhsh-node.joined-host.") {
		t.Fatalf("node credential: node %q, err %v", cred.Node, err)
	}
	if strings.Contains(logs.String(), cred.Token) || strings.Contains(logs.String(), tok) {
		t.Fatalf("the agent logged a token")
	}
	var node v1alpha1.Node
	if err := s.Client().Get(ctx, "nodes", "", "joined-host", &node); err != nil || node.Labels[v1alpha1.NodeHostnameLabel] != "joined-host" {
		t.Fatalf("Node labels: %v %v", node.Labels, err)
	}

	// The join token is used up; an expired one is refused.
	refused := func(what, token, want string) {
		t.Helper()
		f := filepath.Join(t.TempDir(), "t")
		if err := os.WriteFile(f, []byte(token), 0o600); err != nil {
			t.Fatal(err)
		}
		c := exec.Command(rakhshBin(t), "agent", "--server", "https://"+addr, "--ca-file", ca, "--data-dir", t.TempDir(),
			"--node-name", "h2", "--vm-networking", "user", "--join-token-file", f)
		c.Env = agentEnv()
		out, err := c.CombinedOutput()
		if err == nil || !strings.Contains(string(out), want) {
			t.Fatalf("agent with %s: %v, output:\n%s\nwant %q", what, err, out, want)
		}
	}
	refused("a used-up join token", tok, "does not exist (it expired, was used up or deleted)")
	short := strings.TrimSpace(s.MustCLI("", "node", "token", "create", "--ttl", "1s"))
	time.Sleep(1500 * time.Millisecond)
	refused("an expired join token", short, "expired")

	// A VM on the joined host, run with the node credential alone.
	s.MustCLI("", "wait", "cvi", "guest-iso", "--for", "phase=Ready", "--timeout", "2m")
	applyDocs(s, isoVM("joined", hostSelector("joined-host")))
	vmRunningOn(t, s, "joined", "joined-host", 3*time.Minute)
	vmWaitSerial(t, s, "joined", "RAKHSH-GUEST: ready", 1)

	// What the node credential may not do.
	nc, err := client.New(client.Config{Server: "https://" + addr, Token: cred.Token, CAFile: ca})
	if err != nil {
		t.Fatal(err)
	}
	other := v1alpha1.Node{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "Node"}, ObjectMeta: v1alpha1.ObjectMeta{Name: "other-host"}}
	if err := s.Client().Create(ctx, "nodes", "", &other, nil); err != nil {
		t.Fatal(err)
	}
	s.MustCLI("", "node", "cordon", "other-host")
	applyDocs(s, vmDoc{Name: "elsewhere", Policy: "AlwaysOff", Memory: "128Mi"}.String())
	// Bound by hand (the node is cordoned, so the scheduler leaves it alone); the binding
	// carries the power request it saw, which the VM controller may change in between.
	for attempt := 0; ; attempt++ {
		var ev v1alpha1.VirtualMachine
		if err := s.Client().Get(ctx, "virtualmachines", "default", "elsewhere", &ev); err != nil {
			t.Fatal(err)
		}
		err := s.Client().Bind(ctx, "default", "elsewhere", &v1alpha1.VirtualMachineBinding{NodeName: "other-host", PowerRequest: ev.Status.PowerRequest}, nil)
		if err == nil {
			break
		}
		if !client.IsConflict(err) || attempt >= 20 {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	forbidden := func(what string, err error, want string) {
		t.Helper()
		if !client.IsForbidden(err) || !strings.Contains(err.Error(), "node joined-host") || !strings.Contains(err.Error(), want) {
			t.Fatalf("%s with the node credential: %v, want 403 naming the node and %q", what, err, want)
		}
	}
	forbidden("patching the status of another node's VM", nc.PatchStatus(ctx, "virtualmachines", "default", "elsewhere", []byte(`{"status":{"phase":"Running","nodeName":"joined-host"}}`), nil), `bound to node "other-host"`)
	forbidden("patching a VM spec", nc.Patch(ctx, "virtualmachines", "default", "joined", []byte(`{"spec":{"runPolicy":"AlwaysOff"}}`), nil), "never their spec")
	forbidden("patching another Node", nc.PatchStatus(ctx, "nodes", "", "other-host", []byte(`{"status":{"phase":"Ready"}}`), nil), "its own Node")
	forbidden("uncordoning another Node", nc.Patch(ctx, "nodes", "", "other-host", []byte(`{"spec":{"unschedulable":null}}`), nil), "its own Node")
	forbidden("moving its VM to another node", nc.PatchStatus(ctx, "virtualmachines", "default", "joined", []byte(`{"status":{"nodeName":"other-host"}}`), nil), "only keep or release")
	forbidden("deleting a VM", nc.Delete(ctx, "virtualmachines", "default", "joined"), "never their spec")
	_, err = nc.CreateJoinToken(ctx, v1alpha1.JoinTokenRequest{})
	forbidden("making a join token", err, "only an admin")

	// A restart needs no join token; cordon keeps new VMs off (and is the admin's).
	agent.restart()
	restarted := time.Now()
	for {
		if err := s.Client().Get(ctx, "nodes", "", "joined-host", &node); err != nil {
			t.Fatal(err)
		}
		if hb := node.Status.LastHeartbeatTime; hb != nil && hb.After(restarted) {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the restarted agent did not heartbeat: %+v", node.Status)
		}
		time.Sleep(200 * time.Millisecond)
	}
	s.MustCLI("", "node", "cordon", "joined-host")
	if err := s.Client().Get(ctx, "nodes", "", "joined-host", &node); err != nil || !node.Spec.Unschedulable {
		t.Fatalf("after cordon: %+v %v", node.Spec, err)
	}
	if out := s.MustCLI("", "node", "describe", "joined-host"); !strings.Contains(out, "joined-host") {
		t.Fatalf("node describe: %s", out)
	}
	s.MustCLI("", "node", "uncordon", "joined-host")
	if r := s.CLI("", "node", "remove", "joined-host"); r.Code == 0 || !strings.Contains(r.Stderr, "default/joined") {
		t.Fatalf("node remove with a VM bound: exit %d, %s", r.Code, r.Stderr)
	}

	// Removal revokes the credential.
	s.MustCLI("", "delete", "vm", "joined")
	waitGone(t, s, "virtualmachines", "joined")
	s.MustCLI("", "node", "remove", "joined-host")
	if err := nc.Get(ctx, "nodes", "", "joined-host", nil); client.Reason(err) != v1alpha1.ReasonUnauthorized {
		t.Fatalf("the credential of a removed node: %v, want 401", err)
	}
	time.Sleep(2 * time.Second)
	if err := s.Client().Get(ctx, "nodes", "", "joined-host", nil); !client.IsNotFound(err) {
		t.Fatalf("the removed node's agent made its Node again: %v", err)
	}
}
