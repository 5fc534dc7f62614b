package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/suggest"
)

// object is a decoded API object. Numbers are json.Number so they survive a round trip.
type object = map[string]any

// decodeObject decodes JSON into an object, keeping numbers exact.
func decodeObject(data []byte) (object, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	o, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("not a JSON object")
	}
	return o, nil
}

// getObject reads one object.
func getObject(ctx context.Context, c *client.Client, k *v1alpha1.KindInfo, ns, name string) (object, error) {
	var raw []byte
	if err := c.Do(ctx, http.MethodGet, client.Path(k.Resource, scopeNS(k, ns), name), nil, "", nil, &raw); err != nil {
		return nil, err
	}
	o, err := decodeObject(raw)
	if err != nil {
		return nil, fmt.Errorf("decoding %s/%s: %w", k.Singular, name, err)
	}
	return o, nil
}

// listObjects lists all the objects of resource in ns (all projects: "") that opts selects.
func listObjects(ctx context.Context, c *client.Client, resource, ns string, opts client.ListOptions) ([]object, error) {
	l, err := c.ListAll(ctx, resource, ns, opts)
	if err != nil {
		return nil, err
	}
	return decodeItems(l)
}

// decodeItems decodes a list's items.
func decodeItems(l *v1alpha1.List) ([]object, error) {
	out := make([]object, 0, len(l.Items))
	for i, raw := range l.Items {
		o, err := decodeObject(raw)
		if err != nil {
			return nil, fmt.Errorf("decoding list item %d: %w", i, err)
		}
		out = append(out, o)
	}
	return out, nil
}

// scopeNS returns the namespace to use in paths: "" for cluster-scoped kinds.
func scopeNS(k *v1alpha1.KindInfo, ns string) string {
	if !k.Namespaced {
		return ""
	}
	return ns
}

// str returns the string at a dotted path, or "".
func str(o object, path string) string {
	v, ok := lookupPath(o, path)
	if !ok {
		return ""
	}
	switch x := v.(type) {
	case string:
		return x
	case json.Number:
		return x.String()
	case bool:
		if x {
			return "true"
		}
		return "false"
	}
	return ""
}

// meta returns o's metadata map (creating it if absent).
func meta(o object) map[string]any {
	m, ok := o["metadata"].(map[string]any)
	if !ok {
		m = map[string]any{}
		o["metadata"] = m
	}
	return m
}

// objName returns metadata.name.
func objName(o object) string { return str(o, "metadata.name") }

// target is one kind and the names asked for (none: all).
type target struct {
	kind  *v1alpha1.KindInfo
	names []string
}

// lookupKind finds a kind by kind, plural, singular or short name.
func lookupKind(name string) (*v1alpha1.KindInfo, error) {
	if k, ok := v1alpha1.LookupKind(name); ok {
		return k, nil
	}
	var names []string
	for _, k := range v1alpha1.Kinds {
		names = append(names, k.Resource, k.Singular)
		names = append(names, k.ShortNames...)
	}
	hint := ""
	if s := suggest.Closest(name, names); s != "" {
		hint = fmt.Sprintf("; did you mean %q?", s)
	}
	return nil, fmt.Errorf("the server doesn't have a resource type %q%s (see 'rakhsh api-resources')", name, hint)
}

// resolveTargets reads `KIND[,KIND...] [NAME...]` or `KIND/NAME...` arguments.
func resolveTargets(args []string) ([]target, error) {
	if len(args) == 0 {
		return nil, usageErrorf("you must name a kind of resource, e.g. vm (see 'rakhsh api-resources')")
	}
	if strings.Contains(args[0], "/") {
		var out []target
		idx := map[string]int{}
		for _, a := range args {
			kind, name, ok := strings.Cut(a, "/")
			if !ok || kind == "" || name == "" || strings.Contains(name, "/") {
				return nil, usageErrorf("arguments in KIND/NAME form must all be KIND/NAME; got %q", a)
			}
			k, err := lookupKind(kind)
			if err != nil {
				return nil, err
			}
			i, seen := idx[k.Kind]
			if !seen {
				i = len(out)
				idx[k.Kind] = i
				out = append(out, target{kind: k})
			}
			out[i].names = append(out[i].names, name)
		}
		return out, nil
	}
	var out []target
	for _, kn := range strings.Split(args[0], ",") {
		if kn == "" {
			continue
		}
		k, err := lookupKind(kn)
		if err != nil {
			return nil, err
		}
		out = append(out, target{kind: k})
	}
	if len(out) == 0 {
		return nil, usageErrorf("you must name a kind of resource")
	}
	names := args[1:]
	for _, n := range names {
		if strings.Contains(n, "/") {
			return nil, usageErrorf("there is no need to name the kind again when using KIND NAME; got %q (use either %s NAME or KIND/NAME)", n, args[0])
		}
	}
	if len(names) > 0 {
		if len(out) > 1 {
			return nil, usageErrorf("names can only be given with a single kind")
		}
		out[0].names = names
	}
	return out, nil
}

// ref renders `<singular>/<name>`.
func ref(k *v1alpha1.KindInfo, name string) string { return k.Singular + "/" + name }

// preferredName is the shortest way to name a kind on the command line.
func preferredName(k *v1alpha1.KindInfo) string {
	if len(k.ShortNames) > 0 {
		return k.ShortNames[0]
	}
	return k.Singular
}
