package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	nodectl "github.com/rakhsh/rakhsh/internal/controller/node"
)

// migrationSide stands in for the control plane's side of Evict operations in the drain
// tests: each new Evict goes InProgress with a progress and a migrationState, stays there a
// few rounds (so that evictions overlap), then moves its VM to node "to" and completes,
// or fails with the reason fail names for its VM. It records the most operations it saw
// under way at once.
type migrationSide struct {
	t    *testing.T
	c    *client.Client
	to   string
	fail map[string]string // VM name → reason of failure

	mu        sync.Mutex
	maxActive int
	rounds    map[string]int
}

func (m *migrationSide) run(ctx context.Context) {
	m.rounds = map[string]int{}
	for ctx.Err() == nil {
		m.round(ctx)
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (m *migrationSide) round(ctx context.Context) {
	l, err := m.c.ListAll(ctx, "virtualmachineoperations", "", client.ListOptions{})
	if err != nil {
		return
	}
	ops, err := decodeTyped[v1alpha1.VirtualMachineOperation](l)
	if err != nil {
		m.t.Error(err)
		return
	}
	active := 0
	for _, op := range ops {
		if op.Status.Phase == "" || op.Status.Phase == v1alpha1.VMOPPhaseInProgress {
			active++
		}
	}
	m.mu.Lock()
	m.maxActive = max(m.maxActive, active)
	m.mu.Unlock()
	for _, op := range ops {
		if op.Spec.Type != v1alpha1.VMOPTypeEvict {
			continue
		}
		vm := op.Spec.VirtualMachineName
		patchOp := func(phase v1alpha1.VMOPPhase, progress, reason, msg string) {
			st := map[string]any{"phase": phase, "progress": progress}
			if reason != "" {
				st["conditions"] = []any{map[string]any{"type": "Completed", "status": "True", "reason": reason, "message": msg,
					"lastTransitionTime": time.Now().UTC().Format(time.RFC3339)}}
			}
			b, _ := json.Marshal(map[string]any{"status": st})
			if err := m.c.PatchStatus(ctx, "virtualmachineoperations", op.Namespace, op.Name, b, nil); err != nil && ctx.Err() == nil {
				m.t.Errorf("patching operation %s: %v", op.Name, err)
			}
		}
		switch op.Status.Phase {
		case "":
			patchOp(v1alpha1.VMOPPhaseInProgress, "10%", "", "")
			b := fmt.Sprintf(`{"status":{"phase":"Migrating","migrationState":{"source":{"node":"h2"},"target":{"node":%q}}}}`, m.to)
			if err := m.c.PatchStatus(ctx, "virtualmachines", op.Namespace, vm, []byte(b), nil); err != nil && ctx.Err() == nil {
				m.t.Errorf("patching VM %s: %v", vm, err)
			}
		case v1alpha1.VMOPPhaseInProgress:
			m.rounds[op.Name]++
			if m.rounds[op.Name] < 5 {
				continue
			}
			if r := m.fail[vm]; r != "" {
				if err := m.c.PatchStatus(ctx, "virtualmachines", op.Namespace, vm, []byte(`{"status":{"phase":"Running","migrationState":null}}`), nil); err != nil && ctx.Err() == nil {
					m.t.Errorf("patching VM %s: %v", vm, err)
				}
				patchOp(v1alpha1.VMOPPhaseFailed, "", r, "the VM "+vm+" cannot leave its node")
				continue
			}
			b := fmt.Sprintf(`{"status":{"phase":"Running","nodeName":%q,"migrationState":null}}`, m.to)
			if err := m.c.PatchStatus(ctx, "virtualmachines", op.Namespace, vm, []byte(b), nil); err != nil && ctx.Err() == nil {
				m.t.Errorf("moving VM %s: %v", vm, err)
			}
			patchOp(v1alpha1.VMOPPhaseCompleted, "100%", v1alpha1.VMOPReasonOperationCompleted, "migrated")
		}
	}
}

// createVM makes a stopped VM of the default project with the given disks.
func (e *apiEnv) createVM(name string, disks ...string) {
	e.t.Helper()
	spec := map[string]any{"runPolicy": "Manual", "cpu": map[string]any{"cores": 1}, "memory": map[string]any{"size": "128Mi"}}
	var bd []any
	for _, r := range disks {
		bd = append(bd, map[string]any{"kind": "VirtualDisk", "name": r})
	}
	if bd != nil {
		spec["blockDeviceRefs"] = bd
	}
	e.must(e.c.Create(e.ctx, "virtualmachines", "default", map[string]any{"kind": "VirtualMachine", "metadata": map[string]any{"name": name}, "spec": spec}, nil))
}

// runningVM makes a VM that runs on node.
func (e *apiEnv) runningVM(name, node string) {
	e.t.Helper()
	e.createVM(name)
	e.must(e.c.Bind(e.ctx, "default", name, &v1alpha1.VirtualMachineBinding{NodeName: node}, nil))
	e.patchStatus("virtualmachines", name, `{"phase":"Running"}`)
}

// evictedBefore makes an Evict operation named name of the VM vm on node h2.
func (e *apiEnv) evictedBefore(vm, name, by string) {
	e.t.Helper()
	op := nodectl.NewEvictOp("default", vm, "h2", by)
	op.GenerateName, op.Name = "", name
	e.must(e.c.Create(e.ctx, "virtualmachineoperations", "default", op, nil))
}

// startMigrationSide plays the control plane's side of the Evicts (see migrationSide) until
// the test ends.
func (e *apiEnv) startMigrationSide(to string, fail map[string]string) *migrationSide {
	side := &migrationSide{t: e.t, c: e.c, to: to, fail: fail}
	sctx, scancel := context.WithCancel(e.ctx)
	sideDone := make(chan struct{})
	go func() { defer close(sideDone); side.run(sctx) }()
	e.t.Cleanup(func() { scancel(); <-sideDone })
	return side
}

// TestNodeDrain drives `rakhsh node drain` against a real API server with the migration side
// played by the test: drain cordons the node, evicts its running VMs at most --parallel at a
// time, one Evict per VM (none beside one an operator made), prints each VM's progress and
// where it went, leaves stopped VMs alone (naming one pinned by a Local disk), and exits
// non-zero naming a VM that cannot leave with the reason; once that VM is stopped, drain ends
// with the node drained.
func TestNodeDrain(t *testing.T) {
	e := newAPIEnv(t, 60*time.Second, "h1", "h2")
	ctx, c, run := e.ctx, e.c, e.run
	for _, name := range []string{"a", "b", "c", "d", "x"} {
		e.runningVM(name, "h2")
	}
	e.runningVM("elsewhere", "h1")
	// A stopped VM whose Local disk is on h2.
	e.must(c.Create(ctx, "virtualdisks", "default", map[string]any{"kind": "VirtualDisk", "metadata": map[string]any{"name": "off-root"},
		"spec": map[string]any{"persistentVolumeClaim": map[string]any{"size": "1Gi"}}}, nil))
	e.patchStatus("virtualdisks", "off-root", `{"nodeName":"h2","phase":"Ready"}`)
	e.createVM("off", "off-root")
	e.patchStatus("virtualmachines", "off", `{"phase":"Stopped"}`)
	// An operator already evicts c.
	e.evictedBefore("c", "c-by-hand", "hand")

	// Bad input first.
	if _, errOut, code := run("node", "drain", "nope"); code == 0 || !strings.Contains(errOut, "not found") {
		t.Fatalf("drain of a missing node: %d %q", code, errOut)
	}
	if _, errOut, code := run("node", "drain", "h2", "--parallel", "0"); code == 0 || !strings.Contains(errOut, "--parallel 0") {
		t.Fatalf("drain --parallel 0: %d %q", code, errOut)
	}

	side := e.startMigrationSide("h1", map[string]string{"x": v1alpha1.VMOPReasonNotApplicableForLiveMigrationPolicy})

	out, errOut, code := run("node", "drain", "h2", "--parallel", "2", "--poll-interval", "10ms")
	t.Logf("drain output:\n%s\nstderr: %s", out, errOut)
	if code == 0 {
		t.Fatalf("drain with a VM that cannot leave exited 0")
	}
	if !strings.Contains(errOut, "VM default/x cannot leave: operation x-evict-") || !strings.Contains(errOut, "NotApplicableForLiveMigrationPolicy") {
		t.Fatalf("drain's error does not name x and the reason: %q", errOut)
	}
	for _, want := range []string{
		"node/h2 cordoned",
		"default/off\tstopped; left in place: its Local disk(s) off-root are on node h2",
		"default/a\tleft node h2: Running on h1",
		"default/b\tleft node h2: Running on h1",
		"default/c\tleft node h2: Running on h1",
		"default/d\tleft node h2: Running on h1",
		"default/c\toperation c-by-hand\t",
		"\tInProgress\t10%\tvm Migrating\th2 -> h1\n",
		"queued: waiting for a free slot",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("drain output lacks %q", want)
		}
	}
	if strings.Contains(out, "default/elsewhere") {
		t.Errorf("drain touched a VM of another node")
	}
	side.mu.Lock()
	maxActive := side.maxActive
	side.mu.Unlock()
	if maxActive > 2 || maxActive < 2 {
		t.Errorf("at most %d evictions were under way at once, want exactly the limit 2", maxActive)
	}
	var n v1alpha1.Node
	if err := c.Get(ctx, "nodes", "", "h2", &n); err != nil || !n.Spec.Unschedulable {
		t.Fatalf("h2 after drain: %+v %v", n.Spec, err)
	}
	l, err := c.ListAll(ctx, "virtualmachineoperations", "", client.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ops, _ := decodeTyped[v1alpha1.VirtualMachineOperation](l)
	perVM := map[string]int{}
	for _, op := range ops {
		perVM[op.Spec.VirtualMachineName]++
		if op.Spec.VirtualMachineName != "c" && (op.Labels[nodectl.LabelEvictNode] != "h2" || op.Labels[nodectl.LabelEvictBy] != nodectl.EvictByDrain) {
			t.Errorf("operation %s labels %v", op.Name, op.Labels)
		}
	}
	for _, vm := range []string{"a", "b", "c", "d", "x"} {
		if perVM[vm] != 1 {
			t.Errorf("%d Evict operations of %s, want 1", perVM[vm], vm)
		}
	}
	if perVM["elsewhere"]+perVM["off"] != 0 {
		t.Errorf("Evicts of VMs that are not running on h2: %v", perVM)
	}

	// The operator stops x; drain now ends with the node empty, without a new Evict of x
	// (its failure in the earlier run is not retried: it is not running).
	e.patchStatus("virtualmachines", "x", `{"phase":"Stopped","nodeName":null}`)
	out, errOut, code = run("node", "drain", "h2", "--poll-interval", "10ms")
	if code != 0 || !strings.Contains(out, "node/h2 already cordoned") || !strings.Contains(out, "node/h2 drained: no running VM is bound to it") {
		t.Fatalf("second drain: %d %q %q", code, out, errOut)
	}
}

// TestNodeDrainRetryAndTimeout: an Evict of a VM that failed in an earlier drain is tried
// again by a new drain; a drain that cannot finish in --timeout says so and names what is
// left.
func TestNodeDrainRetryAndTimeout(t *testing.T) {
	e := newAPIEnv(t, 60*time.Second, "h2")
	ctx, c, run := e.ctx, e.c, e.run
	e.runningVM("a", "h2")
	// An Evict of a that failed before this drain.
	e.evictedBefore("a", "a-old", nodectl.EvictByDrain)
	e.patchStatus("virtualmachineoperations", "a-old", `{"phase":"Failed","conditions":[{"type":"Completed","status":"True","reason":"NotImplemented","message":"not yet"}]}`)
	// Nobody carries out the new Evict: the drain times out.
	out, errOut, code := run("node", "drain", "h2", "--timeout", "300ms", "--poll-interval", "10ms")
	if code == 0 || !strings.Contains(errOut, "draining node h2: timed out (--timeout)") || !strings.Contains(errOut, "default/a (evicting: operation a-evict-") {
		t.Fatalf("drain that cannot finish: %d %q %q", code, out, errOut)
	}
	// --wait=false: the Evict under way is not doubled, and drain returns at once.
	out, errOut, code = run("node", "drain", "h2", "--wait=false")
	if code != 0 || !strings.Contains(out, "1 VM(s) still run on it; evictions under way: 1") {
		t.Fatalf("drain --wait=false: %d %q %q", code, out, errOut)
	}
	l, err := c.ListAll(ctx, "virtualmachineoperations", "", client.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Items) != 2 {
		t.Fatalf("%d operations, want the old one and one new Evict", len(l.Items))
	}
}

// TestNodeMaintenanceCommand: maintenance on sets spec.maintenance, off clears it; a wrong
// mode or a missing node is an error that says so.
func TestNodeMaintenanceCommand(t *testing.T) {
	e := newAPIEnv(t, 30*time.Second, "h2")
	ctx, c, run := e.ctx, e.c, e.run
	if out, errOut, code := run("node", "maintenance", "on", "h2"); code != 0 || !strings.Contains(out, "node/h2 in maintenance") {
		t.Fatalf("maintenance on: %d %q %q", code, out, errOut)
	}
	var n v1alpha1.Node
	if err := c.Get(ctx, "nodes", "", "h2", &n); err != nil || !n.Spec.Maintenance || n.Spec.Unschedulable {
		t.Fatalf("h2 after maintenance on: %+v %v", n.Spec, err)
	}
	if out, _, code := run("node", "describe", "h2"); code != 0 || !strings.Contains(strings.ToLower(out), "maintenance") {
		t.Fatalf("describe of a node in maintenance: %d %q", code, out)
	}
	if out, errOut, code := run("node", "maintenance", "off", "h2"); code != 0 || !strings.Contains(out, "node/h2 out of maintenance") {
		t.Fatalf("maintenance off: %d %q %q", code, out, errOut)
	}
	n = v1alpha1.Node{}
	if err := c.Get(ctx, "nodes", "", "h2", &n); err != nil || n.Spec.Maintenance {
		t.Fatalf("h2 after maintenance off: %+v %v", n.Spec, err)
	}
	if _, errOut, code := run("node", "maintenance", "maybe", "h2"); code == 0 || !strings.Contains(errOut, `unknown maintenance mode "maybe": use on or off`) {
		t.Fatalf("maintenance maybe: %d %q", code, errOut)
	}
	if _, errOut, code := run("node", "maintenance", "on"); code == 0 || !strings.Contains(errOut, "give on or off and at least one node") {
		t.Fatalf("maintenance without a node: %d %q", code, errOut)
	}
	if _, errOut, code := run("node", "maintenance", "on", "nope"); code == 0 || !strings.Contains(errOut, "not found") {
		t.Fatalf("maintenance on a missing node: %d %q", code, errOut)
	}
	if _, errOut, code := run("wait", "node", "h2", "--for", "condition=Maintenance", "--timeout", "100ms"); code == 0 || strings.Contains(errOut, "condition type") {
		t.Fatalf("wait for condition Maintenance must be accepted (and time out here): %d %q", code, errOut)
	}
}

// TestNodeDrainRidesOutUnavailable: while the API answers 503 (a control plane failing
// over), drain says so once and goes on; it ends drained once the API is back.
func TestNodeDrainRidesOutUnavailable(t *testing.T) {
	e := newAPIEnv(t, 60*time.Second, "h2", "h1")
	ctx, server := e.ctx, e.server
	e.runningVM("a", "h2")
	// A front that answers 503 to the first lists of operations.
	sock := strings.TrimPrefix(server, "unix://")
	back := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) { r.Out.URL.Scheme, r.Out.URL.Host = "http", "api" },
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}},
	}
	var mu sync.Mutex
	refused := 0
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		refuse := r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/virtualmachineoperations") && refused < 5
		if refuse {
			refused++
		}
		mu.Unlock()
		if refuse {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(`{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"ServiceUnavailable","message":"the store has no leader","code":503}`))
			return
		}
		back.ServeHTTP(w, r)
	}))
	defer front.Close()

	e.startMigrationSide("h1", nil)

	out, errOut, code := runCLI(t, ctx, front.URL, "", "node", "drain", "h2", "--poll-interval", "10ms")
	if code != 0 || !strings.Contains(out, "node/h2\treading the VMs and operations: the store has no leader; trying again") ||
		strings.Count(out, "trying again") != 1 || !strings.Contains(out, "node/h2 drained") {
		t.Fatalf("drain through a 503: %d %q %q", code, out, errOut)
	}
	mu.Lock()
	defer mu.Unlock()
	if refused != 5 {
		t.Fatalf("%d lists refused, want 5", refused)
	}
}
