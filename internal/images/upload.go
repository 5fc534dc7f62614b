package images

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// UploadPathPrefix is the path under which the API server serves upload URLs:
// UploadPathPrefix + TOKEN.
const UploadPathPrefix = "/upload/"

// DefaultStallTimeout is how long an import or an upload request waits for bytes that do not
// come before it gives up.
const DefaultStallTimeout = 2 * time.Minute

// DefaultUploadTimeout is how long an Upload data source waits for its file.
const DefaultUploadTimeout = 15 * time.Minute

var tokenRe = regexp.MustCompile(`^[A-Za-z0-9_-]{43}$`)

// NewUploadToken returns a random single-use token (256 bits, URL-safe).
func NewUploadToken() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// UploadToken returns the token at the end of an upload URL, or "".
func UploadToken(url string) string {
	i := strings.LastIndex(url, UploadPathPrefix)
	if i < 0 {
		return ""
	}
	tok := url[i+len(UploadPathPrefix):]
	if !tokenRe.MatchString(tok) {
		return ""
	}
	return tok
}

// Uploads is where upload requests (served by the API server) meet the imports that wait for
// them. A token is claimed by the first request that presents it: the URL is single-use.
//
// An upload may come in pieces: a request that is cut short (the client's connection broke)
// leaves the import waiting for the rest, and a later request with the same token and
// `Content-Range: bytes START-END/TOTAL` from the byte the import has taken so far goes on
// from there (HEAD tells that byte in Upload-Offset). The pieces are handed to the import as
// one stream through a pipe, so nothing is stored twice; an upload that is not resumed within
// ResumeWindow fails.
type Uploads struct {
	// StallTimeout aborts a request whose client sends nothing for this long; default 2 min.
	StallTimeout time.Duration
	// ResumeWindow is how long an upload cut short waits for its next piece; default 5 min.
	ResumeWindow time.Duration

	mu      sync.Mutex
	waiting map[string]*UploadWaiter
	active  map[string]*uploadSession
}

// UploadWaiter is an import waiting for its file.
type UploadWaiter struct {
	u     *Uploads
	token string
	c     chan *Upload
}

// Upload is one upload: the import reads Body and then calls Finish.
type Upload struct {
	Body io.Reader
	// Size is the upload's length (the first request's Content-Length or Content-Range
	// total), or -1.
	Size int64
	// resume is how long Body may wait for a piece that resumes a cut upload.
	resume time.Duration
	result chan error
	once   sync.Once
}

// Finish answers the upload request with the import's outcome.
func (up *Upload) Finish(err error) {
	up.once.Do(func() { up.result <- err })
}

// Options returns opts for the import of the upload: a pause while the client resumes a cut
// upload is not a stall.
func (up *Upload) Options(opts Options) Options {
	opts.StallTimeout = cmp.Or(max(opts.StallTimeout, 0), DefaultStallTimeout) + up.resume
	return opts
}

// uploadSession is an upload whose import runs: the pieces go into pw.
type uploadSession struct {
	token string
	total int64 // -1: unknown
	pw    *io.PipeWriter
	pr    *io.PipeReader
	up    *Upload
	// piece is held by the request that sends a piece (one at a time).
	piece sync.Mutex
	// offset is what the import has taken; resumeTimer ends a cut upload not resumed.
	mu          sync.Mutex
	offset      int64
	complete    bool // the whole file arrived (the pipe is closed)
	resumeTimer *time.Timer
	done        chan struct{} // closed once the import's result is in err
	err         error
}

func (s *uploadSession) isComplete() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.complete
}

func (s *uploadSession) taken() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.offset
}

// write passes p to the import, counting what it took.
func (s *uploadSession) Write(p []byte) (int, error) {
	n, err := s.pw.Write(p)
	s.mu.Lock()
	s.offset += int64(n)
	s.mu.Unlock()
	return n, err
}

// Wait registers token and returns the waiter that receives its upload. Close it when the
// wait ends.
func (u *Uploads) Wait(token string) *UploadWaiter {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.waiting == nil {
		u.waiting = map[string]*UploadWaiter{}
	}
	w := &UploadWaiter{u: u, token: token, c: make(chan *Upload, 1)}
	u.waiting[token] = w
	return w
}

// C delivers the upload, once.
func (w *UploadWaiter) C() <-chan *Upload { return w.c }

// Close unregisters the token; a later request with it is refused.
func (w *UploadWaiter) Close() {
	w.u.mu.Lock()
	defer w.u.mu.Unlock()
	if w.u.waiting[w.token] == w {
		delete(w.u.waiting, w.token)
	}
}

// Waiting says whether an import of this process waits for an upload with token, or for the
// rest of it.
func (u *Uploads) Waiting(token string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.waiting[token] != nil || u.active[token] != nil
}

// begin claims token's waiter and starts its import's session: nil when nothing waits.
func (u *Uploads) begin(token string, total int64) *uploadSession {
	u.mu.Lock()
	w := u.waiting[token]
	delete(u.waiting, token)
	if w == nil {
		u.mu.Unlock()
		return nil
	}
	pr, pw := io.Pipe()
	s := &uploadSession{token: token, total: total, pw: pw, pr: pr, done: make(chan struct{}),
		up: &Upload{Body: pr, Size: total, resume: u.resumeWindow(), result: make(chan error, 1)}}
	if u.active == nil {
		u.active = map[string]*uploadSession{}
	}
	u.active[token] = s
	u.mu.Unlock()
	w.c <- s.up
	go func() {
		err := <-s.up.result
		// The import is over: a piece still being written ends, and the token is used.
		pr.CloseWithError(errImportOver)
		s.mu.Lock()
		s.err = err
		if s.resumeTimer != nil {
			s.resumeTimer.Stop()
		}
		s.mu.Unlock()
		close(s.done)
		u.mu.Lock()
		if u.active[token] == s {
			delete(u.active, token)
		}
		u.mu.Unlock()
	}()
	return s
}

var errImportOver = errors.New("the import of this upload is over")

func (u *Uploads) session(token string) *uploadSession {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.active[token]
}

func (u *Uploads) resumeWindow() time.Duration {
	if u.ResumeWindow > 0 {
		return u.ResumeWindow
	}
	return 5 * time.Minute
}

// Upload-Offset and Upload-Length are the headers that tell a client where a cut upload
// resumes.
const (
	HeaderUploadOffset = "Upload-Offset"
	HeaderUploadLength = "Upload-Length"
)

// ServeHTTP accepts PUT (curl -T) or POST of the file, or of a piece of it, at
// UploadPathPrefix+TOKEN, and HEAD for how much of it arrived. The request that completes the
// file is answered when the import is finished: 200 when the image is stored, else an error
// status with the reason. A piece that does not complete it is answered 202 with
// Upload-Offset.
func (u *Uploads) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	tok := strings.TrimPrefix(r.URL.Path, UploadPathPrefix)
	if !tokenRe.MatchString(tok) {
		tok = ""
	}
	switch r.Method {
	case http.MethodHead:
		u.serveHead(w, tok)
		return
	case http.MethodPut, http.MethodPost:
	default:
		w.Header().Set("Allow", "PUT, POST, HEAD")
		http.Error(w, "upload the file with PUT (curl -T FILE URL) or POST", http.StatusMethodNotAllowed)
		return
	}
	rng, err := ParseContentRange(r.Header.Get("Content-Range"))
	if err != nil {
		http.Error(w, "Content-Range: "+err.Error(), http.StatusBadRequest)
		return
	}
	if rng != nil && r.ContentLength >= 0 && r.ContentLength != rng.End-rng.Start+1 {
		http.Error(w, fmt.Sprintf("Content-Range names %d bytes, the request has %d", rng.End-rng.Start+1, r.ContentLength), http.StatusBadRequest)
		return
	}
	s := u.session(tok)
	if s == nil && tok != "" {
		total := r.ContentLength
		if rng != nil {
			if rng.Start != 0 {
				if u.Waiting(tok) {
					w.Header().Set(HeaderUploadOffset, "0")
					http.Error(w, fmt.Sprintf("nothing of this upload has arrived yet: send it from byte 0, not %d", rng.Start), http.StatusConflict)
					return
				}
			} else {
				total = rng.Total
			}
		}
		s = u.begin(tok, total)
	}
	if s == nil || s.isComplete() {
		http.Error(w, "no upload waits at this URL: it was used already, it expired, or it is wrong; read status.imageUploadURLs of the image or disk again", http.StatusNotFound)
		return
	}
	u.servePiece(w, r, s, rng)
}

// serveHead tells how much of the upload at tok the import has taken.
func (u *Uploads) serveHead(w http.ResponseWriter, tok string) {
	if s := u.session(tok); s != nil {
		s.mu.Lock()
		offset, total := s.offset, s.total
		s.mu.Unlock()
		w.Header().Set(HeaderUploadOffset, strconv.FormatInt(offset, 10))
		if total >= 0 {
			w.Header().Set(HeaderUploadLength, strconv.FormatInt(total, 10))
		}
		w.WriteHeader(http.StatusOK)
		return
	}
	if tok != "" && u.Waiting(tok) {
		w.Header().Set(HeaderUploadOffset, "0")
		w.WriteHeader(http.StatusOK)
		return
	}
	w.WriteHeader(http.StatusNotFound)
}

// servePiece passes one request's body to the import of s.
func (u *Uploads) servePiece(w http.ResponseWriter, r *http.Request, s *uploadSession, rng *ContentRange) {
	if !s.piece.TryLock() {
		http.Error(w, "another request is sending this upload now", http.StatusConflict)
		return
	}
	defer s.piece.Unlock()
	s.mu.Lock()
	if s.resumeTimer != nil {
		s.resumeTimer.Stop()
	}
	offset := s.offset
	s.mu.Unlock()
	select {
	case <-s.done:
		u.answer(w, s.err)
		return
	default:
	}
	start := int64(0)
	if rng != nil {
		start = rng.Start
		if s.total >= 0 && rng.Total != s.total {
			http.Error(w, fmt.Sprintf("Content-Range says the file has %d bytes; this upload has %d", rng.Total, s.total), http.StatusBadRequest)
			u.waitResume(s)
			return
		}
		if s.total < 0 {
			s.mu.Lock()
			s.total = rng.Total // the first request was sent without a length
			s.mu.Unlock()
		}
	}
	if start != offset {
		w.Header().Set(HeaderUploadOffset, strconv.FormatInt(offset, 10))
		http.Error(w, fmt.Sprintf("the upload goes on from byte %d (HEAD tells it in %s); this piece starts at %d", offset, HeaderUploadOffset, start), http.StatusConflict)
		u.waitResume(s)
		return
	}
	rc := http.NewResponseController(w)
	_, err := io.Copy(s, &deadlineReader{r: r.Body, rc: rc, stall: cmp.Or(max(u.StallTimeout, 0), DefaultStallTimeout)})
	_ = rc.SetReadDeadline(time.Time{})
	taken := s.taken()
	switch {
	case errors.Is(err, errImportOver) || errors.Is(err, io.ErrClosedPipe):
		<-s.done
		u.answer(w, s.err)
		return
	case err != nil:
		// The client went away or stalled: the import waits for the rest.
		u.waitResume(s)
		return
	case s.total >= 0 && taken > s.total:
		s.pw.CloseWithError(&Error{Reason: ReasonUploadFailed, Err: fmt.Errorf("more than the %d bytes the upload announced arrived", s.total)})
	case s.total >= 0 && taken < s.total:
		w.Header().Set(HeaderUploadOffset, strconv.FormatInt(taken, 10))
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprintf(w, "received %d of %d bytes; send the rest from byte %d\n", taken, s.total, taken)
		u.waitResume(s)
		return
	default:
		s.mu.Lock()
		s.complete = true
		s.mu.Unlock()
		s.pw.Close() // the whole file is in: the import sees its end
	}
	select {
	case <-s.done:
		u.answer(w, s.err)
	case <-r.Context().Done(): // the client went away; the import ends on its own
	}
}

// waitResume gives a cut upload ResumeWindow for its next piece, then fails its import.
func (u *Uploads) waitResume(s *uploadSession) {
	window := u.resumeWindow()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.resumeTimer != nil {
		s.resumeTimer.Stop()
	}
	s.resumeTimer = time.AfterFunc(window, func() {
		s.pw.CloseWithError(&Error{Reason: ReasonUploadFailed,
			Err: fmt.Errorf("the upload stopped at byte %d and was not resumed within %s", s.taken(), window)})
	})
}

// answer writes the import's outcome err as the upload's response.
func (u *Uploads) answer(w http.ResponseWriter, err error) {
	if err == nil {
		_, _ = io.WriteString(w, "upload complete: the image is stored\n")
		return
	}
	code := http.StatusInternalServerError
	var ie *Error
	if errors.As(err, &ie) {
		switch ie.Reason {
		case ReasonChecksumMismatch, ReasonImageRejected, ReasonUnsupportedFormat:
			code = http.StatusUnprocessableEntity
		case ReasonImageTooLarge:
			code = http.StatusRequestEntityTooLarge
		case ReasonInsufficientStorage:
			code = http.StatusInsufficientStorage
		case ReasonUploadFailed:
			code = http.StatusBadRequest
		}
		http.Error(w, fmt.Sprintf("upload refused (%s): %v", ie.Reason, err), code)
		return
	}
	http.Error(w, "upload failed: "+err.Error(), code)
}

// ContentRange is a request's "Content-Range: bytes START-END/TOTAL" (END inclusive).
type ContentRange struct{ Start, End, Total int64 }

// ParseContentRange parses a request's Content-Range header: nil for an empty one, an error
// for anything but "bytes START-END/TOTAL" with START <= END < TOTAL.
func ParseContentRange(h string) (*ContentRange, error) {
	if h == "" {
		return nil, nil
	}
	rest, ok := strings.CutPrefix(h, "bytes ")
	if !ok {
		return nil, fmt.Errorf("%q: want bytes START-END/TOTAL", h)
	}
	span, total, ok := strings.Cut(rest, "/")
	a, b, ok2 := strings.Cut(span, "-")
	if !ok || !ok2 {
		return nil, fmt.Errorf("%q: want bytes START-END/TOTAL", h)
	}
	var r ContentRange
	for _, f := range []struct {
		s string
		v *int64
	}{{a, &r.Start}, {b, &r.End}, {total, &r.Total}} {
		if f.s == "" || len(f.s) > 19 || strings.TrimLeft(f.s, "0123456789") != "" {
			return nil, fmt.Errorf("%q: want bytes START-END/TOTAL with whole numbers", h)
		}
		n, err := strconv.ParseInt(f.s, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%q: %v", h, err)
		}
		*f.v = n
	}
	if r.Start > r.End || r.End >= r.Total {
		return nil, fmt.Errorf("%q: START <= END < TOTAL does not hold", h)
	}
	return &r, nil
}

// deadlineReader extends the connection's read deadline before each read, so a client that
// stops sending is cut off after stall.
type deadlineReader struct {
	r     io.Reader
	rc    *http.ResponseController
	stall time.Duration
}

func (d *deadlineReader) Read(p []byte) (int, error) {
	_ = d.rc.SetReadDeadline(time.Now().Add(d.stall))
	return d.r.Read(p)
}

// UploadURLs returns the upload URLs of token on bases; without a TCP listener (empty bases)
// both are the path on the API server, which `rakhsh image upload` uses over its connection.
func UploadURLs(bases v1alpha1.ImageUploadURLs, token string) *v1alpha1.ImageUploadURLs {
	p := UploadPathPrefix + token
	return &v1alpha1.ImageUploadURLs{External: bases.External + p, InCluster: bases.InCluster + p}
}

// TokenFor returns the token of the upload URLs an object shows while it still waits for its
// file (so that after a restart it keeps its URL), or a new token.
func TokenFor(waiting bool, urls *v1alpha1.ImageUploadURLs) string {
	if waiting && urls != nil {
		if t := UploadToken(urls.External); t != "" {
			return t
		}
	}
	return NewUploadToken()
}

// Await waits up to timeout for the upload. It returns nil when the time is up (the token is
// closed then, though an upload that claimed it just before still counts) or when ctx ends
// (then ctx.Err() too).
func (w *UploadWaiter) Await(ctx context.Context, timeout time.Duration) (*Upload, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		w.Close()
		select {
		case up := <-w.C(): // claimed just before: answer it, or its request waits forever
			up.Finish(&Error{Reason: ReasonUploadFailed, Transient: true, Err: fmt.Errorf("the server stopped waiting for the upload: %w", ctx.Err())})
		default:
		}
		return nil, ctx.Err()
	case up := <-w.C():
		return up, nil
	case <-timer.C:
		w.Close()
		select {
		case up := <-w.C(): // claimed just before the close
			return up, nil
		default:
			return nil, nil
		}
	}
}
