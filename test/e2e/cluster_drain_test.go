package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/testutil/apitest"
)

// drainWait is how long the evictions of the drain test may take: three guests under TCG,
// live-migrated or stopped and started again one after the other.
const drainWait = 10 * time.Minute

// TestNodeMaintenanceAndDrain, on the shared cluster:
//
//  1. maintenance on an empty h2: its Maintenance condition says Drained, a VM that may run
//     only on h2 is not placed there (its Scheduled message says "in maintenance"), h2's own
//     credential may not take it out of maintenance; maintenance off: the VM is placed on h2
//     and runs;
//  2. drain of h2 with three VMs (one live-migratable, one with liveMigrationPolicy Never
//     and runPolicy AlwaysOn, one with Never and runPolicy Manual): drain exits 0 with h2
//     cordoned and no running VM on it; the first runs on another node without having been
//     stopped, the second runs on another node, the third is stopped and bound to no node;
//     each VM has one Evict, Completed;
//  3. maintenance on h2 with a VM on it: the control plane evicts it (Maintenance=True
//     Draining, then Drained) and the VM runs elsewhere.
//
// Each part is a subtest that starts from an empty, schedulable h2 (so that a part that fails
// leaves the next one its chance); h2 is put back (uncordoned, out of maintenance) and the
// test's VMs deleted at the end.
func TestNodeMaintenanceAndDrain(t *testing.T) {
	c, s, img := clusterStart(t, sharedCluster)
	cl := s.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()

	vms := []string{"dr-pinned", "dr-live", "dr-never", "dr-manual", "dr-maint"}
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer ccancel()
		for _, n := range []string{"h1", "h2", "h3"} {
			if err := cl.Patch(cctx, "nodes", "", n, []byte(`{"spec":{"unschedulable":null,"maintenance":null}}`), nil); err != nil {
				t.Errorf("putting node %s back: %v", n, err)
			}
		}
		for _, n := range vms {
			if err := cl.DeleteWithGrace(cctx, "virtualmachines", "default", n, 0); err != nil && !client.IsNotFound(err) {
				t.Errorf("deleting VM %s: %v", n, err)
			}
		}
	})

	node := func(t *testing.T, name string) *v1alpha1.Node {
		t.Helper()
		var n v1alpha1.Node
		if err := cl.Get(ctx, "nodes", "", name, &n); err != nil {
			t.Fatal(err)
		}
		return &n
	}
	waitMaintenance := func(t *testing.T, reason string, timeout time.Duration) *v1alpha1.Condition {
		t.Helper()
		deadline := time.Now().Add(timeout)
		for {
			cnd := v1alpha1.FindCondition(node(t, "h2").Status.Conditions, v1alpha1.NodeConditionMaintenance)
			if cnd != nil && cnd.Status == v1alpha1.ConditionTrue && cnd.Reason == reason {
				return cnd
			}
			if reason == v1alpha1.NodeReasonDrained && cnd != nil && strings.Contains(cnd.Message, "cannot leave") {
				t.Fatalf("h2 will not drain: a VM cannot leave: %s", cnd.Message)
			}
			if time.Now().After(deadline) {
				t.Fatalf("h2's Maintenance condition is %+v, want True with reason %s, within %s", cnd, reason, timeout)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}

	// h2 must start each part empty: the VMs of earlier parts and runs of this test, and the
	// cluster tests' VM pinned to h2 (clusterVM makes it again when a test needs it), go.
	part := func(name string, f func(t *testing.T, s *Serve)) {
		t.Run(name, func(t *testing.T) {
			s := c.Serve(t)
			emptyH2(t, ctx, s, vms)
			f(t, s)
		})
	}

	part("MaintenanceOnEmptyNode", func(t *testing.T, s *Serve) {
		if out := s.MustCLI("", "node", "maintenance", "on", "h2"); !strings.Contains(out, "node/h2 in maintenance") {
			t.Fatalf("maintenance on: %q", out)
		}
		if n := node(t, "h2"); !n.Spec.Maintenance || n.Spec.Unschedulable {
			t.Fatalf("h2's spec after maintenance on: %+v", n.Spec)
		}
		cnd := waitMaintenance(t, v1alpha1.NodeReasonDrained, time.Minute)
		if !strings.Contains(cnd.Message, "takes no new VMs") {
			t.Errorf("Maintenance message %q", cnd.Message)
		}
		if r := s.CLI("", "wait", "node", "h2", "--for", "condition=Maintenance", "--timeout", "30s"); r.Code != 0 {
			t.Errorf("rakhsh wait node h2 --for condition=Maintenance: %d %s", r.Code, r.Stderr)
		}
		drainVM(t, s, img, "dr-pinned", "AlwaysOn", "", "nodeSelector: {kubernetes.io/hostname: h2}")
		v := vmWait(t, s, "dr-pinned", time.Minute, "refused by the scheduler for maintenance", func(v *v1alpha1.VirtualMachine) bool {
			if v == nil {
				return false
			}
			sc := v1alpha1.FindCondition(v.Status.Conditions, "Scheduled")
			return sc != nil && sc.Status == v1alpha1.ConditionFalse && strings.Contains(sc.Message, "1 in maintenance")
		})
		if v.Status.NodeName != "" {
			t.Fatalf("a VM was placed on h2 in maintenance: %+v", v.Status)
		}
		err := c.Host("h2").NodeClient(t).Patch(ctx, "nodes", "", "h2", []byte(`{"spec":{"maintenance":null}}`), nil)
		if !client.IsForbidden(err) || !strings.Contains(err.Error(), "may not change the spec") {
			t.Fatalf("h2's node credential taking h2 out of maintenance: %v, want 403", err)
		}
		if out := s.MustCLI("", "node", "maintenance", "off", "h2"); !strings.Contains(out, "node/h2 out of maintenance") {
			t.Fatalf("maintenance off: %q", out)
		}
		if n := node(t, "h2"); n.Spec.Maintenance {
			t.Fatalf("h2 after maintenance off: %+v", n.Spec)
		}
		if !waitNoMaintenance(t, ctx, cl) {
			t.Fatalf("h2 keeps its Maintenance condition after maintenance off")
		}
		vmWait(t, s, "dr-pinned", vmBootTimeout, "Running on h2 once maintenance is off", clusterRunningOn("h2"))
	})

	part("DrainThreeVMs", func(t *testing.T, s *Serve) {
		// They land on h2 while h1 and h3 are cordoned.
		for _, n := range []string{"h1", "h3"} {
			s.MustCLI("", "node", "cordon", n)
		}
		drainVM(t, s, img, "dr-live", "AlwaysOn", "PreferSafe", "")
		drainVM(t, s, img, "dr-never", "AlwaysOn", "Never", "")
		drainVM(t, s, img, "dr-manual", "Manual", "Never", "")
		s.MustCLI("", "vm", "start", "dr-manual") // runPolicy Manual: created Stopped
		uids := map[string]string{}
		for _, n := range []string{"dr-live", "dr-never", "dr-manual"} {
			v := vmWait(t, s, n, vmBootTimeout, "Running on h2", clusterRunningOn("h2"))
			uids[n] = v.UID
		}
		vmWaitSerial(t, s, "dr-live", "RAKHSH-GUEST: ready", 1)
		for _, n := range []string{"h1", "h3"} {
			s.MustCLI("", "node", "uncordon", n)
		}

		r := drainCLI(t, s, "node", "drain", "h2", "--timeout", drainWait.String())
		t.Logf("rakhsh node drain h2 (exit %d):\n%s%s", r.Code, r.Stdout, r.Stderr)
		if r.Code != 0 {
			t.Fatalf("drain of h2 failed (exit %d): %s", r.Code, r.Stderr)
		}
		for _, want := range []string{"node/h2 cordoned", "default/dr-live\toperation dr-live-evict-", "node/h2 drained: no running VM is bound to it"} {
			if !strings.Contains(r.Stdout, want) {
				t.Errorf("drain output lacks %q", want)
			}
		}
		if n := node(t, "h2"); !n.Spec.Unschedulable {
			t.Errorf("h2 is not cordoned after the drain: %+v", n.Spec)
		}
		l, err := cl.List(ctx, "virtualmachines", "", client.ListOptions{FieldSelector: "status.nodeName=h2"})
		if err != nil {
			t.Fatal(err)
		}
		for _, raw := range l.Items {
			var v v1alpha1.VirtualMachine
			_ = json.Unmarshal(raw, &v)
			if v.Status.Phase != v1alpha1.VMPhaseStopped {
				t.Errorf("VM %s/%s still runs on h2 after the drain (%s)", v.Namespace, v.Name, v.Status.Phase)
			}
		}
		// Each VM went where its policies say.
		live := vmWait(t, s, "dr-live", vmBootTimeout, "Running on another node", func(v *v1alpha1.VirtualMachine) bool {
			return v != nil && v.Status.Phase == v1alpha1.VMPhaseRunning && v.Status.NodeName != "" && v.Status.NodeName != "h2"
		})
		if live.UID != uids["dr-live"] {
			t.Errorf("dr-live is another object after the drain")
		}
		if ms := live.Status.MigrationState; ms == nil || ms.Source.Node != "h2" || ms.Target.Node != live.Status.NodeName || ms.Result != v1alpha1.MigrationResultSucceeded {
			t.Errorf("dr-live's migrationState after the drain: %+v, want a successful migration from h2 to %s", ms, live.Status.NodeName)
		}
		vmWait(t, s, "dr-never", vmBootTimeout, "Running on another node (stopped and started again, policy Never)", func(v *v1alpha1.VirtualMachine) bool {
			return v != nil && v.Status.Phase == v1alpha1.VMPhaseRunning && v.Status.NodeName != "" && v.Status.NodeName != "h2"
		})
		vmWait(t, s, "dr-manual", time.Minute, "Stopped and unbound (policy Never, runPolicy Manual)", func(v *v1alpha1.VirtualMachine) bool {
			return v != nil && v.Status.Phase == v1alpha1.VMPhaseStopped && v.Status.NodeName == ""
		})
		// The drain ends when no running VM is bound to h2; an Evict operation is marked
		// done by the migration controller a moment after its VM has left, so wait for that.
		ops := drainOpsSettled(t, ctx, cl, "dr-live", "dr-never", "dr-manual")
		for _, n := range []string{"dr-live", "dr-never", "dr-manual"} {
			if len(ops[n]) != 1 || ops[n][0].Status.Phase != v1alpha1.VMOPPhaseCompleted {
				t.Errorf("Evict operations of %s: %+v, want one, Completed", n, ops[n])
			}
		}
	})

	part("MaintenanceEvictsVM", func(t *testing.T, s *Serve) {
		for _, n := range []string{"h1", "h3"} {
			s.MustCLI("", "node", "cordon", n)
		}
		drainVM(t, s, img, "dr-maint", "AlwaysOn", "PreferSafe", "")
		vmWait(t, s, "dr-maint", vmBootTimeout, "Running on h2", clusterRunningOn("h2"))
		for _, n := range []string{"h1", "h3"} {
			s.MustCLI("", "node", "uncordon", n)
		}
		s.MustCLI("", "node", "maintenance", "on", "h2")
		cnd := waitMaintenance(t, v1alpha1.NodeReasonDraining, time.Minute)
		if !strings.Contains(cnd.Message, "default/dr-maint (") {
			t.Errorf("the Draining message does not name the VM: %q", cnd.Message)
		}
		_ = waitMaintenance(t, v1alpha1.NodeReasonDrained, drainWait)
		v := vmWait(t, s, "dr-maint", vmBootTimeout, "Running on another node", func(v *v1alpha1.VirtualMachine) bool {
			return v != nil && v.Status.Phase == v1alpha1.VMPhaseRunning && v.Status.NodeName != "" && v.Status.NodeName != "h2"
		})
		ops := drainOps(t, ctx, cl)
		if len(ops["dr-maint"]) != 1 || ops["dr-maint"][0].Labels["virtualization.rakhsh.io/evicted-by"] != "maintenance" {
			t.Errorf("Evict operations of dr-maint: %+v, want one, made by the maintenance controller", ops["dr-maint"])
		}
		s.MustCLI("", "node", "maintenance", "off", "h2")
		if !waitNoMaintenance(t, ctx, cl) {
			t.Errorf("h2 keeps its Maintenance condition after maintenance off")
		}
		if got := vmGet(t, s, "dr-maint"); got == nil || got.Status.NodeName != v.Status.NodeName {
			t.Errorf("dr-maint moved after maintenance off: %+v", got)
		}
	})
}

// drainVM creates a VM of the test guest (no disk) with the given policies and extra spec
// lines.
func drainVM(t *testing.T, s *Serve, img, name, runPolicy, migration, extra string) {
	t.Helper()
	m := clusterVMManifest{Name: name, RunPolicy: runPolicy, Image: img}
	if migration != "" {
		m.Spec = append(m.Spec, "liveMigrationPolicy: "+migration)
	}
	if extra != "" {
		m.Spec = append(m.Spec, extra)
	}
	clusterApply(s, m.YAML())
}

// drainCLI runs the CLI against s with room for a long drain (the common helper stops the
// CLI after 2 minutes).
func drainCLI(t *testing.T, s *Serve, args ...string) CLIResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), drainWait+time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, rakhshBin(t), args...)
	cmd.Env = append(os.Environ(), "RAKHSH_SERVER="+s.Server(), "RAKHSH_TOKEN=")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("running rakhsh %v: %v", args, err)
		}
		code = ee.ExitCode()
	}
	return CLIResult{Stdout: out.String(), Stderr: errb.String(), Code: code}
}

// drainOps returns the Evict operations of the default project by VM.
func drainOps(t *testing.T, ctx context.Context, cl *client.Client) map[string][]v1alpha1.VirtualMachineOperation {
	t.Helper()
	l, err := cl.List(ctx, "virtualmachineoperations", "default", client.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return apitest.EvictOps(t, l)
}

// drainOpsSettled waits up to a minute until each named VM's Evict operations have all
// reached a final phase, and returns them as drainOps does (unsettled ones after a minute).
func drainOpsSettled(t *testing.T, ctx context.Context, cl *client.Client, vms ...string) map[string][]v1alpha1.VirtualMachineOperation {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		ops := drainOps(t, ctx, cl)
		settled := true
		for _, vm := range vms {
			for _, op := range ops[vm] {
				switch op.Status.Phase {
				case v1alpha1.VMOPPhaseCompleted, v1alpha1.VMOPPhaseFailed, v1alpha1.VMOPPhaseSuperseded:
				default:
					settled = false
				}
			}
		}
		if settled || time.Now().After(deadline) {
			return ops
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitNoMaintenance waits until h2 has no Maintenance condition; it reports whether it
// went within a minute.
func waitNoMaintenance(t *testing.T, ctx context.Context, cl *client.Client) bool {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		var n v1alpha1.Node
		if err := cl.Get(ctx, "nodes", "", "h2", &n); err != nil {
			t.Fatal(err)
		}
		if v1alpha1.FindCondition(n.Status.Conditions, v1alpha1.NodeConditionMaintenance) == nil {
			return true
		}
		time.Sleep(200 * time.Millisecond)
	}
	return false
}

// emptyH2 deletes the VMs bound to h2 and the test's own VMs and Evict operations of an
// earlier part or run, waits until they are gone, and makes every node schedulable and h2
// not in maintenance.
func emptyH2(t *testing.T, ctx context.Context, s *Serve, own []string) {
	t.Helper()
	cl := s.Client()
	names := map[string]bool{}
	for _, n := range own {
		names[n] = true
	}
	l, err := cl.ListAll(ctx, "virtualmachines", "", client.ListOptions{FieldSelector: "status.nodeName=h2"})
	if err != nil {
		t.Fatal(err)
	}
	for _, raw := range l.Items {
		var v v1alpha1.VirtualMachine
		if err := json.Unmarshal(raw, &v); err != nil {
			t.Fatal(err)
		}
		if v.Namespace != "default" {
			t.Fatalf("VM %s/%s runs on h2: the drain test needs h2 to itself", v.Namespace, v.Name)
		}
		t.Logf("deleting VM %s, bound to h2, so that the drain test starts from an empty h2", v.Name)
		names[v.Name] = true
	}
	for n := range names {
		deleteVMWait(t, ctx, s, n)
	}
	for vm, ops := range drainOps(t, ctx, cl) {
		if !names[vm] {
			continue
		}
		for _, op := range ops {
			if err := cl.Delete(ctx, "virtualmachineoperations", "default", op.Name); err != nil && !client.IsNotFound(err) {
				t.Fatal(err)
			}
		}
	}
	for _, n := range []string{"h1", "h2", "h3"} {
		if err := cl.Patch(ctx, "nodes", "", n, []byte(`{"spec":{"unschedulable":null,"maintenance":null}}`), nil); err != nil {
			t.Fatal(err)
		}
	}
	if !waitNoMaintenance(t, ctx, cl) {
		t.Fatalf("h2 keeps its Maintenance condition after maintenance off")
	}
}

// deleteVMWait deletes a VM at once (no grace period) and waits until it is gone.
func deleteVMWait(t *testing.T, ctx context.Context, s *Serve, name string) {
	t.Helper()
	if err := s.Client().DeleteWithGrace(ctx, "virtualmachines", "default", name, 0); err != nil {
		if client.IsNotFound(err) {
			return
		}
		t.Fatal(err)
	}
	vmWait(t, s, name, 2*time.Minute, "deleted", func(v *v1alpha1.VirtualMachine) bool { return v == nil })
}
