package storage

import (
	"path/filepath"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// SnapshotPath is where a VirtualDiskSnapshot's qcow2 file lives: in the storage class of the
// disk it was taken of, CLASSDIR/snapshots/UID.qcow2 (UID is the snapshot's). A snapshot file
// is a whole, standalone image (no backing file): it does not depend on the disk, the image the
// disk was made from, or other snapshots, so each one is removed on its own.
func SnapshotPath(dataDir string, sc *v1alpha1.StorageClass, uid string) string {
	return filepath.Join(ClassDir(dataDir, sc), "snapshots", uid+".qcow2")
}

// SnapshotPartPath is where a snapshot's file is written before it is complete; it is renamed
// to SnapshotPath once the copy has finished, so a snapshot file either is whole or does not
// exist.
func SnapshotPartPath(dataDir string, sc *v1alpha1.StorageClass, uid string) string {
	return SnapshotPath(dataDir, sc, uid) + ".part"
}

// SnapshotRAMDir is where a node keeps the guest RAM state of the VirtualMachineSnapshot uid
// (keepRAM): DATA-DIR/ram-snapshots/UID/, with the state (a qcow2 file whose internal snapshot
// holds it) and its record. The node that took it keeps it: RAM states are node-local.
func SnapshotRAMDir(dataDir, uid string) string {
	return filepath.Join(dataDir, "ram-snapshots", uid)
}

// ResumeFromSnapshotPath is the file in a VM's run directory that a restore of a
// VirtualMachineSnapshot with RAM writes: it holds the snapshot's uid, and the VM's next start
// on this node resumes the guest from that snapshot's RAM state (as after a hibernation).
func ResumeFromSnapshotPath(dataDir, vmUID string) string {
	return filepath.Join(VMRunDir(dataDir, vmUID), "hibernation", "from-snapshot")
}
