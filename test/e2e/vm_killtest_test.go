package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/testutil"
)

// TestRandomKillLifecycle creates, stops, starts and deletes VMs at random while `rakhsh
// serve` is killed with SIGKILL at random moments, 50 times. Every VM must end in the state
// of the last request the API accepted (running, stopped or gone), with exactly one QEMU per
// running VM and none for the others. The VMs have no disk and a grace period of 0, so each
// power change takes a moment; the server runs with --accelerator tcg so that its restarts
// do not wait for the KVM probe.
func TestRandomKillLifecycle(t *testing.T) {
	sideBySide(t)
	vmGuestDir(t) // QEMU must be there
	s := &Serve{t: t, DataDir: t.TempDir(), Args: []string{"--accelerator", "tcg"}}
	s.Start()
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("rakhsh serve log (last 200 lines):\n%s", lastN(s.Logs(), 200))
		}
	})
	const kills = 50
	names := []string{"k0", "k1", "k2", "k3"}
	type want int
	const (
		absent want = iota
		running
		stopped
	)
	state := map[string]want{}
	uids := map[string]string{} // every uid any VM had, by uid
	seed := uint64(time.Now().UnixNano())
	if v, err := strconv.ParseUint(os.Getenv("RAKHSH_KILLTEST_SEED"), 10, 64); err == nil {
		seed = v
	}
	rng := rand.New(rand.NewPCG(seed, 7))
	t.Logf("seed %d (RAKHSH_KILLTEST_SEED repeats a run); each accepted request follows", seed)
	ctx := context.Background()
	accepted := 0
	for round := 1; round <= kills; round++ {
		for range 1 + rng.IntN(3) {
			name := names[rng.IntN(len(names))]
			var what string
			var ok bool
			switch state[name] {
			case absent:
				what = "create"
				vm := map[string]any{"apiVersion": v1alpha1.APIVersion, "kind": "VirtualMachine",
					"metadata": map[string]any{"name": name},
					"spec": map[string]any{"runPolicy": "AlwaysOnUnlessStoppedManually", "cpu": map[string]any{"cores": 1},
						"memory": map[string]any{"size": "64Mi"}, "terminationGracePeriodSeconds": 0}}
				var out v1alpha1.VirtualMachine
				err := s.Client().Create(ctx, "virtualmachines", "default", vm, &out)
				if ok = err == nil; ok {
					state[name] = running
					uids[out.UID] = name
				}
			default:
				switch rng.IntN(4) {
				case 0:
					what = "delete"
					err := s.Client().Delete(ctx, "virtualmachines", "default", name)
					if ok = err == nil; ok {
						state[name] = absent
					}
				case 1, 2:
					what = "stop"
					if rng.IntN(2) == 0 {
						what = "start"
					}
					r := s.CLI("", "vm", what, name)
					if ok = r.Code == 0; ok {
						state[name] = map[string]want{"start": running, "stop": stopped}[what]
					}
				default:
					what = "restart"
					// A restart of a stopped VM starts it.
					r := s.CLI("", "vm", what, name)
					if ok = r.Code == 0; ok {
						state[name] = running
					}
				}
			}
			if ok {
				accepted++
				t.Logf("round %d: %s %s accepted", round, what, name)
			}
		}
		time.Sleep(time.Duration(rng.IntN(1500)) * time.Millisecond)
		s.Kill9()
		s.Start()
	}
	t.Logf("%d kills, %d accepted requests; expecting %v", kills, accepted, state)

	// Converge: each VM in the state of its last accepted request.
	deadline := time.Now().Add(3 * time.Minute)
	for {
		var problems []string
		for _, name := range names {
			var vm v1alpha1.VirtualMachine
			err := s.Client().Get(ctx, "virtualmachines", "default", name, &vm)
			switch want := state[name]; {
			case want == absent:
				if err == nil {
					problems = append(problems, fmt.Sprintf("%s still exists (phase %s, deleting %v)", name, vm.Status.Phase, vm.DeletionTimestamp != nil))
				} else if !client.IsNotFound(err) {
					t.Fatal(err)
				}
			case err != nil:
				problems = append(problems, fmt.Sprintf("%s: %v", name, err))
			case want == running && (vm.Status.Phase != v1alpha1.VMPhaseRunning || testutil.CountQEMU(vm.UID) != 1):
				problems = append(problems, fmt.Sprintf("%s: phase %s with %d QEMU, want Running with one", name, vm.Status.Phase, testutil.CountQEMU(vm.UID)))
			case want == stopped && (vm.Status.Phase != v1alpha1.VMPhaseStopped || testutil.CountQEMU(vm.UID) != 0):
				problems = append(problems, fmt.Sprintf("%s: phase %s with %d QEMU, want Stopped with none", name, vm.Status.Phase, testutil.CountQEMU(vm.UID)))
			}
		}
		// No QEMU of a VM object that is gone.
		for uid, name := range uids {
			var vm v1alpha1.VirtualMachine
			if err := s.Client().Get(ctx, "virtualmachines", "default", name, &vm); err == nil && vm.UID == uid {
				continue
			}
			if n := testutil.CountQEMU(uid); n != 0 {
				problems = append(problems, fmt.Sprintf("%d QEMU left of a deleted %s (uid %s)", n, name, uid))
			}
		}
		if len(problems) == 0 {
			break
		}
		if time.Now().After(deadline) {
			l, _ := s.Client().List(ctx, "virtualmachineoperations", "default", client.ListOptions{})
			var ops []string
			for _, raw := range l.Items {
				var op v1alpha1.VirtualMachineOperation
				_ = json.Unmarshal(raw, &op)
				ops = append(ops, fmt.Sprintf("%s %s %s rev %s", op.Name, op.Spec.Type, op.Status.Phase, op.CreationRevision))
			}
			t.Fatalf("not converged within 3 minutes after the last kill:\n%s\noperations:\n%s", strings.Join(problems, "\n"), strings.Join(ops, "\n"))
		}
		time.Sleep(250 * time.Millisecond)
	}
	// Clean up: delete what is left, and see every QEMU go.
	for _, name := range names {
		if state[name] != absent {
			s.MustCLI("", "delete", "vm", name)
		}
	}
	for _, name := range names {
		vmWait(t, s, name, time.Minute, "deleted", func(v *v1alpha1.VirtualMachine) bool { return v == nil })
	}
	for uid := range uids {
		if n := testutil.CountQEMU(uid); n != 0 {
			t.Errorf("%d QEMU of %s after deleting every VM", n, uid)
		}
	}
}

func lastN(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
