package nodestream

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// StreamDiskData is the stream of a disk's data: the file of a disk that moves from this
// node's Local storage to another node's, fetched by the agent of that node through the API
// (docs/storage.md, "Moving a disk").
const StreamDiskData = "diskdata"

// DiskPathPrefix is where the handler serves disk data: GET or HEAD
// /v1/disks/{uid}/data, with HTTP ranges.
const DiskPathPrefix = "/v1/disks/"

// DiskDataPath is the path of the data of the disk uid.
func DiskDataPath(uid string) string { return DiskPathPrefix + uid + "/data" }

// DiskRef names a disk whose data is asked for.
type DiskRef struct {
	Namespace, Name, UID string
}

// DiskExport is a file ready to be served as a disk's data.
type DiskExport struct {
	// Path is the file: a qcow2 image without a backing file.
	Path string
	// SHA256 is the file's sha256 (hex), served as its ETag.
	SHA256 string
}

// DiskExportFunc prepares the data of a disk on this node for the node that fetches it.
type DiskExportFunc func(ctx context.Context, ref DiskRef) (DiskExport, error)

// diskExporters maps a data dir to the node agent that exports its disks (the agent registers
// itself when it runs), as guestAgents does for guest-agent requests.
var diskExporters sync.Map

// RegisterDiskExporter makes f prepare the disk data served from dataDir; the returned
// function takes it back.
func RegisterDiskExporter(dataDir string, f DiskExportFunc) func() {
	key, h := filepath.Clean(dataDir), &f
	diskExporters.Store(key, h)
	return func() { diskExporters.CompareAndDelete(key, h) }
}

// ServeDiskData implements Streams: it serves the prepared file with ranges, its sha256 as
// the ETag (so that a resumed fetch with If-Range never mixes two versions).
func (s *Service) ServeDiskData(w http.ResponseWriter, r *http.Request, ref DiskRef) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		methodNotAllowed(w, r.Method, "GET, HEAD")
		return
	}
	if err := storage.CheckUID(ref.UID); err != nil {
		writeError(w, errs.New(errs.ErrBadRequest, "%v", err))
		return
	}
	f, ok := diskExporters.Load(filepath.Clean(s.DataDir))
	if !ok {
		writeError(w, errs.New(errs.ErrUnavailable, "no node agent runs on this node's data dir"))
		return
	}
	exp, err := (*f.(*DiskExportFunc))(r.Context(), ref)
	if err != nil {
		writeError(w, err)
		return
	}
	file, err := os.Open(exp.Path)
	if errors.Is(err, os.ErrNotExist) {
		writeError(w, errs.New(errs.ErrNotFound, "the export of disk %s/%s is gone", ref.Namespace, ref.Name))
		return
	}
	if err != nil {
		writeError(w, err)
		return
	}
	defer file.Close()
	st, err := file.Stat()
	if err != nil {
		writeError(w, err)
		return
	}
	w.Header().Set("ETag", `"`+exp.SHA256+`"`)
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, "", st.ModTime(), file)
}

// diskDataHeaders are the request headers passed on to the node, and the answer's headers
// passed back.
var (
	diskDataRequestHeaders  = []string{"Range", "If-Range"}
	diskDataResponseHeaders = []string{"Content-Length", "Content-Range", "Content-Type", "ETag", "Accept-Ranges", "Last-Modified"}
)

// ServeDiskData implements Streams: the request goes to the node's stream service with a
// ticket, and its answer comes back as it is (errors as the API's).
func (r *Remote) ServeDiskData(w http.ResponseWriter, req *http.Request, ref DiskRef) {
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		methodNotAllowed(w, req.Method, "GET, HEAD")
		return
	}
	hc, err := r.httpClient()
	if err != nil {
		writeError(w, err)
		return
	}
	// Preparing the export of a disk with a backing file flattens it first.
	hc.Transport.(*http.Transport).ResponseHeaderTimeout = 30 * time.Minute
	ctx := req.Context()
	ticket, err := r.Ticket(ctx, ref.UID, StreamDiskData)
	if err != nil {
		writeError(w, err)
		return
	}
	u := url.URL{Scheme: "https", Host: r.Address, Path: DiskDataPath(ref.UID)}
	out, err := http.NewRequestWithContext(ctx, req.Method, u.String(), nil)
	if err != nil {
		writeError(w, err)
		return
	}
	out.Header.Set(TicketHeader, "Bearer "+ticket)
	for _, h := range diskDataRequestHeaders {
		if v := req.Header.Get(h); v != "" {
			out.Header.Set(h, v)
		}
	}
	resp, err := hc.Do(out)
	if err != nil {
		writeError(w, r.unreachable(err))
		return
	}
	defer resp.Body.Close()
	// 416 (the range starts at or past the end: a resumed fetch that already has it all)
	// comes back as it is, with its Content-Range, for the fetcher to see.
	if resp.StatusCode >= 400 && resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		writeError(w, r.fromService(resp.StatusCode, body))
		return
	}
	for _, h := range diskDataResponseHeaders {
		if v := resp.Header.Get(h); v != "" {
			w.Header().Set(h, v)
		}
	}
	w.WriteHeader(resp.StatusCode)
	if req.Method == http.MethodGet {
		_, _ = io.CopyBuffer(w, resp.Body, make([]byte, 1<<20))
	}
}

// serveDiskData is the handler's part: the path names the disk, the ticket must grant it.
func (h *Handler) serveDiskData(w http.ResponseWriter, r *http.Request) {
	uid, ok := strings.CutSuffix(strings.TrimPrefix(r.URL.Path, DiskPathPrefix), "/data")
	if !ok || strings.Contains(uid, "/") {
		writeError(w, errs.New(errs.ErrNotFound, "no disk data at %s: want %s{uid}/data", r.URL.Path, DiskPathPrefix))
		return
	}
	g, ok := h.redeem(w, r, uid, StreamDiskData)
	if !ok {
		return
	}
	h.logger().Info("disk data served", "disk", g.Namespace+"/"+g.Name, "method", r.Method, "range", r.Header.Get("Range"), "remote", r.RemoteAddr)
	h.Streams.ServeDiskData(w, r, DiskRef{Namespace: g.Namespace, Name: g.Name, UID: uid})
}
