package storage

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
)

// ErrUnsafeChain is wrapped by the errors of a stored file whose backing chain leaves the
// files Rakhsh made: such a file is never given to qemu-img.
var ErrUnsafeChain = errors.New("unsafe backing chain")

// Link is one file of a checked backing chain.
type Link struct {
	Path   string
	Format string // qcow2 or raw
}

// maxChain bounds a backing chain: a linked clone of an image is two files, a disk made from a
// linked clone's snapshot a few more.
const maxChain = 16

var (
	// Where a backing file of a stored disk may live, relative to the data dir: an imported
	// image, an agent's cached copy of one, or another disk.
	backingImageRe = regexp.MustCompile(`^images/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	backingCacheRe = regexp.MustCompile(`^pools/[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/cache/[0-9a-f]{64}$`)
	backingDiskRe  = regexp.MustCompile(`^pools/[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/disks/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.qcow2$`)
	// A stored disk, whose path says which data dir its chain must stay in.
	storedDiskRe = regexp.MustCompile(`^(.+)/pools/[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/disks/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.qcow2$`)
)

var (
	// A disk of a storage class directory, and the backing files it may have there: the
	// class's disks and its content-addressed image copies.
	classDiskRe  = regexp.MustCompile(`^disks/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.qcow2$`)
	classImageRe = regexp.MustCompile(`^images/sha256-[0-9a-f]{64}$`)

	classDirsMu sync.RWMutex
	classDirs   = map[string]string{} // storage class directory -> the data dir its disks may also back onto
)

// RegisterClassDir makes the directory of a storage class (a Shared class's path, a Local
// class's own path) a place whose disks CheckChain accepts: a disk classDir/disks/UID.qcow2
// may then have backing files among the class's disks and image copies
// (classDir/images/sha256-HEX) and among the images, cached images and disks of dataDir.
// A process registers the class directories it works in; the set only grows.
func RegisterClassDir(classDir, dataDir string) {
	if !filepath.IsAbs(classDir) || !filepath.IsAbs(dataDir) {
		return
	}
	classDirsMu.Lock()
	classDirs[filepath.Clean(classDir)] = filepath.Clean(dataDir)
	classDirsMu.Unlock()
}

// classDiskOf says whether path is a disk of a registered class directory, and which.
func classDiskOf(path string) (classDir, dataDir string, ok bool) {
	disks := filepath.Dir(path)
	cd := filepath.Dir(disks)
	rel, err := filepath.Rel(cd, path)
	if err != nil || !classDiskRe.MatchString(rel) {
		return "", "", false
	}
	classDirsMu.RLock()
	dd, ok := classDirs[cd]
	classDirsMu.RUnlock()
	return cd, dd, ok
}

// CheckChain reads the qcow2 headers of path and of its backing files itself, without
// qemu-img, and returns the chain: path first, then each backing file. A chain is accepted
// only if every backing file is a regular file (not a symlink) that Rakhsh made in the same
// data dir as path (an image, a cached image or a disk, named by the layout in paths.go),
// every qcow2 names its backing format (qcow2 or raw), and no file has an external data file
// or an encryption method. A file that is not a stored disk (an image, a staged upload) may
// have no backing file at all. What a header names is thus never opened unchecked: a planted
// or edited header cannot make qemu-img read a host file.
func CheckChain(path, format string) ([]Link, error) {
	if format != "qcow2" && format != "raw" {
		return nil, fmt.Errorf("image format %q is not qcow2 or raw", format)
	}
	if !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return nil, fmt.Errorf("image path %q must be absolute and clean", path)
	}
	dataDir, classDir := "", ""
	if m := storedDiskRe.FindStringSubmatch(path); m != nil {
		dataDir = m[1]
	} else if cd, dd, ok := classDiskOf(path); ok {
		dataDir, classDir = dd, cd
	}
	chain := []Link{{Path: path, Format: format}}
	for cur := chain[0]; cur.Format == "qcow2"; {
		h, err := readQCOW2Header(cur.Path)
		if err != nil {
			return nil, err
		}
		if h.backing == "" {
			break
		}
		if dataDir == "" {
			return nil, fmt.Errorf("%w: %s has a backing file (%q), and only a stored disk may have one", ErrUnsafeChain, cur.Path, h.backing)
		}
		if len(chain) == maxChain {
			return nil, fmt.Errorf("%w: %s has more than %d files in its backing chain", ErrUnsafeChain, path, maxChain)
		}
		next, err := checkBacking(dataDir, classDir, cur.Path, h)
		if err != nil {
			return nil, err
		}
		chain = append(chain, next)
		cur = next
	}
	return chain, nil
}

// checkBacking checks the backing file that the header h of file names.
func checkBacking(dataDir, classDir, file string, h *qcow2Header) (Link, error) {
	b := h.backing
	if !filepath.IsAbs(b) || filepath.Clean(b) != b || strings.ContainsAny(b, "\x00") {
		return Link{}, fmt.Errorf("%w: the backing file %q of %s is not an absolute, clean path", ErrUnsafeChain, b, file)
	}
	rel, err := filepath.Rel(dataDir, b)
	inData := err == nil && (backingImageRe.MatchString(rel) || backingCacheRe.MatchString(rel) || backingDiskRe.MatchString(rel))
	inClass := false
	if classDir != "" {
		rel, err := filepath.Rel(classDir, b)
		inClass = err == nil && (classImageRe.MatchString(rel) || classDiskRe.MatchString(rel))
	}
	if !inData && !inClass {
		where := "the data dir " + dataDir
		if classDir != "" {
			where += " or the storage class directory " + classDir
		}
		return Link{}, fmt.Errorf("%w: the backing file %q of %s is not an image, cached image or disk in %s", ErrUnsafeChain, b, file, where)
	}
	if b == file {
		return Link{}, fmt.Errorf("%w: %s is its own backing file", ErrUnsafeChain, file)
	}
	fi, err := os.Lstat(b)
	if err != nil {
		return Link{}, fmt.Errorf("%w: the backing file of %s: %v", ErrUnsafeChain, file, err)
	}
	if !fi.Mode().IsRegular() {
		return Link{}, fmt.Errorf("%w: the backing file %s of %s is not a regular file", ErrUnsafeChain, b, file)
	}
	if h.backingFormat != "qcow2" && h.backingFormat != "raw" {
		return Link{}, fmt.Errorf("%w: %s names backing format %q (qcow2 or raw must be named)", ErrUnsafeChain, file, h.backingFormat)
	}
	return Link{Path: b, Format: h.backingFormat}, nil
}

type qcow2Header struct {
	backing       string
	backingFormat string
}

// readQCOW2Header reads what CheckChain needs from the first cluster of a qcow2 file.
func readQCOW2Header(path string) (*qcow2Header, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	n, err := io.ReadFull(f, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return nil, fmt.Errorf("reading the header of %s: %w", path, err)
	}
	return parseQCOW2Header(path, buf[:n])
}

func parseQCOW2Header(path string, h []byte) (*qcow2Header, error) {
	be := binary.BigEndian
	if len(h) < 72 || string(h[:4]) != "QFI\xfb" {
		return nil, fmt.Errorf("%w: %s is not a qcow2 file", ErrUnsafeChain, path)
	}
	version := be.Uint32(h[4:])
	if version != 2 && version != 3 {
		return nil, fmt.Errorf("%w: %s is qcow2 version %d", ErrUnsafeChain, path, version)
	}
	if be.Uint32(h[32:]) != 0 {
		return nil, fmt.Errorf("%w: %s is encrypted", ErrUnsafeChain, path)
	}
	out := &qcow2Header{}
	boff, blen := be.Uint64(h[8:]), uint64(be.Uint32(h[16:]))
	if blen > 1023 || (blen > 0 && (boff > uint64(len(h)) || boff+blen > uint64(len(h)))) {
		return nil, fmt.Errorf("%w: the backing file name of %s lies outside its first cluster", ErrUnsafeChain, path)
	}
	if blen > 0 {
		out.backing = string(h[boff : boff+blen])
	}
	if version == 2 {
		return out, nil
	}
	if len(h) < 104 {
		return nil, fmt.Errorf("%w: %s has a truncated qcow2 v3 header", ErrUnsafeChain, path)
	}
	if be.Uint64(h[72:])&(1<<2) != 0 {
		return nil, fmt.Errorf("%w: %s has an external data file", ErrUnsafeChain, path)
	}
	off := uint64(be.Uint32(h[100:]))
	for range 64 {
		if off+8 > uint64(len(h)) {
			return nil, fmt.Errorf("%w: the header extensions of %s are truncated", ErrUnsafeChain, path)
		}
		typ, ln := be.Uint32(h[off:]), uint64(be.Uint32(h[off+4:]))
		if typ == 0 {
			return out, nil
		}
		if off+8+ln > uint64(len(h)) {
			return nil, fmt.Errorf("%w: a header extension of %s is truncated", ErrUnsafeChain, path)
		}
		switch typ {
		case 0xE2792ACA: // backing file format name
			out.backingFormat = string(h[off+8 : off+8+ln])
		case 0x44415441: // external data file name
			return nil, fmt.Errorf("%w: %s names an external data file", ErrUnsafeChain, path)
		}
		off += 8 + (ln+7)&^7
	}
	return nil, fmt.Errorf("%w: %s has too many header extensions", ErrUnsafeChain, path)
}

// pinnedName is a qemu `json:` file name that opens a checked chain exactly as given: each
// file by name with its format, and no backing file after the last one, whatever the headers
// say.
func pinnedName(chain []Link) (string, error) {
	var node map[string]any
	for i := len(chain) - 1; i >= 0; i-- {
		n := map[string]any{"driver": chain[i].Format, "file": map[string]any{"driver": "file", "filename": chain[i].Path}}
		if chain[i].Format == "qcow2" {
			if node == nil {
				n["backing"] = nil
			} else {
				n["backing"] = node
			}
		}
		node = n
	}
	b, err := json.Marshal(node)
	if err != nil {
		return "", err
	}
	return "json:" + string(b), nil
}

// BackingFile is the backing file the qcow2 file at path names ("" for none), made absolute
// against path's directory; it reads only the header.
func BackingFile(path string) (string, error) {
	h, err := readQCOW2Header(path)
	if err != nil {
		return "", err
	}
	b := h.backing
	if b == "" {
		return "", nil
	}
	if !filepath.IsAbs(b) {
		b = filepath.Join(filepath.Dir(path), b)
	}
	return filepath.Clean(b), nil
}
