package backup

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const (
	uidB1 = "11111111-1111-4111-8111-111111111111"
	uidB2 = "22222222-2222-4222-8222-222222222222"
	uidVM = "33333333-3333-4333-8333-333333333333"
)

// memDisk is a disk's copy as a byte slice: ReadAt at the "file offsets" the extents give.
type memDisk []byte

func (m memDisk) ReadAt(p []byte, off int64) (int, error) { return copy(p, m[off:]), nil }

// pattern is n bytes that do not repeat (compressible: each byte is one of 16 values).
func pattern(n int, seed byte) []byte {
	r := rand.New(rand.NewPCG(uint64(seed), uint64(n)))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.IntN(16))
	}
	return b
}

func TestPutGetDedupAndCorruption(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	data := pattern(ChunkSize, 1)
	sum, added, err := s.Put(data)
	if err != nil || sum == "" || added <= 0 || added >= ChunkSize {
		t.Fatalf("put: %q %d %v", sum, added, err)
	}
	if sum2, added2, err := s.Put(data); err != nil || sum2 != sum || added2 != 0 {
		t.Fatalf("second put: %q %d %v, want the same name and nothing added", sum2, added2, err)
	}
	if z, added, err := s.Put(make([]byte, ChunkSize)); err != nil || z != "" || added != 0 {
		t.Fatalf("zeros: %q %d %v", z, added, err)
	}
	got, err := s.Get(sum, ChunkSize)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("get: %v", err)
	}
	// A chunk whose file was overwritten with another chunk's data is caught.
	other := pattern(ChunkSize, 2)
	osum, _, _ := s.Put(other)
	raw, _ := os.ReadFile(s.chunkPath(osum))
	if err := os.WriteFile(s.chunkPath(sum), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(sum, ChunkSize); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("a swapped chunk: %v, want ErrCorrupt", err)
	}
	// So is one that is not zstd at all, and one that is gone.
	os.WriteFile(s.chunkPath(sum), []byte("garbage"), 0o600)
	if _, err := s.Get(sum, ChunkSize); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("garbage: %v, want ErrCorrupt", err)
	}
	os.Remove(s.chunkPath(sum))
	if _, err := s.Get(sum, ChunkSize); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("missing chunk: %v", err)
	}
	if _, err := s.Get("../../etc/passwd", 10); err == nil {
		t.Fatal("a path as chunk name was read")
	}
}

func manifest(uid string, disks ...Disk) *Manifest {
	return &Manifest{Version: ManifestVersion, Backup: Ref{Namespace: "p", Name: "b", UID: uid}, VM: Ref{Namespace: "p", Name: "vm", UID: uidVM},
		Target: "t", CreatedAt: time.Unix(1700000000, 0).UTC(), ChunkSize: ChunkSize, Disks: disks}
}

// TestFullThenIncremental: a full backup of a disk, then an incremental one over two changed
// ranges (one data, one zeroed) reads only those ranges, stores only the chunks they touch,
// and both restore to the disk's contents at their time.
func TestFullThenIncremental(t *testing.T) {
	ctx := context.Background()
	s, _ := Open(t.TempDir())
	const size = 3*ChunkSize + 100000
	disk := pattern(size, 3)
	clear(disk[ChunkSize : 2*ChunkSize]) // a chunk of zeros
	full := []Extent{{Start: 0, Length: ChunkSize, Present: true, Data: true, Offset: 0},
		{Start: ChunkSize, Length: ChunkSize, Present: false, Zero: true},
		{Start: 2 * ChunkSize, Length: size - 2*ChunkSize, Present: true, Data: true, Offset: 2 * ChunkSize}}
	var last int64
	c1, st1, err := s.BackupDisk(ctx, memDisk(disk), size, full, nil, func(d int64) { last = d })
	if err != nil {
		t.Fatal(err)
	}
	if c1[1] != "" || c1[0] == "" || st1.Chunks != 3 || st1.NewChunks != 3 || st1.Read != size-ChunkSize || last != size-ChunkSize {
		t.Fatalf("full: chunks %q stats %+v progress %d", c1, st1, last)
	}
	before := bytes.Clone(disk)

	// The guest writes 64 KiB in chunk 0 and zeroes 64 KiB in chunk 3.
	copy(disk[100<<10:164<<10], pattern(64<<10, 9))
	clear(disk[3*ChunkSize : 3*ChunkSize+(64<<10)])
	// The copy QEMU writes for the incremental holds only the changed blocks, elsewhere in
	// its file.
	cp := make([]byte, 64<<10)
	copy(cp, disk[100<<10:164<<10])
	inc := []Extent{{Start: 0, Length: 100 << 10}, {Start: 100 << 10, Length: 64 << 10, Present: true, Data: true, Offset: 0},
		{Start: 164 << 10, Length: 3*ChunkSize - 164<<10},
		{Start: 3 * ChunkSize, Length: 64 << 10, Present: true, Zero: true},
		{Start: 3*ChunkSize + 64<<10, Length: size - 3*ChunkSize - 64<<10}}
	c2, st2, err := s.BackupDisk(ctx, memDisk(cp), size, inc, c1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st2.Read != 64<<10 || st2.NewChunks != 2 || c2[2] != c1[2] || c2[1] != "" || c2[0] == c1[0] || c2[3] == c1[3] {
		t.Fatalf("incremental: stats %+v, chunks %q after %q", st2, c2, c1)
	}
	// An unchanged incremental stores nothing.
	if c3, st3, err := s.BackupDisk(ctx, memDisk(nil), size, []Extent{{Start: 0, Length: size}}, c2, nil); err != nil || st3.Read != 0 || st3.NewChunks != 0 || !equal(c3, c2) {
		t.Fatalf("unchanged: %+v %v", st3, err)
	}

	for _, tc := range []struct {
		chunks []string
		want   []byte
	}{{c1, before}, {c2, disk}} {
		f, err := os.Create(filepath.Join(t.TempDir(), "r.raw"))
		if err != nil {
			t.Fatal(err)
		}
		f.Truncate(size)
		if err := s.RestoreDisk(ctx, Disk{Name: "root", Size: size, Chunks: tc.chunks}, f); err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(f.Name())
		f.Close()
		if !bytes.Equal(got, tc.want) {
			t.Fatal("a restore differs from the disk at its backup")
		}
	}

	// Manifests round-trip; verify finds a corrupted chunk; GC keeps what manifests use.
	m1 := manifest(uidB1, Disk{Name: "root", UID: uidVM, Size: size, Chunks: c1})
	m2 := manifest(uidB2, Disk{Name: "root", UID: uidVM, Size: size, Chunks: c2})
	for _, m := range []*Manifest{m1, m2} {
		if _, err := s.WriteManifest(m); err != nil {
			t.Fatal(err)
		}
	}
	rels, _ := s.Manifests()
	if len(rels) != 2 {
		t.Fatalf("manifests: %v", rels)
	}
	if got, err := s.ReadManifest(ManifestPath("p", uidVM, uidB2)); err != nil || !equal(got.Disks[0].Chunks, c2) {
		t.Fatalf("read manifest: %v", err)
	}
	if bad, err := s.Verify(ctx, m2); err != nil || len(bad) != 0 {
		t.Fatalf("verify: %v %v", bad, err)
	}
	os.WriteFile(s.chunkPath(c2[0]), []byte("x"), 0o600)
	if bad, err := s.Verify(ctx, m2); err != nil || len(bad) != 1 || bad[0].Chunk != 0 {
		t.Fatalf("verify of a corrupted chunk: %v %v", bad, err)
	}
	// The bad chunk was put aside: storing its data again heals the backup.
	if _, err := os.Stat(s.chunkPath(c2[0]) + ".bad"); err != nil {
		t.Fatalf("the corrupted chunk was not put aside: %v", err)
	}
	restored := make([]byte, ChunkSize)
	copy(restored, disk[:ChunkSize])
	if sum, added, err := s.Put(restored); err != nil || sum != c2[0] || added == 0 {
		t.Fatalf("storing the rotten chunk's data again: %q %d %v", sum, added, err)
	}
	if bad, err := s.Verify(ctx, m2); err != nil || len(bad) != 0 {
		t.Fatalf("verify after the chunk was stored again: %v %v", bad, err)
	}
	// While a backup holds the lock, the collection does not wait.
	unlock, err := s.Lock()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.GC(ctx, func() (func(string) bool, error) { t.Fatal("listed under a held lock"); return nil, nil }); !errors.Is(err, ErrBusy) {
		t.Fatalf("gc under a backup's lock: %v, want ErrBusy", err)
	}
	unlock()
	keepOnly := func(uids ...string) func() (func(string) bool, error) {
		return func() (func(string) bool, error) {
			return func(uid string) bool { return slices.Contains(uids, uid) }, nil
		}
	}
	res, err := s.GC(ctx, keepOnly(uidB2))
	if _, err := os.Stat(s.chunkPath(c2[0]) + ".bad"); err == nil {
		t.Error("gc kept the bad chunk")
	}
	if err != nil || res.Manifests != 1 || res.Chunks != 2 || res.Freed <= 0 {
		t.Fatalf("gc: %+v %v (want b1's manifest and its two chunks b2 does not share)", res, err)
	}
	for i, c := range c2 {
		if c == "" {
			continue
		}
		if _, err := os.Stat(s.chunkPath(c)); err != nil {
			t.Errorf("gc removed chunk %d that b2 uses", i)
		}
	}
	if _, err := os.Stat(s.chunkPath(c1[0])); err == nil {
		t.Error("gc kept b1's own chunk")
	}
	// A manifest that cannot be read stops the collection before any chunk goes.
	m3 := manifest(uidB1, Disk{Name: "root", UID: uidVM, Size: size, Chunks: c2})
	rel3, _ := s.WriteManifest(m3)
	os.WriteFile(filepath.Join(s.Dir, rel3), []byte(`{"version":2}`), 0o600)
	if _, err := s.GC(ctx, keepOnly(uidB1, uidB2)); err == nil || !strings.Contains(err.Error(), "not collecting") {
		t.Fatalf("gc with an unreadable manifest: %v", err)
	}
	if s.Missing(c2) != 0 {
		t.Fatal("gc removed chunks although a manifest could not be read")
	}
	res, err = s.GC(ctx, keepOnly())
	if err != nil || res.Manifests != 2 || res.Chunks != 3 {
		t.Fatalf("gc of everything: %+v %v (want both manifests and b2's three chunks)", res, err)
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestManifestChecks(t *testing.T) {
	good := manifest(uidB1, Disk{Name: "root", UID: uidVM, Size: ChunkSize + 1, Chunks: []string{"", ""}})
	data, err := good.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DecodeManifest(data); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(m *Manifest){
		"version":     func(m *Manifest) { m.Version = 2 },
		"chunk size":  func(m *Manifest) { m.ChunkSize = 1 },
		"uid":         func(m *Manifest) { m.Backup.UID = "../x" },
		"namespace":   func(m *Manifest) { m.Backup.Namespace = "../p" },
		"chunk count": func(m *Manifest) { m.Disks[0].Chunks = []string{""} },
		"chunk name":  func(m *Manifest) { m.Disks[0].Chunks[0] = "../../x" },
		"size":        func(m *Manifest) { m.Disks[0].Size = -1 },
		"repeated":    func(m *Manifest) { m.Disks = append(m.Disks, m.Disks[0]) },
	} {
		m, _ := DecodeManifest(data)
		mut(m)
		if _, err := m.Encode(); err == nil {
			t.Errorf("%s: a bad manifest was encoded", name)
		}
	}
	if _, err := DecodeManifest(append(bytes.Clone(data), []byte(`{}`)...)); err == nil {
		t.Error("trailing data accepted")
	}
	if _, err := DecodeManifest([]byte(`{"version":1,"extra":1}`)); err == nil {
		t.Error("unknown field accepted")
	}
}

func TestParseMap(t *testing.T) {
	out := `[{ "start": 0, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true, "offset": 327680},
{ "start": 65536, "length": 65536, "depth": 0, "present": false, "zero": true, "data": false}]`
	ex, err := ParseMap([]byte(out), 131072)
	if err != nil || len(ex) != 2 || !ex[0].Data || ex[0].Offset != 327680 || PresentBytes(ex) != 65536 {
		t.Fatalf("%+v %v", ex, err)
	}
	for _, bad := range []string{`[{"start":1,"length":1,"present":false}]`, `[{"start":0,"length":200000,"present":false}]`, `[{"start":0,"length":0,"present":false}]`, `{`,
		`[{"start":0,"length":131072}]`, `[{"start":0,"length":65536,"present":false}]`, `[{"start":0,"length":131072,"present":true,"data":true}]`} {
		if _, err := ParseMap([]byte(bad), 131072); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
}

func FuzzDecodeManifest(f *testing.F) {
	good, _ := manifest(uidB1, Disk{Name: "root", UID: uidVM, Size: 10, Chunks: []string{""}}).Encode()
	f.Add(good)
	f.Add([]byte(`{"version":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := DecodeManifest(data)
		if err != nil {
			return
		}
		again, err := m.Encode()
		if err != nil {
			t.Fatalf("a decoded manifest does not encode: %v", err)
		}
		if _, err := DecodeManifest(again); err != nil {
			t.Fatalf("an encoded manifest does not decode: %v", err)
		}
	})
}

func FuzzParseMap(f *testing.F) {
	f.Add([]byte(`[{"start":0,"length":65536,"present":true,"data":true,"offset":0}]`), int64(65536))
	f.Add([]byte(`[{"start":0,"length":4096,"present":false}]`), int64(65536))
	f.Fuzz(func(t *testing.T, data []byte, size int64) {
		ex, err := ParseMap(data, size)
		if err != nil {
			return
		}
		var at int64
		for _, e := range ex {
			if e.Start != at || e.Length <= 0 || e.Start+e.Length > size {
				t.Fatalf("accepted extent %+v", e)
			}
			at += e.Length
		}
		if at != size {
			t.Fatalf("accepted extents that end at %d of %d", at, size)
		}
	})
}
