package apiserver

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"strings"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// SubData is the subresource of a Ready ClusterVirtualImage or VirtualImage that serves its
// stored file (GET and HEAD, with HTTP ranges): node agents on other hosts fetch images into
// their cache through it. The ETag is the file's sha256 (status.sha256), so a resumed
// download with If-Range never mixes two versions of a file.
const SubData = "data"

func isImageKind(kind string) bool {
	return kind == "ClusterVirtualImage" || kind == "VirtualImage"
}

func (s *Server) serveImageData(w http.ResponseWriter, r *http.Request, t target) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		s.methodNotAllowed(w, r, "GET, HEAD")
		return
	}
	kv, err := s.store.Get(r.Context(), key(t.st.Info, t.namespace, t.name))
	if err != nil {
		s.writeError(w, r, s.notFound(err, t))
		return
	}
	var img struct {
		Metadata v1alpha1.ObjectMeta  `json:"metadata"`
		Status   v1alpha1.ImageStatus `json:"status"`
	}
	if err := json.Unmarshal(kv.Value, &img); err != nil {
		s.writeError(w, r, err)
		return
	}
	if img.Status.Phase != v1alpha1.ImagePhaseReady {
		s.writeError(w, r, errs.New(errs.ErrConflict, "%s %q is %s, not Ready: it has no data to download yet",
			t.st.Info.Kind, t.name, orUnknown(string(img.Status.Phase))))
		return
	}
	if err := storage.CheckUID(img.Metadata.UID); err != nil {
		s.writeError(w, r, err)
		return
	}
	if s.imageDir == "" {
		if s.proxyImageData(w, r, t) {
			return
		}
		s.writeError(w, r, errs.New(errs.ErrUnavailable, "this API server does not hold the image store"))
		return
	}
	f, err := os.Open(storage.ImagePath(s.imageDir, img.Metadata.UID))
	if errors.Is(err, os.ErrNotExist) {
		if s.proxyImageData(w, r, t) {
			return
		}
		s.writeError(w, r, errs.New(errs.ErrNotFound, "%s %q is Ready but its file is missing from the image store", t.st.Info.Kind, t.name))
		return
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if storage.IsSHA256Hex(img.Status.SHA256) {
		w.Header().Set("ETag", `"`+img.Status.SHA256+`"`)
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	http.ServeContent(w, r, "", st.ModTime(), f)
}

// headerImagePeer marks a data request one API server sent another on behalf of a client: the
// answering server serves its own file or fails, and never asks further.
const headerImagePeer = "X-Rakhsh-Image-Peer"

// proxyImageData serves an image's data from another control-plane member when this server
// lacks the file (the image was imported by the controllers of another serve process, into
// its data dir). It asks each other member (its API address, with the admin token the members
// share and trusting PeerCAFile) in turn and relays the first answer that is not 404 or an
// error; it reports whether it answered.
func (s *Server) proxyImageData(w http.ResponseWriter, r *http.Request, t target) bool {
	if s.peerCA == "" || s.controlPlane == nil || r.Header.Get(headerImagePeer) != "" {
		return false
	}
	st, err := s.controlPlane(r.Context())
	if err != nil {
		s.log.Warn("image data: cannot list the control-plane members to fetch the file from", "image", t.name, "err", err)
		return false
	}
	hdr := http.Header{headerImagePeer: {s.nodeName}}
	for _, h := range []string{"Range", "If-Range"} {
		if v := r.Header.Get(h); v != "" {
			hdr.Set(h, v)
		}
	}
	for _, m := range st.Members {
		if m.Name == s.nodeName || !strings.HasPrefix(m.APIAddress, "https://") {
			continue
		}
		c, err := client.New(client.Config{Server: m.APIAddress, Token: s.token, CAFile: s.peerCA})
		if err != nil {
			s.log.Warn("image data: bad member address", "member", m.Name, "address", m.APIAddress, "err", err)
			continue
		}
		resp, err := c.WithUserAgent("rakhsh/apiserver-image-peer").Download(r.Context(), r.URL.Path, hdr)
		if err != nil {
			s.log.Debug("image data: member does not serve the file", "image", t.name, "member", m.Name, "err", err)
			continue
		}
		defer resp.Body.Close()
		for _, h := range []string{"Content-Type", "Content-Length", "Content-Range", "Accept-Ranges", "ETag", "Last-Modified", "X-Content-Type-Options"} {
			if v := resp.Header.Get(h); v != "" {
				w.Header().Set(h, v)
			}
		}
		s.log.Info("image data: relaying the file from another control-plane member", "image", t.name, "member", m.Name, "status", resp.StatusCode)
		w.WriteHeader(resp.StatusCode)
		if r.Method != http.MethodHead {
			_, _ = io.Copy(w, resp.Body)
		}
		return true
	}
	return false
}

func orUnknown(s string) string {
	if s == "" {
		return "not provisioned yet"
	}
	return s
}
