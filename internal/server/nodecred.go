package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/registry"
)

// NodeCredentialFile is the file in an agent's data dir that keeps its node credential
// (mode 0600): JSON {"server", "node", "token"}.
const NodeCredentialFile = "node-credential.json"

// storedCredential is the content of NodeCredentialFile.
type storedCredential struct {
	Server string `json:"server"`
	Node   string `json:"node"`
	Token  string `json:"token"`
}

func readNodeCredential(path string) (*storedCredential, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	st, err := os.Stat(path)
	if err == nil && st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("node credential %s is readable by other users (mode %04o): chmod 600 it", path, st.Mode().Perm())
	}
	var c storedCredential
	if err := json.Unmarshal(data, &c); err != nil || c.Node == "" || c.Token == "" {
		return nil, fmt.Errorf("node credential %s is not valid (want JSON with node and token): remove it and join again with a new join token", path)
	}
	return &c, nil
}

// writeNodeCredential writes the credential to path with mode 0600, through a temporary
// file, so that a crash leaves either no credential or a whole one.
func writeNodeCredential(path string, c storedCredential) error {
	data, err := json.Marshal(c)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	_ = os.Remove(tmp)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("writing the node credential: %w", err)
	}
	_, err = f.Write(append(data, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("writing the node credential: %w", err)
	}
	return nil
}

// agentCredential decides the bearer token of `rakhsh agent`, and the node name when the
// credential names it:
//   - a node credential in the data dir wins (a restart needs no join token);
//   - else a join token is exchanged once for a node credential, which is kept there;
//   - else the admin token (--token, --token-file), as before node credentials.
func agentCredential(ctx context.Context, cfg *AgentConfig, joinToken string, log *slog.Logger) error {
	path := filepath.Join(cfg.DataDir, NodeCredentialFile)
	cred, err := readNodeCredential(path)
	switch {
	case err == nil:
		if cfg.NodeName != "" && cfg.NodeName != cred.Node {
			return fmt.Errorf("--node-name %q: this data dir holds the credential of node %q (%s); use that name, or another data dir", cfg.NodeName, cred.Node, path)
		}
		if cfg.Token != "" {
			log.Warn("a node credential is in the data dir: the admin token given is not used", "node", cred.Node)
		}
		if joinToken != "" {
			log.Info("a node credential is in the data dir: the join token is not needed and not used", "node", cred.Node)
		}
		cfg.NodeName, cfg.Token = cred.Node, cred.Token
		return nil
	case !errors.Is(err, fs.ErrNotExist):
		return err
	}
	if joinToken == "" {
		return nil // the admin token, if any
	}
	if cfg.NodeName == "" {
		cfg.NodeName, _ = os.Hostname()
		cfg.NodeName = strings.ToLower(cfg.NodeName)
	}
	if msg := registry.ValidateName(cfg.NodeName); msg != "" {
		return fmt.Errorf("node name %q: %s (give --node-name)", cfg.NodeName, msg)
	}
	c, err := client.New(client.Config{Server: cfg.Server, Token: joinToken, CAFile: cfg.CAFile})
	if err != nil {
		return err
	}
	nc, err := c.WithUserAgent("rakhsh/agent-join").NodeCredential(ctx, cfg.NodeName)
	if err != nil {
		return fmt.Errorf("joining as node %q: %w", cfg.NodeName, err)
	}
	if err := writeNodeCredential(path, storedCredential{Server: cfg.Server, Node: nc.Node, Token: nc.Token}); err != nil {
		return err
	}
	log.Info("joined the cluster: the node credential is kept in the data dir", "node", nc.Node, "file", path)
	cfg.Token = nc.Token
	return nil
}
