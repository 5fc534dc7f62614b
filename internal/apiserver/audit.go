package apiserver

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// The audit log: one JSON line per mutating request of a person (the admin token, a user, a
// caller on the local socket that is not one of Rakhsh's own components), per console, VNC
// and log session, per login and per token made or revoked. Requests of nodes and of the
// controllers (their status writes, many a second) are not audited: the Events and the
// server's log tell what they did.
//
// A line never holds a request body: no password, token, secret value or user data.

// HeaderRequestID is the response header that carries a request's id (also in its audit
// line). A client may send one; otherwise the server makes one.
const HeaderRequestID = "X-Request-Id"

// AuditEntry is one line of the audit log.
type AuditEntry struct {
	Time      time.Time `json:"time"`
	RequestID string    `json:"requestID,omitempty"`
	Identity  string    `json:"identity"`
	User      string    `json:"user,omitempty"`
	Token     string    `json:"token,omitempty"` // a user token's id, never its secret
	Source    string    `json:"source"`
	Verb      string    `json:"verb"`
	Resource  string    `json:"resource,omitempty"`
	Namespace string    `json:"project,omitempty"`
	Name      string    `json:"name,omitempty"`
	Sub       string    `json:"subresource,omitempty"`
	Code      int       `json:"code"`
}

// auditEntry is what a handler tells audit; the rest comes from the request.
type auditEntry struct {
	Verb, Resource, Namespace, Name, Sub string
	Code                                 int
}

// AuditLog appends audit lines to a file, rotating it by size, and optionally copies them
// to another writer (stdout).
type AuditLog struct {
	mu      sync.Mutex
	path    string
	f       *os.File
	size    int64
	maxSize int64
	keep    int
	copyTo  io.Writer
}

// OpenAuditLog opens (appends to) the audit log at path, mode 0600. maxSize is the size
// that makes it rotate (path.1, path.2 ... up to keep files); copyTo, when not nil, gets
// every line as well.
func OpenAuditLog(path string, maxSize int64, keep int, copyTo io.Writer) (*AuditLog, error) {
	l := &AuditLog{path: path, maxSize: maxSize, keep: keep, copyTo: copyTo}
	if err := l.open(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *AuditLog) open() error {
	if l.path == "" {
		return nil // stdout only
	}
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("audit log: %w", err)
	}
	l.f, l.size = f, st.Size()
	return nil
}

// Write appends one entry.
func (l *AuditLog) Write(e AuditEntry) error {
	line, err := json.Marshal(e)
	if err != nil {
		return err
	}
	line = append(line, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.copyTo != nil {
		_, _ = l.copyTo.Write(line)
	}
	if l.f == nil {
		return nil
	}
	if l.maxSize > 0 && l.size+int64(len(line)) > l.maxSize && l.size > 0 {
		if err := l.rotate(); err != nil {
			return err
		}
	}
	n, err := l.f.Write(line)
	l.size += int64(n)
	return err
}

// rotate renames path to path.1 (path.1 to path.2 ...; the oldest beyond keep is removed)
// and opens a new file.
func (l *AuditLog) rotate() error {
	l.f.Close()
	l.f = nil
	keep := max(l.keep, 1)
	_ = os.Remove(fmt.Sprintf("%s.%d", l.path, keep))
	for i := keep - 1; i >= 1; i-- {
		_ = os.Rename(fmt.Sprintf("%s.%d", l.path, i), fmt.Sprintf("%s.%d", l.path, i+1))
	}
	if err := os.Rename(l.path, l.path+".1"); err != nil {
		return fmt.Errorf("audit log: rotate: %w", err)
	}
	return l.open()
}

// Close closes the file.
func (l *AuditLog) Close() error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// audit writes one entry for request r (its identity, source and id).
func (s *Server) audit(r *http.Request, e auditEntry) {
	if s.auditLog == nil {
		return
	}
	id := identityOf(r.Context())
	src := r.RemoteAddr
	if src == "" || src == "@" {
		src = "unix"
	}
	ent := AuditEntry{Time: s.now().UTC(), RequestID: requestID(r), Identity: auditField(id.describe()), User: auditField(id.User), Token: id.TokenID, Source: src,
		Verb: e.Verb, Resource: auditField(e.Resource), Namespace: auditField(e.Namespace), Name: auditField(e.Name), Sub: auditField(e.Sub), Code: e.Code}
	if err := s.auditLog.Write(ent); err != nil {
		s.log.Error("audit log write failed", "err", err)
	}
}

type requestIDKey struct{}

func requestID(r *http.Request) string {
	v, _ := r.Context().Value(requestIDKey{}).(string)
	return v
}

// audited says whether a request is audited by the auditing middleware.
func audited(r *http.Request, id Identity) bool {
	if id.Node != "" || strings.HasPrefix(r.URL.Path, v1alpha1.IdentityPath+"/") {
		return false // nodes are not audited; the identity API audits itself
	}
	if id.Name == "local-admin" && strings.HasPrefix(r.UserAgent(), "rakhsh/") {
		return false // the controllers of this process
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		sub := r.PathValue("sub")
		return sub == SubConsole || sub == SubVNC || sub == SubLog
	}
	return true
}

// auditing wraps the routed handler: it gives every request an id, and writes the audit
// line of a mutating request (or a stream's opening) once it is answered.
func (s *Server) auditing(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rid := r.Header.Get(HeaderRequestID)
		if rid == "" || len(rid) > 64 || strings.ContainsAny(rid, "\r\n\"\\") {
			rid = uuid.NewString()
		}
		w.Header().Set(HeaderRequestID, rid)
		r = r.WithContext(context.WithValue(r.Context(), requestIDKey{}, rid))
		if s.auditLog == nil {
			next.ServeHTTP(w, r)
			return
		}
		note := &auditNote{}
		r = r.WithContext(context.WithValue(r.Context(), auditNoteKey{}, note))
		rec := &statusRecorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		id := identityOf(r.Context())
		if !audited(r, id) {
			return
		}
		code := rec.code
		if code == 0 {
			code = http.StatusOK
		}
		verb := requestVerb(r, r.PathValue("name") == "")
		res := r.PathValue("resource")
		if res == "" {
			res = r.URL.Path
		}
		name := r.PathValue("name")
		if name == "" {
			name = note.name // a create: the name in its body
		}
		s.audit(r, auditEntry{Verb: verb, Resource: res, Namespace: r.PathValue("ns"), Name: name, Sub: r.PathValue("sub"), Code: code})
	})
}

// auditFieldMax bounds each text field of an audit line: a caller chooses paths and names,
// and one line must stay small (readers skip lines beyond auditLineMax).
const auditFieldMax = 256

// auditField is s cut to auditFieldMax bytes (at a rune boundary), with "…" when cut.
func auditField(s string) string {
	if len(s) <= auditFieldMax {
		return s
	}
	cut := auditFieldMax
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// auditNote is what a handler adds to its request's audit line: the name of the object a
// create makes (it is in the body, not the path).
type auditNote struct{ name string }

type auditNoteKey struct{}

// noteAuditName records the name of the object a request creates for its audit line.
func noteAuditName(ctx context.Context, name string) {
	if n, ok := ctx.Value(auditNoteKey{}).(*auditNote); ok {
		n.name = name
	}
}
