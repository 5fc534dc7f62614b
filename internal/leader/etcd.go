package leader

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/store"
)

// Store keys of the control plane (under the etcd store's prefix). Both are bound to the
// lease of the process that wrote them, and are not copied by `rakhsh store migrate`.
const (
	// MembersPrefix + LEASE (hex) is a member's registration (a Member, JSON).
	MembersPrefix = "/controlplane/members/"
	// ElectionPrefix + "/" + LEASE (hex) is a candidate's election key; the one created first
	// is the leader's, and its create revision is the leader's term.
	ElectionPrefix = "/controlplane/election"
)

// DefaultLeaseTTL is the default --leader-lease-ttl: a dead, paused or cut-off leader's lease
// ends at most this long after its last renewal, and another member leads within about that
// (plus the time to notice, about a second).
const DefaultLeaseTTL = 5 * time.Second

// statusTimeout bounds each etcd member's status request in Status.
const statusTimeout = 2 * time.Second

// Etcd is the elector of the etcd store.
type Etcd struct {
	// Client is the etcd store's client; Prefix is the store's key prefix (etcd.Store.Prefix).
	Client *clientv3.Client
	Prefix string
	Member Member
	// TTL is the lease TTL (whole seconds, at least 2 s; default DefaultLeaseTTL).
	TTL time.Duration
	Log *slog.Logger
	// NoticeDelay, for tests only, makes this process notice that its lease ended this much
	// later than it does, as if it had been paused at the worst moment: its controllers go on
	// writing meanwhile, and fencing must refuse every write. A refused write still ends the
	// term at once.
	NoticeDelay time.Duration

	mu     sync.Mutex
	cur    store.Fence   // the fence of the term this process leads; zero when it does not
	fenced chan struct{} // closed when a write under cur was refused
	closed bool
}

// leaderRecord is the value of the election key.
type leaderRecord struct {
	Name  string    `json:"name"`
	Since time.Time `json:"since"`
}

func (e *Etcd) log() *slog.Logger {
	if e.Log == nil {
		return slog.Default()
	}
	return e.Log
}

func (e *Etcd) ttlSeconds() int {
	ttl := e.TTL
	if ttl <= 0 {
		ttl = DefaultLeaseTTL
	}
	return max(int((ttl+time.Second-1)/time.Second), 2)
}

// Run registers, campaigns and leads, session after session, until ctx ends.
func (e *Etcd) Run(ctx context.Context, lead LeadFunc) {
	backoff := 250 * time.Millisecond
	for ctx.Err() == nil {
		start := time.Now()
		err := e.session(ctx, lead)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > 10*time.Second {
			backoff = 250 * time.Millisecond
		}
		e.log().Warn("control-plane session ended; registering and campaigning again", "err", err, "retry-in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 4*time.Second)
	}
}

// session is one lease of this process: registration, campaign, and at most one term.
func (e *Etcd) session(ctx context.Context, lead LeadFunc) error {
	gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	grant, err := e.Client.Grant(gctx, int64(e.ttlSeconds()))
	cancel()
	if err != nil {
		return fmt.Errorf("granting a lease: %w", err)
	}
	sess, err := concurrency.NewSession(e.Client, concurrency.WithLease(grant.ID), concurrency.WithTTL(e.ttlSeconds()), concurrency.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("keeping the lease alive: %w", err)
	}
	defer func() {
		// Revoking the lease removes this member's keys at once, so a successor need not
		// wait for the TTL; it fails harmlessly when the lease has already ended.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		sess.Orphan()
		_, _ = e.Client.Revoke(rctx, sess.Lease())
	}()
	lease := fmt.Sprintf("%x", sess.Lease())
	m := e.Member
	m.Since = time.Now()
	data, _ := json.Marshal(m)
	pctx, cancel := context.WithTimeout(sess.Ctx(), 5*time.Second)
	_, err = e.Client.Put(pctx, e.Prefix+MembersPrefix+lease, string(data), clientv3.WithLease(sess.Lease()))
	cancel()
	if err != nil {
		return fmt.Errorf("registering as a member: %w", err)
	}
	if !m.Controllers {
		e.log().Info("registered as a control-plane member without controllers (not campaigning)", "lease", lease)
		select {
		case <-ctx.Done():
			return nil
		case <-sess.Done():
			return errors.New("the lease ended")
		}
	}
	el := concurrency.NewElection(sess, e.Prefix+ElectionPrefix)
	rec, _ := json.Marshal(leaderRecord{Name: m.Name, Since: time.Now()})
	e.log().Info("campaigning for control-plane leadership", "lease", lease)
	if err := el.Campaign(sess.Ctx(), string(rec)); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("campaign: %w", err)
	}
	term := Term{Fence: store.Fence{Key: strings.TrimPrefix(el.Key(), e.Prefix), Term: el.Rev()}, Since: time.Now()}
	rec, _ = json.Marshal(leaderRecord{Name: m.Name, Since: term.Since})
	pctx, cancel = context.WithTimeout(sess.Ctx(), 5*time.Second)
	err = el.Proclaim(pctx, string(rec))
	cancel()
	if err != nil {
		return fmt.Errorf("elected, but recording when: %w", err)
	}
	return e.lead(ctx, sess, term, lead)
}

// lead runs one term until leadership is lost or ctx ends.
func (e *Etcd) lead(ctx context.Context, sess *concurrency.Session, term Term, lead LeadFunc) error {
	fenced := e.begin(term.Fence)
	defer e.end()
	log := e.log().With("term", term.Fence.Term)
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		lead(lctx, term)
	}()
	log.Info("elected control-plane leader: controllers started", "election-key", term.Fence.Key)
	var reason string
	select {
	case <-ctx.Done():
	case <-sess.Done():
		reason = "its lease ended (it expired, or etcd could not be reached to renew it for the lease TTL)"
		if e.NoticeDelay > 0 {
			log.Warn("test: noticing the end of the lease late", "delay", e.NoticeDelay)
			select {
			case <-time.After(e.NoticeDelay):
			case <-fenced:
				reason = "a write of its controllers was refused as fenced: a newer term exists"
			case <-ctx.Done():
			}
		}
	case <-fenced:
		reason = "a write of its controllers was refused as fenced: a newer term exists"
	case <-done:
		reason = "its controllers stopped"
	}
	cancel()
	if reason != "" {
		log.Warn("lost control-plane leadership: controllers cancelled", "reason", reason)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		// Their writes are fenced whatever they do now.
		log.Error("the controllers of the ended term did not stop within 10s")
	}
	if ctx.Err() != nil {
		// Shutting down: the session's end revokes the lease, which deletes the election
		// key, so a successor leads at once rather than after the TTL.
		log.Info("handing over control-plane leadership")
		return nil
	}
	return errors.New("lost leadership: " + reason)
}

func (e *Etcd) begin(f store.Fence) <-chan struct{} {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.cur, e.fenced, e.closed = f, make(chan struct{}), false
	return e.fenced
}

func (e *Etcd) end() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.cur, e.fenced = store.Fence{}, nil
}

// Fenced ends the current term when f is its fence.
func (e *Etcd) Fenced(f store.Fence) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if f == e.cur && e.fenced != nil && !e.closed {
		close(e.fenced)
		e.closed = true
	}
}

// Status reads the members, the leader and the etcd members.
func (e *Etcd) Status(ctx context.Context) (v1alpha1.ControlPlaneStatus, error) {
	st := v1alpha1.ControlPlaneStatus{Store: "etcd", LeaseTTLSeconds: int64(e.ttlSeconds())}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := e.Client.Txn(rctx).Then(
		clientv3.OpGet(e.Prefix+MembersPrefix, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend)),
		clientv3.OpGet(e.Prefix+ElectionPrefix+"/", clientv3.WithFirstCreate()...),
	).Commit()
	if err != nil {
		return st, fmt.Errorf("reading the control-plane members from etcd: %w", err)
	}
	var leaderLease int64 = -1
	if el := resp.Responses[1].GetResponseRange(); el != nil && len(el.Kvs) > 0 {
		kv := el.Kvs[0]
		var rec leaderRecord
		_ = json.Unmarshal(kv.Value, &rec)
		st.Leader = &v1alpha1.ControlPlaneLeader{Name: rec.Name, Term: kv.CreateRevision, Since: timePtr(rec.Since)}
		leaderLease = kv.Lease
	}
	for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
		var m Member
		if err := json.Unmarshal(kv.Value, &m); err != nil {
			continue
		}
		st.Members = append(st.Members, v1alpha1.ControlPlaneMember{Name: m.Name, APIAddress: m.APIAddress, Version: m.Version,
			Since: timePtr(m.Since), Leader: kv.Lease == leaderLease, Controllers: m.Controllers, Agent: m.Agent})
	}
	st.Etcd, err = e.etcdMembers(ctx)
	if err != nil {
		st.EtcdError = err.Error()
	}
	return st, nil
}

// etcdMembers lists etcd's members and asks each for its status.
func (e *Etcd) etcdMembers(ctx context.Context) ([]v1alpha1.EtcdMember, error) {
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ml, err := e.Client.MemberList(lctx)
	if err != nil {
		return nil, fmt.Errorf("listing the etcd members: %w", err)
	}
	out := make([]v1alpha1.EtcdMember, len(ml.Members))
	var wg sync.WaitGroup
	for i, m := range ml.Members {
		out[i] = v1alpha1.EtcdMember{Name: m.Name, ID: fmt.Sprintf("%x", m.ID), ClientURLs: m.ClientURLs}
		if len(m.ClientURLs) == 0 {
			out[i].Error = "no client URL (a learner or a member not started yet)"
			continue
		}
		wg.Add(1)
		go func(em *v1alpha1.EtcdMember, id uint64) {
			defer wg.Done()
			sctx, cancel := context.WithTimeout(ctx, statusTimeout)
			defer cancel()
			var lastErr error
			for _, u := range em.ClientURLs {
				sr, err := e.Client.Status(sctx, u)
				if err != nil {
					lastErr = err
					continue
				}
				em.Healthy, em.RaftLeader, em.Version, em.DBSize = len(sr.Errors) == 0, sr.Leader == id, sr.Version, sr.DbSize
				if len(sr.Errors) > 0 {
					em.Error = strings.Join(sr.Errors, "; ")
				}
				return
			}
			em.Error = lastErr.Error()
		}(&out[i], m.ID)
	}
	wg.Wait()
	sort.SliceStable(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}
