package apiserver

import (
	"net/http"
	"strings"

	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/images"
)

// Upload URLs (status.imageUploadURLs of images and disks with an Upload data source) are
// served here, next to the API. The random single-use token in the path is the credential:
// an upload needs no bearer token, so `curl -T FILE URL` works as it is.

func isUploadPath(p string) bool { return strings.HasPrefix(p, images.UploadPathPrefix) }

func (s *Server) serveUpload(w http.ResponseWriter, r *http.Request) {
	if s.uploads == nil {
		s.writeError(w, r, errs.New(errs.ErrNotFound, "this server accepts no uploads (no image controller runs in it)"))
		return
	}
	s.uploads.ServeHTTP(w, r)
}
