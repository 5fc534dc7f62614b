package server

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// nodeNameFile, in the data directory, keeps the node name the directory was first used
// with: a node's Local disks, leases and VMs are recorded under its name, so the name must not
// change under them (a new hostname would make every Local disk "another node's").
const nodeNameFile = "node-name"

// resolveNodeName is the node name for a data directory: the one it was first used with
// (kept in nodeNameFile) when flag is empty, else flag, which must then be that name. A
// directory used for the first time keeps flag, or the host name when flag is empty.
func resolveNodeName(dataDir, flag string) (string, error) {
	p := filepath.Join(dataDir, nodeNameFile)
	b, err := os.ReadFile(p)
	switch {
	case err == nil:
		kept := strings.TrimSpace(string(b))
		if flag == "" || flag == kept {
			return kept, nil
		}
		return "", fmt.Errorf("--node-name %q: the data directory %s belongs to node %q (%s); its Local disks and VMs are recorded under that name. Start with --node-name %s, or use another data directory", flag, dataDir, kept, p, kept)
	case !errors.Is(err, fs.ErrNotExist):
		return "", err
	}
	name := flag
	if name == "" {
		name, _ = os.Hostname()
	}
	if name == "" {
		return "", errors.New("no --node-name and no host name")
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return "", err
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, []byte(name+"\n"), 0o644); err != nil {
		return "", err
	}
	return name, os.Rename(tmp, p)
}
