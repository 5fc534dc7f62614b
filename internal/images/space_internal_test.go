package images

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// mostlyZero is n bytes: zeros, with data at the start, in the middle (not block-aligned)
// and, when tail, at the very end.
func mostlyZero(n int64, tail bool) []byte {
	b := make([]byte, n)
	for i := range 10000 {
		b[i] = byte(i%251 + 1)
	}
	copy(b[n/2+123:], "in the middle")
	if tail {
		copy(b[n-5:], "end!!")
	}
	return b
}

func gz(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// A mostly-zero stream is written as a sparse file of the right size and content.
func TestIngestWritesHoles(t *testing.T) {
	for _, tc := range []struct {
		name       string
		compressed bool
		tail       bool
	}{{"plain", false, true}, {"gzip", true, true}, {"gzip, zeros at the end", true, false}} {
		t.Run(tc.name, func(t *testing.T) {
			const n = 64 << 20
			data := mostlyZero(n, tc.tail)
			body := data
			if tc.compressed {
				body = gz(t, data)
			}
			f, err := os.Create(filepath.Join(t.TempDir(), "img"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			in, err := ingest(context.Background(), source{body: bytes.NewReader(body), total: int64(len(body)), what: "test"}, f,
				Options{Space: &SpaceGuard{}})
			if err != nil {
				t.Fatal(err)
			}
			if in.unpacked != n {
				t.Fatalf("unpacked %d bytes, want %d", in.unpacked, n)
			}
			fi, err := f.Stat()
			if err != nil {
				t.Fatal(err)
			}
			alloc := fi.Sys().(*syscall.Stat_t).Blocks * 512
			if fi.Size() != n {
				t.Fatalf("the file has %d bytes, want %d", fi.Size(), n)
			}
			// 10000 bytes at the start and two blocks elsewhere: a few blocks; a dense file
			// would take all 64 MiB.
			if alloc > 1<<20 {
				t.Fatalf("the file takes %d bytes on disk for %d bytes of mostly zeros: the zeros were written", alloc, n)
			}
			got, err := os.ReadFile(f.Name())
			if err != nil {
				t.Fatal(err)
			}
			if sha256.Sum256(got) != sha256.Sum256(data) {
				t.Fatal("the file's content differs from the stream's")
			}
			t.Logf("%d bytes in %d allocated", fi.Size(), alloc)
		})
	}
}

// fakeFS is a file system whose free space tests set.
type fakeFS struct{ avail, total int64 }

func (f *fakeFS) statfs(string) (FSSpace, error) { return FSSpace{Avail: f.avail, Total: f.total}, nil }

func TestSpaceReservations(t *testing.T) {
	const Mi = 1 << 20
	fs := &fakeFS{avail: 1000 * Mi, total: 2000 * Mi}
	g := &SpaceGuard{MinFree: MinFree{Percent: 10}, Statfs: fs.statfs, Step: 10 * Mi} // reserve 200Mi: 800Mi usable
	dir := t.TempDir()
	a, err := g.Reserve(dir, 500*Mi)
	if err != nil {
		t.Fatal(err)
	}
	// 500Mi are promised to a: 300Mi are left above the reserve.
	var se *SpaceError
	if _, err := g.Reserve(dir, 400*Mi); !errors.As(err, &se) || se.Others != 500*Mi {
		t.Fatalf("a second import of 400Mi: got %v, want a SpaceError counting the first's 500Mi", err)
	}
	if !strings.Contains(se.Error(), "free-space reserve of 200Mi (10% of") || !strings.Contains(se.Error(), "--min-free-space") {
		t.Errorf("the message does not say the rule: %v", se)
	}
	b, err := g.Reserve(dir, 300*Mi)
	if err != nil {
		t.Fatalf("300Mi fit exactly above the reserve: %v", err)
	}
	if got := g.Claimed(dir); got != 800*Mi {
		t.Fatalf("claimed %d, want 800Mi", got)
	}
	// a writes 100Mi (the free space shrinks by as much): its claim shrinks too.
	if err := a.Grow(100 * Mi); err != nil {
		t.Fatal(err)
	}
	fs.avail -= 100 * Mi
	if got := g.Claimed(dir); got != 700*Mi {
		t.Fatalf("claimed %d after a wrote 100Mi, want 700Mi", got)
	}
	// b writes past what it expected (a compressed file unpacks to more): each step is
	// checked; nothing is left above the reserve for it.
	if err := b.Grow(300 * Mi); err != nil {
		t.Fatal(err)
	}
	fs.avail -= 300 * Mi
	if err := b.Grow(1); !errors.As(err, &se) {
		t.Fatalf("b writing past its reservation with no space left above the reserve: got %v", err)
	}
	// An import of unknown size: its steps are claimed as it goes (a's 400Mi still count).
	b.Release()
	c, err := g.Reserve(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Grow(Mi); !errors.As(err, &se) || se.Others != 400*Mi {
		t.Fatalf("got %v, want a SpaceError counting a's remaining 400Mi", err)
	}
	a.Release()
	if err := c.Grow(Mi); err != nil {
		t.Fatal(err)
	}
	if got := c.claim(); got != 9*Mi {
		t.Fatalf("c's claim is %d, want the rest of its 10Mi step", got)
	}
	c.Release()
	c.Release() // twice is harmless
	if got := g.Claimed(dir); got != 0 {
		t.Fatalf("claimed %d after every release", got)
	}
	// A byte reserve.
	g2 := &SpaceGuard{MinFree: MinFree{Bytes: 500 * Mi}, Statfs: fs.statfs}
	if r, err := g2.Reserve(dir, 100*Mi); err != nil {
		t.Fatalf("free 600Mi, reserve 500Mi, 100Mi to write: %v", err)
	} else {
		r.Release()
	}
	if _, err := g2.Reserve(dir, 100*Mi+1); err == nil {
		t.Fatal("free 600Mi, reserve 500Mi: a reservation of more than 100Mi passed")
	}
	// Below the reserve already: not even an import of unknown size starts.
	g3 := &SpaceGuard{MinFree: MinFree{Bytes: 990 * Mi}, Statfs: fs.statfs}
	if _, err := g3.Reserve(dir, 0); !errors.As(err, &se) || !strings.Contains(err.Error(), "less free space than") {
		t.Fatalf("free 600Mi, reserve 990Mi: got %v", err)
	}
}

// An import whose published length does not fit above the reserve fails before it reads.
func TestIngestChecksSpaceFirst(t *testing.T) {
	fs := &fakeFS{avail: 100 << 20, total: 1 << 30}
	f, err := os.Create(filepath.Join(t.TempDir(), "img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := &countingReader{r: bytes.NewReader(make([]byte, 1<<20))}
	_, err = ingest(context.Background(), source{body: r, total: 200 << 20, what: "test"}, f,
		Options{Space: &SpaceGuard{MinFree: MinFree{Percent: 5}, Statfs: fs.statfs}})
	var ie *Error
	if !errors.As(err, &ie) || ie.Reason != ReasonInsufficientStorage || !strings.Contains(err.Error(), "the image store is full") {
		t.Fatalf("got %v, want %s", err, ReasonInsufficientStorage)
	}
	if r.n > 1<<20 {
		t.Fatalf("read %d bytes first", r.n)
	}
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func TestParseMinFree(t *testing.T) {
	for in, want := range map[string]MinFree{"10%": {Percent: 10}, " 2.5% ": {Percent: 2.5}, "20Gi": {Bytes: 20 << 30}, "0": {}, "0%": {}} {
		got, err := ParseMinFree(in)
		if err != nil || got != want {
			t.Errorf("%q: %v, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "ten", "100%", "-1%", "-5Gi", "10%%"} {
		if _, err := ParseMinFree(bad); err == nil || !strings.Contains(err.Error(), "--min-free-space") {
			t.Errorf("%q: got %v, want an error naming the flag", bad, err)
		}
	}
}
