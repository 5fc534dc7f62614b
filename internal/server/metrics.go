package server

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// readMetricsToken reads the read-only metrics token (--metrics-token-file): the first
// line, at least 16 characters.
func readMetricsToken(path string) (string, error) {
	tok, err := client.ReadTokenFile(path)
	if err != nil {
		return "", fmt.Errorf("--metrics-token-file: %w", err)
	}
	if len(tok) < 16 {
		return "", fmt.Errorf("--metrics-token-file %s: the token on its first line is shorter than 16 characters (make one with openssl rand -hex 32)", path)
	}
	return tok, nil
}

// listenMetrics listens on --metrics-listen and returns the listener and the URL of its
// /metrics: the listener's address, or this host's name when it listens on all addresses.
func listenMetrics(addr, node string) (net.Listener, string, error) {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, "", fmt.Errorf("--metrics-listen %q: want host:port (e.g. 127.0.0.1:9464 or :9464): %w", addr, err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", fmt.Errorf("--metrics-listen %s: %w", addr, err)
	}
	tcp := l.Addr().(*net.TCPAddr)
	host := tcp.IP.String()
	if tcp.IP.IsUnspecified() {
		host = node
		if h, err := os.Hostname(); err == nil && h != "" {
			host = h
		}
	}
	return l, "http://" + net.JoinHostPort(host, fmt.Sprint(tcp.Port)) + "/metrics", nil
}

// serveMetricsOn serves h on l until ctx ends; the returned function waits for the end.
func serveMetricsOn(ctx context.Context, l net.Listener, h http.Handler, log *slog.Logger) func() {
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute, WriteTimeout: time.Minute,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := hs.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("the metrics listener stopped", "err", err)
		}
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
	}()
	return func() { <-done }
}

// agentMetricsHandler serves a standalone agent's /metrics (rakhsh agent --metrics-listen)
// to the bearer of the metrics token.
func agentMetricsHandler(reg *prometheus.Registry, token string) http.Handler {
	prom := promhttp.HandlerFor(reg, promhttp.HandlerOpts{EnableOpenMetrics: true})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" || r.Method != http.MethodGet {
			http.Error(w, "the agent's metrics listener serves GET /metrics only", http.StatusNotFound)
			return
		}
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(tok), []byte(token)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="rakhsh-metrics"`)
			http.Error(w, "Unauthorized: /metrics needs the metrics token (Authorization: Bearer TOKEN)", http.StatusUnauthorized)
			return
		}
		prom.ServeHTTP(w, r)
	})
}

// newAgentRegistry is the registry of a standalone agent's /metrics: its node and VMs, its
// queue, the Go runtime and the process.
func newAgentRegistry(collectors []prometheus.Collector) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors...)
	reg.MustRegister(runtime.MetricsCollectors()...)
	reg.MustRegister(prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return reg
}

// storeSizeCollector reports the size of the embedded store's file.
func storeSizeCollector(dataDir string) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "rakhsh_store_size_bytes",
		Help: "Size of the embedded store's file (DATA-DIR/rakhsh.db; bolt store only)."}, func() float64 {
		fi, err := os.Stat(filepath.Join(dataDir, "rakhsh.db"))
		if err != nil {
			return 0
		}
		return float64(fi.Size())
	})
}

// metricsClientCA makes the TLS listener of --listen ask for a client certificate and verify
// one given against --metrics-client-ca; the API server lets a verified certificate read the
// metrics only. Clients without a certificate are not affected.
func metricsClientCA(cfg Config, tc *tls.Config) error {
	if cfg.MetricsClientCA == "" {
		return nil
	}
	pool, err := readCertPool("--metrics-client-ca", cfg.MetricsClientCA)
	if err != nil {
		return err
	}
	tc.ClientCAs, tc.ClientAuth = pool, tls.VerifyClientCertIfGiven
	return nil
}
