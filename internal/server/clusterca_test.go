package server

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeClusterCA makes an RSA CA, as an operator's openssl would, and writes ca.crt and ca.key
// in dir.
func writeClusterCA(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: newSerialT(t), Subject: pkix.Name{CommonName: "cluster CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	if err := os.WriteFile(certFile, pemCert(der), 0o644); err != nil {
		t.Fatal(err)
	}
	kp := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	if err := os.WriteFile(keyFile, kp, 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func newSerialT(t *testing.T) *big.Int {
	t.Helper()
	n, err := newSerial()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestClusterCA: two control-plane hosts given the same cluster CA issue serving certificates
// that a client trusting only that CA verifies at each host's address (the --listen host, or
// a --tls-san); neither makes a CA of its own; a data dir whose tls.crt came from its own
// self-signed CA gets a certificate of the cluster CA instead; a CA file that is no CA is
// refused naming the flags.
func TestClusterCA(t *testing.T) {
	caCert, caKey := writeClusterCA(t, t.TempDir())
	h1, h2 := t.TempDir(), t.TempDir()
	// h2 first ran alone with its self-signed CA.
	alone := &selfSigned{dir: h2, listen: "10.0.0.2:6443", now: time.Now}
	if _, err := alone.certificate(); err != nil {
		t.Fatal(err)
	}
	for _, h := range []struct {
		dir, listen string
		sans        []string
		host        string
	}{
		{h1, "10.0.0.1:6443", nil, "10.0.0.1"},
		{h2, ":6443", []string{"10.0.0.2", "api2.example"}, "api2.example"},
	} {
		ss := &selfSigned{dir: h.dir, listen: h.listen, sans: h.sans, caCert: caCert, caKey: caKey, now: time.Now}
		cert, err := ss.certificate()
		if err != nil {
			t.Fatalf("%s: %v", h.listen, err)
		}
		for _, name := range append([]string{h.host, "localhost"}, h.sans...) {
			if err := verify(t, caCert, cert, name, time.Now()); err != nil {
				t.Errorf("%s: the serving certificate does not verify against the cluster CA for %s: %v", h.listen, name, err)
			}
		}
		if h.dir == h1 {
			if _, err := os.Stat(filepath.Join(h1, "ca.key")); err == nil {
				t.Errorf("a CA key was made in the data dir although a cluster CA is given")
			}
		}
		// A restart keeps the certificate that fits.
		again := &selfSigned{dir: h.dir, listen: h.listen, sans: h.sans, caCert: caCert, caKey: caKey, now: time.Now}
		cert2, err := again.certificate()
		if err != nil {
			t.Fatal(err)
		}
		if string(cert2.Certificate[0]) != string(cert.Certificate[0]) {
			t.Errorf("%s: a restart issued a new certificate although the kept one fits", h.listen)
		}
		// A new --tls-san makes a new one naming it.
		more := &selfSigned{dir: h.dir, listen: h.listen, sans: append(h.sans, "10.9.9.9"), caCert: caCert, caKey: caKey, now: time.Now}
		cert3, err := more.certificate()
		if err != nil {
			t.Fatal(err)
		}
		if err := verify(t, caCert, cert3, "10.9.9.9", time.Now()); err != nil {
			t.Errorf("%s: after adding a --tls-san: %v", h.listen, err)
		}
	}
	// A leaf certificate is no CA.
	bad := &selfSigned{dir: t.TempDir(), listen: "10.0.0.3:6443", caCert: filepath.Join(h1, "tls.crt"), caKey: filepath.Join(h1, "tls.key"), now: time.Now}
	if _, err := bad.certificate(); err == nil || !strings.Contains(err.Error(), "--ca-cert") || !strings.Contains(err.Error(), "not a CA certificate") {
		t.Errorf("a leaf certificate as --ca-cert: %v, want an error naming --ca-cert and saying it is no CA", err)
	}
}

// TestAdminTokenFile: the shared admin token is read, never made; a missing, short or spaced
// token is refused with an error naming the file.
func TestAdminTokenFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "admin.token")
	if _, err := readAdminTokenFile(p); err == nil || !strings.Contains(err.Error(), "copy it to every control-plane host") {
		t.Errorf("missing file: %v", err)
	}
	if _, err := os.Stat(p); err == nil {
		t.Errorf("the token file was made")
	}
	for content, want := range map[string]string{"short\n": "shorter than 16", "0123456789abcdef 0123\n": "holds space"} {
		_ = os.WriteFile(p, []byte(content), 0o600)
		if _, err := readAdminTokenFile(p); err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), p) {
			t.Errorf("%q: %v, want %q naming the file", content, err, want)
		}
	}
	_ = os.WriteFile(p, []byte("  0123456789abcdef0123\nrest\n"), 0o600)
	if tok, err := readAdminTokenFile(p); err != nil || tok != "0123456789abcdef0123" {
		t.Errorf("good file: %q %v", tok, err)
	}
}

// TestClusterCAFlags: the cluster CA flags go together, need --listen, exclude --tls-cert, and
// --tls-san takes names and addresses only.
func TestClusterCAFlags(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Listen: ":8443", CACert: "ca.crt"}, "--ca-cert and --ca-key must be given together"},
		{Config{CACert: "ca.crt", CAKey: "ca.key"}, "--ca-cert needs --listen"},
		{Config{Listen: ":8443", CACert: "ca.crt", CAKey: "ca.key", TLSCert: "t.crt", TLSKey: "t.key"}, "--ca-cert and --tls-cert are exclusive"},
		{Config{TLSSANs: []string{"a.example"}}, "--tls-san names addresses in the issued serving certificate"},
		{Config{Listen: ":8443", TLSSANs: []string{"http://a.example"}}, `--tls-san "http://a.example": want a DNS name or an IP address`},
	} {
		c := tc.cfg
		c.DataDir, c.Accelerator = t.TempDir(), "auto"
		if err := c.validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.cfg, err, tc.want)
		}
	}
	ok := Config{DataDir: t.TempDir(), VMRuntime: VMRuntime{Accelerator: "auto"}, Listen: ":8443", CACert: "ca.crt", CAKey: "ca.key", TLSSANs: []string{"10.0.0.1", "fd00::1", "api.example"}}
	if err := ok.validate(); err != nil {
		t.Errorf("a valid cluster CA configuration: %v", err)
	}
}
