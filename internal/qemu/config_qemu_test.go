package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/internal/qemu/accel"
	"github.com/rakhsh/rakhsh/internal/qemu/qmp"
	"github.com/rakhsh/rakhsh/internal/testutil"
)

// The real-QEMU test starts qemu-system-x86_64 with the arguments of every golden case (with
// real files in a temporary directory instead of the golden paths), checks over QMP that it
// came up paused ("prelaunch"), and quits it. This proves QEMU accepts every generated option
// set. Deviations from the golden arguments, each logged:
//   - KVM cases run under TCG when /dev/kvm is missing (vhost-net likewise), so -cpu host, the
//     Hyper-V flags and vhost=on are only exercised on hosts with KVM.
//   - Cases with tap NICs run QEMU in a fresh network namespace (unshare --net), where QEMU
//     creates the tap itself; they are skipped, with a message, without the privilege for that.

func needFile(t *testing.T, path, pkg string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		testutil.SkipOrFail(t, "%s missing: install %s to run this case", path, pkg)
	}
}

// child is a process started by a test; its cleanup kills it (by PID, only it) if still running.
type child = testutil.Child

func startChild(t *testing.T, name string, args ...string) *child {
	t.Helper()
	return testutil.StartChild(t, exec.Command(name, args...))
}

// waitFile waits for path to exist, failing early if c exits.
func waitFile(t *testing.T, c *child, path string, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	c.Retry(ctx, t, "creating "+path, func() error { _, err := os.Stat(path); return err })
}

// dialQMP connects to QEMU's QMP socket. The socket file appears at bind(), a moment before
// QEMU listens, so a refused connection is retried while QEMU runs.
func dialQMP(ctx context.Context, t *testing.T, p *child, path string) *qmp.Conn {
	t.Helper()
	waitFile(t, p, path, 30*time.Second)
	var conn *qmp.Conn
	p.Retry(ctx, t, "qmp.Dial", func() (err error) { conn, err = qmp.Dial(ctx, path); return err })
	t.Cleanup(func() { conn.Close() })
	return conn
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// materialize creates every file in needs: disk images and their backing chains, the NVRAM
// copy, and a swtpm listening on the TPM socket.
func materialize(t *testing.T, in Input, cfg Config) {
	t.Helper()
	img := testutil.NeedTool(t, "qemu-img", "qemu-utils")
	for _, d := range in.Disks {
		// Base first, each layer naming the next one down with an explicit format.
		layers := append([]BackingFile{{Path: d.Path, Format: d.Format}}, d.Backing...)
		for j := len(layers) - 1; j >= 0; j-- {
			args := []string{"create", "-q", "-f", layers[j].Format}
			if j+1 < len(layers) {
				args = append(args, "-F", layers[j+1].Format, "-b", layers[j+1].Path)
			}
			run(t, img, append(args, layers[j].Path, "1M")...)
		}
	}
	if in.NVRAMPath != "" {
		needFile(t, cfg.NVRAMTemplate, "ovmf")
		b, err := os.ReadFile(cfg.NVRAMTemplate)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(in.NVRAMPath, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if in.TPMSocket != "" {
		swtpm := testutil.NeedTool(t, "swtpm", "swtpm")
		// swtpm cannot escape ',' in its option values, so it listens in a directory of its
		// own and the socket path QEMU gets is a symlink to that socket.
		dir := testutil.ShortTempDir(t, "rqtpm")
		ctrl := filepath.Join(dir, "ctrl.sock")
		tp := startChild(t, swtpm, "socket", "--tpm2", "--tpmstate", "dir="+dir, "--ctrl", "type=unixio,path="+ctrl)
		waitFile(t, tp, ctrl, 10*time.Second)
		if err := os.Symlink(ctrl, in.TPMSocket); err != nil {
			t.Fatal(err)
		}
	}
}

// canUnshareNet reports whether QEMU can be run in a new network namespace with the right to
// create taps there.
func canUnshareNet() error {
	if os.Geteuid() != 0 {
		return errors.New("not root")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return err
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		return err
	}
	if out, err := exec.Command("unshare", "--net", "true").CombinedOutput(); err != nil {
		return fmt.Errorf("unshare --net: %v: %s", err, out)
	}
	return nil
}

func TestRealQEMU(t *testing.T) {
	if testing.Short() {
		t.Skip("starts QEMU; not in -short mode")
	}
	bin := testutil.NeedTool(t, "qemu-system-x86_64", "qemu-system-x86")
	testutil.NeedTool(t, "qemu-img", "qemu-utils")
	choice := accel.Prober{Binary: bin}.Choose(context.Background(), accel.ModeAuto)
	t.Logf("accelerator on this host: KVM=%t (%s: %s)", choice.KVM, choice.Reason, choice.Message)
	_, vhostErr := os.Stat("/dev/vhost-net")
	netnsErr := canUnshareNet()

	for _, c := range realCases() {
		t.Run(c.name, func(t *testing.T) {
			if c.fds && os.Geteuid() != 0 {
				t.Skip("running QEMU as another user with passed descriptors needs root")
			}
			// Short paths: unix socket paths are limited to 107 bytes.
			tmp := testutil.ShortTempDir(t, "rq")
			e := caseEnv{run: filepath.Join(tmp, "run"), data: filepath.Join(tmp, "data")}
			if c.weirdDirs {
				e = caseEnv{run: filepath.Join(tmp, "r,u=n"), data: filepath.Join(tmp, "d,a=ta")}
			}
			for _, d := range []string{e.run, e.data} {
				if err := os.MkdirAll(d, 0o700); err != nil {
					t.Fatal(err)
				}
			}
			in := c.input(e)
			in.PassFDs = c.fds
			in.Node.QEMUBinary = bin
			if in.Node.KVM && !choice.KVM {
				t.Logf("running this KVM case under TCG (-cpu host, Hyper-V flags and vhost are not exercised): %s", choice.Message)
				in.Node.KVM = false
			}
			if in.Node.KVM {
				in.Node.HypervRefused = choice.HypervRefused
			}
			if in.Node.VhostNet && vhostErr != nil {
				in.Node.VhostNet = false
			}
			for _, p := range []string{in.Node.OVMFCode, in.Node.OVMFSecureCode} {
				if in.VM.Spec.Bootloader != "" && in.VM.Spec.Bootloader != "BIOS" {
					needFile(t, p, "ovmf")
				}
			}
			cfg, err := Build(in)
			if err != nil {
				t.Fatalf("Build: %v", err)
			}
			checkInvariants(t, in, cfg)
			materialize(t, in, cfg)

			name, args := cfg.Binary, cfg.Args
			tap := false
			for _, n := range in.NICs {
				tap = tap || n.Tap != ""
			}
			if tap && c.fds {
				t.Skip("passed taps need a tap made beforehand: TestNetworkNAT (test/e2e) runs them")
			}
			if c.fds {
				// The data and run directories are root's (0700): QEMU, as nobody, reaches
				// only what it is handed.
				p := startUnprivileged(t, cfg)
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				conn := dialQMP(ctx, t, p, cfg.QMPSocket)
				if err := cfg.StartVNC(ctx, conn); err != nil {
					t.Fatalf("StartVNC: %v", err)
				}
				checkRunning(ctx, t, conn, p, in, cfg)
				checkUnprivileged(t, p, cfg)
				if err := conn.Quit(ctx); err != nil {
					t.Fatalf("quit: %v", err)
				}
				<-p.Exited
				if out := p.Out.String(); strings.Contains(out, "warning") {
					t.Errorf("QEMU warned:\n%s", out)
				}
				return
			}
			if tap {
				if netnsErr != nil {
					t.Skipf("tap NICs need a private network namespace where QEMU may create taps (run as root with unshare): %v", netnsErr)
				}
				// unshare execs QEMU, so the PID is QEMU's.
				name, args = "unshare", append([]string{"--net", "--", cfg.Binary}, args...)
			}
			p := startChild(t, name, args...)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			conn := dialQMP(ctx, t, p, cfg.QMPSocket)
			st, err := conn.QueryStatus(ctx)
			if err != nil {
				t.Fatalf("query-status: %v", err)
			}
			if st.Status != qmp.StatusPrelaunch || st.Running {
				t.Fatalf("status %+v, want prelaunch", st)
			}
			checkRunning(ctx, t, conn, p, in, cfg)
			if err := conn.Quit(ctx); err != nil {
				t.Fatalf("quit: %v", err)
			}
			select {
			case <-p.Exited:
				if p.Err != nil {
					t.Errorf("QEMU exited with %v; output:\n%s", p.Err, p.Out.String())
				}
			case <-time.After(15 * time.Second):
				t.Fatalf("QEMU did not exit after quit")
			}
			// A warning means an option QEMU does not fully honour: fail on it.
			if out := p.Out.String(); strings.Contains(out, "warning") {
				t.Errorf("QEMU warned:\n%s", out)
			}
		})
	}
}

// namesFile says whether a node's file name is path, or a json: name (QEMU reports one for a
// node whose backing was given explicitly) naming path.
func namesFile(file, path string) bool {
	return file == path || (strings.HasPrefix(file, "json:") && strings.Contains(file, `"`+path+`"`))
}

// checkRunning checks the files QEMU made, the command line it runs with and its block graph.
func checkRunning(ctx context.Context, t *testing.T, conn *qmp.Conn, p *child, in Input, cfg Config) {
	t.Helper()
	pid := p.Cmd.Process.Pid
	if !cfg.PassFDs {
		b, err := os.ReadFile(cfg.PIDFile)
		if err != nil {
			t.Fatalf("pidfile: %v", err)
		}
		if got := strings.TrimSpace(string(b)); got != strconv.Itoa(pid) {
			t.Fatalf("pidfile holds %q, want %d", got, pid)
		}
	}
	// With PassFDs, file nodes are the fd sets of the passed files.
	fileOf := func(path string) string {
		if !cfg.PassFDs {
			return path
		}
		for _, x := range cfg.Passed {
			if x.Kind == PassFile && x.Path == path {
				return FDSetPath(x.FD)
			}
		}
		return "(not passed) " + path
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		t.Fatal(err)
	}
	if !MatchesCmdline(cmdline, in.VM.UID) {
		t.Fatalf("MatchesCmdline false for /proc/%d/cmdline", pid)
	}
	for _, s := range []string{cfg.SerialSocket, cfg.VNCSocket, cfg.GuestAgentSocket} {
		if s == "" {
			continue
		}
		if fi, err := os.Stat(s); err != nil || fi.Mode()&os.ModeSocket == 0 {
			t.Fatalf("socket %s: %v", s, err)
		}
	}
	var uuid struct {
		UUID string `json:"UUID"`
	}
	if err := conn.Execute(ctx, "query-uuid", nil, &uuid); err != nil || uuid.UUID != in.VM.UID {
		t.Fatalf("query-uuid %q, %v; want %s", uuid.UUID, err, in.VM.UID)
	}
	var nodes []struct {
		NodeName    string `json:"node-name"`
		Drv         string `json:"drv"`
		File        string `json:"file"`
		RO          bool   `json:"ro"`
		BackingFile string `json:"backing_file"`
		Depth       int    `json:"backing_file_depth"`
	}
	// Not flat: only then does QEMU compute backing_file_depth.
	if err := conn.Execute(ctx, "query-named-block-nodes", nil, &nodes); err != nil {
		t.Fatalf("query-named-block-nodes: %v", err)
	}
	byName := map[string]int{}
	for i, n := range nodes {
		byName[n.NodeName] = i
	}
	// QEMU opened exactly the declared nodes: two per image layer, four for UEFI flash.
	want := 0
	for _, d := range in.Disks {
		want += 2 * (1 + len(d.Backing))
	}
	if in.NVRAMPath != "" {
		want += 4
	}
	if len(nodes) != want {
		t.Fatalf("QEMU has %d block nodes, want %d: %+v", len(nodes), want, nodes)
	}
	for i, d := range cfg.Disks {
		idx, ok := byName[d.Node]
		if !ok {
			t.Fatalf("node %s of disk %s not in QEMU", d.Node, d.ID)
		}
		n := nodes[idx]
		in := in.Disks[i]
		if n.Drv != in.Format || !namesFile(n.File, fileOf(in.Path)) || n.Depth != len(in.Backing) || n.RO != (in.ReadOnly || in.CDROM) {
			t.Fatalf("disk %s: QEMU node %+v does not match %+v", d.ID, n, in)
		}
		for j, l := range in.Backing {
			found := false
			for _, n := range nodes {
				if namesFile(n.File, fileOf(l.Path)) && n.Drv == l.Format && n.RO && n.Depth == len(in.Backing)-j-1 {
					found = true
				}
			}
			if !found {
				t.Fatalf("disk %s: backing layer %d (%s) not open as declared: %+v", d.ID, j+1, l.Path, nodes)
			}
		}
	}
	var cpus []qmp.CPUInfo
	if cpus, err = conn.QueryCPUsFast(ctx); err != nil || len(cpus) != in.VM.Spec.CPU.Cores {
		t.Fatalf("query-cpus-fast: %d vCPUs, %v; want %d", len(cpus), err, in.VM.Spec.CPU.Cores)
	}
}

// TestRealQEMUIgnoresHeaderBacking proves the "backing": null default: a qcow2 image whose
// header names a backing file (as a hostile upload would, to read a host file) is opened
// without it when the Disk lists no backing chain.
func TestRealQEMUIgnoresHeaderBacking(t *testing.T) {
	if testing.Short() {
		t.Skip("starts QEMU; not in -short mode")
	}
	bin := testutil.NeedTool(t, "qemu-system-x86_64", "qemu-system-x86")
	img := testutil.NeedTool(t, "qemu-img", "qemu-utils")
	tmp := testutil.ShortTempDir(t, "rq")
	secret := filepath.Join(tmp, "secret.raw")
	disk := filepath.Join(tmp, "evil.qcow2")
	run(t, img, "create", "-q", "-f", "raw", secret, "1M")
	run(t, img, "create", "-q", "-f", "qcow2", "-F", "raw", "-b", secret, disk, "1M")

	in := validInput()
	in.Node.QEMUBinary = bin
	in.RunDir = tmp
	in.Disks = []Disk{{ID: "evil", Path: disk, Format: FormatQCOW2, BootOrder: 1}}
	cfg, err := Build(in)
	if err != nil {
		t.Fatal(err)
	}
	p := startChild(t, cfg.Binary, cfg.Args...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn := dialQMP(ctx, t, p, cfg.QMPSocket)
	var nodes []struct {
		File  string `json:"file"`
		Depth int    `json:"backing_file_depth"`
	}
	if err := conn.Execute(ctx, "query-named-block-nodes", nil, &nodes); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.File == secret {
			t.Fatalf("QEMU opened the backing file named in the image header: %+v", nodes)
		}
		if n.Depth != 0 {
			t.Fatalf("node with a backing chain: %+v", nodes)
		}
	}
	if len(nodes) != 2 {
		t.Fatalf("want 2 nodes (file + qcow2), got %+v", nodes)
	}
	if err := conn.Quit(ctx); err != nil {
		t.Fatal(err)
	}
	<-p.Exited
}
