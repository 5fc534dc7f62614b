package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/testutil"
)

// classGet reads a class.
func classGet(t *testing.T, s *Serve, name string) *v1alpha1.VirtualMachineClass {
	t.Helper()
	var c v1alpha1.VirtualMachineClass
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Client().Get(ctx, "virtualmachineclasses", "", name, &c); err != nil {
		t.Fatalf("getting class %s: %v", name, err)
	}
	return &c
}

// classWait polls the class until cond holds.
func classWait(t *testing.T, s *Serve, name, what string, cond func(c *v1alpha1.VirtualMachineClass) bool) *v1alpha1.VirtualMachineClass {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	var c *v1alpha1.VirtualMachineClass
	for time.Now().Before(deadline) {
		var cl v1alpha1.VirtualMachineClass
		if err := s.Client().Get(context.Background(), "virtualmachineclasses", "", name, &cl); err == nil {
			c = &cl
			if cond(c) {
				return c
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	b, _ := json.MarshalIndent(c, "", "  ")
	t.Fatalf("class %s not %s within a minute; last seen:\n%s", name, what, b)
	return nil
}

// classVM is a VM without disks (the admission and scheduling tests never boot it).
func classVM(name, class, cores, fraction, memory, policy string, extra ...string) string {
	m := "apiVersion: virtualization.rakhsh.io/v1alpha1\nkind: VirtualMachine\nmetadata: {name: " + name + "}\nspec:\n  runPolicy: " + policy + "\n"
	if class != "" {
		m += "  virtualMachineClassName: " + class + "\n"
	}
	m += "  cpu: {cores: " + cores
	if fraction != "" {
		m += ", coreFraction: \"" + fraction + "\""
	}
	m += "}\n  memory: {size: " + memory + "}\n"
	for _, e := range extra {
		m += e + "\n"
	}
	return m
}

// wantRejected applies m, expects a failure, and checks that stderr has every want.
func wantRejected(t *testing.T, s *Serve, what, m string, want ...string) string {
	t.Helper()
	r := s.CLI(m, "apply", "-f", "-")
	if r.Code == 0 {
		t.Fatalf("%s: applied, want a rejection; stdout %s", what, r.Stdout)
	}
	for _, w := range want {
		if !strings.Contains(r.Stderr, w) {
			t.Errorf("%s: the error lacks %q:\n%s", what, w, r.Stderr)
		}
	}
	return r.Stderr
}

// TestClassSizingAdmission: the operator's guide manifest applies, class rules are
// validated, every broken sizing rule of a VM is reported in one error, the generic class
// exists, a default class is given to VMs without one, and a class edit that puts a VM out
// of policy marks it and refuses spec edits that do not fix it.
func TestClassSizingAdmission(t *testing.T) {
	s := StartServe(t, "--no-agent")

	// The class "generic" is created at start-up.
	g := classWait(t, s, "generic", "created", func(c *v1alpha1.VirtualMachineClass) bool { return c != nil })
	if g.Spec.CPU.Type != v1alpha1.CPUTypeModel || g.Spec.CPU.Model != "Nehalem" {
		t.Fatalf("generic class cpu = %+v, want Model Nehalem", g.Spec.CPU)
	}

	out := s.MustCLI("", "apply", "-f", "testdata/deckhouse-class.yaml")
	if !strings.Contains(out, "virtualmachineclass/discovery created") {
		t.Fatalf("apply: %s", out)
	}

	// Class validation: overlapping core ranges; defaultCoreFraction not listed.
	wantRejected(t, s, "overlapping policies", classDoc("overlap", "Nehalem", "cores: {min: 1, max: 4}", "cores: {min: 4, max: 8}"),
		"spec.sizingPolicies[1].cores", "overlaps the range 1-4 of spec.sizingPolicies[0]")
	wantRejected(t, s, "unlisted default fraction", classDoc("badfraction", "Nehalem", "cores: {min: 1, max: 4}\ncoreFractions: [10, 50]\ndefaultCoreFraction: \"20%\""),
		"spec.sizingPolicies[0].defaultCoreFraction", "must be one of the policy's coreFractions")

	// A VM within the discovery class's first policy is admitted.
	s.MustCLI(classVM("ok1", "discovery", "2", "20%", "1536Mi", "AlwaysOff"), "apply", "-f", "-")

	// Every broken rule at once: 5 cores (policy 5-8) with 4Gi (min 5Gi), 10% (20/50/100)
	// and dedicated cores (only false).
	stderr := wantRejected(t, s, "several rules", classVM("bad1", "discovery", "5", "10%", "4Gi", "AlwaysOff"),
		"spec.memory.size", "needs at least 5Gi of memory",
		"spec.cpu.coreFraction", "allows the core fractions 20%, 50%, 100%")
	t.Logf("rejection: %s", stderr)
	m := strings.Replace(classVM("bad2", "discovery", "5", "10%", "4Gi", "AlwaysOff"), "cores: 5,", "cores: 5, dedicatedCores: true,", 1)
	stderr = wantRejected(t, s, "three rules", m, "spec.memory.size", "spec.cpu.coreFraction", "spec.cpu.dedicatedCores", "does not allow dedicated cores")
	if n := strings.Count(stderr, "sizing policy for 5-8 cores"); n != 3 {
		t.Errorf("want the three causes in one error, got %d:\n%s", n, stderr)
	}
	wantRejected(t, s, "memory step", classVM("bad3", "discovery", "2", "", "1280Mi", "AlwaysOff"),
		"spec.memory.size", "allows memory from 1Gi in steps of 512Mi")
	wantRejected(t, s, "memory max", classVM("bad4", "discovery", "4", "", "9Gi", "AlwaysOff"), "allows at most 8Gi of memory")
	wantRejected(t, s, "per-core memory", classVM("bad5", "discovery", "20", "", "60Gi", "AlwaysOff"), "allows at most 2Gi of memory per core")
	wantRejected(t, s, "unknown class", classVM("bad7", "nosuch", "1", "", "1Gi", "AlwaysOff"), "spec.virtualMachineClassName", `VirtualMachineClass "nosuch" not found`)
	// The 17+ policy allows only dedicated cores: a VM that does not say gets them.
	s.MustCLI(classVM("big", "discovery", "20", "", "20Gi", "AlwaysOff"), "apply", "-f", "-")
	if v := vmGet(t, s, "big"); !v.Spec.CPU.DedicatedCores || v.Spec.CPU.CoreFraction != "100%" {
		t.Errorf("big: dedicatedCores=%v coreFraction=%q, want true and 100%%", v.Spec.CPU.DedicatedCores, v.Spec.CPU.CoreFraction)
	}

	// Default class: VMs without a class get it, with its defaultCoreFraction.
	smallClass := `apiVersion: virtualization.deckhouse.io/v1alpha2
kind: VirtualMachineClass
metadata:
  name: small
  annotations: {virtualmachineclass.virtualization.deckhouse.io/is-default-class: "true"}
spec:
  cpu: {type: Model, model: Nehalem}
  sizingPolicies:
  - cores: {min: 1, max: 2}
    memory: {min: 128Mi, max: 2Gi}
    coreFractions: [10, 20, 50]
    defaultCoreFraction: "20%"
`
	s.MustCLI(smallClass, "apply", "-f", "-")
	wantRejected(t, s, "second default class", `apiVersion: virtualization.deckhouse.io/v1alpha2
kind: VirtualMachineClass
metadata:
  name: small2
  annotations: {virtualmachineclass.virtualization.rakhsh.io/is-default-class: "true"}
spec:
  cpu: {type: Host}
`, "only one class may be the default", `"small" already is`)
	s.MustCLI(classVM("plain", "", "1", "", "2Gi", "AlwaysOff"), "apply", "-f", "-")
	v := vmGet(t, s, "plain")
	if v.Spec.VirtualMachineClassName != "small" || v.Spec.CPU.CoreFraction != "20%" {
		t.Fatalf("VM without class: class %q coreFraction %q, want small and 20%%", v.Spec.VirtualMachineClassName, v.Spec.CPU.CoreFraction)
	}
	vmWait(t, s, "plain", time.Minute, "SizingPolicyMatched=True", vmCondIs(v1alpha1.VMConditionSizingPolicyMatched, v1alpha1.ConditionTrue))

	// The class shrinks under the VM: it is marked, and spec edits must fix the mismatch.
	s.MustCLI(strings.Replace(smallClass, "max: 2Gi", "max: 1Gi", 1), "apply", "-f", "-")
	v = vmWait(t, s, "plain", time.Minute, "SizingPolicyMatched=False", vmCondIs(v1alpha1.VMConditionSizingPolicyMatched, v1alpha1.ConditionFalse))
	c := v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionSizingPolicyMatched)
	if !strings.Contains(c.Message, "allows at most 1Gi of memory") {
		t.Errorf("SizingPolicyMatched message: %q", c.Message)
	}
	wantRejected(t, s, "edit that keeps the mismatch", classVM("plain", "", "1", "", "2Gi", "Manual"), "spec.memory.size", "allows at most 1Gi of memory")
	s.MustCLI(classVM("plain", "", "1", "", "1Gi", "Manual"), "apply", "-f", "-")
	vmWait(t, s, "plain", time.Minute, "SizingPolicyMatched=True again", vmCondIs(v1alpha1.VMConditionSizingPolicyMatched, v1alpha1.ConditionTrue))
}

// TestClassPlacementAndDiscovery: a Discovery class publishes the CPU features of the nodes
// its discovery selector matches; its nodeSelector keeps VMs Pending (with the reason) until
// an operator labels a node with `rakhsh label node`; the VM then runs with the discovered
// features; a VM larger than any node stays Pending with "insufficient memory".
func TestClassPlacementAndDiscovery(t *testing.T) {
	sideBySide(t)
	s := vmServe(t)
	var node string
	deadline := time.Now().Add(30 * time.Second)
	for node == "" && time.Now().Before(deadline) {
		var l []v1alpha1.Node
		out := s.MustCLI("", "get", "nodes", "-o", "json")
		var list struct {
			Items []v1alpha1.Node `json:"items"`
		}
		if json.Unmarshal([]byte(out), &list) == nil {
			l = list.Items
		}
		if len(l) > 0 && l[0].Status.Phase == v1alpha1.NodePhaseReady {
			node = l[0].Name
			if len(l[0].Status.CPUFeatures) == 0 {
				t.Fatal("the node reports no CPU features")
			}
			for _, f := range l[0].Status.CPUFeatures {
				if f == "constant-tsc" || f == "rep-good" {
					t.Errorf("node CPU feature %q is not a QEMU CPUID flag", f)
				}
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	if node == "" {
		t.Fatal("no Ready node within 30 s")
	}
	s.MustCLI("", "apply", "-f", "testdata/deckhouse-class.yaml")
	c := classWait(t, s, "discovery", "discovered without available nodes", func(c *v1alpha1.VirtualMachineClass) bool {
		return c.Status.CPUFeatures != nil && len(c.Status.CPUFeatures.Enabled) > 0 && c.Status.Phase == v1alpha1.VMClassPhasePending
	})
	if len(c.Status.AvailableNodes) != 0 {
		t.Fatalf("availableNodes %v before any node is labelled a worker", c.Status.AvailableNodes)
	}

	s.MustCLI(classVM("w1", "discovery", "1", "10%", "1Gi", "AlwaysOn", "  terminationGracePeriodSeconds: 1"), "apply", "-f", "-")
	v := vmWait(t, s, "w1", time.Minute, "unschedulable", vmCondIs("Scheduled", v1alpha1.ConditionFalse))
	if msg := v1alpha1.FindCondition(v.Status.Conditions, "Scheduled").Message; !strings.Contains(msg, "1 not matching the class's nodeSelector") {
		t.Errorf("Scheduled message %q", msg)
	}
	if v.Status.Phase != v1alpha1.VMPhasePending {
		t.Errorf("phase %s, want Pending", v.Status.Phase)
	}
	vmWait(t, s, "w1", time.Minute, "ClassReady=False", func(v *v1alpha1.VirtualMachine) bool {
		c := v1alpha1.FindCondition(v.Status.Conditions, v1alpha1.VMConditionClassReady)
		return c != nil && c.Status == v1alpha1.ConditionFalse && strings.Contains(c.Message, "Pending")
	})

	// Labels: set, refuse to change without --overwrite, change, remove.
	out := s.MustCLI("", "label", "node", node, "node.deckhouse.io/group=worker")
	if !strings.Contains(out, "labeled") {
		t.Fatalf("label: %s", out)
	}
	if r := s.CLI("", "label", "node", node, "node.deckhouse.io/group=db"); r.Code == 0 || !strings.Contains(r.Stderr, "--overwrite") {
		t.Fatalf("relabel without --overwrite: code %d %s", r.Code, r.Stderr)
	}
	if r := s.CLI("", "label", "node", node, "bad key=x"); r.Code == 0 || !strings.Contains(r.Stderr, "metadata.labels") {
		t.Fatalf("bad label key: code %d %s", r.Code, r.Stderr)
	}
	s.MustCLI("", "label", "node", node, "rakhsh.io/test=1")
	s.MustCLI("", "label", "node", node, "rakhsh.io/test-")

	c = classWait(t, s, "discovery", "Ready with the node", func(c *v1alpha1.VirtualMachineClass) bool {
		return len(c.Status.AvailableNodes) == 1 && c.Status.Phase == v1alpha1.VMClassPhaseReady
	})
	if c.Status.AvailableNodes[0] != node || c.Status.MaxAllocatableResources["cpu"] == "" || c.Status.MaxAllocatableResources["memory"] == "" {
		t.Errorf("class status: nodes %v, maxAllocatableResources %v", c.Status.AvailableNodes, c.Status.MaxAllocatableResources)
	}
	v = vmWait(t, s, "w1", 2*time.Minute, "Running", vmPhase(v1alpha1.VMPhaseRunning))
	vmWait(t, s, "w1", time.Minute, "ClassReady=True", vmCondIs(v1alpha1.VMConditionClassReady, v1alpha1.ConditionTrue))
	pid := testutil.QEMUPIDs(s.DataDir)[v.UID]
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if !strings.Contains(string(cmdline), "-cpu\x00qemu64,") || !strings.Contains(string(cmdline), c.Status.CPUFeatures.Enabled[0]+"=on") {
		t.Errorf("QEMU -cpu does not carry the discovered features: %q", cmdline)
	}
	s.MustCLI("", "delete", "vm", "w1", "--wait", "--timeout", "1m")

	// Bigger than any node.
	s.MustCLI(classVM("huge", "generic", "1", "", "4Ti", "AlwaysOn", "  terminationGracePeriodSeconds: 1"), "apply", "-f", "-")
	v = vmWait(t, s, "huge", time.Minute, "unschedulable", vmCondIs("Scheduled", v1alpha1.ConditionFalse))
	if msg := v1alpha1.FindCondition(v.Status.Conditions, "Scheduled").Message; !strings.Contains(msg, "1 insufficient memory") {
		t.Errorf("Scheduled message %q", msg)
	}
	s.MustCLI("", "delete", "vm", "huge", "--wait", "--timeout", "1m")
}
