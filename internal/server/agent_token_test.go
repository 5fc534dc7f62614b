package server

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAgentTokenFile: `rakhsh agent --token-file` reads the token (here it reaches the client,
// which refuses to send it over plain http); --token with --token-file and an empty file are
// errors naming the problem.
func TestAgentTokenFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "token")
	if err := os.WriteFile(file, []byte("agent-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("RAKHSH_TOKEN", "")
	t.Setenv("RAKHSH_TOKEN_FILE", "")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--token-file", file}, "refusing to send the bearer token over plain http"},
		{[]string{"--token", "x", "--token-file", file}, "--token and --token-file are exclusive"},
		{[]string{"--token-file", empty}, "is empty"},
	} {
		cmd := NewAgentCommand()
		cmd.SetArgs(append([]string{"--server", "http://127.0.0.1:1", "--data-dir", filepath.Join(dir, "data"), "--vm-networking", "user"}, c.args...))
		cmd.SetOut(&strings.Builder{})
		cmd.SetErr(&strings.Builder{})
		err := cmd.Execute()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("agent %v: err %v, want %q", c.args, err, c.want)
		}
	}
	t.Setenv("RAKHSH_TOKEN_FILE", file)
	cmd := NewAgentCommand()
	cmd.SetArgs([]string{"--server", "http://127.0.0.1:1", "--data-dir", filepath.Join(dir, "data"), "--vm-networking", "user"})
	cmd.SetErr(&strings.Builder{})
	if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), "refusing to send the bearer token") {
		t.Errorf("agent with RAKHSH_TOKEN_FILE: err %v, want the token read and refused over http", err)
	}
}
