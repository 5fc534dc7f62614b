package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// ensureToken reads the admin token, making a random one (0600) on first start.
func ensureToken(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err == nil {
		tok := strings.TrimSpace(string(data))
		if len(tok) < 16 {
			return "", fmt.Errorf("admin token in %s is shorter than 16 characters: remove the file to make a new one", path)
		}
		return tok, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("reading admin token: %w", err)
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	tok := hex.EncodeToString(b)
	if err := writeFileAtomic(path, []byte(tok+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("writing admin token: %w", err)
	}
	return tok, nil
}

// writeFileAtomic writes a file through a temporary file and a rename, so a crash never
// leaves it half-written.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// listenTLS opens the TCP listener with the configured certificate, or a self-signed one
// kept in the data dir (see selfSigned) that clients trust with --ca-file DATA-DIR/ca.crt.
func listenTLS(cfg Config) (net.Listener, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("loading TLS certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	} else {
		ss := &selfSigned{dir: cfg.DataDir, listen: cfg.Listen, now: time.Now}
		if _, err := ss.certificate(); err != nil {
			return nil, err
		}
		tc.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return ss.certificate() }
	}
	l, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", cfg.Listen, err)
	}
	// Connections are counted per client under the TLS layer (see httpLimits).
	l = limitConns(l, defaultHTTPLimits.ConnsPerClient)
	return tls.NewListener(l, tc), nil
}

// Lifetimes of the self-signed certificates.
const (
	caLifetime   = 10 * 365 * 24 * time.Hour
	leafLifetime = 90 * 24 * time.Hour
)

// selfSigned keeps the certificates of a TCP listener without --tls-cert in the data dir:
// a CA (ca.crt, ca.key: ten years, signs only) and a serving certificate it signs (tls.key,
// and tls.crt holding the serving certificate followed by the CA, so a client that trusts
// tls.crt trusts the CA too). The serving certificate lives 90 days and is renewed when less
// than a third of its life remains: at start, and at the first TLS handshake after that, so
// a long-running serve renews it without a restart. Clients trust ca.crt, which does not
// change. A data dir from before the CA existed kept one self-signed CA certificate as
// tls.crt: it becomes the CA, so clients that trust it keep working.
type selfSigned struct {
	dir    string
	listen string
	now    func() time.Time

	mu      sync.Mutex
	cert    *tls.Certificate
	renewAt time.Time
}

func (s *selfSigned) path(name string) string { return filepath.Join(s.dir, name) }

// certificate returns the current serving certificate, renewing it first when it is due.
func (s *selfSigned) certificate() (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if s.cert != nil && now.Before(s.renewAt) {
		return s.cert, nil
	}
	if s.cert == nil {
		if cert, renewAt, err := s.load(); err == nil && now.Before(renewAt) {
			s.cert, s.renewAt = cert, renewAt
			return cert, nil
		}
	}
	caCert, caKey, err := s.ensureCA()
	if err == nil && !now.Before(caCert.NotAfter) {
		err = fmt.Errorf("the self-signed CA in %s expired on %s: remove ca.crt, ca.key, tls.crt and tls.key to make new ones, then give clients the new ca.crt",
			s.dir, caCert.NotAfter.UTC().Format(time.DateOnly))
	}
	if err != nil {
		if s.cert != nil {
			return s.cert, nil
		}
		return nil, err
	}
	cert, renewAt, err := s.issue(caCert, caKey, now)
	if err != nil {
		if s.cert != nil {
			return s.cert, nil // keep serving the current one; the next handshake tries again
		}
		return nil, err
	}
	s.cert, s.renewAt = cert, renewAt
	return cert, nil
}

// load reads tls.crt and tls.key and says when the certificate is due for renewal.
func (s *selfSigned) load() (*tls.Certificate, time.Time, error) {
	cert, err := tls.LoadX509KeyPair(s.path("tls.crt"), s.path("tls.key"))
	if err != nil {
		return nil, time.Time{}, err
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, time.Time{}, err
	}
	if leaf.IsCA {
		return nil, time.Time{}, errors.New("tls.crt is a CA certificate (made before the CA was separate)")
	}
	return &cert, renewalTime(leaf), nil
}

// renewalTime is when two thirds of a certificate's life have passed.
func renewalTime(c *x509.Certificate) time.Time {
	return c.NotBefore.Add(c.NotAfter.Sub(c.NotBefore) * 2 / 3)
}

// ensureCA loads ca.crt and ca.key, adopting an old self-signed tls.crt as the CA, or makes
// a new CA.
func (s *selfSigned) ensureCA() (*x509.Certificate, *ecdsa.PrivateKey, error) {
	if c, k, err := loadCA(s.path("ca.crt"), s.path("ca.key")); err == nil {
		return c, k, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("the self-signed CA in %s: %w (remove ca.crt, ca.key, tls.crt and tls.key to make new ones, then give clients the new ca.crt)", s.dir, err)
	}
	if c, k, err := loadCA(s.path("tls.crt"), s.path("tls.key")); err == nil && c.IsCA && s.now().Before(c.NotAfter) {
		if err := writeFileAtomic(s.path("ca.key"), pemKey(k), 0o600); err != nil {
			return nil, nil, err
		}
		if err := writeFileAtomic(s.path("ca.crt"), pemCert(c.Raw), 0o644); err != nil {
			return nil, nil, err
		}
		return c, k, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	now := s.now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "rakhsh CA", Organization: []string{"Rakhsh self-signed"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	if err := writeFileAtomic(s.path("ca.key"), pemKey(key), 0o600); err != nil {
		return nil, nil, err
	}
	if err := writeFileAtomic(s.path("ca.crt"), pemCert(der), 0o644); err != nil {
		return nil, nil, err
	}
	return c, key, nil
}

func loadCA(certFile, keyFile string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, nil, err
	}
	c, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, nil, err
	}
	k, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok || !c.IsCA || c.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, nil, fmt.Errorf("%s is not a CA certificate with an ECDSA key", certFile)
	}
	return c, k, nil
}

// issue makes a new serving certificate signed by the CA and writes tls.crt and tls.key.
func (s *selfSigned) issue(ca *x509.Certificate, caKey *ecdsa.PrivateKey, now time.Time) (*tls.Certificate, time.Time, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, time.Time{}, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, time.Time{}, err
	}
	host, _ := os.Hostname()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "rakhsh", Organization: []string{"Rakhsh self-signed"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(leafLifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	if tmpl.NotAfter.After(ca.NotAfter) {
		tmpl.NotAfter = ca.NotAfter
	}
	if host != "" {
		tmpl.DNSNames = append(tmpl.DNSNames, host)
	}
	if h, _, err := net.SplitHostPort(s.listen); err == nil {
		if ip := net.ParseIP(h); ip != nil && !ip.IsUnspecified() && !ip.IsLoopback() {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if ip == nil && h != "" && h != "localhost" && h != host {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, time.Time{}, err
	}
	chain := append(pemCert(der), pemCert(ca.Raw)...)
	if err := writeFileAtomic(s.path("tls.key"), pemKey(key), 0o600); err != nil {
		return nil, time.Time{}, err
	}
	if err := writeFileAtomic(s.path("tls.crt"), chain, 0o644); err != nil {
		return nil, time.Time{}, err
	}
	cert, err := tls.X509KeyPair(chain, pemKey(key))
	if err != nil {
		return nil, time.Time{}, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, time.Time{}, err
	}
	// In the CA's last months the serving certificate ends with the CA, and its renewal time
	// comes sooner each time: at most one renewal an hour, not one per handshake.
	renewAt := renewalTime(leaf)
	if soonest := now.Add(time.Hour); renewAt.Before(soonest) {
		renewAt = soonest
	}
	return &cert, renewAt, nil
}

func newSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func pemKey(k *ecdsa.PrivateKey) []byte {
	b, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		panic(err) // a P-256 key always marshals
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: b})
}
