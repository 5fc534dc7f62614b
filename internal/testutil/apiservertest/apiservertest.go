// Package apiservertest runs a real API server for the tests of the packages that use one
// (the CLI, the node server): a bolt store in a temporary directory and the local handler
// on a unix socket.
package apiservertest

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/apiserver"
	"github.com/rakhsh/rakhsh/internal/store/bolt"
	"github.com/rakhsh/rakhsh/internal/testutil/apitest"
)

// Local is an API server started by Start.
type Local struct {
	Dir    string // the temporary directory of the store and the socket
	Sock   string // the path of the unix socket
	Server *apiserver.Server
	Client *client.Client // an admin client of Sock
}

// Start runs an API server with a bolt store in a new directory under /tmp named by pattern
// (short, for the socket's path), serving its local handler on a unix socket there. All of
// it is stopped and removed at the end of the test.
func Start(t testing.TB, pattern string) *Local {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", pattern)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	st, err := bolt.Open(filepath.Join(dir, "db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	s := apiserver.New(apiserver.Config{Store: st, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	t.Cleanup(s.Shutdown)
	sock := filepath.Join(dir, "api.sock")
	return &Local{Dir: dir, Sock: sock, Server: s, Client: apitest.ServeUnix(t, sock, s.LocalHandler())}
}
