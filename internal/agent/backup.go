package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/backup"
	"github.com/rakhsh/rakhsh/internal/nbd"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// Backups of running VMs. The backup controller hands a VirtualMachineBackup to the agent of
// the VM's node (status.nodeName, phase InProgress). The agent:
//
//  1. finds the VM's last Completed backup in the same target and reads its manifest; a disk
//     whose dirty bitmap from that backup is in QEMU and consistent is read incrementally,
//     any other disk whole (the reason is in status.disks[].fullReason);
//  2. opens, per disk, an empty scratch qcow2 file in DATA-DIR/backup-work over the disk's own
//     node (image fleecing, backup_fleece.go);
//  3. freezes the guest's filesystems (mode snapshot, when the guest agent answers) or pauses
//     its vCPUs (mode suspend);
//  4. in one QMP transaction, per disk: adds a new persistent dirty bitmap named after this
//     backup, a frozen copy of the previous backup's bitmap (incremental reads), and starts a
//     copy-before-write job (blockdev-backup, sync none) into the scratch node;
//  5. thaws or resumes the guest at once; the scratch node reads as the disk did at that
//     instant, since QEMU copies a block there before the guest overwrites it;
//  6. exports the scratch nodes over NBD, reads the present ranges (the whole disk, or the
//     blocks the frozen bitmap marks; ranges that read as zeros are not read), lays them over
//     the previous backup's chunks, stores the chunks the target lacks, takes the exports,
//     jobs and scratch nodes out of QEMU, and writes the manifest, which names the new bitmaps;
//  7. removes the previous backup's bitmaps. A backup that fails removes its own new bitmaps
//     instead, so the previous ones still cover every write since the last good backup: a
//     crash at any step costs at most a full read, never a wrong backup.

// backupWorkDir holds the scratch files of running backups and their NBD sockets.
func (a *Agent) backupWorkDir() string { return filepath.Join(a.cfg.DataDir, "backup-work") }

// bitmapPrefix is the prefix of the dirty bitmaps of backups into target.
func bitmapPrefix(target string) string {
	h := sha256.Sum256([]byte(target))
	return "rakhsh-backup-" + hex.EncodeToString(h[:4]) + "-"
}

// bitmapName is the dirty bitmap a backup leaves in each of its disks.
func bitmapName(target, backupUID string) string {
	return bitmapPrefix(target) + strings.ReplaceAll(backupUID, "-", "")[:16]
}

// runBackups carries out the backups handed to this node until ctx ends.
func (a *Agent) runBackups(ctx context.Context) {
	bs := runtime.NewTypedInformer[v1alpha1.VirtualMachineBackup](a.c, "virtualmachinebackups",
		client.ListOptions{FieldSelector: "status.nodeName=" + a.cfg.NodeName}, a.log)
	q := runtime.NewQueue("agent-backup", a.log)
	q.MaxBackoff = 10 * time.Second
	bs.OnChange(q.Add)
	// Work files of an earlier run are of backups that run again from the start (a QEMU job
	// still writing one holds its descriptor, and is cancelled when the backup runs again).
	if err := os.RemoveAll(a.backupWorkDir()); err != nil {
		a.log.Warn("removing backup work files", "err", err)
	}
	go bs.Run(ctx)
	q.Run(ctx, 1, q.Periodic(sweepBackupsKey, sweepBackupsEvery, a.sweepBackupLeftovers, a.reconcileBackup))
}

// sweepBackupsKey is the backup queue's key of the sweep of leftovers (no backup has a name
// with a slash in it), sweepBackupsEvery how often it runs.
var (
	sweepBackupsKey   = runtime.NewKey("", "sweep/backup-leftovers")
	sweepBackupsEvery = 5 * time.Minute
)

// sweepBackupLeftovers removes what backups left in the running VMs' QEMUs: a backup's
// copy-before-write job runs until it is cancelled, and one whose backup was never taken
// again (failed or deleted while the agent was down) would copy the guest's overwritten
// blocks into a deleted scratch file for as long as the VM runs. It runs in the backup queue,
// which takes one item at a time, so no backup is under way meanwhile.
func (a *Agent) sweepBackupLeftovers(ctx context.Context) {
	for _, vm := range a.vms.List() {
		in := a.inst(vm.UID)
		if in == nil || in.isExited() {
			continue
		}
		mon, ok := in.monitor().(snapshotMonitor)
		if !ok {
			continue
		}
		var jobs []qmpJob
		if err := mon.Execute(ctx, "query-jobs", nil, &jobs); err != nil {
			continue
		}
		if slices.ContainsFunc(jobs, func(j qmpJob) bool { return isBackupJobID(j.ID, "") }) {
			a.log.Info("removing what an earlier backup left in a VM's QEMU", "vm", vm.Namespace+"/"+vm.Name)
			a.dropBackupLeftovers(ctx, mon, "")
		}
	}
}

func (a *Agent) reconcileBackup(ctx context.Context, key runtime.Key) (runtime.Result, error) {
	var b v1alpha1.VirtualMachineBackup
	if found, err := a.getKey(ctx, "virtualmachinebackups", key, &b); !found {
		return runtime.Result{}, err
	}
	if b.Status.NodeName != a.cfg.NodeName || b.DeletionTimestamp != nil || storage.CheckUID(b.UID) != nil {
		return runtime.Result{}, nil
	}
	switch b.Status.Phase {
	case v1alpha1.BackupPhaseInProgress:
		return a.takeBackup(ctx, &b)
	case v1alpha1.BackupPhaseCompleted:
		return runtime.Result{}, a.verifyBackup(ctx, &b)
	}
	return runtime.Result{}, nil
}

// backupTarget opens the target a backup names.
func (a *Agent) backupTarget(ctx context.Context, name string) (*backup.Store, error) {
	var t v1alpha1.BackupTarget
	if err := a.c.Get(ctx, "backuptargets", "", name, &t); err != nil {
		return nil, err
	}
	if t.Spec.Directory == nil {
		return nil, fmt.Errorf("BackupTarget %q has no directory", name)
	}
	return backup.Open(t.Spec.Directory.Path)
}

// bkDisk is one disk of a running backup.
type bkDisk struct {
	snapDisk
	name, uid  string
	prev       []string // the previous backup's chunks (nil: read whole)
	prevBitmap string   // the previous backup's bitmap, read through a frozen copy (empty: a full read)
	fullReason string
	src        string // the disk's block node in QEMU
}

func (a *Agent) takeBackup(ctx context.Context, b *v1alpha1.VirtualMachineBackup) (runtime.Result, error) {
	fail := func(format string, args ...any) (runtime.Result, error) {
		return runtime.Result{}, a.backupFailed(ctx, b, fmt.Sprintf(format, args...))
	}
	store, err := a.backupTarget(ctx, b.Spec.BackupTargetName)
	if err != nil {
		return fail("%s", targetError(b.Spec.BackupTargetName, err))
	}
	// A manifest of this backup is there when an earlier run of the agent stored it and
	// stopped before it wrote the status.
	if m, rel, err := store.ReadManifestOf(b.Namespace, b.Status.VirtualMachineUID, string(b.UID)); err == nil {
		a.log.Info("backup found stored by an earlier run", "backup", b.Namespace+"/"+b.Name)
		return runtime.Result{}, a.backupDone(ctx, b, m, rel, nil, liveResult{}, time.Time{})
	}
	sub, why, err := a.openBackupSubject(ctx, b)
	switch {
	case err != nil:
		return runtime.Result{}, err
	case why != "":
		return fail("%s", why)
	case sub == nil:
		return runtime.Result{RequeueAfter: time.Second}, nil // QMP not connected (yet)
	}
	defer sub.close()
	vm, mon := sub.vm, sub.mon
	failed := fail
	fail = func(format string, args ...any) (runtime.Result, error) {
		sub.close() // the disks free before Failed is written: a mode-stop VM starts next
		return failed(format, args...)
	}

	// The target's lock, shared, from before the previous backup is read until the manifest
	// is written: the garbage collection cannot remove a chunk this backup builds on.
	unlockStore, err := store.Lock()
	if err != nil {
		return fail("%v", err)
	}
	// Released before backupDone: its garbage collection takes the lock exclusively.
	unlock := sync.OnceFunc(unlockStore)
	defer unlock()
	// What an earlier run of this backup left in QEMU (the agent stopped while it copied): its
	// job still holds the previous backup's bitmap, which the plan must find free.
	newBitmap := bitmapName(b.Spec.BackupTargetName, string(b.UID))
	a.dropBackupLeftovers(ctx, mon, newBitmap)
	prev, prevWhy := a.previousBackup(ctx, store, b, vm)
	disks, err := a.backupDisks(ctx, mon, store, b, vm, prev, prevWhy)
	if err != nil {
		return fail("%v", err)
	}
	started := time.Now()
	fz := a.backupFreezer(b, sub)
	a.log.Info("taking a backup", "backup", b.Namespace+"/"+b.Name, "vm", vm.Name, "disks", len(disks), "mode", b.Spec.Mode)
	t0 := time.Now()
	fl, res, err := fleeceForBackup(ctx, mon, fz, disks, newBitmap, tmpBitmapName(string(b.UID)), a.nbdSocketPath(string(b.UID)), b.Status.Stopped)
	if err != nil {
		if ctx.Err() != nil {
			return runtime.Result{}, ctx.Err()
		}
		return fail("taking the backup of the VirtualMachine %q: %v", vm.Name, err)
	}
	a.log.Debug("backup instant taken, disks exported", "backup", b.Namespace+"/"+b.Name, "took", time.Since(t0))
	m := &backup.Manifest{Version: backup.ManifestVersion, Backup: backup.Ref{Namespace: b.Namespace, Name: b.Name, UID: string(b.UID)},
		VM: backup.Ref{Namespace: vm.Namespace, Name: vm.Name, UID: vm.UID}, Target: b.Spec.BackupTargetName, CreatedAt: started.UTC(),
		ChunkSize: backup.ChunkSize, Consistent: res.frozen || b.Status.Stopped}
	if spec, err := json.Marshal(vm.Spec); err == nil {
		m.VMSpec = spec
	}
	rel, stats, why, err := a.storeBackup(ctx, store, b, sub, fl, newBitmap, m)
	switch {
	case err != nil:
		return runtime.Result{}, err
	case why != "":
		return fail("%s", why)
	}
	sub.close()
	unlock()
	return runtime.Result{}, a.backupDone(ctx, b, m, rel, stats, res, started)
}

// targetError says why the BackupTarget name of a backup cannot be opened.
func targetError(name string, err error) string {
	if client.IsNotFound(err) {
		return fmt.Sprintf("BackupTarget %q does not exist", name)
	}
	return fmt.Sprintf("opening BackupTarget %q: %v", name, err)
}

// bkSubject is what a backup reads: the VM, and the monitor of the QEMU that has its disks
// open (the VM's own, or, for a stopped VM, a storage daemon's).
type bkSubject struct {
	vm  *v1alpha1.VirtualMachine
	mon snapshotMonitor
	in  *instance // the running VM's QEMU; nil for a stopped VM
	// close closes the storage daemon of a stopped VM (at most once): before the status
	// says Completed, since the disks' bitmaps are written to them when the daemon closes
	// them and the VM may start right after.
	close func()
}

// openBackupSubject finds what backup b reads. It returns why the backup fails instead, or
// neither (a nil subject) when it is to be tried again shortly.
func (a *Agent) openBackupSubject(ctx context.Context, b *v1alpha1.VirtualMachineBackup) (*bkSubject, string, error) {
	if b.Status.Stopped {
		// A stopped VM is in no node's cache: read it.
		var v v1alpha1.VirtualMachine
		if err := a.c.Get(ctx, "virtualmachines", b.Namespace, b.Spec.VirtualMachineName, &v); err != nil || string(v.UID) != b.Status.VirtualMachineUID {
			return nil, fmt.Sprintf("the VirtualMachine %q is gone", b.Spec.VirtualMachineName), nil
		}
		if v.Status.NodeName != "" {
			return nil, fmt.Sprintf("the VirtualMachine %q started (on node %q) before its stopped disks were backed up", v.Name, v.Status.NodeName), nil
		}
		qsd, err := a.startStorageDaemon(ctx, b, &v)
		if err != nil {
			if ctx.Err() != nil {
				return nil, "", ctx.Err()
			}
			return nil, "opening the stopped VM's disks: " + err.Error(), nil
		}
		return &bkSubject{vm: &v, mon: qsd.mon, close: sync.OnceFunc(qsd.stop)}, "", nil
	}
	var vm *v1alpha1.VirtualMachine
	for _, v := range a.vms.List() {
		if v.UID == b.Status.VirtualMachineUID {
			vm = v
		}
	}
	var in *instance
	if vm != nil {
		in = a.inst(vm.UID)
	}
	if vm == nil || in == nil || in.isExited() {
		return nil, fmt.Sprintf("the VirtualMachine %q does not run on node %s any more", b.Spec.VirtualMachineName, a.cfg.NodeName), nil
	}
	mon, ok := in.monitor().(snapshotMonitor)
	if !ok {
		return nil, "", nil
	}
	return &bkSubject{vm: vm, mon: mon, in: in, close: func() {}}, "", nil
}

// backupFreezer is how the backup's instant holds the guest still: nothing for a stopped VM,
// its vCPUs paused in mode suspend, else its filesystems frozen when its guest agent answers.
func (a *Agent) backupFreezer(b *v1alpha1.VirtualMachineBackup, sub *bkSubject) freezer {
	switch {
	case b.Status.Stopped:
		return nil
	case b.Spec.Mode == v1alpha1.BackupModeSuspend:
		return vcpuPauser{mon: sub.mon, paused: new(bool), held: new(bool), in: sub.in}
	}
	if c := v1alpha1.FindCondition(sub.vm.Status.Conditions, v1alpha1.VMConditionAgentReady); c != nil && c.Status == v1alpha1.ConditionTrue {
		return guestFreezer{a: a, uid: sub.vm.UID}
	}
	return nil
}

// storeBackup chunks the copied disks into the store and writes the manifest m; then the new
// bitmaps are the ones the next backup reads, and the older ones of the target go. On a
// failure (why) the new bitmaps go instead: no backup builds on one that is not stored.
func (a *Agent) storeBackup(ctx context.Context, store *backup.Store, b *v1alpha1.VirtualMachineBackup, sub *bkSubject, fl *fleece, newBitmap string, m *backup.Manifest) (string, []v1alpha1.BackupDisk, string, error) {
	disks := fl.disks
	// Also when ctx has ended: a new bitmap left behind would be read by no backup.
	dropNew := func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		a.dropBitmaps(uctx, sub.mon, disks, func(n string) bool { return n == newBitmap })
	}
	t0 := time.Now()
	stats, err := a.chunkDisks(ctx, store, b, fl, m)
	t1 := time.Now()
	fl.close(ctx)
	a.log.Debug("backup read and stored", "backup", b.Namespace+"/"+b.Name, "took", t1.Sub(t0), "close", time.Since(t1))
	if err != nil {
		dropNew()
		if ctx.Err() != nil {
			return "", nil, "", ctx.Err()
		}
		return "", nil, "storing the backup: " + err.Error(), nil
	}
	if b.Status.Stopped {
		// The image lock keeps the VM's QEMU from opening the disks while the daemon has
		// them; a VM that started anyway (a lock not seen across hosts) makes the copy
		// worthless.
		var now v1alpha1.VirtualMachine
		if err := a.c.Get(ctx, "virtualmachines", sub.vm.Namespace, sub.vm.Name, &now); err != nil || now.UID != sub.vm.UID || now.Status.NodeName != "" {
			dropNew()
			return "", nil, fmt.Sprintf("the VirtualMachine %q started while its stopped disks were backed up", sub.vm.Name), nil
		}
	}
	t2 := time.Now()
	rel, err := store.WriteManifest(m)
	a.log.Debug("backup manifest written", "backup", b.Namespace+"/"+b.Name, "took", time.Since(t2))
	if err != nil {
		dropNew()
		return "", nil, err.Error(), nil
	}
	prefix := bitmapPrefix(b.Spec.BackupTargetName)
	a.dropBitmaps(ctx, sub.mon, disks, func(n string) bool { return strings.HasPrefix(n, prefix) && n != newBitmap })
	return rel, stats, "", nil
}

// previousBackup is the manifest of the VM's latest Completed backup in the same target, or
// nil and why there is none to build on.
func (a *Agent) previousBackup(ctx context.Context, store *backup.Store, b *v1alpha1.VirtualMachineBackup, vm *v1alpha1.VirtualMachine) (*backup.Manifest, string) {
	list, err := a.c.List(ctx, "virtualmachinebackups", b.Namespace, client.ListOptions{})
	if err != nil {
		return nil, "listing the earlier backups: " + err.Error()
	}
	var last *v1alpha1.VirtualMachineBackup
	for _, raw := range list.Items {
		var o v1alpha1.VirtualMachineBackup
		if json.Unmarshal(raw, &o) != nil || o.UID == b.UID || o.Status.Phase != v1alpha1.BackupPhaseCompleted ||
			o.Status.VirtualMachineUID != vm.UID || o.Spec.BackupTargetName != b.Spec.BackupTargetName || o.Status.Manifest == "" || o.Status.StartedAt == nil {
			continue
		}
		if last == nil || o.Status.StartedAt.After(last.Status.StartedAt.Time) {
			last = &o
		}
	}
	if last == nil {
		return nil, "the first backup of the VM in this target"
	}
	m, _, err := store.ReadManifestOf(b.Namespace, vm.UID, string(last.UID))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Sprintf("the manifest of the previous backup %q is not in the target as node %s sees it", last.Name, a.cfg.NodeName)
		}
		return nil, fmt.Sprintf("the manifest of the previous backup %q: %v", last.Name, err)
	}
	return m, ""
}

// dirtyBitmap is an entry of a block node's dirty-bitmaps.
type dirtyBitmap struct {
	Name         string `json:"name"`
	Recording    bool   `json:"recording"`
	Persistent   bool   `json:"persistent"`
	Busy         bool   `json:"busy"`
	Inconsistent bool   `json:"inconsistent"`
	Count        int64  `json:"count"`
}

type bitmapNode struct {
	blockNode
	Bitmaps []dirtyBitmap `json:"dirty-bitmaps"`
}

// backupDisks plans the disks of a backup: their files and QEMU nodes, and per disk whether
// the previous backup's bitmap lets it be read incrementally.
func (a *Agent) backupDisks(ctx context.Context, mon snapshotMonitor, store *backup.Store, b *v1alpha1.VirtualMachineBackup, vm *v1alpha1.VirtualMachine, prev *backup.Manifest, prevWhy string) ([]bkDisk, error) {
	var nodes []bitmapNode
	if err := mon.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
		return nil, fmt.Errorf("query-named-block-nodes: %w", err)
	}
	var out []bkDisk
	for _, ref := range vm.Spec.BlockDeviceRefs {
		if ref.Kind != v1alpha1.BlockDeviceKindVirtualDisk {
			continue
		}
		var d v1alpha1.VirtualDisk
		if err := a.c.Get(ctx, "virtualdisks", vm.Namespace, ref.Name, &d); err != nil {
			return nil, fmt.Errorf("VirtualDisk %q: %w", ref.Name, err)
		}
		path, _, err := a.diskFile(ctx, &d)
		if err != nil {
			return nil, fmt.Errorf("VirtualDisk %q: %w", d.Name, err)
		}
		n, err := diskNodeByPath(ctx, mon, path)
		if err != nil {
			return nil, err
		}
		if n == nil {
			return nil, fmt.Errorf("the running VM does not have the disk %q open", d.Name)
		}
		var bitmaps []dirtyBitmap
		for _, bn := range nodes {
			if bn.NodeName == n.NodeName {
				bitmaps = bn.Bitmaps
			}
		}
		size := n.Image.VirtualSize
		if size <= 0 {
			return nil, fmt.Errorf("QEMU reports no size for the disk %q", d.Name)
		}
		id := backupJobID(len(out), string(b.UID))
		bd := bkDisk{snapDisk: snapDisk{path: path, target: filepath.Join(a.backupWorkDir(), id+".qcow2"), size: size, id: id},
			name: d.Name, uid: string(d.UID), src: n.NodeName, fullReason: prevWhy}
		if prev != nil {
			bd.prev, bd.prevBitmap, bd.fullReason = incrementalBase(prev, d.Name, string(d.UID), size, bitmaps)
			if n := store.Missing(bd.prev); n > 0 {
				// Lost, or put aside by a verify as corrupted: read whole, so that the
				// chunks are stored again rather than named without data.
				bd.prev, bd.prevBitmap = nil, ""
				bd.fullReason = fmt.Sprintf("%d chunks of the previous backup are missing from the target", n)
			}
		}
		out = append(out, bd)
	}
	if len(out) == 0 {
		return nil, errors.New("the VM has no VirtualDisk to back up")
	}
	return out, nil
}

// incrementalBase says whether the disk can be read incrementally over the previous backup
// prev: its chunks and its bitmap, or why not.
func incrementalBase(prev *backup.Manifest, name, uid string, size int64, bitmaps []dirtyBitmap) ([]string, string, string) {
	i := slices.IndexFunc(prev.Disks, func(d backup.Disk) bool { return d.Name == name })
	if i < 0 {
		return nil, "", "the disk is not in the previous backup"
	}
	pd := prev.Disks[i]
	switch {
	case pd.UID != uid:
		return nil, "", "the disk is another disk than in the previous backup (made again under its name)"
	case pd.Size != size:
		return nil, "", fmt.Sprintf("the disk's size changed since the previous backup (%d to %d bytes)", pd.Size, size)
	case pd.Bitmap == "":
		return nil, "", "the previous backup left no dirty bitmap"
	}
	j := slices.IndexFunc(bitmaps, func(bm dirtyBitmap) bool { return bm.Name == pd.Bitmap })
	switch {
	case j < 0:
		return nil, "", "the dirty bitmap of the previous backup is not in the disk (the disk was copied, restored or moved, or its VM's QEMU was killed before it saved it)"
	case bitmaps[j].Inconsistent:
		return nil, "", "the dirty bitmap of the previous backup is inconsistent (QEMU was killed while the disk was open)"
	case bitmaps[j].Busy:
		return nil, "", "the dirty bitmap of the previous backup is in use by another job"
	case !bitmaps[j].Recording:
		// A bitmap saved while a job held it (a migration in the middle of a backup) stopped
		// recording writes: it no longer covers every change.
		return nil, "", "the dirty bitmap of the previous backup does not record writes (it was saved in the middle of a job)"
	}
	return pd.Chunks, pd.Bitmap, ""
}

// vcpuPauser holds a guest still by pausing its vCPUs (mode suspend, a snapshot with RAM); a
// guest that is paused already stays so. Meanwhile the VM's reconcile leaves the paused guest
// alone (instance.heldStill), and resumes it should the thaw fail.
type vcpuPauser struct {
	mon    snapshotMonitor
	paused *bool     // freeze paused it: thaw resumes it
	held   *bool     // freeze holds the instance still: thaw lets it go
	in     *instance // the VM's QEMU (nil: a storage daemon, or a test)
}

func (p vcpuPauser) freeze(ctx context.Context) (int, error) {
	// Held from here to the thaw, also when the guest is paused already: the reconcile must
	// not resume it in between.
	p.in.holdStill(true)
	var st struct {
		Running bool `json:"running"`
	}
	if err := p.mon.Execute(ctx, "query-status", nil, &st); err != nil {
		p.in.holdStill(false)
		return 0, err
	}
	if !st.Running {
		*p.held = true
		return 0, nil // held still already
	}
	if err := p.mon.Execute(ctx, "stop", nil, nil); err != nil {
		p.in.holdStill(false)
		return 0, err
	}
	*p.paused, *p.held = true, true
	return 0, nil
}

func (p vcpuPauser) thaw(ctx context.Context) (int, error) {
	if *p.held {
		*p.held = false
		defer p.in.holdStill(false)
	}
	if !*p.paused {
		return 0, nil
	}
	var err error
	for i := 0; i < 3; i++ { // a guest must not stay paused by a backup
		if err = p.mon.Execute(ctx, "cont", nil, nil); err == nil {
			*p.paused = false
			return 0, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return 0, err
}

// backupJobID names the copy job and work node of disk i of a backup (QEMU node names are at
// most 31 characters, starting with a letter).
func backupJobID(i int, uid string) string {
	return fmt.Sprintf("bk%d-%s", i, strings.ReplaceAll(uid, "-", "")[:20])
}

// isBackupJobID says id is a job, node or export backupJobID made for the backup uid (for
// any backup: uid "").
func isBackupJobID(id, uid string) bool {
	rest, ok := strings.CutPrefix(id, "bk")
	i := strings.IndexByte(rest, '-')
	if !ok || i <= 0 || strings.Trim(rest[:i], "0123456789") != "" {
		return false
	}
	if uid == "" {
		return len(rest[i+1:]) == 20
	}
	return rest[i+1:] == strings.ReplaceAll(uid, "-", "")[:20]
}

// dropBackupLeftovers removes from QEMU what an earlier run of a backup left (an agent runs
// one backup at a time, so whatever a backup left is a leftover when the next one starts): the
// NBD exports and server, the copy-before-write jobs (cancelled), scratch nodes, descriptor
// sets and frozen bitmaps, and newBitmap, the bitmap an earlier run of this backup added (its
// manifest was never written, so no later backup reads that bitmap).
func (a *Agent) dropBackupLeftovers(ctx context.Context, mon snapshotMonitor, newBitmap string) {
	var exports []struct {
		ID string `json:"id"`
	}
	if err := mon.Execute(ctx, "query-block-exports", nil, &exports); err == nil {
		left := len(exports)
		for _, e := range exports {
			if isBackupJobID(e.ID, "") {
				_ = mon.Execute(ctx, "block-export-del", map[string]any{"id": e.ID, "mode": "hard"}, nil)
				left--
			}
		}
		if left == 0 {
			// An earlier run's server (none runs otherwise while a VM is not a migration's
			// target; the error when none runs is the usual case).
			_ = mon.Execute(ctx, "nbd-server-stop", nil, nil)
		}
	}
	var jobs []qmpJob
	if err := mon.Execute(ctx, "query-jobs", nil, &jobs); err == nil {
		var ids []string
		for _, j := range jobs {
			if isBackupJobID(j.ID, "") {
				_ = mon.Execute(ctx, "job-cancel", map[string]any{"id": j.ID}, nil)
				ids = append(ids, j.ID)
			}
		}
		if len(ids) > 0 {
			a.log.Info("cancelling the copy jobs an earlier run of a backup left", "jobs", ids)
			wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			waitJobsGone(wctx, mon, ids)
			cancel()
		}
	}
	var nodes []bitmapNode
	if err := mon.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err == nil {
		for _, n := range nodes {
			if isBackupJobID(n.NodeName, "") {
				delNode(ctx, mon, n.NodeName)
			}
			for _, bm := range n.Bitmaps {
				if bm.Name == newBitmap || strings.HasPrefix(bm.Name, "bkt-") {
					_ = mon.Execute(ctx, "block-dirty-bitmap-remove", map[string]any{"node": n.NodeName, "name": bm.Name}, nil)
				}
			}
		}
	}
	var sets []fdSet
	if err := mon.Execute(ctx, "query-fdsets", nil, &sets); err == nil {
		for _, s := range sets {
			for _, fd := range s.FDs {
				name := strings.TrimSuffix(filepath.Base(strings.TrimPrefix(fd.Opaque, "backup:")), ".qcow2")
				if strings.HasPrefix(fd.Opaque, "backup:") && isBackupJobID(name, "") {
					_ = mon.Execute(ctx, "remove-fd", map[string]any{"fdset-id": s.ID}, nil)
					break
				}
			}
		}
	}
}

// undoSnapshotTargets cancels the jobs and removes the nodes and descriptors done records.
func undoSnapshotTargets(ctx context.Context, mon snapshotMonitor, done []snapAdded) {
	for i := len(done) - 1; i >= 0; i-- {
		a := done[i]
		if a.job {
			_ = mon.Execute(ctx, "job-cancel", map[string]any{"id": a.node}, nil)
			waitJobsGone(ctx, mon, []string{a.node})
		}
		if a.node != "" {
			_ = mon.Execute(ctx, "blockdev-del", map[string]any{"node-name": a.node}, nil)
		}
		if a.set >= 0 {
			_ = mon.Execute(ctx, "remove-fd", map[string]any{"fdset-id": a.set}, nil)
		}
	}
}

// dropBitmaps removes the bitmaps of the disks that drop says.
func (a *Agent) dropBitmaps(ctx context.Context, mon snapshotMonitor, disks []bkDisk, drop func(string) bool) {
	var nodes []bitmapNode
	if err := mon.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
		a.log.Warn("listing dirty bitmaps", "err", err)
		return
	}
	for _, d := range disks {
		for _, n := range nodes {
			if n.NodeName != d.src {
				continue
			}
			for _, bm := range n.Bitmaps {
				if drop(bm.Name) {
					if err := mon.Execute(ctx, "block-dirty-bitmap-remove", map[string]any{"node": d.src, "name": bm.Name}, nil); err != nil {
						a.log.Warn("removing a dirty bitmap", "disk", d.name, "bitmap", bm.Name, "err", err)
					}
				}
			}
		}
	}
}

// chunkDisks stores the present extents of every disk's export and fills m's disks.
func (a *Agent) chunkDisks(ctx context.Context, store *backup.Store, b *v1alpha1.VirtualMachineBackup, fl *fleece, m *backup.Manifest) ([]v1alpha1.BackupDisk, error) {
	type opened struct {
		c  *nbd.Conn
		ex []backup.Extent
	}
	disks := fl.disks
	conns := make([]opened, len(disks))
	defer func() {
		for _, o := range conns {
			if o.c != nil {
				o.c.Close()
			}
		}
	}()
	var total int64
	for i, d := range disks {
		c, ex, err := fl.open(d)
		if err != nil {
			return nil, fmt.Errorf("reading the disk %q through QEMU's export: %w", d.name, err)
		}
		// A read that hangs (the disk's storage does) ends with ctx: the connection closes.
		stop := context.AfterFunc(ctx, func() { c.Close() })
		defer stop()
		conns[i] = opened{c, ex}
		total += backup.PresentBytes(ex)
	}
	var rate int64
	if q := b.Spec.BandwidthLimit; q != "" {
		rate, _ = q.Value() // validated by the API: at least 1 MiB/s
	}
	var doneBefore int64
	var lastWrite time.Time // progress is called by one goroutine at a time
	progress := func(done int64) {
		if total == 0 || time.Since(lastWrite) < 2*time.Second {
			return
		}
		lastWrite = time.Now()
		a.backupProgress(ctx, b, fmt.Sprintf("%d%%", (doneBefore+done)*100/total))
	}
	var out []v1alpha1.BackupDisk
	for i, d := range disks {
		src := &throttled{r: conns[i].c, rate: rate, ctx: ctx}
		chunks, st, err := store.BackupDisk(ctx, src, d.size, conns[i].ex, d.prev, progress)
		if err != nil {
			return nil, fmt.Errorf("disk %q: %w", d.name, err)
		}
		doneBefore += backup.PresentBytes(conns[i].ex)
		m.Disks = append(m.Disks, backup.Disk{Name: d.name, UID: d.uid, Size: d.size,
			Bitmap: bitmapName(b.Spec.BackupTargetName, string(b.UID)), Chunks: chunks})
		kind := v1alpha1.BackupKindIncremental
		if d.prevBitmap == "" {
			kind = v1alpha1.BackupKindFull
		}
		out = append(out, v1alpha1.BackupDisk{Name: d.name, VirtualDiskUID: d.uid, Kind: kind, FullReason: d.fullReason,
			BackupSize: v1alpha1.BackupSize{Capacity: d.size, Read: st.Read, Stored: st.Stored, Chunks: st.Chunks, NewChunks: st.NewChunks}})
	}
	return out, nil
}

// backupProgress writes the progress of a running backup (best effort).
func (a *Agent) backupProgress(ctx context.Context, b *v1alpha1.VirtualMachineBackup, p string) {
	st := b.Status
	st.Progress = p
	if err := a.writeBackupStatus(ctx, b, st); err != nil {
		a.log.Debug("writing backup progress", "err", err)
	}
}

// backupDone marks a backup Completed (disks nil: found stored by an earlier run, figures
// unknown) and collects the target's garbage.
func (a *Agent) backupDone(ctx context.Context, b *v1alpha1.VirtualMachineBackup, m *backup.Manifest, rel string, disks []v1alpha1.BackupDisk, res liveResult, started time.Time) error {
	st := b.Status
	st.Conditions = slices.Clone(b.Status.Conditions)
	st.Phase = v1alpha1.BackupPhaseCompleted
	st.Manifest = rel
	st.Progress = "100%"
	st.ObservedGeneration = b.Generation
	consistent := m.Consistent
	st.Consistent = &consistent
	now := v1alpha1.Now()
	st.CompletedAt = &now
	msg := "stored in BackupTarget " + b.Spec.BackupTargetName
	if disks != nil {
		st.Disks = disks
		var sum v1alpha1.BackupSize
		for _, d := range disks {
			sum.Capacity += d.Capacity
			sum.Read += d.Read
			sum.Stored += d.Stored
			sum.Chunks += d.Chunks
			sum.NewChunks += d.NewChunks
		}
		st.Size = &sum
		took := time.Since(started)
		st.Duration = took.Round(time.Millisecond).String()
		st.ThroughputMiBps = fmt.Sprintf("%.1f", float64(sum.Read)/(1<<20)/max(took.Seconds(), 0.001))
		msg = fmt.Sprintf("%s: read %s, stored %s (%d new chunks of %d) in %s", msg, v1alpha1.HumanBytes(sum.Read), v1alpha1.HumanBytes(sum.Stored), sum.NewChunks, sum.Chunks, st.Duration)
		if b.Status.Stopped {
			msg += "; the VirtualMachine was stopped"
		} else if consistent {
			msg += fmt.Sprintf("; the guest was held still for %s", res.frozenFor.Round(time.Microsecond))
		} else {
			msg += "; crash-consistent (the guest was not frozen)"
		}
	}
	v1alpha1.SetCondition(&st.Conditions, v1alpha1.Condition{Type: v1alpha1.BackupConditionCompleted, Status: v1alpha1.ConditionTrue,
		Reason: v1alpha1.BackupReasonCompleted, Message: msg, ObservedGeneration: b.Generation})
	a.log.Info("backup completed", "backup", b.Namespace+"/"+b.Name, "message", msg)
	a.rec.Event(ctx, "VirtualMachineBackup", b, "Normal", v1alpha1.BackupReasonCompleted, msg)
	if err := a.writeBackupStatus(ctx, b, st); err != nil {
		return err
	}
	a.collectBackupGarbage(ctx, b.Spec.BackupTargetName)
	return nil
}

// collectBackupGarbage removes from a target the manifests of backups deleted from the API
// and the chunks no manifest uses any more (best effort: it runs after every backup).
func (a *Agent) collectBackupGarbage(ctx context.Context, target string) {
	store, err := a.backupTarget(ctx, target)
	if err != nil {
		return
	}
	res, err := store.GC(ctx, func() (func(string) bool, error) {
		list, err := a.c.List(ctx, "virtualmachinebackups", "", client.ListOptions{})
		if err != nil {
			return nil, err
		}
		live := map[string]bool{}
		for _, raw := range list.Items {
			var o v1alpha1.VirtualMachineBackup
			if err := json.Unmarshal(raw, &o); err != nil {
				return nil, err
			}
			live[string(o.UID)] = true
		}
		return func(uid string) bool { return live[uid] }, nil
	})
	if errors.Is(err, backup.ErrBusy) {
		a.log.Debug("backup garbage collection skipped: a backup runs", "target", target)
		return
	}
	if err != nil {
		a.log.Warn("backup garbage collection", "target", target, "err", err)
		return
	}
	if res.Manifests > 0 || res.Chunks > 0 {
		a.log.Info("backup garbage collected", "target", target, "manifests", res.Manifests, "chunks", res.Chunks, "freed", res.Freed)
	}
}

func (a *Agent) backupFailed(ctx context.Context, b *v1alpha1.VirtualMachineBackup, msg string) error {
	a.log.Warn("backup failed", "backup", b.Namespace+"/"+b.Name, "why", msg)
	st := b.Status
	st.Phase = v1alpha1.BackupPhaseFailed
	st.ObservedGeneration = b.Generation
	st.Conditions = a.conditionEvent(ctx, "VirtualMachineBackup", b, b.Status.Conditions, v1alpha1.Condition{Type: v1alpha1.BackupConditionCompleted,
		Status: v1alpha1.ConditionFalse, Reason: v1alpha1.BackupReasonFailed, Message: msg, ObservedGeneration: b.Generation})
	return a.writeBackupStatus(ctx, b, st)
}

// conditionEvent returns a copy of conds with cond set, and records cond as an event of obj
// (of kind): Normal when the condition is True, a Warning otherwise.
func (a *Agent) conditionEvent(ctx context.Context, kind string, obj v1alpha1.Object, conds []v1alpha1.Condition, cond v1alpha1.Condition) []v1alpha1.Condition {
	conds = slices.Clone(conds)
	v1alpha1.SetCondition(&conds, cond)
	typ := "Normal"
	if cond.Status != v1alpha1.ConditionTrue {
		typ = "Warning"
	}
	a.rec.Event(ctx, kind, obj, typ, cond.Reason, cond.Message)
	return conds
}

// writeBackupStatus writes st as the status of backup b, guarded: only while the stored
// object is still b (its uid), handed to this node, in the phase b was read in. A backup
// deleted or made again under its name meanwhile, or failed by the controller, is left as it
// is.
func (a *Agent) writeBackupStatus(ctx context.Context, b *v1alpha1.VirtualMachineBackup, st v1alpha1.VirtualMachineBackupStatus) error {
	for try := 0; ; try++ {
		var cur v1alpha1.VirtualMachineBackup
		err := a.c.Get(ctx, "virtualmachinebackups", b.Namespace, b.Name, &cur)
		if client.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		if cur.UID != b.UID || cur.Status.NodeName != a.cfg.NodeName || cur.Status.Phase != b.Status.Phase {
			a.log.Info("backup changed meanwhile; its status is not written", "backup", b.Namespace+"/"+b.Name, "phase", cur.Status.Phase, "node", cur.Status.NodeName)
			return nil
		}
		cur.Status = st
		err = a.c.UpdateStatus(ctx, "virtualmachinebackups", b.Namespace, b.Name, &cur, nil)
		switch {
		case err == nil:
			b.Status, b.ResourceVersion = st, cur.ResourceVersion
			return nil
		case client.IsNotFound(err):
			return nil
		case client.IsConflict(err) && try < 5:
			continue
		}
		return fmt.Errorf("writing the status of backup %s/%s: %w", b.Namespace, b.Name, err)
	}
}

// verifyBackup answers a verify request (AnnotationVerifyRequest) of a Completed backup kept
// by this node: it reads back every chunk and writes the Verified condition.
func (a *Agent) verifyBackup(ctx context.Context, b *v1alpha1.VirtualMachineBackup) error {
	req := b.Annotations[v1alpha1.AnnotationVerifyRequest]
	if req == "" {
		return nil
	}
	tag := "(request " + req + ")"
	if c := v1alpha1.FindCondition(b.Status.Conditions, v1alpha1.BackupConditionVerified); c != nil && strings.HasSuffix(c.Message, tag) {
		return nil
	}
	cond := v1alpha1.Condition{Type: v1alpha1.BackupConditionVerified, ObservedGeneration: b.Generation}
	store, err := a.backupTarget(ctx, b.Spec.BackupTargetName)
	var m *backup.Manifest
	if err == nil {
		m, _, err = store.ReadManifestOf(b.Namespace, b.Status.VirtualMachineUID, string(b.UID))
	}
	switch {
	case err != nil:
		cond.Status, cond.Reason, cond.Message = v1alpha1.ConditionFalse, v1alpha1.BackupReasonCorrupted, "the manifest cannot be read: "+err.Error()
	default:
		bad, verr := store.Verify(ctx, m)
		if verr != nil {
			return verr
		}
		chunks := 0
		for _, d := range m.Disks {
			for _, c := range d.Chunks {
				if c != "" {
					chunks++
				}
			}
		}
		if len(bad) == 0 {
			cond.Status, cond.Reason = v1alpha1.ConditionTrue, v1alpha1.BackupReasonVerified
			cond.Message = fmt.Sprintf("all %d chunks read back and match their hashes", chunks)
		} else {
			cond.Status, cond.Reason = v1alpha1.ConditionFalse, v1alpha1.BackupReasonCorrupted
			var parts []string
			for i, p := range bad {
				if i == 5 {
					parts = append(parts, fmt.Sprintf("and %d more", len(bad)-5))
					break
				}
				parts = append(parts, fmt.Sprintf("disk %s chunk %d: %v", p.Disk, p.Chunk, p.Err))
			}
			cond.Message = fmt.Sprintf("%d of %d chunks are missing or corrupted: %s", len(bad), chunks, strings.Join(parts, "; "))
		}
	}
	cond.Message += " " + tag
	st := b.Status
	st.Conditions = a.conditionEvent(ctx, "VirtualMachineBackup", b, b.Status.Conditions, cond)
	return a.writeBackupStatus(ctx, b, st)
}
