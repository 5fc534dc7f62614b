package runtime_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

func TestBuilderWiresSourcesToOneQueue(t *testing.T) {
	ctx, cancel, fc, f := fakeFactory(t, vm("a", "n1"))
	vms, nodes := f.VirtualMachines(), f.Nodes()
	var mu sync.Mutex
	seen := map[runtime.Key]int{}
	var ticks atomic.Int32
	ctl := runtime.NewController("test", nil).
		For(vms).
		Watches(nodes, func(k runtime.Key) []runtime.Key { return []runtime.Key{"node:" + k} }).
		Every(10*time.Millisecond, func(_ context.Context, q *runtime.Queue) { ticks.Add(1); q.Add("tick") }).
		Workers(2).
		Build(func(ctx context.Context, k runtime.Key) (runtime.Result, error) {
			mu.Lock()
			seen[k]++
			mu.Unlock()
			return runtime.Result{}, nil
		})
	f.Start(ctx)
	done := make(chan struct{})
	go func() { _ = ctl.Run(ctx); close(done) }()
	count := func(k runtime.Key) int { mu.Lock(); defer mu.Unlock(); return seen[k] }
	eventually(t, "the VM reconciled", func() bool { return count("p1/a") > 0 })
	if err := fc.Create(ctx, "nodes", "", &v1alpha1.Node{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "Node"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: "n1"}}, nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the mapped node key reconciled", func() bool { return count("node:n1") > 0 })
	eventually(t, "the periodic work", func() bool { return count("tick") > 0 && ticks.Load() > 1 })
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after the context ended")
	}
}

func TestJobsOnePerKey(t *testing.T) {
	j := runtime.NewJobs()
	release := make(chan struct{})
	var ends atomic.Int32
	started := j.Start("k", "import", func(ctx context.Context) {
		select {
		case <-release:
		case <-ctx.Done():
		}
	}, func() { ends.Add(1) })
	if !started || !j.Running("k") {
		t.Fatal("the first job did not start")
	}
	if j.Start("k", "import", func(context.Context) { t.Error("a second job ran for one key") }, nil) {
		t.Fatal("a second job for a running key started")
	}
	if st, ok := j.Status("k"); !ok || st.What != "import" || st.Started.IsZero() {
		t.Fatalf("status %+v, %v", st, ok)
	}
	close(release)
	eventually(t, "the job's end", func() bool { return !j.Running("k") && ends.Load() == 1 })

	// Cancel stops a job and waits for it; CancelAll stops the rest.
	for _, k := range []string{"a", "b", "c"} {
		j.Start(k, "upload", func(ctx context.Context) { <-ctx.Done() }, func() { ends.Add(1) })
	}
	if got := j.Keys(); len(got) != 3 {
		t.Fatalf("keys %v", got)
	}
	j.Cancel("a")
	if j.Running("a") {
		t.Fatal("Cancel returned while the job runs")
	}
	j.CancelAll()
	if len(j.Keys()) != 0 {
		t.Fatalf("jobs left after CancelAll: %v", j.Keys())
	}
	eventually(t, "every done callback", func() bool { return ends.Load() == 4 })
}
