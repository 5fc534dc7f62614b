package agent_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/agent"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// onNode pins a VM to a node by name.
func onNode(node string) func(*v1alpha1.VirtualMachine) {
	return func(v *v1alpha1.VirtualMachine) {
		v.Spec.Memory.Size = "64Mi"
		v.Spec.Affinity = &v1alpha1.VMAffinity{NodeAffinity: &v1alpha1.NodeAffinity{
			RequiredDuringSchedulingIgnoredDuringExecution: &v1alpha1.NodeSelectorTerms{NodeSelectorTerms: []v1alpha1.NodeSelectorTerm{{
				MatchFields: []v1alpha1.NodeSelectorRequirement{{Key: "metadata.name", Operator: v1alpha1.SelectorOpIn, Values: []string{node}}}}}}}}
	}
}

// TestAgentCachesOnlyItsNode: two agents on one control plane each cache only the VMs bound
// to their node. A VM that is stopped leaves its node's cache (it is released) but keeps its
// run directory; deleting it removes the directory, which the agent learns from the API.
func TestAgentCachesOnlyItsNode(t *testing.T) {
	guestImage(t) // QEMU must be usable
	e := newEnv(t)
	dir2, err := os.MkdirTemp("", "rk2")
	if err != nil {
		t.Fatal(err)
	}
	a2, err := agent.New(agent.Config{Client: e.c, NodeName: "node2", DataDir: dir2, Log: e.log,
		HeartbeatInterval: time.Second, GCInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = a2.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		killAll(t, dir2)
		_ = os.RemoveAll(dir2)
	})

	one := e.createVMWith("on-one", v1alpha1.RunPolicyAlwaysOnUnlessStoppedManually, onNode("node1"))
	two := e.createVMWith("on-two", v1alpha1.RunPolicyAlwaysOnUnlessStoppedManually, onNode("node2"))
	e.waitVM("on-one", 2*time.Minute, "Running on node1", func(v *v1alpha1.VirtualMachine) bool {
		return v.Status.Phase == v1alpha1.VMPhaseRunning && v.Status.NodeName == "node1"
	})
	e.waitVM("on-two", 2*time.Minute, "Running on node2", func(v *v1alpha1.VirtualMachine) bool {
		return v.Status.Phase == v1alpha1.VMPhaseRunning && v.Status.NodeName == "node2"
	})
	if got := a2.CachedVMs(); !slices.Equal(got, []runtime.Key{"default/on-two"}) {
		t.Fatalf("node2's agent caches %v, want only default/on-two", got)
	}
	if _, err := os.Stat(filepath.Join(dir2, "run", "vms", one.UID)); !os.IsNotExist(err) {
		t.Fatalf("node2 has a run directory for node1's VM: %v", err)
	}

	// Stopped: released (nodeName cleared), so it leaves node2's cache; its run directory,
	// which holds its firmware state, stays through several orphan sweeps (1 s apart).
	e.op("on-two", v1alpha1.VMOPTypeStop, true)
	e.waitVM("on-two", time.Minute, "Stopped and released", func(v *v1alpha1.VirtualMachine) bool {
		return v.Status.Phase == v1alpha1.VMPhaseStopped && v.Status.NodeName == ""
	})
	deadline := time.Now().Add(10 * time.Second)
	for len(a2.CachedVMs()) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("node2's agent still caches %v after the VM was released", a2.CachedVMs())
		}
		time.Sleep(100 * time.Millisecond)
	}
	runDir := filepath.Join(dir2, "run", "vms", two.UID)
	time.Sleep(3 * time.Second)
	if _, err := os.Stat(runDir); err != nil {
		t.Fatalf("the run directory of a stopped VM went: %v", err)
	}

	// Deleted: the sweep finds the VM gone from the API and removes the directory.
	if err := e.c.Delete(e.ctx(), "virtualmachines", "default", "on-two"); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(runDir); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the run directory of a deleted VM is still there: %s", runDir)
		}
		time.Sleep(200 * time.Millisecond)
	}
	e.op("on-one", v1alpha1.VMOPTypeStop, true)
	e.waitVM("on-one", time.Minute, "Stopped", phaseIs(v1alpha1.VMPhaseStopped))
}
