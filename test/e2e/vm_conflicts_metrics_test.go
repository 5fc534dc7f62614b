package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// scrapeMetrics reads the server's /metrics over its socket and returns every sample line
// of the named metric that has labels, as "labels" -> value.
func scrapeMetrics(t *testing.T, s *Serve, metric string) map[string]float64 {
	t.Helper()
	m, _ := readMetrics(t, s, metric)
	return m
}

// metricValue returns the value of a metric without labels, or -1 when it is missing.
func metricValue(t *testing.T, s *Serve, metric string) float64 {
	t.Helper()
	_, v := readMetrics(t, s, metric)
	return v
}

func readMetrics(t *testing.T, s *Serve, metric string) (map[string]float64, float64) {
	t.Helper()
	plain := -1.0
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", s.Socket())
		}}}
	resp, err := hc.Get("http://rakhsh/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET /metrics: %s: %s", resp.Status, b)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, metric+" "); ok {
			if plain, err = strconv.ParseFloat(v, 64); err != nil {
				t.Fatalf("metrics line %q: %v", line, err)
			}
			continue
		}
		if !strings.HasPrefix(line, metric+"{") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[line[len(metric):i]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("reading /metrics: %v", err)
	}
	return out, plain
}

// conflictsByComponent sums the 409 answers of rakhsh_apiserver_requests_total by calling
// component, and the total of all requests.
func conflictsByComponent(samples map[string]float64) (map[string]float64, float64) {
	out := map[string]float64{}
	var all float64
	for labels, v := range samples {
		all += v
		if !strings.Contains(labels, `code="409"`) {
			continue
		}
		comp := "?"
		if i := strings.Index(labels, `component="`); i >= 0 {
			rest := labels[i+len(`component="`):]
			comp = rest[:strings.IndexByte(rest, '"')]
		}
		if j := strings.Index(labels, `resource="`); j >= 0 {
			rest := labels[j+len(`resource="`):]
			comp += "/" + rest[:strings.IndexByte(rest, '"')]
		}
		out[comp] += v
	}
	return out, all
}

// TestVMCreateMakesNoConflicts: from create to a running guest, through a stop and a start,
// to its deletion, no component of the server meets a 409 Conflict: each status field has one writer
// and binding is a subresource, so nobody races for the same resourceVersion. The server
// counts its answers by code and caller in /metrics.
func TestVMCreateMakesNoConflicts(t *testing.T) {
	sideBySide(t)
	s := vmServe(t, "--log-level", "debug")
	vmSetupGuest(t, s, "root")
	before, _ := conflictsByComponent(scrapeMetrics(t, s, "rakhsh_apiserver_requests_total"))

	s.MustCLI(vmManifest("vm1", "root", "AlwaysOnUnlessStoppedManually", "256Mi"), "apply", "-f", "-")
	s.MustCLI("", "wait", "vm", "vm1", "--for", "condition=GuestReady", "--timeout", "2m")
	s.MustCLI("", "vm", "stop", "vm1", "--wait")
	s.MustCLI("", "vm", "start", "vm1", "--wait")
	s.MustCLI("", "wait", "vm", "vm1", "--for", "condition=GuestReady", "--timeout", "2m")

	s.MustCLI("", "delete", "vm", "vm1", "--wait", "--timeout", "90s")

	after, total := conflictsByComponent(scrapeMetrics(t, s, "rakhsh_apiserver_requests_total"))
	if total == 0 {
		t.Fatal("the server counted no requests at all: /metrics does not count")
	}
	var bad []string
	for k, v := range after {
		if d := v - before[k]; d > 0 {
			bad = append(bad, fmt.Sprintf("%s: %v", k, d))
		}
	}
	sort.Strings(bad)
	t.Logf("requests counted: %v; 409s before the VM was created: %v", total, before)
	if len(bad) > 0 {
		t.Fatalf("409 Conflicts while the VM was created, started, stopped, started and deleted (component/resource: count): %s\n%s",
			strings.Join(bad, ", "), s.Logs())
	}
}
