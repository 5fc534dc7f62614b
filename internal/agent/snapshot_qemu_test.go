package agent

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/internal/qemu/qmp"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// TestTakeLiveRealQEMU runs the live snapshot sequence against a real QEMU (machine none:
// nothing boots) that has a qcow2 disk open: the snapshot file is a whole copy of
// the disk, QEMU is left without the target node, job or fd set, and a second snapshot of
// the same disk works.
func TestTakeLiveRealQEMU(t *testing.T) {
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 is not installed (install qemu-system-x86)")
	}
	needQemuImg(t)
	if _, err := exec.LookPath("qemu-io"); err != nil {
		t.Skip("qemu-io is not installed (install qemu-utils)")
	}
	snapshotPoll = 20 * time.Millisecond
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	disk := filepath.Join(dir, "disk.qcow2")
	if err := storage.CreateBlank(ctx, disk, 8<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0x41 0 1M", "-c", "write -P 0x42 4M 64k", disk).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io: %v: %s", err, out)
	}
	disk2 := filepath.Join(dir, "disk2.qcow2")
	if err := storage.CreateBlank(ctx, disk2, 4<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0x43 1M 1M", disk2).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io: %v: %s", err, out)
	}
	sock := filepath.Join(dir, "qmp.sock")
	cmd := exec.Command(bin, "-machine", "none", "-nodefaults", "-display", "none", "-S",
		"-blockdev", "driver=file,filename="+disk+",node-name=drive-root-file",
		"-blockdev", "driver=qcow2,file=drive-root-file,node-name=drive-root",
		"-blockdev", "driver=file,filename="+disk2+",node-name=drive-data-file",
		"-blockdev", "driver=qcow2,file=drive-data-file,node-name=drive-data",
		"-qmp", "unix:"+sock+",server=on,wait=off")
	out := &strings.Builder{}
	var mu sync.Mutex
	w := writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return out.Write(p) })
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	var mon *qmp.Conn
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		dctx, dcancel := context.WithTimeout(ctx, 2*time.Second)
		mon, err = qmp.Dial(dctx, sock)
		dcancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("QMP: %v; QEMU said: %s", err, out.String())
		}
	}
	defer mon.Close()
	// Running (machine none runs nothing): QEMU frees removed fd sets only while it runs.
	if err := mon.Cont(ctx); err != nil {
		t.Fatal(err)
	}

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
		var jobs []qmpJob
		if err := mon.Execute(ctx, "query-jobs", nil, &jobs); err != nil || len(jobs) != 0 {
			t.Errorf("jobs left: %+v %v", jobs, err)
		}
		var sets []any
		if err := mon.Execute(ctx, "query-fdsets", nil, &sets); err != nil || len(sets) != 0 {
			t.Errorf("fd sets left: %+v %v", sets, err)
		}
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

type writerFunc func(p []byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
