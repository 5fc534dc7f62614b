package images

import (
	"bufio"
	"compress/gzip"
	"context"
	"crypto/md5"  //nolint:gosec // checksums given by the operator
	"crypto/sha1" //nolint:gosec // idem
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// DefaultMaxUnpackedSize bounds what an import may write to the store when Options does not
// say: the decompressed bytes of a compressed file, or the file itself (and the image's
// virtual size). 128 GiB is above the 127 GiB virtual disk of Windows images made for
// Hyper-V and Azure and far above cloud images (2-20 GiB); a larger bound mostly lets a
// decompression bomb run longer. Operators with bigger images raise it (--max-image-size).
const DefaultMaxUnpackedSize int64 = 128 << 30

// XzPath is the xz (xz-utils) binary that decompresses .xz images.
var XzPath = "xz"

// XzMemLimit bounds the memory xz may use to decompress one image. xz -9 needs 65 MiB of
// dictionary; a hostile header asking for more is refused by xz instead of allocated.
const XzMemLimit = 256 << 20

// ErrTooLarge says an import wrote more than the maximum unpacked size.
var ErrTooLarge = errors.New("the image is larger than the maximum unpacked size")

// source is a stream to ingest: an HTTP response body or an uploaded request body.
type source struct {
	body io.Reader
	// total is the body's length, or -1 when unknown.
	total    int64
	checksum *v1alpha1.Checksum
	// what names the source in messages ("downloading https://...", "the upload").
	what string
	// truncatedIsTransient says a short body may succeed when tried again (a download) rather
	// than being the user's mistake (an upload that was cut).
	truncatedIsTransient bool
	// abort, when set, is called when the transfer stalls, to end the request a blocked read
	// of body waits on (the cancel of the request's context).
	abort context.CancelCauseFunc
}

// ingested is what ingest learnt about a stream.
type ingested struct {
	sha256 string
	// compression is gzip or xz when the stream was decompressed, else "".
	compression Format
	received    int64
	unpacked    int64
	// maxUnpacked is the bound the import ran with; store applies it to the virtual size
	// too, so a qcow2 or VMDK that expands when converted or used is refused as well.
	maxUnpacked int64
}

// ingest copies src into f once: it hashes the bytes as they arrive (the checksums apply to
// the file as published), decompresses a gzip or xz stream on the way, refuses to write more
// than the maximum unpacked size, reports progress and aborts a stalled transfer. Memory use
// does not depend on the size of the stream.
func ingest(ctx context.Context, src source, f *os.File, opts Options) (*ingested, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	sums := []*checksum{}
	sha := sha256.New()
	if c := src.checksum; c != nil {
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
	hashes := []io.Writer{sha}
	for _, s := range sums {
		if s.h != nil {
			hashes = append(hashes, s.h)
		}
	}
	var received, unpacked, lastRead atomic.Int64
	start := time.Now()
	lastRead.Store(start.UnixNano())
	hashes = append(hashes, &countWriter{n: &received, last: &lastRead})
	// The body is read through ctxReader so that a stall or a cancel ends a blocked read.
	raw := io.TeeReader(&ctxReader{ctx: ctx, r: src.body}, io.MultiWriter(hashes...))

	stall := opts.StallTimeout
	if stall <= 0 {
		stall = DefaultStallTimeout
	}
	interval := opts.ProgressInterval
	if interval <= 0 {
		interval = time.Second
	}
	progress := func(prevBytes int64, prevTime time.Time) Progress {
		now := time.Now()
		n := received.Load()
		p := Progress{Received: n, Total: src.total, Unpacked: unpacked.Load()}
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
					cause := fmt.Errorf("nothing received for %s", stall)
					cancel(cause)
					if src.abort != nil {
						src.abort(cause)
					}
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

	max := opts.MaxUnpackedSize
	if max <= 0 {
		max = DefaultMaxUnpackedSize
	}
	res := &ingested{maxUnpacked: max}
	br := bufio.NewReaderSize(raw, 1<<20)
	magic, _ := br.Peek(6)
	res.compression = DetectFormat(magic)
	// The published length is what this import expects to write at least (a compressed
	// file unpacks to more): it must fit above the free-space reserve before anything is
	// written, and stays claimed against other imports while this one runs.
	space, err := opts.spaceGuard().Reserve(filepath.Dir(f.Name()), min(max, src.total))
	if err != nil {
		close(done)
		<-watcherDone
		return nil, transient(ReasonInsufficientStorage, "%s: %v", src.what, err)
	}
	defer space.Release()
	out := &imageWriter{f: f, max: max, n: &unpacked, space: space}
	switch res.compression {
	case FormatGzip:
		err = gunzip(br, out)
	case FormatXz:
		err = unxz(ctx, br, out)
	default:
		res.compression = ""
		_, err = io.CopyBuffer(out, br, make([]byte, 1<<20))
	}
	if err == nil && res.compression != "" {
		// Whatever follows the compressed stream is still part of the published file: hash it.
		_, err = io.Copy(io.Discard, br)
	}
	if err == nil {
		if ferr := out.finish(); ferr != nil {
			err = &writeError{ferr}
		}
	}
	close(done)
	<-watcherDone
	res.received, res.unpacked = received.Load(), unpacked.Load()
	if err != nil {
		return nil, ingestError(ctx, src, res, err)
	}
	if src.total >= 0 && res.received != src.total {
		return nil, truncated(src, res)
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
			return nil, permanent(ReasonChecksumMismatch, "the %s of the %s file is %s, not the %s the checksum asks for", s.name, src.noun(), got, s.want)
		}
	}
	res.sha256 = shaHex
	return res, nil
}

func (s source) noun() string {
	if s.truncatedIsTransient {
		return "downloaded"
	}
	return "uploaded"
}

func truncated(src source, res *ingested) error {
	e := &Error{Reason: ReasonDownloadFailed, Transient: src.truncatedIsTransient,
		Err: fmt.Errorf("%s: got %d bytes of %d", src.what, res.received, src.total)}
	if !src.truncatedIsTransient {
		e.Reason = ReasonUploadFailed
	}
	return e
}

// ingestError classifies a failed copy.
func ingestError(ctx context.Context, src source, res *ingested, err error) error {
	var ie *Error
	switch {
	case errors.As(err, &ie):
		return err
	case errors.Is(err, ErrTooLarge):
		return permanent(ReasonImageTooLarge, "%s: %v", src.what, err)
	case errors.As(err, new(*SpaceError)):
		return transient(ReasonInsufficientStorage, "%s: %v", src.what, err)
	case errors.As(err, new(*RefusedError)):
		var re *RefusedError
		errors.As(err, &re)
		return permanent(ReasonImportRefused, "%s refused: %v", src.what, re)
	case errors.Is(err, syscall.ENOSPC):
		return transient(ReasonInsufficientStorage, "%s: the image store is full (no space left on device)", src.what)
	}
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		e := transient(ReasonDownloadFailed, "%s: %v", src.what, cause)
		if !src.truncatedIsTransient {
			e.Reason, e.Transient = ReasonUploadFailed, false
		}
		return e
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var de *decompressError
	if errors.As(err, &de) {
		// A complete body that does not decompress is a broken file; a body cut short may be
		// the network.
		if src.total < 0 || res.received >= src.total {
			return permanent(ReasonImageRejected, "%s: the %s stream is corrupt: %v", src.what, de.format, de.err)
		}
		return truncated(src, res)
	}
	e := transient(ReasonDownloadFailed, "%s after %d bytes: %w", src.what, res.received, err)
	if !src.truncatedIsTransient {
		e.Reason, e.Transient = ReasonUploadFailed, false
	}
	return e
}

type decompressError struct {
	format Format
	err    error
}

func (e *decompressError) Error() string { return fmt.Sprintf("%s: %v", e.format, e.err) }
func (e *decompressError) Unwrap() error { return e.err }

// gunzip decompresses a (multi-member) gzip stream from r into w.
func gunzip(r io.Reader, w io.Writer) error {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return &decompressError{format: FormatGzip, err: err}
	}
	_, err = io.CopyBuffer(w, zr, make([]byte, 1<<20))
	if err != nil && !isWriteError(err) {
		return &decompressError{format: FormatGzip, err: err}
	}
	return err
}

// unxz decompresses an xz stream from r into w with xz-utils, under a memory limit (a
// hostile header cannot make it allocate a huge dictionary) and without a shell.
func unxz(ctx context.Context, r io.Reader, w io.Writer) error {
	xz, err := exec.LookPath(XzPath)
	if err != nil {
		return permanent(ReasonProcessingFailed, "xz (Debian package xz-utils) is needed to import .xz images: %v", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd := exec.CommandContext(ctx, xz, "--decompress", "--stdout", "--single-stream", "--quiet",
		"--memlimit-decompress="+strconv.Itoa(XzMemLimit))
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C"}
	stderr := &strings.Builder{}
	cmd.Stderr = stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return err
	}
	feedErr := make(chan error, 1)
	go func() {
		// --single-stream: xz stops reading after the first stream; what it does not read is
		// hashed by the caller.
		_, err := io.CopyBuffer(stdin, r, make([]byte, 1<<20))
		stdin.Close()
		feedErr <- err
	}()
	_, copyErr := io.CopyBuffer(w, stdout, make([]byte, 1<<20))
	if copyErr != nil {
		cancel()
	}
	waitErr := cmd.Wait()
	fe := <-feedErr
	switch {
	case copyErr != nil:
		return copyErr
	case fe != nil && !errors.Is(fe, syscall.EPIPE) && !errors.Is(fe, os.ErrClosed):
		return fe
	case waitErr != nil:
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = waitErr.Error()
		}
		return &decompressError{format: FormatXz, err: errors.New(msg)}
	}
	return nil
}

// writeError marks errors of the destination writer, so that they are not taken for a
// corrupt compressed stream.
type writeError struct{ err error }

func (e *writeError) Error() string { return e.err.Error() }
func (e *writeError) Unwrap() error { return e.err }

func isWriteError(err error) bool {
	var we *writeError
	return errors.As(err, &we)
}

// ctxReader ends reads once ctx is done (a blocked read of a network body returns when its
// connection is closed by the cancel).
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
