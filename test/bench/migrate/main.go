package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rakhsh/rakhsh/internal/qemu/qmp"
	"github.com/rakhsh/rakhsh/test/bench/internal/benchhost"
)

// caseSpec is one benchmark case: a guest workload and the migration settings.
type caseSpec struct {
	Name         string
	Dirty        bool  // run the memory-dirtying loop in the guest
	AutoConverge bool  // capability auto-converge
	Postcopy     bool  // capability postcopy-ram, switched on after PostcopyAfter passes
	Bandwidth    int64 // max-bandwidth in bytes/s

	sum string // md5 of the guest's /tmp/src when the workload started
}

type options struct {
	dm            deviceModel
	runs          int
	cases         []string
	downtimeMS    int
	bandwidth     int64 // bytes/s for the idle case (and dirty-unlimited)
	dirtyBW       int64 // bytes/s for the dirty cases
	dirtyMiB      int
	timeout       time.Duration
	postcopyAfter int
	settle        time.Duration
	gap           time.Duration
	dir           string
	keep          bool
	jsonOut       string
	// hosts, if set (-underlay), are two network namespaces and their
	// addresses: the source and the target of each migration are in
	// different ones, and the stream goes between the addresses.
	hosts []underlayHost
	// tlsPSK (-tls-psk): the stream is encrypted by QEMU (tls-creds-psk).
	tlsPSK bool
}

// underlayHost is one side of -underlay.
type underlayHost struct{ netns, ip string }

// parseUnderlay reads -underlay's "NS1=IP1,NS2=IP2".
func parseUnderlay(v string) ([]underlayHost, error) {
	if v == "" {
		return nil, nil
	}
	parts := strings.Split(v, ",")
	if len(parts) != 2 {
		return nil, fmt.Errorf("-underlay %q: want NS1=IP1,NS2=IP2", v)
	}
	var hs []underlayHost
	for _, p := range parts {
		ns, ip, ok := strings.Cut(p, "=")
		if !ok || ns == "" || net.ParseIP(ip) == nil {
			return nil, fmt.Errorf("-underlay %q: %q is not NETNS=IP", v, p)
		}
		hs = append(hs, underlayHost{ns, ip})
	}
	return hs, nil
}

// on returns the device model for a QEMU on -underlay's host side (none without -underlay).
func (o options) on(side int) deviceModel {
	dm := o.dm
	if len(o.hosts) == 2 {
		dm.netns = o.hosts[side].netns
	}
	return dm
}

// unlimited stands for "no bandwidth limit": QEMU's max-bandwidth has no
// such value (0 is refused by some versions and 7.2 defaults to 32 MiB/s), so
// a limit far above what loopback carries is set instead.
const unlimited = 100 << 30

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, " ") }
func (m *multiFlag) Set(s string) error { *m = append(*m, s); return nil }

func main() {
	var o options
	var extra multiFlag
	var cases string
	var bwMiB, dirtyBWMiB int
	flag.StringVar(&o.dm.qemu, "qemu", "qemu-system-x86_64", "QEMU binary")
	flag.StringVar(&o.dm.guestDir, "guest", envOr("RAKHSH_GUEST_DIR", "test/guest/out"), "directory with the test guest's guest.iso, vmlinuz, initrd.img")
	flag.StringVar(&o.dm.memory, "memory", "256", "guest memory (-m)")
	flag.StringVar(&o.dm.boot, "boot", "cdrom", "cdrom (guest.iso on AHCI, SeaBIOS) or kernel (-kernel/-initrd)")
	flag.Var(&extra, "qemu-arg", "extra QEMU argument for source and target (repeatable), to match another device model")
	modelFile := flag.String("model-file", "", "file with the device model, one QEMU argument per line, used instead of the built-in one "+
		"(for example another QEMU's argv without its -name, -S, QMP, serial, -pidfile and -daemonize arguments)")
	flag.IntVar(&o.runs, "runs", 5, "migrations per case")
	flag.StringVar(&cases, "cases", "idle,dirty-unlimited,dirty,dirty-autoconverge,dirty-postcopy", "cases to run, comma-separated")
	flag.IntVar(&o.downtimeMS, "downtime-limit", 300, "migrate-set-parameters downtime-limit, ms")
	flag.IntVar(&bwMiB, "bandwidth", 0, "max-bandwidth for the idle and dirty-unlimited cases, MiB/s (0: unlimited)")
	flag.IntVar(&dirtyBWMiB, "dirty-bandwidth", 32, "max-bandwidth and max-postcopy-bandwidth for the dirty cases, MiB/s (0: unlimited)")
	flag.IntVar(&o.dirtyMiB, "dirty-mib", 48, "size of the guest's working set rewritten in a loop, MiB (two copies must fit in the guest's /tmp, half its memory)")
	flag.DurationVar(&o.timeout, "timeout", 60*time.Second, "per migration; then migrate_cancel and the run counts as not converged")
	flag.IntVar(&o.postcopyAfter, "postcopy-after", 1, "complete precopy passes before migrate-start-postcopy")
	flag.DurationVar(&o.settle, "settle", 5*time.Second, "wait after the workload started before the first migration")
	flag.DurationVar(&o.gap, "gap", 2*time.Second, "wait between two migrations of a case")
	flag.StringVar(&o.dir, "dir", "", "work directory (default: a new one under /tmp)")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory (serial and QEMU logs)")
	flag.StringVar(&o.jsonOut, "json", "", "also write every run's figures to this file as JSON")
	tlsPSK := flag.Bool("tls-psk", false, "encrypt the stream with QEMU's own TLS (tls-creds-psk, a random key per benchmark run); the platform encrypts in its agents instead: this is the baseline for an encrypted stream")
	underlay := flag.String("underlay", "", "NS1=IP1,NS2=IP2: run the source and the target in these two network namespaces "+
		"(alternating along the chain) and migrate between the addresses, instead of both on 127.0.0.1")
	flag.Parse()
	var err error
	if o.hosts, err = parseUnderlay(*underlay); err != nil {
		fmt.Fprintln(os.Stderr, "migrate:", err)
		os.Exit(2)
	}
	o.dm.extra = extra
	if *modelFile != "" {
		b, err := os.ReadFile(*modelFile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "migrate:", err)
			os.Exit(2)
		}
		o.dm.replace = []string{}
		for _, l := range strings.Split(string(b), "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				o.dm.replace = append(o.dm.replace, l)
			}
		}
	}
	o.cases = strings.Split(cases, ",")
	o.tlsPSK = *tlsPSK
	o.bandwidth = mib(bwMiB)
	o.dirtyBW = mib(dirtyBWMiB)
	if abs, err := filepath.Abs(o.dm.guestDir); err == nil {
		o.dm.guestDir = abs
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "migrate:", err)
		os.Exit(1)
	}
}

func mib(n int) int64 {
	if n <= 0 {
		return unlimited
	}
	return int64(n) << 20
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func specs(o options) ([]caseSpec, error) {
	var out []caseSpec
	for _, n := range o.cases {
		switch n = strings.TrimSpace(n); n {
		case "idle":
			out = append(out, caseSpec{Name: n, Bandwidth: o.bandwidth})
		case "dirty-unlimited":
			out = append(out, caseSpec{Name: n, Dirty: true, Bandwidth: o.bandwidth})
		case "dirty":
			out = append(out, caseSpec{Name: n, Dirty: true, Bandwidth: o.dirtyBW})
		case "dirty-autoconverge":
			out = append(out, caseSpec{Name: n, Dirty: true, AutoConverge: true, Bandwidth: o.dirtyBW})
		case "dirty-postcopy":
			out = append(out, caseSpec{Name: n, Dirty: true, Postcopy: true, Bandwidth: o.dirtyBW})
		case "":
		default:
			return nil, fmt.Errorf("unknown case %q", n)
		}
	}
	return out, nil
}

// started holds every VM this process started, so that all of them are
// ended on the way out whatever happens.
var (
	startedMu sync.Mutex
	started   []*vm
)

func track(v *vm) *vm {
	startedMu.Lock()
	started = append(started, v)
	startedMu.Unlock()
	return v
}

func killAll() {
	startedMu.Lock()
	defer startedMu.Unlock()
	for _, v := range started {
		v.kill()
	}
}

func run(o options) error {
	cs, err := specs(o)
	if err != nil {
		return err
	}
	for _, f := range []string{"guest.iso", "vmlinuz", "initrd.img"} {
		if _, err := os.Stat(filepath.Join(o.dm.guestDir, f)); err != nil {
			return fmt.Errorf("test guest: %w (build it with test/guest/build.sh)", err)
		}
	}
	if o.dir == "" {
		// Short: unix socket paths are limited to 108 bytes.
		if o.dir, err = os.MkdirTemp("", "migbench."); err != nil {
			return err
		}
	}
	if err := expandModel(&o); err != nil {
		return err
	}
	if o.tlsPSK {
		if o.dm.pskDir, err = writePSK(o.dir); err != nil {
			return err
		}
	}
	defer func() {
		if !o.keep {
			os.RemoveAll(o.dir)
		} else {
			logf("logs kept in %s", o.dir)
		}
	}()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	defer killAll()

	printSetup(o)
	var all []result
	for _, c := range cs {
		rs, err := runCase(ctx, o, c)
		all = append(all, rs...)
		if err != nil {
			logf("case %s: %v", c.Name, err)
		}
		if ctx.Err() != nil {
			break
		}
	}
	report(o, cs, all)
	if o.jsonOut != "" {
		b, _ := json.MarshalIndent(all, "", "  ")
		if err := os.WriteFile(o.jsonOut, b, 0o644); err != nil {
			return err
		}
	}
	for _, r := range all {
		if r.Status != "completed" && r.Status != "not-converged" {
			return fmt.Errorf("%d run(s) failed", countFailed(all))
		}
	}
	return ctx.Err()
}

// expandModel replaces ${GUEST_DIR} and ${WORK_DIR} in a -model-file's arguments, and
// makes the blank 64 MiB qcow2 data disk ${WORK_DIR}/disk.qcow2 when the model names it
// (test/bench/migrate/platform-model.txt does).
func expandModel(o *options) error {
	disk := false
	for i, a := range o.dm.replace {
		disk = disk || strings.Contains(a, "${WORK_DIR}/disk.qcow2")
		o.dm.replace[i] = os.Expand(a, func(k string) string {
			switch k {
			case "GUEST_DIR":
				return o.dm.guestDir
			case "WORK_DIR":
				return o.dir
			}
			return "${" + k + "}"
		})
	}
	if !disk {
		return nil
	}
	out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", filepath.Join(o.dir, "disk.qcow2"), "64M").CombinedOutput()
	if err != nil {
		return fmt.Errorf("qemu-img create: %v: %s", err, out)
	}
	return nil
}

// writePSK writes a random pre-shared key for user "qemu" into dir/psk/keys.psk, the
// form QEMU's tls-creds-psk reads, and returns the directory.
func writePSK(dir string) (string, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return "", err
	}
	d := filepath.Join(dir, "psk")
	if err := os.MkdirAll(d, 0o700); err != nil {
		return "", err
	}
	return d, os.WriteFile(filepath.Join(d, "keys.psk"), []byte("qemu:"+hex.EncodeToString(key)+"\n"), 0o600)
}

func countFailed(rs []result) int {
	n := 0
	for _, r := range rs {
		if r.Status != "completed" && r.Status != "not-converged" {
			n++
		}
	}
	return n
}

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().UTC().Format("15:04:05")}, a...)...)
}

func printSetup(o options) {
	fmt.Printf("== machine\n")
	fmt.Printf("cpu:    %d x %s\n", numCPU(), cpuModel())
	fmt.Printf("kernel: %s\n", kernelRelease())
	fmt.Printf("qemu:   %s\n", qemuVersion(o.dm.qemu))
	fmt.Printf("load:   %s (1/5/15 min, before the run)\n", benchhost.LoadAvg())
	fmt.Printf("\n== QEMU command lines (sockets under %s)\n", o.dir)
	src := append([]string{o.dm.qemu, "-name", "guest=NAME,debug-threads=on",
		"-chardev", "socket,id=qmp,path=DIR/qmp.sock,server=on,wait=off", "-mon", "chardev=qmp,mode=control",
		"-chardev", "socket,id=serial0,path=DIR/serial.sock,server=on,wait=off", "-serial", "chardev:serial0"},
		o.dm.args()...)
	fmt.Printf("source: %s -S\n", shellJoin(src))
	fmt.Printf("target: %s -incoming defer\n", shellJoin(src))
	link := "tcp:127.0.0.1:PORT"
	if len(o.hosts) == 2 {
		link = fmt.Sprintf("tcp between network namespaces %s (%s) and %s (%s), alternating", o.hosts[0].netns, o.hosts[0].ip, o.hosts[1].netns, o.hosts[1].ip)
	}
	fmt.Printf("\nmigration: %s, downtime-limit %d ms, capability events on; "+
		"max-bandwidth %s (idle), %s (dirty cases); dirty working set %d MiB; %d runs per case; timeout %s\n\n",
		link, o.downtimeMS, bwString(o.bandwidth), bwString(o.dirtyBW), o.dirtyMiB, o.runs, o.timeout)
}

func bwString(b int64) string {
	if b >= unlimited {
		return "unlimited"
	}
	return fmt.Sprintf("%d MiB/s", b>>20)
}

func shellJoin(a []string) string {
	var b strings.Builder
	for i, s := range a {
		if i > 0 {
			b.WriteByte(' ')
		}
		if s == "" || strings.ContainsAny(s, " \t\"'{}$*?;&|<>()[]\\") {
			b.WriteString("'" + strings.ReplaceAll(s, "'", `'\''`) + "'")
		} else {
			b.WriteString(s)
		}
	}
	return b.String()
}

// ---------------------------------------------------------------- one case

var tickRE = regexp.MustCompile(`(?:^|[^$])\bTICK ([0-9]+)$`)

// maxTick returns the highest tick in lines, and the first one at index from or later.
func ticks(lines []string, from int) (max, first int) {
	first = -1
	for i, l := range lines {
		m := tickRE.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		n, _ := strconv.Atoi(m[1])
		if n > max {
			max = n
		}
		if i >= from && first < 0 {
			first = n
		}
	}
	return max, first
}

var (
	dirtyRE = regexp.MustCompile(`(?:^|[^$])\bDIRTY ([0-9]+)$`)
	sumRE   = regexp.MustCompile(`\bSUM ([0-9a-f]{32})\b`)
)

// maxNumbered returns the highest number that re captures in lines.
func maxNumbered(lines []string, re *regexp.Regexp) int {
	max := 0
	for _, l := range lines {
		if m := re.FindStringSubmatch(l); m != nil {
			if n, _ := strconv.Atoi(m[1]); n > max {
				max = n
			}
		}
	}
	return max
}

// guestSum types md5sum of /tmp/src into the guest's shell and reads the answer.
func guestSum(ctx context.Context, v *vm) (string, error) {
	from := len(v.con.snapshot())
	if err := v.con.typeLine(`echo SUM $(md5sum </tmp/src)`); err != nil {
		return "", err
	}
	_, l, err := v.con.waitFor(ctx, from, func(l string) bool { return sumRE.MatchString(l) })
	if err != nil {
		return "", fmt.Errorf("%s: no md5 of /tmp/src: %w", v.name, err)
	}
	return sumRE.FindStringSubmatch(l)[1], nil
}

func countBooted(lines []string) int {
	n := 0
	for _, l := range lines {
		if strings.HasPrefix(l, "RAKHSH-GUEST: booted") {
			n++
		}
	}
	return n
}

// runCase boots the guest, starts its workload and migrates it o.runs times,
// each time to a new target QEMU.
func runCase(ctx context.Context, o options, c caseSpec) ([]result, error) {
	logf("case %s: booting the source", c.Name)
	src, err := startVM(ctx, o.on(0), filepath.Join(o.dir, c.Name, "0"), c.Name+"-0", false)
	if err != nil {
		return nil, err
	}
	track(src)
	defer func() { src.quit() }()
	t0 := time.Now()
	if err := src.exec(ctx, "cont", nil, nil); err != nil {
		return nil, err
	}
	bctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()
	if _, _, err := src.con.waitFor(bctx, 0, func(l string) bool { return strings.HasPrefix(l, "RAKHSH-GUEST: ready") }); err != nil {
		return nil, fmt.Errorf("no ready marker: %w", err)
	}
	logf("case %s: guest ready after %.1fs", c.Name, time.Since(t0).Seconds())
	time.Sleep(time.Second) // let the shell print its prompt
	if err := src.con.typeLine(`i=0; while :; do i=$((i+1)); echo TICK $i; sleep 1; done &`); err != nil {
		return nil, err
	}
	if _, _, err := src.con.waitFor(bctx, 0, func(l string) bool { m, _ := ticks([]string{l}, 0); return m >= 2 }); err != nil {
		return nil, fmt.Errorf("tick loop did not start: %w", err)
	}
	if c.Dirty {
		// Random (not zero, not compressible) data, rewritten in place so the
		// working set stays the same pages.
		// Every pass prints DIRTY n, so that the tool can tell it still runs.
		cmd := fmt.Sprintf(`dd if=/dev/urandom of=/tmp/src bs=1M count=%d 2>/dev/null; cp /tmp/src /tmp/dst; echo DIRTY-READY; `+
			`n=0; while :; do dd if=/tmp/src of=/tmp/dst bs=1M conv=notrunc 2>/dev/null; n=$((n+1)); echo DIRTY $n; done &`, o.dirtyMiB)
		if err := src.con.typeLine(cmd); err != nil {
			return nil, err
		}
		if _, _, err := src.con.waitFor(bctx, 0, func(l string) bool { return l == "DIRTY-READY" || strings.HasSuffix(l, "# DIRTY-READY") }); err != nil {
			return nil, fmt.Errorf("dirtying loop did not start: %w", err)
		}
		sum, err := guestSum(bctx, src)
		if err != nil {
			return nil, err
		}
		c.sum = sum
		logf("case %s: dirtying %d MiB in a loop (md5 of /tmp/src %s)", c.Name, o.dirtyMiB, sum)
	}
	time.Sleep(o.settle)
	chain := []*vm{src}
	var rs []result
	for i := 1; i <= o.runs && ctx.Err() == nil; i++ {
		if i > 1 {
			time.Sleep(o.gap)
		}
		r, dst, err := migrateOnce(ctx, o, c, src, i, chain)
		rs = append(rs, r)
		logf("case %s run %d: %s", c.Name, i, r)
		if err != nil {
			return rs, err
		}
		if dst != nil {
			old := src
			src = dst
			chain = append(chain, dst)
			old.quit()
		}
	}
	return rs, nil
}

// ---------------------------------------------------------------- one migration

type result struct {
	Case   string
	Run    int
	Status string // completed, not-converged, failed
	Error  string `json:",omitempty"`

	TotalMS    int64 // QEMU total-time
	DowntimeMS int64 // QEMU downtime
	SetupMS    int64 // QEMU setup-time
	WallMS     float64
	// PauseMS is the source's STOP event to the target's RESUME event
	// (QEMU's timestamps): how long the guest did not run.
	PauseMS float64
	// TargetRunningMS is the migrate command to the target's RESUME event.
	TargetRunningMS float64
	Transferred     int64 // ram.transferred, bytes
	Iterations      int64 // ram.dirty-sync-count
	MaxThrottle     int   // highest cpu-throttle-percentage seen
	DirtyPagesRate  int64 // highest ram.dirty-pages-rate seen, pages/s
	MBps            float64
	PostcopyReqs    int64 `json:",omitempty"`
	Postcopy        bool  // migrate-start-postcopy was issued

	LastSourceTick  int
	FirstTargetTick int
	Booted          int // boot markers in the whole chain's consoles
	// DirtyChecked: the dirtying loop still ran on the target and the md5 of
	// its source file was unchanged.
	DirtyChecked bool `json:",omitempty"`

	Load1 string // 1-minute load average when the run started
}

func (r result) String() string {
	if r.Status != "completed" {
		return fmt.Sprintf("%s %s (iterations %d, transferred %.0f MiB, throttle %d%%, dirty %d pages/s, load %s)", r.Status, r.Error,
			r.Iterations, float64(r.Transferred)/(1<<20), r.MaxThrottle, r.DirtyPagesRate, r.Load1)
	}
	return fmt.Sprintf("completed: total %d ms, wall %.0f ms, target running at %.0f ms, downtime %d ms, pause %.0f ms, setup %d ms, "+
		"transferred %.1f MiB, iterations %d, throttle %d%%, dirty %d pages/s, postcopy %v (requests %d), ticks %d→%d, booted %d, load %s",
		r.TotalMS, r.WallMS, r.TargetRunningMS, r.DowntimeMS, r.PauseMS, r.SetupMS, float64(r.Transferred)/(1<<20),
		r.Iterations, r.MaxThrottle, r.DirtyPagesRate, r.Postcopy, r.PostcopyReqs, r.LastSourceTick, r.FirstTargetTick, r.Booted, r.Load1)
}

type capability struct {
	Capability string `json:"capability"`
	State      bool   `json:"state"`
}

type migrateInfo struct {
	Status      string `json:"status"`
	TotalTime   int64  `json:"total-time"`
	Downtime    int64  `json:"downtime"`
	SetupTime   int64  `json:"setup-time"`
	CPUThrottle int    `json:"cpu-throttle-percentage"`
	ErrorDesc   string `json:"error-desc"`
	RAM         *struct {
		Transferred      int64   `json:"transferred"`
		Remaining        int64   `json:"remaining"`
		Total            int64   `json:"total"`
		DirtySyncCount   int64   `json:"dirty-sync-count"`
		DirtyPagesRate   int64   `json:"dirty-pages-rate"`
		Mbps             float64 `json:"mbps"`
		PostcopyRequests int64   `json:"postcopy-requests"`
	} `json:"ram"`
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// eventTimes records when the events that matter arrived.
type eventTimes struct {
	mu        sync.Mutex
	srcStop   time.Time // QEMU's timestamp
	dstResume time.Time // QEMU's timestamp
	dstResRx  time.Time // when we received it
	srcDoneRx time.Time // MIGRATION completed on the source, when we received it
	resumed   chan struct{}
	srcDone   chan struct{}
}

func migrateOnce(ctx context.Context, o options, c caseSpec, src *vm, run int, chain []*vm) (result, *vm, error) {
	r := result{Case: c.Name, Run: run, Load1: strings.Fields(benchhost.LoadAvg())[0]}
	name := fmt.Sprintf("%s-%d", c.Name, run)
	side := 0
	if len(o.hosts) == 2 {
		side = 1 - src.side
	}
	dst, err := startVM(ctx, o.on(side), filepath.Join(o.dir, c.Name, strconv.Itoa(run)), name, true)
	if err == nil {
		dst.side = side
	}
	if err != nil {
		r.Status, r.Error = "failed", err.Error()
		return r, nil, err
	}
	track(dst)
	ok := false
	defer func() {
		if !ok {
			dst.kill()
		}
	}()
	fail := func(err error) (result, *vm, error) {
		r.Status, r.Error = "failed", err.Error()
		return r, nil, err
	}

	caps := []capability{{"events", true}, {"postcopy-ram", c.Postcopy}}
	if err := dst.exec(ctx, "migrate-set-capabilities", map[string]any{"capabilities": caps}, nil); err != nil {
		return fail(err)
	}
	var uri string
	if len(o.hosts) == 2 {
		// The target's namespace is the benchmark's own: a port of its own per run is free.
		uri = fmt.Sprintf("tcp:%s:%d", o.hosts[side].ip, 47000+run)
	} else {
		port, err := freePort()
		if err != nil {
			return fail(err)
		}
		uri = fmt.Sprintf("tcp:127.0.0.1:%d", port)
	}
	if o.tlsPSK {
		for v, creds := range map[*vm]string{dst: "migtls-s", src: "migtls-c"} {
			if err := v.exec(ctx, "migrate-set-parameters", map[string]any{"tls-creds": creds}, nil); err != nil {
				return fail(err)
			}
		}
	}
	if err := dst.exec(ctx, "migrate-incoming", map[string]any{"uri": uri}, nil); err != nil {
		return fail(err)
	}
	caps = append(caps, capability{"auto-converge", c.AutoConverge})
	if err := src.exec(ctx, "migrate-set-capabilities", map[string]any{"capabilities": caps}, nil); err != nil {
		return fail(err)
	}
	params := map[string]any{"downtime-limit": o.downtimeMS, "max-bandwidth": c.Bandwidth, "max-postcopy-bandwidth": c.Bandwidth}
	if err := src.exec(ctx, "migrate-set-parameters", params, nil); err != nil {
		return fail(err)
	}

	et := &eventTimes{resumed: make(chan struct{}), srcDone: make(chan struct{})}
	cancelSrc := src.qmp.OnEvent(func(ev qmp.Event) {
		et.mu.Lock()
		defer et.mu.Unlock()
		switch ev.Name {
		case qmp.EventStop:
			et.srcStop = ev.Time
		case qmp.EventMigration:
			var d struct{ Status string }
			if ev.DecodeData(&d) == nil && d.Status == "completed" && et.srcDoneRx.IsZero() {
				et.srcDoneRx = time.Now()
				close(et.srcDone)
			}
		}
	})
	defer cancelSrc()
	cancelDst := dst.qmp.OnEvent(func(ev qmp.Event) {
		if ev.Name != qmp.EventResume {
			return
		}
		et.mu.Lock()
		defer et.mu.Unlock()
		if et.dstResRx.IsZero() {
			et.dstResume, et.dstResRx = ev.Time, time.Now()
			close(et.resumed)
		}
	})
	defer cancelDst()

	t0 := time.Now()
	if err := src.exec(ctx, "migrate", map[string]any{"uri": uri}, nil); err != nil {
		return fail(err)
	}
	deadline := t0.Add(o.timeout)
	var info migrateInfo
	for {
		info = migrateInfo{}
		if err := src.exec(ctx, "query-migrate", nil, &info); err != nil {
			return fail(err)
		}
		if info.RAM != nil {
			r.Iterations = info.RAM.DirtySyncCount
			r.Transferred = info.RAM.Transferred
			r.DirtyPagesRate = max(r.DirtyPagesRate, info.RAM.DirtyPagesRate)
		}
		r.MaxThrottle = max(r.MaxThrottle, info.CPUThrottle)
		if info.Status == "completed" || info.Status == "failed" || info.Status == "cancelled" {
			break
		}
		if c.Postcopy && !r.Postcopy && info.Status == "active" && info.RAM != nil &&
			info.RAM.DirtySyncCount > int64(o.postcopyAfter) {
			if err := src.exec(ctx, "migrate-start-postcopy", nil, nil); err != nil {
				return fail(err)
			}
			r.Postcopy = true
		}
		if time.Now().After(deadline) && info.Status == "active" {
			logf("%s: not converged after %s (iterations %d, remaining %d MiB): migrate_cancel", name, o.timeout,
				r.Iterations, func() int64 {
					if info.RAM != nil {
						return info.RAM.Remaining >> 20
					}
					return 0
				}())
			r.TotalMS, r.WallMS = info.TotalTime, ms(time.Since(t0))
			if err := src.exec(ctx, "migrate_cancel", nil, nil); err != nil {
				return fail(err)
			}
			deadline = time.Now().Add(time.Minute)
		}
		select {
		case <-ctx.Done():
			return fail(ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	switch info.Status {
	case "cancelled":
		r.Status = "not-converged"
		var st qmp.StatusInfo
		if err := src.exec(ctx, "query-status", nil, &st); err != nil || st.Status != "running" {
			return fail(fmt.Errorf("source not running after migrate_cancel: %+v %v", st, err))
		}
		return r, nil, nil
	case "failed":
		return fail(fmt.Errorf("migration failed: %s", info.ErrorDesc))
	}

	// Completed. QEMU 7.2 reports the status before it has filled in
	// total-time and downtime: ask again until they are there.
	for i := 0; i < 100 && info.TotalTime == 0; i++ {
		time.Sleep(10 * time.Millisecond)
		if err := src.exec(ctx, "query-migrate", nil, &info); err != nil {
			return fail(err)
		}
	}
	if info.TotalTime == 0 {
		return fail(errors.New("query-migrate reports completed but no total-time"))
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	select {
	case <-et.resumed:
	case <-wctx.Done():
		return fail(errors.New("target never resumed"))
	}
	select {
	case <-et.srcDone:
	case <-wctx.Done():
		return fail(errors.New("no MIGRATION completed event on the source"))
	}
	r.Status = "completed"
	r.TotalMS, r.DowntimeMS, r.SetupMS = info.TotalTime, info.Downtime, info.SetupTime
	if info.RAM != nil {
		r.Transferred, r.Iterations, r.MBps, r.PostcopyReqs = info.RAM.Transferred, info.RAM.DirtySyncCount, info.RAM.Mbps, info.RAM.PostcopyRequests
	}
	et.mu.Lock()
	r.WallMS = ms(et.srcDoneRx.Sub(t0))
	r.TargetRunningMS = ms(et.dstResRx.Sub(t0))
	if !et.srcStop.IsZero() {
		r.PauseMS = ms(et.dstResume.Sub(et.srcStop))
	}
	et.mu.Unlock()

	// The guest goes on: a tick above the last one printed on the source.
	r.LastSourceTick, _ = ticks(src.con.snapshot(), 0)
	tctx, tcancel := context.WithTimeout(ctx, 60*time.Second)
	defer tcancel()
	if _, _, err := dst.con.waitFor(tctx, 0, func(l string) bool {
		m, _ := ticks([]string{l}, 0)
		return m > r.LastSourceTick
	}); err != nil {
		var st qmp.StatusInfo
		serr := dst.exec(ctx, "query-status", nil, &st)
		lines := dst.con.snapshot()
		lines = lines[max(0, len(lines)-5):]
		return fail(fmt.Errorf("no tick above %d on the target within 60 s: %w (target status %+v %v; its last serial lines %q)",
			r.LastSourceTick, err, st, serr, lines))
	}
	_, r.FirstTargetTick = ticks(dst.con.snapshot(), 0)
	if c.Dirty {
		// The dirtying loop goes on, and the data it copies from is intact.
		last := maxNumbered(src.con.snapshot(), dirtyRE)
		if _, _, err := dst.con.waitFor(tctx, 0, func(l string) bool {
			return maxNumbered([]string{l}, dirtyRE) > last
		}); err != nil {
			return fail(fmt.Errorf("the dirtying loop stopped: no DIRTY above %d on the target: %w", last, err))
		}
		sum, err := guestSum(tctx, dst)
		if err != nil {
			return fail(err)
		}
		if sum != c.sum {
			return fail(fmt.Errorf("guest memory corrupted: md5 of /tmp/src is %s on the target, was %s", sum, c.sum))
		}
		r.DirtyChecked = true
	}
	for _, v := range append(chain, dst) {
		r.Booted += countBooted(v.con.snapshot())
	}
	if r.Booted != 1 {
		return fail(fmt.Errorf("%d boot markers in the chain's consoles, want 1", r.Booted))
	}
	ok = true
	return r, dst, nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
