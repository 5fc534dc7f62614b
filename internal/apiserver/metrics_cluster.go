package apiserver

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/registry"
	"github.com/rakhsh/rakhsh/internal/store"
)

// MetricsRegisterer is the registry of this server's /metrics: the serve process adds its
// in-process agent's node and VM series, the controllers' queues and the store's size there.
func (s *Server) MetricsRegisterer() prometheus.Registerer { return s.metrics.reg }

// metricsPaths are the paths a metrics token may read.
func isMetricsPath(p string) bool { return p == "/metrics" || p == sdPath }

// sdPath is the Prometheus HTTP service discovery endpoint.
const sdPath = "/sd/prometheus"

// metricsIdentity is the identity of a request with the metrics token: it may read /metrics
// and /sd/prometheus and nothing else (authorize knows no rule for it, so every other path is
// refused).
var metricsIdentity = Identity{Name: "system:metrics"}

// isMetricsToken says the request carries the read-only metrics token.
func (s *Server) isMetricsToken(r *http.Request) bool {
	if s.metricsToken == "" {
		return false
	}
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(tok), []byte(s.metricsToken)) == 1
}

// hasMetricsClientCert says the request came over TLS with a client certificate that the
// listener verified (serve --metrics-client-ca: the only CA client certificates are verified
// against). Such a certificate reads /metrics and /sd/prometheus only.
func hasMetricsClientCert(r *http.Request) bool {
	return r.TLS != nil && len(r.TLS.VerifiedChains) > 0
}

// MetricsHandler serves /metrics and /sd/prometheus alone (serve --metrics-listen): to the
// metrics token or the admin token.
func (s *Server) MetricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", s.serveMetrics)
	mux.HandleFunc("GET "+sdPath, s.serveSD)
	mux.HandleFunc("/", s.notFoundPath)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !isMetricsPath(r.URL.Path) {
			s.writeError(w, r, errs.New(errs.ErrNotFound, "the metrics listener serves /metrics and %s only", sdPath))
			return
		}
		id := metricsIdentity
		if !s.isMetricsToken(r) {
			var err error
			if id, err = s.authenticate(r); err != nil {
				s.writeError(w, r, err)
				return
			}
		}
		mux.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), identityKey, id)))
	})
}

// mayReadMetrics says who may read /metrics and the discovery: admins and the metrics token.
func mayReadMetrics(id Identity) bool {
	return id.Admin || (id.Name == metricsIdentity.Name && id.Node == "" && id.JoinToken == "")
}

// sdGroup is one target group of Prometheus' HTTP service discovery.
type sdGroup struct {
	Targets []string          `json:"targets"`
	Labels  map[string]string `json:"labels"`
}

// serveSD answers Prometheus' HTTP service discovery: the metrics URL of every Node that
// publishes one (status.metricsURL) and of this control plane (--metrics-listen, or the
// /metrics of every control-plane member's API address). A URL both a node and the control
// plane serve (the all-in-one serve) is one target with the node's label. The node's label
// is rakhsh_node, not node: a target label named like a label of the scraped series would
// rename theirs (to exported_node), and the control plane's series name other nodes.
func (s *Server) serveSD(w http.ResponseWriter, r *http.Request) {
	if !mayReadMetrics(identityOf(r.Context())) {
		s.writeError(w, r, errs.New(errs.ErrForbidden, "Forbidden: %s is for administrators and the metrics token", sdPath))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	type entry struct {
		u      *url.URL
		labels map[string]string
	}
	byURL := map[string]*entry{}
	add := func(raw string, labels map[string]string) {
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return
		}
		k := u.String()
		e := byURL[k]
		if e == nil {
			e = &entry{u: u, labels: map[string]string{}}
			byURL[k] = e
		}
		for n, v := range labels {
			e.labels[n] = v
		}
	}
	if s.metricsURL != "" {
		add(s.metricsURL, map[string]string{"rakhsh_control_plane": "true"})
	}
	if s.controlPlane != nil && s.metricsURL == "" {
		if st, err := s.controlPlane(ctx); err == nil {
			for _, m := range st.Members {
				if strings.HasPrefix(m.APIAddress, "https://") {
					add(strings.TrimSuffix(m.APIAddress, "/")+"/metrics", map[string]string{"rakhsh_control_plane": "true"})
				}
			}
		}
	}
	res, err := s.store.List(ctx, prefix(nodeStrategy.Info, ""), store.ListOptions{})
	if err != nil {
		s.writeError(w, r, errs.New(errs.ErrUnavailable, "listing nodes: %v", err))
		return
	}
	for _, kv := range res.KVs {
		var n v1alpha1.Node
		if json.Unmarshal(kv.Value, &n) != nil || n.Status.MetricsURL == "" {
			continue
		}
		add(n.Status.MetricsURL, map[string]string{"rakhsh_node": n.Name})
	}
	keys := make([]string, 0, len(byURL))
	for k := range byURL {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]sdGroup, 0, len(keys))
	for _, k := range keys {
		e := byURL[k]
		e.labels["__scheme__"] = e.u.Scheme
		e.labels["__metrics_path__"] = e.u.EscapedPath()
		if e.labels["__metrics_path__"] == "" {
			e.labels["__metrics_path__"] = "/metrics"
		}
		out = append(out, sdGroup{Targets: []string{e.u.Host}, Labels: e.labels})
	}
	writeJSON(w, http.StatusOK, out)
}

// storeMetrics times the store's calls.
type storeMetrics struct {
	store.Store
	latency *prometheus.HistogramVec
}

func newStoreMetrics(st store.Store, reg prometheus.Registerer) store.Store {
	if st == nil {
		return nil
	}
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "rakhsh_store_request_duration_seconds",
		Help:    "Time of the API server's store calls, by operation (get, list, create, update, delete) and result (ok, error).",
		Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5},
	}, []string{"operation", "result"})
	reg.MustRegister(h)
	return &storeMetrics{Store: st, latency: h}
}

func (m *storeMetrics) observe(op string, start time.Time, err error) {
	res := "ok"
	if err != nil && !errors.Is(err, errs.ErrNotFound) && !errors.Is(err, errs.ErrConflict) && !errors.Is(err, errs.ErrAlreadyExists) {
		res = "error"
	}
	m.latency.WithLabelValues(op, res).Observe(time.Since(start).Seconds())
}

func (m *storeMetrics) Get(ctx context.Context, key string) (store.KV, error) {
	start := time.Now()
	kv, err := m.Store.Get(ctx, key)
	m.observe("get", start, err)
	return kv, err
}

func (m *storeMetrics) List(ctx context.Context, prefix string, opts store.ListOptions) (store.ListResult, error) {
	start := time.Now()
	r, err := m.Store.List(ctx, prefix, opts)
	m.observe("list", start, err)
	return r, err
}

func (m *storeMetrics) Create(ctx context.Context, key string, value []byte) (int64, error) {
	start := time.Now()
	rev, err := m.Store.Create(ctx, key, value)
	m.observe("create", start, err)
	return rev, err
}

func (m *storeMetrics) Update(ctx context.Context, key string, value []byte, expectRev int64) (int64, error) {
	start := time.Now()
	rev, err := m.Store.Update(ctx, key, value, expectRev)
	m.observe("update", start, err)
	return rev, err
}

func (m *storeMetrics) Delete(ctx context.Context, key string, expectRev int64) (int64, []byte, error) {
	start := time.Now()
	rev, v, err := m.Store.Delete(ctx, key, expectRev)
	m.observe("delete", start, err)
	return rev, v, err
}

// clusterCollector counts the cluster's objects at scrape time: nodes and their readiness,
// images and disks by phase, VM operations by type and phase, and the control plane's
// leader.
type clusterCollector struct{ s *Server }

var (
	descNodeReady = prometheus.NewDesc("rakhsh_node_ready", "1 when the Node's Ready condition is True (its agent heartbeats and holds its lease), else 0; as the control plane sees it.", []string{"node"}, nil)
	descImages    = prometheus.NewDesc("rakhsh_images", "Images by kind (ClusterVirtualImage, VirtualImage) and phase.", []string{"kind", "phase"}, nil)
	descDisks     = prometheus.NewDesc("rakhsh_disks", "VirtualDisks by phase.", []string{"phase"}, nil)
	descVMOps     = prometheus.NewDesc("rakhsh_vm_operations", "VirtualMachineOperations by type (Start, Stop, Restart, Migrate, Evict, ...) and phase.", []string{"type", "phase"}, nil)
	descLeader    = prometheus.NewDesc("rakhsh_controlplane_has_leader", "1 when a control-plane member is elected to run the controllers, else 0.", nil, nil)
	descMembers   = prometheus.NewDesc("rakhsh_controlplane_members", "Control-plane members (serve processes) registered.", nil, nil)
	descEtcdErr   = prometheus.NewDesc("rakhsh_controlplane_etcd_healthy", "On an etcd store: 1 when every etcd member answered the status call and is healthy, else 0.", nil, nil)
	descEtcdSize  = prometheus.NewDesc("rakhsh_etcd_member_db_size_bytes", "On an etcd store: the size of each etcd member's database file.", []string{"member"}, nil)
)

func (clusterCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descNodeReady, descImages, descDisks, descVMOps, descLeader, descMembers, descEtcdErr, descEtcdSize} {
		ch <- d
	}
}

func (c clusterCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	list := func(resource string, each func(b []byte)) {
		st, ok := registry.ByResource(resource)
		if !ok {
			return
		}
		res, err := c.s.store.List(ctx, prefix(st.Info, ""), store.ListOptions{})
		if err != nil {
			return
		}
		for _, kv := range res.KVs {
			each(kv.Value)
		}
	}
	g := func(d *prometheus.Desc, v float64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, lv...)
	}
	list("nodes", func(b []byte) {
		var n v1alpha1.Node
		if json.Unmarshal(b, &n) != nil {
			return
		}
		ready := 0.0
		if cond := v1alpha1.FindCondition(n.Status.Conditions, v1alpha1.NodeConditionReady); cond != nil && cond.Status == v1alpha1.ConditionTrue {
			ready = 1
		}
		g(descNodeReady, ready, n.Name)
	})
	type kp struct{ k, p string }
	// Every known phase is reported, zeros included, so that rules can take deltas.
	images := map[kp]int{}
	for _, k := range []string{"ClusterVirtualImage", "VirtualImage"} {
		for _, p := range []v1alpha1.ImagePhase{v1alpha1.ImagePhasePending, v1alpha1.ImagePhaseProvisioning, v1alpha1.ImagePhaseWaitForUserUpload,
			v1alpha1.ImagePhaseReady, v1alpha1.ImagePhaseFailed, v1alpha1.ImagePhaseTerminating, v1alpha1.ImagePhaseImageLost} {
			images[kp{k, string(p)}] = 0
		}
	}
	for _, res := range []struct{ resource, kind string }{{"clustervirtualimages", "ClusterVirtualImage"}, {"virtualimages", "VirtualImage"}} {
		list(res.resource, func(b []byte) {
			var o struct {
				Status struct{ Phase string } `json:"status"`
			}
			if json.Unmarshal(b, &o) == nil {
				images[kp{res.kind, phaseOr(o.Status.Phase)}]++
			}
		})
	}
	for k, n := range images {
		g(descImages, float64(n), k.k, k.p)
	}
	disks := map[string]int{}
	for _, p := range []v1alpha1.DiskPhase{v1alpha1.DiskPhasePending, v1alpha1.DiskPhaseProvisioning, v1alpha1.DiskPhaseWaitForUserUpload,
		v1alpha1.DiskPhaseWaitForFirstConsumer, v1alpha1.DiskPhaseReady, v1alpha1.DiskPhaseResizing, v1alpha1.DiskPhaseFailed,
		v1alpha1.DiskPhaseTerminating, v1alpha1.DiskPhaseMigrating} {
		disks[string(p)] = 0
	}
	list("virtualdisks", func(b []byte) {
		var o struct {
			Status struct{ Phase string } `json:"status"`
		}
		if json.Unmarshal(b, &o) == nil {
			disks[phaseOr(o.Status.Phase)]++
		}
	})
	for p, n := range disks {
		g(descDisks, float64(n), p)
	}
	ops := map[kp]int{}
	for _, t := range []v1alpha1.VMOPType{v1alpha1.VMOPTypeStart, v1alpha1.VMOPTypeStop, v1alpha1.VMOPTypeRestart, v1alpha1.VMOPTypeMigrate,
		v1alpha1.VMOPTypeEvict, v1alpha1.VMOPTypeRestore, v1alpha1.VMOPTypeClone, v1alpha1.VMOPTypeHibernate} {
		for _, p := range []v1alpha1.VMOPPhase{v1alpha1.VMOPPhasePending, v1alpha1.VMOPPhaseInProgress, v1alpha1.VMOPPhaseCompleted,
			v1alpha1.VMOPPhaseFailed, v1alpha1.VMOPPhaseTerminating, v1alpha1.VMOPPhaseSuperseded} {
			ops[kp{string(t), string(p)}] = 0
		}
	}
	list("virtualmachineoperations", func(b []byte) {
		var o struct {
			Spec   struct{ Type string }  `json:"spec"`
			Status struct{ Phase string } `json:"status"`
		}
		if json.Unmarshal(b, &o) == nil {
			ops[kp{o.Spec.Type, phaseOr(o.Status.Phase)}]++
		}
	})
	for k, n := range ops {
		g(descVMOps, float64(n), k.k, k.p)
	}
	if c.s.controlPlane != nil {
		if st, err := c.s.controlPlane(ctx); err == nil {
			has := 0.0
			if st.Leader != nil && st.Leader.Name != "" {
				has = 1
			}
			g(descLeader, has)
			g(descMembers, float64(len(st.Members)))
			if len(st.Etcd) > 0 || st.EtcdError != "" {
				healthy := 1.0
				if st.EtcdError != "" {
					healthy = 0
				}
				for _, m := range st.Etcd {
					if !m.Healthy {
						healthy = 0
					}
					if m.DBSize > 0 && m.Name != "" {
						g(descEtcdSize, float64(m.DBSize), m.Name)
					}
				}
				g(descEtcdErr, healthy)
			}
		} else {
			g(descLeader, 0)
		}
	}
}
