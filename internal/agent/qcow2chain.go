package agent

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// qcow2Link is what the agent needs from a qcow2 header to follow a backing chain: the
// backing file name and format, and whether the image uses an external data file.
type qcow2Link struct {
	BackingFile   string
	BackingFormat string
	DataFile      bool
}

// Offsets and values of the qcow2 header (big-endian), as QEMU's qcow2 specification
// defines them.
const (
	q2Magic             = "QFI\xfb"
	q2V2HeaderLen       = 72
	q2V3HeaderLen       = 104
	q2MaxHeaderRead     = 64 << 10
	q2MaxBackingName    = 1023
	q2MaxExtensions     = 64
	q2ExtEnd            = 0x00000000
	q2ExtBackingFormat  = 0xe2792aca
	q2ExtDataFile       = 0x44415441
	q2IncompatDataFile  = 1 << 2
	q2MinClusterBits    = 9
	q2MaxClusterBits    = 21
	q2MaxBackingFmtName = 32
)

// readQCOW2Link reads the backing-chain facts of the qcow2 file at path straight from its
// header: a start needs them for every file of a disk's chain, and one read here costs
// microseconds where a `qemu-img info` process costs about 20 ms.
func readQCOW2Link(path string) (*qcow2Link, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := make([]byte, q2MaxHeaderRead)
	n, err := f.ReadAt(h, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: reading the qcow2 header: %w", path, err)
	}
	l, err := parseQCOW2Link(h[:n])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return l, nil
}

// parseQCOW2Link parses the header bytes h (the start of the file, at most 64 KiB). The
// backing file name must lie inside h; Rakhsh's own clones put it right after the header.
func parseQCOW2Link(h []byte) (*qcow2Link, error) {
	if len(h) < q2V2HeaderLen || !bytes.Equal(h[:4], []byte(q2Magic)) {
		return nil, errors.New("not a qcow2 file")
	}
	be := binary.BigEndian
	version := be.Uint32(h[4:])
	if version != 2 && version != 3 {
		return nil, fmt.Errorf("qcow2 version %d is not supported", version)
	}
	clusterBits := be.Uint32(h[20:])
	if clusterBits < q2MinClusterBits || clusterBits > q2MaxClusterBits {
		return nil, fmt.Errorf("qcow2 cluster bits %d out of range", clusterBits)
	}
	l := &qcow2Link{}
	headerLen := uint64(q2V2HeaderLen)
	if version == 3 {
		if len(h) < q2V3HeaderLen {
			return nil, errors.New("truncated qcow2 v3 header")
		}
		l.DataFile = be.Uint64(h[72:])&q2IncompatDataFile != 0
		headerLen = uint64(be.Uint32(h[100:]))
		if headerLen < q2V3HeaderLen || headerLen > uint64(len(h)) {
			return nil, fmt.Errorf("qcow2 header length %d out of range", headerLen)
		}
	}
	backOff, backLen := be.Uint64(h[8:]), uint64(be.Uint32(h[16:]))
	if backOff != 0 {
		if backLen == 0 || backLen > q2MaxBackingName {
			return nil, fmt.Errorf("qcow2 backing file name length %d out of range", backLen)
		}
		if backOff < headerLen || backOff > uint64(len(h)) || backLen > uint64(len(h))-backOff {
			return nil, fmt.Errorf("qcow2 backing file name at %d+%d is outside the header area", backOff, backLen)
		}
		l.BackingFile = string(h[backOff : backOff+backLen])
		if bytes.IndexByte([]byte(l.BackingFile), 0) >= 0 {
			return nil, errors.New("qcow2 backing file name contains a NUL byte")
		}
	}
	off := headerLen
	for range q2MaxExtensions {
		if off+8 > uint64(len(h)) {
			return nil, errors.New("qcow2 header extensions run past the header area")
		}
		typ, ln := be.Uint32(h[off:]), uint64(be.Uint32(h[off+4:]))
		if typ == q2ExtEnd {
			break
		}
		if ln > uint64(len(h))-off-8 {
			return nil, fmt.Errorf("qcow2 header extension %#x of %d bytes runs past the header area", typ, ln)
		}
		data := h[off+8 : off+8+ln]
		switch typ {
		case q2ExtBackingFormat:
			if ln == 0 || ln > q2MaxBackingFmtName {
				return nil, fmt.Errorf("qcow2 backing format name length %d out of range", ln)
			}
			l.BackingFormat = string(data)
		case q2ExtDataFile:
			l.DataFile = true
		}
		off += 8 + (ln+7)&^7
	}
	if l.BackingFile != "" && l.BackingFormat == "" {
		return nil, errors.New("the qcow2 image has a backing file but no backing format; the format is never probed")
	}
	return l, nil
}
