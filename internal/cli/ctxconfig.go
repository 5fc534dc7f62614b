package cli

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/rakhsh/rakhsh/client"
)

// The user's config file: contexts like kubeconfig's, each a server, the CA to trust and a
// token (from `rakhsh login`). The CLI uses the current context (or --context) when no
// --server, --token, --token-file or their environment variables are given.

// EnvConfig names another config file.
const EnvConfig = "RAKHSH_CONFIG"

// maxConfigSize bounds the config file read.
const maxConfigSize = 1 << 20

// UserConfig is the config file.
type UserConfig struct {
	CurrentContext string        `json:"current-context,omitempty"`
	Contexts       []UserContext `json:"contexts,omitempty"`
}

// UserContext is one server and the credentials for it.
type UserContext struct {
	Name    string    `json:"name"`
	Server  string    `json:"server"`
	CAFile  string    `json:"ca-file,omitempty"`
	Token   string    `json:"token,omitempty"`
	User    string    `json:"user,omitempty"`
	Project string    `json:"project,omitempty"`
	Expires time.Time `json:"expires,omitempty"`
}

// configPath is the config file's path: $RAKHSH_CONFIG, $XDG_CONFIG_HOME/rakhsh/config.yaml
// or ~/.config/rakhsh/config.yaml.
func (cc *cliContext) configPath() (string, error) {
	if p := cc.getenv(EnvConfig); p != "" {
		return p, nil
	}
	if x := cc.getenv("XDG_CONFIG_HOME"); x != "" {
		return filepath.Join(x, "rakhsh", "config.yaml"), nil
	}
	home := cc.getenv("HOME")
	if home == "" {
		h, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("no home directory for the config file: set %s", EnvConfig)
		}
		home = h
	}
	return filepath.Join(home, ".config", "rakhsh", "config.yaml"), nil
}

// ParseUserConfig decodes a config file and checks it.
func ParseUserConfig(data []byte) (*UserConfig, error) {
	if len(data) > maxConfigSize {
		return nil, fmt.Errorf("the config file is larger than %d bytes", maxConfigSize)
	}
	var c UserConfig
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		return nil, fmt.Errorf("the config file is not valid: %v", err)
	}
	seen := map[string]bool{}
	for i, x := range c.Contexts {
		switch {
		case x.Name == "":
			return nil, fmt.Errorf("the config file's context %d has no name", i)
		case seen[x.Name]:
			return nil, fmt.Errorf("the config file names context %q twice", x.Name)
		case x.Server == "":
			return nil, fmt.Errorf("the config file's context %q has no server", x.Name)
		}
		seen[x.Name] = true
	}
	if c.CurrentContext != "" && !seen[c.CurrentContext] {
		return nil, fmt.Errorf("the config file's current-context %q is not one of its contexts", c.CurrentContext)
	}
	return &c, nil
}

// loadUserConfig reads the config file; a missing file is an empty config.
func (cc *cliContext) loadUserConfig() (*UserConfig, string, error) {
	p, err := cc.configPath()
	if err != nil {
		return nil, "", err
	}
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return &UserConfig{}, p, nil
	}
	if err != nil {
		return nil, p, err
	}
	defer f.Close()
	data := make([]byte, maxConfigSize+1)
	n, _ := io.ReadFull(f, data)
	c, err := ParseUserConfig(data[:n])
	if err != nil {
		return nil, p, fmt.Errorf("%s: %w", p, err)
	}
	return c, p, nil
}

// saveUserConfig writes the config file (0600, in a 0700 directory) through a temporary
// file, so a crash leaves the old one.
func saveUserConfig(c *UserConfig, p string) error {
	data, err := yaml.Marshal(c)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

func (c *UserConfig) find(name string) *UserContext {
	for i := range c.Contexts {
		if c.Contexts[i].Name == name {
			return &c.Contexts[i]
		}
	}
	return nil
}

// set adds or replaces a context.
func (c *UserConfig) set(x UserContext) {
	if old := c.find(x.Name); old != nil {
		*old = x
		return
	}
	c.Contexts = append(c.Contexts, x)
}

// explicitConnection says the command line or the environment chose a server or a token.
func (cc *cliContext) explicitConnection() bool {
	return cc.server != "" || cc.token != "" || cc.tokenFile != "" || cc.getenv(EnvServer) != "" ||
		cc.getenv(EnvToken) != "" || cc.getenv(EnvTokenFile) != ""
}

// applyContext fills cfg from the chosen context: --context, or the current context when the
// command line and environment name no server and no token.
func (cc *cliContext) applyContext(cfg *client.Config) error {
	name := cc.contextName
	if name == "" && cc.explicitConnection() {
		return nil
	}
	c, p, err := cc.loadUserConfig()
	if err != nil {
		if name == "" {
			return nil // a broken config file does not stop the unix socket's use
		}
		return err
	}
	if name == "" {
		name = c.CurrentContext
		if name == "" {
			return nil
		}
	}
	x := c.find(name)
	if x == nil {
		return usageErrorf("no context %q in %s (see rakhsh config get-contexts)", name, p)
	}
	cfg.Server = cmp.Or(cfg.Server, x.Server)
	cfg.Token = cmp.Or(cfg.Token, x.Token)
	cfg.CAFile = cmp.Or(cfg.CAFile, x.CAFile)
	return nil
}
