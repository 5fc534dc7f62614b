// Package apiserver is the HTTP edge of Rakhsh: Kubernetes-style REST paths, codecs, errors,
// watch streams and authentication. It is the only component that reads and writes the store.
package apiserver

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/images"
	"github.com/rakhsh/rakhsh/internal/nodestream"
	"github.com/rakhsh/rakhsh/internal/registry"
	"github.com/rakhsh/rakhsh/internal/store"
)

// MaxBodyBytes is the largest request body the API accepts.
const MaxBodyBytes = 3 << 20

// Version is reported by /version; set by the build.
var Version = "dev"

// Config holds what a Server needs.
type Config struct {
	Store store.Store
	Log   *slog.Logger
	// AdminToken is the bearer token that grants admin over TCP. Requests over the unix
	// socket are admin without a token.
	AdminToken string
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
	// BookmarkInterval is how often a watch stream gets a BOOKMARK; 0 means 30 s.
	BookmarkInterval time.Duration
	// LocalStreams serves the consoles, VNC and logs of the VMs on node NodeName, whose agent
	// runs in this process (all-in-one mode); it is called directly. The streams of VMs on
	// other nodes (and on this one when LocalStreams is nil) are proxied to their node's
	// agent.
	LocalStreams nodestream.Streams
	NodeName     string
	// DataDir, when LocalStreams is nil and NodeName is set, is the data dir of the agent in
	// this process: LocalStreams becomes that agent's stream service on it.
	DataDir string
	// Uploads receives the files PUT to upload URLs; nil: uploads are refused.
	Uploads *images.Uploads
	// ImageDataDir is the data dir whose image store the image controllers of this process
	// fill; the images' data subresource serves it. Empty: not available.
	ImageDataDir string
	// PeerCAFile, when set, is the cluster CA every control-plane member's serving certificate
	// is issued from (serve --ca-cert): an image whose file this server lacks is then fetched
	// from the other members (ControlPlane's members' API addresses) with the admin token,
	// which they share. Empty: no such proxying.
	PeerCAFile string
	// PortForwardRange is the host ports new port forwards may take; zero: any.
	PortForwardRange PortRange
	// OIDC, when set, makes ID tokens of that issuer credentials (oidc.go).
	OIDC *OIDCConfig
	// ControlPlane computes the status of the read-only ControlPlane object; nil: the
	// controlplanes resource answers 503.
	ControlPlane func(ctx context.Context) (v1alpha1.ControlPlaneStatus, error)
	// OnFenced is told the fence of every write the store refused as fenced (the elector
	// ends that term at once); it may be nil.
	OnFenced func(store.Fence)
	// MetricsToken is a read-only token for /metrics and /sd/prometheus only (serve
	// --metrics-token-file); empty: none (admin only).
	MetricsToken string
	// MetricsURL is this server's metrics URL for /sd/prometheus (serve --metrics-listen);
	// empty: each control-plane member's API address.
	MetricsURL string
	// PrometheusURL is the Prometheus that scrapes the cluster (serve --prometheus-url): the
	// VMs' metrics subresource reads their series from it. Empty: not available.
	PrometheusURL string
	// AuditLog receives the audit lines (audit.go); nil: no audit log.
	AuditLog *AuditLog
}

// Server serves the API.
type Server struct {
	store    store.Store
	log      *slog.Logger
	token    string
	now      func() time.Time
	bookmark time.Duration
	nodeName string
	// localStreams is Config.LocalStreams.
	localStreams nodestream.Streams
	// ticketMu guards ticketSweep, when expired stream tickets were last deleted.
	oidc        *oidcAuth // nil: no OIDC issuer (oidc.go)
	ticketMu    sync.Mutex
	ticketSweep time.Time
	// consoleSweep is when expired console tickets were last deleted (consoletickets.go).
	consoleSweep time.Time
	uploads      *images.Uploads
	// forwardRange is Config.PortForwardRange.
	forwardRange PortRange
	// admitMu orders this server's quota admissions; instance names it in quota locks.
	admitMu  sync.Mutex
	instance string
	imageDir string
	peerCA   string
	metrics  *apiMetrics
	// metricsToken and metricsURL are Config.MetricsToken and Config.MetricsURL.
	metricsToken, metricsURL string
	// prometheusURL is Config.PrometheusURL.
	prometheusURL string
	// controlPlane and onFenced are Config.ControlPlane and Config.OnFenced; fenced counts
	// the writes the store refused as fenced.
	controlPlane func(ctx context.Context) (v1alpha1.ControlPlaneStatus, error)
	onFenced     func(store.Fence)
	fenced       atomic.Int64
	auditLog     *AuditLog
	// authCache keeps the token records, Users and Projects users' requests read.
	authCache *authCache
	ctx       context.Context // ends when the server shuts down: ends watches
	cancel    context.CancelFunc
}

// New returns a Server.
func New(cfg Config) *Server {
	s := &Server{store: cfg.Store, log: cfg.Log, token: cfg.AdminToken, now: cfg.Now, bookmark: cfg.BookmarkInterval, nodeName: cfg.NodeName, localStreams: cfg.LocalStreams, uploads: cfg.Uploads, imageDir: cfg.ImageDataDir, peerCA: cfg.PeerCAFile, forwardRange: cfg.PortForwardRange,
		controlPlane: cfg.ControlPlane, onFenced: cfg.OnFenced, auditLog: cfg.AuditLog}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.localStreams == nil && cfg.DataDir != "" && cfg.NodeName != "" {
		s.localStreams = &nodestream.Service{DataDir: cfg.DataDir}
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.bookmark == 0 {
		s.bookmark = 30 * time.Second
	}
	if cfg.OIDC != nil {
		a, err := newOIDCAuth(*cfg.OIDC)
		if err != nil {
			s.log.Error("OIDC ID tokens are refused", "err", err) // CheckOIDCConfig tells serve first
		}
		s.oidc = a
	}
	s.metrics = newAPIMetrics()
	s.metricsToken, s.metricsURL, s.prometheusURL = cfg.MetricsToken, cfg.MetricsURL, cfg.PrometheusURL
	s.store = newStoreMetrics(s.store, s.metrics.reg) // metrics_cluster.go
	if s.store != nil {
		users, _ := registry.ByResource("users")
		projects, _ := registry.ByResource("projects")
		s.authCache = newAuthCache(s.store, userTokenKeyPrefix, prefix(users.Info, ""), prefix(projects.Info, ""))
		s.store = cacheStore{Store: s.store, cache: s.authCache} // authcache.go
	}
	s.metrics.reg.MustRegister(clusterCollector{s}, s.metrics.watches)
	s.metrics.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "rakhsh_apiserver_fenced_writes_total",
		Help: "Writes of controllers the store refused because their leadership term had ended.",
	}, func() float64 { return float64(s.fenced.Load()) }))
	s.ctx, s.cancel = context.WithCancel(context.Background())
	host, _ := os.Hostname()
	s.instance = fmt.Sprintf("%s/%d/%s", host, os.Getpid(), uuid.NewString()[:8])
	return s
}

// Shutdown ends every open watch stream so an http.Server can shut down.
func (s *Server) Shutdown() { s.cancel() }

type ctxKey int

const identityKey ctxKey = 1

// Identity says who makes a request.
type Identity struct {
	Name  string
	Admin bool
	// Node is set for a node agent's credential: the node's name (see authz.go).
	Node string
	// JoinToken is set for a join token, which may only get a node credential.
	JoinToken string
	// User is set for a user's token (see identity.go and authz_user.go): the user's name,
	// groups and cluster role, and the token's limits.
	User        string
	Groups      []string
	ClusterRole v1alpha1.ClusterRole
	// TokenID is the id of the user's token; TokenProject and TokenRole its limits.
	TokenID      string
	TokenProject string
	TokenRole    v1alpha1.ProjectRole
}

// LocalHandler serves the unix socket: every caller is admin (the socket is mode 0600).
func (s *Server) LocalHandler() http.Handler {
	mux := s.auditing(s.metrics.instrument(s.routes()))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r = r.WithContext(context.WithValue(r.Context(), identityKey, Identity{Name: "local-admin", Admin: true}))
		if r, err := withFence(r); err != nil {
			s.writeError(w, r, err)
		} else {
			mux.ServeHTTP(w, r)
		}
	})
}

// withFence puts the leadership fence of a request (header v1alpha1.HeaderLeaderFence, sent
// by the controllers of the elected serve process) on its context, so that every store write
// the request makes is fenced (see store.Fence). Only admin may send one: the controllers
// reach the API over their process's unix socket.
func withFence(r *http.Request) (*http.Request, error) {
	h := r.Header.Get(v1alpha1.HeaderLeaderFence)
	if h == "" {
		return r, nil
	}
	if id := identityOf(r.Context()); !id.Admin {
		return r, errs.New(errs.ErrForbidden, "%s may not send %s: only the controllers of a control-plane member (admin) write under a leadership term", id.describe(), v1alpha1.HeaderLeaderFence)
	}
	f, err := store.ParseFence(h)
	if err != nil {
		return r, errs.New(errs.ErrBadRequest, "header %s: %v", v1alpha1.HeaderLeaderFence, err)
	}
	return r.WithContext(store.WithFence(r.Context(), f)), nil
}

// RemoteHandler serves TCP: a bearer token is required for everything but health checks.
func (s *Server) RemoteHandler() http.Handler {
	mux := s.auditing(s.metrics.instrument(s.routes()))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" || r.URL.Path == "/readyz" || isUploadPath(r.URL.Path) || r.URL.Path == v1alpha1.IdentityPath+"/login" ||
			r.URL.Path == v1alpha1.IdentityPath+"/oidc" {
			mux.ServeHTTP(w, r)
			return
		}
		if isMetricsPath(r.URL.Path) && (s.isMetricsToken(r) || hasMetricsClientCert(r)) { // metrics_cluster.go
			mux.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), identityKey, metricsIdentity)))
			return
		}
		var id Identity
		var err error
		if ns, name, stream, ticket, ok := consoleTicketTarget(r); ok {
			id, err = s.redeemConsoleTicket(r, ns, name, stream, ticket) // consoletickets.go
		} else {
			id, err = s.authenticate(r)
		}
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		r = r.WithContext(context.WithValue(r.Context(), identityKey, id))
		if r, err := withFence(r); err != nil {
			s.writeError(w, r, err)
		} else {
			mux.ServeHTTP(w, r)
		}
	})
}

func (s *Server) authenticate(r *http.Request) (Identity, error) {
	h := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok || tok == "" {
		return Identity{}, errs.New(errs.ErrUnauthorized, "Unauthorized: a bearer token is required (Authorization: Bearer TOKEN)")
	}
	if s.token != "" && subtle.ConstantTimeCompare([]byte(tok), []byte(s.token)) == 1 {
		return Identity{Name: "admin", Admin: true}, nil
	}
	switch {
	case strings.HasPrefix(tok, userTokenPrefix):
		return s.authenticateUser(r.Context(), tok)
	case strings.HasPrefix(tok, nodeCredPrefix):
		return s.authenticateNode(r.Context(), tok)
	case strings.HasPrefix(tok, joinTokenPrefix):
		return s.authenticateJoin(r.Context(), tok)
	case s.oidc != nil && looksLikeJWT(tok):
		return s.authenticateOIDC(r.Context(), tok)
	}
	return Identity{}, errs.New(errs.ErrUnauthorized, "Unauthorized: the bearer token is not valid")
}

func (s *Server) routes() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { writeText(w, "ok") })
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.HandleFunc("GET /version", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, map[string]string{"gitVersion": Version})
	})
	mux.HandleFunc(images.UploadPathPrefix+"{token}", s.serveUpload)
	mux.HandleFunc("GET /apis", s.discoveryGroups)
	mux.HandleFunc("GET /apis/{$}", s.discoveryGroups)
	gv := "/apis/" + v1alpha1.APIVersion
	mux.HandleFunc("GET "+gv, s.discoveryResources)
	mux.HandleFunc("GET "+gv+"/{$}", s.discoveryResources)
	mux.HandleFunc(gv+"/"+controlPlaneResource, s.serveControlPlane)
	mux.HandleFunc(gv+"/"+controlPlaneResource+"/{name}", s.serveControlPlane)
	mux.HandleFunc(gv+"/namespaces/{ns}/{resource}", s.collection)
	mux.HandleFunc(gv+"/namespaces/{ns}/{resource}/{name}", s.object)
	mux.HandleFunc(gv+"/namespaces/{ns}/{resource}/{name}/{sub}", s.subresource)
	mux.HandleFunc(gv+"/{resource}", s.collection)
	mux.HandleFunc(gv+"/{resource}/{name}", s.object)
	mux.HandleFunc(gv+"/{resource}/{name}/{sub}", s.subresource)
	dh := "/apis/" + DeckhouseGroup + "/" + DeckhouseVersion
	mux.HandleFunc("GET "+dh, s.discoveryResources)
	mux.HandleFunc("GET "+dh+"/{$}", s.discoveryResources)
	mux.HandleFunc(dh+"/namespaces/{ns}/{resource}", asDeckhouse(s.collection))
	mux.HandleFunc(dh+"/namespaces/{ns}/{resource}/{name}", asDeckhouse(s.object))
	mux.HandleFunc(dh+"/namespaces/{ns}/{resource}/{name}/{sub}", asDeckhouse(s.subresource))
	mux.HandleFunc(dh+"/{resource}", asDeckhouse(s.collection))
	mux.HandleFunc(dh+"/{resource}/{name}", asDeckhouse(s.object))
	mux.HandleFunc(dh+"/{resource}/{name}/{sub}", asDeckhouse(s.subresource))
	mux.HandleFunc(v1alpha1.NodeAuthPath+"/jointokens", s.serveJoinTokens)
	mux.HandleFunc(v1alpha1.NodeAuthPath+"/jointokens/{id}", s.serveJoinToken)
	s.identityRoutes(mux)
	mux.HandleFunc("GET /metrics", s.serveMetrics)
	mux.HandleFunc("GET "+sdPath, s.serveSD)
	mux.HandleFunc("GET /openapi/v3", s.serveOpenAPIV3)
	mux.HandleFunc("GET /openapi/v3/", s.serveOpenAPIV3)
	mux.HandleFunc("GET /openapi/v2", s.serveOpenAPIV2)
	mux.HandleFunc("GET /api", func(w http.ResponseWriter, r *http.Request) {
		// No core group: kubectl asks for it in discovery.
		writeJSON(w, 200, map[string]any{"kind": "APIVersions", "versions": []string{}, "serverAddressByClientCIDRs": []any{}})
	})
	mux.HandleFunc("/", s.notFoundPath)
	return mux
}

func (s *Server) notFoundPath(w http.ResponseWriter, r *http.Request) {
	s.writeError(w, r, errs.New(errs.ErrNotFound, "the server could not find the requested resource %s", r.URL.Path))
}

func writeText(w http.ResponseWriter, text string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte(text))
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	if _, err := s.store.Revision(ctx); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		writeText(w, "store: "+err.Error())
		return
	}
	writeText(w, "ok")
}

func (s *Server) discoveryGroups(w http.ResponseWriter, r *http.Request) {
	// Rakhsh's group first: kubectl resolves a short name such as "vm" to the first group.
	var groups []any
	for _, g := range servedGroupVersions {
		gv := map[string]string{"groupVersion": g.group + "/" + g.version, "version": g.version}
		groups = append(groups, map[string]any{"name": g.group, "versions": []any{gv}, "preferredVersion": gv})
	}
	writeJSON(w, 200, map[string]any{"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

type apiResource struct {
	Name         string   `json:"name"`
	SingularName string   `json:"singularName"`
	Namespaced   bool     `json:"namespaced"`
	Kind         string   `json:"kind"`
	Verbs        []string `json:"verbs"`
	ShortNames   []string `json:"shortNames,omitempty"`
}

func (s *Server) discoveryResources(w http.ResponseWriter, r *http.Request) {
	var res []apiResource
	verbs := []string{"create", "delete", "get", "list", "patch", "update", "watch"}
	groupVersion := v1alpha1.APIVersion
	deckhouse := strings.HasPrefix(r.URL.Path, "/apis/"+DeckhouseGroup+"/")
	if deckhouse {
		groupVersion = v1alpha1.DeckhouseAPI
	}
	for _, st := range registry.All() {
		k := st.Info
		short := k.ShortNames
		if deckhouse {
			short = nil // the short names stay Rakhsh's group's, so "vm" is not ambiguous
		}
		res = append(res, apiResource{Name: k.Resource, SingularName: k.Singular, Namespaced: k.Namespaced, Kind: k.Kind, Verbs: verbs, ShortNames: short})
		if k.HasStatus {
			res = append(res, apiResource{Name: k.Resource + "/status", SingularName: "", Namespaced: k.Namespaced, Kind: k.Kind, Verbs: []string{"get", "patch", "update"}})
		}
	}
	if !deckhouse {
		for _, k := range v1alpha1.ReadOnlyKinds {
			res = append(res, apiResource{Name: k.Resource, SingularName: k.Singular, Kind: k.Kind, Verbs: []string{"get", "list"}, ShortNames: k.ShortNames})
		}
	}
	writeJSON(w, 200, map[string]any{"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": groupVersion, "resources": res})
}

// target is what a request path names.
type target struct {
	st        *registry.Strategy
	namespace string // "" for cluster-scoped kinds and cross-project lists
	name      string
	sub       string
}

func (s *Server) resolve(r *http.Request) (target, error) {
	res := r.PathValue("resource")
	st, ok := registry.ByResource(res)
	if !ok {
		return target{}, errs.New(errs.ErrNotFound, "the server does not know the resource %q", res)
	}
	t := target{st: st, namespace: r.PathValue("ns"), name: r.PathValue("name"), sub: r.PathValue("sub")}
	if t.namespace != "" {
		if !st.Info.Namespaced {
			return target{}, errs.New(errs.ErrNotFound, "%s is cluster-scoped: use /apis/%s/%s", st.Info.Resource, v1alpha1.APIVersion, st.Info.Resource)
		}
		if msg := registry.ValidateName(t.namespace); msg != "" {
			return target{}, errs.New(errs.ErrBadRequest, "project name %q is not valid: %s", t.namespace, msg)
		}
	}
	if t.name != "" {
		if st.Info.Namespaced && t.namespace == "" {
			return target{}, errs.New(errs.ErrNotFound, "%s are project-scoped: use /apis/%s/namespaces/PROJECT/%s/%s", st.Info.Resource, v1alpha1.APIVersion, st.Info.Resource, t.name)
		}
		if msg := registry.ValidateName(t.name); msg != "" {
			return target{}, errs.New(errs.ErrBadRequest, "name %q is not valid: %s", t.name, msg)
		}
	}
	return t, nil
}

// key is the store key of one object.
func key(info *v1alpha1.KindInfo, namespace, name string) string {
	if info.Namespaced {
		return "/" + info.Resource + "/" + namespace + "/" + name
	}
	return "/" + info.Resource + "/" + name
}

// prefix is the store prefix of a list: one project, all projects, or a cluster kind.
func prefix(info *v1alpha1.KindInfo, namespace string) string {
	if info.Namespaced && namespace != "" {
		return "/" + info.Resource + "/" + namespace + "/"
	}
	return "/" + info.Resource + "/"
}

func (s *Server) collection(w http.ResponseWriter, r *http.Request) {
	t, ok := s.authorizedTarget(w, r)
	if !ok {
		return
	}
	switch r.Method {
	case http.MethodGet:
		if r.URL.Query().Get("watch") == "true" || r.URL.Query().Get("watch") == "1" {
			s.serveWatch(w, r, t)
			return
		}
		s.serveList(w, r, t)
	case http.MethodPost:
		if t.st.Info.Namespaced && t.namespace == "" {
			s.writeError(w, r, errs.New(errs.ErrBadRequest, "%s are project-scoped: POST to /apis/%s/namespaces/PROJECT/%s", t.st.Info.Resource, v1alpha1.APIVersion, t.st.Info.Resource))
			return
		}
		s.serveCreate(w, r, t)
	default:
		s.methodNotAllowed(w, r, "GET, POST")
	}
}

// authorizedTarget resolves what the request names and authorizes the request; when either
// fails it has answered, and returns false.
func (s *Server) authorizedTarget(w http.ResponseWriter, r *http.Request) (target, bool) {
	t, err := s.resolve(r)
	if err == nil {
		err = s.authorizeRequest(r, t)
	}
	if err != nil {
		s.writeError(w, r, err)
		return t, false
	}
	return t, true
}

func (s *Server) object(w http.ResponseWriter, r *http.Request) {
	t, ok := s.authorizedTarget(w, r)
	if !ok {
		return
	}
	s.serveObject(w, r, t, false)
}

// serveObject serves GET, PUT and PATCH of an object, or of its status subresource; DELETE
// only of the object.
func (s *Server) serveObject(w http.ResponseWriter, r *http.Request, t target, status bool) {
	switch {
	case r.Method == http.MethodGet:
		s.serveGet(w, r, t)
	case r.Method == http.MethodPut:
		s.serveUpdate(w, r, t, status)
	case r.Method == http.MethodPatch:
		s.servePatch(w, r, t, status)
	case r.Method == http.MethodDelete && !status:
		s.serveDelete(w, r, t)
	case status:
		s.methodNotAllowed(w, r, "GET, PUT, PATCH")
	default:
		s.methodNotAllowed(w, r, "GET, PUT, PATCH, DELETE")
	}
}

// subresourceHandlers serve the subresources other than status, by "Kind/subresource".
var subresourceHandlers = map[string]func(s *Server, w http.ResponseWriter, r *http.Request, t target){
	"Node/" + v1alpha1.SubNodeCredential:           (*Server).serveNodeCredential,
	"Node/" + nodestream.SubStreamTickets:          (*Server).serveRedeem,
	"User/" + v1alpha1.SubUserPassword:             (*Server).serveSetPassword,
	"VirtualMachine/" + SubConsole:                 (*Server).serveStream,
	"VirtualMachine/" + SubVNC:                     (*Server).serveStream,
	"VirtualMachine/" + SubLog:                     (*Server).serveStream,
	"VirtualMachine/" + v1alpha1.SubConsoleTickets: (*Server).serveConsoleTickets,
	"VirtualMachine/" + SubMetrics:                 (*Server).serveVMMetrics,
	"VirtualMachine/" + SubGuestAgent:              (*Server).serveGuestAgent,
	"VirtualMachine/" + SubBinding:                 (*Server).serveBinding,
	"VirtualImage/" + SubData:                      (*Server).serveImageData,
	"ClusterVirtualImage/" + SubData:               (*Server).serveImageData,
	"VirtualDisk/" + SubData:                       (*Server).serveDiskData,
}

func (s *Server) subresource(w http.ResponseWriter, r *http.Request) {
	t, ok := s.authorizedTarget(w, r)
	if !ok {
		return
	}
	if serve := subresourceHandlers[t.st.Info.Kind+"/"+t.sub]; serve != nil {
		serve(s, w, r, t)
		return
	}
	if t.sub != "status" || !t.st.Info.HasStatus {
		s.writeError(w, r, errs.New(errs.ErrNotFound, "%s has no subresource %q", t.st.Info.Resource, t.sub))
		return
	}
	s.serveObject(w, r, t, true)
}

// allowOnly returns whether the request's method is method; when not, it has answered 405.
func (s *Server) allowOnly(w http.ResponseWriter, r *http.Request, method string) bool {
	if r.Method == method {
		return true
	}
	s.methodNotAllowed(w, r, method)
	return false
}

// writeSuccess answers 200 with a Status of success.
func writeSuccess(w http.ResponseWriter) {
	writeJSON(w, http.StatusOK, map[string]string{"kind": "Status", "apiVersion": "v1", "status": "Success"})
}

func (s *Server) methodNotAllowed(w http.ResponseWriter, r *http.Request, allowed string) {
	w.Header().Set("Allow", allowed)
	st := v1alpha1.Status{TypeMeta: v1alpha1.TypeMeta{APIVersion: "v1", Kind: "Status"}, Status: "Failure",
		Reason: v1alpha1.ReasonMethodNotAllowed, Code: http.StatusMethodNotAllowed,
		Message: fmt.Sprintf("method %s is not allowed here; allowed: %s", r.Method, allowed)}
	writeJSON(w, st.Code, st)
}

func (s *Server) serveGet(w http.ResponseWriter, r *http.Request, t target) {
	if err := s.authorizeNodeSecret(r.Context(), t); err != nil {
		s.writeError(w, r, err)
		return
	}
	kv, err := s.store.Get(r.Context(), key(t.st.Info, t.namespace, t.name))
	if err != nil {
		s.writeError(w, r, s.notFound(err, t))
		return
	}
	if wantsTable(r) {
		data, err := newTable(t.st.Info, []store.KV{kv}, tableMeta(kv.ModRevision, ""), s.now())
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		writeRaw(w, 200, data)
		return
	}
	writeRaw(w, 200, withRV(kv.Value, kv.ModRevision, kv.CreateRevision))
}

// notFound turns a store NotFound into the API's message.
func (s *Server) notFound(err error, t target) error {
	if errors.Is(err, errs.ErrNotFound) {
		if t.namespace != "" {
			return errs.New(errs.ErrNotFound, "%s %q not found in project %q", t.st.Info.Singular, t.name, t.namespace)
		}
		return errs.New(errs.ErrNotFound, "%s %q not found", t.st.Info.Singular, t.name)
	}
	return err
}

// writeObject encodes obj (whose stored form has no resourceVersion) and answers with it.
func encodeStored(obj v1alpha1.Object) ([]byte, error) {
	m := obj.GetObjectMeta()
	rv, cr := m.ResourceVersion, m.CreationRevision
	m.ResourceVersion, m.CreationRevision = "", ""
	data, err := json.Marshal(obj)
	m.ResourceVersion, m.CreationRevision = rv, cr
	return data, err
}
