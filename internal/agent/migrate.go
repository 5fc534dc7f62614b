package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/nodestream"
	"github.com/rakhsh/rakhsh/internal/qemu"
	"github.com/rakhsh/rakhsh/internal/qemu/qmp"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// Live migration, as the two agents see it (docs/migration.md has the whole protocol).
//
// The VM's status.migrationState is the meeting point. The target's agent sees a VM whose
// migration names it as target (a second informer, status.migrationState.target.node), starts
// QEMU with the same devices and -incoming defer (the start steps, with disks on Local
// storage made anew and exported over NBD), opens its migration proxy on its underlay address
// (migproxy.go: TLS, the two nodes' published certificates) and writes TargetReady. The
// source's agent then mirrors the Local disks into those exports (blockdev-mirror,
// write-blocking once in sync), sets the policy's parameters and runs `migrate`, writing the
// progress about once a second; both go through the two agents' proxies. When QEMU's stream completes, the
// source is paused and the target waits, paused too: the target's agent takes the VM's
// binding (status.nodeName) and marks the migration Succeeded in one write that tests that
// the migration is still the one it prepared and still active. Only when that write is
// accepted does the target resume the guest; if it is refused (the migration was cancelled or
// failed meanwhile), the target's QEMU is killed and the source resumes. So the store decides
// which side runs the guest, and never both.

// migrationFields are the VM status fields the agents write for a migration.
var migrationFields = []string{"migrationState", "phase", "stats"}

// commitFields are the fields of the target's switch-over write.
var commitFields = []string{"migrationState", "nodeName", "phase", "stats"}

// migrationInFile lists, in a target's run directory, the files the target made for an
// incoming migration (Local disks), so that they are removed if the migration fails, even
// by a later agent process.
const migrationInFile = "migration-in.json"

// migrationIn is the content of migrationInFile.
type migrationIn struct {
	ID    string   `json:"id"`
	Files []string `json:"files"`
}

// errMigrationOver says the migration a write was for is no longer active, or is another one.
var errMigrationOver = errors.New("the migration is over or was replaced")

// migrationOf returns the VM's migration state if it is the attempt id and still active.
func migrationOf(v *v1alpha1.VirtualMachine, id string) (*v1alpha1.VirtualMachineMigrationState, error) {
	m := v.Status.MigrationState
	if !m.Active() || m.ID != id {
		return nil, errMigrationOver
	}
	mm := *m
	return &mm, nil
}

// patchMigration changes the VM's active migration id with change (and, for the source,
// may set the phase). It returns errMigrationOver when the migration ended meanwhile.
func (a *Agent) patchMigration(ctx context.Context, ns, name, uid, id string, change func(v *v1alpha1.VirtualMachine, m *v1alpha1.VirtualMachineMigrationState)) error {
	_, err := runtime.UpdateVMStatus(ctx, a.c, ns, name, uid, migrationFields, nil, func(v *v1alpha1.VirtualMachine) error {
		m, err := migrationOf(v, id)
		if err != nil {
			return err
		}
		change(v, m)
		v.Status.MigrationState = m
		return nil
	})
	return err
}

// failMigration marks the migration id Failed with reason and message (nothing when it is
// already over).
func (a *Agent) failMigration(ctx context.Context, vm *v1alpha1.VirtualMachine, id, reason, msg string) error {
	err := a.patchMigration(ctx, vm.Namespace, vm.Name, vm.UID, id, func(v *v1alpha1.VirtualMachine, m *v1alpha1.VirtualMachineMigrationState) {
		now := a.now()
		m.Phase, m.Result, m.Reason, m.Message, m.EndTimestamp = v1alpha1.MigrationPhaseFailed, v1alpha1.MigrationResultFailed, reason, msg, &now
		if v.Status.Phase == v1alpha1.VMPhaseMigrating && v.Status.NodeName == a.cfg.NodeName {
			v.SetPhase(v1alpha1.VMPhaseRunning, now)
		}
	})
	if errors.Is(err, errMigrationOver) || errors.Is(err, runtime.ErrVMGone) {
		return nil
	}
	if err == nil {
		a.log.Warn("live migration failed", "vm", vm.Namespace+"/"+vm.Name, "reason", reason, "message", msg)
		a.rec.Event(ctx, "VirtualMachine", vm, "Warning", "MigrationFailed", msg)
	}
	return err
}

// fdPasser is a monitor that passes descriptors to QEMU (getfd) and runs commands.
type fdPasser interface {
	qmpExecutor
	GetFD(ctx context.Context, name string, f *os.File) error
}

// migrationNBDSocket is, in a target's run directory, the socket of the target QEMU's NBD
// server (QEMU got it as a descriptor); the target's proxy connects to it.
const migrationNBDSocket = "migration-nbd.sock"

// nodeFingerprint is the certificate fingerprint node publishes (status.streamEndpoint),
// which the migration stream's TLS pins; a node that publishes none is an error.
func (a *Agent) nodeFingerprint(ctx context.Context, node string) (string, error) {
	var n v1alpha1.Node
	if err := a.c.Get(ctx, "nodes", "", node, &n); err != nil {
		return "", fmt.Errorf("node %s: %w", node, err)
	}
	if ep := n.Status.StreamEndpoint; ep != nil && ep.CertificateSHA256 != "" {
		return ep.CertificateSHA256, nil
	}
	return "", fmt.Errorf("node %s publishes no certificate (status.streamEndpoint.certificateSHA256: its agent runs without a stream service, or is older); the migration stream is only sent over TLS between the two agents", node)
}

// errNoCertificate says this agent has no certificate to authenticate migration streams.
func (a *Agent) errNoCertificate() error {
	return fmt.Errorf("the agent of node %s has no certificate for migration streams (its stream service, --stream-listen, is off); the migration stream is only sent over TLS between the two agents", a.cfg.NodeName)
}

// ---- the target ----

// migrateIn carries out the target's side for a VM whose active migration names this node.
func (a *Agent) migrateIn(ctx context.Context, vm *v1alpha1.VirtualMachine, l *look) (runtime.Result, error) {
	m := vm.Status.MigrationState
	switch l.obs.Process {
	case ProcessFound:
		return a.adopt(ctx, vm, l.pid), nil
	case ProcessExited:
		broke := false
		if p := l.in.migProxy(); p != nil {
			p.close()
			broke = p.streamBroke.Load()
		}
		a.forget(l.in)
		summary := qemuErrorSummary(a.runDir(vm.UID))
		removeRuntimeFiles(l.in.runDir)
		if broke {
			return runtime.Result{}, a.failMigration(ctx, vm, m.ID, v1alpha1.MigrationReasonStreamBroken,
				fmt.Sprintf("the migration stream from node %s broke off before it completed (the source node's agent died, or the connection was reset); the target QEMU on node %s ended%s",
					m.Source.Node, a.cfg.NodeName, summary))
		}
		return runtime.Result{}, a.failMigration(ctx, vm, m.ID, v1alpha1.MigrationReasonTargetFailed,
			fmt.Sprintf("the target QEMU on node %s ended during the migration%s", a.cfg.NodeName, summary))
	case ProcessRunning:
		a.watchIncoming(vm, l.in)
		return runtime.Result{}, nil
	}
	if m.Phase != v1alpha1.MigrationPhasePending {
		return runtime.Result{}, a.failMigration(ctx, vm, m.ID, v1alpha1.MigrationReasonTargetFailed,
			fmt.Sprintf("no target QEMU runs on node %s any more", a.cfg.NodeName))
	}
	return a.startIncoming(ctx, vm)
}

// startIncoming starts the target QEMU: the steps of a start, with Local disks made anew,
// QEMU waiting for the stream instead of running, and no phase written (the VM still runs on
// the source).
func (a *Agent) startIncoming(ctx context.Context, vm *v1alpha1.VirtualMachine) (runtime.Result, error) {
	m := vm.Status.MigrationState
	if !a.cfg.UnderlayAddress.IsValid() {
		return runtime.Result{}, a.failMigration(ctx, vm, m.ID, v1alpha1.MigrationReasonTargetFailed,
			fmt.Sprintf("node %s has no underlay address (agent --underlay-address) to receive the migration on", a.cfg.NodeName))
	}
	if a.facts.qemuErr != nil {
		return runtime.Result{}, a.failMigration(ctx, vm, m.ID, v1alpha1.MigrationReasonTargetFailed, a.facts.qemuErr.Error())
	}
	r := &startRun{vm: vm, key: runtime.KeyOf(vm), runDir: a.runDir(vm.UID), incoming: true}
	steps := []startStep{
		{stepRunDir, a.stepRunDir},
		{stepDisks, a.stepIncomingDisks},
		{stepProvisioning, a.stepProvisioning},
		{stepNICs, a.stepNICs},
		{stepConfig, a.stepConfig},
		{stepNVRAM, a.stepNVRAM},
		{stepRunFiles, a.stepRunFiles},
		{stepTPM, a.stepTPM},
		{stepLaunch, a.stepLaunch},
		{stepQMP, a.stepQMP},
		{stepHotplug, a.stepIncomingHotplug},
		{stepVNC, a.stepVNC},
		{stepCgroups, a.stepCgroups},
		{stepListen, a.stepListen},
	}
	for _, s := range steps {
		if err := s.run(ctx, r); err != nil {
			var sf *startFailure
			r.undo.run()
			a.removeIncomingFiles(r.runDir, m.ID)
			switch {
			case errors.As(err, &sf):
				msg := sf.msg
				if r.in != nil {
					msg += qemuErrorSummary(r.runDir)
				}
				return runtime.Result{}, a.failMigration(ctx, vm, m.ID, v1alpha1.MigrationReasonTargetFailed,
					fmt.Sprintf("preparing the target on node %s: %s", a.cfg.NodeName, msg))
			case errors.Is(err, errEndStart):
				return r.end, nil
			}
			return runtime.Result{}, err
		}
	}
	a.log.Info("migration target ready", "vm", string(r.key), "pid", r.m.PID(), "from", m.Source.Node)
	a.watchIncoming(vm, r.in)
	return runtime.Result{}, nil
}

// stepListen is the target's last step: QEMU exports the Local disks over NBD (on a listening
// socket it gets as a descriptor), the migration proxy listens on the underlay address for
// the source agent (TLS, the source node's certificate required), and TargetReady is written
// with the proxy's port. QEMU is told to take the stream (migrate-incoming) when the source
// connects.
func (a *Agent) stepListen(ctx context.Context, r *startRun) error {
	m := r.vm.Status.MigrationState
	mon, ok := r.mon.(fdPasser)
	if !ok {
		return failStart("the monitor cannot run migration commands")
	}
	if a.cfg.Certificate == nil {
		return failStart(a.errNoCertificate().Error())
	}
	sourceFP, err := a.nodeFingerprint(ctx, m.Source.Node)
	if err != nil {
		return failStart(err.Error())
	}
	tcfg, err := nodestream.PinnedClientServerTLSConfig(*a.cfg.Certificate, sourceFP)
	if err != nil {
		return failStart(fmt.Sprintf("node %s: %v", m.Source.Node, err))
	}
	addr := a.cfg.UnderlayAddress.String()
	if err := mon.Execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": migrationCaps(m.Policy)}, nil); err != nil {
		return failStart("migrate-set-capabilities: " + err.Error())
	}
	disks := append([]v1alpha1.MigrationDisk(nil), m.Disks...)
	routes := map[string]func(ctx context.Context) (net.Conn, error){}
	closeNBD, err := exportIncomingDisks(ctx, mon, r, disks, routes)
	if err != nil {
		return err
	}
	in := r.in
	log := a.log.With("vm", string(r.key), "migration", m.ID)
	hand := incomingStream(in)
	var hooks proxyHooks
	if plainStream(m.Policy) {
		// QEMU gets the TCP connection itself; the watch says when the source is gone.
		hooks.direct = map[string]func(context.Context, *os.File) error{alpnMigration: hand}
		hooks.watchEnded = func() { a.sourceGone(in, log) }
	} else {
		routes[alpnMigration] = pairedRoute(hand)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(addr, "0"))
	if err != nil {
		closeNBD()
		return failStart("the migration proxy cannot listen on the underlay address: " + err.Error())
	}
	p := serveMigrationProxyHooks(ln, tcfg, routes, plainStream(m.Policy), log, hooks)
	p.onClose = closeNBD
	in.mu.Lock()
	old := in.proxy
	in.proxy = p
	in.mu.Unlock()
	if old != nil {
		old.close()
	}
	go func() {
		select {
		case <-in.exited:
			p.close()
		case <-p.ctx.Done():
		}
	}()
	port := p.port()
	nbdPort := 0
	if len(disks) > 0 {
		nbdPort = port
	}
	err = a.patchMigration(ctx, r.vm.Namespace, r.vm.Name, r.vm.UID, m.ID, func(_ *v1alpha1.VirtualMachine, mm *v1alpha1.VirtualMachineMigrationState) {
		mm.Phase = v1alpha1.MigrationPhaseTargetReady
		mm.Target.Address, mm.Target.Port, mm.Target.NBDPort = addr, port, nbdPort
		mm.Disks = disks
	})
	if err != nil {
		p.close()
	}
	if errors.Is(err, errMigrationOver) || errors.Is(err, runtime.ErrVMGone) {
		return errEndStart // the undo stops this QEMU
	}
	return err
}

// exportIncomingDisks has the target QEMU export the Local disks being mirrored (disks, whose
// Export it fills in) over NBD on a unix socket it gets as a descriptor, and adds the route of
// the migration proxy to that socket. The returned func closes the socket.
func exportIncomingDisks(ctx context.Context, mon fdPasser, r *startRun, disks []v1alpha1.MigrationDisk, routes map[string]func(ctx context.Context) (net.Conn, error)) (func(), error) {
	if len(disks) == 0 {
		return func() {}, nil
	}
	nodes := map[string]string{}
	for _, d := range r.cfg.Disks {
		nodes[d.ID] = d.Node
	}
	path := filepath.Join(r.runDir, migrationNBDSocket)
	_ = os.Remove(path)
	nbdLn, err := net.Listen("unix", path)
	if err != nil {
		return nil, failStart("the disk export's socket: " + err.Error())
	}
	closeNBD := func() { nbdLn.Close() }
	fail := func(msg string) (func(), error) {
		closeNBD()
		return nil, failStart(msg)
	}
	f, err := nbdLn.(*net.UnixListener).File()
	if err == nil {
		err = mon.GetFD(ctx, "mig-nbd", f)
		f.Close()
	}
	if err != nil {
		return fail("passing the disk export's socket to QEMU: " + err.Error())
	}
	// nbd-server-start takes the legacy socket address form (with "data").
	err = mon.Execute(ctx, "nbd-server-start", map[string]any{"addr": map[string]any{"type": "fd",
		"data": map[string]any{"str": "mig-nbd"}}}, nil)
	if err != nil {
		return fail("nbd-server-start: " + err.Error())
	}
	for i := range disks {
		node := nodes["vd-"+disks[i].Name]
		if node == "" {
			node = r.hotNodes[disks[i].Name] // hot-plugged (migrate_hotplug.go)
		}
		if node == "" {
			return fail(fmt.Sprintf("disk %q is not among the target QEMU's disks", disks[i].Name))
		}
		disks[i].Export = "mig-" + disks[i].Name
		err := mon.Execute(ctx, "block-export-add", map[string]any{"type": "nbd", "id": disks[i].Export, "node-name": node,
			"name": disks[i].Export, "writable": true}, nil)
		if err != nil {
			return fail(fmt.Sprintf("exporting disk %q: %v", disks[i].Name, err))
		}
	}
	routes[alpnNBD] = func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}
	return closeNBD, nil
}

// incomingStream hands the target QEMU its end of the migration stream (migrate-incoming on
// a descriptor): the first one it is given; later ones are refused.
func incomingStream(in *instance) func(ctx context.Context, f *os.File) error {
	var streamTaken atomic.Bool
	return func(ctx context.Context, f *os.File) error {
		if !streamTaken.CompareAndSwap(false, true) {
			return errors.New("the migration stream is connected already")
		}
		mon, ok := in.monitor().(fdPasser)
		if !ok {
			return errors.New("the target QEMU's monitor is not connected")
		}
		if err := mon.GetFD(ctx, "mig-in", f); err != nil {
			return fmt.Errorf("passing the stream to QEMU: %w", err)
		}
		if err := mon.Execute(ctx, "migrate-incoming", map[string]any{"uri": "fd:mig-in"}, nil); err != nil {
			_ = mon.Execute(ctx, "closefd", map[string]any{"fdname": "mig-in"}, nil) // QEMU's copy
			return fmt.Errorf("migrate-incoming: %w", err)
		}
		return nil
	}
}

// pairedRoute is the migration proxy's route for an encrypted stream: QEMU gets one end of
// a socket pair (through hand), the proxy copies between the other end and the connection.
func pairedRoute(hand func(ctx context.Context, f *os.File) error) func(ctx context.Context) (net.Conn, error) {
	return func(ctx context.Context) (net.Conn, error) {
		qemuEnd, agentEnd, err := socketPair()
		if err != nil {
			return nil, err
		}
		defer qemuEnd.Close()
		if err := hand(ctx, qemuEnd); err != nil {
			agentEnd.Close()
			return nil, err
		}
		return agentEnd, nil
	}
}

// sourceGone ends the target QEMU of a plain migration whose watch connection the source
// ended (its agent died, or the link broke), so that the stream breaks and the source QEMU
// goes on running the guest; the reconcile then finds QEMU gone and fails the migration with
// StreamBroken. A target whose switch-over started is left to it (the store decides), and
// one whose stream just completed switches over; otherwise the QEMU's fate is decided as
// ended before it is killed, so that no switch-over can start afterwards. (A source QEMU
// that completed meanwhile is paused; its agent resumes it once the migration is failed.)
func (a *Agent) sourceGone(in *instance, log *slog.Logger) {
	if mon, ok := in.monitor().(qmpExecutor); ok {
		var st migrateInfo
		ctx, cancel := context.WithTimeout(a.runCtx, 5*time.Second)
		err := mon.Execute(ctx, "query-migrate", nil, &st)
		cancel()
		if err == nil && st.Status == "completed" {
			in.migrationStatus("completed") // as QEMU's event would: the switch-over
			return
		}
	}
	if !in.incomingFate.CompareAndSwap(0, fateEnded) {
		return // the switch-over started: the store decides
	}
	log.Warn("the source's watch connection ended before the stream completed: ending the target QEMU")
	if in.pid > 0 {
		_ = signalVM(in.pid, in.uid, syscall.SIGKILL)
	}
}

// migProxy is the target's migration proxy of in, if any.
func (in *instance) migProxy() *migrationProxy {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.proxy
}

// migrationCaps are the capabilities both QEMUs get.
func migrationCaps(p *v1alpha1.MigrationPolicySettings) []map[string]any {
	caps := []map[string]any{{"capability": "events", "state": true}}
	if p != nil && p.AutoConverge {
		caps = append(caps, map[string]any{"capability": "auto-converge", "state": true})
	}
	return caps
}

// stepIncomingDisks resolves the VM's block devices on the target: disks on Shared storage
// and images as for a start; disks on another node's Local storage (the migration's Disks)
// are made here anew, empty and of the same size, for the source to mirror into.
func (a *Agent) stepIncomingDisks(ctx context.Context, r *startRun) error {
	m := r.vm.Status.MigrationState
	mirrored := map[string]bool{}
	for _, d := range m.Disks {
		mirrored[d.Name] = true
	}
	disks, err := a.resolveDisksWith(ctx, r.vm, func(ctx context.Context, ns, name string, d *qemu.Disk) error {
		if !mirrored[name] {
			return a.resolveVirtualDisk(ctx, ns, name, d)
		}
		path, err := a.makeIncomingDisk(ctx, ns, name, d)
		if path != "" {
			// Listed at once, so that even a crash of this agent leaves a list to clean up.
			a.recordIncomingFile(r.runDir, m.ID, path)
		}
		return err
	})
	if err != nil {
		a.removeIncomingFiles(r.runDir, m.ID)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return failStart(err.Error())
	}
	r.disks = disks
	return nil
}

// makeIncomingDisk creates the target's empty copy of the Local disk name, returning its path.
func (a *Agent) makeIncomingDisk(ctx context.Context, ns, name string, d *qemu.Disk) (string, error) {
	var vd v1alpha1.VirtualDisk
	if err := a.c.Get(ctx, "virtualdisks", ns, name, &vd); err != nil {
		return "", fmt.Errorf("VirtualDisk %q: %w", name, err)
	}
	if err := storage.CheckUID(vd.UID); err != nil {
		return "", err
	}
	if vd.Status.NodeName == a.cfg.NodeName {
		return "", fmt.Errorf("VirtualDisk %q already is on node %s", name, a.cfg.NodeName)
	}
	size, err := v1alpha1.ParseQuantity(vd.Status.Capacity)
	if err != nil || size <= 0 {
		return "", fmt.Errorf("VirtualDisk %q: its capacity %q is not a size", name, vd.Status.Capacity)
	}
	var sc *v1alpha1.StorageClass
	if err := a.getClass(ctx, vd.Status.StorageClassName, &sc); err != nil {
		return "", err
	}
	path := storage.ClassDiskPath(a.cfg.DataDir, sc, vd.UID)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	_ = os.Remove(path) // a copy left by an earlier attempt
	if err := storage.CreateBlank(ctx, path, size); err != nil {
		return path, fmt.Errorf("creating the copy of VirtualDisk %q: %w", name, err)
	}
	d.ID, d.Path, d.Format, d.Serial = "vd-"+name, path, qemu.FormatQCOW2, serialOf(vd.UID)
	return path, nil
}

// removeIncomingFiles removes what the incoming migration id made, in runDir's list. A list
// of another migration is left alone (the switch-over removes the list, so that files an
// earlier migration made, in use since, are never taken for this one's).
func (a *Agent) removeIncomingFiles(runDir, id string) {
	var rec migrationIn
	b, err := os.ReadFile(filepath.Join(runDir, migrationInFile))
	if err != nil || json.Unmarshal(b, &rec) != nil || rec.ID != id {
		return
	}
	for _, f := range rec.Files {
		if filepath.IsAbs(f) {
			_ = os.Remove(f)
		}
	}
	_ = os.Remove(filepath.Join(runDir, migrationInFile))
}

func writeJSONFile(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

// The fates of a target QEMU (instance.incomingFate).
const (
	fateSwitchOver = 1 // its stream completed and the switch-over started
	fateEnded      = 2 // its source went away first: it is killed, never switched over
)

// incomingWatch is the target's watch of one incoming QEMU.
type incomingWatch struct {
	id   string
	once sync.Once
}

// watchIncoming makes sure the target reacts when the stream of vm's migration completes
// (QMP MIGRATION event, or a look at query-migrate for a QEMU adopted after a restart).
func (a *Agent) watchIncoming(vm *v1alpha1.VirtualMachine, in *instance) {
	m := vm.Status.MigrationState
	in.mu.Lock()
	if in.incoming != nil && in.incoming.id == m.ID {
		in.mu.Unlock()
		return
	}
	w := &incomingWatch{id: m.ID}
	in.incoming = w
	in.mu.Unlock()
	ns, name, uid, src := vm.Namespace, vm.Name, vm.UID, m.Source.Node
	commit := func() {
		w.once.Do(func() {
			if in.incomingFate.CompareAndSwap(0, fateSwitchOver) {
				go a.commitIncoming(ns, name, uid, src, w.id, in)
			}
		})
	}
	in.setMigrationHook(func(status string) {
		if status == "completed" {
			commit()
		}
	})
	// The stream may have completed before the hook was set (an adopted QEMU).
	go func() {
		mon, ok := in.monitor().(qmpExecutor)
		if !ok {
			return
		}
		var st struct {
			Status string `json:"status"`
		}
		ctx, cancel := context.WithTimeout(a.runCtx, 5*time.Second)
		defer cancel()
		if mon.Execute(ctx, "query-migrate", nil, &st) == nil && st.Status == "completed" {
			commit()
		}
	}()
}

// commitIncoming is the switch-over on the target: take the binding in one write that tests
// the migration is still this one and active, then resume the guest. If the write is refused,
// this QEMU is killed and the source keeps the VM.
func (a *Agent) commitIncoming(ns, name, uid, source, id string, in *instance) {
	completedAt := time.Now()
	ctx := a.runCtx
	key := runtime.NewKey(ns, name)
	// The guest is paused on both sides until this write: first one request built from the
	// migration as this agent's cache saw it, testing only what decides the switch-over (not
	// the source's progress figures); the read-and-write loop when that is refused.
	v, err := a.fastCommit(ctx, ns, name, uid, source, id)
	if err != nil {
		v, err = a.slowCommit(ctx, ns, name, uid, source, id)
	}
	mon, _ := in.monitor().(qmpExecutor)
	if err != nil || mon == nil {
		a.log.Warn("migration not taken over: stopping the target QEMU", "vm", string(key), "err", err)
		a.machine(in).Discard()
		a.queue.Add(key)
		return
	}
	// The copies made for this migration are the VM's disks now: no longer to be removed.
	_ = os.Remove(filepath.Join(in.runDir, migrationInFile))
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_ = mon.Execute(cctx, "nbd-server-stop", nil, nil) // none without Local disks
	if err := mon.Execute(cctx, "cont", nil, nil); err != nil {
		a.log.Error("resuming the migrated guest failed", "vm", string(key), "err", err)
	}
	resumedAt := time.Now()
	if p := in.migProxy(); p != nil {
		go p.close() // the stream has ended; the NBD server is stopped
	}
	switchover := resumedAt.Sub(completedAt)
	a.recordResume(ctx, ns, name, uid, id, resumedAt, switchover)
	// Peers re-learn where the guest's MAC is at once (gratuitous ARP / RARP from QEMU).
	_ = mon.Execute(cctx, "announce-self", map[string]any{"initial": 50, "max": 550, "rounds": 5, "step": 100}, nil)
	in.setMigrationHook(nil)
	a.log.Info("migration switched over: the guest runs here", "vm", string(key), "from", source, "switchover", switchover.Round(time.Millisecond))
	if v != nil {
		a.rec.Event(ctx, "VirtualMachine", v, "Normal", "Migrated", fmt.Sprintf("%s; the target took over and resumed the guest %d ms after the stream ended",
			v.Status.MigrationState.Message, switchover.Milliseconds()))
	}
	a.queue.Add(key)
}

// slowCommit is the switch-over write as a read-and-write loop, tried until it is done, the
// migration is over, the VM is gone or ctx ends: the guest stays paused on both sides until
// the store answers (or the controller fails the migration, which the next write sees).
func (a *Agent) slowCommit(ctx context.Context, ns, name, uid, source, id string) (*v1alpha1.VirtualMachine, error) {
	for attempt := 0; ; attempt++ {
		v, err := runtime.UpdateVMStatus(ctx, a.c, ns, name, uid, commitFields, nil, func(v *v1alpha1.VirtualMachine) error {
			m, err := migrationOf(v, id)
			if err != nil {
				return err
			}
			if m.Target.Node != a.cfg.NodeName || v.Status.NodeName != source {
				return errMigrationOver
			}
			now := a.now()
			m.Phase, m.Result, m.EndTimestamp = v1alpha1.MigrationPhaseSucceeded, v1alpha1.MigrationResultSucceeded, &now
			m.Reason, m.Message = "", fmt.Sprintf("migrated from node %s to node %s", source, a.cfg.NodeName)
			v.Status.MigrationState = m
			v.Status.NodeName = a.cfg.NodeName
			v.SetPhase(v1alpha1.VMPhaseRunning, now)
			return nil
		})
		if err == nil || errors.Is(err, errMigrationOver) || errors.Is(err, runtime.ErrVMGone) || ctx.Err() != nil {
			return v, err
		}
		a.log.Warn("switch-over write failed; retrying", "vm", ns+"/"+name, "attempt", attempt+1, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// recordResume writes the target's resume time and the switch-over time into the migration
// state: next to the source's pause time (whichever comes first keeps the other's), they are
// the guest's pause as it saw it.
func (a *Agent) recordResume(ctx context.Context, ns, name, uid, id string, resumedAt time.Time, switchover time.Duration) {
	_, err := runtime.UpdateVMStatus(ctx, a.c, ns, name, uid, []string{"migrationState"}, nil, func(v *v1alpha1.VirtualMachine) error {
		cur := v.Status.MigrationState
		if cur == nil || cur.ID != id || v.Status.NodeName != a.cfg.NodeName {
			return runtime.ErrNoChange
		}
		mm := *cur
		p := v1alpha1.MigrationProgress{Percent: 100}
		if cur.Progress != nil {
			p = *cur.Progress
		}
		p.ResumedAtMs, p.SwitchoverMs = resumedAt.UnixMilli(), switchover.Milliseconds()
		mm.Progress = &p
		v.Status.MigrationState = &mm
		return nil
	})
	if err != nil && !errors.Is(err, runtime.ErrVMGone) {
		a.log.Info("recording the resume time of a migration", "vm", ns+"/"+name, "err", err)
	}
}

// fastCommit is the switch-over write in one request: JSON patch tests of the uid, the
// source's binding and the migration's id, target and phase as the cache saw them, then the
// new binding, phase and outcome.
func (a *Agent) fastCommit(ctx context.Context, ns, name, uid, source, id string) (*v1alpha1.VirtualMachine, error) {
	cached, ok := a.migIn.Get(runtime.NewKey(ns, name))
	if !ok || cached.UID != uid || cached.Status.MigrationState == nil || cached.Status.MigrationState.ID != id {
		return nil, errMigrationOver
	}
	phase := cached.Status.MigrationState.Phase
	if phase != v1alpha1.MigrationPhaseTargetReady && phase != v1alpha1.MigrationPhaseTransferring {
		return nil, errMigrationOver
	}
	now := a.now()
	ops := []map[string]any{
		{"op": "test", "path": "/metadata/uid", "value": uid},
		{"op": "test", "path": "/status/nodeName", "value": source},
		{"op": "test", "path": "/status/migrationState/id", "value": id},
		{"op": "test", "path": "/status/migrationState/target/node", "value": a.cfg.NodeName},
		{"op": "test", "path": "/status/migrationState/phase", "value": phase},
		{"op": "replace", "path": "/status/nodeName", "value": a.cfg.NodeName},
		{"op": "replace", "path": "/status/migrationState/phase", "value": v1alpha1.MigrationPhaseSucceeded},
		{"op": "add", "path": "/status/migrationState/result", "value": v1alpha1.MigrationResultSucceeded},
		{"op": "add", "path": "/status/migrationState/endTimestamp", "value": now},
		{"op": "add", "path": "/status/migrationState/message", "value": fmt.Sprintf("migrated from node %s to node %s", source, a.cfg.NodeName)},
		{"op": "add", "path": "/status/phase", "value": v1alpha1.VMPhaseRunning},
	}
	// The phase history gets its Running entry in the same request (bounded as SetPhase
	// bounds it). Should the stored history differ from the cached one so that the operations
	// do not apply, the request is refused as a whole and the read-and-write path does it.
	if st := cached.Status.Stats; st != nil && len(st.PhasesTransitions) > 0 {
		if len(st.PhasesTransitions) >= v1alpha1.MaxPhaseTransitions {
			ops = append(ops, map[string]any{"op": "remove", "path": "/status/stats/phasesTransitions/0"})
		}
		ops = append(ops, map[string]any{"op": "add", "path": "/status/stats/phasesTransitions/-",
			"value": v1alpha1.VirtualMachinePhaseTransition{Phase: v1alpha1.VMPhaseRunning, Timestamp: now}})
	}
	body, err := json.Marshal(ops)
	if err != nil {
		return nil, err
	}
	var out v1alpha1.VirtualMachine
	if err := a.c.JSONPatchStatus(ctx, "virtualmachines", ns, name, body, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ---- the source ----

// migrateOut makes sure the source's side of vm's migration is under way.
func (a *Agent) migrateOut(ctx context.Context, vm *v1alpha1.VirtualMachine, l *look) (runtime.Result, error) {
	m := vm.Status.MigrationState
	in := l.in
	in.mu.Lock()
	running := in.outgoing == m.ID
	if !running {
		in.outgoing = m.ID
	}
	in.mu.Unlock()
	if running {
		return runtime.Result{}, nil
	}
	resume := m.Phase == v1alpha1.MigrationPhaseTransferring
	go a.runOutgoing(runtime.DeepCopy(vm), in, resume)
	return runtime.Result{}, nil
}

// migrateInfo is what query-migrate answers.
type migrateInfo struct {
	Status    string `json:"status"`
	TotalTime int64  `json:"total-time"`
	Downtime  int64  `json:"downtime"`
	ErrorDesc string `json:"error-desc"`
	RAM       struct {
		Transferred    int64 `json:"transferred"`
		Remaining      int64 `json:"remaining"`
		Total          int64 `json:"total"`
		DirtyPagesRate int64 `json:"dirty-pages-rate"`
		DirtySyncCount int64 `json:"dirty-sync-count"`
	} `json:"ram"`
}

// migrationActive says QEMU's migration status is one of a stream under way.
func migrationActive(s string) bool {
	switch s {
	case "setup", "active", "pre-switchover", "device", "wait-unplug", "postcopy-active", "postcopy-paused", "postcopy-recover", "cancelling":
		return true
	}
	return false
}

// runOutgoing drives the source's side: mirrors, migrate, progress, end. Any failure leaves
// the guest running here and marks the migration Failed.
func (a *Agent) runOutgoing(vm *v1alpha1.VirtualMachine, in *instance, resume bool) {
	ctx := a.runCtx
	m := vm.Status.MigrationState
	key := runtime.KeyOf(vm)
	log := a.log.With("vm", string(key), "migration", m.ID)
	defer func() {
		in.mu.Lock()
		if in.outgoing == m.ID {
			in.outgoing = ""
		}
		in.mu.Unlock()
		a.queue.Add(key)
	}()
	mon, ok := in.monitor().(qmpExecutor)
	if !ok {
		return // not connected: the next reconcile tries again
	}
	fail := func(reason, msg string) {
		a.cleanupOutgoing(ctx, mon, m)
		if err := a.failMigration(ctx, vm, m.ID, reason, msg); err != nil {
			log.Warn("recording the failed migration", "err", err)
		}
	}
	if resume {
		a.endResumedOutgoing(ctx, vm, mon, m, log)
		return
	}
	if !a.beginTransfer(ctx, vm, m, log) {
		return
	}
	fdmon, ok := mon.(fdPasser)
	if !ok {
		fail(v1alpha1.MigrationReasonTransferFailed, "the monitor cannot pass descriptors to QEMU")
		return
	}
	dialer, err := a.migrationDialer(ctx, m)
	if err != nil {
		fail(v1alpha1.MigrationReasonTransferFailed, err.Error())
		return
	}
	completed := false
	defer func() {
		// A completed stream may still be on its way through the pipes: they end by
		// themselves once both QEMUs closed their ends.
		if completed {
			dialer.pipes.wait(30 * time.Second)
		}
		dialer.close()
	}()
	lim := outgoingLimits{deadline: transferDeadline(m.Policy)}
	if dialer.plain {
		// The stream will not pass through the agents: the watch ends it if either dies.
		if lim.lost, err = dialer.watch(ctx); err != nil {
			fail(v1alpha1.MigrationReasonTransferFailed, err.Error())
			return
		}
	}
	if err := a.startMirrors(ctx, vm, fdmon, dialer, m, lim.deadline, log); err != nil {
		fail(v1alpha1.MigrationReasonTransferFailed, err.Error())
		return
	}
	plan := planDowntime(m.Policy, in.accel)
	if plan.paused = pausedTransfer(in.accel, a.nodeFacts().QEMUVersion, vm); plan.paused {
		// Resumed by the next reconcile if the migration fails (decide.go).
		if err := mon.Execute(ctx, "stop", nil, nil); err != nil {
			fail(v1alpha1.MigrationReasonTransferFailed, "pausing the guest for the transfer: "+err.Error())
			return
		}
		log.Info("the guest is paused for the whole transfer: it has memory plugged through virtio-mem, which QEMU before 9.0 under TCG cannot track while it runs")
	}
	if err := startStream(ctx, fdmon, dialer, m.Policy, plan); err != nil {
		fail(v1alpha1.MigrationReasonTransferFailed, err.Error())
		return
	}
	log.Info("migration stream started", "to", dialer.addr)
	completed = a.followOutgoing(ctx, vm, mon, m, lim, plan, fail, log)
}

// transferDeadline is when a transfer that starts now times out (zero: never).
func transferDeadline(p *v1alpha1.MigrationPolicySettings) time.Time {
	if p == nil || p.TimeoutSeconds <= 0 {
		return time.Time{}
	}
	return time.Now().Add(time.Duration(p.TimeoutSeconds) * time.Second)
}

// beginTransfer records that the migration m of vm transfers (phase Transferring, the VM
// Migrating); false when the migration is over or the VM gone meanwhile, or the write failed.
func (a *Agent) beginTransfer(ctx context.Context, vm *v1alpha1.VirtualMachine, m *v1alpha1.VirtualMachineMigrationState, log *slog.Logger) bool {
	err := a.patchMigration(ctx, vm.Namespace, vm.Name, vm.UID, m.ID, func(v *v1alpha1.VirtualMachine, mm *v1alpha1.VirtualMachineMigrationState) {
		mm.Phase = v1alpha1.MigrationPhaseTransferring
		mm.Progress = &v1alpha1.MigrationProgress{}
		v.SetPhase(v1alpha1.VMPhaseMigrating, a.now())
	})
	if err != nil {
		if !errors.Is(err, errMigrationOver) && !errors.Is(err, runtime.ErrVMGone) {
			log.Warn("starting the transfer", "err", err)
		}
		return false
	}
	a.rec.Event(ctx, "VirtualMachine", vm, "Normal", "Migrating", fmt.Sprintf("live migration from node %s to node %s started", m.Source.Node, m.Target.Node))
	return true
}

// endResumedOutgoing handles a transfer an earlier agent process started, whose watch is
// lost: a stream that completed waits for the target's switch-over; any other is ended and
// the migration failed.
func (a *Agent) endResumedOutgoing(ctx context.Context, vm *v1alpha1.VirtualMachine, mon qmpExecutor, m *v1alpha1.VirtualMachineMigrationState, log interface{ Warn(string, ...any) }) {
	var st migrateInfo
	if err := mon.Execute(ctx, "query-migrate", nil, &st); err == nil && st.Status == "completed" {
		return
	}
	// The failure is recorded before the stream is ended, so that it is the store, not
	// the target noticing the broken stream, that says why.
	msg := fmt.Sprintf("the agent of the source node %s restarted during the transfer; the VM goes on running there", a.cfg.NodeName)
	if err := a.failMigration(ctx, vm, m.ID, v1alpha1.MigrationReasonSourceRestarted, msg); err != nil {
		log.Warn("recording the failed migration", "err", err)
	}
	if migrationActive(st.Status) {
		_ = mon.Execute(ctx, "migrate_cancel", nil, nil)
		a.waitMigrationEnd(ctx, mon, 30*time.Second)
	}
	a.cleanupOutgoing(ctx, mon, m)
}

// startStream sets the migration's capabilities and parameters on the source QEMU and starts
// its stream to the target through the proxies.
func startStream(ctx context.Context, mon fdPasser, dialer *migrationDialer, p *v1alpha1.MigrationPolicySettings, plan downtimePlan) error {
	if err := mon.Execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": migrationCaps(p)}, nil); err != nil {
		return fmt.Errorf("migrate-set-capabilities: %w", err)
	}
	// The first downtime limit (downtimePlan says whether it may grow later).
	params := map[string]any{"downtime-limit": plan.limitAfter(0)}
	if p != nil {
		if p.BandwidthMiBps > 0 {
			params["max-bandwidth"] = p.BandwidthMiBps << 20
		} else {
			params["max-bandwidth"] = int64(1) << 40 // no cap (QEMU's default is 128 MiB/s)
		}
	}
	if err := mon.Execute(ctx, "migrate-set-parameters", params, nil); err != nil {
		return fmt.Errorf("migrate-set-parameters: %w", err)
	}
	dial := dialer.dial
	if dialer.plain {
		dial = dialer.dialDirect // QEMU gets the TCP connection itself
	}
	stream, err := dial(ctx, alpnMigration)
	if err != nil {
		return err
	}
	err = mon.GetFD(ctx, "mig-out", stream)
	stream.Close()
	if err != nil {
		return fmt.Errorf("passing the stream to QEMU: %w", err)
	}
	if err := mon.Execute(ctx, "migrate", map[string]any{"uri": "fd:mig-out"}, nil); err != nil {
		_ = mon.Execute(ctx, "closefd", map[string]any{"fdname": "mig-out"}, nil) // QEMU's copy
		return fmt.Errorf("migrate: %w", err)
	}
	return nil
}

// plainStream says whether a migration's data goes unencrypted after the agents' TLS
// handshake (the cluster setting serve --migration-encryption=false).
func plainStream(p *v1alpha1.MigrationPolicySettings) bool {
	return p != nil && p.Unencrypted
}

// migrationDialer checks that both nodes have certificates and returns the dialer to the
// target's migration proxy.
func (a *Agent) migrationDialer(ctx context.Context, m *v1alpha1.VirtualMachineMigrationState) (*migrationDialer, error) {
	if a.cfg.Certificate == nil {
		return nil, a.errNoCertificate()
	}
	if m.Target.Address == "" || m.Target.Port <= 0 {
		return nil, fmt.Errorf("node %s published no migration address", m.Target.Node)
	}
	fp, err := a.nodeFingerprint(ctx, m.Target.Node)
	if err != nil {
		return nil, err
	}
	d, err := newMigrationDialer(net.JoinHostPort(m.Target.Address, strconv.Itoa(m.Target.Port)), *a.cfg.Certificate, fp, plainStream(m.Policy))
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", m.Target.Node, err)
	}
	return d, nil
}

// outgoingLimits are what ends a transfer besides QEMU: its deadline (zero: none) and, for a
// plain stream, the watch connection's end (nil: none).
type outgoingLimits struct {
	deadline time.Time
	lost     <-chan struct{}
}

// stallLimit is how long a transfer may go without any byte moving before it is ended.
const stallLimit = 20 * time.Second

// followOutgoing polls query-migrate until the stream ends, writing progress about once a
// second; it cancels the stream on a timeout, a stall, or when the migration was failed
// (cancelled) in the store. It says whether QEMU's stream completed.
func (a *Agent) followOutgoing(ctx context.Context, vm *v1alpha1.VirtualMachine, mon qmpExecutor, m *v1alpha1.VirtualMachineMigrationState,
	lim outgoingLimits, plan downtimePlan, fail func(reason, msg string), log interface{ Info(string, ...any) }) bool {
	lastMoved, lastBytes := time.Now(), int64(-1)
	lastWrite := time.Time{}
	limit := plan.limitAfter(0)
	for {
		var st migrateInfo
		if err := mon.Execute(ctx, "query-migrate", nil, &st); err != nil {
			fail(v1alpha1.MigrationReasonTransferFailed, "query-migrate: "+err.Error())
			return false
		}
		if want := plan.limitAfter(st.RAM.DirtySyncCount); want != limit && migrationActive(st.Status) {
			if err := mon.Execute(ctx, "migrate-set-parameters", map[string]any{"downtime-limit": want}, nil); err == nil {
				log.Info("downtime limit raised: the guest dirties memory faster than it converges", "passes", st.RAM.DirtySyncCount, "limitMs", want)
				limit = want
			}
		}
		switch {
		case st.Status == "completed":
			a.finishOutgoing(ctx, vm, mon, m, st, plan.paused, log)
			return true
		case st.Status == "failed" || st.Status == "cancelled" || (!migrationActive(st.Status) && st.Status != ""):
			msg := "the migration stream failed"
			if st.ErrorDesc != "" {
				msg += ": " + st.ErrorDesc
			}
			fail(v1alpha1.MigrationReasonTransferFailed, msg)
			return false
		}
		select {
		case <-lim.lost:
			// The target ends the watch once it took over: a stream whose last bytes it
			// has already taken says completed in a moment.
			a.waitMigrationEnd(ctx, mon, 2*time.Second)
			var end migrateInfo
			if mon.Execute(ctx, "query-migrate", nil, &end) == nil && end.Status == "completed" {
				a.finishOutgoing(ctx, vm, mon, m, end, plan.paused, log)
				return true
			}
			a.endOutgoing(ctx, vm, mon, m, v1alpha1.MigrationReasonTransferFailed,
				fmt.Sprintf("the watch connection to node %s ended before the stream completed (its agent is gone, or the link broke)", m.Target.Node), log)
			return false
		default:
		}
		now := time.Now()
		if st.RAM.Transferred != lastBytes {
			lastBytes, lastMoved = st.RAM.Transferred, now
		}
		if why, reason := a.outgoingCancel(vm, m, now, lim.deadline, lastMoved); why != "" {
			a.endOutgoing(ctx, vm, mon, m, reason, why, log)
			return false
		}
		if now.Sub(lastWrite) >= time.Second {
			lastWrite = now
			p := progressOf(st, a.mirrorRemaining(ctx, mon))
			err := a.patchMigration(ctx, vm.Namespace, vm.Name, vm.UID, m.ID, func(_ *v1alpha1.VirtualMachine, mm *v1alpha1.VirtualMachineMigrationState) {
				mm.Progress = p
			})
			if errors.Is(err, errMigrationOver) {
				a.endOutgoing(ctx, vm, mon, m, v1alpha1.MigrationReasonCancelled, "the migration was cancelled", log)
				return false
			}
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// finishOutgoing records the figures of a completed stream in the migration (the target may
// have switched over already) and ends the source's side of it. The downtime of a stream
// whose guest was paused throughout (pausedTransfer) is the whole stream.
func (a *Agent) finishOutgoing(ctx context.Context, vm *v1alpha1.VirtualMachine, mon qmpExecutor, m *v1alpha1.VirtualMachineMigrationState, st migrateInfo, paused bool, log interface{ Info(string, ...any) }) {
	// QEMU 7.2 may say completed before it filled in the figures: ask again a few
	// times (the target switches over meanwhile; this only delays the record).
	for i := 0; i < 10 && st.TotalTime == 0; i++ {
		time.Sleep(20 * time.Millisecond)
		var again migrateInfo
		if mon.Execute(ctx, "query-migrate", nil, &again) != nil || again.Status != "completed" {
			break
		}
		st = again
	}
	p := progressOf(st, 0)
	p.Percent, p.DowntimeMs, p.TotalTimeMs = 100, st.Downtime, st.TotalTime
	if paused {
		p.DowntimeMs = max(st.TotalTime, st.Downtime)
	}
	if in := a.inst(vm.UID); in != nil {
		in.mu.Lock()
		if !in.stoppedAt.IsZero() {
			p.PausedAtMs = in.stoppedAt.UnixMilli()
		}
		in.mu.Unlock()
	}
	// The target may have switched over already: the figures go into the migration
	// of this id whatever its phase (the one write a source may make afterwards).
	_, err := runtime.UpdateVMStatus(ctx, a.c, vm.Namespace, vm.Name, vm.UID, []string{"migrationState"}, nil, func(v *v1alpha1.VirtualMachine) error {
		cur := v.Status.MigrationState
		if cur == nil || cur.ID != m.ID || (cur.Phase != v1alpha1.MigrationPhaseSucceeded && !cur.Active()) {
			return runtime.ErrNoChange
		}
		mm := *cur
		if cur.Progress != nil { // the target's, if it came first
			p.ResumedAtMs, p.SwitchoverMs = cur.Progress.ResumedAtMs, cur.Progress.SwitchoverMs
		}
		mm.Progress = p
		v.Status.MigrationState = &mm
		return nil
	})
	if err != nil && !errors.Is(err, runtime.ErrVMGone) {
		log.Info("recording the migration's figures", "err", err)
	}
	a.cleanupOutgoing(ctx, mon, m)
	log.Info("migration stream completed; the target switches over", "downtimeMs", st.Downtime, "totalMs", st.TotalTime)
}

// outgoingCancel says why a running transfer is to be ended, if it is: its timeout passed,
// no data moved for stallLimit, or the migration was failed (cancelled) in the store.
func (a *Agent) outgoingCancel(vm *v1alpha1.VirtualMachine, m *v1alpha1.VirtualMachineMigrationState, now, deadline, lastMoved time.Time) (why, reason string) {
	switch {
	case !deadline.IsZero() && now.After(deadline):
		return fmt.Sprintf("the transfer did not finish within its timeout of %ds", m.Policy.TimeoutSeconds), v1alpha1.MigrationReasonTimeout
	case now.Sub(lastMoved) > stallLimit:
		return fmt.Sprintf("no data moved to node %s for %s: the link to the target may be down", m.Target.Node, stallLimit), v1alpha1.MigrationReasonTransferFailed
	}
	if cur, ok := a.vms.Get(runtime.KeyOf(vm)); ok {
		if cm := cur.Status.MigrationState; !cm.Active() || cm.ID != m.ID {
			if cm != nil && cm.ID == m.ID && cm.Message != "" {
				return cm.Message, cm.Reason
			}
			return "the migration was cancelled", v1alpha1.MigrationReasonCancelled
		}
	}
	return "", ""
}

// The downtime limit. QEMU switches over once what is left to send fits in its downtime limit
// at the measured bandwidth. A stream starts with a low limit, so that a guest that writes
// little memory (most of them) is paused for a few milliseconds, not for the whole allowance.
// Under KVM, every two more passes over memory without converging double it, up to the
// policy's maximum (--migration-max-downtime, 300 ms by default). Under TCG it is never
// changed while the stream runs: with QEMU before 9.0, TCG's dirty tracking can lose guest
// writes after a pass (fixed upstream by 03bfc2188f), and raising the limit mid-stream moves
// the passes next to the switch-over, where such a write is never sent again: 12 of 25
// capped TCG migrations with raises handed over a corrupted guest, none of 10 without
// (scripts/qemu-migration-check.py, docs/migration.md).
const (
	downtimeFirstMs = 50  // the first limit, ms (lower if the maximum is lower)
	downtimeStep    = 2   // passes per step
	downtimeMaxMs   = 300 // the maximum when the policy names none
)

// pausedTransfer says the guest of vm, running under accel on a QEMU of qemuVersion, is
// paused for its whole migration stream: under TCG with QEMU older than 9.0 (or of an unknown
// version) when it has memory plugged through virtio-mem. Those QEMUs lose writes of a
// running guest to RAM blocks that are whole words of the dirty bitmap long
// (qemu.MemoryPadKiB); padding keeps the boot memory out of that path, but virtio-mem's
// memory comes in 2 MiB blocks. A paused guest writes nothing while its memory is sent.
func pausedTransfer(accel, qemuVersion string, vm *v1alpha1.VirtualMachine) bool {
	if !qemu.LosesDirtyWrites(accel == "kvm", qemuVersion) {
		return false
	}
	r := vm.Status.Resources
	return r != nil && r.Memory.BootSize != "" &&
		(memoryBytes(r.Memory.Hotplugged) > 0 || memoryBytes(r.Memory.Size) > memoryBytes(r.Memory.BootSize))
}

// downtimePlan is how a stream's downtime limit goes: its maximum, whether it grows, and
// whether the guest is paused for the whole stream (pausedTransfer).
type downtimePlan struct {
	max    int64
	grow   bool
	paused bool
}

// planDowntime is the plan for a stream of a QEMU running under accel: the limit grows only
// under KVM.
func planDowntime(p *v1alpha1.MigrationPolicySettings, accel string) downtimePlan {
	return downtimePlan{max: maxDowntime(p), grow: accel == "kvm"}
}

// limitAfter is the limit after passes passes over memory (QEMU's dirty-sync-count).
func (d downtimePlan) limitAfter(passes int64) int64 {
	if !d.grow {
		passes = 0
	}
	return downtimeFor(passes, d.max)
}

// downtimeFor is the growing limit after passes passes for a maximum of max ms:
// downtimeFirstMs for the first downtimeStep passes, then doubled every downtimeStep passes,
// never above max.
func downtimeFor(passes, max int64) int64 {
	limit := min(int64(downtimeFirstMs), max)
	for n := passes - downtimeStep; n > 0 && limit < max; n -= downtimeStep {
		limit *= 2
	}
	return min(limit, max)
}

// maxDowntime is the policy's maximum downtime in ms.
func maxDowntime(p *v1alpha1.MigrationPolicySettings) int64 {
	if p != nil && p.MaxDowntimeMs > 0 {
		return p.MaxDowntimeMs
	}
	return downtimeMaxMs
}

// endOutgoing ends a transfer the source gives up on: the failure is recorded first (a
// migration failed in the store is never switched over, even if its stream completes in the
// meantime), then QEMU's stream is cancelled and the mirrors removed; the guest goes on here.
func (a *Agent) endOutgoing(ctx context.Context, vm *v1alpha1.VirtualMachine, mon qmpExecutor, m *v1alpha1.VirtualMachineMigrationState,
	reason, msg string, log interface{ Info(string, ...any) }) {
	if err := a.failMigration(ctx, vm, m.ID, reason, msg); err != nil {
		log.Info("recording the failed migration", "err", err)
	}
	if a.switchedOver(ctx, vm, m.ID) {
		// The target took the VM over before the failure could be recorded: cancelling now
		// could resume the guest here too (QEMU restarts a guest whose stream it cancels
		// before it says completed). The stream ends by itself.
		log.Info("the target switched over before the transfer could be ended: not cancelled", "reason", reason)
		a.waitMigrationEnd(ctx, mon, 30*time.Second)
		a.cleanupOutgoing(ctx, mon, m)
		return
	}
	_ = mon.Execute(ctx, "migrate_cancel", nil, nil)
	a.waitMigrationEnd(ctx, mon, 30*time.Second)
	a.cleanupOutgoing(ctx, mon, m)
}

// switchedOver says whether the store holds migration id of vm as succeeded (read afresh;
// false when it cannot be read).
func (a *Agent) switchedOver(ctx context.Context, vm *v1alpha1.VirtualMachine, id string) bool {
	var v v1alpha1.VirtualMachine
	if err := a.c.Get(ctx, "virtualmachines", vm.Namespace, vm.Name, &v); err != nil || v.UID != vm.UID {
		return false
	}
	m := v.Status.MigrationState
	return m != nil && m.ID == id && m.Phase == v1alpha1.MigrationPhaseSucceeded
}

// progressOf turns query-migrate into the status' progress.
func progressOf(st migrateInfo, diskRemaining int64) *v1alpha1.MigrationProgress {
	p := &v1alpha1.MigrationProgress{TransferredBytes: st.RAM.Transferred, RemainingBytes: st.RAM.Remaining, TotalBytes: st.RAM.Total,
		DirtyPagesRate: st.RAM.DirtyPagesRate, Iterations: st.RAM.DirtySyncCount, DiskRemainingBytes: diskRemaining}
	if st.RAM.Total > 0 {
		p.Percent = int((st.RAM.Total - st.RAM.Remaining) * 100 / st.RAM.Total)
		if p.Percent > 99 && st.Status != "completed" {
			p.Percent = 99
		}
	}
	return p
}

// waitMigrationEnd waits until QEMU's migration is no longer under way.
func (a *Agent) waitMigrationEnd(ctx context.Context, mon qmpExecutor, limit time.Duration) {
	end := time.Now().Add(limit)
	for time.Now().Before(end) {
		var st migrateInfo
		if mon.Execute(ctx, "query-migrate", nil, &st) != nil || !migrationActive(st.Status) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// blockJob is an entry of query-block-jobs.
type blockJob struct {
	Device string `json:"device"`
	Len    int64  `json:"len"`
	Offset int64  `json:"offset"`
	Ready  bool   `json:"ready"`
	Status string `json:"status"`
}

// mirrorPrefix names the mirror jobs and NBD client nodes of a migration.
const mirrorPrefix = "mig-"

// startMirrors mirrors each Local disk of the migration into the target's NBD export and
// waits until every mirror is in sync (from then on each guest write goes to both sides).
func (a *Agent) startMirrors(ctx context.Context, vm *v1alpha1.VirtualMachine, mon fdPasser, dialer *migrationDialer, m *v1alpha1.VirtualMachineMigrationState, deadline time.Time, log interface{ Info(string, ...any) }) error {
	if len(m.Disks) == 0 {
		return nil
	}
	for i, d := range m.Disks {
		if err := a.startMirror(ctx, vm, mon, dialer, d, fmt.Sprintf("%s%d", mirrorPrefix, i)); err != nil {
			return err
		}
	}
	log.Info("mirroring local disks to the target", "disks", len(m.Disks))
	lastWrite := time.Time{}
	for {
		var jobs []blockJob
		if err := mon.Execute(ctx, "query-block-jobs", nil, &jobs); err != nil {
			return fmt.Errorf("query-block-jobs: %w", err)
		}
		ready, found := 0, 0
		var remaining, total int64
		for _, j := range jobs {
			if !strings.HasPrefix(j.Device, mirrorPrefix) {
				continue
			}
			found++
			if j.Ready {
				ready++
			}
			remaining += j.Len - j.Offset
			total += j.Len
		}
		if found < len(m.Disks) {
			return errors.New("a disk mirror ended before it was in sync (the target's export may be gone)")
		}
		if ready == len(m.Disks) {
			return nil
		}
		if !deadline.IsZero() && time.Now().After(deadline) {
			return fmt.Errorf("the disk mirrors were not in sync within the timeout of %ds", m.Policy.TimeoutSeconds)
		}
		if cur, ok := a.vms.Get(runtime.KeyOf(vm)); ok {
			if cm := cur.Status.MigrationState; !cm.Active() || cm.ID != m.ID {
				return errors.New("the migration was cancelled")
			}
		}
		if time.Since(lastWrite) >= time.Second {
			lastWrite = time.Now()
			pct := 0
			if total > 0 {
				pct = int((total - remaining) * 100 / total / 2) // disks are the first half
			}
			_ = a.patchMigration(ctx, vm.Namespace, vm.Name, vm.UID, m.ID, func(_ *v1alpha1.VirtualMachine, mm *v1alpha1.VirtualMachineMigrationState) {
				mm.Progress = &v1alpha1.MigrationProgress{Percent: pct, DiskRemainingBytes: remaining}
			})
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// startMirror mirrors one Local disk d of the source QEMU into the target's NBD export of it
// (block node and job nbd), over one connection through the migration proxies.
func (a *Agent) startMirror(ctx context.Context, vm *v1alpha1.VirtualMachine, mon fdPasser, dialer *migrationDialer, d v1alpha1.MigrationDisk, nbd string) error {
	var vd v1alpha1.VirtualDisk
	if err := a.c.Get(ctx, "virtualdisks", vm.Namespace, d.Name, &vd); err != nil {
		return fmt.Errorf("VirtualDisk %q: %w", d.Name, err)
	}
	path, _, err := a.diskFile(ctx, &vd)
	if err != nil {
		return fmt.Errorf("VirtualDisk %q: %w", d.Name, err)
	}
	node, err := diskNodeByPath(ctx, mon, path)
	if err != nil {
		return err
	}
	if node == nil {
		return fmt.Errorf("VirtualDisk %q is not open in the source QEMU", d.Name)
	}
	// One connection through the proxies per disk, handed to QEMU as a descriptor.
	conn, err := dialer.dial(ctx, alpnNBD)
	if err != nil {
		return fmt.Errorf("the target's export of VirtualDisk %q: %w", d.Name, err)
	}
	err = mon.GetFD(ctx, nbd, conn)
	conn.Close()
	if err != nil {
		return fmt.Errorf("passing the connection to the target's export of VirtualDisk %q to QEMU: %w", d.Name, err)
	}
	err = mon.Execute(ctx, "blockdev-add", map[string]any{"driver": "nbd", "node-name": nbd, "export": d.Export,
		"server": map[string]any{"type": "fd", "str": nbd}}, nil)
	if err != nil {
		return fmt.Errorf("connecting to the target's export of VirtualDisk %q: %w", d.Name, err)
	}
	// The whole disk, flattened: the target's copy has no backing file.
	err = mon.Execute(ctx, "blockdev-mirror", map[string]any{"job-id": nbd, "device": node.NodeName, "target": nbd,
		"sync": "full", "copy-mode": "write-blocking", "auto-dismiss": false}, nil)
	if err != nil {
		return fmt.Errorf("mirroring VirtualDisk %q: %w", d.Name, err)
	}
	return nil
}

// mirrorRemaining is what the disk mirrors still have to copy.
func (a *Agent) mirrorRemaining(ctx context.Context, mon qmpExecutor) int64 {
	var jobs []blockJob
	if mon.Execute(ctx, "query-block-jobs", nil, &jobs) != nil {
		return 0
	}
	var n int64
	for _, j := range jobs {
		if strings.HasPrefix(j.Device, mirrorPrefix) {
			n += j.Len - j.Offset
		}
	}
	return n
}

// cleanupOutgoing ends the mirror jobs and removes the NBD client nodes of a migration. A
// mirror in sync that is cancelled stops without switching the guest to the copy.
func (a *Agent) cleanupOutgoing(ctx context.Context, mon qmpExecutor, m *v1alpha1.VirtualMachineMigrationState) {
	if len(m.Disks) == 0 {
		return
	}
	for i := range m.Disks {
		_ = mon.Execute(ctx, "block-job-cancel", map[string]any{"device": fmt.Sprintf("%s%d", mirrorPrefix, i), "force": true}, nil)
	}
	end := time.Now().Add(10 * time.Second)
	for time.Now().Before(end) {
		var jobs []blockJob
		if mon.Execute(ctx, "query-block-jobs", nil, &jobs) != nil {
			break
		}
		left := 0
		for _, j := range jobs {
			if !strings.HasPrefix(j.Device, mirrorPrefix) {
				continue
			}
			left++
			if j.Status == "concluded" {
				_ = mon.Execute(ctx, "job-dismiss", map[string]any{"id": j.Device}, nil)
			}
		}
		if left == 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	for i := range m.Disks {
		_ = mon.Execute(ctx, "blockdev-del", map[string]any{"node-name": fmt.Sprintf("%s%d", mirrorPrefix, i)}, nil)
	}
}

// outgoingEnding says the source side of vm's migration, which just switched over to another
// node, is still recording its figures (for at most 10 s after the switch-over).
func (a *Agent) outgoingEnding(vm *v1alpha1.VirtualMachine, in *instance) bool {
	m := vm.Status.MigrationState
	if in == nil || m == nil || m.Phase != v1alpha1.MigrationPhaseSucceeded || m.Source.Node != a.cfg.NodeName ||
		m.EndTimestamp == nil || time.Since(m.EndTimestamp.Time) > 10*time.Second {
		return false
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.outgoing == m.ID
}

// ---- after a migration ----

// cleanupAfterMove removes what is left on this node of a VM that is not bound here once its
// QEMU here is gone: the run directory of a migration's target that failed, and of a source
// whose VM moved away, with the Local disk files the VM no longer uses here.
func (a *Agent) cleanupAfterMove(ctx context.Context, vm *v1alpha1.VirtualMachine) {
	m := vm.Status.MigrationState
	if m == nil || vm.Status.NodeName == a.cfg.NodeName || m.Active() {
		return
	}
	runDir := a.runDir(vm.UID)
	switch {
	case m.Target.Node == a.cfg.NodeName && m.Phase == v1alpha1.MigrationPhaseFailed:
		a.removeIncomingFiles(runDir, m.ID)
	case m.Source.Node == a.cfg.NodeName && m.Phase == v1alpha1.MigrationPhaseSucceeded && vm.Status.NodeName == m.Target.Node:
		for _, d := range m.Disks {
			var vd v1alpha1.VirtualDisk
			if err := a.c.Get(ctx, "virtualdisks", vm.Namespace, d.Name, &vd); err != nil || storage.CheckUID(vd.UID) != nil {
				continue
			}
			var sc *v1alpha1.StorageClass
			if a.getClass(ctx, vd.Status.StorageClassName, &sc) != nil {
				continue
			}
			_ = os.Remove(storage.ClassDiskPath(a.cfg.DataDir, sc, vd.UID))
		}
	default:
		return
	}
	if findQEMU(runDir, vm.UID) > 0 {
		return
	}
	stopTPM(runDir)
	_ = os.RemoveAll(runDir)
	a.log.Info("removed what a moved VM left on this node", "vm", vm.Namespace+"/"+vm.Name, "migration", m.ID, "result", m.Phase)
}

// onMigrationEvent passes QEMU's MIGRATION events to the instance's hook.
func (in *instance) onMigrationEvent(ev qmp.Event) {
	var d struct {
		Status string `json:"status"`
	}
	if ev.DecodeData(&d) != nil {
		return
	}
	in.migrationStatus(d.Status)
}

// migrationStatus tells the migration hook QEMU's migration status.
func (in *instance) migrationStatus(status string) {
	in.mu.Lock()
	h := in.migHook
	in.mu.Unlock()
	if h != nil {
		h(status)
	}
}

func (in *instance) setMigrationHook(h func(status string)) {
	in.mu.Lock()
	in.migHook = h
	in.mu.Unlock()
}
