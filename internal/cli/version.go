package cli

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

func newVersionCommand(cc *cliContext) *cobra.Command {
	var clientOnly bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the client and server versions",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "Client Version: %s\n", Version)
			if clientOnly {
				return nil
			}
			c, err := cc.Client()
			if err != nil {
				fmt.Fprintf(out, "Server Version: <unavailable: %v>\n", err)
				return nil
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			var v struct {
				GitVersion string `json:"gitVersion"`
			}
			if err := c.Do(ctx, http.MethodGet, "/version", nil, "", nil, &v); err != nil {
				fmt.Fprintf(out, "Server Version: <unavailable: %v>\n", err)
				return nil
			}
			if v.GitVersion == "" {
				v.GitVersion = "<unknown>"
			}
			fmt.Fprintf(out, "Server Version: %s\n", v.GitVersion)
			return nil
		},
	}
	cmd.Flags().BoolVar(&clientOnly, "client", false, "print the client version only")
	return cmd
}

func newAPIResourcesCommand(_ *cliContext) *cobra.Command {
	return &cobra.Command{
		Use:   "api-resources",
		Short: "List the kinds the API serves",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 8, colPadding, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSHORTNAMES\tNAMESPACED\tKIND")
			for _, k := range append(append([]v1alpha1.KindInfo(nil), v1alpha1.Kinds...), v1alpha1.ReadOnlyKinds...) {
				fmt.Fprintf(tw, "%s\t%s\t%t\t%s\n", k.Resource, strings.Join(k.ShortNames, ","), k.Namespaced, k.Kind)
			}
			return tw.Flush()
		},
	}
}
