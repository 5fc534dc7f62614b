package vmbench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/qemu/qmp"
	"github.com/rakhsh/rakhsh/internal/storage"
	"github.com/rakhsh/rakhsh/internal/testutil"
	"github.com/rakhsh/rakhsh/test/bench/internal/benchhost"
)

// readyMarker is what the test guest prints on its serial console when it is set up.
const readyMarker = "RAKHSH-GUEST: ready"

// Knobs (environment).
func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v >= 0 {
		return v
	}
	return def
}

func envStr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// BenchmarkVM measures, against a real `rakhsh serve`:
//
//   - Sequential: RAKHSH_VMBENCH_RUNS (5) rounds, each one VM created through the API (its
//     disk Ready beforehand) and one bare QEMU started by hand with the command line the agent
//     used, alternating which goes first. Times: to QEMU running the guest (bare: exec → QMP
//     cont answered and query-status "running"; Rakhsh: API create → the watch event with
//     phase Running) and to the guest's ready marker on the serial console.
//   - Mass: RAKHSH_VMBENCH_VMS (20; 0 skips) VMs created at once: until all Running and all
//     ready, and the RSS of the `rakhsh serve` process (API, controllers and node agent) with
//     none versus all of them running.
//
// It runs once whatever b.N is (use -benchtime 1x) and prints a table.
func BenchmarkVM(b *testing.B) {
	for _, tool := range []string{"qemu-system-x86_64", "qemu-img"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Fatalf("%s missing: apt-get install qemu-system-x86 qemu-utils", tool)
		}
	}
	guestDir := envStr("RAKHSH_GUEST_DIR", filepath.Join("..", "..", "guest", "out"))
	if _, err := os.Stat(filepath.Join(guestDir, "guest.qcow2")); err != nil {
		b.Fatalf("test guest missing (%v): build it with test/guest/build.sh test/guest/out", err)
	}
	runs := envInt("RAKHSH_VMBENCH_RUNS", 5)
	mass := envInt("RAKHSH_VMBENCH_VMS", 20)
	memSeq := envStr("RAKHSH_VMBENCH_MEMORY", "256Mi")
	memMass := envStr("RAKHSH_VMBENCH_MASS_MEMORY", "128Mi")

	// Short paths: QEMU's unix sockets live under the data dir (108-byte limit).
	tmp, err := os.MkdirTemp(envStr("RAKHSH_VMBENCH_DIR", os.TempDir()), "vmb")
	if err != nil {
		b.Fatal(err)
	}
	bin := rakhshBin(b, tmp)
	s := startServe(b, bin, filepath.Join(tmp, "d"), filepath.Join(tmp, "serve.log"))
	b.Cleanup(func() {
		s.stop()
		killQEMUUnder(b, tmp)
		if os.Getenv("RAKHSH_VMBENCH_KEEP") == "" {
			_ = os.RemoveAll(tmp)
		} else {
			b.Logf("kept %s", tmp)
		}
	})
	c := s.c
	ctx := context.Background()

	// The guest image, and every disk the runs need, made beforehand.
	img := httptest.NewServer(http.FileServer(http.Dir(guestDir)))
	defer img.Close()
	must(b, c.Create(ctx, "clustervirtualimages", "", map[string]any{
		"apiVersion": "virtualization.rakhsh.io/v1alpha1", "kind": "ClusterVirtualImage",
		"metadata": map[string]any{"name": "guest"},
		"spec": map[string]any{"dataSource": map[string]any{"type": "HTTP",
			"http": map[string]any{"url": img.URL + "/guest.qcow2"}}},
	}, nil))
	var disks []string
	for i := 0; i < runs; i++ {
		disks = append(disks, fmt.Sprintf("seq-%d", i))
	}
	disks = append(disks, "bare")
	for i := 0; i < mass; i++ {
		disks = append(disks, fmt.Sprintf("mass-%d", i))
	}
	for _, d := range disks {
		must(b, c.Create(ctx, "virtualdisks", "default", map[string]any{
			"apiVersion": "virtualization.rakhsh.io/v1alpha1", "kind": "VirtualDisk",
			"metadata": map[string]any{"name": d},
			"spec": map[string]any{"persistentVolumeClaim": map[string]any{"size": "1Gi"},
				"dataSource": map[string]any{"type": "ObjectRef",
					"objectRef": map[string]any{"kind": "ClusterVirtualImage", "name": "guest"}}},
		}, nil))
	}
	diskUIDs := waitDisksReady(b, c, disks, 5*time.Minute)
	if mass > 0 {
		// The default 4 vCPUs per host CPU would fit 8 one-core VMs on 2 CPUs.
		must(b, c.Patch(ctx, "nodes", "", s.node, []byte(`{"spec":{"allocationRatios":{"cpu":64}}}`), nil))
	}
	b.ResetTimer()

	// Sequential rounds, alternating which side goes first.
	var rk, bare []runResult
	var tmpl *template
	for i := 0; i < runs; i++ {
		doRakhsh := func() {
			r, t := rakhshRun(b, s, fmt.Sprintf("seq-%d", i), fmt.Sprintf("seq-%d", i), memSeq, diskUIDs)
			if tmpl == nil {
				tmpl = t
			}
			rk = append(rk, r)
			b.Logf("rakhsh %d: %s", i, r)
		}
		doBare := func() {
			r := bareRun(b, tmpl, filepath.Join(tmp, "bare", strconv.Itoa(i)),
				storage.DiskPath(s.dataDir, "default", diskUIDs["bare"]), s.cmd.Process.Pid)
			bare = append(bare, r)
			b.Logf("bare   %d: %s", i, r)
		}
		if i%2 == 0 {
			doRakhsh()
			settle()
			doBare()
		} else {
			doBare()
			settle()
			doRakhsh()
		}
		settle()
	}

	var m *massResult
	if mass > 0 {
		m = massRun(b, s, mass, memMass)
		settle()
		memBytes, err := v1alpha1.Quantity(memMass).Value()
		must(b, err)
		m.bareRunning, m.bareReady = bareMass(b, tmpl, filepath.Join(tmp, "bare-mass"),
			storage.DiskPath(s.dataDir, "default", diskUIDs["bare"]), mass, memBytes)
	}
	b.StopTimer()
	report(b, rk, bare, m, runs, memSeq, memMass)
}

func settle() { time.Sleep(2 * time.Second) }

func must(b *testing.B, err error) {
	b.Helper()
	if err != nil {
		b.Fatal(err)
	}
}

// rakhshBin is $RAKHSH_BIN or a fresh build.
func rakhshBin(b *testing.B, dir string) string {
	if p := os.Getenv("RAKHSH_BIN"); p != "" {
		p, _ = filepath.Abs(p)
		return p
	}
	p := filepath.Join(dir, "rakhsh")
	out, err := exec.Command("go", "build", "-o", p, "github.com/rakhsh/rakhsh/cmd/rakhsh").CombinedOutput()
	if err != nil {
		b.Fatalf("building rakhsh: %v\n%s", err, out)
	}
	return p
}

// serve is one `rakhsh serve` process.
type serve struct {
	dataDir, logPath, node string
	cmd                    *exec.Cmd
	done                   chan struct{}
	c                      *client.Client
}

func startServe(b *testing.B, bin, dataDir, logPath string) *serve {
	logf, err := os.Create(logPath)
	if err != nil {
		b.Fatal(err)
	}
	s := &serve{dataDir: dataDir, logPath: logPath, node: "vmbench", done: make(chan struct{})}
	s.cmd = exec.Command(bin, "serve", "--data-dir", dataDir, "--node-name", s.node, "--log-level", "info", "--vm-networking", "user",
		"--allow-import-from", "127.0.0.0/8", // the guest image is served on loopback
		"--profiling", // RAKHSH_VMBENCH_HEAP saves a heap profile when all VMs are ready
		// QEMU as root opens its files by path: the bare runs replay the agent's command
		// line, which with an unprivileged QEMU names descriptors only the agent holds.
		"--qemu-user", "root")
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	go func() { _ = s.cmd.Wait(); logf.Close(); close(s.done) }()
	s.c, err = client.New(client.Config{Server: "unix://" + filepath.Join(dataDir, "rakhsh.sock")})
	if err != nil {
		b.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		var n v1alpha1.Node
		err := s.c.Get(ctx, "nodes", "", s.node, &n)
		cancel()
		if err == nil && n.Status.Phase == v1alpha1.NodePhaseReady && n.Status.Accelerator != "" {
			// What the agent's probe chose, which is what the VMs of the run use.
			why := ""
			if c := v1alpha1.FindCondition(n.Status.Conditions, v1alpha1.NodeConditionKVM); c != nil {
				why = " (" + c.Reason + ": " + c.Message + ")"
			}
			fmt.Printf("accelerator: %s%s\n", n.Status.Accelerator, why)
			return s
		}
		select {
		case <-s.done:
			b.Fatalf("rakhsh serve exited; log in %s", logPath)
		default:
		}
		if time.Now().After(deadline) {
			b.Fatalf("node %s not Ready within 30s (%v); log in %s", s.node, err, logPath)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (s *serve) stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(20 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

// agentTook returns the agent's own "VM started ... took=" figure (QEMU exec → cont) for a VM.
func (s *serve) agentTook(name string) time.Duration {
	b, _ := os.ReadFile(s.logPath)
	re := regexp.MustCompile(`msg="VM started" .*\bvm=default/` + regexp.QuoteMeta(name) + ` .*took=(\S+)`)
	var d time.Duration
	for _, m := range re.FindAllSubmatch(b, -1) {
		d, _ = time.ParseDuration(string(m[1]))
	}
	return d
}

// procStatus returns a field of /proc/PID/status in bytes (VmRSS, RssAnon, ...).
func procStatus(pid int, field string) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, field+":") {
			f := strings.Fields(l)
			if len(f) >= 2 {
				n, _ := strconv.ParseInt(f[1], 10, 64)
				return n * 1024
			}
		}
	}
	return 0
}

// procCPU returns the user+system CPU time of a process (/proc/PID/stat, clock ticks of 10 ms).
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+2:])) // f[0] is the state (field 3); utime is field 14
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+st) * 10 * time.Millisecond
}

// killQEMUUnder kills, by pid, every QEMU whose command line names a path under dir (only
// the benchmark's own VMs do).
func killQEMUUnder(b *testing.B, dir string) {
	for _, pid := range qemuPIDsUnder(dir) {
		b.Errorf("QEMU pid %d left running: killing it", pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

func qemuPIDsUnder(dir string) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cl, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		argv0, _, _ := strings.Cut(string(cl), "\x00")
		if strings.Contains(filepath.Base(argv0), "qemu") && strings.Contains(string(cl), dir+"/") {
			out = append(out, pid)
		}
	}
	return out
}

func waitDisksReady(b *testing.B, c *client.Client, names []string, timeout time.Duration) map[string]string {
	deadline := time.Now().Add(timeout)
	for {
		l, err := c.ListAll(context.Background(), "virtualdisks", "default", client.ListOptions{})
		must(b, err)
		uids := map[string]string{}
		for _, raw := range l.Items {
			var d v1alpha1.VirtualDisk
			must(b, json.Unmarshal(raw, &d))
			if d.Status.Phase == v1alpha1.DiskPhaseReady {
				uids[d.Name] = d.UID
			}
		}
		if len(uids) >= len(names) {
			return uids
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d disks Ready after %s", len(uids), len(names), timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func vmObject(name, disk, mem string) map[string]any {
	return map[string]any{
		"apiVersion": "virtualization.rakhsh.io/v1alpha1", "kind": "VirtualMachine",
		"metadata": map[string]any{"name": name},
		"spec": map[string]any{
			"runPolicy":                     "AlwaysOnUnlessStoppedManually",
			"cpu":                           map[string]any{"cores": 1},
			"memory":                        map[string]any{"size": mem},
			"terminationGracePeriodSeconds": 30,
			"blockDeviceRefs":               []any{map[string]any{"kind": "VirtualDisk", "name": disk}},
		},
	}
}

// runResult is one start, bare or through Rakhsh. Durations are from the start (exec for
// bare, API create call for Rakhsh).
type runResult struct {
	Created   time.Duration // Rakhsh: the create call returned
	Scheduled time.Duration // Rakhsh: first event with status.nodeName
	Starting  time.Duration // Rakhsh: first event with phase Starting
	Running   time.Duration // bare: cont answered and status running; Rakhsh: event with phase Running
	Ready     time.Duration // the ready marker seen on the serial port / in serial.log
	AgentTook time.Duration // Rakhsh: the agent's exec → cont (its log)
	ServeCPU  time.Duration // CPU time (user+system) of `rakhsh serve` from the start to ready
}

func (r runResult) String() string {
	return fmt.Sprintf("created %v scheduled %v starting %v running %v ready %v agent-exec-to-cont %v serve-cpu %v",
		r.Created, r.Scheduled, r.Starting, r.Running, r.Ready, r.AgentTook, r.ServeCPU)
}

// template is the QEMU command line the agent used for a VM, and what in it is per VM.
type template struct {
	argv     []string
	runDir   string
	diskPath string
	uid      string
}

// argvIn copies freshDisk into dir (an existing directory) and returns the template's
// command line for another VM there: its disk, run directory and UID replaced.
func (t *template) argvIn(b *testing.B, dir, freshDisk string) []string {
	disk := filepath.Join(dir, "disk.qcow2")
	testutil.CopyFile(b, freshDisk, disk, 0o600)
	uid := uuid.NewString()
	argv := make([]string, len(t.argv))
	for i, a := range t.argv {
		a = strings.ReplaceAll(a, t.diskPath, disk)
		a = strings.ReplaceAll(a, t.runDir, dir)
		argv[i] = strings.ReplaceAll(a, t.uid, uid)
	}
	return argv
}

// rakhshRun creates one VM through the API, times it to Running and to the ready marker,
// then deletes it (untimed). It returns the QEMU command line the agent used.
func rakhshRun(b *testing.B, s *serve, name, disk, mem string, diskUIDs map[string]string) (runResult, *template) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	w, err := s.c.Watch(ctx, "virtualmachines", "default", client.ListOptions{})
	must(b, err)
	defer w.Stop()
	var r runResult
	var created v1alpha1.VirtualMachine
	cpu0 := procCPU(s.cmd.Process.Pid)
	t0 := time.Now()
	must(b, s.c.Create(ctx, "virtualmachines", "default", vmObject(name, disk, mem), &created))
	r.Created = time.Since(t0)
	for r.Running == 0 {
		ev, ok := <-w.Events()
		if !ok {
			b.Fatalf("watch ended before %s ran: %v", name, w.Err())
		}
		at := time.Since(t0)
		var v v1alpha1.VirtualMachine
		if json.Unmarshal(ev.Object, &v) != nil || v.Name != name {
			continue
		}
		if r.Scheduled == 0 && v.Status.NodeName != "" {
			r.Scheduled = at
		}
		switch v.Status.Phase {
		case v1alpha1.VMPhaseStarting:
			if r.Starting == 0 {
				r.Starting = at
			}
		case v1alpha1.VMPhaseRunning:
			r.Running = at
		case v1alpha1.VMPhaseStopped:
			b.Fatalf("%s stopped: %+v", name, v.Status.LastExit)
		}
	}
	w.Stop()
	runDir := storage.VMRunDir(s.dataDir, created.UID)
	r.Ready = waitMarker(b, filepath.Join(runDir, "serial.log"), t0, 3*time.Minute, 20*time.Millisecond)
	r.ServeCPU = procCPU(s.cmd.Process.Pid) - cpu0
	r.AgentTook = s.agentTook(name)

	pidb, err := os.ReadFile(filepath.Join(runDir, "qemu.pid"))
	must(b, err)
	pid, _ := strconv.Atoi(strings.TrimSpace(string(pidb)))
	cl, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	must(b, err)
	t := &template{argv: strings.Split(strings.TrimSuffix(string(cl), "\x00"), "\x00"), runDir: runDir,
		diskPath: storage.DiskPath(s.dataDir, "default", diskUIDs[disk]), uid: created.UID}

	must(b, s.c.Delete(ctx, "virtualmachines", "default", name))
	if left := waitGone(s.c, []string{name}, 2*time.Minute); len(left) > 0 {
		b.Errorf("VM not gone 2 min after its deletion: %v", left)
	}
	return r, t
}

// waitMarker polls a file until it holds the ready marker; it returns the time since t0.
func waitMarker(b *testing.B, path string, t0 time.Time, timeout, every time.Duration) time.Duration {
	deadline := time.Now().Add(timeout)
	for {
		if data, err := os.ReadFile(path); err == nil && strings.Contains(string(data), readyMarker) {
			return time.Since(t0)
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s: no %q within %s", path, readyMarker, timeout)
		}
		time.Sleep(every)
	}
}

// waitGone waits until the named VMs are deleted and returns those still there at the timeout.
func waitGone(c *client.Client, names []string, timeout time.Duration) []string {
	deadline := time.Now().Add(timeout)
	for {
		var left []string
		for _, n := range names {
			var v v1alpha1.VirtualMachine
			err := c.Get(context.Background(), "virtualmachines", "default", n, &v)
			if !client.IsNotFound(err) {
				left = append(left, fmt.Sprintf("%s (phase %s, err %v)", n, v.Status.Phase, err))
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// bareRun starts QEMU by hand with the agent's command line for another VM, on a copy of a
// fresh linked clone of the same image, in its own directory, and drives it as the agent
// does: connect QMP, connect the serial port, cont. It times exec → cont done (status
// running) and exec → ready marker on the serial socket, then quits QEMU.
func bareRun(b *testing.B, t *template, dir, freshDisk string, servePID int) runResult {
	must(b, os.MkdirAll(dir, 0o700))
	defer os.RemoveAll(dir)
	argv := t.argvIn(b, dir, freshDisk)
	logf, err := os.Create(filepath.Join(dir, "qemu.log"))
	must(b, err)
	defer logf.Close()
	devnull, err := os.Open(os.DevNull)
	must(b, err)
	defer devnull.Close()

	var r runResult
	cpu0 := procCPU(servePID)
	t0 := time.Now()
	proc, err := os.StartProcess(argv[0], argv, &os.ProcAttr{Dir: dir,
		Env:   []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"},
		Files: []*os.File{devnull, logf, logf}, Sys: &syscall.SysProcAttr{Setsid: true}})
	must(b, err)
	exited := make(chan struct{})
	go func() { _, _ = proc.Wait(); close(exited) }()
	defer func() {
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = proc.Kill()
			<-exited
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var mon *qmp.Conn
	for {
		dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
		mon, err = qmp.Dial(dctx, filepath.Join(dir, "qmp.sock"))
		dcancel()
		if err == nil {
			break
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(filepath.Join(dir, "qemu.log"))
			b.Fatalf("bare QEMU exited: %s\nargv: %q", log, argv)
		default:
		}
		if time.Since(t0) > 30*time.Second {
			b.Fatalf("bare QEMU: no QMP within 30s: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	defer mon.Close()
	serial, err := net.Dial("unix", filepath.Join(dir, "serial.sock"))
	must(b, err)
	defer serial.Close()
	ready := make(chan time.Duration, 1)
	go func() {
		sc := bufio.NewScanner(serial)
		for sc.Scan() {
			if strings.Contains(sc.Text(), readyMarker) {
				ready <- time.Since(t0)
				_, _ = io.Copy(io.Discard, serial)
				return
			}
		}
	}()
	must(b, mon.Cont(ctx))
	st, err := mon.QueryStatus(ctx)
	must(b, err)
	r.Running = time.Since(t0)
	if st.Status != "running" {
		b.Fatalf("bare QEMU status after cont: %+v", st)
	}
	select {
	case r.Ready = <-ready:
		r.ServeCPU = procCPU(servePID) - cpu0
	case <-time.After(3 * time.Minute):
		b.Fatalf("bare QEMU: no ready marker within 3 min")
	case <-exited:
		b.Fatalf("bare QEMU exited before the ready marker")
	}
	_ = mon.Quit(ctx)
	return r
}

// massResult is the 20-VMs-at-once run.
type massResult struct {
	n                       int
	running, ready          []time.Duration // per VM, sorted
	createdAll              time.Duration
	rss0, anon0             int64 // serve process, no VM
	rssRun, anonRun         int64 // serve process, all Running
	rssReady, anonReady     int64 // serve process, all ready
	qemuRSS                 int64 // sum over the QEMU processes, all ready
	deleteAll               time.Duration
	serveCPU                time.Duration // `rakhsh serve` CPU time from the creates to all ready
	stuck                   []string      // VMs not gone 2 min after their deletion
	loadBefore, loadRunning string
	bareRunning, bareReady  []time.Duration // the same burst of bare QEMUs, sorted
}

func sampleRSS(pid int) (rss, anon int64) {
	var rs, as []int64
	for i := 0; i < 5; i++ {
		rs = append(rs, procStatus(pid, "VmRSS"))
		as = append(as, procStatus(pid, "RssAnon"))
		time.Sleep(200 * time.Millisecond)
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i] < rs[j] })
	sort.Slice(as, func(i, j int) bool { return as[i] < as[j] })
	return rs[2], as[2]
}

func massRun(b *testing.B, s *serve, n int, mem string) *massResult {
	m := &massResult{n: n}
	pid := s.cmd.Process.Pid
	time.Sleep(3 * time.Second)
	m.rss0, m.anon0 = sampleRSS(pid)
	m.loadBefore = benchhost.LoadAvg()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	w, err := s.c.Watch(ctx, "virtualmachines", "default", client.ListOptions{})
	must(b, err)
	defer w.Stop()
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("mass-%d", i)
	}
	uids := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	cpu0 := procCPU(pid)
	t0 := time.Now()
	for i := range names {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			var v v1alpha1.VirtualMachine
			errs[i] = s.c.Create(ctx, "virtualmachines", "default", vmObject(names[i], names[i], mem), &v)
			uids[i] = v.UID
		}(i)
	}
	wg.Wait()
	m.createdAll = time.Since(t0)
	for _, err := range errs {
		must(b, err)
	}
	running := map[string]time.Duration{}
	timeout := time.After(15 * time.Minute)
	for len(running) < n {
		select {
		case ev, ok := <-w.Events():
			if !ok {
				b.Fatalf("watch ended: %v", w.Err())
			}
			var v v1alpha1.VirtualMachine
			if json.Unmarshal(ev.Object, &v) != nil || !strings.HasPrefix(v.Name, "mass-") {
				continue
			}
			if _, seen := running[v.Name]; !seen && v.Status.Phase == v1alpha1.VMPhaseRunning {
				running[v.Name] = time.Since(t0)
			}
			if v.Status.Phase == v1alpha1.VMPhaseStopped {
				b.Fatalf("%s stopped: %+v", v.Name, v.Status.LastExit)
			}
		case <-timeout:
			b.Fatalf("%d of %d VMs Running after 15 min", len(running), n)
		}
	}
	w.Stop()
	for _, d := range running {
		m.running = append(m.running, d)
	}
	m.loadRunning = benchhost.LoadAvg()
	m.rssRun, m.anonRun = sampleRSS(pid)

	// Ready markers: poll every serial.log.
	ready := map[int]time.Duration{}
	deadline := time.Now().Add(30 * time.Minute)
	for len(ready) < n {
		for i, uid := range uids {
			if _, ok := ready[i]; ok {
				continue
			}
			data, err := os.ReadFile(filepath.Join(storage.VMRunDir(s.dataDir, uid), "serial.log"))
			if err == nil && strings.Contains(string(data), readyMarker) {
				ready[i] = time.Since(t0)
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d VMs ready after 30 min", len(ready), n)
		}
		time.Sleep(250 * time.Millisecond)
	}
	m.serveCPU = procCPU(pid) - cpu0
	for _, d := range ready {
		m.ready = append(m.ready, d)
	}
	sort.Slice(m.running, func(i, j int) bool { return m.running[i] < m.running[j] })
	sort.Slice(m.ready, func(i, j int) bool { return m.ready[i] < m.ready[j] })
	time.Sleep(3 * time.Second)
	m.rssReady, m.anonReady = sampleRSS(pid)
	if p := os.Getenv("RAKHSH_VMBENCH_HEAP"); p != "" {
		saveHeapProfile(b, filepath.Join(s.dataDir, "rakhsh.sock"), p)
	}
	for _, qp := range qemuPIDsUnder(s.dataDir) {
		m.qemuRSS += procStatus(qp, "VmRSS")
	}
	if q := len(qemuPIDsUnder(s.dataDir)); q != n {
		b.Errorf("%d QEMU processes with %d VMs running", q, n)
	}

	t1 := time.Now()
	for i, name := range names {
		wg.Add(1)
		go func(i int, name string) {
			defer wg.Done()
			errs[i] = s.c.Delete(ctx, "virtualmachines", "default", name)
		}(i, name)
	}
	wg.Wait()
	for _, err := range errs {
		must(b, err)
	}
	m.stuck = waitGone(s.c, names, 2*time.Minute)
	m.deleteAll = time.Since(t1)
	time.Sleep(time.Second)
	if left := qemuPIDsUnder(s.dataDir); len(left) != 0 {
		b.Errorf("QEMU left after deleting every VM: %v", left)
	}
	return m
}

// pct is the nearest-rank percentile of sorted durations.
func pct(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	k := int(math.Ceil(p/100*float64(len(s)))) - 1
	if k < 0 {
		k = 0
	}
	return s[k]
}

func field(rs []runResult, f func(runResult) time.Duration) []time.Duration {
	var out []time.Duration
	for _, r := range rs {
		out = append(out, f(r))
	}
	return out
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0f", float64(d)/float64(time.Millisecond)) }
func sec(d time.Duration) string {
	return fmt.Sprintf("%.1f", d.Seconds())
}
func mib(n int64) string { return fmt.Sprintf("%.1f", float64(n)/(1<<20)) }

func spread(d []time.Duration, f func(time.Duration) string) string {
	if len(d) == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%s [%s–%s]", f(pct(d, 50)), f(pct(d, 0)), f(pct(d, 100)))
}

func report(b *testing.B, rk, bare []runResult, m *massResult, runs int, memSeq, memMass string) {
	w := os.Stdout
	fmt.Fprintf(w, "\n== one VM at a time: %d Rakhsh and %d bare starts, alternating, memory %s (ms: p50 [min–max])\n\n", len(rk), len(bare), memSeq)
	fmt.Fprintf(w, "| figure | bare QEMU | Rakhsh | Rakhsh − bare (p50) | target |\n|---|---|---|---|---|\n")
	running := func(r runResult) time.Duration { return r.Running }
	ready := func(r runResult) time.Duration { return r.Ready }
	ovRun := pct(field(rk, running), 50) - pct(field(bare, running), 50)
	ovReady := pct(field(rk, ready), 50) - pct(field(bare, ready), 50)
	verdict := "pass"
	if ovRun > 100*time.Millisecond {
		verdict = "MISS"
	}
	fmt.Fprintf(w, "| start → QEMU running the guest (bare: exec → cont done; Rakhsh: API create → phase Running event) | %s | %s | %s | ≤ 100 ms: %s |\n",
		spread(field(bare, running), ms), spread(field(rk, running), ms), ms(ovRun), verdict)
	fmt.Fprintf(w, "| start → `%s` on the serial port / in serial.log | %s | %s | %s | |\n",
		readyMarker, spread(field(bare, ready), ms), spread(field(rk, ready), ms), ms(ovReady))
	var paired []time.Duration
	for i := 0; i < len(rk) && i < len(bare); i++ {
		paired = append(paired, rk[i].Running-bare[i].Running)
	}
	fmt.Fprintf(w, "| per-round difference to running (same round) | | | %s | |\n", spread(paired, ms))
	fmt.Fprintf(w, "\nRakhsh breakdown (ms since the create call, p50 [min–max]):\n\n| step | ms |\n|---|---|\n")
	fmt.Fprintf(w, "| create call returned | %s |\n", spread(field(rk, func(r runResult) time.Duration { return r.Created }), ms))
	fmt.Fprintf(w, "| event: status.nodeName set (scheduled) | %s |\n", spread(field(rk, func(r runResult) time.Duration { return r.Scheduled }), ms))
	fmt.Fprintf(w, "| event: phase Starting | %s |\n", spread(field(rk, func(r runResult) time.Duration { return r.Starting }), ms))
	fmt.Fprintf(w, "| event: phase Running | %s |\n", spread(field(rk, running), ms))
	fmt.Fprintf(w, "| agent's own QEMU exec → cont (serve log `took=`) | %s |\n", spread(field(rk, func(r runResult) time.Duration { return r.AgentTook }), ms))
	fmt.Fprintf(w, "| `rakhsh serve` CPU time from create to ready (during bare runs: %s) | %s |\n",
		spread(field(bare, func(r runResult) time.Duration { return r.ServeCPU }), ms), spread(field(rk, func(r runResult) time.Duration { return r.ServeCPU }), ms))
	b.ReportMetric(float64(pct(field(bare, running), 50))/1e6, "bare-running-p50-ms")
	b.ReportMetric(float64(pct(field(rk, running), 50))/1e6, "rakhsh-running-p50-ms")
	b.ReportMetric(float64(ovRun)/1e6, "overhead-running-p50-ms")
	b.ReportMetric(float64(pct(field(bare, ready), 50))/1e6, "bare-ready-p50-ms")
	b.ReportMetric(float64(pct(field(rk, ready), 50))/1e6, "rakhsh-ready-p50-ms")

	if m == nil {
		return
	}
	perVM := float64(m.rssReady-m.rss0) / float64(m.n)
	perVMRun := float64(m.rssRun-m.rss0) / float64(m.n)
	v := "pass"
	if perVM > 1<<20 {
		v = "MISS"
	}
	fmt.Fprintf(w, "\n== %d VMs created at once, memory %s each (load average before: %s; when all were Running: %s)\n\n", m.n, memMass, m.loadBefore, m.loadRunning)
	fmt.Fprintf(w, "| figure | value | target |\n|---|---|---|\n")
	fmt.Fprintf(w, "| all %d create calls returned | %s ms | |\n", m.n, ms(m.createdAll))
	fmt.Fprintf(w, "| create → Running: first / p50 / all | %s / %s / %s s | |\n", sec(m.running[0]), sec(pct(m.running, 50)), sec(m.running[len(m.running)-1]))
	fmt.Fprintf(w, "| create → ready marker: first / p50 / all | %s / %s / %s s | |\n", sec(m.ready[0]), sec(pct(m.ready, 50)), sec(m.ready[len(m.ready)-1]))
	if len(m.bareRunning) > 0 {
		fmt.Fprintf(w, "| bare QEMU, %d exec'd at once: exec → running: first / p50 / all | %s / %s / %s s | |\n", len(m.bareRunning),
			sec(m.bareRunning[0]), sec(pct(m.bareRunning, 50)), sec(m.bareRunning[len(m.bareRunning)-1]))
		fmt.Fprintf(w, "| bare QEMU, %d exec'd at once: exec → ready marker: first / p50 / all | %s / %s / %s s | |\n", len(m.bareReady),
			sec(m.bareReady[0]), sec(pct(m.bareReady, 50)), sec(m.bareReady[len(m.bareReady)-1]))
	}
	fmt.Fprintf(w, "| `rakhsh serve` VmRSS: no VM / all Running / all ready | %s / %s / %s MiB | |\n", mib(m.rss0), mib(m.rssRun), mib(m.rssReady))
	fmt.Fprintf(w, "| `rakhsh serve` RssAnon: no VM / all Running / all ready | %s / %s / %s MiB | |\n", mib(m.anon0), mib(m.anonRun), mib(m.anonReady))
	fmt.Fprintf(w, "| serve RSS per running VM (all ready − none) / %d | %.0f KiB (anon %.0f KiB) | ≤ 1 MiB: %s |\n", m.n, perVM/1024, float64(m.anonReady-m.anon0)/float64(m.n)/1024, v)
	fmt.Fprintf(w, "| serve RSS per running VM (all Running − none) / %d | %.0f KiB | |\n", m.n, perVMRun/1024)
	fmt.Fprintf(w, "| QEMU RSS per VM (mean, for comparison) | %s MiB | |\n", mib(m.qemuRSS/int64(m.n)))
	fmt.Fprintf(w, "| `rakhsh serve` CPU time from the creates to all ready | %s s | |\n", sec(m.serveCPU))
	if len(m.stuck) == 0 {
		fmt.Fprintf(w, "| delete all %d → all gone | %s s | |\n", m.n, sec(m.deleteAll))
	} else {
		fmt.Fprintf(w, "| delete all %d → all gone | %d not gone after 2 min: %s | |\n", m.n, len(m.stuck), strings.Join(m.stuck, ", "))
		b.Errorf("VMs not gone 2 min after their deletion: %v", m.stuck)
	}
	b.ReportMetric(m.running[len(m.running)-1].Seconds(), "mass-all-running-s")
	b.ReportMetric(m.ready[len(m.ready)-1].Seconds(), "mass-all-ready-s")
	b.ReportMetric(perVM/1024, "serve-rss-KiB/VM")
}

// bareMass starts n bare QEMUs at once from the agent's command line (as bareRun does one),
// each on its own copy of a fresh linked clone, with mem bytes of memory, and times each from
// the common start to running (QMP cont answered) and to the ready marker on its serial port.
func bareMass(b *testing.B, t *template, dir, freshDisk string, n int, mem int64) (running, ready []time.Duration) {
	must(b, os.MkdirAll(dir, 0o700))
	defer os.RemoveAll(dir)
	type vm struct {
		dir  string
		argv []string
	}
	vms := make([]vm, n)
	for i := range vms {
		d := filepath.Join(dir, strconv.Itoa(i))
		must(b, os.MkdirAll(d, 0o700))
		argv := t.argvIn(b, d, freshDisk)
		for j := 0; j+1 < len(argv); j++ {
			if argv[j] == "-m" {
				argv[j+1] = strconv.FormatInt(mem>>20, 10) // MiB, as the agent writes it
			}
		}
		vms[i] = vm{dir: d, argv: argv}
	}
	devnull, err := os.Open(os.DevNull)
	must(b, err)
	defer devnull.Close()
	runningAt := make([]time.Duration, n)
	readyAt := make([]time.Duration, n)
	errs := make([]error, n)
	var procs []*os.Process
	var mu sync.Mutex
	var wg sync.WaitGroup
	t0 := time.Now()
	for i := range vms {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			v := vms[i]
			logf, err := os.Create(filepath.Join(v.dir, "qemu.log"))
			if err != nil {
				errs[i] = err
				return
			}
			defer logf.Close()
			proc, err := os.StartProcess(v.argv[0], v.argv, &os.ProcAttr{Dir: v.dir,
				Env:   []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"},
				Files: []*os.File{devnull, logf, logf}, Sys: &syscall.SysProcAttr{Setsid: true}})
			if err != nil {
				errs[i] = err
				return
			}
			mu.Lock()
			procs = append(procs, proc)
			mu.Unlock()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
			defer cancel()
			var mon *qmp.Conn
			for {
				dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
				mon, err = qmp.Dial(dctx, filepath.Join(v.dir, "qmp.sock"))
				dcancel()
				if err == nil {
					break
				}
				if time.Since(t0) > 2*time.Minute {
					log, _ := os.ReadFile(filepath.Join(v.dir, "qemu.log"))
					errs[i] = fmt.Errorf("bare QEMU %d: no QMP within 2 min: %v; its log: %s", i, err, log)
					return
				}
				time.Sleep(5 * time.Millisecond)
			}
			defer mon.Close()
			serial, err := net.Dial("unix", filepath.Join(v.dir, "serial.sock"))
			if err != nil {
				errs[i] = err
				return
			}
			defer serial.Close()
			if err := mon.Cont(ctx); err != nil {
				errs[i] = err
				return
			}
			if _, err := mon.QueryStatus(ctx); err != nil {
				errs[i] = err
				return
			}
			runningAt[i] = time.Since(t0)
			_ = serial.SetReadDeadline(time.Now().Add(30 * time.Minute))
			sc := bufio.NewScanner(serial)
			for sc.Scan() {
				if strings.Contains(sc.Text(), readyMarker) {
					readyAt[i] = time.Since(t0)
					break
				}
			}
			if readyAt[i] == 0 {
				errs[i] = fmt.Errorf("bare QEMU %d: no ready marker: %v", i, sc.Err())
			}
			_ = mon.Quit(ctx)
		}(i)
	}
	wg.Wait()
	for _, p := range procs {
		_, _ = p.Wait()
	}
	for _, err := range errs {
		must(b, err)
	}
	sort.Slice(runningAt, func(i, j int) bool { return runningAt[i] < runningAt[j] })
	sort.Slice(readyAt, func(i, j int) bool { return readyAt[i] < readyAt[j] })
	return runningAt, readyAt
}

// saveHeapProfile writes the serve process's heap profile (served with --profiling on its unix
// socket) to path, for `go tool pprof`.
func saveHeapProfile(b *testing.B, sock, path string) {
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := hc.Get("http://rakhsh/debug/pprof/heap")
	if err != nil {
		b.Errorf("heap profile: %v", err)
		return
	}
	defer resp.Body.Close()
	f, err := os.Create(path)
	if err != nil {
		b.Errorf("heap profile: %v", err)
		return
	}
	defer f.Close()
	if _, err := io.Copy(f, resp.Body); err != nil {
		b.Errorf("heap profile: %v", err)
	}
}
