package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

// TestSeparateAgentJoins: `rakhsh agent` on its own data dir joins a control plane started
// with --no-agent over TCP with the admin token, and registers its Node as Ready. When the
// agent dies, the node lifecycle controller marks the Node Unknown after the grace period;
// when it comes back, the Node is Ready again.
func TestSeparateAgentJoins(t *testing.T) {
	sideBySide(t)
	addr := freeAddr(t)
	s := StartServe(t, "--no-agent", "--listen", addr, "--node-grace-period", "5s")
	token := adminToken(t, s)
	agentDir := t.TempDir()
	logs := &lockedBuffer{}
	startAgent := func() *exec.Cmd {
		cmd := exec.Command(rakhshBin(t), "agent", "--server", "https://"+addr, "--ca-file", filepath.Join(s.DataDir, "tls.crt"),
			"--node-name", "joined-host", "--data-dir", agentDir, "--heartbeat-interval", "1s", "--vm-networking", "user",
			"--stream-listen", "127.0.0.1:0")
		cmd.Env = append(os.Environ(), "RAKHSH_TOKEN="+token)
		cmd.Stdout, cmd.Stderr = logs, logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	cmd := startAgent()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("agent log:\n%s", logs.String())
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var node v1alpha1.Node
	for {
		err := s.Client().Get(ctx, "nodes", "", "joined-host", &node)
		if err == nil && node.Status.Phase == "Ready" {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the agent's Node never became Ready: %v %+v", err, node.Status)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if node.Status.Capacity == nil || node.Status.Capacity.CPU < 1 || node.Status.QemuVersion == "" {
		t.Fatalf("Node status lacks capacity or QEMU version: %+v", node.Status)
	}
	// No agent runs inside the control plane: only the joined node exists.
	l, err := s.Client().List(ctx, "nodes", "", client.ListOptions{})
	if err != nil || len(l.Items) != 1 {
		t.Fatalf("nodes: %v, %d items", err, len(l.Items))
	}

	// A heartbeating node stays Ready past the grace period.
	for end := time.Now().Add(7 * time.Second); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
		if err := s.Client().Get(ctx, "nodes", "", "joined-host", &node); err != nil {
			t.Fatal(err)
		}
		if node.Status.Phase != v1alpha1.NodePhaseReady {
			t.Fatalf("a heartbeating node left Ready: %+v", node.Status.Conditions)
		}
	}

	// kill -9 of the agent: the Node goes Unknown, with a Ready condition that says why.
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	killed := time.Now()
	waitNodePhase(t, s.Client(), "joined-host", v1alpha1.NodePhaseUnknown, 30*time.Second)
	if err := s.Client().Get(ctx, "nodes", "", "joined-host", &node); err != nil {
		t.Fatal(err)
	}
	// Heartbeat times are whole seconds, so Unknown may come up to ~2 s before kill + 5 s.
	if d := time.Since(killed); d < 3*time.Second {
		t.Fatalf("the node went Unknown %s after the agent died, before the 5 s grace period", d)
	}
	c := v1alpha1.FindCondition(node.Status.Conditions, v1alpha1.NodeConditionReady)
	if c == nil || c.Status != v1alpha1.ConditionUnknown || c.Reason != "NodeStatusUnknown" || !strings.Contains(c.Message, "grace period 5s") {
		t.Fatalf("Ready condition of a dead node: %+v", c)
	}

	// The agent comes back: Ready again.
	cmd = startAgent()
	waitNodePhase(t, s.Client(), "joined-host", v1alpha1.NodePhaseReady, 30*time.Second)
	if err := s.Client().Get(ctx, "nodes", "", "joined-host", &node); err != nil {
		t.Fatal(err)
	}
	if c := v1alpha1.FindCondition(node.Status.Conditions, v1alpha1.NodeConditionReady); c == nil || c.Status != v1alpha1.ConditionTrue {
		t.Fatalf("Ready condition after the agent came back: %+v", c)
	}
}

func waitNodePhase(t *testing.T, c *client.Client, name string, phase v1alpha1.NodePhase, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var n v1alpha1.Node
	for {
		err := c.Get(ctx, "nodes", "", name, &n)
		if err == nil && n.Status.Phase == phase {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("node %s never reached phase %s: %v, status %+v", name, phase, err, n.Status)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
