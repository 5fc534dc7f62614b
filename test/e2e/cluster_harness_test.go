package e2e

// The multi-host cluster harness: several hosts simulated on one machine.
//
// Layout of a cluster named N (the shared one is "rkh"):
//
//	namespace N-ul   the underlay: bridge N-br with 10.231.0.1-3/24; etcd member e1..e3 listens
//	                 on 10.231.0.I:2379 (clients, TLS with client certificates from a test CA)
//	                 and 10.231.0.I:2380 (peers, plain http)
//	namespace N-h1   host h1: eth0 10.231.0.11/24 (a veth whose other end N-h1v is on the
//	                 bridge), lo up; runs `rakhsh serve --store etcd+https://<e1,e2,e3>
//	                 --listen 10.231.0.11:8443 --stream-listen 10.231.0.11:8444 --node-name h1`
//	                 (with its in-process agent: node h1)
//	namespace N-h2.. host hI: eth0 10.231.0.(10+I)/24; runs `rakhsh agent --server
//	                 https://10.231.0.11:8443 --ca-file <h1's ca.crt> --join-token-file <file>
//	                 --node-name hI --stream-listen 10.231.0.(10+I):8444`; the agent exchanges
//	                 the join token for its own node credential at first start
//
// With ClusterOptions.ServeOn (e.g. {"h1", "h2"}) those hosts run serve instead, each with
// --listen and --stream-listen on its own address, all with one cluster CA and admin token
// (Dir/pki: --ca-cert, --ca-key, --admin-token-file; Cluster.CAFile is that CA), and every
// agent gets --server with every serve's URL (Cluster.ServerURLs, h1's first).
//
// Files live under /tmp/N-cluster: one data dir per host (h1/, h2/, ...), etcd/ (member data,
// PKI), logs/ (one file per process: h1.log, e2.log, ...) and shared/ (Cluster.Shared), a
// directory every host sees at the same path, standing in for NFS. Every process runs through
// `nsenter --net=/run/netns/NS` (not `ip netns exec`, which remounts /sys and hides cgroups),
// is started and stopped by its PID, and dies with the test binary (parent-death signal).
// VMs get host networking by default (bridges, nftables and dnsmasq inside each host's
// namespace, no upstream DNS); ClusterOptions.VMNetworking "user" avoids all of that.
//
// Use:
//
//	c := sharedCluster(t)      // started once per `go test` process, on first use
//	h2 := c.Host("h2")
//	c.Serve(t)                 // a *Serve view of h1's serve (unix socket, admin) for the
//	                           // helpers that take one: MustCLI, Client, vmWait, vmWaitSerial...
//	h2.CLI(t, "", "get", "vm") // the CLI inside h2's namespace, over TCP+TLS to the API
//	h2.Client(t)               // an admin client dialling from inside h2's namespace
//	h2.NodeClient(t)           // the same with h2's node credential (agents only)
//	h2.Kill9(t); h2.Restart(t) // crash / restart the host's rakhsh process (QEMUs stay)
//	h2.Pause(t); h2.Resume(t)  // SIGSTOP / SIGCONT it
//	h2.LinkDown(t); h2.LinkUp(t) // ip link set eth0 down|up inside its namespace
//	h2.Exec(t, "ip", "addr")   // run a command inside its namespace
//	h2.Logs(t)                 // its rakhsh process's log
//	c.Etcd[0].Kill9(t); c.Etcd[0].Restart(t); c.Etcd[0].Healthy(); c.Etcd[0].HasLeader()
//	c.WaitEtcdHealthy(t)
//	c.Shared, c.HostNames(), c.GuestImage(t) (a ClusterVirtualImage of the test guest ISO),
//	c.ServeDir(t, h1, dir)     // an HTTP file server on h1's loopback, for imports
//
// The shared cluster is torn down by TestMain after the last test. A test that breaks it must
// put it back (restart what it killed, SIGCONT what it stopped, bring links up); as a safety
// net sharedCluster heals what it finds broken before handing the cluster out, so one failed
// test does not fail the next. A test that needs different flags, or wants to destroy the
// cluster, starts its own with newCluster(t, ClusterOptions{Name: "rkb", ...}): its own
// namespaces and underlay (the same addresses, in other namespaces), torn down at the test's
// end. When a test using a cluster fails, the tails of the cluster's logs are added to its
// output.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/agent"
	"github.com/rakhsh/rakhsh/internal/network"
	"github.com/rakhsh/rakhsh/internal/store/etcd/etcdtest"
	"github.com/rakhsh/rakhsh/internal/testutil"
)

// Addresses and ports of a cluster (each cluster has its own underlay namespace, so two
// clusters may use the same ones).
const (
	clusterNet         = "10.231.0."
	clusterAPIPort     = 8443
	clusterStreamPort  = 8444
	clusterEtcdClient  = 2379
	clusterEtcdPeer    = 2380
	clusterStopTimeout = 15 * time.Second
)

// ClusterOptions shape a cluster; the zero value is the shared cluster's.
type ClusterOptions struct {
	// Name prefixes the namespaces, links and directory; default "rkh". At most 5 characters.
	Name string
	// Hosts is the number of hosts, default 3: h1 runs serve, the others agents.
	Hosts int
	// VMNetworking is serve's and the agents' --vm-networking: "host" (default) or "user".
	VMNetworking string
	// ServeArgs and AgentArgs are added to every serve and agent command line.
	ServeArgs, AgentArgs []string
	// ServeOn names the hosts that run `rakhsh serve` (with their in-process agent) instead of
	// `rakhsh agent`; default {"h1"}. It must start with h1. With more than one, every serve
	// gets one cluster CA (--ca-cert, --ca-key: Cluster.CAFile) and one admin token
	// (--admin-token-file), listens on its host's address, and the agents are given every
	// serve's URL (--server a,b).
	ServeOn []string
}

// Cluster is a running multi-host cluster on this machine.
type Cluster struct {
	Name     string
	Dir      string // /tmp/NAME-cluster
	Shared   string // Dir/shared: the same path on every host
	Underlay string // the underlay namespace
	Bridge   string // the underlay bridge (in Underlay)
	Etcd     []*EtcdMember
	Hosts    []*ClusterHost
	// EtcdCerts are the etcd PKI: CA, server certificate (10.231.0.1-3) and the client
	// certificate serve uses.
	EtcdCerts etcdtest.Certs
	// APIAddr is host:port of h1's API; CAFile the CA its TLS certificate chains to;
	// AdminToken the admin bearer token.
	APIAddr    string
	CAFile     string
	AdminToken string

	opts           ClusterOptions
	adminTokenFile string // with several serves: the admin token they share
	joinFile       string
	fileSrv        *http.Server
	fileURL        string
	guestMu        sync.Mutex
	guestDone      bool
}

// ClusterHost is one simulated host: a namespace with eth0 on the underlay and one rakhsh
// process (serve or agent) with its own data dir.
type ClusterHost struct {
	Name    string // h1, h2, ...: also its Node's name
	NS      string // its network namespace
	IP      string // eth0's address
	DataDir string
	IsServe bool // runs `rakhsh serve` (else `rakhsh agent`)
	c       *Cluster
	proc    *clusterProc
}

// EtcdMember is one etcd server of the cluster's three, inside the underlay namespace.
type EtcdMember struct {
	Name     string // e1..e3
	IP       string // 10.231.0.1..3
	Endpoint string // https://IP:2379
	DataDir  string
	c        *Cluster
	proc     *clusterProc
}

// clusterProc is a process run inside a namespace: started, signalled and waited for by PID.
type clusterProc struct {
	name    string
	argv    []string
	env     []string
	logPath string

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	started time.Time
	stopped bool // SIGSTOPped by Pause
}

var (
	clustersMu sync.Mutex
	clusters   []*Cluster // every cluster not yet torn down, for TestMain

	sharedOnce sync.Once
	sharedC    *Cluster
	sharedErr  error
)

// TestMain runs the tests and then tears down the clusters they started.
func TestMain(m *testing.M) {
	flag.Parse()
	raiseParallel()
	code := m.Run()
	clustersMu.Lock()
	left := clusters
	clusters = nil
	clustersMu.Unlock()
	for _, c := range left {
		if err := c.teardown(); err != nil {
			fmt.Fprintf(os.Stderr, "tearing down cluster %s: %v\n", c.Name, err)
			if code == 0 {
				code = 1
			}
		}
	}
	os.Exit(code)
}

// raiseParallel lets every top-level test that asked to run in parallel start, unless
// -parallel was given: the lanes' slots (sideBySide, clusterLane) decide what runs, and a test
// waiting for its lane's slot must not hold one of go test's, or the other lane would wait.
func raiseParallel() {
	given := false
	flag.Visit(func(f *flag.Flag) { given = given || f.Name == "test.parallel" })
	if !given {
		_ = flag.Set("test.parallel", "64")
	}
}

// sharedCluster returns the cluster the tests share, starting it on first use, after
// healing anything an earlier test left broken.
func sharedCluster(t *testing.T) *Cluster {
	t.Helper()
	clusterNeeds(t)
	sharedOnce.Do(func() {
		start := time.Now()
		sharedC, sharedErr = startCluster(rakhshBin(t), ClusterOptions{})
		if sharedErr == nil {
			t.Logf("the shared cluster started in %s", time.Since(start).Round(100*time.Millisecond))
		}
	})
	if sharedErr != nil {
		t.Fatalf("starting the shared test cluster: %v", sharedErr)
	}
	sharedC.Heal(t)
	t.Cleanup(func() { sharedC.logOnFailure(t) })
	return sharedC
}

// newCluster starts a cluster of the test's own, torn down when the test ends.
func newCluster(t *testing.T, opts ClusterOptions) *Cluster {
	t.Helper()
	clusterNeeds(t)
	if opts.Name == "" || opts.Name == "rkh" {
		t.Fatal("newCluster needs a name other than the shared cluster's rkh")
	}
	c, err := startCluster(rakhshBin(t), opts)
	if err != nil {
		t.Fatalf("starting cluster %s: %v", opts.Name, err)
	}
	t.Cleanup(func() {
		c.logOnFailure(t)
		clustersMu.Lock()
		for i, x := range clusters {
			if x == c {
				clusters = append(clusters[:i], clusters[i+1:]...)
				break
			}
		}
		clustersMu.Unlock()
		if err := c.teardown(); err != nil {
			t.Errorf("tearing down cluster %s: %v", c.Name, err)
		}
	})
	return c
}

func clusterNeeds(t *testing.T) {
	t.Helper()
	needNetTools(t)
	if etcdtest.Binary() == "" {
		skipOrFail(t, "etcd binary not found: apt-get install etcd-server")
	}
}

// startCluster builds the namespaces, starts etcd, serve and the agents, and waits until
// every node is Ready. On failure everything made so far is removed.
func startCluster(bin string, opts ClusterOptions) (_ *Cluster, err error) {
	if opts.Name == "" {
		opts.Name = "rkh"
	}
	if len(opts.Name) > 5 {
		return nil, fmt.Errorf("cluster name %q: at most 5 characters (interface names are short)", opts.Name)
	}
	if opts.Hosts == 0 {
		opts.Hosts = 3
	}
	if opts.Hosts < 1 || opts.Hosts > 9 {
		return nil, fmt.Errorf("cluster %s: %d hosts: want 1 to 9", opts.Name, opts.Hosts)
	}
	if opts.VMNetworking == "" {
		opts.VMNetworking = "host"
	}
	if len(opts.ServeOn) == 0 {
		opts.ServeOn = []string{"h1"}
	}
	if opts.ServeOn[0] != "h1" {
		return nil, fmt.Errorf("cluster %s: ServeOn %v: it must start with h1", opts.Name, opts.ServeOn)
	}
	n := opts.Name
	c := &Cluster{Name: n, Dir: "/tmp/" + n + "-cluster", Underlay: n + "-ul", Bridge: n + "-br", opts: opts}
	c.Shared = filepath.Join(c.Dir, "shared")
	c.APIAddr = fmt.Sprintf("%s11:%d", clusterNet, clusterAPIPort)
	for i := 1; i <= 3; i++ {
		ip := clusterNet + strconv.Itoa(i)
		c.Etcd = append(c.Etcd, &EtcdMember{Name: fmt.Sprintf("e%d", i), IP: ip, c: c,
			Endpoint: fmt.Sprintf("https://%s:%d", ip, clusterEtcdClient), DataDir: filepath.Join(c.Dir, "etcd", fmt.Sprintf("e%d", i))})
	}
	for i := 1; i <= opts.Hosts; i++ {
		name := fmt.Sprintf("h%d", i)
		c.Hosts = append(c.Hosts, &ClusterHost{Name: name, NS: n + "-" + name, IP: fmt.Sprintf("%s%d", clusterNet, 10+i),
			DataDir: filepath.Join(c.Dir, name), IsServe: slices.Contains(opts.ServeOn, name), c: c})
	}
	c.removeLeftovers()
	clustersMu.Lock()
	clusters = append(clusters, c)
	clustersMu.Unlock()
	defer func() {
		if err != nil {
			err = fmt.Errorf("%w\n%s", err, c.logTails(30))
			clustersMu.Lock()
			clusters = clusters[:len(clusters)-1]
			clustersMu.Unlock()
			if terr := c.teardown(); terr != nil {
				err = fmt.Errorf("%w (and tearing down: %v)", err, terr)
			}
		}
	}()
	for _, d := range []string{c.Shared, filepath.Join(c.Dir, "logs"), filepath.Join(c.Dir, "etcd")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	if err := c.buildNetwork(); err != nil {
		return nil, err
	}
	if err := c.startEtcd(); err != nil {
		return nil, err
	}
	if err := c.startHosts(bin); err != nil {
		return nil, err
	}
	return c, nil
}

// sh runs a command and returns its error with its output.
func sh(args ...string) error {
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func (c *Cluster) namespaces() []string {
	ns := []string{}
	for _, h := range c.Hosts {
		ns = append(ns, h.NS)
	}
	return append(ns, c.Underlay)
}

// removeLeftovers removes what a run of the test binary that died before its teardown left:
// its namespaces, and the QEMU and dnsmasq processes recorded in its data dirs (found by
// their pid files and checked by command line). rakhsh and etcd died with it.
func (c *Cluster) removeLeftovers() {
	if _, err := os.Stat(c.Dir); err == nil {
		c.killHostChildren()
	}
	for _, ns := range c.namespaces() {
		if _, err := os.Stat("/run/netns/" + ns); err == nil {
			_ = exec.Command("ip", "netns", "del", ns).Run()
		}
	}
	_ = os.RemoveAll(c.Dir)
}

// killHostChildren kills (by pid) the QEMUs, dnsmasqs and fence guards the hosts' processes
// left.
func (c *Cluster) killHostChildren() {
	for _, h := range c.Hosts {
		// The fence guard outlives the agent by design (found by its pid file, checked by
		// its command line).
		killFenceGuard(h.DataDir)
		for _, pid := range testutil.QEMUPIDs(h.DataDir) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			for i := 0; i < 100 && syscall.Kill(pid, 0) == nil; i++ {
				time.Sleep(50 * time.Millisecond)
			}
		}
		entries, _ := os.ReadDir(filepath.Join(h.DataDir, "run", "networks"))
		for _, e := range entries {
			if pid := network.DnsmasqPID(h.DataDir, e.Name()); pid > 0 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
}

// killFenceGuard kills the fence guard of the data dir dir, if one runs (docs/ha.md), and
// waits until it is gone.
func killFenceGuard(dir string) {
	pid := agent.GuardPID(dir)
	if pid == 0 {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for i := 0; i < 100 && agent.GuardPID(dir) == pid; i++ {
		time.Sleep(50 * time.Millisecond)
	}
}

func (c *Cluster) buildNetwork() error {
	steps := [][]string{
		{"ip", "netns", "add", c.Underlay},
		{"ip", "-n", c.Underlay, "link", "set", "lo", "up"},
		// A fixed MAC: a bridge without one takes the lowest of its ports', so a port added
		// later (another test's host) could change the MAC of the etcd members' addresses
		// under their peers' neighbour caches.
		{"ip", "-n", c.Underlay, "link", "add", c.Bridge, "address", "02:00:0a:e7:00:01", "type", "bridge"},
	}
	for _, e := range c.Etcd {
		steps = append(steps, []string{"ip", "-n", c.Underlay, "addr", "add", e.IP + "/24", "dev", c.Bridge})
	}
	steps = append(steps, []string{"ip", "-n", c.Underlay, "link", "set", c.Bridge, "up"})
	for _, h := range c.Hosts {
		port := h.NS + "v"
		steps = append(steps,
			[]string{"ip", "netns", "add", h.NS},
			[]string{"ip", "-n", h.NS, "link", "set", "lo", "up"},
			[]string{"ip", "-n", c.Underlay, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", h.NS},
			[]string{"ip", "-n", c.Underlay, "link", "set", port, "master", c.Bridge},
			[]string{"ip", "-n", c.Underlay, "link", "set", port, "up"},
			[]string{"ip", "-n", h.NS, "addr", "add", h.IP + "/24", "dev", "eth0"},
			[]string{"ip", "-n", h.NS, "link", "set", "eth0", "up"},
		)
	}
	for _, s := range steps {
		if err := sh(s...); err != nil {
			return err
		}
	}
	return nil
}

// --- processes ---

func (p *clusterProc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return fmt.Errorf("%s: already running (pid %d)", p.name, p.cmd.Process.Pid)
	}
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close() // the child has its own descriptor
	fmt.Fprintf(logf, "=== %s: %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(p.argv, " "))
	cmd := exec.Command(p.argv[0], p.argv[1:]...)
	cmd.Env = p.env
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group (a terminal's ^C goes to the test only), and SIGKILL when the
	// test binary dies before its teardown. nsenter execs the command, so the pid is the
	// command's own.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", p.name, err)
	}
	p.cmd, p.done, p.started, p.stopped = cmd, make(chan struct{}), time.Now(), false
	done := p.done
	go func() { _ = cmd.Wait(); close(done) }()
	return nil
}

// running says whether the process was started and has not exited.
func (p *clusterProc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// exited reports a process that was started and has exited on its own.
func (p *clusterProc) exited() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done == nil {
		ch := make(chan struct{})
		close(ch)
		return ch
	}
	return p.done
}

// PID is the process id, 0 when not running.
func (p *clusterProc) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

func (p *clusterProc) signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return fmt.Errorf("%s is not running", p.name)
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("%s (pid %d): %v: %w", p.name, p.cmd.Process.Pid, sig, err)
	}
	switch sig {
	case syscall.SIGSTOP:
		p.stopped = true
	case syscall.SIGCONT:
		p.stopped = false
	}
	return nil
}

// stop ends the process: SIGKILL at once when kill is set, else SIGTERM and SIGKILL after
// clusterStopTimeout. It reports a process that had to be killed after SIGTERM.
func (p *clusterProc) stop(kill bool) error {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return nil
	}
	var err error
	_ = cmd.Process.Signal(syscall.SIGCONT)
	if kill {
		_ = cmd.Process.Kill()
		<-done
	} else {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(clusterStopTimeout):
			err = fmt.Errorf("%s (pid %d) did not stop within %s of SIGTERM: killed", p.name, cmd.Process.Pid, clusterStopTimeout)
			_ = cmd.Process.Kill()
			<-done
		}
	}
	p.mu.Lock()
	p.cmd, p.stopped = nil, false
	p.mu.Unlock()
	return err
}

func (p *clusterProc) tail(n int) string { return testutil.TailFile(p.logPath, n) }

func nsenter(ns string, argv ...string) []string {
	return append([]string{"nsenter", "--net=/run/netns/" + ns}, argv...)
}

// --- etcd ---

func (c *Cluster) startEtcd() error {
	ips := make([]net.IP, len(c.Etcd))
	var initial []string
	for i, e := range c.Etcd {
		ips[i] = net.ParseIP(e.IP)
		initial = append(initial, fmt.Sprintf("%s=http://%s:%d", e.Name, e.IP, clusterEtcdPeer))
	}
	certs, err := etcdtest.GenerateCerts(filepath.Join(c.Dir, "etcd", "pki"), ips...)
	if err != nil {
		return fmt.Errorf("etcd certificates: %w", err)
	}
	c.EtcdCerts = certs
	bin := etcdtest.Binary()
	env := append(os.Environ(), "ETCD_UNSUPPORTED_ARCH="+runtime.GOARCH)
	for _, e := range c.Etcd {
		peer := fmt.Sprintf("http://%s:%d", e.IP, clusterEtcdPeer)
		e.proc = &clusterProc{name: "etcd " + e.Name, env: env, logPath: filepath.Join(c.Dir, "logs", e.Name+".log"),
			argv: nsenter(c.Underlay, bin,
				"--name", e.Name,
				"--data-dir", e.DataDir,
				"--listen-client-urls", e.Endpoint,
				"--advertise-client-urls", e.Endpoint,
				"--listen-peer-urls", peer,
				"--initial-advertise-peer-urls", peer,
				"--initial-cluster", strings.Join(initial, ","),
				"--initial-cluster-state", "new",
				"--initial-cluster-token", c.Name,
				"--cert-file", certs.ServerCert, "--key-file", certs.ServerKey,
				"--client-cert-auth", "--trusted-ca-file", certs.CA,
				// A shared 2-core machine: slower heartbeats than etcd's defaults, so that a
				// busy moment does not cost the leader.
				"--heartbeat-interval", "200", "--election-timeout", "2000",
				"--logger", "zap", "--log-level", "warn")}
		if err := e.proc.start(); err != nil {
			return err
		}
	}
	return c.waitEtcdHealthy(60 * time.Second)
}

// etcdHealthy asks one member's /health (true only while the cluster has a leader and
// quorum).
func (c *Cluster) etcdHealthy(e *EtcdMember) error {
	tc, err := c.EtcdCerts.ClientTLS()
	if err != nil {
		return err
	}
	tr := &http.Transport{TLSClientConfig: tc, DialContext: nsDialer(c.Underlay)}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 3 * time.Second}
	resp, err := hc.Get(e.Endpoint + "/health")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte(`"health":"true"`)) {
		return fmt.Errorf("%s /health: %s %s", e.Name, resp.Status, bytes.TrimSpace(body))
	}
	return nil
}

func (c *Cluster) waitEtcdHealthy(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for _, e := range c.Etcd {
		for {
			select {
			case <-e.proc.exited():
				return fmt.Errorf("etcd %s exited:\n%s", e.Name, e.proc.tail(20))
			default:
			}
			err := c.etcdHealthy(e)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("etcd not healthy within %s: %w", timeout, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	return nil
}

// WaitEtcdHealthy waits until every member reports itself healthy.
func (c *Cluster) WaitEtcdHealthy(t *testing.T) {
	t.Helper()
	if err := c.waitEtcdHealthy(60 * time.Second); err != nil {
		t.Fatal(err)
	}
}

// EtcdEndpoints are the members' client URLs.
func (c *Cluster) EtcdEndpoints() []string {
	var eps []string
	for _, e := range c.Etcd {
		eps = append(eps, e.Endpoint)
	}
	return eps
}

// Kill9 kills the member with SIGKILL.
func (e *EtcdMember) Kill9(t *testing.T) {
	t.Helper()
	if err := e.proc.stop(true); err != nil {
		t.Fatal(err)
	}
}

// Restart starts a stopped member again on its data dir (it rejoins the cluster) and waits
// until its client port answers; it is healthy only once a quorum is back.
func (e *EtcdMember) Restart(t *testing.T) {
	t.Helper()
	if err := e.restart(); err != nil {
		t.Fatal(err)
	}
}

func (e *EtcdMember) restart() error {
	if err := e.proc.start(); err != nil {
		return err
	}
	addr := fmt.Sprintf("%s:%d", e.IP, clusterEtcdClient)
	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := nsDial(e.c.Underlay, "tcp", addr, time.Second)
		if err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-e.proc.exited():
			return fmt.Errorf("etcd %s exited at restart:\n%s", e.Name, e.proc.tail(20))
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("etcd %s: no client port within 30s: %w", e.Name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Healthy asks the member's /health: nil only while it runs and the cluster has a leader
// (a quorum).
func (e *EtcdMember) Healthy() error { return e.c.etcdHealthy(e) }

// HasLeader asks the member (etcd's Status call, which needs no quorum) whether it knows a
// leader.
func (e *EtcdMember) HasLeader() (bool, error) {
	tc, err := e.c.EtcdCerts.ClientTLS()
	if err != nil {
		return false, err
	}
	dial := nsDialer(e.c.Underlay)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.Endpoint}, TLS: tc, DialTimeout: 3 * time.Second,
		Logger: zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return dial(ctx, "tcp", addr)
		})}})
	if err != nil {
		return false, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	st, err := cli.Status(ctx, e.Endpoint)
	if err != nil {
		return false, fmt.Errorf("etcd %s status: %w", e.Name, err)
	}
	return st.Leader != 0, nil
}

// Running says whether the member's process runs.
func (e *EtcdMember) Running() bool { return e.proc.running() }

// PID is the member's process id (0 when it does not run).
func (e *EtcdMember) PID() int { return e.proc.PID() }

// --- hosts ---

func (c *Cluster) startHosts(bin string) error {
	var eps []string
	for _, e := range c.Etcd {
		eps = append(eps, fmt.Sprintf("%s:%d", e.IP, clusterEtcdClient))
	}
	h1 := c.Hosts[0]
	var shared []string // the cluster CA and admin token of several serves
	if len(c.opts.ServeOn) > 1 {
		pki := filepath.Join(c.Dir, "pki")
		caCert, caKey, err := writeTestCA(pki)
		if err != nil {
			return err
		}
		tokFile := filepath.Join(pki, "admin.token")
		if err := os.WriteFile(tokFile, []byte(randomHex(32)+"\n"), 0o600); err != nil {
			return err
		}
		shared = []string{"--ca-cert", caCert, "--ca-key", caKey, "--admin-token-file", tokFile}
		c.CAFile, c.adminTokenFile = caCert, tokFile
	}
	for _, h := range c.Hosts {
		if !h.IsServe {
			continue
		}
		if err := os.MkdirAll(h.DataDir, 0o700); err != nil {
			return err
		}
		h.proc = &clusterProc{name: "serve " + h.Name, env: os.Environ(), logPath: filepath.Join(c.Dir, "logs", h.Name+".log"),
			argv: nsenter(h.NS, append(append([]string{bin, "serve", "--data-dir", h.DataDir, "--log-level", "debug",
				"--node-name", h.Name,
				"--store", "etcd+https://" + strings.Join(eps, ","),
				"--etcd-ca", c.EtcdCerts.CA, "--etcd-cert", c.EtcdCerts.ClientCert, "--etcd-key", c.EtcdCerts.ClientKey,
				"--listen", fmt.Sprintf("%s:%d", h.IP, clusterAPIPort),
				"--stream-listen", fmt.Sprintf("%s:%d", h.IP, clusterStreamPort),
				"--vm-networking", c.opts.VMNetworking, "--no-upstream-dns",
				// The harness's file servers (GuestImage, ServeDir) listen on the hosts' loopback.
				"--allow-import-from", "127.0.0.0/8"}, shared...), c.opts.ServeArgs...)...)}
		if err := h.proc.start(); err != nil {
			return err
		}
		// h1 is up (and so leads) before the others start.
		if err := h.waitServe(); err != nil {
			return err
		}
	}
	if c.CAFile == "" {
		c.CAFile = filepath.Join(h1.DataDir, "ca.crt")
	}
	tokFile := c.adminTokenFile
	if tokFile == "" {
		tokFile = filepath.Join(h1.DataDir, "admin.token")
	}
	tok, err := os.ReadFile(tokFile)
	if err != nil {
		return fmt.Errorf("serve's admin token: %w", err)
	}
	c.AdminToken = strings.TrimSpace(string(tok))
	if len(c.Hosts) > len(c.opts.ServeOn) {
		// One join token for all agents (each exchanges it once for its own credential).
		r, err := execCLI(bin, nil, []string{"RAKHSH_SERVER=unix://" + h1.socket(), "RAKHSH_TOKEN="},
			"", "node", "token", "create", "--ttl", "10m", "--uses", strconv.Itoa(len(c.Hosts)-len(c.opts.ServeOn)), "--description", "test cluster "+c.Name)
		if err != nil {
			return err
		}
		if r.Code != 0 {
			return fmt.Errorf("rakhsh node token create: exit %d: %s", r.Code, r.Stderr)
		}
		c.joinFile = filepath.Join(c.Dir, "join.token")
		if err := os.WriteFile(c.joinFile, []byte(r.Stdout), 0o600); err != nil {
			return err
		}
	}
	for _, h := range c.Hosts {
		if h.IsServe {
			continue
		}
		if err := os.MkdirAll(h.DataDir, 0o700); err != nil {
			return err
		}
		h.proc = &clusterProc{name: "agent " + h.Name, env: agentEnv(), logPath: filepath.Join(c.Dir, "logs", h.Name+".log"),
			argv: nsenter(h.NS, append([]string{bin, "agent", "--server", strings.Join(c.ServerURLs(), ","), "--ca-file", c.CAFile,
				"--join-token-file", c.joinFile, "--data-dir", h.DataDir, "--node-name", h.Name, "--log-level", "debug",
				"--heartbeat-interval", "1s", "--vm-networking", c.opts.VMNetworking, "--no-upstream-dns",
				"--stream-listen", fmt.Sprintf("%s:%d", h.IP, clusterStreamPort)}, c.opts.AgentArgs...)...)}
		if err := h.proc.start(); err != nil {
			return err
		}
	}
	for _, h := range c.Hosts {
		if err := h.waitNode(90 * time.Second); err != nil {
			return err
		}
	}
	return nil
}

func (h *ClusterHost) socket() string { return filepath.Join(h.DataDir, "rakhsh.sock") }

// ServerURLs are the https URLs of every serve's API, h1's first.
func (c *Cluster) ServerURLs() []string {
	var urls []string
	for _, h := range c.Hosts {
		if h.IsServe {
			urls = append(urls, fmt.Sprintf("https://%s:%d", h.IP, clusterAPIPort))
		}
	}
	return urls
}

// adminClient talks to the first running serve (h1's unless it is down) over its unix socket
// (reachable from any namespace).
func (c *Cluster) adminClient() *client.Client {
	sock := c.Hosts[0].socket()
	for _, h := range c.Hosts {
		if h.IsServe && h.proc != nil && h.proc.running() {
			sock = h.socket()
			break
		}
	}
	cl, err := client.New(client.Config{Server: "unix://" + sock})
	if err != nil {
		panic(err) // a unix address with a path does not fail
	}
	return cl
}

// waitServe waits until the serve process answers /readyz on its socket.
func (h *ClusterHost) waitServe() error {
	cl, err := client.New(client.Config{Server: "unix://" + h.socket()})
	if err != nil {
		return err
	}
	deadline := time.Now().Add(60 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-h.proc.exited():
			return fmt.Errorf("serve on %s exited:\n%s", h.Name, h.proc.tail(30))
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		var out []byte
		last = cl.Do(ctx, "GET", "/readyz", nil, "", nil, &out)
		cancel()
		if last == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("serve on %s not ready within 60s: %v", h.Name, last)
}

// waitNode waits until the host's Node is Ready with a heartbeat from the current process
// and (for an agent) publishes its stream endpoint.
func (h *ClusterHost) waitNode(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	since := h.proc.started // heartbeat times keep microseconds, from this machine's clock
	cl := h.c.adminClient()
	var n v1alpha1.Node
	var err error
	for {
		select {
		case <-h.proc.exited():
			return fmt.Errorf("%s exited:\n%s", h.proc.name, h.proc.tail(30))
		default:
		}
		n = v1alpha1.Node{}
		err = cl.Get(ctx, "nodes", "", h.Name, &n)
		if err == nil && n.Status.Phase == v1alpha1.NodePhaseReady && n.Status.LastHeartbeatTime != nil &&
			n.Status.LastHeartbeatTime.After(since) && n.Status.StreamEndpoint != nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %s not Ready (with a fresh heartbeat and a stream endpoint) within %s: %v, status %+v", h.Name, timeout, err, n.Status)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Host returns the named host (h1, h2, ...).
func (c *Cluster) Host(name string) *ClusterHost {
	for _, h := range c.Hosts {
		if h.Name == name {
			return h
		}
	}
	panic("no host " + name + " in cluster " + c.Name)
}

// HostNames are the hosts' names, which are also their Nodes' names.
func (c *Cluster) HostNames() []string {
	var names []string
	for _, h := range c.Hosts {
		names = append(names, h.Name)
	}
	return names
}

// Serve is a view of h1's serve for the helpers that take a *Serve (MustCLI, CLI, Client,
// vmWait, vmWaitSerial, waitGone, ...): admin over its unix socket, failing t. It cannot
// start or stop the process (use the host's methods).
func (c *Cluster) Serve(t *testing.T) *Serve {
	return &Serve{t: t, DataDir: c.Hosts[0].DataDir, Listen: c.APIAddr}
}

// ServeOf is the same view of the serve on host h (one of ClusterOptions.ServeOn).
func (c *Cluster) ServeOf(t *testing.T, h *ClusterHost) *Serve {
	if !h.IsServe {
		t.Fatalf("%s runs no serve", h.Name)
	}
	return &Serve{t: t, DataDir: h.DataDir, Listen: fmt.Sprintf("%s:%d", h.IP, clusterAPIPort)}
}

// APIServer is the https URL of the API server h uses: its own when it runs serve, else every
// serve's (h1's first), comma-separated, as its agent is given them.
func (h *ClusterHost) APIServer() string {
	if h.IsServe {
		return fmt.Sprintf("https://%s:%d", h.IP, clusterAPIPort)
	}
	return strings.Join(h.c.ServerURLs(), ",")
}

// CLI runs the rakhsh CLI inside the host's namespace against its API server over TCP and
// TLS, as the admin.
func (h *ClusterHost) CLI(t *testing.T, stdin string, args ...string) CLIResult {
	t.Helper()
	return runCLIWith(t, nsenter(h.NS), []string{"RAKHSH_SERVER=" + h.APIServer(), "RAKHSH_TOKEN=" + h.c.AdminToken,
		"RAKHSH_CA_FILE=" + h.c.CAFile}, stdin, args...)
}

// MustCLI is CLI failing the test on a non-zero exit.
func (h *ClusterHost) MustCLI(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	r := h.CLI(t, stdin, args...)
	if r.Code != 0 {
		t.Fatalf("on %s: rakhsh %s: exit %d\nstdout: %s\nstderr: %s", h.Name, strings.Join(args, " "), r.Code, r.Stdout, r.Stderr)
	}
	return r.Stdout
}

// Client is an admin API client whose connections are made inside the host's namespace.
func (h *ClusterHost) Client(t *testing.T) *client.Client {
	t.Helper()
	return h.clientWith(t, h.c.AdminToken)
}

// NodeClient is a client with the host's own node credential (from its agent's data dir),
// dialling from inside its namespace. h1's in-process agent has none.
func (h *ClusterHost) NodeClient(t *testing.T) *client.Client {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(h.DataDir, "node-credential.json"))
	if err != nil {
		t.Fatalf("node credential of %s: %v", h.Name, err)
	}
	var cred struct{ Node, Token string }
	if err := json.Unmarshal(data, &cred); err != nil || cred.Token == "" {
		t.Fatalf("node credential of %s: %v", h.Name, err)
	}
	return h.clientWith(t, cred.Token)
}

func (h *ClusterHost) clientWith(t *testing.T, token string) *client.Client {
	t.Helper()
	cl, err := client.New(client.Config{Server: h.APIServer(), Token: token, CAFile: h.c.CAFile, DialContext: nsDialer(h.NS)})
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// Exec runs a command inside the host's namespace and returns its combined output.
func (h *ClusterHost) Exec(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("nsenter", append([]string{"--net=/run/netns/" + h.NS}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("on %s: %s: %v: %s", h.Name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Logs returns the log of the host's rakhsh process (every start of it, in order).
func (h *ClusterHost) Logs(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(h.proc.logPath)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// PID is the process id of the host's rakhsh process (0 when it does not run).
func (h *ClusterHost) PID() int { return h.proc.PID() }

// Running says whether the host's rakhsh process runs (a paused one runs).
func (h *ClusterHost) Running() bool { return h.proc.running() }

// Kill9 kills the host's rakhsh process with SIGKILL, as a crash would. Its QEMUs keep
// running.
func (h *ClusterHost) Kill9(t *testing.T) {
	t.Helper()
	if err := h.proc.stop(true); err != nil {
		t.Fatal(err)
	}
}

// Stop ends the host's rakhsh process with SIGTERM.
func (h *ClusterHost) Stop(t *testing.T) {
	t.Helper()
	if err := h.proc.stop(false); err != nil {
		t.Error(err)
	}
}

// Restart starts the host's rakhsh process again (after Kill9 or Stop; a running one is
// stopped first) on the same data dir and flags, and waits until it is ready: serve answers
// /readyz, and the Node is Ready with a heartbeat of the new process.
func (h *ClusterHost) Restart(t *testing.T) {
	t.Helper()
	if err := h.restart(); err != nil {
		t.Fatal(err)
	}
}

func (h *ClusterHost) restart() error {
	if h.proc.running() {
		if err := h.proc.stop(false); err != nil {
			return err
		}
	}
	if err := h.proc.start(); err != nil {
		return err
	}
	if h.IsServe {
		if err := h.waitServe(); err != nil {
			return err
		}
	}
	return h.waitNode(90 * time.Second)
}

// RestartWithArgs restarts the host's rakhsh process with extra flags added to its command
// line, and restarts it with its own flags again when the test ends.
func (h *ClusterHost) RestartWithArgs(t *testing.T, extra ...string) {
	t.Helper()
	orig := slices.Clone(h.proc.argv)
	h.proc.argv = append(slices.Clone(orig), extra...)
	t.Cleanup(func() {
		h.proc.argv = orig
		if err := h.restart(); err != nil {
			t.Errorf("restarting %s with its own flags: %v", h.Name, err)
		}
	})
	h.Restart(t)
}

// Pause stops the host's rakhsh process with SIGSTOP (a hung host); Resume continues it.
func (h *ClusterHost) Pause(t *testing.T) {
	t.Helper()
	if err := h.proc.signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
}

// Resume sends SIGCONT to the host's rakhsh process.
func (h *ClusterHost) Resume(t *testing.T) {
	t.Helper()
	if err := h.proc.signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
}

// LinkDown takes the host's eth0 down inside its namespace: it is cut off from the
// underlay (etcd, the API server, the other hosts). LinkUp brings it back.
func (h *ClusterHost) LinkDown(t *testing.T) {
	t.Helper()
	if err := sh("ip", "-n", h.NS, "link", "set", "eth0", "down"); err != nil {
		t.Fatal(err)
	}
}

// LinkUp brings the host's eth0 up again.
func (h *ClusterHost) LinkUp(t *testing.T) {
	t.Helper()
	if err := sh("ip", "-n", h.NS, "link", "set", "eth0", "up"); err != nil {
		t.Fatal(err)
	}
}

// linkUp says whether eth0 has the UP flag (ip -o link: "2: eth0@if7: <BROADCAST,...,UP,LOWER_UP> ...").
func (h *ClusterHost) linkUp() bool {
	out, err := exec.Command("ip", "-n", h.NS, "-o", "link", "show", "eth0").Output()
	if err != nil {
		return false
	}
	_, rest, _ := strings.Cut(string(out), "<")
	flags, _, _ := strings.Cut(rest, ">")
	return contains(strings.Split(flags, ","), "UP")
}

// Heal puts back what a test left broken: links down, paused or dead processes, dead etcd
// members. It logs what it had to do.
func (c *Cluster) Heal(t *testing.T) {
	t.Helper()
	var did []string
	for _, h := range c.Hosts {
		if !h.linkUp() {
			did = append(did, h.Name+" eth0 up")
			h.LinkUp(t)
		}
	}
	restarted := false
	for _, e := range c.Etcd {
		if !e.proc.running() {
			did = append(did, "etcd "+e.Name+" restarted")
			e.Restart(t)
			restarted = true
		}
	}
	if restarted {
		c.WaitEtcdHealthy(t)
	}
	for _, h := range c.Hosts {
		h.proc.mu.Lock()
		stopped := h.proc.stopped
		h.proc.mu.Unlock()
		if stopped {
			did = append(did, h.Name+" resumed")
			h.Resume(t)
		}
		if !h.proc.running() {
			did = append(did, h.Name+" restarted")
			h.Restart(t)
		}
	}
	if len(did) > 0 {
		t.Logf("cluster %s was left broken; healed: %s", c.Name, strings.Join(did, ", "))
	}
}

// --- files and images ---

// GuestImage makes sure the ClusterVirtualImage "cluster-guest" (the test guest's ISO,
// imported by h1's serve from a file server on h1's loopback) exists and is Ready, and
// returns its name. Agents on other hosts fetch it over the API.
func (c *Cluster) GuestImage(t *testing.T) string {
	t.Helper()
	const name = "cluster-guest"
	c.guestMu.Lock()
	defer c.guestMu.Unlock()
	if c.guestDone {
		return name
	}
	dir := vmGuestDir(t)
	if c.fileSrv == nil {
		var ln net.Listener
		var err error
		err = withNetns(c.Hosts[0].NS, func() error {
			ln, err = net.Listen("tcp", "127.0.0.1:0")
			return err
		})
		if err != nil {
			t.Fatalf("file server in %s: %v", c.Hosts[0].NS, err)
		}
		c.fileSrv = &http.Server{Handler: http.FileServer(http.Dir(dir)), ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = c.fileSrv.Serve(ln) }()
		c.fileURL = "http://" + ln.Addr().String()
	}
	s := c.Serve(t)
	clusterImportCVI(s, name, c.fileURL)
	c.guestDone = true
	return name
}

// ServeDir serves the files of dir over HTTP on the loopback of host h's namespace until the
// test ends, and returns its base URL (http://127.0.0.1:PORT). h1's serve may import from it
// (it runs with --allow-import-from 127.0.0.0/8).
func (c *Cluster) ServeDir(t *testing.T, h *ClusterHost, dir string) string {
	t.Helper()
	ln := listenIn(t, h.NS, "127.0.0.1:0")
	srv := &http.Server{Handler: http.FileServer(http.Dir(dir)), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + ln.Addr().String()
}

// --- namespaces ---

// withNetns runs f on a thread switched into the named network namespace: sockets f opens
// belong there.
func withNetns(name string, f func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return err
	}
	defer orig.Close()
	h, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("network namespace %s: %w", name, err)
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		return fmt.Errorf("entering network namespace %s: %w", name, err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			panic("cannot return to the original network namespace: " + err.Error())
		}
	}()
	return f()
}

// nsDialer dials from inside the named network namespace.
func nsDialer(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var conn net.Conn
		err := withNetns(ns, func() error {
			d := net.Dialer{Timeout: 10 * time.Second}
			var err error
			conn, err = d.DialContext(ctx, network, addr)
			return err
		})
		return conn, err
	}
}

func nsDial(ns, network, addr string, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return nsDialer(ns)(ctx, network, addr)
}

// --- logs and teardown ---

func (c *Cluster) procs() []*clusterProc {
	var ps []*clusterProc
	for _, h := range c.Hosts {
		if h.proc != nil {
			ps = append(ps, h.proc)
		}
	}
	for _, e := range c.Etcd {
		if e.proc != nil {
			ps = append(ps, e.proc)
		}
	}
	return ps
}

// logTails returns the last n lines of every process's log.
func (c *Cluster) logTails(n int) string {
	var b strings.Builder
	for _, p := range c.procs() {
		fmt.Fprintf(&b, "--- %s (%s), last %d lines:\n%s\n", p.name, p.logPath, n, p.tail(n))
	}
	return b.String()
}

func (c *Cluster) logOnFailure(t *testing.T) {
	if t.Failed() {
		t.Logf("cluster %s logs:\n%s", c.Name, c.logTails(60))
	}
}

// teardown stops the agents, serve and etcd (by pid), kills the QEMUs and dnsmasqs the
// hosts left, deletes the namespaces and removes the directory. It does all of it even when
// a step fails, and returns the failures.
func (c *Cluster) teardown() error {
	var errl []error
	if c.fileSrv != nil {
		_ = c.fileSrv.Close()
	}
	for i := len(c.Hosts) - 1; i >= 0; i-- { // agents first, serve last
		if h := c.Hosts[i]; h.proc != nil {
			if err := h.proc.stop(false); err != nil {
				errl = append(errl, err)
			}
		}
	}
	c.killHostChildren()
	for _, e := range c.Etcd {
		if e.proc != nil {
			_ = e.proc.stop(true)
		}
	}
	for _, ns := range c.namespaces() {
		if _, err := os.Stat("/run/netns/" + ns); err == nil {
			if err := sh("ip", "netns", "del", ns); err != nil {
				errl = append(errl, err)
			}
		}
	}
	if os.Getenv("RAKHSH_KEEP_CLUSTER_DIR") == "" {
		if err := os.RemoveAll(c.Dir); err != nil {
			errl = append(errl, err)
		}
	}
	return errors.Join(errl...)
}

// writeTestCA makes the cluster CA several serves share (ca.crt, ca.key in dir), as an
// operator would with openssl.
func writeTestCA(dir string) (certFile, keyFile string, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "rakhsh test cluster CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(7 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return "", "", err
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return "", "", err
	}
	certFile, keyFile = filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

// randomHex is n random bytes in hex.
func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}
