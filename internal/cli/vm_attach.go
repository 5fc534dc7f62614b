package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

const vmbdaResource = "virtualmachineblockdeviceattachments"

// newVMAttachCommand returns `rakhsh vm attach VM DISK`: it creates a
// VirtualMachineBlockDeviceAttachment (docs/hotplug.md).
func newVMAttachCommand(cc *cliContext) *cobra.Command {
	var kind, name string
	var wf waitFlags
	cmd := &cobra.Command{
		Use:   "attach VM DISK",
		Short: "Hot-plug a disk or image into a virtual machine (creates a VirtualMachineBlockDeviceAttachment)",
		Long: "Creates a VirtualMachineBlockDeviceAttachment of DISK to VM. A VirtualDisk is attached read-write\n" +
			"(one virtual machine at a time); a VirtualImage or ClusterVirtualImage read-only, as a CD-ROM when\n" +
			"it is an ISO. A stopped virtual machine gets the device when it runs. With --wait the command\n" +
			"waits until the device is attached and fails if the attachment fails.",
		Example: "  rakhsh vm attach vm1 data1 --wait\n  rakhsh vm attach vm1 debian-iso --kind ClusterVirtualImage",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			k, err := parseBlockKind(kind)
			if err != nil {
				return err
			}
			c, err := cc.Client()
			if err != nil {
				return err
			}
			ns, vm, disk := cc.Namespace(), args[0], args[1]
			if name == "" {
				name = attachmentName(vm, disk)
			}
			b := v1alpha1.VirtualMachineBlockDeviceAttachment{
				TypeMeta:   v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachineBlockDeviceAttachment"},
				ObjectMeta: v1alpha1.ObjectMeta{Name: name, Namespace: ns},
				Spec: v1alpha1.VirtualMachineBlockDeviceAttachmentSpec{VirtualMachineName: vm,
					BlockDeviceRef: v1alpha1.VMBDAObjectRef{Kind: k, Name: disk}},
			}
			if err := c.Create(cmd.Context(), vmbdaResource, ns, &b, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "virtualmachineblockdeviceattachment/%s created\n", name)
			if !wf.wait {
				return nil
			}
			return pollAttachment(cmd.Context(), c, ns, name, wf.timeout, func(b *v1alpha1.VirtualMachineBlockDeviceAttachment, gone bool) (bool, error) {
				switch {
				case gone:
					return false, fmt.Errorf("attachment %s was deleted", name)
				case b.Status.Phase == v1alpha1.VMBDAPhaseAttached:
					fmt.Fprintf(cmd.OutOrStdout(), "%s %s attached to virtual machine %s\n", k, disk, vm)
					return true, nil
				case b.Status.Phase == v1alpha1.VMBDAPhaseFailed:
					return false, fmt.Errorf("attachment %s failed: %s", name, attachmentWhy(b))
				}
				return false, nil
			})
		},
	}
	cmd.Flags().StringVar(&kind, "kind", "VirtualDisk", "the kind of DISK: VirtualDisk, VirtualImage or ClusterVirtualImage")
	cmd.Flags().StringVar(&name, "name", "", "the attachment's name (default VM-DISK)")
	wf.add(cmd, "wait until the device is attached; fail if the attachment fails", 2*time.Minute)
	return cmd
}

// newVMDetachCommand returns `rakhsh vm detach VM DISK`: it deletes the attachments of DISK
// to VM.
func newVMDetachCommand(cc *cliContext) *cobra.Command {
	var kind string
	var wf waitFlags
	cmd := &cobra.Command{
		Use:   "detach VM DISK",
		Short: "Unplug a hot-plugged disk or image from a virtual machine (deletes its VirtualMachineBlockDeviceAttachment)",
		Long: "Deletes the VirtualMachineBlockDeviceAttachment of DISK to VM. The attachment goes once the device\n" +
			"is unplugged (the guest must release it) or at once when the virtual machine does not run.\n" +
			"With --wait the command waits until it is gone.",
		Example: "  rakhsh vm detach vm1 data1 --wait",
		Args:    cobra.ExactArgs(2),
		RunE: cc.withClient(func(cmd *cobra.Command, args []string, c *client.Client) error {
			ns, vm, disk := cc.Namespace(), args[0], args[1]
			var k v1alpha1.BlockDeviceKind
			if kind != "" {
				var err error
				if k, err = parseBlockKind(kind); err != nil {
					return err
				}
			}
			l, err := c.ListAll(cmd.Context(), vmbdaResource, ns, client.ListOptions{})
			if err != nil {
				return err
			}
			var names []string
			for _, raw := range l.Items {
				var b v1alpha1.VirtualMachineBlockDeviceAttachment
				if err := json.Unmarshal(raw, &b); err != nil {
					return err
				}
				r := b.Spec.BlockDeviceRef
				if b.Spec.VirtualMachineName == vm && r.Name == disk && (k == "" || r.Kind == k) {
					names = append(names, b.Name)
				}
			}
			if len(names) == 0 {
				return fmt.Errorf("no VirtualMachineBlockDeviceAttachment of %q to virtual machine %q in project %s", disk, vm, ns)
			}
			for _, n := range names {
				if err := c.Delete(cmd.Context(), vmbdaResource, ns, n); err != nil && !client.IsNotFound(err) {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "virtualmachineblockdeviceattachment/%s deleted\n", n)
			}
			if !wf.wait {
				return nil
			}
			for _, n := range names {
				err := pollAttachment(cmd.Context(), c, ns, n, wf.timeout, func(_ *v1alpha1.VirtualMachineBlockDeviceAttachment, gone bool) (bool, error) {
					return gone, nil
				})
				if err != nil {
					return err
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s detached from virtual machine %s\n", disk, vm)
			return nil
		}),
	}
	cmd.Flags().StringVar(&kind, "kind", "", "only the attachments of this kind of DISK (default: any)")
	wf.add(cmd, "wait until the device is unplugged and the attachment gone", 2*time.Minute)
	return cmd
}

func parseBlockKind(s string) (v1alpha1.BlockDeviceKind, error) {
	for _, k := range []v1alpha1.BlockDeviceKind{v1alpha1.BlockDeviceKindVirtualDisk, v1alpha1.BlockDeviceKindVirtualImage, v1alpha1.BlockDeviceKindClusterVirtualImage} {
		if strings.EqualFold(s, string(k)) {
			return k, nil
		}
	}
	switch strings.ToLower(s) {
	case "vd":
		return v1alpha1.BlockDeviceKindVirtualDisk, nil
	case "vi":
		return v1alpha1.BlockDeviceKindVirtualImage, nil
	case "cvi":
		return v1alpha1.BlockDeviceKindClusterVirtualImage, nil
	}
	return "", usageErrorf("--kind %q is not VirtualDisk, VirtualImage or ClusterVirtualImage", s)
}

// attachmentName is VM-DISK, cut to a DNS label.
func attachmentName(vm, disk string) string {
	n := vm + "-" + disk
	if len(n) > 63 {
		n = strings.TrimRight(n[:63], "-")
	}
	return n
}

// attachmentWhy is the message of the first False condition of b.
func attachmentWhy(b *v1alpha1.VirtualMachineBlockDeviceAttachment) string {
	for _, c := range b.Status.Conditions {
		if c.Status == v1alpha1.ConditionFalse && c.Message != "" {
			return c.Reason + ": " + c.Message
		}
	}
	return "no reason given"
}

// pollAttachment reads the attachment until done says so (or fails), or the timeout.
func pollAttachment(ctx context.Context, c *client.Client, ns, name string, timeout time.Duration,
	done func(b *v1alpha1.VirtualMachineBlockDeviceAttachment, gone bool) (bool, error)) error {
	ctx, cancel := withTimeout(ctx, timeout)
	defer cancel()
	var phase v1alpha1.VMBDAPhase
	return poll(ctx, 200*time.Millisecond, func() (bool, error) {
		var b v1alpha1.VirtualMachineBlockDeviceAttachment
		err := c.Get(ctx, vmbdaResource, ns, name, &b)
		if err != nil && !client.IsNotFound(err) {
			return false, err
		}
		phase = b.Status.Phase
		return done(&b, client.IsNotFound(err))
	}, func(err error) error {
		return fmt.Errorf("waiting for attachment %s (phase %s): %w", name, orNoPhase(string(phase)), err)
	})
}

func orNoPhase(s string) string {
	if s == "" {
		return "none yet"
	}
	return s
}
