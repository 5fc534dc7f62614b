package cli

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

// newDiskCommand returns `rakhsh disk`: actions on VirtualDisks.
func newDiskCommand(cc *cliContext) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "disk",
		Aliases: []string{"disks", "vd"},
		Short:   "Act on virtual disks (move between storage classes)",
		Run:     func(cmd *cobra.Command, _ []string) { _ = cmd.Help() },
	}
	cmd.AddCommand(newDiskMoveCommand(cc))
	return cmd
}

// onNode is " on node NODE", or "" for none.
func onNode(node string) string {
	if node == "" {
		return ""
	}
	return " on node " + node
}

// Reasons of a disk's Migrating condition that end a move without moving (the disk
// controller's).
var moveStopReasons = map[string]bool{v1alpha1.DiskReasonMoveFailed: true, "WaitingForVMToStop": true, "StorageClassNotFound": true, "MoveNotSupported": true}

func newDiskMoveCommand(cc *cliContext) *cobra.Command {
	var class, node string
	var noWait bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "move NAME --storage-class CLASS [--node NODE]",
		Short: "Move a disk to another storage class while no running VM uses it",
		Long: `Move a VirtualDisk into another StorageClass: the disk controller copies its file there,
checks the copy, switches the disk to it and only then removes the old file. A disk is moved
only while no running VM uses it: stop the VM first. The move is declarative: this command
sets spec.persistentVolumeClaim.storageClassName (and, with --node, the annotation
virtualization.rakhsh.io/storage-node, or virtualization.rakhsh.io/move-to-node for a move
within the class) and waits for the disk to arrive. A move between
Shared storage and another node's Local storage is done by that node's agent; a move from
one node's Local storage to another's (--node, in the same class or another) by the target
node's agent, which fetches the file from the source node. A move that fails leaves the
disk where it was; naming its class again (without --node, or with its node) calls a move
off. See docs/storage.md.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if class == "" {
				return usageErrorf("--storage-class is required")
			}
			c, err := cc.Client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			ns, name := cc.Namespace(), args[0]
			// The patch carries the resourceVersion read, so that the checks below hold for the
			// disk it changes.
			var d, out v1alpha1.VirtualDisk
			var cancelling bool
			var origin string // the node the disk is on, or moves away from
			for attempt := 0; ; attempt++ {
				d = v1alpha1.VirtualDisk{}
				if err := c.Get(ctx, "virtualdisks", ns, name, &d); err != nil {
					return err
				}
				migrating := d.Status.Phase == v1alpha1.DiskPhaseMigrating
				origin = cmp.Or(d.Status.MoveSourceNodeName, d.Status.NodeName)
				// A move is asked for (and maybe waits for a VM to stop) or runs: to another class
				// (the spec names it) or to another node (the move-to-node annotation, or a
				// hand-over from another node).
				specClass := d.Spec.PersistentVolumeClaim.StorageClassName
				asked := (specClass != "" && specClass != class) || d.Annotations[v1alpha1.AnnotationMoveToNode] != "" ||
					(migrating && d.Status.MoveSourceNodeName != "")
				// Naming the class the disk is in (and its node, or none) calls such a move off.
				cancelling = d.Status.StorageClassName == class && asked && (node == "" || node == origin)
				if d.Status.StorageClassName == class && !migrating && !asked && (node == "" || node == d.Status.NodeName) {
					fmt.Fprintf(cmd.OutOrStdout(), "virtualdisk/%s is already in storage class %s\n", name, class)
					return nil
				}
				if d.Status.Phase != v1alpha1.DiskPhaseReady && !cancelling {
					return fmt.Errorf("VirtualDisk %q is %s: only a Ready disk can be moved", name, orPending(string(d.Status.Phase)))
				}
				for _, a := range d.Status.AttachedToVirtualMachines {
					if a.Mounted {
						return fmt.Errorf("VirtualDisk %q is used by the running VirtualMachine %q: stop it first (rakhsh vm stop %s), then move the disk", name, a.Name, a.Name)
					}
				}
				var sc v1alpha1.StorageClass
				if err := c.Get(ctx, "storageclasses", "", class, &sc); err != nil {
					if client.IsNotFound(err) {
						return fmt.Errorf("StorageClass %q does not exist (see rakhsh get storageclasses)", class)
					}
					return err
				}
				// Without --node, a node named by an earlier move is forgotten.
				meta := map[string]any{"resourceVersion": d.ResourceVersion,
					"annotations": map[string]any{v1alpha1.AnnotationStorageNode: nil, v1alpha1.AnnotationMoveToNode: nil}}
				if node != "" && !cancelling {
					if sc.Spec.Type != v1alpha1.StorageClassTypeLocal {
						return usageErrorf("--node is only for a Local class: a disk on %s storage class %s runs on any node", sc.Spec.Type, class)
					}
					if err := c.Get(ctx, "nodes", "", node, nil); err != nil {
						if client.IsNotFound(err) {
							return fmt.Errorf("node %q does not exist (see rakhsh get nodes)", node)
						}
						return err
					}
					if d.Status.StorageClassName == class {
						// Within the class: a request to move to that node, taken off once done.
						meta["annotations"] = map[string]any{v1alpha1.AnnotationMoveToNode: node}
					} else {
						meta["annotations"] = map[string]any{v1alpha1.AnnotationStorageNode: node, v1alpha1.AnnotationMoveToNode: nil}
					}
				}
				patch, _ := json.Marshal(map[string]any{
					"metadata": meta,
					"spec":     map[string]any{"persistentVolumeClaim": map[string]any{"storageClassName": class}}})
				err := c.Patch(ctx, "virtualdisks", ns, name, patch, &out)
				if client.IsConflict(err) && attempt < 5 {
					continue // the disk changed since it was read (its controller writes its status): read and check again
				}
				if err != nil {
					return err
				}
				break
			}
			from := d.Status.StorageClassName
			if noWait {
				fmt.Fprintf(cmd.OutOrStdout(), "virtualdisk/%s moving from storage class %s to %s\n", name, from, class)
				return nil
			}
			deadline := time.Now().Add(timeout)
			return poll(ctx, 500*time.Millisecond, func() (bool, error) {
				d = v1alpha1.VirtualDisk{} // omitted fields must not keep the last read's values
				if err := c.Get(ctx, "virtualdisks", ns, name, &d); err != nil {
					return false, err
				}
				if cancelling && d.Status.Phase == v1alpha1.DiskPhaseReady && d.Annotations[v1alpha1.AnnotationMoveToNode] == "" {
					if d.Status.StorageClassName == class && (origin == "" || d.Status.NodeName == origin) {
						fmt.Fprintf(cmd.OutOrStdout(), "virtualdisk/%s: the move was called off; it stays in storage class %s\n", name, class)
						return true, nil
					}
					// The move ended before the call-off reached it.
					return false, fmt.Errorf("the move of VirtualDisk %q ended before it could be called off: it is in storage class %s%s",
						name, d.Status.StorageClassName, onNode(d.Status.NodeName))
				}
				if !cancelling && d.Status.StorageClassName == class && d.Status.Phase == v1alpha1.DiskPhaseReady && (node == "" || d.Status.NodeName == node) {
					fmt.Fprintf(cmd.OutOrStdout(), "virtualdisk/%s moved from storage class %s to %s%s\n", name, from, class, onNode(d.Status.NodeName))
					return true, nil
				}
				if cond := v1alpha1.FindCondition(d.Status.Conditions, v1alpha1.DiskConditionMigrating); cond != nil && cond.Status == v1alpha1.ConditionFalse &&
					moveStopReasons[cond.Reason] && cond.ObservedGeneration == out.Generation {
					return false, errors.New(cond.Message)
				}
				if time.Now().After(deadline) {
					return false, fmt.Errorf("VirtualDisk %q did not reach storage class %s within %s (it is %s; the move goes on: rakhsh describe vd %s)",
						name, class, timeout, orPending(string(d.Status.Phase)), name)
				}
				return false, nil
			}, sameError)
		},
	}
	f := cmd.Flags()
	f.StringVar(&class, "storage-class", "", "the StorageClass to move the disk to (required)")
	f.StringVar(&node, "node", "", "for a Local class: the node whose local storage takes the disk (default: the node it is on, or the control plane's for a disk on Shared storage)")
	f.BoolVar(&noWait, "no-wait", false, "return once the move is asked for, without waiting for it")
	f.DurationVar(&timeout, "timeout", 30*time.Minute, "how long to wait for the move")
	return cmd
}
