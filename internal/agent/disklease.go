package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// Disk leases (v1alpha1.VirtualDiskLease, internal/runtime/disklease.go). The agent takes the
// lease of every writable VirtualDisk of a VM before it launches its QEMU (stepLeases), and
// starts nothing while another node holds one; it gives the leases back when the VM stops on
// this node. The tokens a QEMU was started under are kept in its run directory
// (diskLeasesFile). When the agent acquires its node lease anew (at its start, or after it
// lost the lease: it was stopped or cut off), it compares them with the leases as they are
// now: a QEMU whose disk lease moved to another node or VM is killed at once (lastExit
// Fenced), before the agent does anything else with it. docs/ha.md.

// diskLeasesFile, in a VM's run directory, lists the disk leases its QEMU runs under:
// "DISK TOKEN" lines.
const diskLeasesFile = "disk-leases"

// leaseRetry is how soon a start held back by another holder's disk lease is tried again.
const leaseRetry = 2 * time.Second

// stepLeases takes the disk leases of the VM's writable disks; a lease another node holds
// ends the start without a failure (it is tried again shortly). Undone by giving them back.
func (a *Agent) stepLeases(ctx context.Context, r *startRun) error {
	names := runtime.WritableDisks(r.vm)
	if len(names) == 0 {
		_ = os.Remove(filepath.Join(r.runDir, diskLeasesFile))
		return nil
	}
	var lines []string
	for _, n := range names {
		l, err := runtime.AcquireDiskLease(ctx, a.c, r.vm.Namespace, n, a.cfg.NodeName, r.vm.Name, r.vm.UID, a.cfg.Now(), a.mayTakeDiskLease)
		if errors.Is(err, runtime.ErrDiskLeaseHeld) {
			a.log.Info("VM not started: a disk lease is held elsewhere", "vm", string(r.key), "err", err)
			a.rec.Event(ctx, "VirtualMachine", r.vm, "Warning", "DiskLeaseHeld", err.Error()+"; the VM starts here once the lease is free")
			r.end = runtime.Result{RequeueAfter: leaseRetry}
			return errEndStart
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err // back to the queue: the store is not reachable
		}
		disk := n
		r.undo.add(stepLeases, func() { a.releaseDiskLease(r.vm, disk, "the start on node "+a.cfg.NodeName+" failed") })
		lines = append(lines, n+" "+l.ResourceVersion)
	}
	if err := os.WriteFile(filepath.Join(r.runDir, diskLeasesFile), []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		return err
	}
	a.log.Info("disk leases held", "vm", string(r.key), "leases", strings.Join(lines, ", "))
	return nil
}

// mayTakeDiskLease: a lease this node holds for another instance of a VM (deleted and made
// again under the same disk) may be taken when that instance's QEMU no longer runs here.
func (a *Agent) mayTakeDiskLease(l *v1alpha1.VirtualDiskLease) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, in := range a.insts {
		if in.uid == l.Spec.VirtualMachineUID && !in.isExited() {
			return false
		}
	}
	return true
}

// releaseDiskLease gives back the lease of one disk of vm, if this node holds it for vm.
func (a *Agent) releaseDiskLease(vm *v1alpha1.VirtualMachine, disk, why string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ok, err := runtime.ReleaseDiskLease(ctx, a.c, vm.Namespace, disk, a.cfg.NodeName, vm.UID, "node "+a.cfg.NodeName+": "+why)
	switch {
	case err != nil:
		a.log.Warn("giving back a disk lease failed (the lease sweep tries again)", "vm", vm.Namespace+"/"+vm.Name, "disk", disk, "err", err)
	case ok:
		a.log.Info("disk lease given back", "vm", vm.Namespace+"/"+vm.Name, "disk", disk, "why", why)
	}
}

// releaseDiskLeases gives back the leases of all disks of vm this node holds for it.
func (a *Agent) releaseDiskLeases(vm *v1alpha1.VirtualMachine, why string) {
	for _, n := range runtime.WritableDisks(vm) {
		a.releaseDiskLease(vm, n, why)
	}
}

// readDiskLeases reads the tokens a VM's QEMU runs under, by disk.
func readDiskLeases(runDir string) map[string]string {
	data, err := os.ReadFile(filepath.Join(runDir, diskLeasesFile))
	if err != nil {
		return nil
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			out[f[0]] = f[1]
		}
	}
	return out
}

// verifyDiskLeases compares, for every QEMU this agent runs, the disk leases it was started
// under with the leases in the store, and kills each QEMU one of whose leases another node or
// VM now holds (or holds under a later token). A lease that is free or missing (an agent
// before disk leases started it) is taken again while the VM is bound here. It runs when the
// agent acquires its node lease (at its start and after it lost the lease), before VMs are
// reconciled again.
func (a *Agent) verifyDiskLeases(ctx context.Context) {
	ins := a.instances()
	sort.Slice(ins, func(i, j int) bool { return ins[i].key < ins[j].key })
	for _, in := range ins {
		if in.pid <= 0 || in.isExited() || in.incoming != nil {
			continue
		}
		vm, ok := a.vms.Get(in.key)
		if !ok || vm.UID != in.uid {
			continue // not bound here: the orphan and migration paths own it
		}
		if m := vm.Status.MigrationState; m != nil && m.Phase == v1alpha1.MigrationPhaseSucceeded && m.Target.Node == a.cfg.NodeName {
			continue // migrated here: the migration controller hands the leases over
		}
		started := readDiskLeases(in.runDir)
		for _, disk := range runtime.WritableDisks(vm) {
			var l v1alpha1.VirtualDiskLease
			err := a.c.Get(ctx, runtime.DiskLeaseResource, vm.Namespace, disk, &l)
			if err != nil && !client.IsNotFound(err) {
				a.log.Warn("checking a disk lease failed", "vm", string(in.key), "disk", disk, "err", err)
				continue
			}
			token := started[disk]
			switch {
			case err == nil && l.HeldBy(a.cfg.NodeName, vm.UID) && (token == "" || token == l.ResourceVersion):
				continue
			case err == nil && l.HeldBy(a.cfg.NodeName, vm.UID):
				// Held here still, but granted again since this QEMU started: someone
				// released and this node re-took it. The QEMU is not the grant's.
			case client.IsNotFound(err) || l.Free():
				nl, aerr := runtime.AcquireDiskLease(ctx, a.c, vm.Namespace, disk, a.cfg.NodeName, vm.Name, vm.UID, a.cfg.Now(), nil)
				if aerr == nil {
					a.log.Warn("disk lease of a running VM taken again", "vm", string(in.key), "disk", disk, "token", nl.ResourceVersion, "was", token)
					started[disk] = nl.ResourceVersion
					a.writeDiskLeases(in.runDir, started)
					continue
				}
				if !errors.Is(aerr, runtime.ErrDiskLeaseHeld) {
					a.log.Warn("taking a disk lease again failed", "vm", string(in.key), "disk", disk, "err", aerr)
					continue
				}
				l = *nl
			}
			why := fmt.Sprintf("the lease of VirtualDisk %s is held by node %q for VM uid %s under token %s, and this QEMU started under token %q",
				disk, l.Spec.HolderNode, l.Spec.VirtualMachineUID, l.ResourceVersion, token)
			a.fenceKill(in, why)
			break
		}
	}
}

func (a *Agent) writeDiskLeases(runDir string, tokens map[string]string) {
	var lines []string
	for d, t := range tokens {
		lines = append(lines, d+" "+t)
	}
	sort.Strings(lines)
	tmp := filepath.Join(runDir, diskLeasesFile+".tmp")
	if os.WriteFile(tmp, []byte(strings.Join(lines, "\n")+"\n"), 0o600) == nil {
		_ = os.Rename(tmp, filepath.Join(runDir, diskLeasesFile))
	}
}

// fenceKill kills in's QEMU because it may no longer write its disks; the exit path records
// lastExit Fenced with why.
func (a *Agent) fenceKill(in *instance, why string) {
	a.log.Error("killing a QEMU whose disk lease moved on", "vm", string(in.key), "pid", in.pid, "why", why)
	if a.fence != nil {
		a.fence.killOne(haProc{uid: in.uid, key: string(in.key), pid: in.pid}, "its disk lease moved on: "+why)
	}
}

// sweepDiskLeases gives back the leases this node holds for VMs that neither run here nor
// are bound here (a release that failed, an agent that stopped midway).
func (a *Agent) sweepDiskLeases(ctx context.Context) {
	list, err := a.c.ListAll(ctx, runtime.DiskLeaseResource, "", client.ListOptions{})
	if err != nil {
		if ctx.Err() == nil {
			a.log.Warn("listing disk leases failed", "err", err)
		}
		return
	}
	bound := a.vmKeysByUID()
	live := map[string]bool{}
	a.mu.Lock()
	for _, in := range a.insts {
		if !in.isExited() {
			live[in.uid] = true
		}
	}
	a.mu.Unlock()
	for _, raw := range list.Items {
		var l v1alpha1.VirtualDiskLease
		if err := json.Unmarshal(raw, &l); err != nil || l.Spec.HolderNode != a.cfg.NodeName {
			continue
		}
		uid := l.Spec.VirtualMachineUID
		if live[uid] {
			continue
		}
		if _, ok := bound[uid]; ok {
			continue // bound here: it starts (or stops) here, and gives the lease back then
		}
		ok, err := runtime.ReleaseDiskLease(ctx, a.c, l.Namespace, l.Name, a.cfg.NodeName, uid, "node "+a.cfg.NodeName+": the VM no longer runs here")
		if err != nil {
			a.log.Warn("giving back a stale disk lease failed", "disk", l.Namespace+"/"+l.Name, "err", err)
		} else if ok {
			a.log.Info("stale disk lease given back", "disk", l.Namespace+"/"+l.Name, "vm", l.Spec.VirtualMachineName)
		}
	}
}
