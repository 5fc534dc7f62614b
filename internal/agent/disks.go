package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/qemu"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// resolveDisks turns spec.blockDeviceRefs into files: a VirtualDisk is its qcow2 in the
// default pool (with its backing chain), an image is its imported file, read-only (a CD-ROM
// when the image is one).
func (a *Agent) resolveDisks(ctx context.Context, vm *v1alpha1.VirtualMachine) ([]qemu.Disk, error) {
	return a.resolveDisksWith(ctx, vm, a.resolveVirtualDisk)
}

// resolveDisksWith is resolveDisks with the VirtualDisks resolved by vdisk.
func (a *Agent) resolveDisksWith(ctx context.Context, vm *v1alpha1.VirtualMachine, vdisk func(ctx context.Context, ns, name string, d *qemu.Disk) error) ([]qemu.Disk, error) {
	anyOrder := false
	for _, r := range vm.Spec.BlockDeviceRefs {
		if r.BootOrder != nil {
			anyOrder = true
		}
	}
	var out []qemu.Disk
	for i, ref := range vm.Spec.BlockDeviceRefs {
		d := qemu.Disk{}
		switch {
		case ref.BootOrder != nil:
			d.BootOrder = *ref.BootOrder
		case !anyOrder:
			d.BootOrder = i + 1
		}
		var err error
		switch ref.Kind {
		case v1alpha1.BlockDeviceKindVirtualDisk:
			err = vdisk(ctx, vm.Namespace, ref.Name, &d)
		case v1alpha1.BlockDeviceKindVirtualImage, v1alpha1.BlockDeviceKindClusterVirtualImage:
			err = a.resolveImage(ctx, vm.Namespace, ref.Kind, ref.Name, &d)
		default:
			err = fmt.Errorf("block device kind %q is not supported", ref.Kind)
		}
		if err != nil {
			return nil, err
		}
		if _, err := os.Stat(d.Path); err != nil {
			return nil, fmt.Errorf("%s %q: its file is missing: %w", ref.Kind, ref.Name, err)
		}
		out = append(out, d)
	}
	return out, nil
}

// resolveVirtualDisk fills d with the VirtualDisk name: its qcow2 and backing chain.
func (a *Agent) resolveVirtualDisk(ctx context.Context, ns, name string, d *qemu.Disk) error {
	var vd v1alpha1.VirtualDisk
	if err := a.c.Get(ctx, "virtualdisks", ns, name, &vd); err != nil {
		if client.IsNotFound(err) {
			return fmt.Errorf("VirtualDisk %q not found", name)
		}
		return err
	}
	if vd.Status.Phase != v1alpha1.DiskPhaseReady {
		return fmt.Errorf("VirtualDisk %q is %s, not Ready", name, orNone(string(vd.Status.Phase)))
	}
	if err := storage.CheckUID(vd.UID); err != nil {
		return err
	}
	d.ID = "vd-" + name
	path, classDir, err := a.diskFile(ctx, &vd)
	if err != nil {
		return fmt.Errorf("VirtualDisk %q: %w", name, err)
	}
	d.Path = path
	d.Format = qemu.FormatQCOW2
	chain, err := a.backingChain(ctx, d.Path, classDir)
	if err != nil {
		return fmt.Errorf("VirtualDisk %q: %w", name, err)
	}
	d.Backing = chain
	d.Serial = serialOf(vd.UID)
	return nil
}

// diskFile returns the file of a disk on this host, found by its storage class
// (status.storageClassName): the class's directory (a Shared class's path, a Local class's
// path, or this host's default pool), which is also returned when it lies outside the data
// dir (its files may then back the disk). A disk on another node's Local storage is refused:
// its file is not here.
func (a *Agent) diskFile(ctx context.Context, vd *v1alpha1.VirtualDisk) (path, classDir string, err error) {
	var sc *v1alpha1.StorageClass
	if name := vd.Status.StorageClassName; name != "" {
		var got v1alpha1.StorageClass
		switch err := a.c.Get(ctx, "storageclasses", "", name, &got); {
		case err == nil:
			sc = &got
		case client.IsNotFound(err) && name == storage.DefaultPool:
			// A disk made before storage classes ("default"): the default pool.
		case client.IsNotFound(err):
			return "", "", fmt.Errorf("its StorageClass %q does not exist, so its file cannot be found", name)
		default:
			return "", "", fmt.Errorf("reading its StorageClass %q: %w", name, err)
		}
	}
	return diskHome(vd, sc, a.cfg.DataDir, a.cfg.NodeName)
}

// diskHome is where the disk vd of class sc (nil: the default pool) lives on the node
// named node with data dir dataDir; see diskFile.
func diskHome(vd *v1alpha1.VirtualDisk, sc *v1alpha1.StorageClass, dataDir, node string) (path, classDir string, err error) {
	local := sc == nil || sc.Spec.Type == v1alpha1.StorageClassTypeLocal
	if local && vd.Status.NodeName != "" && vd.Status.NodeName != node {
		return "", "", fmt.Errorf("it is on node %s's local storage (StorageClass %q), not on this node %s: a VM using it runs only on %s, or move the disk to a Shared class while the VM is stopped",
			vd.Status.NodeName, vd.Status.StorageClassName, node, vd.Status.NodeName)
	}
	if sc != nil && sc.Spec.Type != v1alpha1.StorageClassTypeLocal && sc.Spec.Type != v1alpha1.StorageClassTypeShared {
		return "", "", fmt.Errorf("its StorageClass %q has type %q, which this agent does not support", sc.Name, sc.Spec.Type)
	}
	dir := storage.ClassDir(dataDir, sc)
	if dir == storage.PoolDir(dataDir, storage.DefaultPool) {
		dir = ""
	}
	return storage.ClassDiskPath(dataDir, sc, vd.UID), dir, nil
}

// resolveImage fills d with the (Cluster)VirtualImage name: its file in this host's image
// cache, read-only.
func (a *Agent) resolveImage(ctx context.Context, ns string, kind v1alpha1.BlockDeviceKind, name string, d *qemu.Disk) error {
	resource, short := "virtualimages", "vi-"
	if kind == v1alpha1.BlockDeviceKindClusterVirtualImage {
		resource, ns, short = "clustervirtualimages", "", "cvi-"
	}
	var img struct {
		Metadata v1alpha1.ObjectMeta  `json:"metadata"`
		Status   v1alpha1.ImageStatus `json:"status"`
	}
	if err := a.c.Get(ctx, resource, ns, name, &img); err != nil {
		if client.IsNotFound(err) {
			return fmt.Errorf("%s %q not found", kind, name)
		}
		return err
	}
	if img.Status.Phase != v1alpha1.ImagePhaseReady {
		return fmt.Errorf("%s %q is %s, not Ready", kind, name, orNone(string(img.Status.Phase)))
	}
	if err := storage.CheckUID(img.Metadata.UID); err != nil {
		return err
	}
	d.ID = short + name
	p, err := a.imageFile(ctx, resource, ns, name, img.Metadata.UID, img.Status.SHA256)
	if err != nil {
		return fmt.Errorf("%s %q: %w", kind, name, err)
	}
	d.Path = p
	d.Format = storage.DriveFormat(img.Status.Format)
	if d.Format == "" {
		d.Format = qemu.FormatRaw
	}
	d.ReadOnly = true
	d.CDROM = img.Status.CDROM
	return nil
}

func orNone(s string) string {
	if s == "" {
		return "not provisioned yet"
	}
	return s
}

func serialOf(uid string) string {
	s := strings.ReplaceAll(uid, "-", "")
	if len(s) > 20 {
		s = s[:20]
	}
	return s
}

// backingChain reads the backing chain of a disk the disk controller made. Only files
// inside the data dir's images and pools directories, and the disks and image copies of the
// disk's own storage class directory classDir (when set), are accepted as layers.
func (a *Agent) backingChain(ctx context.Context, path, classDir string) ([]qemu.BackingFile, error) {
	var chain []qemu.BackingFile
	cur, format := path, qemu.FormatQCOW2
	for depth := 0; ; depth++ {
		if format != qemu.FormatQCOW2 {
			return chain, nil
		}
		info, err := readQCOW2Link(cur)
		if err != nil {
			return nil, err
		}
		if info.DataFile {
			return nil, fmt.Errorf("%s has an external data file, which is not allowed", cur)
		}
		if info.BackingFile == "" {
			return chain, nil
		}
		if depth >= qemu.MaxBackingDepth {
			return nil, fmt.Errorf("%s: backing chain deeper than %d", path, qemu.MaxBackingDepth)
		}
		b := filepath.Clean(info.BackingFile)
		if !filepath.IsAbs(b) {
			b = filepath.Join(filepath.Dir(cur), b)
		}
		if !a.insideDataDir(b) && !insideClassDir(classDir, b) {
			where := "the data directory"
			if classDir != "" {
				where += " and the storage class directory " + classDir
			}
			return nil, fmt.Errorf("%s names backing file %q outside %s", cur, info.BackingFile, where)
		}
		bf := info.BackingFormat
		if bf != qemu.FormatQCOW2 && bf != qemu.FormatRaw {
			return nil, fmt.Errorf("%s: backing file format %q is not qcow2 or raw", cur, bf)
		}
		chain = append(chain, qemu.BackingFile{Path: b, Format: bf})
		cur, format = b, bf
	}
}

func (a *Agent) insideDataDir(p string) bool {
	for _, dir := range []string{filepath.Join(a.cfg.DataDir, "images"), filepath.Join(a.cfg.DataDir, "pools")} {
		if rel, err := filepath.Rel(dir, p); err == nil && !strings.HasPrefix(rel, "..") && rel != "." {
			return true
		}
	}
	return false
}

// insideClassDir says whether p is a disk, an image copy or a disk snapshot (the backing
// file of a linked clone of it) of the storage class directory dir ("" : none): dir/disks/...,
// dir/images/... or dir/snapshots/....
func insideClassDir(dir, p string) bool {
	if dir == "" {
		return false
	}
	for _, sub := range []string{"disks", "images", "snapshots"} {
		if rel, err := filepath.Rel(filepath.Join(dir, sub), p); err == nil && !strings.HasPrefix(rel, "..") && rel != "." && !strings.Contains(rel, "/") {
			return true
		}
	}
	return false
}
