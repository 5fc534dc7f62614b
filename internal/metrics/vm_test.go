package metrics

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// fakeHost writes a /proc and /sys tree for QEMU processes: pid, vCPU threads (with their
// names under KVM) and taps.
type fakeHost struct{ proc, sys string }

func newFakeHost(t testing.TB) *fakeHost {
	d := t.TempDir()
	return &fakeHost{proc: filepath.Join(d, "proc"), sys: filepath.Join(d, "sys")}
}

func write(t testing.TB, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// addQEMU makes process pid with vcpus vCPU threads named accel ("KVM", "TCG") plus three
// other threads, as QEMU has (main loop, I/O, a worker).
func (h *fakeHost) addQEMU(t testing.TB, pid, vcpus int, accel string) {
	p := filepath.Join(h.proc, fmt.Sprint(pid))
	// utime 1234 ticks, stime 567 ticks; the name has a space and parentheses.
	write(t, filepath.Join(p, "stat"), fmt.Sprintf("%d (qemu-system-x86) S 1 %d %d 0 -1 4194560 100 0 0 0 1234 567 0 0 20 0 8 0 100 1000000 5000 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 0 0 0 0 0 0\n", pid, pid, pid))
	write(t, filepath.Join(p, "statm"), "100000 2560 300 1 0 5000 0\n")
	tid := pid
	thread := func(name string, run, wait int64) {
		tp := filepath.Join(p, "task", fmt.Sprint(tid))
		write(t, filepath.Join(tp, "comm"), name+"\n")
		write(t, filepath.Join(tp, "schedstat"), fmt.Sprintf("%d %d 42\n", run, wait))
		tid++
	}
	thread("qemu-system-x86", 1e9, 1e6)
	thread("IO mon_iothread", 1e8, 1e5)
	for i := range vcpus {
		thread(fmt.Sprintf("CPU %d/%s", i, accel), int64(i+1)*2e9, int64(i+1)*5e8)
	}
	thread("worker", 1e7, 1e4)
}

func (h *fakeHost) addTap(t testing.TB, tap string) {
	for i, f := range tapFiles {
		write(t, filepath.Join(h.sys, "class", "net", tap, "statistics", f), fmt.Sprintf("%d\n", 1000*(i+1)))
	}
}

func blocks(n int) func(ctx context.Context) ([]BlockStat, error) {
	return func(ctx context.Context) ([]BlockStat, error) {
		var out []BlockStat
		for i := range n {
			out = append(out, BlockStat{Device: fmt.Sprintf("disk-%d", i), ReadBytes: 4096, ReadOps: 1, ReadTimeNs: 2e6})
		}
		return out, nil
	}
}

// collect gathers c and returns "name{labels} value" lines.
func collect(t testing.TB, c prometheus.Collector) []string {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var lv []string
			for _, l := range m.GetLabel() {
				lv = append(lv, l.GetName()+"="+l.GetValue())
			}
			v := m.GetGauge().GetValue() + m.GetCounter().GetValue()
			out = append(out, fmt.Sprintf("%s{%s} %g", mf.GetName(), strings.Join(lv, ","), v))
		}
	}
	sort.Strings(out)
	return out
}

func TestVMCollectorReadsHost(t *testing.T) {
	h := newFakeHost(t)
	h.addQEMU(t, 4242, 2, "KVM")
	h.addTap(t, "rkt0001")
	c := &VMCollector{Node: "n1", Proc: h.proc, Sys: h.sys, Source: func() []VM {
		return []VM{{Project: "p", Name: "vm", Phase: "Running", PID: 4242, VCPUs: 2, MemoryBytes: 1 << 30,
			NICs: []NIC{{Device: "net0", Tap: "rkt0001"}}, BlockStats: blocks(1)}}
	}}
	got := strings.Join(collect(t, c), "\n")
	for _, want := range []string{
		`rakhsh_vm_cpu_seconds_total{mode=user,name=vm,node=n1,project=p} 12.34`,
		`rakhsh_vm_cpu_seconds_total{mode=system,name=vm,node=n1,project=p} 5.67`,
		`rakhsh_vm_vcpu_run_seconds_total{name=vm,node=n1,project=p,vcpu=0} 2`,
		`rakhsh_vm_vcpu_wait_seconds_total{name=vm,node=n1,project=p,vcpu=1} 1`,
		fmt.Sprintf(`rakhsh_vm_memory_resident_bytes{name=vm,node=n1,project=p} %g`, float64(2560*os.Getpagesize())),
		`rakhsh_vm_phase{name=vm,node=n1,phase=Running,project=p} 1`,
		`rakhsh_vm_disk_read_time_seconds_total{device=disk-0,name=vm,node=n1,project=p} 0.002`,
		// The tap's tx is what the VM received.
		`rakhsh_vm_network_receive_bytes_total{device=net0,name=vm,node=n1,project=p} 2000`,
		`rakhsh_vm_network_transmit_bytes_total{device=net0,name=vm,node=n1,project=p} 1000`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %s in:\n%s", want, got)
		}
	}
	if strings.Contains(got, "vcpu=2") {
		t.Errorf("a non-vCPU thread counted as a vCPU:\n%s", got)
	}
}

func TestVMCollectorSlowQMP(t *testing.T) {
	c := &VMCollector{Node: "n1", Proc: t.TempDir(), QMPTimeout: 1, Source: func() []VM {
		return []VM{{Project: "p", Name: "vm", Phase: "Running", PID: 1, BlockStats: func(ctx context.Context) ([]BlockStat, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		}}}
	}}
	got := strings.Join(collect(t, c), "\n")
	if strings.Contains(got, "rakhsh_vm_disk") || !strings.Contains(got, "rakhsh_vm_phase") {
		t.Fatalf("a QEMU that does not answer: want the VM's other series and no disk series, got:\n%s", got)
	}
}

func TestVCPUOfThread(t *testing.T) {
	for comm, want := range map[string]string{"CPU 0/KVM": "0", "CPU 12/TCG": "12", "ALL CPUs/TCG": "all", "CPU x/KVM": "", "qemu-system-x86": "", "CPU 3": ""} {
		got, ok := vcpuOfThread(comm)
		if got != want || ok != (want != "") {
			t.Errorf("vcpuOfThread(%q) = %q %v, want %q", comm, got, ok, want)
		}
	}
}

// docSeries reads the per-VM series table of docs/metrics.md: each row's metric and how many
// series of it a VM has, in terms of V (vCPUs), D (disks) and N (NICs).
func docSeries(t *testing.T) map[string]string {
	b, err := os.ReadFile("../../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "<!-- per-VM series -->")
	if !ok {
		t.Fatal("docs/metrics.md has no <!-- per-VM series --> table")
	}
	rest, _, _ = strings.Cut(rest, "<!-- end -->")
	row := regexp.MustCompile("(?m)^\\| `(rakhsh_vm_[a-z_]+)` \\|[^|]*\\| ([^|]+) \\|")
	out := map[string]string{}
	for _, m := range row.FindAllStringSubmatch(rest, -1) {
		out[m[1]] = strings.TrimSpace(m[2])
	}
	if len(out) == 0 {
		t.Fatal("no rows in the per-VM series table of docs/metrics.md")
	}
	return out
}

// TestSeriesPerVMBounded counts the series a VM has with V vCPUs, D disks and N NICs (a
// running migration included) and compares each metric's count with the bound in
// docs/metrics.md: a series the docs do not list, or more of one than they say, fails.
func TestSeriesPerVMBounded(t *testing.T) {
	doc := docSeries(t)
	for _, tc := range []struct{ vcpus, disks, nics int }{{1, 1, 0}, {4, 3, 2}, {16, 8, 4}} {
		h := newFakeHost(t)
		h.addQEMU(t, 100, tc.vcpus, "TCG")
		var nics []NIC
		for i := range tc.nics {
			tap := fmt.Sprintf("rkt%04d", i)
			h.addTap(t, tap)
			nics = append(nics, NIC{Device: fmt.Sprintf("net%d", i), Tap: tap})
		}
		c := &VMCollector{Node: "n1", Proc: h.proc, Sys: h.sys, Source: func() []VM {
			return []VM{{Project: "p", Name: "vm", Phase: "Migrating", PID: 100, VCPUs: tc.vcpus, NICs: nics, BlockStats: blocks(tc.disks),
				Migration: &Migration{Running: true, Percent: 50, RemainingBytes: 1}}}
		}}
		counts := map[string]int{}
		total := 0
		for _, line := range collect(t, c) {
			name, _, _ := strings.Cut(line, "{")
			counts[name]++
			total++
		}
		bound := 0
		for name, expr := range doc {
			n := evalBound(t, expr, tc.vcpus, tc.disks, tc.nics)
			bound += n
			if counts[name] > n {
				t.Errorf("V=%d D=%d N=%d: %s has %d series, docs/metrics.md says at most %s = %d", tc.vcpus, tc.disks, tc.nics, name, counts[name], expr, n)
			}
		}
		for name := range counts {
			if _, ok := doc[name]; !ok {
				t.Errorf("%s is not in the per-VM series table of docs/metrics.md", name)
			}
		}
		// The migration's downtime is there only when no migration runs: one of the two.
		if total > bound {
			t.Errorf("V=%d D=%d N=%d: %d series, bound %d", tc.vcpus, tc.disks, tc.nics, total, bound)
		}
		if total < 4+2*tc.vcpus+8*tc.disks+6*tc.nics {
			t.Errorf("V=%d D=%d N=%d: only %d series: the fake host is not read", tc.vcpus, tc.disks, tc.nics, total)
		}
		t.Logf("V=%d D=%d N=%d: %d series (bound %d)", tc.vcpus, tc.disks, tc.nics, total, bound)
	}
}

// evalBound evaluates a bound such as "1", "2", "V", "2×V", "D", "N".
func evalBound(t *testing.T, expr string, v, d, n int) int {
	mult, sym := 1, expr
	if a, b, ok := strings.Cut(expr, "×"); ok {
		fmt.Sscan(a, &mult)
		sym = b
	}
	switch sym {
	case "V":
		return mult * v
	case "D":
		return mult * d
	case "N":
		return mult * n
	}
	var k int
	if _, err := fmt.Sscan(sym, &k); err != nil {
		t.Fatalf("bound %q: want a number, V, D or N, optionally k×", expr)
	}
	return mult * k
}

// BenchmarkScrape50VMs serves /metrics (OpenMetrics, gzip) with the VM and node series of a node with 50 VMs of 2 vCPUs, 2
// disks and 1 NIC each from a fake /proc and /sys tree (the same reads as on a real host:
// stat, statm, every thread's comm and schedstat, the taps' counters), with the QMP answers
// given at once. It reports the CPU time of one scrape.
func BenchmarkScrape50VMs(b *testing.B) {
	h := newFakeHost(b)
	var vms []VM
	for i := range 50 {
		pid := 1000 + i*100
		h.addQEMU(b, pid, 2, "KVM")
		tap := fmt.Sprintf("rkt%04d", i)
		h.addTap(b, tap)
		vms = append(vms, VM{Project: "p", Name: fmt.Sprintf("vm-%d", i), Phase: "Running", PID: pid, VCPUs: 2, MemoryBytes: 4 << 30,
			NICs: []NIC{{Device: "net0", Tap: tap}}, BlockStats: blocks(2)})
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(&VMCollector{Node: "n1", Proc: h.proc, Sys: h.sys, Source: func() []VM { return vms }},
		&NodeCollector{Node: "n1", Sys: h.sys, Source: func() Node { return Node{Known: true} }})
	// The whole scrape as Prometheus makes it: OpenMetrics, gzip.
	srv := promhttp.HandlerFor(reg, promhttp.HandlerOpts{EnableOpenMetrics: true})
	req := httptest.NewRequest("GET", "/metrics", nil)
	req.Header.Set("Accept", "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
	req.Header.Set("Accept-Encoding", "gzip")
	var before, after syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	n0 := 0
	for b.Loop() {
		n0++
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, req)
		if w.Code != 200 || w.Body.Len() < 4000 || w.Header().Get("Content-Encoding") != "gzip" {
			b.Fatalf("scrape: %d, %d bytes", w.Code, w.Body.Len())
		}
	}
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	cpu := time.Duration(syscall.TimevalToNsec(after.Utime) + syscall.TimevalToNsec(after.Stime) -
		syscall.TimevalToNsec(before.Utime) - syscall.TimevalToNsec(before.Stime))
	b.ReportMetric(float64(cpu.Microseconds())/1000/float64(n0), "cpu-ms/scrape")
}
