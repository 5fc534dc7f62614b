package client

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestTokenNeverOverPlainHTTP: a client with a token refuses a plain http:// server (loopback
// included) with an error saying why; https and the unix socket take a token; plain http
// without a token still works.
func TestTokenNeverOverPlainHTTP(t *testing.T) {
	for _, server := range []string{"http://127.0.0.1:8080", "http://localhost:6443", "http://[::1]:1", "http://api.example.com"} {
		_, err := New(Config{Server: server, Token: "secret"})
		if err == nil || !strings.Contains(err.Error(), "refusing to send the bearer token over plain http") || !strings.Contains(err.Error(), "https://") {
			t.Errorf("%s with a token: err %v, want a refusal naming https", server, err)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: the error shows the token: %v", server, err)
		}
	}
	for _, server := range []string{"https://127.0.0.1:8443", "unix:///run/rakhsh.sock"} {
		if _, err := New(Config{Server: server, Token: "secret"}); err != nil {
			t.Errorf("%s with a token: %v", server, err)
		}
	}
	var auth string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth = r.Header.Get("Authorization")
		_, _ = w.Write([]byte(`{}`))
	}))
	defer srv.Close()
	c, err := New(Config{Server: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Do(context.Background(), "GET", "/version", nil, "", nil, nil); err != nil || auth != "" {
		t.Errorf("plain http without a token: %v, Authorization %q", err, auth)
	}
}

func TestReadTokenFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for content, want := range map[string]string{"abc123\n": "abc123", "  abc123  \r\n": "abc123", "abc123\nsecond line\n": "abc123"} {
		got, err := ReadTokenFile(write("t", content))
		if err != nil || got != want {
			t.Errorf("%q: %q, %v; want %q", content, got, err, want)
		}
	}
	for content, want := range map[string]string{"": "is empty", "\n\n": "is empty", "abc def\n": "space inside"} {
		if _, err := ReadTokenFile(write("t", content)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err %v, want %q", content, err, want)
		}
	}
	if _, err := ReadTokenFile(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "token file") {
		t.Errorf("a missing file: err %v", err)
	}
}
