// Package images imports image files into the image store: it downloads them (HTTP), checks
// their digests while streaming, detects their format from their own bytes, refuses hostile
// images (backing files, external data files, unsupported formats) and converts them to the
// stored form. Nothing here trusts the file's name, the server's Content-Type or qemu-img's
// format probing.
package images

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Format is a file format as detected from a file's first bytes.
type Format string

// Formats. qcow2, raw, iso, vmdk, vdi, vhd and vhdx are imported, each also gzip- or
// xz-compressed; zstd and bzip2 are recognised so that they are refused with a clear message
// instead of being taken for raw disks.
const (
	FormatQCOW2 Format = "qcow2"
	FormatRaw   Format = "raw"
	FormatISO   Format = "iso"
	FormatVMDK  Format = "vmdk"
	FormatVDI   Format = "vdi"
	FormatVHD   Format = "vhd"
	FormatVHDX  Format = "vhdx"
	FormatGzip  Format = "gzip"
	FormatXz    Format = "xz"
	FormatZstd  Format = "zstd"
	FormatBzip2 Format = "bzip2"
)

// HeaderSize is how many leading bytes DetectFormat needs to see every signature it knows.
const HeaderSize = 64 << 10

// isoOffsets are where an ISO 9660 volume descriptor's "CD001" may start: sector 16 of 2048
// bytes (+1 for the type byte); 0x8801 and 0x9001 cover images whose first descriptors are
// other standard identifiers (e.g. BEA01 of UDF bridge discs).
var isoOffsets = []int{0x8001, 0x8801, 0x9001}

// magics are the signatures DetectFormat looks for, in order: a format's marker and where in
// the file it starts.
var magics = []struct {
	off    int
	sig    string
	format Format
}{
	{0, "QFI\xfb", FormatQCOW2},
	{0, "KDMV", FormatVMDK},
	{0, "COWD", FormatVMDK},
	{0, "# Disk DescriptorFile", FormatVMDK},
	{0x40, "\x7f\x10\xda\xbe", FormatVDI},
	{0, "vhdxfile", FormatVHDX},
	{0, "conectix", FormatVHD},
	{0, "\x1f\x8b", FormatGzip},
	{0, "\xfd7zXZ\x00", FormatXz},
	{0, "\x28\xb5\x2f\xfd", FormatZstd},
}

// DetectFormat returns the format of a file from its first bytes (up to HeaderSize; fewer if
// the file is shorter). Anything not recognised is raw.
func DetectFormat(h []byte) Format {
	has := func(off int, sig string) bool {
		return len(h) >= off+len(sig) && string(h[off:off+len(sig)]) == sig
	}
	for _, m := range magics {
		if has(m.off, m.sig) {
			return m.format
		}
	}
	if has(0, "BZh") && len(h) > 3 && h[3] >= '1' && h[3] <= '9' {
		return FormatBzip2
	}
	for _, off := range isoOffsets {
		if has(off, "CD001") {
			return FormatISO
		}
	}
	return FormatRaw
}

// ReadHeader reads the first HeaderSize bytes of r (fewer for a short file).
func ReadHeader(r io.ReaderAt) ([]byte, error) {
	buf := make([]byte, HeaderSize)
	n, err := r.ReadAt(buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return buf[:n], nil
}

// ErrUnsupportedFormat says the file is in a format Rakhsh does not import (yet).
var ErrUnsupportedFormat = errors.New("unsupported image format")

// ErrUnsafeImage says the image refers to other files or is otherwise unsafe to open.
var ErrUnsafeImage = errors.New("unsafe image")

// CheckSupported returns an ErrUnsupportedFormat error for a detected format that cannot be
// imported (after decompression: a compressed format here is a file compressed twice).
func CheckSupported(f Format) error {
	switch f {
	case FormatQCOW2, FormatRaw, FormatISO, FormatVMDK, FormatVDI, FormatVHD, FormatVHDX:
		return nil
	case FormatGzip, FormatXz:
		return fmt.Errorf("%w: the file is %s-compressed inside its compression; compress the image once (gzip or xz)", ErrUnsupportedFormat, f)
	case FormatZstd, FormatBzip2:
		return fmt.Errorf("%w: %s-compressed images are not supported: publish the file uncompressed or compressed with gzip or xz", ErrUnsupportedFormat, f)
	default:
		return fmt.Errorf("%w: %s", ErrUnsupportedFormat, f)
	}
}

// qcow2 header offsets (big-endian), from QEMU's docs/interop/qcow2.txt.
const (
	qcow2MinHeader   = 72
	qcow2V3Header    = 104
	qcow2IncompatOff = 72
	// Incompatible feature bits.
	qcow2IncompatDirty        = 1 << 0
	qcow2IncompatCorrupt      = 1 << 1
	qcow2IncompatDataFile     = 1 << 2
	qcow2IncompatCompression  = 1 << 3
	qcow2IncompatExtendedL2   = 1 << 4
	qcow2IncompatKnown        = qcow2IncompatDirty | qcow2IncompatCorrupt | qcow2IncompatDataFile | qcow2IncompatCompression | qcow2IncompatExtendedL2
	qcow2ExtEnd               = 0
	qcow2ExtExternalDataFile  = 0x44415441
	qcow2MaxHeaderExtensions  = 64
	qcow2MaxClusterBits       = 21
	qcow2MinClusterBits       = 9
	qcow2HeaderLengthOffset   = 100
	qcow2BackingOffsetOffset  = 8
	qcow2BackingSizeOffset    = 16
	qcow2ClusterBitsOffset    = 20
	qcow2CryptMethodOffset    = 32
	qcow2VersionOffset        = 4
	qcow2VirtualSizeOffset    = 24
	qcow2MaxReasonableVirtual = 1 << 56
)

// QCOW2Header is what CheckQCOW2Header reads from a qcow2 header.
type QCOW2Header struct {
	Version     uint32
	VirtualSize uint64
	ClusterBits uint32
}

// CheckQCOW2Header parses the qcow2 header in h (the file's first bytes) ourselves, before
// qemu-img ever opens the file, and refuses what could make qemu-img or QEMU read other host
// files: a backing file (OSSA-2023-002), an external data file (OSSA-2024-001), as well as
// encryption, unknown incompatible features and a corrupt flag.
func CheckQCOW2Header(h []byte) (*QCOW2Header, error) {
	if len(h) < qcow2MinHeader || !bytes.Equal(h[:4], []byte("QFI\xfb")) {
		return nil, fmt.Errorf("%w: not a qcow2 header", ErrUnsafeImage)
	}
	be := binary.BigEndian
	hd := &QCOW2Header{
		Version:     be.Uint32(h[qcow2VersionOffset:]),
		VirtualSize: be.Uint64(h[qcow2VirtualSizeOffset:]),
		ClusterBits: be.Uint32(h[qcow2ClusterBitsOffset:]),
	}
	if hd.Version != 2 && hd.Version != 3 {
		return nil, fmt.Errorf("%w: qcow2 version %d is not supported (2 or 3)", ErrUnsafeImage, hd.Version)
	}
	if hd.ClusterBits < qcow2MinClusterBits || hd.ClusterBits > qcow2MaxClusterBits {
		return nil, fmt.Errorf("%w: qcow2 cluster bits %d out of range", ErrUnsafeImage, hd.ClusterBits)
	}
	if hd.VirtualSize == 0 || hd.VirtualSize > qcow2MaxReasonableVirtual {
		return nil, fmt.Errorf("%w: qcow2 virtual size %d out of range", ErrUnsafeImage, hd.VirtualSize)
	}
	if be.Uint64(h[qcow2BackingOffsetOffset:]) != 0 || be.Uint32(h[qcow2BackingSizeOffset:]) != 0 {
		return nil, fmt.Errorf("%w: the qcow2 image has a backing file; images must be self-contained (flatten it with `qemu-img convert -O qcow2`)", ErrUnsafeImage)
	}
	if be.Uint32(h[qcow2CryptMethodOffset:]) != 0 {
		return nil, fmt.Errorf("%w: encrypted qcow2 images are not supported", ErrUnsafeImage)
	}
	if hd.Version == 2 {
		return hd, nil
	}
	if len(h) < qcow2V3Header {
		return nil, fmt.Errorf("%w: truncated qcow2 v3 header", ErrUnsafeImage)
	}
	inc := be.Uint64(h[qcow2IncompatOff:])
	if inc&qcow2IncompatDataFile != 0 {
		return nil, fmt.Errorf("%w: the qcow2 image has an external data file; images must be self-contained", ErrUnsafeImage)
	}
	if inc&qcow2IncompatCorrupt != 0 {
		return nil, fmt.Errorf("%w: the qcow2 image is marked corrupt", ErrUnsafeImage)
	}
	if inc&^uint64(qcow2IncompatKnown) != 0 {
		return nil, fmt.Errorf("%w: the qcow2 image uses unknown incompatible features %#x", ErrUnsafeImage, inc&^uint64(qcow2IncompatKnown))
	}
	// Header extensions follow the header; a data-file name extension without the feature bit
	// is refused too.
	hl := be.Uint32(h[qcow2HeaderLengthOffset:])
	if hl < qcow2V3Header || uint64(hl) > 1<<hd.ClusterBits {
		return nil, fmt.Errorf("%w: qcow2 header length %d out of range", ErrUnsafeImage, hl)
	}
	off := uint64(hl)
	for range qcow2MaxHeaderExtensions {
		if off+8 > uint64(len(h)) {
			break
		}
		typ := be.Uint32(h[off:])
		ln := uint64(be.Uint32(h[off+4:]))
		if typ == qcow2ExtEnd {
			break
		}
		if typ == qcow2ExtExternalDataFile {
			return nil, fmt.Errorf("%w: the qcow2 image names an external data file; images must be self-contained", ErrUnsafeImage)
		}
		off += 8 + (ln+7)&^7
	}
	return hd, nil
}
