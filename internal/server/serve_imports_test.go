package server

import (
	"fmt"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/rakhsh/rakhsh/internal/images"
)

func TestServeImportFlags(t *testing.T) {
	cmd := NewServeCommand()
	// Parse the flags as the command line would, then validate what they say.
	if err := cmd.ParseFlags([]string{"--data-dir", t.TempDir(), "--allow-import-from", "10.20.0.0/16,127.0.0.1/32",
		"--allow-import-from", "fd00::/8", "--min-free-space", "20Gi"}); err != nil {
		t.Fatal(err)
	}
	cfg := configOf(t, cmd)
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(cfg.AllowImportFrom); got != "[10.20.0.0/16 127.0.0.1/32 fd00::/8]" {
		t.Errorf("allow list %s", got)
	}
	if cfg.MinFreeSpace != (images.MinFree{Bytes: 20 << 30}) {
		t.Errorf("min free %+v", cfg.MinFreeSpace)
	}
	if cfg.MaxImageSize != 128<<30 {
		t.Errorf("default max image size %d, want 128Gi", cfg.MaxImageSize)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--allow-import-from", "10.0.0.0/8,mirror.lan"}, `--allow-import-from "mirror.lan": not a CIDR`},
		{[]string{"--allow-import-from", "10.0.0.300/8"}, `--allow-import-from "10.0.0.300/8": not a CIDR`},
		{[]string{"--min-free-space", "lots"}, `--min-free-space "lots"`},
		{[]string{"--min-free-space", "150%"}, `--min-free-space "150%"`},
	} {
		cmd := NewServeCommand()
		if err := cmd.ParseFlags(append([]string{"--data-dir", t.TempDir()}, tc.args...)); err != nil {
			t.Fatal(err)
		}
		err := configOf(t, cmd).validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got %v, want an error with %q", tc.args, err, tc.want)
		}
	}
}

// configOf is the Config the command's flags describe (the fields of imports).
func configOf(t *testing.T, cmd *cobra.Command) *Config {
	t.Helper()
	f := cmd.Flags()
	c := &Config{VMRuntime: VMRuntime{Accelerator: "auto"}}
	var err error
	if c.DataDir, err = f.GetString("data-dir"); err != nil {
		t.Fatal(err)
	}
	if c.allowImportFrom, err = f.GetStringSlice("allow-import-from"); err != nil {
		t.Fatal(err)
	}
	if c.minFreeSpace, err = f.GetString("min-free-space"); err != nil {
		t.Fatal(err)
	}
	if c.maxImageSize, err = f.GetString("max-image-size"); err != nil {
		t.Fatal(err)
	}
	return c
}
