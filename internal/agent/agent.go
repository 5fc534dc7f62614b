package agent

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/network"
	"github.com/rakhsh/rakhsh/internal/nodestream"
	"github.com/rakhsh/rakhsh/internal/qemu"
	"github.com/rakhsh/rakhsh/internal/qemu/accel"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// Version is reported as the Node's status.agentVersion.
var Version = "dev"

// Config configures an Agent.
type Config struct {
	// Client talks to the API server; required.
	Client *client.Client
	// NodeName is the name of this host's Node; default the hostname.
	NodeName string
	// DataDir is the data directory holding disks, images and VM run directories; required.
	DataDir string
	// Log receives structured logs; default slog.Default().
	Log *slog.Logger
	// QEMUBinary is the QEMU program; default qemu-system-x86_64 from PATH.
	QEMUBinary string
	// HeartbeatInterval is how often the Node status is refreshed; default 10 s.
	HeartbeatInterval time.Duration
	// Workers is the number of VMs reconciled at once; default 4.
	Workers int
	// GCInterval is how often run directories of deleted VMs are looked for; default 30 s.
	GCInterval time.Duration
	// KillTimeout is how long QEMU gets to exit after quit before SIGKILL; default 10 s.
	KillTimeout time.Duration
	// ImageCacheExpiry is how long an image fetched into this host's cache stays once
	// nothing uses it; ImageCacheGCInterval how often that is looked at (imagecache_gc.go).
	ImageCacheExpiry, ImageCacheGCInterval time.Duration
	// Now returns the current time; default time.Now.
	Now func() time.Time
	// HostNetworking connects VM NICs to taps on their ClusterNetworks' bridges (see
	// network.go); false gives every VM one isolated QEMU user-mode NIC.
	HostNetworking bool
	// NoUpstreamDNS keeps the networks' dnsmasq from forwarding to the host's resolvers.
	NoUpstreamDNS bool
	// Accelerator is how VMs run guest code: auto (default: KVM when the probe boots real
	// guest code under it), kvm or tcg. See package accel.
	Accelerator accel.Mode
	// KVMDevice is the KVM device the accelerator probe checks; default /dev/kvm (tests point
	// it elsewhere).
	KVMDevice string
	// QEMUUser is the user QEMU runs as; default DefaultQEMUUser, created when missing. QEMU
	// then opens no path of the data directory: its files, sockets and taps are passed as
	// descriptors (qemu.Input.PassFDs). "root" runs QEMU as root with paths, as before.
	QEMUUser string
	// DnsmasqUser is the user the networks' dnsmasq drops to; default
	// network.DefaultDnsmasqUser, created when missing; "root" keeps it root.
	DnsmasqUser string
	// UnderlayAddress is this node's address toward the other nodes (`--underlay-address`
	// or detected by the command), published as the Node's InternalIP: the NAT networks'
	// VXLAN traffic is sent from and to it. Invalid: the node takes no part in networks
	// across hosts (overlay.go).
	UnderlayAddress netip.Addr
	// Certificate is this node's certificate, the one its stream service serves and whose
	// fingerprint the Node publishes in status.streamEndpoint.certificateSHA256; it also
	// authenticates the node at either end of a live migration's stream (migproxy.go). Nil:
	// the node takes part in no live migration.
	Certificate *tls.Certificate
	// LeaseDuration is the duration of the node's lease (lease.go); default
	// v1alpha1.DefaultNodeLeaseDuration. Whole seconds.
	LeaseDuration time.Duration
	// FenceTimeout is how long the agent runs its HA VMs without renewing its lease before
	// it kills their QEMUs (fence.go); default v1alpha1.DefaultNodeFenceTimeout. It must be
	// shorter than LeaseDuration by v1alpha1.NodeFenceMargin.
	FenceTimeout time.Duration
	// FenceGuard is the executable that runs the fence guard (`FenceGuard fence-guard
	// --data-dir DataDir`, guard.go): the process that fences the HA VMs when the agent is
	// stopped or dead. Empty: none, the agent's own watchdog alone (unit tests).
	FenceGuard string
	// LeaseRenewInterval is how often the lease is renewed; default 1 s, at most a quarter
	// of FenceTimeout.
	LeaseRenewInterval time.Duration
	// MetricsURL is where this node's metrics are served, published as the Node's
	// status.metricsURL for /sd/prometheus (metrics.go); empty: none.
	MetricsURL string
	// KSM is the KSM mode (KSMAuto when empty) and MemoryReserve the host memory kept
	// available, below which balloons are inflated (0: 10% of the host's memory); memory.go.
	KSM           string
	MemoryReserve int64
}

// Agent is the node agent.
type Agent struct {
	cfg     Config
	c       *client.Client
	log     *slog.Logger
	facts   hostFacts
	accelMu sync.Mutex
	choice  accel.Choice // KVM or TCG, and why (accelerator.go)
	fetches imageFetches // images fetched into this host's cache (imagecache.go)
	// exportMu guards exportJobs, the exports of disks moving to other nodes being prepared
	// (diskexport.go), and their records.
	exportMu   sync.Mutex
	exportJobs map[string]*diskExportJob
	rec        *runtime.Recorder
	mem        memoryManager // balloons and KSM (memory.go)

	vms   *runtime.TypedInformer[v1alpha1.VirtualMachine]
	migIn *runtime.TypedInformer[v1alpha1.VirtualMachine]
	// held are the stopped VMs whose host state (UEFI variables, TPM) this node keeps: their
	// deletion removes it at once rather than at the next orphan sweep.
	held   *runtime.TypedInformer[v1alpha1.VirtualMachine]
	bdas   *runtime.TypedInformer[v1alpha1.VirtualMachineBlockDeviceAttachment] // hot-plug (hotplug_disk.go)
	queue  *runtime.Queue
	runCtx context.Context

	mu    sync.Mutex
	insts map[string]*instance // by VM uid

	net *netState // host networking (network.go); nil without HostNetworking

	qemuAs *runAs // the user QEMU runs as (users.go); nil: root

	seams *startSeams // tests only: a start failing at a chosen step (start.go)

	fence *fence     // self-fencing (fence.go)
	lease *leaser    // the node lease (lease.go)
	guard *guardLink // the fence guard (guard.go); nil without Config.FenceGuard

	metrics *agentMetrics // the node's and its VMs' series (metrics.go)
}

// New checks cfg and returns an agent; Run starts it.
func New(cfg Config) (*Agent, error) {
	if cfg.Client == nil {
		return nil, errors.New("agent: a client is required")
	}
	if cfg.DataDir == "" {
		return nil, errors.New("agent: a data dir is required")
	}
	abs, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	cfg.DataDir = abs
	if cfg.NodeName == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("agent: no node name and no hostname: %w", err)
		}
		cfg.NodeName = strings.ToLower(h)
	}
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	log := cfg.Log.With("component", "agent", "node", cfg.NodeName)
	f := newFence(cfg.FenceTimeout, cfg.Now, log)
	a := &Agent{cfg: cfg, c: cfg.Client, log: log, insts: map[string]*instance{}, fence: f, metrics: newAgentMetrics(cfg.NodeName),
		rec: &runtime.Recorder{C: cfg.Client, Component: "rakhsh-agent", Host: cfg.NodeName, Log: log}}
	a.newInformers()
	if cfg.FenceGuard != "" {
		a.guard = &guardLink{bin: cfg.FenceGuard, dir: cfg.DataDir, timeout: cfg.FenceTimeout, log: log}
		f.guard = a.guard
	}
	a.lease = &leaser{store: apiLeases{c: cfg.Client, name: cfg.NodeName}, node: cfg.NodeName, duration: cfg.LeaseDuration,
		timeout: max(cfg.LeaseRenewInterval, min(2*time.Second, cfg.FenceTimeout/3)), now: cfg.Now, fence: f, log: log,
		acquired: a.leaseAcquired}
	return a, nil
}

// setDefaults fills in what cfg leaves unset and checks the lease times and the accelerator.
func (cfg *Config) setDefaults() error {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.QEMUBinary == "" {
		cfg.QEMUBinary = qemu.DefaultBinary
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = 10 * time.Second
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 4
	}
	if cfg.GCInterval <= 0 {
		cfg.GCInterval = 30 * time.Second
	}
	if cfg.KillTimeout <= 0 {
		cfg.KillTimeout = 10 * time.Second
	}
	if cfg.ImageCacheExpiry <= 0 {
		cfg.ImageCacheExpiry = DefaultImageCacheExpiry
	}
	if cfg.ImageCacheGCInterval <= 0 {
		cfg.ImageCacheGCInterval = DefaultImageCacheGCInterval
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.QEMUUser == "" {
		cfg.QEMUUser = DefaultQEMUUser
	}
	if cfg.DnsmasqUser == "" {
		cfg.DnsmasqUser = network.DefaultDnsmasqUser
	}
	if cfg.LeaseDuration == 0 {
		cfg.LeaseDuration = v1alpha1.DefaultNodeLeaseDuration
	}
	if cfg.FenceTimeout == 0 {
		cfg.FenceTimeout = v1alpha1.DefaultNodeFenceTimeout
	}
	if msg := v1alpha1.CheckNodeLeaseTimes(cfg.LeaseDuration, cfg.FenceTimeout); msg != "" {
		return errors.New("agent: " + msg)
	}
	if cfg.LeaseRenewInterval <= 0 {
		cfg.LeaseRenewInterval = min(time.Second, cfg.FenceTimeout/4)
	}
	mode, err := accel.ParseMode(string(cfg.Accelerator))
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	cfg.Accelerator = mode
	return nil
}

// newInformers makes the agent's VM caches, each holding only VMs of this node.
// getKey reads the object of resource that key names into obj. found is false, with no error,
// when the object does not exist (any more): a reconcile of it then has nothing to do.
func (a *Agent) getKey(ctx context.Context, resource string, key runtime.Key, obj any) (found bool, err error) {
	ns, name := key.Split()
	err = a.c.Get(ctx, resource, ns, name, obj)
	if client.IsNotFound(err) {
		return false, nil
	}
	return err == nil, err
}

func (a *Agent) newInformers() {
	vmsWhere := func(field string) *runtime.TypedInformer[v1alpha1.VirtualMachine] {
		return runtime.NewTypedInformer[v1alpha1.VirtualMachine](a.c, "virtualmachines",
			client.ListOptions{FieldSelector: field + "=" + a.cfg.NodeName}, a.log)
	}
	// Only the VMs bound to this node: a VM released or bound elsewhere leaves the cache
	// (the orphan sweep asks the API before it removes anything of it).
	a.vms = vmsWhere("status.nodeName")
	// The VMs whose live migration targets this node (migrate.go).
	a.migIn = vmsWhere("status.migrationState.target.node")
	a.held = vmsWhere("status.stateNodeName")
}

// watchVMs queues the VMs of the agent's caches as they change, and starts the caches.
func (a *Agent) watchVMs(ctx context.Context) {
	a.vms.OnChange(a.queue.Add)
	go a.vms.Run(ctx)
	a.migIn.OnChange(a.queue.Add)
	go a.migIn.Run(ctx)
	a.held.OnChange(func(k runtime.Key) {
		// Only its deletion matters (reconcile then sweeps the run directories of VMs that
		// are gone); a held VM bound here is reconciled through a.vms anyway.
		if _, ok := a.held.Get(k); !ok {
			if _, bound := a.vms.Get(k); !bound {
				a.queue.Add(k)
			}
		}
	})
	go a.held.Run(ctx)
}

// CachedVMs returns the keys of the VMs the agent caches: those bound to its node.
func (a *Agent) CachedVMs() []runtime.Key { return a.vms.Keys() }

// NodeName is the name of the Node this agent runs.
func (a *Agent) NodeName() string { return a.cfg.NodeName }

// Run registers the node, re-adopts running VMs and reconciles until ctx ends. It never
// stops a VM because it is itself stopping: QEMU processes outlive it.
func (a *Agent) Run(ctx context.Context) error {
	a.runCtx = ctx
	// The stream service of this data dir passes guest agent requests here (guestagent.go).
	defer nodestream.RegisterGuestAgent(a.cfg.DataDir, a.guestRequest)()
	// ... and the data of disks that move to other nodes (diskexport.go).
	defer nodestream.RegisterDiskExporter(a.cfg.DataDir, a.exportDisk)()
	a.facts = probeHost(ctx, a.cfg.QEMUBinary)
	if a.facts.qemuErr != nil {
		a.log.Error("QEMU is not usable: the node registers as NotReady", "err", a.facts.qemuErr)
	}
	if err := os.MkdirAll(filepath.Join(a.cfg.DataDir, "run", "vms"), 0o700); err != nil {
		return fmt.Errorf("agent: creating run directory: %w", err)
	}
	if a.guard != nil {
		a.guard.begin() // guard.go: a fence guard runs before any QEMU is adopted or started
	}
	if err := a.resolveUsers(ctx); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	a.chooseAccelerator(ctx)
	for {
		err := a.heartbeat(ctx)
		if err == nil {
			break
		}
		a.log.Warn("registering node failed; retrying", "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
	a.log.Info("node registered", "kvm", a.kvm(), "qemu", a.facts.qemu.QEMUVersion)

	a.queue = runtime.NewQueue("agent", a.log)
	a.queue.MaxBackoff = 10 * time.Second
	a.watchVMs(ctx)
	select {
	case <-ctx.Done():
		return nil
	case <-a.vms.Synced():
	}
	a.adoptAll(ctx)
	a.startLease(ctx)        // lease.go: before any VM is reconciled
	a.startNetworking(ctx)   // host networking: network.go
	go a.runDiskResizer(ctx) // online disk resize: resize.go
	go a.runSnapshotter(ctx) // live disk snapshots: snapshot.go
	go a.runBackups(ctx)     // backups of running VMs: backup.go
	go a.runMemory(ctx)      // balloons and KSM: memory.go
	a.startHotplug(ctx)      // hot-plugged devices: hotplug_disk.go
	a.queueOrphans()
	go runtime.Ticks(ctx, a.cfg.HeartbeatInterval, func() {
		if err := a.heartbeat(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn("heartbeat failed", "err", err)
		}
	})
	go runtime.Ticks(ctx, a.cfg.GCInterval, a.queueOrphans)
	go runtime.Ticks(ctx, a.cfg.GCInterval, func() { a.sweepDiskLeases(ctx) })
	go runtime.Ticks(ctx, a.cfg.ImageCacheGCInterval, func() { a.gcImageCache(ctx) }) // imagecache_gc.go
	for _, k := range a.vms.Keys() {
		a.queue.Add(k)
	}
	a.queue.Run(ctx, a.cfg.Workers, a.reconcile)

	// Stop watching, leave QEMU running.
	a.mu.Lock()
	for _, in := range a.insts {
		in.detach()
	}
	a.mu.Unlock()
	a.stopGuard()
	return nil
}

func (a *Agent) now() v1alpha1.Time { return v1alpha1.NewTime(a.cfg.Now()) }

var uidRe = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// orphanPrefix marks queue keys that name a run directory (by VM uid) rather than a VM.
const orphanPrefix = "\x00orphan/"

func orphanKey(uid string) runtime.Key { return runtime.Key(orphanPrefix + uid) }

// vmKeysByUID maps the uid of every cached VM (those bound to this node) to its key.
func (a *Agent) vmKeysByUID() map[string]runtime.Key {
	out := map[string]runtime.Key{}
	for _, vm := range a.vms.List() {
		if vm.UID != "" {
			out[vm.UID] = runtime.NewKey(vm.Namespace, vm.Name)
		}
	}
	return out
}

// queueOrphans queues every run directory whose VM is not bound to this node; the orphan
// reconcile removes it only when the VM is gone from the API.
func (a *Agent) queueOrphans() {
	entries, err := os.ReadDir(filepath.Join(a.cfg.DataDir, "run", "vms"))
	if err != nil {
		return
	}
	byUID := a.vmKeysByUID()
	for _, e := range entries {
		if _, ok := byUID[e.Name()]; !ok && uidRe.MatchString(e.Name()) {
			a.queue.Add(orphanKey(e.Name()))
		}
	}
}

// heartbeat creates the Node if needed and writes its status.
func (a *Agent) heartbeat(ctx context.Context) error {
	var node v1alpha1.Node
	err := a.c.Get(ctx, "nodes", "", a.cfg.NodeName, &node)
	if client.IsNotFound(err) {
		n := v1alpha1.Node{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "Node"},
			ObjectMeta: v1alpha1.ObjectMeta{Name: a.cfg.NodeName}}
		err = a.c.Create(ctx, "nodes", "", &n, &node)
		if client.IsAlreadyExists(err) {
			err = a.c.Get(ctx, "nodes", "", a.cfg.NodeName, &node)
		}
	}
	if err != nil {
		return err
	}
	f := a.facts
	cpuRatio, memRatio := node.Spec.AllocationRatios.CPU, node.Spec.AllocationRatios.Memory
	if cpuRatio <= 0 {
		cpuRatio = v1alpha1.DefaultCPUAllocationRatio
	}
	if memRatio <= 0 {
		memRatio = v1alpha1.DefaultMemoryAllocationRatio
	}
	storageFree := freeBytes(a.cfg.DataDir)
	now := a.now()
	st := v1alpha1.NodeStatus{
		Phase: v1alpha1.NodePhaseReady,
		Capacity: &v1alpha1.NodeResources{CPU: f.cpus, Memory: v1alpha1.BytesQuantity(f.memoryBytes),
			Storage: v1alpha1.BytesQuantity(storageFree)},
		Allocatable: &v1alpha1.NodeResources{CPU: int64(float64(f.cpus) * cpuRatio),
			Memory: v1alpha1.BytesQuantity(int64(float64(f.memoryBytes) * memRatio)), Storage: v1alpha1.BytesQuantity(storageFree)},
		QemuVersion: f.qemu.QEMUVersion, Accelerator: a.acceleratorName(), CPUModel: f.cpuModel, CPUFeatures: f.cpuFeatures,
		KernelVersion: f.kernelVersion, AgentVersion: Version, LastHeartbeatTime: &now, MetricsURL: a.cfg.MetricsURL,
		Conditions: node.Status.Conditions, ObservedGeneration: node.Generation,
	}
	st.Memory = a.mem.status.Load()
	if a.cfg.UnderlayAddress.IsValid() {
		st.Addresses = []v1alpha1.NodeAddress{{Type: v1alpha1.NodeAddressInternalIP, Address: a.cfg.UnderlayAddress.String()}}
	}
	if a.vms.HasSynced() {
		st.Allocated = a.allocated()
	}
	ready := v1alpha1.Condition{Type: v1alpha1.NodeConditionReady, Status: v1alpha1.ConditionTrue, Reason: "AgentReady",
		Message: "the node agent heartbeats and QEMU " + f.qemu.QEMUVersion + " is usable"}
	if a.fence != nil && !a.fence.mayRun() {
		// Fenced (fence.go): say so rather than overwrite the lifecycle controller's NotReady.
		st.Phase = v1alpha1.NodePhaseNotReady
		ready = v1alpha1.Condition{Type: v1alpha1.NodeConditionReady, Status: v1alpha1.ConditionFalse, Reason: v1alpha1.ReasonNodeLeaseExpired,
			Message: "the node agent does not hold its node lease: it fenced its HA VMs and acquires the lease again"}
	}
	if f.qemuErr != nil {
		st.Phase = v1alpha1.NodePhaseNotReady
		ready = v1alpha1.Condition{Type: v1alpha1.NodeConditionReady, Status: v1alpha1.ConditionFalse, Reason: "QEMUUnusable", Message: f.qemuErr.Error()}
	}
	v1alpha1.SetCondition(&st.Conditions, ready)
	v1alpha1.SetCondition(&st.Conditions, a.kvmCondition())
	a.metrics.node.Store(&nodeSample{st: st, cpuRatio: cpuRatio, memRatio: memRatio}) // metrics.go
	var status any = st
	if len(st.Addresses) == 0 && len(node.Status.Addresses) > 0 {
		// No underlay address any more: the one published before goes (a merge patch drops
		// a field only when told null).
		b, err := json.Marshal(st)
		if err != nil {
			return err
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			return err
		}
		m["addresses"] = nil
		status = m
	}
	body, err := json.Marshal(map[string]any{"status": status})
	if err != nil {
		return err
	}
	return a.c.PatchStatus(ctx, "nodes", "", a.cfg.NodeName, body, nil)
}

// allocated sums the VMs bound to this node.
func (a *Agent) allocated() *v1alpha1.NodeResources {
	var cpu, mem int64
	for _, vm := range a.vms.List() {
		if vm.Status.NodeName != a.cfg.NodeName {
			continue
		}
		cpu += int64(vm.Spec.CPU.Cores)
		if n, err := vm.Spec.Memory.Size.Value(); err == nil {
			mem += n
		}
	}
	return &v1alpha1.NodeResources{CPU: cpu, Memory: v1alpha1.BytesQuantity(mem)}
}

// resolveUsers finds (or creates) the users QEMU and dnsmasq run as.
func (a *Agent) resolveUsers(ctx context.Context) error {
	as, err := qemuIdentity(ctx, a.log, a.cfg.QEMUUser, a.kvmDevice())
	if err != nil {
		return fmt.Errorf("the QEMU user: %w", err)
	}
	a.qemuAs = as
	if as == nil {
		a.log.Warn("QEMU runs as root (--qemu-user root): a guest that escapes QEMU owns the host")
	} else {
		a.log.Info("QEMU runs unprivileged", "user", as.name, "uid", as.cred.Uid, "groups", as.cred.Groups)
		if _, err := os.Stat(a.kvmDevice()); err == nil && !canOpenAs(as.cred, a.kvmDevice()) {
			a.log.Warn("the QEMU user cannot open the KVM device: VMs fail under KVM (give the device to group kvm, mode 0660, as udev does)",
				"device", a.kvmDevice(), "user", as.name)
		}
	}
	if a.cfg.HostNetworking && a.cfg.DnsmasqUser != "root" {
		if _, err := ensureSystemUser(ctx, a.log, a.cfg.DnsmasqUser); err != nil {
			return fmt.Errorf("the dnsmasq user: %w", err)
		}
	} else if a.cfg.HostNetworking {
		a.log.Warn("dnsmasq runs as root (--dnsmasq-user root)")
	}
	return nil
}
