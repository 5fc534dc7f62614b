package nodestream

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"sync"

	"github.com/rakhsh/rakhsh/internal/errs"
)

// StreamGuestAgent is the guest-agent request of a VM: one POST with a GuestRequest, answered
// with a GuestResult. It carries a password in its body for set-password: the body goes from
// the API server to the node over the stream service's TLS and is never stored or logged.
const StreamGuestAgent = "guest-agent"

// Guest agent commands.
const (
	GuestSetPassword   = "set-password"
	GuestFreeze        = "fsfreeze-freeze"
	GuestThaw          = "fsfreeze-thaw"
	GuestFreezeStatus  = "fsfreeze-status"
	maxGuestRequest    = 4 << 10
	maxGuestResultBody = 64 << 10
)

// GuestRequest is one request for a VM's guest agent.
type GuestRequest struct {
	Command  string `json:"command"`
	User     string `json:"user,omitempty"`
	Password string `json:"password,omitempty"`
}

// GuestResult is the answer.
type GuestResult struct {
	Command string `json:"command"`
	// Count is how many filesystems were frozen or thawed.
	Count *int `json:"count,omitempty"`
	// FreezeStatus is "thawed" or "frozen".
	FreezeStatus string `json:"freezeStatus,omitempty"`
}

// CheckGuestRequest checks the command and its fields (the node agent checks the user name
// and password themselves).
func CheckGuestRequest(req GuestRequest) error {
	switch req.Command {
	case GuestSetPassword:
		if req.User == "" || req.Password == "" {
			return errs.New(errs.ErrBadRequest, "set-password needs a user and a password")
		}
	case GuestFreeze, GuestThaw, GuestFreezeStatus:
		if req.User != "" || req.Password != "" {
			return errs.New(errs.ErrBadRequest, "%s takes no user or password", req.Command)
		}
	default:
		return errs.New(errs.ErrBadRequest, "guest agent command %q: want %s, %s, %s or %s", req.Command, GuestSetPassword, GuestFreeze, GuestThaw, GuestFreezeStatus)
	}
	return nil
}

// DecodeGuestRequest reads a GuestRequest of at most maxGuestRequest bytes, refusing unknown
// fields.
func DecodeGuestRequest(r io.Reader) (GuestRequest, error) {
	var req GuestRequest
	data, err := io.ReadAll(io.LimitReader(r, maxGuestRequest+1))
	if err != nil {
		return req, err
	}
	if len(data) > maxGuestRequest {
		return req, errs.New(errs.ErrBadRequest, "guest agent request larger than %d bytes", maxGuestRequest)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return req, errs.New(errs.ErrBadRequest, "guest agent request: %v", err)
	}
	return req, CheckGuestRequest(req)
}

// GuestAgentFunc carries out a guest-agent request for the VM uid on this node.
type GuestAgentFunc func(ctx context.Context, uid string, req GuestRequest) (GuestResult, error)

// guestAgents maps a data dir to the node agent that runs its VMs (the agent registers
// itself when it runs), so that a Service of the same data dir reaches it.
var guestAgents sync.Map

// RegisterGuestAgent makes f serve the guest-agent requests of the VMs under dataDir; the
// returned function takes it back.
func RegisterGuestAgent(dataDir string, f GuestAgentFunc) func() {
	key, h := filepath.Clean(dataDir), &f // a pointer, so that only this registration is taken back
	guestAgents.Store(key, h)
	return func() { guestAgents.CompareAndDelete(key, h) }
}

// GuestAgent implements Streams.
func (s *Service) GuestAgent(ctx context.Context, uid string, req GuestRequest) (GuestResult, error) {
	if err := CheckGuestRequest(req); err != nil {
		return GuestResult{}, err
	}
	if _, err := s.runDir(uid); err != nil {
		return GuestResult{}, err
	}
	f, ok := guestAgents.Load(filepath.Clean(s.DataDir))
	if !ok {
		return GuestResult{}, errs.New(errs.ErrUnavailable, "no node agent runs on this node's data dir")
	}
	return (*f.(*GuestAgentFunc))(ctx, uid, req)
}

// GuestAgent implements Streams.
func (r *Remote) GuestAgent(ctx context.Context, uid string, req GuestRequest) (GuestResult, error) {
	if err := CheckGuestRequest(req); err != nil {
		return GuestResult{}, err
	}
	hc, err := r.httpClient()
	if err != nil {
		return GuestResult{}, err
	}
	ticket, err := r.Ticket(ctx, uid, StreamGuestAgent)
	if err != nil {
		return GuestResult{}, err
	}
	body, err := json.Marshal(req)
	if err != nil {
		return GuestResult{}, err
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, r.url("https", uid, StreamGuestAgent, nil), bytes.NewReader(body))
	if err != nil {
		return GuestResult{}, err
	}
	hreq.Header.Set(TicketHeader, "Bearer "+ticket)
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(hreq)
	if err != nil {
		return GuestResult{}, r.unreachable(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxGuestResultBody))
	if err != nil {
		return GuestResult{}, r.unreachable(err)
	}
	if resp.StatusCode != http.StatusOK {
		return GuestResult{}, r.fromService(resp.StatusCode, data)
	}
	var res GuestResult
	if err := json.Unmarshal(data, &res); err != nil {
		return GuestResult{}, fmt.Errorf("node %q answered the guest agent request with %v", r.Node, err)
	}
	return res, nil
}

// serveGuestAgent answers a POST of a GuestRequest.
func (h *Handler) serveGuestAgent(w http.ResponseWriter, r *http.Request, uid string) {
	req, err := DecodeGuestRequest(r.Body)
	if err != nil {
		writeError(w, err)
		return
	}
	res, err := h.Streams.GuestAgent(r.Context(), uid, req)
	if err != nil {
		writeError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(res)
}
