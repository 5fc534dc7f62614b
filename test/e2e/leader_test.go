package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/store/etcd/etcdtest"
)

// controllerComponents are the log components of what only the leader runs.
var controllerComponents = []string{"informers", "network-controller", "vmclass-controller", "image-controller",
	"disk-controller", "scheduler", "vm-controller", "node-lifecycle", "event-gc"}

// TestControlPlaneLeaderElection runs three control-plane-only `rakhsh serve` processes
// (--no-agent, own data dirs, loopback TCP) on one real etcd: exactly one of them runs the
// controllers; after kill -9 of the leader another takes over and the controllers work again
// within 10 s; and a leader held frozen (SIGSTOP) past its lease, then resumed while it
// still believes it leads, has its writes refused as fenced, with nothing written twice.
// `rakhsh get controlplane` shows the members and the leader throughout.
func TestControlPlaneLeaderElection(t *testing.T) {
	sideBySide(t)
	e := etcdtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	servers := map[string]*Serve{}
	var order []string
	for _, n := range []string{"rkl-a", "rkl-b", "rkl-c"} {
		// Each process notices the end of its lease 4 s late, as a process paused at the
		// worst moment would: only fencing keeps a deposed leader's writes out meanwhile.
		s := StartServe(t, "--store", "etcd://"+e.Addr, "--no-agent", "--node-name", n, "--listen", "127.0.0.1:0",
			"--test-leader-notice-delay", "4s")
		servers[n] = s
		order = append(order, n)
	}
	t.Cleanup(func() {
		// A frozen process cannot stop gracefully.
		for _, s := range servers {
			if s.cmd != nil {
				_ = s.cmd.Process.Signal(syscall.SIGCONT)
			}
		}
	})
	alive := func(except ...string) []string {
		var out []string
		for _, n := range order {
			if servers[n].cmd != nil && !contains(except, n) {
				out = append(out, n)
			}
		}
		return out
	}

	// 1. Exactly one leader, the same seen from every member, running the controllers.
	cp := waitControlPlane(t, ctx, servers, alive(), func(st v1alpha1.ControlPlaneStatus) bool {
		return st.Leader != nil && len(st.Members) == 3
	})
	first := cp.Leader.Name
	t.Logf("leader %s, term %d", first, cp.Leader.Term)
	if cp.Store != "etcd" || cp.LeaseTTLSeconds != 5 || len(cp.Etcd) != 1 || !cp.Etcd[0].Healthy || !cp.Etcd[0].RaftLeader {
		t.Errorf("control plane: store %q, lease TTL %d, etcd members %+v", cp.Store, cp.LeaseTTLSeconds, cp.Etcd)
	}
	leaders := 0
	for _, m := range cp.Members {
		if m.Leader {
			leaders++
			if m.Name != first {
				t.Errorf("member %s is marked leader, the leader is %s", m.Name, first)
			}
		}
		if !m.Controllers || m.Agent || !strings.HasPrefix(m.APIAddress, "https://127.0.0.1:") || m.Version == "" || m.Since == nil {
			t.Errorf("member %+v", m)
		}
	}
	if leaders != 1 {
		t.Errorf("%d members are marked leader: %+v", leaders, cp.Members)
	}
	createClass(t, ctx, servers[first].Client(), "before-kill")
	waitClassStatus(t, ctx, servers[alive()[0]].Client(), "before-kill", 15*time.Second)
	for _, n := range order {
		logs := servers[n].Logs()
		elected := strings.Count(logs, "elected control-plane leader")
		if n == first {
			if elected != 1 || !strings.Contains(logs, "component=informers") {
				t.Errorf("leader %s: elected %d times; informers started: %v", n, elected, strings.Contains(logs, "component=informers"))
			}
			continue
		}
		if elected != 0 {
			t.Errorf("follower %s was elected", n)
		}
		for _, c := range controllerComponents {
			if strings.Contains(logs, "component="+c) || strings.Contains(logs, "userAgent=rakhsh/"+c) {
				t.Errorf("follower %s shows controller activity (%s):\n%s", n, c, grepLines(logs, c))
			}
		}
	}
	out := servers[alive(first)[0]].MustCLI("", "get", "controlplane")
	t.Logf("rakhsh get controlplane:\n%s", out)
	for _, n := range order {
		role := "follower"
		if n == first {
			role = "leader"
		}
		if !regexp.MustCompile(`(?m)^` + n + `\s+` + role + `\s+https://127\.0\.0\.1:\d+\s`).MatchString(out) {
			t.Errorf("get controlplane does not show %s as %s", n, role)
		}
	}
	if !regexp.MustCompile(`(?m)^cluster\s+etcd\s+`+first+`\s+`+strconv.FormatInt(cp.Leader.Term, 10)+`\s`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^rakhsh-test\s+[0-9a-f]+\s+true\s+true\s`).MatchString(out) {
		t.Errorf("get controlplane does not show the leader, its term and a healthy etcd")
	}

	// 2. kill -9 the leader: another takes over, and the controllers work again, in 10 s.
	killed := first
	servers[killed].Kill9()
	killedAt := time.Now()
	c := servers[alive()[0]].Client()
	createClass(t, ctx, c, "after-kill")
	cp = waitControlPlane(t, ctx, servers, alive(), func(st v1alpha1.ControlPlaneStatus) bool {
		return st.Leader != nil && st.Leader.Name != killed
	})
	elected := time.Since(killedAt)
	waitClassStatus(t, ctx, c, "after-kill", 15*time.Second)
	working := time.Since(killedAt)
	t.Logf("takeover after kill -9 of %s: %s elected after %s; controllers wrote a new class's status after %s (lease TTL 5s)",
		killed, cp.Leader.Name, elected.Round(time.Millisecond), working.Round(time.Millisecond))
	if working > 10*time.Second {
		t.Errorf("the controllers worked again %s after the leader was killed, more than 10s", working)
	}
	// The dead leader's registration went with its lease.
	if len(cp.Members) != 2 || cp.Leader.Term <= 0 {
		t.Errorf("after the kill: members %+v, leader %+v", cp.Members, cp.Leader)
	}
	out = servers[cp.Leader.Name].MustCLI("", "get", "controlplane")
	t.Logf("rakhsh get controlplane after the kill:\n%s", out)
	if !regexp.MustCompile(`(?m)^cluster\s+etcd\s+`+cp.Leader.Name+`\s`).MatchString(out) || strings.Contains(out, killed) {
		t.Errorf("get controlplane after the kill does not show %s leading without %s", cp.Leader.Name, killed)
	}
	// The killed member comes back as a follower.
	servers[killed].Start()
	cp = waitControlPlane(t, ctx, servers, alive(), func(st v1alpha1.ControlPlaneStatus) bool {
		return st.Leader != nil && len(st.Members) == 3
	})

	// 3. Fencing. The leader (old) is frozen past its lease; the new leader is frozen too
	// once elected, so that the objects made next wait for a writer; then the old one is
	// resumed. Believing it still leads (it notices the end of its lease 4 s late), its
	// controllers reconcile those objects: every write must be refused as fenced. Then the
	// new leader is resumed (within its lease) and makes the writes, once.
	old := cp.Leader.Name
	oldTerm := cp.Leader.Term
	oldKey := electionKey(t, servers[old].Logs(), oldTerm)
	stop(t, servers[old])
	cp = waitControlPlane(t, ctx, servers, alive(old), func(st v1alpha1.ControlPlaneStatus) bool {
		return st.Leader != nil && st.Leader.Name != old
	})
	second := cp.Leader.Name
	if cp.Leader.Term <= oldTerm {
		t.Errorf("new term %d is not after the old one %d", cp.Leader.Term, oldTerm)
	}
	stop(t, servers[second])
	third := alive(old, second)[0]
	tc := servers[third].Client()
	classes, ips := []string{"frozen-1", "frozen-2", "frozen-3"}, []string{"frozen-ip-1", "frozen-ip-2"}
	writes := countWrites(t, ctx, tc)
	for _, n := range classes {
		createClass(t, ctx, tc, n)
	}
	for _, n := range ips {
		ip := &v1alpha1.VirtualMachineIPAddress{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachineIPAddress"},
			ObjectMeta: v1alpha1.ObjectMeta{Name: n}, Spec: v1alpha1.VirtualMachineIPAddressSpec{Type: "Auto"}}
		if err := tc.Create(ctx, "virtualmachineipaddresses", "default", ip, nil); err != nil {
			t.Fatal(err)
		}
	}
	resume(t, servers[old])
	waitLog(t, servers[old], "write refused as fenced", 10*time.Second)
	waitLog(t, servers[old], `lost control-plane leadership: controllers cancelled" component=leader-election term=`+strconv.FormatInt(oldTerm, 10)+` reason="a write of its controllers was refused as fenced`, 10*time.Second)
	resume(t, servers[second])
	cp = waitControlPlane(t, ctx, servers, alive(), func(st v1alpha1.ControlPlaneStatus) bool {
		return st.Leader != nil && len(st.Members) == 3
	})
	t.Logf("after the freeze: leader %s term %d (old leader %s term %d, successor %s)", cp.Leader.Name, cp.Leader.Term, old, oldTerm, second)
	if cp.Leader.Name == old || cp.Leader.Term <= oldTerm {
		t.Errorf("the old leader %s (term %d) leads again: %+v", old, oldTerm, cp.Leader)
	}
	for _, n := range classes {
		waitClassStatus(t, ctx, tc, n, 30*time.Second)
	}
	for _, n := range ips {
		waitFor(t, "address of "+n, func() bool {
			var ip v1alpha1.VirtualMachineIPAddress
			return tc.Get(ctx, "virtualmachineipaddresses", "default", n, &ip) == nil && ip.Status.Address != ""
		})
	}
	time.Sleep(3 * time.Second) // room for a second write, were there one
	if m := scrapeMetrics(t, servers[old], "rakhsh_apiserver_fenced_writes_total"); len(m) != 0 {
		t.Errorf("fenced writes are counted with labels: %v", m)
	}
	if n := metricValue(t, servers[old], "rakhsh_apiserver_fenced_writes_total"); n < 1 {
		t.Errorf("the old leader's /metrics counts %v fenced writes, want at least one", n)
	}
	fencedLines := grepLines(servers[old].Logs(), "write refused as fenced")
	t.Logf("the old leader's refused writes:\n%s", fencedLines)
	if !strings.Contains(fencedLines, "userAgent=rakhsh/") || !strings.Contains(fencedLines, "term="+strconv.FormatInt(oldTerm, 10)) {
		t.Errorf("the old leader's fenced writes do not name a controller and term %d", oldTerm)
	}
	// Nothing was written twice: each class's status once, each address claim bound once
	// to one address and one lease.
	got := writes.stop()
	for _, n := range classes {
		if got.modified["virtualmachineclasses/"+n] != 1 {
			t.Errorf("class %s was written %d times after its creation, want once", n, got.modified["virtualmachineclasses/"+n])
		}
	}
	for _, n := range ips {
		var ip v1alpha1.VirtualMachineIPAddress
		if err := tc.Get(ctx, "virtualmachineipaddresses", "default", n, &ip); err != nil {
			t.Fatal(err)
		}
		if a := got.addresses[n]; len(a) != 1 {
			t.Errorf("%s was given the addresses %v, want one", n, a)
		}
		var l v1alpha1.VirtualMachineIPAddressLease
		if err := tc.Get(ctx, "virtualmachineipaddressleases", "", "ip-"+strings.ReplaceAll(ip.Status.Address, ".", "-"), &l); err != nil {
			t.Errorf("the lease of %s's address %s: %v", n, ip.Status.Address, err)
		} else if r := l.Spec.VirtualMachineIPAddressRef; r == nil || r.Name != n {
			t.Errorf("the lease of %s's address %s is held by %+v", n, ip.Status.Address, r)
		}
	}
	// And any write under the old term is refused, through any member.
	for _, n := range []string{old, cp.Leader.Name} {
		fc := servers[n].Client().WithHeader(v1alpha1.HeaderLeaderFence, fmt.Sprintf("%d@%s", oldTerm, oldKey))
		err := fc.PatchStatus(ctx, "virtualmachineclasses", "", "frozen-1", []byte(`{"status":{"phase":"Ready"}}`), nil)
		if !client.IsFenced(err) || !strings.Contains(err.Error(), "no longer the control-plane leader") {
			t.Errorf("a write under the old term through %s: %v, want 409 LeaderFenced", n, err)
		}
	}
	out = servers[third].MustCLI("", "get", "controlplane")
	t.Logf("rakhsh get controlplane at the end:\n%s", out)
	if !regexp.MustCompile(`(?m)^cluster\s+etcd\s+` + cp.Leader.Name + `\s+\d+\s`).MatchString(out) {
		t.Errorf("get controlplane at the end does not show %s leading", cp.Leader.Name)
	}
}

// waitControlPlane polls the ControlPlane of every named server until each reports one that
// satisfies ok, with the same leader and term, and returns it.
func waitControlPlane(t *testing.T, ctx context.Context, servers map[string]*Serve, names []string, ok func(v1alpha1.ControlPlaneStatus) bool) v1alpha1.ControlPlaneStatus {
	t.Helper()
	var last []string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		var got []v1alpha1.ControlPlaneStatus
		last = last[:0]
		for _, n := range names {
			var cp v1alpha1.ControlPlane
			rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			err := servers[n].Client().Get(rctx, "controlplanes", "", v1alpha1.ControlPlaneName, &cp)
			cancel()
			if err != nil {
				last = append(last, n+": "+err.Error())
				continue
			}
			data, _ := json.Marshal(cp.Status)
			last = append(last, n+": "+string(data))
			if ok(cp.Status) {
				got = append(got, cp.Status)
			}
		}
		if len(got) == len(names) && sameLeader(got) {
			return got[0]
		}
	}
	t.Fatalf("control plane not as wanted within 30s:\n%s", strings.Join(last, "\n"))
	return v1alpha1.ControlPlaneStatus{}
}

func sameLeader(l []v1alpha1.ControlPlaneStatus) bool {
	for _, st := range l[1:] {
		if (st.Leader == nil) != (l[0].Leader == nil) || (st.Leader != nil && (st.Leader.Name != l[0].Leader.Name || st.Leader.Term != l[0].Leader.Term)) {
			return false
		}
	}
	return true
}

func createClass(t *testing.T, ctx context.Context, c *client.Client, name string) {
	t.Helper()
	vmc := &v1alpha1.VirtualMachineClass{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachineClass"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: name}, Spec: v1alpha1.VirtualMachineClassSpec{CPU: v1alpha1.VirtualMachineClassCPU{Type: "Host"}}}
	if err := c.Create(ctx, "virtualmachineclasses", "", vmc, nil); err != nil {
		t.Fatalf("create class %s: %v", name, err)
	}
}

// waitClassStatus waits for the class controller to write the class's status.
func waitClassStatus(t *testing.T, ctx context.Context, c *client.Client, name string, within time.Duration) {
	t.Helper()
	for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		var vmc v1alpha1.VirtualMachineClass
		if err := c.Get(ctx, "virtualmachineclasses", "", name, &vmc); err == nil && vmc.Status.ObservedGeneration == 1 && len(vmc.Status.Conditions) > 0 {
			return
		}
	}
	t.Fatalf("class %s got no status from the controllers within %s", name, within)
}

func stop(t *testing.T, s *Serve) {
	t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
}

func resume(t *testing.T, s *Serve) {
	t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
}

func waitLog(t *testing.T, s *Serve, text string, within time.Duration) {
	t.Helper()
	for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if strings.Contains(s.Logs(), text) {
			return
		}
	}
	t.Fatalf("%q not logged within %s", text, within)
}

// electionKey finds the election key of term in a serve log.
func electionKey(t *testing.T, logs string, term int64) string {
	t.Helper()
	m := regexp.MustCompile(`elected control-plane leader: controllers started" component=leader-election term=` +
		strconv.FormatInt(term, 10) + ` election-key=(\S+)`).FindStringSubmatch(logs)
	if m == nil {
		t.Fatalf("no election of term %d in the log", term)
	}
	return m[1]
}

func grepLines(text, sub string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// writeCount is what countWrites saw: MODIFIED events per resource/name and the addresses
// each IP claim showed.
type writeCount struct {
	modified  map[string]int
	addresses map[string]map[string]bool
}

type writeCounter struct {
	stop func() writeCount
}

// countWrites watches classes and IP claims from now on until stop.
func countWrites(t *testing.T, ctx context.Context, c *client.Client) *writeCounter {
	t.Helper()
	wctx, cancel := context.WithCancel(ctx)
	got := writeCount{modified: map[string]int{}, addresses: map[string]map[string]bool{}}
	done := make(chan struct{}, 2)
	var ws []*client.Watcher
	for _, res := range []string{"virtualmachineclasses", "virtualmachineipaddresses"} {
		l, err := c.List(ctx, res, "", client.ListOptions{Limit: 1})
		if err != nil {
			t.Fatal(err)
		}
		w, err := c.Watch(wctx, res, "", client.ListOptions{ResourceVersion: l.Metadata.ResourceVersion})
		if err != nil {
			t.Fatal(err)
		}
		ws = append(ws, w)
	}
	events := make(chan struct {
		res string
		ev  v1alpha1.WatchEvent
	}, 256)
	for i, res := range []string{"virtualmachineclasses", "virtualmachineipaddresses"} {
		go func(w *client.Watcher, res string) {
			defer func() { done <- struct{}{} }()
			for ev := range w.Events() {
				select {
				case events <- struct {
					res string
					ev  v1alpha1.WatchEvent
				}{res, ev}:
				case <-wctx.Done():
					return
				}
			}
		}(ws[i], res)
	}
	result := make(chan writeCount, 1)
	go func() {
		for {
			select {
			case e := <-events:
				if e.ev.Type != v1alpha1.WatchModified {
					continue
				}
				var o struct {
					Metadata v1alpha1.ObjectMeta `json:"metadata"`
					Status   struct {
						Address string `json:"address"`
					} `json:"status"`
				}
				if json.Unmarshal(e.ev.Object, &o) != nil {
					continue
				}
				got.modified[e.res+"/"+o.Metadata.Name]++
				if o.Status.Address != "" {
					if got.addresses[o.Metadata.Name] == nil {
						got.addresses[o.Metadata.Name] = map[string]bool{}
					}
					got.addresses[o.Metadata.Name][o.Status.Address] = true
				}
			case <-wctx.Done():
				result <- got
				return
			}
		}
	}()
	return &writeCounter{stop: func() writeCount {
		cancel()
		<-done
		<-done
		return <-result
	}}
}
