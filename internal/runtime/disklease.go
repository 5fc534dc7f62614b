package runtime

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

// Disk leases (v1alpha1.VirtualDiskLease): one per writable VirtualDisk, named after it, that
// says which node may run a QEMU writing the disk. Every change is a compare-and-swap on the
// resourceVersion read; the resourceVersion of a held lease is its fencing token. These helpers
// are shared by the agent (acquire before a start, release after a stop), the HA controller
// (release the leases of a failed node's VMs) and the migration controller (hand them to the
// target after a switch-over).

// DiskLeaseResource is the REST resource of VirtualDiskLeases.
const DiskLeaseResource = "virtualdiskleases"

// ErrDiskLeaseHeld is returned (wrapped, with the holder) when another node or VM holds a
// lease.
var ErrDiskLeaseHeld = errors.New("the disk lease is held")

// WritableDisks returns the names of the VirtualDisks vm writes: those of
// spec.blockDeviceRefs and of status.blockDeviceRefs (hot-plugged), once each. Images are
// read-only and need no lease.
func WritableDisks(vm *v1alpha1.VirtualMachine) []string {
	var out []string
	seen := map[string]bool{}
	add := func(kind v1alpha1.BlockDeviceKind, name string) {
		if kind == v1alpha1.BlockDeviceKindVirtualDisk && name != "" && !seen[name] {
			seen[name] = true
			out = append(out, name)
		}
	}
	for _, r := range vm.Spec.BlockDeviceRefs {
		add(r.Kind, r.Name)
	}
	for _, r := range vm.Status.BlockDeviceRefs {
		add(r.Kind, r.Name)
	}
	return out
}

// AcquireDiskLease takes the lease of disk ns/name for the VM instance uid (called vmName) on
// node: it creates it, takes it when free, or finds it already held so. It returns the lease
// as written (its resourceVersion is the fencing token), or an error wrapping
// ErrDiskLeaseHeld that names the holder. mayTake, when not nil, is asked whether a lease
// held by node for another instance of a VM may be taken (that instance no longer runs here).
func AcquireDiskLease(ctx context.Context, c client.Interface, ns, name, node, vmName, uid string, now time.Time,
	mayTake func(l *v1alpha1.VirtualDiskLease) bool) (*v1alpha1.VirtualDiskLease, error) {
	for attempt := 0; ; attempt++ {
		var l v1alpha1.VirtualDiskLease
		err := c.Get(ctx, DiskLeaseResource, ns, name, &l)
		at := &v1alpha1.Time{Time: now.UTC().Truncate(time.Second)}
		switch {
		case client.IsNotFound(err):
			l = v1alpha1.VirtualDiskLease{
				TypeMeta:   v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualDiskLease"},
				ObjectMeta: v1alpha1.ObjectMeta{Name: name, Namespace: ns},
				Spec: v1alpha1.VirtualDiskLeaseSpec{HolderNode: node, VirtualMachineName: vmName, VirtualMachineUID: uid,
					AcquireTime: at, LeaseTransitions: 1},
			}
			var out v1alpha1.VirtualDiskLease
			err = c.Create(ctx, DiskLeaseResource, ns, &l, &out)
			if err == nil {
				return &out, nil
			}
			if !client.IsConflict(err) && !client.IsAlreadyExists(err) {
				return nil, fmt.Errorf("creating the lease of VirtualDisk %s/%s: %w", ns, name, err)
			}
		case err != nil:
			return nil, fmt.Errorf("reading the lease of VirtualDisk %s/%s: %w", ns, name, err)
		case l.HeldBy(node, uid):
			return &l, nil
		case l.Free() || (l.Spec.HolderNode == node && mayTake != nil && mayTake(&l)):
			l.Spec = v1alpha1.VirtualDiskLeaseSpec{HolderNode: node, VirtualMachineName: vmName, VirtualMachineUID: uid,
				AcquireTime: at, LeaseTransitions: l.Spec.LeaseTransitions + 1}
			var out v1alpha1.VirtualDiskLease
			err = c.Update(ctx, DiskLeaseResource, ns, name, &l, &out)
			if err == nil {
				return &out, nil
			}
			if !client.IsConflict(err) {
				return nil, fmt.Errorf("taking the lease of VirtualDisk %s/%s: %w", ns, name, err)
			}
		default:
			return &l, fmt.Errorf("%w: VirtualDisk %s/%s is leased to VM %s on node %s (token %s)", ErrDiskLeaseHeld,
				ns, name, l.Spec.VirtualMachineName, l.Spec.HolderNode, l.ResourceVersion)
		}
		if attempt >= 4 {
			return nil, fmt.Errorf("the lease of VirtualDisk %s/%s kept changing: %w", ns, name, err)
		}
	}
}

// ReleaseDiskLease frees the lease of disk ns/name when from holds it (for the VM instance uid,
// unless uid is ""); by says who and why. A lease that is gone, free, or held by someone else
// is left alone. It reports whether it freed the lease.
func ReleaseDiskLease(ctx context.Context, c client.Interface, ns, name, from, uid, by string) (bool, error) {
	return moveDiskLease(ctx, c, ns, name, from, uid, "", by)
}

// MoveDiskLease hands the lease of disk ns/name from node from (for the VM instance uid) to
// node to, as the migration controller does after a switch-over; a free lease is taken for to
// too. It reports whether it wrote.
func MoveDiskLease(ctx context.Context, c client.Interface, ns, name, from, to, uid, by string) (bool, error) {
	return moveDiskLease(ctx, c, ns, name, from, uid, to, by)
}

func moveDiskLease(ctx context.Context, c client.Interface, ns, name, from, uid, to, by string) (bool, error) {
	for attempt := 0; ; attempt++ {
		var l v1alpha1.VirtualDiskLease
		err := c.Get(ctx, DiskLeaseResource, ns, name, &l)
		if client.IsNotFound(err) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("reading the lease of VirtualDisk %s/%s: %w", ns, name, err)
		}
		held := l.Spec.HolderNode == from && (uid == "" || l.Spec.VirtualMachineUID == uid)
		free := l.Free()
		if !held && !(to != "" && free) {
			return false, nil
		}
		if to != "" && l.Spec.HolderNode == to {
			return false, nil
		}
		spec := l.Spec
		spec.LeaseTransitions++
		if to == "" {
			spec.HolderNode, spec.AcquireTime, spec.ReleasedBy = "", nil, by
		} else {
			spec.HolderNode, spec.AcquireTime, spec.ReleasedBy = to, &v1alpha1.Time{Time: time.Now().UTC().Truncate(time.Second)}, by
			if uid != "" {
				spec.VirtualMachineUID = uid
			}
		}
		l.Spec = spec
		err = c.Update(ctx, DiskLeaseResource, ns, name, &l, nil)
		if err == nil {
			return true, nil
		}
		if !client.IsConflict(err) || attempt >= 4 {
			return false, fmt.Errorf("writing the lease of VirtualDisk %s/%s: %w", ns, name, err)
		}
	}
}
