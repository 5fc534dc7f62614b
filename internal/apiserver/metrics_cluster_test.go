package apiserver

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

func metricsTestServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	return projectServer(t, t.TempDir(), cfg)
}

func get(t *testing.T, url, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return roundTrip(t, req)
}

// roundTrip sends req with the default client and returns the status code and the body.
func roundTrip(t *testing.T, req *http.Request) (int, string) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestMetricsToken: the read-only metrics token reads /metrics and /sd/prometheus on the API
// listener and on the metrics listener, and nothing else; admin reads them too; no token
// reads nothing.
func TestMetricsToken(t *testing.T) {
	const admin, metrics = "admin-token-0123456789", "metrics-token-0123456789"
	s := metricsTestServer(t, Config{AdminToken: admin, MetricsToken: metrics})
	api := httptest.NewServer(s.RemoteHandler())
	defer api.Close()
	ml := httptest.NewServer(s.MetricsHandler())
	defer ml.Close()
	for _, tc := range []struct {
		url, token string
		want       int
	}{
		{api.URL + "/metrics", metrics, 200},
		{api.URL + "/sd/prometheus", metrics, 200},
		{api.URL + "/metrics", admin, 200},
		{api.URL + "/metrics", "", 401},
		{api.URL + "/metrics", "wrong-token-0123456789", 401},
		{api.URL + "/apis/" + v1alpha1.APIVersion + "/namespaces/default/virtualmachines", metrics, 401},
		{api.URL + "/apis/" + v1alpha1.APIVersion + "/nodes", metrics, 401},
		{ml.URL + "/metrics", metrics, 200},
		{ml.URL + "/sd/prometheus", metrics, 200},
		{ml.URL + "/metrics", admin, 200},
		{ml.URL + "/metrics", "", 401},
		{ml.URL + "/apis", metrics, 404},
		{ml.URL + "/apis", admin, 404},
	} {
		if code, body := get(t, tc.url, tc.token); code != tc.want {
			t.Errorf("GET %s with token %q: %d, want %d: %.200s", tc.url, tc.token, code, tc.want, body)
		}
	}
	// Without a metrics token configured, no token is the metrics token.
	s2 := metricsTestServer(t, Config{AdminToken: admin})
	api2 := httptest.NewServer(s2.RemoteHandler())
	defer api2.Close()
	if code, _ := get(t, api2.URL+"/metrics", ""); code != 401 {
		t.Errorf("no metrics token configured, no bearer: %d, want 401", code)
	}
}

// TestServiceDiscovery: /sd/prometheus lists every Node's metrics URL with its node label,
// and the control plane's; a URL both serve is one target with both labels.
func TestServiceDiscovery(t *testing.T) {
	const metrics = "metrics-token-0123456789"
	s := metricsTestServer(t, Config{MetricsToken: metrics, MetricsURL: "http://10.0.0.1:9464/metrics"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for name, u := range map[string]string{"n1": "http://10.0.0.1:9464/metrics", "n2": "https://10.0.0.2:9100/node/metrics", "n3": ""} {
		n := v1alpha1.Node{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "Node"}, ObjectMeta: v1alpha1.ObjectMeta{Name: name},
			Status: v1alpha1.NodeStatus{MetricsURL: u}}
		b, _ := json.Marshal(n)
		if _, err := s.store.Create(ctx, key(nodeStrategy.Info, "", name), b); err != nil {
			t.Fatal(err)
		}
	}
	srv := httptest.NewServer(s.MetricsHandler())
	defer srv.Close()
	code, body := get(t, srv.URL+"/sd/prometheus", metrics)
	if code != 200 {
		t.Fatalf("%d %s", code, body)
	}
	var groups []sdGroup
	if err := json.Unmarshal([]byte(body), &groups); err != nil {
		t.Fatal(err)
	}
	got := map[string]map[string]string{}
	for _, g := range groups {
		if len(g.Targets) != 1 {
			t.Fatalf("group %+v: want one target", g)
		}
		got[g.Targets[0]] = g.Labels
	}
	want := map[string]map[string]string{
		"10.0.0.1:9464": {"rakhsh_node": "n1", "rakhsh_control_plane": "true", "__scheme__": "http", "__metrics_path__": "/metrics"},
		"10.0.0.2:9100": {"rakhsh_node": "n2", "__scheme__": "https", "__metrics_path__": "/node/metrics"},
	}
	if len(got) != len(want) {
		t.Fatalf("targets %v, want %v", got, want)
	}
	for tg, labels := range want {
		for k, v := range labels {
			if got[tg][k] != v {
				t.Errorf("target %s label %s = %q, want %q (all: %v)", tg, k, got[tg][k], v, got[tg])
			}
		}
		if len(got[tg]) != len(labels) {
			t.Errorf("target %s labels %v, want %v", tg, got[tg], labels)
		}
	}
}

// TestClusterMetrics: node readiness, object counts by phase (zeros included), watches and
// store latency are on /metrics.
func TestClusterMetrics(t *testing.T) {
	const admin = "admin-token-0123456789"
	s := metricsTestServer(t, Config{AdminToken: admin})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n := v1alpha1.Node{ObjectMeta: v1alpha1.ObjectMeta{Name: "n1"}, Status: v1alpha1.NodeStatus{
		Conditions: []v1alpha1.Condition{{Type: v1alpha1.NodeConditionReady, Status: v1alpha1.ConditionTrue}}}}
	b, _ := json.Marshal(n)
	if _, err := s.store.Create(ctx, key(nodeStrategy.Info, "", "n1"), b); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s.RemoteHandler())
	defer srv.Close()
	_, body := get(t, srv.URL+"/metrics", admin)
	for _, want := range []string{
		`rakhsh_node_ready{node="n1"} 1`,
		`rakhsh_images{kind="VirtualImage",phase="Failed"} 0`,
		`rakhsh_disks{phase="Ready"} 0`,
		`rakhsh_vm_operations{phase="Failed",type="Migrate"} 0`,
		`rakhsh_apiserver_watches 0`,
		`rakhsh_store_request_duration_seconds_count{operation="create",result="ok"}`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", body)
	}
}
