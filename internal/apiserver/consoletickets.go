package apiserver

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/nodestream"
)

// Console tickets (v1alpha1.SubConsoleTickets). A user (or the admin) who may open a VM's
// console asks for a ticket; the ticket opens that one stream of that one VM once, within
// consoleTicketTTL, as that user: the websocket request carries it as ?ticket= instead of an
// Authorization header. The store keeps only the ticket's SHA-256, and a redemption deletes
// it, so a second use finds nothing (with several API servers too). A request whose Origin
// names another host is refused before the ticket is spent.

const (
	consoleTicketTTL    = 30 * time.Second
	consoleTicketPrefix = "/consoletickets/"
)

// consoleGrant is what a console ticket stands for.
type consoleGrant struct {
	Identity  Identity  `json:"identity"`
	Namespace string    `json:"namespace"`
	Name      string    `json:"name"`
	UID       string    `json:"uid"`
	Stream    string    `json:"stream"`
	Expires   time.Time `json:"expires"`
}

func consoleTicketKey(ticket string) string { return hashedKey(consoleTicketPrefix, ticket) }

// serveConsoleTickets is POST virtualmachines/NAME/consoletickets.
func (s *Server) serveConsoleTickets(w http.ResponseWriter, r *http.Request, t target) {
	if !s.allowOnly(w, r, http.MethodPost) {
		return
	}
	ctx := r.Context()
	id := identityOf(ctx)
	if id.Node != "" || id.JoinToken != "" {
		s.writeError(w, r, errs.New(errs.ErrForbidden, "%s may not make console tickets: they are for people", id.describe()))
		return
	}
	var req v1alpha1.ConsoleTicketRequest
	body, err := io.ReadAll(io.LimitReader(r.Body, 4096))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := decodeStrictBody(body, "ConsoleTicketRequest", &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	switch req.Stream {
	case "":
		req.Stream = SubConsole
	case SubConsole, SubVNC:
	default:
		s.writeError(w, r, errs.New(errs.ErrBadRequest, "stream %q: a console ticket is for %q or %q", req.Stream, SubConsole, SubVNC))
		return
	}
	vm, err := s.loadStreamVM(ctx, t)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.sweepExpired(ctx, consoleTicketPrefix, &s.consoleSweep)
	ticket, err := nodestream.NewTicket()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	g := consoleGrant{Identity: id, Namespace: t.namespace, Name: t.name, UID: vm.Metadata.UID, Stream: req.Stream,
		Expires: s.now().Add(consoleTicketTTL).UTC()}
	data, _ := json.Marshal(g)
	if _, err := s.store.Create(ctx, consoleTicketKey(ticket), data); err != nil {
		s.writeError(w, r, err)
		return
	}
	path := client.Path("virtualmachines", t.namespace, t.name, req.Stream) + "?ticket=" + url.QueryEscape(ticket)
	writeJSON(w, http.StatusCreated, v1alpha1.ConsoleTicket{Ticket: ticket, Stream: req.Stream, Path: path, Expires: v1alpha1.NewTime(g.Expires)})
}

// consoleTicketTarget says whether r is a console or VNC websocket of a VM that carries a
// ticket, and which (namespace, name, stream).
func consoleTicketTarget(r *http.Request) (ns, name, stream, ticket string, ok bool) {
	ticket = r.URL.Query().Get("ticket")
	if ticket == "" || r.Method != http.MethodGet {
		return "", "", "", "", false
	}
	rest, found := strings.CutPrefix(r.URL.Path, "/apis/"+v1alpha1.APIVersion+"/namespaces/")
	if !found {
		return "", "", "", "", false
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 4 || parts[1] != "virtualmachines" || (parts[3] != SubConsole && parts[3] != SubVNC) {
		return "", "", "", "", false
	}
	return parts[0], parts[2], parts[3], ticket, true
}

// redeemConsoleTicket spends the ticket of a console websocket request and returns who it
// acts as. The request's Origin (a browser's) must be this host; an Authorization header, if
// any, must be the ticket's own user; the ticket must be for this stream of this VM (the same
// object, not one made again under its name) and not expired; a user must still exist and
// not be disabled.
func (s *Server) redeemConsoleTicket(r *http.Request, ns, name, stream, ticket string) (Identity, error) {
	ctx := r.Context()
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || !strings.EqualFold(u.Host, r.Host) {
			return Identity{}, errs.New(errs.ErrForbidden, "a console websocket from origin %q is refused: only pages of %s may open it", o, r.Host)
		}
	}
	refused := errs.New(errs.ErrUnauthorized, "Unauthorized: the console ticket is not valid: unknown, already used or expired")
	_, data, err := s.store.Delete(ctx, consoleTicketKey(ticket), 0)
	if errors.Is(err, errs.ErrNotFound) {
		return Identity{}, refused
	}
	if err != nil {
		return Identity{}, err
	}
	var g consoleGrant
	if json.Unmarshal(data, &g) != nil || !s.now().Before(g.Expires) {
		return Identity{}, refused
	}
	if g.Namespace != ns || g.Name != name || g.Stream != stream {
		return Identity{}, errs.New(errs.ErrForbidden, "the console ticket is for the %s of virtual machine %s/%s, not the %s of %s/%s", g.Stream, g.Namespace, g.Name, stream, ns, name)
	}
	st := mustStrategy("virtualmachines")
	kv, err := s.store.Get(ctx, key(st.Info, ns, name))
	if err != nil {
		return Identity{}, errs.New(errs.ErrNotFound, "virtual machine %q not found in project %q", name, ns)
	}
	var vm streamVM
	if json.Unmarshal(kv.Value, &vm) != nil || vm.Metadata.UID != g.UID {
		return Identity{}, errs.New(errs.ErrForbidden, "the console ticket is for an earlier virtual machine named %s/%s", ns, name)
	}
	if r.Header.Get("Authorization") != "" {
		other, err := s.authenticate(r)
		if err != nil {
			return Identity{}, err
		}
		if other.Name != g.Identity.Name || other.User != g.Identity.User {
			return Identity{}, errs.New(errs.ErrForbidden, "the console ticket was made for %s, not for %s", g.Identity.describe(), other.describe())
		}
	}
	if g.Identity.User != "" {
		if _, err := s.loadUser(ctx, g.Identity.User); err != nil {
			return Identity{}, err
		}
	}
	return g.Identity, nil
}
