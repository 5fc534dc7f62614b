package disk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// ReasonNoDefaultStorageClass: a disk names no class and none is marked default.
const ReasonNoDefaultStorageClass = "NoDefaultStorageClass"

// defaultClass returns the class marked default; when several are, the first by name (the
// choice is stable, and `rakhsh get storageclasses` shows which are marked).
func (c *Controller) defaultClass() *v1alpha1.StorageClass {
	var out *v1alpha1.StorageClass
	for _, sc := range c.classes.List() {
		if v1alpha1.IsDefaultStorageClass(sc) && sc.DeletionTimestamp == nil && (out == nil || sc.Name < out.Name) {
			out = sc
		}
	}
	return out
}

// specClass is the class name a disk's spec asks for. "default", the name of the one pool
// before storage classes, means the default class while no class has that name.
func (c *Controller) specClass(d *v1alpha1.VirtualDisk) string {
	name := d.Spec.PersistentVolumeClaim.StorageClassName
	if name == storage.DefaultPool {
		if _, ok := c.classes.Get(runtime.NewKey("", name)); !ok {
			return ""
		}
	}
	return name
}

// targetClass returns the class a disk is to be made in (the one its spec names, else the
// default), or the reason and message it waits with.
func (c *Controller) targetClass(d *v1alpha1.VirtualDisk) (*v1alpha1.StorageClass, string, string) {
	name := c.specClass(d)
	if name == "" {
		if sc := c.defaultClass(); sc != nil {
			return sc, "", ""
		}
		return nil, ReasonNoDefaultStorageClass, fmt.Sprintf("the disk names no storage class and none is marked default (annotation %s: \"true\"); name one in spec.persistentVolumeClaim.storageClassName or mark one default",
			v1alpha1.AnnotationDefaultStorageClass)
	}
	sc, ok := c.classes.Get(runtime.NewKey("", name))
	if !ok {
		return nil, ReasonStorageClassMissing, fmt.Sprintf("StorageClass %q does not exist; the disk waits for it (see `rakhsh get storageclasses`)", name)
	}
	if sc.DeletionTimestamp != nil {
		return nil, ReasonStorageClassMissing, fmt.Sprintf("StorageClass %q is being deleted", name)
	}
	return sc, "", ""
}

// homeClass returns the class a disk was put in (status.storageClassName). nil means its
// file is in the host's default pool: a disk made before storage classes existed (status
// "default" with no class of that name) or whose class is gone.
func (c *Controller) homeClass(d *v1alpha1.VirtualDisk) *v1alpha1.StorageClass {
	sc, _ := c.classes.Get(runtime.NewKey("", d.Status.StorageClassName)) // nil when there is none
	return sc
}

// isLocal says whether a class keeps its disks on one node (nil: the default pool, local).
func isLocal(sc *v1alpha1.StorageClass) bool {
	return sc == nil || sc.Spec.Type == v1alpha1.StorageClassTypeLocal
}

// diskPath is where a disk of class sc lives on this host.
func (c *Controller) diskPath(sc *v1alpha1.StorageClass, uid string) string {
	return storage.ClassDiskPath(c.cfg.DataDir, sc, uid)
}

// disksUsingClass returns the disks that name the class key, or (for a default class) name
// none, and have not been put anywhere yet or live in it.
func (c *Controller) disksUsingClass(key runtime.Key) []runtime.Key {
	_, name := key.Split()
	sc, _ := c.classes.Get(key)
	return c.disks.KeysWhere(func(d *v1alpha1.VirtualDisk) bool {
		n := d.Spec.PersistentVolumeClaim.StorageClassName
		return n == name || d.Status.StorageClassName == name || (n == "" && (sc == nil || v1alpha1.IsDefaultStorageClass(sc)))
	})
}

// cloneOnShared makes the disk at path a linked clone over the Shared class's own copy of
// the image src, copying the image into the class first if no disk there has it yet.
func (c *Controller) cloneOnShared(ctx context.Context, sc *v1alpha1.StorageClass, src *source, path string, size int64) error {
	c.sharedMu.Lock()
	defer c.sharedMu.Unlock()
	backing := storage.SharedImagePath(storage.ClassDir(c.cfg.DataDir, sc), src.sha256)
	if err := storage.CopyContent(ctx, src.path, backing, src.sha256); err != nil {
		return fmt.Errorf("copying the image into the storage class %q: %w", sc.Name, err)
	}
	return storage.CreateLinkedClone(ctx, path, backing, storage.DriveFormat(src.format), size)
}

// releaseSharedImage removes the image copy img of the class directory dir when no disk
// there is a clone of it any more. A disk whose chain cannot be read keeps every copy.
func (c *Controller) releaseSharedImage(dir, img string) {
	if filepath.Dir(img) != filepath.Join(dir, "images") || !strings.HasPrefix(filepath.Base(img), "sha256-") {
		return
	}
	c.sharedMu.Lock()
	defer c.sharedMu.Unlock()
	ents, err := os.ReadDir(filepath.Join(dir, "disks"))
	if err != nil {
		return
	}
	for _, e := range ents {
		name := e.Name()
		if !e.Type().IsRegular() || strings.HasPrefix(name, storage.TempPrefix) || !strings.HasSuffix(name, ".qcow2") {
			continue
		}
		chain, err := storage.CheckChain(filepath.Join(dir, "disks", name), "qcow2")
		if err != nil {
			c.Log.Warn("reading a Shared disk's backing chain; its class's image copies are kept", "disk", name, "err", err)
			return
		}
		for _, l := range chain[1:] {
			if l.Path == img {
				return
			}
		}
	}
	if err := os.Remove(img); err != nil && !errors.Is(err, os.ErrNotExist) {
		c.Log.Warn("removing an unused image copy", "path", img, "err", err)
		return
	}
	c.Log.Info("removed an image copy no disk uses", "path", img)
}
