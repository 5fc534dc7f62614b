package network

import (
	"context"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

// dropRemovedClaims deletes the automatic MAC and IP claims of vm that none of its interfaces
// uses any more: an interface removed from spec.networks (a hot-unplugged NIC, or one removed
// while the VM was stopped) gives its addresses back. Their leases are released by the
// sweep, as for the claims of a deleted VM (docs/hotplug.md).
func (c *Controller) dropRemovedClaims(ctx context.Context, vm *v1alpha1.VirtualMachine, ifaces []Iface) error {
	used := map[string]bool{}
	for _, f := range ifaces {
		used[f.MACClaim] = true
		if f.IPClaim != "" {
			used[f.IPClaim] = true
		}
	}
	dropped := false
	for _, kind := range []struct {
		claims   []claimView
		resource string
	}{{ipClaims(c.ips), "virtualmachineipaddresses"}, {macClaims(c.macs), "virtualmachinemacaddresses"}} {
		for _, m := range kind.claims {
			md := m.meta
			if md.Namespace != vm.Namespace || md.Annotations[AnnotationAutoFor] != vm.UID || used[md.Name] || md.DeletionTimestamp != nil {
				continue
			}
			if err := c.C.Delete(ctx, kind.resource, md.Namespace, md.Name); err != nil && !client.IsNotFound(err) {
				return err
			}
			dropped = true
			c.Log.Info("deleted the automatic address claim of a removed interface", "resource", kind.resource, "claim", md.Namespace+"/"+md.Name, "vm", vm.Name)
		}
	}
	if dropped {
		c.queue.Add(sweep) // their leases are released
	}
	return nil
}
