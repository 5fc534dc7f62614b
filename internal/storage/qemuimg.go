package storage

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// The qemu-img wrappers below run qemu-img with explicit arguments (never through a shell),
// always with -f (qemu-img never probes a format), under a context timeout and under resource
// limits. Go cannot set rlimits for one child only, so the child is started through
// util-linux prlimit(1), which sets the limits on itself and then execs qemu-img: the limits
// hold for qemu-img and nothing else, and killing the process on timeout kills qemu-img.
//
// Every function that writes a file writes a temporary file (TempPrefix...) in the
// destination's directory, syncs it and renames it into place, so a destination either does
// not exist or is complete; the temporary file is removed on failure. Temporary files left by
// a crash are removed with CleanTemp.

// Tool paths; tests and packagers may change them.
var (
	QemuImgPath = "qemu-img"
	PrlimitPath = "prlimit"
)

// Limits are the resource limits a qemu-img run gets.
type Limits struct {
	// CPUSeconds is RLIMIT_CPU; 0 means unlimited (the context timeout still applies).
	CPUSeconds int
	// AddressSpace is RLIMIT_AS in bytes; 0 means unlimited.
	AddressSpace int64
}

// Limits of each kind of run. Inspection and creation are cheap and are what a hostile image
// could make expensive (OpenStack caps `qemu-img info` at 30 s of CPU and 1 GiB); conversion
// is bounded by the caller's context instead of CPU time, since it is proportional to size.
var (
	InfoLimits    = Limits{CPUSeconds: 30, AddressSpace: 1 << 30}
	CreateLimits  = Limits{CPUSeconds: 30, AddressSpace: 1 << 30}
	ConvertLimits = Limits{AddressSpace: 2 << 30}
)

// Default timeouts, applied on top of the caller's context.
var (
	InfoTimeout   = 60 * time.Second
	CreateTimeout = 60 * time.Second
)

// TempPrefix starts the name of every temporary file the wrappers and importers write.
const TempPrefix = ".rakhsh-tmp-"

// ToolError is a failed run of an external tool, with the tail of its stderr.
type ToolError struct {
	Args   []string
	Err    error
	Stderr string
}

func (e *ToolError) Error() string {
	msg := fmt.Sprintf("%s: %v", strings.Join(e.Args, " "), e.Err)
	if e.Stderr != "" {
		msg += ": " + e.Stderr
	}
	return msg
}

func (e *ToolError) Unwrap() error { return e.Err }

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return strings.TrimSpace(string(t.b)) }

// limitedBuffer keeps at most max bytes and then fails writes.
type limitedBuffer struct {
	max int
	bytes.Buffer
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if l.Len()+len(p) > l.max {
		return 0, errors.New("output too large")
	}
	return l.Buffer.Write(p)
}

// runQemuImg runs qemu-img args under lim and returns its standard output.
func runQemuImg(ctx context.Context, lim Limits, timeout time.Duration, args ...string) ([]byte, error) {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	prl, err := exec.LookPath(PrlimitPath)
	if err != nil {
		return nil, fmt.Errorf("prlimit (util-linux) is needed to run qemu-img under resource limits: %w", err)
	}
	qi, err := exec.LookPath(QemuImgPath)
	if err != nil {
		return nil, fmt.Errorf("qemu-img (Debian package qemu-utils) is needed: %w", err)
	}
	full := []string{}
	if lim.CPUSeconds > 0 {
		full = append(full, "--cpu="+strconv.Itoa(lim.CPUSeconds))
	}
	if lim.AddressSpace > 0 {
		full = append(full, "--as="+strconv.FormatInt(lim.AddressSpace, 10))
	}
	full = append(full, "--", qi)
	full = append(full, args...)
	cmd := exec.CommandContext(ctx, prl, full...)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"}
	stdout := &limitedBuffer{max: 4 << 20}
	stderr := &tailBuffer{max: 2048}
	cmd.Stdout = stdout
	cmd.Stderr = stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return nil, &ToolError{Args: append([]string{"qemu-img"}, args...), Err: err, Stderr: stderr.String()}
	}
	return stdout.Bytes(), nil
}

// ImageInfo is what `qemu-img info` says about an image.
type ImageInfo struct {
	Filename    string `json:"filename"`
	Format      string `json:"format"`
	VirtualSize int64  `json:"virtual-size"`
	ActualSize  int64  `json:"actual-size"`
	// BackingFile is the backing file named in the image header, if any.
	BackingFile     string `json:"backing-filename"`
	BackingFormat   string `json:"backing-filename-format"`
	FullBackingFile string `json:"full-backing-filename"`
	DirtyFlag       bool   `json:"dirty-flag"`
	// DataFile is the external data file of a qcow2 image, if any.
	DataFile string `json:"-"`
	// Encrypted is true for an encrypted image.
	Encrypted      bool `json:"encrypted"`
	FormatSpecific struct {
		Type string `json:"type"`
		Data struct {
			DataFile string `json:"data-file"`
			Corrupt  bool   `json:"corrupt"`
			// Extents are a VMDK's data files (a single-file VMDK has one: itself).
			Extents []struct {
				Filename string `json:"filename"`
			} `json:"extents"`
		} `json:"data"`
	} `json:"format-specific"`
}

// checkFormat refuses format names that are not plain words (they become arguments).
func checkFormat(f string) error {
	switch f {
	case "qcow2", "raw":
		return nil
	}
	return fmt.Errorf("image format %q is not supported (qcow2 or raw)", f)
}

// checkSourceFormat refuses source format names other than the disk formats Rakhsh imports
// (qemu driver names: vpc is VHD).
func checkSourceFormat(f string) error {
	switch f {
	case "qcow2", "raw", "vmdk", "vdi", "vpc", "vhdx":
		return nil
	}
	return fmt.Errorf("image format %q is not supported (qcow2, raw, vmdk, vdi, vpc or vhdx)", f)
}

// Info inspects path as format (always explicit: qemu-img never probes).
func Info(ctx context.Context, path, format string) (*ImageInfo, error) {
	if err := checkSourceFormat(format); err != nil {
		return nil, err
	}
	return qemuImgInfo(ctx, path, "-f", format)
}

// InfoShared is Info for an image another process (a running VM) may have open for
// writing: qemu-img reads it without taking the image lock (-U). What it reports may be a
// moment old; it is used to read the virtual size of a disk a VM grows.
func InfoShared(ctx context.Context, path, format string) (*ImageInfo, error) {
	if err := checkFormat(format); err != nil {
		return nil, err
	}
	return qemuImgInfo(ctx, path, "-U", "-f", format)
}

// qemuImgInfo runs qemu-img info with opts on the absolute path and decodes its report.
func qemuImgInfo(ctx context.Context, path string, opts ...string) (*ImageInfo, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("image path %q must be absolute", path)
	}
	args := append(append([]string{"info"}, opts...), "--output=json", path)
	out, err := runQemuImg(ctx, InfoLimits, InfoTimeout, args...)
	if err != nil {
		return nil, err
	}
	var info ImageInfo
	if err := json.Unmarshal(out, &info); err != nil {
		return nil, fmt.Errorf("qemu-img info %s: decoding output: %w", path, err)
	}
	info.DataFile = info.FormatSpecific.Data.DataFile
	return &info, nil
}

// IsLocked says whether a qemu-img error is QEMU's image lock: another process (a running
// VM) has the image open for writing.
func IsLocked(err error) bool {
	return err != nil && strings.Contains(err.Error(), "lock")
}

// RoundSize rounds a disk size up to a whole 512-byte sector.
func RoundSize(n int64) int64 { return (n + 511) &^ 511 }

// CreateBlank creates a qcow2 image of sizeBytes at path.
func CreateBlank(ctx context.Context, path string, sizeBytes int64) error {
	if sizeBytes <= 0 {
		return fmt.Errorf("disk size %d must be positive", sizeBytes)
	}
	return writeAtomically(path, func(tmp string) error {
		_, err := runQemuImg(ctx, CreateLimits, CreateTimeout, "create", "-q", "-f", "qcow2", tmp,
			strconv.FormatInt(RoundSize(sizeBytes), 10))
		return err
	})
}

// CreateLinkedClone creates at path a qcow2 overlay of sizeBytes over the read-only
// backingPath (of backingFormat, qcow2 or raw). It takes constant time whatever the size of
// the backing image (and of the overlay). The backing path is stored in the overlay, so it must be absolute and
// must not move.
func CreateLinkedClone(ctx context.Context, path, backingPath, backingFormat string, sizeBytes int64) error {
	if err := checkSizedImage("backing", backingPath, backingFormat, sizeBytes); err != nil {
		return err
	}
	if fi, err := os.Stat(backingPath); err != nil {
		return fmt.Errorf("backing file: %w", err)
	} else if !fi.Mode().IsRegular() {
		return fmt.Errorf("backing file %s is not a regular file", backingPath)
	}
	// The overlay is written in-process (qcow2create.go): a qemu-img process start would cost
	// more than the whole clone. The backing file is not opened; the caller names a checked
	// image and its format.
	return writeAtomically(path, func(tmp string) error {
		return writeQCOW2Overlay(tmp, backingPath, backingFormat, RoundSize(sizeBytes))
	})
}

// checkSizedImage checks the arguments of an operation on an image of a size: format is
// one checkFormat accepts, path (named as the what path) is absolute and sizeBytes is positive.
func checkSizedImage(what, path, format string, sizeBytes int64) error {
	if err := checkFormat(format); err != nil {
		return err
	}
	if !filepath.IsAbs(path) {
		return fmt.Errorf("%s path %q must be absolute", what, path)
	}
	if sizeBytes <= 0 {
		return fmt.Errorf("disk size %d must be positive", sizeBytes)
	}
	return nil
}

// Convert copies src (of srcFmt) into a new image dst of dstFmt.
func Convert(ctx context.Context, src, srcFmt, dst, dstFmt string) error {
	return ConvertResize(ctx, src, srcFmt, dst, dstFmt, 0)
}

// ConvertResize is Convert that then grows the new image to sizeBytes (0: keep the size)
// before it appears at dst.
func ConvertResize(ctx context.Context, src, srcFmt, dst, dstFmt string, sizeBytes int64) error {
	if err := checkSourceFormat(srcFmt); err != nil {
		return err
	}
	if err := checkFormat(dstFmt); err != nil {
		return err
	}
	if !filepath.IsAbs(src) {
		return fmt.Errorf("source path %q must be absolute", src)
	}
	source := []string{"-f", srcFmt, src}
	if srcFmt == "qcow2" || srcFmt == "raw" {
		// A stored file: its backing chain is checked here and pinned, so qemu-img opens
		// exactly the files checked, whatever a header says.
		name, err := pinned(src, srcFmt)
		if err != nil {
			return err
		}
		source = []string{name}
	}
	return writeAtomically(dst, func(tmp string) error {
		// -n is not used: qemu-img creates the target itself. Without -S, zero runs are skipped
		// (the default minimum sparse size of 4 KiB), so sparse sources stay sparse.
		args := append(append([]string{"convert", "-q"}, source...), "-O", dstFmt, tmp)
		if _, err := runQemuImg(ctx, ConvertLimits, 0, args...); err != nil {
			return err
		}
		if sizeBytes > 0 {
			return resize(ctx, tmp, dstFmt, sizeBytes)
		}
		return nil
	})
}

// Resize grows the image at path (of format qcow2 or raw), which no process has open, to
// sizeBytes. It never shrinks: qemu-img refuses a smaller size without --shrink.
func Resize(ctx context.Context, path, format string, sizeBytes int64) error {
	if err := checkSizedImage("image", path, format, sizeBytes); err != nil {
		return err
	}
	name, err := pinned(path, format)
	if err != nil {
		return err
	}
	_, err = runQemuImg(ctx, CreateLimits, CreateTimeout, "resize", "-q", name,
		strconv.FormatInt(RoundSize(sizeBytes), 10))
	return err
}

// resize grows an image that this process has just written (so has no backing file) to
// sizeBytes.
func resize(ctx context.Context, path, format string, sizeBytes int64) error {
	_, err := runQemuImg(ctx, CreateLimits, CreateTimeout, "resize", "-q", "-f", format, path,
		strconv.FormatInt(RoundSize(sizeBytes), 10))
	return err
}

// pinned checks the backing chain of path (CheckChain) and returns the json: name that
// opens exactly that chain.
func pinned(path, format string) (string, error) {
	chain, err := CheckChain(path, format)
	if err != nil {
		return "", err
	}
	return pinnedName(chain)
}

// TempFile creates an empty temporary file beside dst for a writer that commits it with
// Commit.
func TempFile(dst string) (*os.File, error) {
	dir := filepath.Dir(dst)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return os.CreateTemp(dir, TempPrefix+filepath.Base(dst)+"-*")
}

// Commit syncs tmp and renames it to dst, then syncs the directory.
func Commit(tmp, dst string) error {
	f, err := os.OpenFile(tmp, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("syncing %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		return err
	}
	_ = SyncDir(filepath.Dir(dst))
	return nil
}

// writeAtomically runs write on a temporary path beside dst and commits it to dst.
func writeAtomically(dst string, write func(tmp string) error) error {
	if !filepath.IsAbs(dst) {
		return fmt.Errorf("destination path %q must be absolute", dst)
	}
	f, err := TempFile(dst)
	if err != nil {
		return err
	}
	tmp := f.Name()
	f.Close()
	if err := write(tmp); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := Commit(tmp, dst); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// CleanTemp removes the temporary files that writers left in dir (after a crash). Call it
// when no writer runs in dir.
func CleanTemp(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	var first error
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), TempPrefix) && e.Type().IsRegular() {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && first == nil {
				first = err
			}
		}
	}
	return first
}

// CleanTempFor removes the temporary files of one destination path (an interrupted write of
// it), leaving other writers' files alone.
func CleanTempFor(dst string) {
	matches, _ := filepath.Glob(filepath.Join(filepath.Dir(dst), TempPrefix+filepath.Base(dst)+"-*"))
	for _, m := range matches {
		os.Remove(m)
	}
}

// DriveFormat is the qemu format of an image file whose status.format is statusFormat: an
// ISO is stored as a raw file (and attached as a CD-ROM).
func DriveFormat(statusFormat string) string {
	if statusFormat == "iso" {
		return "raw"
	}
	return statusFormat
}

// Compare checks that the qcow2 images a and b (each with its checked backing chain) have
// the same virtual size and hold the same guest-visible data; a difference is an error.
func Compare(ctx context.Context, a, b string) error {
	ia, err := Info(ctx, a, "qcow2")
	if err != nil {
		return err
	}
	ib, err := Info(ctx, b, "qcow2")
	if err != nil {
		return err
	}
	if ia.VirtualSize != ib.VirtualSize {
		return fmt.Errorf("%s has %d bytes, %s %d", b, ib.VirtualSize, a, ia.VirtualSize)
	}
	na, err := pinned(a, "qcow2")
	if err != nil {
		return err
	}
	nb, err := pinned(b, "qcow2")
	if err != nil {
		return err
	}
	if _, err := runQemuImg(ctx, ConvertLimits, 0, "compare", "-q", na, nb); err != nil {
		return fmt.Errorf("the images differ or could not be compared: %w", err)
	}
	return nil
}
