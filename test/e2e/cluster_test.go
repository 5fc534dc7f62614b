package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/testutil"
)

// TestClusterNodesReady: in the three-host cluster (serve with its own agent on h1, joined
// agents on h2 and h3, a three-member etcd on the underlay) every host's Node is Ready, each
// joined agent holds its own node credential, and the CLI on every host reaches the API
// server on h1 over the underlay.
func TestClusterNodesReady(t *testing.T) {
	clusterLane(t)
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

// clusterVMName is the VM the cluster tests share: booted once on h2, kept running.
const clusterVMName = "cl-vm"

// clusterVM makes sure the shared test VM runs on h2 (pinned there by its hostname label)
// from the guest ISO and has printed its ready marker, and returns it.
func clusterVM(t *testing.T, c *Cluster) *v1alpha1.VirtualMachine {
	t.Helper()
	s := c.Serve(t)
	if v := vmGet(t, s, clusterVMName); v == nil {
		// Not HA (no high-availability annotation): TestClusterEtcdQuorum keeps the store without
		// a quorum for longer than the fence timeout, and checks that the VM's QEMU lives through it.
		clusterApply(s, clusterVMManifest{Name: clusterVMName, Host: "h2", Image: c.GuestImage(t)}.YAML())
	}
	return clusterBoot(t, s, clusterVMName, "h2")
}

// TestClusterVMOnJoinedNode: a VM pinned to the joined host h2 boots from a
// ClusterVirtualImage the agent fetched over the API; its serial log (`rakhsh logs`, run on
// h3) and its serial console (the API websocket, dialled from h3) work through the API server
// on h1, which holds none of the VM's files: it proxies to h2's stream service over the
// underlay. h3's node credential may not write h2's VM (403 naming h3 and the binding).
func TestClusterVMOnJoinedNode(t *testing.T) {
	clusterLane(t)
	c := sharedCluster(t)
	v := clusterVM(t, c)
	h1, h2, h3 := c.Host("h1"), c.Host("h2"), c.Host("h3")

	// The VM's files are on h2 only.
	if _, err := os.Stat(filepath.Join(h2.DataDir, "run", "vms", v.UID, "qemu.pid")); err != nil {
		t.Fatalf("h2 has no run directory of the VM: %v", err)
	}
	for _, h := range []*ClusterHost{h1, h3} {
		if _, err := os.Stat(filepath.Join(h.DataDir, "run", "vms", v.UID)); !os.IsNotExist(err) {
			t.Fatalf("%s has a run directory of a VM of h2 (stat: %v)", h.Name, err)
		}
	}

	// The serial log through h1, from h3.
	if out := h3.MustCLI(t, "", "logs", "vm", clusterVMName); !strings.Contains(out, "RAKHSH-GUEST: ready") {
		t.Fatalf("rakhsh logs on h3 of the VM on h2: no ready marker:\n%s", out)
	}

	// The serial console through h1's API websocket, from h3.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	clusterConsoleEcho(ctx, t, h3.Client(t), clusterVMName, "echo CLUSTER-$((6*7))", "CLUSTER-42", "the console of the VM on h2 through h1, from h3")
	// The console went through h2's stream service, from h1's address on the underlay.
	opened := 0
	for _, line := range strings.Split(h2.Logs(t), "\n") {
		if strings.Contains(line, "stream opened") && strings.Contains(line, "vm=default/"+clusterVMName+" stream=console ") && strings.Contains(line, "remote="+h1.IP+":") {
			opened++
		}
	}
	if opened == 0 {
		t.Fatalf("h2's stream service logged no console stream of the VM opened from h1 (%s)", h1.IP)
	}

	// h3's credential against h2's VM.
	err := h3.NodeClient(t).PatchStatus(ctx, "virtualmachines", "default", clusterVMName, []byte(`{"status":{"phase":"Stopped"}}`), nil)
	if !client.IsForbidden(err) || !strings.Contains(err.Error(), "node h3") || !strings.Contains(err.Error(), `bound to node "h2"`) {
		t.Fatalf("h3's node credential patching the status of h2's VM: %v, want 403 naming node h3 and the binding to h2", err)
	}
	if got := vmGet(t, c.Serve(t), clusterVMName); got == nil || got.Status.Phase != v1alpha1.VMPhaseRunning {
		t.Fatalf("after the refused patch the VM is %+v", got)
	}
}

// clusterProbeVM is an AlwaysOff VM object used to exercise the API (it never runs).
func clusterProbeVM(name string) *v1alpha1.VirtualMachine {
	return &v1alpha1.VirtualMachine{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachine"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: name},
		Spec: v1alpha1.VirtualMachineSpec{RunPolicy: v1alpha1.RunPolicyAlwaysOff, CPU: v1alpha1.VirtualMachineCPU{Cores: 1},
			Memory: v1alpha1.VirtualMachineMemory{Size: "64Mi"}}}
}

// clusterAPIWorks creates, gets and lists through cl; it retries on 503 for up to settle
// (etcd electing a new leader), then every call must succeed.
func clusterAPIWorks(t *testing.T, cl *client.Client, name string, settle time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), settle+time.Minute)
	defer cancel()
	deadline := time.Now().Add(settle)
	for {
		err := cl.Create(ctx, "virtualmachines", "default", clusterProbeVM(name), nil)
		if err == nil {
			break
		}
		if client.Reason(err) != v1alpha1.ReasonServiceUnavailable || time.Now().After(deadline) {
			t.Fatalf("create %s: %v", name, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	var v v1alpha1.VirtualMachine
	if err := cl.Get(ctx, "virtualmachines", "default", name, &v); err != nil || v.Name != name {
		t.Fatalf("get %s: %v", name, err)
	}
	list, err := cl.List(ctx, "virtualmachines", "default", client.ListOptions{})
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	found := false
	for _, raw := range list.Items {
		found = found || strings.Contains(string(raw), `"name":"`+name+`"`)
	}
	if !found {
		t.Fatalf("list does not hold %s", name)
	}
}

// clusterWantUnavailable checks that a call fails with 503 naming the store, within limit.
func clusterWantUnavailable(t *testing.T, what string, limit time.Duration, call func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	err := call(ctx)
	took := time.Since(start)
	var apiErr *client.Error
	if !errors.As(err, &apiErr) || apiErr.Status.Code != http.StatusServiceUnavailable || apiErr.Status.Reason != v1alpha1.ReasonServiceUnavailable {
		t.Fatalf("%s without an etcd quorum: %v (after %s), want 503 ServiceUnavailable", what, err, took.Round(time.Millisecond))
	}
	if !strings.Contains(apiErr.Status.Message, "etcd") || !strings.Contains(apiErr.Status.Message, "unavailable") {
		t.Errorf("%s without an etcd quorum: message %q does not say that the etcd store is unavailable", what, apiErr.Status.Message)
	}
	if took > limit {
		t.Errorf("%s without an etcd quorum took %s to fail, want at most %s", what, took.Round(time.Millisecond), limit)
	}
	t.Logf("%s without an etcd quorum: 503 after %s: %s", what, took.Round(time.Millisecond), apiErr.Status.Message)
}

// TestClusterEtcdQuorum: with one of the three etcd members killed (kill -9) the API keeps
// working (create, get, list); with two killed it answers 503 naming the etcd store, within
// a few seconds; once they are back it recovers without a restart of serve, and the
// controllers run again. The VM on h2
// runs throughout, in the same QEMU process: QEMU never depends on etcd.
func TestClusterEtcdQuorum(t *testing.T) {
	clusterLane(t)
	c := sharedCluster(t)
	v := clusterVM(t, c)
	h1, h2 := c.Host("h1"), c.Host("h2")
	servePID := h1.PID()
	qemuPID := testutil.QEMUPIDs(h2.DataDir)[v.UID]
	if qemuPID == 0 {
		t.Fatalf("no QEMU of the VM on h2")
	}
	cl := h2.Client(t) // over the underlay, from another host
	t.Cleanup(func() {
		s := c.Serve(t)
		for _, n := range []string{"quorum-a", "quorum-b", "quorum-c"} {
			s.CLI("", "delete", "vm", n, "--ignore-not-found")
		}
	})

	// One member down: still a quorum.
	c.Etcd[0].Kill9(t)
	clusterAPIWorks(t, cl, "quorum-a", 15*time.Second)

	// Two down: no quorum. Requests made while the last member still believed in its leader
	// wait for the store's request timeout; once it knows there is none (an election
	// timeout later), every request fails at once.
	c.Etcd[1].Kill9(t)
	waitFor(t, "the last etcd member to lose its leader", func() bool {
		has, err := c.Etcd[2].HasLeader()
		return err == nil && !has
	})
	const limit = 6 * time.Second
	clusterWantUnavailable(t, "get", limit, func(ctx context.Context) error {
		return cl.Get(ctx, "virtualmachines", "default", "quorum-a", nil)
	})
	clusterWantUnavailable(t, "list", limit, func(ctx context.Context) error {
		_, err := cl.List(ctx, "virtualmachines", "default", client.ListOptions{})
		return err
	})
	clusterWantUnavailable(t, "create", limit, func(ctx context.Context) error {
		return cl.Create(ctx, "virtualmachines", "default", clusterProbeVM("quorum-b"), nil)
	})
	if r := h2.CLI(t, "", "get", "vm", clusterVMName); r.Code == 0 || !strings.Contains(r.Stderr, "etcd") {
		t.Errorf("rakhsh get vm without an etcd quorum: exit %d, stderr %q: want a failure naming etcd", r.Code, r.Stderr)
	}
	if !testutil.IsQEMUOf(qemuPID, v.UID) {
		t.Fatalf("the VM's QEMU (pid %d) ended while etcd had no quorum", qemuPID)
	}

	// Both back: the API recovers, serve was not restarted, the VM still runs in its QEMU.
	c.Etcd[0].Restart(t)
	c.Etcd[1].Restart(t)
	c.WaitEtcdHealthy(t)
	clusterAPIWorks(t, cl, "quorum-c", 30*time.Second)
	// The controllers run again (serve campaigned anew): the new VM gets its phase.
	vmWait(t, c.Serve(t), "quorum-c", time.Minute, "Stopped (set by the VM controller)", vmPhase(v1alpha1.VMPhaseStopped))
	if h1.PID() != servePID || !h1.Running() {
		t.Fatalf("serve on h1 was restarted (pid %d, was %d)", h1.PID(), servePID)
	}
	if !testutil.IsQEMUOf(qemuPID, v.UID) {
		t.Fatalf("the VM's QEMU (pid %d) ended", qemuPID)
	}
	if err := h2.waitNode(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	if got := vmGet(t, c.Serve(t), clusterVMName); got == nil || got.Status.Phase != v1alpha1.VMPhaseRunning || testutil.QEMUPIDs(h2.DataDir)[v.UID] != qemuPID {
		t.Fatalf("after etcd came back the VM is %+v (QEMU %d, was %d)", got, testutil.QEMUPIDs(h2.DataDir)[v.UID], qemuPID)
	}
}

// procState is the state letter of /proc/PID/stat (R, S, T, ...), "" when there is none.
func procState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	_, rest, ok := strings.Cut(string(b), ") ")
	if !ok || rest == "" {
		return ""
	}
	return rest[:1]
}

// TestClusterHarnessFailures checks the harness's ways of failing a host, which later tests
// rely on: a host whose link is down cannot reach the API server and can again once it is
// up; SIGSTOP and SIGCONT stop and continue its process; after kill -9 a restart brings a new
// process whose Node is Ready again with a fresh heartbeat.
func TestClusterHarnessFailures(t *testing.T) {
	clusterLane(t)
	c := sharedCluster(t)
	h3 := c.Host("h3")

	h3.LinkDown(t)
	if r := h3.CLI(t, "", "get", "nodes"); r.Code == 0 {
		t.Fatalf("the CLI on h3 reached the API server with h3's link down:\n%s", r.Stdout)
	}
	h3.LinkUp(t)
	h3.MustCLI(t, "", "get", "nodes")

	pid := h3.PID()
	h3.Pause(t)
	waitFor(t, "h3's agent to stop", func() bool { return procState(pid) == "T" })
	h3.Resume(t)
	waitFor(t, "h3's agent to continue", func() bool { s := procState(pid); return s != "T" && s != "" })

	h3.Kill9(t)
	if h3.Running() || syscall.Kill(pid, 0) == nil {
		t.Fatalf("h3's agent (pid %d) still runs after kill -9", pid)
	}
	start := time.Now()
	h3.Restart(t)
	var n v1alpha1.Node
	if err := c.Serve(t).Client().Get(ctxT(t), "nodes", "", "h3", &n); err != nil || n.Status.LastHeartbeatTime == nil || !n.Status.LastHeartbeatTime.After(start) {
		t.Fatalf("h3's Node after the restart: %v, heartbeat %v (restarted at %s)", err, n.Status.LastHeartbeatTime, start)
	}
	t.Logf("h3's agent restarted and heartbeat within %s", time.Since(start).Round(time.Millisecond))
	if h3.PID() == pid || !h3.Running() {
		t.Fatalf("after restart h3's agent has pid %d (was %d), running %v", h3.PID(), pid, h3.Running())
	}
	if out := h3.Exec(t, "ip", "-o", "addr", "show", "eth0"); !strings.Contains(out, h3.IP+"/24") {
		t.Fatalf("h3's eth0: %s", out)
	}

	// What a failed test leaves broken, Heal (run by sharedCluster) puts back.
	pid = h3.PID()
	h3.LinkDown(t)
	h3.Pause(t)
	c.Etcd[2].Kill9(t)
	c.Heal(t)
	if s := procState(pid); s == "T" || s == "" || h3.PID() != pid {
		t.Fatalf("after Heal h3's agent is in state %q (pid %d, was %d)", s, h3.PID(), pid)
	}
	if !c.Etcd[2].Running() {
		t.Fatal("after Heal etcd e3 does not run")
	}
	if err := c.Etcd[2].Healthy(); err != nil {
		t.Fatalf("after Heal: %v", err)
	}
	h3.MustCLI(t, "", "get", "nodes")
}
