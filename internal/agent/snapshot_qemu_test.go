package agent

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/internal/qemu/qmp"
	"github.com/rakhsh/rakhsh/internal/storage"
	"github.com/rakhsh/rakhsh/internal/testutil"
)

// TestTakeLiveRealQEMU runs the live snapshot sequence against a real QEMU (machine none:
// nothing boots) that has a qcow2 disk open: the snapshot file is a whole copy of
// the disk, QEMU is left without the target node, job or fd set, and a second snapshot of
// the same disk works.
func TestTakeLiveRealQEMU(t *testing.T) {
	needQemuImg(t)
	snapshotPoll = 20 * time.Millisecond
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	disk := writtenDisk(t, ctx, filepath.Join(dir, "disk.qcow2"), 8<<20, "write -P 0x41 0 1M", "write -P 0x42 4M 64k")
	disk2 := writtenDisk(t, ctx, filepath.Join(dir, "disk2.qcow2"), 4<<20, "write -P 0x43 1M 1M")
	mon, out := startBlockQEMU(t, ctx, dir, disk, disk2)
	defer mon.Close()

	for i, id := range []string{"snap-one", "snap-two"} {
		target := filepath.Join(dir, id+".qcow2.part")
		res, err := takeLive(ctx, mon, nil, []snapDisk{{path: disk, target: target, size: 8 << 20, id: id}}, false)
		if err != nil {
			t.Fatalf("snapshot %d: %v; QEMU said: %s", i, err, out.String())
		}
		if res.frozen || res.copyTook <= 0 {
			t.Errorf("snapshot %d: %+v", i, res)
		}
		if cout, err := exec.Command("qemu-img", "compare", "-U", "-f", "qcow2", "-F", "qcow2", disk, target).CombinedOutput(); err != nil {
			t.Errorf("snapshot %d differs from the disk: %v: %s", i, err, cout)
		}
		var nodes []blockNode
		if err := mon.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
			t.Fatal(err)
		}
		for _, n := range nodes {
			if n.NodeName == id {
				t.Errorf("the target node %s is still in QEMU", id)
			}
		}
		checkNoneLeft(t, ctx, mon, "query-jobs", "jobs")
		checkNoneLeft(t, ctx, mon, "query-fdsets", "fd sets")
	}
	// Two disks at one instant, in one transaction.
	t1, t2 := filepath.Join(dir, "g1.qcow2.part"), filepath.Join(dir, "g2.qcow2.part")
	if _, err := takeLive(ctx, mon, nil, []snapDisk{{path: disk, target: t1, size: 8 << 20, id: "snap-g1"},
		{path: disk2, target: t2, size: 4 << 20, id: "snap-g2"}}, false); err != nil {
		t.Fatalf("group snapshot: %v; QEMU said: %s", err, out.String())
	}
	for _, p := range [][2]string{{disk, t1}, {disk2, t2}} {
		if cout, err := exec.Command("qemu-img", "compare", "-U", "-f", "qcow2", "-F", "qcow2", p[0], p[1]).CombinedOutput(); err != nil {
			t.Errorf("group snapshot of %s differs: %v: %s", p[0], err, cout)
		}
	}
	if _, err := os.Stat(disk); err != nil {
		t.Fatal(err)
	}
}

// writtenDisk creates a blank qcow2 disk of size at path and writes into it with qemu-io, one
// qemu-io command (such as "write -P 0x41 0 1M") a write. Without qemu-io the test is skipped.
func writtenDisk(tb testing.TB, ctx context.Context, path string, size int64, writes ...string) string {
	tb.Helper()
	if _, err := exec.LookPath("qemu-io"); err != nil {
		tb.Skip("qemu-io is not installed (install qemu-utils)")
	}
	if err := storage.CreateBlank(ctx, path, size); err != nil {
		tb.Fatal(err)
	}
	args := []string{"-f", "qcow2"}
	for _, w := range writes {
		args = append(args, "-c", w)
	}
	if out, err := exec.Command("qemu-io", append(args, path)...).CombinedOutput(); err != nil {
		tb.Fatalf("qemu-io: %v: %s", err, out)
	}
	return path
}

// startBlockQEMU starts a QEMU with machine none (nothing boots) that has the qcow2 disks
// open as block nodes drive-0, drive-1, ..., running, and returns its QMP connection and its
// output so far. It is killed at the end of the test.
func startBlockQEMU(tb testing.TB, ctx context.Context, dir string, disks ...string) (*qmp.Conn, fmt.Stringer) {
	tb.Helper()
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		tb.Skip("qemu-system-x86_64 is not installed (install qemu-system-x86)")
	}
	sock := filepath.Join(dir, "qmp.sock")
	args := []string{"-machine", "none", "-nodefaults", "-display", "none", "-S", "-qmp", "unix:" + sock + ",server=on,wait=off"}
	for i, d := range disks {
		n := "drive-" + strconv.Itoa(i)
		args = append(args, "-blockdev", "driver=file,filename="+d+",node-name="+n+"-file",
			"-blockdev", "driver=qcow2,file="+n+"-file,node-name="+n)
	}
	proc := testutil.StartChild(tb, exec.Command(bin, args...))
	waitCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	var mon *qmp.Conn
	proc.Retry(waitCtx, tb, "QMP", func() (err error) {
		dctx, dcancel := context.WithTimeout(ctx, 2*time.Second)
		defer dcancel()
		mon, err = qmp.Dial(dctx, sock)
		return err
	})
	// Running: QEMU frees removed fd sets only while it runs.
	if err := mon.Cont(ctx); err != nil {
		tb.Fatal(err)
	}
	return mon, proc.Out
}

// BenchmarkLiveSnapshot256MiB: a live snapshot (blockdev-backup sync=full through QMP, no
// guest freeze) of a 256 MiB qcow2 disk full of data that a running QEMU has open, side by
// side with qemu-img convert of the same file when no process has it open (what an offline
// snapshot does).
func BenchmarkLiveSnapshot256MiB(b *testing.B) {
	snapshotPoll = 5 * time.Millisecond
	dir := b.TempDir()
	ctx := context.Background()
	disk := writtenDisk(b, ctx, filepath.Join(dir, "disk.qcow2"), 256<<20, "write -P 0x5a 0 256M")
	b.Run("live-blockdev-backup", func(b *testing.B) {
		mon, out := startBlockQEMU(b, ctx, dir, disk)
		defer mon.Close()
		b.SetBytes(256 << 20)
		for i := 0; b.Loop(); i++ {
			target := filepath.Join(dir, "snap.qcow2.part")
			if _, err := takeLive(ctx, mon, nil, []snapDisk{{path: disk, target: target, size: 256 << 20, id: "snap-" + strconv.Itoa(i)}}, false); err != nil {
				b.Fatalf("%v; QEMU said: %s", err, out.String())
			}
			os.Remove(target)
		}
	})
	b.Run("offline-qemu-img-convert", func(b *testing.B) {
		b.SetBytes(256 << 20)
		for b.Loop() {
			target := filepath.Join(dir, "conv.qcow2")
			if err := storage.Convert(ctx, disk, "qcow2", target, "qcow2"); err != nil {
				b.Fatal(err)
			}
			os.Remove(target)
		}
	})
}
