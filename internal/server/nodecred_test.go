package server

import (
	"context"
	"encoding/pem"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/apiserver"
	"github.com/rakhsh/rakhsh/internal/store/bolt"
)

// TestAgentJoinCredential: a join token is exchanged once for a node credential kept in the
// data dir (0600); a restart uses the credential without the join token; a data dir of one
// node refuses another --node-name.
func TestAgentJoinCredential(t *testing.T) {
	dir := t.TempDir()
	st, err := bolt.Open(filepath.Join(dir, "db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	api := apiserver.New(apiserver.Config{Store: st, Log: log, AdminToken: "admin-secret"})
	defer api.Shutdown()
	hs := httptest.NewTLSServer(api.RemoteHandler())
	defer hs.Close()
	ca := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: hs.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	server := "https://" + strings.TrimPrefix(hs.URL, "https://")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := client.New(client.Config{Server: server, Token: "admin-secret", CAFile: ca})
	if err != nil {
		t.Fatal(err)
	}
	jt, err := admin.CreateJoinToken(ctx, v1alpha1.JoinTokenRequest{TTL: "5m"})
	if err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := AgentConfig{Server: server, CAFile: ca, DataDir: data, NodeName: "h1"}
	if err := agentCredential(ctx, &cfg, jt.Token, log); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(cfg.Token, "rakhsh-node.h1.") {
		t.Fatalf("token after joining: not a node credential")
	}
	path := filepath.Join(data, NodeCredentialFile)
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("credential file: %v %v", fi, err)
	}
	nodeClient, err := client.New(client.Config{Server: server, Token: cfg.Token, CAFile: ca})
	if err != nil {
		t.Fatal(err)
	}
	n := v1alpha1.Node{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "Node"}, ObjectMeta: v1alpha1.ObjectMeta{Name: "h1"}}
	if err := nodeClient.Create(ctx, "nodes", "", &n, nil); err != nil {
		t.Fatalf("the node creating its Node: %v", err)
	}
	// Restart: no join token (the used-up one would be refused), no node name.
	again := AgentConfig{Server: server, CAFile: ca, DataDir: data}
	if err := agentCredential(ctx, &again, "", log); err != nil {
		t.Fatal(err)
	}
	if again.Token != cfg.Token || again.NodeName != "h1" {
		t.Fatalf("restart: node %q, same token %v", again.NodeName, again.Token == cfg.Token)
	}
	other := AgentConfig{Server: server, CAFile: ca, DataDir: data, NodeName: "h2"}
	if err := agentCredential(ctx, &other, "", log); err == nil || !strings.Contains(err.Error(), `holds the credential of node "h1"`) {
		t.Fatalf("another node name on the same data dir: %v", err)
	}
	// A used-up join token on a fresh data dir is refused, naming the problem.
	fresh := filepath.Join(dir, "fresh")
	_ = os.MkdirAll(fresh, 0o700)
	f := AgentConfig{Server: server, CAFile: ca, DataDir: fresh, NodeName: "h3"}
	if err := agentCredential(ctx, &f, jt.Token, log); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("a used-up join token: %v", err)
	}
	if _, err := os.Stat(filepath.Join(fresh, NodeCredentialFile)); !os.IsNotExist(err) {
		t.Fatalf("a refused join left a credential file: %v", err)
	}
	// A credential readable by others is refused.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := agentCredential(ctx, &AgentConfig{Server: server, DataDir: data}, "", log); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("a world-readable credential: %v", err)
	}
	// Flags: a join token with the admin token is an error naming both.
	cmd := NewAgentCommand()
	cmd.SetArgs([]string{"--server", server, "--data-dir", fresh, "--join-token", "x", "--token", "y"})
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), "--join-token and --token are exclusive") {
		t.Fatalf("--join-token with --token: %v", err)
	}
}
