package cli

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

// identityCommands are `rakhsh user`, `token`, `login`, `whoami` and `config`
// (docs/identity.md).
func identityCommands(cc *cliContext) []*cobra.Command {
	return []*cobra.Command{newUserCommand(cc), newTokenCommand(cc), newLoginCommand(cc), newWhoAmICommand(cc), newConfigCommand(cc), newAuditCommand(cc)}
}

func newUserCommand(cc *cliContext) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "user",
		Aliases: []string{"users"},
		Short:   "Create, list and disable users; set their passwords",
		Long: `Manage the users of the API (ClusterAdmin). A user's rights in a project come from the
project's spec.members (user:NAME or group:NAME, role Admin, User or Viewer); spec.clusterRole
(ClusterAdmin, ClusterViewer) gives rights across the cluster. See docs/identity.md.`,
		Run: func(cmd *cobra.Command, _ []string) { _ = cmd.Help() },
	}
	cmd.AddCommand(newUserCreateCommand(cc), newListCommand(cc, "users", "List the users (as rakhsh get users)", "team=physics"), newUserSetPasswordCommand(cc),
		newUserDisableCommand(cc, true), newUserDisableCommand(cc, false))
	return cmd
}

func newUserCreateCommand(cc *cliContext) *cobra.Command {
	var spec v1alpha1.UserSpec
	var role string
	cmd := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a user",
		Args:  cobra.ExactArgs(1),
		RunE: cc.withClient(func(cmd *cobra.Command, args []string, c *client.Client) error {
			spec.ClusterRole = v1alpha1.ClusterRole(role)
			u := v1alpha1.User{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "User"},
				ObjectMeta: v1alpha1.ObjectMeta{Name: args[0]}, Spec: spec}
			if err := c.Create(cmd.Context(), "users", "", &u, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "user/%s created\n", args[0])
			return nil
		}),
	}
	f := cmd.Flags()
	f.StringVar(&spec.DisplayName, "display-name", "", "the name shown to people")
	f.StringVar(&spec.Email, "email", "", "the user's e-mail address")
	f.StringVar(&role, "cluster-role", "", "ClusterAdmin or ClusterViewer (default: none, project roles only)")
	f.StringSliceVar(&spec.Groups, "group", nil, "a group of the user (repeatable); project members group:NAME apply")
	return cmd
}

func newUserSetPasswordCommand(cc *cliContext) *cobra.Command {
	var fromStdin bool
	cmd := &cobra.Command{
		Use:   "set-password NAME",
		Short: "Set a user's local password (your own, or anybody's as ClusterAdmin)",
		Long: `Set the password 'rakhsh login' checks. The password is read from the terminal (twice) or,
with --password-stdin, from the first line of standard input; it is sent in the request body
only, and the server keeps only its bcrypt hash.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pw, err := readPassword(cmd, fromStdin)
			if err != nil {
				return err
			}
			c, err := cc.Client()
			if err != nil {
				return err
			}
			if err := c.SetPassword(cmd.Context(), args[0], pw); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "password of user %s set\n", args[0])
			return nil
		},
	}
	cmd.Flags().BoolVar(&fromStdin, "password-stdin", false, "read the password from the first line of standard input")
	return cmd
}

func newUserDisableCommand(cc *cliContext, disable bool) *cobra.Command {
	use, short := "disable NAME", "Disable a user: every token and login of the user is refused at once"
	if !disable {
		use, short = "enable NAME", "Enable a disabled user"
	}
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: cc.withClient(func(cmd *cobra.Command, args []string, c *client.Client) error {
			patch, _ := json.Marshal(map[string]any{"spec": map[string]any{"disabled": disable}})
			if err := c.Patch(cmd.Context(), "users", "", args[0], patch, nil); err != nil {
				return err
			}
			word := "disabled"
			if !disable {
				word = "enabled"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "user/%s %s\n", args[0], word)
			return nil
		}),
	}
}

func newTokenCommand(cc *cliContext) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "token",
		Aliases: []string{"tokens"},
		Short:   "Create, list and revoke API tokens",
		Long: `API tokens let scripts and other programs act as a user. A token is printed once; the server
keeps only its hash. A token may be limited to one project (--project) and capped to a role
there (--role); it never has more rights than its user. See docs/identity.md.`,
		Run: func(cmd *cobra.Command, _ []string) { _ = cmd.Help() },
	}
	var req v1alpha1.TokenRequest
	var role string
	create := &cobra.Command{
		Use:   "create",
		Short: "Make a token and print it (once)",
		Args:  cobra.NoArgs,
		RunE: cc.withClient(func(cmd *cobra.Command, _ []string, c *client.Client) error {
			req.Role = v1alpha1.ProjectRole(role)
			tok, err := c.CreateToken(cmd.Context(), req)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), tok.Token)
			fmt.Fprintf(cmd.ErrOrStderr(), "token %s of user %s, valid until %s; it is not shown again\n", tok.ID, tok.User, tok.Expires.UTC().Format(time.RFC3339))
			return nil
		}),
	}
	f := create.Flags()
	f.StringVar(&req.User, "user", "", "the user the token acts as (default: you; another user: ClusterAdmin only)")
	f.StringVar(&req.Project, "project", "", "limit the token to this project")
	f.StringVar(&role, "role", "", "cap the token's role in --project: Admin, User or Viewer")
	f.StringVar(&req.TTL, "ttl", "720h", "how long the token is valid (at most 8760h)")
	f.StringVar(&req.Description, "description", "", "a note shown by token list")
	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List your tokens (a ClusterAdmin: everybody's), without their secrets",
		Args:    cobra.NoArgs,
		RunE: cc.withClient(func(cmd *cobra.Command, _ []string, c *client.Client) error {
			l, err := c.ListTokens(cmd.Context())
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 8, 3, ' ', 0)
			fmt.Fprintln(tw, "ID\tUSER\tPROJECT\tROLE\tEXPIRES\tSTATE\tDESCRIPTION")
			now := cc.now()
			for _, t := range l.Items {
				state := "valid"
				switch {
				case t.Revoked != nil:
					state = "revoked"
				case !now.Before(t.Expires.Time):
					state = "expired"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.User, dash(t.Project), dash(string(t.Role)),
					t.Expires.UTC().Format(time.RFC3339), state, t.Description)
			}
			return tw.Flush()
		}),
	}
	revoke := &cobra.Command{
		Use:   "revoke ID...",
		Short: "Revoke tokens: they are refused at once",
		Args:  cobra.MinimumNArgs(1),
		RunE: cc.withClient(func(cmd *cobra.Command, args []string, c *client.Client) error {
			return eachReported(cmd.ErrOrStderr(), args, func(id string) error {
				if err := c.RevokeToken(cmd.Context(), id); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "token %s revoked\n", id)
				return nil
			})
		}),
	}
	cmd.AddCommand(create, list, revoke)
	return cmd
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newLoginCommand(cc *cliContext) *cobra.Command {
	var username, ttl, ctxName, project string
	var fromStdin, oidcStdin, oidcDevice bool
	var oidcCA string
	cmd := &cobra.Command{
		Use:   "login",
		Short: "Log in with a user name and password; the token is kept in your config file",
		Long: `Log in to the server named by --server (https://HOST:PORT, with --ca-file when its CA is not
trusted by the system) and keep the short-lived token (12 hours by default) in a context of
~/.config/rakhsh/config.yaml (or $` + EnvConfig + `), which becomes the current context. Later
commands without --server or a token use it. See docs/identity.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			server := cc.server
			if server == "" {
				server = cc.getenv(EnvServer)
			}
			caFile := cc.caFile
			if caFile == "" {
				caFile = cc.getenv(EnvCAFile)
			}
			conf, p, err := cc.loadUserConfig()
			if err != nil {
				return err
			}
			if server == "" {
				// Log in again to the chosen or current context's server.
				name := cc.contextName
				if name == "" {
					name = conf.CurrentContext
				}
				if x := conf.find(name); x != nil {
					server = x.Server
					if caFile == "" {
						caFile = x.CAFile
					}
				}
			}
			if !strings.HasPrefix(server, "https://") {
				return usageErrorf("login needs an https:// server: give --server https://HOST:PORT (the local socket needs no login)")
			}
			if caFile != "" {
				if caFile, err = filepath.Abs(caFile); err != nil {
					return err
				}
			}
			var tok *v1alpha1.Token
			if oidcStdin && oidcDevice {
				return usageErrorf("give --oidc or --oidc-id-token-stdin, not both")
			}
			if oidcStdin || oidcDevice {
				if username != "" || fromStdin || ttl != "" {
					return usageErrorf("--oidc and --oidc-id-token-stdin take no --username, --password-stdin or --ttl: the ID token names the user and its expiry")
				}
				var idt string
				if oidcDevice {
					idt, err = oidcDeviceFlow(cmd, server, caFile, cc.insecure, oidcCA)
				} else {
					idt, err = readIDToken(cmd)
				}
				if err != nil {
					return err
				}
				if tok, err = idTokenLogin(cmd, server, caFile, cc.insecure, idt); err != nil {
					return err
				}
				username = tok.User
			} else {
				if username == "" {
					return usageErrorf("give --username (or --oidc, or --oidc-id-token-stdin)")
				}
				pw, err := readPasswordOnce(cmd, fromStdin)
				if err != nil {
					return err
				}
				c, err := client.New(client.Config{Server: server, CAFile: caFile, Insecure: cc.insecure})
				if err != nil {
					return err
				}
				if tok, err = c.Login(cmd.Context(), v1alpha1.LoginRequest{Username: username, Password: pw, TTL: ttl}); err != nil {
					return err
				}
			}
			if ctxName == "" {
				ctxName = cc.contextName
			}
			if ctxName == "" {
				host := server
				if u, err := url.Parse(server); err == nil && u.Host != "" {
					host = u.Host
				}
				ctxName = username + "@" + host
			}
			conf.set(UserContext{Name: ctxName, Server: server, CAFile: caFile, Token: tok.Token, User: username, Project: project, Expires: tok.Expires.Time})
			conf.CurrentContext = ctxName
			if err := saveUserConfig(conf, p); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "logged in as %s; context %q (token valid until %s) saved in %s\n", username, ctxName, tok.Expires.UTC().Format(time.RFC3339), p)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&username, "username", "u", "", "your user name")
	f.BoolVar(&oidcDevice, "oidc", false, "log in through the server's OpenID Connect issuer with the device flow: open the URL it prints in any browser, enter the code, log in there; the ID token it gives is kept")
	f.StringVar(&oidcCA, "oidc-ca-file", "", "with --oidc: PEM file of CA certificates to trust for the issuer (default: the system's)")
	f.BoolVar(&oidcStdin, "oidc-id-token-stdin", false, "keep an OpenID Connect ID token read from standard input (from your identity provider) instead of logging in with a password; the server must trust its issuer (serve --oidc-issuer)")
	f.BoolVar(&fromStdin, "password-stdin", false, "read the password from the first line of standard input")
	f.StringVar(&ttl, "ttl", "", "how long the login token is valid (default 12h, at most 24h)")
	f.StringVar(&ctxName, "context-name", "", "name of the context to save (default USER@HOST)")
	f.StringVar(&project, "default-project", "", "project noted in the context")
	return cmd
}

// readIDToken reads an ID token from the first line of standard input.
func readIDToken(cmd *cobra.Command) (string, error) {
	line, err := bufio.NewReader(io.LimitReader(cmd.InOrStdin(), 64<<10)).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	return strings.TrimSpace(line), nil
}

// idTokenLogin asks the server who an ID token is (which checks it); the token's expiry is
// its "exp" claim.
func idTokenLogin(cmd *cobra.Command, server, caFile string, insecure bool, idt string) (*v1alpha1.Token, error) {
	parts := strings.Split(idt, ".")
	if len(parts) != 3 {
		return nil, usageErrorf("standard input holds no ID token (a JWT: three base64 parts joined by dots)")
	}
	var claims struct {
		Exp int64 `json:"exp"`
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil || json.Unmarshal(payload, &claims) != nil || claims.Exp == 0 {
		return nil, usageErrorf("the ID token's payload has no expiry (exp claim)")
	}
	c, err := client.New(client.Config{Server: server, CAFile: caFile, Insecure: insecure, Token: idt})
	if err != nil {
		return nil, err
	}
	who, err := c.WhoAmI(cmd.Context())
	if err != nil {
		return nil, fmt.Errorf("the server refused the ID token: %w", err)
	}
	if who.User == "" {
		return nil, fmt.Errorf("the server takes the ID token for %s, not for a user", who.Name)
	}
	return &v1alpha1.Token{Token: idt, User: who.User, Expires: v1alpha1.NewTime(time.Unix(claims.Exp, 0))}, nil
}

// readPasswordOnce reads a password from the terminal without echo or, with fromStdin, the
// first line of standard input.
func readPasswordOnce(cmd *cobra.Command, fromStdin bool) (string, error) {
	in := cmd.InOrStdin()
	if !fromStdin {
		f, isFile := in.(*os.File)
		if !isFile || !term.IsTerminal(int(f.Fd())) {
			return "", usageErrorf("standard input is not a terminal: pass the password with --password-stdin")
		}
		return promptPassword(cmd, f, "Password: ")
	}
	line, err := bufio.NewReader(io.LimitReader(in, 4096)).ReadString('\n')
	if err != nil && err != io.EOF {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return "", usageErrorf("no password on standard input")
	}
	return line, nil
}

// readPassword reads the password from the terminal (twice, without echo) or, with
// fromStdin, the first line of standard input.
func readPassword(cmd *cobra.Command, fromStdin bool) (string, error) {
	pw, err := readPasswordOnce(cmd, fromStdin)
	if err != nil {
		return "", err
	}
	if fromStdin {
		return pw, nil
	}
	again, err := promptPassword(cmd, cmd.InOrStdin().(*os.File), "Again: ") // a terminal: readPasswordOnce read it
	if err != nil {
		return "", err
	}
	if pw != again {
		return "", fmt.Errorf("the passwords differ")
	}
	return pw, nil
}

// promptPassword writes prompt and reads a line from the terminal f without echo.
func promptPassword(cmd *cobra.Command, f *os.File, prompt string) (string, error) {
	fmt.Fprint(cmd.ErrOrStderr(), prompt)
	b, err := term.ReadPassword(int(f.Fd()))
	fmt.Fprintln(cmd.ErrOrStderr())
	return string(b), err
}

func newWhoAmICommand(cc *cliContext) *cobra.Command {
	return &cobra.Command{
		Use:   "whoami",
		Short: "Show who the server takes you for: user, groups, cluster role, project roles",
		Args:  cobra.NoArgs,
		RunE: cc.withClient(func(cmd *cobra.Command, _ []string, c *client.Client) error {
			w, err := c.WhoAmI(cmd.Context())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "name:         %s\n", w.Name)
			if w.Admin {
				fmt.Fprintln(out, "admin:        yes (every request allowed)")
			}
			if w.User != "" {
				fmt.Fprintf(out, "user:         %s\n", w.User)
				fmt.Fprintf(out, "groups:       %s\n", dash(strings.Join(w.Groups, ",")))
				fmt.Fprintf(out, "cluster role: %s\n", dash(string(w.ClusterRole)))
				if w.Token != "" {
					fmt.Fprintf(out, "token:        %s\n", w.Token)
				}
				var ps []string
				for p, r := range w.Projects {
					ps = append(ps, p+"="+r)
				}
				sort.Strings(ps)
				fmt.Fprintf(out, "projects:     %s\n", dash(strings.Join(ps, ",")))
			}
			return nil
		}),
	}
}

func newConfigCommand(cc *cliContext) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Show and switch the contexts of your config file",
		Run:   func(cmd *cobra.Command, _ []string) { _ = cmd.Help() },
	}
	use := &cobra.Command{
		Use:   "use-context NAME",
		Short: "Make NAME the current context",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			conf, p, err := cc.loadUserConfig()
			if err != nil {
				return err
			}
			if conf.find(args[0]) == nil {
				return fmt.Errorf("no context %q in %s", args[0], p)
			}
			conf.CurrentContext = args[0]
			if err := saveUserConfig(conf, p); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "switched to context %q\n", args[0])
			return nil
		},
	}
	get := &cobra.Command{
		Use:   "get-contexts",
		Short: "List the contexts (the current one marked *)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			conf, _, err := cc.loadUserConfig()
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 8, 3, ' ', 0)
			fmt.Fprintln(tw, "CURRENT\tNAME\tSERVER\tUSER\tEXPIRES")
			for _, x := range conf.Contexts {
				cur := ""
				if x.Name == conf.CurrentContext {
					cur = "*"
				}
				exp := "-"
				if !x.Expires.IsZero() {
					exp = x.Expires.UTC().Format(time.RFC3339)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", cur, x.Name, x.Server, dash(x.User), exp)
			}
			return tw.Flush()
		},
	}
	cmd.AddCommand(use, get)
	return cmd
}
