package apiserver

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/images"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// SubData is the subresource of a Ready ClusterVirtualImage or VirtualImage that serves its
// stored file (GET and HEAD, with HTTP ranges): node agents on other hosts fetch images into
// their cache through it. The ETag is the file's sha256 (status.sha256), so a resumed
// download with If-Range never mixes two versions of a file.
const SubData = "data"

// readDataObject does what the data subresources of images and disks begin with: it allows
// only GET and HEAD and decodes the stored object of t into v. When it returns false, it has
// written the error.
func (s *Server) readDataObject(w http.ResponseWriter, r *http.Request, t target, v any) bool {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		s.methodNotAllowed(w, r, "GET, HEAD")
		return false
	}
	kv, err := s.store.Get(r.Context(), key(t.st.Info, t.namespace, t.name))
	if err != nil {
		s.writeError(w, r, s.notFound(err, t))
		return false
	}
	if err := json.Unmarshal(kv.Value, v); err != nil {
		s.writeError(w, r, err)
		return false
	}
	return true
}

func (s *Server) serveImageData(w http.ResponseWriter, r *http.Request, t target) {
	var img struct {
		Metadata v1alpha1.ObjectMeta  `json:"metadata"`
		Status   v1alpha1.ImageStatus `json:"status"`
	}
	if !s.readDataObject(w, r, t, &img) {
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
	holders := images.StoredOn(img.Metadata.Annotations)
	if s.imageDir == "" {
		if s.proxyImageData(w, r, t, holders) {
			return
		}
		s.writeError(w, r, errs.New(errs.ErrUnavailable, "this API server does not hold the image store"))
		return
	}
	f, err := os.Open(storage.ImagePath(s.imageDir, img.Metadata.UID))
	if errors.Is(err, os.ErrNotExist) {
		if s.proxyImageData(w, r, t, holders) {
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
// share and trusting PeerCAFile) in turn, those the image's stored-on annotation names
// (holders) first, and relays the first answer that is not 404 or an error; it reports
// whether it answered. When no member served the file it answers itself if a holder was not
// reached (503, naming the serves that hold the file and why each was not reached) and
// leaves a 404 to the caller otherwise.
func (s *Server) proxyImageData(w http.ResponseWriter, r *http.Request, t target, holders []string) bool {
	if s.peerCA == "" || s.controlPlane == nil || r.Header.Get(headerImagePeer) != "" {
		return false
	}
	st, err := s.controlPlane(r.Context())
	if err != nil {
		s.log.Warn("image data: cannot list the control-plane members to fetch the file from", "image", t.name, "err", err)
		s.writeError(w, r, errs.New(errs.ErrUnavailable, "%s %q is Ready but its file is not on this serve (%s), and the control-plane members to fetch it from cannot be listed: %v",
			t.st.Info.Kind, t.name, s.nodeName, err))
		return true
	}
	// Holders first, in the annotation's order; then every other member.
	members := slices.Clone(st.Members)
	slices.SortStableFunc(members, func(a, b v1alpha1.ControlPlaneMember) int {
		ia, ib := slices.Index(holders, a.Name), slices.Index(holders, b.Name)
		if ia < 0 {
			ia = len(holders)
		}
		if ib < 0 {
			ib = len(holders)
		}
		return ia - ib
	})
	unreached := map[string]string{} // holder -> why it did not serve the file
	for _, h := range holders {
		if h != s.nodeName {
			unreached[h] = "not a live control-plane member (its serve is down or has not joined)"
		}
	}
	hdr := http.Header{headerImagePeer: {s.nodeName}}
	for _, h := range []string{"Range", "If-Range"} {
		if v := r.Header.Get(h); v != "" {
			hdr.Set(h, v)
		}
	}
	for _, m := range members {
		if m.Name == s.nodeName {
			continue
		}
		if !strings.HasPrefix(m.APIAddress, "https://") {
			if _, ok := unreached[m.Name]; ok {
				unreached[m.Name] = "it has no https API address to be asked at"
			}
			continue
		}
		c, err := client.New(client.Config{Server: m.APIAddress, Token: s.token, CAFile: s.peerCA})
		if err != nil {
			s.log.Warn("image data: bad member address", "member", m.Name, "address", m.APIAddress, "err", err)
			if _, ok := unreached[m.Name]; ok {
				unreached[m.Name] = fmt.Sprintf("bad API address %s: %v", m.APIAddress, err)
			}
			continue
		}
		resp, err := c.WithUserAgent("rakhsh/apiserver-image-peer").Download(r.Context(), r.URL.Path, hdr)
		if err != nil {
			s.log.Debug("image data: member does not serve the file", "image", t.name, "member", m.Name, "err", err)
			if _, ok := unreached[m.Name]; ok {
				unreached[m.Name] = fmt.Sprintf("asked at %s: %v", m.APIAddress, err)
				if client.IsNotFound(err) {
					delete(unreached, m.Name) // reached: it no longer has the file
				}
			}
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
	if len(unreached) == 0 {
		return false
	}
	var names, why []string
	for _, h := range holders {
		if msg, ok := unreached[h]; ok {
			names, why = append(names, h), append(why, h+": "+msg)
		}
	}
	s.writeError(w, r, errs.New(errs.ErrUnavailable, "%s %q is Ready but its file is not on this serve (%s) and no control-plane member served it; it is stored on %s, not reached (%s)",
		t.st.Info.Kind, t.name, s.nodeName, strings.Join(names, ", "), strings.Join(why, "; ")))
	return true
}

func orUnknown(s string) string {
	if s == "" {
		return "not provisioned yet"
	}
	return s
}
