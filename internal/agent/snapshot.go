package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/qemu"
	"github.com/rakhsh/rakhsh/internal/qemu/qmp"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// Live disk snapshots. The snapshot controller hands a VirtualDiskSnapshot of a disk that a
// running VM has open to the agent of the VM's node (status.nodeName, phase InProgress). The
// agent copies the disk without stopping the VM:
//
//  1. it creates an empty qcow2 file of the disk's size beside where the snapshot is kept
//     (SNAPSHOT.qcow2.part), opens it and passes the descriptor to QEMU (add-fd), then adds it
//     as a block node (blockdev-add);
//  2. it freezes the guest's filesystems through the guest agent, when it answers;
//  3. it starts a blockdev-backup job with sync=full from the disk's node to the new node, in
//     one QMP transaction for all the disks of a group (a VM snapshot): the point in time is
//     the instant the jobs start. From then on QEMU copies each block the guest is about to
//     overwrite into the target first (copy-before-write), so the guest may write at once;
//  4. it thaws the guest right after the transaction: the guest is frozen for milliseconds,
//     not for the length of the copy;
//  5. it waits for the jobs to conclude, removes the target node and the descriptor, and
//     renames the file to SNAPSHOT.qcow2.
//
// Why a full copy and not an external overlay (blockdev-snapshot): an overlay would make the
// disk's file a chain that every later snapshot lengthens, that must be merged back
// (block-commit) when a snapshot is deleted, and that ties the disk to its snapshots. A copy
// leaves the disk's file as it is, and a snapshot is one standalone file that is removed on
// its own and that new disks are made from with a plain copy. It costs the time and space of
// the disk's allocated data.

// snapshotMonitor is the part of *qmp.Conn a live snapshot needs.
type snapshotMonitor interface {
	Execute(ctx context.Context, command string, args, result any) error
	AddFD(ctx context.Context, f *os.File, fdsetID int, opaque string) (qmp.AddFDInfo, error)
}

// snapDisk is one disk of a live snapshot: the disk's file and the file the copy goes to.
type snapDisk struct {
	path   string // the disk's file, as QEMU has it open
	target string // the snapshot's .part file, created by takeLive
	size   int64
	// id names the job and the target node (unique per snapshot).
	id string
}

// liveResult is what takeLive did.
type liveResult struct {
	frozen    bool          // the guest's filesystems were frozen when the jobs started
	frozenFor time.Duration // how long they were
	copyTook  time.Duration
	freezeErr error // why they were not, when a freeze was tried
}

// freezer freezes and thaws a guest's filesystems (nil: no guest agent).
type freezer interface {
	freeze(ctx context.Context) (int, error)
	thaw(ctx context.Context) (int, error)
}

// snapshotPoll is how often takeLive asks QEMU about its copy jobs.
var snapshotPoll = 100 * time.Millisecond

// snapAdded is what takeLive added to the running QEMU for one snapshot target, for its undo:
// the descriptor's fd set, the block node, and whether a copy job runs.
type snapAdded struct {
	node string
	set  int
	job  bool
}

// addSnapshotTargets creates each disk's snapshot file and opens it in QEMU as block node d.id
// (recorded in done as it goes). It returns the block nodes of the disks themselves.
func addSnapshotTargets(ctx context.Context, mon snapshotMonitor, disks []snapDisk, done *[]snapAdded) ([]string, error) {
	sources := make([]string, len(disks))
	for i, d := range disks {
		n, err := diskNodeByPath(ctx, mon, d.path)
		if err != nil {
			return nil, err
		}
		if n == nil {
			return nil, fmt.Errorf("the running VM does not have the disk %s open", d.path)
		}
		sources[i] = n.NodeName
		os.Remove(d.target)
		if err := storage.CreateBlank(ctx, d.target, d.size); err != nil {
			return nil, fmt.Errorf("creating the snapshot file: %w", err)
		}
		f, err := os.OpenFile(d.target, os.O_RDWR, 0)
		if err != nil {
			return nil, err
		}
		info, err := mon.AddFD(ctx, f, -1, "snapshot:"+d.target)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("add-fd: %w", err)
		}
		*done = append(*done, snapAdded{set: info.FDSetID})
		args := map[string]any{"driver": "qcow2", "node-name": d.id,
			"file": map[string]any{"driver": "file", "filename": qemu.FDSetPath(info.FDSetID)}}
		if err := mon.Execute(ctx, "blockdev-add", args, nil); err != nil {
			return nil, fmt.Errorf("blockdev-add %s: %w", d.id, err)
		}
		(*done)[len(*done)-1].node = d.id
	}

	return sources, nil
}

// takeLive copies disks of a running QEMU at one instant (see the comment above). With
// requireFreeze, a guest whose filesystems cannot be frozen fails the snapshot before any copy
// starts. On failure everything it added to QEMU is removed again and the target files are
// deleted.
func takeLive(ctx context.Context, mon snapshotMonitor, fz freezer, disks []snapDisk, requireFreeze bool) (res liveResult, err error) {
	return takeLiveAt(ctx, mon, fz, disks, requireFreeze, nil)
}

// takeLiveAt is takeLive that also calls atInstant right after the copy jobs started, while
// the guest is still held (frozen or paused): a snapshot with RAM saves the RAM state there.
// An atInstant that fails fails the snapshot.
func takeLiveAt(ctx context.Context, mon snapshotMonitor, fz freezer, disks []snapDisk, requireFreeze bool, atInstant func(context.Context) error) (res liveResult, err error) {
	var done []snapAdded
	defer func() {
		if err == nil {
			return
		}
		// Undo in reverse, on a context of its own: ctx may be what ended.
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		undoSnapshotTargets(uctx, mon, done)
		for _, d := range disks {
			os.Remove(d.target)
		}
	}()
	sources, err := addSnapshotTargets(ctx, mon, disks, &done)
	if err != nil {
		return res, err
	}

	frozenAt, err := freezeForSnapshot(ctx, fz, requireFreeze, &res)
	if err != nil {
		return res, err
	}
	started := time.Now()
	terr := mon.Execute(ctx, "transaction", backupTransaction(disks, sources), nil)
	if terr != nil {
		terr = fmt.Errorf("starting the copy: %w", terr)
	} else if atInstant != nil {
		if terr = atInstant(ctx); terr != nil {
			for i := range disks {
				done[i].job = true
			}
		}
	}
	if res.frozen {
		// Thawed whatever the transaction did: a guest must never stay frozen.
		if thawErr := thawAfterSnapshot(ctx, fz, frozenAt, &res); thawErr != nil && terr == nil {
			terr = fmt.Errorf("starting the copy: thawing the guest's filesystems: %w", thawErr)
			for i := range disks {
				done[i].job = true
			}
		}
	}
	if terr != nil {
		return res, terr
	}
	for i := range done {
		done[i].job = true
	}
	ids := make([]string, len(disks))
	for i, d := range disks {
		ids[i] = d.id
	}
	if err := waitJobs(ctx, mon, ids); err != nil {
		var jf jobFailed
		if errors.As(err, &jf) {
			for i := range done {
				done[i].job = false // concluded and dismissed
			}
		}
		return res, err
	}
	res.copyTook = time.Since(started)
	for i := range done {
		done[i].job = false
	}
	return res, removeSnapshotTargets(ctx, mon, disks, done)
}

// thawAfterSnapshot thaws the guest that freezeForSnapshot froze at frozenAt, on a context of
// its own (ctx may be what ended), and notes in res how long it was frozen.
func thawAfterSnapshot(ctx context.Context, fz freezer, frozenAt time.Time, res *liveResult) error {
	tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	_, err := fz.thaw(tctx)
	res.frozenFor = time.Since(frozenAt)
	return err
}

// freezeForSnapshot freezes the guest's filesystems through fz (nil: no guest agent), noting
// in res whether it did and why not; it fails when consistency is required and the freeze did
// not happen. It returns when the freeze began.
func freezeForSnapshot(ctx context.Context, fz freezer, requireFreeze bool, res *liveResult) (time.Time, error) {
	var frozenAt time.Time
	if fz != nil {
		if _, err := fz.freeze(ctx); err != nil {
			res.freezeErr = err
		} else {
			res.frozen = true
			frozenAt = time.Now()
		}
	}
	if !res.frozen && requireFreeze {
		why := "the VM has no guest agent"
		if res.freezeErr != nil {
			why = res.freezeErr.Error()
		}
		return frozenAt, fmt.Errorf("the guest's filesystems could not be frozen (%s) and the snapshot requires consistency", why)
	}
	return frozenAt, nil
}

// backupTransaction starts one full blockdev-backup per disk into its snapshot target, the
// jobs grouped so that they succeed or fail together.
func backupTransaction(disks []snapDisk, sources []string) map[string]any {
	actions := make([]map[string]any, len(disks))
	for i, d := range disks {
		actions[i] = map[string]any{"type": "blockdev-backup", "data": map[string]any{
			"job-id": d.id, "device": sources[i], "target": d.id, "sync": "full", "auto-dismiss": false}}
	}
	targs := map[string]any{"actions": actions}
	if len(disks) > 1 {
		targs["properties"] = map[string]any{"completion-mode": "grouped"}
	}
	return targs
}

// removeSnapshotTargets takes the finished snapshot targets out of QEMU (marking them gone in
// done, so that the undo leaves them).
func removeSnapshotTargets(ctx context.Context, mon snapshotMonitor, disks []snapDisk, done []snapAdded) error {
	for _, d := range disks {
		if err := mon.Execute(ctx, "blockdev-del", map[string]any{"node-name": d.id}, nil); err != nil {
			return fmt.Errorf("blockdev-del %s: %w", d.id, err)
		}
	}
	for i := range done {
		done[i].node = ""
		// QEMU closes a removed descriptor once nothing uses it (while the VM runs).
		_ = mon.Execute(ctx, "remove-fd", map[string]any{"fdset-id": done[i].set}, nil)
		done[i].set = -1
	}
	return nil
}

// qmpJob is an entry of query-jobs.
type qmpJob struct {
	ID     string `json:"id"`
	Status string `json:"status"`
	Error  string `json:"error"`
}

// jobFailed is a copy job that concluded with an error (or vanished).
type jobFailed struct{ msg string }

func (e jobFailed) Error() string { return e.msg }

// waitJobs waits until the jobs ids have concluded, dismisses them, and returns the first
// error a job reported (a jobFailed, once every job has concluded).
func waitJobs(ctx context.Context, mon snapshotMonitor, ids []string) error {
	pending := slices.Clone(ids)
	var first error
	for len(pending) > 0 {
		var jobs []qmpJob
		if err := mon.Execute(ctx, "query-jobs", nil, &jobs); err != nil {
			return fmt.Errorf("query-jobs: %w", err)
		}
		var still []string
		for _, id := range pending {
			i := slices.IndexFunc(jobs, func(j qmpJob) bool { return j.ID == id })
			switch {
			case i < 0:
				if first == nil {
					first = jobFailed{fmt.Sprintf("copy job %s disappeared", id)}
				}
			case jobs[i].Status == "concluded":
				if jobs[i].Error != "" && first == nil {
					first = jobFailed{fmt.Sprintf("copy job %s: %s", id, jobs[i].Error)}
				}
				_ = mon.Execute(ctx, "job-dismiss", map[string]any{"id": id}, nil)
			default:
				still = append(still, id)
			}
		}
		pending = still
		if len(pending) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(snapshotPoll):
		}
	}
	return first
}

// waitJobsGone waits (best effort) until cancelled jobs have concluded and dismisses them.
func waitJobsGone(ctx context.Context, mon snapshotMonitor, ids []string) {
	_ = waitJobs(ctx, mon, ids)
}

// guestFreezer freezes a VM's guest through the agent's guest agent connection.
type guestFreezer struct {
	a   *Agent
	uid string
}

func (g guestFreezer) freeze(ctx context.Context) (int, error) { return g.a.GuestFreeze(ctx, g.uid) }
func (g guestFreezer) thaw(ctx context.Context) (int, error)   { return g.a.GuestThaw(ctx, g.uid) }

// runSnapshotter carries out the disk snapshots handed to this node until ctx ends.
func (a *Agent) runSnapshotter(ctx context.Context) {
	snaps := runtime.NewTypedInformer[v1alpha1.VirtualDiskSnapshot](a.c, "virtualdisksnapshots",
		client.ListOptions{FieldSelector: "status.nodeName=" + a.cfg.NodeName}, a.log)
	q := runtime.NewQueue("agent-snapshot", a.log)
	q.MaxBackoff = 10 * time.Second
	snaps.OnChange(q.Add)
	go snaps.Run(ctx)
	// RAM states of VM snapshots deleted while this node was away or since: now and then.
	q.Run(ctx, 1, q.Periodic(pruneRAMKey, pruneRAMEvery, a.pruneRAMStates, a.snapshotDisk))
}

// pruneRAMKey is the snapshotter queue's key of the pruning of RAM states (no snapshot has a
// name with a slash in it and an empty namespace), pruneRAMEvery how often it runs.
var (
	pruneRAMKey   = runtime.NewKey("", "prune/ram-states")
	pruneRAMEvery = 10 * time.Minute
)

// snapshotJobID names the job and the target node of a snapshot (QEMU node names are at most
// 31 characters, starting with a letter).
func snapshotJobID(uid string) string { return "snap-" + strings.ReplaceAll(uid, "-", "")[:20] }

func (a *Agent) snapshotDisk(ctx context.Context, key runtime.Key) (runtime.Result, error) {
	var s v1alpha1.VirtualDiskSnapshot
	if found, err := a.getKey(ctx, "virtualdisksnapshots", key, &s); !found {
		return runtime.Result{}, err
	}
	ns := s.Namespace
	if !a.handedToMe(&s) {
		return runtime.Result{}, nil
	}
	group, wait, err := a.snapshotGroup(ctx, &s)
	if err != nil {
		return runtime.Result{}, err
	}
	if wait {
		return runtime.Result{RequeueAfter: 200 * time.Millisecond}, nil
	}
	sp, res0, err := a.planSnapshots(ctx, ns, group)
	if sp == nil {
		return res0, err
	}
	in, vmUID, vmName, disks := sp.in, sp.vmUID, sp.vmName, sp.disks
	mon, ok := in.monitor().(snapshotMonitor)
	if !ok {
		return runtime.Result{RequeueAfter: time.Second}, nil // QMP not connected (yet)
	}
	var fz freezer
	if sp.agentReady {
		fz = guestFreezer{a: a, uid: vmUID}
	}
	required := false
	for _, m := range group {
		required = required || m.Spec.RequiredConsistency == nil || *m.Spec.RequiredConsistency
	}
	for _, d := range disks {
		a.dropSnapshotLeftovers(ctx, mon, d.id)
		dropFDSets(ctx, mon, "snapshot:"+d.target)
	}
	if ramUID := ramSnapshotOf(group); ramUID != "" {
		return a.snapshotWithRAM(ctx, ns, group, sp, mon, ramUID)
	}
	a.log.Info("taking a live disk snapshot", "snapshot", key, "vm", vmName, "disks", len(disks), "freeze", fz != nil)
	res, err := takeLive(ctx, mon, fz, disks, required)
	if err != nil {
		if ctx.Err() != nil {
			return runtime.Result{}, ctx.Err()
		}
		return runtime.Result{}, a.snapshotsFailed(ctx, group, fmt.Sprintf("taking the snapshot in the running VirtualMachine %q: %v", vmName, err))
	}
	return runtime.Result{}, a.finishSnapshots(ctx, ns, group, sp, res, nil)
}

// snapshotWithRAM takes the disks of a VM snapshot with keepRAM together with the guest's RAM
// state (ramsnap.go): the vCPUs are paused for the instant, not the filesystems frozen.
func (a *Agent) snapshotWithRAM(ctx context.Context, ns string, group []v1alpha1.VirtualDiskSnapshot, sp *snapPlan, mon snapshotMonitor, ramUID string) (runtime.Result, error) {
	failed := func(msg string) (runtime.Result, error) {
		return runtime.Result{}, a.snapshotsFailed(ctx, group, fmt.Sprintf("taking the snapshot with RAM of the running VirtualMachine %q: %s", sp.vmName, msg))
	}
	// The annotation must name the VM snapshot these disk snapshots belong to, asking for the
	// RAM of this VM: another snapshot's state is never written over.
	var vs v1alpha1.VirtualMachineSnapshot
	err := a.c.Get(ctx, "virtualmachinesnapshots", ns, group[0].Labels[v1alpha1.LabelVMSnapshot], &vs)
	switch {
	case client.IsNotFound(err):
		return failed("its VirtualMachineSnapshot is gone")
	case err != nil:
		return runtime.Result{}, err
	case vs.UID != ramUID || !vs.Spec.KeepRAM || vs.Spec.VirtualMachineName != sp.vmName:
		return failed("annotation " + v1alpha1.AnnotationVMSnapshotRAM + " does not name the VirtualMachineSnapshot (with keepRAM) of this VM that the disk snapshots belong to")
	}
	a.pruneRAMStates(ctx)
	rs := loadRunSpec(sp.in.runDir, sp.vm)
	if why := ramSaveCheck(sp.in, rs, &sp.vm.Spec); why != "" {
		return failed(why)
	}
	ram, err := a.prepareRAMSave(ctx, mon, ramUID, memoryBytes(rs.Spec.Memory.Size))
	if err != nil {
		if ctx.Err() != nil {
			return runtime.Result{}, ctx.Err()
		}
		return failed(err.Error())
	}
	a.log.Info("taking a live disk snapshot with the guest's RAM", "vm", sp.vmName, "disks", len(sp.disks))
	fz := vcpuPauser{mon: mon, paused: new(bool), held: new(bool), in: sp.in}
	res, err := takeLiveAt(ctx, mon, fz, sp.disks, true, ram.save)
	ram.close(ctx)
	if err == nil {
		err = ram.commit(ramRecord{SnapshotUID: ramUID, VMUID: sp.vmUID, SavedAt: a.now().UTC(), RunSpec: *rs})
	}
	if err != nil {
		_ = os.RemoveAll(ram.dir)
		for _, d := range sp.disks {
			os.Remove(d.target)
		}
		if ctx.Err() != nil {
			return runtime.Result{}, ctx.Err()
		}
		return failed(err.Error())
	}
	return runtime.Result{}, a.finishSnapshots(ctx, ns, group, sp, res, ram)
}

// snapshotGroup is s and, for a disk of a VM snapshot, the other disks' snapshots of it: they
// are copied together, once all are handed to this node (wait: not yet).
func (a *Agent) snapshotGroup(ctx context.Context, s *v1alpha1.VirtualDiskSnapshot) (group []v1alpha1.VirtualDiskSnapshot, wait bool, err error) {
	group = []v1alpha1.VirtualDiskSnapshot{*s}
	if vmsnap := s.Labels[v1alpha1.LabelVMSnapshot]; vmsnap != "" {
		want, _ := strconv.Atoi(s.Annotations[v1alpha1.AnnotationVMSnapshotDisks])
		list, err := a.c.List(ctx, "virtualdisksnapshots", s.Namespace, client.ListOptions{LabelSelector: v1alpha1.LabelVMSnapshot + "=" + vmsnap})
		if err != nil {
			return nil, false, err
		}
		group = group[:0]
		waiting, taken := len(list.Items) < want, false
		for _, raw := range list.Items {
			var m v1alpha1.VirtualDiskSnapshot
			if err := json.Unmarshal(raw, &m); err != nil {
				return nil, false, err
			}
			switch {
			case a.handedToMe(&m):
				group = append(group, m)
			case m.Status.Phase == "" || m.Status.Phase == v1alpha1.SnapshotPhasePending:
				waiting = true
			case m.Status.Phase == v1alpha1.SnapshotPhaseReady && m.Status.NodeName == a.cfg.NodeName:
				// Taken by an earlier run that could not write every status: the others
				// would be of another instant.
				taken = true
			}
		}
		if waiting {
			return nil, true, nil
		}
		if taken && len(group) > 0 {
			return nil, false, a.snapshotsFailed(ctx, group, "the other disks of the VM snapshot were taken at another instant (an earlier run of this node's agent ended before it wrote every status): take the VM snapshot again")
		}
	}
	return group, false, nil
}

// snapPlan is what a live snapshot of a group of disks works on: the QEMU that has them open
// (one VM's), the VM, and each disk's copy and final file.
type snapPlan struct {
	in            *instance
	vm            *v1alpha1.VirtualMachine
	vmUID, vmName string
	agentReady    bool
	disks         []snapDisk
	finals        []string
}

// planSnapshots finds the running VM whose disks group copies, and the files. A nil plan ends
// the reconcile with the result and error given (the snapshots failed, or went back to the
// controller because no VM here runs the disks).
func (a *Agent) planSnapshots(ctx context.Context, ns string, group []v1alpha1.VirtualDiskSnapshot) (*snapPlan, runtime.Result, error) {
	sp := &snapPlan{disks: make([]snapDisk, len(group)), finals: make([]string, len(group))}
	for i := range group {
		m := &group[i]
		var d v1alpha1.VirtualDisk
		if err := a.c.Get(ctx, "virtualdisks", ns, m.Spec.VirtualDiskName, &d); err != nil {
			if client.IsNotFound(err) {
				return nil, runtime.Result{}, a.snapshotsFailed(ctx, group, fmt.Sprintf("VirtualDisk %q is gone", m.Spec.VirtualDiskName))
			}
			return nil, runtime.Result{}, err
		}
		path, _, err := a.diskFile(ctx, &d)
		if err != nil {
			return nil, runtime.Result{}, a.snapshotsFailed(ctx, group, fmt.Sprintf("VirtualDisk %q: %v", d.Name, err))
		}
		var sc *v1alpha1.StorageClass
		if m.Status.StorageClassName != "" {
			var got v1alpha1.StorageClass
			if err := a.c.Get(ctx, "storageclasses", "", m.Status.StorageClassName, &got); err == nil {
				sc = &got
			} else if !client.IsNotFound(err) {
				return nil, runtime.Result{}, err
			}
		}
		size, err := v1alpha1.Quantity(d.Status.Capacity).Value()
		if err != nil || size <= 0 {
			return nil, runtime.Result{}, a.snapshotsFailed(ctx, group, fmt.Sprintf("VirtualDisk %q reports no capacity", d.Name))
		}
		var found *instance
		for _, vm := range a.vms.List() {
			if vm.Namespace != ns || !usesDisk(vm, d.Name) {
				continue
			}
			if inst := a.inst(vm.UID); inst != nil && !inst.isExited() {
				found = inst
				if sp.in == nil {
					sp.vm, sp.vmUID, sp.vmName = vm, vm.UID, vm.Name
					c := v1alpha1.FindCondition(vm.Status.Conditions, v1alpha1.VMConditionAgentReady)
					sp.agentReady = c != nil && c.Status == v1alpha1.ConditionTrue
				}
				break
			}
		}
		if found == nil || (sp.in != nil && found != sp.in) {
			// The VM stopped (or moved) meanwhile: the snapshots go back to the controller,
			// which copies disks no VM runs itself.
			return nil, runtime.Result{}, a.giveBackSnapshots(ctx, group)
		}
		sp.in = found
		sp.disks[i] = snapDisk{path: path, target: storage.SnapshotPartPath(a.cfg.DataDir, sc, m.UID), size: size, id: snapshotJobID(m.UID)}
		sp.finals[i] = storage.SnapshotPath(a.cfg.DataDir, sc, m.UID)
	}
	return sp, runtime.Result{}, nil
}

// finishSnapshots keeps the copied files of group and marks the snapshots Ready (a snapshot
// deleted meanwhile loses its file instead).
func (a *Agent) finishSnapshots(ctx context.Context, ns string, group []v1alpha1.VirtualDiskSnapshot, sp *snapPlan, res liveResult, ram *ramSave) error {
	msg := "copied from the running VM with its filesystems frozen"
	switch {
	case ram != nil:
		msg = fmt.Sprintf("copied from the running VM with its RAM state (%d MiB, saved in %s on node %s)", (ram.size+(1<<20)-1)>>20, ram.took.Round(time.Millisecond), a.cfg.NodeName)
	case !res.frozen:
		msg = "copied from the running VM without freezing its filesystems (crash-consistent)"
		if res.freezeErr != nil {
			msg += ": " + res.freezeErr.Error()
		}
	}
	a.log.Info("live disk snapshot taken", "vm", sp.vmName, "frozen", res.frozen, "frozenFor", res.frozenFor, "copy", res.copyTook)
	for i, m := range group {
		// The snapshot may have been deleted while it was copied: then its file goes too.
		var now v1alpha1.VirtualDiskSnapshot
		if err := a.c.Get(ctx, "virtualdisksnapshots", ns, m.Name, &now); err != nil || now.UID != m.UID || now.DeletionTimestamp != nil {
			os.Remove(sp.disks[i].target)
			if err != nil && !client.IsNotFound(err) {
				return err
			}
			continue
		}
		if err := storage.Commit(sp.disks[i].target, sp.finals[i]); err != nil {
			os.Remove(sp.disks[i].target)
			return a.snapshotsFailed(ctx, []v1alpha1.VirtualDiskSnapshot{now}, fmt.Sprintf("keeping the snapshot file: %v", err))
		}
		st := now.Status
		st.Conditions = slices.Clone(now.Status.Conditions)
		st.Phase = v1alpha1.SnapshotPhaseReady
		st.ObservedGeneration = now.Generation
		frozen := res.frozen
		st.Consistent = &frozen
		st.Stats = &v1alpha1.VirtualDiskSnapshotStats{Copy: res.copyTook.Round(time.Millisecond).String()}
		if res.frozen {
			st.Stats.Frozen = res.frozenFor.Round(time.Microsecond).String()
		}
		if ram != nil {
			st.RAM = &v1alpha1.SnapshotRAM{NodeName: a.cfg.NodeName, Size: v1alpha1.BytesQuantity(ram.size)}
		}
		v1alpha1.SetCondition(&st.Conditions, v1alpha1.Condition{Type: v1alpha1.VDSnapshotConditionReady, Status: v1alpha1.ConditionTrue,
			Reason: v1alpha1.VDSnapshotReasonReady, Message: msg, ObservedGeneration: now.Generation})
		a.rec.Event(ctx, "VirtualDiskSnapshot", &now, "Normal", v1alpha1.VDSnapshotReasonReady, fmt.Sprintf("%s in %s", msg, res.copyTook.Round(time.Millisecond)))
		if err := a.writeSnapshotStatus(ctx, &now, st); err != nil {
			return err
		}
	}
	return nil
}

// handedToMe says the snapshot waits for this node's agent to copy it.
func (a *Agent) handedToMe(s *v1alpha1.VirtualDiskSnapshot) bool {
	return s.Status.Phase == v1alpha1.SnapshotPhaseInProgress && s.Status.NodeName == a.cfg.NodeName && s.DeletionTimestamp == nil && storage.CheckUID(s.UID) == nil
}

// giveBackSnapshots returns snapshots whose VM no longer runs here to the controller.
func (a *Agent) giveBackSnapshots(ctx context.Context, group []v1alpha1.VirtualDiskSnapshot) error {
	for i := range group {
		s := &group[i]
		st := s.Status
		st.Conditions = slices.Clone(s.Status.Conditions)
		st.Phase, st.NodeName = v1alpha1.SnapshotPhasePending, ""
		v1alpha1.SetCondition(&st.Conditions, v1alpha1.Condition{Type: v1alpha1.VDSnapshotConditionReady, Status: v1alpha1.ConditionFalse,
			Reason: v1alpha1.VDSnapshotReasonWaitingForDisk, Message: "no VM on node " + a.cfg.NodeName + " runs the disk any more", ObservedGeneration: s.Generation})
		if err := a.writeSnapshotStatus(ctx, s, st); err != nil {
			return err
		}
	}
	return nil
}

func (a *Agent) snapshotsFailed(ctx context.Context, group []v1alpha1.VirtualDiskSnapshot, msg string) error {
	for i := range group {
		if err := a.snapshotFailed(ctx, &group[i], msg); err != nil {
			return err
		}
	}
	return nil
}

// dropSnapshotLeftovers removes a copy job and target node of the snapshot that an earlier
// run of the agent left in QEMU (it was stopped while copying).
func (a *Agent) dropSnapshotLeftovers(ctx context.Context, mon snapshotMonitor, id string) {
	var jobs []qmpJob
	if err := mon.Execute(ctx, "query-jobs", nil, &jobs); err == nil && slices.ContainsFunc(jobs, func(j qmpJob) bool { return j.ID == id }) {
		_ = mon.Execute(ctx, "job-cancel", map[string]any{"id": id}, nil)
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		waitJobsGone(wctx, mon, []string{id})
		cancel()
	}
	var nodes []blockNode
	if err := mon.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err == nil &&
		slices.ContainsFunc(nodes, func(n blockNode) bool { return n.NodeName == id }) {
		_ = mon.Execute(ctx, "blockdev-del", map[string]any{"node-name": id}, nil)
	}
}

func (a *Agent) snapshotFailed(ctx context.Context, s *v1alpha1.VirtualDiskSnapshot, msg string) error {
	a.log.Warn("disk snapshot failed", "snapshot", s.Namespace+"/"+s.Name, "why", msg)
	st := s.Status
	st.Phase = v1alpha1.SnapshotPhaseFailed
	st.ObservedGeneration = s.Generation
	st.Conditions = a.conditionEvent(ctx, "VirtualDiskSnapshot", s, s.Status.Conditions, v1alpha1.Condition{Type: v1alpha1.VDSnapshotConditionReady,
		Status: v1alpha1.ConditionFalse, Reason: v1alpha1.VDSnapshotReasonFailed, Message: msg, ObservedGeneration: s.Generation})
	return a.writeSnapshotStatus(ctx, s, st)
}

func (a *Agent) writeSnapshotStatus(ctx context.Context, s *v1alpha1.VirtualDiskSnapshot, st v1alpha1.VirtualDiskSnapshotStatus) error {
	s.Status = st
	s.ResourceVersion = ""
	err := a.c.UpdateStatus(ctx, "virtualdisksnapshots", s.Namespace, s.Name, s, nil)
	if client.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("writing the status of snapshot %s/%s: %w", s.Namespace, s.Name, err)
	}
	return nil
}
