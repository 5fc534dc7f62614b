package cli

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

// newNodeCommand returns `rakhsh node`: the hosts of the cluster, their join tokens and
// credentials.
func newNodeCommand(cc *cliContext) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "node",
		Aliases: []string{"nodes"},
		Short:   "List, cordon, drain and remove hosts; maintenance mode; join tokens for new ones",
		Long: `Manage the hosts (Nodes) of the cluster.

A host joins with a join token: 'rakhsh node token create' prints one, and the host runs
  rakhsh agent --server https://HOST:PORT --ca-file CA --join-token TOKEN --data-dir DIR
which exchanges it once for the node's own credential. 'rakhsh node remove' deletes the Node
and revokes that credential. 'rakhsh node drain' moves the VMs off a host; 'rakhsh node
maintenance on' does the same on the control plane and keeps new VMs away. See docs/nodes.md.`,
		Run: func(cmd *cobra.Command, _ []string) { _ = cmd.Help() },
	}
	cmd.AddCommand(newListCommand(cc, "nodes", "List the nodes (as rakhsh get nodes)", "kubernetes.io/hostname=host1"), newNodeDescribeCommand(cc), newNodeCordonCommand(cc, true), newNodeCordonCommand(cc, false),
		newNodeRemoveCommand(cc), newNodeTokenCommand(cc), newNodeDrainCommand(cc), newNodeMaintenanceCommand(cc))
	return cmd
}

func newNodeDescribeCommand(cc *cliContext) *cobra.Command {
	return &cobra.Command{
		Use:   "describe NAME...",
		Short: "Show nodes in detail (as rakhsh describe node)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d := newDescribeCommand(cc)
			d.SetContext(cmd.Context())
			d.SetOut(cmd.OutOrStdout())
			d.SetErr(cmd.ErrOrStderr())
			return d.RunE(d, append([]string{"node"}, args...))
		},
	}
}

func newNodeCordonCommand(cc *cliContext, cordon bool) *cobra.Command {
	use, short, patch, done := "cordon", "Keep new VMs off nodes (spec.unschedulable); running VMs stay", `{"spec":{"unschedulable":true}}`, "cordoned"
	if !cordon {
		use, short, patch, done = "uncordon", "Let the scheduler place VMs on nodes again", `{"spec":{"unschedulable":null}}`, "uncordoned"
	}
	return &cobra.Command{
		Use:   use + " NAME...",
		Short: short,
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return patchNodes(cmd, cc, args, patch, done)
		},
	}
}

// patchNodes sends patch to each node and says "node/NAME done" for each it changed.
func patchNodes(cmd *cobra.Command, cc *cliContext, nodes []string, patch, done string) error {
	c, err := cc.Client()
	if err != nil {
		return err
	}
	return eachReported(cmd.ErrOrStderr(), nodes, func(name string) error {
		if err := c.Patch(cmd.Context(), "nodes", "", name, []byte(patch), nil); err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "node/%s %s\n", name, done)
		return nil
	})
}

func newNodeRemoveCommand(cc *cliContext) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "remove NAME...",
		Short: "Delete nodes and revoke their agents' credentials",
		Long: `Delete the Node objects and revoke the credentials their agents joined with: the agents
can no longer reach the API. A node that still has VMs bound to it is refused unless --force
(stop or move them first; with --force they stay bound to a node that is gone). To bring the
host back, make a new join token and start its agent on a fresh data dir (or delete
node-credential.json from the old one).`,
		Args: cobra.MinimumNArgs(1),
		RunE: cc.withClient(func(cmd *cobra.Command, args []string, c *client.Client) error {
			ctx := cmd.Context()
			bound := map[string][]string{}
			if !force {
				objs, err := listObjects(ctx, c, "virtualmachines", "", client.ListOptions{})
				if err != nil {
					return err
				}
				for _, o := range objs {
					st, _ := o["status"].(map[string]any)
					node, _ := st["nodeName"].(string)
					md := meta(o)
					bound[node] = append(bound[node], fmt.Sprintf("%v/%v", md["namespace"], md["name"]))
				}
			}
			return eachReported(cmd.ErrOrStderr(), args, func(name string) error {
				if vms := bound[name]; len(vms) > 0 {
					return fmt.Errorf("node %q still has %d VM(s) bound to it (%s): stop or move them first, or give --force", name, len(vms), strings.Join(vms, ", "))
				}
				if err := c.Delete(ctx, "nodes", "", name); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "node/%s removed; its credential is revoked\n", name)
				return nil
			})
		}),
	}
	cmd.Flags().BoolVar(&force, "force", false, "remove nodes even when VMs are bound to them")
	return cmd
}

func newNodeTokenCommand(cc *cliContext) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Make, list and delete join tokens (admin only)",
		Run:   func(cmd *cobra.Command, _ []string) { _ = cmd.Help() },
	}
	var req v1alpha1.JoinTokenRequest
	var ttl time.Duration
	create := &cobra.Command{
		Use:   "create",
		Short: "Make a join token and print it",
		Long: `Make a join token and print it on standard output (it is not shown again: the server keeps
only its hash). A host joins with it once:
  rakhsh agent --server https://HOST:PORT --ca-file CA --join-token-file FILE --data-dir DIR
The token expires after --ttl and is used up after --uses joins.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if ttl <= 0 {
				return usageErrorf("--ttl %s: must be positive, e.g. 1h", ttl)
			}
			if req.Uses < 1 {
				return usageErrorf("--uses %d: must be at least 1", req.Uses)
			}
			req.TTL = ttl.String()
			c, err := cc.Client()
			if err != nil {
				return err
			}
			tok, err := c.CreateJoinToken(cmd.Context(), req)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), tok.Token)
			fmt.Fprintf(cmd.ErrOrStderr(), "join token %s: valid until %s for %d join(s)\n", tok.ID, tok.Expires.Local().Format(time.RFC3339), tok.UsesLeft)
			return nil
		},
	}
	create.Flags().DurationVar(&ttl, "ttl", time.Hour, "how long the token is valid (at most 720h)")
	create.Flags().IntVar(&req.Uses, "uses", 1, "how many hosts may join with the token")
	create.Flags().StringVar(&req.Description, "description", "", "a note shown by rakhsh node token list")
	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the join tokens that are still valid (without their secrets)",
		Args:    cobra.NoArgs,
		RunE: cc.withClient(func(cmd *cobra.Command, _ []string, c *client.Client) error {
			l, err := c.ListJoinTokens(cmd.Context())
			if err != nil {
				return err
			}
			if len(l.Items) == 0 {
				fmt.Fprintln(cmd.ErrOrStderr(), "No join tokens.")
				return nil
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 8, 3, ' ', 0)
			fmt.Fprintln(tw, "ID\tEXPIRES\tUSES LEFT\tDESCRIPTION")
			for _, t := range l.Items {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", t.ID, t.Expires.Local().Format(time.RFC3339), t.UsesLeft, t.Description)
			}
			return tw.Flush()
		}),
	}
	del := &cobra.Command{
		Use:   "delete ID...",
		Short: "Delete join tokens (nodes that joined with them keep their credentials)",
		Args:  cobra.MinimumNArgs(1),
		RunE: cc.withClient(func(cmd *cobra.Command, args []string, c *client.Client) error {
			return eachReported(cmd.ErrOrStderr(), args, func(id string) error {
				if err := c.DeleteJoinToken(cmd.Context(), id); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "join token %s deleted\n", id)
				return nil
			})
		}),
	}
	cmd.AddCommand(create, list, del)
	return cmd
}
