// Package backup is the chunk store of VM backups: a directory (a BackupTarget) holding
// content-addressed, zstd-compressed chunks of disk data and one manifest per backup that
// lists, per disk, the chunks its data is made of.
//
// Layout of a target directory:
//
//	DIR/chunks/ABCD/SUM   a chunk: ChunkSize bytes of a disk (less at a disk's end) whose
//	                      sha256 is SUM (64 hex digits), compressed as one zstd frame
//	DIR/manifests/NAMESPACE/VMUID/BACKUPUID.json
//	                      a backup's manifest (JSON, see Manifest)
//	DIR/.lock             flock: backups hold it shared, the garbage collection exclusive
//
// A chunk is named by the hash of its uncompressed data, so a chunk that any backup of any VM
// stored before is not stored again. A chunk of zeros is not stored at all: its manifest
// entry is empty. Files are written beside their place and renamed into it once synced, so a
// crash leaves either the whole file or none (and temporary files that the next garbage
// collection removes).
package backup

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/rakhsh/rakhsh/internal/storage"
)

// ChunkSize is the size of a chunk of disk data (the last chunk of a disk is shorter).
const ChunkSize = 4 << 20

// Store is an open target directory.
type Store struct {
	Dir string
}

// Open opens (creating when needed) the target directory dir.
func Open(dir string) (*Store, error) {
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("backup target directory %q is not absolute", dir)
	}
	for _, d := range []string{filepath.Join(dir, "chunks"), filepath.Join(dir, "manifests")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("backup target: %w", err)
		}
	}
	return &Store{Dir: dir}, nil
}

// Lock takes the target's lock shared, for a backup (several may run at once): the garbage
// collection, which takes it exclusively, must not remove a chunk a running backup counts on
// finding. The returned function releases it.
func (s *Store) Lock() (func(), error) {
	return s.flock(syscall.LOCK_SH)
}

// ErrBusy says the target's lock is held by a backup.
var ErrBusy = errors.New("a backup holds the target's lock")

func (s *Store) flock(how int) (func(), error) {
	f, err := os.OpenFile(filepath.Join(s.Dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, ErrBusy
		}
		return nil, fmt.Errorf("locking the backup target: %w", err)
	}
	return func() { f.Close() }, nil
}

// Missing counts the chunks of names the store does not have (zeros need none). It looks
// only for the files: Verify reads them.
func (s *Store) Missing(names []string) int {
	missing := 0
	for _, c := range names {
		if c == "" {
			continue
		}
		if !validSum(c) {
			missing++
			continue
		}
		if _, err := os.Stat(s.chunkPath(c)); err != nil {
			missing++
		}
	}
	return missing
}

// ErrCorrupt says a chunk's data does not match its name.
var ErrCorrupt = errors.New("chunk is corrupted")

var (
	decOnce sync.Once
	dec     *zstd.Decoder
)

// decoder is the chunks' decoder, safe for concurrent DecodeAll. The encoder is compress
// (zstd_cgo.go, zstd_purego.go).
func decoder() *zstd.Decoder {
	decOnce.Do(func() {
		// Fails with none of these options.
		dec, _ = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(2*ChunkSize))
	})
	return dec
}

// Sum names data: its sha256 in hex, or "" for data that is all zeros.
func Sum(data []byte) string {
	if isZero(data) {
		return ""
	}
	h := sha256.Sum256(data)
	return hex.EncodeToString(h[:])
}

var zeros = make([]byte, 64<<10)

func isZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeros))
		if !bytes.Equal(b[:n], zeros[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// validSum says s is a chunk name: 64 lower-case hex digits.
func validSum(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func (s *Store) chunkPath(sum string) string {
	return filepath.Join(s.Dir, "chunks", sum[:4], sum)
}

// Put stores data as a chunk unless the store has it. It returns the chunk's name ("" for
// zeros, which are not stored), and the compressed bytes it added (0 when it had it).
func (s *Store) Put(data []byte) (sum string, added int64, err error) {
	sum = Sum(data)
	if sum == "" {
		return "", 0, nil
	}
	p := s.chunkPath(sum)
	if _, err := os.Stat(p); err == nil {
		return sum, 0, nil
	}
	z, release, err := compress(data)
	if err != nil {
		return "", 0, fmt.Errorf("compressing chunk %s: %w", sum, err)
	}
	defer release()
	f, err := storage.TempFile(p)
	if err != nil {
		return "", 0, err
	}
	// Not synced one by one: Sync makes the whole file system durable once, before the
	// manifest that names the chunks is written. A chunk lost in a crash before that is
	// named by no manifest.
	_, werr := f.Write(z)
	if werr == nil {
		// Starts the chunk's writeback now, without waiting for it: Sync then finds little
		// left to write. Best effort: not every file system supports it.
		_ = unix.SyncFileRange(int(f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
	}
	cerr := f.Close()
	if werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(f.Name(), p)
	}
	if werr != nil {
		os.Remove(f.Name())
		return "", 0, fmt.Errorf("storing chunk %s: %w", sum, werr)
	}
	return sum, int64(len(z)), nil
}

// Sync makes what was written to the store durable (syncfs of its file system): call it
// before writing a manifest that names new chunks.
func (s *Store) Sync() error {
	d, err := os.Open(s.Dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := unix.Syncfs(int(d.Fd())); err != nil {
		return fmt.Errorf("syncing the backup target: %w", err)
	}
	return nil
}

// Get reads a chunk and checks its data against its name (ErrCorrupt when they differ). The
// empty name reads as size zeros.
func (s *Store) Get(sum string, size int) ([]byte, error) {
	if sum == "" {
		return make([]byte, size), nil
	}
	if !validSum(sum) {
		return nil, fmt.Errorf("%q is not a chunk name", sum)
	}
	z, err := os.ReadFile(s.chunkPath(sum))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("chunk %s is missing", sum)
		}
		return nil, err
	}
	data, err := decoder().DecodeAll(z, make([]byte, 0, size))
	if err != nil {
		return nil, fmt.Errorf("chunk %s: %w: %v", sum, ErrCorrupt, err)
	}
	if Sum(data) != sum || len(data) != size {
		return nil, fmt.Errorf("chunk %s: %w: its data hashes otherwise or has %d bytes, not %d", sum, ErrCorrupt, len(data), size)
	}
	return data, nil
}

// chunkSize is the size of chunk i of a disk of size bytes.
func chunkSize(size int64, i int) int {
	return int(min(ChunkSize, size-int64(i)*ChunkSize))
}

// chunkCount is how many chunks a disk of size bytes has.
func chunkCount(size int64) int {
	return int((size + ChunkSize - 1) / ChunkSize)
}

// isTemp says a file of the store is a temporary one a writer left.
func isTemp(name string) bool { return strings.HasPrefix(name, storage.TempPrefix) }
