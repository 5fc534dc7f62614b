// Package storage holds the layout of Rakhsh's files on a host and the qemu-img wrappers that
// create and inspect them. Every path is derived from object uids, never from names a user
// typed, so nothing from a request becomes a path.
package storage

import (
	"fmt"
	"path/filepath"
	"regexp"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// DefaultPool is the storage pool every installation has: a directory of qcow2 files.
const DefaultPool = "default"

var uidRe = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// CheckUID refuses anything but a canonical uid before it becomes part of a path.
func CheckUID(uid string) error {
	if !uidRe.MatchString(uid) {
		return fmt.Errorf("uid %q is not a canonical uid", uid)
	}
	return nil
}

// ImagePath is where an imported image's file lives: DATA-DIR/images/UID.
// Its format (qcow2, or raw for ISOs) is in the image's status.format.
func ImagePath(dataDir, uid string) string {
	return filepath.Join(dataDir, "images", uid)
}

// PoolDir is the directory of a storage pool. Pool names are DNS labels (the API refuses
// others, in spec and status alike); any other name, which could climb out of the pools
// directory, maps to a directory that no pool can have and nothing creates.
func PoolDir(dataDir, pool string) string {
	if pool == "" {
		pool = DefaultPool
	}
	if !poolRe.MatchString(pool) {
		pool = ".invalid-pool-name"
	}
	return filepath.Join(dataDir, "pools", pool)
}

var poolRe = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// DiskPath is where a VirtualDisk's qcow2 file lives: DATA-DIR/pools/POOL/disks/UID.qcow2.
func DiskPath(dataDir, pool, uid string) string {
	return filepath.Join(PoolDir(dataDir, pool), "disks", uid+".qcow2")
}

// VMRunDir is a VM's runtime directory (sockets, pidfile, logs): DATA-DIR/run/vms/UID (0700).
func VMRunDir(dataDir, uid string) string {
	return filepath.Join(dataDir, "run", "vms", uid)
}

// ImageCachePath is where a node agent keeps its copy of an image it fetched from the
// control plane: DATA-DIR/pools/POOL/cache/SHA256 (content-addressed: one copy per content,
// whichever images share it). The caller checks sha256Hex.
func ImageCachePath(dataDir, pool, sha256Hex string) string {
	return filepath.Join(PoolDir(dataDir, pool), "cache", sha256Hex)
}

// ClassDir is the directory of a storage class's files on this host: the path of a Shared
// class or of a Local class that names one, otherwise (a Local class without a path, no
// class at all: a disk made before classes existed) the host's default pool in its data dir.
// Disks are ClassDir/disks/UID.qcow2 (ClassDiskPath); a Shared class also keeps the images
// its disks are linked clones of in ClassDir/images (SharedImagePath).
func ClassDir(dataDir string, sc *v1alpha1.StorageClass) string {
	if sc != nil {
		switch {
		case sc.Spec.Type == v1alpha1.StorageClassTypeShared && sc.Spec.Shared != nil && filepath.IsAbs(sc.Spec.Shared.Path):
			return filepath.Clean(sc.Spec.Shared.Path)
		case sc.Spec.Type == v1alpha1.StorageClassTypeLocal && sc.Spec.Local != nil && filepath.IsAbs(sc.Spec.Local.Path):
			return filepath.Clean(sc.Spec.Local.Path)
		}
	}
	return PoolDir(dataDir, DefaultPool)
}

// ClassDiskPath is where a disk of class sc lives on this host: ClassDir/disks/UID.qcow2.
// A class directory outside the data dir is registered (RegisterClassDir), so that the
// backing chains of its disks pass CheckChain in this process.
func ClassDiskPath(dataDir string, sc *v1alpha1.StorageClass, uid string) string {
	dir := ClassDir(dataDir, sc)
	if dir != PoolDir(dataDir, DefaultPool) {
		RegisterClassDir(dir, dataDir)
	}
	return filepath.Join(dir, "disks", uid+".qcow2")
}

// SharedImagePath is a Shared class's copy of an image, named by its content:
// DIR/images/sha256-HEX. Linked clones on the class are made over it, so that every node
// reads their backing file at the same path. The caller checks sha256Hex.
func SharedImagePath(classDir, sha256Hex string) string {
	return filepath.Join(classDir, "images", "sha256-"+sha256Hex)
}
