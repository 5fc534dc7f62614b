package cli

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

type deleteOptions struct {
	files          []string
	selector       string
	all            bool
	ignoreNotFound bool
	wait           bool
	timeout        time.Duration
	gracePeriod    int
	force          bool
}

// deletion is one object to delete.
type deletion struct {
	kind      *v1alpha1.KindInfo
	namespace string
	name      string
}

func newDeleteCommand(cc *cliContext) *cobra.Command {
	var o deleteOptions
	cmd := &cobra.Command{
		Use:   "delete KIND NAME... | KIND/NAME... | -f FILE | KIND (-l SELECTOR | --all)",
		Short: "Delete objects",
		Long: "Delete objects named on the command line, listed in manifests (-f), or selected by label.\n" +
			"Objects with finalizers are marked for deletion and go once their finalizers are done;\n" +
			"--wait waits until they are gone.",
		Example: "  rakhsh delete vm vm1\n  rakhsh delete -f vm.yaml\n  rakhsh delete vd -l app=web --wait",
		RunE: func(cmd *cobra.Command, args []string) error {
			errOut := cmd.ErrOrStderr()
			if len(o.files) > 0 && len(args) > 0 {
				return usageErrorf("name objects either with -f or with arguments, not both")
			}
			if len(o.files) == 0 && len(args) == 0 {
				return usageErrorf("delete needs KIND NAME..., KIND/NAME... or -f FILE")
			}
			var dels []deletion
			failed := false
			if len(o.files) > 0 {
				for _, m := range readManifests(o.files, cmd.InOrStdin()) {
					k, ns, name, err := manifestTarget(cc, &m)
					if err == nil && name == "" {
						err = fmt.Errorf("%s: metadata.name is required to delete", m.Where())
					}
					if err != nil {
						failed = true
						printError(errOut, err)
						continue
					}
					dels = append(dels, deletion{kind: k, namespace: ns, name: name})
				}
			}
			var c *client.Client
			getClient := func() (*client.Client, error) {
				if c != nil {
					return c, nil
				}
				var err error
				c, err = cc.Client()
				return c, err
			}
			if len(args) > 0 {
				targets, err := resolveTargets(args)
				if err != nil {
					return err
				}
				for _, t := range targets {
					ns := scopeNS(t.kind, cc.Namespace())
					if len(t.names) > 0 {
						if o.all || o.selector != "" {
							return usageErrorf("give names, or -l/--all, not both")
						}
						for _, n := range t.names {
							dels = append(dels, deletion{kind: t.kind, namespace: ns, name: n})
						}
						continue
					}
					if !o.all && o.selector == "" {
						return usageErrorf("delete %s needs names, -l SELECTOR or --all", args[0])
					}
					cl, err := getClient()
					if err != nil {
						return err
					}
					items, err := listObjects(cmd.Context(), cl, t.kind.Resource, ns, client.ListOptions{LabelSelector: o.selector})
					if err != nil {
						return err
					}
					for _, it := range items {
						dels = append(dels, deletion{kind: t.kind, namespace: ns, name: objName(it)})
					}
					if len(items) == 0 {
						printNoResources(errOut, cc, t.kind, false)
					}
				}
			}
			if len(dels) == 0 {
				if failed {
					return errReported
				}
				return nil
			}
			cl, err := getClient()
			if err != nil {
				return err
			}
			if o.force {
				if cmd.Flags().Changed("grace-period") && o.gracePeriod != 0 {
					return usageErrorf("--force means --grace-period 0; give one of them")
				}
				o.gracePeriod = 0
			}
			var deleted []deletion
			for _, d := range dels {
				var err error
				if o.gracePeriod >= 0 {
					err = cl.DeleteWithGrace(cmd.Context(), d.kind.Resource, d.namespace, d.name, time.Duration(o.gracePeriod)*time.Second)
				} else {
					err = cl.Delete(cmd.Context(), d.kind.Resource, d.namespace, d.name)
				}
				if client.IsNotFound(err) && o.ignoreNotFound {
					continue
				}
				if err != nil {
					failed = true
					printError(errOut, err)
					continue
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s deleted\n", ref(d.kind, d.name))
				deleted = append(deleted, d)
			}
			if o.wait && len(deleted) > 0 {
				ctx := cmd.Context()
				ctx, cancel := withTimeout(ctx, o.timeout)
				defer cancel()
				for _, d := range deleted {
					err := waitForObject(ctx, cl, d.kind, d.namespace, d.name, waitCond{what: "delete"}, false)
					if errors.Is(err, errWaitTimeout) {
						return fmt.Errorf("timed out waiting for %s to be deleted", ref(d.kind, d.name))
					}
					if err != nil {
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
	f := cmd.Flags()
	f.StringArrayVarP(&o.files, "filename", "f", nil, "delete the objects of a manifest file, directory, or - for stdin (repeatable)")
	f.StringVarP(&o.selector, "selector", "l", "", "delete the objects of the kind matching this label selector")
	f.BoolVar(&o.all, "all", false, "delete every object of the kind in the project")
	f.BoolVar(&o.ignoreNotFound, "ignore-not-found", false, "do not fail for objects that do not exist")
	f.BoolVar(&o.wait, "wait", false, "wait until the objects are gone (their finalizers done)")
	f.DurationVar(&o.timeout, "timeout", 5*time.Minute, "with --wait, how long to wait (0: forever)")
	f.IntVar(&o.gracePeriod, "grace-period", -1, "seconds a VM gets to shut down before it is powered off (-1: its spec.terminationGracePeriodSeconds)")
	f.BoolVar(&o.force, "force", false, "power VMs off at once instead of asking their guests to shut down (--grace-period 0)")
	return cmd
}
