// Package disk is the reconciler of VirtualDisks: it creates each disk's qcow2 file in the
// default storage pool (DATA-DIR/pools/default/disks/UID.qcow2) — blank, or from a Ready
// image as a linked clone (a copy-on-write overlay over the image file, O(1)) or a full copy —
// and reports phase, capacity and timings in status. On delete it removes the file unless a
// VM still lists the disk in spec.blockDeviceRefs.
//
// It is idempotent and restart-safe: files are written to a temporary name and renamed into
// place, so a disk file either is complete or does not exist; a file found without a Ready
// status (a crash before the status write) is adopted.
package disk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/images"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// Finalizer keeps a disk until its file is removed.
const Finalizer = "virtualization.rakhsh.io/disk-cleanup"

// Condition reasons this controller sets.
const (
	ReasonProvisioning        = "Provisioning"
	ReasonReady               = "Ready"
	ReasonImageNotFound       = "ImageNotFound"
	ReasonImageNotReady       = "ImageNotReady"
	ReasonSizeTooSmall        = "SizeTooSmall"
	ReasonNotSupported        = "NotSupported"
	ReasonStorageClassMissing = "StorageClassNotFound"
	ReasonProvisioningFailed  = "ProvisioningFailed"
	ReasonDiskLost            = "DiskLost"
	ReasonInUse               = "InUse"
	ReasonDataSourceReady     = "DataSourceReady"
	ReasonInsufficientStorage = "InsufficientStorage"
	ReasonImageFetchFailed    = "ImageFetchFailed"
)

// FetchRetryDelay is how long a disk waits before its image's file is fetched again after a
// failed fetch (the serve that holds it may be back by then).
var FetchRetryDelay = 15 * time.Second

// NoSpaceRetryDelay is how long a disk that failed for lack of space in its pool (or whose
// import failed for a network or server error) waits before it is tried again.
var NoSpaceRetryDelay = time.Minute

// retryAfterNoSpace says whether a Failed disk failed for lack of space, or its import for a
// network or server error (it is retried), and how long it still waits. The time of the failure is kept in memory (after a restart the disk
// is tried at once).
func (c *Controller) retryAfterNoSpace(uid string, st v1alpha1.VirtualDiskStatus) (time.Duration, bool) {
	cond := v1alpha1.FindCondition(st.Conditions, v1alpha1.DiskConditionReady)
	if cond == nil {
		return 0, false
	}
	switch cond.Reason {
	case ReasonInsufficientStorage, images.ReasonDownloadFailed, images.ReasonHTTPError, images.ReasonProcessingFailed:
	default:
		return 0, false
	}
	c.mu.Lock()
	at, ok := c.noSpaceAt[uid]
	c.mu.Unlock()
	if !ok {
		return 0, true
	}
	return max(time.Until(at.Add(NoSpaceRetryDelay)), 0), true
}

func (c *Controller) noteNoSpace(uid string) {
	c.mu.Lock()
	c.noSpaceAt[uid] = time.Now()
	c.mu.Unlock()
}

// Config configures the controller.
type Config struct {
	runtime.Deps
	DataDir string
	// NodeName is this host's Node: the node of the disks this controller makes in a Local
	// class (status.nodeName).
	NodeName string
	// Workers is how many disks are provisioned at once; default 2.
	Workers int
	// Uploads, UploadBaseURLs and UploadTimeout serve disks with an Upload data source, as
	// for images (see the image controller); nil Uploads leaves such disks Pending.
	Uploads        *images.Uploads
	UploadBaseURLs v1alpha1.ImageUploadURLs
	UploadTimeout  time.Duration
	// MaxUnpackedSize bounds what one import writes and the virtual size it may have;
	// default images.DefaultMaxUnpackedSize.
	MaxUnpackedSize int64
	// ProgressInterval is how often upload progress is written to status; default 1 s.
	ProgressInterval time.Duration
	// Fetcher brings the file of an image that this serve's image store lacks (the image
	// was imported while another serve led) from the API. Nil: one over Client when it can
	// download (a *client.Client), shared with nothing.
	Fetcher *images.Fetcher
}

// Controller reconciles VirtualDisks.
type Controller struct {
	cfg Config
	runtime.Base
	ctl     *runtime.Controller
	q       *runtime.Queue
	disks   *runtime.TypedInformer[v1alpha1.VirtualDisk]
	cvis    *runtime.TypedInformer[v1alpha1.ClusterVirtualImage]
	vis     *runtime.TypedInformer[v1alpha1.VirtualImage]
	vms     *runtime.TypedInformer[v1alpha1.VirtualMachine]
	classes *runtime.TypedInformer[v1alpha1.StorageClass]
	snaps   *runtime.TypedInformer[v1alpha1.VirtualDiskSnapshot]
	jobs    *runtime.Jobs // background uploads, by disk uid

	// sharedMu serialises linked clones over a Shared class's image copies with the removal
	// of copies no disk is a clone of any more.
	sharedMu sync.Mutex

	mu        sync.Mutex
	noSpaceAt map[string]time.Time // when a disk last failed for lack of space, by uid
	fetchAt   map[string]time.Time // when the fetch of a disk's image last failed, by disk uid
}

// New returns a controller; Run starts it.
func New(cfg Config) *Controller {
	cfg.Workers = runtime.OrDefault(cfg.Workers, 2)
	cfg.UploadTimeout = runtime.OrDefault(cfg.UploadTimeout, images.DefaultUploadTimeout)
	cfg.ProgressInterval = runtime.OrDefault(cfg.ProgressInterval, time.Second)
	if cfg.Fetcher == nil {
		cfg.Fetcher = images.NewFetcher(cfg.Client, cfg.DataDir, cfg.NodeName)
	}
	b := runtime.NewBase(cfg.Deps, "disk-controller", "controller", "disk")
	c := &Controller{cfg: cfg, Base: b, jobs: runtime.NewJobs(),
		noSpaceAt: map[string]time.Time{}, fetchAt: map[string]time.Time{}}
	f := b.Informers
	c.disks, c.cvis, c.vis, c.vms = f.VirtualDisks(), f.ClusterVirtualImages(), f.VirtualImages(), f.VirtualMachines()
	c.classes = f.StorageClasses()
	c.snaps = f.VirtualDiskSnapshots()
	usersOf := func(kind v1alpha1.DataSourceObjectKind) runtime.MapFunc {
		return func(k runtime.Key) []runtime.Key { return c.usersOf(kind, k) }
	}
	c.ctl = runtime.NewController("virtualdisks", c.Log).
		For(c.disks).
		Watches(c.disks, usersOf(v1alpha1.DataSourceKindVirtualDisk)). // disks copied from it
		Watches(c.cvis, usersOf(v1alpha1.DataSourceKindClusterVirtualImage)).
		Watches(c.vis, usersOf(v1alpha1.DataSourceKindVirtualImage)).
		Watches(c.snaps, usersOf(v1alpha1.DataSourceKindVirtualDiskSnapshot)).
		Watches(c.vms, c.projectDisks).
		Watches(c.classes, c.disksUsingClass).
		Workers(cfg.Workers).
		Build(c.reconcile)
	c.q = c.ctl.Queue()
	return c
}

// Run reconciles until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	if c.C == nil || c.cfg.DataDir == "" || c.cfg.NodeName == "" {
		return errors.New("disk controller: Client, DataDir and NodeName are required")
	}
	dir := disksDir(c.cfg.DataDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("disk controller: %w", err)
	}
	if err := storage.CleanTemp(dir); err != nil {
		c.Log.Warn("removing leftover temporary files", "dir", dir, "err", err)
	}
	err := c.Base.Run(ctx, c.ctl)
	c.jobs.CancelAll()
	return err
}

func disksDir(dataDir string) string {
	d := storage.DiskPath(dataDir, storage.DefaultPool, "x")
	return d[:strings.LastIndexByte(d, '/')]
}

// usersOf returns the disks made from the image (or disk) key of kind k.
func (c *Controller) usersOf(k v1alpha1.DataSourceObjectKind, key runtime.Key) []runtime.Key {
	ns, name := key.Split()
	var out []runtime.Key
	for _, d := range c.disks.List() {
		if d.Spec.DataSource == nil || d.Spec.DataSource.ObjectRef == nil {
			continue
		}
		r := d.Spec.DataSource.ObjectRef
		if r.Kind != k || r.Name != name {
			continue
		}
		if (k == v1alpha1.DataSourceKindVirtualImage || k == v1alpha1.DataSourceKindVirtualDisk || k == v1alpha1.DataSourceKindVirtualDiskSnapshot) && refNamespace(r, d.Namespace) != ns {
			continue
		}
		out = append(out, runtime.NewKey(d.Namespace, d.Name))
	}
	return out
}

func refNamespace(r *v1alpha1.DataSourceObjectRef, own string) string {
	if r.Kind == v1alpha1.DataSourceKindClusterVirtualImage {
		return ""
	}
	if r.Namespace != "" {
		return r.Namespace
	}
	return own
}

func fileExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

func (c *Controller) writeStatus(ctx context.Context, d *v1alpha1.VirtualDisk, st v1alpha1.VirtualDiskStatus) error {
	return runtime.ReplaceStatus(ctx, c.C, "virtualdisks", d, d.Status, st, func() { d.Status = st })
}

// writeStatusGuarded writes st as the disk's status only if the disk is still as read (its
// resourceVersion): for the writes that hand a disk to a node's agent or take it back, which
// must not undo what the agent wrote meanwhile. A conflict is an error: the reconcile runs
// again on what is stored.
func (c *Controller) writeStatusGuarded(ctx context.Context, d *v1alpha1.VirtualDisk, st v1alpha1.VirtualDiskStatus) error {
	before := d.Status
	d.Status = st
	err := c.C.UpdateStatus(ctx, "virtualdisks", d.Namespace, d.Name, d, nil)
	if err != nil {
		d.Status = before
	}
	if client.IsNotFound(err) {
		return nil
	}
	return err
}

func setCond(st *v1alpha1.VirtualDiskStatus, d *v1alpha1.VirtualDisk, typ, status, reason, msg string) {
	v1alpha1.SetCondition(&st.Conditions, v1alpha1.Condition{Type: typ, Status: status, Reason: reason,
		Message: msg, ObservedGeneration: d.Generation})
}

func (c *Controller) reconcile(ctx context.Context, key runtime.Key) (runtime.Result, error) {
	var d v1alpha1.VirtualDisk
	if ok, err := runtime.Read(ctx, c.C, "virtualdisks", key, &d); !ok {
		return runtime.Result{}, err
	}
	if err := storage.CheckUID(d.UID); err != nil {
		return runtime.Result{}, err
	}
	if d.DeletionTimestamp != nil {
		c.jobs.Cancel(d.UID)
		c.mu.Lock()
		delete(c.fetchAt, d.UID)
		c.mu.Unlock()
		return c.finalize(ctx, &d)
	}
	if c.running(d.UID) {
		return runtime.Result{}, nil // an upload job owns the disk's status
	}
	if err := c.syncAttached(ctx, &d); err != nil {
		return runtime.Result{}, err
	}
	if !slices.Contains(d.Finalizers, Finalizer) {
		if err := runtime.AddFinalizer(ctx, c.C, "virtualdisks", &d.ObjectMeta, Finalizer); err != nil {
			return runtime.Result{}, err
		}
		return runtime.Result{}, nil // the change requeues the disk
	}
	st := d.Status
	// Conditions are set in place: a copy of their own, so that writeStatus sees what changed.
	st.Conditions = slices.Clone(d.Status.Conditions)
	var sc *v1alpha1.StorageClass
	if st.StorageClassName == "" {
		// Not put anywhere yet: the class its spec names, or the default one.
		target, reason, msg := c.targetClass(&d)
		if target == nil {
			st.Phase = v1alpha1.DiskPhasePending
			st.ObservedGeneration = d.Generation
			setCond(&st, &d, v1alpha1.DiskConditionReady, v1alpha1.ConditionFalse, reason, msg)
			return runtime.Result{}, c.writeStatus(ctx, &d, st)
		}
		sc = target
		st.StorageClassName = sc.Name
		st.NodeName = ""
		if isLocal(sc) {
			st.NodeName = c.cfg.NodeName
			if n := d.Annotations[v1alpha1.AnnotationStorageNode]; n != "" {
				st.NodeName = n // made there (provisionOnNode)
			}
		}
	} else {
		sc = c.homeClass(&d)
		if sc == nil && d.Status.StorageClassName == storage.DefaultPool {
			// A disk made before storage classes: its file is in the default pool, which is
			// where the default Local class without a path keeps its disks too.
			if def := c.defaultClass(); def != nil && isLocal(def) && storage.ClassDir(c.cfg.DataDir, def) == storage.ClassDir(c.cfg.DataDir, nil) {
				sc = def
				st.StorageClassName, st.NodeName = def.Name, c.cfg.NodeName
			}
		}
		if sc == nil && st.StorageClassName != storage.DefaultPool {
			// The class it lives in is gone (deleted in a race with the disk's creation: a
			// class in use cannot be deleted). Its file cannot be found: the disk is left as it
			// is, never marked lost, until a class of that name exists again.
			c.Log.Warn("the disk's storage class does not exist", "disk", key, "class", st.StorageClassName)
			return runtime.Result{RequeueAfter: time.Minute}, nil
		}
		if isLocal(sc) && st.NodeName == "" {
			st.NodeName = c.cfg.NodeName
		}
		if st.StorageClassName != d.Status.StorageClassName || st.NodeName != d.Status.NodeName {
			// Written at once: the paths below may write nothing (a Ready disk).
			return runtime.Result{}, c.writeStatus(ctx, &d, st)
		}
	}
	if done, res, err := c.reconcileMove(ctx, &d, st, sc); done {
		return res, err
	}
	if isLocal(sc) && st.NodeName != c.cfg.NodeName && (st.Phase == "" || st.Phase == v1alpha1.DiskPhasePending) {
		return c.provisionOnNode(ctx, &d, st)
	}
	if isLocal(sc) && st.NodeName != c.cfg.NodeName {
		// Its file is on another node's pool, which this host cannot see.
		c.Log.Debug("the disk is on another node", "disk", key, "node", st.NodeName)
		return runtime.Result{}, nil
	}
	path := c.diskPath(sc, d.UID)
	exists := fileExists(path)
	switch {
	case (st.Phase == v1alpha1.DiskPhaseReady || st.Phase == v1alpha1.DiskPhaseResizing) && exists:
		return c.reconcileSize(ctx, &d, st, path)
	case st.Phase == v1alpha1.DiskPhaseReady || st.Phase == v1alpha1.DiskPhaseResizing:
		st.Phase = v1alpha1.DiskPhaseFailed
		setCond(&st, &d, v1alpha1.DiskConditionReady, v1alpha1.ConditionFalse, ReasonDiskLost,
			"the disk was Ready but its file "+path+" is gone")
		c.Rec.Event(ctx, "VirtualDisk", &d, "Warning", ReasonDiskLost, "the disk file is gone")
		return runtime.Result{}, c.writeStatus(ctx, &d, st)
	case st.Phase == v1alpha1.DiskPhaseFailed && st.ObservedGeneration == d.Generation:
		if wait, retry := c.retryAfterNoSpace(d.UID, st); retry {
			if wait > 0 {
				return runtime.Result{RequeueAfter: wait}, nil
			}
			break // the pool may have room now: try again
		}
		return runtime.Result{}, nil // waits for a spec change
	case exists:
		info, err := storage.Info(ctx, path, "qcow2")
		if err == nil {
			c.Log.Info("adopting a disk file", "disk", key, "path", path)
			return runtime.Result{}, c.writeStatus(ctx, &d, c.readyStatus(&d, st, info.VirtualSize))
		}
		c.Log.Warn("a disk file does not check; creating it again", "disk", key, "err", err)
		if err := os.Remove(path); err != nil {
			return runtime.Result{}, err
		}
	}
	return c.provision(ctx, &d, st, sc, path)
}

// source is what a disk is made from.
type source struct {
	path, format string // image file and its status.format
	sha256       string // the image's content digest (images only)
	virtualSize  int64
	readySince   time.Time
	// fromDisk: the source is another VirtualDisk, which keeps changing: always a full copy.
	fromDisk bool
	// backup: the source is a disk of a backup, restored from the target's chunks.
	backup *backupSource
	// image: the source is an image, whose file is fetched into this serve's image store
	// when it is not there.
	image *images.FetchRequest
	// snapshotDir: the source is a disk snapshot's file, kept in this class directory; a
	// linked clone of it is made in place when the disk is in the same directory.
	snapshotDir, snapshotWhat string
}

// provision creates the disk file, or says what the disk waits for.
func (c *Controller) provision(ctx context.Context, d *v1alpha1.VirtualDisk, st v1alpha1.VirtualDiskStatus, sc *v1alpha1.StorageClass, path string) (runtime.Result, error) {
	var requested int64
	if q := d.Spec.PersistentVolumeClaim.Size; q != "" {
		n, err := q.Value()
		if err != nil {
			return runtime.Result{}, c.fail(ctx, d, st, ReasonProvisioningFailed, "spec.persistentVolumeClaim.size: "+err.Error())
		}
		requested = n
	}
	var src *source
	ds := d.Spec.DataSource
	switch {
	case ds == nil:
		if requested <= 0 {
			return runtime.Result{}, c.fail(ctx, d, st, ReasonProvisioningFailed, "a blank disk needs spec.persistentVolumeClaim.size")
		}
	case ds.Type == v1alpha1.DataSourceTypeObjectRef && ds.ObjectRef != nil &&
		(ds.ObjectRef.Kind == v1alpha1.DataSourceKindClusterVirtualImage || ds.ObjectRef.Kind == v1alpha1.DataSourceKindVirtualImage ||
			ds.ObjectRef.Kind == v1alpha1.DataSourceKindVirtualDisk || ds.ObjectRef.Kind == v1alpha1.DataSourceKindVirtualDiskSnapshot ||
			ds.ObjectRef.Kind == v1alpha1.DataSourceKindVirtualMachineBackup):
		var wait, reason string
		switch ds.ObjectRef.Kind {
		case v1alpha1.DataSourceKindVirtualMachineBackup:
			src, reason, wait = c.backupSource(ctx, d)
		case v1alpha1.DataSourceKindVirtualDisk:
			src, reason, wait = c.diskSource(d)
		case v1alpha1.DataSourceKindVirtualDiskSnapshot:
			src, reason, wait = c.snapshotSource(d)
		default:
			src, reason, wait = c.imageSource(d)
		}
		if src == nil {
			st.Phase = v1alpha1.DiskPhasePending
			st.ObservedGeneration = d.Generation
			setCond(&st, d, v1alpha1.DiskConditionDatasourceReady, v1alpha1.ConditionFalse, reason, wait)
			setCond(&st, d, v1alpha1.DiskConditionReady, v1alpha1.ConditionFalse, reason, wait)
			var res runtime.Result
			if ds.ObjectRef.Kind == v1alpha1.DataSourceKindVirtualMachineBackup && reason != ReasonNotSupported {
				res.RequeueAfter = 2 * time.Second // backups are not watched here
			}
			return res, c.writeStatus(ctx, d, st)
		}
	case ds.Type == v1alpha1.DataSourceTypeUpload:
		return c.startUpload(ctx, d, st, path, requested)
	case ds.Type == v1alpha1.DataSourceTypeHTTP || ds.Type == v1alpha1.DataSourceTypeContainerImage:
		return c.startImport(ctx, d, st, path, requested)
	default:
		what := string(ds.Type)
		if ds.ObjectRef != nil {
			what += " " + string(ds.ObjectRef.Kind)
		}
		st.Phase = v1alpha1.DiskPhasePending
		st.ObservedGeneration = d.Generation
		msg := fmt.Sprintf("disks from a %s data source are not supported yet (blank disks and disks from a ClusterVirtualImage, VirtualImage, VirtualDisk, VirtualDiskSnapshot or VirtualMachineBackup are)", what)
		setCond(&st, d, v1alpha1.DiskConditionDatasourceReady, v1alpha1.ConditionFalse, ReasonNotSupported, msg)
		setCond(&st, d, v1alpha1.DiskConditionReady, v1alpha1.ConditionFalse, ReasonNotSupported, msg)
		return runtime.Result{}, c.writeStatus(ctx, d, st)
	}

	size := requested
	if src != nil {
		if requested > 0 && requested < src.virtualSize {
			return runtime.Result{}, c.fail(ctx, d, st, ReasonSizeTooSmall, fmt.Sprintf(
				"spec.persistentVolumeClaim.size %s is smaller than the image's virtual size %s (%d bytes); ask for at least %s",
				d.Spec.PersistentVolumeClaim.Size, images.HumanBytes(src.virtualSize), src.virtualSize, images.HumanBytes(storage.RoundSize(src.virtualSize))))
		}
		size = max(requested, src.virtualSize)
	}

	fetch := src != nil && src.image != nil && !fileExists(src.path)
	if fetch {
		// Its status says why it waits: no new try (and status write) before the delay.
		c.mu.Lock()
		at, failed := c.fetchAt[d.UID]
		c.mu.Unlock()
		if wait := time.Until(at.Add(FetchRetryDelay)); failed && wait > 0 {
			return runtime.Result{RequeueAfter: wait}, nil
		}
	}
	started := time.Now()
	st.Phase = v1alpha1.DiskPhaseProvisioning
	st.ObservedGeneration = d.Generation
	if src != nil {
		setCond(&st, d, v1alpha1.DiskConditionDatasourceReady, v1alpha1.ConditionTrue, ReasonDataSourceReady, "")
	}
	msg := "creating the disk file"
	if fetch {
		msg = "fetching the file of " + src.image.What + " into this serve's image store through the API (it was imported by another serve), then creating the disk file"
	}
	setCond(&st, d, v1alpha1.DiskConditionReady, v1alpha1.ConditionFalse, ReasonProvisioning, msg)
	if err := c.writeStatus(ctx, d, st); err != nil {
		return runtime.Result{}, err
	}
	if fetch {
		if res, err, ok := c.fetchImage(ctx, d, st, src); !ok {
			return res, err
		}
	}
	storage.CleanTempFor(path)
	var err error
	mode := "blank"
	switch {
	case src == nil:
		err = storage.CreateBlank(ctx, path, size)
	case src.backup != nil:
		mode = "restore from " + src.backup.what
		err = restoreFromBackup(ctx, src.backup, path, size)
	case src.snapshotDir != "" && d.Spec.CloneMode != v1alpha1.CloneModeFull && src.snapshotDir == storage.ClassDir(c.cfg.DataDir, sc):
		// A linked clone of a snapshot: its file never changes, and the snapshot is kept
		// while disks are linked clones of it (the snapshot controller's finalizer).
		mode = "linked clone of " + src.snapshotWhat
		err = storage.CreateLinkedClone(ctx, path, src.path, "qcow2", size)
	case d.Spec.CloneMode == v1alpha1.CloneModeFull || src.fromDisk || (!isLocal(sc) && !storage.IsSHA256Hex(src.sha256)):
		mode = "full copy"
		resizeTo := int64(0)
		if size > src.virtualSize {
			resizeTo = size
		}
		err = storage.ConvertResize(ctx, src.path, storage.DriveFormat(src.format), path, "qcow2", resizeTo)
	default:
		// Linked clone, for every image format: an ISO (a raw file) is a fine backing file
		// too, and the clone is O(1) whatever the image size. On a Shared class the backing
		// file must be one every node reads at the same path: the class's own copy of the
		// image, named by its content (made once per content).
		mode = "linked clone"
		if isLocal(sc) {
			err = storage.CreateLinkedClone(ctx, path, src.path, storage.DriveFormat(src.format), size)
		} else {
			err = c.cloneOnShared(ctx, sc, src, path, size)
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			return runtime.Result{}, ctx.Err()
		}
		c.Log.Warn("creating the disk file failed", "disk", d.Namespace+"/"+d.Name, "err", err)
		if images.IsNoSpace(err) {
			storage.CleanTempFor(path)
			c.noteNoSpace(d.UID)
			return runtime.Result{RequeueAfter: NoSpaceRetryDelay}, c.fail(ctx, d, st, ReasonInsufficientStorage, fmt.Sprintf(
				"the storage class %q is full: creating the %s (%s) needs more space than is free; free space and the disk is tried again within %s",
				st.StorageClassName, mode, images.HumanBytes(size), NoSpaceRetryDelay))
		}
		// The image may have gone meanwhile: retry (with backoff) rather than fail for good.
		return runtime.Result{}, fmt.Errorf("creating %s: %w", mode, err)
	}
	took := time.Since(started)
	st = c.readyStatus(d, st, size)
	if src != nil && !src.readySince.IsZero() && d.CreationTimestamp != nil && src.readySince.After(d.CreationTimestamp.Time) {
		st.Stats.CreationDuration.WaitingForDependencies = src.readySince.Sub(d.CreationTimestamp.Time).Round(time.Second).String()
	}
	c.Log.Info("disk ready", "disk", d.Namespace+"/"+d.Name, "mode", mode, "size", size, "took", took.Round(time.Millisecond))
	c.Rec.Event(ctx, "VirtualDisk", d, "Normal", ReasonReady, fmt.Sprintf("created a %s disk of %s in %s", mode, images.HumanBytes(size), took.Round(time.Millisecond)))
	return runtime.Result{}, c.writeStatus(ctx, d, st)
}

func (c *Controller) readyStatus(d *v1alpha1.VirtualDisk, st v1alpha1.VirtualDiskStatus, size int64) v1alpha1.VirtualDiskStatus {
	st.Phase = v1alpha1.DiskPhaseReady
	st.Capacity = string(v1alpha1.BytesQuantity(storage.RoundSize(size))) // exact, not rounded for display
	st.Format = "qcow2"
	st.Progress = "100%"
	st.ObservedGeneration = d.Generation
	cd := &v1alpha1.VirtualDiskCreationDuration{}
	if d.CreationTimestamp != nil {
		// Shown to people: whole seconds.
		cd.TotalProvisioning = time.Since(d.CreationTimestamp.Time).Round(time.Second).String()
	}
	st.Stats = &v1alpha1.VirtualDiskStats{CreationDuration: cd}
	if d.Spec.DataSource != nil {
		setCond(&st, d, v1alpha1.DiskConditionDatasourceReady, v1alpha1.ConditionTrue, ReasonDataSourceReady, "")
	}
	setCond(&st, d, v1alpha1.DiskConditionReady, v1alpha1.ConditionTrue, ReasonReady, "")
	return st
}

func (c *Controller) fail(ctx context.Context, d *v1alpha1.VirtualDisk, st v1alpha1.VirtualDiskStatus, reason, msg string) error {
	st.Phase = v1alpha1.DiskPhaseFailed
	st.ObservedGeneration = d.Generation
	setCond(&st, d, v1alpha1.DiskConditionReady, v1alpha1.ConditionFalse, reason, msg)
	if d.Status.Phase != v1alpha1.DiskPhaseFailed {
		c.Rec.Event(ctx, "VirtualDisk", d, "Warning", reason, msg)
	}
	return c.writeStatus(ctx, d, st)
}

// fetchImage makes sure the image file src is made from is in this serve's image store,
// fetching it through the API (the image data relay) when it is not: the image was imported
// while another serve led. ok is false when the disk cannot be made now; the disk then says
// why (naming the image and the serves that could not be reached) and is tried again after
// FetchRetryDelay.
func (c *Controller) fetchImage(ctx context.Context, d *v1alpha1.VirtualDisk, st v1alpha1.VirtualDiskStatus, src *source) (res runtime.Result, err error, ok bool) {
	key := d.Namespace + "/" + d.Name
	c.Log.Info("the disk's image is not in this serve's image store: fetching it through the API", "disk", key, "image", src.image.What)
	started := time.Now()
	_, fetched, err := c.cfg.Fetcher.Ensure(ctx, *src.image)
	c.mu.Lock()
	if err == nil {
		delete(c.fetchAt, d.UID)
	} else {
		c.fetchAt[d.UID] = time.Now()
	}
	c.mu.Unlock()
	if err == nil {
		if fetched {
			c.Log.Info("fetched the image into this serve's image store", "image", src.image.What, "took", time.Since(started).Round(time.Millisecond))
		}
		return runtime.Result{}, nil, true
	}
	if ctx.Err() != nil {
		return runtime.Result{}, ctx.Err(), false
	}
	c.Log.Warn("fetching the disk's image failed", "disk", key, "image", src.image.What, "err", err)
	msg := fmt.Sprintf("%v (this serve is %s); tried again within %s", err, c.cfg.NodeName, FetchRetryDelay)
	st.Phase = v1alpha1.DiskPhasePending
	setCond(&st, d, v1alpha1.DiskConditionDatasourceReady, v1alpha1.ConditionFalse, ReasonImageFetchFailed, msg)
	setCond(&st, d, v1alpha1.DiskConditionReady, v1alpha1.ConditionFalse, ReasonImageFetchFailed, msg)
	c.Rec.Event(ctx, "VirtualDisk", d, "Warning", ReasonImageFetchFailed, msg) // repeats merge into one event
	return runtime.Result{RequeueAfter: FetchRetryDelay}, c.writeStatus(ctx, d, st), false
}

// imageSource returns the Ready image a disk is made from, or why it waits.
func (c *Controller) imageSource(d *v1alpha1.VirtualDisk) (src *source, reason, msg string) {
	r := d.Spec.DataSource.ObjectRef
	ns := refNamespace(r, d.Namespace)
	what := fmt.Sprintf("%s %q", r.Kind, r.Name)
	// The image's metadata and status, shared with the cache (only read).
	var img struct {
		Metadata *v1alpha1.ObjectMeta
		Status   *v1alpha1.ImageStatus
	}
	var found bool
	if r.Kind == v1alpha1.DataSourceKindVirtualImage {
		what = fmt.Sprintf("%s %q in project %q", r.Kind, r.Name, ns)
		var vi *v1alpha1.VirtualImage
		if vi, found = c.vis.Get(runtime.NewKey(ns, r.Name)); found {
			img.Metadata, img.Status = &vi.ObjectMeta, &vi.Status
		}
	} else {
		var cvi *v1alpha1.ClusterVirtualImage
		if cvi, found = c.cvis.Get(runtime.NewKey(ns, r.Name)); found {
			img.Metadata, img.Status = &cvi.ObjectMeta, &cvi.Status
		}
	}
	switch {
	case !found:
		return nil, ReasonImageNotFound, fmt.Sprintf("waiting for %s: not found", what)
	case img.Metadata.DeletionTimestamp != nil:
		return nil, ReasonImageNotReady, fmt.Sprintf("%s is being deleted", what)
	case img.Status.Phase != v1alpha1.ImagePhaseReady:
		phase := string(img.Status.Phase)
		if phase == "" {
			phase = "not reconciled yet"
		}
		msg := fmt.Sprintf("waiting for %s to be Ready (it is %s", what, phase)
		if img.Status.Progress != "" && img.Status.Phase == v1alpha1.ImagePhaseProvisioning {
			msg += ", " + img.Status.Progress
		}
		return nil, ReasonImageNotReady, msg + ")"
	case storage.CheckUID(img.Metadata.UID) != nil || img.Status.Size == nil || img.Status.Size.UnpackedBytes <= 0:
		return nil, ReasonImageNotReady, fmt.Sprintf("%s reports no size", what)
	}
	src = &source{path: storage.ImagePath(c.cfg.DataDir, img.Metadata.UID), format: img.Status.Format,
		virtualSize: img.Status.Size.UnpackedBytes, sha256: img.Status.SHA256}
	resource := "clustervirtualimages"
	if r.Kind == v1alpha1.DataSourceKindVirtualImage {
		resource = "virtualimages"
	}
	src.image = &images.FetchRequest{Resource: resource, Namespace: ns, Name: r.Name, What: what,
		UID: img.Metadata.UID, SHA256: img.Status.SHA256, Size: img.Status.Size.StoredBytes}
	if cond := v1alpha1.FindCondition(img.Status.Conditions, v1alpha1.ImageConditionReady); cond != nil && cond.LastTransitionTime != nil {
		src.readySince = cond.LastTransitionTime.Time
	}
	if src.format != "qcow2" && src.format != "iso" && src.format != "raw" {
		return nil, ReasonNotSupported, fmt.Sprintf("%s has format %q, which disks cannot be made from", what, src.format)
	}
	return src, "", ""
}

// finalize removes the disk's file once no VM lists the disk, then the finalizer.
func (c *Controller) finalize(ctx context.Context, d *v1alpha1.VirtualDisk) (runtime.Result, error) {
	if !slices.Contains(d.Finalizers, Finalizer) {
		return runtime.Result{}, nil
	}
	if users := c.vmsUsing(d); len(users) > 0 {
		st := d.Status
		st.Phase = v1alpha1.DiskPhaseTerminating
		msg := "the disk is used by " + strings.Join(users, ", ") + "; remove it from their spec.blockDeviceRefs (or delete them) and the disk goes"
		setCond(&st, d, v1alpha1.DiskConditionInUse, v1alpha1.ConditionTrue, ReasonInUse, msg)
		return runtime.Result{RequeueAfter: 30 * time.Second}, c.writeStatus(ctx, d, st)
	}
	if d.Status.MoveSourceNodeName != "" {
		// Deleted while it moved from one node to another: the disk is given back to the node
		// that holds its file, whose agent then removes it (below); the copying node's fetch
		// is refused and it drops what it fetched.
		st := d.Status
		st.NodeName, st.MoveSourceNodeName = st.MoveSourceNodeName, ""
		setCond(&st, d, v1alpha1.DiskConditionMigrating, v1alpha1.ConditionFalse, ReasonMoveFailed, "the disk was deleted during the move")
		return runtime.Result{}, c.writeStatusGuarded(ctx, d, st)
	}
	sc := c.homeClass(d)
	path := c.diskPath(sc, d.UID)
	var sharedBacking string
	if !isLocal(sc) {
		if chain, err := storage.CheckChain(path, "qcow2"); err == nil && len(chain) > 1 {
			sharedBacking = chain[1].Path
		}
	}
	if d.Status.StorageClassName != "" && isLocal(sc) && d.Status.NodeName != "" && d.Status.NodeName != c.cfg.NodeName {
		// The file is in another node's pool, which this host cannot reach: that node's agent
		// removes it and says so in condition Terminating. A node that no longer exists
		// cannot: the disk goes, and an event names the file left behind.
		node := d.Status.NodeName
		cond := v1alpha1.FindCondition(d.Status.Conditions, v1alpha1.DiskConditionTerminating)
		switch err := c.C.Get(ctx, "nodes", "", node, nil); {
		case cond != nil && cond.Status == v1alpha1.ConditionTrue && cond.Reason == v1alpha1.DiskReasonFileRemoved:
		case client.IsNotFound(err):
			c.Rec.Event(ctx, "VirtualDisk", d, "Warning", "FileLeftOnNode", fmt.Sprintf(
				"the disk's file is on node %s, which no longer exists; remove %s there if the host comes back", node, path))
		case err != nil:
			return runtime.Result{}, err
		default:
			st := d.Status
			st.Conditions = slices.Clone(d.Status.Conditions)
			st.Phase = v1alpha1.DiskPhaseTerminating
			setCond(&st, d, v1alpha1.DiskConditionTerminating, v1alpha1.ConditionFalse, v1alpha1.DiskReasonWaitingForNode,
				fmt.Sprintf("node %s's agent removes the disk's file from its local storage", node))
			return runtime.Result{RequeueAfter: 30 * time.Second}, c.writeStatus(ctx, d, st)
		}
	} else {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return runtime.Result{}, fmt.Errorf("removing %s: %w", path, err)
		}
		storage.CleanTempFor(path)
		if sharedBacking != "" {
			c.releaseSharedImage(storage.ClassDir(c.cfg.DataDir, sc), sharedBacking)
		}
	}
	// The disk's lease goes with it (no VM lists the disk any more): a disk made again under
	// the same name starts with a free lease.
	if err := c.C.Delete(ctx, runtime.DiskLeaseResource, d.Namespace, d.Name); err != nil && !client.IsNotFound(err) {
		return runtime.Result{}, fmt.Errorf("deleting the disk's lease: %w", err)
	}
	rest := slices.DeleteFunc(slices.Clone(d.Finalizers), func(f string) bool { return f == Finalizer })
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"finalizers": rest, "resourceVersion": d.ResourceVersion}})
	if err := c.C.Patch(ctx, "virtualdisks", d.Namespace, d.Name, patch, nil); err != nil && !client.IsNotFound(err) {
		return runtime.Result{}, fmt.Errorf("removing finalizer: %w", err)
	}
	c.Log.Info("disk deleted", "disk", d.Namespace+"/"+d.Name, "path", path)
	return runtime.Result{}, nil
}

// vmsUsing lists the VMs of the disk's project whose spec.blockDeviceRefs name it.
func (c *Controller) vmsUsing(d *v1alpha1.VirtualDisk) []string {
	var out []string
	for _, vm := range c.vms.List() {
		if vm.Namespace != d.Namespace {
			continue
		}
		for _, b := range vm.Spec.BlockDeviceRefs {
			if b.Kind == v1alpha1.BlockDeviceKindVirtualDisk && b.Name == d.Name {
				out = append(out, "VirtualMachine "+vm.Name)
				break
			}
		}
		if hotplugged(vm, d.Name) {
			out = append(out, "VirtualMachine "+vm.Name+" (hot-plugged)")
		}
	}
	slices.Sort(out)
	return out
}
