package images

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// VMDK sparse extent header fields (little-endian), from VMware's Virtual Disk Format 1.1.
const (
	vmdkDescOffsetOff = 28 // uint64, sectors
	vmdkDescSizeOff   = 36 // uint64, sectors
	vmdkHeaderLen     = 77
	vmdkMaxDescBytes  = 1 << 20
)

// CheckVMDK accepts only self-contained VMDKs: a sparse (KDMV) file of type monolithicSparse
// or streamOptimized whose embedded descriptor names no parent and no extent in another file.
// A descriptor file (text that lists extent files) would make qemu-img open whatever host
// files it names, so it is refused before qemu-img sees it.
func CheckVMDK(r io.ReaderAt) error {
	h := make([]byte, vmdkHeaderLen)
	if _, err := r.ReadAt(h, 0); err != nil {
		return fmt.Errorf("%w: truncated VMDK header", ErrUnsafeImage)
	}
	switch {
	case bytes.HasPrefix(h, []byte("# Disk DescriptorFile")) || bytes.HasPrefix(h, []byte("# Disk Descriptor")):
		return fmt.Errorf("%w: the file is a VMDK descriptor, which points at other files; upload a single-file VMDK (monolithicSparse or streamOptimized)", ErrUnsafeImage)
	case bytes.HasPrefix(h, []byte("COWD")):
		return fmt.Errorf("%w: VMDK version 3 (COWD) images are not supported; convert it with `qemu-img convert -O qcow2`", ErrUnsupportedFormat)
	case !bytes.HasPrefix(h, []byte("KDMV")):
		return fmt.Errorf("%w: not a VMDK sparse extent", ErrUnsafeImage)
	}
	le := binary.LittleEndian
	off, size := le.Uint64(h[vmdkDescOffsetOff:]), le.Uint64(h[vmdkDescSizeOff:])
	if off == 0 && size == 0 {
		return nil // no embedded descriptor: a plain monolithic sparse extent
	}
	if off == 0 || size == 0 || size > vmdkMaxDescBytes/512 || off > 1<<40 {
		return fmt.Errorf("%w: VMDK embedded descriptor at sector %d, %d sectors: out of range", ErrUnsafeImage, off, size)
	}
	desc := make([]byte, size*512)
	n, err := r.ReadAt(desc, int64(off)*512)
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("reading the VMDK descriptor: %w", err)
	}
	return CheckVMDKDescriptor(desc[:n])
}

// CheckVMDKDescriptor checks the text of a VMDK's embedded descriptor.
func CheckVMDKDescriptor(desc []byte) error {
	if i := bytes.IndexByte(desc, 0); i >= 0 {
		desc = desc[:i]
	}
	sc := bufio.NewScanner(bytes.NewReader(desc))
	sc.Buffer(make([]byte, 4096), vmdkMaxDescBytes)
	createType := ""
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok && !strings.ContainsAny(k, "\"") {
			key := strings.TrimSpace(k)
			val := strings.Trim(strings.TrimSpace(v), `"`)
			switch strings.ToLower(key) {
			case "createtype":
				createType = val
			case "parentfilenamehint":
				if val != "" {
					return fmt.Errorf("%w: the VMDK names a parent file (%q); images must be self-contained", ErrUnsafeImage, val)
				}
			}
			continue
		}
		f := strings.Fields(line)
		if len(f) >= 4 && (f[0] == "RW" || f[0] == "RDONLY" || f[0] == "NOACCESS") {
			name := strings.Trim(strings.Join(f[3:], " "), `"`)
			if f[2] != "SPARSE" || strings.ContainsAny(name, "/\\") || strings.HasPrefix(name, "json:") {
				return fmt.Errorf("%w: the VMDK descriptor names an extent %q of type %s; only single-file VMDKs are accepted", ErrUnsafeImage, name, f[2])
			}
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%w: unreadable VMDK descriptor: %v", ErrUnsafeImage, err)
	}
	switch strings.ToLower(createType) {
	case "monolithicsparse", "streamoptimized":
		return nil
	case "":
		return fmt.Errorf("%w: the VMDK descriptor has no createType", ErrUnsafeImage)
	}
	return fmt.Errorf("%w: VMDK createType %q is not accepted (monolithicSparse or streamOptimized)", ErrUnsafeImage, createType)
}

// isFixedVHD says whether a file that looks raw ends with a VHD footer (a fixed VHD has no
// header, only a 512-byte footer at its end).
func isFixedVHD(r io.ReaderAt, size int64) bool {
	if size < 512+512 {
		return false
	}
	foot := make([]byte, 8)
	if _, err := r.ReadAt(foot, size-512); err != nil {
		return false
	}
	return string(foot) == "conectix"
}
