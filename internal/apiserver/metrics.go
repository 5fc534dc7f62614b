package apiserver

import (
	"bufio"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rakhsh/rakhsh/internal/errs"
)

// apiMetrics are the API server's own series, served at /metrics. Each server has its own
// registry, so several servers in one process (tests) do not share counters.
type apiMetrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	watches  prometheus.Gauge
}

func newAPIMetrics() *apiMetrics {
	m := &apiMetrics{reg: prometheus.NewRegistry()}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rakhsh_apiserver_requests_total",
		Help: "API requests by verb, resource, subresource, HTTP status code and calling component " +
			"(the rakhsh/NAME User-Agent of Rakhsh's own components, else \"other\").",
	}, []string{"verb", "resource", "subresource", "code", "component"})
	m.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "rakhsh_apiserver_request_duration_seconds",
		Help:    "Time to answer an API request (watches and streams excluded), by verb and resource.",
		Buckets: []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5},
	}, []string{"verb", "resource"})
	m.watches = prometheus.NewGauge(prometheus.GaugeOpts{Name: "rakhsh_apiserver_watches",
		Help: "Watch streams open on this API server."})
	m.reg.MustRegister(m.requests, m.latency,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

// handler serves the registry in the Prometheus text or OpenMetrics format.
func (m *apiMetrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{EnableOpenMetrics: true})
}

// instrument counts every request the mux answers. It runs after the mux so the route's
// path values (resource, subresource) are known.
func (m *apiMetrics) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		resource := r.PathValue("resource")
		if resource == "" {
			resource = "none"
		}
		verb := "other"
		if resource != "none" {
			verb = strings.ToLower(requestVerb(r, r.PathValue("name") == ""))
		}
		code := rec.code
		if code == 0 {
			code = http.StatusOK
		}
		m.requests.WithLabelValues(verb, resource, r.PathValue("sub"), strconv.Itoa(code), callerComponent(r.UserAgent())).Inc()
		if verb != "watch" && !rec.hijacked && !isStreamSub(r.PathValue("sub")) {
			m.latency.WithLabelValues(verb, resource).Observe(time.Since(start).Seconds())
		}
	})
}

func isStreamSub(sub string) bool {
	switch sub {
	case "console", "vnc", "log", "data", "portforward":
		return true
	}
	return false
}

// callerComponent keeps the label's values few: Rakhsh's components name themselves
// rakhsh/NAME in their User-Agent; every other client is "other".
func callerComponent(ua string) string {
	name, ok := strings.CutPrefix(ua, "rakhsh/")
	if !ok || name == "" || len(name) > 40 {
		return "other"
	}
	if i := strings.IndexAny(name, " /("); i >= 0 {
		name = name[:i]
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return "other"
		}
	}
	return name
}

// statusRecorder remembers the status code written, and still lets streams flush and
// websockets hijack the connection.
type statusRecorder struct {
	http.ResponseWriter
	code     int
	hijacked bool
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.code == 0 {
		s.code = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(p []byte) (int, error) {
	if s.code == 0 {
		s.code = http.StatusOK
	}
	return s.ResponseWriter.Write(p)
}

func (s *statusRecorder) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (s *statusRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	h, ok := s.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("the connection cannot be taken over")
	}
	s.hijacked = true
	if s.code == 0 {
		s.code = http.StatusSwitchingProtocols
	}
	return h.Hijack()
}

// Unwrap lets http.ResponseController reach the connection's own writer.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// serveMetrics answers /metrics for administrators (the local socket is one).
func (s *Server) serveMetrics(w http.ResponseWriter, r *http.Request) {
	if !mayReadMetrics(identityOf(r.Context())) {
		s.writeError(w, r, errs.New(errs.ErrForbidden, "Forbidden: /metrics is for administrators and the metrics token"))
		return
	}
	s.metrics.handler().ServeHTTP(w, r)
}
