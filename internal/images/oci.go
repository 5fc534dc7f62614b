package images

import (
	"archive/tar"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/rakhsh/rakhsh/internal/storage"
)

// ReasonRegistryAuthFailed: the registry refused the credentials (or asked for some).
const ReasonRegistryAuthFailed = "RegistryAuthFailed"

// OCIDiskDir is the directory of an OCI image that holds the disk file (a "containerdisk").
const OCIDiskDir = "disk/"

// OCISource is an OCI image holding a disk file under /disk/, as in an image's
// spec.dataSource.containerImage.
type OCISource struct {
	// Image is a reference such as registry.example.com/images/debian:12 or ...@sha256:HEX.
	Image string
	// CABundle is base64 of PEM certificates trusted in addition to the host's.
	CABundle string
	// DockerConfigJSON is the content of a kubernetes.io/dockerconfigjson Secret, or nil.
	DockerConfigJSON []byte
}

// dockerConfig is the part of a .dockerconfigjson Rakhsh reads.
type dockerConfig struct {
	Auths map[string]struct {
		Auth     string `json:"auth"`
		Username string `json:"username"`
		Password string `json:"password"`
	} `json:"auths"`
}

// ParseDockerConfigJSON returns the credentials of a .dockerconfigjson by registry host.
func ParseDockerConfigJSON(b []byte) (map[string]authn.AuthConfig, error) {
	var dc dockerConfig
	if err := json.Unmarshal(b, &dc); err != nil {
		return nil, fmt.Errorf(".dockerconfigjson is not valid JSON: %v", err)
	}
	out := map[string]authn.AuthConfig{}
	for host, a := range dc.Auths {
		ac := authn.AuthConfig{Username: a.Username, Password: a.Password}
		if a.Auth != "" {
			raw, err := base64.StdEncoding.DecodeString(a.Auth)
			if err != nil {
				return nil, fmt.Errorf(".dockerconfigjson: auths[%q].auth is not base64", host)
			}
			u, p, ok := strings.Cut(string(raw), ":")
			if !ok {
				return nil, fmt.Errorf(".dockerconfigjson: auths[%q].auth is not USER:PASSWORD", host)
			}
			ac.Username, ac.Password = u, p
		}
		// Keys may be URLs (https://host/v1/); keep the host.
		h := strings.TrimPrefix(strings.TrimPrefix(host, "https://"), "http://")
		h, _, _ = strings.Cut(h, "/")
		out[h] = ac
	}
	return out, nil
}

type staticKeychain map[string]authn.AuthConfig

func (k staticKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	if ac, ok := k[r.RegistryStr()]; ok {
		return authn.FromConfig(ac), nil
	}
	if r.RegistryStr() == name.DefaultRegistry {
		for _, alias := range []string{"docker.io", "registry-1.docker.io"} {
			if ac, ok := k[alias]; ok {
				return authn.FromConfig(ac), nil
			}
		}
	}
	return authn.Anonymous, nil
}

// ImportOCI pulls src and stores the first regular file under /disk/ of its top-most layer
// that has one at dst, with the checks and conversions of any import. Layers stream through
// once: memory use does not depend on the image size. The registry's digests are verified
// as the layers are read.
func ImportOCI(ctx context.Context, src OCISource, dst string, opts Options) (*Result, error) {
	ref, err := name.ParseReference(src.Image, name.StrictValidation)
	if err != nil {
		if ref, err = name.ParseReference(src.Image); err != nil {
			return nil, permanent(ReasonInvalidSource, "%q is not an OCI image reference: %v", src.Image, err)
		}
	}
	kc := staticKeychain{}
	if src.DockerConfigJSON != nil {
		if kc, err = ParseDockerConfigJSON(src.DockerConfigJSON); err != nil {
			return nil, permanent(ReasonInvalidSource, "imagePullSecret: %v", err)
		}
	}
	tr, closeIdle, err := opts.transport(src.CABundle)
	if err != nil {
		return nil, err
	}
	defer closeIdle()
	what := "pulling " + ref.String()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	img, err := remote.Image(ref, remote.WithContext(ctx), remote.WithTransport(tr), remote.WithAuthFromKeychain(kc),
		remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"}))
	if err != nil {
		return nil, registryError(ctx, what, err)
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, registryError(ctx, what, err)
	}
	f, err := storage.TempFile(dst)
	if err != nil {
		return nil, transient(ReasonProcessingFailed, "creating a temporary file: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	defer f.Close()
	for i := len(layers) - 1; i >= 0; i-- {
		in, found, err := diskFromLayer(ctx, layers[i], what, f, opts, cancel)
		if err != nil {
			return nil, err
		}
		if !found {
			continue
		}
		if err := f.Close(); err != nil {
			return nil, transient(ReasonProcessingFailed, "writing the image: %v", err)
		}
		return store(ctx, tmp, dst, in, opts.spaceGuard())
	}
	return nil, permanent(ReasonInvalidSource, "%s: no layer of the image has a file under /%s (a containerdisk keeps its disk file there)", what, OCIDiskDir)
}

// diskFromLayer looks for the disk file in one layer and ingests it into f.
func diskFromLayer(ctx context.Context, l v1.Layer, what string, f *os.File, opts Options, abort context.CancelCauseFunc) (*ingested, bool, error) {
	rc, err := l.Uncompressed()
	if err != nil {
		return nil, false, registryError(ctx, what, err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		hd, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil, false, nil
		}
		if err != nil {
			return nil, false, registryError(ctx, what, err)
		}
		p := path.Clean("/" + hd.Name)[1:]
		if hd.Typeflag != tar.TypeReg || !strings.HasPrefix(p, OCIDiskDir) || strings.Contains(p[len(OCIDiskDir):], "/") ||
			strings.HasPrefix(path.Base(p), ".wh.") {
			continue
		}
		in, err := ingest(ctx, source{body: tr, total: hd.Size, what: what + " (/" + p + ")", truncatedIsTransient: true, abort: abort}, f, opts)
		if err != nil {
			return nil, false, err
		}
		// Read the layer to its end: its digest is checked only then.
		if _, err := io.Copy(io.Discard, rc); err != nil {
			return nil, false, registryError(ctx, what, err)
		}
		return in, true, nil
	}
}

// registryError classifies an error of the registry client.
func registryError(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var re *RefusedError
	if errors.As(err, &re) {
		return permanent(ReasonImportRefused, "%s refused: %v", what, re)
	}
	var te *transport.Error
	if errors.As(err, &te) {
		switch {
		case te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden:
			return permanent(ReasonRegistryAuthFailed, "%s: the registry refused access (%d): check spec.dataSource.containerImage.imagePullSecret", what, te.StatusCode)
		case te.StatusCode == http.StatusNotFound:
			return permanent(ReasonHTTPError, "%s: the registry has no such image: %v", what, err)
		case te.StatusCode >= 500 || te.StatusCode == http.StatusTooManyRequests:
			return transient(ReasonHTTPError, "%s: %v", what, err)
		}
		return permanent(ReasonHTTPError, "%s: %v", what, err)
	}
	if strings.Contains(err.Error(), "mismatch") {
		return permanent(ReasonChecksumMismatch, "%s: %v", what, err)
	}
	return transient(ReasonDownloadFailed, "%s: %v", what, unwrapURLError(err))
}
