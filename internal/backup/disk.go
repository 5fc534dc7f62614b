package backup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	goruntime "runtime"
	"sort"
	"strings"
	"sync"
	"syscall"

	"github.com/rakhsh/rakhsh/internal/storage"
)

// Extent is a range of a disk's copy as `qemu-img map --output=json` reports it for the
// qcow2 file QEMU's backup job wrote: Present ranges are those the job copied (the whole
// allocated disk for a full backup, the blocks written since the previous backup for an
// incremental one); of those, Data ranges are at Offset in the file and Zero ranges read as
// zeros.
type Extent struct {
	Start   int64 `json:"start"`
	Length  int64 `json:"length"`
	Present bool  `json:"present"`
	Zero    bool  `json:"zero"`
	Data    bool  `json:"data"`
	Offset  int64 `json:"offset"`
}

// ParseMap parses the output of `qemu-img map --output=json` for a disk of size bytes and
// checks that its extents follow each other from 0 to size, that each says whether it is
// present (a qemu-img too old to say so cannot tell copied ranges from the rest), and that
// data extents have an offset.
func ParseMap(out []byte, size int64) ([]Extent, error) {
	var raw []struct {
		Extent
		Present *bool  `json:"present"`
		Offset  *int64 `json:"offset"`
	}
	if err := json.Unmarshal(out, &raw); err != nil {
		return nil, fmt.Errorf("qemu-img map: %w", err)
	}
	ex := make([]Extent, len(raw))
	var at int64
	for i, r := range raw {
		e := r.Extent
		if r.Present == nil {
			return nil, fmt.Errorf("qemu-img map: extent at %d does not say whether it is present (qemu-img 6.1 or later is needed)", e.Start)
		}
		e.Present = *r.Present
		if r.Offset != nil {
			e.Offset = *r.Offset
		}
		if e.Start != at || e.Length <= 0 || e.Start+e.Length > size || (e.Data && (r.Offset == nil || e.Offset < 0)) {
			return nil, fmt.Errorf("qemu-img map: extent %+v does not follow %d inside %d bytes", e, at, size)
		}
		at = e.Start + e.Length
		ex[i] = e
	}
	if at != size {
		return nil, fmt.Errorf("qemu-img map: the extents end at %d, the disk at %d", at, size)
	}
	return ex, nil
}

// Stats are the figures of a disk's backup.
type Stats struct {
	Read      int64 // bytes read from the copy (data extents)
	Stored    int64 // compressed bytes added to the store
	Chunks    int   // chunks of the disk that are not zeros
	NewChunks int   // chunks the store did not have
}

// BackupDisk makes the chunk list of a disk of size bytes: the chunks of prev (the disk's
// previous backup; nil: none, the disk starts as zeros) with the present extents of ex laid
// over them, their data read from src. Chunks no present extent touches keep prev's name
// without being read. progress, when not nil, is told the bytes of present extents done.
func (s *Store) BackupDisk(ctx context.Context, src io.ReaderAt, size int64, ex []Extent, prev []string, progress func(done int64)) ([]string, Stats, error) {
	n := chunkCount(size)
	if prev != nil && len(prev) != n {
		return nil, Stats{}, fmt.Errorf("the previous backup has %d chunks for this disk, not %d", len(prev), n)
	}
	out := make([]string, n)
	if prev != nil {
		copy(out, prev)
	}
	// The present extents, by chunk.
	touched := map[int][]Extent{}
	for _, e := range ex {
		if !e.Present {
			continue
		}
		for c := int(e.Start / ChunkSize); c < n && int64(c)*ChunkSize < e.Start+e.Length; c++ {
			touched[c] = append(touched[c], e)
		}
	}
	order := make([]int, 0, len(touched))
	for c := range touched {
		order = append(order, c)
	}
	sort.Ints(order)
	// The chunks are assembled in order by this goroutine (reads of the copy and of the
	// previous chunks) and hashed, compressed and written by a worker per CPU.
	type job struct {
		c    int
		data []byte
		done int64 // present bytes done once this chunk is
	}
	type result struct {
		c     int
		sum   string
		added int64
		done  int64
		err   error
	}
	// One more worker than CPUs: a worker waiting on a write leaves the CPUs busy.
	workers := max(goruntime.GOMAXPROCS(0), 1) + 1
	jobs := make(chan job, workers)
	results := make(chan result, workers)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				sum, added, err := s.Put(j.data)
				putChunkBuf(j.data)
				results <- result{j.c, sum, added, j.done, err}
			}
		}()
	}
	var st Stats
	var readErr error
	go func() {
		defer func() { close(jobs); wg.Wait(); close(results) }()
		var done int64
		for _, c := range order {
			if err := wctx.Err(); err != nil {
				readErr = err
				return
			}
			base := int64(c) * ChunkSize
			csize := chunkSize(size, c)
			var data []byte
			if covered(touched[c], base, int64(csize)) {
				data = chunkBuf(csize) // every byte comes from the copy
			} else {
				var err error
				if data, err = s.Get(out[c], csize); err != nil {
					readErr = fmt.Errorf("the previous backup's chunk %d: %w", c, err)
					return
				}
			}
			for _, e := range touched[c] {
				lo, hi := max(e.Start, base), min(e.Start+e.Length, base+int64(csize))
				part := data[lo-base : hi-base]
				if e.Data {
					if _, err := src.ReadAt(part, e.Offset+(lo-e.Start)); err != nil {
						readErr = fmt.Errorf("reading the disk's copy at %d: %w", lo, err)
						return
					}
					st.Read += hi - lo
				} else {
					clear(part)
				}
				done += hi - lo
			}
			select {
			case jobs <- job{c, data, done}:
			case <-wctx.Done():
				readErr = wctx.Err()
				return
			}
		}
	}()
	var firstErr error
	var maxDone int64
	for r := range results {
		if r.err != nil {
			if firstErr == nil {
				firstErr = r.err
				cancel()
			}
			continue
		}
		out[r.c] = r.sum
		if r.added > 0 {
			st.NewChunks++
			st.Stored += r.added
		}
		if r.done > maxDone {
			maxDone = r.done
			if progress != nil {
				progress(maxDone)
			}
		}
	}
	// results is closed after the reader has returned: readErr and st.Read are its.
	if firstErr == nil {
		firstErr = readErr
	}
	if firstErr != nil {
		return nil, st, firstErr
	}
	for _, c := range out {
		if c != "" {
			st.Chunks++
		}
	}
	return out, st, nil
}

// chunkBufs holds chunk-sized buffers for reuse: a fresh 4 MiB buffer per chunk cost a fifth
// of a full backup's CPU time in zeroing and page faults.
var chunkBufs sync.Pool

// chunkBuf returns a buffer of n bytes (at most ChunkSize) whose contents are undefined.
func chunkBuf(n int) []byte {
	if b, ok := chunkBufs.Get().(*[]byte); ok {
		return (*b)[:n]
	}
	return make([]byte, n, ChunkSize)
}

// putChunkBuf gives b back for reuse (one of ChunkSize capacity; others are dropped).
func putChunkBuf(b []byte) {
	if cap(b) == ChunkSize {
		b = b[:0]
		chunkBufs.Put(&b)
	}
}

// covered says the extents (in order, not overlapping) cover [base, base+n) whole.
func covered(ex []Extent, base, n int64) bool {
	at := base
	for _, e := range ex {
		if e.Start > at {
			return false
		}
		at = max(at, e.Start+e.Length)
	}
	return at >= base+n
}

// PresentBytes sums the present extents: what a backup of the copy reads.
func PresentBytes(ex []Extent) int64 {
	var n int64
	for _, e := range ex {
		if e.Present {
			n += e.Length
		}
	}
	return n
}

// RestoreDisk writes the data of disk d to w (a file of d.Size bytes, or larger), skipping
// zero chunks (a new sparse file reads zeros there).
func (s *Store) RestoreDisk(ctx context.Context, d Disk, w io.WriterAt) error {
	for i, c := range d.Chunks {
		if err := ctx.Err(); err != nil {
			return err
		}
		if c == "" {
			continue
		}
		data, err := s.Get(c, chunkSize(d.Size, i))
		if err != nil {
			return fmt.Errorf("disk %q chunk %d: %w", d.Name, i, err)
		}
		if _, err := w.WriteAt(data, int64(i)*ChunkSize); err != nil {
			return err
		}
	}
	return nil
}

// RestoreDiskFile writes the data of disk d into the qcow2 file path (made or replaced as a
// whole: the data goes to a sparse raw file beside it, which is converted and renamed over
// path), grown to size when that is larger than the backed-up disk. It holds the target's lock
// shared meanwhile, so the target's garbage collection leaves the chunks alone.
func (s *Store) RestoreDiskFile(ctx context.Context, d Disk, path string, size int64) error {
	unlock, err := s.Lock()
	switch {
	case errors.Is(err, syscall.EROFS) || errors.Is(err, syscall.EACCES):
		// A target mounted read-only (for restores only) has no collection to keep off.
	case err != nil:
		return fmt.Errorf("locking the target: %w", err)
	default:
		defer unlock()
	}
	f, err := storage.TempFile(path)
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if err := f.Truncate(d.Size); err != nil {
		return err
	}
	if err := s.RestoreDisk(ctx, d, f); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	resizeTo := int64(0) // keep the backed-up size
	if size > d.Size {
		resizeTo = size
	}
	return storage.ConvertResize(ctx, f.Name(), "raw", path, "qcow2", resizeTo)
}

// Problem is a chunk of a manifest that cannot be read back.
type Problem struct {
	Disk  string
	Chunk int
	Err   error
}

// Verify reads every chunk of m and checks it against its name. It returns the chunks that
// are missing or corrupted; an error only when it could not finish. A corrupted chunk is
// renamed to SUM.bad: a later backup that has its data stores it again (healing every backup
// that names it) instead of counting on the bad file.
func (s *Store) Verify(ctx context.Context, m *Manifest) ([]Problem, error) {
	var bad []Problem
	checked := map[string]error{}
	for _, d := range m.Disks {
		for i, c := range d.Chunks {
			if err := ctx.Err(); err != nil {
				return bad, err
			}
			if c == "" {
				continue
			}
			err, ok := checked[c]
			if !ok {
				_, err = s.Get(c, chunkSize(d.Size, i))
				checked[c] = err
				if errors.Is(err, ErrCorrupt) {
					_ = os.Rename(s.chunkPath(c), s.chunkPath(c)+".bad")
				}
			}
			if err != nil {
				bad = append(bad, Problem{Disk: d.Name, Chunk: i, Err: err})
			}
		}
	}
	return bad, nil
}

// GCResult is what a garbage collection removed.
type GCResult struct {
	Manifests, Chunks int
	Freed             int64
}

// GC removes the manifests of backups that no longer exist and then every chunk no remaining
// manifest names, and the temporary files of writers that died. It holds the store's lock
// exclusively, and does not wait for it: while a backup runs it returns ErrBusy (the backup's
// own collection comes later). live is called once the lock is held and returns whether a
// backup (by uid) exists: a manifest is written only after its backup object was created, so
// a manifest on disk while the lock is held belongs to a backup that live knows. A manifest
// that cannot be read stops the collection before it removes a chunk.
func (s *Store) GC(ctx context.Context, live func() (func(backupUID string) bool, error)) (GCResult, error) {
	unlock, err := s.flock(syscall.LOCK_EX | syscall.LOCK_NB)
	if err != nil {
		return GCResult{}, err
	}
	defer unlock()
	var res GCResult
	keep, err := live()
	if err != nil {
		return res, err
	}
	rels, err := s.Manifests()
	if err != nil {
		return res, err
	}
	used := map[string]bool{}
	for _, rel := range rels {
		uid := filepath.Base(rel)
		uid = uid[:len(uid)-len(".json")]
		if !keep(uid) {
			if fi, err := os.Stat(filepath.Join(s.Dir, rel)); err == nil {
				res.Freed += fi.Size()
			}
			if err := os.Remove(filepath.Join(s.Dir, rel)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return res, err
			}
			res.Manifests++
			continue
		}
		m, err := s.ReadManifest(rel)
		if err != nil {
			// Its chunks are unknown: removing any chunk could break it (a newer version's
			// manifest, a file system that failed a read).
			return res, fmt.Errorf("not collecting: %w", err)
		}
		for _, d := range m.Disks {
			for _, c := range d.Chunks {
				used[c] = true
			}
		}
	}
	// A writer's temporary file is older than the lock: every writer holds the lock shared.
	// Only the store's own two directories are walked.
	walk := func(root string, fn fs.WalkDirFunc) error {
		return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return fn(p, d, err)
		})
	}
	if err := walk(filepath.Join(s.Dir, "manifests"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() && isTemp(d.Name()) {
			if fi, err := d.Info(); err == nil {
				res.Freed += fi.Size()
			}
			return os.Remove(p)
		}
		return nil
	}); err != nil {
		return res, err
	}
	err = walk(filepath.Join(s.Dir, "chunks"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		if !d.Type().IsRegular() {
			return nil
		}
		name := d.Name()
		bad := strings.HasSuffix(name, ".bad")
		if !isTemp(name) && !bad && !(validSum(name) && !used[name]) {
			return nil
		}
		fi, err := d.Info()
		if err == nil {
			res.Freed += fi.Size()
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if !isTemp(name) && !bad {
			res.Chunks++
		}
		return nil
	})
	return res, err
}
