package images

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// UploadPathPrefix is the path under which the API server serves upload URLs:
// UploadPathPrefix + TOKEN.
const UploadPathPrefix = "/upload/"

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
type Uploads struct {
	// StallTimeout aborts an upload whose client sends nothing for this long; default 2 min.
	StallTimeout time.Duration

	mu      sync.Mutex
	waiting map[string]*UploadWaiter
}

// UploadWaiter is an import waiting for its file.
type UploadWaiter struct {
	u     *Uploads
	token string
	c     chan *Upload
}

// Upload is one upload request: the import reads Body and then calls Finish.
type Upload struct {
	Body io.Reader
	// Size is the request's Content-Length, or -1.
	Size   int64
	result chan error
	once   sync.Once
}

// Finish answers the upload request with the import's outcome.
func (up *Upload) Finish(err error) {
	up.once.Do(func() { up.result <- err })
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

// Waiting says whether an import of this process waits for an upload with token.
func (u *Uploads) Waiting(token string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.waiting[token] != nil
}

func (u *Uploads) claim(token string) *UploadWaiter {
	u.mu.Lock()
	defer u.mu.Unlock()
	w := u.waiting[token]
	delete(u.waiting, token)
	return w
}

// ServeHTTP accepts PUT (curl -T) or POST of the file at UploadPathPrefix+TOKEN. It answers
// when the import is finished: 200 when the image is stored, else an error status with the
// reason.
func (u *Uploads) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if r.Method != http.MethodPut && r.Method != http.MethodPost {
		w.Header().Set("Allow", "PUT, POST")
		http.Error(w, "upload the file with PUT (curl -T FILE URL) or POST", http.StatusMethodNotAllowed)
		return
	}
	tok := strings.TrimPrefix(r.URL.Path, UploadPathPrefix)
	var waiter *UploadWaiter
	if tokenRe.MatchString(tok) {
		waiter = u.claim(tok)
	}
	if waiter == nil {
		http.Error(w, "no upload waits at this URL: it was used already, it expired, or it is wrong; read status.imageUploadURLs of the image or disk again", http.StatusNotFound)
		return
	}
	stall := u.StallTimeout
	if stall <= 0 {
		stall = 2 * time.Minute
	}
	rc := http.NewResponseController(w)
	up := &Upload{Body: &deadlineReader{r: r.Body, rc: rc, stall: stall}, Size: r.ContentLength, result: make(chan error, 1)}
	waiter.c <- up
	var err error
	select {
	case err = <-up.result:
	case <-r.Context().Done():
		return // the client went away; the import fails on its own
	}
	_ = rc.SetReadDeadline(time.Time{})
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
