// Package cli implements the `rakhsh` command line: kubectl-like commands (apply, get,
// describe, delete, wait, ...) on top of the Go client. Every command is built by a
// constructor that receives the shared *cliContext and writes to cmd.OutOrStdout() and
// cmd.ErrOrStderr(), so tests and other packages can run it in-process.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/rakhsh/rakhsh/client"
)

// Version is the client version, set at build time with
// -ldflags "-X github.com/rakhsh/rakhsh/internal/cli.Version=v1.2.3".
var Version = "dev"

// Environment variables that provide defaults for the global flags.
const (
	EnvServer    = "RAKHSH_SERVER"
	EnvToken     = "RAKHSH_TOKEN"
	EnvTokenFile = "RAKHSH_TOKEN_FILE"
	EnvCAFile    = "RAKHSH_CA_FILE"
)

// DefaultProject is the project used when -n is not given.
const DefaultProject = "default"

// cliContext carries what every command needs: the global flags (and from them a client),
// the clock and the environment. Commands receive it at construction time and read it when
// they run, after flags are parsed.
type cliContext struct {
	server         string
	token          string
	tokenFile      string
	caFile         string
	insecure       bool
	namespace      string
	project        string // --project, an alias of --namespace
	requestTimeout string
	contextName    string // --context: a context of the config file (ctxconfig.go)

	root   *cobra.Command
	now    func() time.Time
	getenv func(string) string
}

func newCLIContext() *cliContext {
	return &cliContext{now: time.Now, getenv: os.Getenv}
}

// flagChanged reports whether a global flag was given on the command line.
func (cc *cliContext) flagChanged(name string) bool {
	if cc.root == nil {
		return false
	}
	f := cc.root.PersistentFlags().Lookup(name)
	return f != nil && f.Changed
}

// Namespace returns the project commands work in: -n/--project, else "default".
func (cc *cliContext) Namespace() string {
	switch {
	case cc.flagChanged("namespace") && cc.namespace != "":
		return cc.namespace
	case cc.flagChanged("project") && cc.project != "":
		return cc.project
	case cc.namespace != "":
		return cc.namespace
	}
	return DefaultProject
}

// NamespaceExplicit reports whether the user chose the project with -n/--project.
func (cc *cliContext) NamespaceExplicit() bool {
	return cc.flagChanged("namespace") || cc.flagChanged("project")
}

// Config builds the client configuration from flags, then the environment.
func (cc *cliContext) Config() (client.Config, error) {
	cfg := client.Config{Server: cc.server, Token: cc.token, CAFile: cc.caFile, Insecure: cc.insecure}
	if !cc.flagChanged("server") && cfg.Server == "" {
		cfg.Server = cc.getenv(EnvServer)
	}
	// The token: --token, --token-file, $RAKHSH_TOKEN, $RAKHSH_TOKEN_FILE, in this order.
	if cc.token != "" && cc.tokenFile != "" {
		return cfg, usageErrorf("--token and --token-file are exclusive: give one (--token-file keeps the token out of the process list)")
	}
	tokenFile := cc.tokenFile
	if cfg.Token == "" && tokenFile == "" {
		cfg.Token = cc.getenv(EnvToken)
		if cfg.Token == "" {
			tokenFile = cc.getenv(EnvTokenFile)
		}
	}
	if cfg.Token == "" && tokenFile != "" {
		tok, err := client.ReadTokenFile(tokenFile)
		if err != nil {
			return cfg, err
		}
		cfg.Token = tok
	}
	if !cc.flagChanged("ca-file") && cfg.CAFile == "" {
		cfg.CAFile = cc.getenv(EnvCAFile)
	}
	if err := cc.applyContext(&cfg); err != nil {
		return cfg, err
	}
	if cc.requestTimeout != "" && cc.requestTimeout != "0" {
		d, err := parseDuration(cc.requestTimeout)
		if err != nil {
			return cfg, fmt.Errorf("--request-timeout: %w", err)
		}
		cfg.Timeout = d
	}
	return cfg, nil
}

// ServerAddress is the address the client will use, for messages.
func (cc *cliContext) ServerAddress() string {
	cfg, _ := cc.Config()
	if cfg.Server == "" {
		return "unix://" + client.DefaultSocket
	}
	return cfg.Server
}

// Client builds a client from the global flags.
func (cc *cliContext) Client() (*client.Client, error) {
	cfg, err := cc.Config()
	if err != nil {
		return nil, err
	}
	return client.New(cfg)
}

// withClient makes a command's RunE that builds the client (Client) before it runs run.
func (cc *cliContext) withClient(run func(cmd *cobra.Command, args []string, c *client.Client) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		c, err := cc.Client()
		if err != nil {
			return err
		}
		return run(cmd, args, c)
	}
}

// parseDuration accepts Go durations ("30s", "2m") and bare seconds ("30").
func parseDuration(s string) (time.Duration, error) {
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return time.Duration(n) * time.Second, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q (use e.g. 30s, 2m or a number of seconds)", s)
	}
	return d, nil
}

// NewRootCommand builds the `rakhsh` command with its global flags and client commands.
func NewRootCommand() *cobra.Command {
	return newRootCommand(newCLIContext())
}

func newRootCommand(cc *cliContext) *cobra.Command {
	root := &cobra.Command{
		Use:   "rakhsh",
		Short: "Rakhsh: self-service virtual machines",
		Long: "rakhsh manages virtual machines, disks, images and networks through the Rakhsh API.\n\n" +
			"The server is reached over the local socket (" + client.DefaultSocket + ") unless --server\n" +
			"or " + EnvServer + " names another (unix:///path/rakhsh.sock or https://host:port).",
		SilenceUsage:  true,
		SilenceErrors: true,
		// The root command alone prints help.
		Run: func(cmd *cobra.Command, _ []string) { _ = cmd.Help() },
	}
	cc.root = root
	pf := root.PersistentFlags()
	pf.StringVar(&cc.server, "server", "", "API server: unix:///path/rakhsh.sock or https://host:port, or several API servers of one control plane separated by commas, failed over in turn (env "+EnvServer+"; default unix://"+client.DefaultSocket+")")
	pf.StringVar(&cc.token, "token", "", "bearer token for https servers (env "+EnvToken+"); other local users can read it in the process list: prefer --token-file")
	pf.StringVar(&cc.tokenFile, "token-file", "", "file holding the bearer token for https servers on its first line (env "+EnvTokenFile+")")
	pf.StringVar(&cc.caFile, "ca-file", "", "PEM file of CA certificates to trust for https (env "+EnvCAFile+")")
	pf.BoolVar(&cc.insecure, "insecure-skip-tls-verify", false, "do not verify the server's certificate (insecure; for tests only)")
	pf.StringVarP(&cc.namespace, "namespace", "n", "", "project to work in (default \""+DefaultProject+"\")")
	pf.StringVar(&cc.project, "project", "", "alias of --namespace")
	pf.StringVar(&cc.requestTimeout, "request-timeout", "0", "time limit of each request, e.g. 30s (0: the client's default, 60s)")
	pf.StringVar(&cc.contextName, "context", "", "context of the config file to use (~/.config/rakhsh/config.yaml, env "+EnvConfig+"; default: its current context when no --server or token is given)")

	root.AddCommand(
		newApplyCommand(cc),
		newCreateCommand(cc),
		newPatchCommand(cc),
		newEditCommand(cc),
		newGetCommand(cc),
		newDescribeCommand(cc),
		newDeleteCommand(cc),
		newWaitCommand(cc),
		newVersionCommand(cc),
		newAPIResourcesCommand(cc),
		newConsoleCommand(cc),
		newVNCCommand(cc),
		newLogsCommand(cc),
		newVMCommand(cc),
		newImageCommand(cc),
		newLabelCommand(cc),
		newNodeCommand(cc),
		newDiskCommand(cc),
		newBackupCommand(cc),
		newUICommand(cc),
	)
	root.AddCommand(identityCommands(cc)...)
	addCompletions(cc, root)
	return root
}

// exitError is returned by a command that already reported its failure(s) on stderr.
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// errReported says: something failed and was already printed; exit 1.
var errReported error = &exitError{code: 1}

// eachReported calls do for each item, printing its error on w and going on with the next;
// it returns errReported when one failed.
func eachReported[T any](w io.Writer, items []T, do func(T) error) error {
	failed := false
	for _, it := range items {
		if err := do(it); err != nil {
			printError(w, err)
			failed = true
		}
	}
	if failed {
		return errReported
	}
	return nil
}

// Execute runs root with SIGINT/SIGTERM cancelling the command's context, prints any error to
// root's stderr and returns the process exit code.
func Execute(root *cobra.Command) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return executeContext(ctx, root)
}

func executeContext(ctx context.Context, root *cobra.Command) int {
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	printError(root.ErrOrStderr(), err)
	if cmd != nil && isUsageError(err) {
		fmt.Fprintf(root.ErrOrStderr(), "See '%s --help' for usage.\n", cmd.CommandPath())
	}
	return 1
}

// usageError marks a mistake in the command line.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usageErrorf(format string, a ...any) error { return &usageError{fmt.Sprintf(format, a...)} }

func isUsageError(err error) bool {
	var ue *usageError
	if errors.As(err, &ue) {
		return true
	}
	// cobra's own flag and argument errors
	s := err.Error()
	return strings.HasPrefix(s, "unknown flag") || strings.HasPrefix(s, "unknown shorthand flag") ||
		strings.HasPrefix(s, "unknown command") || strings.Contains(s, "flag needs an argument") ||
		strings.HasPrefix(s, "invalid argument") || strings.HasPrefix(s, "accepts ") || strings.HasPrefix(s, "requires ")
}

// printError writes err the way kubectl does: "Error from server (Reason): message" for API
// errors, "error: message" for everything else.
func printError(w io.Writer, err error) {
	var ce *client.Error
	if errors.As(err, &ce) {
		if ce.Status.Reason != "" {
			fmt.Fprintf(w, "Error from server (%s): %s\n", ce.Status.Reason, err.Error())
		} else {
			fmt.Fprintf(w, "Error from server: %s\n", err.Error())
		}
		return
	}
	msg := err.Error()
	if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EACCES) {
		msg += " (is `rakhsh serve` running? choose the server with --server or " + EnvServer + ")"
	}
	fmt.Fprintf(w, "error: %s\n", msg)
}
