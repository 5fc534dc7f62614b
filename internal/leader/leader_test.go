package leader

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/store"
	"github.com/rakhsh/rakhsh/internal/store/etcd"
	"github.com/rakhsh/rakhsh/internal/store/etcd/etcdtest"
)

// candidate runs an Etcd elector and reports the terms it leads and when each ends.
type candidate struct {
	e      *Etcd
	terms  chan Term
	ended  chan Term
	cancel context.CancelFunc
	done   chan struct{}
}

func startCandidate(t *testing.T, st *etcd.Store, name string) *candidate {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := &candidate{e: &Etcd{Client: st.Client(), Prefix: st.Prefix(), TTL: 2 * time.Second,
		Member: Member{Name: name, APIAddress: "https://" + name + ":8443", Version: "test", Controllers: true},
		Log:    slog.New(slog.NewTextHandler(io.Discard, nil))},
		terms: make(chan Term, 8), ended: make(chan Term, 8), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		c.e.Run(ctx, func(ctx context.Context, term Term) {
			c.terms <- term
			<-ctx.Done()
			c.ended <- term
		})
	}()
	t.Cleanup(func() { c.stop() })
	return c
}

func (c *candidate) stop() {
	c.cancel()
	<-c.done
}

func waitTerm(t *testing.T, ch <-chan Term, what string, within time.Duration) Term {
	t.Helper()
	select {
	case term := <-ch:
		return term
	case <-time.After(within):
		t.Fatalf("%s: not within %s", what, within)
	}
	return Term{}
}

// TestEtcdElection: one candidate leads at a time; its term fences writes in the etcd
// store; a fenced write ends the term at once and hands over; a leader that stops hands
// over without waiting for its lease to expire; Status shows members and leader.
func TestEtcdElection(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := etcd.New(ctx, etcd.Config{Endpoints: srv.Endpoints, Prefix: "/election-test"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	a := startCandidate(t, st, "a")
	ta := waitTerm(t, a.terms, "a leads", 10*time.Second)
	b := startCandidate(t, st, "b")
	if ta.Fence.Term <= 0 || ta.Fence.Key == "" {
		t.Fatalf("a's term %+v", ta)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		s, err := a.e.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(s.Members) == 2 && s.Leader != nil && s.Leader.Name == "a" && s.Leader.Term == ta.Fence.Term &&
			s.Members[0].Name == "a" && s.Members[0].Leader && !s.Members[1].Leader && s.Members[1].APIAddress == "https://b:8443" &&
			len(s.Etcd) == 1 && s.Etcd[0].Healthy && s.LeaseTTLSeconds == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status: %+v", s)
		}
	}

	// a's term fences writes: they are made while it leads.
	fa := store.WithFence(ctx, ta.Fence)
	rev, err := st.Create(fa, "/obj", []byte("by a"))
	if err != nil {
		t.Fatalf("a write under the leader's term: %v", err)
	}
	// A refused write under a's term ends it: b leads, and a's writes are refused.
	a.e.Fenced(store.Fence{Key: ta.Fence.Key, Term: ta.Fence.Term + 1}) // not a's: ignored
	select {
	case <-a.ended:
		t.Fatal("a fence of another term ended a's")
	case <-time.After(300 * time.Millisecond):
	}
	start := time.Now()
	a.e.Fenced(ta.Fence)
	waitTerm(t, a.ended, "a's term ends", time.Second)
	tb := waitTerm(t, b.terms, "b leads", 2*time.Second)
	t.Logf("b leads %s after a's term was fenced", time.Since(start))
	if tb.Fence.Term <= ta.Fence.Term {
		t.Fatalf("b's term %d is not after a's %d", tb.Fence.Term, ta.Fence.Term)
	}
	if _, err := st.Update(fa, "/obj", []byte("a again"), rev); !errors.Is(err, errs.ErrFenced) {
		t.Fatalf("a write under a's ended term: %v, want ErrFenced", err)
	}
	if _, err := st.Update(store.WithFence(ctx, tb.Fence), "/obj", []byte("by b"), rev); err != nil {
		t.Fatalf("a write under b's term: %v", err)
	}
	// b stops: it hands over at once (its lease is revoked), well within the 2 s TTL.
	start = time.Now()
	b.stop()
	waitTerm(t, b.ended, "b's term ends", time.Second)
	ta2 := waitTerm(t, a.terms, "a leads again", time.Second)
	t.Logf("a leads again %s after b stopped", time.Since(start))
	if ta2.Fence.Term <= tb.Fence.Term || ta2.Fence == ta.Fence {
		t.Fatalf("a's new term %+v after b's %+v", ta2.Fence, tb.Fence)
	}
}

// TestSingle: on bolt the one process leads for its lifetime, without a fence.
func TestSingle(t *testing.T) {
	s := &Single{Member: Member{Name: "solo", Controllers: true}}
	ctx, cancel := context.WithCancel(context.Background())
	terms := make(chan Term, 1)
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx, func(ctx context.Context, t Term) { terms <- t; <-ctx.Done() }) }()
	term := waitTerm(t, terms, "the single process leads", time.Second)
	if !term.Fence.IsZero() {
		t.Errorf("bolt term with a fence %+v", term.Fence)
	}
	st, _ := s.Status(ctx)
	if st.Store != "bolt" || st.Leader == nil || st.Leader.Name != "solo" || len(st.Members) != 1 || !st.Members[0].Leader || len(st.Etcd) != 0 {
		t.Errorf("status %+v", st)
	}
	cancel()
	<-done
	noCtl := &Single{Member: Member{Name: "api-only"}}
	if st, _ := noCtl.Status(ctx); st.Leader != nil || st.Members[0].Leader {
		t.Errorf("a process without controllers leads: %+v", st)
	}
}
