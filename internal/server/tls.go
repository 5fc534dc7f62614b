package server

import (
	"crypto"
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
	"slices"
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

// readAdminTokenFile reads the admin token from a file the operator made (--admin-token-file),
// the same on every control-plane host. Unlike DATA-DIR/admin.token it is never made here: two
// hosts that each made their own would not accept each other's clients.
func readAdminTokenFile(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--admin-token-file: %w (make it once, e.g. with openssl rand -hex 32, and copy it to every control-plane host)", err)
	}
	line, _, _ := strings.Cut(string(data), "\n")
	tok := strings.TrimSpace(line)
	if len(tok) < 16 {
		return "", fmt.Errorf("--admin-token-file %s: the token on its first line is shorter than 16 characters", path)
	}
	if strings.ContainsAny(tok, " \t\r") {
		return "", fmt.Errorf("--admin-token-file %s: its first line holds space: it should hold only the token", path)
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
		ss := &selfSigned{dir: cfg.DataDir, listen: cfg.Listen, sans: cfg.TLSSANs, caCert: cfg.CACert, caKey: cfg.CAKey, now: time.Now}
		if _, err := ss.certificate(); err != nil {
			return nil, err
		}
		tc.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return ss.certificate() }
	}
	if err := metricsClientCA(cfg, tc); err != nil { // metrics.go
		return nil, err
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
//
// With caCert and caKey (--ca-cert, --ca-key: a cluster CA the operator copied to every
// control-plane host) that CA signs the serving certificate instead and no CA is made; a
// tls.crt signed by another CA, or not naming every address of names(), is issued again.
type selfSigned struct {
	dir    string
	listen string
	// sans are more DNS names or IP addresses for the serving certificate (--tls-san).
	sans          []string
	caCert, caKey string
	now           func() time.Time

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
		if cert, renewAt, err := s.load(); err == nil && now.Before(renewAt) && s.fits(cert) {
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

// fits says cert is signed by the configured CA and names every address of names().
func (s *selfSigned) fits(cert *tls.Certificate) bool {
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return false
	}
	if s.caCert != "" {
		ca, _, err := loadCA(s.caCert, s.caKey)
		if err != nil || leaf.CheckSignatureFrom(ca) != nil {
			return false
		}
	}
	dns, ips := s.names()
	for _, d := range dns {
		if !slices.Contains(leaf.DNSNames, d) {
			return false
		}
	}
	for _, ip := range ips {
		if !slices.ContainsFunc(leaf.IPAddresses, ip.Equal) {
			return false
		}
	}
	return true
}

// names are the DNS names and IP addresses the serving certificate names: localhost, the
// loopback addresses, the hostname, the host of --listen when it names one, and --tls-san.
func (s *selfSigned) names() ([]string, []net.IP) {
	dns := []string{"localhost"}
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	add := func(h string) {
		if h == "" {
			return
		}
		if ip := net.ParseIP(h); ip != nil {
			if !ip.IsUnspecified() && !slices.ContainsFunc(ips, ip.Equal) {
				ips = append(ips, ip)
			}
		} else if !slices.Contains(dns, h) {
			dns = append(dns, h)
		}
	}
	host, _ := os.Hostname()
	add(host)
	if h, _, err := net.SplitHostPort(s.listen); err == nil {
		add(h)
	}
	for _, san := range s.sans {
		add(san)
	}
	return dns, ips
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
func (s *selfSigned) ensureCA() (*x509.Certificate, crypto.Signer, error) {
	if s.caCert != "" {
		c, k, err := loadCA(s.caCert, s.caKey)
		if err != nil {
			return nil, nil, fmt.Errorf("the cluster CA (--ca-cert %s, --ca-key %s): %w", s.caCert, s.caKey, err)
		}
		return c, k, nil
	}
	if c, k, err := loadCA(s.path("ca.crt"), s.path("ca.key")); err == nil {
		return c, k, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("the self-signed CA in %s: %w (remove ca.crt, ca.key, tls.crt and tls.key to make new ones, then give clients the new ca.crt)", s.dir, err)
	}
	if c, k, err := loadCA(s.path("tls.crt"), s.path("tls.key")); err == nil && c.IsCA && s.now().Before(c.NotAfter) {
		keyPEM, err := os.ReadFile(s.path("tls.key"))
		if err != nil {
			return nil, nil, err
		}
		if err := writeFileAtomic(s.path("ca.key"), keyPEM, 0o600); err != nil {
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

// loadCA loads a CA certificate and its key (ECDSA, RSA or Ed25519).
func loadCA(certFile, keyFile string) (*x509.Certificate, crypto.Signer, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, nil, err
	}
	c, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, nil, err
	}
	k, ok := pair.PrivateKey.(crypto.Signer)
	if !ok || !c.IsCA || c.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, nil, fmt.Errorf("%s is not a CA certificate (CA:TRUE, key usage keyCertSign) with a signing key", certFile)
	}
	return c, k, nil
}

// issue makes a new serving certificate signed by the CA and writes tls.crt and tls.key.
func (s *selfSigned) issue(ca *x509.Certificate, caKey crypto.Signer, now time.Time) (*tls.Certificate, time.Time, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, time.Time{}, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, time.Time{}, err
	}
	dns, ips := s.names()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "rakhsh", Organization: []string{"Rakhsh self-signed"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(leafLifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     dns,
		IPAddresses:  ips,
	}
	if tmpl.NotAfter.After(ca.NotAfter) {
		tmpl.NotAfter = ca.NotAfter
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

// readCertPool reads the PEM certificates in path, given by the flag named flag, into a pool.
func readCertPool(flag, path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flag, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s %s: no PEM certificate in it", flag, path)
	}
	return pool, nil
}
