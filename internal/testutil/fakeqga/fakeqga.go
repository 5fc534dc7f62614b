// Package fakeqga helps tests play the guest side of a QEMU guest agent socket: it accepts
// the connections, reads the requests, and writes the answers a guest agent would.
package fakeqga

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net"
)

// Request is one command as the guest agent reads it.
type Request struct {
	Execute   string         `json:"execute"`
	Arguments map[string]any `json:"arguments"`
	ID        any            `json:"id"`
}

// ReadRequests reads conn's requests, one a line (the 0xFF delimiter of a sync dropped, lines
// that are not JSON skipped), and calls handle with each until the connection ends or handle
// returns false. It closes conn.
func ReadRequests(conn net.Conn, handle func(req Request) bool) {
	defer conn.Close()
	r := bufio.NewReader(conn)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return
		}
		var req Request
		if json.Unmarshal(bytes.TrimLeft(line, "\xff"), &req) != nil {
			continue
		}
		if !handle(req) {
			return
		}
	}
}

// Reply writes the answer v to req, with req's id.
func Reply(w io.Writer, req Request, v any) {
	b, _ := json.Marshal(map[string]any{"return": v, "id": req.ID})
	_, _ = w.Write(append(b, '\n'))
}

// AnswerSync answers a guest-sync-delimited: the 0xFF delimiter, then the id it was given.
func AnswerSync(w io.Writer, req Request) {
	b, _ := json.Marshal(map[string]any{"return": req.Arguments["id"]})
	_, _ = w.Write(append([]byte{0xFF}, append(b, '\n')...))
}

// WriteHugeLine writes 100 MiB without a newline, 1 MiB at a time, as a hostile guest would,
// stopping at the first failed write (the reader hung up). wrote, when not nil, is told after
// each write how much it took, so that a reader that stops reading without hanging up is seen
// to have taken what it took.
func WriteHugeLine(w io.Writer, wrote func(n int)) error {
	chunk := bytes.Repeat([]byte("A"), 1<<20)
	for i := 0; i < 100; i++ {
		n, err := w.Write(chunk)
		if wrote != nil {
			wrote(n)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Interface is an entry of the answer to guest-network-get-interfaces: the interface name,
// its hardware address and its addresses (made by Address).
func Interface(name, mac string, addrs ...any) map[string]any {
	return map[string]any{"name": name, "hardware-address": mac, "ip-addresses": addrs}
}

// Address is an address of an Interface; typ is "ipv4" or "ipv6".
func Address(typ, ip string, prefix int) map[string]any {
	return map[string]any{"ip-address-type": typ, "ip-address": ip, "prefix": prefix}
}
