package cli

import (
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestUIForwarder: the forwarded port answers the API only to the browser that used the
// one-time login ticket, and forwards its requests to the socket.
func TestUIForwarder(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	api := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "socket saw "+r.Method+" "+r.URL.Path)
	})}
	go api.Serve(l)
	t.Cleanup(func() { api.Close() })

	h, ticket := uiForwarder(sock, time.Minute)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)

	resp, err := http.Get(srv.URL + "/apis/virtualization.rakhsh.io/v1alpha1/projects")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("without a session: %d, want 401", resp.StatusCode)
	}

	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar}
	resp, err = c.Post(srv.URL+"/ui/login", "application/json", strings.NewReader(`{"method":"ticket","ticket":"`+ticket+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("ticket login: %d", resp.StatusCode)
	}
	resp, err = c.Get(srv.URL + "/apis/virtualization.rakhsh.io/v1alpha1/projects")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "socket saw GET /apis/virtualization.rakhsh.io/v1alpha1/projects" {
		t.Fatalf("with the session: %d %q", resp.StatusCode, b)
	}
}

func TestUIRefusesRemoteServer(t *testing.T) {
	cc := newCLIContext()
	root := newRootCommand(cc)
	root.SetArgs([]string{"--server", "https://example.test:6443", "ui"})
	root.SetOut(io.Discard)
	root.SetErr(io.Discard)
	if err := root.Execute(); err == nil || !strings.Contains(err.Error(), "log in with a token") {
		t.Fatalf("rakhsh ui with an https server: %v", err)
	}
}
