package registry

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
)

// tkCause is one expected field error: its path and cause type.
type tkCause struct{ field, typ string }

func tkRequired(f string) tkCause     { return tkCause{f, errs.FieldValueRequired} }
func tkInvalid(f string) tkCause      { return tkCause{f, errs.FieldValueInvalid} }
func tkNotSupported(f string) tkCause { return tkCause{f, errs.FieldValueNotSupported} }
func tkForbidden(f string) tkCause    { return tkCause{f, errs.FieldValueForbidden} }
func tkDuplicate(f string) tkCause    { return tkCause{f, errs.FieldValueDuplicate} }

// tkCheck fails unless got holds exactly the causes in want (in any order).
func tkCheck(t *testing.T, got errs.FieldErrors, want ...tkCause) {
	t.Helper()
	g := make([]string, len(got))
	for i, e := range got {
		g[i] = e.Field + " " + e.Type
	}
	w := make([]string, len(want))
	for i, c := range want {
		w[i] = c.field + " " + c.typ
	}
	sort.Strings(g)
	sort.Strings(w)
	if strings.Join(g, "\n") != strings.Join(w, "\n") {
		t.Errorf("causes:\n got  %q\n want %q\n(full: %v)", g, w, got)
	}
}

// tkCase is an object of a kind and the causes its validation must give.
type tkCase[P v1alpha1.Object] struct {
	name string
	obj  P
	want []tkCause
}

// tkRunCases defaults and validates the object of each case with s, in a subtest.
func tkRunCases[P v1alpha1.Object](t *testing.T, s *Strategy, cases []tkCase[P]) {
	t.Helper()
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			s.Default(tt.obj)
			tkCheck(t, s.Validate(tt.obj), tt.want...)
		})
	}
}

// tkStrategy returns the registered strategy of kind.
func tkStrategy(t testing.TB, kind string) *Strategy {
	t.Helper()
	s, ok := ByKind(kind)
	if !ok {
		t.Fatalf("kind %s is not registered", kind)
	}
	return s
}

// tkFuzzSeeds fuzzes kind with tkFuzz, from the seed documents.
func tkFuzzSeeds(f *testing.F, kind string, seeds ...string) {
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) { tkFuzz(t, kind, data) })
}

// tkFuzz decodes data into kind, defaults and validates it and checks the invariants every
// strategy must keep: nothing panics (CheckUnknownFields neither), Default is idempotent,
// Validate is deterministic and every cause names a field, type and message, a round trip
// through JSON decodes again, and an object is a valid update of itself.
func tkFuzz(t *testing.T, kind string, data []byte) {
	s := tkStrategy(t, kind)
	var raw any
	if json.Unmarshal(data, &raw) == nil {
		_ = CheckUnknownFields(raw, reflect.TypeOf(s.New()))
	}
	obj := s.New()
	if err := json.Unmarshal(data, obj); err != nil {
		return
	}
	if s.Default != nil {
		s.Default(obj)
	}
	b1, err := json.Marshal(obj)
	if err != nil {
		t.Fatalf("marshal after Default: %v", err)
	}
	if s.Default != nil {
		s.Default(obj)
	}
	b2, _ := json.Marshal(obj)
	if !bytes.Equal(b1, b2) {
		t.Fatalf("Default is not idempotent:\n%s\n%s", b1, b2)
	}
	if s.Validate != nil {
		fe1, fe2 := s.Validate(obj), s.Validate(obj)
		if fmt.Sprint(fe1) != fmt.Sprint(fe2) {
			t.Fatalf("Validate is not deterministic:\n%v\n%v", fe1, fe2)
		}
		for _, e := range fe1 {
			if e.Field == "" || e.Type == "" || e.Message == "" {
				t.Fatalf("cause without field, type or message: %+v", e)
			}
		}
	}
	again := s.New()
	if err := json.Unmarshal(b2, again); err != nil {
		t.Fatalf("re-decode %s: %v", b2, err)
	}
	if s.ValidateUpdate != nil {
		if s.Default != nil {
			s.Default(again)
		}
		if fe := s.ValidateUpdate(again, obj); len(fe) != 0 {
			t.Fatalf("an unchanged object is not a valid update of itself: %v\n%s", fe, b2)
		}
	}
}

// tkCABundle returns base64 PEM of a fresh self-signed certificate.
func tkCABundle(t testing.TB) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test ca"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func TestClusterVirtualImageValidate(t *testing.T) {
	s := tkStrategy(t, "ClusterVirtualImage")
	ca := tkCABundle(t)
	sha256 := strings.Repeat("ab", 32)
	base := func() *v1alpha1.ClusterVirtualImage {
		return &v1alpha1.ClusterVirtualImage{ObjectMeta: v1alpha1.ObjectMeta{Name: "debian"},
			Spec: v1alpha1.ClusterVirtualImageSpec{DataSource: v1alpha1.DataSource{Type: "HTTP",
				HTTP: &v1alpha1.DataSourceHTTP{URL: "https://cloud.debian.org/images/debian-12.qcow2"}}}}
	}
	http := func(h v1alpha1.DataSourceHTTP) func(*v1alpha1.ClusterVirtualImage) {
		return func(c *v1alpha1.ClusterVirtualImage) { c.Spec.DataSource.HTTP = &h }
	}
	ds := func(d v1alpha1.DataSource) func(*v1alpha1.ClusterVirtualImage) {
		return func(c *v1alpha1.ClusterVirtualImage) { c.Spec.DataSource = d }
	}
	ref := func(kind, name, ns string) func(*v1alpha1.ClusterVirtualImage) {
		return ds(v1alpha1.DataSource{Type: "ObjectRef", ObjectRef: &v1alpha1.DataSourceObjectRef{
			Kind: v1alpha1.DataSourceObjectKind(kind), Name: name, Namespace: ns}})
	}
	cimg := func(c v1alpha1.DataSourceContainerImage) func(*v1alpha1.ClusterVirtualImage) {
		return ds(v1alpha1.DataSource{Type: "ContainerImage", ContainerImage: &c})
	}
	tests := []struct {
		name string
		mod  func(*v1alpha1.ClusterVirtualImage)
		want []tkCause
	}{
		{"valid http", func(*v1alpha1.ClusterVirtualImage) {}, nil},
		{"valid http with everything", http(v1alpha1.DataSourceHTTP{URL: "http://10.0.0.1:8080/a.iso?x=1", CABundle: ca,
			Checksum: &v1alpha1.Checksum{MD5: strings.Repeat("0", 32), SHA1: strings.Repeat("1", 40), SHA256: sha256, SHA512: strings.Repeat("f", 128)}}), nil},
		{"upper-case checksum is accepted", http(v1alpha1.DataSourceHTTP{URL: "https://h/x", Checksum: &v1alpha1.Checksum{SHA256: strings.ToUpper(sha256)}}), nil},
		{"missing type", ds(v1alpha1.DataSource{}), []tkCause{tkRequired("spec.dataSource.type")}},
		{"bad type", ds(v1alpha1.DataSource{Type: "FTP"}), []tkCause{tkNotSupported("spec.dataSource.type")}},
		{"http missing", ds(v1alpha1.DataSource{Type: "HTTP"}), []tkCause{tkRequired("spec.dataSource.http")}},
		{"url missing", http(v1alpha1.DataSourceHTTP{}), []tkCause{tkRequired("spec.dataSource.http.url")}},
		{"url ftp", http(v1alpha1.DataSourceHTTP{URL: "ftp://h/x"}), []tkCause{tkInvalid("spec.dataSource.http.url")}},
		{"url no host", http(v1alpha1.DataSourceHTTP{URL: "https:///x"}), []tkCause{tkInvalid("spec.dataSource.http.url")}},
		{"url relative", http(v1alpha1.DataSourceHTTP{URL: "/x.qcow2"}), []tkCause{tkInvalid("spec.dataSource.http.url")}},
		{"url unparseable", http(v1alpha1.DataSourceHTTP{URL: "http://[::1"}), []tkCause{tkInvalid("spec.dataSource.http.url")}},
		{"url credentials", http(v1alpha1.DataSourceHTTP{URL: "https://u:p@h/x"}), []tkCause{tkInvalid("spec.dataSource.http.url")}},
		{"url port", http(v1alpha1.DataSourceHTTP{URL: "https://h:70000/x"}), []tkCause{tkInvalid("spec.dataSource.http.url")}},
		{"url too long", http(v1alpha1.DataSourceHTTP{URL: "https://h/" + strings.Repeat("a", 5000)}), []tkCause{tkInvalid("spec.dataSource.http.url")}},
		{"caBundle not base64", http(v1alpha1.DataSourceHTTP{URL: "https://h/x", CABundle: "not base64!"}), []tkCause{tkInvalid("spec.dataSource.http.caBundle")}},
		{"caBundle not PEM", http(v1alpha1.DataSourceHTTP{URL: "https://h/x", CABundle: base64.StdEncoding.EncodeToString([]byte("hello"))}),
			[]tkCause{tkInvalid("spec.dataSource.http.caBundle")}},
		{"caBundle bad certificate", http(v1alpha1.DataSourceHTTP{URL: "https://h/x", CABundle: base64.StdEncoding.EncodeToString(
			pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("junk")}))}), []tkCause{tkInvalid("spec.dataSource.http.caBundle")}},
		{"checksums bad", http(v1alpha1.DataSourceHTTP{URL: "https://h/x", Checksum: &v1alpha1.Checksum{
			MD5: "xyz", SHA1: strings.Repeat("a", 39), SHA256: strings.Repeat("g", 64), SHA512: sha256}}),
			[]tkCause{tkInvalid("spec.dataSource.http.checksum.md5"), tkInvalid("spec.dataSource.http.checksum.sha1"),
				tkInvalid("spec.dataSource.http.checksum.sha256"), tkInvalid("spec.dataSource.http.checksum.sha512")}},
		{"foreign sub-structs", ds(v1alpha1.DataSource{Type: "HTTP", HTTP: &v1alpha1.DataSourceHTTP{URL: "https://h/x"},
			ContainerImage: &v1alpha1.DataSourceContainerImage{Image: "a/b"}, ObjectRef: &v1alpha1.DataSourceObjectRef{},
			Upload: &v1alpha1.DataSourceUpload{}}),
			[]tkCause{tkForbidden("spec.dataSource.containerImage"), tkForbidden("spec.dataSource.objectRef"), tkForbidden("spec.dataSource.upload")}},
		{"upload alone", ds(v1alpha1.DataSource{Type: "Upload"}), nil},
		{"upload with checksum", ds(v1alpha1.DataSource{Type: "Upload", Upload: &v1alpha1.DataSourceUpload{Checksum: &v1alpha1.Checksum{SHA256: sha256}}}), nil},
		{"upload bad checksum", ds(v1alpha1.DataSource{Type: "Upload", Upload: &v1alpha1.DataSourceUpload{Checksum: &v1alpha1.Checksum{MD5: "1"}}}),
			[]tkCause{tkInvalid("spec.dataSource.upload.checksum.md5")}},
		{"container image valid", cimg(v1alpha1.DataSourceContainerImage{Image: "registry.example.com:5000/images/debian:12",
			ImagePullSecret: &v1alpha1.ImagePullSecretRef{Name: "regcred", Namespace: "ops"}, CABundle: ca}), nil},
		{"container image missing", ds(v1alpha1.DataSource{Type: "ContainerImage"}), []tkCause{tkRequired("spec.dataSource.containerImage")}},
		{"container image empty", cimg(v1alpha1.DataSourceContainerImage{}), []tkCause{tkRequired("spec.dataSource.containerImage.image")}},
		{"container image bad", cimg(v1alpha1.DataSourceContainerImage{Image: "Registry/UPPER:tag", CABundle: "!"}),
			[]tkCause{tkInvalid("spec.dataSource.containerImage.image"), tkInvalid("spec.dataSource.containerImage.caBundle")}},
		{"pull secret needs namespace on a cluster image", cimg(v1alpha1.DataSourceContainerImage{Image: "a/b",
			ImagePullSecret: &v1alpha1.ImagePullSecretRef{}}),
			[]tkCause{tkRequired("spec.dataSource.containerImage.imagePullSecret.name"), tkRequired("spec.dataSource.containerImage.imagePullSecret.namespace")}},
		{"pull secret bad names", cimg(v1alpha1.DataSourceContainerImage{Image: "a/b",
			ImagePullSecret: &v1alpha1.ImagePullSecretRef{Name: "Bad_Name", Namespace: "-x"}}),
			[]tkCause{tkInvalid("spec.dataSource.containerImage.imagePullSecret.name"), tkInvalid("spec.dataSource.containerImage.imagePullSecret.namespace")}},
		{"objectRef cvi", ref("ClusterVirtualImage", "other", ""), nil},
		{"objectRef vi", ref("VirtualImage", "img", "proj"), nil},
		{"objectRef vd", ref("VirtualDisk", "disk", "proj"), nil},
		{"objectRef snapshot", ref("VirtualDiskSnapshot", "snap", "proj"), nil},
		{"objectRef missing", ds(v1alpha1.DataSource{Type: "ObjectRef"}), []tkCause{tkRequired("spec.dataSource.objectRef")}},
		{"objectRef empty", ref("", "", ""), []tkCause{tkRequired("spec.dataSource.objectRef.kind"), tkRequired("spec.dataSource.objectRef.name")}},
		{"objectRef bad kind", ref("VirtualMachine", "x", "p"), []tkCause{tkNotSupported("spec.dataSource.objectRef.kind")}},
		{"objectRef namespaced needs namespace", ref("VirtualImage", "img", ""), []tkCause{tkRequired("spec.dataSource.objectRef.namespace")}},
		{"objectRef cvi has no namespace", ref("ClusterVirtualImage", "img", "p"), []tkCause{tkForbidden("spec.dataSource.objectRef.namespace")}},
		{"objectRef bad name", ref("VirtualDisk", "Disk", "p_q"), []tkCause{tkInvalid("spec.dataSource.objectRef.name"), tkInvalid("spec.dataSource.objectRef.namespace")}},
		{"objectRef self", ref("ClusterVirtualImage", "debian", ""), []tkCause{tkInvalid("spec.dataSource.objectRef.name")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			obj := base()
			tt.mod(obj)
			s.Default(obj)
			tkCheck(t, s.Validate(obj), tt.want...)
		})
	}
}

func TestVirtualImageDefaultAndValidate(t *testing.T) {
	s := tkStrategy(t, "VirtualImage")
	obj := &v1alpha1.VirtualImage{ObjectMeta: v1alpha1.ObjectMeta{Name: "win", Namespace: "proj"},
		Spec: v1alpha1.VirtualImageSpec{DataSource: v1alpha1.DataSource{Type: "HTTP", HTTP: &v1alpha1.DataSourceHTTP{
			URL: "https://h/x.iso", Checksum: &v1alpha1.Checksum{MD5: strings.Repeat("AB", 16)}}}}}
	s.Default(obj)
	if obj.Spec.Storage != v1alpha1.ImageStorageContainerRegistry {
		t.Errorf("storage default = %q", obj.Spec.Storage)
	}
	if obj.Spec.DataSource.HTTP.Checksum.MD5 != strings.Repeat("ab", 16) {
		t.Errorf("checksum not lower-cased: %q", obj.Spec.DataSource.HTTP.Checksum.MD5)
	}
	tkCheck(t, s.Validate(obj))

	ref := func(kind, name, ns string) *v1alpha1.VirtualImage {
		return &v1alpha1.VirtualImage{ObjectMeta: v1alpha1.ObjectMeta{Name: "img", Namespace: "proj"},
			Spec: v1alpha1.VirtualImageSpec{Storage: "PersistentVolumeClaim", DataSource: v1alpha1.DataSource{Type: "ObjectRef",
				ObjectRef: &v1alpha1.DataSourceObjectRef{Kind: v1alpha1.DataSourceObjectKind(kind), Name: name, Namespace: ns}}}}
	}
	tkRunCases(t, s, []tkCase[*v1alpha1.VirtualImage]{
		{"same project, namespace omitted", ref("VirtualDisk", "d", ""), nil},
		{"same project, namespace given", ref("VirtualDiskSnapshot", "s", "proj"), nil},
		{"cluster image", ref("ClusterVirtualImage", "c", ""), nil},
		{"other project", ref("VirtualDisk", "d", "other"), []tkCause{tkForbidden("spec.dataSource.objectRef.namespace")}},
		{"self", ref("VirtualImage", "img", ""), []tkCause{tkInvalid("spec.dataSource.objectRef.name")}},
		{"bad storage", func() *v1alpha1.VirtualImage { o := ref("VirtualDisk", "d", ""); o.Spec.Storage = "S3"; return o }(),
			[]tkCause{tkNotSupported("spec.storage")}},
		{"pull secret of another project", &v1alpha1.VirtualImage{ObjectMeta: v1alpha1.ObjectMeta{Name: "img", Namespace: "proj"},
			Spec: v1alpha1.VirtualImageSpec{DataSource: v1alpha1.DataSource{Type: "ContainerImage", ContainerImage: &v1alpha1.DataSourceContainerImage{
				Image: "docker.io/library/alpine@sha256:" + strings.Repeat("0", 64), ImagePullSecret: &v1alpha1.ImagePullSecretRef{Name: "r", Namespace: "x"}}}}},
			[]tkCause{tkForbidden("spec.dataSource.containerImage.imagePullSecret.namespace")}},
		{"pull secret without namespace is fine in a project", &v1alpha1.VirtualImage{ObjectMeta: v1alpha1.ObjectMeta{Name: "img", Namespace: "proj"},
			Spec: v1alpha1.VirtualImageSpec{DataSource: v1alpha1.DataSource{Type: "ContainerImage", ContainerImage: &v1alpha1.DataSourceContainerImage{
				Image: "alpine", ImagePullSecret: &v1alpha1.ImagePullSecretRef{Name: "r"}}}}}, nil},
	})
}

func TestImageDataSourceImmutable(t *testing.T) {
	vi := tkStrategy(t, "VirtualImage")
	old := &v1alpha1.VirtualImage{Spec: v1alpha1.VirtualImageSpec{Storage: "ContainerRegistry",
		DataSource: v1alpha1.DataSource{Type: "HTTP", HTTP: &v1alpha1.DataSourceHTTP{URL: "https://h/a"}}}}
	same := *old
	same.Spec.DataSource.HTTP = &v1alpha1.DataSourceHTTP{URL: "https://h/a"}
	tkCheck(t, vi.ValidateUpdate(&same, old))
	changed := *old
	changed.Spec.Storage = "PersistentVolumeClaim"
	changed.Spec.DataSource.HTTP = &v1alpha1.DataSourceHTTP{URL: "https://h/b"}
	tkCheck(t, vi.ValidateUpdate(&changed, old), tkForbidden("spec.storage"), tkForbidden("spec.dataSource"))

	cvi := tkStrategy(t, "ClusterVirtualImage")
	o := &v1alpha1.ClusterVirtualImage{Spec: v1alpha1.ClusterVirtualImageSpec{DataSource: v1alpha1.DataSource{Type: "Upload"}}}
	n := &v1alpha1.ClusterVirtualImage{Spec: v1alpha1.ClusterVirtualImageSpec{DataSource: v1alpha1.DataSource{Type: "HTTP",
		HTTP: &v1alpha1.DataSourceHTTP{URL: "https://h/a"}}}}
	tkCheck(t, cvi.ValidateUpdate(n, o), tkForbidden("spec.dataSource"))
	tkCheck(t, cvi.ValidateUpdate(o, o))
}

func TestCheckOCIReference(t *testing.T) {
	good := []string{
		"alpine", "library/alpine", "docker.io/library/alpine:3.20", "localhost/img", "localhost:5000/a/b:v1.0-rc_1",
		"registry.example.com/images/debian@sha256:" + strings.Repeat("a", 64),
		"registry.example.com/images/debian:12@sha256:" + strings.Repeat("a", 64),
		"[fd00::1]:5000/a", "10.0.0.1:5000/x/y__z", "a.b/c-d/e.f",
	}
	bad := []string{
		"", "UPPER", "docker://alpine", "a/b:", "a/b:-tag", "a//b", "a/b@sha256:abc", "a/b@sha256:" + strings.Repeat("A", 64),
		"a/b@md5", "bad_host.example.com:port/x", ":tag", "a/b:" + strings.Repeat("t", 129), "a/-b", strings.Repeat("a", 256),
	}
	for _, r := range good {
		if msg := checkOCIReference(r); msg != "" {
			t.Errorf("%q rejected: %s", r, msg)
		}
	}
	for _, r := range bad {
		if msg := checkOCIReference(r); msg == "" {
			t.Errorf("%q accepted", r)
		}
	}
}

func TestImageDefaultIdempotentOnJSON(t *testing.T) {
	doc := `{"metadata":{"name":"x","namespace":"p"},"spec":{"dataSource":{"type":"Upload","upload":{"checksum":{"sha1":"` + strings.Repeat("F", 40) + `"}}}}}`
	tkFuzz(t, "VirtualImage", []byte(doc))
	tkFuzz(t, "ClusterVirtualImage", []byte(doc))
}

var tkImageSeeds = []string{
	`{"spec":{"dataSource":{"type":"HTTP","http":{"url":"https://h/x.qcow2","checksum":{"md5":"AB"}}}}}`,
	`{"metadata":{"name":"i","namespace":"p"},"spec":{"storage":"PersistentVolumeClaim","dataSource":{"type":"ObjectRef","objectRef":{"kind":"VirtualDisk","name":"d","namespace":"p"}}}}`,
	`{"spec":{"dataSource":{"type":"ContainerImage","containerImage":{"image":"a/b:c","caBundle":"AAAA","imagePullSecret":{"name":"s"}},"upload":{}}}}`,
	`{"spec":{"dataSource":{"type":"Upload"}},"status":{"phase":"Ready","size":{"stored":"1Gi","storedBytes":1073741824}}}`,
}

func FuzzValidateVirtualImage(f *testing.F) {
	tkFuzzSeeds(f, "VirtualImage", tkImageSeeds...)
}

func FuzzValidateClusterVirtualImage(f *testing.F) {
	tkFuzzSeeds(f, "ClusterVirtualImage", tkImageSeeds...)
}

func FuzzCheckOCIReference(f *testing.F) {
	for _, s := range []string{"alpine", "localhost:5000/a/b:v1", "r.io/x@sha256:" + strings.Repeat("a", 64), "[::1]:1/a"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, ref string) {
		if checkOCIReference(ref) != "" {
			return
		}
		// An accepted reference has no whitespace or scheme and a lower-case repository path.
		if strings.ContainsAny(ref, " \t\n") || strings.Contains(ref, "://") {
			t.Fatalf("accepted %q", ref)
		}
	})
}
