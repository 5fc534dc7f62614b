package images

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
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
	// ReasonImageTooLarge: the (decompressed) image exceeds the maximum unpacked size.
	ReasonImageTooLarge = "ImageTooLarge"
	// ReasonInsufficientStorage: the image store or pool ran out of space.
	ReasonInsufficientStorage = "InsufficientStorage"
	// ReasonUploadFailed: an upload was cut short or stalled.
	ReasonUploadFailed = "UploadFailed"
	// ReasonUploadTimeout: nobody uploaded the file in time.
	ReasonUploadTimeout = "UploadTimeout"
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
	Total int64
	// Unpacked is how many bytes were written so far (after decompression).
	Unpacked   int64
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
	// MaxUnpackedSize bounds the bytes an import writes (after decompression); default
	// DefaultMaxUnpackedSize.
	MaxUnpackedSize int64
	// Network decides which addresses the import may dial; nil: DefaultNetworkPolicy (set
	// by serve --allow-import-from). Not used with Transport.
	Network *NetworkPolicy
	// Space keeps the free-space reserve of the store's file system; nil:
	// DefaultSpaceGuard (set by serve --min-free-space).
	Space *SpaceGuard
}

// Result describes an image as stored.
type Result struct {
	// Format is the stored form: qcow2, or iso (a raw file attached as a CD-ROM).
	Format Format
	// SourceFormat is the format the file arrived in (e.g. vmdk), and Compression gzip or xz
	// when it arrived compressed.
	SourceFormat Format
	Compression  Format
	CDROM        bool
	VirtualSize  int64
	StoredSize   int64
	SHA256       string
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
	tr, closeIdle, err := opts.transport(src.CABundle)
	if err != nil {
		return nil, err
	}
	defer closeIdle()
	f, err := storage.TempFile(dst)
	if err != nil {
		return nil, transient(ReasonProcessingFailed, "creating a temporary file: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful commit tmp no longer exists
	in, err := download(ctx, tr, src, f, opts)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = transient(ReasonProcessingFailed, "writing the download: %w", cerr)
	}
	if err != nil {
		return nil, err
	}
	return store(ctx, tmp, dst, in, opts.spaceGuard())
}

// ImportStream stores the image read from body (an upload: total is its length, or -1) at
// dst, like ImportHTTP does with a download.
func ImportStream(ctx context.Context, body io.Reader, total int64, cs *v1alpha1.Checksum, dst string, opts Options) (*Result, error) {
	f, err := storage.TempFile(dst)
	if err != nil {
		return nil, transient(ReasonProcessingFailed, "creating a temporary file: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	in, err := ingest(ctx, source{body: body, total: total, checksum: cs, what: "the upload"}, f, opts)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = transient(ReasonProcessingFailed, "writing the upload: %w", cerr)
	}
	if err != nil {
		return nil, err
	}
	return store(ctx, tmp, dst, in, opts.spaceGuard())
}

// transport is the HTTP transport of an import from a source with caBundle: o.Transport,
// else a new one, whose idle connections closeIdle closes.
func (o Options) transport(caBundle string) (tr http.RoundTripper, closeIdle func(), err error) {
	if o.Transport != nil {
		return o.Transport, func() {}, nil
	}
	t, err := newTransport(caBundle, o.networkPolicy())
	if err != nil {
		return nil, nil, err
	}
	return t, t.CloseIdleConnections, nil
}

// newTransport is the HTTP transport of an import: it dials only what the policy allows.
func newTransport(caBundle string, policy *NetworkPolicy) (*http.Transport, error) {
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
	return &http.Transport{
		Proxy:                 policy.proxyFunc,
		DialContext:           policy.dialer(proxyAddrs()),
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

func download(ctx context.Context, tr http.RoundTripper, src HTTPSource, f *os.File, opts Options) (*ingested, error) {
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
		return nil, permanent(ReasonInvalidSource, "bad URL: %v", err)
	}
	req.Header.Set("User-Agent", "rakhsh-image-importer")
	resp, err := hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if e := refusal(err, src.URL); e != nil {
			return nil, e
		}
		return nil, transient(ReasonDownloadFailed, "downloading %s: %w", redact(src.URL), unwrapURLError(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		e := &Error{Reason: ReasonHTTPError, Err: fmt.Errorf("downloading %s: the server answered %s", redact(src.URL), resp.Status)}
		e.Transient = resp.StatusCode >= 500 || resp.StatusCode == http.StatusRequestTimeout || resp.StatusCode == http.StatusTooManyRequests
		return nil, e
	}
	body := newResumingBody(ctx, hc, req, resp)
	defer body.Close()
	return ingest(ctx, source{body: body, total: resp.ContentLength, checksum: src.Checksum,
		what: "downloading " + redact(src.URL), truncatedIsTransient: true, abort: cancel}, f, opts)
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

// store checks the received (and decompressed) file tmp and puts the stored form at dst: a
// qcow2 as it is, an ISO as it is (raw, CD-ROM), every other disk format converted to qcow2.
func store(ctx context.Context, tmp, dst string, in *ingested, space *SpaceGuard) (*Result, error) {
	format, info, err := inspect(ctx, tmp)
	if err != nil {
		if in.compression != "" {
			var ie *Error
			if errors.As(err, &ie) {
				ie.Err = fmt.Errorf("after %s decompression: %w", in.compression, ie.Err)
			}
		}
		return nil, err
	}
	if in.maxUnpacked > 0 && info.VirtualSize > in.maxUnpacked {
		return nil, permanent(ReasonImageTooLarge, "the image's virtual size %s (%d bytes) is over the maximum unpacked image size %s",
			HumanBytes(info.VirtualSize), info.VirtualSize, HumanBytes(in.maxUnpacked))
	}
	res := &Result{Format: format, SourceFormat: format, Compression: in.compression, VirtualSize: info.VirtualSize, SHA256: in.sha256}
	switch format {
	case FormatQCOW2:
		if in.compression == "" {
			break
		}
		// The digest of the stored file is not that of the compressed download.
		if res.SHA256, err = storage.FileSHA256(ctx, tmp); err != nil {
			return nil, processingError(ctx, "hashing the stored image: %w", err)
		}
	case FormatISO:
		res.CDROM = true
		if in.compression != "" {
			if res.SHA256, err = storage.FileSHA256(ctx, tmp); err != nil {
				return nil, processingError(ctx, "hashing the stored image: %w", err)
			}
		}
	default:
		err := guardedConvert(ctx, space, tmp, dst, func(ctx context.Context) error {
			return storage.Convert(ctx, tmp, qemuDriver(format), dst, "qcow2")
		})
		if err != nil {
			return nil, processingError(ctx, fmt.Sprintf("converting the %s image to qcow2: %%w", format), err)
		}
		res.Format = FormatQCOW2
		if res.SHA256, err = storage.FileSHA256(ctx, dst); err != nil {
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
	var se *SpaceError
	if errors.As(err, &se) {
		return transient(ReasonInsufficientStorage, "%v", se)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if IsNoSpace(err) {
		return transient(ReasonInsufficientStorage, "the image store is full (no space left on device): "+format, err)
	}
	return transient(ReasonProcessingFailed, format, err)
}

// IsNoSpace says whether err is (or a tool's message reports) a full file system.
func IsNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || strings.Contains(err.Error(), "No space left on device")
}

// inspect detects the format of the file at path from its bytes, refuses unsupported and
// unsafe images, and checks it with qemu-img info (always given the detected format).
func inspect(ctx context.Context, path string) (Format, *storage.ImageInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", nil, transient(ReasonProcessingFailed, "%v", err)
	}
	defer f.Close()
	h, err := ReadHeader(f)
	if err != nil {
		return "", nil, transient(ReasonProcessingFailed, "reading the image header: %v", err)
	}
	if len(h) == 0 {
		return "", nil, permanent(ReasonUnsupportedFormat, "the file is empty")
	}
	format := DetectFormat(h)
	if format == FormatRaw {
		fi, err := f.Stat()
		if err != nil {
			return "", nil, transient(ReasonProcessingFailed, "%v", err)
		}
		if isFixedVHD(f, fi.Size()) {
			format = FormatVHD
		}
	}
	if err := CheckSupported(format); err != nil {
		return "", nil, &Error{Reason: ReasonUnsupportedFormat, Err: err}
	}
	switch format {
	case FormatQCOW2:
		if _, err := CheckQCOW2Header(h); err != nil {
			return "", nil, &Error{Reason: ReasonImageRejected, Err: err}
		}
	case FormatVMDK:
		if err := CheckVMDK(f); err != nil {
			return "", nil, &Error{Reason: ReasonImageRejected, Err: err}
		}
	}
	qf := qemuDriver(format)
	info, err := storage.Info(ctx, path, qf)
	if err != nil {
		if ctx.Err() != nil {
			return "", nil, ctx.Err()
		}
		return "", nil, &Error{Reason: ReasonImageRejected, Err: fmt.Errorf("qemu-img cannot read the %s image: %w", format, err)}
	}
	if err := checkInfo(info, qf, path); err != nil {
		return "", nil, &Error{Reason: ReasonImageRejected, Err: err}
	}
	return format, info, nil
}

// qemuDriver is qemu's block driver name for a detected format.
func qemuDriver(f Format) string {
	switch f {
	case FormatISO, FormatRaw:
		return "raw"
	case FormatVHD:
		return "vpc"
	}
	return string(f)
}

// checkInfo is the second line of defence after the header checks: what qemu-img reports.
func checkInfo(info *storage.ImageInfo, format, path string) error {
	switch {
	case info.Format != format:
		return fmt.Errorf("%w: qemu-img reads the file as %q, not %q", ErrUnsafeImage, info.Format, format)
	case strings.HasPrefix(info.BackingFile, "json:") || strings.HasPrefix(info.Filename, "json:"):
		return fmt.Errorf("%w: json: file names are refused", ErrUnsafeImage)
	case info.BackingFile != "" || info.FullBackingFile != "":
		return fmt.Errorf("%w: the image has a backing file; images must be self-contained", ErrUnsafeImage)
	case info.DataFile != "":
		return fmt.Errorf("%w: the image has an external data file; images must be self-contained", ErrUnsafeImage)
	case info.Encrypted:
		return fmt.Errorf("%w: encrypted images are not supported", ErrUnsafeImage)
	case info.FormatSpecific.Data.Corrupt:
		return fmt.Errorf("%w: the image is marked corrupt", ErrUnsafeImage)
	case info.VirtualSize <= 0:
		return fmt.Errorf("%w: the image has no virtual size", ErrUnsafeImage)
	}
	for _, e := range info.FormatSpecific.Data.Extents {
		if e.Filename != path {
			return fmt.Errorf("%w: the VMDK has an extent in another file (%q); only single-file VMDKs are accepted", ErrUnsafeImage, e.Filename)
		}
	}
	return nil
}

// CopyStored copies a stored image (src, whose status.format is srcFormat) to dst, for an
// image made from another image. The source was checked when it was imported.
func CopyStored(ctx context.Context, src string, srcFormat string, dst string) (*Result, error) {
	qf := storage.DriveFormat(srcFormat)
	err := guardedConvert(ctx, DefaultSpaceGuard(), src, dst, func(ctx context.Context) error {
		return storage.Convert(ctx, src, qf, dst, qf)
	})
	if err != nil {
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
	res := &Result{Format: format, SourceFormat: format, CDROM: format == FormatISO, VirtualSize: info.VirtualSize}
	if res.SHA256, err = storage.FileSHA256(ctx, path); err != nil {
		return nil, transient(ReasonProcessingFailed, "hashing %s: %v", path, err)
	}
	return res, statSize(path, res)
}
