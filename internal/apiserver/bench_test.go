package apiserver_test

// Benchmarks of the API server against the performance budget of design.md section 9:
// mutating call p99 <= 20 ms (bolt) / 50 ms (etcd), list of 10,000 VMs <= 250 ms, <= 10 KB of
// server memory per VM object.
//
// BenchmarkAPI serves the API in-process on a unix socket through a real http.Server (so every
// request goes through the HTTP stack, the JSON codec, validation and the store) and drives it
// with the Go client. Each store variant preloads RAKHSH_BENCH_OBJECTS (default 10,000)
// realistic VirtualMachines through the API and then measures, as sub-benchmarks:
//
//	Preload      time and rate of the preload (RAKHSH_BENCH_PRELOAD_WORKERS concurrent clients)
//	Memory       server heap, process RSS, bolt file / etcd process size per stored VM
//	List         one call listing every VM, decoded by the client into a v1alpha1.List
//	ListRaw      the same call, body read but not decoded
//	ListStore    the store's own List of the same prefix, no HTTP (to attribute the time)
//	Get, Update  RAKHSH_BENCH_OPS (default 2,000) sequential calls each
//	WatchFanout  RAKHSH_BENCH_WATCHERS (default 100) watchers, time from an update until all
//	             have the event, over RAKHSH_BENCH_WATCH_UPDATES (default 100) updates
//	Create       RAKHSH_BENCH_OPS sequential creates (last, so that lists see exactly the
//	             preloaded objects)
//	MemoryEnd    server heap and RSS per stored VM after all of the above
//
// Each sub-benchmark runs its fixed workload once per b.N iteration and reports custom
// metrics (p50-ms, p99-ms, mean-ms, ...); run with -benchtime 1x (scripts/bench.sh does).
// RAKHSH_BENCH_STORES (default "bolt,etcd") chooses the variants; the etcd variant needs the
// etcd binary (Debian etcd-server) and is skipped without it unless CI is set. The bolt file
// and the etcd data live under RAKHSH_BENCH_DIR (default the system temp dir).
//
// BenchmarkFsync measures the raw latency of a 4 KiB write + fdatasync in that directory, the
// floor under every durable write of either store.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/apiserver"
	"github.com/rakhsh/rakhsh/internal/store"
	"github.com/rakhsh/rakhsh/internal/store/bolt"
	"github.com/rakhsh/rakhsh/internal/store/etcd"
	"github.com/rakhsh/rakhsh/internal/store/etcd/etcdtest"
)

const (
	benchProject  = "default"
	benchResource = "virtualmachines"
)

func benchEnvInt(name string, def int) int {
	if v := os.Getenv(name); v != "" {
		if n, err := strconv.Atoi(v); err == nil && n > 0 {
			return n
		}
	}
	return def
}

// benchDir is where the bolt file and etcd data go: a real disk, so fsync costs what it costs.
func benchDir(b *testing.B) string {
	base := os.Getenv("RAKHSH_BENCH_DIR")
	if base == "" {
		return b.TempDir()
	}
	d, err := os.MkdirTemp(base, "rakhsh-bench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// benchVM is a realistic VirtualMachine of about 1.3 KB once stored: labels, annotations,
// three block devices, two networks and a few hundred bytes of cloud-init user data.
func benchVM(i int) *v1alpha1.VirtualMachine {
	name := fmt.Sprintf("vm-%05d", i)
	boot := 1
	grace := int64(120)
	userData := fmt.Sprintf(`#cloud-config
hostname: %s
users:
  - name: ops
    groups: [sudo]
    shell: /bin/bash
    ssh_authorized_keys:
      - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0c2VjcmV0a2V5Zm9yYmVuY2htYXJraW5nb25seQ ops@%s
package_update: true
packages: [qemu-guest-agent, nginx, prometheus-node-exporter]
runcmd:
  - systemctl enable --now qemu-guest-agent nginx
`, name, name)
	return &v1alpha1.VirtualMachine{
		TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachine"},
		ObjectMeta: v1alpha1.ObjectMeta{
			Name: name,
			Labels: map[string]string{
				"app":                 fmt.Sprintf("web-%d", i%50),
				"tier":                "frontend",
				"env":                 []string{"prod", "staging", "dev"}[i%3],
				"team":                fmt.Sprintf("team-%d", i%12),
				"rakhsh.io/owner":     fmt.Sprintf("user-%d", i%200),
				"example.com/cluster": "eu-west-1",
			},
			Annotations: map[string]string{
				"rakhsh.io/description": fmt.Sprintf("Web frontend %d of the shop, behind the load balancer", i),
				"example.com/ticket":    fmt.Sprintf("OPS-%d", 10000+i),
			},
		},
		Spec: v1alpha1.VirtualMachineSpec{
			RunPolicy: v1alpha1.RunPolicyAlwaysOn,
			CPU:       v1alpha1.VirtualMachineCPU{Cores: 2, CoreFraction: "50%"},
			Memory:    v1alpha1.VirtualMachineMemory{Size: "4Gi"},
			BlockDeviceRefs: []v1alpha1.BlockDeviceSpecRef{
				{Kind: v1alpha1.BlockDeviceKindVirtualDisk, Name: name + "-root", BootOrder: &boot},
				{Kind: v1alpha1.BlockDeviceKindVirtualDisk, Name: name + "-data"},
				{Kind: v1alpha1.BlockDeviceKindClusterVirtualImage, Name: "ubuntu-24-04-cloudimg"},
			},
			Networks: []v1alpha1.NetworkSpec{
				{Type: v1alpha1.NetworkTypeMain},
				{Type: v1alpha1.NetworkTypeNetwork, Name: "backend"},
			},
			Bootloader:                    v1alpha1.BootloaderEFI,
			Provisioning:                  &v1alpha1.Provisioning{Type: v1alpha1.ProvisioningTypeUserData, UserData: userData},
			NodeSelector:                  map[string]string{"rakhsh.io/zone": "a"},
			TerminationGracePeriodSeconds: &grace,
		},
	}
}

// latStats summarises latencies in milliseconds.
type latStats struct{ p50, p99, mean, max float64 }

func summarize(lat []time.Duration) latStats {
	if len(lat) == 0 {
		return latStats{}
	}
	s := slices.Clone(lat)
	slices.Sort(s)
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	pct := func(p float64) time.Duration {
		i := int(p*float64(len(s))+0.999999) - 1 // nearest rank
		return s[max(0, min(i, len(s)-1))]
	}
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	return latStats{p50: ms(pct(0.50)), p99: ms(pct(0.99)), mean: ms(sum / time.Duration(len(s))), max: ms(s[len(s)-1])}
}

// timeCall runs call, adds how long it took to lat, and fails the benchmark on its error.
func timeCall(b *testing.B, lat *[]time.Duration, call func() error) {
	t0 := time.Now()
	err := call()
	*lat = append(*lat, time.Since(t0))
	if err != nil {
		b.Fatal(err)
	}
}

func reportLat(b *testing.B, lat []time.Duration) latStats {
	reportLoad(b)
	st := summarize(lat)
	b.ReportMetric(st.mean*1e6, "ns/op")
	b.ReportMetric(st.p50, "p50-ms")
	b.ReportMetric(st.p99, "p99-ms")
	b.ReportMetric(st.mean, "mean-ms")
	b.ReportMetric(st.max, "max-ms")
	b.ReportMetric(float64(len(lat)), "samples")
	return st
}

// procStatus reads the kB fields of /proc/PID/status (pid 0: self) as bytes.
func procStatus(pid int) map[string]int64 {
	p := "/proc/self/status"
	if pid > 0 {
		p = fmt.Sprintf("/proc/%d/status", pid)
	}
	data, err := os.ReadFile(p)
	out := map[string]int64{}
	if err != nil {
		return out
	}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 2 && f[1] == "kB" {
			n, _ := strconv.ParseInt(f[0], 10, 64)
			out[k] = n << 10
		}
	}
	return out
}

// cpuTime is the CPU (user + system) this process has used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPU is the CPU (user + system) process pid has used so far, from /proc/PID/stat
// (clock ticks of 10 ms).
func procCPU(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// reportLoad reports the 1-minute load average: this machine may be shared, and a load above
// the number of CPUs makes wall-clock latencies longer than the code alone would.
func reportLoad(b *testing.B) {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return
	}
	if f := strings.Fields(string(data)); len(f) > 0 {
		if v, err := strconv.ParseFloat(f[0], 64); err == nil {
			b.ReportMetric(v, "load1")
		}
	}
}

type memSample struct {
	heap         uint64
	rss, rssAnon int64
	etcdRSS      int64
}

func sampleMem(etcdPID int) memSample {
	runtime.GC()
	debug.FreeOSMemory() // a GC, and heap returned to the OS so that RSS is comparable
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	self := procStatus(0)
	s := memSample{heap: ms.HeapAlloc, rss: self["VmRSS"], rssAnon: self["RssAnon"]}
	if etcdPID > 0 {
		s.etcdRSS = procStatus(etcdPID)["VmRSS"]
	}
	return s
}

// apiBench is one API server on one store, served on a unix socket.
type apiBench struct {
	kind     string
	store    store.Store
	api      *apiserver.Server
	http     *http.Server
	cli      *client.Client
	boltPath string
	etcd     *etcdtest.Server

	objects int
	ops     int

	// Measured while preloading.
	preload      time.Duration
	before       memSample
	after        memSample
	objBytes     float64 // mean stored JSON size of one VM
	boltFileSize int64
	etcdDBSize   int64
}

func BenchmarkAPI(b *testing.B) {
	stores := os.Getenv("RAKHSH_BENCH_STORES")
	if stores == "" {
		stores = "bolt,etcd"
	}
	for _, kind := range strings.Split(stores, ",") {
		kind = strings.TrimSpace(kind)
		b.Run(kind, func(b *testing.B) { benchAPI(b, kind) })
	}
}

func newAPIBench(b *testing.B, kind string) *apiBench {
	ab := &apiBench{
		kind:    kind,
		objects: benchEnvInt("RAKHSH_BENCH_OBJECTS", 10000),
		ops:     benchEnvInt("RAKHSH_BENCH_OPS", 2000),
	}
	ctx := context.Background()
	dir := benchDir(b)
	switch kind {
	case "bolt":
		ab.boltPath = filepath.Join(dir, "rakhsh.db")
		s, err := bolt.Open(ab.boltPath, bolt.Options{})
		if err != nil {
			b.Fatal(err)
		}
		ab.store = s
	case "etcd":
		if etcdtest.Binary() == "" && os.Getenv("CI") == "" {
			b.Skip("etcd binary not found (apt-get install etcd-server or set RAKHSH_ETCD_BIN): skipping the etcd variant")
		}
		ab.etcd = etcdtest.Start(b)
		s, err := etcd.New(ctx, etcd.Config{Endpoints: ab.etcd.Endpoints, Prefix: "/rakhsh-bench"})
		if err != nil {
			b.Fatal(err)
		}
		ab.store = s
	default:
		b.Fatalf("unknown store %q (want bolt or etcd)", kind)
	}
	b.Cleanup(func() { ab.store.Close() })

	ab.api = apiserver.New(apiserver.Config{Store: ab.store, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := ab.api.EnsureProject(ctx, benchProject); err != nil {
		b.Fatal(err)
	}
	// A short socket directory: unix socket paths are limited to 108 bytes.
	sockDir, err := os.MkdirTemp("", "rakhsh-sock-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	ab.http = &http.Server{Handler: ab.api.LocalHandler(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = ab.http.Serve(ln) }()
	b.Cleanup(func() {
		ab.api.Shutdown()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = ab.http.Shutdown(sctx)
	})
	ab.cli, err = client.New(client.Config{Server: "unix://" + sock, Timeout: 5 * time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	return ab
}

func (ab *apiBench) etcdPID() int {
	if ab.etcd == nil {
		return 0
	}
	return ab.etcd.PID()
}

// preloadVMs creates the VMs through the API with a few concurrent clients and samples memory
// before and after.
func (ab *apiBench) preloadVMs(b *testing.B) {
	ctx := context.Background()
	workers := benchEnvInt("RAKHSH_BENCH_PRELOAD_WORKERS", 8)
	ab.before = sampleMem(ab.etcdPID())
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	t0 := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= ab.objects {
					return
				}
				if err := ab.cli.Create(ctx, benchResource, benchProject, benchVM(i), nil); err != nil {
					errc <- fmt.Errorf("preload vm %d: %w", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	ab.preload = time.Since(t0)
	close(errc)
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	ab.after = sampleMem(ab.etcdPID())

	res, err := ab.store.List(ctx, "/"+benchResource+"/"+benchProject+"/", store.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}
	if len(res.KVs) != ab.objects {
		b.Fatalf("store holds %d VMs after the preload, want %d", len(res.KVs), ab.objects)
	}
	var total int
	for _, kv := range res.KVs {
		total += len(kv.Value)
	}
	ab.objBytes = float64(total) / float64(len(res.KVs))
	if ab.boltPath != "" {
		if fi, err := os.Stat(ab.boltPath); err == nil {
			ab.boltFileSize = fi.Size()
		}
	}
	if es, ok := ab.store.(*etcd.Store); ok {
		if st, err := es.Client().Status(ctx, ab.etcd.Endpoints[0]); err == nil {
			ab.etcdDBSize = st.DbSize
		}
	}
}

func benchAPI(b *testing.B, kind string) {
	ab := newAPIBench(b, kind)
	ctx := context.Background()
	ab.preloadVMs(b)
	n := float64(ab.objects)

	b.Run("Preload", func(b *testing.B) {
		b.ReportMetric(float64(ab.preload)/n, "ns/op")
		b.ReportMetric(ab.preload.Seconds(), "total-s")
		b.ReportMetric(n/ab.preload.Seconds(), "VMs/s")
		b.ReportMetric(ab.objBytes, "B/VM-json")
	})

	b.Run("Memory", func(b *testing.B) {
		b.ReportMetric(0, "ns/op")
		b.ReportMetric(float64(int64(ab.after.heap)-int64(ab.before.heap))/n, "heap-B/VM")
		b.ReportMetric(float64(ab.after.rss-ab.before.rss)/n, "rss-B/VM")
		b.ReportMetric(float64(ab.after.rssAnon-ab.before.rssAnon)/n, "rssanon-B/VM")
		if ab.boltFileSize > 0 {
			b.ReportMetric(float64(ab.boltFileSize)/n, "boltfile-B/VM")
		}
		if ab.etcd != nil {
			b.ReportMetric(float64(ab.after.etcdRSS-ab.before.etcdRSS)/n, "etcdrss-B/VM")
			b.ReportMetric(float64(ab.etcdDBSize)/n, "etcddb-B/VM")
		}
	})

	runs := benchEnvInt("RAKHSH_BENCH_LIST_RUNS", 10)
	listCheck := func(b *testing.B, got int) {
		if got != ab.objects {
			b.Fatalf("list returned %d VMs, want %d", got, ab.objects)
		}
	}
	// listCPU reports the CPU per call: this process (server and client) and etcd.
	listCPU := func(b *testing.B, calls int, run func()) {
		c0, e0 := cpuTime(), time.Duration(0)
		if ab.etcd != nil {
			e0 = procCPU(ab.etcdPID())
		}
		run()
		b.ReportMetric(float64(cpuTime()-c0)/1e6/float64(calls), "cpu-ms")
		if ab.etcd != nil {
			b.ReportMetric(float64(procCPU(ab.etcdPID())-e0)/1e6/float64(calls), "etcdcpu-ms")
		}
	}
	// timeLists times runs calls of list per iteration, with the CPU per call; after looks at
	// what each call got, outside the timing.
	timeLists := func(b *testing.B, list func() error, after func()) {
		var lat []time.Duration
		listCPU(b, b.N*runs, func() {
			for range b.N {
				for range runs {
					timeCall(b, &lat, list)
					after()
				}
			}
		})
		reportLat(b, lat)
	}
	b.Run("List", func(b *testing.B) {
		var l *v1alpha1.List
		timeLists(b, func() (err error) {
			l, err = ab.cli.List(ctx, benchResource, benchProject, client.ListOptions{})
			return err
		}, func() { listCheck(b, len(l.Items)) })
	})
	b.Run("ListRaw", func(b *testing.B) {
		var raw []byte
		timeLists(b, func() error {
			raw = nil
			return ab.cli.Do(ctx, http.MethodGet, client.Path(benchResource, benchProject, ""), nil, "", nil, &raw)
		}, func() {})
		b.ReportMetric(float64(len(raw))/(1<<20), "MiB")
	})
	b.Run("ListStore", func(b *testing.B) {
		var res store.ListResult
		timeLists(b, func() (err error) {
			res, err = ab.store.List(ctx, "/"+benchResource+"/"+benchProject+"/", store.ListOptions{})
			return err
		}, func() { listCheck(b, len(res.KVs)) })
	})

	// eachOp runs op ab.ops times an iteration and reports the latencies op timed into lat.
	eachOp := func(b *testing.B, op func(i int, lat *[]time.Duration)) {
		var lat []time.Duration
		for range b.N {
			for i := range ab.ops {
				op(i, &lat)
			}
		}
		reportLat(b, lat)
	}
	// preloaded names the preloaded VM the i-th operation uses, spread over all of them.
	preloaded := func(i int) string { return fmt.Sprintf("vm-%05d", (i*7919)%ab.objects) }

	b.Run("Get", func(b *testing.B) {
		eachOp(b, func(i int, lat *[]time.Duration) {
			var vm v1alpha1.VirtualMachine
			name := preloaded(i)
			timeCall(b, lat, func() error { return ab.cli.Get(ctx, benchResource, benchProject, name, &vm) })
		})
	})

	var updates atomic.Int64
	b.Run("Update", func(b *testing.B) {
		eachOp(b, func(i int, lat *[]time.Duration) {
			// Read-modify-write as a client does; only the PUT is timed.
			var vm v1alpha1.VirtualMachine
			name := preloaded(i)
			if err := ab.cli.Get(ctx, benchResource, benchProject, name, &vm); err != nil {
				b.Fatal(err)
			}
			changeSpec(&vm, int(updates.Add(1)))
			var out v1alpha1.VirtualMachine
			timeCall(b, lat, func() error { return ab.cli.Update(ctx, benchResource, benchProject, name, &vm, &out) })
			if out.Generation <= vm.Generation {
				b.Fatalf("update of %s did not change the spec: generation %d -> %d", name, vm.Generation, out.Generation)
			}
		})
	})

	b.Run("WatchFanout", func(b *testing.B) {
		benchWatchFanout(b, ab, &updates)
	})

	var created atomic.Int64
	b.Run("Create", func(b *testing.B) {
		eachOp(b, func(_ int, lat *[]time.Duration) {
			vm := benchVM(ab.objects + int(created.Add(1)))
			vm.Name = fmt.Sprintf("new-%06d", created.Load())
			timeCall(b, lat, func() error { return ab.cli.Create(ctx, benchResource, benchProject, vm, nil) })
		})
	})

	// The heap once everything above ran: the bolt store's watch history (HistorySize events)
	// now holds updates, which carry the previous value too.
	b.Run("MemoryEnd", func(b *testing.B) {
		end := sampleMem(ab.etcdPID())
		stored := n + float64(created.Load())
		b.ReportMetric(0, "ns/op")
		b.ReportMetric(stored, "VMs")
		b.ReportMetric(float64(int64(end.heap)-int64(ab.before.heap))/stored, "heap-B/VM")
		b.ReportMetric(float64(end.rss-ab.before.rss)/stored, "rss-B/VM")
		if ab.etcd != nil {
			b.ReportMetric(float64(end.etcdRSS-ab.before.etcdRSS)/stored, "etcdrss-B/VM")
		}
	})
}

// changeSpec makes a spec change (cores and memory). k is unique per call, so the memory size
// differs from every earlier one and the update is never a no-op (which the server answers
// without a write, a new resourceVersion or a watch event).
func changeSpec(vm *v1alpha1.VirtualMachine, k int) {
	vm.Spec.CPU.Cores = 1 + k%8
	vm.Spec.Memory.Size = v1alpha1.Quantity(fmt.Sprintf("%dMi", 8192+k))
}

type receipt struct {
	rv string
	at time.Time
}

// benchWatchFanout opens the watchers from the current resourceVersion, then updates one VM at
// a time and waits until every watcher has its MODIFIED event.
func benchWatchFanout(b *testing.B, ab *apiBench, updates *atomic.Int64) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	nw := benchEnvInt("RAKHSH_BENCH_WATCHERS", 100)
	nu := benchEnvInt("RAKHSH_BENCH_WATCH_UPDATES", 100)

	l, err := ab.cli.List(ctx, benchResource, benchProject, client.ListOptions{Limit: 1})
	if err != nil {
		b.Fatal(err)
	}
	recv := make(chan receipt, nw*4)
	var wg sync.WaitGroup
	for range nw {
		w, err := ab.cli.Watch(ctx, benchResource, benchProject, client.ListOptions{ResourceVersion: l.Metadata.ResourceVersion})
		if err != nil {
			b.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer w.Stop()
			for ev := range w.Events() {
				if ev.Type != v1alpha1.WatchModified {
					continue
				}
				at := time.Now()
				var o struct {
					Metadata struct {
						ResourceVersion string `json:"resourceVersion"`
					} `json:"metadata"`
				}
				if err := json.Unmarshal(ev.Object, &o); err != nil {
					continue
				}
				select {
				case recv <- receipt{o.Metadata.ResourceVersion, at}:
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	defer wg.Wait()
	defer cancel()

	var all, afterPut []time.Duration
	for range b.N {
		for i := range nu {
			name := fmt.Sprintf("vm-%05d", (i*31)%ab.objects)
			var vm, out v1alpha1.VirtualMachine
			if err := ab.cli.Get(ctx, benchResource, benchProject, name, &vm); err != nil {
				b.Fatal(err)
			}
			changeSpec(&vm, int(updates.Add(1)))
			t0 := time.Now()
			if err := ab.cli.Update(ctx, benchResource, benchProject, name, &vm, &out); err != nil {
				b.Fatal(err)
			}
			tPut := time.Now()
			if out.ResourceVersion == vm.ResourceVersion {
				b.Fatalf("update of %s was a no-op (resourceVersion stayed %s)", name, out.ResourceVersion)
			}
			var last time.Time
			got := 0
			timeout := time.After(30 * time.Second)
			for got < nw {
				select {
				case r := <-recv:
					if r.rv != out.ResourceVersion {
						continue
					}
					got++
					if r.at.After(last) {
						last = r.at
					}
				case <-timeout:
					b.Fatalf("after 30 s only %d of %d watchers had the update at resourceVersion %s", got, nw, out.ResourceVersion)
				}
			}
			all = append(all, last.Sub(t0))
			afterPut = append(afterPut, max(0, last.Sub(tPut)))
		}
	}
	reportLat(b, all)
	b.ReportMetric(summarize(afterPut).p50, "afterput-p50-ms")
	b.ReportMetric(summarize(afterPut).p99, "afterput-p99-ms")
	b.ReportMetric(float64(nw), "watchers")
}

// BenchmarkFsync measures a 4 KiB write followed by fdatasync in RAKHSH_BENCH_DIR (or the temp
// dir): the floor under a durable commit of either store (bbolt syncs twice per commit).
func BenchmarkFsync(b *testing.B) {
	f, err := os.Create(filepath.Join(benchDir(b), "fsync.dat"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for i := range buf {
		buf[i] = byte(i)
	}
	n := benchEnvInt("RAKHSH_BENCH_FSYNCS", 1000)
	var lat []time.Duration
	for range b.N {
		for i := range n {
			t0 := time.Now()
			if _, err := f.WriteAt(buf, int64(i%256)*4096); err != nil {
				b.Fatal(err)
			}
			if err := syscall.Fdatasync(int(f.Fd())); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(t0))
		}
	}
	reportLat(b, lat)
}
