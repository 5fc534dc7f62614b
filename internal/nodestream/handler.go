package nodestream

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
)

// Grant is what a redeemed stream ticket allows: one stream of one VM on one node, once.
type Grant struct {
	// Node is the node whose agent may serve it.
	Node string `json:"node"`
	// Namespace and Name name the VM (for messages and logs).
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// UID is the VM's uid: its run directory on the node.
	UID string `json:"uid"`
	// Stream is StreamConsole, StreamVNC, StreamLog or StreamGuestAgent.
	Stream string `json:"stream"`
	// Expires is when the ticket stops being redeemable.
	Expires time.Time `json:"expires"`
}

// Redeemer turns a ticket into the grant it stands for, exactly once: a second redemption of
// the same ticket, or one after it expired, fails with errs.ErrForbidden.
type Redeemer interface {
	Redeem(ctx context.Context, ticket string) (Grant, error)
}

// Handler serves a node's streams over HTTP (under TLS, see ServeTLS) to callers that present
// a stream ticket as a bearer token:
//
//	GET /v1/vms/{uid}/console   websocket: the serial console
//	GET /v1/vms/{uid}/vnc       websocket: the VNC server
//	GET /v1/vms/{uid}/log       the kept log; ?source=serial|qemu&limitBytes=N
//	POST /v1/vms/{uid}/guest-agent  a GuestRequest for the VM's guest agent (guest.go)
//
// A request without a ticket, or whose ticket is unknown, used, expired, or grants another
// node, VM or stream, is refused before anything of the VM is touched.
type Handler struct {
	Streams  Streams
	Redeemer Redeemer
	// Node is this node's name; a ticket for another node is refused.
	Node string
	Log  *slog.Logger
	// Context ends the websockets when it ends (the agent stops); nil: they end with their
	// connections only.
	Context context.Context
}

// PathPrefix is where the handler serves.
const PathPrefix = "/v1/vms/"

// StreamPath is the path of one stream of the VM uid.
func StreamPath(uid, stream string) string { return PathPrefix + uid + "/" + stream }

// TicketHeader carries the ticket (as "Bearer TICKET").
const TicketHeader = "Authorization"

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	log := h.logger()
	if strings.HasPrefix(r.URL.Path, DiskPathPrefix) {
		h.serveDiskData(w, r)
		return
	}
	uid, stream, ok := strings.Cut(strings.TrimPrefix(r.URL.Path, PathPrefix), "/")
	if !strings.HasPrefix(r.URL.Path, PathPrefix) || !ok || (stream != StreamConsole && stream != StreamVNC && stream != StreamLog && stream != StreamGuestAgent) {
		writeError(w, errs.New(errs.ErrNotFound, "no stream at %s: want %s{uid}/console, vnc, log or guest-agent, or %s{uid}/data", r.URL.Path, PathPrefix, DiskPathPrefix))
		return
	}
	if want := map[bool]string{true: http.MethodPost, false: http.MethodGet}[stream == StreamGuestAgent]; r.Method != want {
		methodNotAllowed(w, r.Method, want)
		return
	}
	g, ok := h.redeem(w, r, uid, stream)
	if !ok {
		return
	}
	vm := g.Namespace + "/" + g.Name
	if stream == StreamGuestAgent {
		h.serveGuestAgent(w, r, uid)
		return
	}
	if stream == StreamLog {
		limit := int64(DefaultLogLimit)
		if v := r.URL.Query().Get("limitBytes"); v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n <= 0 {
				writeError(w, errs.New(errs.ErrBadRequest, "limitBytes %q must be a positive integer", v))
				return
			}
			limit = n
		}
		data, err := h.Streams.ReadLog(r.Context(), uid, r.URL.Query().Get("source"), limit)
		if err != nil {
			writeError(w, err)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write(data)
		return
	}
	backend, err := h.Streams.Dial(r.Context(), uid, stream)
	if err != nil {
		writeError(w, err)
		return
	}
	log.Info("stream opened", "vm", vm, "stream", stream, "remote", r.RemoteAddr)
	ctx := r.Context()
	if h.Context != nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		stop := context.AfterFunc(h.Context, cancel)
		defer stop()
	}
	ServeWebsocket(ctx, w, r, backend)
	log.Info("stream closed", "vm", vm, "stream", stream, "remote", r.RemoteAddr)
}

// logger is the handler's logger.
func (h *Handler) logger() *slog.Logger {
	if h.Log == nil {
		return slog.Default()
	}
	return h.Log
}

// redeem checks the request's ticket: it must be a well-formed one that the API redeems for
// this node, the object uid and the stream. Otherwise the request is answered and ok is false.
func (h *Handler) redeem(w http.ResponseWriter, r *http.Request, uid, stream string) (g Grant, ok bool) {
	ticket, ok := strings.CutPrefix(r.Header.Get(TicketHeader), "Bearer ")
	if !ok || ticket == "" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="rakhsh-node-streams"`)
		writeError(w, errs.New(errs.ErrUnauthorized, "a stream ticket is required (Authorization: Bearer TICKET); streams are reached through the API server"))
		return g, false
	}
	if !WellFormedTicket(ticket) {
		// Not one an API server issued: refused without asking the API.
		writeError(w, errs.New(errs.ErrForbidden, "the stream ticket is not valid"))
		return g, false
	}
	if h.Redeemer == nil {
		writeError(w, errs.New(errs.ErrUnavailable, "this stream service cannot redeem tickets"))
		return g, false
	}
	g, err := h.Redeemer.Redeem(r.Context(), ticket)
	if err != nil {
		h.logger().Warn("stream ticket refused", "path", r.URL.Path, "remote", r.RemoteAddr, "err", err)
		writeError(w, err)
		return g, false
	}
	if g.Node != h.Node || g.UID != uid || g.Stream != stream {
		h.logger().Warn("stream ticket for something else refused", "path", r.URL.Path, "remote", r.RemoteAddr,
			"ticketNode", g.Node, "ticketUID", g.UID, "ticketStream", g.Stream)
		writeError(w, errs.New(errs.ErrForbidden, "the stream ticket does not grant %s of %s on node %q", stream, uid, h.Node))
		return g, false
	}
	return g, true
}

// methodNotAllowed answers 405 with the allowed methods.
func methodNotAllowed(w http.ResponseWriter, method, allowed string) {
	w.Header().Set("Allow", allowed)
	writeStatus(w, http.StatusMethodNotAllowed, v1alpha1.ReasonMethodNotAllowed, "method "+method+" is not allowed here; allowed: "+allowed)
}

func writeError(w http.ResponseWriter, err error) {
	code, reason := errs.HTTPStatus(err)
	writeStatus(w, code, reason, err.Error())
}

func writeStatus(w http.ResponseWriter, code int, reason string, msg string) {
	st := v1alpha1.Status{TypeMeta: v1alpha1.TypeMeta{APIVersion: "v1", Kind: "Status"}, Status: "Failure",
		Reason: reason, Code: code, Message: msg}
	data, _ := json.Marshal(st)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(append(data, '\n'))
}

// errorFromStatus turns an error answer of a stream service back into a classed error.
func errorFromStatus(code int, body []byte) error {
	var st v1alpha1.Status
	msg := strings.TrimSpace(string(body))
	if json.Unmarshal(body, &st) == nil && st.Message != "" {
		msg = st.Message
	}
	if msg == "" {
		msg = http.StatusText(code)
	}
	if class := errs.ClassOf(code, st.Reason); class != nil {
		return errs.New(class, "%s", msg)
	}
	return fmt.Errorf("stream service answered %d: %s", code, msg)
}

// ticketBytes is the random length of a ticket.
const ticketBytes = 32

// NewTicket returns a fresh random ticket value.
func NewTicket() (string, error) {
	var raw [ticketBytes]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(raw[:]), nil
}

// WellFormedTicket reports whether s has the form of a ticket NewTicket makes.
func WellFormedTicket(s string) bool {
	b, err := base64.RawURLEncoding.DecodeString(s)
	return err == nil && len(b) == ticketBytes
}
