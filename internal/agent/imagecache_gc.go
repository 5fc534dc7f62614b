package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// The image cache's garbage collection (docs/images.md). A joined host keeps the images it
// fetched in DATA-DIR/pools/default/cache/SHA256; linked clones made on the host use them as
// backing files, and QEMU opens them for images attached as they are. Every
// --image-cache-gc-interval the agent looks for what still uses each cached image: a qcow2
// file in the disks, snapshots or images directory of a pool or of a Local class whose
// backing file it is, or a QEMU of this agent that holds it open. A used image has its
// modification time set to now; an image nobody used for --image-cache-expiry is removed (and
// is fetched again when a VM needs it). A start that takes an image from the cache sets its
// time too, under the image's lock, so that a removal never races it. When the agent cannot
// tell what is used (the Local classes cannot be read from the API, a directory or a qcow2
// header cannot be read), nothing is removed.

// Defaults of the cache's collection.
const (
	DefaultImageCacheExpiry     = 240 * time.Hour
	DefaultImageCacheGCInterval = time.Hour
)

// imageCacheDir is the directory of this host's cached images.
func imageCacheDir(dataDir string) string {
	return filepath.Dir(storage.ImageCachePath(dataDir, storage.DefaultPool, strings.Repeat("0", 64)))
}

// gcImageCache is one pass of the collection.
func (a *Agent) gcImageCache(ctx context.Context) {
	cacheDir := imageCacheDir(a.cfg.DataDir)
	if _, err := os.Stat(cacheDir); err != nil {
		return // nothing was ever fetched here
	}
	dirs, err := a.localClassDirs(ctx)
	if err != nil {
		a.log.Warn("image cache: the Local storage classes cannot be read; nothing is removed", "err", err)
		return
	}
	pools, err := filepath.Glob(filepath.Join(a.cfg.DataDir, "pools", "*"))
	if err != nil {
		return
	}
	dirs = append(dirs, pools...)
	var pids []int
	for _, in := range a.instances() {
		pids = append(pids, in.pid)
	}
	used, err := cacheReferences(cacheDir, dirs, pids)
	if err != nil {
		a.log.Warn("image cache: what uses the cached images cannot be told; nothing is removed", "err", err)
		return
	}
	for _, r := range pruneImageCache(cacheDir, used, a.cfg.Now(), a.cfg.ImageCacheExpiry, a.fetches.lock) {
		a.log.Info("image cache: removed an image unused for longer than the expiry", "file", r.path, "bytes", r.size, "unused", r.unused.Round(time.Minute))
	}
}

// localClassDirs are the directories of the Local storage classes that name one.
func (a *Agent) localClassDirs(ctx context.Context) ([]string, error) {
	l, err := a.c.List(ctx, "storageclasses", "", client.ListOptions{})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, raw := range l.Items {
		var sc v1alpha1.StorageClass
		if err := json.Unmarshal(raw, &sc); err != nil {
			return nil, err
		}
		if sc.Spec.Type == v1alpha1.StorageClassTypeLocal && sc.Spec.Local != nil && filepath.IsAbs(sc.Spec.Local.Path) {
			out = append(out, filepath.Clean(sc.Spec.Local.Path))
		}
	}
	return out, nil
}

// cacheReferences returns the cached images (by sha256) that are used: the backing file of a
// qcow2 file in the disks, snapshots or images directory of one of dirs (pools and Local
// class directories; symbolic links followed), or open in one of the processes pids. Any
// doubt is an error, and the pass removes nothing: a directory or file that cannot be read
// (other than one gone meanwhile), a qcow2 header that does not parse, a backing file whose
// directory cannot be resolved.
func cacheReferences(cacheDir string, dirs []string, pids []int) (map[string]bool, error) {
	realCache, err := filepath.EvalSymlinks(cacheDir)
	if err != nil {
		return nil, err
	}
	used := map[string]bool{}
	// mark records p if it names a file of the cache (through any symbolic links).
	mark := func(p string) error {
		dir, err := filepath.EvalSymlinks(filepath.Dir(p))
		if errors.Is(err, os.ErrNotExist) {
			return nil // a dangling name: it uses nothing of the cache
		}
		if err != nil {
			return err
		}
		if dir == realCache && storage.IsSHA256Hex(filepath.Base(p)) {
			used[filepath.Base(p)] = true
		}
		return nil
	}
	for _, d := range dirs {
		for _, sub := range []string{"disks", "snapshots", "images"} {
			root, err := filepath.EvalSymlinks(filepath.Join(d, sub))
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return nil, err
			}
			if err := scanBacking(root, mark); err != nil {
				return nil, err
			}
		}
	}
	for _, pid := range pids {
		fdDir := "/proc/" + strconv.Itoa(pid) + "/fd"
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			continue // the process ended: it holds nothing
		}
		for _, fd := range fds {
			if target, err := os.Readlink(filepath.Join(fdDir, fd.Name())); err == nil && filepath.IsAbs(target) {
				if filepath.Dir(target) == realCache && storage.IsSHA256Hex(filepath.Base(target)) {
					used[filepath.Base(target)] = true
				}
			}
		}
	}
	return used, nil
}

// scanBacking calls mark with the backing file of every qcow2 file below root.
func scanBacking(root string, mark func(string) error) error {
	return filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil // removed meanwhile
			}
			return err
		}
		if e.IsDir() || !e.Type().IsRegular() {
			return nil
		}
		qcow2, err := isQCOW2(p)
		if err != nil || !qcow2 {
			return err
		}
		l, err := readQCOW2Link(p)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if l.BackingFile == "" {
			return nil
		}
		b := l.BackingFile
		if !filepath.IsAbs(b) {
			b = filepath.Join(filepath.Dir(p), b)
		}
		return mark(filepath.Clean(b))
	})
}

// isQCOW2 says the file at p starts with the qcow2 magic; a file gone meanwhile is not.
func isQCOW2(p string) (bool, error) {
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	b := make([]byte, 4)
	n, err := io.ReadFull(f, b)
	if n < 4 && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) {
		return false, nil // shorter than a header
	}
	if err != nil {
		return false, err
	}
	return string(b) == q2Magic, nil
}

// removedImage is one cached image pruneImageCache removed.
type removedImage struct {
	path   string
	size   int64
	unused time.Duration
}

// pruneImageCache removes the cached images (and leftover partial fetches) of cacheDir that
// are not used and were last used (modification time) expiry or more ago; the used ones get
// now as their time. Each removal holds the image's lock and looks at the time again.
func pruneImageCache(cacheDir string, used map[string]bool, now time.Time, expiry time.Duration, lock func(sha string) func()) []removedImage {
	entries, err := os.ReadDir(cacheDir)
	if err != nil {
		return nil
	}
	var out []removedImage
	for _, e := range entries {
		name := e.Name()
		sha := strings.TrimSuffix(name, ".part")
		if !storage.IsSHA256Hex(sha) || !e.Type().IsRegular() {
			continue
		}
		p := filepath.Join(cacheDir, name)
		if used[sha] {
			if sha == name {
				_ = os.Chtimes(p, time.Time{}, now)
			}
			continue
		}
		unlock := lock(sha)
		st, err := os.Stat(p)
		if err == nil && now.Sub(st.ModTime()) >= expiry {
			if err := os.Remove(p); err == nil || errors.Is(err, os.ErrNotExist) {
				out = append(out, removedImage{path: p, size: st.Size(), unused: now.Sub(st.ModTime())})
			}
		}
		unlock()
	}
	return out
}

// touchCached marks a cached image as used now (under its lock: see gcImageCache).
func (a *Agent) touchCached(sha, path string) error {
	unlock := a.fetches.lock(sha)
	defer unlock()
	if err := os.Chtimes(path, time.Time{}, a.cfg.Now()); err != nil {
		return fmt.Errorf("the cached image %s: %w", path, err)
	}
	return nil
}
