package apiserver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/nodestream"
	"github.com/rakhsh/rakhsh/internal/registry"
	"github.com/rakhsh/rakhsh/internal/storage"
	"github.com/rakhsh/rakhsh/internal/store"
)

// VM stream subresources: console (serial, websocket), vnc (websocket), log (plain GET). They
// are served by the agent of the VM's node and proxied here: this server reads no node's
// files. The agent in this process (all-in-one mode) is called directly; another node's
// agent over TLS, at the stream endpoint its Node publishes, with a single-use ticket.
const (
	SubConsole = nodestream.StreamConsole
	SubVNC     = nodestream.StreamVNC
	SubLog     = nodestream.StreamLog
)

const (
	// ticketTTL is how long a stream ticket may be redeemed: the proxy redeems it at once.
	ticketTTL = 30 * time.Second
	// ticketPrefix holds the tickets in the store, each under the SHA-256 of its value.
	ticketPrefix = "/streamtickets/"
	// ticketSweepEvery is how often an issuing server deletes the expired tickets that were
	// never redeemed (an agent that could not be reached).
	ticketSweepEvery = time.Minute
)

// streamVM is what a stream needs of a VM.
type streamVM struct {
	Metadata v1alpha1.ObjectMeta `json:"metadata"`
	Status   struct {
		Phase    string `json:"phase"`
		NodeName string `json:"nodeName"`
	} `json:"status"`
}

// loadStreamVM reads the VM t names for one of its streams (or guest agent requests): a VM
// that does not exist is the API's NotFound, one with a malformed uid an error.
func (s *Server) loadStreamVM(ctx context.Context, t target) (*streamVM, error) {
	kv, err := s.store.Get(ctx, key(t.st.Info, t.namespace, t.name))
	if err != nil {
		return nil, s.notFound(err, t)
	}
	var vm streamVM
	if err := json.Unmarshal(kv.Value, &vm); err != nil {
		return nil, err
	}
	if err := storage.CheckUID(vm.Metadata.UID); err != nil {
		return nil, err
	}
	return &vm, nil
}

// streamsFor finds the node that holds the VM's streams and returns how to reach them and the
// node's name. A VM bound to a node is served by that node; for its log, a VM that runs
// nowhere now is served by the node whose agent last reported on it.
func (s *Server) streamsFor(ctx context.Context, t target, vm *streamVM) (nodestream.Streams, string, error) {
	node := vm.Status.NodeName
	if node == "" && t.sub == SubLog {
		node = s.lastAgentNode(ctx, t.namespace, vm.Metadata.UID)
		if node == "" && s.localStreams != nil {
			// No event names a node (none was recorded, or they expired): the agent in this
			// process is the one place left to look.
			node = s.nodeName
		}
		if node == "" {
			return nil, "", errs.New(errs.ErrNotFound, "virtual machine %q has no log: it is not bound to a node and no node reported running it", t.name)
		}
	}
	if node == "" {
		phase := vm.Status.Phase
		if phase == "" {
			phase = "Pending"
		}
		return nil, "", errs.New(errs.ErrUnavailable, "virtual machine %q is %s and bound to no node: it has no %s now (is it running?)", t.name, phase, t.sub)
	}
	streams, err := s.nodeStreams(ctx, node, fmt.Sprintf("virtual machine %q", t.name), t.sub, t.namespace, t.name)
	return streams, node, err
}

// nodeStreams returns how to reach the stream service of node: the agent in this process, or
// the node's published stream endpoint with tickets for the object namespace/name. subject
// and what (the stream) name them in errors.
func (s *Server) nodeStreams(ctx context.Context, node, subject, what, namespace, name string) (nodestream.Streams, error) {
	if node == s.nodeName && s.localStreams != nil {
		return s.localStreams, nil
	}
	kv, err := s.store.Get(ctx, key(nodeStrategy.Info, "", node))
	if errors.Is(err, errs.ErrNotFound) {
		return nil, errs.New(errs.ErrUnavailable, "%s is on node %q, which does not exist", subject, node)
	}
	if err != nil {
		return nil, err
	}
	var n v1alpha1.Node
	if err := json.Unmarshal(kv.Value, &n); err != nil {
		return nil, err
	}
	ep := n.Status.StreamEndpoint
	if ep == nil || ep.Address == "" {
		return nil, errs.New(errs.ErrUnavailable, "%s is on node %q, whose agent publishes no stream endpoint (status.streamEndpoint): its %s cannot be reached", subject, node, what)
	}
	return &nodestream.Remote{Node: node, Address: ep.Address, Fingerprint: ep.CertificateSHA256,
		Ticket: func(ctx context.Context, uid, stream string) (string, error) {
			return s.issueTicket(ctx, nodestream.Grant{Node: node, Namespace: namespace, Name: name, UID: uid, Stream: stream})
		}}, nil
}

// nodeStrategy is the Node strategy.
var nodeStrategy = mustStrategy("nodes")

func mustStrategy(resource string) *registry.Strategy {
	st, ok := registry.ByResource(resource)
	if !ok {
		panic("no strategy for " + resource)
	}
	return st
}

// agentEventComponent is the source.component of the events node agents record.
const agentEventComponent = "rakhsh-agent"

// lastAgentNode returns the node whose agent last recorded an event of the VM uid, or "".
func (s *Server) lastAgentNode(ctx context.Context, namespace, uid string) string {
	events, ok := registry.ByResource("events")
	if !ok {
		return ""
	}
	var node string
	var last time.Time
	after := ""
	for {
		res, err := s.store.List(ctx, prefix(events.Info, namespace), store.ListOptions{Limit: 500, After: after})
		if err != nil {
			return node
		}
		for _, kv := range res.KVs {
			var ev v1alpha1.Event
			if json.Unmarshal(kv.Value, &ev) != nil || ev.InvolvedObject.UID != uid || ev.Source.Host == "" || ev.Source.Component != agentEventComponent {
				continue
			}
			at := ev.CreationTimestamp.Time
			if ev.LastTimestamp != nil {
				at = ev.LastTimestamp.Time
			}
			if node == "" || at.After(last) {
				node, last = ev.Source.Host, at
			}
		}
		if !res.More || len(res.KVs) == 0 {
			return node
		}
		after = res.KVs[len(res.KVs)-1].Key
	}
}

// issueTicket records a single-use ticket for g (its Expires set here) and returns its value.
// The store keeps only the ticket's SHA-256, so reading the store does not give it away.
func (s *Server) issueTicket(ctx context.Context, g nodestream.Grant) (string, error) {
	s.sweepTickets(ctx)
	ticket, err := nodestream.NewTicket()
	if err != nil {
		return "", err
	}
	g.Expires = s.now().Add(ticketTTL).UTC()
	data, err := json.Marshal(g)
	if err != nil {
		return "", err
	}
	if _, err := s.store.Create(ctx, ticketKey(ticket), data); err != nil {
		return "", err
	}
	return ticket, nil
}

func ticketKey(ticket string) string { return hashedKey(ticketPrefix, ticket) }

// hashedKey is the store key of a ticket under prefix: its SHA-256, never the ticket itself.
func hashedKey(prefix, ticket string) string {
	sum := sha256.Sum256([]byte(ticket))
	return prefix + hex.EncodeToString(sum[:])
}

// sweepTickets deletes expired tickets, at most once per ticketSweepEvery.
func (s *Server) sweepTickets(ctx context.Context) { s.sweepExpired(ctx, ticketPrefix, &s.ticketSweep) }

// sweepExpired deletes the records under prefix whose "expires" time has passed (and any that
// does not decode), at most once per ticketSweepEvery by the clock *last.
func (s *Server) sweepExpired(ctx context.Context, prefix string, last *time.Time) {
	s.ticketMu.Lock()
	if s.now().Sub(*last) < ticketSweepEvery {
		s.ticketMu.Unlock()
		return
	}
	*last = s.now()
	s.ticketMu.Unlock()
	res, err := s.store.List(ctx, prefix, store.ListOptions{Limit: 1000})
	if err != nil {
		return
	}
	for _, kv := range res.KVs {
		var g struct {
			Expires time.Time `json:"expires"`
		}
		if json.Unmarshal(kv.Value, &g) != nil || s.now().After(g.Expires) {
			_, _, _ = s.store.Delete(ctx, kv.Key, kv.ModRevision)
		}
	}
}

// redeemTicket takes the ticket out of the store (so a second redemption finds nothing) and
// returns its grant if it is for node and has not expired.
func (s *Server) redeemTicket(ctx context.Context, node, ticket string) (nodestream.Grant, error) {
	refused := errs.New(errs.ErrForbidden, "the stream ticket is not valid: unknown, already used or expired")
	if ticket == "" {
		return nodestream.Grant{}, refused
	}
	_, data, err := s.store.Delete(ctx, ticketKey(ticket), 0)
	if errors.Is(err, errs.ErrNotFound) {
		return nodestream.Grant{}, refused
	}
	if err != nil {
		return nodestream.Grant{}, err
	}
	var g nodestream.Grant
	if err := json.Unmarshal(data, &g); err != nil {
		return nodestream.Grant{}, refused
	}
	if !s.now().Before(g.Expires) {
		return nodestream.Grant{}, refused
	}
	if g.Node != node {
		return nodestream.Grant{}, errs.New(errs.ErrForbidden, "the stream ticket is not for node %q", node)
	}
	return g, nil
}

// serveRedeem is POST nodes/{name}/streamtickets: the node's agent redeems a ticket that an
// API server gave with a stream request.
func (s *Server) serveRedeem(w http.ResponseWriter, r *http.Request, t target) {
	if !s.allowOnly(w, r, http.MethodPost) {
		return
	}
	var req nodestream.RedeemRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&req); err != nil {
		s.writeError(w, r, errs.New(errs.ErrBadRequest, "the body must be {\"ticket\": \"...\"}: %v", err))
		return
	}
	g, err := s.redeemTicket(r.Context(), t.name, req.Ticket)
	if err != nil {
		s.log.Warn("stream ticket refused", "node", t.name, "err", err, "userAgent", r.UserAgent())
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, g)
}

func (s *Server) serveStream(w http.ResponseWriter, r *http.Request, t target) {
	if !s.allowOnly(w, r, http.MethodGet) {
		return
	}
	ctx := r.Context()
	vm, err := s.loadStreamVM(ctx, t)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	uid := vm.Metadata.UID
	var limit int64
	source := r.URL.Query().Get("source")
	if t.sub == SubLog {
		limit = nodestream.DefaultLogLimit
		if v := r.URL.Query().Get("limitBytes"); v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n <= 0 {
				s.writeError(w, r, errs.New(errs.ErrBadRequest, "limitBytes %q must be a positive integer", v))
				return
			}
			limit = n
		}
		if _, _, err := nodestream.CheckSource(source); err != nil {
			s.writeError(w, r, err)
			return
		}
	}
	streams, node, err := s.streamsFor(ctx, t, vm)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if t.sub == SubLog {
		data, err := streams.ReadLog(ctx, uid, source, limit)
		if err != nil {
			s.writeError(w, r, vmStreamError(err, t, node))
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write(data)
		return
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(s.ctx, cancel) // a shutting-down server ends its streams
	defer stop()
	backend, err := streams.Dial(sctx, uid, t.sub)
	if err != nil {
		s.writeError(w, r, vmStreamError(err, t, node))
		return
	}
	nodestream.ServeWebsocket(sctx, w, r, backend)
}

// vmStreamError names the VM and its node in an error of the node's stream service.
func vmStreamError(err error, t target, node string) error {
	class := errs.Class(err)
	if class == nil {
		return err
	}
	return errs.New(class, "%s of virtual machine %q on node %q: %v", t.sub, t.name, node, err)
}
