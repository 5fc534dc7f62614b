package qemu

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"strconv"
)

// blockCache is the cache mode of a block node: the equivalent of -drive cache=writeback (host
// page cache used, guest flushes honoured). Devices also get write-cache=on.
type blockCache struct {
	Direct  bool `json:"direct"`
	NoFlush bool `json:"no-flush"`
}

var defaultCache = blockCache{}

// fileNode is a -blockdev of the "file" protocol driver. Field order is the JSON key order.
type fileNode struct {
	Driver   string     `json:"driver"`
	NodeName string     `json:"node-name"`
	Filename string     `json:"filename"`
	AIO      string     `json:"aio"` // threads: io_uring may be missing or forbidden by seccomp
	Cache    blockCache `json:"cache"`
	ReadOnly bool       `json:"read-only"`
	Discard  string     `json:"discard,omitempty"`
}

// formatNode is a -blockdev of a format driver (raw or qcow2) on top of a fileNode.
type formatNode struct {
	Driver       string     `json:"driver"`
	NodeName     string     `json:"node-name"`
	File         string     `json:"file"`
	Cache        blockCache `json:"cache"`
	ReadOnly     bool       `json:"read-only"`
	Discard      string     `json:"discard,omitempty"`
	DetectZeroes string     `json:"detect-zeroes,omitempty"`
	// Backing is, for qcow2 only, the node name of the backing layer or JSON null (no backing
	// file at all, whatever the image header says).
	Backing json.RawMessage `json:"backing,omitempty"`
}

var jsonNull = json.RawMessage("null")

// AHCI controllers of a q35 VM: the chipset's own, plus up to maxExtraAHCI added ones.
const (
	ahciPorts    = 6
	maxExtraAHCI = 3
)

// maxShortID bounds the id part of node names: QEMU node names have at most 31 bytes, and the
// longest is "file-" + id + ".b16".
const maxShortID = 20

// shortID returns id (already sanitized) if it is short enough for node names, otherwise a
// prefix of it with a hash of the original, unsanitized ID.
func shortID(id, orig string) string {
	if len(id) <= maxShortID {
		return id
	}
	h := fnv.New32a()
	h.Write([]byte(orig))
	return fmt.Sprintf("%s-%08x", id[:maxShortID-9], h.Sum32())
}

// disks adds the -blockdev and -device arguments of every disk.
func (b *build) disks() error {
	seen := map[string]string{}
	seenShort := map[string]string{}
	for i, d := range b.in.Disks {
		who := fmt.Sprintf("disk %d (%q)", i, d.ID)
		id, err := uniqueID(seen, d.ID, who, "disk")
		if err != nil {
			return err
		}
		short := shortID(id, d.ID)
		if other, ok := seenShort[short]; ok {
			return fmt.Errorf("%s: node name collides with disk %q", who, other)
		}
		seenShort[short] = d.ID
		if err := b.disk(d, id, short, who); err != nil {
			return err
		}
	}
	return nil
}

func checkFormat(f string) error {
	switch f {
	case FormatQCOW2, FormatRaw:
		return nil
	case "":
		return fmt.Errorf("format is required (qcow2 or raw); formats are never probed")
	default:
		return fmt.Errorf("format %q is not qcow2 or raw", f)
	}
}

func (b *build) disk(d Disk, id, short, who string) error {
	if err := checkFormat(d.Format); err != nil {
		return fmt.Errorf("%s: %w", who, err)
	}
	if err := checkPath(who+" path", d.Path, true); err != nil {
		return err
	}
	if d.Serial != "" && !isSerial(d.Serial) {
		return fmt.Errorf("%s: serial %q must be 1-20 of [A-Za-z0-9_.-]", who, d.Serial)
	}
	if len(d.Backing) > MaxBackingDepth {
		return fmt.Errorf("%s: backing chain longer than %d", who, MaxBackingDepth)
	}
	if err := b.claimBoot(d.BootOrder, who); err != nil {
		return err
	}
	readOnly := d.ReadOnly || d.CDROM

	// Bus and driver.
	bus := d.Bus
	if bus == "" {
		switch {
		case b.paravirt && !d.CDROM:
			bus = BusVirtio
		case b.m == machineQ35:
			bus = BusSATA
		default:
			bus = BusIDE
		}
	}
	var driver string
	switch bus {
	case BusVirtio:
		if d.CDROM {
			return fmt.Errorf("%s: a CD-ROM cannot use the virtio bus", who)
		}
		driver = "virtio-blk-pci"
	case BusSATA:
		if b.m != machineQ35 {
			return fmt.Errorf("%s: bus sata needs the q35 machine; osType Legacy has bus ide", who)
		}
	case BusIDE:
		if b.m != machinePC {
			return fmt.Errorf("%s: bus ide exists only with osType Legacy (i440fx); use sata", who)
		}
	default:
		return fmt.Errorf("%s: bus %q is not one of virtio, sata, ide", who, bus)
	}
	if driver == "" {
		driver = "ide-hd"
		if d.CDROM {
			driver = "ide-cd"
		} else if readOnly {
			return fmt.Errorf("%s: a read-only disk needs the virtio bus (ide-hd cannot be read-only)", who)
		}
	}

	// Backing chain, base first so every referenced node exists.
	chainTop := jsonNull
	if len(d.Backing) > 0 {
		if d.Format != FormatQCOW2 {
			return fmt.Errorf("%s: only qcow2 images have backing files", who)
		}
		names := make([]string, len(d.Backing))
		for j, l := range d.Backing {
			lwho := fmt.Sprintf("%s backing layer %d", who, j+1)
			if err := checkFormat(l.Format); err != nil {
				return fmt.Errorf("%s: %w", lwho, err)
			}
			if err := checkPath(lwho+" path", l.Path, true); err != nil {
				return err
			}
			if l.Format != FormatQCOW2 && j != len(d.Backing)-1 {
				return fmt.Errorf("%s: a %s layer cannot have further backing layers", lwho, l.Format)
			}
			// '.' cannot occur in a sanitized ID, so layer names never collide with other disks.
			names[j] = ".b" + strconv.Itoa(j+1)
		}
		for j := len(d.Backing) - 1; j >= 0; j-- {
			l := d.Backing[j]
			file, node := "file-"+short+names[j], "fmt-"+short+names[j]
			b.add("-blockdev", mustJSON(fileNode{Driver: "file", NodeName: file, Filename: b.file(l.Path, file, false), AIO: "threads", Cache: defaultCache, ReadOnly: true}))
			fn := formatNode{Driver: l.Format, NodeName: node, File: file, Cache: defaultCache, ReadOnly: true}
			if l.Format == FormatQCOW2 {
				fn.Backing = jsonNull
				if j+1 < len(d.Backing) {
					fn.Backing = jsonString("fmt-" + short + names[j+1])
				}
			}
			b.add("-blockdev", mustJSON(fn))
		}
		chainTop = jsonString("fmt-" + short + names[0])
	}

	file, node, dev := "file-"+short, "fmt-"+short, "disk-"+id
	fnode := fileNode{Driver: "file", NodeName: file, Filename: b.file(d.Path, file, !readOnly), AIO: "threads", Cache: defaultCache, ReadOnly: readOnly}
	fmtNode := formatNode{Driver: d.Format, NodeName: node, File: file, Cache: defaultCache, ReadOnly: readOnly}
	if !readOnly {
		// Guest discards punch holes in the image; zero writes become discards too.
		fnode.Discard = "unmap"
		fmtNode.Discard = "unmap"
		fmtNode.DetectZeroes = "unmap"
	}
	if d.Format == FormatQCOW2 {
		fmtNode.Backing = chainTop
	}
	b.add("-blockdev", mustJSON(fnode))
	b.add("-blockdev", mustJSON(fmtNode))

	o := newOpts(driver).set("id", dev).set("drive", node)
	if driver != "virtio-blk-pci" {
		port := b.idePort
		b.idePort++
		if b.m == machineQ35 {
			// The q35 chipset's AHCI controller ("ide") has 6 ports; more SATA disks and
			// CD-ROMs (an install ISO, a driver ISO, a provisioning CD, ...) go to extra AHCI
			// controllers, 6 ports each, added as they are needed.
			ctrl, p := port/ahciPorts, port%ahciPorts
			bus := "ide"
			if ctrl > 0 {
				if ctrl > maxExtraAHCI {
					return fmt.Errorf("%s: at most %d SATA disks and CD-ROMs", who, (maxExtraAHCI+1)*ahciPorts)
				}
				bus = "sata" + strconv.Itoa(ctrl)
				if p == 0 {
					b.add("-device", "ahci,id="+bus)
				}
			}
			o.set("bus", bus+"."+strconv.Itoa(p))
		} else {
			if port >= 4 {
				return fmt.Errorf("%s: the IDE controller has only 4 slots", who)
			}
			o.set("bus", "ide."+strconv.Itoa(port/2)).set("unit", strconv.Itoa(port%2))
		}
	}
	if d.BootOrder > 0 {
		o.set("bootindex", strconv.Itoa(d.BootOrder))
	}
	if d.Serial != "" {
		o.set("serial", d.Serial)
	}
	o.set("write-cache", "on")
	b.add("-device", o.String())
	b.cfg.Disks = append(b.cfg.Disks, DiskObjects{ID: d.ID, Device: dev, Node: node, FileNode: file, Bus: bus, Driver: driver})
	return nil
}

func jsonString(s string) json.RawMessage {
	out, _ := json.Marshal(s)
	return out
}
