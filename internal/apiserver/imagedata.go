package apiserver

import (
	"encoding/json"
	"errors"
	"net/http"
	"os"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
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
	if s.imageDir == "" {
		s.writeError(w, r, errs.New(errs.ErrUnavailable, "this API server does not hold the image store"))
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
	f, err := os.Open(storage.ImagePath(s.imageDir, img.Metadata.UID))
	if errors.Is(err, os.ErrNotExist) {
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

func orUnknown(s string) string {
	if s == "" {
		return "not provisioned yet"
	}
	return s
}
