package agent

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/qemu"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// Online disk resize. The disk controller grows a disk file with qemu-img when no VM has it
// open; when a running VM holds the image lock it sets the disk's phase to Resizing and the
// agent that runs the VM grows the disk through QMP block_resize, which also tells the guest
// (virtio-blk and SCSI disks see the new capacity at once). The disk controller then reads
// the new size from the image header and marks the disk Ready again.

// qmpExecutor is the part of *qmp.Conn that block_resize needs.
type qmpExecutor interface {
	Execute(ctx context.Context, command string, args, result any) error
}

// fdSet is an entry of query-fdsets: a descriptor set and the opaque names of its
// descriptors.
type fdSet struct {
	ID  int `json:"fdset-id"`
	FDs []struct {
		Opaque string `json:"opaque"`
	} `json:"fds"`
}

// blockNode is an entry of query-named-block-nodes.
type blockNode struct {
	NodeName string `json:"node-name"`
	File     string `json:"file"`
	Driver   string `json:"drv"`
	ReadOnly bool   `json:"ro"`
	Image    struct {
		VirtualSize int64 `json:"virtual-size"`
	} `json:"image"`
}

// runDiskResizer watches VirtualDisks in phase Resizing and grows them in the running VMs of
// this node that use them, and carries out the disk moves handed to this node (diskmove.go).
// It returns when ctx ends.
func (a *Agent) runDiskResizer(ctx context.Context) {
	disks := runtime.NewInformer(a.c, "virtualdisks", "", a.log)
	q := runtime.NewQueue("agent-resize", a.log)
	q.MaxBackoff = 10 * time.Second
	disks.OnChange(q.Add)
	go disks.Run(ctx)
	q.Run(ctx, 1, func(ctx context.Context, key runtime.Key) (runtime.Result, error) {
		if err := a.moveDisk(ctx, key); err != nil {
			return runtime.Result{}, err
		}
		return a.resizeDisk(ctx, key)
	})
}

func (a *Agent) resizeDisk(ctx context.Context, key runtime.Key) (runtime.Result, error) {
	var d v1alpha1.VirtualDisk
	if found, err := a.getKey(ctx, "virtualdisks", key, &d); !found {
		return runtime.Result{}, err
	}
	if d.Status.Phase != v1alpha1.DiskPhaseResizing || d.Spec.PersistentVolumeClaim.Size == "" || storage.CheckUID(d.UID) != nil {
		return runtime.Result{}, nil
	}
	want, err := d.Spec.PersistentVolumeClaim.Size.Value()
	if err != nil {
		return runtime.Result{}, nil
	}
	want = storage.RoundSize(want)
	path, _, err := a.diskFile(ctx, &d)
	if err != nil {
		return runtime.Result{}, nil // not this node's disk
	}
	for _, vm := range a.vms.List() {
		if vm.Namespace != d.Namespace || !usesDisk(vm, d.Name) {
			continue
		}
		in := a.inst(vm.UID)
		if in == nil || in.isExited() {
			continue
		}
		mon, ok := in.monitor().(qmpExecutor)
		if !ok {
			return runtime.Result{RequeueAfter: time.Second}, nil // QMP not connected (yet)
		}
		if err := growInVM(ctx, mon, path, want); err != nil {
			a.log.Warn("growing a disk in a running VM", "disk", key, "vm", vm.Name, "err", err)
			return runtime.Result{}, err
		}
		a.log.Info("grew a disk in a running VM", "disk", key, "vm", vm.Name, "size", want)
	}
	return runtime.Result{}, nil
}

func usesDisk(vm *v1alpha1.VirtualMachine, disk string) bool {
	for _, r := range vm.Spec.BlockDeviceRefs {
		if r.Kind == v1alpha1.BlockDeviceKindVirtualDisk && r.Name == disk {
			return true
		}
	}
	return false
}

// namesFile says whether a block node's file name is one of names, or a json: name holding one.
func namesFile(file string, names []string) bool {
	for _, p := range names {
		if file == p || strings.Contains(file, `"`+p+`"`) {
			return true
		}
	}
	return false
}

// growInVM finds the writable qcow2 node of the disk file at path and grows it to size.
func growInVM(ctx context.Context, mon qmpExecutor, path string, size int64) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	n, err := diskNodeByPath(ctx, mon, path)
	if err != nil || n == nil {
		return err // nil: the VM does not have the disk open (it may be stopping)
	}
	if n.Image.VirtualSize >= size {
		return nil
	}
	if err := mon.Execute(ctx, "block_resize", map[string]any{"node-name": n.NodeName, "size": size}, nil); err != nil {
		return fmt.Errorf("block_resize %s: %w", n.NodeName, err)
	}
	return nil
}

// diskNodeByPath finds the writable qcow2 node of the disk file at path in a running QEMU;
// nil when QEMU does not have it open.
func diskNodeByPath(ctx context.Context, mon qmpExecutor, path string) (*blockNode, error) {
	var nodes []blockNode
	if err := mon.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
		return nil, fmt.Errorf("query-named-block-nodes: %w", err)
	}
	// A QEMU that got its files as descriptors names them /dev/fdset/N; the fd set's opaque
	// string ("NODE:PATH") says which path it is.
	names := []string{path}
	var sets []fdSet
	if err := mon.Execute(ctx, "query-fdsets", nil, &sets); err == nil {
		for _, s := range sets {
			for _, fd := range s.FDs {
				if strings.HasSuffix(fd.Opaque, ":"+path) {
					names = append(names, qemu.FDSetPath(s.ID))
				}
			}
		}
	}
	for i, n := range nodes {
		// A node whose backing was given explicitly may report a json: file name that holds
		// the path; the writable qcow2 node is the disk itself, its backing layers are read-only.
		if n.Driver != "qcow2" || n.ReadOnly || !namesFile(n.File, names) {
			continue
		}
		return &nodes[i], nil
	}
	return nil, nil
}
