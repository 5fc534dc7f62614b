package placement

import (
	"fmt"
	"strconv"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// VMQuotaUsage is what one VM counts against its project's quota: its cores and memory. A VM
// counts whether it runs or not (as in Deckhouse and KubeVirt quotas on VM objects), so that
// starting a stopped VM can never fail on quota.
func VMQuotaUsage(vm *v1alpha1.VirtualMachine) (cores, memory int64) {
	memory, _ = vm.Spec.Memory.Size.Value()
	return int64(vm.Spec.CPU.Cores), memory
}

// DiskQuotaUsage is the bytes a VirtualDisk counts against the disk quota: spec size when set,
// else the capacity the disk controller found (a disk made from an image without a size).
func DiskQuotaUsage(d *v1alpha1.VirtualDisk) int64 {
	if n, err := d.Spec.PersistentVolumeClaim.Size.Value(); err == nil && n > 0 {
		return n
	}
	if n, err := v1alpha1.ParseQuantity(d.Status.Capacity); err == nil {
		return n
	}
	return 0
}

// QuotaExceeded checks used+add against each set limit of q and returns one message per
// exceeded quota, naming the quota, the limit, the current usage and the request.
func QuotaExceeded(project string, q *v1alpha1.ProjectQuota, used, add v1alpha1.ProjectUsage) []string {
	if q == nil {
		return nil
	}
	var out []string
	over := func(name string, limit, cur, req int64, format func(int64) string) {
		if req > 0 && cur+req > limit {
			out = append(out, fmt.Sprintf("exceeded quota %s of project %q: requested %s, used %s, limited to %s",
				name, project, format(req), format(cur), format(limit)))
		}
	}
	num := func(n int64) string { return strconv.FormatInt(n, 10) }
	bytes := func(n int64) string { return string(v1alpha1.BytesQuantity(n)) }
	if q.Cores != nil {
		over("cores", *q.Cores, used.Cores, add.Cores, num)
	}
	if q.Memory != "" {
		if lim, err := q.Memory.Value(); err == nil {
			over("memory", lim, qv(used.Memory), qv(add.Memory), bytes)
		}
	}
	if q.Disk != "" {
		if lim, err := q.Disk.Value(); err == nil {
			over("disk", lim, qv(used.Disk), qv(add.Disk), bytes)
		}
	}
	if q.VirtualMachines != nil {
		over("virtualMachines", *q.VirtualMachines, used.VirtualMachines, add.VirtualMachines, num)
	}
	if q.Images != nil {
		over("images", *q.Images, used.Images, add.Images, num)
	}
	return out
}

// OverQuota lists the quotas that usage is over (after a quota was lowered).
func OverQuota(q *v1alpha1.ProjectQuota, u v1alpha1.ProjectUsage) []string {
	if q == nil {
		return nil
	}
	var out []string
	if q.Cores != nil && u.Cores > *q.Cores {
		out = append(out, "cores")
	}
	if lim, err := q.Memory.Value(); q.Memory != "" && err == nil && qv(u.Memory) > lim {
		out = append(out, "memory")
	}
	if lim, err := q.Disk.Value(); q.Disk != "" && err == nil && qv(u.Disk) > lim {
		out = append(out, "disk")
	}
	if q.VirtualMachines != nil && u.VirtualMachines > *q.VirtualMachines {
		out = append(out, "virtualMachines")
	}
	if q.Images != nil && u.Images > *q.Images {
		out = append(out, "images")
	}
	return out
}

func qv(q v1alpha1.Quantity) int64 {
	if q == "" {
		return 0
	}
	n, _ := q.Value()
	return n
}
