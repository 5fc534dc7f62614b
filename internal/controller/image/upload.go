package image

import (
	"context"
	"errors"
	"fmt"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/controller/imports"
	"github.com/rakhsh/rakhsh/internal/images"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// ReasonWaitForUserUpload is the condition reason of an image that waits for its file.
const ReasonWaitForUserUpload = "WaitForUserUpload"

// UploadURLs returns the upload URLs of token on bases (see images.UploadURLs).
func UploadURLs(bases v1alpha1.ImageUploadURLs, token string) *v1alpha1.ImageUploadURLs {
	return images.UploadURLs(bases, token)
}

// startUpload puts an Upload image in WaitForUserUpload behind a single-use URL. After a
// restart an image that was waiting keeps its URL (and waits a full timeout again).
func (c *Controller) startUpload(ctx context.Context, img *image, st v1alpha1.ImageStatus) (runtime.Result, error) {
	if c.cfg.Uploads == nil {
		return runtime.Result{}, c.pending(ctx, img, st, ReasonNotSupported, "this server has no upload endpoint")
	}
	token := images.TokenFor(st.Phase == v1alpha1.ImagePhaseWaitForUserUpload && st.ObservedGeneration == img.meta.Generation,
		st.ImageUploadURLs)
	cs := imports.UploadChecksum(img.ds.Upload)
	c.launchJob(img, func(ctx context.Context) { c.runUpload(ctx, img, token, cs) })
	return runtime.Result{}, nil
}

func (c *Controller) runUpload(ctx context.Context, img *image, token string, cs *v1alpha1.Checksum) {
	m := img.meta
	log := c.Log.With("image", img.String(), "uid", m.UID)
	w := c.cfg.Uploads.Wait(token)
	defer w.Close()
	st := *img.status
	st.Phase = v1alpha1.ImagePhaseWaitForUserUpload
	st.ImageUploadURLs = UploadURLs(c.cfg.UploadBaseURLs, token)
	st.Progress, st.DownloadSpeed, st.Size = "", nil, nil
	st.ObservedGeneration = m.Generation
	msg := imports.WaitMessage(c.cfg.UploadTimeout)
	setCond(&st, m, v1alpha1.ImageConditionDatasourceReady, v1alpha1.ConditionFalse, ReasonWaitForUserUpload, msg)
	setCond(&st, m, v1alpha1.ImageConditionReady, v1alpha1.ConditionFalse, ReasonWaitForUserUpload, msg)
	if !statusEqual(*img.status, st) {
		if err := c.writeStatus(ctx, img, st); err != nil {
			log.Warn("writing status", "err", err)
			return
		}
	}
	log.Info("waiting for an upload", "timeout", c.cfg.UploadTimeout)
	up, err := w.Await(ctx, c.cfg.UploadTimeout)
	if err != nil {
		return
	}
	if up == nil {
		st.Phase = v1alpha1.ImagePhaseFailed
		st.ImageUploadURLs = nil
		msg := fmt.Sprintf("nobody uploaded the file within %s; delete the image and create it again for a new upload URL", c.cfg.UploadTimeout)
		setCond(&st, m, v1alpha1.ImageConditionReady, v1alpha1.ConditionFalse, images.ReasonUploadTimeout, msg)
		c.Rec.Event(ctx, img.kind.name, img.obj, "Warning", images.ReasonUploadTimeout, msg)
		if err := c.writeStatus(ctx, img, st); err != nil {
			log.Warn("writing status", "err", err)
		}
		return
	}
	*img.status = st
	c.runImport(ctx, img, func(ctx context.Context, dst string, opts images.Options) (*images.Result, error) {
		res, err := images.ImportStream(ctx, up.Body, up.Size, cs, dst, up.Options(opts))
		up.Finish(err)
		return res, err
	})
	// When the import could not even start (its status write failed), answer the request
	// anyway (a no-op when the import answered it).
	up.Finish(&images.Error{Reason: images.ReasonProcessingFailed, Transient: true,
		Err: errors.New("the server could not start processing the upload; read status.imageUploadURLs and upload again")})
}
