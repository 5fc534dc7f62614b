package registry

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"reflect"
	"regexp"
	"strings"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
)

func init() {
	registerTyped("ClusterVirtualImage", typed[*v1alpha1.ClusterVirtualImage]{
		Default: func(img *v1alpha1.ClusterVirtualImage) { defaultDataSource(&img.Spec.DataSource) },
		Validate: func(img *v1alpha1.ClusterVirtualImage) errs.FieldErrors {
			var fe errs.FieldErrors
			validateImage(&fe, &img.Spec.DataSource, &img.Status, dataSourceContext{
				selfKind: v1alpha1.DataSourceKindClusterVirtualImage,
				selfName: img.Name,
			})
			return fe
		},
		ValidateUpdate: func(n, o *v1alpha1.ClusterVirtualImage) errs.FieldErrors {
			var fe errs.FieldErrors
			immutableDataSource(&fe, &n.Spec.DataSource, &o.Spec.DataSource, "spec.dataSource")
			return fe
		},
	})
	registerTyped("VirtualImage", typed[*v1alpha1.VirtualImage]{
		Default: func(img *v1alpha1.VirtualImage) {
			if img.Spec.Storage == "" {
				img.Spec.Storage = v1alpha1.ImageStorageContainerRegistry
			}
			defaultDataSource(&img.Spec.DataSource)
		},
		Validate: func(img *v1alpha1.VirtualImage) errs.FieldErrors {
			var fe errs.FieldErrors
			switch img.Spec.Storage {
			case "", v1alpha1.ImageStorageContainerRegistry, v1alpha1.ImageStoragePersistentVolumeClaim:
			default:
				fe.NotSupported("spec.storage", string(img.Spec.Storage), []string{
					string(v1alpha1.ImageStorageContainerRegistry), string(v1alpha1.ImageStoragePersistentVolumeClaim)})
			}
			validateImage(&fe, &img.Spec.DataSource, &img.Status, dataSourceContext{
				namespaced: true,
				namespace:  img.Namespace,
				selfKind:   v1alpha1.DataSourceKindVirtualImage,
				selfName:   img.Name,
			})
			return fe
		},
		ValidateUpdate: func(n, o *v1alpha1.VirtualImage) errs.FieldErrors {
			var fe errs.FieldErrors
			chkUnchanged(&fe, "spec.storage", n.Spec.Storage, o.Spec.Storage, "")
			immutableDataSource(&fe, &n.Spec.DataSource, &o.Spec.DataSource, "spec.dataSource")
			return fe
		},
	})
}

// validateImage checks the data source and the status, which both image kinds have; dc says
// which image it is (allowedKinds are those of any image).
func validateImage(fe *errs.FieldErrors, ds *v1alpha1.DataSource, st *v1alpha1.ImageStatus, dc dataSourceContext) {
	dc.allowedKinds = imageObjectRefKinds
	validateDataSource(fe, ds, "spec.dataSource", dc)
	validateImageStatus(fe, st)
}

// imageObjectRefKinds are the kinds an image may be copied from.
var imageObjectRefKinds = []v1alpha1.DataSourceObjectKind{
	v1alpha1.DataSourceKindClusterVirtualImage, v1alpha1.DataSourceKindVirtualImage,
	v1alpha1.DataSourceKindVirtualDisk, v1alpha1.DataSourceKindVirtualDiskSnapshot,
}

var dataSourceTypes = []string{
	string(v1alpha1.DataSourceTypeHTTP), string(v1alpha1.DataSourceTypeContainerImage),
	string(v1alpha1.DataSourceTypeObjectRef), string(v1alpha1.DataSourceTypeUpload),
}

// dataSourceContext is what validateDataSource needs to know about the object it checks.
type dataSourceContext struct {
	allowedKinds []v1alpha1.DataSourceObjectKind
	// namespaced says the object lives in a project (namespace, possibly empty before the
	// server fills it): its references stay in that project.
	namespaced bool
	namespace  string
	// selfKind and selfName identify the object, to reject copying it from itself.
	selfKind v1alpha1.DataSourceObjectKind
	selfName string
}

// defaultDataSource lower-cases checksums so that they compare as the importer computes them.
func defaultDataSource(ds *v1alpha1.DataSource) {
	if ds.HTTP != nil {
		defaultChecksum(ds.HTTP.Checksum)
	}
	if ds.Upload != nil {
		defaultChecksum(ds.Upload.Checksum)
	}
}

func defaultChecksum(c *v1alpha1.Checksum) {
	if c == nil {
		return
	}
	c.MD5 = strings.ToLower(c.MD5)
	c.SHA1 = strings.ToLower(c.SHA1)
	c.SHA256 = strings.ToLower(c.SHA256)
	c.SHA512 = strings.ToLower(c.SHA512)
}

// validateDataSource checks an image's or disk's data source at path.
func validateDataSource(fe *errs.FieldErrors, ds *v1alpha1.DataSource, path string, ctx dataSourceContext) {
	t := ds.Type
	switch t {
	case v1alpha1.DataSourceTypeHTTP, v1alpha1.DataSourceTypeContainerImage,
		v1alpha1.DataSourceTypeObjectRef, v1alpha1.DataSourceTypeUpload:
	case "":
		fe.Required(path+".type", "one of "+strings.Join(dataSourceTypes, ", ")+" is required")
	default:
		fe.NotSupported(path+".type", string(t), dataSourceTypes)
	}
	only := func(field string, set bool, want v1alpha1.DataSourceType) {
		if set && t != want {
			fe.Forbidden(path+"."+field, fmt.Sprintf("may only be set when %s.type is %s", path, want))
		}
	}
	only("http", ds.HTTP != nil, v1alpha1.DataSourceTypeHTTP)
	only("containerImage", ds.ContainerImage != nil, v1alpha1.DataSourceTypeContainerImage)
	only("objectRef", ds.ObjectRef != nil, v1alpha1.DataSourceTypeObjectRef)
	only("upload", ds.Upload != nil, v1alpha1.DataSourceTypeUpload)

	switch t {
	case v1alpha1.DataSourceTypeHTTP:
		if ds.HTTP == nil {
			fe.Required(path+".http", "required when type is HTTP")
		} else {
			validateHTTPSource(fe, ds.HTTP, path+".http")
		}
	case v1alpha1.DataSourceTypeContainerImage:
		if ds.ContainerImage == nil {
			fe.Required(path+".containerImage", "required when type is ContainerImage")
		} else {
			validateContainerImageSource(fe, ds.ContainerImage, path+".containerImage", ctx)
		}
	case v1alpha1.DataSourceTypeObjectRef:
		if ds.ObjectRef == nil {
			fe.Required(path+".objectRef", "required when type is ObjectRef")
		} else {
			validateObjectRefSource(fe, ds.ObjectRef, path+".objectRef", ctx)
		}
	case v1alpha1.DataSourceTypeUpload:
		if ds.Upload != nil {
			validateChecksum(fe, ds.Upload.Checksum, path+".upload.checksum")
		}
	}
}

const maxSourceURL = 4096

func validateHTTPSource(fe *errs.FieldErrors, h *v1alpha1.DataSourceHTTP, path string) {
	switch {
	case h.URL == "":
		fe.Required(path+".url", "an http or https URL is required")
	case len(h.URL) > maxSourceURL:
		fe.Invalid(path+".url", nil, fmt.Sprintf("must be at most %d characters", maxSourceURL))
	default:
		if msg := checkSourceURL(h.URL); msg != "" {
			fe.Invalid(path+".url", h.URL, msg)
		}
	}
	validateCABundle(fe, h.CABundle, path+".caBundle")
	validateChecksum(fe, h.Checksum, path+".checksum")
}

// checkSourceURL returns why u is not an acceptable download URL, or "".
func checkSourceURL(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return "does not parse as a URL: " + err.Error()
	}
	if p.Scheme != "http" && p.Scheme != "https" {
		return "the scheme must be http or https"
	}
	if p.Opaque != "" || p.Hostname() == "" {
		return "must name a host, e.g. https://example.com/image.qcow2"
	}
	if p.User != nil {
		return "must not carry credentials: everyone who can read the object would see them"
	}
	if port := p.Port(); port != "" {
		if len(port) > 5 || port == "0" || strings.TrimLeft(port, "0123456789") != "" || atoiSmall(port) > 65535 {
			return "the port must be between 1 and 65535"
		}
	}
	return ""
}

func atoiSmall(s string) int {
	n := 0
	for _, c := range s {
		n = n*10 + int(c-'0')
	}
	return n
}

const maxCABundle = 256 << 10

// validateCABundle checks that b, when set, is base64 of PEM certificates.
func validateCABundle(fe *errs.FieldErrors, b, path string) {
	if b == "" {
		return
	}
	if len(b) > maxCABundle {
		fe.Invalid(path, nil, fmt.Sprintf("must be at most %d KiB", maxCABundle>>10))
		return
	}
	raw, err := base64.StdEncoding.DecodeString(b)
	if err != nil {
		fe.Invalid(path, nil, "must be base64-encoded PEM certificates: "+err.Error())
		return
	}
	n := 0
	for rest := raw; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		n++
		if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
			fe.Invalid(path, nil, fmt.Sprintf("certificate %d does not parse: %v", n, err))
			return
		}
	}
	if n == 0 {
		fe.Invalid(path, nil, "must be base64-encoded PEM holding at least one CERTIFICATE block")
	}
}

// checksumFields lists each digest with its hex length.
var checksumFields = []struct {
	name string
	hex  int
	get  func(*v1alpha1.Checksum) string
}{
	{"md5", 32, func(c *v1alpha1.Checksum) string { return c.MD5 }},
	{"sha1", 40, func(c *v1alpha1.Checksum) string { return c.SHA1 }},
	{"sha256", 64, func(c *v1alpha1.Checksum) string { return c.SHA256 }},
	{"sha512", 128, func(c *v1alpha1.Checksum) string { return c.SHA512 }},
}

func validateChecksum(fe *errs.FieldErrors, c *v1alpha1.Checksum, path string) {
	if c == nil {
		return
	}
	for _, f := range checksumFields {
		v := f.get(c)
		if v == "" {
			continue
		}
		if _, err := hex.DecodeString(v); err != nil || len(v) != f.hex {
			fe.Invalid(path+"."+f.name, v, fmt.Sprintf("must be %d hexadecimal digits", f.hex))
		}
	}
}

func validateContainerImageSource(fe *errs.FieldErrors, c *v1alpha1.DataSourceContainerImage, path string, ctx dataSourceContext) {
	if c.Image == "" {
		fe.Required(path+".image", "an OCI image reference such as registry.example.com/images/debian:12 is required")
	} else if msg := checkOCIReference(c.Image); msg != "" {
		fe.Invalid(path+".image", c.Image, msg)
	}
	if s := c.ImagePullSecret; s != nil {
		sp := path + ".imagePullSecret"
		if msg := ValidateName(s.Name); msg != "" {
			if s.Name == "" {
				fe.Required(sp+".name", "the name of a kubernetes.io/dockerconfigjson Secret is required")
			} else {
				fe.Invalid(sp+".name", s.Name, msg)
			}
		}
		validateRefNamespace(fe, s.Namespace, sp+".namespace", ctx, true)
	}
	validateCABundle(fe, c.CABundle, path+".caBundle")
}

// validateRefNamespace checks the namespace of a reference to a namespaced object:
// a cluster-scoped referrer must give it; a namespaced one may only name its own project.
func validateRefNamespace(fe *errs.FieldErrors, ns, path string, ctx dataSourceContext, required bool) {
	if ns == "" {
		if !ctx.namespaced && required {
			fe.Required(path, "a cluster-scoped object must say which project the referenced object is in")
		}
		return
	}
	if msg := ValidateName(ns); msg != "" {
		fe.Invalid(path, ns, msg)
		return
	}
	if ctx.namespaced && ctx.namespace != "" && ns != ctx.namespace {
		fe.Forbidden(path, fmt.Sprintf("may only name the object's own project %q", ctx.namespace))
	}
}

func validateObjectRefSource(fe *errs.FieldErrors, r *v1alpha1.DataSourceObjectRef, path string, ctx dataSourceContext) {
	allowed := make([]string, len(ctx.allowedKinds))
	kindOK := false
	for i, k := range ctx.allowedKinds {
		allowed[i] = string(k)
		if r.Kind == k {
			kindOK = true
		}
	}
	if r.Kind == "" {
		fe.Required(path+".kind", "one of "+strings.Join(allowed, ", ")+" is required")
	} else if !kindOK {
		fe.NotSupported(path+".kind", string(r.Kind), allowed)
	}
	if msg := ValidateName(r.Name); msg != "" {
		if r.Name == "" {
			fe.Required(path+".name", "")
		} else {
			fe.Invalid(path+".name", r.Name, msg)
		}
	}
	if r.Kind == v1alpha1.DataSourceKindClusterVirtualImage {
		if r.Namespace != "" {
			fe.Forbidden(path+".namespace", "a ClusterVirtualImage is cluster-scoped and has no namespace")
		}
	} else if kindOK {
		validateRefNamespace(fe, r.Namespace, path+".namespace", ctx, true)
	}
	if r.DiskName != "" {
		if r.Kind != v1alpha1.DataSourceKindVirtualMachineBackup {
			fe.Forbidden(path+".diskName", "only with kind VirtualMachineBackup")
		} else if msg := ValidateName(r.DiskName); msg != "" {
			fe.Invalid(path+".diskName", r.DiskName, msg)
		}
	}
	if kindOK && r.Kind == ctx.selfKind && r.Name != "" && r.Name == ctx.selfName &&
		(r.Namespace == "" || !ctx.namespaced || r.Namespace == ctx.namespace) {
		fe.Invalid(path+".name", r.Name, "an object cannot be made from itself")
	}
}

// OCI reference grammar (distribution/reference), written out here.
var (
	ociDomainRe    = regexp.MustCompile(`^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:.]+\])(?::[0-9]{1,5})?$`)
	ociPathRe      = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$`)
	ociTagRe       = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
	ociDigestRe    = regexp.MustCompile(`^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$`)
	lowerHexRe     = regexp.MustCompile(`^[0-9a-f]+$`)
	maxOCIRefChars = 1024
)

// checkOCIReference returns why ref is not a valid OCI image reference
// ([registry[:port]/]path[:tag][@algorithm:digest]), or "".
func checkOCIReference(ref string) string {
	if len(ref) > maxOCIRefChars {
		return fmt.Sprintf("must be at most %d characters", maxOCIRefChars)
	}
	if strings.Contains(ref, "://") {
		return "must not carry a scheme: write registry.example.com/path/name:tag"
	}
	name, digest, hasDigest := strings.Cut(ref, "@")
	if hasDigest {
		if !ociDigestRe.MatchString(digest) {
			return "the digest must be algorithm:hex, e.g. sha256:<64 hex digits>"
		}
		alg, enc, _ := strings.Cut(digest, ":")
		want := map[string]int{"sha256": 64, "sha512": 128}[alg]
		if want != 0 && (len(enc) != want || !lowerHexRe.MatchString(enc)) {
			return fmt.Sprintf("a %s digest must be %d lower-case hexadecimal digits", alg, want)
		}
	}
	if i := strings.LastIndex(name, ":"); i > strings.LastIndex(name, "/") {
		tag := name[i+1:]
		name = name[:i]
		if !ociTagRe.MatchString(tag) {
			return fmt.Sprintf("the tag %q must be at most 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'", tag)
		}
	}
	if name == "" {
		return "must name a repository"
	}
	if len(name) > 255 {
		return "the repository name must be at most 255 characters"
	}
	parts := strings.Split(name, "/")
	if len(parts) > 1 && (strings.ContainsAny(parts[0], ".:[") || parts[0] == "localhost") {
		if !ociDomainRe.MatchString(parts[0]) {
			return fmt.Sprintf("the registry %q is not a valid host[:port]", parts[0])
		}
		parts = parts[1:]
	}
	for _, p := range parts {
		if !ociPathRe.MatchString(p) {
			return fmt.Sprintf("the path component %q must be lower-case letters and digits separated by '.', '_', '__' or '-'", p)
		}
	}
	return ""
}

// immutableDataSource forbids any change of a data source.
func immutableDataSource(fe *errs.FieldErrors, n, o *v1alpha1.DataSource, path string) {
	if !reflect.DeepEqual(n, o) {
		fe.Forbidden(path, "cannot be changed after creation")
	}
}

// validateImageStatus checks what controllers write to an image's status: values that later
// name files or formats must be ones the server could have made.
func validateImageStatus(fe *errs.FieldErrors, st *v1alpha1.ImageStatus) {
	switch st.Format {
	case "", "qcow2", "raw", "iso":
	default:
		fe.NotSupported("status.format", st.Format, []string{"qcow2", "raw", "iso"})
	}
	if st.SHA256 != "" && !sha256Re.MatchString(st.SHA256) {
		fe.Invalid("status.sha256", st.SHA256, "must be 64 lowercase hex digits")
	}
	for i, ns := range st.UsedInNamespaces {
		if msg := ValidateName(ns); msg != "" {
			fe.Invalid(fmt.Sprintf("status.usedInNamespaces[%d]", i), ns, msg)
		}
	}
}

var sha256Re = regexp.MustCompile(`^[0-9a-f]{64}$`)
