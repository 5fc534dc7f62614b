package storage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"syscall"
)

// contentMu serialises the links and releases of content names (one process, the image
// controller's, owns the image store).
var contentMu sync.Mutex

var sha256HexRe = regexp.MustCompile(`^[0-9a-f]{64}$`)

// IsSHA256Hex says whether s is a lower-case hex SHA-256 digest, as status.sha256 holds; only
// such a digest may become part of a path or a header.
func IsSHA256Hex(s string) bool { return sha256HexRe.MatchString(s) }

// ContentPath is the content-addressed name of a stored image file:
// DATA-DIR/images/sha256/HEX. It is a hard link to the file of every image with that
// content (DATA-DIR/images/UID), so images of equal content share one copy on disk.
func ContentPath(dataDir, sha256Hex string) string {
	return filepath.Join(dataDir, "images", "sha256", sha256Hex)
}

// LinkContent gives the freshly stored image file at path its content-addressed name. When a
// file of the same content is already stored, path is replaced (atomically, by rename) by a
// hard link to it and the new copy's space is freed; shared says so. Call it before anything
// refers to path: the content is the same, but the inode changes.
func LinkContent(dataDir, path, sha256Hex string) (shared bool, err error) {
	if !IsSHA256Hex(sha256Hex) {
		return false, fmt.Errorf("sha256 %q is not a hex digest", sha256Hex)
	}
	contentMu.Lock()
	defer contentMu.Unlock()
	cp := ContentPath(dataDir, sha256Hex)
	if err := os.MkdirAll(filepath.Dir(cp), 0o700); err != nil {
		return false, err
	}
	mine, err := os.Stat(path)
	if err != nil {
		return false, err
	}
	if have, err := os.Stat(cp); err == nil {
		if os.SameFile(have, mine) {
			return false, nil
		}
		if have.Size() != mine.Size() {
			return false, fmt.Errorf("%s has %d bytes, but the stored file of the same sha256 has %d", path, mine.Size(), have.Size())
		}
		tmp := filepath.Join(filepath.Dir(path), TempPrefix+filepath.Base(path)+"-link")
		os.Remove(tmp)
		if err := os.Link(cp, tmp); err != nil {
			return false, err
		}
		if err := os.Rename(tmp, path); err != nil {
			os.Remove(tmp)
			return false, err
		}
		return true, SyncDir(filepath.Dir(path))
	}
	if err := os.Link(path, cp); err != nil && !errors.Is(err, os.ErrExist) {
		return false, err
	}
	return false, SyncDir(filepath.Dir(cp))
}

// ReleaseContent removes the content-addressed name of sha256Hex when no image file links
// to it any more (its link count is 1).
func ReleaseContent(dataDir, sha256Hex string) error {
	if !IsSHA256Hex(sha256Hex) {
		return nil
	}
	contentMu.Lock()
	defer contentMu.Unlock()
	cp := ContentPath(dataDir, sha256Hex)
	st, err := os.Stat(cp)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if s, ok := st.Sys().(*syscall.Stat_t); ok && s.Nlink <= 1 {
		return os.Remove(cp)
	}
	return nil
}

// SyncDir flushes a directory's entries (creations, renames and removals in it) to disk.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// CopyContent copies the file src, whose content must hash to sha256Hex, to dst (a
// content-addressed name) unless dst exists. The copy is written beside dst under a
// temporary name and renamed into place only when its hash matches, so dst is either whole
// and right or absent.
func CopyContent(ctx context.Context, src, dst, sha256Hex string) error {
	if !IsSHA256Hex(sha256Hex) {
		return fmt.Errorf("%q is not a sha256 hex digest", sha256Hex)
	}
	if fi, err := os.Lstat(dst); err == nil && fi.Mode().IsRegular() {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	return writeAtomically(dst, func(tmp string) error {
		out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		defer out.Close()
		h := sha256.New()
		buf := make([]byte, 1<<20)
		for {
			if err := ctx.Err(); err != nil {
				return err
			}
			n, rerr := in.Read(buf)
			if n > 0 {
				h.Write(buf[:n])
				if _, err := out.Write(buf[:n]); err != nil {
					return err
				}
			}
			if errors.Is(rerr, io.EOF) {
				break
			}
			if rerr != nil {
				return rerr
			}
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != sha256Hex {
			return fmt.Errorf("%s has sha256 %s, not %s: not copied", src, got, sha256Hex)
		}
		return out.Close()
	})
}

// FileSHA256 returns the sha256 (hex) of the file at path; it stops when ctx ends.
func FileSHA256(ctx context.Context, path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	buf := make([]byte, 1<<20)
	for {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		n, err := f.Read(buf)
		h.Write(buf[:n])
		if err == io.EOF {
			return hex.EncodeToString(h.Sum(nil)), nil
		}
		if err != nil {
			return "", err
		}
	}
}
