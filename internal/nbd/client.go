// Package nbd is a client of the NBD protocol (the network block device protocol QEMU's
// export speaks), as much of it as a backup needs: the fixed newstyle handshake, structured
// replies, metadata contexts (base:allocation, qemu:dirty-bitmap:NAME), reads and block
// status, one request at a time per connection.
//
// Backups read with it the point-in-time view of a VM's disks that QEMU exports over NBD
// (image fleecing, internal/agent/backup_fleece.go).
package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// Protocol constants (the NBD protocol specification).
const (
	magicNBD        = 0x4e42444d41474943 // "NBDMAGIC"
	magicOpt        = 0x49484156454F5054 // "IHAVEOPT"
	magicOptReply   = 0x3e889045565a9
	magicRequest    = 0x25609513
	magicStructured = 0x668e33ef

	flagFixedNewstyle = 1
	flagNoZeroes      = 2

	optGo              = 7
	optStructuredReply = 8
	optSetMetaContext  = 10
	repAck             = 1
	repInfo            = 3
	repMetaContext     = 4
	repErrBit          = 1 << 31
	infoExport         = 0
	cmdRead            = 0
	cmdDisc            = 2
	cmdBlockStatus     = 7
	replyFlagDone      = 1
	replyNone          = 0
	replyOffsetData    = 1
	replyOffsetHole    = 2
	replyBlockStatus   = 5
	replyError         = 0x8001
	replyErrorOffset   = 0x8002
	maxOptReply        = 64 << 10
	maxChunk           = 64 << 20
	maxOptReplies      = 1024
	maxRead            = 32 << 20
	magicSimple        = 0x67446698
)

// Base allocation status bits (base:allocation) and the dirty bit of qemu:dirty-bitmap:NAME.
const (
	StateHole  = 1
	StateZero  = 2
	StateDirty = 1
)

// Extent is a range of the export with the status flags a metadata context gives it.
type Extent struct {
	Offset, Length int64
	Flags          uint32
}

// Conn is a connection to one export. Its methods may be called from several goroutines;
// requests go one at a time.
type Conn struct {
	mu       sync.Mutex
	c        net.Conn
	size     int64
	contexts map[string]uint32
	cookie   uint64
	broken   error
	buf      []byte // reply chunks are read into it (under mu)
}

// Dial connects to the NBD server at addr (network "unix" or "tcp"), opens export name with
// structured replies and the metadata contexts asked for (each must be granted).
func Dial(network, addr, name string, metaContexts []string, timeout time.Duration) (*Conn, error) {
	nc, err := net.DialTimeout(network, addr, timeout)
	if err != nil {
		return nil, err
	}
	c := &Conn{c: nc, contexts: map[string]uint32{}}
	if timeout > 0 {
		_ = nc.SetDeadline(time.Now().Add(timeout))
	}
	if err := c.handshake(name, metaContexts); err != nil {
		nc.Close()
		return nil, fmt.Errorf("nbd handshake with %s: %w", addr, err)
	}
	_ = nc.SetDeadline(time.Time{})
	return c, nil
}

// Size is the export's size in bytes.
func (c *Conn) Size() int64 { return c.size }

func (c *Conn) handshake(name string, metaContexts []string) error {
	var hello struct {
		Magic, Opt uint64
		Flags      uint16
	}
	if err := binary.Read(c.c, binary.BigEndian, &hello); err != nil {
		return err
	}
	if hello.Magic != magicNBD || hello.Opt != magicOpt {
		return errors.New("not an NBD server speaking the newstyle handshake")
	}
	if hello.Flags&flagFixedNewstyle == 0 || hello.Flags&flagNoZeroes == 0 {
		return fmt.Errorf("the server does not offer the fixed newstyle handshake without zeroes (flags %#x)", hello.Flags)
	}
	if err := binary.Write(c.c, binary.BigEndian, uint32(flagFixedNewstyle|flagNoZeroes)); err != nil {
		return err
	}
	if err := c.option(optStructuredReply, nil, func(typ uint32, data []byte) error { return nil }); err != nil {
		return fmt.Errorf("structured replies: %w", err)
	}
	if len(metaContexts) > 0 {
		var b []byte
		b = binary.BigEndian.AppendUint32(b, uint32(len(name)))
		b = append(b, name...)
		b = binary.BigEndian.AppendUint32(b, uint32(len(metaContexts)))
		for _, q := range metaContexts {
			b = binary.BigEndian.AppendUint32(b, uint32(len(q)))
			b = append(b, q...)
		}
		err := c.option(optSetMetaContext, b, func(typ uint32, data []byte) error {
			if typ != repMetaContext || len(data) < 4 {
				return nil
			}
			c.contexts[string(data[4:])] = binary.BigEndian.Uint32(data)
			return nil
		})
		if err != nil {
			return fmt.Errorf("metadata contexts: %w", err)
		}
		for _, q := range metaContexts {
			if _, ok := c.contexts[q]; !ok {
				return fmt.Errorf("the server does not offer the metadata context %q", q)
			}
		}
	}
	var b []byte
	b = binary.BigEndian.AppendUint32(b, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, 0) // no information requests beyond the default
	gotSize := false
	err := c.option(optGo, b, func(typ uint32, data []byte) error {
		if typ == repInfo && len(data) >= 12 && binary.BigEndian.Uint16(data) == infoExport {
			c.size, gotSize = int64(binary.BigEndian.Uint64(data[2:])), true
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("opening export %q: %w", name, err)
	}
	if !gotSize {
		return fmt.Errorf("export %q: the server gave no size", name)
	}
	return nil
}

// option sends an option and reads its replies up to the final ACK, handing the others to
// each.
func (c *Conn) option(opt uint32, data []byte, each func(typ uint32, data []byte) error) error {
	var b []byte
	b = binary.BigEndian.AppendUint64(b, magicOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	b = append(b, data...)
	if _, err := c.c.Write(b); err != nil {
		return err
	}
	for n := 0; ; n++ {
		if n > maxOptReplies {
			return fmt.Errorf("more than %d replies to option %d", maxOptReplies, opt)
		}
		var h struct {
			Magic      uint64
			Opt, Typ   uint32
			DataLength uint32
		}
		if err := binary.Read(c.c, binary.BigEndian, &h); err != nil {
			return err
		}
		if h.Magic != magicOptReply || h.Opt != opt {
			return fmt.Errorf("a reply (magic %#x) to option %d, not to %d", h.Magic, h.Opt, opt)
		}
		if h.DataLength > maxOptReply {
			return fmt.Errorf("an option reply of %d bytes", h.DataLength)
		}
		d := make([]byte, h.DataLength)
		if _, err := io.ReadFull(c.c, d); err != nil {
			return err
		}
		switch {
		case h.Typ&repErrBit != 0:
			return fmt.Errorf("refused (error %#x): %s", h.Typ, d)
		case h.Typ == repAck:
			return nil
		}
		if err := each(h.Typ, d); err != nil {
			return err
		}
	}
}

// request sends one request and reads its reply chunks, handing each to chunk, until the
// last. An error chunk ends it with the server's error; a broken connection breaks the Conn.
func (c *Conn) request(cmd uint16, flags uint16, off, length int64, chunk func(typ uint16, payload []byte) error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.broken != nil {
		return c.broken
	}
	c.cookie++
	var b []byte
	b = binary.BigEndian.AppendUint32(b, magicRequest)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, cmd)
	b = binary.BigEndian.AppendUint64(b, c.cookie)
	b = binary.BigEndian.AppendUint64(b, uint64(off))
	b = binary.BigEndian.AppendUint32(b, uint32(length))
	if _, err := c.c.Write(b); err != nil {
		c.broken = fmt.Errorf("nbd: connection broken: %w", err)
		return c.broken
	}
	var failed error
	for {
		var h struct {
			Magic  uint32
			Flags  uint16
			Typ    uint16
			Cookie uint64
			Length uint32
		}
		if err := binary.Read(c.c, binary.BigEndian, &h); err != nil {
			c.broken = fmt.Errorf("nbd: connection broken: %w", err)
			return c.broken
		}
		if h.Magic == magicSimple && h.Cookie == c.cookie && cmd != cmdRead {
			// A simple reply (an error, or success without data): its fields are the error
			// (what the structured header reads as flags and type) and the cookie.
			if code := uint32(h.Flags)<<16 | uint32(h.Typ); code != 0 {
				// Its length field is not sent: 4 bytes of the next reply were read; the
				// connection cannot go on.
				c.broken = fmt.Errorf("nbd: the server reported error %d", code)
				return c.broken
			}
			c.broken = errors.New("nbd: a simple reply to a request that needs a structured one")
			return c.broken
		}
		if h.Magic != magicStructured || h.Cookie != c.cookie || h.Length > maxChunk {
			c.broken = fmt.Errorf("nbd: a reply chunk the client did not ask for (magic %#x, cookie %d, %d bytes)", h.Magic, h.Cookie, h.Length)
			return c.broken
		}
		// One buffer per connection, reused (the chunk funcs keep nothing of it): a 4 MiB read
		// does not allocate.
		if cap(c.buf) < int(h.Length) {
			c.buf = make([]byte, h.Length)
		}
		p := c.buf[:h.Length]
		if _, err := io.ReadFull(c.c, p); err != nil {
			c.broken = fmt.Errorf("nbd: connection broken: %w", err)
			return c.broken
		}
		switch h.Typ {
		case replyNone:
		case replyError, replyErrorOffset:
			failed = chunkError(p)
		default:
			if failed == nil {
				failed = chunk(h.Typ, p)
			}
		}
		if h.Flags&replyFlagDone != 0 {
			return failed
		}
	}
}

func chunkError(p []byte) error {
	if len(p) < 6 {
		return errors.New("nbd: the server reported an error")
	}
	code := binary.BigEndian.Uint32(p)
	n := int(binary.BigEndian.Uint16(p[4:]))
	msg := ""
	if 6+n <= len(p) {
		msg = string(p[6 : 6+n])
	}
	return fmt.Errorf("nbd: the server reported error %d: %s", code, msg)
}

// ReadAt reads len(p) bytes at off (at most 32 MiB per call, as QEMU's server allows). Holes
// read as zeros. The reply's chunks must cover p in order, without gaps or overlaps (as
// QEMU's server sends them): p is not cleared first, so no byte of it is left from before.
func (c *Conn) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > c.size {
		return 0, fmt.Errorf("nbd: read of %d bytes at %d beyond the export's %d", len(p), off, c.size)
	}
	if len(p) > maxRead {
		return 0, fmt.Errorf("nbd: a read of %d bytes (at most %d per request)", len(p), maxRead)
	}
	next := int64(0) // where the next chunk starts, in p
	err := c.request(cmdRead, 0, off, int64(len(p)), func(typ uint16, b []byte) error {
		if len(b) < 8 {
			return errors.New("nbd: a short read chunk")
		}
		at := int64(binary.BigEndian.Uint64(b)) - off
		var n int64
		switch typ {
		case replyOffsetData:
			n = int64(len(b) - 8)
		case replyOffsetHole:
			if len(b) < 12 {
				return errors.New("nbd: a short hole chunk")
			}
			n = int64(binary.BigEndian.Uint32(b[8:]))
		default:
			return nil
		}
		if at != next || at+n > int64(len(p)) {
			return fmt.Errorf("nbd: a read chunk of %d bytes at %d where %d was next (of %d)", n, at, next, len(p))
		}
		if typ == replyOffsetData {
			copy(p[at:], b[8:])
		} else {
			clear(p[at : at+n])
		}
		next += n
		return nil
	})
	if err != nil {
		return 0, err
	}
	if next != int64(len(p)) {
		return 0, fmt.Errorf("nbd: the reply covered %d of %d bytes", next, len(p))
	}
	return len(p), nil
}

// BlockStatus returns the extents of the metadata context named (asked for at Dial) from off,
// covering at most length bytes (the server may answer less: ask again from the end).
func (c *Conn) BlockStatus(context string, off, length int64) ([]Extent, error) {
	id, ok := c.contexts[context]
	if !ok {
		return nil, fmt.Errorf("nbd: metadata context %q was not asked for", context)
	}
	if off < 0 || off >= c.size || length <= 0 {
		return nil, fmt.Errorf("nbd: block status of %d bytes at %d of an export of %d", length, off, c.size)
	}
	length = min(length, c.size-off, 1<<30)
	var out []Extent
	err := c.request(cmdBlockStatus, 0, off, length, func(typ uint16, b []byte) error {
		if typ != replyBlockStatus || len(b) < 4 || binary.BigEndian.Uint32(b) != id {
			return nil
		}
		at := off
		for d := b[4:]; len(d) >= 8; d = d[8:] {
			n := int64(binary.BigEndian.Uint32(d))
			out = append(out, Extent{Offset: at, Length: n, Flags: binary.BigEndian.Uint32(d[4:])})
			at += n
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, errors.New("nbd: block status gave no extent")
	}
	return out, nil
}

// Extents returns the extents of context over the whole export, in order.
func (c *Conn) Extents(context string) ([]Extent, error) {
	var out []Extent
	for off := int64(0); off < c.size; {
		ex, err := c.BlockStatus(context, off, c.size-off)
		if err != nil {
			return nil, err
		}
		for _, e := range ex {
			if e.Length <= 0 || e.Offset != off {
				return nil, fmt.Errorf("nbd: block status at %d gave the extent %+v", off, e)
			}
			e.Length = min(e.Length, c.size-off)
			if k := len(out) - 1; k >= 0 && out[k].Flags == e.Flags {
				out[k].Length += e.Length // one extent per run of equal status
			} else {
				out = append(out, e)
			}
			off += e.Length
			if off >= c.size {
				break
			}
		}
	}
	return out, nil
}

// Close ends the connection: politely (NBD_CMD_DISC, which has no reply) when no request is
// under way, else at once (the request then fails).
func (c *Conn) Close() error {
	if !c.mu.TryLock() {
		return c.c.Close()
	}
	defer c.mu.Unlock()
	if c.broken == nil {
		var b []byte
		b = binary.BigEndian.AppendUint32(b, magicRequest)
		b = binary.BigEndian.AppendUint16(b, 0)
		b = binary.BigEndian.AppendUint16(b, cmdDisc)
		b = binary.BigEndian.AppendUint64(b, c.cookie+1)
		b = binary.BigEndian.AppendUint64(b, 0)
		b = binary.BigEndian.AppendUint32(b, 0)
		_, _ = c.c.Write(b)
		c.broken = errors.New("nbd: closed")
	}
	return c.c.Close()
}
