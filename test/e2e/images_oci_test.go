package e2e

import (
	"archive/tar"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/images/imagetest"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// testRegistry is Debian's docker-registry (the CNCF distribution registry) on 127.0.0.1 with
// TLS (a CA made by the test) and htpasswd authentication.
type testRegistry struct {
	Host     string // 127.0.0.1:PORT
	CAPEM    []byte
	User     string
	Password string
}

func startRegistry(t *testing.T) *testRegistry {
	t.Helper()
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		t.Fatal("docker-registry is needed for this test: apt-get install docker-registry")
	}
	if _, err := exec.LookPath("python3"); err != nil {
		t.Fatal("python3 is needed to write the registry's htpasswd: apt-get install python3")
	}
	dir := t.TempDir()
	// A self-signed certificate for 127.0.0.1 that is its own CA.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "rakhsh test registry"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	r := &testRegistry{CAPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), User: "puller", Password: "s3cret-pull"}
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cert := write("tls.crt", r.CAPEM)
	keyPath := write("tls.key", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}))
	hash, err := exec.Command("python3", "-c", "import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))", r.Password).Output()
	if err != nil || !strings.HasPrefix(string(hash), "$2") {
		t.Fatalf("making a bcrypt hash for htpasswd: %v %q", err, hash)
	}
	htpasswd := write("htpasswd", []byte(r.User+":"+strings.TrimSpace(string(hash))+"\n"))
	r.Host = freeAddr(t)
	cfg := write("config.yml", []byte(`version: 0.1
log: {level: error}
storage:
  filesystem: {rootdirectory: `+filepath.Join(dir, "storage")+`}
http:
  addr: `+r.Host+`
  tls: {certificate: `+cert+`, key: `+keyPath+`}
auth:
  htpasswd: {realm: rakhsh-test, path: `+htpasswd+`}
`))
	logf, err := os.Create(filepath.Join(dir, "registry.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", cfg)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("registry log:\n%s", b)
		}
	})
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(r.CAPEM)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 2 * time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := hc.Get("https://" + r.Host + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusUnauthorized {
				return r
			}
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("the registry did not answer on %s within 30s (%v); log:\n%s", r.Host, err, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (r *testRegistry) transport() http.RoundTripper {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(r.CAPEM)
	return &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
}

// push pushes an image of one layer holding disk/NAME with the content of file (plus an
// unrelated file, as real containerdisks have none but layers often do).
func (r *testRegistry) push(t *testing.T, repoTag, file string) string {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(hd *tar.Header, body []byte) {
		if err := tw.WriteHeader(hd); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(body); err != nil {
			t.Fatal(err)
		}
	}
	add(&tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	add(&tar.Header{Name: "etc/os-release", Typeflag: tar.TypeReg, Mode: 0o644, Size: 5}, []byte("test\n"))
	add(&tar.Header{Name: "disk/", Typeflag: tar.TypeDir, Mode: 0o555}, nil)
	add(&tar.Header{Name: "disk/" + filepath.Base(file), Typeflag: tar.TypeReg, Mode: 0o444, Size: int64(len(data))}, data)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(r.Host + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithAuth(&authn.Basic{Username: r.User, Password: r.Password}),
		remote.WithTransport(r.transport())); err != nil {
		t.Fatalf("pushing %s: %v", ref, err)
	}
	return ref.String()
}

// TestImageFromRegistry imports containerdisks from a real registry (TLS with a private CA,
// htpasswd authentication) through a kubernetes.io/dockerconfigjson imagePullSecret; without
// the secret the registry refuses and the image fails with RegistryAuthFailed.
func TestImageFromRegistry(t *testing.T) {
	imagetest.Need(t, "qemu-img", "prlimit", "xz")
	reg := startRegistry(t)
	src := t.TempDir()
	qcow := imagetest.QCOW2(t, src, "debian.qcow2", "64M")
	raw := imagetest.Raw(t, src, "small.raw", 8<<20)
	ref1 := reg.push(t, "images/debian:12", qcow)
	ref2 := reg.push(t, "images/small:xz", imagetest.Xz(t, raw))

	s := StartServe(t)
	ca := base64.StdEncoding.EncodeToString(reg.CAPEM)
	auth := base64.StdEncoding.EncodeToString([]byte(reg.User + ":" + reg.Password))
	s.MustCLI(`apiVersion: v1
kind: Secret
metadata: {name: pull, namespace: default}
type: kubernetes.io/dockerconfigjson
stringData:
  .dockerconfigjson: '{"auths": {"`+reg.Host+`": {"auth": "`+auth+`"}}}'
---
`+cviDoc("debian-oci", ociSource(ref1, "{name: pull, namespace: default}", ca))+`---
apiVersion: virtualization.rakhsh.io/v1alpha1
kind: VirtualImage
metadata: {name: small-oci, namespace: default}
spec:
  storage: ContainerRegistry
  dataSource:
`+indentLines(ociSource(ref2, "{name: pull}", ca), "    ")+`---
apiVersion: virtualization.rakhsh.io/v1alpha1
kind: VirtualDisk
metadata: {name: oci-disk, namespace: default}
spec:
  dataSource:
`+indentLines(ociSource(ref1, "{name: pull}", ca), "    ")+`---
`+cviDoc("no-secret", ociSource(ref1, "", ca)), "apply", "-f", "-")

	img := waitCVI(t, s, "debian-oci", v1alpha1.ImagePhaseReady, v1alpha1.ImagePhaseFailed)
	if img.Status.Phase != v1alpha1.ImagePhaseReady || img.Status.Format != "qcow2" || img.Status.Size == nil || img.Status.Size.Unpacked != "64Mi" {
		t.Fatalf("image from the registry: %+v", img.Status)
	}
	if img.Status.SHA256 != fileSHA256(t, qcow) {
		t.Fatal("the stored image is not the qcow2 that was pushed")
	}
	vi := waitObj(t, s, "virtualimages", "default", "small-oci", "Ready", func(i *v1alpha1.VirtualImage) bool {
		return i.Status.Phase == v1alpha1.ImagePhaseReady || i.Status.Phase == v1alpha1.ImagePhaseFailed
	})
	if vi.Status.Phase != v1alpha1.ImagePhaseReady || vi.Status.Size == nil || vi.Status.Size.UnpackedBytes != 8<<20 {
		t.Fatalf("xz containerdisk: %+v", vi.Status)
	}
	d := waitDisk(t, s, "oci-disk", v1alpha1.DiskPhaseReady, v1alpha1.DiskPhaseFailed)
	if d.Status.Phase != v1alpha1.DiskPhaseReady || d.Status.Capacity != "64Mi" {
		t.Fatalf("disk from the registry: %+v", d.Status)
	}
	bad := waitCVI(t, s, "no-secret", v1alpha1.ImagePhaseFailed)
	if c := readyCond(bad.Status.Conditions); c == nil || c.Reason != "RegistryAuthFailed" {
		t.Fatalf("pull without credentials: %+v", bad.Status.Conditions)
	}
	assertNoTempFiles(t, filepath.Dir(storage.ImagePath(s.DataDir, img.UID)))
}

// ociSource is a dataSource that pulls image from a registry with the CA bundle ca and the
// imagePullSecret reference secret (none if empty).
func ociSource(image, secret, ca string) string {
	m := "type: ContainerImage\ncontainerImage:\n  image: " + image + "\n"
	if secret != "" {
		m += "  imagePullSecret: " + secret + "\n"
	}
	return m + "  caBundle: " + ca
}
