package nodestream

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/internal/errs"
)

// TestGuestAgentThroughTickets: a guest agent request reaches the node agent registered for
// the data dir through a ticket for exactly that stream; bad requests are refused before it,
// and without a registered agent the answer is Unavailable.
func TestGuestAgentThroughTickets(t *testing.T) {
	n := newTestNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r := n.remote(n.fp, Grant{Node: "n1", Namespace: "default", Name: "vm1"}, nil)

	if _, err := r.GuestAgent(ctx, testUID, GuestRequest{Command: GuestFreeze}); !errors.Is(err, errs.ErrUnavailable) {
		t.Fatalf("without a node agent: %v, want Unavailable", err)
	}
	var got []GuestRequest
	unregister := RegisterGuestAgent(n.dataDir, func(ctx context.Context, uid string, req GuestRequest) (GuestResult, error) {
		if uid != testUID {
			t.Errorf("uid %q", uid)
		}
		got = append(got, req)
		n := 2
		return GuestResult{Command: req.Command, Count: &n}, nil
	})
	defer unregister()
	res, err := r.GuestAgent(ctx, testUID, GuestRequest{Command: GuestFreeze})
	if err != nil || res.Count == nil || *res.Count != 2 {
		t.Fatalf("freeze: %+v %v", res, err)
	}
	if _, err := r.GuestAgent(ctx, testUID, GuestRequest{Command: GuestSetPassword, User: "root", Password: "pw"}); err != nil {
		t.Fatalf("set-password: %v", err)
	}
	if len(got) != 2 || got[1].User != "root" || got[1].Password != "pw" {
		t.Fatalf("requests seen by the node agent: %+v", got)
	}
	for _, bad := range []GuestRequest{{Command: "guest-exec"}, {Command: GuestSetPassword, User: "root"}, {Command: GuestThaw, Password: "x"}} {
		if _, err := r.GuestAgent(ctx, testUID, bad); !errors.Is(err, errs.ErrBadRequest) {
			t.Errorf("%+v: %v, want BadRequest", bad, err)
		}
	}
	if len(got) != 2 {
		t.Fatalf("a refused request reached the node agent: %+v", got)
	}
	for _, body := range []string{`{"command":"fsfreeze-freeze","extra":1}`, `{"command":`, `{"command":"set-password","user":"u","password":"` + strings.Repeat("x", 5000) + `"}`} {
		if _, err := DecodeGuestRequest(strings.NewReader(body)); !errors.Is(err, errs.ErrBadRequest) {
			t.Errorf("body %.40q: %v, want BadRequest", body, err)
		}
	}
	// A ticket for another stream of the VM does not grant the guest agent.
	r2 := n.remote(n.fp, Grant{Node: "n1", Namespace: "default", Name: "vm1", Stream: StreamLog}, nil)
	if _, err := r2.GuestAgent(ctx, testUID, GuestRequest{Command: GuestFreeze}); !errors.Is(err, errs.ErrUnavailable) || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("a log ticket used for the guest agent: %v", err)
	}
	if len(got) != 2 {
		t.Fatalf("a request with the wrong ticket reached the node agent: %+v", got)
	}
}
