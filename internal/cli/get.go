package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

type getOptions struct {
	output    string
	selector  string
	all       bool // -A
	watch     bool
	noHeaders bool
	forObject string // events only: KIND/NAME of the object they are about
}

func newGetCommand(cc *cliContext) *cobra.Command {
	var o getOptions
	cmd := &cobra.Command{
		Use:   "get KIND[,KIND...] [NAME...] | KIND/NAME...",
		Short: "List objects or show some of them",
		Example: "  rakhsh get vm\n  rakhsh get vm vm1 -o yaml\n  rakhsh get vd,vi -A\n  rakhsh get vm/vm1 vd/disk1\n" +
			"  rakhsh get vm -l app=web -o wide\n  rakhsh get vm -w\n  rakhsh get events --for vm/vm1",
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.checkOutput(); err != nil {
				return err
			}
			targets, err := resolveTargets(args)
			if err != nil {
				return err
			}
			if o.watch && len(targets) > 1 {
				return usageErrorf("--watch works with one kind at a time")
			}
			if o.forObject != "" {
				if len(targets) != 1 || targets[0].kind.Kind != "Event" {
					return usageErrorf("--for works with `rakhsh get events` only")
				}
				kind, name, ok := strings.Cut(o.forObject, "/")
				k, known := v1alpha1.LookupKind(kind)
				if !ok || name == "" || !known {
					return usageErrorf("--for %q: use KIND/NAME, e.g. --for vm/vm1", o.forObject)
				}
				o.forObject = k.Kind + "/" + name
			}
			c, err := cc.Client()
			if err != nil {
				return err
			}
			return runGet(cmd.Context(), cc, c, cmd.OutOrStdout(), cmd.ErrOrStderr(), targets, &o)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.output, "output", "o", "", "output format: wide, yaml, json or name")
	f.StringVarP(&o.selector, "selector", "l", "", "label selector, e.g. app=web,tier!=db")
	f.BoolVarP(&o.all, "all-projects", "A", false, "list across all projects")
	f.BoolVarP(&o.watch, "watch", "w", false, "after listing, print changes as they happen (until interrupted)")
	f.BoolVar(&o.noHeaders, "no-headers", false, "do not print the table header")
	f.StringVar(&o.forObject, "for", "", "with events: only those about this object, KIND/NAME (e.g. vm/vm1)")
	return cmd
}

// newListCommand is the "list" subcommand of a command named after a cluster-scoped kind
// ('rakhsh node list', 'rakhsh user list'): it lists the kind's objects as 'rakhsh get
// RESOURCE' does, with the same -o, -l and --no-headers.
func newListCommand(cc *cliContext, resource, short, selectorExample string) *cobra.Command {
	var o getOptions
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   short,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.checkOutput(); err != nil {
				return err
			}
			c, err := cc.Client()
			if err != nil {
				return err
			}
			k, _ := v1alpha1.LookupKind(resource)
			return runGet(cmd.Context(), cc, c, cmd.OutOrStdout(), cmd.ErrOrStderr(), []target{{kind: k}}, &o)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.output, "output", "o", "", "output format: wide, yaml, json or name")
	f.StringVarP(&o.selector, "selector", "l", "", "label selector, e.g. "+selectorExample)
	f.BoolVar(&o.noHeaders, "no-headers", false, "do not print the table header")
	return cmd
}

// checkOutput refuses an output format runGet does not know.
func (o *getOptions) checkOutput() error {
	switch o.output {
	case "", "wide", "yaml", "json", "name":
		return nil
	}
	return usageErrorf("unknown output format %q: use wide, yaml, json or name", o.output)
}

// listNS returns the namespace to list k in: "" for cluster-scoped kinds and with -A.
func listNS(cc *cliContext, k *v1alpha1.KindInfo, all bool) string {
	if !k.Namespaced || all {
		return ""
	}
	return cc.Namespace()
}

func runGet(ctx context.Context, cc *cliContext, c *client.Client, out, errOut io.Writer, targets []target, o *getOptions) error {
	failed := false
	var collected []object // for yaml/json across kinds
	single := len(targets) == 1 && len(targets[0].names) == 1
	printedTable := false
	for _, t := range targets {
		k := t.kind
		var objs []object
		var listRV string
		if len(t.names) > 0 {
			for _, name := range t.names {
				obj, err := getObject(ctx, c, k, cc.Namespace(), name)
				if err != nil {
					failed = true
					printError(errOut, err)
					continue
				}
				objs = append(objs, obj)
			}
		} else {
			ns := listNS(cc, k, o.all)
			l, err := c.ListAll(ctx, k.Resource, ns, client.ListOptions{LabelSelector: o.selector})
			if err != nil {
				return err
			}
			objs, err = decodeItems(l)
			if err != nil {
				return err
			}
			listRV = l.Metadata.ResourceVersion
			if k.Kind == "Event" {
				objs = sortEvents(filterEvents(objs, o.forObject))
			}
			if len(objs) == 0 && !o.watch {
				printNoResources(errOut, cc, k, o.all)
			}
		}
		tp := &tablePrinter{kind: k, wide: o.output == "wide", project: o.all && k.Namespaced,
			kindName: len(targets) > 1, noHeaders: o.noHeaders, now: cc.now(), reserve: o.watch}
		switch o.output {
		case "yaml", "json":
			collected = append(collected, objs...)
		case "name":
			for _, obj := range objs {
				fmt.Fprintln(out, ref(k, objName(obj)))
			}
		default:
			if len(objs) > 0 {
				if printedTable {
					fmt.Fprintln(out)
				}
				if err := tp.printTable(out, objs); err != nil {
					return err
				}
				if k.Kind == "ControlPlane" && !o.watch {
					if err := printControlPlaneDetails(out, objs, cc.now()); err != nil {
						return err
					}
				}
				printedTable = true
			}
		}
		if o.watch {
			if (o.output == "yaml" || o.output == "json") && len(collected) > 0 {
				if err := printStream(out, o.output, collected); err != nil {
					return err
				}
				collected = nil
			}
			if listRV == "" && len(t.names) > 0 {
				// names were fetched one by one: list to learn where to watch from
				l, err := c.List(ctx, k.Resource, listNS(cc, k, o.all), client.ListOptions{LabelSelector: o.selector, Limit: 1})
				if err != nil {
					return err
				}
				listRV = l.Metadata.ResourceVersion
			}
			if err := watchGet(ctx, cc, c, out, errOut, k, t.names, listRV, len(objs) > 0 && !o.noHeaders, tp, o, objs); err != nil {
				return err
			}
		}
	}
	if (o.output == "yaml" || o.output == "json") && !o.watch {
		if err := printObjects(out, o.output, collected, single); err != nil {
			return err
		}
	}
	if failed {
		return errReported
	}
	return nil
}

func printNoResources(w io.Writer, cc *cliContext, k *v1alpha1.KindInfo, all bool) {
	if k.Namespaced && !all {
		fmt.Fprintf(w, "No resources found in %s project.\n", cc.Namespace())
		return
	}
	fmt.Fprintln(w, "No resources found.")
}

// printStream writes objects one after another: YAML documents separated by ---, or JSON.
func printStream(w io.Writer, format string, objs []object) error {
	for _, obj := range objs {
		if format == "yaml" {
			if _, err := io.WriteString(w, "---\n"); err != nil {
				return err
			}
		}
		if err := printValue(w, format, obj); err != nil {
			return err
		}
	}
	return nil
}

// watchGet prints a row (or object) per watch event until ctx ends. It watches from rv,
// and lists again when the version has expired.
func watchGet(ctx context.Context, cc *cliContext, c *client.Client, out, errOut io.Writer, k *v1alpha1.KindInfo,
	names []string, rv string, headerPrinted bool, tp *tablePrinter, o *getOptions, shown []object) error {
	// A row is printed again only when a column it shows changed (an age column always
	// changes and is not compared): status writes that touch nothing shown print nothing.
	last := map[string]string{}
	rowKey := func(obj object) (string, string) {
		var b strings.Builder
		row := tp.row(obj)
		for i, col := range tp.columns() {
			if col.Format != "age" {
				b.WriteString(row[i+tp.leading()])
				b.WriteByte(0)
			}
		}
		return str(obj, "metadata.namespace") + "/" + objName(obj), b.String()
	}
	for _, obj := range shown {
		k, v := rowKey(obj)
		last[k] = v
	}
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	ns := listNS(cc, k, o.all)
	if len(names) > 0 {
		ns = scopeNS(k, cc.Namespace())
	}
	emit := func(obj object, deleted bool) error {
		if len(want) > 0 && !want[objName(obj)] {
			return nil
		}
		tp.now = cc.now()
		switch o.output {
		case "yaml", "json":
			return printStream(out, o.output, []object{obj})
		case "name":
			_, err := fmt.Fprintln(out, ref(k, objName(obj)))
			return err
		}
		if o.output == "" || o.output == "wide" {
			k, v := rowKey(obj)
			if last[k] == v && !deleted {
				return nil
			}
			last[k] = v
			if deleted {
				delete(last, k)
			}
		}
		if !headerPrinted && !o.noHeaders {
			tp.grow(tp.header())
			tp.grow(tp.row(obj))
			if err := tp.printRowCells(out, tp.header()); err != nil {
				return err
			}
			headerPrinted = true
		}
		return tp.printRow(out, obj)
	}
	backoff := 100 * time.Millisecond
	for {
		if rv == "" {
			l, err := c.ListAll(ctx, k.Resource, ns, client.ListOptions{LabelSelector: o.selector})
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			objs, err := decodeItems(l)
			if err != nil {
				return err
			}
			for _, obj := range objs {
				if err := emit(obj, false); err != nil {
					return err
				}
			}
			rv = l.Metadata.ResourceVersion
		}
		w, err := c.Watch(ctx, k.Resource, ns, client.ListOptions{LabelSelector: o.selector, ResourceVersion: rv})
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if client.Reason(err) == v1alpha1.ReasonExpired {
				rv = ""
				continue
			}
			return err
		}
		expired := false
		for ev := range w.Events() {
			backoff = 100 * time.Millisecond
			switch ev.Type {
			case v1alpha1.WatchError:
				st := decodeStatus(ev.Object)
				if st.Reason == v1alpha1.ReasonExpired {
					expired = true
				} else {
					w.Stop()
					return &client.Error{Status: st}
				}
			case v1alpha1.WatchBookmark:
				if obj, err := decodeObject(ev.Object); err == nil {
					if v := str(obj, "metadata.resourceVersion"); v != "" {
						rv = v
					}
				}
			default:
				obj, err := decodeObject(ev.Object)
				if err != nil {
					continue
				}
				if v := str(obj, "metadata.resourceVersion"); v != "" {
					rv = v
				}
				if err := emit(obj, ev.Type == v1alpha1.WatchDeleted); err != nil {
					w.Stop()
					return err
				}
			}
			if expired {
				break
			}
		}
		w.Stop()
		if ctx.Err() != nil {
			return nil
		}
		if expired {
			rv = ""
		}
		if err := w.Err(); err != nil {
			fmt.Fprintf(errOut, "warning: %v; watching again\n", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		if backoff < 5*time.Second {
			backoff *= 2
		}
	}
}

// decodeStatus reads the Status of an ERROR watch event.
func decodeStatus(raw json.RawMessage) v1alpha1.Status {
	var st v1alpha1.Status
	if err := json.Unmarshal(raw, &st); err != nil || (st.Message == "" && st.Reason == "") {
		st = v1alpha1.Status{Status: "Failure", Message: "watch failed: " + string(raw)}
	}
	return st
}

// filterEvents keeps the events about forObject ("Kind/name"; "" keeps all).
func filterEvents(objs []object, forObject string) []object {
	if forObject == "" {
		return objs
	}
	kind, name, _ := strings.Cut(forObject, "/")
	var out []object
	for _, ev := range objs {
		if str(ev, "involvedObject.kind") == kind && str(ev, "involvedObject.name") == name {
			out = append(out, ev)
		}
	}
	return out
}

// sortEvents orders events by their last occurrence, oldest first, as kubectl does; events of
// one instant in the order the server created them.
func sortEvents(objs []object) []object {
	sort.SliceStable(objs, func(i, j int) bool {
		ti, tj := eventTime(objs[i]), eventTime(objs[j])
		if !ti.Equal(tj) {
			return ti.Before(tj)
		}
		ri, _ := strconv.ParseInt(str(objs[i], "metadata.creationRevision"), 10, 64)
		rj, _ := strconv.ParseInt(str(objs[j], "metadata.creationRevision"), 10, 64)
		return ri < rj
	})
	return objs
}
