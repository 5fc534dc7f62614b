// Package etcdtest starts a throwaway single-member etcd server for tests.
//
// The server listens on free loopback ports only, keeps its data in a test temp directory and
// is killed (by its PID) when the test ends. StartTLS serves clients over TLS with client
// certificate authentication, from a CA generated for the test. The etcd binary is taken from $RAKHSH_ETCD_BIN,
// then $PATH, then /usr/bin/etcd (Debian package etcd-server). When no binary is found the
// test is skipped, or fails when $CI is set so that CI cannot silently skip etcd coverage.
package etcdtest

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/internal/testutil"
)

// startTimeout bounds the wait for a new server to report healthy.
const startTimeout = 30 * time.Second

// Server is a running etcd process.
type Server struct {
	// Endpoints are the client URLs, e.g. "http://127.0.0.1:40123" (https:// for StartTLS).
	Endpoints []string
	// Addr is the client host:port, e.g. "127.0.0.1:40123".
	Addr string
	// Certs are the PKI files of a StartTLS server: CA, server and client certificates. Zero
	// for Start.
	Certs Certs
	// TLS is a client configuration for a StartTLS server (trusts Certs.CA, presents the
	// client certificate); nil for Start.
	TLS *tls.Config

	cmd      *exec.Cmd
	exited   chan struct{}
	logPath  string
	stopOnce sync.Once
}

// Binary returns the path of the etcd binary, or "" when none is installed.
func Binary() string {
	if p := os.Getenv("RAKHSH_ETCD_BIN"); p != "" {
		return p
	}
	if p, err := exec.LookPath("etcd"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/bin/etcd", "/usr/local/bin/etcd"} {
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	return ""
}

// Start starts an etcd server for the test, serving clients over plain http, and stops it
// when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	return startT(t, false)
}

// StartTLS starts an etcd server for the test that serves clients only over TLS
// (https://127.0.0.1:PORT) and requires a client certificate signed by its CA
// (--client-cert-auth). The CA, server and client certificates are generated in a test temp
// directory; Server.Certs names them and Server.TLS is a client configuration using them.
// Peer traffic stays plain http on loopback.
func StartTLS(t testing.TB) *Server {
	t.Helper()
	return startT(t, true)
}

func startT(t testing.TB, useTLS bool) *Server {
	t.Helper()
	bin := Binary()
	if bin == "" {
		msg := "etcd binary not found: install etcd-server (apt-get install etcd-server) or set RAKHSH_ETCD_BIN"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	dir := t.TempDir()
	var certs Certs
	var clientTLS *tls.Config
	if useTLS {
		var err error
		if certs, err = GenerateCerts(filepath.Join(dir, "pki")); err != nil {
			t.Fatalf("etcd test certificates: %v", err)
		}
		if clientTLS, err = certs.ClientTLS(); err != nil {
			t.Fatalf("etcd test client TLS: %v", err)
		}
	}
	var lastErr error
	// A free port can be taken between probing and etcd binding it; try a few times.
	for attempt := range 3 {
		s, err := start(bin, filepath.Join(dir, fmt.Sprintf("run%d", attempt)), certs, clientTLS)
		if err == nil {
			t.Cleanup(func() {
				s.Stop()
				if t.Failed() {
					t.Logf("etcd log (%s):\n%s", s.logPath, testutil.TailFile(s.logPath, 40))
				}
			})
			return s
		}
		lastErr = err
	}
	t.Fatalf("start etcd: %v", lastErr)
	return nil
}

func start(bin, dir string, certs Certs, clientTLS *tls.Config) (*Server, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	scheme := "http"
	if clientTLS != nil {
		scheme = "https"
	}
	client := fmt.Sprintf("%s://127.0.0.1:%d", scheme, ports[0])
	peer := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	logPath := filepath.Join(dir, "etcd.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close() // the child keeps its own descriptor
	args := []string{
		"--name", "rakhsh-test",
		"--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", client,
		"--advertise-client-urls", client,
		"--listen-peer-urls", peer,
		"--initial-advertise-peer-urls", peer,
		"--initial-cluster", "rakhsh-test=" + peer,
		"--initial-cluster-state", "new",
		"--logger", "zap",
		"--log-level", "warn",
	}
	if clientTLS != nil {
		args = append(args,
			"--cert-file", certs.ServerCert,
			"--key-file", certs.ServerKey,
			"--client-cert-auth",
			"--trusted-ca-file", certs.CA,
		)
	}
	cmd := exec.Command(bin, args...)
	// etcd refuses to start on some architectures unless this names the current one.
	cmd.Env = append(os.Environ(), "ETCD_UNSUPPORTED_ARCH="+runtime.GOARCH)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	killWithParent(cmd)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &Server{
		Endpoints: []string{client},
		Addr:      strings.TrimPrefix(client, scheme+"://"),
		Certs:     certs,
		TLS:       clientTLS,
		cmd:       cmd,
		exited:    make(chan struct{}),
		logPath:   logPath,
	}
	go func() {
		_ = cmd.Wait()
		close(s.exited)
	}()
	if err := s.waitHealthy(); err != nil {
		s.Stop()
		return nil, fmt.Errorf("%w\n%s", err, testutil.TailFile(logPath, 20))
	}
	return s, nil
}

func (s *Server) waitHealthy() error {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	// For a TLS server the health check itself proves the handshake: it trusts only the test
	// CA and presents the client certificate etcd requires.
	hc := &http.Client{Timeout: time.Second}
	if s.TLS != nil {
		hc.Transport = &http.Transport{TLSClientConfig: s.TLS.Clone()}
	}
	defer hc.CloseIdleConnections()
	var last error
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.Endpoints[0]+"/health", nil)
		if resp, err := hc.Do(req); err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && bytes.Contains(body, []byte(`"health":"true"`)) {
				return nil
			}
			last = fmt.Errorf("GET /health: %s %s", resp.Status, bytes.TrimSpace(body))
		} else {
			last = err
		}
		select {
		case <-s.exited:
			return errors.New("etcd exited during startup")
		case <-ctx.Done():
			return fmt.Errorf("etcd not healthy after %v (last: %v)", startTimeout, last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// PID returns the process id of the server.
func (s *Server) PID() int { return s.cmd.Process.Pid }

// Stop kills the server (by its PID) and waits for it to exit. It is safe to call more than
// once; the test cleanup calls it too.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		_ = s.cmd.Process.Kill()
		<-s.exited
	})
}

// freePorts returns n distinct loopback ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
