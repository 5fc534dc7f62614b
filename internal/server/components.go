package server

import (
	"context"
	"log/slog"

	"github.com/rakhsh/rakhsh/client"
)

// component is one long-running part of `rakhsh serve` next to the API server: a controller
// or the node agent. run blocks until ctx ends.
type component struct {
	name string
	run  func(ctx context.Context) error
}

// components returns the controllers and the agent this process runs, each with its own
// client on the local socket.
func components(cfg Config, sockPath string, log *slog.Logger) ([]component, error) {
	newClient := func() (*client.Client, error) {
		return client.New(client.Config{Server: "unix://" + sockPath})
	}
	_ = newClient
	var comps []component
	return comps, nil
}
