package apiserver

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/console"
	"github.com/rakhsh/rakhsh/internal/nodestream"
	"github.com/rakhsh/rakhsh/internal/storage"
	"github.com/rakhsh/rakhsh/internal/store/bolt"
)

// localTestServer runs an API server with a bolt store in dir, on the unix socket dir/api.sock
// (dir must be short enough for a socket path), with the default project; all of it ends
// with the test.
func localTestServer(t *testing.T, dir string, cfg Config) *client.Client {
	t.Helper()
	st, err := bolt.Open(filepath.Join(dir, "db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	cfg.Store = st
	s := New(cfg)
	t.Cleanup(s.Shutdown)
	if err := s.EnsureProject(context.Background(), DefaultProject); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "api.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: s.LocalHandler()}
	go func() { _ = hs.Serve(l) }()
	t.Cleanup(func() { hs.Close() })
	c, err := client.New(client.Config{Server: "unix://" + sock})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestConsoleAndLogStreams serves a VM's console over a websocket and its kept log over
// plain GET, from a run dir whose serial socket is faked.
func TestConsoleAndLogStreams(t *testing.T) {
	dir, err := os.MkdirTemp("/tmp", "rk-streams")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	c := localTestServer(t, dir, Config{LocalStreams: &nodestream.Service{DataDir: dir}, NodeName: "n1"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var vm v1alpha1.VirtualMachine
	err = c.Create(ctx, "virtualmachines", "default", map[string]any{"kind": "VirtualMachine", "metadata": map[string]any{"name": "vm1"},
		"spec": map[string]any{"runPolicy": "AlwaysOff", "cpu": map[string]any{"cores": 1}, "memory": map[string]any{"size": "128Mi"}}}, &vm)
	if err != nil {
		t.Fatal(err)
	}
	// Not running yet: clear errors.
	if _, err := c.DialStream(ctx, "virtualmachines", "default", "vm1", "console"); client.Reason(err) != v1alpha1.ReasonServiceUnavailable {
		t.Fatalf("console of a stopped VM: %v", err)
	}
	if err := c.Do(ctx, "GET", client.Path("virtualmachines", "default", "vm1", "log"), nil, "", nil, nil); !client.IsNotFound(err) {
		t.Fatalf("log of a VM that never ran: %v", err)
	}
	// Bound to this server's own node: its agent's streams are called directly.
	bindVM(t, c, "vm1", "n1")
	if _, err := c.DialStream(ctx, "virtualmachines", "default", "vm1", "console"); client.Reason(err) != v1alpha1.ReasonServiceUnavailable {
		t.Fatalf("console of a bound VM that does not run: %v", err)
	}
	run := storage.VMRunDir(dir, vm.UID)
	if err := os.MkdirAll(run, 0o700); err != nil {
		t.Fatal(err)
	}
	sl, err := net.Listen("unix", filepath.Join(run, console.SerialSocket))
	if err != nil {
		t.Fatal(err)
	}
	defer sl.Close()
	guest := make(chan net.Conn, 1)
	go func() {
		g, err := sl.Accept()
		if err == nil {
			guest <- g
		}
	}()
	go (&console.Mux{RunDir: run}).Run(ctx)
	g := <-guest
	defer g.Close()
	var conn net.Conn
	for i := 0; i < 100; i++ {
		conn, err = c.DialStream(ctx, "virtualmachines", "default", "vm1", "console")
		if err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("console: %v", err)
	}
	defer conn.Close()
	time.Sleep(100 * time.Millisecond)
	if _, err := g.Write([]byte("RAKHSH-GUEST: ready\n")); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || line != "RAKHSH-GUEST: ready\n" {
		t.Fatalf("console read %q, %v", line, err)
	}
	if _, err := conn.Write([]byte("echo hi\n")); err != nil {
		t.Fatal(err)
	}
	_ = g.SetReadDeadline(time.Now().Add(5 * time.Second))
	in, err := bufio.NewReader(g).ReadString('\n')
	if err != nil || in != "echo hi\n" {
		t.Fatalf("guest read %q, %v", in, err)
	}
	var logData []byte
	if err := c.Do(ctx, "GET", client.Path("virtualmachines", "default", "vm1", "log"), nil, "", nil, &logData); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(logData), "RAKHSH-GUEST: ready") {
		t.Fatalf("log: %q", logData)
	}
	// A browser from another origin is refused.
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://rakhsh"+client.Path("virtualmachines", "default", "vm1", "console"), nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	req.Header.Set("Origin", "http://evil.example")
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", filepath.Join(dir, "api.sock"))
	}}}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("cross-origin websocket: %d, want 403", resp.StatusCode)
	}
}

// bindVM registers node (if needed) and binds the VM to it.
func bindVM(t *testing.T, c *client.Client, vm, node string) {
	t.Helper()
	ctx := context.Background()
	err := c.Create(ctx, "nodes", "", map[string]any{"kind": "Node", "metadata": map[string]any{"name": node}}, nil)
	if err != nil && !client.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if err := c.Bind(ctx, "default", vm, &v1alpha1.VirtualMachineBinding{NodeName: node}, nil); err != nil {
		t.Fatal(err)
	}
}
