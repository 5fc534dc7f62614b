package cli

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"maps"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

// maxDescribeEvents is how many of the latest events describe shows.
const maxDescribeEvents = 20

func newDescribeCommand(cc *cliContext) *cobra.Command {
	return &cobra.Command{
		Use:     "describe KIND NAME... | KIND/NAME...",
		Short:   "Show an object in detail, with its conditions and events",
		Example: "  rakhsh describe vm vm1\n  rakhsh describe vd/disk1",
		RunE: func(cmd *cobra.Command, args []string) error {
			targets, err := resolveTargets(args)
			if err != nil {
				return err
			}
			for _, t := range targets {
				if len(t.names) == 0 {
					return usageErrorf("describe needs the name of the %s, e.g. rakhsh describe %s NAME", t.kind.Singular, preferredName(t.kind))
				}
			}
			c, err := cc.Client()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			failed, first := false, true
			for _, t := range targets {
				for _, name := range t.names {
					obj, err := getObject(cmd.Context(), c, t.kind, cc.Namespace(), name)
					if err != nil {
						failed = true
						printError(cmd.ErrOrStderr(), err)
						continue
					}
					if !first {
						fmt.Fprintln(out)
					}
					first = false
					events, evErr := objectEvents(cmd.Context(), c, t.kind, obj)
					if evErr != nil {
						fmt.Fprintf(cmd.ErrOrStderr(), "warning: cannot list events: %v\n", evErr)
					}
					if err := describeObject(out, t.kind, obj, events, cc.now()); err != nil {
						return err
					}
				}
			}
			if failed {
				return errReported
			}
			return nil
		},
	}
}

// objectEvents lists the events about obj: in its project, or in all projects for
// cluster-scoped kinds; sorted by last time, the latest maxDescribeEvents.
func objectEvents(ctx context.Context, c *client.Client, k *v1alpha1.KindInfo, obj object) ([]object, error) {
	ns := str(obj, "metadata.namespace")
	if !k.Namespaced {
		ns = ""
	}
	items, err := listObjects(ctx, c, "events", ns, client.ListOptions{})
	if err != nil {
		return nil, err
	}
	name := objName(obj)
	uid := str(obj, "metadata.uid")
	var out []object
	for _, ev := range items {
		if str(ev, "involvedObject.kind") != k.Kind || str(ev, "involvedObject.name") != name {
			continue
		}
		if k.Namespaced {
			if evNS := str(ev, "involvedObject.namespace"); evNS != "" && evNS != ns {
				continue
			}
		}
		if evUID := str(ev, "involvedObject.uid"); evUID != "" && uid != "" && evUID != uid {
			continue // about an earlier object of the same name
		}
		out = append(out, ev)
	}
	out = sortEvents(out)
	if len(out) > maxDescribeEvents {
		out = out[len(out)-maxDescribeEvents:]
	}
	return out, nil
}

func eventTime(ev object) time.Time {
	for _, p := range []string{"lastTimestamp", "firstTimestamp", "metadata.creationTimestamp"} {
		v, _ := lookupPath(ev, p)
		if t, ok := parseTime(v); ok {
			return t
		}
	}
	return time.Time{}
}

// describeObject writes the human-readable description of obj.
func describeObject(w io.Writer, k *v1alpha1.KindInfo, obj object, events []object, now time.Time) error {
	md, _ := obj["metadata"].(map[string]any)
	field := func(label, value string) { fmt.Fprintf(w, "%-13s %s\n", label+":", value) }
	field("Name", cellString(md["name"]))
	if k.Namespaced {
		field("Project", cellString(md["namespace"]))
	}
	field("Kind", k.Kind)
	writeMap(w, "Labels", md["labels"])
	writeMap(w, "Annotations", md["annotations"])
	if ts, ok := parseTime(md["creationTimestamp"]); ok {
		field("Created", fmt.Sprintf("%s (%s ago)", ts.UTC().Format(time.RFC3339), humanDuration(now.Sub(ts))))
	} else {
		field("Created", "<unknown>")
	}
	if ts, ok := parseTime(md["deletionTimestamp"]); ok {
		field("Deleting", fmt.Sprintf("since %s (%s ago)", ts.UTC().Format(time.RFC3339), humanDuration(now.Sub(ts))))
	}
	if fz, ok := md["finalizers"].([]any); ok && len(fz) > 0 {
		var s []string
		for _, f := range fz {
			s = append(s, cellString(f))
		}
		field("Finalizers", strings.Join(s, ", "))
	}
	if owners, ok := md["ownerReferences"].([]any); ok && len(owners) > 0 {
		var s []string
		for _, o := range owners {
			if om, ok := o.(map[string]any); ok {
				s = append(s, fmt.Sprintf("%s/%s", cellString(om["kind"]), cellString(om["name"])))
			}
		}
		field("Owners", strings.Join(s, ", "))
	}

	// Fields other than metadata, spec and status (Secret's type and data, Event's fields).
	var keys []string
	for key := range obj {
		switch key {
		case "apiVersion", "kind", "metadata", "spec", "status":
		default:
			keys = append(keys, key)
		}
	}
	sort.Strings(keys)
	for _, key := range keys {
		v := obj[key]
		if k.Kind == "Secret" && (key == "data" || key == "stringData") {
			writeSecretData(w, key, v, key == "data")
			continue
		}
		writeSection(w, sectionTitle(key), v)
	}
	if spec, ok := obj["spec"]; ok {
		writeSection(w, "Spec", spec)
	}
	if k.Kind == "Project" {
		writeProjectQuota(w, obj) // label_quota.go
	}
	var conds []any
	if st, ok := obj["status"].(map[string]any); ok {
		rest := make(map[string]any, len(st))
		for key, v := range st {
			if key == "conditions" {
				conds, _ = v.([]any)
				continue
			}
			rest[key] = v
		}
		if len(rest) > 0 {
			writeSection(w, "Status", rest)
		}
	}
	if k.HasStatus || len(conds) > 0 {
		writeConditions(w, conds, now)
	}
	if k.Kind != "Event" {
		writeEvents(w, events, now)
	}
	return nil
}

func sectionTitle(key string) string {
	if key == "" {
		return key
	}
	return strings.ToUpper(key[:1]) + key[1:]
}

// writeMap writes labels or annotations, one key=value a line.
func writeMap(w io.Writer, label string, v any) {
	m, _ := v.(map[string]any)
	if len(m) == 0 {
		fmt.Fprintf(w, "%-13s %s\n", label+":", none)
		return
	}
	for i, key := range slices.Sorted(maps.Keys(m)) {
		l := ""
		if i == 0 {
			l = label + ":"
		}
		fmt.Fprintf(w, "%-13s %s=%s\n", l, key, cellString(m[key]))
	}
}

// writeSection writes `Title:` and v as YAML indented by two spaces (scalars on one line).
func writeSection(w io.Writer, title string, v any) {
	switch v.(type) {
	case map[string]any, []any:
	default:
		fmt.Fprintf(w, "%-13s %s\n", title+":", cellString(v))
		return
	}
	b, err := yaml.Marshal(v)
	if err != nil {
		fmt.Fprintf(w, "%s:\n  %s\n", title, cellString(v))
		return
	}
	text := strings.TrimRight(string(b), "\n")
	if text == "{}" || text == "[]" {
		fmt.Fprintf(w, "%-13s %s\n", title+":", none)
		return
	}
	fmt.Fprintf(w, "%s:\n", title)
	for _, line := range strings.Split(text, "\n") {
		fmt.Fprintf(w, "  %s\n", line)
	}
}

// writeSecretData lists a Secret's keys with their sizes, never the values.
func writeSecretData(w io.Writer, title string, v any, base64Encoded bool) {
	m, _ := v.(map[string]any)
	fmt.Fprintf(w, "%s:\n", sectionTitle(title))
	if len(m) == 0 {
		fmt.Fprintf(w, "  %s\n", none)
		return
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	for _, key := range slices.Sorted(maps.Keys(m)) {
		s, _ := m[key].(string)
		n := len(s)
		if base64Encoded {
			if b, err := base64.StdEncoding.DecodeString(s); err == nil {
				n = len(b)
			}
		}
		fmt.Fprintf(tw, "  %s:\t%d bytes\n", key, n)
	}
	tw.Flush()
}

// describeTable writes "Title:" and the header of a table indented by two spaces; without
// rows it writes "Title: <none>" and returns nil.
func describeTable(w io.Writer, title string, rows int, header string) *tabwriter.Writer {
	if rows == 0 {
		fmt.Fprintf(w, "%-13s %s\n", title+":", none)
		return nil
	}
	fmt.Fprintf(w, "%s:\n", title)
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	return tw
}

func writeConditions(w io.Writer, conds []any, now time.Time) {
	tw := describeTable(w, "Conditions", len(conds), "  TYPE\tSTATUS\tREASON\tMESSAGE\tAGE")
	if tw == nil {
		return
	}
	for _, c := range conds {
		cm, ok := c.(map[string]any)
		if !ok {
			continue
		}
		v, present := lookupPath(cm, "lastTransitionTime")
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", cellString(cm["type"]), cellString(cm["status"]),
			cellString(cm["reason"]), cellString(cm["message"]), formatCell(v, present, "age", now))
	}
	tw.Flush()
}

func writeEvents(w io.Writer, events []object, now time.Time) {
	tw := describeTable(w, "Events", len(events), "  TYPE\tREASON\tAGE\tMESSAGE")
	if tw == nil {
		return
	}
	for _, ev := range events {
		last := eventTime(ev)
		ageStr := "<unknown>"
		if !last.IsZero() {
			ageStr = humanDuration(now.Sub(last))
		}
		if n, _ := lookupPath(ev, "count"); cellString(n) != none && cellString(n) != "1" && cellString(n) != "0" {
			first, ok := parseTime(ev["firstTimestamp"])
			if ok {
				ageStr = fmt.Sprintf("%s (x%s over %s)", ageStr, cellString(n), humanDuration(now.Sub(first)))
			} else {
				ageStr = fmt.Sprintf("%s (x%s)", ageStr, cellString(n))
			}
		}
		typ := str(ev, "type")
		if typ == "" {
			typ = "Normal"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", typ, cellString(ev["reason"]), ageStr, cellString(ev["message"]))
	}
	tw.Flush()
}
