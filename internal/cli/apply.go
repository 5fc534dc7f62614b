package cli

import (
	"context"
	"fmt"
	"net/http"

	"github.com/spf13/cobra"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

func newApplyCommand(cc *cliContext) *cobra.Command {
	return manifestsCommand(cc, &cobra.Command{
		Use:   "apply -f FILE|DIR|-",
		Short: "Create or update objects from YAML or JSON manifests",
		Long: "Create objects that do not exist and update those that do. A file may hold several\n" +
			"YAML documents separated by ---, a JSON object, a List, or a stream of JSON objects.\n" +
			"Each object is applied on its own: one that fails does not stop the others.",
		Example: "  rakhsh apply -f vm.yaml\n  cat disks.yaml | rakhsh apply -f -",
	}, applyManifest)
}

// manifestsCommand makes cmd (its name and help given) act on each object of the manifests
// named with -f: act returns the line to print for it; an object that fails is reported and
// the others go on.
func manifestsCommand(cc *cliContext, cmd *cobra.Command, act func(context.Context, *cliContext, *client.Client, *Manifest) (string, error)) *cobra.Command {
	var files []string
	cmd.Args = cobra.NoArgs
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if len(files) == 0 {
			return usageErrorf("%s needs -f FILE (or -f - for stdin)", cmd.Name())
		}
		c, err := cc.Client()
		if err != nil {
			return err
		}
		return eachReported(cmd.ErrOrStderr(), readManifests(files, cmd.InOrStdin()), func(m Manifest) error {
			res, err := act(cmd.Context(), cc, c, &m)
			if err == nil {
				fmt.Fprintln(cmd.OutOrStdout(), res)
			}
			return err
		})
	}
	cmd.Flags().StringArrayVarP(&files, "filename", "f", nil, "manifest file, directory, or - for stdin (repeatable)")
	return cmd
}

// manifestTarget works out the kind, project and name a manifest is about, and sets
// metadata.namespace of project-scoped objects.
func manifestTarget(cc *cliContext, m *Manifest) (*v1alpha1.KindInfo, string, string, error) {
	if m.Err != nil {
		return nil, "", "", manifestError(m)
	}
	kindName, _ := m.Object["kind"].(string)
	k, ok := v1alpha1.LookupKind(kindName)
	if !ok {
		return nil, "", "", fmt.Errorf("%s: unknown kind %q (see 'rakhsh api-resources')", m.Where(), kindName)
	}
	md, ok := m.Object["metadata"].(map[string]any)
	if !ok {
		if _, present := m.Object["metadata"]; present {
			return nil, "", "", fmt.Errorf("%s: metadata must be an object", m.Where())
		}
		md = meta(m.Object)
	}
	name, _ := md["name"].(string)
	ns := ""
	if k.Namespaced {
		objNS, _ := md["namespace"].(string)
		switch {
		case objNS == "":
			ns = cc.Namespace()
			md["namespace"] = ns
		case cc.NamespaceExplicit() && objNS != cc.Namespace():
			return nil, "", "", fmt.Errorf("%s: the object's project %q does not match the project %q given with -n; pass -n %s or remove metadata.namespace",
				m.Where(), objNS, cc.Namespace(), objNS)
		default:
			ns = objNS
		}
	}
	if name == "" {
		if gn, _ := md["generateName"].(string); gn == "" {
			return nil, "", "", fmt.Errorf("%s: metadata.name is required", m.Where())
		}
	}
	return k, ns, name, nil
}

// applyManifest creates or updates one object and returns the line to print.
func applyManifest(ctx context.Context, cc *cliContext, c *client.Client, m *Manifest) (string, error) {
	k, ns, name, err := manifestTarget(cc, m)
	if err != nil {
		return "", err
	}
	obj := m.Object
	if name == "" { // generateName: always a new object
		return createObject(ctx, c, k, ns, obj)
	}
	for attempt := 0; ; attempt++ {
		existing, err := getObject(ctx, c, k, ns, name)
		if client.IsNotFound(err) {
			res, cerr := createObject(ctx, c, k, ns, obj)
			if client.IsAlreadyExists(cerr) && attempt < 3 {
				continue // created meanwhile: update it
			}
			return res, cerr
		}
		if err != nil {
			return "", fmt.Errorf("error when reading %s (%s): %w", ref(k, name), m.Where(), err)
		}
		update := buildUpdate(existing, obj)
		var raw []byte
		err = c.Do(ctx, http.MethodPut, client.Path(k.Resource, ns, name), nil, "", update, &raw)
		if client.IsConflict(err) && attempt < 3 {
			continue // changed between our read and write: read again
		}
		if err != nil {
			return "", fmt.Errorf("error when applying %s (%s): %w", ref(k, name), m.Where(), err)
		}
		stored, err := decodeObject(raw)
		if err != nil {
			return "", fmt.Errorf("applying %s: decoding the answer: %w", ref(k, name), err)
		}
		if rv := str(stored, "metadata.resourceVersion"); rv != "" && rv == str(existing, "metadata.resourceVersion") {
			return ref(k, name) + " unchanged", nil
		}
		return ref(k, name) + " configured", nil
	}
}

func createObject(ctx context.Context, c *client.Client, k *v1alpha1.KindInfo, ns string, obj object) (string, error) {
	var raw []byte
	name := objName(obj)
	if err := c.Do(ctx, http.MethodPost, client.Path(k.Resource, scopeNS(k, ns), ""), nil, "", obj, &raw); err != nil {
		what := ref(k, name)
		if name == "" {
			what = k.Singular + " " + str(obj, "metadata.generateName") + "*"
		}
		return "", fmt.Errorf("error when creating %s: %w", what, err)
	}
	if stored, err := decodeObject(raw); err == nil && objName(stored) != "" {
		name = objName(stored)
	}
	return ref(k, name) + " created", nil
}

// buildUpdate makes the object to PUT: the existing object with every top-level field but
// apiVersion, kind, metadata and status replaced by the manifest's (fields the manifest does
// not have are dropped), labels and annotations replaced when the manifest has them, and the
// rest of the existing metadata (resourceVersion, uid, finalizers, ...) kept. apiVersion is
// the manifest's, so that the server reads the body in the version it was written for.
func buildUpdate(existing, manifest object) object {
	u := make(object, len(existing))
	for key, v := range existing {
		switch key {
		case "apiVersion", "kind", "metadata", "status":
			u[key] = v
		}
	}
	for key, v := range manifest {
		switch key {
		case "kind", "metadata", "status":
		case "apiVersion":
			if s, _ := v.(string); s != "" {
				u[key] = v
			}
		default:
			u[key] = v
		}
	}
	em, _ := existing["metadata"].(map[string]any)
	md := make(map[string]any, len(em))
	for key, v := range em {
		md[key] = v
	}
	if mm, ok := manifest["metadata"].(map[string]any); ok {
		for _, key := range []string{"labels", "annotations"} {
			if v, present := mm[key]; present {
				if v == nil {
					delete(md, key)
				} else {
					md[key] = v
				}
			}
		}
	}
	u["metadata"] = md
	return u
}
