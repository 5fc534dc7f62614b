package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rakhsh/rakhsh/internal/backup"
	"github.com/rakhsh/rakhsh/internal/nbd"
	"github.com/rakhsh/rakhsh/internal/qemu"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// A backup reads its instant of the disks through image fleecing: per disk, an empty scratch
// qcow2 node whose backing is the disk's own node, and a copy job (blockdev-backup, sync
// none) from the disk into it. The job copies nothing by itself; before the guest overwrites
// a block, QEMU's copy-before-write filter puts the old data into the scratch node. So the
// scratch node reads, block by block, as the disk was at the instant the job started, while
// only what the guest overwrites meanwhile is ever copied. QEMU exports the scratch nodes
// over NBD on a socket of the agent's, with the disk's dirty bitmap of the previous backup
// (a frozen copy of it) for incremental reads, and the agent chunks straight from the export.

// fleece is the NBD view of a backup's disks at its instant, in the QEMU that has them open.
type fleece struct {
	mon   snapshotMonitor
	disks []bkDisk
	tmp   string // the frozen copies of the previous bitmaps ("" in none of the disks)
	sock  string // the NBD server's socket
	ln    net.Listener
	added []snapAdded // scratch nodes, descriptor sets, copy jobs
	// serving: the NBD server was started; exports: the exports added.
	serving bool
	exports []string
}

// tmpBitmapName is the frozen copy of the previous backup's bitmap that backup uid reads: not
// persistent, disabled (it changes no more after the instant).
func tmpBitmapName(uid string) string {
	return "bkt-" + strings.ReplaceAll(uid, "-", "")[:20]
}

// nbdSocketPath is the socket of the NBD server of backup uid's export, in the work directory
// (mode 0700: only the agent reaches it).
func (a *Agent) nbdSocketPath(uid string) string {
	return filepath.Join(a.backupWorkDir(), "nbd-"+strings.ReplaceAll(uid, "-", "")[:12]+".sock")
}

// fleeceForBackup adds the scratch nodes, holds the guest still (fz, when not nil), and in
// one transaction adds the new bitmap and starts the copy-before-write jobs; then it exports
// the scratch nodes over NBD on sock. byPath: the QEMU is a storage daemon of the agent's (as
// root), which opens files and binds the socket by path; a VM's QEMU gets descriptors. On
// failure it undoes what it did, the new bitmaps too.
func fleeceForBackup(ctx context.Context, mon snapshotMonitor, fz freezer, disks []bkDisk, newBitmap, tmp, sock string, byPath bool) (f *fleece, res liveResult, err error) {
	f = &fleece{mon: mon, disks: disks, sock: sock}
	for _, d := range disks {
		if d.prevBitmap != "" {
			f.tmp = tmp
		}
	}
	bitmapsAdded := false
	defer func() {
		if err == nil {
			return
		}
		f.close(ctx)
		if bitmapsAdded {
			uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			for _, d := range disks {
				_ = mon.Execute(uctx, "block-dirty-bitmap-remove", map[string]any{"node": d.src, "name": newBitmap}, nil)
			}
		}
		f = nil
	}()
	if err := addBackupTargets(ctx, mon, disks, &f.added, byPath); err != nil {
		return f, res, err
	}
	frozenAt, _ := freezeForSnapshot(ctx, fz, false, &res) // fails only when the freeze is required
	// Not cancelled halfway: QEMU may have carried out a transaction whose answer was not
	// waited for, and then its jobs would not be known to be there to cancel.
	tctx, tcancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	terr := mon.Execute(tctx, "transaction", map[string]any{"actions": backupActions(disks, newBitmap, tmp)}, nil)
	tcancel()
	if terr == nil {
		bitmapsAdded = true
		for i := range f.added {
			f.added[i].job = true
		}
	}
	if res.frozen {
		if thawErr := thawAfterSnapshot(ctx, fz, frozenAt, &res); thawErr != nil && terr == nil {
			return f, res, fmt.Errorf("thawing the guest: %w", thawErr)
		}
	}
	if terr != nil {
		return f, res, fmt.Errorf("starting the copy-before-write jobs: %w", terr)
	}
	return f, res, f.export(ctx, byPath)
}

// export starts the NBD server and exports each disk's scratch node (named as the node), with
// the frozen bitmap where the disk is read incrementally.
func (f *fleece) export(ctx context.Context, byPath bool) error {
	os.Remove(f.sock)
	addr := map[string]any{"type": "unix", "data": map[string]any{"path": f.sock}}
	if !byPath {
		p, ok := f.mon.(interface {
			GetFD(ctx context.Context, name string, f *os.File) error
		})
		if !ok {
			return errors.New("the VM's monitor cannot pass descriptors")
		}
		ln, err := net.Listen("unix", f.sock)
		if err != nil {
			return fmt.Errorf("the NBD socket: %w", err)
		}
		f.ln = ln
		lf, err := ln.(*net.UnixListener).File()
		if err == nil {
			err = p.GetFD(ctx, "backup-nbd", lf)
			lf.Close()
		}
		if err != nil {
			return fmt.Errorf("passing the NBD socket to QEMU: %w", err)
		}
		// nbd-server-start takes the legacy socket address form (with "data").
		addr = map[string]any{"type": "fd", "data": map[string]any{"str": "backup-nbd"}}
	}
	if err := f.mon.Execute(ctx, "nbd-server-start", map[string]any{"addr": addr}, nil); err != nil {
		return fmt.Errorf("nbd-server-start: %w", err)
	}
	f.serving = true
	for _, d := range f.disks {
		args := map[string]any{"type": "nbd", "id": d.id, "node-name": d.id, "name": d.id, "writable": false}
		if d.prevBitmap != "" {
			// Found in the scratch node's backing, the disk's node.
			args["bitmaps"] = []string{f.tmp}
		}
		if err := f.mon.Execute(ctx, "block-export-add", args, nil); err != nil {
			return fmt.Errorf("exporting disk %q: %w", d.name, err)
		}
		f.exports = append(f.exports, d.id)
	}
	return nil
}

// close takes the exports, the server, the jobs, the scratch nodes and the frozen bitmaps
// out of QEMU, and removes the scratch files (best effort, also when ctx has ended).
func (f *fleece) close(ctx context.Context) {
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	for _, id := range f.exports {
		// hard: the agent's connection may not be seen closed yet.
		_ = f.mon.Execute(uctx, "block-export-del", map[string]any{"id": id, "mode": "hard"}, nil)
	}
	f.exports = nil
	if f.serving {
		_ = f.mon.Execute(uctx, "nbd-server-stop", nil, nil)
		f.serving = false
	}
	if f.ln != nil {
		f.ln.Close()
		f.ln = nil
	}
	os.Remove(f.sock)
	for i := len(f.added) - 1; i >= 0; i-- {
		a := f.added[i]
		if a.job {
			_ = f.mon.Execute(uctx, "job-cancel", map[string]any{"id": a.node}, nil)
			waitJobsGone(uctx, f.mon, []string{a.node})
		}
		if a.node != "" {
			delNode(uctx, f.mon, a.node)
		}
		if a.set >= 0 {
			_ = f.mon.Execute(uctx, "remove-fd", map[string]any{"fdset-id": a.set}, nil)
		}
	}
	f.added = nil
	if f.tmp != "" {
		for _, d := range f.disks {
			_ = f.mon.Execute(uctx, "block-dirty-bitmap-remove", map[string]any{"node": d.src, "name": f.tmp}, nil)
		}
	}
	for _, d := range f.disks {
		os.Remove(d.target)
	}
}

// delNode removes a block node, trying again for about a second: an export being deleted
// (block-export-del ends before the export has let go of its node) still holds it.
func delNode(ctx context.Context, mon snapshotMonitor, node string) {
	for try := 0; ; try++ {
		err := mon.Execute(ctx, "blockdev-del", map[string]any{"node-name": node}, nil)
		if err == nil || try == 20 || ctx.Err() != nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// open connects to the export of disk d and returns its extents to back up: the blocks its
// frozen bitmap marks (all of the disk for a full read), each with whether it reads as data
// or zeros.
func (f *fleece) open(d bkDisk) (*nbd.Conn, []backup.Extent, error) {
	contexts := []string{"base:allocation"}
	dirtyCtx := ""
	if d.prevBitmap != "" {
		dirtyCtx = "qemu:dirty-bitmap:" + f.tmp
		contexts = append(contexts, dirtyCtx)
	}
	c, err := nbd.Dial("unix", f.sock, d.id, contexts, 30*time.Second)
	if err != nil {
		return nil, nil, err
	}
	if c.Size() != d.size {
		c.Close()
		return nil, nil, fmt.Errorf("the export of disk %q has %d bytes, not %d", d.name, c.Size(), d.size)
	}
	alloc, err := c.Extents("base:allocation")
	var dirty []nbd.Extent
	if err == nil && dirtyCtx != "" {
		dirty, err = c.Extents(dirtyCtx)
	}
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return c, fleeceExtents(d.size, alloc, dirty), nil
}

// fleeceExtents lays the dirty ranges of the frozen bitmap (nil: a full read, everything is
// present) over the allocation status of the export (base:allocation: ranges that read as
// zeros need no read). Both lists run from 0 to size in order, as nbd.Conn.Extents returns
// them. The offsets are the export's own.
func fleeceExtents(size int64, alloc, dirty []nbd.Extent) []backup.Extent {
	var out []backup.Extent
	ai, di := 0, 0
	for at := int64(0); at < size; {
		for ai < len(alloc) && alloc[ai].Offset+alloc[ai].Length <= at {
			ai++
		}
		for di < len(dirty) && dirty[di].Offset+dirty[di].Length <= at {
			di++
		}
		end := size
		zero := false
		if ai < len(alloc) {
			end = min(end, alloc[ai].Offset+alloc[ai].Length)
			zero = alloc[ai].Flags&nbd.StateZero != 0
		}
		present := dirty == nil
		if dirty != nil && di < len(dirty) {
			end = min(end, dirty[di].Offset+dirty[di].Length)
			present = dirty[di].Flags&nbd.StateDirty != 0
		}
		e := backup.Extent{Start: at, Length: end - at, Present: present, Zero: present && zero, Data: present && !zero, Offset: at}
		if k := len(out) - 1; k >= 0 && out[k].Present == e.Present && out[k].Data == e.Data && out[k].Zero == e.Zero {
			out[k].Length += e.Length
		} else {
			out = append(out, e)
		}
		at = end
	}
	return out
}

// throttled reads from r at most rate bytes per second on average (rate 0: no limit): the
// backup's bandwidthLimit, on what it reads from the disks.
type throttled struct {
	r     io.ReaderAt
	rate  int64
	start time.Time
	read  int64
	ctx   context.Context
}

func (t *throttled) ReadAt(p []byte, off int64) (int, error) {
	if t.rate > 0 {
		if t.start.IsZero() {
			t.start = time.Now()
		}
		due := t.start.Add(time.Duration(float64(t.read) / float64(t.rate) * float64(time.Second)))
		if wait := time.Until(due); wait > 0 {
			select {
			case <-time.After(wait):
			case <-t.ctx.Done():
				return 0, t.ctx.Err()
			}
		}
	}
	n, err := t.r.ReadAt(p, off)
	t.read += int64(n)
	return n, err
}

// addBackupTargets creates each disk's scratch file and opens it in QEMU as block node d.id
// over the disk's own node. byPath: the QEMU (a storage daemon of the agent's, as root) opens
// the file by its path rather than through a passed descriptor.
func addBackupTargets(ctx context.Context, mon snapshotMonitor, disks []bkDisk, done *[]snapAdded, byPath bool) error {
	for _, d := range disks {
		if err := os.MkdirAll(filepath.Dir(d.target), 0o700); err != nil {
			return err
		}
		os.Remove(d.target)
		if err := storage.CreateBlank(ctx, d.target, d.size); err != nil {
			return fmt.Errorf("creating the scratch file: %w", err)
		}
		filename := d.target
		*done = append(*done, snapAdded{set: -1})
		if !byPath {
			fh, err := os.OpenFile(d.target, os.O_RDWR, 0)
			if err != nil {
				return err
			}
			info, err := mon.AddFD(ctx, fh, -1, "backup:"+d.target)
			fh.Close()
			if err != nil {
				return fmt.Errorf("add-fd: %w", err)
			}
			(*done)[len(*done)-1].set = info.FDSetID
			filename = qemu.FDSetPath(info.FDSetID)
		}
		args := map[string]any{"driver": "qcow2", "node-name": d.id,
			"file": map[string]any{"driver": "file", "filename": filename}, "backing": d.src}
		if err := mon.Execute(ctx, "blockdev-add", args, nil); err != nil {
			return fmt.Errorf("blockdev-add %s: %w", d.id, err)
		}
		(*done)[len(*done)-1].node = d.id
	}
	return nil
}

// backupActions is the transaction of a backup's instant: for each disk the new bitmap the
// next backup reads, a frozen copy (tmp) of the previous backup's bitmap where the disk is
// read incrementally (the previous bitmap itself goes on recording: should this backup fail,
// the next one reads it), and the copy-before-write job into the scratch node. Not
// completion-mode grouped (block-dirty-bitmap-add refuses it): a job that fails fails the
// whole backup anyway.
func backupActions(disks []bkDisk, newBitmap, tmp string) []map[string]any {
	var actions []map[string]any
	for _, d := range disks {
		actions = append(actions, map[string]any{"type": "block-dirty-bitmap-add", "data": map[string]any{
			"node": d.src, "name": newBitmap, "persistent": true}})
		actions = append(actions, map[string]any{"type": "blockdev-backup", "data": map[string]any{
			"job-id": d.id, "device": d.src, "target": d.id, "sync": "none", "auto-dismiss": false}})
		if d.prevBitmap != "" {
			// After the job: a write landing between the two is then both in the copy and
			// marked (read again, harmlessly), never in neither.
			actions = append(actions,
				map[string]any{"type": "block-dirty-bitmap-add", "data": map[string]any{"node": d.src, "name": tmp, "disabled": true}},
				map[string]any{"type": "block-dirty-bitmap-merge", "data": map[string]any{"node": d.src, "target": tmp, "bitmaps": []string{d.prevBitmap}}})
		}
	}
	return actions
}
