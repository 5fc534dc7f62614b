// Package leader decides which `rakhsh serve` process runs the controllers, and keeps the
// registry of control-plane members that `rakhsh get controlplane` shows.
//
// On an etcd store (Etcd) every serve process holds one etcd lease (a session, TTL
// --leader-lease-ttl) for as long as it can renew it. Bound to that lease it registers itself
// under /controlplane/members/LEASE and, unless it runs no controllers, campaigns in the etcd
// election /controlplane/election: the candidate whose key was created first leads. The
// leader's term is the create revision of its election key; its controllers send that term
// with every request, and the store refuses their writes once the key is gone or made anew
// (store.Fence): a leader that was paused, cut off or simply slow cannot write after its
// lease ended, whatever it believes. A process loses leadership when its lease ends (expired
// while it was paused or cut off, or not renewable for the TTL: etcd unreachable) or when a
// write under its term is refused as fenced; its controllers are cancelled at once, and it
// registers and campaigns again with a new lease.
//
// On the bolt store (Single) only one process can open the store: it is the leader, always,
// with no election and no fence, and runs its controllers through the same code path.
package leader

import (
	"context"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/store"
)

// Member describes this serve process to the others.
type Member struct {
	// Name is the member's name (serve's --node-name).
	Name string `json:"name"`
	// APIAddress is where it serves the API (https://host:port or unix://path).
	APIAddress string `json:"apiAddress"`
	// Version is its Rakhsh version.
	Version string `json:"version"`
	// Controllers says it campaigns to run the controllers (not --no-controllers).
	Controllers bool `json:"controllers"`
	// Agent says it runs a node agent.
	Agent bool `json:"agent"`
	// Since is when it registered; set by the elector.
	Since time.Time `json:"since"`
}

// Term is one leadership of this process.
type Term struct {
	// Fence fences the writes of this term's controllers; zero on bolt (no fencing).
	Fence store.Fence
	// Since is when the term began.
	Since time.Time
}

// LeadFunc runs the controllers for one term and returns when ctx ends: when leadership is
// lost or the process shuts down.
type LeadFunc func(ctx context.Context, t Term)

// Elector runs the controllers of a process while it leads.
type Elector interface {
	// Run registers the member and, for a member with controllers, campaigns; lead runs for
	// each term this process wins. Run returns when ctx ends, after lead has returned.
	Run(ctx context.Context, lead LeadFunc)
	// Fenced tells the elector that the store refused a write under fence f: if f is the
	// current term's, leadership is lost and its controllers are cancelled at once.
	Fenced(f store.Fence)
	// Status is the control plane as this process sees it now.
	Status(ctx context.Context) (v1alpha1.ControlPlaneStatus, error)
}

// Single is the elector of the bolt store: one process, always the leader.
type Single struct {
	Member Member
}

// Run runs lead for the process's lifetime (when the member runs controllers).
func (s *Single) Run(ctx context.Context, lead LeadFunc) {
	if s.Member.Since.IsZero() {
		s.Member.Since = time.Now()
	}
	if !s.Member.Controllers {
		<-ctx.Done()
		return
	}
	lead(ctx, Term{Since: s.Member.Since})
}

// Fenced does nothing: bolt writes carry no fence.
func (s *Single) Fenced(store.Fence) {}

// Status shows the one member, the leader when it runs controllers.
func (s *Single) Status(context.Context) (v1alpha1.ControlPlaneStatus, error) {
	m := s.Member
	since := timePtr(m.Since)
	st := v1alpha1.ControlPlaneStatus{Store: "bolt", Members: []v1alpha1.ControlPlaneMember{{Name: m.Name, APIAddress: m.APIAddress,
		Version: m.Version, Since: since, Leader: m.Controllers, Controllers: m.Controllers, Agent: m.Agent}}}
	if m.Controllers {
		st.Leader = &v1alpha1.ControlPlaneLeader{Name: m.Name, Since: since}
	}
	return st, nil
}

func timePtr(t time.Time) *v1alpha1.Time {
	if t.IsZero() {
		return nil
	}
	return &v1alpha1.Time{Time: t.UTC().Truncate(time.Second)}
}
