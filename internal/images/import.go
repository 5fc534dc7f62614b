package images

import (
	"context"
	"crypto/md5"  //nolint:gosec // checksums given by the operator, not a security boundary by themselves
	"crypto/sha1" //nolint:gosec // idem
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// Failure reasons, used as condition reasons in image status.
const (
	ReasonChecksumMismatch  = "ChecksumMismatch"
	ReasonUnsupportedFormat = "UnsupportedFormat"
	ReasonImageRejected     = "ImageRejected"
	ReasonDownloadFailed    = "DownloadFailed"
	ReasonHTTPError         = "HTTPError"
	ReasonInvalidSource     = "InvalidSource"
	ReasonProcessingFailed  = "ProcessingFailed"
)

// Error is a failed import: a reason for the status condition, and whether retrying the same
// import could succeed (a network error could; a checksum mismatch could not).
type Error struct {
	Reason    string
	Transient bool
	Err       error
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

func permanent(reason string, format string, a ...any) *Error {
	return &Error{Reason: reason, Err: fmt.Errorf(format, a...)}
}

func transient(reason string, format string, a ...any) *Error {
	return &Error{Reason: reason, Transient: true, Err: fmt.Errorf(format, a...)}
}

// HTTPSource is an http or https URL to import, as in an image's spec.dataSource.http.
type HTTPSource struct {
	URL string
	// CABundle is base64 of PEM certificates trusted in addition to the host's.
	CABundle string
	Checksum *v1alpha1.Checksum
}

// Progress is the state of a download.
type Progress struct {
	Received int64
	// Total is the Content-Length, or -1 when the server did not send one.
	Total      int64
	AvgBPS     int64
	CurrentBPS int64
}

// Percent returns the progress as "45%", or "" when the total is unknown.
func (p Progress) Percent() string {
	if p.Total <= 0 {
		return ""
	}
	pct := p.Received * 100 / p.Total
	if pct > 100 {
		pct = 100
	}
	return fmt.Sprintf("%d%%", pct)
}

// Options tune an import.
type Options struct {
	// Progress, when set, is called about every ProgressInterval while downloading and once
	// when the download ends. It runs on its own goroutine and may be slow.
	Progress         func(Progress)
	ProgressInterval time.Duration // default 1 s
	// StallTimeout aborts a download that receives nothing for this long; default 2 min.
	StallTimeout time.Duration
	// Transport overrides the HTTP transport (tests); nil builds one from the source.
	Transport http.RoundTripper
}

// Result describes an image as stored.
type Result struct {
	// Format is the stored form: qcow2, or iso (a raw file attached as a CD-ROM).
	Format      Format
	CDROM       bool
	VirtualSize int64
	StoredSize  int64
	SHA256      string
}

// Status fills the size, format, cdrom and digest fields of an image status from r.
func (r *Result) Status(st *v1alpha1.ImageStatus) {
	st.Format = string(r.Format)
	st.CDROM = r.CDROM
	st.Size = &v1alpha1.ImageSize{Stored: HumanBytes(r.StoredSize), Unpacked: HumanBytes(r.VirtualSize),
		StoredBytes: r.StoredSize, UnpackedBytes: r.VirtualSize}
	st.SHA256 = r.SHA256
}

// ImportHTTP downloads src and stores the image at dst (atomically: dst appears only when
// the image is complete and checked). Memory use does not depend on the image size.
func ImportHTTP(ctx context.Context, src HTTPSource, dst string, opts Options) (*Result, error) {
	u, err := url.Parse(src.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, permanent(ReasonInvalidSource, "the URL %q is not an http or https URL", src.URL)
	}
	tr := opts.Transport
	if tr == nil {
		t, err := newTransport(src.CABundle)
		if err != nil {
			return nil, err
		}
		defer t.CloseIdleConnections()
		tr = t
	}
	f, err := storage.TempFile(dst)
	if err != nil {
		return nil, transient(ReasonProcessingFailed, "creating a temporary file: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful commit tmp no longer exists
	sum, err := download(ctx, tr, src, f, opts)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = transient(ReasonProcessingFailed, "writing the download: %w", cerr)
	}
	if err != nil {
		return nil, err
	}
	return store(ctx, tmp, dst, sum)
}

func newTransport(caBundle string) (*http.Transport, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if caBundle != "" {
		pemBytes, err := base64.StdEncoding.DecodeString(caBundle)
		if err != nil {
			return nil, permanent(ReasonInvalidSource, "caBundle is not base64: %v", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pemBytes) {
			return nil, permanent(ReasonInvalidSource, "caBundle holds no PEM certificate")
		}
		tc.RootCAs = pool
	}
	d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           d.DialContext,
		TLSClientConfig:       tc,
		TLSHandshakeTimeout:   30 * time.Second,
		ResponseHeaderTimeout: 2 * time.Minute,
		// The file is checksummed as the server sends it: never decompress transparently.
		DisableCompression: true,
		ForceAttemptHTTP2:  true,
	}, nil
}

// checksum hashes what is written and compares with the expected digests.
type checksum struct {
	name, want string
	h          hash.Hash
}

func download(ctx context.Context, tr http.RoundTripper, src HTTPSource, f *os.File, opts Options) (sha256hex string, err error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	hc := &http.Client{Transport: tr, CheckRedirect: func(req *http.Request, via []*http.Request) error {
		if len(via) >= 10 {
			return errors.New("stopped after 10 redirects")
		}
		if req.URL.Scheme != "http" && req.URL.Scheme != "https" {
			return fmt.Errorf("redirect to a %s URL refused", req.URL.Scheme)
		}
		return nil
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, src.URL, nil)
	if err != nil {
		return "", permanent(ReasonInvalidSource, "bad URL: %v", err)
	}
	req.Header.Set("User-Agent", "rakhsh-image-importer")
	resp, err := hc.Do(req)
	if err != nil {
		if ctx.Err() != nil && context.Cause(ctx) == context.Canceled {
			return "", err
		}
		return "", transient(ReasonDownloadFailed, "downloading %s: %w", redact(src.URL), unwrapURLError(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		e := &Error{Reason: ReasonHTTPError, Err: fmt.Errorf("downloading %s: the server answered %s", redact(src.URL), resp.Status)}
		e.Transient = resp.StatusCode >= 500 || resp.StatusCode == http.StatusRequestTimeout || resp.StatusCode == http.StatusTooManyRequests
		return "", e
	}

	sums := []*checksum{}
	sha := sha256.New()
	if c := src.Checksum; c != nil {
		add := func(name, want string, h hash.Hash) {
			if want != "" {
				sums = append(sums, &checksum{name: name, want: strings.ToLower(want), h: h})
			}
		}
		add("md5", c.MD5, md5.New()) //nolint:gosec
		add("sha1", c.SHA1, sha1.New())
		add("sha256", c.SHA256, nil) // shares sha
		add("sha512", c.SHA512, sha512.New())
	}
	writers := []io.Writer{f, sha}
	for _, s := range sums {
		if s.h != nil {
			writers = append(writers, s.h)
		}
	}

	total := resp.ContentLength
	var received, lastRead atomic.Int64
	start := time.Now()
	lastRead.Store(start.UnixNano())
	stall := opts.StallTimeout
	if stall <= 0 {
		stall = 2 * time.Minute
	}
	interval := opts.ProgressInterval
	if interval <= 0 {
		interval = time.Second
	}
	progress := func(prevBytes int64, prevTime time.Time) Progress {
		now := time.Now()
		n := received.Load()
		p := Progress{Received: n, Total: total}
		if el := now.Sub(start).Seconds(); el > 0 {
			p.AvgBPS = int64(float64(n) / el)
		}
		if el := now.Sub(prevTime).Seconds(); el > 0 {
			p.CurrentBPS = int64(float64(n-prevBytes) / el)
		}
		return p
	}
	done := make(chan struct{})
	watcherDone := make(chan struct{})
	go func() {
		defer close(watcherDone)
		t := time.NewTicker(interval)
		defer t.Stop()
		prevBytes, prevTime := int64(0), start
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case now := <-t.C:
				if now.Sub(time.Unix(0, lastRead.Load())) > stall {
					cancel(fmt.Errorf("nothing received for %s", stall))
					return
				}
				if opts.Progress != nil {
					p := progress(prevBytes, prevTime)
					prevBytes, prevTime = p.Received, now
					opts.Progress(p)
				}
			}
		}
	}()
	cw := &countWriter{n: &received, last: &lastRead}
	writers = append(writers, cw)
	buf := make([]byte, 1<<20)
	n, err := io.CopyBuffer(io.MultiWriter(writers...), resp.Body, buf)
	close(done)
	<-watcherDone
	if err != nil {
		if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
			return "", transient(ReasonDownloadFailed, "downloading %s: %v", redact(src.URL), cause)
		}
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		return "", transient(ReasonDownloadFailed, "downloading %s after %d bytes: %w", redact(src.URL), n, err)
	}
	if total >= 0 && n != total {
		return "", transient(ReasonDownloadFailed, "downloading %s: got %d bytes of %d", redact(src.URL), n, total)
	}
	if opts.Progress != nil {
		p := progress(0, start)
		if p.Total < 0 {
			p.Total = p.Received
		}
		opts.Progress(p)
	}
	shaHex := hex.EncodeToString(sha.Sum(nil))
	for _, s := range sums {
		got := shaHex
		if s.h != nil {
			got = hex.EncodeToString(s.h.Sum(nil))
		}
		if got != s.want {
			return "", permanent(ReasonChecksumMismatch, "the %s of the downloaded file is %s, not the %s the image's checksum asks for", s.name, got, s.want)
		}
	}
	return shaHex, nil
}

type countWriter struct {
	n, last *atomic.Int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	c.n.Add(int64(len(p)))
	c.last.Store(time.Now().UnixNano())
	return len(p), nil
}

func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// redact drops a URL's query (it may hold a signature) for messages.
func redact(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "the URL"
	}
	u.User = nil
	if u.RawQuery != "" {
		u.RawQuery = "..."
	}
	return u.String()
}

// store checks the downloaded file tmp and puts the stored form at dst: a qcow2 as it is, an
// ISO as it is (raw, CD-ROM), a raw disk converted to qcow2. sum is tmp's sha256.
func store(ctx context.Context, tmp, dst, sum string) (*Result, error) {
	format, info, err := inspect(ctx, tmp)
	if err != nil {
		return nil, err
	}
	res := &Result{Format: format, VirtualSize: info.VirtualSize, SHA256: sum}
	switch format {
	case FormatQCOW2:
	case FormatISO:
		res.CDROM = true
	case FormatRaw:
		if err := storage.Convert(ctx, tmp, "raw", dst, "qcow2"); err != nil {
			return nil, processingError(ctx, "converting the raw image to qcow2: %w", err)
		}
		res.Format = FormatQCOW2
		if res.SHA256, err = fileSHA256(dst); err != nil {
			return nil, processingError(ctx, "hashing the stored image: %w", err)
		}
		return res, statSize(dst, res)
	}
	if err := storage.Commit(tmp, dst); err != nil {
		return nil, processingError(ctx, "storing the image: %w", err)
	}
	return res, statSize(dst, res)
}

func statSize(path string, res *Result) error {
	fi, err := os.Stat(path)
	if err != nil {
		return transient(ReasonProcessingFailed, "%v", err)
	}
	res.StoredSize = fi.Size()
	return nil
}

func processingError(ctx context.Context, format string, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return transient(ReasonProcessingFailed, format, err)
}

// inspect detects the format of the file at path from its bytes, refuses unsupported and
// unsafe images, and checks it with qemu-img info (given the detected format).
func inspect(ctx context.Context, path string) (Format, *storage.ImageInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", nil, transient(ReasonProcessingFailed, "%v", err)
	}
	h, err := ReadHeader(f)
	f.Close()
	if err != nil {
		return "", nil, transient(ReasonProcessingFailed, "reading the image header: %v", err)
	}
	format := DetectFormat(h)
	if err := CheckSupported(format); err != nil {
		return "", nil, &Error{Reason: ReasonUnsupportedFormat, Err: err}
	}
	if len(h) == 0 {
		return "", nil, permanent(ReasonUnsupportedFormat, "the file is empty")
	}
	qf := "raw"
	if format == FormatQCOW2 {
		qf = "qcow2"
		if _, err := CheckQCOW2Header(h); err != nil {
			return "", nil, &Error{Reason: ReasonImageRejected, Err: err}
		}
	}
	info, err := storage.Info(ctx, path, qf)
	if err != nil {
		if ctx.Err() != nil {
			return "", nil, ctx.Err()
		}
		return "", nil, &Error{Reason: ReasonImageRejected, Err: fmt.Errorf("qemu-img cannot read the %s image: %w", format, err)}
	}
	if err := checkInfo(info, qf); err != nil {
		return "", nil, &Error{Reason: ReasonImageRejected, Err: err}
	}
	return format, info, nil
}

// checkInfo is the second line of defence after CheckQCOW2Header: what qemu-img reports.
func checkInfo(info *storage.ImageInfo, format string) error {
	switch {
	case info.Format != format:
		return fmt.Errorf("%w: qemu-img reads the file as %q, not %q", ErrUnsafeImage, info.Format, format)
	case info.BackingFile != "":
		return fmt.Errorf("%w: the image has a backing file; images must be self-contained", ErrUnsafeImage)
	case info.DataFile != "":
		return fmt.Errorf("%w: the image has an external data file; images must be self-contained", ErrUnsafeImage)
	case info.Encrypted:
		return fmt.Errorf("%w: encrypted images are not supported", ErrUnsafeImage)
	case info.FormatSpecific.Data.Corrupt:
		return fmt.Errorf("%w: the image is marked corrupt", ErrUnsafeImage)
	case strings.HasPrefix(info.BackingFile, "json:"):
		return fmt.Errorf("%w: json: file names are refused", ErrUnsafeImage)
	case info.VirtualSize <= 0:
		return fmt.Errorf("%w: the image has no virtual size", ErrUnsafeImage)
	}
	return nil
}

// CopyStored copies a stored image (src, whose status.format is srcFormat) to dst, for an
// image made from another image. The source was checked when it was imported.
func CopyStored(ctx context.Context, src string, srcFormat string, dst string) (*Result, error) {
	qf := storage.DriveFormat(srcFormat)
	if err := storage.Convert(ctx, src, qf, dst, qf); err != nil {
		return nil, processingError(ctx, "copying the image: %w", err)
	}
	return Describe(ctx, dst)
}

// Describe inspects a stored image file (e.g. one whose import finished just before a
// crash) and returns what an image's status says about it.
func Describe(ctx context.Context, path string) (*Result, error) {
	format, info, err := inspect(ctx, path)
	if err != nil {
		return nil, err
	}
	res := &Result{Format: format, CDROM: format == FormatISO, VirtualSize: info.VirtualSize}
	if res.SHA256, err = fileSHA256(path); err != nil {
		return nil, transient(ReasonProcessingFailed, "hashing %s: %v", path, err)
	}
	return res, statSize(path, res)
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(h, f, make([]byte, 1<<20)); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
