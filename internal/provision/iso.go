// Package provision makes the configuration media a VM reads on first boot: a cloud-init
// NoCloud seed (an ISO 9660 volume labelled "cidata" holding meta-data and user-data) and a
// Windows sysprep medium (autounattend.xml and/or unattend.xml at the root of a CD).
//
// The ISO writer is a small one of its own: the media are a single root directory with a few
// small files, which needs about 300 lines, while the Go modules that write ISO 9660 either
// lack Joliet (Windows reads long, lower-case names only from Joliet) or come with a whole
// disk-image framework; an external xorriso would add a process per start and one more
// package on every node.
package provision

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"sort"
	"strings"
	"time"
	"unicode/utf16"
)

const sectorSize = 2048

// Limits of WriteISO.
const (
	// MaxFiles is the most files one image may hold.
	MaxFiles = 16
	// MaxFileSize is the largest file (the API bounds provisioning data far lower).
	MaxFileSize = 16 << 20
	// maxNameLen bounds a file name: 64 UCS-2 characters is Joliet's limit.
	maxNameLen = 64
)

// File is one file in the root directory of an image.
type File struct {
	// Name is the file name: 1-64 characters of [A-Za-z0-9._-], not starting with '.'.
	Name string
	Data []byte
}

// ISOOptions are the volume attributes.
type ISOOptions struct {
	// VolumeID is the label: 1-16 characters of [A-Za-z0-9_-] (NoCloud needs "cidata").
	VolumeID string
	// Time stamps every date in the image, so the same input gives the same bytes.
	Time time.Time
}

// CheckName validates a file name for WriteISO.
func CheckName(n string) error {
	if n == "" || len(n) > maxNameLen {
		return fmt.Errorf("file name %q must have 1-%d characters", n, maxNameLen)
	}
	if n[0] == '.' {
		return fmt.Errorf("file name %q starts with '.'", n)
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("file name %q: only letters, digits, '.', '_' and '-' are allowed", n)
		}
	}
	return nil
}

func checkVolumeID(v string) error {
	if v == "" || len(v) > 16 {
		return fmt.Errorf("volume ID %q must have 1-16 characters", v)
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return fmt.Errorf("volume ID %q: only letters, digits, '_' and '-' are allowed", v)
		}
	}
	return nil
}

// primaryName is the ISO 9660 identifier of a file: upper case, characters outside
// [A-Z0-9_] other than the last '.' become '_', a '.' is always present, and ";1" ends it
// (level 2: up to 30 characters before the version). Readers that use Joliet (Linux and
// Windows do when it is there) see the real name.
func primaryName(n string) string {
	base, ext := n, ""
	if i := strings.LastIndexByte(n, '.'); i >= 0 {
		base, ext = n[:i], n[i+1:]
	}
	clean := func(s string) string {
		b := []byte(strings.ToUpper(s))
		for i, c := range b {
			if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
				b[i] = '_'
			}
		}
		return string(b)
	}
	base, ext = clean(base), clean(ext)
	if len(ext) > 8 {
		ext = ext[:8]
	}
	if len(base)+len(ext) > 29 {
		base = base[:29-len(ext)]
	}
	return base + "." + ext + ";1"
}

func ucs2(s string) []byte {
	u := utf16.Encode([]rune(s))
	out := make([]byte, 2*len(u))
	for i, c := range u {
		binary.BigEndian.PutUint16(out[2*i:], c)
	}
	return out
}

type entry struct {
	id    []byte // identifier as recorded
	lba   uint32
	size  uint32
	isDir bool
	self  byte // 0: ".", 1: "..", 2: a file
}

// WriteISO returns an ISO 9660 image (with Joliet names) holding files in its root directory.
func WriteISO(opts ISOOptions, files []File) ([]byte, error) {
	if err := checkVolumeID(opts.VolumeID); err != nil {
		return nil, err
	}
	if len(files) == 0 || len(files) > MaxFiles {
		return nil, fmt.Errorf("an image holds 1-%d files, not %d", MaxFiles, len(files))
	}
	seenP, seenJ := map[string]string{}, map[string]bool{}
	for _, f := range files {
		if err := CheckName(f.Name); err != nil {
			return nil, err
		}
		if len(f.Data) > MaxFileSize {
			return nil, fmt.Errorf("file %q is larger than %d bytes", f.Name, MaxFileSize)
		}
		if seenJ[f.Name] {
			return nil, fmt.Errorf("file %q given twice", f.Name)
		}
		seenJ[f.Name] = true
		p := primaryName(f.Name)
		if other, ok := seenP[p]; ok {
			return nil, fmt.Errorf("files %q and %q have the same ISO 9660 name %s", other, f.Name, p)
		}
		seenP[p] = f.Name
	}

	// Layout: 16 system sectors, the primary and Joliet descriptors and the terminator
	// (16-18), four path tables (19-22), the two root directories, then the file data.
	const pathL, pathM, jPathL, jPathM = 19, 20, 21, 22
	primary := make([]entry, len(files))
	joliet := make([]entry, len(files))
	for i, f := range files {
		primary[i] = entry{id: []byte(primaryName(f.Name)), size: uint32(len(f.Data)), self: 2}
		joliet[i] = entry{id: ucs2(f.Name), size: uint32(len(f.Data)), self: 2}
	}
	dirSectors := func(es []entry) uint32 {
		n, used := uint32(1), uint32(34+34) // "." and ".."
		for _, e := range es {
			l := recLen(len(e.id))
			if used+l > sectorSize {
				n++
				used = 0
			}
			used += l
		}
		return n
	}
	rootP := uint32(23)
	rootPSize := dirSectors(primary)
	rootJ := rootP + rootPSize
	rootJSize := dirSectors(joliet)
	next := rootJ + rootJSize
	lbas := make([]uint32, len(files))
	for i, f := range files {
		if len(f.Data) == 0 {
			continue // an empty file has no extent
		}
		lbas[i] = next
		primary[i].lba, joliet[i].lba = next, next
		next += (uint32(len(f.Data)) + sectorSize - 1) / sectorSize
	}
	total := next
	sort.Slice(primary, func(i, j int) bool { return bytes.Compare(primary[i].id, primary[j].id) < 0 })
	sort.Slice(joliet, func(i, j int) bool { return bytes.Compare(joliet[i].id, joliet[j].id) < 0 })

	img := make([]byte, int(total)*sectorSize)
	sec := func(n uint32) []byte { return img[int(n)*sectorSize : int(n+1)*sectorSize] }
	date := recordDate(opts.Time)
	ldate := longDate(opts.Time)

	rootRecP := dirRecord(entry{id: []byte{0}, lba: rootP, size: rootPSize * sectorSize, isDir: true}, date)
	rootRecJ := dirRecord(entry{id: []byte{0}, lba: rootJ, size: rootJSize * sectorSize, isDir: true}, date)

	// Volume descriptors.
	volDesc(sec(16), 1, padA([]byte(opts.VolumeID), 32), total, rootRecP, pathL, pathM, ldate, false)
	volDesc(sec(17), 2, padUCS2(ucs2(opts.VolumeID), 32), total, rootRecJ, jPathL, jPathM, ldate, true)
	term := sec(18)
	term[0] = 255
	copy(term[1:6], "CD001")
	term[6] = 1

	// Path tables: the root only.
	pathTable(sec(pathL), rootP, binary.LittleEndian)
	pathTable(sec(pathM), rootP, binary.BigEndian)
	pathTable(sec(jPathL), rootJ, binary.LittleEndian)
	pathTable(sec(jPathM), rootJ, binary.BigEndian)

	// Root directories.
	writeDir(img, rootP, rootPSize, primary, date)
	writeDir(img, rootJ, rootJSize, joliet, date)

	// File data (both trees point at the same extents).
	for i, f := range files {
		copy(img[int(lbas[i])*sectorSize:], f.Data)
	}
	return img, nil
}

func recLen(idLen int) uint32 {
	l := 33 + idLen
	if l%2 == 1 {
		l++
	}
	return uint32(l)
}

func writeDir(img []byte, lba, sectors uint32, es []entry, date []byte) {
	size := sectors * sectorSize
	all := append([]entry{
		{id: []byte{0}, lba: lba, size: size, isDir: true, self: 0},
		{id: []byte{1}, lba: lba, size: size, isDir: true, self: 1}, // the root is its own parent
	}, es...)
	off := int(lba) * sectorSize
	used := 0
	for _, e := range all {
		rec := dirRecord(e, date)
		if used+len(rec) > sectorSize {
			off += sectorSize - used
			used = 0
		}
		copy(img[off:], rec)
		off += len(rec)
		used += len(rec)
	}
}

func bothEndian32(b []byte, v uint32) {
	binary.LittleEndian.PutUint32(b, v)
	binary.BigEndian.PutUint32(b[4:], v)
}

func bothEndian16(b []byte, v uint16) {
	binary.LittleEndian.PutUint16(b, v)
	binary.BigEndian.PutUint16(b[2:], v)
}

func dirRecord(e entry, date []byte) []byte {
	r := make([]byte, recLen(len(e.id)))
	r[0] = byte(len(r))
	bothEndian32(r[2:], e.lba)
	bothEndian32(r[10:], e.size)
	copy(r[18:25], date)
	if e.isDir {
		r[25] = 2
	}
	bothEndian16(r[28:], 1) // volume sequence number
	r[32] = byte(len(e.id))
	copy(r[33:], e.id)
	return r
}

func pathTable(b []byte, rootLBA uint32, order binary.ByteOrder) {
	b[0] = 1 // identifier length
	order.PutUint32(b[2:], rootLBA)
	order.PutUint16(b[6:], 1) // parent: itself
}

func volDesc(b []byte, typ byte, volID []byte, total uint32, rootRec []byte, pathL, pathM uint32, date []byte, joliet bool) {
	b[0] = typ
	copy(b[1:6], "CD001")
	b[6] = 1
	sys := padA([]byte("LINUX"), 32)
	if joliet {
		sys = padUCS2(ucs2("LINUX"), 32)
	}
	copy(b[8:40], sys)
	copy(b[40:72], volID)
	bothEndian32(b[80:], total)
	if joliet {
		copy(b[88:91], "%/E") // UCS-2 level 3
	}
	bothEndian16(b[120:], 1)          // volume set size
	bothEndian16(b[124:], 1)          // volume sequence number
	bothEndian16(b[128:], sectorSize) // logical block size
	bothEndian32(b[132:], 10)         // path table size
	binary.LittleEndian.PutUint32(b[140:], pathL)
	binary.BigEndian.PutUint32(b[148:], pathM)
	copy(b[156:190], rootRec)
	// Identifiers from 190 to 812: volume set, publisher, preparer, application, copyright,
	// abstract and bibliographic file ids, all blank.
	blank := func(from, n int) {
		if joliet {
			copy(b[from:from+n], padUCS2(nil, n))
		} else {
			copy(b[from:from+n], padA(nil, n))
		}
	}
	blank(190, 128)
	blank(318, 128)
	blank(446, 128)
	app := []byte("RAKHSH")
	if joliet {
		copy(b[574:702], padUCS2(ucs2("RAKHSH"), 128))
	} else {
		copy(b[574:702], padA(app, 128))
	}
	blank(702, 37)
	blank(739, 37)
	blank(776, 37)
	copy(b[813:830], date) // creation
	copy(b[830:847], date) // modification
	copy(b[847:864], zeroLongDate())
	copy(b[864:881], date) // effective
	b[881] = 1             // file structure version
}

func padA(s []byte, n int) []byte {
	out := bytes.Repeat([]byte{' '}, n)
	copy(out, s)
	return out
}

func padUCS2(s []byte, n int) []byte {
	out := make([]byte, n)
	for i := 0; i+1 < n; i += 2 {
		out[i], out[i+1] = 0, ' '
	}
	copy(out, s)
	return out
}

func recordDate(t time.Time) []byte {
	t = t.UTC()
	y := t.Year() - 1900
	if y < 0 {
		y = 0
	}
	if y > 255 {
		y = 255
	}
	return []byte{byte(y), byte(t.Month()), byte(t.Day()), byte(t.Hour()), byte(t.Minute()), byte(t.Second()), 0}
}

func longDate(t time.Time) []byte {
	t = t.UTC()
	y := t.Year()
	if y < 1 || y > 9999 {
		return zeroLongDate()
	}
	out := []byte(fmt.Sprintf("%04d%02d%02d%02d%02d%02d00", y, int(t.Month()), t.Day(), t.Hour(), t.Minute(), t.Second()))
	return append(out, 0)
}

func zeroLongDate() []byte {
	return append([]byte("0000000000000000"), 0)
}
