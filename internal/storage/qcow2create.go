package storage

import (
	"encoding/binary"
	"fmt"
	"os"
)

// writeQCOW2Overlay writes at path (a new, empty file) an empty qcow2 (version 3) of
// sizeBytes whose backing file is backingPath in backingFormat. It does in-process what
// `qemu-img create -f qcow2 -F FMT -b BACKING -u PATH SIZE` does, in well under a millisecond
// instead of a process start: a linked clone costs the same for a 1 GiB and a 100 TiB image.
//
// Layout (64 KiB clusters): cluster 0 holds the header, the backing format extension and the
// backing file name; cluster 1 the refcount table (one entry); cluster 2 the refcount block
// (16-bit refcounts); clusters 3.. the all-zero L1 table. Every cluster of the file is
// referenced once. The result passes `qemu-img check`.
func writeQCOW2Overlay(path, backingPath, backingFormat string, sizeBytes int64) error {
	const (
		clusterBits  = 16
		clusterSize  = 1 << clusterBits
		headerLen    = 104
		extBackingFm = 0xE2792ACA
	)
	if sizeBytes <= 0 {
		return fmt.Errorf("disk size %d must be positive", sizeBytes)
	}
	if len(backingPath) == 0 || len(backingPath) > 1023 {
		return fmt.Errorf("backing path length %d out of range (1..1023)", len(backingPath))
	}
	// One L2 table (a cluster of 8-byte entries) maps clusterSize/8 clusters.
	l2Covers := int64(clusterSize) * (clusterSize / 8)
	l1Size := (sizeBytes + l2Covers - 1) / l2Covers
	if l1Size > 32<<20/8 {
		return fmt.Errorf("disk size %d is too large for a qcow2 L1 table", sizeBytes)
	}
	l1Clusters := (l1Size*8 + clusterSize - 1) / clusterSize
	if l1Clusters == 0 {
		l1Clusters = 1
	}
	total := 3 + l1Clusters // clusters in the file
	if total > clusterSize/2 {
		return fmt.Errorf("disk size %d needs more metadata than one refcount block covers", sizeBytes)
	}

	be := binary.BigEndian
	c0 := make([]byte, clusterSize)
	copy(c0, "QFI\xfb")
	be.PutUint32(c0[4:], 3)
	be.PutUint32(c0[20:], clusterBits)
	be.PutUint64(c0[24:], uint64(sizeBytes))
	be.PutUint32(c0[36:], uint32(l1Size))
	be.PutUint64(c0[40:], 3*clusterSize) // L1 table
	be.PutUint64(c0[48:], 1*clusterSize) // refcount table
	be.PutUint32(c0[56:], 1)             // refcount table clusters
	be.PutUint32(c0[96:], 4)             // refcount order: 16-bit refcounts
	be.PutUint32(c0[100:], headerLen)
	off := headerLen
	// Backing file format name extension, padded to 8 bytes.
	be.PutUint32(c0[off:], extBackingFm)
	be.PutUint32(c0[off+4:], uint32(len(backingFormat)))
	copy(c0[off+8:], backingFormat)
	off += 8 + (len(backingFormat)+7)&^7
	off += 8 // end of extensions: type 0, length 0 (already zero)
	be.PutUint64(c0[8:], uint64(off))
	be.PutUint32(c0[16:], uint32(len(backingPath)))
	copy(c0[off:], backingPath)

	c1 := make([]byte, clusterSize) // refcount table
	be.PutUint64(c1[0:], 2*clusterSize)
	c2 := make([]byte, clusterSize) // refcount block
	for i := int64(0); i < total; i++ {
		be.PutUint16(c2[2*i:], 1)
	}

	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	for i, c := range [][]byte{c0, c1, c2} {
		if _, err := f.WriteAt(c, int64(i)*clusterSize); err != nil {
			f.Close()
			return err
		}
	}
	// The L1 table is all zeros: extend the file over it without writing.
	if err := f.Truncate(total * clusterSize); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
