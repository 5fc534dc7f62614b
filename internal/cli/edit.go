package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

func newCreateCommand(cc *cliContext) *cobra.Command {
	return manifestsCommand(cc, &cobra.Command{
		Use:   "create -f FILE|DIR|-",
		Short: "Create objects from YAML or JSON manifests (an object that exists is an error)",
		Long: "Create the objects of manifests. Unlike apply, an object that already exists is not\n" +
			"changed: it is reported as an error. Each object is created on its own.",
		Example: "  rakhsh create -f vm.yaml",
	}, func(ctx context.Context, cc *cliContext, c *client.Client, m *Manifest) (string, error) {
		k, ns, _, err := manifestTarget(cc, m)
		if err != nil {
			return "", err
		}
		return createObject(ctx, c, k, ns, m.Object)
	})
}

func newPatchCommand(cc *cliContext) *cobra.Command {
	var patch, typ string
	cmd := &cobra.Command{
		Use:   "patch KIND NAME | KIND/NAME -p PATCH [--type merge|json]",
		Short: "Change fields of an object with a JSON merge patch or a JSON patch",
		Long: "Send a patch to the server, which applies it to the object as it is now:\n" +
			"  --type merge (default)  RFC 7386: the fields given replace, null removes\n" +
			"  --type json             RFC 6902: a list of {op, path, value} operations\n" +
			"The patch is JSON or YAML.",
		Example: "  rakhsh patch vm vm1 -p '{\"spec\":{\"memory\":{\"size\":\"2Gi\"}}}'\n" +
			"  rakhsh patch vm/vm1 --type json -p '[{\"op\":\"replace\",\"path\":\"/spec/cpu/cores\",\"value\":2}]'",
		RunE: func(cmd *cobra.Command, args []string) error {
			k, name, err := singleTarget(args)
			if err != nil {
				return err
			}
			if patch == "" {
				return usageErrorf("patch needs -p PATCH")
			}
			var v any
			if err := checkYAMLAliases([]byte(patch)); err != nil {
				return usageErrorf("-p: %v", err)
			}
			if err := yaml.Unmarshal([]byte(patch), &v); err != nil {
				return usageErrorf("-p: the patch is neither JSON nor YAML: %v", err)
			}
			body, _ := json.Marshal(v)
			ct := "application/merge-patch+json"
			switch typ {
			case "merge":
				if _, ok := v.(map[string]any); !ok {
					return usageErrorf("-p: a merge patch is an object, e.g. '{\"spec\":{...}}'")
				}
			case "json":
				if _, ok := v.([]any); !ok {
					return usageErrorf("-p: a JSON patch is a list of operations, e.g. '[{\"op\":\"replace\",\"path\":\"/spec/x\",\"value\":1}]'")
				}
				ct = "application/json-patch+json"
			default:
				return usageErrorf("--type %q: use merge or json", typ)
			}
			c, ns, before, err := cc.readObject(cmd.Context(), k, name)
			if err != nil {
				return err
			}
			var raw []byte
			if err := c.Do(cmd.Context(), http.MethodPatch, client.Path(k.Resource, ns, name), nil, ct, json.RawMessage(body), &raw); err != nil {
				return err
			}
			after, err := decodeObject(raw)
			if err != nil {
				return err
			}
			if str(after, "metadata.resourceVersion") == str(before, "metadata.resourceVersion") {
				fmt.Fprintf(cmd.OutOrStdout(), "%s patched (no change)\n", ref(k, name))
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s patched\n", ref(k, name))
			return nil
		},
	}
	cmd.Flags().StringVarP(&patch, "patch", "p", "", "the patch, JSON or YAML")
	cmd.Flags().StringVar(&typ, "type", "merge", "patch type: merge (RFC 7386) or json (RFC 6902)")
	return cmd
}

// readObject connects to the server and reads the object name of kind k in the current project
// (or the cluster, for a cluster-scoped kind). It returns the client, the namespace the object
// is in ("" when cluster-scoped) and the object.
func (cc *cliContext) readObject(ctx context.Context, k *v1alpha1.KindInfo, name string) (*client.Client, string, object, error) {
	c, err := cc.Client()
	if err != nil {
		return nil, "", nil, err
	}
	ns := scopeNS(k, cc.Namespace())
	obj, err := getObject(ctx, c, k, ns, name)
	if err != nil {
		return nil, "", nil, err
	}
	return c, ns, obj, nil
}

func newEditCommand(cc *cliContext) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "edit KIND NAME | KIND/NAME",
		Short: "Edit an object in your editor and save it back",
		Long: "Open the object as YAML in $RAKHSH_EDITOR, $KUBE_EDITOR, $EDITOR or vi. When the editor\n" +
			"exits, the changed object is sent to the server (an update guarded by its\n" +
			"resourceVersion: a change made meanwhile by someone else is refused, not lost).\n" +
			"If the server refuses the change, the edited file is kept and its path printed.\n" +
			"status is not editable: change it and the update ignores it.",
		Example: "  rakhsh edit vm vm1\n  EDITOR=nano rakhsh edit vd/disk1",
		RunE: func(cmd *cobra.Command, args []string) error {
			k, name, err := singleTarget(args)
			if err != nil {
				return err
			}
			c, ns, obj, err := cc.readObject(cmd.Context(), k, name)
			if err != nil {
				return err
			}
			orig, err := yaml.Marshal(obj)
			if err != nil {
				return err
			}
			dir, err := os.MkdirTemp("", "rakhsh-edit-")
			if err != nil {
				return err
			}
			path := filepath.Join(dir, k.Singular+"-"+name+".yaml")
			header := fmt.Sprintf("# Edit %s and save; an empty file or no change cancels.\n", ref(k, name))
			if err := os.WriteFile(path, append([]byte(header), orig...), 0o600); err != nil {
				return err
			}
			if err := runEditor(cmd, path); err != nil {
				return fmt.Errorf("%w (the object is unchanged; the file is %s)", err, path)
			}
			edited, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			body := stripComments(edited)
			if len(bytes.TrimSpace(body)) == 0 || bytes.Equal(bytes.TrimSpace(body), bytes.TrimSpace(orig)) {
				os.RemoveAll(dir)
				fmt.Fprintln(cmd.ErrOrStderr(), "Edit cancelled, no changes made.")
				return nil
			}
			var next object
			if err := checkYAMLAliases(body); err != nil {
				return fmt.Errorf("the edited file: %v (kept at %s)", err, path)
			}
			if err := yaml.Unmarshal(body, &next); err != nil {
				return fmt.Errorf("the edited file is not valid YAML: %v (kept at %s)", err, path)
			}
			if objName(next) != name || !strings.EqualFold(str(next, "kind"), k.Kind) {
				return fmt.Errorf("the edited object must keep its kind %s and name %q (kept at %s)", k.Kind, name, path)
			}
			var raw []byte
			if err := c.Do(cmd.Context(), http.MethodPut, client.Path(k.Resource, ns, name), nil, "", next, &raw); err != nil {
				return fmt.Errorf("%w\nyour edit is kept at %s", err, path)
			}
			os.RemoveAll(dir)
			fmt.Fprintf(cmd.OutOrStdout(), "%s edited\n", ref(k, name))
			return nil
		},
	}
	return cmd
}

// singleTarget reads "KIND NAME" or "KIND/NAME".
func singleTarget(args []string) (*v1alpha1.KindInfo, string, error) {
	targets, err := resolveTargets(args)
	if err != nil {
		return nil, "", err
	}
	if len(targets) != 1 || len(targets[0].names) != 1 {
		return nil, "", usageErrorf("name one object: KIND NAME or KIND/NAME")
	}
	return targets[0].kind, targets[0].names[0], nil
}

// runEditor opens path in the user's editor, attached to the terminal.
func runEditor(cmd *cobra.Command, path string) error {
	editor := "vi"
	for _, v := range []string{"RAKHSH_EDITOR", "KUBE_EDITOR", "EDITOR"} {
		if e := strings.TrimSpace(os.Getenv(v)); e != "" {
			editor = e
			break
		}
	}
	// The editor may carry arguments ("code --wait"); it runs without a shell.
	parts := strings.Fields(editor)
	e := exec.Command(parts[0], append(parts[1:], path)...)
	e.Stdin, e.Stdout, e.Stderr = os.Stdin, cmd.OutOrStdout(), cmd.ErrOrStderr()
	if err := e.Run(); err != nil {
		return fmt.Errorf("editor %q: %w", editor, err)
	}
	return nil
}

// stripComments drops the lines that are whole-line comments.
func stripComments(b []byte) []byte {
	var out [][]byte
	for _, l := range bytes.Split(b, []byte("\n")) {
		if bytes.HasPrefix(bytes.TrimSpace(l), []byte("#")) {
			continue
		}
		out = append(out, l)
	}
	return bytes.Join(out, []byte("\n"))
}
