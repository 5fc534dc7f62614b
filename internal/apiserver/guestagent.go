package apiserver

import (
	"context"
	"net/http"
	"time"

	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/nodestream"
)

// SubGuestAgent is the VM subresource that passes one request to the VM's guest agent
// (POST a nodestream.GuestRequest: set-password, fsfreeze-freeze, fsfreeze-thaw,
// fsfreeze-status) through the agent of the VM's node. Nothing of the request is stored: a
// password goes from the caller to the node in the request body only (docs/guest-agent.md).
const SubGuestAgent = "guestagent"

// guestAgentTimeout bounds one guest agent request end to end.
const guestAgentTimeout = time.Minute

func (s *Server) serveGuestAgent(w http.ResponseWriter, r *http.Request, t target) {
	if !s.allowOnly(w, r, http.MethodPost) {
		return
	}
	req, err := nodestream.DecodeGuestRequest(r.Body)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), guestAgentTimeout)
	defer cancel()
	vm, err := s.loadStreamVM(ctx, t)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if vm.Status.Phase != "Running" {
		s.writeError(w, r, errs.New(errs.ErrUnavailable, "virtual machine %q is %s: its guest agent answers only while it runs", t.name, phaseOr(vm.Status.Phase)))
		return
	}
	streams, node, err := s.streamsFor(ctx, t, vm)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	res, err := streams.GuestAgent(ctx, vm.Metadata.UID, req)
	if err != nil {
		s.writeError(w, r, vmStreamError(err, t, node))
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func phaseOr(p string) string {
	if p == "" {
		return "Pending"
	}
	return p
}
