package server

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/agent"
	"github.com/rakhsh/rakhsh/internal/controller/backup"
	"github.com/rakhsh/rakhsh/internal/controller/disk"
	"github.com/rakhsh/rakhsh/internal/controller/eventgc"
	"github.com/rakhsh/rakhsh/internal/controller/ha"
	"github.com/rakhsh/rakhsh/internal/controller/image"
	livemigration "github.com/rakhsh/rakhsh/internal/controller/migration"
	netctl "github.com/rakhsh/rakhsh/internal/controller/network"
	"github.com/rakhsh/rakhsh/internal/controller/node"
	"github.com/rakhsh/rakhsh/internal/controller/scheduler"
	"github.com/rakhsh/rakhsh/internal/controller/snapshot"
	"github.com/rakhsh/rakhsh/internal/controller/vm"
	"github.com/rakhsh/rakhsh/internal/controller/vmbda"
	"github.com/rakhsh/rakhsh/internal/controller/vmclass"
	"github.com/rakhsh/rakhsh/internal/images"
	"github.com/rakhsh/rakhsh/internal/leader"
	"github.com/rakhsh/rakhsh/internal/network"
	"github.com/rakhsh/rakhsh/internal/qemu/accel"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// component is one long-running part of `rakhsh serve` next to the API server: a controller
// or the node agent. run blocks until ctx ends.
type component struct {
	name string
	run  func(ctx context.Context) error
}

// newLocalClient returns a client of this process's API over its unix socket. Controllers
// and the agent reach the API over it like any other client.
func newLocalClient(sockPath string) (*client.Client, error) {
	return client.New(client.Config{Server: "unix://" + sockPath})
}

// controllers returns what the elected leader runs for one term: the informer factory, every
// controller, node lifecycle and maintenance, and event GC. They talk to the API through cl, which carries the
// term's fence (see runControllers). Each term builds them anew: they hold per-run state.
func controllers(cfg Config, cl *client.Client, log *slog.Logger) ([]component, error) {
	// Each component names itself in the User-Agent of its requests (seen in the server's
	// debug log of refused requests).
	as := func(name string) *client.Client { return cl.WithUserAgent("rakhsh/" + name) }
	// One informer per kind for all controllers: each kind is listed, watched and decoded
	// once in this process, however many controllers read it.
	inf := runtime.NewFactory(as("informers"), log.With("component", "informers"))
	deps := func(name string) runtime.Deps {
		return runtime.Deps{Client: as(name), Informers: inf, Log: log.With("component", name)}
	}
	// One fetcher of image files missing from this serve's image store (imported while another
	// serve led), shared by the image and disk controllers: one download per image.
	fetcher := images.NewFetcher(as("image-fetch"), cfg.DataDir, cfg.NodeName)
	ic := image.New(image.Config{Deps: deps("image-controller"), DataDir: cfg.DataDir, NodeName: cfg.NodeName,
		Uploads: cfg.uploads, UploadBaseURLs: cfg.uploadBases, UploadTimeout: cfg.UploadTimeout,
		MaxUnpackedSize: cfg.MaxImageSize, Fetcher: fetcher})
	dc := disk.New(disk.Config{Deps: deps("disk-controller"), DataDir: cfg.DataDir, NodeName: cfg.NodeName,
		Uploads: cfg.uploads, UploadBaseURLs: cfg.uploadBases, UploadTimeout: cfg.UploadTimeout,
		MaxUnpackedSize: cfg.MaxImageSize, Fetcher: fetcher})
	sch, err := scheduler.New(scheduler.Config{Deps: deps("scheduler"),
		MaxInboundMigrations: cfg.MigrationMaxInbound})
	if err != nil {
		return nil, err
	}
	mig, err := livemigration.New(livemigration.Config{Deps: deps("migration-controller"),
		MaxOutbound: cfg.MigrationMaxOutbound, MaxDowntime: cfg.MigrationMaxDowntime, BandwidthMiBps: cfg.MigrationBandwidthMiBps,
		TimeoutPerGiB: cfg.MigrationTimeoutPerGiB, MinTimeout: cfg.MigrationMinTimeout, Unencrypted: cfg.MigrationUnencrypted})
	if err != nil {
		return nil, err
	}
	vmc, err := vm.New(vm.Config{Deps: deps("vm-controller")})
	if err != nil {
		return nil, err
	}
	vcc, err := vmclass.New(vmclass.Config{Deps: deps("vmclass-controller")})
	if err != nil {
		return nil, err
	}
	nm, err := node.NewMaintenance(node.MaintenanceConfig{Deps: deps("node-maintenance")})
	if err != nil {
		return nil, err
	}
	var macRanges []network.MACRange
	if cfg.MACRanges != "" {
		if macRanges, err = network.ParseMACRanges(cfg.MACRanges); err != nil {
			return nil, fmt.Errorf("--mac-ranges: %w", err)
		}
	}
	nc, err := netctl.New(netctl.Config{Deps: deps("network-controller"),
		MACRanges: macRanges, DefaultSubnet: cfg.DefaultSubnet})
	if err != nil {
		return nil, err
	}
	margin := cfg.HASafetyMargin
	if margin == 0 {
		margin = -1 // --ha-safety-margin 0: none (ha.Config takes zero for its default)
	}
	bdac, err := vmbda.New(vmbda.Config{Deps: deps("vmbda-controller")})
	if err != nil {
		return nil, err
	}
	return []component{
		{name: "informers", run: inf.Run},
		{name: "vmbda-controller", run: bdac.Run},
		{name: "network-controller", run: nc.Run},
		{name: "vmclass-controller", run: vcc.Run},
		{name: "image-controller", run: ic.Run},
		{name: "disk-controller", run: dc.Run},
		{name: "scheduler", run: sch.Run},
		{name: "vm-controller", run: vmc.Run},
		{name: "migration-controller", run: mig.Run},
		{name: "node-lifecycle", run: node.New(node.Config{Client: as("node-lifecycle"), GracePeriod: cfg.NodeGracePeriod,
			Log: log.With("component", "node-lifecycle")}).Run},
		{name: "node-maintenance", run: nm.Run},
		{name: "ha-controller", run: ha.New(ha.Config{Client: as("ha-controller"), SafetyMargin: margin,
			Log: log.With("component", "ha-controller")}).Run},
		{name: "event-gc", run: eventgc.New(eventgc.Config{Client: as("event-gc"), TTL: cfg.EventTTL,
			Log: log.With("component", "event-gc")}).Run},
		{name: "snapshot-controller", run: snapshot.New(snapshot.Config{Deps: deps("snapshot-controller"),
			DataDir: cfg.DataDir, NodeName: cfg.NodeName}).Run},
		{name: "backup-controller", run: backup.New(backup.Config{Deps: deps("backup-controller"),
			NodeName: ownAgentNode(cfg)}).Run},
	}, nil
}

// agentComponent returns the node agent of this process.
func agentComponent(cfg Config, cl *client.Client, cert *tls.Certificate, log *slog.Logger) (component, error) {
	underlay, err := underlayAddress(cfg.UnderlayAddress, storeHosts(cfg.Store))
	if err != nil {
		return component{}, err
	}
	guardBin, err := fenceGuardBinary()
	if err != nil {
		return component{}, err
	}
	ksm, reserve, err := cfg.Memory.parse()
	if err != nil {
		return component{}, err
	}
	a, err := agent.New(agent.Config{Client: cl.WithUserAgent("rakhsh/agent"), NodeName: cfg.NodeName, DataDir: cfg.DataDir,
		HostNetworking: cfg.VMNetworking == "host", NoUpstreamDNS: cfg.NoUpstreamDNS, Accelerator: accel.Mode(cfg.Accelerator), KVMDevice: cfg.KVMDevice,
		QEMUUser: cfg.QEMUUser, DnsmasqUser: cfg.DnsmasqUser, UnderlayAddress: underlay, Log: log,
		LeaseDuration: cfg.NodeLeaseDuration, FenceTimeout: cfg.FenceTimeout, FenceGuard: guardBin, Certificate: cert,
		MetricsURL: cfg.metricsURL, KSM: ksm, MemoryReserve: reserve})
	if err != nil {
		return component{}, err
	}
	if cfg.metricsReg != nil {
		// The node's and its VMs' series are served by this process's /metrics (metrics.go).
		cfg.metricsReg.MustRegister(a.MetricsCollectors()...)
	}
	return component{name: "agent", run: a.Run}, nil
}

// termClient is the client of one term's controllers: it sends the term's fence with every
// request (none on bolt), so that the store refuses their writes once the term has ended.
func termClient(cl *client.Client, t leader.Term) *client.Client {
	if t.Fence.IsZero() {
		return cl
	}
	return cl.WithHeader(v1alpha1.HeaderLeaderFence, t.Fence.String())
}

// runComponents runs comps until ctx ends and each has returned (a component that has not
// returned 10 s after ctx ended is left behind, logged).
func runComponents(ctx context.Context, comps []component, log *slog.Logger) {
	done := make(chan string, len(comps))
	for _, c := range comps {
		go func(c component) {
			defer func() { done <- c.name }()
			if err := c.run(ctx); err != nil && ctx.Err() == nil {
				log.Error("component stopped", "component", c.name, "err", err)
			}
		}(c)
	}
	left := len(comps)
	for left > 0 {
		select {
		case <-done:
			left--
			continue
		case <-ctx.Done():
		}
		break
	}
	timeout := time.After(10 * time.Second)
	for ; left > 0; left-- {
		select {
		case <-done:
		case <-timeout:
			log.Error("components did not stop within 10s", "left", left)
			return
		}
	}
}

// ownAgentNode is this process's node when it runs a node agent ("" with --no-agent).
func ownAgentNode(cfg Config) string {
	if cfg.NoAgent {
		return ""
	}
	return cfg.NodeName
}
