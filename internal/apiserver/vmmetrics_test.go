package apiserver

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/testutil"
)

// TestVMMetricsSubresource: the metrics subresource answers a VM's series from Prometheus
// with the server's own queries (the VM's project and name as quoted label values, the range
// and step from ?range=), leaves out NaN samples, refuses a bad range and other methods, says
// clearly when no Prometheus is configured or it fails, and 404s for a VM that does not exist.
func TestVMMetricsSubresource(t *testing.T) {
	var mu sync.Mutex
	var queries []url.Values
	fail := false
	prom := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		queries = append(queries, r.URL.Query())
		f := fail
		mu.Unlock()
		if r.URL.Path != "/api/v1/query_range" || f {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"status":"error","errorType":"bad_data","error":"parse error"}`))
			return
		}
		if strings.Contains(r.URL.Query().Get("query"), "disk_read") {
			_, _ = w.Write([]byte(`{"status":"success","data":{"resultType":"matrix","result":[]}}`))
			return
		}
		_, _ = w.Write([]byte(`{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1000,"0.5"],[1030,"NaN"],[1060,"2"]]}]}}`))
	}))
	defer prom.Close()
	dir := testutil.ShortTempDir(t, "rk-vmmetrics")
	now := time.Unix(1_800_000_000, 0)
	c := localTestServer(t, dir, Config{PrometheusURL: prom.URL, Now: func() time.Time { return now }})
	ctx := testContext(t)
	createVM1(t, ctx, c)
	path := client.Path("virtualmachines", "default", "vm1", SubMetrics)
	var got VMMetrics
	if err := c.Do(ctx, "GET", path, url.Values{"range": {"2h"}}, "", nil, &got); err != nil {
		t.Fatal(err)
	}
	if got.RangeSeconds != 7200 || got.StepSeconds != 60 || got.End != now.Unix() || len(got.Series) != len(vmMetricQueries) {
		t.Fatalf("answer: range %d step %d end %d, %d series", got.RangeSeconds, got.StepSeconds, got.End, len(got.Series))
	}
	for _, s := range got.Series {
		want := 2
		if s.Name == "diskRead" {
			want = 0
		}
		if len(s.Points) != want || (want == 2 && (s.Points[0] != [2]float64{1000, 0.5} || s.Points[1] != [2]float64{1060, 2})) {
			t.Errorf("series %s (%s): %v, want %d points without the NaN", s.Name, s.Unit, s.Points, want)
		}
	}
	mu.Lock()
	if len(queries) != len(vmMetricQueries) {
		t.Fatalf("%d queries sent, want %d", len(queries), len(vmMetricQueries))
	}
	for _, q := range queries {
		if !strings.Contains(q.Get("query"), `{project="default",name="vm1"}`) || q.Get("step") != "60" ||
			q.Get("start") != "1799992800" || q.Get("end") != "1800000000" {
			t.Errorf("query sent: %v", q)
		}
		if strings.Contains(q.Get("query"), "rate(") && !strings.Contains(q.Get("query"), "[240s]") {
			t.Errorf("rate window: %s, want 4 steps", q.Get("query"))
		}
	}
	queries = nil
	fail = true
	mu.Unlock()
	if err := c.Do(ctx, "GET", path, nil, "", nil, &got); client.Reason(err) != v1alpha1.ReasonServiceUnavailable || !strings.Contains(err.Error(), "parse error") {
		t.Errorf("Prometheus failing: %v, want ServiceUnavailable with its error", err)
	}
	for _, bad := range []string{"10s", "8d", "soon"} {
		if err := c.Do(ctx, "GET", path, url.Values{"range": {bad}}, "", nil, nil); client.Reason(err) != v1alpha1.ReasonBadRequest || !strings.Contains(err.Error(), bad) {
			t.Errorf("range %s: %v, want BadRequest naming it", bad, err)
		}
	}
	if err := c.Do(ctx, "POST", path, nil, "application/json", map[string]any{}, nil); client.Reason(err) != v1alpha1.ReasonMethodNotAllowed {
		t.Errorf("POST: %v, want MethodNotAllowed", err)
	}
	if err := c.Do(ctx, "GET", client.Path("virtualmachines", "default", "nope", SubMetrics), nil, "", nil, nil); !client.IsNotFound(err) {
		t.Errorf("a VM that does not exist: %v, want NotFound", err)
	}
	dir2 := dir + "/no-prometheus"
	if err := os.Mkdir(dir2, 0o700); err != nil {
		t.Fatal(err)
	}
	c2 := localTestServer(t, dir2, Config{})
	if err := c2.Create(ctx, "virtualmachines", "default", map[string]any{"kind": "VirtualMachine", "metadata": map[string]any{"name": "vm1"},
		"spec": map[string]any{"runPolicy": "AlwaysOff", "cpu": map[string]any{"cores": 1}, "memory": map[string]any{"size": "128Mi"}}}, nil); err != nil {
		t.Fatal(err)
	}
	if err := c2.Do(ctx, "GET", path, nil, "", nil, nil); client.Reason(err) != v1alpha1.ReasonServiceUnavailable || !strings.Contains(err.Error(), "--prometheus-url") {
		t.Errorf("no Prometheus: %v, want ServiceUnavailable naming --prometheus-url", err)
	}
}
