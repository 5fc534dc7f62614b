package disk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/controller/imports"
	"github.com/rakhsh/rakhsh/internal/images"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// ReasonWaitForUserUpload is the condition reason of a disk that waits for its file.
const ReasonWaitForUserUpload = "WaitForUserUpload"

func (c *Controller) running(uid string) bool { return c.jobs.Running(uid) }

// launch runs fn as the disk's background job; when it ends the disk is queued again.
func (c *Controller) launch(d *v1alpha1.VirtualDisk, fn func(ctx context.Context)) {
	key := runtime.NewKey(d.Namespace, d.Name)
	c.jobs.Start(d.UID, "upload", fn, func() { c.q.Add(key) })
}

// startUpload puts an Upload disk in WaitForUserUpload behind a single-use URL.
func (c *Controller) startUpload(ctx context.Context, d *v1alpha1.VirtualDisk, st v1alpha1.VirtualDiskStatus, path string, requested int64) (runtime.Result, error) {
	if c.cfg.Uploads == nil {
		st.Phase = v1alpha1.DiskPhasePending
		st.ObservedGeneration = d.Generation
		setCond(&st, d, v1alpha1.DiskConditionReady, v1alpha1.ConditionFalse, ReasonNotSupported, "this server has no upload endpoint")
		return runtime.Result{}, c.writeStatus(ctx, d, st)
	}
	token := images.TokenFor(st.Phase == v1alpha1.DiskPhaseWaitForUserUpload && st.ObservedGeneration == d.Generation,
		st.ImageUploadURLs)
	cs := imports.UploadChecksum(d.Spec.DataSource.Upload)
	var dcopy v1alpha1.VirtualDisk
	raw, _ := json.Marshal(d)
	if err := json.Unmarshal(raw, &dcopy); err != nil {
		return runtime.Result{}, err
	}
	c.launch(d, func(ctx context.Context) { c.runUpload(ctx, &dcopy, token, cs, path, requested) })
	return runtime.Result{}, nil
}

func (c *Controller) runUpload(ctx context.Context, d *v1alpha1.VirtualDisk, token string, cs *v1alpha1.Checksum, path string, requested int64) {
	log := c.Log.With("disk", d.Namespace+"/"+d.Name, "uid", d.UID)
	w := c.cfg.Uploads.Wait(token)
	defer w.Close()
	st := d.Status
	st.Phase = v1alpha1.DiskPhaseWaitForUserUpload
	st.ImageUploadURLs = images.UploadURLs(c.cfg.UploadBaseURLs, token)
	st.Progress, st.DownloadSpeed = "", nil
	st.ObservedGeneration = d.Generation
	msg := imports.WaitMessage(c.cfg.UploadTimeout)
	setCond(&st, d, v1alpha1.DiskConditionDatasourceReady, v1alpha1.ConditionFalse, ReasonWaitForUserUpload, msg)
	setCond(&st, d, v1alpha1.DiskConditionReady, v1alpha1.ConditionFalse, ReasonWaitForUserUpload, msg)
	if err := c.writeStatus(ctx, d, st); err != nil {
		log.Warn("writing status", "err", err)
		return
	}
	up, err := w.Await(ctx, c.cfg.UploadTimeout)
	if err != nil {
		return
	}
	wctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if up == nil {
		st.ImageUploadURLs = nil
		c.failUpload(wctx, d, st, images.ReasonUploadTimeout,
			fmt.Sprintf("nobody uploaded the file within %s; delete the disk and create it again for a new upload URL", c.cfg.UploadTimeout))
		return
	}
	c.importDisk(ctx, d, st, path, requested, "the upload", func(ctx context.Context, staged string, opts images.Options) (*images.Result, error) {
		res, err := images.ImportStream(ctx, up.Body, up.Size, cs, staged, up.Options(opts))
		if err == nil {
			err = c.makeDiskFromUpload(ctx, res, staged, path, requested)
		}
		up.Finish(err)
		return res, err
	})
}

// importDisk runs an import (an upload, an HTTP download or a registry pull) into a temporary
// file of the pool and makes it the disk; run must leave the disk at path when it succeeds.
func (c *Controller) importDisk(ctx context.Context, d *v1alpha1.VirtualDisk, st v1alpha1.VirtualDiskStatus, path string,
	requested int64, what string, run func(ctx context.Context, staged string, opts images.Options) (*images.Result, error)) {
	log := c.Log.With("disk", d.Namespace+"/"+d.Name, "uid", d.UID)
	wctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	started := time.Now()
	st.Phase = v1alpha1.DiskPhaseProvisioning
	st.ImageUploadURLs = nil // single-use
	st.Progress = "0%"
	st.ObservedGeneration = d.Generation
	setCond(&st, d, v1alpha1.DiskConditionDatasourceReady, v1alpha1.ConditionTrue, ReasonDataSourceReady, "")
	setCond(&st, d, v1alpha1.DiskConditionReady, v1alpha1.ConditionFalse, ReasonProvisioning, "importing "+what)
	if err := c.writeStatus(ctx, d, st); err != nil {
		log.Warn("writing status", "err", err)
	}
	// The data is received and checked as an image's would be, into a temporary file of the
	// pool, and then becomes the disk.
	staged := filepath.Join(filepath.Dir(path), storage.TempPrefix+filepath.Base(path)+"-import")
	defer os.Remove(staged)
	opts := imports.Progress{Client: c.C, Resource: "virtualdisks", Object: &d.ObjectMeta, Interval: c.cfg.ProgressInterval}.
		Options(ctx, c.cfg.MaxUnpackedSize)
	res, err := run(ctx, staged, opts)
	if ctx.Err() != nil {
		return
	}
	if fresh := (v1alpha1.VirtualDisk{}); c.C.Get(wctx, "virtualdisks", d.Namespace, d.Name, &fresh) == nil {
		st.DownloadSpeed = fresh.Status.DownloadSpeed
	}
	if err != nil {
		reason := ReasonProvisioningFailed
		var ie *images.Error
		if errors.As(err, &ie) {
			reason = ie.Reason
		}
		if reason == images.ReasonInsufficientStorage || images.IsNoSpace(err) {
			reason = ReasonInsufficientStorage
		}
		c.noteNoSpace(d.UID) // the time of the failure, for the retry of transient reasons
		c.failUpload(wctx, d, st, reason, err.Error())
		return
	}
	size := max(requested, res.VirtualSize)
	st = c.readyStatus(d, st, size)
	log.Info("disk ready from an import", "source", what, "format", res.SourceFormat, "size", size, "took", time.Since(started).Round(time.Millisecond))
	c.Rec.Event(wctx, "VirtualDisk", d, "Normal", ReasonReady, fmt.Sprintf("made from %s (%s, %s)", what, res.SourceFormat, images.HumanBytes(res.VirtualSize)))
	if err := c.writeStatus(wctx, d, st); err != nil {
		log.Warn("writing status", "err", err)
	}
}

// startImport begins a disk's HTTP or ContainerImage import in the background.
func (c *Controller) startImport(ctx context.Context, d *v1alpha1.VirtualDisk, st v1alpha1.VirtualDiskStatus, path string, requested int64) (runtime.Result, error) {
	ds := d.Spec.DataSource
	var what string
	var pull func(ctx context.Context, staged string, opts images.Options) (*images.Result, error)
	switch {
	case ds.Type == v1alpha1.DataSourceTypeHTTP && ds.HTTP != nil:
		src := images.HTTPSource{URL: ds.HTTP.URL, CABundle: ds.HTTP.CABundle, Checksum: ds.HTTP.Checksum}
		what = "an HTTP download"
		pull = func(ctx context.Context, staged string, opts images.Options) (*images.Result, error) {
			return images.ImportHTTP(ctx, src, staged, opts)
		}
	case ds.Type == v1alpha1.DataSourceTypeContainerImage && ds.ContainerImage != nil:
		ci := ds.ContainerImage
		src := images.OCISource{Image: ci.Image, CABundle: ci.CABundle}
		if ps := ci.ImagePullSecret; ps != nil && ps.Name != "" {
			if ps.Namespace != "" && ps.Namespace != d.Namespace {
				return runtime.Result{}, c.fail(ctx, d, st, ReasonNotSupported,
					fmt.Sprintf("imagePullSecret: a disk may use only Secrets of its own project %q, not %q", d.Namespace, ps.Namespace))
			}
			var sec v1alpha1.Secret
			if err := c.C.Get(ctx, "secrets", d.Namespace, ps.Name, &sec); err != nil {
				if client.IsNotFound(err) {
					st.Phase = v1alpha1.DiskPhasePending
					st.ObservedGeneration = d.Generation
					setCond(&st, d, v1alpha1.DiskConditionReady, v1alpha1.ConditionFalse, ReasonImageNotFound,
						fmt.Sprintf("waiting for the imagePullSecret %q: not found", ps.Name))
					return runtime.Result{RequeueAfter: 15 * time.Second}, c.writeStatus(ctx, d, st)
				}
				return runtime.Result{}, err
			}
			if sec.Type != v1alpha1.SecretTypeDockerConfigJSON {
				return runtime.Result{}, c.fail(ctx, d, st, ReasonNotSupported,
					fmt.Sprintf("imagePullSecret %q must be of type %s", ps.Name, v1alpha1.SecretTypeDockerConfigJSON))
			}
			src.DockerConfigJSON = sec.Data[v1alpha1.SecretKeyDockerConfigJSON]
		}
		what = "the container image " + ci.Image
		pull = func(ctx context.Context, staged string, opts images.Options) (*images.Result, error) {
			return images.ImportOCI(ctx, src, staged, opts)
		}
	default:
		return runtime.Result{}, c.fail(ctx, d, st, ReasonNotSupported, fmt.Sprintf("spec.dataSource.%s is missing", strings.ToLower(string(ds.Type))))
	}
	var dcopy v1alpha1.VirtualDisk
	raw, _ := json.Marshal(d)
	if err := json.Unmarshal(raw, &dcopy); err != nil {
		return runtime.Result{}, err
	}
	c.launch(d, func(ctx context.Context) {
		c.importDisk(ctx, &dcopy, dcopy.Status, path, requested, what, func(ctx context.Context, staged string, opts images.Options) (*images.Result, error) {
			res, err := pull(ctx, staged, opts)
			if err == nil {
				err = c.makeDiskFromUpload(ctx, res, staged, path, requested)
			}
			return res, err
		})
	})
	return runtime.Result{}, nil
}

// makeDiskFromUpload turns the stored upload (qcow2, or an ISO kept raw) into the disk file.
func (c *Controller) makeDiskFromUpload(ctx context.Context, res *images.Result, staged, path string, requested int64) error {
	if requested > 0 && requested < res.VirtualSize {
		return &images.Error{Reason: ReasonSizeTooSmall, Err: fmt.Errorf(
			"spec.persistentVolumeClaim.size %s is smaller than the uploaded disk's virtual size %s (%d bytes)",
			images.HumanBytes(requested), images.HumanBytes(res.VirtualSize), res.VirtualSize)}
	}
	grow := int64(0)
	if requested > res.VirtualSize {
		grow = requested
	}
	if res.Format == images.FormatQCOW2 {
		if grow > 0 {
			if err := storage.Resize(ctx, staged, "qcow2", grow); err != nil {
				return err
			}
		}
		return storage.Commit(staged, path)
	}
	return storage.ConvertResize(ctx, staged, storage.DriveFormat(string(res.Format)), path, "qcow2", grow)
}

func (c *Controller) failUpload(ctx context.Context, d *v1alpha1.VirtualDisk, st v1alpha1.VirtualDiskStatus, reason, msg string) {
	st.Phase = v1alpha1.DiskPhaseFailed
	setCond(&st, d, v1alpha1.DiskConditionReady, v1alpha1.ConditionFalse, reason, msg)
	c.Rec.Event(ctx, "VirtualDisk", d, "Warning", reason, msg)
	if err := c.writeStatus(ctx, d, st); err != nil && !client.IsNotFound(err) {
		c.Log.Warn("writing status", "disk", d.Namespace+"/"+d.Name, "err", err)
	}
}
