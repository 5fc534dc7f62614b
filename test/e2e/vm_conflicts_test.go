package e2e

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// TestVMCreateConflicts creates VMs and starts them, then counts the 409s the server refused
// on the way, by the component that sent them (its User-Agent, in serve's debug log). The
// scheduler (binding subresource), the network controller and the class controller (sole
// owners of their status parts, strategic merge patches, also of the project's usage) must
// make none; before they did, one create made about seven.
func TestVMCreateConflicts(t *testing.T) {
	s := vmServe(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const n = 4
	for i := 0; i < n; i++ {
		vm := map[string]any{"apiVersion": v1alpha1.APIVersion, "kind": "VirtualMachine",
			"metadata": map[string]any{"name": fmt.Sprintf("c%d", i)},
			"spec": map[string]any{"runPolicy": "AlwaysOnUnlessStoppedManually", "cpu": map[string]any{"cores": 1},
				"memory": map[string]any{"size": "64Mi"}, "terminationGracePeriodSeconds": 0}}
		if err := s.Client().Create(ctx, "virtualmachines", "default", vm, nil); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < n; i++ {
		vmWait(t, s, fmt.Sprintf("c%d", i), 2*time.Minute, "Running", vmPhase(v1alpha1.VMPhaseRunning))
	}
	time.Sleep(time.Second) // the last status writes after Running

	refused := regexp.MustCompile(`msg="request refused" .*path=(\S+) code=409 .*userAgent=(\S+)`)
	byAgent := map[string]int{}
	total := 0
	for _, line := range strings.Split(s.Logs(), "\n") {
		m := refused.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		total++
		byAgent[m[2]]++
		t.Logf("409: %s %s", m[2], m[1])
		switch m[2] {
		case "rakhsh/scheduler", "rakhsh/network-controller", "rakhsh/vmclass-controller":
			if strings.Contains(m[1], "/virtualmachines") || strings.Contains(m[1], "/projects/") {
				t.Errorf("%s met a 409 on %s", m[2], m[1])
			}
		}
	}
	t.Logf("%d VMs created and started: %d requests refused with 409, by component %v", n, total, byAgent)
	if !regexp.MustCompile(`msg="request refused" .*userAgent=rakhsh/`).MatchString(s.Logs()) {
		t.Fatalf("serve's debug log names no component's User-Agent: the count above would see nothing")
	}
	for i := 0; i < n; i++ {
		s.MustCLI("", "delete", "vm", fmt.Sprintf("c%d", i))
	}
	for i := 0; i < n; i++ {
		vmWait(t, s, fmt.Sprintf("c%d", i), time.Minute, "deleted", func(v *v1alpha1.VirtualMachine) bool { return v == nil })
	}
}
