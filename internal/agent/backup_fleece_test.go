package agent

import (
	"bytes"
	"context"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/internal/backup"
)

// TestFleeceRealQEMU runs a backup's read path against a real QEMU (machine none) that has a
// qcow2 disk open: a full read through the NBD export gives the disk's data, with the zero
// ranges not read; after a write, an incremental read over the first bitmap gives exactly the
// written blocks; close leaves QEMU without job, export, scratch node or frozen bitmap; and
// what a backup that never closed left (an agent killed in the middle) is removed by
// dropBackupLeftovers, which keeps the other bitmaps.
func TestFleeceRealQEMU(t *testing.T) {
	needQemuImg(t)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const size = 16 << 20
	disk := writtenDisk(t, ctx, filepath.Join(dir, "disk.qcow2"), size, "write -P 0x41 0 2M", "write -P 0x42 8M 1M")
	mon, qout := startBlockQEMU(t, ctx, dir, disk)
	defer mon.Close()
	a := &Agent{log: slog.New(slog.DiscardHandler)}
	disks := func(uid, prevBitmap string) []bkDisk {
		id := backupJobID(0, uid)
		return []bkDisk{{snapDisk: snapDisk{path: disk, target: filepath.Join(dir, "work", id+".qcow2"), size: size, id: id},
			name: "data", src: "drive-0", prevBitmap: prevBitmap}}
	}
	read := func(f *fleece) ([]byte, []backup.Extent) {
		t.Helper()
		c, ex, err := f.open(f.disks[0])
		if err != nil {
			t.Fatalf("open: %v; QEMU said: %s", err, qout.String())
		}
		defer c.Close()
		data := make([]byte, size)
		for _, e := range ex {
			if e.Data {
				if _, err := c.ReadAt(data[e.Start:e.Start+e.Length], e.Start); err != nil {
					t.Fatal(err)
				}
			}
		}
		return data, ex
	}
	uid1, uid2 := "0f3a89d1-1bf4-4726-bdf6-582506edf8f4", "1f3a89d1-1bf4-4726-bdf6-582506edf8f5"

	// A full read.
	f, _, err := fleeceForBackup(ctx, mon, nil, disks(uid1, ""), "b1", tmpBitmapName(uid1), filepath.Join(dir, "n1.sock"), false)
	if err != nil {
		t.Fatalf("fleece: %v; QEMU said: %s", err, qout.String())
	}
	data, ex := read(f)
	want := append(append(append(bytes.Repeat([]byte{0x41}, 2<<20), make([]byte, 6<<20)...), bytes.Repeat([]byte{0x42}, 1<<20)...), make([]byte, 7<<20)...)
	if !bytes.Equal(data, want) {
		t.Error("the full read differs from the disk")
	}
	if n := dataBytes(ex); n != 3<<20 {
		t.Errorf("the full read reads %d bytes, want the 3 MiB written (extents %+v)", n, ex)
	}
	f.close(ctx)
	checkClean(t, ctx, mon, []string{"b1"})

	// An incremental read over b1 after a write.
	hmp := func(cmd string) {
		var out string
		if err := mon.Execute(ctx, "human-monitor-command", map[string]any{"command-line": cmd}, &out); err != nil || strings.TrimSpace(out) != "" && !strings.Contains(out, "wrote") {
			t.Fatalf("%s: %v %q", cmd, err, out)
		}
	}
	hmp(`qemu-io drive-0 "write -P 0x43 12M 512k"`)
	f, _, err = fleeceForBackup(ctx, mon, nil, disks(uid2, "b1"), "b2", tmpBitmapName(uid2), filepath.Join(dir, "n2.sock"), false)
	if err != nil {
		t.Fatalf("incremental fleece: %v; QEMU said: %s", err, qout.String())
	}
	data, ex = read(f)
	if n := backup.PresentBytes(ex); n < 512<<10 || n > 1<<20 {
		t.Errorf("the incremental read has %d present bytes, want the 512 KiB written (up to a bitmap granule more): %+v", n, ex)
	}
	if !bytes.Equal(data[12<<20:12<<20+512<<10], bytes.Repeat([]byte{0x43}, 512<<10)) {
		t.Error("the incremental read lacks the write")
	}
	// The agent dies here: nothing closes. The next backup's sweep removes it all, and the
	// new bitmap of the backup that never finished, and keeps b1.
	a.dropBackupLeftovers(ctx, mon, "b2")
	checkClean(t, ctx, mon, []string{"b1"})
}

// dataBytes sums the extents that are read.
func dataBytes(ex []backup.Extent) int64 {
	var n int64
	for _, e := range ex {
		if e.Data {
			n += e.Length
		}
	}
	return n
}

// checkNoneLeft fails unless QEMU answers the query command with an empty list.
func checkNoneLeft(t *testing.T, ctx context.Context, mon snapshotMonitor, query, what string) {
	t.Helper()
	var left []any
	if err := mon.Execute(ctx, query, nil, &left); err != nil || len(left) != 0 {
		t.Errorf("%s left: %+v %v", what, left, err)
	}
}

// checkClean fails unless QEMU has no job, export or backup node left, and exactly the
// bitmaps named on its disk.
func checkClean(t *testing.T, ctx context.Context, mon snapshotMonitor, bitmaps []string) {
	t.Helper()
	checkNoneLeft(t, ctx, mon, "query-jobs", "jobs")
	checkNoneLeft(t, ctx, mon, "query-block-exports", "exports")
	var nodes []bitmapNode
	if err := mon.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if isBackupJobID(n.NodeName, "") {
			t.Errorf("node %s left", n.NodeName)
		}
		if n.NodeName == "drive-0" {
			var names []string
			for _, b := range n.Bitmaps {
				names = append(names, b.Name)
			}
			slices.Sort(names)
			if !slices.Equal(names, bitmaps) {
				t.Errorf("bitmaps %v, want %v", names, bitmaps)
			}
		}
	}
	// The NBD server is stopped: a new one starts.
	if err := mon.Execute(ctx, "nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": t.TempDir() + "/x.sock"}}}, nil); err != nil {
		t.Errorf("the NBD server was left running: %v", err)
	}
	_ = mon.Execute(ctx, "nbd-server-stop", nil, nil)
}
