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
// with --no-agent over TCP with the admin token, and registers its Node as Ready.
func TestSeparateAgentJoins(t *testing.T) {
	addr := freeAddr(t)
	s := StartServe(t, "--no-agent", "--listen", addr)
	token, err := os.ReadFile(filepath.Join(s.DataDir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	agentDir := t.TempDir()
	cmd := exec.Command(rakhshBin(t), "agent", "--server", "https://"+addr, "--ca-file", filepath.Join(s.DataDir, "tls.crt"),
		"--node-name", "joined-host", "--data-dir", agentDir)
	cmd.Env = append(os.Environ(), "RAKHSH_TOKEN="+strings.TrimSpace(string(token)))
	logs := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
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
}
