package server

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestAgentMetricsHandler: a joined agent's --metrics-listen answers GET /metrics to the
// metrics token only, and nothing else.
func TestAgentMetricsHandler(t *testing.T) {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "rakhsh_test_gauge", Help: "test"})
	srv := httptest.NewServer(agentMetricsHandler(newAgentRegistry([]prometheus.Collector{g}), "metrics-token-0123456789"))
	defer srv.Close()
	for _, tc := range []struct {
		path, token string
		want        int
		body        string
	}{
		{"/metrics", "metrics-token-0123456789", 200, "rakhsh_test_gauge 0"},
		{"/metrics", "", 401, "metrics token"},
		{"/metrics", "metrics-token-0123456780", 401, ""},
		{"/other", "metrics-token-0123456789", 404, ""},
	} {
		req, _ := http.NewRequest("GET", srv.URL+tc.path, nil)
		if tc.token != "" {
			req.Header.Set("Authorization", "Bearer "+tc.token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want || !strings.Contains(string(b), tc.body) {
			t.Errorf("GET %s token %q: %d %.200s, want %d with %q", tc.path, tc.token, resp.StatusCode, b, tc.want, tc.body)
		}
	}
}

func TestReadMetricsToken(t *testing.T) {
	dir := t.TempDir()
	short := filepath.Join(dir, "short")
	_ = os.WriteFile(short, []byte("abc\n"), 0o600)
	if _, err := readMetricsToken(short); err == nil || !strings.Contains(err.Error(), "shorter than 16") {
		t.Errorf("a short token: %v", err)
	}
	good := filepath.Join(dir, "good")
	_ = os.WriteFile(good, []byte("0123456789abcdef0123\nrest\n"), 0o600)
	if tok, err := readMetricsToken(good); err != nil || tok != "0123456789abcdef0123" {
		t.Errorf("token %q, %v", tok, err)
	}
	if _, err := readMetricsToken(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "--metrics-token-file") {
		t.Errorf("a missing file: %v", err)
	}
}

// TestCheckPrometheusURL: serve --prometheus-url takes an http(s) URL with a host, without a
// trailing slash kept; anything else is refused naming the flag.
func TestCheckPrometheusURL(t *testing.T) {
	for in, want := range map[string]string{"": "", "http://10.0.0.5:9090": "http://10.0.0.5:9090", "https://prom.example:9090/prometheus/": "https://prom.example:9090/prometheus"} {
		if got, err := checkPrometheusURL(in); err != nil || got != want {
			t.Errorf("%q: %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"10.0.0.5:9090", "ftp://x", "http://", "http://u:p@x:9090", "http://x:9090/?q=1", "http://x/#f", "::"} {
		if _, err := checkPrometheusURL(bad); err == nil || !strings.Contains(err.Error(), "--prometheus-url") {
			t.Errorf("%q: %v, want a refusal naming --prometheus-url", bad, err)
		}
	}
}
