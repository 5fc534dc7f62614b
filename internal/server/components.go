package server

import (
	"context"
	"log/slog"

	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/controller/disk"
	"github.com/rakhsh/rakhsh/internal/controller/image"
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
	var comps []component
	if !cfg.NoControllers {
		ic := image.New(image.Config{Client: cl, DataDir: cfg.DataDir, Log: log.With("component", "image-controller")})
		dc := disk.New(disk.Config{Client: cl, DataDir: cfg.DataDir, Log: log.With("component", "disk-controller")})
		comps = append(comps,
			component{name: "image-controller", run: ic.Run},
			component{name: "disk-controller", run: dc.Run},
		)
	}
	return comps, nil
}
