package cli

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// runCLIEnv runs the CLI in-process with the given environment.
func runCLIEnv(env map[string]string, args ...string) (string, string, int) {
	cc := newCLIContext()
	cc.getenv = func(k string) string { return env[k] }
	root := newRootCommand(cc)
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	code := executeContext(context.Background(), root)
	return out.String(), errOut.String(), code
}

// TestTokenFile: --token-file and $RAKHSH_TOKEN_FILE give the bearer token; --token still
// works and wins over the environment; --token with --token-file, or an empty or missing
// file, is an error naming the problem; a token is never sent over plain http.
func TestTokenFile(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Header.Get("Authorization"))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"gitVersion":"test"}`))
	}))
	defer srv.Close()
	dir := t.TempDir()
	file := filepath.Join(dir, "token")
	if err := os.WriteFile(file, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	base := []string{"--server", srv.URL, "--insecure-skip-tls-verify"}
	cases := []struct {
		name string
		env  map[string]string
		args []string
		want string // the Authorization header sent
	}{
		{"--token-file", nil, []string{"--token-file", file}, "Bearer from-file"},
		{"RAKHSH_TOKEN_FILE", map[string]string{EnvTokenFile: file}, nil, "Bearer from-file"},
		{"--token", map[string]string{EnvTokenFile: file}, []string{"--token", "from-flag"}, "Bearer from-flag"},
		{"RAKHSH_TOKEN over RAKHSH_TOKEN_FILE", map[string]string{EnvToken: "from-env", EnvTokenFile: file}, nil, "Bearer from-env"},
		{"--token-file over RAKHSH_TOKEN", map[string]string{EnvToken: "from-env"}, []string{"--token-file", file}, "Bearer from-file"},
	}
	for _, c := range cases {
		mu.Lock()
		seen = nil
		mu.Unlock()
		_, errOut, code := runCLIEnv(c.env, append(append(base, c.args...), "version")...)
		mu.Lock()
		got := append([]string(nil), seen...)
		mu.Unlock()
		if code != 0 || len(got) == 0 || got[0] != c.want {
			t.Errorf("%s: code %d, stderr %q, Authorization %q; want %q", c.name, code, errOut, got, c.want)
		}
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--token", "x", "--token-file", file}, "--token and --token-file are exclusive"},
		{[]string{"--token-file", empty}, "is empty"},
		{[]string{"--token-file", filepath.Join(dir, "missing")}, "reading the token file"},
	} {
		_, errOut, code := runCLIEnv(nil, append(append(base, c.args...), "get", "vm")...)
		if code == 0 || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: code %d, stderr %q; want an error with %q", c.args, code, errOut, c.want)
		}
	}
	// Plain http: refused before anything is sent.
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("a request reached the plain http server with Authorization %q", r.Header.Get("Authorization"))
	}))
	defer plain.Close()
	_, errOut, code := runCLIEnv(map[string]string{EnvTokenFile: file}, "--server", plain.URL, "get", "vm")
	if code == 0 || !strings.Contains(errOut, "refusing to send the bearer token over plain http") {
		t.Errorf("a token to a plain http server: code %d, stderr %q", code, errOut)
	}
}
