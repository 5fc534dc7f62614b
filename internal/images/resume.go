package images

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// MaxResumes is how many times a download cut mid-way is resumed with an HTTP Range request
// before it fails.
const MaxResumes = 5

// resumingBody reads a download's body and, when the connection breaks, asks the server for
// the rest (Range: bytes=N-, with If-Range on the validator of the first answer) and goes on
// as if nothing happened: the importer sees one stream. A server without byte ranges (no
// Accept-Ranges: bytes, or no ETag/Last-Modified to make the range safe) gets no resume.
type resumingBody struct {
	ctx       context.Context
	hc        *http.Client
	url       string
	body      io.ReadCloser
	validator string // ETag (strong) or Last-Modified of the first answer
	total     int64
	offset    int64
	resumes   int
	log       func(offset int64, err error)
}

func newResumingBody(ctx context.Context, hc *http.Client, req *http.Request, resp *http.Response) io.ReadCloser {
	r := &resumingBody{ctx: ctx, hc: hc, url: req.URL.String(), body: resp.Body, total: resp.ContentLength}
	if resp.Request != nil && resp.Request.URL != nil {
		r.url = resp.Request.URL.String() // after redirects
	}
	if strings.EqualFold(strings.TrimSpace(resp.Header.Get("Accept-Ranges")), "bytes") && r.total > 0 {
		if et := resp.Header.Get("ETag"); et != "" && !strings.HasPrefix(et, "W/") {
			r.validator = et
		} else if lm := resp.Header.Get("Last-Modified"); lm != "" {
			r.validator = lm
		}
	}
	return r
}

func (r *resumingBody) Read(p []byte) (int, error) {
	for {
		n, err := r.body.Read(p)
		r.offset += int64(n)
		switch {
		case err == nil:
			return n, nil
		case errors.Is(err, io.EOF) && (r.total < 0 || r.offset >= r.total):
			return n, err // the whole body
		case r.ctx.Err() != nil || !r.canResume():
			return n, err
		case n > 0:
			return n, nil // hand over what came; the next Read sees the error again and resumes
		}
		if rerr := r.resume(err); rerr != nil {
			return 0, fmt.Errorf("%w (resuming at byte %d: %w)", err, r.offset, rerr)
		}
	}
}

func (r *resumingBody) canResume() bool {
	return r.validator != "" && r.resumes < MaxResumes && r.offset < r.total
}

func (r *resumingBody) resume(cause error) error {
	r.resumes++
	r.body.Close()
	select {
	case <-r.ctx.Done():
		return r.ctx.Err()
	case <-time.After(time.Duration(r.resumes) * 500 * time.Millisecond):
	}
	req, err := http.NewRequestWithContext(r.ctx, http.MethodGet, r.url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "rakhsh-image-importer")
	req.Header.Set("Range", "bytes="+strconv.FormatInt(r.offset, 10)+"-")
	req.Header.Set("If-Range", r.validator)
	resp, err := r.hc.Do(req)
	if err != nil {
		r.body = io.NopCloser(errReader{err})
		return err
	}
	want := fmt.Sprintf("bytes %d-%d/%d", r.offset, r.total-1, r.total)
	if resp.StatusCode != http.StatusPartialContent || resp.Header.Get("Content-Range") != want {
		resp.Body.Close()
		r.body = io.NopCloser(errReader{cause})
		r.validator = "" // the file changed or ranges are refused: no more resumes
		return fmt.Errorf("the server answered %s (Content-Range %q) to a range request", resp.Status, resp.Header.Get("Content-Range"))
	}
	if r.log != nil {
		r.log(r.offset, cause)
	}
	r.body = resp.Body
	return nil
}

func (r *resumingBody) Close() error { return r.body.Close() }

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }
