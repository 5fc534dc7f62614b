package server

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/agent"
	"github.com/rakhsh/rakhsh/internal/controller/disk"
	"github.com/rakhsh/rakhsh/internal/controller/eventgc"
	"github.com/rakhsh/rakhsh/internal/controller/image"
	netctl "github.com/rakhsh/rakhsh/internal/controller/network"
	"github.com/rakhsh/rakhsh/internal/controller/node"
	"github.com/rakhsh/rakhsh/internal/controller/scheduler"
	"github.com/rakhsh/rakhsh/internal/controller/vm"
	"github.com/rakhsh/rakhsh/internal/controller/vmclass"
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

// components returns the controllers and the agent this process runs. They reach the API
// over the local socket like any other client.
func components(cfg Config, sockPath string, log *slog.Logger) ([]component, error) {
	cl, err := client.New(client.Config{Server: "unix://" + sockPath})
	if err != nil {
		return nil, err
	}
	// Each component names itself in the User-Agent of its requests (seen in the server's
	// debug log of refused requests).
	as := func(name string) *client.Client { return cl.WithUserAgent("rakhsh/" + name) }
	var comps []component
	if !cfg.NoControllers {
		// One informer per kind for all controllers: each kind is listed, watched and decoded
		// once in this process, however many controllers read it.
		inf := runtime.NewFactory(as("informers"), log.With("component", "informers"))
		ic := image.New(image.Config{Client: as("image-controller"), Informers: inf, DataDir: cfg.DataDir, NodeName: cfg.NodeName, Log: log.With("component", "image-controller"),
			Uploads: cfg.uploads, UploadBaseURLs: cfg.uploadBases, UploadTimeout: cfg.UploadTimeout,
			MaxUnpackedSize: cfg.MaxImageSize})
		dc := disk.New(disk.Config{Client: as("disk-controller"), Informers: inf, DataDir: cfg.DataDir, NodeName: cfg.NodeName, Log: log.With("component", "disk-controller"),
			Uploads: cfg.uploads, UploadBaseURLs: cfg.uploadBases, UploadTimeout: cfg.UploadTimeout,
			MaxUnpackedSize: cfg.MaxImageSize})
		sch, err := scheduler.New(scheduler.Config{Client: as("scheduler"), Informers: inf, Log: log.With("component", "scheduler")})
		if err != nil {
			return nil, err
		}
		vmc, err := vm.New(vm.Config{Client: as("vm-controller"), Informers: inf, Log: log.With("component", "vm-controller")})
		if err != nil {
			return nil, err
		}
		vcc, err := vmclass.New(vmclass.Config{Client: as("vmclass-controller"), Informers: inf, Log: log.With("component", "vmclass-controller")})
		if err != nil {
			return nil, err
		}
		var macRanges []network.MACRange
		if cfg.MACRanges != "" {
			if macRanges, err = network.ParseMACRanges(cfg.MACRanges); err != nil {
				return nil, fmt.Errorf("--mac-ranges: %w", err)
			}
		}
		nc, err := netctl.New(netctl.Config{Client: as("network-controller"), Informers: inf, Log: log.With("component", "network-controller"),
			MACRanges: macRanges, DefaultSubnet: cfg.DefaultSubnet})
		if err != nil {
			return nil, err
		}
		comps = append(comps,
			component{name: "informers", run: inf.Run},
			component{name: "network-controller", run: nc.Run},
			component{name: "vmclass-controller", run: vcc.Run},
			component{name: "image-controller", run: ic.Run},
			component{name: "disk-controller", run: dc.Run},
			component{name: "scheduler", run: sch.Run},
			component{name: "vm-controller", run: vmc.Run},
			component{name: "node-lifecycle", run: node.New(node.Config{Client: as("node-lifecycle"), GracePeriod: cfg.NodeGracePeriod,
				Log: log.With("component", "node-lifecycle")}).Run},
			component{name: "event-gc", run: eventgc.New(eventgc.Config{Client: as("event-gc"), TTL: cfg.EventTTL,
				Log: log.With("component", "event-gc")}).Run},
		)
	}
	if !cfg.NoAgent {
		a, err := agent.New(agent.Config{Client: as("agent"), NodeName: cfg.NodeName, DataDir: cfg.DataDir,
			HostNetworking: cfg.VMNetworking == "host", NoUpstreamDNS: cfg.NoUpstreamDNS, Accelerator: accel.Mode(cfg.Accelerator), KVMDevice: cfg.KVMDevice,
			QEMUUser: cfg.QEMUUser, DnsmasqUser: cfg.DnsmasqUser, Log: log})
		if err != nil {
			return nil, err
		}
		comps = append(comps, component{name: "agent", run: a.Run})
	}
	return comps, nil
}
