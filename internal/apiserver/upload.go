package apiserver

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"

	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/images"
)

// Upload URLs (status.imageUploadURLs of images and disks with an Upload data source) are
// served here, next to the API. The random single-use token in the path is the credential:
// an upload needs no bearer token, so `curl -T FILE URL` works as it is.

func isUploadPath(p string) bool { return strings.HasPrefix(p, images.UploadPathPrefix) }

func (s *Server) serveUpload(w http.ResponseWriter, r *http.Request) {
	tok := strings.TrimPrefix(r.URL.Path, images.UploadPathPrefix)
	if (s.uploads == nil || !s.uploads.Waiting(tok)) && s.forwardUpload(w, r) {
		return
	}
	if s.uploads == nil {
		s.writeError(w, r, errs.New(errs.ErrNotFound, "this server accepts no uploads (no image controller runs in it)"))
		return
	}
	s.uploads.ServeHTTP(w, r)
}

// forwardUpload sends an upload whose token no import of this server waits for to the
// leader's serve, whose image and disk controllers wait for the uploads: an upload URL works
// through any serve, whichever one its host names. The leader is found in the control-plane
// registry and reached at its API address, trusting PeerCAFile; the forwarded request carries
// the peer header and is never forwarded again. It reports whether it answered.
func (s *Server) forwardUpload(w http.ResponseWriter, r *http.Request) bool {
	if s.peerCA == "" || s.controlPlane == nil || r.Header.Get(headerImagePeer) != "" ||
		(r.Method != http.MethodPut && r.Method != http.MethodPost && r.Method != http.MethodHead) {
		return false
	}
	st, err := s.controlPlane(r.Context())
	if err != nil || st.Leader == nil || st.Leader.Name == s.nodeName {
		return false
	}
	var addr string
	for _, m := range st.Members {
		if m.Name == st.Leader.Name && strings.HasPrefix(m.APIAddress, "https://") {
			addr = m.APIAddress
		}
	}
	target, err := url.Parse(addr)
	if addr == "" || err != nil {
		return false
	}
	tr, err := s.peerTransport()
	if err != nil {
		s.log.Warn("upload: cannot forward to the leader", "leader", st.Leader.Name, "err", err)
		return false
	}
	defer tr.CloseIdleConnections()
	s.log.Info("upload: forwarding to the leader's serve, whose controllers wait for uploads", "leader", st.Leader.Name, "address", addr)
	rp := &httputil.ReverseProxy{Transport: tr,
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = target.Host
			pr.Out.Header.Set(headerImagePeer, s.nodeName)
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			http.Error(w, fmt.Sprintf("upload: forwarding to the leader %s (%s) failed: %v; read status.imageUploadURLs again and upload again",
				st.Leader.Name, addr, err), http.StatusBadGateway)
		}}
	rp.ServeHTTP(w, r)
	return true
}

// peerTransport returns a transport to other control-plane members, trusting PeerCAFile.
func (s *Server) peerTransport() (*http.Transport, error) {
	pem, err := os.ReadFile(s.peerCA)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", s.peerCA)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return tr, nil
}
