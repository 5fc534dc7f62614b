// Package image is the reconciler of ClusterVirtualImages and VirtualImages: it imports each
// image's data source into the image store (DATA-DIR/images/UID) and reports progress, size
// and format in status; on delete it removes the file, unless a disk still uses the file as
// the backing of a linked clone (or a VM uses the image directly).
//
// The import runs in the control plane process (all-in-one mode: the same host as the node
// agent). It is idempotent and restart-safe: a Ready image whose file exists is left alone; a
// file that exists without a Ready status (a crash between the rename and the status write)
// is adopted after a check; an interrupted import starts again; temporary files of writers
// killed mid-way are removed at start.
package image

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
	"github.com/rakhsh/rakhsh/internal/controller/imports"
	"github.com/rakhsh/rakhsh/internal/images"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// Finalizer keeps an image until its file is removed.
const Finalizer = "virtualization.rakhsh.io/image-cleanup"

// Condition reasons this controller sets (besides the images.Reason* failure reasons).
const (
	ReasonProvisioning   = "Provisioning"
	ReasonReady          = "Ready"
	ReasonNotSupported   = "NotSupported"
	ReasonWaitForSource  = "WaitingForDataSource"
	ReasonImageLost      = "ImageLost"
	ReasonInUse          = "InUse"
	ReasonDataSourceOK   = "DataSourceReady"
	ReasonRetryScheduled = "RetryScheduled"
)

// Config configures the controller.
type Config struct {
	runtime.Deps
	DataDir string
	// NodeName is this host's Node: disks on other nodes' Local storage cannot be read here.
	NodeName string
	// Workers is how many images are reconciled at once (imports run in the background and
	// do not hold a worker); default 2.
	Workers int
	// ProgressInterval is how often import progress is written to status; default 1 s.
	ProgressInterval time.Duration
	// RetryDelay is how long a transiently failed import (network error, HTTP 5xx) waits
	// before it is tried again; default 1 min.
	RetryDelay time.Duration
	// MaxUnpackedSize bounds what one import writes (after decompression); default
	// images.DefaultMaxUnpackedSize.
	MaxUnpackedSize int64
	// UploadTimeout is how long an Upload image waits for its file; default 15 min.
	UploadTimeout time.Duration
	// Uploads connects the API server's upload URLs to waiting imports; nil: Upload data
	// sources stay Pending.
	Uploads *images.Uploads
	// UploadBaseURLs are the external and in-cluster bases (scheme://host:port) of upload
	// URLs; empty External means the API has no TCP listener (upload over the socket with
	// the CLI).
	UploadBaseURLs v1alpha1.ImageUploadURLs
	// Fetcher brings the file of a Ready image that this serve's image store lacks (it was
	// imported while another serve led) from the API. Nil: one over Client when it can
	// download (a *client.Client), shared with nothing.
	Fetcher *images.Fetcher
	// FetchRetryDelay is how long a Ready image whose file could not be fetched waits before
	// the next try; default 30 s.
	FetchRetryDelay time.Duration
}

// kind is one of the two image kinds, with its own queue.
type kind struct {
	name       string // ClusterVirtualImage or VirtualImage
	resource   string
	namespaced bool
	// list and get read the kind's shared informer: the views point into cached objects,
	// which must not be changed.
	list func() []imageView
	get  func(runtime.Key) (imageView, bool)
	src  runtime.Source // the kind's informer
	ctl  *runtime.Controller
	q    *runtime.Queue
}

// imageView is what the controller reads of a cached image of either kind.
type imageView struct {
	meta   *v1alpha1.ObjectMeta
	ds     *v1alpha1.DataSource
	status *v1alpha1.ImageStatus
}

// Controller reconciles images.
type Controller struct {
	cfg Config
	runtime.Base
	cvi     *kind
	vi      *kind
	cvis    *runtime.TypedInformer[v1alpha1.ClusterVirtualImage]
	vis     *runtime.TypedInformer[v1alpha1.VirtualImage]
	disks   *runtime.TypedInformer[v1alpha1.VirtualDisk]
	classes *runtime.TypedInformer[v1alpha1.StorageClass]
	vms     *runtime.TypedInformer[v1alpha1.VirtualMachine]
	jobs    *runtime.Jobs // imports and uploads, by image uid

	mu     sync.Mutex
	failed map[string]time.Time // when an import last failed transiently, by image uid
	// fetchFailed is when the fetch of a Ready image's file last failed, and why, by uid.
	fetchFailed map[string]fetchFailure
}

type fetchFailure struct {
	at  time.Time
	err error
}

func (c *Controller) failedAt(uid string) (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.failed[uid]
	return t, ok
}

// New returns a controller; Run starts it.
func New(cfg Config) *Controller {
	cfg.Workers = runtime.OrDefault(cfg.Workers, 2)
	cfg.ProgressInterval = runtime.OrDefault(cfg.ProgressInterval, time.Second)
	cfg.RetryDelay = runtime.OrDefault(cfg.RetryDelay, time.Minute)
	cfg.FetchRetryDelay = runtime.OrDefault(cfg.FetchRetryDelay, 30*time.Second)
	if cfg.Fetcher == nil {
		cfg.Fetcher = images.NewFetcher(cfg.Client, cfg.DataDir, cfg.NodeName)
	}
	cfg.UploadTimeout = runtime.OrDefault(cfg.UploadTimeout, images.DefaultUploadTimeout)
	b := runtime.NewBase(cfg.Deps, "image-controller", "controller", "image")
	c := &Controller{cfg: cfg, Base: b, jobs: runtime.NewJobs(),
		failed: map[string]time.Time{}, fetchFailed: map[string]fetchFailure{}}
	f := b.Informers
	c.cvis, c.vis, c.disks, c.vms = f.ClusterVirtualImages(), f.VirtualImages(), f.VirtualDisks(), f.VirtualMachines()
	c.classes = f.StorageClasses()
	cviView := func(o *v1alpha1.ClusterVirtualImage) imageView {
		return imageView{meta: &o.ObjectMeta, ds: &o.Spec.DataSource, status: &o.Status}
	}
	viView := func(o *v1alpha1.VirtualImage) imageView {
		return imageView{meta: &o.ObjectMeta, ds: &o.Spec.DataSource, status: &o.Status}
	}
	c.cvi = &kind{name: string(v1alpha1.DataSourceKindClusterVirtualImage), resource: "clustervirtualimages", src: c.cvis,
		list: func() []imageView { return views(c.cvis.List(), cviView) },
		get:  func(k runtime.Key) (imageView, bool) { return view(c.cvis, k, cviView) }}
	c.vi = &kind{name: string(v1alpha1.DataSourceKindVirtualImage), resource: "virtualimages", namespaced: true, src: c.vis,
		list: func() []imageView { return views(c.vis.List(), viView) },
		get:  func(k runtime.Key) (imageView, bool) { return view(c.vis, k, viView) }}
	diskKind := &kind{name: string(v1alpha1.DataSourceKindVirtualDisk), namespaced: true}
	// Each kind has its queue; both hear of the other kind (images copied from images), of
	// disks (images copied from a disk; a disk that goes may free an image being deleted)
	// and of VMs (a VM that goes may free an image being deleted).
	for _, k := range []*kind{c.cvi, c.vi} {
		k.ctl = runtime.NewController(k.resource, c.Log).
			For(k.src).
			Watches(c.cvis, func(key runtime.Key) []runtime.Key { return c.dependents(k, c.cvi, key) }).
			Watches(c.vis, func(key runtime.Key) []runtime.Key { return c.dependents(k, c.vi, key) }).
			Watches(c.disks, func(key runtime.Key) []runtime.Key {
				return append(c.terminating(k), c.dependents(k, diskKind, key)...)
			}).
			Watches(c.vms, func(runtime.Key) []runtime.Key { return c.terminating(k) }).
			Workers(cfg.Workers).
			Build(func(ctx context.Context, key runtime.Key) (runtime.Result, error) { return c.reconcile(ctx, k, key) })
		k.q = k.ctl.Queue()
	}
	return c
}

func views[T any](l []*T, v func(*T) imageView) []imageView {
	out := make([]imageView, 0, len(l))
	for _, o := range l {
		out = append(out, v(o))
	}
	return out
}

func view[T any](inf *runtime.TypedInformer[T], k runtime.Key, v func(*T) imageView) (imageView, bool) {
	o, ok := inf.Get(k)
	if !ok {
		return imageView{}, false
	}
	return v(o), true
}

// ImagesDir is where the controller keeps image files.
func (c *Controller) imagesDir() string { return filepath.Dir(storage.ImagePath(c.cfg.DataDir, "x")) }

// Run reconciles until ctx ends, then stops the imports in flight (they restart on the next
// start).
func (c *Controller) Run(ctx context.Context) error {
	if c.C == nil || c.cfg.DataDir == "" {
		return errors.New("image controller: Client and DataDir are required")
	}
	if err := os.MkdirAll(c.imagesDir(), 0o700); err != nil {
		return fmt.Errorf("image controller: %w", err)
	}
	// No import runs yet: whatever temporary file is there was left by a crash.
	if err := storage.CleanTemp(c.imagesDir()); err != nil {
		c.Log.Warn("removing leftover temporary files", "dir", c.imagesDir(), "err", err)
	}
	err := c.Base.Run(ctx, c.cvi.ctl, c.vi.ctl)
	c.jobs.CancelAll()
	return err
}

// dependents returns the images of kind in (its queue's keys) made from the object key of
// kind from (they wait for it).
func (c *Controller) dependents(in, from *kind, key runtime.Key) []runtime.Key {
	ns, name := key.Split()
	var out []runtime.Key
	for _, img := range in.list() {
		r := img.ds.ObjectRef
		if r == nil || string(r.Kind) != from.name || r.Name != name {
			continue
		}
		rns := r.Namespace
		if rns == "" && from.namespaced {
			rns = img.meta.Namespace
		}
		if rns == ns {
			out = append(out, runtime.NewKey(img.meta.Namespace, img.meta.Name))
		}
	}
	return out
}

// terminating returns every image of kind k that is being deleted.
func (c *Controller) terminating(k *kind) []runtime.Key {
	var out []runtime.Key
	for _, img := range k.list() {
		if img.meta.DeletionTimestamp != nil {
			out = append(out, runtime.NewKey(img.meta.Namespace, img.meta.Name))
		}
	}
	return out
}

// image is either kind, seen through pointers into the decoded object.
type image struct {
	kind   *kind
	obj    v1alpha1.Object
	meta   *v1alpha1.ObjectMeta
	ds     *v1alpha1.DataSource
	status *v1alpha1.ImageStatus
}

func (c *Controller) get(ctx context.Context, k *kind, key runtime.Key) (*image, error) {
	ns, name := key.Split()
	img := &image{kind: k}
	if k.namespaced {
		var vi v1alpha1.VirtualImage
		if err := c.C.Get(ctx, k.resource, ns, name, &vi); err != nil {
			return nil, err
		}
		img.obj, img.meta, img.ds, img.status = &vi, &vi.ObjectMeta, &vi.Spec.DataSource, &vi.Status
	} else {
		var cvi v1alpha1.ClusterVirtualImage
		if err := c.C.Get(ctx, k.resource, "", name, &cvi); err != nil {
			return nil, err
		}
		img.obj, img.meta, img.ds, img.status = &cvi, &cvi.ObjectMeta, &cvi.Spec.DataSource, &cvi.Status
	}
	return img, nil
}

func (img *image) String() string {
	if img.meta.Namespace != "" {
		return fmt.Sprintf("%s %s/%s", img.kind.name, img.meta.Namespace, img.meta.Name)
	}
	return fmt.Sprintf("%s %s", img.kind.name, img.meta.Name)
}

// writeStatus replaces the image's status with st (the controller owns the whole status);
// an unchanged status is not written.
func (c *Controller) writeStatus(ctx context.Context, img *image, st v1alpha1.ImageStatus) error {
	return runtime.ReplaceStatus(ctx, c.C, img.kind.resource, img.obj, *img.status, st, func() { *img.status = st })
}

func fileExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

func (c *Controller) reconcile(ctx context.Context, k *kind, key runtime.Key) (runtime.Result, error) {
	img, err := c.get(ctx, k, key)
	if client.IsNotFound(err) {
		return runtime.Result{}, nil // gone: its finalizer already ran
	}
	if err != nil {
		return runtime.Result{}, err
	}
	m := img.meta
	if err := storage.CheckUID(m.UID); err != nil {
		return runtime.Result{}, err
	}
	if m.DeletionTimestamp != nil {
		return c.finalize(ctx, img)
	}
	if !slices.Contains(m.Finalizers, Finalizer) {
		if err := runtime.AddFinalizer(ctx, c.C, k.resource, m, Finalizer); err != nil {
			return runtime.Result{}, err
		}
		return runtime.Result{}, nil // the change requeues the image
	}
	if c.running(m.UID) {
		return runtime.Result{}, nil
	}
	st := *img.status
	path := storage.ImagePath(c.cfg.DataDir, m.UID)
	exists := fileExists(path)
	switch {
	case st.Phase == v1alpha1.ImagePhaseReady && exists:
		return runtime.Result{}, nil
	case st.Phase == v1alpha1.ImagePhaseImageLost:
		return runtime.Result{}, nil
	case st.Phase == v1alpha1.ImagePhaseReady:
		// Not here: imported while another serve led (fetched through the API), or gone.
		if res, done := c.fetchReady(img, st); done {
			return res, nil
		}
		st.Phase = v1alpha1.ImagePhaseImageLost
		msg := "the image was Ready but its file " + path + " is gone; delete and re-create the image"
		if f, ok := c.fetchFailure(m.UID); ok {
			msg += " (" + f.err.Error() + ")"
		}
		setCond(&st, m, v1alpha1.ImageConditionReady, v1alpha1.ConditionFalse, ReasonImageLost, msg)
		c.Rec.Event(ctx, k.name, img.obj, "Warning", ReasonImageLost, "the image file is gone")
		return runtime.Result{}, c.writeStatus(ctx, img, st)
	case st.Phase == v1alpha1.ImagePhaseFailed && st.ObservedGeneration == m.Generation:
		cond := v1alpha1.FindCondition(st.Conditions, v1alpha1.ImageConditionReady)
		if cond == nil || !transientReason(cond.Reason) {
			return runtime.Result{}, nil // a permanent failure: nothing changes until the spec does
		}
		// The Ready condition stays False across retries, so its transition time is not the
		// time of the last failure: that is kept in memory (after a restart, retry at once).
		if at, ok := c.failedAt(m.UID); ok {
			if wait := time.Until(at.Add(c.cfg.RetryDelay)); wait > 0 {
				return runtime.Result{RequeueAfter: wait}, nil
			}
		}
	case exists:
		// The import finished but its status was not written: check and adopt the file.
		res, err := images.Describe(ctx, path)
		if err == nil {
			c.Log.Info("adopting a stored image file", "image", img.String(), "path", path)
			c.noteStoredOn(ctx, img)
			return runtime.Result{}, c.writeStatus(ctx, img, readyStatus(st, m, res))
		}
		if ctx.Err() != nil {
			// The controller is stopping: the check was cut short, the file is not bad.
			return runtime.Result{}, ctx.Err()
		}
		c.Log.Warn("a stored image file does not check; importing again", "image", img.String(), "err", err)
		if err := os.Remove(path); err != nil {
			return runtime.Result{}, err
		}
	}
	return c.start(ctx, img, st)
}

// transientReason says whether a failure with this reason is retried after RetryDelay: a
// network error, an HTTP error (the operator may fix the server) or a local processing error.
// Checksum mismatches, unsupported formats and rejected images are not: they wait for a new
// image object.
func transientReason(r string) bool {
	return r == images.ReasonDownloadFailed || r == images.ReasonHTTPError || r == images.ReasonProcessingFailed ||
		r == images.ReasonInsufficientStorage
}

// start begins the import of img's data source, or explains why it cannot start.
func (c *Controller) start(ctx context.Context, img *image, st v1alpha1.ImageStatus) (runtime.Result, error) {
	m := img.meta
	ds := img.ds
	switch ds.Type {
	case v1alpha1.DataSourceTypeHTTP:
		if ds.HTTP == nil {
			return runtime.Result{}, c.pending(ctx, img, st, ReasonNotSupported, "spec.dataSource.http is missing")
		}
		src := images.HTTPSource{URL: ds.HTTP.URL, CABundle: ds.HTTP.CABundle, Checksum: ds.HTTP.Checksum}
		c.launch(img, func(ctx context.Context, dst string, opts images.Options) (*images.Result, error) {
			return images.ImportHTTP(ctx, src, dst, opts)
		})
		return runtime.Result{}, nil
	case v1alpha1.DataSourceTypeObjectRef:
		r := ds.ObjectRef
		if r == nil {
			return runtime.Result{}, c.pending(ctx, img, st, ReasonNotSupported, "spec.dataSource.objectRef is missing")
		}
		var srcKind *kind
		ns := r.Namespace
		switch r.Kind {
		case v1alpha1.DataSourceKindClusterVirtualImage:
			srcKind, ns = c.cvi, ""
		case v1alpha1.DataSourceKindVirtualImage:
			srcKind = c.vi
			if ns == "" {
				ns = m.Namespace
			}
		case v1alpha1.DataSourceKindVirtualDisk:
			return c.startFromDisk(ctx, img, st, r)
		default:
			return runtime.Result{}, c.pending(ctx, img, st, ReasonNotSupported,
				fmt.Sprintf("images made from a %s are not supported yet", r.Kind))
		}
		src, found := srcKind.get(runtime.NewKey(ns, r.Name))
		what := fmt.Sprintf("%s %q", r.Kind, r.Name)
		if ns != "" {
			what = fmt.Sprintf("%s %q in project %q", r.Kind, r.Name, ns)
		}
		switch {
		case !found:
			return runtime.Result{}, c.pending(ctx, img, st, ReasonWaitForSource, "waiting for "+what+": not found")
		case src.meta.DeletionTimestamp != nil:
			return runtime.Result{}, c.pending(ctx, img, st, ReasonWaitForSource, what+" is being deleted")
		case src.status.Phase != v1alpha1.ImagePhaseReady:
			return runtime.Result{}, c.pending(ctx, img, st, ReasonWaitForSource,
				fmt.Sprintf("waiting for %s to be Ready (it is %s)", what, orUnknown(string(src.status.Phase))))
		}
		if err := storage.CheckUID(src.meta.UID); err != nil {
			return runtime.Result{}, err
		}
		srcFormat := src.status.Format
		var stored int64
		if src.status.Size != nil {
			stored = src.status.Size.StoredBytes
		}
		// The source's file may be in another serve's image store (imported while that serve
		// led): it is fetched into this one first.
		fetch := images.FetchRequest{Resource: srcKind.resource, Namespace: ns, Name: r.Name, What: what,
			UID: src.meta.UID, SHA256: src.status.SHA256, Size: stored}
		c.launch(img, func(ctx context.Context, dst string, _ images.Options) (*images.Result, error) {
			srcPath, _, err := c.cfg.Fetcher.Ensure(ctx, fetch)
			if err != nil {
				return nil, &images.Error{Reason: images.ReasonDownloadFailed, Transient: true, Err: err}
			}
			return images.CopyStored(ctx, srcPath, srcFormat, dst)
		})
		return runtime.Result{}, nil
	case v1alpha1.DataSourceTypeUpload:
		return c.startUpload(ctx, img, st)
	case v1alpha1.DataSourceTypeContainerImage:
		return c.startOCI(ctx, img, st)
	default:
		return runtime.Result{}, c.pending(ctx, img, st, ReasonNotSupported,
			fmt.Sprintf("data source type %s is not supported yet (HTTP, ContainerImage, Upload and ObjectRef to an image are)", orUnknown(string(ds.Type))))
	}
}

func orUnknown(s string) string {
	if s == "" {
		return "not reconciled yet"
	}
	return s
}

// pending sets phase Pending with a condition saying what the image waits for.
func (c *Controller) pending(ctx context.Context, img *image, st v1alpha1.ImageStatus, reason, msg string) error {
	old := *img.status
	st.Phase = v1alpha1.ImagePhasePending
	st.ObservedGeneration = img.meta.Generation
	setCond(&st, img.meta, v1alpha1.ImageConditionDatasourceReady, v1alpha1.ConditionFalse, reason, msg)
	setCond(&st, img.meta, v1alpha1.ImageConditionReady, v1alpha1.ConditionFalse, reason, msg)
	if statusEqual(old, st) {
		return nil
	}
	return c.writeStatus(ctx, img, st)
}

func statusEqual(a, b v1alpha1.ImageStatus) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

func setCond(st *v1alpha1.ImageStatus, m *v1alpha1.ObjectMeta, typ, status, reason, msg string) {
	v1alpha1.SetCondition(&st.Conditions, v1alpha1.Condition{Type: typ, Status: status, Reason: reason,
		Message: msg, ObservedGeneration: m.Generation})
}

func readyStatus(st v1alpha1.ImageStatus, m *v1alpha1.ObjectMeta, res *images.Result) v1alpha1.ImageStatus {
	st.Phase = v1alpha1.ImagePhaseReady
	st.Progress = "100%"
	st.ObservedGeneration = m.Generation
	res.Status(&st)
	setCond(&st, m, v1alpha1.ImageConditionDatasourceReady, v1alpha1.ConditionTrue, ReasonDataSourceOK, "")
	setCond(&st, m, v1alpha1.ImageConditionReady, v1alpha1.ConditionTrue, ReasonReady, "")
	return st
}

type importFunc func(ctx context.Context, dst string, opts images.Options) (*images.Result, error)

func (c *Controller) running(uid string) bool { return c.jobs.Running(uid) }

// launch runs an import of img in the background; when it ends the image is queued again.
func (c *Controller) launch(img *image, run importFunc) {
	c.launchJob(img, func(ctx context.Context) { c.runImport(ctx, img, run) })
}

// launchJob runs fn as img's background job (one per image at a time); when it ends the
// image is queued again.
func (c *Controller) launchJob(img *image, fn func(ctx context.Context)) {
	m := img.meta
	key := runtime.NewKey(m.Namespace, m.Name)
	c.jobs.Start(m.UID, string(img.ds.Type), fn, func() { img.kind.q.Add(key) })
}

func (c *Controller) runImport(ctx context.Context, img *image, run importFunc) {
	m := img.meta
	log := c.Log.With("image", img.String(), "uid", m.UID)
	dst := storage.ImagePath(c.cfg.DataDir, m.UID)
	storage.CleanTempFor(dst)
	start := time.Now()
	if prev := img.status.SHA256; prev != "" {
		// A re-import replaces the file: the previous content's name goes once no image
		// links to it any more.
		defer func() { _ = storage.ReleaseContent(c.cfg.DataDir, prev) }()
	}

	st := *img.status
	st.Phase = v1alpha1.ImagePhaseProvisioning
	st.Progress = "0%"
	st.DownloadSpeed = nil
	st.Size = nil
	st.Format, st.CDROM, st.SHA256 = "", false, ""
	st.ImageUploadURLs = nil // an upload URL is single-use
	st.ObservedGeneration = m.Generation
	setCond(&st, m, v1alpha1.ImageConditionDatasourceReady, v1alpha1.ConditionTrue, ReasonDataSourceOK, "")
	setCond(&st, m, v1alpha1.ImageConditionReady, v1alpha1.ConditionFalse, ReasonProvisioning, "importing the image")
	if err := c.writeStatus(ctx, img, st); err != nil {
		log.Warn("writing status", "err", err)
		return // requeued; the import starts again
	}
	log.Info("import started", "source", string(img.ds.Type))
	c.Rec.Event(ctx, img.kind.name, img.obj, "Normal", "ImportStarted", "importing from a "+string(img.ds.Type)+" source")

	opts := imports.Progress{Client: c.C, Resource: img.kind.resource, Object: m, Interval: c.cfg.ProgressInterval, Log: log,
		Fields: func(p images.Progress, s map[string]any) {
			s["phase"] = v1alpha1.ImagePhaseProvisioning
			// During the import the sizes are what has arrived (stored) and what it unpacked
			// to so far; the final sizes replace them when the image is stored.
			s["size"] = v1alpha1.ImageSize{Stored: images.HumanBytes(p.Received), StoredBytes: p.Received,
				Unpacked: images.HumanBytes(p.Unpacked), UnpackedBytes: p.Unpacked}
		}}.Options(ctx, c.cfg.MaxUnpackedSize)
	res, err := run(ctx, dst, opts)
	if ctx.Err() != nil {
		log.Info("import stopped", "err", err)
		return
	}
	wctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Keep the last progress the patches wrote (download speed) in the final status.
	if fresh, gerr := c.get(wctx, img.kind, runtime.NewKey(m.Namespace, m.Name)); gerr == nil && fresh.meta.UID == m.UID {
		st.DownloadSpeed = fresh.status.DownloadSpeed
		st.Progress = fresh.status.Progress
	}
	if err != nil {
		reason := images.ReasonProcessingFailed
		var ie *images.Error
		if errors.As(err, &ie) {
			reason = ie.Reason
		}
		msg := err.Error()
		if transientReason(reason) {
			msg += fmt.Sprintf(" (retrying in %s)", c.cfg.RetryDelay)
		}
		st.Phase = v1alpha1.ImagePhaseFailed
		setCond(&st, m, v1alpha1.ImageConditionReady, v1alpha1.ConditionFalse, reason, msg)
		log.Warn("import failed", "reason", reason, "err", err)
		c.mu.Lock()
		c.failed[m.UID] = time.Now()
		c.mu.Unlock()
		c.Rec.Event(wctx, img.kind.name, img.obj, "Warning", reason, msg)
		if err := c.writeStatus(wctx, img, st); err != nil {
			log.Warn("writing status", "err", err)
		}
		return
	}
	if res.SHA256 != "" {
		// Content-addressed: an image whose content is already stored shares that file.
		if shared, err := storage.LinkContent(c.cfg.DataDir, dst, res.SHA256); err != nil {
			log.Warn("giving the image its content-addressed name", "err", err)
		} else if shared {
			log.Info("the image's content is already stored: the two share one file", "sha256", res.SHA256)
		}
	}
	st = readyStatus(st, m, res)
	log.Info("image ready", "format", res.Format, "virtual-size", res.VirtualSize, "stored-size", res.StoredSize,
		"took", time.Since(start).Round(time.Millisecond))
	c.Rec.Event(wctx, img.kind.name, img.obj, "Normal", "Ready",
		fmt.Sprintf("imported in %s: %s, %s stored, %s virtual", time.Since(start).Round(time.Second), res.Format,
			images.HumanBytes(res.StoredSize), images.HumanBytes(res.VirtualSize)))
	// Noted before the status says Ready, so that whoever sees it Ready sees where it is.
	c.noteStoredOn(wctx, img)
	if err := c.writeStatus(wctx, img, st); err != nil {
		log.Warn("writing status", "err", err)
	}
}

// noteStoredOn adds this serve to the image's stored-on annotation: its image store holds the
// file (the API's image data relay names the holders when none of them answers).
func (c *Controller) noteStoredOn(ctx context.Context, img *image) {
	m := img.meta
	if err := images.AddStoredOn(ctx, c.C, img.kind.resource, m.Namespace, m.Name, m.UID, c.cfg.NodeName); err != nil {
		c.Log.Warn("noting that this serve stores the image", "image", img.String(), "err", err)
	}
}

func (c *Controller) fetchFailure(uid string) (fetchFailure, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f, ok := c.fetchFailed[uid]
	return f, ok
}

// fetchReady handles a Ready image whose file is not in this serve's image store: its file
// is fetched through the API (the image data relay) in the background, so that this serve,
// now the leader, holds every image it makes disks from or copies. done is false when the
// image is to be marked ImageLost: the fetch failed and no other serve is known to hold the
// file (the stored-on annotation names none but this one). A failed fetch of an image another
// serve holds leaves the image Ready (that serve may be down for a while: the agents of hosts
// that cached it, and any serve that relays it once it is back, still serve it) and is tried
// again after FetchRetryDelay.
func (c *Controller) fetchReady(img *image, st v1alpha1.ImageStatus) (res runtime.Result, done bool) {
	m := img.meta
	f, failed := c.fetchFailure(m.UID)
	if !failed {
		c.launchJob(img, func(ctx context.Context) { c.runFetch(ctx, img, st) })
		return runtime.Result{}, true
	}
	elsewhere := slices.ContainsFunc(images.StoredOn(m.Annotations), func(n string) bool { return n != c.cfg.NodeName })
	if !elsewhere {
		return runtime.Result{}, false
	}
	if wait := time.Until(f.at.Add(c.cfg.FetchRetryDelay)); wait > 0 {
		return runtime.Result{RequeueAfter: wait}, true
	}
	c.mu.Lock()
	delete(c.fetchFailed, m.UID)
	c.mu.Unlock()
	c.launchJob(img, func(ctx context.Context) { c.runFetch(ctx, img, st) })
	return runtime.Result{}, true
}

// runFetch fetches a Ready image's file into this serve's image store.
func (c *Controller) runFetch(ctx context.Context, img *image, st v1alpha1.ImageStatus) {
	m := img.meta
	what := fmt.Sprintf("%s %q", img.kind.name, m.Name)
	if m.Namespace != "" {
		what = fmt.Sprintf("%s %q in project %q", img.kind.name, m.Name, m.Namespace)
	}
	var stored int64
	if st.Size != nil {
		stored = st.Size.StoredBytes
	}
	started := time.Now()
	_, fetched, err := c.cfg.Fetcher.Ensure(ctx, images.FetchRequest{Resource: img.kind.resource, Namespace: m.Namespace, Name: m.Name,
		What: what, UID: m.UID, SHA256: st.SHA256, Size: stored})
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		c.Log.Warn("fetching a Ready image's file into this serve's image store failed", "image", img.String(), "err", err)
		c.mu.Lock()
		c.fetchFailed[m.UID] = fetchFailure{at: time.Now(), err: err}
		c.mu.Unlock()
		c.Rec.Event(ctx, img.kind.name, img.obj, "Warning", "ImageFetchFailed", fmt.Sprintf("%v (this serve is %s)", err, c.cfg.NodeName))
		return
	}
	c.mu.Lock()
	delete(c.fetchFailed, m.UID)
	c.mu.Unlock()
	if fetched {
		c.Log.Info("fetched a Ready image's file into this serve's image store", "image", img.String(), "took", time.Since(started).Round(time.Millisecond))
	}
}

// finalize removes the image's file once nothing uses it, then the finalizer.
func (c *Controller) finalize(ctx context.Context, img *image) (runtime.Result, error) {
	m := img.meta
	if !slices.Contains(m.Finalizers, Finalizer) {
		return runtime.Result{}, nil
	}
	c.jobs.Cancel(m.UID)
	if users := c.users(img); len(users) > 0 {
		st := *img.status
		st.Phase = v1alpha1.ImagePhaseTerminating
		msg := "the image is in use by " + strings.Join(users, ", ") + "; it is deleted when they are"
		setCond(&st, m, v1alpha1.ImageConditionInUse, v1alpha1.ConditionTrue, ReasonInUse, msg)
		if !statusEqual(*img.status, st) {
			if err := c.writeStatus(ctx, img, st); err != nil {
				return runtime.Result{}, err
			}
		}
		return runtime.Result{RequeueAfter: 30 * time.Second}, nil
	}
	path := storage.ImagePath(c.cfg.DataDir, m.UID)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return runtime.Result{}, fmt.Errorf("removing %s: %w", path, err)
	}
	storage.CleanTempFor(path)
	if err := storage.ReleaseContent(c.cfg.DataDir, img.status.SHA256); err != nil {
		c.Log.Warn("releasing the content-addressed name", "image", img.String(), "err", err)
	}
	rest := slices.DeleteFunc(slices.Clone(m.Finalizers), func(f string) bool { return f == Finalizer })
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"finalizers": rest, "resourceVersion": m.ResourceVersion}})
	if err := c.C.Patch(ctx, img.kind.resource, m.Namespace, m.Name, patch, nil); err != nil && !client.IsNotFound(err) {
		return runtime.Result{}, fmt.Errorf("removing finalizer: %w", err)
	}
	c.mu.Lock()
	delete(c.failed, m.UID)
	delete(c.fetchFailed, m.UID)
	c.mu.Unlock()
	c.Log.Info("image deleted", "image", img.String(), "path", path)
	return runtime.Result{}, nil
}

// users lists what still needs the image's file: disks that are (or are being made) linked
// clones of it, images being copied from it, and VMs that use it directly.
func (c *Controller) users(img *image) []string {
	var out []string
	refersTo := func(k, name, ns, ownNS string) bool {
		if k != img.kind.name || name != img.meta.Name {
			return false
		}
		if !img.kind.namespaced {
			return true
		}
		if ns == "" {
			ns = ownNS
		}
		return ns == img.meta.Namespace
	}
	for _, d := range c.disks.List() {
		if d.Spec.DataSource == nil || d.Spec.DataSource.ObjectRef == nil {
			continue
		}
		r := d.Spec.DataSource.ObjectRef
		if !refersTo(string(r.Kind), r.Name, r.Namespace, d.Namespace) || d.Spec.CloneMode == v1alpha1.CloneModeFull {
			continue
		}
		if storage.CheckUID(d.UID) != nil {
			continue
		}
		// A disk on a Shared class is a clone of the class's own copy of the image, not of
		// the image store's file.
		sc := c.diskClass(d)
		if sc != nil && sc.Spec.Type == v1alpha1.StorageClassTypeShared {
			continue
		}
		if d.Status.Phase == v1alpha1.DiskPhaseProvisioning || d.Status.Phase == v1alpha1.DiskPhaseMigrating ||
			fileExists(storage.ClassDiskPath(c.cfg.DataDir, sc, d.UID)) {
			out = append(out, fmt.Sprintf("VirtualDisk %s/%s", d.Namespace, d.Name))
		}
	}
	for _, k := range []*kind{c.cvi, c.vi} {
		for _, o := range k.list() {
			if o.ds.ObjectRef == nil || o.status.Phase != v1alpha1.ImagePhaseProvisioning {
				continue
			}
			r := o.ds.ObjectRef
			if refersTo(string(r.Kind), r.Name, r.Namespace, o.meta.Namespace) {
				out = append(out, fmt.Sprintf("%s %s (copying)", k.name, runtime.NewKey(o.meta.Namespace, o.meta.Name)))
			}
		}
	}
	for _, vm := range c.vms.List() {
		for _, b := range vm.Spec.BlockDeviceRefs {
			if refersTo(string(b.Kind), b.Name, "", vm.Namespace) {
				out = append(out, fmt.Sprintf("VirtualMachine %s/%s", vm.Namespace, vm.Name))
				break
			}
		}
	}
	slices.Sort(out)
	return out
}

// diskClass returns the StorageClass a disk lives in (nil: the default pool).
func (c *Controller) diskClass(d *v1alpha1.VirtualDisk) *v1alpha1.StorageClass {
	sc, ok := c.classes.Get(runtime.NewKey("", d.Status.StorageClassName))
	if !ok {
		return nil
	}
	return sc
}
