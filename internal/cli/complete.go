package cli

import (
	"context"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

// Shell completion (cobra's `rakhsh completion bash|zsh|fish|powershell` scripts call
// `rakhsh __complete ...`): kinds, and the names of objects read from the server.

// kindWords are the words a kind may be named by.
func kindWords() []string {
	var out []string
	for _, k := range v1alpha1.Kinds {
		out = append(out, k.Resource)
		out = append(out, k.ShortNames...)
	}
	return out
}

// completeNames lists the names of objects of kind k in the context's project that start
// with prefix.
func completeNames(cc *cliContext, k *v1alpha1.KindInfo, prefix string) []string {
	c, err := cc.Client()
	if err != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l, err := c.List(ctx, k.Resource, scopeNS(k, cc.Namespace()), client.ListOptions{Limit: 500})
	if err != nil {
		return nil
	}
	items, err := decodeItems(l)
	if err != nil {
		return nil
	}
	var out []string
	for _, it := range items {
		if n := objName(it); strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	return out
}

// completeKindNames completes `KIND NAME...` and `KIND/NAME...` arguments; single says the
// command takes one object only.
func completeKindNames(cc *cliContext, single bool) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(_ *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		none := cobra.ShellCompDirectiveNoFileComp
		if len(args) == 0 {
			if kind, prefix, ok := strings.Cut(toComplete, "/"); ok {
				k, found := v1alpha1.LookupKind(kind)
				if !found {
					return nil, none
				}
				var out []string
				for _, n := range completeNames(cc, k, prefix) {
					out = append(out, kind+"/"+n)
				}
				return out, none
			}
			var out []string
			for _, w := range kindWords() {
				if strings.HasPrefix(w, toComplete) {
					out = append(out, w)
				}
			}
			return out, none
		}
		if strings.Contains(args[0], "/") || (single && len(args) > 1) {
			return nil, none
		}
		k, found := v1alpha1.LookupKind(strings.Split(args[0], ",")[0])
		if !found {
			return nil, none
		}
		return without(completeNames(cc, k, toComplete), args[1:]), none
	}
}

// completeVMNames completes the NAME of commands about one VM.
func completeVMNames(cc *cliContext) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(_ *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		k, _ := v1alpha1.KindByName("VirtualMachine")
		return completeNames(cc, k, toComplete), cobra.ShellCompDirectiveNoFileComp
	}
}

func without(list, drop []string) []string {
	var out []string
	for _, s := range list {
		found := false
		for _, d := range drop {
			found = found || s == d
		}
		if !found {
			out = append(out, s)
		}
	}
	return out
}

// addCompletions wires completion into the commands of root.
func addCompletions(cc *cliContext, root *cobra.Command) {
	for _, c := range root.Commands() {
		switch c.Name() {
		case "get", "describe", "delete", "wait", "label":
			c.ValidArgsFunction = completeKindNames(cc, false)
		case "edit", "patch":
			c.ValidArgsFunction = completeKindNames(cc, true)
		case "console", "vnc":
			c.ValidArgsFunction = completeVMNames(cc)
		case "logs":
			c.ValidArgsFunction = func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
				if len(args) == 0 {
					return []string{"vm"}, cobra.ShellCompDirectiveNoFileComp
				}
				return completeVMNames(cc)(cmd, args[1:], toComplete)
			}
		case "vm":
			for _, sub := range c.Commands() {
				sub.ValidArgsFunction = completeVMNames(cc)
			}
		}
	}
	for _, name := range []string{"namespace", "project"} {
		_ = root.RegisterFlagCompletionFunc(name, func(_ *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
			k, _ := v1alpha1.KindByName("Project")
			return completeNames(cc, k, toComplete), cobra.ShellCompDirectiveNoFileComp
		})
	}
}
