package apiserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	mathrand "math/rand/v2"
	"strings"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/placement"
)

// admit runs the checks that need other objects than the one written: the VM class (default
// class, sizing policies), a single default class, and project quotas. It runs after
// validation, on create (old nil) and on spec updates. It may fill in defaults that come from
// other objects (the VM's class and what the class's sizing policy defaults).
//
// The caller calls the returned unlock (never nil) after its store write: when the write
// takes more of a quota, the project's quota lock (lockQuota) is held until then.
func (s *Server) admit(ctx context.Context, namespace string, obj, old v1alpha1.Object) (func(), error) {
	noop := func() {}
	var kind, name string
	var add v1alpha1.ProjectUsage
	unknownDiskSize := false
	switch o := obj.(type) {
	case *v1alpha1.VirtualMachine:
		var ov *v1alpha1.VirtualMachine
		if old != nil {
			ov = old.(*v1alpha1.VirtualMachine)
		}
		if err := s.admitVMClass(ctx, o, ov); err != nil {
			return noop, err
		}
		c, m := placement.VMQuotaUsage(o)
		if ov != nil {
			oc, om := placement.VMQuotaUsage(ov)
			c, m = c-oc, m-om
		} else {
			add.VirtualMachines = 1
		}
		kind, name = "VirtualMachine", o.Name
		add.Cores, add.Memory = max(c, 0), v1alpha1.BytesQuantity(max(m, 0))
	case *v1alpha1.VirtualDisk:
		n := placement.DiskQuotaUsage(o)
		if old != nil {
			n -= placement.DiskQuotaUsage(old.(*v1alpha1.VirtualDisk))
		} else if n == 0 {
			// No size asked for: the disk gets its source's size.
			src, known, err := s.diskSourceSize(ctx, namespace, o)
			if err != nil {
				return noop, err
			}
			n, unknownDiskSize = src, !known
		}
		kind, name = "VirtualDisk", o.Name
		add.Disk = v1alpha1.BytesQuantity(max(n, 0))
	case *v1alpha1.VirtualImage:
		if old == nil {
			kind, name = "VirtualImage", o.Name
			add.Images = 1
		}
	case *v1alpha1.VirtualMachineClass:
		return noop, s.admitDefaultClass(ctx, o)
	}
	if kind == "" || (usageIsZero(add) && !unknownDiskSize) {
		return noop, nil // nothing more is asked for
	}
	quota, err := s.projectQuota(ctx, namespace)
	if err != nil || quota == nil {
		return noop, err
	}
	if unknownDiskSize && quota.Disk != "" {
		return noop, errs.New(errs.ErrForbidden, "VirtualDisk %q is forbidden: project %q has a disk quota and the size of the disk's source is not known yet: set spec.persistentVolumeClaim.size, or create the disk once its source is Ready", name, namespace)
	}
	unlock, err := s.lockQuota(ctx, namespace)
	if err != nil {
		return noop, err
	}
	u, err := s.ProjectUsage(ctx, namespace)
	if err == nil {
		err = (&quotaUse{project: namespace, quota: quota, used: u}).check(kind, name, add)
	}
	if err != nil {
		unlock()
		return noop, err
	}
	return unlock, nil
}

// lockQuota serialises the admissions that take more of a project's quota, from the usage
// read to the store write, so two creates cannot both take the last free core, through this
// API server or another one on the same store. Within the process a mutex orders them; across
// processes a lock key in the store does (/locks/quota/PROJECT, created by the holder and
// deleted when its write is done; one left by a server that died is taken over once its
// time, quotaLockTTL, has passed). Writes to projects without a quota never take it.
func (s *Server) lockQuota(ctx context.Context, project string) (func(), error) {
	s.admitMu.Lock()
	key := "/locks/quota/" + project
	deadline := time.Now().Add(quotaLockWait)
	for attempt := 0; ; attempt++ {
		holder, _ := json.Marshal(quotaLock{Holder: s.instance, Until: time.Now().Add(quotaLockTTL)})
		rev, err := s.store.Create(ctx, key, holder)
		if errors.Is(err, errs.ErrAlreadyExists) {
			// Held: take it over if its holder's time is up, else wait.
			if kv, gerr := s.store.Get(ctx, key); gerr == nil {
				var cur quotaLock
				if json.Unmarshal(kv.Value, &cur) != nil || time.Now().After(cur.Until) {
					rev, err = s.store.Update(ctx, key, holder, kv.ModRevision)
				}
			}
		}
		if err == nil {
			return func() {
				// Not the request's context: a cancelled request must still release the lock.
				dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				if _, _, err := s.store.Delete(dctx, key, rev); err != nil && !errors.Is(err, errs.ErrNotFound) {
					s.log.Warn("releasing the quota lock failed; it expires by itself", "project", project, "err", err)
				}
				s.admitMu.Unlock()
			}, nil
		}
		busy := errors.Is(err, errs.ErrAlreadyExists) || errors.Is(err, errs.ErrConflict) || errors.Is(err, errs.ErrNotFound)
		if !busy && ctx.Err() == nil {
			s.admitMu.Unlock()
			return nil, err
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			s.admitMu.Unlock()
			return nil, errs.New(errs.ErrConflict, "the quota of project %q is being taken by another request; try again", project)
		}
		time.Sleep(time.Duration(1+mathrand.IntN(2*min(attempt+1, 10))) * time.Millisecond)
	}
}

// quotaLock is the value of a project's quota lock key.
type quotaLock struct {
	Holder string    `json:"holder"`
	Until  time.Time `json:"until"`
}

const (
	// quotaLockTTL is how long a quota lock holds when its holder does not release it (a
	// server that died between its usage read and its write).
	quotaLockTTL = 10 * time.Second
	// quotaLockWait is how long an admission waits for another one's lock.
	quotaLockWait = 5 * time.Second
)

// admitVMClass gives a VM without a class the project's default class or else the cluster's
// default class, fills in what the class's sizing policy defaults and checks the sizing
// policy. On updates a VM keeps its class when the new spec leaves it out, and the sizing is
// checked only when the spec changes: a VM that a class change put out of policy keeps
// running, but any spec edit must bring it back into the policy.
func (s *Server) admitVMClass(ctx context.Context, vm, old *v1alpha1.VirtualMachine) error {
	if vm.Spec.VirtualMachineClassName == "" {
		switch {
		case old != nil:
			vm.Spec.VirtualMachineClassName = old.Spec.VirtualMachineClassName
		default:
			name, err := s.defaultClassFor(ctx, vm.Namespace)
			if err != nil {
				return err
			}
			vm.Spec.VirtualMachineClassName = name
		}
	}
	if vm.Spec.VirtualMachineClassName == "" {
		if vm.Spec.CPU.CoreFraction == "" {
			vm.Spec.CPU.CoreFraction = "100%"
		}
		return nil
	}
	class, err := s.getClass(ctx, vm.Spec.VirtualMachineClassName)
	if err != nil {
		return err
	}
	if class == nil {
		if old != nil && old.Spec.VirtualMachineClassName == vm.Spec.VirtualMachineClassName {
			// The class went away under an existing VM: nothing to check against.
			if vm.Spec.CPU.CoreFraction == "" {
				vm.Spec.CPU.CoreFraction = old.Spec.CPU.CoreFraction
			}
			return nil
		}
		return errs.NewInvalid("VirtualMachine", vm.Name, errs.FieldErrors{{Field: "spec.virtualMachineClassName", Type: errs.FieldValueNotSupported,
			Message: fmt.Sprintf("VirtualMachineClass %q not found: create it first, or list the classes with `rakhsh get vmclass`", vm.Spec.VirtualMachineClassName)}})
	}
	if class.DeletionTimestamp != nil && (old == nil || old.Spec.VirtualMachineClassName != class.Name) {
		return errs.New(errs.ErrForbidden, "VirtualMachineClass %q is being deleted: new VMs may not use it", class.Name)
	}
	if old != nil && jsonEqual(vm.Spec, old.Spec) {
		return nil // not a spec edit (metadata, finalizers): the class is not consulted
	}
	placement.DefaultFromClass(vm, class)
	return errs.NewInvalid("VirtualMachine", vm.Name, placement.CheckSizing(vm, class))
}

func jsonEqual(a, b any) bool {
	x, err1 := json.Marshal(a)
	y, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && string(x) == string(y)
}

// getClass reads a class; nil when it does not exist.
func (s *Server) getClass(ctx context.Context, name string) (*v1alpha1.VirtualMachineClass, error) {
	kv, err := s.store.Get(ctx, "/virtualmachineclasses/"+name)
	if errors.Is(err, errs.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var c v1alpha1.VirtualMachineClass
	if err := json.Unmarshal(kv.Value, &c); err != nil {
		return nil, err
	}
	return &c, nil
}

// defaultClassFor is the class a new VM without one gets: the project's
// spec.defaults.virtualMachineClassName, else the class annotated as the default, else none.
func (s *Server) defaultClassFor(ctx context.Context, project string) (string, error) {
	if kv, err := s.store.Get(ctx, "/projects/"+project); err == nil {
		var p v1alpha1.Project
		if json.Unmarshal(kv.Value, &p) == nil && p.Spec.Defaults != nil && p.Spec.Defaults.VirtualMachineClassName != "" {
			return p.Spec.Defaults.VirtualMachineClassName, nil
		}
	}
	def, err := s.defaultClasses(ctx, "")
	if err != nil || len(def) == 0 {
		return "", err
	}
	return def[0], nil
}

// defaultClasses lists the classes annotated as default, except the one named skip.
func (s *Server) defaultClasses(ctx context.Context, skip string) ([]string, error) {
	res, err := s.store.List(ctx, "/virtualmachineclasses/", storeListLimit(0))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, kv := range res.KVs {
		var c v1alpha1.VirtualMachineClass
		if json.Unmarshal(kv.Value, &c) != nil || c.Name == skip || c.DeletionTimestamp != nil {
			continue
		}
		if placement.IsDefaultClass(&c) {
			out = append(out, c.Name)
		}
	}
	return out, nil
}

// admitDefaultClass refuses a second default class.
func (s *Server) admitDefaultClass(ctx context.Context, c *v1alpha1.VirtualMachineClass) error {
	if !placement.IsDefaultClass(c) {
		return nil
	}
	others, err := s.defaultClasses(ctx, c.Name)
	if err != nil || len(others) == 0 {
		return err
	}
	return errs.NewInvalid("VirtualMachineClass", c.Name, errs.FieldErrors{{Field: "metadata.annotations", Type: errs.FieldValueForbidden,
		Message: fmt.Sprintf("only one class may be the default, and %q already is: remove its annotation %s first",
			others[0], v1alpha1.AnnotationDefaultVirtualMachineClassDeckhouse)}})
}

// quotaUse is a project's quota and its current usage.
type quotaUse struct {
	project string
	quota   *v1alpha1.ProjectQuota
	used    v1alpha1.ProjectUsage
}

func (u *quotaUse) check(kind, name string, add v1alpha1.ProjectUsage) error {
	msgs := placement.QuotaExceeded(u.project, u.quota, u.used, add)
	if len(msgs) == 0 {
		return nil
	}
	return errs.New(errs.ErrForbidden, "%s %q is forbidden: %s", kind, name, strings.Join(msgs, "; "))
}

// projectQuota returns the project's quota; nil when it has none.
func (s *Server) projectQuota(ctx context.Context, project string) (*v1alpha1.ProjectQuota, error) {
	kv, err := s.store.Get(ctx, "/projects/"+project)
	if err != nil {
		if errors.Is(err, errs.ErrNotFound) {
			return nil, nil
		}
		return nil, err
	}
	var p v1alpha1.Project
	if err := json.Unmarshal(kv.Value, &p); err != nil {
		return nil, err
	}
	if p.Spec.Quota == nil || *p.Spec.Quota == (v1alpha1.ProjectQuota{}) {
		return nil, nil
	}
	return p.Spec.Quota, nil
}

// ProjectUsage sums what the project's VMs, disks and images use.
func (s *Server) ProjectUsage(ctx context.Context, project string) (v1alpha1.ProjectUsage, error) {
	var u v1alpha1.ProjectUsage
	var mem, disk int64
	for _, res := range []string{"virtualmachines", "virtualdisks", "virtualimages"} {
		list, err := s.store.List(ctx, "/"+res+"/"+project+"/", storeListLimit(0))
		if err != nil {
			return u, err
		}
		for _, kv := range list.KVs {
			switch res {
			case "virtualmachines":
				var vm v1alpha1.VirtualMachine
				if json.Unmarshal(kv.Value, &vm) != nil {
					continue
				}
				c, m := placement.VMQuotaUsage(&vm)
				u.Cores += c
				mem += m
				u.VirtualMachines++
			case "virtualdisks":
				var d v1alpha1.VirtualDisk
				if json.Unmarshal(kv.Value, &d) != nil {
					continue
				}
				disk += placement.DiskQuotaUsage(&d)
			case "virtualimages":
				u.Images++
			}
		}
	}
	u.Memory, u.Disk = v1alpha1.BytesQuantity(mem), v1alpha1.BytesQuantity(disk)
	return u, nil
}

// usageIsZero says whether u asks for nothing.
func usageIsZero(u v1alpha1.ProjectUsage) bool {
	zero := func(q v1alpha1.Quantity) bool { n, _ := q.Value(); return q == "" || n == 0 }
	return u.Cores == 0 && u.VirtualMachines == 0 && u.Images == 0 && zero(u.Memory) && zero(u.Disk)
}

// diskSourceSize is the size a new disk without spec.persistentVolumeClaim.size gets: the
// unpacked size of its source image, or the capacity of its source disk. known is false when
// the source is not Ready yet or is an import (HTTP, registry, upload) whose size comes later;
// a blank disk has no size to take (validation requires one).
func (s *Server) diskSourceSize(ctx context.Context, namespace string, d *v1alpha1.VirtualDisk) (int64, bool, error) {
	ds := d.Spec.DataSource
	if ds == nil || ds.ObjectRef == nil {
		return 0, ds == nil, nil
	}
	ref := ds.ObjectRef
	ns := ref.Namespace
	if ns == "" {
		ns = namespace
	}
	var k string
	switch ref.Kind {
	case v1alpha1.DataSourceKindClusterVirtualImage:
		k = "/clustervirtualimages/" + ref.Name
	case v1alpha1.DataSourceKindVirtualImage:
		k = "/virtualimages/" + ns + "/" + ref.Name
	case v1alpha1.DataSourceKindVirtualDisk:
		k = "/virtualdisks/" + ns + "/" + ref.Name
	case v1alpha1.DataSourceKindVirtualDiskSnapshot:
		k = "/virtualdisksnapshots/" + ns + "/" + ref.Name
	case v1alpha1.DataSourceKindVirtualMachineBackup:
		k = "/virtualmachinebackups/" + ns + "/" + ref.Name
	default:
		return 0, false, nil
	}
	kv, err := s.store.Get(ctx, k)
	if errors.Is(err, errs.ErrNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	if ref.Kind == v1alpha1.DataSourceKindVirtualMachineBackup {
		// The backed-up disk's capacity, once the backup completed.
		var b v1alpha1.VirtualMachineBackup
		if err := json.Unmarshal(kv.Value, &b); err != nil {
			return 0, false, err
		}
		for _, bd := range b.Status.Disks {
			if bd.Name == ref.DiskName || (ref.DiskName == "" && len(b.Status.Disks) == 1) {
				return bd.Capacity, bd.Capacity > 0, nil
			}
		}
		return 0, false, nil
	}
	if ref.Kind == v1alpha1.DataSourceKindVirtualDiskSnapshot {
		// The disk snapshot's size (that of the disk it was taken of), once it is known.
		var snap v1alpha1.VirtualDiskSnapshot
		if err := json.Unmarshal(kv.Value, &snap); err != nil {
			return 0, false, err
		}
		n, err := snap.Status.Size.Value()
		if err != nil || n <= 0 {
			return 0, false, nil
		}
		return n, true, nil
	}
	if ref.Kind == v1alpha1.DataSourceKindVirtualDisk {
		var src v1alpha1.VirtualDisk
		if err := json.Unmarshal(kv.Value, &src); err != nil {
			return 0, false, err
		}
		n := placement.DiskQuotaUsage(&src)
		return n, n > 0, nil
	}
	var img struct {
		Status v1alpha1.ImageStatus `json:"status"`
	}
	if err := json.Unmarshal(kv.Value, &img); err != nil {
		return 0, false, err
	}
	if img.Status.Phase != v1alpha1.ImagePhaseReady || img.Status.Size == nil || img.Status.Size.UnpackedBytes <= 0 {
		return 0, false, nil
	}
	return img.Status.Size.UnpackedBytes, true, nil
}
