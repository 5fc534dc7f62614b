package apiserver

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/rakhsh/rakhsh/internal/errs"
)

// Reading the audit log over the API: GET IdentityPath/audit gives a ClusterAdmin the newest
// lines of this server's audit log (the file and its rotated copies), newest first, filtered
// by user, project or time. Each API server keeps its own log: with several, ask each.

// Bounds of ?limit= of the audit endpoint.
const (
	auditDefaultLimit = 200
	auditMaxLimit     = 5000
)

// AuditList is the answer of GET IdentityPath/audit.
type AuditList struct {
	// Server is the host name of the API server whose log this is.
	Server string       `json:"server"`
	Items  []AuditEntry `json:"items"`
}

// auditQuery selects audit lines: each non-empty field must match.
type auditQuery struct {
	user, project string
	since         time.Time
	limit         int
}

func (q auditQuery) match(e AuditEntry) bool {
	return (q.user == "" || e.User == q.user || e.Identity == q.user) && (q.project == "" || e.Namespace == q.project) &&
		(q.since.IsZero() || !e.Time.Before(q.since))
}

// parseAuditQuery reads ?user=, ?project=, ?since= (RFC 3339) and ?limit=.
func parseAuditQuery(r *http.Request) (auditQuery, error) {
	v := r.URL.Query()
	q := auditQuery{user: v.Get("user"), project: v.Get("project"), limit: auditDefaultLimit}
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > auditMaxLimit {
			return q, errs.New(errs.ErrBadRequest, "limit %q: want a number from 1 to %d", s, auditMaxLimit)
		}
		q.limit = n
	}
	if s := v.Get("since"); s != "" {
		t, err := time.Parse(time.RFC3339, s)
		if err != nil {
			return q, errs.New(errs.ErrBadRequest, "since %q: want a time such as 2026-12-05T06:00:00Z", s)
		}
		q.since = t
	}
	return q, nil
}

// Tail returns the newest lines that match q (at most q.limit), newest first, from the
// current file and then the rotated ones. Lines that do not parse (one being written) are
// passed over.
func (l *AuditLog) Tail(q auditQuery) ([]AuditEntry, error) {
	out := []AuditEntry{}
	if l == nil || l.path == "" {
		return out, nil
	}
	for i := 0; i <= max(l.keep, 1) && len(out) < q.limit; i++ {
		path := l.path
		if i > 0 {
			path = fmt.Sprintf("%s.%d", l.path, i)
		}
		got, err := tailFile(path, q, q.limit-len(out))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, got...)
	}
	return out, nil
}

// tailFile returns the last n lines of path that match q, newest first.
func tailFile(path string, q auditQuery, n int) ([]AuditEntry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ring := make([]AuditEntry, 0, n)
	next := 0
	br := bufio.NewReaderSize(f, 64<<10)
	for {
		line, err := readAuditLine(br)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("reading the audit log %s: %w", path, err)
		}
		var e AuditEntry
		if line == nil || json.Unmarshal(line, &e) != nil || !q.match(e) {
			continue
		}
		if len(ring) < n {
			ring = append(ring, e)
			continue
		}
		ring[next] = e
		next = (next + 1) % n
	}
	out := make([]AuditEntry, 0, len(ring))
	for i := len(ring) - 1; i >= 0; i-- {
		out = append(out, ring[(next+i)%len(ring)])
	}
	return out, nil
}

// auditLineMax is the longest audit line read; a longer one (not written by this version,
// whose fields are bounded) is passed over.
const auditLineMax = 64 << 10

// readAuditLine returns the next line of br without its newline, or nil for a line longer
// than auditLineMax (its bytes are passed over); io.EOF at the end (a last line without a
// newline, one being written, is left out).
func readAuditLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	long := false
	for {
		frag, err := br.ReadSlice('\n')
		if !long {
			line = append(line, frag...)
			if len(line) > auditLineMax {
				long, line = true, nil
			}
		}
		switch {
		case err == nil:
			if long {
				return nil, nil
			}
			return line[:len(line)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		default:
			return nil, err
		}
	}
}

// serveAudit serves GET IdentityPath/audit to a ClusterAdmin.
func (s *Server) serveAudit(w http.ResponseWriter, r *http.Request) {
	if !s.allowOnly(w, r, http.MethodGet) {
		return
	}
	id := identityOf(r.Context())
	if !isClusterAdmin(id) {
		s.writeError(w, r, errs.New(errs.ErrForbidden, "%s may not read the audit log: only a ClusterAdmin may", id.describe()))
		return
	}
	q, err := parseAuditQuery(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if s.auditLog == nil || s.auditLog.path == "" {
		s.writeError(w, r, errs.New(errs.ErrUnavailable, "this API server keeps no audit log file (serve --audit-log none)"))
		return
	}
	items, err := s.auditLog.Tail(q)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	host, _ := os.Hostname()
	writeJSON(w, http.StatusOK, AuditList{Server: host, Items: items})
}
