package apiserver

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

// TestMetricsCountRequests: /metrics counts each request by verb, resource, code and the
// calling component named in the User-Agent, and a stale write shows as a 409.
func TestMetricsCountRequests(t *testing.T) {
	c := localTestServer(t, t.TempDir(), Config{})
	ctx := testContext(t)
	sc := c.WithUserAgent("rakhsh/test-writer")
	s := &v1alpha1.Secret{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "Secret"}, ObjectMeta: v1alpha1.ObjectMeta{Name: "s1"}}
	if err := sc.Create(ctx, "secrets", "default", s, s); err != nil {
		t.Fatal(err)
	}
	stale := *s
	s.Labels = map[string]string{"changed": "yes"}
	if err := sc.Update(ctx, "secrets", "default", "s1", s, nil); err != nil {
		t.Fatal(err)
	}
	if err := sc.Update(ctx, "secrets", "default", "s1", &stale, nil); !client.IsConflict(err) {
		t.Fatalf("stale update: %v, want a conflict", err)
	}
	if _, err := c.List(ctx, "secrets", "default", client.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	body := getMetrics(t, c)
	for _, want := range []string{
		`rakhsh_apiserver_requests_total{code="201",component="test-writer",resource="secrets",subresource="",verb="create"} 1`,
		`rakhsh_apiserver_requests_total{code="200",component="test-writer",resource="secrets",subresource="",verb="update"} 1`,
		`rakhsh_apiserver_requests_total{code="409",component="test-writer",resource="secrets",subresource="",verb="update"} 1`,
		`rakhsh_apiserver_requests_total{code="200",component="other",resource="secrets",subresource="",verb="list"} 1`,
		`rakhsh_apiserver_request_duration_seconds_count{resource="secrets",verb="create"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", body)
	}
}

func getMetrics(t *testing.T, c *client.Client) string {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return c.DialRaw(ctx) }}}
	resp, err := hc.Get("http://rakhsh/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %s: %s", resp.Status, b)
	}
	return string(b)
}

func TestCallerComponent(t *testing.T) {
	for ua, want := range map[string]string{
		"rakhsh/vm-controller": "vm-controller", "rakhsh/agent (linux)": "agent", "curl/8.0": "other",
		"rakhsh/": "other", "rakhsh/Evil\"label": "other", "rakhsh/" + strings.Repeat("a", 50): "other",
	} {
		if got := callerComponent(ua); got != want {
			t.Errorf("callerComponent(%q) = %q, want %q", ua, got, want)
		}
	}
}
