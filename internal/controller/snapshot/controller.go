// Package snapshot is the reconciler of VirtualDiskSnapshots and VirtualMachineSnapshots.
//
// A disk snapshot is a whole, standalone qcow2 copy of a disk at one instant, kept in the
// disk's storage class (CLASSDIR/snapshots/UID.qcow2, no backing file). Who copies depends on
// whether the disk is in use:
//   - no running VM has the disk: this controller copies the file with qemu-img convert (the
//     image lock makes a VM that starts meanwhile wait, and a copy that meets a running VM's
//     lock is tried again). The snapshot is consistent: nothing wrote to the disk.
//   - a running VM has it: this controller hands the snapshot to the agent of the VM's node
//     (status.nodeName, phase InProgress), which copies it through QMP without stopping the VM
//     (internal/agent/snapshot.go), freezing the guest's filesystems for the instant the copy
//     starts when the guest agent answers. With spec.requiredConsistency (the default) the
//     snapshot waits until the VM's guest agent is ready.
//
// Deleting a snapshot removes its file: nothing else depends on it (a disk made from a
// snapshot is a full copy).
package snapshot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// Finalizer keeps a snapshot until its file is removed.
const Finalizer = "virtualization.rakhsh.io/snapshot-cleanup"

// waitRetry is how often a snapshot that waits for its VM (starting, stopping, migrating) or
// for a disk in use by a VM that just started is looked at again.
var waitRetry = 2 * time.Second

// Config configures the controller.
type Config struct {
	runtime.Deps
	DataDir string
	// NodeName is this host: the controller copies files it can reach (a Local class's files
	// on this node, a Shared class's files).
	NodeName string
	Now      func() time.Time
}

// Controller reconciles disk and VM snapshots.
type Controller struct {
	// restoring holds the uids of the restores of this process that hold disk leases (the
	// sweep of leases of restores that are gone leaves them).
	restoring sync.Map
	cfg       Config
	runtime.Base
	ctl     *runtime.Controller
	vmctl   *runtime.Controller
	opctl   *runtime.Controller
	ops     *runtime.TypedInformer[v1alpha1.VirtualMachineOperation]
	snaps   *runtime.TypedInformer[v1alpha1.VirtualDiskSnapshot]
	vmsnaps *runtime.TypedInformer[v1alpha1.VirtualMachineSnapshot]
	disks   *runtime.TypedInformer[v1alpha1.VirtualDisk]
	vms     *runtime.TypedInformer[v1alpha1.VirtualMachine]
	classes *runtime.TypedInformer[v1alpha1.StorageClass]
}

// New returns a controller; Run starts it.
func New(cfg Config) *Controller {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	b := runtime.NewBase(cfg.Deps, "snapshot-controller", "controller", "snapshot")
	c := &Controller{cfg: cfg, Base: b}
	f := b.Informers
	c.snaps, c.vmsnaps = f.VirtualDiskSnapshots(), f.VirtualMachineSnapshots()
	c.disks, c.vms, c.classes = f.VirtualDisks(), f.VirtualMachines(), f.StorageClasses()
	c.ops = f.VirtualMachineOperations()
	c.ctl = runtime.NewController("virtualdisksnapshots", c.Log).
		For(c.snaps).
		Watches(c.disks, c.snapshotsOfDisk).
		Watches(c.vms, c.snapshotsOfVM).
		Reads(c.classes).
		Workers(2).
		Build(c.reconcile)
	c.vmctl = runtime.NewController("virtualmachinesnapshots", c.Log).
		For(c.vmsnaps).
		Watches(c.snaps, c.vmSnapshotOfDiskSnapshot).
		Watches(c.vms, c.vmSnapshotsOfVM).
		Workers(1).
		Build(c.reconcileVM)
	c.opctl = runtime.NewController("snapshot-operations", c.Log).
		For(c.ops).
		Watches(c.vms, c.restoreOpsOfVM).
		Watches(c.vmsnaps, c.cloneOpsOfVMSnapshot).
		Watches(c.disks, c.cloneOpsOfDisk).
		Reads(c.classes).
		Workers(1).
		Build(c.reconcileOp)
	return c
}

// Run reconciles until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	if c.C == nil || c.cfg.DataDir == "" || c.cfg.NodeName == "" {
		return errors.New("snapshot controller: Client, DataDir and NodeName are required")
	}
	go c.sweepRestoreLeases(ctx)
	return c.Base.Run(ctx, c.ctl, c.vmctl, c.opctl)
}

func (c *Controller) snapshotsOfDisk(k runtime.Key) []runtime.Key {
	ns, name := k.Split()
	return c.snaps.KeysWhere(func(s *v1alpha1.VirtualDiskSnapshot) bool { return s.Namespace == ns && s.Spec.VirtualDiskName == name })
}

// snapshotsOfVM: the snapshots of the VM's disks that are not done (the VM started,
// stopped or got its guest agent).
func (c *Controller) snapshotsOfVM(k runtime.Key) []runtime.Key {
	ns, _ := k.Split()
	vm, ok := c.vms.Get(k)
	if !ok {
		return nil
	}
	return c.snaps.KeysWhere(func(s *v1alpha1.VirtualDiskSnapshot) bool {
		return s.Namespace == ns && s.Status.Phase != v1alpha1.SnapshotPhaseReady && s.Status.Phase != v1alpha1.SnapshotPhaseFailed &&
			usesDisk(vm, s.Spec.VirtualDiskName)
	})
}

func usesDisk(vm *v1alpha1.VirtualMachine, disk string) bool {
	for _, r := range vm.Spec.BlockDeviceRefs {
		if r.Kind == v1alpha1.BlockDeviceKindVirtualDisk && r.Name == disk {
			return true
		}
	}
	return false
}

func (c *Controller) classOf(name string) *v1alpha1.StorageClass {
	sc, _ := c.classes.Get(runtime.NewKey("", name)) // nil when there is none
	return sc
}

func isLocal(sc *v1alpha1.StorageClass) bool {
	return sc == nil || sc.Spec.Type == v1alpha1.StorageClassTypeLocal
}

// reachable says whether this host sees the files of class sc that live on node.
func (c *Controller) reachable(sc *v1alpha1.StorageClass, node string) bool {
	return !isLocal(sc) || node == "" || node == c.cfg.NodeName
}

func (c *Controller) writeStatus(ctx context.Context, s *v1alpha1.VirtualDiskSnapshot, st v1alpha1.VirtualDiskSnapshotStatus) error {
	return runtime.ReplaceStatus(ctx, c.C, "virtualdisksnapshots", s, s.Status, st, func() { s.Status = st })
}

func setCond(st *v1alpha1.VirtualDiskSnapshotStatus, s *v1alpha1.VirtualDiskSnapshot, typ, status, reason, msg string) {
	v1alpha1.SetCondition(&st.Conditions, v1alpha1.Condition{Type: typ, Status: status, Reason: reason, Message: msg, ObservedGeneration: s.Generation})
}

// pending says why the snapshot waits.
func pending(st *v1alpha1.VirtualDiskSnapshotStatus, s *v1alpha1.VirtualDiskSnapshot, diskReady bool, reason, msg string) {
	st.Phase = v1alpha1.SnapshotPhasePending
	st.ObservedGeneration = s.Generation
	st.NodeName = ""
	ready := v1alpha1.ConditionFalse
	if diskReady {
		ready = v1alpha1.ConditionTrue
	}
	setCond(st, s, v1alpha1.VDSnapshotConditionVirtualDiskReady, ready, reason, msg)
	setCond(st, s, v1alpha1.VDSnapshotConditionReady, v1alpha1.ConditionFalse, reason, msg)
}

func (c *Controller) reconcile(ctx context.Context, key runtime.Key) (runtime.Result, error) {
	ns, _ := key.Split()
	var s v1alpha1.VirtualDiskSnapshot
	if ok, err := runtime.Read(ctx, c.C, "virtualdisksnapshots", key, &s); !ok {
		return runtime.Result{}, err
	}
	if err := storage.CheckUID(s.UID); err != nil {
		return runtime.Result{}, err
	}
	if s.DeletionTimestamp != nil {
		return c.finalize(ctx, &s)
	}
	if !slices.Contains(s.Finalizers, Finalizer) {
		if err := runtime.AddFinalizer(ctx, c.C, "virtualdisksnapshots", &s.ObjectMeta, Finalizer); err != nil {
			return runtime.Result{}, err
		}
		return runtime.Result{}, nil // the change requeues it
	}
	switch {
	case s.Status.Phase == v1alpha1.SnapshotPhaseReady || s.Status.Phase == v1alpha1.SnapshotPhaseFailed:
		return runtime.Result{}, nil
	case s.Status.Phase == v1alpha1.SnapshotPhaseInProgress && s.Status.NodeName != "":
		return c.watchHandOver(ctx, &s)
	}
	st := s.Status
	st.Conditions = slices.Clone(s.Status.Conditions)
	d, ok := c.disks.Get(runtime.NewKey(ns, s.Spec.VirtualDiskName))
	switch {
	case !ok:
		pending(&st, &s, false, v1alpha1.VDSnapshotReasonWaitingForDisk, fmt.Sprintf("waiting for VirtualDisk %q: not found", s.Spec.VirtualDiskName))
		return runtime.Result{}, c.writeStatus(ctx, &s, st)
	case d.DeletionTimestamp != nil:
		pending(&st, &s, false, v1alpha1.VDSnapshotReasonWaitingForDisk, fmt.Sprintf("VirtualDisk %q is being deleted", d.Name))
		return runtime.Result{}, c.writeStatus(ctx, &s, st)
	case d.Status.Phase != v1alpha1.DiskPhaseReady || storage.CheckUID(d.UID) != nil:
		pending(&st, &s, false, v1alpha1.VDSnapshotReasonWaitingForDisk, fmt.Sprintf("waiting for VirtualDisk %q to be Ready (it is %s)", d.Name, orPending(string(d.Status.Phase))))
		return runtime.Result{}, c.writeStatus(ctx, &s, st)
	}
	d = runtime.DeepCopy(d)
	size, err := v1alpha1.Quantity(d.Status.Capacity).Value()
	if err != nil || size <= 0 {
		pending(&st, &s, false, v1alpha1.VDSnapshotReasonWaitingForDisk, fmt.Sprintf("VirtualDisk %q reports no capacity", d.Name))
		return runtime.Result{}, c.writeStatus(ctx, &s, st)
	}
	st.VirtualDiskUID, st.StorageClassName, st.Size = d.UID, d.Status.StorageClassName, v1alpha1.Quantity(d.Status.Capacity)
	sc := c.classOf(d.Status.StorageClassName)

	// The VM that has the disk open, if any.
	var vm *v1alpha1.VirtualMachine
	for _, v := range c.vms.List() {
		if v.Namespace == ns && usesDisk(v, d.Name) && v.Status.NodeName != "" {
			vm = v
			break
		}
	}
	if vm != nil {
		if vm.Status.Phase != v1alpha1.VMPhaseRunning {
			pending(&st, &s, true, v1alpha1.VDSnapshotReasonWaitingForDisk, fmt.Sprintf(
				"VirtualDisk %q is used by VirtualMachine %q, which is %s: the snapshot is taken once it runs or has stopped", d.Name, vm.Name, orPending(string(vm.Status.Phase))))
			return runtime.Result{RequeueAfter: waitRetry}, c.writeStatus(ctx, &s, st)
		}
		// With the RAM kept, the paused vCPUs hold the guest still: no guest agent needed.
		required := (s.Spec.RequiredConsistency == nil || *s.Spec.RequiredConsistency) && s.Annotations[v1alpha1.AnnotationVMSnapshotRAM] == ""
		if agent := v1alpha1.FindCondition(vm.Status.Conditions, v1alpha1.VMConditionAgentReady); required && (agent == nil || agent.Status != v1alpha1.ConditionTrue) {
			pending(&st, &s, true, v1alpha1.VDSnapshotReasonWaitingForAgent, fmt.Sprintf(
				"VirtualDisk %q is used by the running VirtualMachine %q, whose guest agent is not ready: a consistent snapshot (spec.requiredConsistency) needs it to freeze the guest's filesystems; set requiredConsistency: false to take a crash-consistent one", d.Name, vm.Name))
			return runtime.Result{}, c.writeStatus(ctx, &s, st)
		}
		st.Phase = v1alpha1.SnapshotPhaseInProgress
		st.ObservedGeneration = s.Generation
		st.NodeName = vm.Status.NodeName
		setCond(&st, &s, v1alpha1.VDSnapshotConditionVirtualDiskReady, v1alpha1.ConditionTrue, v1alpha1.VDSnapshotReasonTaking, "")
		setCond(&st, &s, v1alpha1.VDSnapshotConditionReady, v1alpha1.ConditionFalse, v1alpha1.VDSnapshotReasonTaking, fmt.Sprintf(
			"node %s's agent copies the disk of the running VirtualMachine %q", vm.Status.NodeName, vm.Name))
		return runtime.Result{}, c.writeStatus(ctx, &s, st)
	}
	if !c.reachable(sc, d.Status.NodeName) {
		// An offline copy runs where the file is; only this host's files are copied here.
		pending(&st, &s, true, v1alpha1.VDSnapshotReasonNotSupported, fmt.Sprintf(
			"VirtualDisk %q is on node %s's local storage and no VM runs it: a snapshot of a stopped disk on another node is not supported yet; start a VM with the disk, or move the disk to a Shared class", d.Name, d.Status.NodeName))
		return runtime.Result{}, c.writeStatus(ctx, &s, st)
	}
	if isLocal(sc) {
		st.NodeName = ""
		if d.Status.NodeName != "" {
			st.NodeName = d.Status.NodeName
		}
	}
	return c.copyOffline(ctx, &s, st, d, sc)
}

// copyOffline copies a disk no VM runs with qemu-img.
func (c *Controller) copyOffline(ctx context.Context, s *v1alpha1.VirtualDiskSnapshot, st v1alpha1.VirtualDiskSnapshotStatus, d *v1alpha1.VirtualDisk, sc *v1alpha1.StorageClass) (runtime.Result, error) {
	// InProgress without a node name is the offline copy: a node name would hand it to an agent.
	node := st.NodeName
	st.NodeName = ""
	st.Phase = v1alpha1.SnapshotPhaseInProgress
	st.ObservedGeneration = s.Generation
	setCond(&st, s, v1alpha1.VDSnapshotConditionVirtualDiskReady, v1alpha1.ConditionTrue, v1alpha1.VDSnapshotReasonTaking, "")
	setCond(&st, s, v1alpha1.VDSnapshotConditionReady, v1alpha1.ConditionFalse, v1alpha1.VDSnapshotReasonTaking, "copying the disk, which no VM runs")
	if err := c.writeStatus(ctx, s, st); err != nil {
		return runtime.Result{}, err
	}
	src := storage.ClassDiskPath(c.cfg.DataDir, sc, d.UID)
	dst := storage.SnapshotPath(c.cfg.DataDir, sc, s.UID)
	started := c.cfg.Now()
	storage.CleanTempFor(dst)
	err := storage.Convert(ctx, src, "qcow2", dst, "qcow2")
	if err != nil {
		if ctx.Err() != nil {
			return runtime.Result{}, ctx.Err()
		}
		if storage.IsLocked(err) {
			// A VM started with the disk meanwhile: the next pass hands it to that VM's agent.
			pending(&st, s, true, v1alpha1.VDSnapshotReasonWaitingForDisk, "the disk was opened by a VM while it was copied; trying again")
			return runtime.Result{RequeueAfter: waitRetry}, c.writeStatus(ctx, s, st)
		}
		c.Log.Warn("copying a disk for a snapshot failed", "snapshot", s.Namespace+"/"+s.Name, "err", err)
		return runtime.Result{}, c.fail(ctx, s, st, fmt.Sprintf("copying VirtualDisk %q: %v", d.Name, err))
	}
	took := c.cfg.Now().Sub(started)
	t := true
	st.Consistent = &t
	st.NodeName = node
	st.Stats = &v1alpha1.VirtualDiskSnapshotStats{Copy: took.Round(time.Millisecond).String()}
	ready(&st, s, "the disk was not in use: copied with qemu-img")
	c.Rec.Event(ctx, "VirtualDiskSnapshot", s, "Normal", v1alpha1.VDSnapshotReasonReady, fmt.Sprintf("copied VirtualDisk %q (not in use) in %s", d.Name, took.Round(time.Millisecond)))
	return runtime.Result{}, c.writeStatus(ctx, s, st)
}

func ready(st *v1alpha1.VirtualDiskSnapshotStatus, s *v1alpha1.VirtualDiskSnapshot, msg string) {
	st.Phase = v1alpha1.SnapshotPhaseReady
	st.ObservedGeneration = s.Generation
	setCond(st, s, v1alpha1.VDSnapshotConditionReady, v1alpha1.ConditionTrue, v1alpha1.VDSnapshotReasonReady, msg)
}

func (c *Controller) fail(ctx context.Context, s *v1alpha1.VirtualDiskSnapshot, st v1alpha1.VirtualDiskSnapshotStatus, msg string) error {
	st.Phase = v1alpha1.SnapshotPhaseFailed
	st.ObservedGeneration = s.Generation
	setCond(&st, s, v1alpha1.VDSnapshotConditionReady, v1alpha1.ConditionFalse, v1alpha1.VDSnapshotReasonFailed, msg)
	c.Rec.Event(ctx, "VirtualDiskSnapshot", s, "Warning", v1alpha1.VDSnapshotReasonFailed, msg)
	return c.writeStatus(ctx, s, st)
}

// watchHandOver follows a snapshot handed to a node's agent: when the node is gone, the
// snapshot fails (its VM is restarted elsewhere or not at all; a new snapshot is needed).
func (c *Controller) watchHandOver(ctx context.Context, s *v1alpha1.VirtualDiskSnapshot) (runtime.Result, error) {
	err := c.C.Get(ctx, "nodes", "", s.Status.NodeName, nil)
	if client.IsNotFound(err) {
		st := s.Status
		st.Conditions = slices.Clone(s.Status.Conditions)
		return runtime.Result{}, c.fail(ctx, s, st, fmt.Sprintf("node %s, whose agent was taking the snapshot, no longer exists", s.Status.NodeName))
	}
	return runtime.Result{}, err
}

// finalize removes the snapshot's file, then the finalizer.
func (c *Controller) finalize(ctx context.Context, s *v1alpha1.VirtualDiskSnapshot) (runtime.Result, error) {
	if !slices.Contains(s.Finalizers, Finalizer) {
		return runtime.Result{}, nil
	}
	sc := c.classOf(s.Status.StorageClassName)
	if linked := c.linkedDisks(s); len(linked) > 0 {
		// Their files name the snapshot's file as their backing file: it goes with the last.
		msg := fmt.Sprintf("being deleted: kept while VirtualDisks %s are linked clones of it (delete them, or move them to another storage class, which copies them whole)", strings.Join(linked, ", "))
		if cond := v1alpha1.FindCondition(s.Status.Conditions, v1alpha1.VDSnapshotConditionReady); cond == nil || cond.Message != msg {
			st := s.Status
			st.Conditions = slices.Clone(s.Status.Conditions)
			setCond(&st, s, v1alpha1.VDSnapshotConditionReady, v1alpha1.ConditionFalse, ReasonLinkedClones, msg)
			if err := c.writeStatus(ctx, s, st); err != nil {
				return runtime.Result{}, err
			}
		}
		return runtime.Result{RequeueAfter: linkedRetry}, nil
	}
	if s.Status.Phase == v1alpha1.SnapshotPhaseInProgress && s.Status.NodeName != "" {
		// The node's agent is copying: it stops the copy when the snapshot goes (it checks
		// before it reports) and removes what it wrote; its file is removed below if reachable.
		c.Log.Info("deleting a snapshot while a node's agent takes it", "snapshot", s.Namespace+"/"+s.Name, "node", s.Status.NodeName)
	}
	if s.Status.StorageClassName != "" && !c.reachable(sc, s.Status.NodeName) {
		c.Rec.Event(ctx, "VirtualDiskSnapshot", s, "Warning", "FileLeftOnNode", fmt.Sprintf(
			"the snapshot's file is on node %s's local storage; remove %s there", s.Status.NodeName, storage.SnapshotPath("DATA-DIR", sc, s.UID)))
	} else {
		p := storage.SnapshotPath(c.cfg.DataDir, sc, s.UID)
		for _, f := range []string{p, storage.SnapshotPartPath(c.cfg.DataDir, sc, s.UID)} {
			if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
				return runtime.Result{}, fmt.Errorf("removing %s: %w", f, err)
			}
		}
		storage.CleanTempFor(p)
	}
	rest := slices.DeleteFunc(slices.Clone(s.Finalizers), func(f string) bool { return f == Finalizer })
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"finalizers": rest, "resourceVersion": s.ResourceVersion}})
	if err := c.C.Patch(ctx, "virtualdisksnapshots", s.Namespace, s.Name, patch, nil); err != nil && !client.IsNotFound(err) {
		return runtime.Result{}, fmt.Errorf("removing finalizer: %w", err)
	}
	c.Log.Info("snapshot deleted", "snapshot", s.Namespace+"/"+s.Name)
	return runtime.Result{}, nil
}

// ReasonLinkedClones says a deleted snapshot is kept for the disks that are linked clones of
// it.
const ReasonLinkedClones = "LinkedClones"

// linkedRetry is how often a deleted snapshot kept for linked clones is looked at again (a
// disk that is gone no longer names the snapshot it came from).
var linkedRetry = 5 * time.Second

// linkedDisks names the disks that are linked clones of the snapshot s: made from it, not as
// Full copies, in the storage class directory of its file (the disk controller makes a
// linked clone exactly then), and provisioned or provisioning.
func (c *Controller) linkedDisks(s *v1alpha1.VirtualDiskSnapshot) []string {
	sc := c.classOf(s.Status.StorageClassName)
	dir, file := storage.ClassDir(c.cfg.DataDir, sc), storage.SnapshotPath(c.cfg.DataDir, sc, s.UID)
	var out []string
	for _, d := range c.disks.List() {
		src := d.Spec.DataSource
		if d.Namespace != s.Namespace || src == nil || src.ObjectRef == nil || src.ObjectRef.Kind != v1alpha1.DataSourceKindVirtualDiskSnapshot ||
			src.ObjectRef.Name != s.Name || d.Spec.CloneMode == v1alpha1.CloneModeFull {
			continue
		}
		switch d.Status.Phase {
		case "", v1alpha1.DiskPhasePending, v1alpha1.DiskPhaseFailed:
			continue
		}
		if storage.ClassDir(c.cfg.DataDir, c.classOf(d.Status.StorageClassName)) == dir && c.backsOnto(d, file) {
			out = append(out, d.Name)
		}
	}
	slices.Sort(out)
	return out
}

// backsOnto says whether the file of disk d here names file as its backing file: a disk made
// as a full copy (before linked clones, or in another way) or flattened since does not, nor
// does one whose file is not on this host. A file that cannot be read counts as linked.
func (c *Controller) backsOnto(d *v1alpha1.VirtualDisk, file string) bool {
	path := storage.ClassDiskPath(c.cfg.DataDir, c.classOf(d.Status.StorageClassName), d.UID)
	b, err := storage.BackingFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return false
	case err != nil:
		return true
	}
	return b == filepath.Clean(file)
}

func orPending(p string) string {
	if p == "" {
		return "Pending"
	}
	return p
}

// FileOf is where the file of the Ready snapshot s lives on a host with data dir dataDir,
// given the snapshot's class (nil: the default pool).
func FileOf(dataDir string, sc *v1alpha1.StorageClass, s *v1alpha1.VirtualDiskSnapshot) string {
	return filepath.Clean(storage.SnapshotPath(dataDir, sc, s.UID))
}
