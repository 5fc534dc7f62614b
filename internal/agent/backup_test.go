package agent

import (
	"slices"
	"testing"

	"github.com/rakhsh/rakhsh/internal/backup"
	"github.com/rakhsh/rakhsh/internal/nbd"
)

func TestBackupJobID(t *testing.T) {
	uid := "0f3a89d1-1bf4-4726-bdf6-582506edf8f4"
	id := backupJobID(3, uid)
	if len(id) > 31 || !isBackupJobID(id, uid) {
		t.Fatalf("%q (%d characters) is not recognised", id, len(id))
	}
	for _, other := range []string{"snap-" + id[4:], "bk-" + id[4:], "bkx-" + id[4:], backupJobID(0, "1f3a89d1-1bf4-4726-bdf6-582506edf8f4"), "bk3"} {
		if isBackupJobID(other, uid) {
			t.Errorf("%q taken for a job of %s", other, uid)
		}
	}
	if a, b := bitmapName("t1", uid), bitmapName("t2", uid); a == b || bitmapPrefix("t1") == bitmapPrefix("t2") {
		t.Errorf("two targets share bitmap names: %s %s", a, b)
	}
}

func TestBackupJobIDAny(t *testing.T) {
	id := backupJobID(0, "0f3a89d1-1bf4-4726-bdf6-582506edf8f4")
	if !isBackupJobID(id, "") {
		t.Errorf("%q not taken for a backup's", id)
	}
	for _, other := range []string{"bk0-short", "snap-0f3a89d11bf44726bdf6", "bkx-0f3a89d11bf44726bdf6", "vd-disk"} {
		if isBackupJobID(other, "") {
			t.Errorf("%q taken for a backup's", other)
		}
	}
}

func TestFleeceExtents(t *testing.T) {
	const mi = 1 << 20
	alloc := []nbd.Extent{{Offset: 0, Length: 8 * mi}, {Offset: 8 * mi, Length: 8 * mi, Flags: nbd.StateHole | nbd.StateZero}, {Offset: 16 * mi, Length: 16 * mi}}
	// A full read: everything present, the zero range not read.
	got := fleeceExtents(32*mi, alloc, nil)
	want := []backup.Extent{
		{Start: 0, Length: 8 * mi, Present: true, Data: true, Offset: 0},
		{Start: 8 * mi, Length: 8 * mi, Present: true, Zero: true, Offset: 8 * mi},
		{Start: 16 * mi, Length: 16 * mi, Present: true, Data: true, Offset: 16 * mi},
	}
	if !slices.Equal(got, want) {
		t.Errorf("full read:\n got %+v\nwant %+v", got, want)
	}
	// An incremental read: only the dirty ranges, cut where the allocation changes.
	dirty := []nbd.Extent{{Offset: 0, Length: 4 * mi}, {Offset: 4 * mi, Length: 8 * mi, Flags: nbd.StateDirty}, {Offset: 12 * mi, Length: 20 * mi}}
	got = fleeceExtents(32*mi, alloc, dirty)
	want = []backup.Extent{
		{Start: 0, Length: 4 * mi, Offset: 0},
		{Start: 4 * mi, Length: 4 * mi, Present: true, Data: true, Offset: 4 * mi},
		{Start: 8 * mi, Length: 4 * mi, Present: true, Zero: true, Offset: 8 * mi},
		{Start: 12 * mi, Length: 20 * mi, Offset: 12 * mi},
	}
	if !slices.Equal(got, want) {
		t.Errorf("incremental read:\n got %+v\nwant %+v", got, want)
	}
	if n := backup.PresentBytes(got); n != 8*mi {
		t.Errorf("present bytes %d, want 8 MiB", n)
	}
}
