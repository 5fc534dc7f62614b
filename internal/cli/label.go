package cli

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// labelChange is one KEY=VALUE (set) or KEY- (remove) argument of `rakhsh label`.
type labelChange struct {
	key    string
	value  string
	remove bool
}

// parseLabelChanges parses the KEY=VALUE and KEY- arguments. Key and value syntax is checked
// by the server (it names the bad label); here only the shape of each argument is.
func parseLabelChanges(args []string) ([]labelChange, error) {
	var out []labelChange
	seen := map[string]bool{}
	for _, a := range args {
		var c labelChange
		switch {
		case strings.Contains(a, "="):
			c.key, c.value, _ = strings.Cut(a, "=")
		case strings.HasSuffix(a, "-") && len(a) > 1:
			c.key, c.remove = strings.TrimSuffix(a, "-"), true
		default:
			return nil, usageErrorf("%q is neither KEY=VALUE (set a label) nor KEY- (remove it)", a)
		}
		if c.key == "" {
			return nil, usageErrorf("%q has an empty label key", a)
		}
		if seen[c.key] {
			return nil, usageErrorf("label %q is changed twice", c.key)
		}
		seen[c.key] = true
		out = append(out, c)
	}
	return out, nil
}

func newLabelCommand(cc *cliContext) *cobra.Command {
	var overwrite bool
	cmd := &cobra.Command{
		Use:   "label KIND NAME KEY=VALUE... KEY-...",
		Short: "Set or remove labels of an object",
		Long: "Set (KEY=VALUE) or remove (KEY-) labels of one object, e.g. of a Node to steer VMs with\n" +
			"class and VM node selectors. Changing the value of an existing label needs --overwrite.",
		Example: "  rakhsh label node node1 node.deckhouse.io/group=worker\n" +
			"  rakhsh label node node1 node.deckhouse.io/group=gpu --overwrite\n" +
			"  rakhsh label node node1 node.deckhouse.io/group-",
		Args: cobra.MinimumNArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			k, err := lookupKind(args[0])
			if err != nil {
				return usageErrorf("%v", err)
			}
			name := args[1]
			changes, err := parseLabelChanges(args[2:])
			if err != nil {
				return err
			}
			cl, err := cc.Client()
			if err != nil {
				return err
			}
			ns := scopeNS(k, cc.Namespace())
			var cur struct {
				Metadata v1alpha1.ObjectMeta `json:"metadata"`
			}
			if err := cl.Get(cmd.Context(), k.Resource, ns, name, &cur); err != nil {
				return err
			}
			labels := map[string]any{}
			var changed []string
			for _, c := range changes {
				old, has := cur.Metadata.Labels[c.key]
				switch {
				case c.remove:
					if has {
						labels[c.key] = nil
						changed = append(changed, c.key+"-")
					}
				case has && old == c.value:
				case has && !overwrite:
					return fmt.Errorf("%s already has label %s=%s: add --overwrite to change it", ref(k, name), c.key, old)
				default:
					labels[c.key] = c.value
					changed = append(changed, c.key+"="+c.value)
				}
			}
			if len(labels) == 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "%s not labeled (no change)\n", ref(k, name))
				return nil
			}
			// The resourceVersion makes a concurrent label change fail instead of being lost.
			body, err := json.Marshal(map[string]any{"metadata": map[string]any{"labels": labels, "resourceVersion": cur.Metadata.ResourceVersion}})
			if err != nil {
				return err
			}
			if err := cl.Patch(cmd.Context(), k.Resource, ns, name, body, nil); err != nil {
				return err
			}
			sort.Strings(changed)
			fmt.Fprintf(cmd.OutOrStdout(), "%s labeled (%s)\n", ref(k, name), strings.Join(changed, ", "))
			return nil
		},
	}
	cmd.Flags().BoolVar(&overwrite, "overwrite", false, "allow changing the value of an existing label")
	return cmd
}
