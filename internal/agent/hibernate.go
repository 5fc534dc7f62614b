package agent

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/qemu/qmp"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// Hibernation saves a running guest's RAM and device state into the VM's run directory and
// ends QEMU; the next start on this node launches QEMU with the same devices, waiting for an
// incoming migration (-incoming defer), and feeds it the saved stream: the guest goes on
// where it was, without a boot. The stream is QEMU's own migration stream, written to a file
// descriptor the agent opened (QEMU never opens a path of ours).
//
// The Hibernated condition of the VM is what says a saved state is to be resumed: a start
// resumes only when it is True and the state is complete here; every other start (a forced
// one, or one whose condition is gone) removes what is here first, so that stale RAM is never
// resumed over disks that have changed since.
const (
	hibernationDirName = "hibernation"
	hibernationState   = "state"     // the migration stream
	hibernationMeta    = "meta.json" // hibernationRecord, written after the stream is complete
	hibernationPartial = "state.partial"
)

// Reasons of the Hibernated condition.
const (
	ReasonHibernationSaved      = "Saved"
	ReasonHibernationSaveFailed = "SaveFailed"
)

// hibernationRecord is what meta.json holds: what the saved stream needs to resume.
type hibernationRecord struct {
	// Operation is the VirtualMachineOperation that asked for the hibernation.
	Operation string    `json:"operation,omitempty"`
	SavedAt   time.Time `json:"savedAt"`
	// Size is the stream's length in bytes; a state file of another length is not resumed.
	Size int64 `json:"size"`
	// RunSpec is what QEMU ran with (runspec.json): the resumed QEMU gets the same vCPUs,
	// memory, balloon and padding.
	RunSpec runSpec `json:"runSpec"`
	// Snapshot, set in memory only, is the VirtualMachineSnapshot whose RAM state a restore
	// left to resume (ramsnap.go) instead of a stream in the run directory.
	Snapshot string `json:"-"`
}

// hibernationFromSnapshot, in the hibernation directory, names the VirtualMachineSnapshot
// whose RAM state the next start resumes (written by a restore: storage.ResumeFromSnapshotPath).
const hibernationFromSnapshot = "from-snapshot"

// loadResumable is loadHibernation that also finds the RAM state of a VM snapshot a restore
// left to resume.
func loadResumable(dataDir, runDir, vmUID string) (*hibernationRecord, error) {
	b, err := os.ReadFile(filepath.Join(hibernationDir(runDir), hibernationFromSnapshot))
	if errors.Is(err, os.ErrNotExist) {
		return loadHibernation(runDir)
	}
	if err != nil {
		return nil, err
	}
	uid := string(bytes.TrimSpace(b))
	rec, err := loadRAMRecord(dataDir, uid, vmUID)
	if err != nil {
		return nil, err
	}
	return &hibernationRecord{SavedAt: rec.SavedAt, Size: rec.Size, RunSpec: rec.RunSpec, Snapshot: uid}, nil
}

func hibernationDir(runDir string) string { return filepath.Join(runDir, hibernationDirName) }

// loadHibernation returns the complete saved state of runDir, nil when there is none, or an
// error when one is there but cannot be resumed.
func loadHibernation(runDir string) (*hibernationRecord, error) {
	dir := hibernationDir(runDir)
	var rec hibernationRecord
	size, found, err := readStateRecord(dir, hibernationMeta, hibernationState, &rec)
	switch {
	case err != nil:
		return nil, err
	case !found:
		if _, serr := os.Stat(dir); serr == nil {
			return nil, errors.New("the saved state is incomplete (no " + hibernationMeta + ")")
		}
		return nil, nil
	case size != rec.Size || rec.Size == 0:
		return nil, fmt.Errorf("the saved state has %d bytes, its record says %d", size, rec.Size)
	}
	return &rec, nil
}

// readStateRecord reads the JSON record meta of a saved state in dir into rec and returns
// the size of the state file it describes; found is false (and err nil) when there is no
// record.
func readStateRecord(dir, meta, state string, rec any) (size int64, found bool, err error) {
	b, err := os.ReadFile(filepath.Join(dir, meta))
	if errors.Is(err, os.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	if err := json.Unmarshal(b, rec); err != nil {
		return 0, true, fmt.Errorf("%s: %w", meta, err)
	}
	fi, err := os.Stat(filepath.Join(dir, state))
	if err != nil {
		return 0, true, err
	}
	return fi.Size(), true, nil
}

// removeHibernation removes runDir's saved state, reporting whether there was one.
func removeHibernation(runDir string) bool {
	dir := hibernationDir(runDir)
	if _, err := os.Stat(dir); err != nil {
		return false
	}
	_ = os.RemoveAll(dir)
	return true
}

// hibernationFreeSpace is the free space of the file system of dir (a variable: tests make it
// run out).
var hibernationFreeSpace = func(dir string) (int64, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return 0, err
	}
	return int64(fs.Bavail) * int64(fs.Bsize), nil
}

// wantsResume says a start of vm is to resume a saved state: it is hibernated, and the start
// is not a forced one (a boot from the disks).
func wantsResume(vm *v1alpha1.VirtualMachine) bool {
	pr := vm.Status.PowerRequest
	return v1alpha1.IsHibernated(vm) && (pr == nil || !pr.Force)
}

// removeHibernatedCondition drops the Hibernated condition from v's status.
func removeHibernatedCondition(v *v1alpha1.VirtualMachine) {
	v.Status.Conditions = slices.DeleteFunc(v.Status.Conditions, func(c v1alpha1.Condition) bool { return c.Type == v1alpha1.VMConditionHibernated })
}

// hibernate moves a hibernation of a running QEMU on by one step without blocking, and says
// when to look again. The steps are read from QEMU itself, so an agent restarted midway goes
// on: a stream that runs is waited for, a completed one is kept, a failed one is reported.
func (a *Agent) hibernate(ctx context.Context, vm *v1alpha1.VirtualMachine, in *instance) (runtime.Result, error) {
	pr := vm.Status.PowerRequest
	mon, ok := in.monitor().(fdPasser)
	if !ok {
		return runtime.Result{RequeueAfter: time.Second}, nil
	}
	var st migrateInfo
	if err := mon.Execute(ctx, "query-migrate", nil, &st); err != nil {
		return runtime.Result{}, fmt.Errorf("query-migrate: %w", err)
	}
	in.mu.Lock()
	begun := in.hibernation == pr.Operation && pr.Operation != ""
	in.mu.Unlock()
	dir := hibernationDir(in.runDir)
	if st.Status == "completed" {
		// Saved already (an agent restarted between the record and the quit): never save
		// again over a complete state.
		if rec, _ := loadHibernation(in.runDir); rec != nil {
			if run, err := in.monitor().QueryStatus(ctx); err == nil && run.Status == qmp.StatusPostMigrate {
				return a.quitWith(ctx, in, exitRecord{Reason: v1alpha1.ExitStopped, Message: hibernatedMessage(rec.Size, a.cfg.NodeName), Hibernated: true})
			}
		}
	}
	switch {
	case migrationActive(st.Status):
		return runtime.Result{RequeueAfter: 250 * time.Millisecond}, nil
	case st.Status == "completed" && fileExists(filepath.Join(dir, hibernationPartial)):
		run, err := in.monitor().QueryStatus(ctx)
		if err != nil {
			return runtime.Result{}, fmt.Errorf("query-status: %w", err)
		}
		switch run.Status {
		case qmp.StatusPostMigrate:
			return a.finishHibernation(ctx, vm, in)
		case qmp.StatusFinishMigrate:
			// The stream is complete; QEMU moves on to postmigrate a moment later.
			return runtime.Result{RequeueAfter: 50 * time.Millisecond}, nil
		}
		// A QEMU whose last migration was an incoming one: the file is not its stream.
	case st.Status == "failed" && begun:
		return a.hibernationFailed(ctx, vm, in, "saving the RAM state failed: "+cmp.Or(st.ErrorDesc, "QEMU gives no reason"))
	}
	return a.beginHibernation(ctx, vm, in, mon)
}

// beginHibernation pauses the guest and starts QEMU's migration stream into the saved-state
// file.
func (a *Agent) beginHibernation(ctx context.Context, vm *v1alpha1.VirtualMachine, in *instance, mon fdPasser) (runtime.Result, error) {
	pr := vm.Status.PowerRequest
	rs := loadRunSpec(in.runDir, vm)
	if len(rs.RetiredCPUSlots) > 0 {
		return a.hibernationFailed(ctx, vm, in, "vCPUs were removed from the running guest, which a resumed QEMU cannot reproduce: restart the virtual machine first")
	}
	if hp := readHotplugState(in.runDir, in.pid); len(hp.Disks)+len(hp.NICs) > 0 {
		return a.hibernationFailed(ctx, vm, in, "hot-plugged devices are not kept by a hibernation: detach them first, or stop the virtual machine")
	}
	dir := hibernationDir(in.runDir)
	_ = os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return runtime.Result{}, err
	}
	// At most the guest's RAM is written (zero pages take next to nothing); refuse rather
	// than fill the node's disk.
	need := memoryBytes(rs.Spec.Memory.Size) + 64<<20
	if free, err := hibernationFreeSpace(dir); err == nil {
		if free < need {
			_ = os.RemoveAll(dir)
			return a.hibernationFailed(ctx, vm, in, fmt.Sprintf("not enough free space on node %s for the RAM state: %d MiB free in %s, up to %d MiB needed",
				a.cfg.NodeName, free>>20, a.cfg.DataDir, need>>20))
		}
	}
	if _, err := a.writePhase(ctx, vm, v1alpha1.VMPhaseStopping, nil); err != nil {
		return runtime.Result{}, ignoreGone(err)
	}
	// The guest stops first: its RAM is then written once, and the disks hold still.
	run, err := in.monitor().QueryStatus(ctx)
	if err != nil {
		return runtime.Result{}, fmt.Errorf("query-status: %w", err)
	}
	in.mu.Lock()
	in.hibernationWasPaused = run.Status == qmp.StatusPaused
	in.mu.Unlock()
	if err := in.monitor().Stop(ctx); err != nil {
		return runtime.Result{}, fmt.Errorf("stop: %w", err)
	}
	if err := mon.Execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": migrationCaps(nil)}, nil); err != nil {
		return a.hibernationFailed(ctx, vm, in, "migrate-set-capabilities: "+err.Error())
	}
	if err := mon.Execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(1) << 40}, nil); err != nil {
		return a.hibernationFailed(ctx, vm, in, "migrate-set-parameters: "+err.Error())
	}
	f, err := os.OpenFile(filepath.Join(dir, hibernationPartial), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return a.hibernationFailed(ctx, vm, in, "creating the state file: "+err.Error())
	}
	err = mon.GetFD(ctx, "hibernate", f)
	f.Close()
	if err != nil {
		return a.hibernationFailed(ctx, vm, in, "passing the state file to QEMU: "+err.Error())
	}
	in.mu.Lock()
	in.hibernation = pr.Operation
	in.mu.Unlock()
	if err := mon.Execute(ctx, "migrate", map[string]any{"uri": "fd:hibernate"}, nil); err != nil {
		return a.hibernationFailed(ctx, vm, in, "migrate: "+err.Error())
	}
	a.log.Info("hibernating: saving the guest's RAM state", "vm", string(runtime.KeyOf(vm)), "operation", pr.Operation)
	a.rec.Event(ctx, "VirtualMachine", vm, "Normal", "Hibernating", "saving the guest's RAM state on node "+a.cfg.NodeName)
	return runtime.Result{RequeueAfter: 250 * time.Millisecond}, nil
}

// finishHibernation makes the completed stream the VM's saved state (synced, then its record
// written) and ends QEMU; the exit records the VM as hibernated.
func (a *Agent) finishHibernation(ctx context.Context, vm *v1alpha1.VirtualMachine, in *instance) (runtime.Result, error) {
	dir := hibernationDir(in.runDir)
	state := filepath.Join(dir, hibernationState)
	if err := storage.Commit(filepath.Join(dir, hibernationPartial), state); err != nil {
		return a.hibernationFailed(ctx, vm, in, "writing the RAM state: "+err.Error())
	}
	fi, err := os.Stat(state)
	if err != nil {
		return runtime.Result{}, err
	}
	size := fi.Size()
	rec := hibernationRecord{SavedAt: a.now().UTC(), Size: size, RunSpec: *loadRunSpec(in.runDir, vm)}
	if pr := vm.Status.PowerRequest; pr != nil {
		rec.Operation = pr.Operation
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return runtime.Result{}, err
	}
	// The record goes last: a state without it is never resumed (loadHibernation).
	tmp := filepath.Join(dir, hibernationMeta+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return runtime.Result{}, err
	}
	if err := storage.Commit(tmp, filepath.Join(dir, hibernationMeta)); err != nil {
		return runtime.Result{}, err
	}
	a.log.Info("hibernated: the RAM state is saved", "vm", string(runtime.KeyOf(vm)), "bytes", size)
	return a.quitWith(ctx, in, exitRecord{Reason: v1alpha1.ExitStopped, Message: hibernatedMessage(size, a.cfg.NodeName), Hibernated: true})
}

// hibernatedMessage is the exit message and Hibernated condition message of a saved state.
func hibernatedMessage(size int64, node string) string {
	return fmt.Sprintf("hibernated: the guest's RAM state (%d MiB) is saved on node %s; the next start resumes it", (size+(1<<20)-1)>>20, node)
}

// hibernationFailed reports a hibernation that could not save the state: the guest runs on
// (the VM controller asks for Running again, and the reconcile resumes the paused guest).
func (a *Agent) hibernationFailed(ctx context.Context, vm *v1alpha1.VirtualMachine, in *instance, msg string) (runtime.Result, error) {
	pr := vm.Status.PowerRequest
	in.mu.Lock()
	in.hibernation, in.hibernationFailed = "", pr.Operation
	wasPaused := in.hibernationWasPaused
	in.mu.Unlock()
	_ = os.RemoveAll(hibernationDir(in.runDir))
	a.log.Warn("hibernation failed; the guest runs on", "vm", string(runtime.KeyOf(vm)), "err", msg)
	a.rec.Event(ctx, "VirtualMachine", vm, "Warning", "HibernationFailed", msg)
	// The guest goes on as it was before the save paused it (cont also leaves postmigrate).
	phase := v1alpha1.VMPhasePause
	if !wasPaused {
		if err := in.monitor().Cont(ctx); err != nil {
			return runtime.Result{}, fmt.Errorf("resuming the guest after a failed hibernation: %w", err)
		}
		phase = v1alpha1.VMPhaseRunning
	}
	_, err := a.writePhase(ctx, vm, phase, func(v *v1alpha1.VirtualMachine) {
		v1alpha1.SetCondition(&v.Status.Conditions, v1alpha1.Condition{Type: v1alpha1.VMConditionHibernated, Status: v1alpha1.ConditionFalse,
			Reason: ReasonHibernationSaveFailed, Message: msg})
	})
	return runtime.Result{}, ignoreGone(err)
}

// stepResume feeds a resumed QEMU (launched with -incoming defer) its saved state and waits
// until QEMU has read all of it; the guest is then paused where it was hibernated.
func (a *Agent) stepResume(ctx context.Context, r *startRun) error {
	if r.resume == nil {
		return nil
	}
	if r.resume.Snapshot != "" {
		mon, ok := r.mon.(snapshotMonitor)
		if !ok {
			return failStart("resuming the RAM state of the snapshot: the monitor cannot pass descriptors")
		}
		if err := loadSnapshotRAM(ctx, mon, a.cfg.DataDir, r.runDir, r.resume.Snapshot); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return failStart("resuming the RAM state of the snapshot: " + err.Error())
		}
		return nil
	}
	mon, ok := r.mon.(fdPasser)
	if !ok {
		return failStart("resuming the saved RAM state: the monitor cannot pass descriptors")
	}
	f, err := os.Open(filepath.Join(hibernationDir(r.runDir), hibernationState))
	if err != nil {
		return failStart("resuming the saved RAM state: " + err.Error())
	}
	err = mon.GetFD(ctx, "resume", f)
	f.Close()
	if err != nil {
		return failStart("resuming the saved RAM state: passing it to QEMU: " + err.Error())
	}
	if err := mon.Execute(ctx, "migrate-incoming", map[string]any{"uri": "fd:resume"}, nil); err != nil {
		return failStart("resuming the saved RAM state: migrate-incoming: " + err.Error())
	}
	// Reading a file goes at disk speed; a minute and a second per 50 MiB bound it.
	limit := time.Minute + time.Duration(r.resume.Size/(50<<20))*time.Second
	deadline := time.Now().Add(limit)
	for {
		var st migrateInfo
		if err := mon.Execute(ctx, "query-migrate", nil, &st); err != nil {
			return failStart("resuming the saved RAM state: query-migrate: " + err.Error())
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return failStart("resuming the saved RAM state failed: " + cmp.Or(st.ErrorDesc, "QEMU gives no reason (see its log)"))
		}
		if time.Now().After(deadline) {
			return failStart(fmt.Sprintf("resuming the saved RAM state: QEMU did not read it within %s (status %q)", limit.Round(time.Second), st.Status))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// resumeShape is what a resumed QEMU is built from: the vCPUs, memory and balloon the saved
// QEMU ran with (like a migration target's incomingShape, from the saved runspec.json).
func resumeShape(vm *v1alpha1.VirtualMachine, saved *runSpec) (incoming, *runSpec) {
	rs := *saved
	spec := vm.Spec
	spec.CPU.Cores, spec.CPU.MaxCores = saved.Spec.CPU.Cores, saved.Spec.CPU.MaxCores
	spec.Memory.Size, spec.Memory.MaxSize = saved.Spec.Memory.Size, saved.Spec.Memory.MaxSize
	rs.Spec = spec
	build := spec
	var shape incoming
	if b := saved.BootCores; b > 0 && b < spec.CPU.Cores {
		build.CPU.Cores = b
		shape.hotCPUs = spec.CPU.Cores - b
	}
	if spec.Memory.MaxSize != "" && saved.BootMemory != "" {
		shape.memoryMiB = max((memoryBytes(spec.Memory.Size)-memoryBytes(saved.BootMemory))>>20, 0)
	}
	build.Memory.Size = saved.bootMemory()
	pad := saved.MemoryPadKiB > 0
	shape.padMemory = &pad
	shaped := *vm
	shaped.Spec = build
	shape.vm = &shaped
	return shape, &rs
}

// spendResume removes the record of the saved state a resumed QEMU has read, before its
// guest runs again: from then on the guest writes to its disks, and the state must never be
// resumed again, whatever happens before the status says the VM runs.
func spendResume(runDir string) error {
	dir := hibernationDir(runDir)
	for _, name := range []string{hibernationMeta, hibernationFromSnapshot} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	_ = storage.SyncDir(dir)
	return nil
}
