package apiserver

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rakhsh/rakhsh/internal/errs"
)

// SubMetrics is the VM subresource with the VM's recent metrics as time series, read from the
// Prometheus that scrapes the cluster (serve --prometheus-url): CPU, memory, disk and network,
// for the web UI's charts (docs/metrics.md). The queries are the server's own, with the VM's
// project and name as the only variables: a caller chooses the time range, never the PromQL.
const SubMetrics = "metrics"

// Bounds of ?range= of the metrics subresource.
const (
	vmMetricsDefaultRange = time.Hour
	vmMetricsMinRange     = time.Minute
	vmMetricsMaxRange     = 7 * 24 * time.Hour
	// vmMetricsPoints is about how many points a series has: the step is the range over it.
	vmMetricsPoints = 120
	// vmMetricsTimeout bounds the Prometheus queries of one request.
	vmMetricsTimeout = 10 * time.Second
)

// VMMetrics is the answer of the metrics subresource.
type VMMetrics struct {
	// RangeSeconds and StepSeconds are the time range asked for and the spacing of points.
	RangeSeconds int64 `json:"rangeSeconds"`
	StepSeconds  int64 `json:"stepSeconds"`
	// End is the last point's time (Unix seconds).
	End    int64            `json:"end"`
	Series []VMMetricSeries `json:"series"`
}

// VMMetricSeries is one chart's series: Points are [Unix seconds, value] pairs; an empty
// list means Prometheus has no samples of it in the range (a VM without a disk or NIC on
// host networking has no disk or network series).
type VMMetricSeries struct {
	Name   string       `json:"name"`
	Unit   string       `json:"unit"`
	Points [][2]float64 `json:"points"`
}

// vmMetricQuery is one series of the answer: SEL stands for the VM's label matchers, WIN
// for the rate window.
type vmMetricQuery struct{ name, unit, query string }

var vmMetricQueries = []vmMetricQuery{
	{"cpu", "cores", `sum(rate(rakhsh_vm_cpu_seconds_total{SEL}[WIN]))`},
	{"memory", "bytes", `sum(rakhsh_vm_memory_resident_bytes{SEL})`},
	{"diskRead", "bytes/s", `sum(rate(rakhsh_vm_disk_read_bytes_total{SEL}[WIN]))`},
	{"diskWrite", "bytes/s", `sum(rate(rakhsh_vm_disk_write_bytes_total{SEL}[WIN]))`},
	{"networkReceive", "bytes/s", `sum(rate(rakhsh_vm_network_receive_bytes_total{SEL}[WIN]))`},
	{"networkTransmit", "bytes/s", `sum(rate(rakhsh_vm_network_transmit_bytes_total{SEL}[WIN]))`},
}

// promQuote quotes s as a PromQL string.
func promQuote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s) + `"`
}

// vmMetricsRange reads ?range= (a Go duration, default one hour).
func vmMetricsRange(r *http.Request) (time.Duration, error) {
	v := r.URL.Query().Get("range")
	if v == "" {
		return vmMetricsDefaultRange, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < vmMetricsMinRange || d > vmMetricsMaxRange {
		return 0, errs.New(errs.ErrBadRequest, "range %q: want a duration from %s to %s, such as 1h or 30m", v, vmMetricsMinRange, "168h")
	}
	return d, nil
}

func (s *Server) serveVMMetrics(w http.ResponseWriter, r *http.Request, t target) {
	if !s.allowOnly(w, r, http.MethodGet) {
		return
	}
	rng, err := vmMetricsRange(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if _, err := s.loadStreamVM(r.Context(), t); err != nil {
		s.writeError(w, r, err)
		return
	}
	if s.prometheusURL == "" {
		s.writeError(w, r, errs.New(errs.ErrUnavailable, "no Prometheus is configured for this cluster: the VM's metrics need one that scrapes it (rakhsh serve --prometheus-url; docs/metrics.md)"))
		return
	}
	step := max(rng/vmMetricsPoints, 5*time.Second).Round(time.Second)
	window := max(4*step, time.Minute)
	end := s.now().Truncate(time.Second)
	out := VMMetrics{RangeSeconds: int64(rng / time.Second), StepSeconds: int64(step / time.Second), End: end.Unix(),
		Series: make([]VMMetricSeries, len(vmMetricQueries))}
	sel := "project=" + promQuote(t.namespace) + ",name=" + promQuote(t.name)
	ctx, cancel := context.WithTimeout(r.Context(), vmMetricsTimeout)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, len(vmMetricQueries))
	for i, q := range vmMetricQueries {
		out.Series[i] = VMMetricSeries{Name: q.name, Unit: q.unit, Points: [][2]float64{}}
		query := strings.NewReplacer("SEL", sel, "WIN", strconv.FormatInt(int64(window/time.Second), 10)+"s").Replace(q.query)
		wg.Add(1)
		go func() {
			defer wg.Done()
			pts, err := s.promRange(ctx, query, end.Add(-rng), end, step)
			if err != nil {
				errc <- err
				return
			}
			out.Series[i].Points = pts
		}()
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		s.writeError(w, r, errs.New(errs.ErrUnavailable, "reading the VM's metrics from Prometheus at %s: %v", s.prometheusURL, err))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(out)
}

// promRange runs a range query and returns the points of its one series (none if it has no
// samples).
func (s *Server) promRange(ctx context.Context, query string, start, end time.Time, step time.Duration) ([][2]float64, error) {
	v := url.Values{}
	v.Set("query", query)
	v.Set("start", strconv.FormatInt(start.Unix(), 10))
	v.Set("end", strconv.FormatInt(end.Unix(), 10))
	v.Set("step", strconv.FormatInt(int64(step/time.Second), 10))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(s.prometheusURL, "/")+"/api/v1/query_range?"+v.Encode(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, err
	}
	var ans struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Values [][2]any `json:"values"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &ans); err != nil {
		return nil, fmt.Errorf("%s: not a Prometheus answer", resp.Status)
	}
	if ans.Status != "success" {
		return nil, fmt.Errorf("%s: %s", resp.Status, ans.Error)
	}
	if ans.Data.ResultType != "matrix" {
		return nil, fmt.Errorf("a %q result, want a matrix", ans.Data.ResultType)
	}
	pts := [][2]float64{}
	if len(ans.Data.Result) == 0 {
		return pts, nil
	}
	for _, p := range ans.Data.Result[0].Values {
		ts, ok1 := p[0].(float64)
		vs, ok2 := p[1].(string)
		val, err := strconv.ParseFloat(vs, 64)
		if !ok1 || !ok2 || err != nil {
			return nil, fmt.Errorf("a malformed sample %v", p)
		}
		if math.IsNaN(val) || math.IsInf(val, 0) {
			continue // no value there (JSON has no NaN)
		}
		pts = append(pts, [2]float64{ts, val})
	}
	return pts, nil
}
