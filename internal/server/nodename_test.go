package server

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestResolveNodeName(t *testing.T) {
	dir := t.TempDir()
	host, _ := os.Hostname()
	// First use without a flag: the host name, kept.
	if n, err := resolveNodeName(dir, ""); err != nil || n != host {
		t.Fatalf("first use: %q %v, want %q", n, err, host)
	}
	// Later without a flag: the kept name, whatever the host is called now.
	_ = os.WriteFile(filepath.Join(dir, nodeNameFile), []byte("h7\n"), 0o644)
	if n, err := resolveNodeName(dir, ""); err != nil || n != "h7" {
		t.Errorf("kept: %q %v", n, err)
	}
	if n, err := resolveNodeName(dir, "h7"); err != nil || n != "h7" {
		t.Errorf("same flag: %q %v", n, err)
	}
	if _, err := resolveNodeName(dir, "h8"); err == nil || !strings.Contains(err.Error(), `belongs to node "h7"`) || !strings.Contains(err.Error(), "--node-name h7") {
		t.Errorf("another name: %v", err)
	}
	// A new directory with a flag keeps the flag.
	dir2 := filepath.Join(t.TempDir(), "new")
	if n, err := resolveNodeName(dir2, "h9"); err != nil || n != "h9" {
		t.Fatalf("new dir: %q %v", n, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir2, nodeNameFile)); strings.TrimSpace(string(b)) != "h9" {
		t.Errorf("kept %q", b)
	}
}
