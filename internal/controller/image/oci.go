package image

import (
	"context"
	"fmt"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/images"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// startOCI begins the import of a ContainerImage data source. The pull secret is read when
// the import starts: a VirtualImage may use only a Secret of its own project; a
// ClusterVirtualImage names the Secret's project.
func (c *Controller) startOCI(ctx context.Context, img *image, st v1alpha1.ImageStatus) (runtime.Result, error) {
	ci := img.ds.ContainerImage
	if ci == nil || ci.Image == "" {
		return runtime.Result{}, c.pending(ctx, img, st, ReasonNotSupported, "spec.dataSource.containerImage.image is missing")
	}
	src := images.OCISource{Image: ci.Image, CABundle: ci.CABundle}
	if ps := ci.ImagePullSecret; ps != nil && ps.Name != "" {
		ns := ps.Namespace
		if img.kind.namespaced {
			if ns != "" && ns != img.meta.Namespace {
				return runtime.Result{}, c.pending(ctx, img, st, ReasonNotSupported,
					fmt.Sprintf("imagePullSecret: a VirtualImage may use only Secrets of its own project %q, not %q", img.meta.Namespace, ns))
			}
			ns = img.meta.Namespace
		} else if ns == "" {
			return runtime.Result{}, c.pending(ctx, img, st, ReasonNotSupported,
				"imagePullSecret: a ClusterVirtualImage must name the Secret's project in imagePullSecret.namespace")
		}
		var sec v1alpha1.Secret
		err := c.C.Get(ctx, "secrets", ns, ps.Name, &sec)
		switch {
		case client.IsNotFound(err):
			return runtime.Result{RequeueAfter: c.cfg.RetryDelay / 4}, c.pending(ctx, img, st, ReasonWaitForSource,
				fmt.Sprintf("waiting for the imagePullSecret %q in project %q: not found", ps.Name, ns))
		case err != nil:
			return runtime.Result{}, err
		case sec.Type != v1alpha1.SecretTypeDockerConfigJSON || sec.Data[v1alpha1.SecretKeyDockerConfigJSON] == nil:
			return runtime.Result{}, c.pending(ctx, img, st, ReasonNotSupported,
				fmt.Sprintf("imagePullSecret %q in project %q must be of type %s with a %s key", ps.Name, ns,
					v1alpha1.SecretTypeDockerConfigJSON, v1alpha1.SecretKeyDockerConfigJSON))
		}
		src.DockerConfigJSON = sec.Data[v1alpha1.SecretKeyDockerConfigJSON]
	}
	c.launch(img, func(ctx context.Context, dst string, opts images.Options) (*images.Result, error) {
		return images.ImportOCI(ctx, src, dst, opts)
	})
	return runtime.Result{}, nil
}
