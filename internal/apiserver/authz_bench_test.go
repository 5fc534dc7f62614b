package apiserver

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/store/bolt"
)

// BenchmarkAuthorizationOverhead measures what user authentication and authorization add to a
// mutating request: the same merge patch of one VM's label, over TLS on loopback to a real
// http.Server with a bolt store, sent alternately with the admin token (no user lookup, no
// rules) and with a user's token (token record, User, Project read; rules applied), so both
// see the same disk and load. It reports each one's p50 and p99 and the p50 ratio. Run with
// -benchtime 1x; RAKHSH_BENCH_OPS (default 1,000) patches of each kind per iteration.
func BenchmarkAuthorizationOverhead(b *testing.B) {
	dir := b.TempDir()
	if d := os.Getenv("RAKHSH_BENCH_DIR"); d != "" {
		dir = d
	}
	dbPath := filepath.Join(dir, fmt.Sprintf("authz-%d.db", time.Now().UnixNano()))
	st, err := bolt.Open(dbPath, bolt.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.Remove(dbPath) })
	b.Cleanup(func() { st.Close() })
	s := New(Config{Store: st, AdminToken: "admin-secret", Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	b.Cleanup(s.Shutdown)
	ctx := context.Background()
	hs := httptest.NewTLSServer(s.RemoteHandler())
	b.Cleanup(hs.Close)
	admin, err := client.New(client.Config{Server: hs.URL, Token: "admin-secret", Insecure: true})
	if err != nil {
		b.Fatal(err)
	}
	must := func(err error) {
		if err != nil {
			b.Fatal(err)
		}
	}
	must(admin.Create(ctx, "projects", "", map[string]any{"apiVersion": v1alpha1.APIVersion, "kind": "Project", "metadata": map[string]any{"name": "p1"},
		"spec": map[string]any{"members": []any{map[string]any{"name": "alice", "role": "User"}, map[string]any{"name": "group:staff", "role": "Viewer"}}}}, nil))
	must(admin.Create(ctx, "users", "", map[string]any{"apiVersion": v1alpha1.APIVersion, "kind": "User", "metadata": map[string]any{"name": "alice"}, "spec": map[string]any{}}, nil))
	must(admin.Create(ctx, "virtualmachines", "p1", map[string]any{"apiVersion": v1alpha1.APIVersion, "kind": "VirtualMachine", "metadata": map[string]any{"name": "vm1"},
		"spec": map[string]any{"runPolicy": "AlwaysOff", "cpu": map[string]any{"cores": 1}, "memory": map[string]any{"size": "128Mi"}}}, nil))
	tok, err := admin.CreateToken(ctx, v1alpha1.TokenRequest{User: "alice"})
	must(err)
	user, err := client.New(client.Config{Server: hs.URL, Token: tok.Token, Insecure: true})
	must(err)
	ops := 1000
	if v := os.Getenv("RAKHSH_BENCH_OPS"); v != "" {
		fmt.Sscan(v, &ops)
	}
	patch := func(c *client.Client, i int) time.Duration {
		p := []byte(fmt.Sprintf(`{"metadata":{"labels":{"n":"%d"}}}`, i))
		t0 := time.Now()
		must(c.Patch(ctx, "virtualmachines", "p1", "vm1", p, nil))
		return time.Since(t0)
	}
	for range 50 { // warm up connections and caches
		patch(admin, 0)
		patch(user, 0)
	}
	b.ResetTimer()
	var la, lu []time.Duration
	for range b.N {
		for i := range ops {
			if i%2 == 0 {
				la = append(la, patch(admin, i))
				lu = append(lu, patch(user, i))
			} else {
				lu = append(lu, patch(user, i))
				la = append(la, patch(admin, i))
			}
		}
	}
	b.StopTimer()
	q := func(l []time.Duration, p float64) float64 {
		slices.Sort(l)
		return float64(l[int(p*float64(len(l)-1))].Microseconds()) / 1000
	}
	a50, u50 := q(la, 0.5), q(lu, 0.5)
	b.ReportMetric(a50, "admin-p50-ms")
	b.ReportMetric(q(la, 0.99), "admin-p99-ms")
	b.ReportMetric(u50, "user-p50-ms")
	b.ReportMetric(q(lu, 0.99), "user-p99-ms")
	b.ReportMetric((u50/a50-1)*100, "p50-overhead-%")
}

// BenchmarkAuthorizeUser is the rule lookup and decision alone (no store reads).
func BenchmarkAuthorizeUser(b *testing.B) {
	id := Identity{Name: "user alice", User: "alice", Groups: []string{"staff"}}
	a := attributes{Verb: verbPatch, Resource: "virtualmachines", Namespace: "p1", Name: "vm1"}
	for range b.N {
		if err := authorizeUser(id, a, v1alpha1.ProjectRoleUser); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAuthenticateUser: authenticating a user's API token and deciding a patch of a VM
// in its project, without HTTP or the write: with the server's authCache (the records and
// what they decode to kept in memory) and without it (three store reads and three JSON
// decodes per request).
//
//	go test -run '^$' -bench BenchmarkAuthenticateUser -benchmem ./internal/apiserver
func BenchmarkAuthenticateUser(b *testing.B) {
	b.Run("cache", func(b *testing.B) { benchAuthenticateUser(b, true) })
	b.Run("store", func(b *testing.B) { benchAuthenticateUser(b, false) })
}

func benchAuthenticateUser(b *testing.B, cache bool) {
	st := tempBolt(b)
	s := New(Config{Store: st, AdminToken: "admin-secret", Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	b.Cleanup(s.Shutdown)
	hs := httptest.NewTLSServer(s.RemoteHandler())
	b.Cleanup(hs.Close)
	ctx := context.Background()
	admin, err := client.New(client.Config{Server: hs.URL, Token: "admin-secret", Insecure: true})
	if err != nil {
		b.Fatal(err)
	}
	if err := admin.Create(ctx, "projects", "", map[string]any{"apiVersion": v1alpha1.APIVersion, "kind": "Project", "metadata": map[string]any{"name": "p1"},
		"spec": map[string]any{"members": []any{map[string]any{"name": "alice", "role": "User"}}}}, nil); err != nil {
		b.Fatal(err)
	}
	if err := admin.Create(ctx, "users", "", map[string]any{"apiVersion": v1alpha1.APIVersion, "kind": "User", "metadata": map[string]any{"name": "alice"}, "spec": map[string]any{}}, nil); err != nil {
		b.Fatal(err)
	}
	tok, err := admin.CreateToken(ctx, v1alpha1.TokenRequest{User: "alice"})
	if err != nil {
		b.Fatal(err)
	}
	if !cache {
		s.authCache = nil
	}
	r := httptest.NewRequest("PATCH", "/apis/"+v1alpha1.APIVersion+"/namespaces/p1/virtualmachines/vm1", nil)
	r.Header.Set("Authorization", "Bearer "+tok.Token)
	a := attributes{Verb: "patch", Resource: "virtualmachines", Namespace: "p1", Name: "vm1"}
	decide := func() {
		id, err := s.authenticate(r)
		if err != nil {
			b.Fatal(err)
		}
		if err := s.authorizeUserRequest(ctx, id, a); err != nil {
			b.Fatal(err)
		}
	}
	for deadline := time.Now().Add(5 * time.Second); cache; time.Sleep(10 * time.Millisecond) {
		decide() // until the cache's watch runs and keeps the records
		s.authCache.mu.Lock()
		n := len(s.authCache.entries)
		s.authCache.mu.Unlock()
		if n == 3 {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("the cache keeps %d records, want 3", n)
		}
	}
	b.ResetTimer()
	for range b.N {
		decide()
	}
}
