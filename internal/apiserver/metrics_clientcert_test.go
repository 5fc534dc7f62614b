package apiserver

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// testCA makes a CA and a client certificate it signs.
func testCA(t *testing.T, name string) (*x509.Certificate, tls.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name + " CA"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		KeyUsage: x509.KeyUsageDigitalSignature, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return ca, tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestMetricsClientCertificate: over TLS that verifies client certificates against the
// metrics CA (serve --metrics-client-ca), a client certificate of that CA reads /metrics and
// /sd/prometheus and nothing else; one of another CA reads nothing.
func TestMetricsClientCertificate(t *testing.T) {
	s := metricsTestServer(t, Config{AdminToken: "admin-token-0123456789"})
	ca, client := testCA(t, "prometheus")
	_, stranger := testCA(t, "stranger")
	srv := httptest.NewUnstartedServer(s.RemoteHandler())
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	srv.TLS = &tls.Config{ClientCAs: pool, ClientAuth: tls.VerifyClientCertIfGiven}
	srv.StartTLS()
	defer srv.Close()
	do := func(cert *tls.Certificate, path string) (int, error) {
		tr := srv.Client().Transport.(*http.Transport).Clone()
		tr.TLSClientConfig.Certificates = nil
		if cert != nil {
			tr.TLSClientConfig.Certificates = []tls.Certificate{*cert}
		}
		resp, err := (&http.Client{Transport: tr}).Get(srv.URL + path)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	for _, tc := range []struct {
		cert *tls.Certificate
		path string
		want int
	}{
		{&client, "/metrics", 200},
		{&client, "/sd/prometheus", 200},
		{&client, "/apis/" + v1alpha1.APIVersion + "/nodes", 401},
		{&client, "/apis/" + v1alpha1.APIVersion + "/namespaces/default/secrets", 401},
		{nil, "/metrics", 401},
	} {
		code, err := do(tc.cert, tc.path)
		if err != nil || code != tc.want {
			t.Errorf("GET %s with certificate %v: %d %v, want %d", tc.path, tc.cert != nil, code, err, tc.want)
		}
	}
	// Go's client does not offer a certificate the server's CA list does not name; either
	// way it reads nothing.
	if code, err := do(&stranger, "/metrics"); err == nil && code != 401 {
		t.Errorf("a certificate of another CA: %d, want a refused handshake or 401", code)
	}
}
