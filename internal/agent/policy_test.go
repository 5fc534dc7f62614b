package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/testutil"
)

// TestCrashRestart kills QEMU from outside: AlwaysOnUnlessStoppedManually restarts the VM
// (lastExit Crashed), Manual leaves it stopped.
func TestCrashRestart(t *testing.T) {
	img := guestImage(t)
	e := newEnv(t)
	e.readyDisk("d1", img)
	e.readyDisk("d2", img)
	v1 := e.createVM("auto", v1alpha1.RunPolicyAlwaysOnUnlessStoppedManually, "d1")
	v2 := e.createVM("manual", v1alpha1.RunPolicyManual, "d2")
	e.waitVM("auto", 30*time.Second, "Running", phaseIs(v1alpha1.VMPhaseRunning))
	e.waitOp(e.op("manual", v1alpha1.VMOPTypeStart, false), v1alpha1.VMOPPhaseCompleted, 30*time.Second)

	for _, uid := range []string{v1.UID, v2.UID} {
		pid := testutil.QEMUPIDs(e.dir)[uid]
		if pid == 0 {
			t.Fatalf("no QEMU for %s", uid)
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	v := e.waitVM("auto", 30*time.Second, "restarted after the crash", func(v *v1alpha1.VirtualMachine) bool {
		return v.Status.Phase == v1alpha1.VMPhaseRunning && v.Status.LastExit != nil
	})
	if ex := v.Status.LastExit; ex.Reason != v1alpha1.ExitCrashed || ex.Count != 1 {
		t.Errorf("lastExit after a crash: %+v", ex)
	}
	if testutil.CountQEMU(v1.UID) != 1 {
		t.Errorf("%d QEMU processes after the restart", testutil.CountQEMU(v1.UID))
	}
	v = e.waitVM("manual", 30*time.Second, "stopped after the crash", func(v *v1alpha1.VirtualMachine) bool {
		return v.Status.Phase == v1alpha1.VMPhaseStopped && v.Status.NodeName == ""
	})
	if v.Status.LastExit == nil || v.Status.LastExit.Reason != v1alpha1.ExitCrashed || v.Status.PowerRequest.State != v1alpha1.PowerStateStopped {
		t.Errorf("Manual after a crash: %+v", v.Status)
	}
	time.Sleep(2 * time.Second)
	if testutil.CountQEMU(v2.UID) != 0 {
		t.Errorf("Manual VM restarted after a crash")
	}
}

// TestTwoSchedulers runs two schedulers against one API: no VM is ever bound twice (the
// resourceVersion guard makes the loser's write fail).
func TestTwoSchedulers(t *testing.T) {
	e := newEnvOpts(t, false, 2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, n := range []string{"fa", "fb"} {
		node := v1alpha1.Node{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "Node"}, ObjectMeta: v1alpha1.ObjectMeta{Name: n}}
		if err := e.c.Create(ctx, "nodes", "", &node, nil); err != nil {
			t.Fatal(err)
		}
		hb := v1alpha1.Now()
		body, _ := json.Marshal(map[string]any{"status": v1alpha1.NodeStatus{Phase: v1alpha1.NodePhaseReady, LastHeartbeatTime: &hb,
			Capacity: &v1alpha1.NodeResources{CPU: 2, Memory: "4Gi"}}})
		if err := e.c.PatchStatus(ctx, "nodes", "", n, body, nil); err != nil {
			t.Fatal(err)
		}
	}
	// Record every binding change seen on the watch.
	w, err := e.c.Watch(ctx, "virtualmachines", "", client.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	bound := map[string]string{}
	var rebinds []string
	go func() {
		for ev := range w.Events() {
			var v v1alpha1.VirtualMachine
			if json.Unmarshal(ev.Object, &v) != nil || v.Status.NodeName == "" {
				continue
			}
			mu.Lock()
			if old := bound[v.Name]; old != "" && old != v.Status.NodeName {
				rebinds = append(rebinds, fmt.Sprintf("%s: %s -> %s", v.Name, old, v.Status.NodeName))
			}
			bound[v.Name] = v.Status.NodeName
			mu.Unlock()
		}
	}()
	const vms = 20 // 20 × 1Gi: both nodes together hold 8
	for i := range vms {
		v := &v1alpha1.VirtualMachine{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachine"},
			ObjectMeta: v1alpha1.ObjectMeta{Name: fmt.Sprintf("v%02d", i), Namespace: "default"},
			Spec: v1alpha1.VirtualMachineSpec{CPU: v1alpha1.VirtualMachineCPU{Cores: 1},
				Memory: v1alpha1.VirtualMachineMemory{Size: "1Gi"}}}
		if err := e.c.Create(ctx, "virtualmachines", "default", v, nil); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		l, err := e.c.ListAll(ctx, "virtualmachines", "default", client.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		perNode := map[string]int{}
		unsched := 0
		for _, raw := range l.Items {
			var v v1alpha1.VirtualMachine
			_ = json.Unmarshal(raw, &v)
			if v.Status.NodeName != "" {
				perNode[v.Status.NodeName]++
			} else if c := v1alpha1.FindCondition(v.Status.Conditions, "Scheduled"); c != nil && c.Status == "False" {
				unsched++
			}
		}
		// Capacity is only exact with one active scheduler (the design elects one controller
		// set); two racing ones may overshoot a node by a VM or two, never bind one VM twice.
		if perNode["fa"]+perNode["fb"] >= 8 && perNode["fa"]+perNode["fb"]+unsched == vms {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bindings %v, %d unschedulable", perNode, unsched)
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if len(rebinds) > 0 {
		t.Fatalf("VMs bound twice: %v", rebinds)
	}
}
