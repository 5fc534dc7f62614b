package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/qemu/qmp"
)

// Backups of stopped VMs. No QEMU has the disks open, so the agent starts a
// qemu-storage-daemon of its own (QEMU's block layer without a guest, with the same QMP), opens
// the VM's disks in it, and takes the backup through it exactly as through a running VM's
// QEMU: the same transaction, jobs and persistent dirty bitmaps, so backups of a VM build on
// each other whether it ran or not. The daemon holds QEMU's image locks on the disks, which
// keep the VM's own QEMU from opening them meanwhile (a start fails and is retried); it dies
// with the agent.

// storageDaemon is a running qemu-storage-daemon and its monitor.
type storageDaemon struct {
	cmd   *exec.Cmd
	mon   *qmp.Conn
	dir   string
	nodes []string
	done  chan struct{}
	log   interface{ Warn(string, ...any) }
}

// qsdBinary is the qemu-storage-daemon the agent runs (a variable for tests).
var qsdBinary = "qemu-storage-daemon"

// startStorageDaemon starts a daemon with the disks of the stopped VM vm open, for backup b.
func (a *Agent) startStorageDaemon(ctx context.Context, b *v1alpha1.VirtualMachineBackup, vm *v1alpha1.VirtualMachine) (*storageDaemon, error) {
	dir := filepath.Join(a.backupWorkDir(), "qsd-"+string(b.UID))
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	sock := filepath.Join(dir, "qmp.sock")
	cmd := exec.Command(qsdBinary, "--chardev", "socket,path="+sock+",server=on,wait=off,id=m", "--monitor", "chardev=m")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Env = append(os.Environ(), qemuMallocTunables)
	out, err := os.Create(filepath.Join(dir, "qsd.log"))
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		out.Close()
		return nil, fmt.Errorf("starting %s: %w", qsdBinary, err)
	}
	out.Close()
	d := &storageDaemon{cmd: cmd, dir: dir, done: make(chan struct{}), log: a.log}
	go func() { _ = cmd.Wait(); close(d.done) }()
	fail := func(err error) (*storageDaemon, error) {
		d.stop()
		return nil, err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		d.mon, err = qmp.Dial(dctx, sock)
		cancel()
		if err == nil {
			break
		}
		select {
		case <-d.done:
			log, _ := os.ReadFile(filepath.Join(dir, "qsd.log"))
			return fail(fmt.Errorf("%s exited: %s", qsdBinary, log))
		default:
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fail(fmt.Errorf("connecting to %s: %w", qsdBinary, err))
		}
		time.Sleep(50 * time.Millisecond)
	}
	for i, ref := range vm.Spec.BlockDeviceRefs {
		if ref.Kind != v1alpha1.BlockDeviceKindVirtualDisk {
			continue
		}
		var vd v1alpha1.VirtualDisk
		if err := a.c.Get(ctx, "virtualdisks", vm.Namespace, ref.Name, &vd); err != nil {
			return fail(fmt.Errorf("VirtualDisk %q: %w", ref.Name, err))
		}
		path, _, err := a.diskFile(ctx, &vd)
		if err != nil {
			return fail(fmt.Errorf("VirtualDisk %q: %w", vd.Name, err))
		}
		node := fmt.Sprintf("disk%d", i)
		if err := d.mon.Execute(ctx, "blockdev-add", map[string]any{"driver": "qcow2", "node-name": node,
			"file": map[string]any{"driver": "file", "filename": path}}, nil); err != nil {
			return fail(fmt.Errorf("opening VirtualDisk %q (%s): %w (is the VM starting?)", vd.Name, path, err))
		}
		d.nodes = append(d.nodes, node)
	}
	return d, nil
}

// stop closes the disks (which writes their persistent bitmaps into them), ends the daemon
// and removes its directory.
func (d *storageDaemon) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if d.mon != nil {
		for _, n := range d.nodes {
			if err := d.mon.Execute(ctx, "blockdev-del", map[string]any{"node-name": n}, nil); err != nil {
				d.log.Warn("closing a disk in the storage daemon", "node", n, "err", err)
			}
		}
		_ = d.mon.Execute(ctx, "quit", nil, nil)
		d.mon.Close()
	}
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.done
	}
	if err := os.RemoveAll(d.dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		d.log.Warn("removing the storage daemon's directory", "err", err)
	}
}
