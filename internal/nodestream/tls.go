package nodestream

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// Fingerprint is the lowercase hex SHA-256 of a certificate's DER form, as published in
// status.streamEndpoint.certificateSHA256 of a Node.
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// SelfSignedCertificate makes a fresh key and a certificate for it that names node. The
// agent makes one at every start and publishes its fingerprint; nothing checks its names or
// dates, the fingerprint is what is trusted.
func SelfSignedCertificate(node string) (tls.Certificate, string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return tls.Certificate{}, "", err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "rakhsh node streams " + node},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.AddDate(10, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		// Server and client: the same certificate authenticates the node at both ends of a
		// live migration's stream between two agents.
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, Fingerprint(der), nil
}

// ServerTLSConfig is the TLS configuration of a stream service with cert.
func ServerTLSConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
}

// PinnedTLSConfig is a client TLS configuration that accepts only the certificate whose
// fingerprint is fp (see Fingerprint), whatever names it has or who signed it.
func PinnedTLSConfig(fp string) (*tls.Config, error) {
	verify, err := pinCheck(fp, "the stream service")
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// The chain and names are not checked: VerifyConnection pins the one certificate.
		InsecureSkipVerify: true, //nolint:gosec // pinned below
		VerifyConnection:   verify,
	}, nil
}

// PinnedClientServerTLSConfig is a server TLS configuration with cert that requires every
// client to present a certificate, and accepts only the one whose fingerprint is clientFP:
// mutual TLS between two node agents, each pinning the certificate the other's Node
// publishes.
func PinnedClientServerTLSConfig(cert tls.Certificate, clientFP string) (*tls.Config, error) {
	verify, err := pinCheck(clientFP, "the client")
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS13,
		// Any certificate is asked for and none is checked against a CA: VerifyConnection
		// pins the one certificate.
		ClientAuth:       tls.RequireAnyClientCert,
		VerifyConnection: verify,
	}, nil
}

// pinCheck returns a VerifyConnection function that accepts only the peer certificate
// whose fingerprint is fp; who names the peer in its errors.
func pinCheck(fp, who string) (func(tls.ConnectionState) error, error) {
	want, err := hex.DecodeString(fp)
	if err != nil || len(want) != sha256.Size {
		return nil, fmt.Errorf("certificate fingerprint %q is not a hex SHA-256", fp)
	}
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return fmt.Errorf("%s sent no certificate", who)
		}
		got := sha256.Sum256(cs.PeerCertificates[0].Raw)
		if subtle.ConstantTimeCompare(got[:], want) != 1 {
			return fmt.Errorf("%w: its certificate has SHA-256 %s, the node published %s", ErrFingerprint, hex.EncodeToString(got[:]), fp)
		}
		return nil
	}, nil
}

// ErrFingerprint is the error class of a stream service whose certificate is not the one its
// node published.
var ErrFingerprint = errors.New("certificate mismatch")
