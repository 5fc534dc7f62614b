package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// imageFetches serialises the fetches of one content: two VMs starting on the same image
// download it once.
type imageFetches struct {
	mu    sync.Mutex
	locks map[string]*sync.Mutex
}

func (f *imageFetches) lock(sha string) func() {
	f.mu.Lock()
	if f.locks == nil {
		f.locks = map[string]*sync.Mutex{}
	}
	l := f.locks[sha]
	if l == nil {
		l = &sync.Mutex{}
		f.locks[sha] = l
	}
	f.mu.Unlock()
	l.Lock()
	return l.Unlock
}

// imageFile returns the local file of a Ready image. When this agent shares the control
// plane's data dir (all-in-one), that is the image store's own file. On a joined host it is
// the copy in this host's cache, fetched over the API on first use: resumable (an interrupted
// fetch continues from where it stopped, with Range and If-Range on the image's sha256) and
// checked against status.sha256 before it is used.
func (a *Agent) imageFile(ctx context.Context, resource, namespace, name, uid, sha string) (string, error) {
	if p := storage.ImagePath(a.cfg.DataDir, uid); fileExists(p) {
		return p, nil
	}
	if !storage.IsSHA256Hex(sha) {
		return "", fmt.Errorf("its file is not on this host and it has no sha256 to fetch it by")
	}
	dst := storage.ImageCachePath(a.cfg.DataDir, storage.DefaultPool, sha)
	if fileExists(dst) && a.touchCached(sha, dst) == nil { // used now: kept (imagecache_gc.go)
		return dst, nil
	}
	unlock := a.fetches.lock(sha)
	defer unlock()
	if fileExists(dst) {
		return dst, nil
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return "", err
	}
	path := client.Path(resource, namespace, name, "data")
	if err := fetchResumable(ctx, a.c, path, dst, sha); err != nil {
		return "", fmt.Errorf("fetching it from the control plane: %w", err)
	}
	a.log.Info("fetched an image into the host's cache", "image", name, "sha256", sha)
	return dst, nil
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

// fetchResumable downloads path into dst. The bytes go to dst+".part", which survives a
// failure so that the next try asks only for the rest; a server that ignores the range (or
// whose file changed: If-Range) sends everything again and the part file restarts. The
// finished file must hash to wantSHA, or it is removed.
func fetchResumable(ctx context.Context, c *client.Client, path, dst, wantSHA string) error {
	part := dst + ".part"
	f, err := os.OpenFile(part, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	have, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return err
	}
	h := http.Header{}
	if have > 0 {
		h.Set("Range", "bytes="+strconv.FormatInt(have, 10)+"-")
		h.Set("If-Range", `"`+wantSHA+`"`)
	}
	resp, err := c.Download(ctx, path, h)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusPartialContent:
		// The rest of the file follows.
	case http.StatusOK:
		if err := f.Truncate(0); err != nil {
			return err
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return err
		}
	case http.StatusRequestedRangeNotSatisfiable:
		// The part file is already whole (or longer than the file: then the hash fails).
	}
	if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
		if _, err := io.CopyBuffer(f, resp.Body, make([]byte, 1<<20)); err != nil {
			return fmt.Errorf("download cut short (kept for a resumed fetch): %w", err)
		}
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	sum := sha256.New()
	if _, err := io.CopyBuffer(sum, f, make([]byte, 1<<20)); err != nil {
		return err
	}
	if got := hex.EncodeToString(sum.Sum(nil)); got != wantSHA {
		f.Close()
		os.Remove(part)
		return fmt.Errorf("the fetched file has sha256 %s, not the image's %s; it was discarded", got, wantSHA)
	}
	f.Close()
	return storage.Commit(part, dst)
}
