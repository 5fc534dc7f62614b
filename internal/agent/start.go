package agent

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/placement"
	"github.com/rakhsh/rakhsh/internal/qemu"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// A start is a list of named steps (startSteps). A step that changes the host adds the undo
// of its change to the start's revert stack; when a step fails, the changes of the steps
// before it are undone, last first, and the failure is recorded. The names, in order:
const (
	stepRunDir       = "rundir"       // the run directory, cleared of what an earlier QEMU left
	stepDisks        = "disks"        // block devices resolved to files (disks.go)
	stepProvisioning = "provisioning" // the cloud-init or sysprep medium (provision.go)
	stepLeases       = "leases"       // the leases of the writable disks (disklease.go)
	stepNICs         = "nics"         // networks and taps, with host networking (network.go)
	stepConfig       = "config"       // QEMU's command line
	stepNVRAM        = "nvram"        // the UEFI variable store (nvram.go)
	stepRunFiles     = "runfiles"     // runspec.json and the files QEMU reads
	stepStarting     = "starting"     // phase Starting in the VM's status
	stepTPM          = "tpm"          // swtpm (tpm.go)
	stepLaunch       = "launch"       // QEMU, paused (machine.go)
	stepQMP          = "qmp"          // the QMP connection
	stepResume       = "resume"       // a hibernated VM's saved state read back (hibernate.go)
	stepHotplug      = "hotplug"      // a migration target plugs its source's hot-plugged devices (migrate_hotplug.go)
	stepVNC          = "vnc"          // VNC handed over to a QEMU started without it
	stepCgroups      = "cgroups"      // the VM's cgroup limits and pinning (cgroup.go)
	stepCont         = "cont"         // the guest resumed (unless it is to stay paused)
	stepListen       = "listen"       // a migration target's QEMU listens (migrate.go)
)

// startRun is what the steps of one start hand each other.
type startRun struct {
	vm     *v1alpha1.VirtualMachine
	key    runtime.Key
	runDir string
	disks  []qemu.Disk
	nics   []qemu.NIC
	input  qemu.Input
	cfg    qemu.Config
	m      *Machine  // the QEMU launched, from the launch step on
	in     *instance // its instance
	mon    monitor   // its QMP connection, from the qmp step on
	phase  v1alpha1.VirtualMachinePhase
	// started is when the host was about to change for QEMU itself (the log says how long
	// the start took from there).
	started time.Time
	undo    revert
	// end is what start returns when a step ends it with errEndStart.
	end runtime.Result
	// incoming: the start of a live migration's target (migrate.go).
	incoming bool
	// shape is what a migration's target runs with: its source's CPUs and memory (live.go).
	shape *runSpec
	// balloonFloor is what the node may reclaim the VM's memory down to (memory.go).
	balloonFloor int64
	// hotNodes are the top block nodes of a migration target's hot-plugged Local disks, by
	// disk name: exported for their mirrors (migrate_hotplug.go).
	hotNodes map[string]string
	// hotNICs are the NICs a migration target plugs after its QEMU started
	// (migrate_hotplug.go).
	hotNICs []incomingNIC
	// resume is the saved state a hibernated VM resumes from (hibernate.go); nil: a boot.
	resume *hibernationRecord
}

// startStep is one named step of a start.
type startStep struct {
	name string
	run  func(ctx context.Context, r *startRun) error
}

func (a *Agent) startSteps() []startStep {
	return []startStep{
		{stepRunDir, a.stepRunDir},
		{stepDisks, a.stepDisks},
		{stepProvisioning, a.stepProvisioning},
		{stepLeases, a.stepLeases},
		{stepNICs, a.stepNICs},
		{stepConfig, a.stepConfig},
		{stepNVRAM, a.stepNVRAM},
		{stepRunFiles, a.stepRunFiles},
		{stepStarting, a.stepStarting},
		{stepTPM, a.stepTPM},
		{stepLaunch, a.stepLaunch},
		{stepQMP, a.stepQMP},
		{stepResume, a.stepResume},
		{stepVNC, a.stepVNC},
		{stepCgroups, a.stepCgroups},
		{stepCont, a.stepCont},
	}
}

// startFailure is a step's failure that the VM's status records as StartFailed (with QEMU's
// error lines once QEMU was launched). Any other error of a step is returned to the queue,
// which tries again.
type startFailure struct{ msg string }

func (e *startFailure) Error() string { return e.msg }

func failStart(msg string) error { return &startFailure{msg: msg} }

// errEndStart is returned by a step that ends the start without a failure (it waits for
// something, or the VM is no longer to run here); start returns startRun.end.
var errEndStart = errors.New("the start does not go on")

// startSeams lets tests fail a start at a chosen step and see which undos run; nil outside
// tests.
type startSeams struct {
	failAt string            // the step that fails instead of running
	undone func(step string) // told of each undo as it runs
}

// start resolves the VM's block devices, builds the QEMU command line, launches QEMU paused,
// connects QMP and the serial console, and resumes the guest: the steps of startSteps, in
// order. A failure undoes what the steps before it did.
func (a *Agent) start(ctx context.Context, vm *v1alpha1.VirtualMachine) (runtime.Result, error) {
	if a.facts.qemuErr != nil {
		return runtime.Result{}, a.startFailed(ctx, &startRun{vm: vm, runDir: a.runDir(vm.UID)}, a.facts.qemuErr.Error())
	}
	r := &startRun{vm: vm, key: runtime.KeyOf(vm), runDir: a.runDir(vm.UID)}
	if a.seams != nil {
		r.undo.ran = a.seams.undone
	}
	for _, s := range a.startSteps() {
		var err error
		if a.seams != nil && a.seams.failAt == s.name {
			err = failStart("injected failure at step " + s.name)
		} else {
			err = s.run(ctx, r)
		}
		if err != nil {
			return a.endStart(ctx, r, err)
		}
	}
	a.log.Info("VM started", "vm", string(r.key), "pid", r.m.PID(), "accel", r.cfg.Accelerator, "resumed", r.resume != nil, "took", time.Since(r.started).Round(time.Millisecond))
	v, err := a.markRunning(ctx, vm, r.in, r.phase)
	if err != nil {
		return runtime.Result{}, ignoreGone(err)
	}
	if r.resume != nil {
		// The guest runs on from the saved state, and writes to its disks: the state can
		// never be resumed again.
		removeHibernation(r.runDir)
		a.rec.Event(ctx, "VirtualMachine", v, "Normal", "Resumed", fmt.Sprintf("QEMU started on node %s (pid %d, %s) and resumed the guest hibernated at %s",
			a.cfg.NodeName, r.m.PID(), r.cfg.Accelerator, r.resume.SavedAt.Format(time.RFC3339)))
		return runtime.Result{}, nil
	}
	a.rec.Event(ctx, "VirtualMachine", v, "Normal", "Started", fmt.Sprintf("QEMU started on node %s (pid %d, %s)", a.cfg.NodeName, r.m.PID(), r.cfg.Accelerator))
	return runtime.Result{}, nil
}

// endStart undoes the steps done so far after a step returned err, and records a
// startFailure.
func (a *Agent) endStart(ctx context.Context, r *startRun, err error) (runtime.Result, error) {
	var sf *startFailure
	switch {
	case errors.As(err, &sf):
		return runtime.Result{}, a.startFailed(ctx, r, sf.msg)
	case errors.Is(err, errEndStart):
		r.undo.run()
		return r.end, nil
	default:
		r.undo.run()
		return runtime.Result{}, err
	}
}

// startFailed undoes what the start did (stopping QEMU if it was launched) and records
// StartFailed with QEMU's stderr tail.
func (a *Agent) startFailed(ctx context.Context, r *startRun, msg string) error {
	r.undo.run()
	if r.in != nil {
		msg += qemuErrorSummary(r.runDir)
		a.noteQEMUFailure(ctx, r.vm, qemuLogTail(r.runDir))
	}
	a.log.Warn("VM failed to start", "vm", r.vm.Namespace+"/"+r.vm.Name, "err", msg)
	return ignoreGone(a.recordExit(ctx, r.vm, exitRecord{Reason: v1alpha1.ExitStartFailed, Message: msg}))
}

// stepRunDir makes the run directory and clears what an earlier QEMU left in it. The
// directory lives as long as the VM (it holds its NVRAM and TPM state): nothing to undo.
func (a *Agent) stepRunDir(_ context.Context, r *startRun) error {
	if err := os.MkdirAll(r.runDir, 0o700); err != nil {
		return err
	}
	_ = os.Chmod(r.runDir, 0o700)
	removeRuntimeFiles(r.runDir)
	// The agent's cache holds only the VMs bound to this node: the owner file names the VM
	// of a directory whose VM left the cache, so that only a VM gone from the API loses it.
	if err := writeRunOwner(r.runDir, r.vm); err != nil {
		return err
	}
	return a.chooseResume(r)
}

// chooseResume decides whether the start resumes a hibernated guest (hibernate.go). A saved
// state that is not to be resumed is removed before anything can write to the disks.
func (a *Agent) chooseResume(r *startRun) error {
	if !wantsResume(r.vm) {
		if removeHibernation(r.runDir) {
			why := "the VM is no longer hibernated"
			if v1alpha1.IsHibernated(r.vm) {
				why = "a forced start boots it from its disks"
			}
			a.log.Info("discarded a saved RAM state", "vm", string(r.key), "why", why)
			a.rec.Event(context.Background(), "VirtualMachine", r.vm, "Normal", "SavedStateDiscarded", "the saved RAM state on node "+a.cfg.NodeName+" was discarded: "+why)
		}
		return nil
	}
	rec, err := loadResumable(a.cfg.DataDir, r.runDir, r.vm.UID)
	if rec == nil {
		why := "it is not there"
		if err != nil {
			why = err.Error()
		}
		return failStart(fmt.Sprintf("the VM is hibernated, but its saved RAM state on node %s cannot be resumed (%s); start it with --force to boot it from its disks, discarding that state", a.cfg.NodeName, why))
	}
	// QEMU reads the stream only into the same devices: the resumed QEMU is built from the
	// spec, with the saved vCPUs and memory (resumeShape), so any other change that waits
	// for a restart stands in the way.
	cur := r.vm.Spec
	cur.CPU.Cores, cur.CPU.MaxCores = rec.RunSpec.Spec.CPU.Cores, rec.RunSpec.Spec.CPU.MaxCores
	cur.Memory.Size, cur.Memory.MaxSize = rec.RunSpec.Spec.Memory.Size, rec.RunSpec.Spec.Memory.MaxSize
	if changed := pendingChanges(&rec.RunSpec.Spec, &cur); len(changed) > 0 {
		return failStart("the spec changed since the VM was hibernated: " + strings.Join(changed, ", ") +
			"; revert the change to resume the guest, or start it with --force to boot it with the new spec from its disks, discarding the saved RAM state")
	}
	r.resume = rec
	return nil
}

// stepDisks resolves spec.blockDeviceRefs (disks.go); it changes nothing on the host.
func (a *Agent) stepDisks(ctx context.Context, r *startRun) error {
	disks, err := a.resolveDisks(ctx, r.vm)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return failStart(err.Error())
	}
	r.disks = disks
	return nil
}

// stepProvisioning writes the cloud-init or sysprep CD-ROM (provision.go); undone by removing
// it (every start writes it anew).
func (a *Agent) stepProvisioning(ctx context.Context, r *startRun) error {
	d, err := a.provisioningDisk(ctx, r.vm, r.runDir)
	if err != nil {
		return failStart(err.Error())
	}
	if d != nil {
		r.disks = append(r.disks, *d)
		path := d.Path
		r.undo.add(stepProvisioning, func() { _ = os.Remove(path) })
	}
	return nil
}

// stepNICs gives the VM its NICs: one user-mode NIC without host networking, else its
// networks and taps (network.go). Taps this start made are deleted again on failure; the
// networks are shared with other VMs and stay (the resync removes unused ones).
func (a *Agent) stepNICs(ctx context.Context, r *startRun) error {
	if a.net == nil {
		r.nics = defaultNICs(r.vm)
		return nil
	}
	if a.net.tools != nil {
		return failStart("host networking: " + a.net.tools.Error())
	}
	plan, err := a.planNICs(r.vm)
	if err != nil {
		a.log.Info("start waits for network addresses", "vm", r.vm.Namespace+"/"+r.vm.Name, "why", err)
		r.end = runtime.Result{RequeueAfter: time.Second}
		return errEndStart
	}
	nics, created, err := a.prepareNICs(ctx, r.vm, plan)
	if err != nil {
		return err
	}
	r.nics = nics
	if r.incoming {
		// The source's hot-plugged NICs are plugged into the same ports once QEMU runs.
		r.nics, r.hotNICs = splitIncomingNICs(r.vm, plan, nics)
	}
	if len(created) > 0 {
		r.undo.add(stepNICs, func() { a.deleteTaps(created) })
	}
	return nil
}

// stepConfig builds QEMU's command line, with the class's CPU model (cgroup_cpumodel.go) and
// the paths of the NVRAM and the TPM socket; it changes nothing on the host.
func (a *Agent) stepConfig(ctx context.Context, r *startRun) error {
	vm := r.vm
	r.input = qemu.Input{VM: vm, Node: a.nodeFacts(), RunDir: r.runDir, Disks: r.disks, NICs: r.nics, PassFDs: a.qemuAs != nil, Incoming: r.incoming || (r.resume != nil && r.resume.Snapshot == "")}
	if r.resume != nil {
		// A resumed QEMU has what the hibernated one ran with.
		var in incoming
		in, r.shape = resumeShape(vm, &r.resume.RunSpec)
		r.input.VM, r.input.MemoryRequestedMiB, r.input.HotCPUs, r.input.PadMemory = in.vm, in.memoryMiB, in.hotCPUs, in.padMemory
	}
	if r.incoming {
		// A migration's target has the CPUs and memory its source runs with (live.go).
		var in incoming
		in, r.shape = incomingShape(vm)
		r.input.VM, r.input.MemoryRequestedMiB, r.input.HotCPUs, r.input.PadMemory = in.vm, in.memoryMiB, in.hotCPUs, in.padMemory
	}
	class, err := a.applyClassCPU(ctx, vm, &r.input)
	if err != nil {
		return failStart(err.Error())
	}
	if r.resume != nil {
		rs := &r.resume.RunSpec
		r.input.NoBalloon = !rs.Balloon
		if rs.Balloon {
			fpr := rs.BalloonReporting
			r.input.BalloonReporting = &fpr
		}
	}
	if r.incoming {
		// The target has a balloon only when its source reports one (QEMUs started by an
		// agent that gave none migrate to a target without one).
		res := vm.Status.Resources
		r.input.NoBalloon = res == nil || res.Memory.Balloon == nil
		if !r.input.NoBalloon {
			fpr := res.Memory.Balloon.FreePageReporting
			r.input.BalloonReporting = &fpr
		}
	}
	if vm.Spec.Bootloader == v1alpha1.BootloaderEFI || vm.Spec.Bootloader == v1alpha1.BootloaderEFIWithSecureBoot {
		// The UEFI variable store lives as long as the VM: in its run directory.
		r.input.NVRAMPath = filepath.Join(r.runDir, nvramFileName)
	}
	if needsTPM(vm) {
		r.input.TPMSocket = tpmSocketPath(r.runDir) // swtpm starts right before QEMU (tpm.go)
	}
	cfg, err := qemu.Build(r.input)
	if err != nil {
		return failStart(err.Error())
	}
	r.cfg = cfg
	if cfg.Balloon && class != nil {
		cores := vm.Spec.CPU.Cores
		if r.shape != nil {
			cores = r.shape.Spec.CPU.Cores
		}
		r.balloonFloor = placement.MemoryFloor(class, cores)
	}
	return nil
}

// stepRunFiles writes what runs (runspec.json, read while QEMU runs) and the files the
// configuration asks for; those are removed again on failure.
func (a *Agent) stepRunFiles(_ context.Context, r *startRun) error {
	rs := r.shape
	if rs == nil {
		rs = newRunSpec(r.vm)
	}
	rs.Balloon, rs.BalloonReporting, rs.MemoryPadKiB = r.cfg.Balloon, r.cfg.BalloonReporting, r.cfg.MemoryPadKiB
	if r.balloonFloor > 0 {
		rs.BalloonFloor = v1alpha1.BytesQuantity(r.balloonFloor)
	}
	if err := saveRunSpec(r.runDir, rs); err != nil {
		return err
	}
	var written []string
	for name, data := range r.cfg.Files {
		p := filepath.Join(r.runDir, name)
		err := os.WriteFile(p, data, 0o600)
		written = append(written, p)
		if err != nil {
			removeAll(written)
			return err
		}
	}
	if len(written) > 0 {
		r.undo.add(stepRunFiles, func() { removeAll(written) })
	}
	return nil
}

func removeAll(paths []string) {
	for _, p := range paths {
		_ = os.Remove(p)
	}
}

// stepStarting records phase Starting and that this start carries out the power request's
// restartID, then checks on the object it got back that the VM still is to run here.
func (a *Agent) stepStarting(ctx context.Context, r *startRun) error {
	pr := r.vm.Status.PowerRequest
	fresh, err := a.writePhase(ctx, r.vm, v1alpha1.VMPhaseStarting, func(v *v1alpha1.VirtualMachine) {
		v.Status.ObservedRestartID = pr.RestartID
		setRunningCond(v, v1alpha1.ConditionFalse, ReasonStarting, "starting QEMU")
		if r.resume == nil {
			// A boot: whatever was saved is gone (chooseResume).
			removeHibernatedCondition(v)
		}
	})
	if err != nil {
		if errors.Is(err, runtime.ErrVMGone) {
			return errEndStart
		}
		return err
	}
	if fresh.Status.NodeName != a.cfg.NodeName || !wantsRunning(fresh.Status.PowerRequest) {
		return errEndStart
	}
	r.started = time.Now()
	return nil
}

// stepTPM starts the VM's swtpm when it has a TPM (tpm.go); undone by stopping it (its state
// stays).
func (a *Agent) stepTPM(ctx context.Context, r *startRun) error {
	if r.input.TPMSocket == "" {
		return nil
	}
	if err := a.startTPM(ctx, r.runDir); err != nil {
		return failStart("starting the TPM: " + err.Error())
	}
	runDir := r.runDir
	r.undo.add(stepTPM, func() { stopTPM(runDir) })
	return nil
}

// stepVNC hands VNC to a QEMU started without it (-vnc none, when QEMU cannot open the
// socket itself).
func (a *Agent) stepVNC(ctx context.Context, r *startRun) error {
	if !r.cfg.LateVNC {
		return nil
	}
	vmon, ok := r.mon.(qemu.VNCMonitor)
	if !ok {
		return failStart("starting VNC: the monitor cannot pass descriptors")
	}
	if err := r.cfg.StartVNC(ctx, vmon); err != nil {
		return failStart("starting VNC: " + err.Error())
	}
	return nil
}

// stepCgroups puts QEMU into its cgroup with the VM's limits (cgroup.go). A CPU share below
// 100 % or dedicated cores are what the VM's class sells: without them the VM does not start.
// A VM that asks for neither only loses its memory cap, so it runs, and the node says why it
// is not confined. The cgroup goes with QEMU (the launch step's undo).
func (a *Agent) stepCgroups(ctx context.Context, r *startRun) error {
	vm := r.vm
	if r.shape != nil {
		// A migration's target: the CPUs and memory its source runs with now.
		shaped := *r.vm
		shaped.Spec = r.shape.Spec
		vm = &shaped
	}
	err := a.enforceLimits(ctx, vm, r.in)
	if err == nil {
		return nil
	}
	if lim := computeLimits(vm, r.in.accel != "kvm"); lim.cpuQuotaUsec > 0 || lim.dedicated > 0 {
		return failStart("applying the VM's CPU and memory limits: " + err.Error())
	}
	a.log.Warn("the VM runs without its cgroup memory limit", "vm", string(r.key), "err", err)
	a.rec.Event(ctx, "VirtualMachine", r.vm, "Warning", "LimitsNotApplied",
		"the VM runs without a cgroup memory limit on node "+a.cfg.NodeName+": "+err.Error())
	return nil
}

// stepCont resumes the guest, unless the power request wants it paused.
func (a *Agent) stepCont(ctx context.Context, r *startRun) error {
	if r.resume != nil {
		if err := spendResume(r.runDir); err != nil {
			return failStart("resuming the saved RAM state: " + err.Error())
		}
	}
	if r.vm.Status.PowerRequest.State == v1alpha1.PowerStatePaused {
		r.phase = v1alpha1.VMPhasePause
		return nil
	}
	if err := r.mon.Cont(ctx); err != nil {
		return failStart("cont: " + err.Error())
	}
	r.phase = v1alpha1.VMPhaseRunning
	return nil
}

// defaultNICs gives the VM one user-mode (isolated, restrict=on) interface until the network
// controllers provide taps on bridges. Its MAC is the one in status.networks when known, else
// derived from the VM uid.
func defaultNICs(vm *v1alpha1.VirtualMachine) []qemu.NIC {
	mac := ""
	if len(vm.Status.Networks) > 0 {
		mac = vm.Status.Networks[0].MACAddress
	}
	if mac == "" {
		h := sha256.Sum256([]byte(vm.UID))
		mac = fmt.Sprintf("52:54:00:%02x:%02x:%02x", h[0], h[1], h[2])
	}
	return []qemu.NIC{{ID: "main", MAC: mac}}
}

// startedWithoutVNC says whether the QEMU process pid was started with -vnc none (VNC is then
// handed over by the agent after start).
func startedWithoutVNC(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	return err == nil && strings.Contains("\x00"+string(b), "\x00-vnc\x00none\x00")
}
