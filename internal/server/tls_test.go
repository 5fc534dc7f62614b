package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/internal/testutil"
)

// verify checks cert against the CA in caFile as a client of addr's host would.
func verify(t *testing.T, caFile string, cert *tls.Certificate, host string, at time.Time) error {
	t.Helper()
	pool := testutil.CertPool(t, caFile)
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	_, err = leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: host, CurrentTime: at})
	return err
}

// TestSelfSignedCAAndLeaf: the self-signed setup is a CA (ten years, signs only) and a
// serving certificate of 90 days that it signs; clients trusting ca.crt (or tls.crt, which
// carries the CA) verify it; the serving certificate is renewed when a third of its life
// remains, at start and at a handshake, and still verifies against the same ca.crt.
func TestSelfSignedCAAndLeaf(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	clock := now
	ss := &selfSigned{dir: dir, listen: "127.0.0.1:8443", now: func() time.Time { return clock }}
	cert, err := ss.certificate()
	if err != nil {
		t.Fatal(err)
	}
	ca, _, err := loadCA(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	if d := ca.NotAfter.Sub(now); d < 9*365*24*time.Hour {
		t.Errorf("CA lives %v, want ten years", d)
	}
	leaf, _ := x509.ParseCertificate(cert.Certificate[0])
	if leaf.IsCA || leaf.NotAfter.Sub(now) > 91*24*time.Hour || leaf.NotAfter.Sub(now) < 89*24*time.Hour {
		t.Errorf("serving certificate: IsCA %v, lives until %v; want a non-CA of 90 days", leaf.IsCA, leaf.NotAfter)
	}
	for _, f := range []string{"ca.crt", "tls.crt"} {
		if err := verify(t, filepath.Join(dir, f), cert, "localhost", now); err != nil {
			t.Errorf("trusting %s: %v", f, err)
		}
	}
	if fi, err := os.Stat(filepath.Join(dir, "ca.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("ca.key: %v %v, want mode 600", fi, err)
	}
	// Before two thirds of its life: the same certificate, also after a restart.
	clock = now.Add(50 * 24 * time.Hour)
	if c2, _ := ss.certificate(); c2 != cert {
		t.Error("the serving certificate was renewed with more than a third of its life left")
	}
	restarted := &selfSigned{dir: dir, listen: "127.0.0.1:8443", now: func() time.Time { return clock }}
	if c3, err := restarted.certificate(); err != nil || string(c3.Certificate[0]) != string(cert.Certificate[0]) {
		t.Errorf("a restart renewed the serving certificate early: %v", err)
	}
	// Past two thirds: a handshake renews it; the same CA still verifies it.
	clock = now.Add(61 * 24 * time.Hour)
	c4, err := ss.certificate()
	if err != nil {
		t.Fatal(err)
	}
	if string(c4.Certificate[0]) == string(cert.Certificate[0]) {
		t.Fatal("the serving certificate was not renewed with less than a third of its life left")
	}
	if err := verify(t, filepath.Join(dir, "ca.crt"), c4, "localhost", clock.Add(80*24*time.Hour)); err != nil {
		t.Errorf("the renewed certificate against the same ca.crt, 80 days later: %v", err)
	}
	if err := verify(t, filepath.Join(dir, "ca.crt"), cert, "localhost", clock.Add(80*24*time.Hour)); err == nil {
		t.Error("the old certificate still verifies after its 90 days")
	}
	// A restart past two thirds renews at start.
	clock = now.Add(130 * 24 * time.Hour)
	again := &selfSigned{dir: dir, listen: "127.0.0.1:8443", now: func() time.Time { return clock }}
	c5, err := again.certificate()
	if err != nil {
		t.Fatal(err)
	}
	if l5, _ := x509.ParseCertificate(c5.Certificate[0]); !l5.NotAfter.After(clock) {
		t.Errorf("at start after 130 days the serving certificate ends %v", l5.NotAfter)
	}
}

// TestSelfSignedAdoptsOldCA: a data dir whose tls.crt is the old ten-year self-signed CA
// keeps it as ca.crt, so clients that trust the old tls.crt verify the new serving
// certificate.
func TestSelfSignedAdoptsOldCA(t *testing.T) {
	dir := t.TempDir()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "rakhsh"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().AddDate(10, 0, 0),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true, DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(t.TempDir(), "old-tls.crt")
	for path, data := range map[string][]byte{filepath.Join(dir, "tls.crt"): pemCert(der), filepath.Join(dir, "tls.key"): pemKey(key), old: pemCert(der)} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ss := &selfSigned{dir: dir, listen: ":8443", now: time.Now}
	cert, err := ss.certificate()
	if err != nil {
		t.Fatal(err)
	}
	if leaf, _ := x509.ParseCertificate(cert.Certificate[0]); leaf.IsCA {
		t.Fatal("the old CA certificate is still the serving certificate")
	}
	if err := verify(t, old, cert, "localhost", time.Now()); err != nil {
		t.Errorf("a client trusting the old tls.crt: %v", err)
	}
}

// TestSelfSignedCAEnd: in the CA's last days the serving certificate is renewed at most once
// an hour (not at every handshake), and an expired CA is an error that says what to do.
func TestSelfSignedCAEnd(t *testing.T) {
	dir := t.TempDir()
	start := time.Now()
	clock := start
	ss := &selfSigned{dir: dir, listen: "127.0.0.1:8443", now: func() time.Time { return clock }}
	if _, err := ss.certificate(); err != nil {
		t.Fatal(err)
	}
	ca, _, err := loadCA(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	clock = ca.NotAfter.Add(-2 * time.Hour)
	c1, err := ss.certificate()
	if err != nil {
		t.Fatal(err)
	}
	clock = clock.Add(time.Minute)
	if c2, _ := ss.certificate(); c2 != c1 {
		t.Error("a handshake a minute later renewed the serving certificate again")
	}
	clock = ca.NotAfter.Add(time.Hour)
	fresh := &selfSigned{dir: dir, listen: "127.0.0.1:8443", now: func() time.Time { return clock }}
	if _, err := fresh.certificate(); err == nil || !strings.Contains(err.Error(), "expired on") || !strings.Contains(err.Error(), "remove ca.crt") {
		t.Errorf("a start with an expired CA: %v", err)
	}
}
