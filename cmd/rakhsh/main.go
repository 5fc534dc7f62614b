// Command rakhsh is the Rakhsh CLI and server in one binary.
package main

import (
	"os"

	"github.com/rakhsh/rakhsh/internal/cli"
	"github.com/rakhsh/rakhsh/internal/server"
)

func main() {
	root := cli.NewRootCommand()
	root.AddCommand(server.NewServeCommand(), server.NewAgentCommand(), server.NewStoreCommand(), server.NewFenceGuardCommand())
	os.Exit(cli.Execute(root))
}
