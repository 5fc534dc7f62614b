package images

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// A decompression bomb (a few MiB of xz that unpack to hundreds of GiB) or simply a huge
// image must not fill the file system the image store lives on: the store shares it with
// the embedded database, the VMs' disks and their logs. Two defences:
//
//   - zero blocks are written as holes (the file is sparse), so the common bomb made of
//     zeros costs next to nothing;
//   - every import keeps a free-space reserve (serve --min-free-space): before it starts and
//     as it writes, it checks the file system's free space less what other running imports
//     have claimed, and stops cleanly (the partial file is removed) before crossing it.

// MinFreeFlag is the serve flag that sets the reserve.
const MinFreeFlag = "--min-free-space"

// MinFree is the free space imports must leave on the image store's file system: a
// percentage of its size, or a number of bytes.
type MinFree struct {
	Percent float64
	Bytes   int64
}

// DefaultMinFree is the reserve when the operator does not set one.
var DefaultMinFree = MinFree{Percent: 10}

// ParseMinFree parses "10%", "2.5%", "20Gi" or "0".
func ParseMinFree(s string) (MinFree, error) {
	s = strings.TrimSpace(s)
	if p, ok := strings.CutSuffix(s, "%"); ok {
		f, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || f < 0 || f >= 100 {
			return MinFree{}, fmt.Errorf("%s %q: want a percentage from 0%% to 99%% (e.g. 10%%) or a size (e.g. 20Gi)", MinFreeFlag, s)
		}
		return MinFree{Percent: f}, nil
	}
	n, err := v1alpha1.Quantity(s).Value()
	if err != nil || n < 0 {
		return MinFree{}, fmt.Errorf("%s %q: want a percentage (e.g. 10%%) or a size (e.g. 20Gi)", MinFreeFlag, s)
	}
	return MinFree{Bytes: n}, nil
}

func (m MinFree) String() string {
	if m.Percent > 0 {
		return strconv.FormatFloat(m.Percent, 'f', -1, 64) + "%"
	}
	return HumanBytes(m.Bytes)
}

// of returns the reserve in bytes on a file system of total bytes.
func (m MinFree) of(total int64) int64 {
	if m.Percent > 0 {
		return int64(float64(total) * m.Percent / 100)
	}
	return m.Bytes
}

// FSSpace is what statfs says of a file system, in bytes: available to unprivileged users,
// and its size.
type FSSpace struct {
	Avail, Total int64
}

func statfs(dir string) (FSSpace, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return FSSpace{}, err
	}
	return FSSpace{Avail: int64(st.Bavail) * st.Bsize, Total: int64(st.Blocks) * st.Bsize}, nil
}

// DefaultSpaceStep is how many bytes an import may write between two checks of free space.
const DefaultSpaceStep = 64 << 20

// SpaceGuard keeps imports from crossing the free-space reserve. Running imports are counted
// against each other: each holds a Reservation of what it expects to write still (or of the
// next step it was granted), and a check subtracts the others' reservations from the free
// space, so two imports cannot both pass on the same free bytes. One guard serves a process.
type SpaceGuard struct {
	MinFree MinFree
	// Statfs reports a directory's file system; nil uses statfs(2). Tests inject it.
	Statfs func(dir string) (FSSpace, error)
	// Step is how many bytes are granted per check; default DefaultSpaceStep.
	Step int64

	mu  sync.Mutex
	res map[string]map[*Reservation]struct{} // running imports, by file system
}

var defaultSpace atomic.Pointer[SpaceGuard]

var builtinSpace = &SpaceGuard{MinFree: DefaultMinFree}

// SetDefaultSpaceGuard sets the guard of imports whose Options do not name one (the server's
// --min-free-space). nil restores the default (a 10% reserve).
func SetDefaultSpaceGuard(g *SpaceGuard) { defaultSpace.Store(g) }

// DefaultSpaceGuard is the guard of imports whose Options do not name one.
func DefaultSpaceGuard() *SpaceGuard {
	if g := defaultSpace.Load(); g != nil {
		return g
	}
	return builtinSpace
}

func (o Options) spaceGuard() *SpaceGuard {
	if o.Space != nil {
		return o.Space
	}
	return DefaultSpaceGuard()
}

// SpaceError says an import stopped before it crossed the free-space reserve.
type SpaceError struct {
	Dir                        string
	Avail, Total, Others, Need int64
	Reserve                    int64
	MinFree                    MinFree
}

func (e *SpaceError) Error() string {
	others := ""
	if e.Others > 0 {
		others = fmt.Sprintf(", %s of it promised to other imports running", HumanBytes(e.Others))
	}
	if e.Need <= 0 {
		return fmt.Sprintf("the image store is full: the file system of %s has less free space than the free-space reserve of %s (%s of %s): %s free%s; free some space, or change serve %s",
			e.Dir, HumanBytes(e.Reserve), e.MinFree, HumanBytes(e.Total), HumanBytes(e.Avail), others, MinFreeFlag)
	}
	return fmt.Sprintf("the image store is full: writing %s more would leave less than the free-space reserve of %s (%s of %s) on the file system of %s (%s free%s); free some space, or change serve %s",
		HumanBytes(e.Need), HumanBytes(e.Reserve), e.MinFree, HumanBytes(e.Total), e.Dir, HumanBytes(e.Avail), others, MinFreeFlag)
}

// Reservation is one running import's claim on free space.
type Reservation struct {
	g        *SpaceGuard
	dir, fs  string
	expected int64 // bytes the import expects to write in all (0: unknown)
	granted  int64 // bytes it may write before the next check
	written  int64 // bytes written (holes not counted)
	released bool
}

// claim is what r may still write without another check. g.mu is held.
func (r *Reservation) claim() int64 {
	return max(max(r.expected, r.granted)-r.written, 0)
}

// fsKey names the file system of dir for the ledger: the device number.
func fsKey(dir string) string {
	fi, err := os.Stat(dir)
	if err != nil {
		return dir
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return strconv.FormatUint(st.Dev, 10)
	}
	return dir
}

// Reserve registers an import into dir that expects to write expected bytes (0: unknown),
// after checking they fit above the reserve. Release it when the import ends.
func (g *SpaceGuard) Reserve(dir string, expected int64) (*Reservation, error) {
	r := &Reservation{g: g, dir: dir, fs: fsKey(dir), expected: max(expected, 0)}
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.check(r, r.expected); err != nil {
		return nil, err
	}
	r.granted = r.expected
	if g.res == nil {
		g.res = map[string]map[*Reservation]struct{}{}
	}
	if g.res[r.fs] == nil {
		g.res[r.fs] = map[*Reservation]struct{}{}
	}
	g.res[r.fs][r] = struct{}{}
	return r, nil
}

// check says whether need more bytes of r fit above the reserve. g.mu is held.
func (g *SpaceGuard) check(r *Reservation, need int64) error {
	_, err := g.room(r, need)
	return err
}

// room returns how many bytes r may write above the reserve, less what other imports have
// claimed, or a SpaceError when that is less than need. g.mu is held.
func (g *SpaceGuard) room(r *Reservation, need int64) (int64, error) {
	sf := g.Statfs
	if sf == nil {
		sf = statfs
	}
	sp, err := sf(r.dir)
	if err != nil {
		return 0, fmt.Errorf("checking the free space of %s: %w", r.dir, err)
	}
	var others int64
	for o := range g.res[r.fs] {
		if o != r {
			others += o.claim()
		}
	}
	reserve := g.MinFree.of(sp.Total)
	room := sp.Avail - others - reserve
	if room < need || room < 0 {
		return 0, &SpaceError{Dir: r.dir, Avail: sp.Avail, Total: sp.Total, Others: others, Need: need, Reserve: reserve, MinFree: g.MinFree}
	}
	return room, nil
}

// Grow is called before r writes n more bytes of data; past what was granted it checks the
// free space again and grants the next step (or what the import still expects, if more; or
// only what is left above the reserve, if less).
func (r *Reservation) Grow(n int64) error {
	g := r.g
	g.mu.Lock()
	defer g.mu.Unlock()
	if r.written+n > r.granted {
		step := g.Step
		if step <= 0 {
			step = DefaultSpaceStep
		}
		// What must fit: these bytes, or what the import still expects; what is granted: a
		// step more when there is room, so that the next check comes a step later.
		need := max(n, r.expected-r.written)
		room, err := g.room(r, need)
		if err != nil {
			return err
		}
		r.granted = r.written + max(need, min(step, room))
	}
	r.written += n
	return nil
}

// stillFits checks, without writing, that the reserve is not crossed: the free space less
// the other imports' claims (a tool writing on r's behalf, e.g. qemu-img convert, cannot call
// Grow).
func (r *Reservation) stillFits() error {
	r.g.mu.Lock()
	defer r.g.mu.Unlock()
	return r.g.check(r, 0)
}

// Release ends r's claim.
func (r *Reservation) Release() {
	if r == nil {
		return
	}
	r.g.mu.Lock()
	defer r.g.mu.Unlock()
	if !r.released {
		delete(r.g.res[r.fs], r)
		r.released = true
	}
}

// Claimed returns what the running imports on dir's file system have claimed (for tests and
// diagnostics).
func (g *SpaceGuard) Claimed(dir string) int64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	var n int64
	for r := range g.res[fsKey(dir)] {
		n += r.claim()
	}
	return n
}

// holeBlock is the granularity of holes: a block of zeros this large, aligned in the file,
// is skipped instead of written.
const holeBlock = 4096

var zeroBlock [holeBlock]byte

// imageWriter writes an import's bytes to f: strictly forward, zero blocks left as holes, at
// most max bytes in all, and data only within the space reservation.
type imageWriter struct {
	f     *os.File
	off   int64
	max   int64
	n     *atomic.Int64 // bytes taken (holes included), for progress
	space *Reservation  // nil: no free-space check
}

func (w *imageWriter) Write(p []byte) (int, error) {
	if w.n.Load()+int64(len(p)) > w.max {
		return 0, &writeError{fmt.Errorf("%w (%s)", ErrTooLarge, HumanBytes(w.max))}
	}
	i := 0
	for i < len(p) {
		// A segment ends at the next block boundary of the file.
		end := min(i+int(holeBlock-(w.off+int64(i))%holeBlock), len(p))
		if bytes.Equal(p[i:end], zeroBlock[:end-i]) {
			i = end
			continue
		}
		j := end // j is block-aligned in the file, or len(p)
		for j < len(p) {
			e := min(j+holeBlock, len(p))
			if bytes.Equal(p[j:e], zeroBlock[:e-j]) {
				break
			}
			j = e
		}
		if w.space != nil {
			if err := w.space.Grow(int64(j - i)); err != nil {
				return i, &writeError{err}
			}
		}
		if _, err := w.f.WriteAt(p[i:j], w.off+int64(i)); err != nil {
			return i, &writeError{err}
		}
		i = j
	}
	w.off += int64(len(p))
	w.n.Add(int64(len(p)))
	return len(p), nil
}

// finish gives the file its full size: trailing zero blocks were skipped.
func (w *imageWriter) finish() error {
	fi, err := w.f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() < w.off {
		return w.f.Truncate(w.off)
	}
	return nil
}

// allocated is how many bytes of the file at path are on disk.
func allocated(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}

// guardedConvert runs convert (a qemu-img run that writes next to dst) while keeping the
// reserve: the output is expected to take about as much as the input holds, and the free
// space is watched while it runs; crossing the reserve stops it (its partial output is
// removed by the atomic write).
func guardedConvert(ctx context.Context, g *SpaceGuard, src, dst string, convert func(ctx context.Context) error) error {
	r, err := g.Reserve(filepath.Dir(dst), allocated(src))
	if err != nil {
		return err
	}
	defer r.Release()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if err := r.stillFits(); err != nil {
					cancel(err)
					return
				}
			}
		}
	}()
	err = convert(ctx)
	close(stop)
	<-watched
	var se *SpaceError
	if cause := context.Cause(ctx); errors.As(cause, &se) {
		return cause
	}
	return err
}
