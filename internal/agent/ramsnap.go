package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/qemu"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// RAM with a VM snapshot (spec.keepRAM). The disks of a running VM are copied at one instant
// by takeLive (snapshot.go); with keepRAM the agent pauses the guest's vCPUs for that instant
// instead of freezing its filesystems, and while they are paused, right after the copy jobs
// started, QEMU writes the guest's RAM and device state with snapshot-save into a qcow2 file
// of its own (its internal snapshot holds the state; no disk of the VM is part of it). Then
// the vCPUs run again, and the disks are copied in the background as for any snapshot: the
// guest is paused for the RAM save only. The file and its record (ramRecord) are kept on this
// node in storage.SnapshotRAMDir.
//
// A restore of such a snapshot (the snapshot controller) restores the disks and leaves the
// VM hibernated, with a file in its run directory naming the snapshot
// (storage.ResumeFromSnapshotPath); the next start resumes from it (hibernate.go): QEMU starts
// paused with the devices of the record's run spec, loads a copy of the state file with
// snapshot-load, and goes on where the guest was.

const (
	ramStateFile   = "state.qcow2"
	ramStatePart   = "state.qcow2.part"
	ramMetaFile    = "meta.json"
	ramSnapshotTag = "rakhsh"
	// snapshotRAMCopy, in a VM's run directory, is the copy of a RAM state a start loads.
	snapshotRAMCopy = "snapshot-ram.qcow2"
)

// ramRecord is what a RAM state needs to be resumed: the QEMU it came from.
type ramRecord struct {
	SnapshotUID string    `json:"snapshotUID"`
	VMUID       string    `json:"vmUID"`
	SavedAt     time.Time `json:"savedAt"`
	// Size is the state file's length in bytes.
	Size    int64   `json:"size"`
	RunSpec runSpec `json:"runSpec"`
}

// ramSave is a RAM state being saved into a running QEMU's block node of the same name as its
// job (id).
type ramSave struct {
	mon  snapshotMonitor
	dir  string
	id   string
	set  int // the state file's fd set in QEMU (-1: none)
	node bool
	took time.Duration
	size int64
}

// ramJobID names the job and block node that save the RAM state of VM snapshot uid.
func ramJobID(uid string) string { return "ram-" + strings.ReplaceAll(uid, "-", "")[:20] }

// ramSaveCheck says why the running QEMU's RAM cannot be kept ("" when it can): a resumed
// QEMU is built from the VM's spec and the run spec, which do not hold removed vCPUs or
// hot-plugged devices.
func ramSaveCheck(in *instance, rs *runSpec, spec *v1alpha1.VirtualMachineSpec) string {
	if changed := pendingChanges(&rs.Spec, spec); len(changed) > 0 {
		return "the VM's spec has changes that wait for a restart (" + strings.Join(changed, ", ") + "), and a restore could not resume the RAM state under it: restart the virtual machine first, or take the snapshot without keepRAM"
	}
	if len(rs.RetiredCPUSlots) > 0 {
		return "vCPUs were removed from the running guest, which a resumed QEMU cannot reproduce: restart the virtual machine first, or take the snapshot without keepRAM"
	}
	if hp := readHotplugState(in.runDir, in.pid); len(hp.Disks)+len(hp.NICs) > 0 {
		return "hot-plugged devices are not kept with the RAM state: detach them first, or take the snapshot without keepRAM"
	}
	return ""
}

// prepareRAMSave creates the state file of VM snapshot uid and opens it in QEMU, before the
// guest is paused.
func (a *Agent) prepareRAMSave(ctx context.Context, mon snapshotMonitor, uid string, memory int64) (*ramSave, error) {
	dir := storage.SnapshotRAMDir(a.cfg.DataDir, uid)
	_ = os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	need := memory + 64<<20
	if free, err := hibernationFreeSpace(dir); err == nil && free < need {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("not enough free space on node %s for the RAM state: %d MiB free in %s, up to %d MiB needed", a.cfg.NodeName, free>>20, a.cfg.DataDir, need>>20)
	}
	r := &ramSave{mon: mon, dir: dir, id: ramJobID(uid), set: -1}
	part := filepath.Join(dir, ramStatePart)
	a.dropSnapshotLeftovers(ctx, mon, r.id)
	dropFDSets(ctx, mon, "ram:"+part)
	// The state goes after the (tiny) virtual disk of the file: its size does not bound it.
	if err := storage.CreateBlank(ctx, part, 1<<20); err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("creating the RAM state file: %w", err)
	}
	f, err := os.OpenFile(part, os.O_RDWR, 0)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	info, err := mon.AddFD(ctx, f, -1, "ram:"+part)
	f.Close()
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("add-fd: %w", err)
	}
	r.set = info.FDSetID
	args := map[string]any{"driver": "qcow2", "node-name": r.id, "file": map[string]any{"driver": "file", "filename": qemu.FDSetPath(info.FDSetID)}}
	if err := mon.Execute(ctx, "blockdev-add", args, nil); err != nil {
		r.close(ctx)
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("blockdev-add %s: %w", r.id, err)
	}
	r.node = true
	return r, nil
}

// save writes the paused guest's RAM and device state into the state file (takeLiveAt's
// atInstant).
func (r *ramSave) save(ctx context.Context) error {
	start := time.Now()
	args := map[string]any{"job-id": r.id, "tag": ramSnapshotTag, "vmstate": r.id, "devices": []string{r.id}}
	if err := r.mon.Execute(ctx, "snapshot-save", args, nil); err != nil {
		return fmt.Errorf("saving the RAM state: snapshot-save: %w", err)
	}
	if err := waitJobs(ctx, r.mon, []string{r.id}); err != nil {
		return fmt.Errorf("saving the RAM state: %w", err)
	}
	r.took = time.Since(start)
	return nil
}

// close takes the state file out of QEMU.
func (r *ramSave) close(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if r.node {
		_ = r.mon.Execute(ctx, "blockdev-del", map[string]any{"node-name": r.id}, nil)
		r.node = false
	}
	if r.set >= 0 {
		_ = r.mon.Execute(ctx, "remove-fd", map[string]any{"fdset-id": r.set}, nil)
		r.set = -1
	}
}

// commit keeps the saved state with its record (written last: a state without one is never
// resumed).
func (r *ramSave) commit(rec ramRecord) error {
	state := filepath.Join(r.dir, ramStateFile)
	if err := storage.Commit(filepath.Join(r.dir, ramStatePart), state); err != nil {
		return err
	}
	fi, err := os.Stat(state)
	if err != nil {
		return err
	}
	rec.Size, r.size = fi.Size(), fi.Size()
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	tmp := filepath.Join(r.dir, ramMetaFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return storage.Commit(tmp, filepath.Join(r.dir, ramMetaFile))
}

// loadRAMRecord reads the record of the RAM state of VM snapshot uid kept on this node and
// checks that its state file is complete.
func loadRAMRecord(dataDir, uid, vmUID string) (*ramRecord, error) {
	if err := storage.CheckUID(uid); err != nil {
		return nil, fmt.Errorf("the snapshot uid %q: %w", uid, err)
	}
	dir := storage.SnapshotRAMDir(dataDir, uid)
	var rec ramRecord
	size, found, err := readStateRecord(dir, ramMetaFile, ramStateFile, &rec)
	switch {
	case err != nil:
		return nil, err
	case !found:
		return nil, fmt.Errorf("the RAM state of VirtualMachineSnapshot uid %s is not on this node", uid)
	case size != rec.Size || rec.SnapshotUID != uid:
		return nil, fmt.Errorf("the RAM state of VirtualMachineSnapshot uid %s has %d bytes, its record says %d (of snapshot %s)", uid, size, rec.Size, rec.SnapshotUID)
	}
	if rec.VMUID != vmUID {
		return nil, fmt.Errorf("the RAM state of VirtualMachineSnapshot uid %s is of VM uid %s, not of this one (%s)", uid, rec.VMUID, vmUID)
	}
	return &rec, nil
}

// loadSnapshotRAM feeds a QEMU that was started paused (not waiting for an incoming stream)
// the RAM state of VM snapshot uid: a copy of the state file (snapshot-load writes to the file
// it loads from; the snapshot's own stays as it is) is opened in QEMU and loaded, then taken
// out and removed. The guest is then paused where the snapshot was taken.
func loadSnapshotRAM(ctx context.Context, mon snapshotMonitor, dataDir, runDir, uid string) error {
	src := filepath.Join(storage.SnapshotRAMDir(dataDir, uid), ramStateFile)
	cp := filepath.Join(runDir, snapshotRAMCopy)
	defer os.Remove(cp)
	if err := copyFile(src, cp); err != nil {
		return fmt.Errorf("copying the RAM state: %w", err)
	}
	f, err := os.OpenFile(cp, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	info, err := mon.AddFD(ctx, f, -1, "ram:"+cp)
	f.Close()
	if err != nil {
		return fmt.Errorf("add-fd: %w", err)
	}
	id := ramJobID(uid)
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		_ = mon.Execute(cctx, "blockdev-del", map[string]any{"node-name": id}, nil)
		_ = mon.Execute(cctx, "remove-fd", map[string]any{"fdset-id": info.FDSetID}, nil)
	}()
	args := map[string]any{"driver": "qcow2", "node-name": id, "file": map[string]any{"driver": "file", "filename": qemu.FDSetPath(info.FDSetID)}}
	if err := mon.Execute(ctx, "blockdev-add", args, nil); err != nil {
		return fmt.Errorf("blockdev-add: %w", err)
	}
	if err := mon.Execute(ctx, "snapshot-load", map[string]any{"job-id": id, "tag": ramSnapshotTag, "vmstate": id, "devices": []string{id}}, nil); err != nil {
		return fmt.Errorf("snapshot-load: %w", err)
	}
	if err := waitJobs(ctx, mon, []string{id}); err != nil {
		return fmt.Errorf("snapshot-load: %w", err)
	}
	return nil
}

// copyFile copies src to a new file dst (qemu-img convert would drop the internal snapshot
// that holds the state).
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// ramSnapshotOf is the VM snapshot uid whose RAM a group of disk snapshots keeps ("" for none).
func ramSnapshotOf(group []v1alpha1.VirtualDiskSnapshot) string {
	for _, m := range group {
		if u := m.Annotations[v1alpha1.AnnotationVMSnapshotRAM]; u != "" {
			return u
		}
	}
	return ""
}

// pruneRAMStates removes the RAM states kept on this node of VM snapshots that no longer
// exist (deleted while the state was written, or while this node was away: the control plane
// removes only those on its own node).
func (a *Agent) pruneRAMStates(ctx context.Context) {
	root := filepath.Dir(storage.SnapshotRAMDir(a.cfg.DataDir, "x"))
	entries, err := os.ReadDir(root)
	if err != nil || len(entries) == 0 {
		return
	}
	list, err := a.c.List(ctx, "virtualmachinesnapshots", "", client.ListOptions{})
	if err != nil {
		a.log.Warn("listing VM snapshots to prune RAM states", "err", err)
		return
	}
	live := map[string]bool{}
	for _, raw := range list.Items {
		var m struct {
			Metadata struct {
				UID string `json:"uid"`
			} `json:"metadata"`
		}
		if json.Unmarshal(raw, &m) == nil {
			live[m.Metadata.UID] = true
		}
	}
	for _, e := range entries {
		if !live[e.Name()] && storage.CheckUID(e.Name()) == nil {
			a.log.Info("removing the RAM state of a deleted VM snapshot", "uid", e.Name())
			_ = os.RemoveAll(filepath.Join(root, e.Name()))
		}
	}
}

// dropFDSets removes the fd sets of a running QEMU that hold a descriptor named opaque: an
// earlier run of the agent added it and ended before it took it out again, and QEMU would
// keep the file open until it exits.
func dropFDSets(ctx context.Context, mon snapshotMonitor, opaque string) {
	var sets []fdSet
	if err := mon.Execute(ctx, "query-fdsets", nil, &sets); err != nil {
		return
	}
	for _, s := range sets {
		for _, fd := range s.FDs {
			if fd.Opaque == opaque {
				_ = mon.Execute(ctx, "remove-fd", map[string]any{"fdset-id": s.ID}, nil)
				break
			}
		}
	}
}
